//! Scale-sharing rules, as ModelOpt's export applies them.
//!
//! - NVFP4: linears that read one input (q/k/v, gate/up, MLA q_a/kv_a) share `input_scale`
//!   (max over the group); their weight amax is unified at quantization time.
//! - FP8: nothing is unified; each linear keeps its own input amax.
//! - MoE: every expert of a layer shares one input amax per projection kind (gate/up together,
//!   down separately), the max over the experts. Experts with no input amax (they saw no
//!   calibration tokens) get that peer max, and a warning names them.

use crate::layout::ExpertProj;
use crate::plan::Linear;
use crate::quant::QuantFormat;
use crate::stats::{ActivationStats, WeightAmax};
use std::collections::BTreeMap;

/// Input amax per linear after the sharing rules.
#[derive(Debug, Clone, Default)]
pub struct InputAmax {
    /// One entry per linear (same order as the linears given); None where no value exists.
    pub per_linear: Vec<Option<f32>>,
    /// Human-readable notes about filled-in values.
    pub warnings: Vec<String>,
}

/// Resolves each quantized linear's input amax from the statistics.
pub fn resolve_input_amax(
    linears: &[Linear],
    stats: &ActivationStats,
    format: QuantFormat,
) -> InputAmax {
    let own: Vec<Option<f32>> = linears
        .iter()
        .map(|l| stats.module(&l.module).and_then(|m| m.input_amax))
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
        warnings: Vec::new(),
    };
    for ((layer, kind, _), members) in groups {
        let max = members.iter().filter_map(|&i| own[i]).reduce(f32::max);
        let Some(max) = max else { continue };
        let missing: Vec<&Linear> = members
            .iter()
            .filter(|&&i| own[i].is_none())
            .map(|&i| &linears[i])
            .collect();
        if !missing.is_empty() {
            let what = match kind {
                0 | 1 => {
                    let ids: Vec<String> = missing
                        .iter()
                        .filter_map(|l| l.expert.map(|e| e.0.to_string()))
                        .collect();
                    let proj = if kind == 0 { "gate/up" } else { "down" };
                    format!(
                        "layer {layer}: {} expert(s) without {proj} input amax (no calibration tokens?): experts {}; \
                         using the max over the layer's experts ({max})",
                        ids.len(),
                        ids.join(", ")
                    )
                }
                _ => {
                    let names: Vec<&str> = missing.iter().map(|l| l.module.as_str()).collect();
                    format!(
                        "{}: no input amax; using the max of its shared-input group ({max})",
                        names.join(", ")
                    )
                }
            };
            out.warnings.push(what);
        }
        for i in members {
            out.per_linear[i] = Some(max);
        }
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
