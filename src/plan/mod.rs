//! The conversion plan: every output tensor, its shard and its place, and the units of work
//! that produce them, all decided from headers, layout and statistics before any weight is read.
//!
//! A [`Unit`] is the smallest piece of work whose scales are coupled: the linears of one
//! shared-input group (NVFP4 q/k/v share `weight_scale_2`), one expert's gate and up (they share
//! one weight amax), a lone linear, one pass-through tensor, or a layer's KV-cache scales.

mod classify;

pub use classify::{classify, Classified, Linear, WeightSource};

use crate::calib::policy;
use crate::checkpoint::{Checkpoint, Dtype, OutputTensor};
use crate::error::{Error, Result};
use crate::export::summarize_exclude_modules;
use crate::layout::{ExpertProj, Layout};
use crate::options::{Options, WeightAmaxMode};
use crate::quant::{fp8_scale, output_tensors};
use crate::stats::{ActivationStats, ModelNames, WeightAmax};
use std::collections::BTreeMap;

/// What a unit does.
#[derive(Debug, Clone)]
pub enum Job {
    /// Quantize these linears (indices into [`Plan::linears`]); they share one weight amax.
    Quantize(Vec<usize>),
    /// Copy one input tensor unchanged.
    Copy(usize),
    /// Write precomputed f32 scalars (KV-cache scales).
    Scalars(Vec<f32>),
}

/// One unit of work and the output tensors it produces.
#[derive(Debug, Clone)]
pub struct Unit {
    /// The work.
    pub job: Job,
    /// Output tensor indices (into [`Plan::outputs`]) in the order the job produces them.
    pub outputs: Vec<usize>,
    /// Input tensors the unit reads (indices into [`Checkpoint::tensors`]).
    pub inputs: Vec<usize>,
    /// Bytes the unit holds while in flight: input pages plus output buffers.
    pub bytes: u64,
}

