//! The compressed-tensors metadata and file layout, as llm-compressor 0.14.0.1's `model_free_ptq`
//! writes them (compressed-tensors 0.19.0; SPEC §8–§10, checked against `fixtures/ct/`); for
//! the static schemes (`NVFP4`, `FP8`, `kv_cache_scheme`), which model_free refuses, the
//! configuration its writer makes of compressed-tensors' presets (SPEC §9.3), whose activation
//! and KV-cache arguments are what llm-compressor's `oneshot` writes:
//!
//! - `config.json`: the input's config with `quantization_config` set, the whole file
//!   re-serialised as Python's `json.dump(config, indent=2, sort_keys=True)` (no trailing newline);
//! - output shards mirroring the input's, NVFP4 fused partners (k/v, dense up) moved into their
//!   primary's (q, dense gate) shard;
//! - the `ignore` list.
//!
//! What differs from llm-compressor on purpose: `ignore` lists every module left unquantized by
//! name (in natural order) where llm-compressor writes the user's list verbatim; the tokenizer
//! and other files are copied, but `shardquant.json` and `.quant_summary.txt` are added.

use super::{parse_json_object, to_python_json};
use crate::compute::QuantFormat;
use crate::error::Result;
use crate::input::checkpoint::Checkpoint;
use crate::plan::{Job, Plan};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The compressed-tensors version written into `quantization_config.version`.
pub const CT_VERSION: &str = "0.19.0";

/// A `QuantizationArgs` object with every field compressed-tensors 0.19 dumps, defaults for
/// an 8-bit float per-tensor static scheme, `changes` applied.
fn args(changes: Value) -> Value {
    let mut base = json!({
        "actorder": null, "block_structure": null, "dynamic": false, "group_size": null,
        "num_bits": 8, "observer": null, "observer_kwargs": {}, "scale_dtype": null,
        "strategy": "tensor", "symmetric": true, "type": "float", "zp_dtype": null
    });
    if let (Some(b), Value::Object(c)) = (base.as_object_mut(), changes) {
        b.extend(c);
    }
    base
}

/// `quantization_config` for `format` with this `ignore` list (SPEC §9.2, §9.3), with the FP8
/// `kv_cache_scheme` when `kv_cache` (its `k_scale` / `v_scale` are written with it: a scheme
/// without them loads garbage, SPEC §7.3).
///
/// The group is named after compressed-tensors' preset, and the weights' `observer` is `null`,
/// as model_free writes them; `oneshot` names it `group_0` and writes the observers it ran
/// (`memoryless_minmax` for weights). The static activations' arguments are the preset's, as
/// both write them: NVFP4's `input_activations` are `dynamic: "local"` (per-block scales at run
/// time under the stored `input_global_scale`), FP8's `dynamic: false` per tensor; both with
/// `observer: "static_minmax"` (max |x| over the calibration, what the statistics give).
pub fn quantization_config(format: QuantFormat, ignore: &[String], kv_cache: bool) -> Value {
    let scheme = format.ct_scheme();
    let nvfp4_args = json!({"num_bits": 4, "group_size": 16, "strategy": "tensor_group",
                            "scale_dtype": "torch.float8_e4m3fn"});
    let (fmt, inputs, weights) = if format.is_nvfp4() {
        let inputs = if format.needs_input_amax() {
            let mut a = args(nvfp4_args.clone());
            a["dynamic"] = json!("local");
            a["observer"] = json!("static_minmax");
            a
        } else {
            Value::Null
        };
        ("nvfp4-pack-quantized", inputs, args(nvfp4_args))
    } else if format.is_fp8_per_tensor() {
        (
            "float-quantized",
            args(json!({"observer": "static_minmax"})),
            args(json!({})),
        )
    } else if format.is_fp8_block() {
        (
            "float-quantized",
            args(json!({"dynamic": true, "strategy": "group", "group_size": 128})),
            args(json!({"strategy": "block", "block_structure": [128, 128]})),
        )
    } else {
        (
            "float-quantized",
            args(json!({"dynamic": true, "strategy": "token"})),
            args(json!({"strategy": "channel"})),
        )
    };
    let mut groups = Map::new();
    groups.insert(
        scheme.to_string(),
        json!({"format": fmt, "input_activations": inputs, "output_activations": null,
               "targets": ["Linear"], "weights": weights}),
    );
    // The kv cache's arguments: FP8 per tensor, static, symmetric (oneshot's, observer null).
    let kv_cache_scheme = if kv_cache {
        args(json!({}))
    } else {
        Value::Null
    };
    json!({
        "config_groups": groups,
        "format": fmt,
        "global_compression_ratio": null,
        "ignore": ignore,
        "kv_cache_scheme": kv_cache_scheme,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "transform_config": {},
        "version": CT_VERSION,
    })
}

/// `config.json` as llm-compressor writes it: the input's object with `quantization_config`
/// replaced, every object's keys sorted, indent 2, `ensure_ascii`, Python float `repr`, no
/// trailing newline.
pub fn config_json(
    input_config_text: &str,
    config_path: &Path,
    format: QuantFormat,
    ignore: &[String],
    kv_cache: bool,
) -> Result<String> {
    let mut config = parse_json_object(input_config_text, config_path)?;
    let q = quantization_config(format, ignore, kv_cache);
    config.insert("quantization_config".into(), q);
    Ok(to_python_json(&Value::Object(config), Some(2), true))
}

