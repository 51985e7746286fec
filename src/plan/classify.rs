//! Finding the quantizable linears of a checkpoint with its layout.
//!
//! Every tensor is either the weight of a linear that the layout describes (dense, per-expert,
//! or an expert slice of a transformers-5 fused `gate_up_proj` / `down_proj` parameter) or a
//! tensor that passes through unchanged. Fused parameters are always written per expert, with
//! hub names, whether their experts are quantized or excluded, as ModelOpt's export does.

use crate::checkpoint::{Checkpoint, Dtype};
use crate::error::Result;
use crate::layout::{glob_match, ExpertProj, Layout, Role};
use crate::options::{Options, Scope};
use crate::quant::{check_shape, SourceDtype};
use std::collections::BTreeSet;

/// Where a linear's weight bytes are: a whole tensor, or a slice of a fused expert tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSource {
    /// Index into [`Checkpoint::tensors`].
    pub tensor: usize,
    /// Byte offset of the `[rows, cols]` matrix inside the tensor's data.
    pub offset: usize,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Element type the kernels see (for an FP8-block source: the dequantized type).
    pub dtype: SourceDtype,
    /// Whether the matrix is a slice of a fused multi-expert tensor.
    pub fused: bool,
    /// For an FP8 block-scaled source: the index of its `weight_scale_inv` tensor.
    pub fp8_scale: Option<usize>,
}

impl WeightSource {
    /// Byte length of the stored matrix (one byte per element for FP8).
    pub fn byte_len(&self) -> usize {
        match self.fp8_scale {
            Some(_) => self.rows * self.cols,
            None => self.rows * self.cols * self.dtype.size(),
        }
    }
}

/// One quantizable linear of the model.
#[derive(Debug, Clone)]
pub struct Linear {
    /// On-disk module name of the output (e.g. `model.layers.0.mlp.experts.3.gate_proj`).
    pub module: String,
    /// Decoder layer.
    pub layer: usize,
    /// Role for `--scope`.
    pub role: Role,
    /// For a routed expert: (expert number, projection).
    pub expert: Option<(usize, ExpertProj)>,
    /// Shared-input group of the layout (dense linears only).
    pub shared_group: Option<usize>,
    /// Where the weight is.
    pub source: WeightSource,
    /// Why the linear stays unquantized, if it does.
    pub excluded: Option<String>,
}

/// The checkpoint's tensors sorted into linears and pass-through tensors.
#[derive(Debug, Clone, Default)]
pub struct Classified {
    /// Every linear the layout describes, quantized or excluded.
    pub linears: Vec<Linear>,
    /// Tensors written unchanged (indices into [`Checkpoint::tensors`]), in checkpoint order.
    /// Fused expert tensors are never here: their experts are written per expert.
    pub passthrough: Vec<usize>,
    /// Excluded linear modules whose weights could not be quantized anyway (listed in
    /// `exclude_modules`, passed through).
    pub excluded_other: Vec<String>,
    /// MoE router modules present (listed in `exclude_modules`).
    pub routers: Vec<String>,
    /// Layers past the config's layer count (MTP), passed through.
    pub mtp_layers: Vec<usize>,
    /// `--exclude` patterns that matched no module.
    pub unused_excludes: Vec<String>,
    /// FP8 block-scaled weights that are not quantized linears: (weight, its `weight_scale_inv`),
    /// written dequantized unless `--keep-fp8-source`.
    pub fp8_other: Vec<(usize, usize)>,
    /// `weight_scale_inv` tensors consumed by the FP8 weights they scale.
    pub fp8_scales: Vec<usize>,
    /// Notes for the user (tensors under layers the layout does not describe).
    pub warnings: Vec<String>,
    /// Problems that stop the conversion (reported together in pre-flight).
    pub problems: Vec<String>,
}

/// The kernels' element type for a stored dtype (BF16, F16, F32; None for anything else).
pub fn source_dtype(dtype: Dtype) -> Option<SourceDtype> {
    match dtype {
        Dtype::BF16 => Some(SourceDtype::Bf16),
        Dtype::F16 => Some(SourceDtype::F16),
        Dtype::F32 => Some(SourceDtype::F32),
        _ => None,
    }
}

/// Decides which linears `--scope` and `--exclude` leave unquantized, remembering which
/// patterns matched.
struct Exclusions<'a> {
    options: &'a Options,
    used: BTreeSet<usize>,
}

