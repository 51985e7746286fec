//! Finding the quantizable linears of a checkpoint with its layout.
//!
//! Every tensor is either the weight of a linear that the layout describes (dense, per-expert,
//! or an expert slice of a transformers-5 fused `gate_up_proj` / `down_proj` parameter) or a
//! tensor that passes through unchanged.

use crate::checkpoint::{Checkpoint, Dtype};
use crate::error::Result;
use crate::layout::{glob_match, ExpertProj, Layout, Role};
use crate::options::{Options, Scope};
use crate::quant::{check_shape, SourceDtype};

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
    /// Element type.
    pub dtype: SourceDtype,
}

impl WeightSource {
    /// Byte length of the matrix.
    pub fn byte_len(&self) -> usize {
        self.rows * self.cols * self.dtype.size()
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
    pub passthrough: Vec<usize>,
    /// MoE router modules present (listed in `exclude_modules`).
    pub routers: Vec<String>,
    /// Layers past the config's layer count (MTP), passed through.
    pub mtp_layers: Vec<usize>,
    /// Problems that stop the conversion (reported together in pre-flight).
    pub problems: Vec<String>,
}

fn source_dtype(dtype: Dtype) -> Option<SourceDtype> {
    match dtype {
        Dtype::BF16 => Some(SourceDtype::Bf16),
        Dtype::F16 => Some(SourceDtype::F16),
        Dtype::F32 => Some(SourceDtype::F32),
        _ => None,
    }
}

/// Why a linear is excluded by `--scope` / `--exclude`, if it is.
fn exclusion(module: &str, role: Role, options: &Options) -> Option<String> {
    let in_scope = match options.scope {
        Scope::All => true,
        Scope::Mlp => role != Role::Attention,
        Scope::Experts => role == Role::Expert,
    };
    if !in_scope {
        return Some(format!("--scope {}", options.scope.name()));
    }
    options
        .excludes
        .iter()
        .find(|p| glob_match(p, module))
        .map(|p| format!("--exclude {p}"))
}

/// Sorts the checkpoint's tensors into linears and pass-through tensors.
pub fn classify(
    ckpt: &Checkpoint,
    layout: &Layout,
    config: &serde_json::Value,
    options: &Options,
) -> Result<Classified> {
    let mut out = Classified::default();
    let mtp_limit = layout
        .mtp_from_config
        .as_ref()
        .and_then(|key| config.get(key))
        .and_then(|v| v.as_u64())
        .map(|v| v as usize);
    let mut routers = std::collections::BTreeSet::new();
    for (idx, t) in ckpt.tensors().iter().enumerate() {
        let layer = layout.layer_of(&t.name);
        if let (Some(l), Some(limit)) = (layer, mtp_limit) {
            if l >= limit {
                if !out.mtp_layers.contains(&l) {
                    out.mtp_layers.push(l);
                }
                out.passthrough.push(idx);
                continue;
            }
        }
        if let Some(experts) = &layout.experts {
            if let Some(router) = t.name.strip_suffix(".weight") {
                if experts.router.matches(router).is_some() {
                    routers.insert((layer, router.to_string()));
                }
            }
        }
        let found = match t.name.strip_suffix(".weight") {
            Some(module) => linear_of(ckpt, layout, idx, module, options, &mut out.problems),
            None => fused_linears(ckpt, layout, idx, options, &mut out.problems),
        };
        match found {
            Some(linears) if !linears.is_empty() => {
                if linears.iter().all(|l| l.excluded.is_some()) {
                    out.passthrough.push(idx);
                } else if linears.iter().any(|l| l.excluded.is_some()) {
                    out.problems.push(format!(
                        "tensor '{}' holds several experts and only some of them are excluded; \
                         exclude all of them or none",
                        t.name
                    ));
                }
                out.linears.extend(linears);
            }
            _ => out.passthrough.push(idx),
        }
    }
    out.routers = routers.into_iter().map(|(_, r)| r).collect();
    Ok(out)
}

/// A dense or per-expert linear whose weight is the tensor `idx` (named `module.weight`).
fn linear_of(
    ckpt: &Checkpoint,
    layout: &Layout,
    idx: usize,
    module: &str,
    options: &Options,
    problems: &mut Vec<String>,
) -> Option<Vec<Linear>> {
    let t = &ckpt.tensors()[idx];
    let (layer, role, expert, shared_group) =
        if let Some((spec, layer)) = layout.match_linear(module) {
            (layer, spec.role, None, spec.shared_group)
        } else if let Some((layer, e, proj)) = layout.match_expert(module) {
            (layer, Role::Expert, Some((e, proj)), None)
        } else {
            return None;
        };
    let source = matrix_source(ckpt, idx, 0, problems)?;
    let excluded = exclusion(module, role, options);
    if excluded.is_none() {
        check(ckpt, &t.name, &source, options, problems);
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
    options: &Options,
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
    let Some(dtype) = source_dtype(t.dtype) else {
        problems.push(format!(
            "tensor '{}' has dtype {:?}; quantizable weights must be BF16, F16 or F32",
            t.name, t.dtype
        ));
        return None;
    };
    let &[n_experts, rows, cols] = t.shape.as_slice() else {
        problems.push(format!(
            "tensor '{}' should be a fused expert parameter [experts, out, in], has shape {:?}",
            t.name, t.shape
        ));
        return None;
    };
    if gate_up && rows % 2 != 0 {
        problems.push(format!(
            "tensor '{}': fused gate_up has an odd row count {rows}",
            t.name
        ));
        return None;
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
            };
            let excluded = exclusion(&module, Role::Expert, options);
            if excluded.is_none() {
                check(ckpt, &t.name, &source, options, problems);
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

fn matrix_source(
    ckpt: &Checkpoint,
    idx: usize,
    offset: usize,
    problems: &mut Vec<String>,
) -> Option<WeightSource> {
    let t = &ckpt.tensors()[idx];
    let Some(dtype) = source_dtype(t.dtype) else {
        problems.push(format!(
            "tensor '{}' has dtype {:?}; quantizable weights must be BF16, F16 or F32 \
             (FP8-block sources are not supported yet)",
            t.name, t.dtype
        ));
        return None;
    };
    let &[rows, cols] = t.shape.as_slice() else {
        problems.push(format!(
            "tensor '{}' should be a 2-D linear weight, has shape {:?}",
            t.name, t.shape
        ));
        return None;
    };
    Some(WeightSource {
        tensor: idx,
        offset,
        rows,
        cols,
        dtype,
    })
}

fn check(
    ckpt: &Checkpoint,
    tensor: &str,
    source: &WeightSource,
    options: &Options,
    problems: &mut Vec<String>,
) {
    if let Err(reason) = check_shape(options.format, source.rows, source.cols) {
        let file = ckpt.shards()[ckpt.tensors()[source.tensor].shard]
            .path
            .display();
        problems.push(format!(
            "{file}: tensor '{tensor}' [{}, {}] cannot be quantized to {}: {reason} \
             (leave it unquantized with --exclude)",
            source.rows,
            source.cols,
            options.format.cli_name()
        ));
    }
}