/// Everything the conversion will do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The layout used.
    pub layout: Layout,
    /// All linears (quantized or excluded).
    pub linears: Vec<Linear>,
    /// Input amax per linear, after the sharing rules (None for excluded linears / weight-only).
    pub input_amax: Vec<Option<f32>>,
    /// Weight amax from statistics per linear (`--weight-amax stats`).
    pub weight_stats: Vec<Option<WeightAmax>>,
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
        let mut classified = classify(ckpt, &layout, config, options)?;
        let mut problems = classified.problems.clone();
        let names = model_names(&classified, &layout);
        let stats = ActivationStats::load(&options.stats, &layout, &names)?;
        let mut warnings = Vec::new();
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
        let resolved = policy::resolve_input_amax(&linears, &stats, options.format);
        warnings.extend(resolved.warnings);
        let input_amax = resolved.per_linear;
        if options.format.needs_input_amax() {
            let missing: Vec<&str> = linears
                .iter()
                .zip(&input_amax)
                .filter(|(l, a)| l.excluded.is_none() && a.is_none())
                .map(|(l, _)| l.module.as_str())
                .collect();
            if !missing.is_empty() {
                let first: Vec<&str> = missing.iter().take(5).copied().collect();
                problems.push(format!(
                    "--format {} quantizes activations, but {} quantized linear(s) have no input amax in {}: {}{}",
                    options.format.cli_name(),
                    missing.len(),
                    stats_files(options),
                    first.join(", "),
                    if missing.len() > first.len() { ", ..." } else { "" }
                ));
                problems.push(
                    "  fix: pass a ModelOpt amax file with --stats FILE, or use --format w4a16_nvfp4 (weight-only, needs no statistics)"
                        .to_string(),
                );
            }
        }
        let weight_stats = match options.weight_amax {
            WeightAmaxMode::Compute => vec![None; linears.len()],
            WeightAmaxMode::Stats => {
                let w = policy::weight_amax_from_stats(&linears, &stats);
                let missing: Vec<&str> = linears
                    .iter()
                    .zip(&w)
                    .filter(|(l, a)| l.excluded.is_none() && a.is_none())
                    .map(|(l, _)| l.module.as_str())
                    .collect();
                if !missing.is_empty() {
                    warnings.push(format!(
                        "--weight-amax stats: {} linear(s) have no weight amax in the statistics; computing max|W| for them: {}",
                        missing.len(),
                        missing.iter().take(5).copied().collect::<Vec<_>>().join(", ")
                    ));
                }
                for (l, a) in linears.iter().zip(&w) {
                    if matches!(a, Some(WeightAmax::Blocks { .. })) && !options.format.is_nvfp4() {
                        problems.push(format!(
                            "{}: the statistics give per-block weight amax (static NVFP4), which --format {} cannot use",
                            l.module,
                            options.format.cli_name()
                        ));
                    }
                }
                w
            }
        };
        let mut builder = UnitBuilder::default();
        build_units(ckpt, &linears, &classified, options, &mut builder);
        if options.kv_cache_fp8 {
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
        let exclude_modules = exclude_modules(&layout, &linears, &classified);
        Ok(Plan {
            layout,
            linears,
            input_amax,
            weight_stats,
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

    /// Number of quantized linears.
    pub fn quantized_count(&self) -> usize {
        self.linears.iter().filter(|l| l.excluded.is_none()).count()
    }
}

fn problem_report(problems: Vec<String>, warnings: &[String]) -> Error {
    let count = problems.iter().filter(|p| !p.starts_with("  ")).count();
    let mut text = format!("pre-flight found {count} problem(s); nothing was written:");
    for p in problems.iter().take(40) {
        text.push_str("\n  ");
        text.push_str(p);
    }
    if problems.len() > 40 {
        text.push_str(&format!("\n  ... and {} more", problems.len() - 40));
    }
    for w in warnings {
        text.push_str(&format!("\n  warning: {w}"));
    }
    Error::bad_input(text)
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

/// The names and shapes the statistics importers need.
fn model_names(classified: &Classified, layout: &Layout) -> ModelNames {
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

/// A unit waiting for its place: ((first input tensor, rank, creation order), unit, outputs).
type PendingUnit = ((usize, u8, usize), Unit, Vec<OutputTensor>);

/// Collects units with local output specs, then orders them for streaming.
#[derive(Default)]
struct UnitBuilder {
    pending: Vec<PendingUnit>,
}

impl UnitBuilder {
    fn push(
        &mut self,
        key: (usize, u8),
        job: Job,
        inputs: Vec<usize>,
        input_bytes: u64,
        outputs: Vec<OutputTensor>,
    ) {
        let out_bytes: u64 = outputs.iter().map(|o| o.byte_len() as u64).sum();
        let seq = self.pending.len();
        let unit = Unit {
            job,
            outputs: Vec::new(),
            inputs,
            bytes: input_bytes + out_bytes,
        };
        self.pending.push(((key.0, key.1, seq), unit, outputs));
    }

    fn finish(mut self) -> (Vec<Unit>, Vec<OutputTensor>) {
        self.pending.sort_by_key(|p| p.0);
        let mut units = Vec::with_capacity(self.pending.len());
        let mut outputs = Vec::new();
        for (_, mut unit, outs) in self.pending {
            for o in outs {
                unit.outputs.push(outputs.len());
                outputs.push(o);
            }
            units.push(unit);
        }
        (units, outputs)
    }
}

fn dtype_of(name: &str) -> Dtype {
    match name {
        "U8" => Dtype::U8,
        "F8_E4M3" => Dtype::F8_E4M3,
        _ => Dtype::F32,
    }
}

fn build_units(
    ckpt: &Checkpoint,
    linears: &[Linear],
    classified: &Classified,
    options: &Options,
    b: &mut UnitBuilder,
) {
    for &t in &classified.passthrough {
        let e = &ckpt.tensors()[t];
        let out = OutputTensor {
            name: e.name.clone(),
            dtype: e.dtype,
            shape: e.shape.clone(),
        };
        b.push((t, 0), Job::Copy(t), vec![t], e.len as u64, vec![out]);
    }
    // Group quantized linears: shared-input groups (NVFP4), expert gate+up pairs, or alone.
    let mut groups: BTreeMap<(usize, u8, usize, usize), Vec<usize>> = BTreeMap::new();
    for (i, l) in linears.iter().enumerate() {
        if l.excluded.is_some() {
            continue;
        }
        let key = match (l.expert, l.shared_group) {
            (Some((e, ExpertProj::Gate | ExpertProj::Up)), _) => (l.layer, 0, e, 0),
            (None, Some(g)) if options.format.shares_group_scales() => (l.layer, 1, g, 0),
            _ => (l.layer, 2, i, 0),
        };
        groups.entry(key).or_default().push(i);
    }
    for members in groups.into_values() {
        let mut outs = Vec::new();
        let mut inputs: Vec<usize> = Vec::new();
        let mut in_bytes = 0u64;
        for &i in &members {
            let l = &linears[i];
            for (suffix, dtype, shape) in
                output_tensors(options.format, l.source.rows, l.source.cols)
            {
                outs.push(OutputTensor {
                    name: format!("{}.{suffix}", l.module),
                    dtype: dtype_of(dtype),
                    shape,
                });
            }
            if !inputs.contains(&l.source.tensor) {
                inputs.push(l.source.tensor);
            }
            in_bytes += l.source.byte_len() as u64;
        }
        let key = members
            .iter()
            .map(|&i| linears[i].source.tensor)
            .min()
            .unwrap_or(0);
        b.push((key, 0), Job::Quantize(members), inputs, in_bytes, outs);
    }
}

/// FP8 KV-cache scales, one unit per layer, placed after the layer's k_proj.
fn kv_units(
    layout: &Layout,
    linears: &[Linear],
    stats: &ActivationStats,
    options: &Options,
    b: &mut UnitBuilder,
    problems: &mut Vec<String>,
) {
    let Some(kv) = &layout.kv_cache else {
        problems.push(format!(
            "--kv-cache fp8: layout '{}' does not say where KV-cache scales go (no \"kv_cache\" entry)",
            layout.name
        ));
        return;
    };
    let mut missing = Vec::new();
    for l in linears {
        if l.module != kv.k_proj.render(Some(l.layer), None) {
            continue;
        }
        let attention = kv.attention.render(Some(l.layer), None);
        let s = stats.module(&attention);
        let (Some(k), Some(v)) = (
            s.and_then(|s| s.k_cache_amax),
            s.and_then(|s| s.v_cache_amax),
        ) else {
            missing.push(attention);
            continue;
        };
        let outs = vec![
            OutputTensor {
                name: format!("{}.k_scale", l.module),
                dtype: Dtype::F32,
                shape: vec![],
            },
            OutputTensor {
                name: format!("{}.v_scale", kv.v_proj.render(Some(l.layer), None)),
                dtype: Dtype::F32,
                shape: vec![],
            },
        ];
        let values = vec![
            fp8_scale(k, options.numerics),
            fp8_scale(v, options.numerics),
        ];
        b.push((l.source.tensor, 1), Job::Scalars(values), vec![], 0, outs);
    }
    if !missing.is_empty() {
        problems.push(format!(
            "--kv-cache fp8 needs k/v amax (ModelOpt k_bmm_quantizer / v_bmm_quantizer) for {} attention block(s) \
             missing from {}, e.g. {}",
            missing.len(),
            stats_files(options),
            missing.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ));
        problems.push(
            "  fix: calibrate with KV-cache quantization enabled (ModelOpt --kv_cache_qformat fp8) and pass that amax file, \
             or drop --kv-cache fp8"
                .to_string(),
        );
    }
}

/// `exclude_modules` as ModelOpt summarises it.
fn exclude_modules(layout: &Layout, linears: &[Linear], classified: &Classified) -> Vec<String> {
    let quantized: Vec<String> = linears
        .iter()
        .filter(|l| l.excluded.is_none())
        .map(|l| l.module.clone())
        .collect();
    let mut unquantized: Vec<String> = Vec::new();
    let push = |name: &str, list: &mut Vec<String>| {
        if !list.iter().any(|n| n == name) {
            list.push(name.to_string());
        }
    };
    if let Some(first) = layout.unquantized_modules.first() {
        push(first, &mut unquantized);
    }
    for l in linears.iter().filter(|l| l.excluded.is_some()) {
        push(&l.module, &mut unquantized);
    }
    for m in layout.unquantized_modules.iter().skip(1) {
        push(m, &mut unquantized);
    }
    for r in &classified.routers {
        push(r, &mut unquantized);
    }
    let mut out = summarize_exclude_modules(&quantized, &unquantized);
    let prefix = layout.layer_prefix.render(None, None);
    for l in &classified.mtp_layers {
        out.push(format!("{}*", prefix.replace("{layer}", &l.to_string())));
    }
    out.sort();
    out.dedup();
    out
}
