//! Sorting a checkpoint's tensors with its layout.
//!
//! Every tensor is one of: the weight of a linear the layout describes (dense, per-expert, an
//! expert slice of a fused `[E, out, in]` parameter, or a whole BMM-style `[E, in, out]`
//! parameter); a module ModelOpt leaves unquantized by default (routers, `lm_head`, `conv1d`,
//! vision towers, ... see [`crate::input::layout::disabled`]) or an embedding, passed through and
//! listed in `exclude_modules`; or a tensor without a quantizer (norms, biases, scalars),
//! passed through. A weight of two or more dimensions that none of these rules classifies stops
//! the conversion: shardquant never guesses what it is.

use super::shapes;
use super::sources::{fp8_scale_of, matrix_source, source_dtype, ColumnSlice, WeightSource};
use super::Problem;
use crate::compute::check_shape;
use crate::error::Result;
use crate::input::checkpoint::{Checkpoint, Dtype, TensorEntry};
use crate::input::layout::disabled::{disabled_pattern, is_embedding};
use crate::input::layout::{glob_match, ExpertProj, Layout, Role};
use crate::options::{Options, Scope};
use crate::plan::OutputTensor;
use std::collections::BTreeSet;

/// One quantizable linear of the model.
#[derive(Debug, Clone)]
pub struct Linear {
    /// On-disk module name of the output (e.g. `model.layers.0.mlp.experts.3.gate_proj`); for
    /// a BMM expert stack, the parameter's name (`model.layers.0.mlp.experts.gate_up_proj`).
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

impl Linear {
    /// The name of one of its output tensors: `{module}.{suffix}`; for a BMM expert stack
    /// ModelOpt's names for a quantized parameter, `{module}` and `{module}_{suffix}`.
    pub fn output_name(&self, suffix: &str) -> String {
        match (self.source.bmm_experts, suffix) {
            (Some(_), "weight") => self.module.clone(),
            (Some(_), _) => format!("{}_{suffix}", self.module),
            (None, _) => format!("{}.{suffix}", self.module),
        }
    }

    /// The module ModelOpt counts as quantized or excluded: the linear itself, or the experts
    /// module holding a BMM parameter.
    pub fn quant_module(&self) -> &str {
        match self.source.bmm_experts {
            Some(_) => self
                .module
                .rsplit_once('.')
                .map_or(self.module.as_str(), |(parent, _)| parent),
            None => &self.module,
        }
    }

    /// The output tensor of the linear left unquantized: its stored weight, unchanged.
    pub fn unchanged_output(&self, ckpt: &Checkpoint) -> OutputTensor {
        let t = &ckpt.tensors()[self.source.tensor];
        match self.source.bmm_experts {
            Some(_) => OutputTensor::new(t.name.clone(), t.dtype, t.shape.clone()),
            None => OutputTensor::new(
                format!("{}.weight", self.module),
                t.dtype,
                vec![self.source.rows, self.source.cols],
            ),
        }
    }
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
    /// Modules that carry ModelOpt quantizers but stay unquantized, in checkpoint order, with
    /// the reason: default-disabled modules, embeddings, weights passed through with `--exclude`
    /// (listed in `exclude_modules`).
    pub unquantized: Vec<(String, String)>,
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
    /// Notes for the user.
    pub warnings: Vec<String>,
    /// Problems that stop the conversion (reported together in pre-flight).
    pub problems: Vec<Problem>,
}

/// Decides which linears `--scope` and `--exclude` leave unquantized, remembering which
/// patterns matched.
struct Exclusions<'a> {
    options: &'a Options,
    used: BTreeSet<usize>,
}

impl Exclusions<'_> {
    /// Why the linear `module`, whose weight is the tensor `tensor`, stays unquantized.
    fn reason(&mut self, tensor: &str, module: &str, role: Role) -> Option<String> {
        if let Some(p) = disabled_pattern(tensor) {
            return Some(format!("ModelOpt leaves '{p}' unquantized"));
        }
        let in_scope = match self.options.output.scope {
            Scope::All => true,
            Scope::Mlp => role != Role::Attention,
            Scope::Experts => role == Role::Expert,
        };
        if !in_scope {
            return Some(format!("--scope {}", self.options.output.scope.name()));
        }
        self.excluded_by_pattern(module)
    }

    fn excluded_by_pattern(&mut self, module: &str) -> Option<String> {
        let hit = self
            .options
            .output
            .excludes
            .iter()
            .position(|p| glob_match(p, module))?;
        self.used.insert(hit);
        Some(format!("--exclude {}", self.options.output.excludes[hit]))
    }
}

