//! ModelOpt amax files: the `*_quantizer._amax` / `._global_amax` buffers of a calibrated
//! model, keyed by ModelOpt's in-memory module paths.
//!
//! Names understood (see `fixtures/golden/README.md`, "Name mapping"):
//! - `X.input_quantizer._amax`, `X.weight_quantizer._amax` (and `._global_amax` for static
//!   NVFP4 weights): the linear `X`, when `X` is a module of the checkpoint (per-module form,
//!   also transformers-4 per-expert names such as `…block_sparse_moe.experts.3.w1`);
//! - transformers-5 fused experts under the layout's `stats_module` (e.g. `model.layers.L.mlp.experts`):
//!   `gate_up_proj_input_quantizer` → input of gate and up of every expert of the layer,
//!   `down_proj_input_quantizer` → input of every down, `gate_up_proj_weight_quantizers.E` →
//!   weight of gate and up of expert E (per-block amax split in row halves),
//!   `down_proj_weight_quantizers.E` → weight of down of expert E. The in-memory name is the
//!   same for Mixtral, whose experts are `block_sparse_moe.experts.E.w1/w3/w2` on disk;
//! - BMM-style experts kept fused (gpt-oss, Llama-4): `M.P_input_quantizer` /
//!   `M.P_weight_quantizer` → the fused parameter `M.P` (e.g. `….mlp.experts.gate_up_proj`);
//! - `A.k_bmm_quantizer._amax` / `A.v_bmm_quantizer._amax`: KV cache of attention `A`.
//!
//! Weight-quantizer keys are read only when weight amax are wanted (`--weight-amax stats`);
//! otherwise they are listed as ignored, unchecked. Per-block amax are never decoded here:
//! they become [`super::BlockAmax`] handles on the file's mapping.

use super::{
    corrupt_value, is_corrupt, ActivationStats, BlockAmax, ModelNames, StatsEntry, StatsFile,
    WeightAmax,
};
use crate::error::{Error, Result};
use crate::input::layout::{ExpertProj, Layout};
use std::collections::HashMap;
use std::path::Path;

/// Which buffer of a quantizer a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Buffer {
    Amax,
    GlobalAmax,
}

/// Where one key's value goes.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Input(String),
    Weight(String),
    Kv {
        attention: String,
        is_k: bool,
    },
    /// Fused experts of one layer: input of the given projections of every expert.
    ExpertInput {
        layer: usize,
        projs: &'static [ExpertProj],
    },
    /// Fused experts: weight of one expert; `gate_up` means the value covers gate and up.
    ExpertWeight {
        layer: usize,
        expert: usize,
        gate_up: bool,
    },
    Ignored(&'static str),
    Unmatched,
}

