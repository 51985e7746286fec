//! Tests of `modelopt`: byte-identity with the golden ModelOpt exports, and the
//! quantization_config variants the goldens do not cover.

use super::*;
use crate::error::ErrorKind;
use crate::plan::exclude::summarize_exclude_modules;
use std::path::PathBuf;

fn golden(case: &str, file: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/golden")
        .join(case)
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

/// Quantized / unquantized module names for a golden case, in module order (routers last).
fn module_names(case: &str) -> (Vec<String>, Vec<String>) {
    let (_, text) = golden(case, "input/config.json");
    let config: Value = serde_json::from_str(&text).unwrap();
    let layers = config["num_hidden_layers"].as_u64().unwrap();
    let experts = config
        .get("num_local_experts")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let mut quantized = Vec::new();
    let mut routers = Vec::new();
    for l in 0..layers {
        for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            quantized.push(format!("model.layers.{l}.self_attn.{p}"));
        }
        if case.starts_with("qwen3moe") {
            for e in 0..experts {
                for p in ["gate_proj", "up_proj", "down_proj"] {
                    quantized.push(format!("model.layers.{l}.mlp.experts.{e}.{p}"));
                }
            }
            routers.push(format!("model.layers.{l}.mlp.gate"));
        } else if case.starts_with("mixtral") {
            for e in 0..experts {
                for w in ["w1", "w2", "w3"] {
                    quantized.push(format!("model.layers.{l}.block_sparse_moe.experts.{e}.{w}"));
                }
            }
            routers.push(format!("model.layers.{l}.block_sparse_moe.gate"));
        } else {
            for p in ["gate_proj", "up_proj", "down_proj"] {
                quantized.push(format!("model.layers.{l}.mlp.{p}"));
            }
        }
    }
    let mut unquantized = vec!["model.embed_tokens".to_string(), "lm_head".to_string()];
    unquantized.extend(routers);
    (quantized, unquantized)
}

fn case_meta(case: &str) -> QuantMetadata {
    let (quantized, unquantized) = module_names(case);
    let fp8 = case.contains("fp8");
    QuantMetadata {
        quant_algo: if fp8 { "FP8" } else { "NVFP4" }.to_string(),
        group_size: if fp8 { None } else { Some(16) },
        kv_cache_fp8: false,
        exclude_modules: summarize_exclude_modules(&quantized, &unquantized),
        producer_version: MODELOPT_VERSION.to_string(),
    }
}

const CASES: &[&str] = &[
    "llama_nvfp4",
    "llama_fp8",
    "qwen3moe_nvfp4",
    "mixtral_nvfp4",
    "llama_nvfp4_gpu",
    "llama_fp8_gpu",
];

/// The transformers version each golden export ran under (`save_pretrained` stamps it).
fn case_env(case: &str) -> SaveEnv {
    let transformers_version = case.ends_with("_gpu").then(|| "5.17.0".to_string());
    SaveEnv {
        transformers_version,
    }
}

#[test]
fn golden_hf_quant_config_is_byte_identical() {
    for case in CASES {
        let (_, want) = golden(case, "modelopt/hf_quant_config.json");
        assert_eq!(hf_quant_config_json(&case_meta(case)), want, "{case}");
    }
}

#[test]
fn golden_config_json_is_byte_identical() {
    for case in CASES {
        let (path, input) = golden(case, "input/config.json");
        let (_, want) = golden(case, "modelopt/config.json");
        let got =
            export_config_json_with(&input, &path, &case_meta(case), &case_env(case)).unwrap();
        assert_eq!(got.text, want, "{case}");
        assert!(got.changes.is_empty(), "{case}: {:?}", got.changes);
        if !case.ends_with("_gpu") {
            assert_eq!(
                export_config_json(&input, &path, &case_meta(case)).unwrap(),
                want,
                "{case}"
            );
        }
    }
}

#[test]
fn gpu_goldens_differ_only_by_transformers_version() {
    // Without the exporting environment's version the *_gpu config keeps the input's 5.23.0.
    let (path, input) = golden("llama_nvfp4_gpu", "input/config.json");
    let (_, want) = golden("llama_nvfp4_gpu", "modelopt/config.json");
    let got = export_config_json(&input, &path, &case_meta("llama_nvfp4_gpu")).unwrap();
    assert_ne!(got, want);
    assert_eq!(got.replace("\"5.23.0\"", "\"5.17.0\""), want);
}