/// Sorts the checkpoint's tensors into linears and pass-through tensors, and checks every
/// linear's shape against `config.json`.
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
    let mtp_limit = layout.mtp_limit(config);
    let experts_in_config = crate::input::layout::infer::config_usize(
        config,
        crate::input::layout::infer::EXPERT_COUNT_KEYS,
    );
    let mut routers = BTreeSet::new();
    let mut unclassified = Vec::new();
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
                    Err(problem) if t.dtype == Dtype::F8_E4M3 => out.problems.push(problem.into()),
                    _ => out.passthrough.push(idx),
                }
                continue;
            }
        }
        let router = layout.experts.as_ref().and_then(|e| {
            let m = t.name.strip_suffix(".weight")?;
            e.router.matches(m).map(|_| m)
        });
        if let Some(r) = router {
            routers.insert((layer, r.to_string()));
            out.passthrough.push(idx);
            continue;
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
                Err(problem) => out.problems.push(problem.into()),
            },
            None => {
                out.passthrough.push(idx);
                other_tensor(t, experts_in_config, &mut ex, &mut out, &mut unclassified);
            }
        }
    }
    out.routers = routers.into_iter().map(|(_, r)| r).collect();
    out.unused_excludes = (0..options.output.excludes.len())
        .filter(|i| !ex.used.contains(i))
        .map(|i| options.output.excludes[i].clone())
        .collect();
    if !unclassified.is_empty() {
        out.problems
            .push(unclassified_problem(layout, &unclassified).into());
    }
    partly_excluded_bmm(&out.linears, &mut out.problems);
    shapes::check(
        ckpt,
        layout,
        config,
        &out.linears,
        &mut out.problems,
        &mut out.warnings,
    );
    Ok(out)
}

/// A tensor the layout does not claim. Weights (two or more dimensions) must be a module
/// ModelOpt leaves unquantized, an embedding, or excluded by `--exclude`; anything else is
/// unclassified. Tensors without a quantizer (norms, biases, scalars) just pass through.
fn other_tensor(
    t: &TensorEntry,
    experts_in_config: Option<usize>,
    ex: &mut Exclusions,
    out: &mut Classified,
    unclassified: &mut Vec<String>,
) {
    let weight = t.name.strip_suffix(".weight");
    // Fused expert parameters have no `.weight` suffix: 3-D, with the experts first.
    let fused_like = weight.is_none()
        && t.shape.len() == 3
        && (t.name.contains("experts") || Some(t.shape[0]) == experts_in_config);
    let module = match weight {
        Some(m) if t.shape.len() >= 2 => m,
        None if fused_like => t.name.as_str(),
        _ => return,
    };
    if let Some(p) = disabled_pattern(&t.name) {
        out.unquantized.push((
            module.to_string(),
            format!("ModelOpt leaves '{p}' unquantized"),
        ));
    } else if weight.is_some() && t.shape.len() == 2 && is_embedding(module) {
        out.unquantized
            .push((module.to_string(), "embedding".to_string()));
    } else if let Some(reason) = ex.excluded_by_pattern(module) {
        out.unquantized.push((module.to_string(), reason));
    } else {
        unclassified.push(format!("'{}' {:?} {:?}", t.name, t.dtype, t.shape));
    }
}

fn unclassified_problem(layout: &Layout, unclassified: &[String]) -> String {
    format!(
        "{} weight(s) are neither linears of layout '{}' nor modules ModelOpt leaves unquantized, so shardquant \
         cannot tell whether to quantize them (it does not guess): {}{}\n  \
         fix: describe them in a layout file (`shardquant inspect DIR --layout-json > layout.json`, edit, then \
         --layout layout.json), or keep them unquantized with --exclude 'MODULE'",
        unclassified.len(),
        layout.name,
        unclassified
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        if unclassified.len() > 5 { ", ..." } else { "" }
    )
}