/// Imports the entries of one ModelOpt amax file into `stats`; weight amax only when
/// `weights` is true (see [`ActivationStats::load_with`]).
pub fn import(
    file: &StatsFile,
    layout: &Layout,
    model: &ModelNames,
    weights: bool,
    stats: &mut ActivationStats,
) -> Result<()> {
    let path = file.path();
    // Static NVFP4 weights come as `_amax` (per block) + `_global_amax` pairs: index first.
    let globals: HashMap<&str, &StatsEntry> = file
        .entries()
        .iter()
        .filter_map(|e| Some((e.key.strip_suffix("._global_amax")?, e)))
        .collect();
    for e in file.entries() {
        let (base, buffer) = if let Some(b) = e.key.strip_suffix("._amax") {
            (b, Buffer::Amax)
        } else if let Some(b) = e.key.strip_suffix("._global_amax") {
            (b, Buffer::GlobalAmax)
        } else {
            file.dtype(e)?;
            stats.ignored.push(format!("{}: not an amax buffer", e.key));
            continue;
        };
        let target = classify(base, layout, model);
        let is_weight = matches!(target, Target::Weight(_) | Target::ExpertWeight { .. });
        // With --weight-amax compute, per-tensor weight amax are kept only to check that the
        // statistics were made on this checkpoint; per-block ones are not read at all.
        let per_tensor = e.len() == 1 && !globals.contains_key(base) && file.dtype(e).is_ok();
        if is_weight && !weights && !per_tensor {
            stats.ignored.push(format!(
                "{}: weight amax not used with --weight-amax compute",
                e.key
            ));
            continue;
        }
        file.dtype(e)?;
        if buffer == Buffer::GlobalAmax {
            continue; // consumed with its `_amax`
        }
        match target {
            Target::Input(module) => {
                if let Some(v) = usable(path, e, stats)? {
                    stats.merge_input(&module, v);
                }
            }
            Target::Kv { attention, is_k } => {
                if let Some(v) = usable(path, e, stats)? {
                    stats.merge_kv(&attention, is_k, v);
                }
            }
            Target::ExpertInput { layer, projs } => {
                if let Some(v) = usable(path, e, stats)? {
                    for module in expert_modules(layout, model, layer, None, projs) {
                        stats.merge_input(&module, v);
                    }
                }
            }
            Target::Weight(module) => {
                let global = globals.get(base).copied();
                if let Some(amax) = weight_amax(file, e, global, stats)? {
                    let parts =
                        split_gate_up(path, &e.key, amax, std::slice::from_ref(&module), model)?;
                    for part in parts {
                        merge_weight(path, stats, &module, part)?;
                    }
                }
            }
            Target::ExpertWeight {
                layer,
                expert,
                gate_up,
            } => {
                let global = globals.get(base).copied();
                let Some(amax) = weight_amax(file, e, global, stats)? else {
                    continue;
                };
                let projs: &[ExpertProj] = if gate_up {
                    &[ExpertProj::Gate, ExpertProj::Up]
                } else {
                    &[ExpertProj::Down]
                };
                let modules = expert_modules(layout, model, layer, Some(expert), projs);
                let split = split_gate_up(path, &e.key, amax, &modules, model)?;
                for (module, part) in modules.iter().zip(split) {
                    merge_weight(path, stats, module, part)?;
                }
            }
            Target::Ignored(why) => stats.ignored.push(format!("{}: {why}", e.key)),
            Target::Unmatched => stats.unmatched.push(e.key.clone()),
        }
    }
    Ok(())
}

fn classify(base: &str, layout: &Layout, model: &ModelNames) -> Target {
    // Amax files name ModelOpt's in-memory modules; the layout knows transformers' renames.
    let disk = layout.disk_name(base, None);
    let Some((module, quantizer)) = disk.rsplit_once('.') else {
        return Target::Unmatched;
    };
    match quantizer {
        "input_quantizer" | "weight_quantizer" if model.linears.contains_key(module) => {
            if quantizer == "input_quantizer" {
                Target::Input(module.to_string())
            } else {
                Target::Weight(module.to_string())
            }
        }
        "k_bmm_quantizer" | "v_bmm_quantizer" if model.attention.contains(module) => Target::Kv {
            attention: module.to_string(),
            is_k: quantizer == "k_bmm_quantizer",
        },
        // BMM-style experts (gpt-oss, Llama-4): one input and one weight quantizer per fused
        // parameter `M.P`, named `M.P_input_quantizer` / `M.P_weight_quantizer`.
        q if q.ends_with("_input_quantizer") || q.ends_with("_weight_quantizer") => {
            let (param, is_input) = match q.strip_suffix("_input_quantizer") {
                Some(p) => (p, true),
                None => (q.trim_end_matches("_weight_quantizer"), false),
            };
            let linear = format!("{module}.{param}");
            match (model.linears.contains_key(&linear), is_input) {
                (true, true) => Target::Input(linear),
                (true, false) => Target::Weight(linear),
                (false, _) => classify_fused(module, quantizer, layout, model),
            }
        }
        "q_bmm_quantizer" => Target::Ignored("query BMM amax is not exported by ModelOpt"),
        "output_quantizer" => Target::Ignored("output quantizers are not exported"),
        _ => classify_fused(module, quantizer, layout, model),
    }
}

