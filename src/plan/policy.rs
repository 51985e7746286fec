//! Scale-sharing rules, as ModelOpt's export applies them.
//!
//! - NVFP4: linears that read one input (q/k/v, gate/up, MLA q_a/kv_a) share `input_scale`
//!   (max over the group); their weight amax is unified at quantization time.
//! - FP8: nothing is unified; each linear keeps its own input amax.
//! - MoE: every expert of a layer shares one input amax per projection kind (gate/up together,
//!   down separately), the max over the experts. Experts with no input amax (they saw no
//!   calibration tokens) get that peer max, and a warning names them.

use crate::compute::QuantFormat;
use crate::input::layout::ExpertProj;
use crate::input::stats::{ActivationStats, WeightAmax};
use crate::options::{ExpertInputAmax, UncalibratedExperts};
use crate::plan::Linear;
use std::collections::BTreeMap;

/// Input amax per linear after the sharing rules.
#[derive(Debug, Clone, Default)]
pub struct InputAmax {
    /// One entry per linear (same order as the linears given); None where no value exists.
    pub per_linear: Vec<Option<f32>>,
    /// Where every value of a linear's group came from an exported scale: the exact amax
    /// (f64), so that the scale is written back unchanged.
    pub per_linear_exact: Vec<Option<f64>>,
    /// Human-readable notes about filled-in values (every substitution).
    pub warnings: Vec<String>,
    /// Experts without calibration, per (layer, projection kind): with `Error` these are
    /// problems; a layer with no calibrated expert at all is always one.
    pub problems: Vec<String>,
}

/// A linear's own input amax, or None when it is uncalibrated: no value, or a token count of 0
/// (its amax, if any, cannot be trusted).
fn own_amax(stats: &ActivationStats, l: &Linear) -> Option<f32> {
    let m = stats.module(&l.module)?;
    if m.token_count == Some(0) {
        return None;
    }
    m.input_amax
}

/// Resolves each quantized linear's input amax from the statistics.
pub fn resolve_input_amax(
    linears: &[Linear],
    stats: &ActivationStats,
    format: QuantFormat,
    uncalibrated: UncalibratedExperts,
    expert_mode: ExpertInputAmax,
) -> InputAmax {
    let own: Vec<Option<f32>> = linears.iter().map(|l| own_amax(stats, l)).collect();
    let own_exact: Vec<Option<f64>> = linears
        .iter()
        .zip(&own)
        .map(|(l, a)| a.and_then(|_| stats.module(&l.module)?.input_amax_exact))
        .collect();
    // Group key: experts by (layer, gate/up or down); shared-input dense groups by
    // (layer, group) when the format shares scales; everything else alone.
    let mut groups: BTreeMap<(usize, u8, usize), Vec<usize>> = BTreeMap::new();
    for (i, l) in linears.iter().enumerate() {
        if l.excluded.is_some() {
            continue;
        }
        let key = match (l.expert, l.shared_group) {
            (Some((_, ExpertProj::Down)), _) => (l.layer, 1, 0),
            (Some(_), _) => (l.layer, 0, 0),
            (None, Some(g)) if format.shares_group_scales() => (l.layer, 2, g),
            _ => (l.layer, 3, i),
        };
        groups.entry(key).or_default().push(i);
    }
    let mut out = InputAmax {
        per_linear: vec![None; linears.len()],
        per_linear_exact: vec![None; linears.len()],
        ..Default::default()
    };
    let mut dead: Vec<String> = Vec::new();
    for ((layer, kind, _), members) in groups {
        let is_experts = kind <= 1;
        let proj = if kind == 0 { "gate/up" } else { "down" };
        let max = members.iter().filter_map(|&i| own[i]).reduce(f32::max);
        let missing: Vec<&Linear> = members
            .iter()
            .filter(|&&i| own[i].is_none())
            .map(|&i| &linears[i])
            .collect();
        let Some(max) = max else {
            if is_experts {
                out.problems.push(format!(
                    "layer {layer}: no expert has {proj} input amax (none saw calibration tokens); a peer max is impossible"
                ));
            }
            continue;
        };
        if !missing.is_empty() {
            if is_experts {
                let ids: Vec<String> = missing
                    .iter()
                    .filter_map(|l| l.expert.map(|e| e.0.to_string()))
                    .collect();
                // gate and up of an expert are listed once
                let mut ids_unique = ids.clone();
                ids_unique.sort_by_key(|id| id.parse::<usize>().unwrap_or(usize::MAX));
                ids_unique.dedup();
                match uncalibrated {
                    UncalibratedExperts::Error => dead.push(format!("layer {layer} ({proj}): experts {}", ids_unique.join(", "))),
                    UncalibratedExperts::PeerMax => out.warnings.push(format!(
                        "layer {layer}: {} expert(s) saw no calibration tokens ({proj}): experts {}; \
                         using the max over the layer's calibrated experts ({max}) (--uncalibrated-experts peer-max)",
                        ids_unique.len(),
                        ids_unique.join(", ")
                    )),
                }
            } else {
                let names: Vec<&str> = missing.iter().map(|l| l.module.as_str()).collect();
                out.warnings.push(format!(
                    "{}: no input amax; using the max of its shared-input group ({max})",
                    names.join(", ")
                ));
            }
        }
        // Exact only when every value of the group came from an exported scale.
        let exact_max = members
            .iter()
            .filter(|&&i| own[i].is_some())
            .map(|&i| own_exact[i])
            .try_fold(None::<f64>, |m, e| {
                e.map(|e| Some(m.map_or(e, |m: f64| m.max(e))))
            })
            .flatten();
        for i in members {
            let keep_own =
                is_experts && expert_mode == ExpertInputAmax::PerExpert && own[i].is_some();
            out.per_linear[i] = if keep_own { own[i] } else { Some(max) };
            out.per_linear_exact[i] = if keep_own { own_exact[i] } else { exact_max };
        }
    }
    if !dead.is_empty() {
        out.problems.push(format!(
            "MoE calibration incomplete: experts received no calibration tokens ({}). Re-run calibration with more samples, \
             or pass --uncalibrated-experts peer-max",
            dead.join("; ")
        ));
    }
    out
}

/// Weight amax per linear from statistics (`--weight-amax stats`); None where the file has none.
pub fn weight_amax_from_stats(
    linears: &[Linear],
    stats: &ActivationStats,
) -> Vec<Option<WeightAmax>> {
    linears
        .iter()
        .map(|l| stats.module(&l.module).and_then(|m| m.weight_amax.clone()))
        .collect()
}
