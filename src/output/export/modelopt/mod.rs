//! `hf_quant_config.json` and `config.json` as ModelOpt 0.47 writes them.
//!
//! Sources reproduced: `quant_utils.py::get_quant_config` / `process_layer_quant_config` (the
//! `hf_quant_config.json` dict), `convert_hf_config.py::convert_hf_quant_config_format` (the
//! `quantization_config` object), `plugins/hf_checkpoint_utils.py::sanitize_hf_config_for_deployment`
//! and `unified_export_hf.py::_write_hf_export_config` (the `config.json` rewrite).
//!
//! `config.json` is produced in ModelOpt's order of events: transformers' `save_pretrained`
//! writes the model config with every object's keys sorted (`sort_keys=True`), ModelOpt reads
//! that back, sanitises it (appending to the end of the objects it changes), sets
//! `quantization_config` (appended at the end, or replaced in place if the saved config already
//! had one, as a Python `dict` assignment does), and dumps it with `indent=4`. For an input
//! `config.json` written by transformers (keys already sorted, as in every golden case) the
//! other keys therefore come out unchanged and in order; an input with unsorted keys comes out
//! sorted, as transformers would have re-saved it. What transformers' `to_diff_dict` may add or
//! drop when the input was written by a different transformers version is not reproduced.

use super::pyjson::{python_truthy, sort_keys_recursive, to_python_json};
use super::{parse_json_object, SaveEnv};
use crate::error::Result;
use serde_json::{json, Map, Value};
use std::path::Path;

/// The ModelOpt version the goldens were exported with (`producer.version`).
pub const MODELOPT_VERSION: &str = "0.47.0";

/// What the quantization metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantMetadata {
    /// `"NVFP4"`, `"W4A16_NVFP4"` or `"FP8"` (any other string is written as given).
    pub quant_algo: String,
    /// `Some(16)` for the NVFP4 formats; `None` writes no `group_size` (FP8).
    pub group_size: Option<u32>,
    /// `--kv-cache fp8`: `kv_cache_quant_algo: "FP8"` and a `kv_cache_scheme`.
    pub kv_cache_fp8: bool,
    /// Already summarised ([`super::exclude::summarize_exclude_modules`]) and sorted; written
    /// sorted in any case, as ModelOpt does.
    pub exclude_modules: Vec<String>,
    /// `producer.version`, e.g. [`MODELOPT_VERSION`].
    pub producer_version: String,
}

/// The `hf_quant_config.json` dict, keys in ModelOpt's order:
/// `producer {name, version}`, `quantization {quant_algo, kv_cache_quant_algo, [group_size],
/// exclude_modules}`.
pub fn hf_quant_config(meta: &QuantMetadata) -> Value {
    let mut quantization = Map::new();
    quantization.insert("quant_algo".into(), Value::String(meta.quant_algo.clone()));
    let kv = if meta.kv_cache_fp8 {
        Value::String("FP8".into())
    } else {
        Value::Null
    };
    quantization.insert("kv_cache_quant_algo".into(), kv);
    if let Some(group_size) = meta.group_size {
        quantization.insert("group_size".into(), json!(group_size));
    }
    let mut exclude = meta.exclude_modules.clone();
    exclude.sort();
    quantization.insert("exclude_modules".into(), json!(exclude));

    let mut root = Map::new();
    root.insert("producer".into(), producer(&meta.producer_version));
    root.insert("quantization".into(), Value::Object(quantization));
    Value::Object(root)
}

/// `hf_quant_config.json` text, exactly as ModelOpt writes it (`json.dump(indent=4)`, key order
/// as in [`hf_quant_config`], no trailing newline).
pub fn hf_quant_config_json(meta: &QuantMetadata) -> String {
    to_python_json(&hf_quant_config(meta), Some(4), false)
}

/// The `quantization_config` object ModelOpt puts into `config.json`, in ModelOpt's key order:
/// `config_groups` (FP8, NVFP4, W4A16_NVFP4), `ignore`, `quant_algo`, `kv_cache_scheme` (FP8 KV
/// only), `producer`, `quant_method`.
pub fn quantization_config(meta: &QuantMetadata) -> Value {
    convert_hf_quant_config_format(&hf_quant_config(meta))
}