/// transformers-5 fused experts: `<stats_module>.gate_up_proj_input_quantizer`,
/// `<stats_module>.gate_up_proj_weight_quantizers.E`, and the same for `down_proj`.
fn classify_fused(module: &str, last: &str, layout: &Layout, model: &ModelNames) -> Target {
    let Some(experts) = &layout.experts else {
        return Target::Unmatched;
    };
    const GATE_UP: &[ExpertProj] = &[ExpertProj::Gate, ExpertProj::Up];
    const DOWN: &[ExpertProj] = &[ExpertProj::Down];
    // `<stats_module>.gate_up_proj_input_quantizer` (last = the quantizer attribute)
    if let Some(caps) = experts.stats_module.matches(module) {
        let Some(layer) = caps.layer.filter(|l| model.experts.contains_key(l)) else {
            return Target::Unmatched;
        };
        return match last {
            "gate_up_proj_input_quantizer" => Target::ExpertInput {
                layer,
                projs: GATE_UP,
            },
            "down_proj_input_quantizer" => Target::ExpertInput { layer, projs: DOWN },
            _ => Target::Unmatched,
        };
    }
    // `<stats_module>.gate_up_proj_weight_quantizers.E` (module ends in the list attribute)
    let Ok(expert) = last.parse::<usize>() else {
        return Target::Unmatched;
    };
    let Some((parent, list)) = module.rsplit_once('.') else {
        return Target::Unmatched;
    };
    let Some(layer) = experts.stats_module.matches(parent).and_then(|c| c.layer) else {
        return Target::Unmatched;
    };
    if !model
        .experts
        .get(&layer)
        .is_some_and(|set| set.contains(&expert))
    {
        return Target::Unmatched;
    }
    match list {
        "gate_up_proj_weight_quantizers" => Target::ExpertWeight {
            layer,
            expert,
            gate_up: true,
        },
        "down_proj_weight_quantizers" => Target::ExpertWeight {
            layer,
            expert,
            gate_up: false,
        },
        _ => Target::Unmatched,
    }
}

/// On-disk module names of the given projections of one expert (or all experts of the layer).
fn expert_modules(
    layout: &Layout,
    model: &ModelNames,
    layer: usize,
    expert: Option<usize>,
    projs: &[ExpertProj],
) -> Vec<String> {
    let Some(spec) = &layout.experts else {
        return Vec::new();
    };
    let experts: Vec<usize> = match expert {
        Some(e) => vec![e],
        None => model
            .experts
            .get(&layer)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default(),
    };
    experts
        .iter()
        .flat_map(|&e| {
            projs
                .iter()
                .filter_map(move |&p| spec.module_name(layer, e, p))
        })
        .filter(|m| model.linears.contains_key(m))
        .collect()
}

/// The value of a one-element entry (its dtype already checked).
fn scalar(path: &Path, e: &StatsEntry) -> Result<f32> {
    match e.scalar {
        Some(v) if e.len() == 1 => Ok(v),
        _ => Err(Error::bad_input(format!(
            "{}: '{}' should hold one value, has shape {:?}",
            path.display(),
            e.key,
            e.shape
        ))
        .with_hint("per-tensor quantizers (max calibration) store a single amax; is this file from another recipe?")),
    }
}

fn valid(v: f32) -> bool {
    v.is_finite() && v > 0.0
}

/// A per-tensor amax, or None (recorded as invalid) when zero; an error when NaN, infinite or
/// negative.
fn usable(path: &Path, e: &StatsEntry, stats: &mut ActivationStats) -> Result<Option<f32>> {
    let v = scalar(path, e)?;
    if is_corrupt(v) {
        return Err(corrupt_value(path, &e.key, v));
    }
    if valid(v) {
        Ok(Some(v))
    } else {
        stats.invalid.push(format!("{} = {v}", e.key));
        Ok(None)
    }
}

/// The weight amax of entry `e` (with its `_global_amax` entry, if any): per tensor, or a
/// per-block handle on the file, whose values are checked by one pass over the mapping.
fn weight_amax(
    file: &StatsFile,
    e: &StatsEntry,
    global: Option<&StatsEntry>,
    stats: &mut ActivationStats,
) -> Result<Option<WeightAmax>> {
    let path = file.path();
    if e.len() == 1 && global.is_none() {
        return Ok(usable(path, e, stats)?.map(WeightAmax::Tensor));
    }
    let Some(global) = global else {
        return Err(Error::bad_input(format!(
            "{}: '{}' holds {} values (a per-block amax) but there is no matching '_global_amax'",
            path.display(),
            e.key,
            e.len()
        ))
        .with_hint("per-block weight amax must come with the quantizer's _global_amax (ModelOpt static NVFP4)"));
    };
    file.dtype(global)?;
    let global_value = scalar(path, global)?;
    let blocks = BlockAmax::new(file.map().clone(), e.range.start, e.len(), file.dtype(e)?)
        .expect("the safetensors header was validated against the file length");
    if is_corrupt(global_value) {
        return Err(corrupt_value(path, &global.key, global_value));
    }
    if !blocks.all_usable() {
        return Err(corrupt_value(
            path,
            &e.key,
            "a per-block amax with a NaN, infinite or negative value",
        ));
    }
    if !valid(global_value) {
        stats
            .invalid
            .push(format!("{} = {global_value}", global.key));
        return Ok(None);
    }
    Ok(Some(WeightAmax::Blocks {
        global: global_value,
        blocks,
    }))
}

