//! Fused groups quantized whole, checked on any ModelOpt-format checkpoint by tensor names:
//! q/k/v, gate/up (`w1`/`w3`), MLA's `q_a_proj` + `kv_a_proj_with_mqa` under one parent, an
//! expert's gate and up, and the routed experts of one layer are all quantized or all not
//! (serving engines fuse each into one layer and refuse a partly quantized one).

use super::Found;
use crate::input::checkpoint::Checkpoint;
use std::collections::{BTreeMap, BTreeSet};

/// Sibling names that serving engines fuse into one layer.
const FUSED_SIBLINGS: &[&[&str]] = &[
    &["q_proj", "k_proj", "v_proj"],
    &["gate_proj", "up_proj"],
    &["w1", "w3"],
    &["q_a_proj", "kv_a_proj_with_mqa"],
];

/// Problems for every fused group that is only partly quantized.
pub(super) fn check_partial_groups(
    ckpt: &Checkpoint,
    quantized: &BTreeMap<&str, Found>,
    problems: &mut Vec<String>,
) {
    // Unquantized linear weights: 2-D `M.weight` of a float dtype whose module has no scales.
    let unquantized: BTreeSet<&str> = ckpt
        .tensors()
        .iter()
        .filter(|t| t.shape.len() == 2 && crate::plan::source_dtype(t.dtype).is_some())
        .filter_map(|t| t.name.strip_suffix(".weight"))
        .filter(|m| !quantized.contains_key(m))
        .collect();
    for &m in quantized.keys() {
        let Some((parent, leaf)) = m.rsplit_once('.') else {
            continue;
        };
        let Some(group) = FUSED_SIBLINGS.iter().find(|g| g.contains(&leaf)) else {
            continue;
        };
        for sibling in group.iter().filter(|s| **s != leaf) {
            let name = format!("{parent}.{sibling}");
            if unquantized.contains(name.as_str()) {
                problems.push(format!(
                    "{m} is quantized but {name} is not: they are one fused layer in serving \
                     engines, which refuse a partly quantized one"
                ));
            }
        }
    }
    // Routed experts: `X.experts.N.*` quantized and unquantized under one `X.experts`.
    let experts_of = |m: &str| -> Option<String> {
        let at = m.find(".experts.")?;
        let rest = &m[at + ".experts.".len()..];
        let (n, _) = rest.split_once('.')?;
        n.parse::<usize>().ok()?;
        Some(m[..at + ".experts".len()].to_string())
    };
    let mut layers: BTreeMap<String, (usize, Vec<&str>)> = BTreeMap::new();
    for &m in quantized.keys() {
        if let Some(x) = experts_of(m) {
            layers.entry(x).or_default().0 += 1;
        }
    }
    for &m in &unquantized {
        if let Some(x) = experts_of(m) {
            if let Some(entry) = layers.get_mut(&x) {
                entry.1.push(m);
            }
        }
    }
    for (x, (n_quantized, left)) in layers {
        if let Some(first) = left.first() {
            problems.push(format!(
                "{x}: {n_quantized} expert projection(s) are quantized but {} are not (e.g. {first}): \
                 a layer's routed experts are one fused tensor in serving engines",
                left.len()
            ));
        }
    }
}
