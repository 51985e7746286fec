//! The conversion plan: every output tensor, its shard and its place, and the units of work
//! that produce them, all decided from headers, layout and statistics before any weight is read.
//!
//! A [`Unit`] is the smallest piece of work whose scales are coupled: the linears of one
//! shared-input group (NVFP4 q/k/v share `weight_scale_2`), one expert's gate and up (they share
//! one weight amax), a lone linear, one pass-through tensor, or a layer's KV-cache scales.

mod classify;
pub mod exclude;
mod groups;
pub mod policy;
mod problem;
mod shapes;
pub(crate) mod shards;
mod sources;
mod units;

pub use classify::{classify, Classified, Linear};
pub use exclude::summarize_exclude_modules;
pub use problem::Problem;
pub use shards::{OutputTensor, ShardPlan};
pub use sources::{source_dtype, ColumnSlice, WeightSource};
use units::{build_units, kv_units, UnitBuilder};
pub use units::{Job, Scalar, TensorSlice, Unit};

use crate::compute::linear::InputAmax;
use crate::compute::mse::Importance;
use crate::error::{Error, Result};
use crate::input::checkpoint::Checkpoint;
use crate::input::layout::Layout;
use crate::input::stats::{ActivationStats, ModelNames, WeightAmax};
use crate::options::{ImportanceSource, KvCache, Options, WeightAmaxMode};

/// A linear and the amax the plan decided for it from the statistics.
#[derive(Debug, Clone)]
pub struct LinearPlan {
    /// The linear as classified.
    pub linear: Linear,
    /// Its input amax after the sharing rules; `None` for excluded linears and formats that
    /// do not quantize activations.
    pub input: Option<InputAmax>,
    /// Its weight amax from the statistics (`--weight-amax stats`).
    pub weight_from_stats: Option<WeightAmax>,
    /// The per-tensor weight amax the statistics record, to check against the computed one
    /// (`--weight-amax compute`).
    pub weight_check: Option<f32>,
}

/// Everything the conversion will do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The layout used.
    pub layout: Layout,
    /// All linears (quantized or excluded), with what the plan decided for each.
    pub linears: Vec<LinearPlan>,
    /// Units in streaming order.
    pub units: Vec<Unit>,
    /// Output tensors in write order (the converter moves them into its shard plan).
    pub outputs: Vec<OutputTensor>,
    /// How many units read each input tensor (to release its pages after the last one).
    pub tensor_users: Vec<usize>,
    /// `exclude_modules` / `ignore` for the metadata.
    pub exclude_modules: Vec<String>,
    /// Pass-through tensors, routers, MTP layers (its `linears` moved to [`Plan::linears`]).
    pub classified: Classified,
    /// Warnings found while planning.
    pub warnings: Vec<String>,
    /// The statistics used.
    pub stats: ActivationStats,
}

impl Plan {
    /// Plans a conversion. All problems found are reported together in one error.
    pub fn build(
        ckpt: &Checkpoint,
        layout: Layout,
        config: &serde_json::Value,
        options: &Options,
    ) -> Result<Plan> {
        let classified = classify(ckpt, &layout, config, options)?;
        Plan::from_classified(ckpt, layout, config, options, classified)
    }