fn merge_weight(
    path: &Path,
    stats: &mut ActivationStats,
    module: &str,
    amax: WeightAmax,
) -> Result<()> {
    stats
        .merge_weight(module, amax)
        .map_err(|msg| Error::bad_input(format!("{}: {msg}", path.display())))
}

/// Distributes a weight amax over the modules it covers (one linear, or a fused expert's gate
/// and up): a per-tensor amax is shared; per-block amax (`[2I * H/16]` for a fused gate_up) is
/// cut in row order (gate rows first) after checking the block count against the weights.
/// Cutting moves offsets on the handle; no value is copied.
fn split_gate_up(
    path: &Path,
    key: &str,
    amax: WeightAmax,
    modules: &[String],
    model: &ModelNames,
) -> Result<Vec<WeightAmax>> {
    match amax {
        WeightAmax::Tensor(_) => Ok(vec![amax; modules.len()]),
        WeightAmax::Blocks { global, blocks } => {
            let sizes: Vec<usize> = modules
                .iter()
                .map(|m| model.linears.get(m).map_or(0, |(r, c)| r * (c / 16)))
                .collect();
            if sizes.iter().sum::<usize>() != blocks.len() {
                return Err(Error::bad_input(format!(
                    "{}: '{key}' has {} block amax values, but the expert's weights have {} blocks of 16",
                    path.display(),
                    blocks.len(),
                    sizes.iter().sum::<usize>()
                ))
                .with_hint("the statistics file was made for a different model"));
            }
            let mut out = Vec::new();
            let mut start = 0;
            for n in sizes {
                out.push(WeightAmax::Blocks {
                    global,
                    blocks: blocks
                        .slice(start, n)
                        .expect("sizes sum to the block count"),
                });
                start += n;
            }
            Ok(out)
        }
    }
}

/// Imports per-tensor amax values given as (key, value) pairs (ModelOpt amax dumps saved with
/// `torch.save`, after name mapping). Non-scalar buffers are not read from such files: they
/// are listed in `ignored`.
pub fn import_scalars(
    path: &Path,
    entries: &[(String, Vec<f32>)],
    layout: &Layout,
    model: &ModelNames,
    weights: bool,
    stats: &mut ActivationStats,
) -> Result<()> {
    for (key, values) in entries {
        let Some(base) = key.strip_suffix("._amax") else {
            stats.ignored.push(format!("{key}: not an amax buffer"));
            continue;
        };
        let target = classify(base, layout, model);
        let is_weight = matches!(target, Target::Weight(_) | Target::ExpertWeight { .. });
        if is_weight && !weights && values.len() != 1 {
            stats.ignored.push(format!(
                "{key}: weight amax not used with --weight-amax compute"
            ));
            continue;
        }
        let &[v] = values.as_slice() else {
            stats.ignored.push(format!(
                "{key}: {} values (per-channel or per-block amax are not read from .pt files)",
                values.len()
            ));
            continue;
        };
        if is_corrupt(v) {
            return Err(corrupt_value(path, key, v));
        }
        if !valid(v) {
            stats
                .invalid
                .push(format!("{key} = {v} ({})", path.display()));
            continue;
        }
        match target {
            Target::Input(module) => stats.merge_input(&module, v),
            Target::Kv { attention, is_k } => stats.merge_kv(&attention, is_k, v),
            Target::ExpertInput { layer, projs } => {
                for module in expert_modules(layout, model, layer, None, projs) {
                    stats.merge_input(&module, v);
                }
            }
            Target::Weight(module) => merge_weight(path, stats, &module, WeightAmax::Tensor(v))?,
            Target::ExpertWeight {
                layer,
                expert,
                gate_up,
            } => {
                let projs: &[ExpertProj] = if gate_up {
                    &[ExpertProj::Gate, ExpertProj::Up]
                } else {
                    &[ExpertProj::Down]
                };
                for module in expert_modules(layout, model, layer, Some(expert), projs) {
                    merge_weight(path, stats, &module, WeightAmax::Tensor(v))?;
                }
            }
            Target::Ignored(why) => stats.ignored.push(format!("{key}: {why}")),
            Target::Unmatched => stats.unmatched.push(key.clone()),
        }
    }
    Ok(())
}
