//! `kv_cache_scheme` against the attention modules' `k_scale` / `v_scale` (SPEC §7.3, §11): the
//! scheme without its scales loads garbage in transformers (it creates them uninitialised) and
//! scale 1.0 in vLLM (llm-compressor's model_free_ptq writes such checkpoints); scales without
//! the scheme are not applied.

use crate::commands::verify::scales::check_positive;
use crate::input::checkpoint::Checkpoint;
use std::collections::BTreeSet;

/// Checks `quantization_config.kv_cache_scheme` (`q`) against the KV-cache scales.
pub(super) fn check_kv_cache(ckpt: &Checkpoint, q: &serde_json::Value, problems: &mut Vec<String>) {
    let scales: Vec<(&str, &crate::input::checkpoint::TensorEntry)> = ckpt
        .tensors()
        .iter()
        .filter(|t| t.name.ends_with(".k_scale") || t.name.ends_with(".v_scale"))
        .map(|t| (t.name.as_str(), t))
        .collect();
    let scheme = &q["kv_cache_scheme"];
    if scheme.is_null() {
        if let Some((first, _)) = scales.first() {
            problems.push(format!(
                "{} KV-cache scale(s) are stored (e.g. {first}) but quantization_config has no \
                 kv_cache_scheme: engines do not apply them",
                scales.len()
            ));
        }
        return;
    }
    let fp8_tensor = scheme["num_bits"].as_u64() == Some(8)
        && scheme["type"] == "float"
        && scheme["strategy"] == "tensor";
    if !fp8_tensor {
        problems.push(format!(
            "config.json: kv_cache_scheme {scheme} is not one verify knows (FP8 per tensor)"
        ));
        return;
    }
    // Every attention module (the parent of a k_proj, quantized or not) holds both scales.
    let attention: BTreeSet<&str> = ckpt
        .tensors()
        .iter()
        .filter_map(|t| t.name.split_once(".k_proj.").map(|(a, _)| a))
        .collect();
    let mut missing = Vec::new();
    for a in &attention {
        for which in ["k_scale", "v_scale"] {
            let name = format!("{a}.{which}");
            match ckpt.get(&name) {
                Some(t) if t.shape.iter().product::<usize>() == 1 => {
                    check_positive(ckpt, a, which, t, problems)
                }
                Some(t) => problems.push(format!(
                    "{name} should hold one value (shape [1]), is {:?} {:?}",
                    t.dtype, t.shape
                )),
                None => missing.push(name),
            }
        }
    }
    if let Some(first) = missing.first() {
        problems.push(format!(
            "kv_cache_scheme is set but {} KV-cache scale(s) are missing (e.g. {first}): \
             transformers creates them uninitialised (garbage logits) and vLLM uses 1.0; \
             llm-compressor's model_free_ptq writes such checkpoints",
            missing.len()
        ));
    }
}