/// `convert_hf_config.py::convert_hf_quant_config_format` on an `hf_quant_config.json` dict
/// (with the default `target_types=None`, i.e. `targets: ["Linear"]`).
///
/// `config_groups` is written for `FP8`, `NVFP4`, `W4A16_NVFP4`, `NVFP4_SVD` and
/// `MIXED_PRECISION` (one group per distinct per-layer entry of `quantized_layers`, plus
/// `quantized_layers` itself); other algorithms get only `ignore`, `quant_algo`,
/// `kv_cache_scheme`, `producer` and `quant_method`.
pub fn convert_hf_quant_config_format(input: &Value) -> Value {
    let empty = Map::new();
    let details = input
        .get("quantization")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let quant_algo = details.get("quant_algo").cloned().unwrap_or(Value::Null);
    let group_size = || details.get("group_size").cloned().unwrap_or(json!(16));
    let float_4 =
        |gs: Value| json!({"dynamic": false, "num_bits": 4, "type": "float", "group_size": gs});

    let mut out = Map::new();
    let group = match quant_algo.as_str() {
        Some("FP8") => Some(json!({
            "input_activations": {"dynamic": false, "num_bits": 8, "type": "float"},
            "weights": {"dynamic": false, "num_bits": 8, "type": "float"},
            "targets": ["Linear"],
        })),
        Some("NVFP4") => Some(json!({
            "input_activations": float_4(group_size()),
            "weights": float_4(group_size()),
            "targets": ["Linear"],
        })),
        Some("W4A16_NVFP4") => Some(json!({
            "weights": float_4(group_size()),
            "targets": ["Linear"],
        })),
        Some("NVFP4_SVD") => {
            let mut g = json!({
                "input_activations": float_4(group_size()),
                "weights": float_4(group_size()),
                "has_zero_point": false,
                "pre_quant_scale": true,
                "targets": ["Linear"],
            });
            if let (Some(rank), Some(obj)) = (details.get("lora_rank"), g.as_object_mut()) {
                if !rank.is_null() {
                    obj.insert("lora_rank".into(), rank.clone());
                }
            }
            Some(g)
        }
        _ => None,
    };
    if let Some(group) = group {
        out.insert("config_groups".into(), json!({ "group_0": group }));
    } else if quant_algo.as_str() == Some("MIXED_PRECISION") {
        let layers = details
            .get("quantized_layers")
            .cloned()
            .unwrap_or_else(|| json!({}));
        out.insert("config_groups".into(), mixed_precision_groups(&layers));
        out.insert("quantized_layers".into(), layers);
    }

    let ignore = match details.get("exclude_modules") {
        Some(v) if !v.is_null() => v.clone(),
        _ => json!([]),
    };
    out.insert("ignore".into(), ignore);
    if python_truthy(&quant_algo) {
        out.insert("quant_algo".into(), quant_algo);
    }
    if let Some(kv) = details
        .get("kv_cache_quant_algo")
        .filter(|v| python_truthy(v))
    {
        let scheme = if kv.as_str() == Some("FP8") {
            json!({"dynamic": false, "num_bits": 8, "type": "float"})
        } else {
            kv.clone()
        };
        out.insert("kv_cache_scheme".into(), scheme);
    }
    if let Some(p) = input.get("producer").filter(|v| python_truthy(v)) {
        out.insert("producer".into(), p.clone());
    }
    out.insert("quant_method".into(), json!("modelopt"));
    Value::Object(out)
}

/// A per-layer quant config as `tuple(sorted(layer_cfg.items()))`.
type LayerConfigKey = Vec<(String, Value)>;