#[test]
fn config_json_bad_input_names_the_path() {
    let meta = case_meta("llama_nvfp4");
    let path = Path::new("/some/ckpt/config.json");
    for text in ["{\"a\": 1,", "[1, 2]", "", "{\"a\": NaN"] {
        let err = export_config_json(text, path, &meta).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadInput, "{text:?}");
        assert!(
            err.message().contains("/some/ckpt/config.json"),
            "{text:?}: {}",
            err.message()
        );
    }
}

fn meta(algo: &str, group_size: Option<u32>, kv: bool, exclude: &[&str]) -> QuantMetadata {
    QuantMetadata {
        quant_algo: algo.into(),
        group_size,
        kv_cache_fp8: kv,
        exclude_modules: exclude.iter().map(|s| s.to_string()).collect(),
        producer_version: "0.47.0".into(),
    }
}

#[test]
fn fp8_kv_cache_writes_algo_and_scheme() {
    let m = meta("FP8", None, true, &["lm_head"]);
    assert_eq!(
        to_python_json(&hf_quant_config(&m), None, false),
        r#"{"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"]}}"#
    );
    assert_eq!(
        to_python_json(&quantization_config(&m), None, false),
        r#"{"config_groups": {"group_0": {"input_activations": {"dynamic": false, "num_bits": 8, "type": "float"}, "weights": {"dynamic": false, "num_bits": 8, "type": "float"}, "targets": ["Linear"]}}, "ignore": ["lm_head"], "quant_algo": "FP8", "kv_cache_scheme": {"dynamic": false, "num_bits": 8, "type": "float"}, "producer": {"name": "modelopt", "version": "0.47.0"}, "quant_method": "modelopt"}"#
    );
}

#[test]
fn w4a16_nvfp4_has_weights_only_group() {
    let m = meta(
        "W4A16_NVFP4",
        Some(16),
        false,
        &["model.embed_tokens", "lm_head"],
    );
    assert_eq!(
        to_python_json(&hf_quant_config(&m), None, false),
        r#"{"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": {"quant_algo": "W4A16_NVFP4", "kv_cache_quant_algo": null, "group_size": 16, "exclude_modules": ["lm_head", "model.embed_tokens"]}}"#
    );
    assert_eq!(
        to_python_json(&quantization_config(&m), None, false),
        r#"{"config_groups": {"group_0": {"weights": {"dynamic": false, "num_bits": 4, "type": "float", "group_size": 16}, "targets": ["Linear"]}}, "ignore": ["lm_head", "model.embed_tokens"], "quant_algo": "W4A16_NVFP4", "producer": {"name": "modelopt", "version": "0.47.0"}, "quant_method": "modelopt"}"#
    );
}

#[test]
fn nvfp4_with_kv_and_empty_exclude() {
    let m = meta("NVFP4", Some(16), true, &[]);
    let text = hf_quant_config_json(&m);
    assert!(text.contains("\"kv_cache_quant_algo\": \"FP8\",\n        \"group_size\": 16,\n        \"exclude_modules\": []\n"));
    assert!(!text.ends_with('\n'));
    let qc = quantization_config(&m);
    assert_eq!(qc["ignore"], json!([]));
    assert_eq!(
        qc["kv_cache_scheme"],
        json!({"dynamic": false, "num_bits": 8, "type": "float"})
    );
    let keys: Vec<&str> = qc.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "config_groups",
            "ignore",
            "quant_algo",
            "kv_cache_scheme",
            "producer",
            "quant_method"
        ]
    );
}

#[test]
fn other_algorithms_get_no_config_groups() {
    let m = meta("FP8_PER_CHANNEL_PER_TOKEN", None, false, &["lm_head"]);
    let keys: Vec<String> = quantization_config(&m)
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, ["ignore", "quant_algo", "producer", "quant_method"]);
}

#[test]
fn convert_mixed_precision_and_non_fp8_kv() {
    let input = json!({
        "producer": {"name": "modelopt", "version": "0.47.0"},
        "quantization": {
            "quant_algo": "MIXED_PRECISION",
            "kv_cache_quant_algo": "NVFP4",
            "quantized_layers": {
                "b.proj": {"quant_algo": "FP8"},
                "a.proj": {"quant_algo": "NVFP4", "group_size": 16},
                "c.proj": {"group_size": 16, "quant_algo": "NVFP4"},
            },
        },
    });
    assert_eq!(
        to_python_json(&convert_hf_quant_config_format(&input), None, false),
        r#"{"config_groups": {"group_0": {"input_activations": {"dynamic": false, "num_bits": 8, "type": "float"}, "weights": {"dynamic": false, "num_bits": 8, "type": "float"}, "targets": ["b.proj"]}, "group_1": {"input_activations": {"dynamic": false, "num_bits": 4, "type": "float", "group_size": 16}, "weights": {"dynamic": false, "num_bits": 4, "type": "float", "group_size": 16}, "targets": ["a.proj", "c.proj"]}}, "quantized_layers": {"b.proj": {"quant_algo": "FP8"}, "a.proj": {"quant_algo": "NVFP4", "group_size": 16}, "c.proj": {"group_size": 16, "quant_algo": "NVFP4"}}, "ignore": [], "quant_algo": "MIXED_PRECISION", "kv_cache_scheme": "NVFP4", "producer": {"name": "modelopt", "version": "0.47.0"}, "quant_method": "modelopt"}"#
    );
}