impl Exclusions<'_> {
    fn reason(&mut self, module: &str, role: Role) -> Option<String> {
        let in_scope = match self.options.scope {
            Scope::All => true,
            Scope::Mlp => role != Role::Attention,
            Scope::Experts => role == Role::Expert,
        };
        if !in_scope {
            return Some(format!("--scope {}", self.options.scope.name()));
        }
        let hit = self
            .options
            .excludes
            .iter()
            .position(|p| glob_match(p, module))?;
        self.used.insert(hit);
        Some(format!("--exclude {}", self.options.excludes[hit]))
    }
}

/// Sorts the checkpoint's tensors into linears and pass-through tensors.
pub fn classify(
    ckpt: &Checkpoint,
    layout: &Layout,
    config: &serde_json::Value,
    options: &Options,
) -> Result<Classified> {
    let mut out = Classified::default();
    let mut ex = Exclusions {
        options,
        used: BTreeSet::new(),
    };
    let mtp_limit = layout
        .mtp_from_config
        .as_ref()
        .and_then(|key| config.get(key))
        .and_then(|v| v.as_u64())
        .map(|v| v as usize);
    let mut routers = BTreeSet::new();
    let mut unclaimed = Vec::new();
    for (idx, t) in ckpt.tensors().iter().enumerate() {
        // A weight_scale_inv belongs to its FP8 weight (dequantized or kept together with it).
        if let Some(weight) = t.name.strip_suffix("_scale_inv") {
            if ckpt.get(weight).is_some_and(|w| w.dtype == Dtype::F8_E4M3) {
                out.fp8_scales.push(idx);
                continue;
            }
        }
        let layer = layout.layer_of(&t.name);
        if let (Some(l), Some(limit)) = (layer, mtp_limit) {
            if l >= limit {
                if !out.mtp_layers.contains(&l) {
                    out.mtp_layers.push(l);
                }
                // MTP layers stay unquantized; FP8 ones are dequantized like any other.
                match fp8_scale_of(ckpt, idx) {
                    Ok(Some(scale)) if t.dtype == Dtype::F8_E4M3 => {
                        out.fp8_other.push((idx, scale))
                    }
                    Err(problem) if t.dtype == Dtype::F8_E4M3 => out.problems.push(problem),
                    _ => out.passthrough.push(idx),
                }
                continue;
            }
        }
        let is_router = layout.experts.as_ref().is_some_and(|e| {
            t.name
                .strip_suffix(".weight")
                .is_some_and(|m| e.router.matches(m).is_some())
        });
        if is_router {
            routers.insert((layer, t.name.trim_end_matches(".weight").to_string()));
        }
        let found = match t.name.strip_suffix(".weight") {
            Some(module) => linear_of(ckpt, layout, idx, module, &mut ex, &mut out),
            None => fused_linears(ckpt, layout, idx, &mut ex, &mut out.problems),
        };
        match found {
            // Claimed by the layout: quantized or excluded linears (an empty list means the
            // tensor was found unusable and a problem or exclusion was recorded).
            Some(linears) => {
                if linears.is_empty() {
                    out.passthrough.push(idx);
                }
                out.linears.extend(linears);
            }
            None if t.dtype == Dtype::F8_E4M3 => match fp8_scale_of(ckpt, idx) {
                Ok(Some(scale)) => out.fp8_other.push((idx, scale)),
                Ok(None) => out.passthrough.push(idx),
                Err(problem) => out.problems.push(problem),
            },
            None => {
                out.passthrough.push(idx);
                if layer.is_some() && !is_router {
                    unclaimed_check(t, &mut ex, &mut unclaimed, &mut out.problems);
                }
            }
        }
    }
    out.routers = routers.into_iter().map(|(_, r)| r).collect();
    out.unused_excludes = (0..options.excludes.len())
        .filter(|i| !ex.used.contains(i))
        .map(|i| options.excludes[i].clone())
        .collect();
    if !unclaimed.is_empty() {
        out.warnings.push(format!(
            "{} 2-D weight(s) under decoder layers are not linears of layout '{}' and pass through unquantized, e.g. {}",
            unclaimed.len(),
            layout.name,
            unclaimed.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(out)
}

/// A tensor under a decoder layer that the layout does not describe: a 3-D tensor looks like
/// fused experts and would silently stay unquantized, so it stops pre-flight unless excluded;
/// a 2-D non-norm weight is worth a warning.
fn unclaimed_check(
    t: &crate::checkpoint::TensorEntry,
    ex: &mut Exclusions,
    unclaimed: &mut Vec<String>,
    problems: &mut Vec<String>,
) {
    let module = t.name.trim_end_matches(".weight");
    if t.shape.len() == 3 && ex.reason(module, Role::Expert).is_none() {
        problems.push(format!(
            "tensor '{}' {:?} looks like fused expert weights, but the layout does not describe it, so it would stay \
             unquantized (describe it with fused_gate_up / fused_down in a --layout file, or --exclude '{module}')",
            t.name, t.shape
        ));
    } else if t.shape.len() == 2 && t.name.ends_with(".weight") && !t.name.contains("norm") {
        unclaimed.push(t.name.clone());
    }
}

/// A dense or per-expert linear whose weight is the tensor `idx` (named `module.weight`).
fn linear_of(
    ckpt: &Checkpoint,
    layout: &Layout,
    idx: usize,
    module: &str,
    ex: &mut Exclusions,
    out: &mut Classified,
) -> Option<Vec<Linear>> {
    let (layer, role, expert, shared_group) =
        if let Some((spec, layer)) = layout.match_linear(module) {
            (layer, spec.role, None, spec.shared_group)
        } else if let Some((layer, e, proj)) = layout.match_expert(module) {
            (layer, Role::Expert, Some((e, proj)), None)
        } else {
            return None;
        };
    let excluded = ex.reason(module, role);
    let source = match matrix_source(ckpt, idx, ex.options) {
        Ok(source) => source,
        Err(problem) => {
            if excluded.is_some() {
                out.excluded_other.push(module.to_string());
            } else {
                out.problems.push(problem);
            }
            return Some(Vec::new());
        }
    };
    if excluded.is_none() {
        check(ckpt, &source, ex.options, &mut out.problems);
    }
    Some(vec![Linear {
        module: module.to_string(),
        layer,
        role,
        expert,
        shared_group,
        source,
        excluded,
    }])
}

/// Expert linears sliced out of a transformers-5 fused `gate_up_proj [E, 2I, H]` or
/// `down_proj [E, H, I]` parameter.
fn fused_linears(
    ckpt: &Checkpoint,
    layout: &Layout,
    idx: usize,
    ex: &mut Exclusions,
    problems: &mut Vec<String>,
) -> Option<Vec<Linear>> {
    let experts = layout.experts.as_ref()?;
    let t = &ckpt.tensors()[idx];
    let (layer, gate_up) = if let Some(c) = experts
        .fused_gate_up
        .as_ref()
        .and_then(|f| f.matches(&t.name))
    {
        (c.layer?, true)
    } else if let Some(c) = experts.fused_down.as_ref().and_then(|f| f.matches(&t.name)) {
        (c.layer?, false)
    } else {
        return None;
    };
    let file = ckpt.shards()[t.shard].path.display();
    let Some(dtype) = source_dtype(t.dtype) else {
        problems.push(format!(
            "{file}: tensor '{}' has dtype {:?}; fused expert weights must be BF16, F16 or F32 \
             (fused FP8 experts are not supported; per-expert FP8 tensors are)",
            t.name, t.dtype
        ));
        return Some(Vec::new());
    };
    let &[n_experts, rows, cols] = t.shape.as_slice() else {
        problems.push(format!(
            "{file}: tensor '{}' should be a fused expert parameter [experts, out, in], has shape {:?}",
            t.name, t.shape
        ));
        return Some(Vec::new());
    };
    if gate_up && rows % 2 != 0 {
        problems.push(format!(
            "{file}: tensor '{}': fused gate_up has an odd row count {rows}",
            t.name
        ));
        return Some(Vec::new());
    }
    let mut linears = Vec::new();
    let expert_bytes = rows * cols * dtype.size();
    for e in 0..n_experts {
        let parts: &[(ExpertProj, usize, usize)] = if gate_up {
            &[
                (ExpertProj::Gate, 0, rows / 2),
                (ExpertProj::Up, rows / 2, rows / 2),
            ]
        } else {
            &[(ExpertProj::Down, 0, rows)]
        };
        for &(proj, row0, nrows) in parts {
            let module = experts.module_name(layer, e, proj);
            let source = WeightSource {
                tensor: idx,
                offset: e * expert_bytes + row0 * cols * dtype.size(),
                rows: nrows,
                cols,
                dtype,
                fused: true,
                fp8_scale: None,
            };
            let excluded = ex.reason(&module, Role::Expert);
            if excluded.is_none() {
                check(ckpt, &source, ex.options, problems);
            }
            linears.push(Linear {
                module,
                layer,
                role: Role::Expert,
                expert: Some((e, proj)),
                shared_group: None,
                source,
                excluded,
            });
        }
    }
    Some(linears)
}

/// The `weight_scale_inv` of an FP8 weight, checked: F32 `[ceil(rows/128), ceil(cols/128)]`.
/// `Ok(None)` for an FP8 tensor without one that is not 2-D (passed through as it is).
fn fp8_scale_of(ckpt: &Checkpoint, idx: usize) -> std::result::Result<Option<usize>, String> {
    let t = &ckpt.tensors()[idx];
    let file = ckpt.shards()[t.shard].path.display();
    let scale_name = format!("{}_scale_inv", t.name);
    let Some(scale) = ckpt.get(&scale_name) else {
        if t.shape.len() != 2 {
            return Ok(None);
        }
        return Err(format!(
            "{file}: tensor '{}' is FP8 but has no '{scale_name}': only FP8 sources with 128x128 block scales \
             (DeepSeek-V3 style) are supported",
            t.name
        ));
    };
    let &[rows, cols] = t.shape.as_slice() else {
        return Err(format!(
            "{file}: FP8 tensor '{}' should be 2-D, has shape {:?}",
            t.name, t.shape
        ));
    };
    let (sr, sc) = crate::quant::scale_inv_shape(rows, cols);
    if scale.dtype != Dtype::F32 || scale.shape != [sr, sc] {
        return Err(format!(
            "{file}: '{scale_name}' should be F32 [{sr}, {sc}] for a [{rows}, {cols}] weight (128x128 blocks), is {:?} {:?}",
            scale.dtype, scale.shape
        ));
    }
    let index = ckpt
        .tensors()
        .iter()
        .position(|e| e.name == scale_name)
        .unwrap_or(0);
    Ok(Some(index))
}

fn matrix_source(
    ckpt: &Checkpoint,
    idx: usize,
    options: &Options,
) -> std::result::Result<WeightSource, String> {
    let t = &ckpt.tensors()[idx];
    let file = ckpt.shards()[t.shard].path.display();
    let module = t.name.trim_end_matches(".weight");
    if t.dtype == Dtype::F8_E4M3 {
        let scale = fp8_scale_of(ckpt, idx)?
            .ok_or_else(|| format!("{file}: FP8 tensor '{}' is not a 2-D weight", t.name))?;
        let (rows, cols) = (t.shape[0], t.shape[1]);
        return Ok(WeightSource {
            tensor: idx,
            offset: 0,
            rows,
            cols,
            dtype: options.fp8_dequant.dtype(),
            fused: false,
            fp8_scale: Some(scale),
        });
    }
    let Some(dtype) = source_dtype(t.dtype) else {
        return Err(format!(
            "{file}: tensor '{}' has dtype {:?}; quantizable weights must be BF16, F16 or F32 \
             (FP8-block sources are not supported yet; leave it unquantized with --exclude '{module}')",
            t.name, t.dtype
        ));
    };
    let &[rows, cols] = t.shape.as_slice() else {
        return Err(format!(
            "{file}: tensor '{}' should be a 2-D linear weight, has shape {:?} (leave it unquantized with --exclude '{module}')",
            t.name, t.shape
        ));
    };
    Ok(WeightSource {
        tensor: idx,
        offset: 0,
        rows,
        cols,
        dtype,
        fused: false,
        fp8_scale: None,
    })
}

fn check(ckpt: &Checkpoint, source: &WeightSource, options: &Options, problems: &mut Vec<String>) {
    if let Err(reason) = check_shape(options.format, source.rows, source.cols) {
        let t = &ckpt.tensors()[source.tensor];
        let file = ckpt.shards()[t.shard].path.display();
        problems.push(format!(
            "{file}: tensor '{}' [{}, {}] cannot be quantized to {}: {reason} \
             (leave it unquantized with --exclude '{}')",
            t.name,
            source.rows,
            source.cols,
            options.format.cli_name(),
            t.name.trim_end_matches(".weight")
        ));
    }
}