    /// Plans a conversion from the checkpoint's tensors as [`classify`] sorted them (with the
    /// same layout, config and options).
    pub fn from_classified(
        ckpt: &Checkpoint,
        layout: Layout,
        config: &serde_json::Value,
        options: &Options,
        mut classified: Classified,
    ) -> Result<Plan> {
        let mut problems = classified.problems.clone();
        let names = model_names(&classified, &layout);
        let want_weights = options.output.weight_amax == WeightAmaxMode::Stats;
        let loaded = ActivationStats::load_formats(
            &options.stats,
            options.output.stats_format,
            &layout,
            &names,
            want_weights,
        );
        let stats_loaded = loaded.is_ok();
        let stats = loaded.unwrap_or_else(|e| {
            problems.push(Problem::from_lines(&e.to_string()));
            ActivationStats::default()
        });
        let mut warnings = std::mem::take(&mut classified.warnings);
        if !classified.unused_excludes.is_empty() {
            warnings.push(format!(
                "--exclude pattern(s) matched no linear: {} (patterns match on-disk module names, e.g. {})",
                classified.unused_excludes.join(", "),
                classified.linears.first().map_or("model.layers.0.mlp.down_proj", |l| l.module.as_str())
            ));
        }
        if !stats.unmatched.is_empty() {
            warnings.push(format!(
                "{} statistics key(s) name modules this model does not have (wrong model or naming?), e.g. {}",
                stats.unmatched.len(),
                stats.unmatched.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        for bad in &stats.invalid {
            warnings.push(format!(
                "unusable statistics value treated as missing: {bad}"
            ));
        }
        let linears = std::mem::take(&mut classified.linears);
        problems.extend(
            groups::partial_groups(&linears)
                .into_iter()
                .map(Problem::new),
        );
        if options.output.export == crate::compute::Export::CompressedTensors {
            problems.extend(ct_unsupported(ckpt, &linears).into_iter().map(Problem::new));
        }
        if let Some(w) = dtype_mismatch(config, &linears) {
            warnings.push(w);
        }
        let (input_amax, input_amax_exact) = if options.output.format.needs_input_amax() {
            let resolved = policy::resolve_input_amax(
                &linears,
                &stats,
                options.output.format,
                options.output.uncalibrated_experts,
                options.output.expert_input_amax,
            );
            warnings.extend(resolved.warnings);
            // Without the statistics (reported above) every expert looks uncalibrated: only
            // the cause is reported.
            if stats_loaded {
                problems.extend(resolved.problems.into_iter().map(Problem::new));
            }
            (resolved.per_linear, resolved.per_linear_exact)
        } else {
            (vec![None; linears.len()], vec![None; linears.len()])
        };
        if options.output.format.needs_input_amax() {
            let missing: Vec<&str> = linears
                .iter()
                .zip(&input_amax)
                .filter(|(l, a)| l.excluded.is_none() && a.is_none())
                .map(|(l, _)| l.module.as_str())
                .collect();
            // A statistics file that could not be read is reported once, above: the missing
            // input amax follow from it.
            if !missing.is_empty() && stats_loaded {
                let first: Vec<&str> = missing.iter().take(5).copied().collect();
                let mut problem = Problem::new(format!(
                    "--format {} quantizes activations, but {} quantized linear(s) have no input amax in {}: {}{}",
                    options.output.format.cli_name(),
                    missing.len(),
                    stats_files(options),
                    first.join(", "),
                    if missing.len() > first.len() { ", ..." } else { "" }
                ));
                let not_amax = stats
                    .ignored
                    .iter()
                    .filter(|i| i.ends_with(": not an amax buffer"))
                    .count();
                if not_amax > 0 && not_amax == stats.ignored.len() && stats.unmatched.is_empty() {
                    let example = stats.ignored[0].trim_end_matches(": not an amax buffer");
                    problem.details.push(format!(
                        "the statistics hold {not_amax} tensor(s) such as '{example}' and no quantizer amax \
                         (`*_quantizer._amax`): is a weight shard passed as --stats?"
                    ));
                }
                if !stats.invalid.is_empty() {
                    let zeros: Vec<&str> =
                        stats.invalid.iter().take(5).map(String::as_str).collect();
                    problem.details.push(format!(
                        "the statistics give zero, treated as missing, for {} value(s): {}{}",
                        stats.invalid.len(),
                        zeros.join(", "),
                        if stats.invalid.len() > zeros.len() {
                            ", ..."
                        } else {
                            ""
                        }
                    ));
                }
                problems.push(problem.with(
                    "fix: pass a ModelOpt amax file with --stats FILE, or use --format w4a16_nvfp4 (weight-only, needs no statistics)",
                ));
            }
        }
        // With computed weight amax, a per-tensor weight amax in the statistics is checked
        // against the weights (statistics made on another checkpoint are refused).
        let weight_check: Vec<Option<f32>> = match options.output.weight_amax {
            WeightAmaxMode::Compute => linears
                .iter()
                .map(
                    |l| match stats.module(&l.module).and_then(|m| m.weight_amax.as_ref()) {
                        Some(WeightAmax::Tensor(v)) => Some(*v),
                        _ => None,
                    },
                )
                .collect(),
            WeightAmaxMode::Stats => vec![None; linears.len()],
        };
        let weight_stats = match options.output.weight_amax {
            WeightAmaxMode::Compute => vec![None; linears.len()],
            WeightAmaxMode::Stats => {
                let w = policy::weight_amax_from_stats(&linears, &stats);
                let missing: Vec<&str> = linears
                    .iter()
                    .zip(&w)
                    .filter(|(l, a)| l.excluded.is_none() && a.is_none())
                    .map(|(l, _)| l.module.as_str())
                    .collect();
                if !missing.is_empty() && stats_loaded {
                    warnings.push(format!(
                        "--weight-amax stats: {} linear(s) have no weight amax in the statistics; computing max|W| for them: {}",
                        missing.len(),
                        missing.iter().take(5).copied().collect::<Vec<_>>().join(", ")
                    ));
                }
                for (l, a) in linears.iter().zip(&w) {
                    if matches!(a, Some(WeightAmax::Blocks { .. }))
                        && !options.output.format.is_nvfp4()
                    {
                        problems.push(format!(
                            "{}: the statistics give per-block weight amax (static NVFP4), which --format {} cannot use",
                            l.module,
                            options.output.format.cli_name()
                        ).into());
                    }
                }
                w
            }
        };
        if options.output.importance == ImportanceSource::Stats {
            importance_coverage(&linears, &stats, &mut problems, &mut warnings);
        }
        let mut builder = UnitBuilder::default();
        build_units(ckpt, &linears, &classified, options, &mut builder);
        if options.output.kv_cache == KvCache::Fp8 {
            kv_units(
                &layout,
                &linears,
                &stats,
                options,
                &mut builder,
                &mut problems,
            );
        }
        if !problems.is_empty() {
            return Err(problem_report(problems, &warnings));
        }
        let (units, outputs) = builder.finish();
        let mut tensor_users = vec![0; ckpt.tensors().len()];
        for u in &units {
            for &t in &u.inputs {
                tensor_users[t] += 1;
            }
        }
        // A rename is reversed only where transformers applied it while loading.
        let renames_used: Vec<bool> = layout
            .memory_renames
            .iter()
            .map(|(disk, _)| {
                ckpt.tensors()
                    .iter()
                    .any(|t| t.name.starts_with(disk.as_str()))
            })
            .collect();
        let exclude_modules = exclude_modules(&layout, &linears, &classified, &renames_used);
        let linears = linears
            .into_iter()
            .zip(input_amax.into_iter().zip(input_amax_exact))
            .zip(weight_stats.into_iter().zip(weight_check))
            .map(
                |((linear, (amax, exact)), (weight_from_stats, weight_check))| LinearPlan {
                    input: amax.map(|amax| InputAmax { amax, exact }),
                    linear,
                    weight_from_stats,
                    weight_check,
                },
            )
            .collect();
        Ok(Plan {
            layout,
            linears,
            units,
            outputs,
            tensor_users,
            exclude_modules,
            classified,
            warnings,
            stats,
        })
    }

    /// Bytes of the largest unit (the least memory a conversion needs).
    pub fn largest_unit_bytes(&self) -> u64 {
        self.units.iter().map(|u| u.bytes).max().unwrap_or(0)
    }

    /// What the plan writes, to compare two plans: the quantized linears, every output tensor
    /// (name, dtype, shape) and `exclude_modules`.
    pub fn what_it_writes(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let quantized = self
            .linears
            .iter()
            .filter(|p| p.linear.excluded.is_none())
            .map(|p| p.linear.module.clone())
            .collect();
        let outputs = self
            .outputs
            .iter()
            .map(|o| format!("{} {:?} {:?}", o.name, o.dtype, o.shape))
            .collect();
        (quantized, outputs, self.exclude_modules.clone())
    }

    /// Number of linears that are quantized.
    pub fn quantized_count(&self) -> usize {
        self.linears
            .iter()
            .filter(|p| p.linear.excluded.is_none())
            .count()
    }
}

fn problem_report(problems: Vec<Problem>, warnings: &[String]) -> Error {
    let count = problems.len();
    let mut text = format!("pre-flight found {count} problem(s); nothing was written:");
    for p in problems.iter().take(40) {
        text.push_str("\n  ");
        text.push_str(&p.to_string().replace('\n', "\n  "));
    }
    if problems.len() > 40 {
        text.push_str(&format!("\n  ... and {} more", problems.len() - 40));
    }
    for w in warnings {
        text.push_str(&format!("\n  warning: {w}"));
    }
    Error::bad_input(text)
}

/// ModelOpt loads the model in config.json's dtype and quantizes `weight.to(dtype)`; we
/// quantize the stored values. Say so when the two differ.
fn dtype_mismatch(config: &serde_json::Value, linears: &[Linear]) -> Option<String> {
    let declared = config
        .get("torch_dtype")
        .or_else(|| config.get("dtype"))?
        .as_str()?;
    let expected = match declared {
        "bfloat16" => crate::compute::SourceDtype::Bf16,
        "float16" => crate::compute::SourceDtype::F16,
        "float32" => crate::compute::SourceDtype::F32,
        _ => return None,
    };
    let odd = linears
        .iter()
        .filter(|l| l.excluded.is_none() && l.source.dtype != expected)
        .count();
    (odd > 0).then(|| {
        format!(
            "{odd} quantized linear weight(s) are stored in another dtype than config.json's {declared}; ModelOpt would \
             quantize them after casting to {declared}, shardquant quantizes the stored values, so bytes may differ from a ModelOpt export"
        )
    })
}

/// `--importance stats`: every quantized linear should have per-channel activation sums; none
/// at all is an error (the option would do nothing), some missing is a warning (those searches
/// are unweighted, and the report lists them).
fn importance_coverage(
    linears: &[Linear],
    stats: &ActivationStats,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) {
    let quantized: Vec<&Linear> = linears.iter().filter(|l| l.excluded.is_none()).collect();
    let missing: Vec<&str> = quantized
        .iter()
        .filter(|l| {
            stats
                .module(&l.module)
                .and_then(|m| Importance::from_mean_sq(&m.mean_sq()?, l.source.cols))
                .is_none()
        })
        .map(|l| l.module.as_str())
        .collect();
    if !quantized.is_empty() && missing.len() == quantized.len() {
        problems.push(Problem::new(
            "--importance stats: the statistics hold no per-channel activation sums (input_sum_sq with token_count, or input_mean_sq) for any quantized linear; pass a llama.cpp imatrix or a shardquant statistics file with them",
        ));
    } else if !missing.is_empty() {
        warnings.push(format!(
            "--importance stats: {} linear(s) have no usable per-channel activation statistics (or saw no tokens); their MSE search is unweighted: {}",
            missing.len(),
            missing.iter().take(5).copied().collect::<Vec<_>>().join(", ")
        ));
    }
}

/// "the statistics (a.safetensors, b.safetensors)" or "the statistics (no --stats file given)".
fn stats_files(options: &Options) -> String {
    if options.stats.is_empty() {
        "the statistics (no --stats file given)".to_string()
    } else {
        let names: Vec<String> = options
            .stats
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!("the statistics ({})", names.join(", "))
    }
}

/// The names and shapes the statistics importers need, from a classified checkpoint.
pub fn model_names(classified: &Classified, layout: &Layout) -> ModelNames {
    let mut names = ModelNames::default();
    for l in &classified.linears {
        names
            .linears
            .insert(l.module.clone(), (l.source.rows, l.source.cols));
        if let Some((e, _)) = l.expert {
            names.experts.entry(l.layer).or_default().insert(e);
        }
        if let Some(kv) = &layout.kv_cache {
            names
                .attention
                .insert(kv.attention.render(Some(l.layer), None));
        }
    }
    names
}

/// `exclude_modules` as ModelOpt summarises it; MTP layer prefixes are appended after the
/// sorted summary, as `_add_mtp_exclusions` does. With `memory_renames` (Mistral-3, Gemma-3)
/// the summary runs over the in-memory names, and the prefixes transformers renamed while
/// loading (`renames_used`) are renamed back, as ModelOpt's `revert_quant_config_names` does.
fn exclude_modules(
    layout: &Layout,
    linears: &[Linear],
    classified: &Classified,
    renames_used: &[bool],
) -> Vec<String> {
    let quantized: Vec<String> = linears
        .iter()
        .filter(|l| l.excluded.is_none())
        .map(|l| layout.memory_name(l.quant_module()).into_owned())
        .collect();
    // Unquantized modules found in the checkpoint (embeddings, default-disabled modules, in
    // checkpoint order), the layers' excluded linears, the layout's modules without tensors
    // (a tied lm_head), then routers. The order only decides which of two equivalent
    // wildcards is listed first; the summary is sorted.
    let mut seen = std::collections::HashSet::new();
    let mut unquantized: Vec<String> = Vec::new();
    let excluded = linears
        .iter()
        .filter(|l| l.excluded.is_some())
        .map(|l| l.quant_module());
    for name in classified
        .unquantized
        .iter()
        .map(|(m, _)| m.as_str())
        .chain(excluded)
        .chain(classified.excluded_other.iter().map(String::as_str))
        .chain(layout.unquantized_modules.iter().map(String::as_str))
        .chain(classified.routers.iter().map(String::as_str))
        .filter(|name| !layout.is_unwrapped(name))
    {
        if seen.insert(name) {
            unquantized.push(layout.memory_name(name).into_owned());
        }
    }
    let mut out: Vec<String> = summarize_exclude_modules(&quantized, &unquantized)
        .iter()
        .map(|name| layout.disk_name(name, Some(renames_used)).into_owned())
        .collect();
    let prefix = layout.layer_prefix.render(None, None);
    for l in &classified.mtp_layers {
        let pattern = format!("{}*", prefix.replace("{layer}", &l.to_string()));
        if !out.contains(&pattern) {
            out.push(pattern);
        }
    }
    out
}

/// Why this plan cannot be written as compressed-tensors by this version: quantized weights
/// that are not whole 2-D BF16 matrices (fused or BMM expert stacks and column slices: their
/// per-expert compressed-tensors names are not built; F16 / F32 weights, or FP8 sources
/// dequantized to F32: compressed-tensors' scale dtype follows the weight's, not verified for
/// those). FP8 block-scaled sources dequantized to BF16 are written as their BF16
/// dequantization would be.
fn ct_unsupported(ckpt: &Checkpoint, plan_linears: &[Linear]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut shown = 0;
    for l in plan_linears.iter().filter(|l| l.excluded.is_none()) {
        let s = &l.source;
        let t = &ckpt.tensors()[s.tensor];
        let two_d = t.shape.len() == 2;
        let why = if s.bmm_experts.is_some() || s.fused || s.columns.is_some() || !two_d {
            Some("a slice of a fused or stacked tensor")
        } else if s.dtype != crate::compute::SourceDtype::Bf16 && s.fp8_scale.is_some() {
            Some("an FP8 source dequantized to F32 (--fp8-dequant f32)")
        } else if s.dtype != crate::compute::SourceDtype::Bf16 {
            Some("not BF16")
        } else {
            None
        };
        if let Some(why) = why {
            if shown < 5 {
                problems.push(format!(
                    "--export compressed-tensors: {} ({}) is {why}; this version writes compressed-tensors only from whole 2-D BF16 weights (or FP8 block-scaled ones dequantized to BF16)",
                    l.module, t.name
                ));
            }
            shown += 1;
        }
    }
    if shown > 5 {
        problems.push(format!("  ... and {} more such linears", shown - 5));
    }
    if !problems.is_empty() {
        problems.push("  fix: use --export modelopt for this checkpoint".to_string());
    }
    problems
}