/// The `MIXED_PRECISION` branch: layers grouped by identical per-layer config, in order of first
/// appearance; each group is `_quant_algo_to_group_config` plus sorted `targets`.
fn mixed_precision_groups(quantized_layers: &Value) -> Value {
    // (per-layer config with sorted keys, layer names), in order of first appearance
    let mut groups: Vec<(LayerConfigKey, Vec<String>)> = Vec::new();
    if let Some(layers) = quantized_layers.as_object() {
        for (name, cfg) in layers {
            let mut key: Vec<(String, Value)> = cfg
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            key.sort_by(|a, b| a.0.cmp(&b.0));
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, names)) => names.push(name.clone()),
                None => groups.push((key, vec![name.clone()])),
            }
        }
    }
    let mut out = Map::new();
    for (idx, (key, mut names)) in groups.into_iter().enumerate() {
        let get = |field: &str| key.iter().find(|(k, _)| k == field).map(|(_, v)| v.clone());
        let algo = get("quant_algo")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mut group = quant_algo_to_group_config(&algo, get("group_size").unwrap_or(Value::Null));
        names.sort();
        group.insert("targets".into(), json!(names));
        out.insert(format!("group_{idx}"), Value::Object(group));
    }
    Value::Object(out)
}

/// `convert_hf_config.py::_quant_algo_to_group_config`.
fn quant_algo_to_group_config(algo: &str, group_size: Value) -> Map<String, Value> {
    let gs = |default: u32| {
        if python_truthy(&group_size) {
            group_size.clone()
        } else {
            json!(default)
        }
    };
    let q = |bits: u32, ty: &str| json!({"dynamic": false, "num_bits": bits, "type": ty});
    let qg = |bits: u32, gs: Value| json!({"dynamic": false, "num_bits": bits, "type": "float", "group_size": gs});
    let v = match algo {
        "FP8" => json!({"input_activations": q(8, "float"), "weights": q(8, "float")}),
        "FP8_PER_CHANNEL_PER_TOKEN" => json!({
            "input_activations": q(8, "float"),
            "weights": {"dynamic": false, "num_bits": 8, "type": "float", "strategy": "channel"},
        }),
        "NVFP4" => json!({"input_activations": qg(4, gs(16)), "weights": qg(4, gs(16))}),
        "W4A16_AWQ" => json!({
            "weights": {"dynamic": false, "num_bits": 4, "type": "int", "group_size": gs(128)},
        }),
        "W4A16_NVFP4" => json!({"weights": qg(4, gs(16))}),
        "NVFP4_SVD" => json!({
            "input_activations": qg(4, gs(16)),
            "weights": qg(4, gs(16)),
            "has_zero_point": false,
            "pre_quant_scale": true,
        }),
        "NVFP4_AWQ" | "W4A8_AWQ" => {
            json!({"input_activations": qg(8, gs(128)), "weights": qg(4, gs(128))})
        }
        "W8A16" => json!({"weights": q(8, "int")}),
        "W8A8_SQ_PER_CHANNEL" => json!({
            "input_activations": q(8, "int"),
            "weights": {"dynamic": false, "num_bits": 8, "type": "int", "strategy": "channel"},
        }),
        "W4A8_NVFP4_FP8" | "W4A8_MXFP4_FP8" => {
            json!({"input_activations": q(8, "float"), "weights": qg(4, gs(16))})
        }
        "MXFP8" => json!({"input_activations": qg(8, gs(32)), "weights": qg(8, gs(32))}),
        other => json!({ "quant_algo": other }),
    };
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn producer(version: &str) -> Value {
    json!({"name": "modelopt", "version": version})
}

/// The output `config.json` and what sanitising changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigExport {
    /// The file contents (no trailing newline, as ModelOpt writes it).
    pub text: String,
    /// Human log lines, one per change `sanitize_hf_config_for_deployment` made (empty if none).
    pub changes: Vec<String>,
}

/// The output `config.json` text: the input `config.json` (text, as read from the input
/// checkpoint) with `quantization_config` added (replacing any existing one, in place) and
/// re-serialised as ModelOpt does (`json.dump(indent=4)`, no trailing newline), after
/// [`sanitize_hf_config_for_deployment`]. Keys are sorted recursively first, as transformers'
/// `save_pretrained` writes them (a no-op for a config saved by transformers). Keeps the input's
/// `transformers_version`; see [`export_config_json_with`].
///
/// Errors: bad input naming `config_path` if the text is not valid JSON or not an object.
pub fn export_config_json(
    input_config_text: &str,
    config_path: &Path,
    meta: &QuantMetadata,
) -> Result<String> {
    export_config_json_with(input_config_text, config_path, meta, &SaveEnv::default())
        .map(|e| e.text)
}