/// ModelOpt quantizes a BMM experts module as a whole: excluding one of its two parameters
/// would leave the module half quantized, which no engine loads.
fn partly_excluded_bmm(linears: &[Linear], problems: &mut Vec<Problem>) {
    let mut modules: std::collections::BTreeMap<&str, (Vec<&str>, Vec<&str>)> =
        std::collections::BTreeMap::new();
    for l in linears.iter().filter(|l| l.source.bmm_experts.is_some()) {
        let entry = modules.entry(l.quant_module()).or_default();
        match l.excluded {
            Some(_) => entry.1.push(&l.module),
            None => entry.0.push(&l.module),
        }
    }
    for (module, (quantized, excluded)) in modules {
        if !quantized.is_empty() && !excluded.is_empty() {
            problems.push(format!(
                "{module}: {} would be quantized but {} not; ModelOpt quantizes the experts module as a whole and \
                 engines load it so (exclude both with --exclude '{module}.*', or neither)",
                quantized.join(", "),
                excluded.join(", ")
            ).into());
        }
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
    let excluded = ex.reason(&ckpt.tensors()[idx].name, module, role);
    let source = match matrix_source(ckpt, idx, ex.options) {
        Ok(source) => source,
        Err(problem) => {
            if excluded.is_some() {
                out.excluded_other.push(module.to_string());
            } else {
                out.problems.push(problem.into());
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

/// Expert linears of a fused parameter: one per expert and projection sliced out of an
/// `[E, out, in]` parameter (`gate_up_proj [E, 2I, H]`, `down_proj [E, H, I]`), or the whole
/// BMM-style `[E, in, out]` parameter as one linear.
fn fused_linears(
    ckpt: &Checkpoint,
    layout: &Layout,
    idx: usize,
    ex: &mut Exclusions,
    problems: &mut Vec<Problem>,
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
        problems.push(
            format!(
            "{file}: tensor '{}' has dtype {:?}; fused expert weights must be BF16, F16 or F32 \
             (fused FP8 experts are not supported; per-expert FP8 tensors are)",
            t.name, t.dtype
        )
            .into(),
        );
        return Some(Vec::new());
    };
    let orientation = if experts.fused_transposed {
        "[experts, in, out]"
    } else {
        "[experts, out, in]"
    };
    let &[n_experts, d1, d2] = t.shape.as_slice() else {
        problems.push(
            format!(
            "{file}: tensor '{}' should be a fused expert parameter {orientation}, has shape {:?}",
            t.name, t.shape
        )
            .into(),
        );
        return Some(Vec::new());
    };
    if experts.fused_transposed && experts.module.is_some() {
        // [E, in, out] written per expert (Qwen3-VL-MoE): each projection is a column slice
        // of its expert's [in, out] matrix; gate and up are the two halves of gate_up.
        let (cols, out_total) = (d1, d2);
        if gate_up && out_total % 2 != 0 {
            problems.push(
                format!(
                    "{file}: tensor '{}': fused gate_up has an odd output count {out_total}",
                    t.name
                )
                .into(),
            );
            return Some(Vec::new());
        }
        let expert_bytes = cols * out_total * dtype.size();
        let mut linears = Vec::new();
        for e in 0..n_experts {
            for (proj, start, n) in expert_parts(gate_up, out_total) {
                let module = experts
                    .module_name(layer, e, proj)
                    .expect("checked: the layout has a per-expert module");
                let mut source = WeightSource::matrix(idx, n, cols, dtype);
                source.offset = e * expert_bytes;
                source.fused = true;
                source.columns = Some(ColumnSlice {
                    stride: out_total,
                    start,
                });
                let excluded = ex.reason(&t.name, &module, Role::Expert);
                if excluded.is_some() {
                    problems.push(format!(
                        "{module}: experts stored [experts, in, out] ('{}') cannot be left unquantized one by one; \
                         quantize them (drop the --exclude / --scope that matches them) or convert the tensor to [experts, out, in] first",
                        t.name
                    ).into());
                    return Some(Vec::new());
                }
                check(ckpt, &source, ex.options, problems);
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
        return Some(linears);
    }
    if experts.fused_transposed {
        // One linear: the kernels see the [E * out, in] transposed copy.
        let (cols, out_features) = (d1, d2);
        let mut source = WeightSource::matrix(idx, n_experts * out_features, cols, dtype);
        source.bmm_experts = Some(n_experts);
        let excluded = ex.reason(&t.name, &t.name, Role::Expert);
        if excluded.is_none() {
            check(ckpt, &source, ex.options, problems);
        }
        return Some(vec![Linear {
            module: t.name.clone(),
            layer,
            role: Role::Expert,
            expert: None,
            shared_group: None,
            source,
            excluded,
        }]);
    }
    let (rows, cols) = (d1, d2);
    if gate_up && rows % 2 != 0 {
        problems.push(
            format!(
                "{file}: tensor '{}': fused gate_up has an odd row count {rows}",
                t.name
            )
            .into(),
        );
        return Some(Vec::new());
    }
    let mut linears = Vec::new();
    let expert_bytes = rows * cols * dtype.size();
    for e in 0..n_experts {
        for (proj, row0, nrows) in expert_parts(gate_up, rows) {
            let module = experts.module_name(layer, e, proj).expect(
                "layouts with [E, out, in] fused experts have a per-expert module (validated)",
            );
            let mut source = WeightSource::matrix(idx, nrows, cols, dtype);
            source.offset = e * expert_bytes + row0 * cols * dtype.size();
            source.fused = true;
            let excluded = ex.reason(&t.name, &module, Role::Expert);
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

/// The projections of one expert in a fused parameter with `total` outputs: gate and up are
/// its two halves (gate first, as transformers 5 and the hub store them), down the whole;
/// each as (projection, first output, outputs).
fn expert_parts(gate_up: bool, total: usize) -> Vec<(ExpertProj, usize, usize)> {
    if gate_up {
        vec![
            (ExpertProj::Gate, 0, total / 2),
            (ExpertProj::Up, total / 2, total / 2),
        ]
    } else {
        vec![(ExpertProj::Down, 0, total)]
    }
}

fn check(ckpt: &Checkpoint, source: &WeightSource, options: &Options, problems: &mut Vec<Problem>) {
    if let Err(reason) = check_shape(options.output.format, source.rows, source.cols) {
        let t = &ckpt.tensors()[source.tensor];
        let file = ckpt.shards()[t.shard].path.display();
        let module = t.name.strip_suffix(".weight").unwrap_or(&t.name);
        problems.push(
            format!(
                "{file}: tensor '{}' [{}, {}] cannot be quantized to {}: {reason} \
             (leave it unquantized with --exclude '{module}')",
                t.name,
                source.rows_per_matrix(),
                source.cols,
                options.output.format.cli_name(),
            )
            .into(),
        );
    }
}