/// The `ignore` list: every module of the checkpoint with a 2-D `weight` that
/// llm-compressor's model_free selection would quantize (its name does not end in `norm`) but
/// that this conversion leaves unquantized (embeddings, lm_head, routers, `--exclude`d and
/// out-of-`--scope` linears), by name, in natural order (numbers compared as numbers).
pub fn ignore_list(ckpt: &Checkpoint, plan: &Plan) -> Vec<String> {
    let quantized: HashSet<&str> = plan
        .linears
        .iter()
        .filter(|p| p.linear.excluded.is_none())
        .map(|p| p.linear.module.as_str())
        .collect();
    let mut out: Vec<String> = ckpt
        .tensors()
        .iter()
        .filter(|t| t.shape.len() == 2)
        .filter_map(|t| t.name.strip_suffix(".weight"))
        .filter(|m| !m.ends_with("norm") && !quantized.contains(m))
        .map(str::to_string)
        .collect();
    out.sort_by_key(|a| natural_key(a));
    out.dedup();
    out
}

/// A name split into text and number runs, numbers compared by value.
fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut key = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits > 0 {
            key.push((String::new(), rest[..digits].parse().unwrap_or(u64::MAX)));
            rest = &rest[digits..];
        } else {
            let text = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            key.push((rest[..text].to_string(), 0));
            rest = &rest[text..];
        }
    }
    key
}

/// For NVFP4, llm-compressor quantizes a fused group's partners in the job of its primary, so
/// their outputs land in the primary's shard (SPEC §1 step 3, §8.1): `<p>.<attn>.q_proj.weight`
/// takes `k_proj` / `v_proj` (attn one of `attn`, `attention`, `self_attn`, `self_attention`);
/// `<p>.<attn>.wq_a.weight` takes `wkv_a_with_mqa` (not `self_attention`);
/// `<p>.(mlp|feed_forward).gate_proj.weight` takes `up_proj`; `<p>.w1.weight` takes `w3`.
/// Returns (partner, primary) tensor names, for every primary in `names`. Routed experts'
/// `experts.E.gate_proj` match none of these: their `up_proj` stays in its own shard.
pub fn fused_partners<'a>(names: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in names {
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        let Some((parent, leaf)) = module.rsplit_once('.') else {
            continue;
        };
        let last = parent.rsplit_once('.');
        let partners: &[&str] = match (leaf, last) {
            ("q_proj", Some((p, "attn" | "attention" | "self_attn" | "self_attention")))
                if !p.is_empty() =>
            {
                &["k_proj", "v_proj"]
            }
            ("wq_a", Some((p, "attn" | "attention" | "self_attn"))) if !p.is_empty() => {
                &["wkv_a_with_mqa"]
            }
            ("gate_proj", Some((p, "mlp" | "feed_forward"))) if !p.is_empty() => &["up_proj"],
            ("w1", _) if !parent.is_empty() => &["w3"],
            _ => &[],
        };
        for p in partners {
            out.push((format!("{parent}.{p}.weight"), name.to_string()));
        }
    }
    out
}

/// The output shard (index into the input's shards) of each of the plan's output tensors:
/// the shard of the input tensor it comes from, except that for NVFP4 a fused partner's
/// outputs go to its primary's shard ([`fused_partners`]).
pub fn output_shards(ckpt: &Checkpoint, plan: &Plan, format: QuantFormat) -> Vec<usize> {
    let tensors = ckpt.tensors();
    let by_name: HashMap<&str, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut shard: Vec<usize> = tensors.iter().map(|t| t.shard).collect();
    if format.is_nvfp4() {
        for (partner, primary) in fused_partners(tensors.iter().map(|t| t.name.as_str())) {
            if let (Some(&a), Some(&b)) =
                (by_name.get(partner.as_str()), by_name.get(primary.as_str()))
            {
                shard[a] = tensors[b].shard;
            }
        }
    }
    let mut out = vec![0; plan.outputs.len()];
    for unit in &plan.units {
        let sources: Vec<usize> = match &unit.job {
            Job::Quantize(members) => {
                let per = unit.outputs.len() / members.len().max(1);
                members
                    .iter()
                    .flat_map(|&i| std::iter::repeat_n(plan.linears[i].linear.source.tensor, per))
                    .collect()
            }
            Job::Copy(slice) => vec![slice.tensor],
            Job::Dequant { tensor, .. } => vec![*tensor],
            Job::Scalars(_) => vec![unit.anchor],
        };
        for (k, &o) in unit.outputs.iter().enumerate() {
            let t = sources.get(k).or(sources.first()).copied().unwrap_or(0);
            out[o] = shard[t];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partners_follow_llm_compressors_patterns() {
        let names = [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.mlp.experts.3.gate_proj.weight",
            "model.layers.1.attn.wq_a.weight",
            "layers.2.feed_forward.w1.weight",
        ];
        let got = fused_partners(names.into_iter());
        assert_eq!(
            got,
            vec![
                (
                    "model.layers.0.self_attn.k_proj.weight".into(),
                    names[0].into()
                ),
                (
                    "model.layers.0.self_attn.v_proj.weight".into(),
                    names[0].into()
                ),
                ("model.layers.0.mlp.up_proj.weight".into(), names[1].into()),
                (
                    "model.layers.1.attn.wkv_a_with_mqa.weight".into(),
                    names[3].into()
                ),
                ("layers.2.feed_forward.w3.weight".into(), names[4].into()),
            ]
        );
    }

    #[test]
    fn natural_order_compares_numbers() {
        let mut v = vec!["m.layers.10.gate", "m.layers.2.gate", "lm_head", "m.embed"];
        v.sort_by_key(|a| natural_key(a));
        assert_eq!(
            v,
            ["lm_head", "m.embed", "m.layers.2.gate", "m.layers.10.gate"]
        );
    }
}