/// [`export_config_json`], with the exporting environment's `transformers_version` (if given in
/// `env`) written the way `save_pretrained` does, and the list of sanitising changes returned.
pub fn export_config_json_with(
    input_config_text: &str,
    config_path: &Path,
    meta: &QuantMetadata,
    env: &SaveEnv,
) -> Result<ConfigExport> {
    let mut config = parse_json_object(input_config_text, config_path)?;
    if let Some(version) = &env.transformers_version {
        config.insert(
            "transformers_version".into(),
            Value::String(version.clone()),
        );
    }
    let mut config = match sort_keys_recursive(&Value::Object(config)) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let changes = sanitize_hf_config_for_deployment(&mut config)
        .into_iter()
        .map(|c| format!("{}: {}", config_path.display(), c))
        .collect();
    config.insert("quantization_config".into(), quantization_config(meta));
    let text = to_python_json(&Value::Object(config), Some(4), false);
    Ok(ConfigExport { text, changes })
}

/// ModelOpt's `sanitize_hf_config_for_deployment`, the part that depends on the config alone.
/// Returns a description of each change made.
///
/// 1. llama3 `rope_theta`: if the top-level `rope_theta` is set (non-null), it is appended to
///    each of `rope_parameters` / `rope_scaling` that is an object whose `rope_type` (or, if that
///    key is absent, `type`) is `"llama3"` and that has no `rope_theta`. (ModelOpt falls back to
///    the in-memory `model.config.rope_theta` when the top level has none; that is not
///    reproducible from the file and is not done.)
/// 2. `layer_types` trimming: if `num_hidden_layers` is a non-negative integer, `layer_types` a
///    list longer than it, and `num_nextn_predict_layers` (a non-negative integer) equals the
///    excess, `layer_types` is cut to `num_hidden_layers` entries. (ModelOpt's fallback to the
///    model's MTP layer prefixes is not reproducible from the file and is not done.)
pub fn sanitize_hf_config_for_deployment(config: &mut Map<String, Value>) -> Vec<String> {
    let mut changes = Vec::new();
    if let Some(theta) = config.get("rope_theta").filter(|v| !v.is_null()).cloned() {
        for key in ["rope_parameters", "rope_scaling"] {
            let Some(rope) = config.get_mut(key).and_then(Value::as_object_mut) else {
                continue;
            };
            let rope_type = match rope.get("rope_type") {
                Some(t) => Some(t),
                None => rope.get("type"),
            };
            if rope_type.and_then(Value::as_str) == Some("llama3")
                && !rope.contains_key("rope_theta")
            {
                rope.insert("rope_theta".into(), theta.clone());
                changes.push(format!(
                    "added rope_theta to llama3 {key} (ModelOpt sanitize_hf_config_for_deployment)"
                ));
            }
        }
    }

    let num_hidden = config.get("num_hidden_layers").and_then(as_nonnegative_int);
    let nextn = config
        .get("num_nextn_predict_layers")
        .and_then(as_nonnegative_int);
    if let (Some(num_hidden), Some(Value::Array(types))) =
        (num_hidden, config.get_mut("layer_types"))
    {
        let len = types.len() as u64;
        if len > num_hidden && nextn == Some(len - num_hidden) {
            types.truncate(num_hidden as usize);
            changes.push(format!(
                "trimmed layer_types from {len} to {num_hidden} entries to match num_hidden_layers; \
                 the removed entries correspond to num_nextn_predict_layers \
                 (ModelOpt sanitize_hf_config_for_deployment)"
            ));
        }
    }
    changes
}

/// `_as_nonnegative_int`: a JSON integer ≥ 0 (not a bool, not a float such as `2.0`).
fn as_nonnegative_int(value: &Value) -> Option<u64> {
    value.as_u64()
}

#[cfg(test)]
mod tests;