#[test]
fn config_json_unsorted_input_is_sorted_and_quantization_config_replaced_in_place() {
    let input = r#"{"b": 1, "quantization_config": {"old": true}, "a": {"y": 1.0, "x": 1e-06}}"#;
    let m = meta("FP8", None, false, &[]);
    let got = export_config_json(input, Path::new("c.json"), &m).unwrap();
    let value: Value = serde_json::from_str(&got).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["a", "b", "quantization_config"]);
    assert!(got.starts_with("{\n    \"a\": {\n        \"x\": 1e-06,\n        \"y\": 1.0\n    },\n"));
    assert_eq!(value["quantization_config"], quantization_config(&m));
}

#[test]
fn transformers_version_is_inserted_when_absent() {
    let env = SaveEnv {
        transformers_version: Some("5.17.0".into()),
    };
    let m = meta("FP8", None, false, &[]);
    let got =
        export_config_json_with(r#"{"z": 0, "a": 0}"#, Path::new("c.json"), &m, &env).unwrap();
    assert!(got.text.starts_with(
        "{\n    \"a\": 0,\n    \"transformers_version\": \"5.17.0\",\n    \"z\": 0,\n"
    ));
}

#[test]
fn sanitize_llama3_rope_theta() {
    let mut config = serde_json::from_str::<Value>(
        r#"{"rope_theta": 500000.0, "rope_scaling": {"type": "llama3", "factor": 8.0},
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 1.0}}"#,
    )
    .unwrap()
    .as_object()
    .unwrap()
    .clone();
    let changes = sanitize_hf_config_for_deployment(&mut config);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        to_python_json(&Value::Object(config.clone()), None, false),
        r#"{"rope_theta": 500000.0, "rope_scaling": {"type": "llama3", "factor": 8.0, "rope_theta": 500000.0}, "rope_parameters": {"rope_type": "llama3", "rope_theta": 1.0}}"#
    );
    // "rope_type" present (even null) shadows "type"; no top-level rope_theta does nothing.
    let mut c2 = json!({"rope_theta": 1.0, "rope_scaling": {"rope_type": null, "type": "llama3"}});
    assert!(sanitize_hf_config_for_deployment(c2.as_object_mut().unwrap()).is_empty());
    let mut c3 = json!({"rope_theta": null, "rope_scaling": {"rope_type": "llama3"}});
    assert!(sanitize_hf_config_for_deployment(c3.as_object_mut().unwrap()).is_empty());
    // Golden llama: rope_parameters type "default", untouched.
    let (_, text) = golden("llama_nvfp4", "input/config.json");
    let mut c4: Value = serde_json::from_str(&text).unwrap();
    assert!(sanitize_hf_config_for_deployment(c4.as_object_mut().unwrap()).is_empty());
}

#[test]
fn sanitize_layer_types_trimming() {
    let mut c = json!({"num_hidden_layers": 2, "num_nextn_predict_layers": 1,
                       "layer_types": ["full", "sliding", "full"]});
    let changes = sanitize_hf_config_for_deployment(c.as_object_mut().unwrap());
    assert_eq!(changes.len(), 1);
    assert_eq!(c["layer_types"], json!(["full", "sliding"]));
    // Excess not explained by num_nextn_predict_layers, a float count, or a shorter list: kept.
    for mut c in [
        json!({"num_hidden_layers": 2, "num_nextn_predict_layers": 2, "layer_types": ["a", "b", "c"]}),
        json!({"num_hidden_layers": 2.0, "num_nextn_predict_layers": 1, "layer_types": ["a", "b", "c"]}),
        json!({"num_hidden_layers": 2, "layer_types": ["a", "b", "c"]}),
        json!({"num_hidden_layers": 4, "num_nextn_predict_layers": 1, "layer_types": ["a", "b", "c"]}),
        json!({"num_hidden_layers": -1, "num_nextn_predict_layers": 1, "layer_types": []}),
    ] {
        let before = c.clone();
        assert!(sanitize_hf_config_for_deployment(c.as_object_mut().unwrap()).is_empty());
        assert_eq!(c, before);
    }
}
