//! Scales of an already exported checkpoint (ModelOpt, or compressed-tensors FP8/NVFP4) read
//! back as statistics: `input_scale × 448` (FP8) or `× 2688` (NVFP4), and `k_scale` /
//! `v_scale × 448`, held in f64 so that converting again writes the same scale bytes
//! (`docs/stats-formats.md` §7.6). compressed-tensors stores FP8 scales in bf16 (read as
//! such) and the KV-cache scales on the attention module; its NVFP4 `input_global_scale` is a
//! divisor (about `2688 / amax`, rounded twice): the amax taken from it is `2688 / g`, which
//! gives the same divisor back when converting to compressed-tensors again, and is close to,
//! not exactly, the amax it was made from.

use super::{ActivationStats, ModelNames};
use crate::error::{Error, Result};
use crate::input::checkpoint::{Checkpoint, Dtype};
use serde_json::Value;
use std::path::Path;

/// The divisor the exporter used for input scales: 448 (FP8) or 2688 (NVFP4).
fn input_bound(dir: &Path) -> Result<f64> {
    let lane = crate::input::checkpoint::Lane::new(dir).ok();
    let read = |name: &str| -> Option<Value> {
        let bytes = lane.as_ref()?.read_small(name, 16 << 20).ok()??;
        serde_json::from_slice(&bytes).ok()
    };
    let algo = read("hf_quant_config.json")
        .and_then(|v| {
            v.pointer("/quantization/quant_algo")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .or_else(|| {
            let q = read("config.json")?.get("quantization_config")?.clone();
            if let Some(a) = q.get("quant_algo").and_then(Value::as_str) {
                return Some(a.to_string());
            }
            // compressed-tensors: a group with static activations (oneshot names it
            // `group_0`, shardquant after the preset); its bit width says FP8 or NVFP4.
            let bits = q
                .get("config_groups")?
                .as_object()?
                .values()
                .find_map(|g| g.pointer("/input_activations/num_bits")?.as_u64())?;
            Some(if bits == 8 {
                "FP8".to_string()
            } else {
                "NVFP4".to_string()
            })
        });
    match algo.as_deref() {
        Some("FP8") => Ok(448.0),
        Some("NVFP4") => Ok(2688.0),
        Some(other) => Err(Error::bad_input(format!(
            "{}: exported with quant_algo {other}, whose scales shardquant cannot turn back into input amax",
            dir.display()
        ))
        .with_hint("use the statistics file the export was made from")),
        None => Err(Error::bad_input(format!(
            "{}: a directory given to --stats must be an exported checkpoint (hf_quant_config.json or config.json quantization_config)",
            dir.display()
        ))
        .with_hint("pass a statistics file, or the directory of a quantized checkpoint")),
    }
}

/// The value of a one-element float scale: F32 (ModelOpt, compressed-tensors NVFP4), BF16 or
/// F16 (compressed-tensors FP8 scales, in the weights' dtype).
fn scalar(ckpt: &Checkpoint, t: &crate::input::checkpoint::TensorEntry) -> Option<f32> {
    use crate::compute::SourceDtype;
    let dtype = match t.dtype {
        Dtype::F32 => SourceDtype::F32,
        Dtype::BF16 => SourceDtype::Bf16,
        Dtype::F16 => SourceDtype::F16,
        _ => return None,
    };
    (t.shape.iter().product::<usize>() == 1)
        .then(|| crate::compute::load_f32(ckpt.bytes(t), dtype, 0))
}

/// Reads the scales of the exported checkpoint in `dir` into `stats`.
pub fn import_exported(dir: &Path, model: &ModelNames, stats: &mut ActivationStats) -> Result<()> {
    let bound = input_bound(dir)?;
    let ckpt = Checkpoint::open(dir)?;
    for t in ckpt.tensors() {
        let (module, kind) = if let Some(m) = t.name.strip_suffix(".input_scale") {
            (m, "input")
        } else if let Some(m) = t.name.strip_suffix(".input_global_scale") {
            (m, "global")
        } else if let Some(m) = t.name.strip_suffix(".k_scale") {
            (m, "k")
        } else if let Some(m) = t.name.strip_suffix(".v_scale") {
            (m, "v")
        } else {
            continue;
        };
        let Some(s) = scalar(&ckpt, t) else {
            stats
                .ignored
                .push(format!("{}: not a one-value float scale", t.name));
            continue;
        };
        if super::is_corrupt(s) {
            return Err(super::corrupt_value(dir, &t.name, s));
        }
        if s == 0.0 {
            stats
                .invalid
                .push(format!("{} = {s} ({})", t.name, dir.display()));
            continue;
        }
        match kind {
            "input" if model.linears.contains_key(module) => {
                stats.merge_input_exact(module, f64::from(s) * bound)
            }
            "global" if model.linears.contains_key(module) => {
                match crate::compute::ct::ct_amax_for_global_scale(s) {
                    Some(amax) => stats.merge_input(module, amax),
                    None => stats.invalid.push(format!(
                        "{} = {s} ({}): not a global scale compressed-tensors writes",
                        t.name,
                        dir.display()
                    )),
                }
            }
            "k" | "v" => {
                // ModelOpt's `<attention>.k_proj.k_scale` or compressed-tensors'
                // `<attention>.k_scale`: the cache amax belongs to the attention module.
                let attention = if model.attention.contains(module) {
                    module
                } else {
                    module.rsplit_once('.').map_or(module, |(parent, _)| parent)
                };
                if model.attention.contains(attention) {
                    stats.merge_kv_exact(attention, kind == "k", f64::from(s) * 448.0);
                } else {
                    stats.unmatched.push(t.name.clone());
                }
            }
            _ => stats.unmatched.push(t.name.clone()),
        }
    }
    Ok(())
}
