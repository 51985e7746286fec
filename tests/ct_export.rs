//! `convert --export compressed-tensors` against llm-compressor 0.14.0.1's own `model_free_ptq`
//! outputs (`fixtures/ct/`, made by llm-compressor itself, see its README): every file is
//! compared byte for byte, except the documented, deliberate differences (README,
//! "compressed-tensors export"):
//!
//! 1. `config.json`'s `quantization_config.ignore`: llm-compressor writes the list its user
//!    passed verbatim (`["model.embed_tokens", "lm_head", "re:.*mlp.gate$"]` for the fixtures);
//!    we list each module we leave unquantized by name, in natural order. The rest of
//!    config.json must be byte-identical: it is compared with our list swapped for theirs.
//! 2. NVFP4 MoE: each expert's gate and up share one global scale (vLLM's MoE loader uses the
//!    gate's for both); llm-compressor's model_free scales them separately. Only
//!    `mlp.experts.E.{gate,up}_proj.*` tensors of experts whose gate and up amax differ may
//!    differ, their headers (names, dtypes, shapes, offsets) may not, and our gate and up
//!    global scales must be equal.
//! 3. We add `shardquant.json` and `.quant_summary.txt`.

mod common;

use common::cli::*;
use common::{fixtures, TempDir};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

type Tensors = BTreeMap<String, (Value, Vec<u8>)>;

/// Header entries (without data offsets) and data of a safetensors file.
fn tensors(bytes: &[u8]) -> (Value, Tensors) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut out = BTreeMap::new();
    for (name, info) in header.as_object().unwrap() {
        let o = info["data_offsets"].as_array().unwrap();
        let (a, b) = (
            o[0].as_u64().unwrap() as usize,
            o[1].as_u64().unwrap() as usize,
        );
        out.insert(
            name.clone(),
            (info.clone(), bytes[8 + n + a..8 + n + b].to_vec()),
        );
    }
    (header, out)
}

/// Converts `source` with `format` and compares with the llm-compressor case; returns the
/// names of the tensors that differ (all of them deliberate, checked here).
fn check_case(source: &str, case: &str, format: &str, ignore: &[&str]) -> Vec<String> {
    let tmp = TempDir::new(case);
    let out = tmp.join("out");
    let src = fixtures().join(source);
    // On the GPU machine, SHARDQUANT_GOLDEN_DEVICE=cuda runs the same comparison on the GPU.
    let device = match std::env::var("SHARDQUANT_GOLDEN_DEVICE").as_deref() {
        Ok("cuda") => "cuda",
        _ => "cpu",
    };
    sq(&[
        "convert",
        s(&src),
        s(&out),
        "--format",
        format,
        "--export",
        "compressed-tensors",
        "--device",
        device,
    ])
    .expect_success();
    let reference = fixtures().join("ct").join(case);
    let mut differing = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(&reference)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in &names {
        let theirs = std::fs::read(reference.join(name)).unwrap();
        let ours = std::fs::read(out.join(name))
            .unwrap_or_else(|e| panic!("{case}: {name} not written: {e}"));
        if ours == theirs {
            continue;
        }
        if name == "config.json" {
            let mut o: Value = serde_json::from_slice(&ours).unwrap();
            let t: Value = serde_json::from_slice(&theirs).unwrap();
            assert_eq!(
                o["quantization_config"]["ignore"],
                serde_json::json!(ignore),
                "{case}: our ignore list"
            );
            // Byte identity of everything else: our file with their ignore list put back,
            // re-serialised as both are (indent 2, sorted keys, no trailing newline).
            let ours_text = String::from_utf8(ours.clone()).unwrap();
            let our_list = serde_json::to_string_pretty(&o["quantization_config"]["ignore"])
                .unwrap()
                .replace('\n', "\n    ");
            let their_list = serde_json::to_string_pretty(&t["quantization_config"]["ignore"])
                .unwrap()
                .replace('\n', "\n    ");
            assert!(ours_text.contains(&our_list), "{case}: {ours_text}");
            let swapped = ours_text.replacen(&our_list, &their_list, 1);
            assert_eq!(
                swapped,
                String::from_utf8(theirs).unwrap(),
                "{case}: config.json differs beyond the ignore list"
            );
            o["quantization_config"]["ignore"] = t["quantization_config"]["ignore"].clone();
            assert_eq!(o, t);
            continue;
        }
        assert!(
            name.ends_with(".safetensors") && format == "w4a16_nvfp4",
            "{case}: {name} differs"
        );
        let (oh, ot) = tensors(&ours);
        let (th, tt) = tensors(&theirs);
        assert_eq!(oh, th, "{case}: {name}: headers differ");
        for (k, (_, data)) in &tt {
            if ot[k].1 != *data {
                differing.push(k.clone());
            }
        }
        // Deliberate difference 2: expert gate/up share one global scale.
        for k in ot
            .keys()
            .filter(|k| k.ends_with("gate_proj.weight_global_scale"))
        {
            if k.contains(".experts.") {
                let up = k.replace("gate_proj", "up_proj");
                let all: Tensors = names
                    .iter()
                    .filter(|n| n.ends_with(".safetensors"))
                    .flat_map(|n| tensors(&std::fs::read(out.join(n)).unwrap()).1)
                    .collect();
                assert_eq!(all[k].1, all[&up].1, "{case}: {k} and its up_proj");
            }
        }
    }
    for d in &differing {
        assert!(
            d.contains(".mlp.experts.") && (d.contains(".gate_proj.") || d.contains(".up_proj.")),
            "{case}: {d} differs, and is not an expert's gate/up"
        );
    }
    let ours: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !names.contains(n))
        .collect();
    let mut extra = ours;
    extra.sort();
    assert_eq!(extra, [".quant_summary.txt", "shardquant.json"], "{case}");
    differing
}

const DENSE_IGNORE: &[&str] = &["lm_head", "model.embed_tokens"];

#[test]
fn llama128_nvfp4a16_is_llm_compressors() {
    let d = check_case(
        "ct/llama128_source",
        "llama128_nvfp4a16",
        "w4a16_nvfp4",
        DENSE_IGNORE,
    );
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn llama128_fp8_dynamic_is_llm_compressors() {
    check_case(
        "ct/llama128_source",
        "llama128_fp8_dynamic",
        "fp8_dynamic",
        DENSE_IGNORE,
    );
}

#[test]
fn llama128_fp8_block_is_llm_compressors() {
    check_case(
        "ct/llama128_source",
        "llama128_fp8_block",
        "fp8_block",
        DENSE_IGNORE,
    );
}

/// The sharded golden llama: fused partners moved to the primary's shard, zero and
/// underflowing blocks.
#[test]
fn llama_sharded_nvfp4a16_and_fp8_dynamic_are_llm_compressors() {
    let d = check_case(
        "golden/llama_nvfp4/input",
        "llama_nvfp4a16",
        "w4a16_nvfp4",
        DENSE_IGNORE,
    );
    assert!(d.is_empty(), "{d:?}");
    check_case(
        "golden/llama_nvfp4/input",
        "llama_fp8_dynamic",
        "fp8_dynamic",
        DENSE_IGNORE,
    );
}

const MOE128_IGNORE: &[&str] = &["lm_head", "model.embed_tokens", "model.layers.0.mlp.gate"];

#[test]
fn qwen3moe128_fp8_is_llm_compressors() {
    check_case(
        "ct/qwen3moe128_source",
        "qwen3moe128_fp8_dynamic",
        "fp8_dynamic",
        MOE128_IGNORE,
    );
    check_case(
        "ct/qwen3moe128_source",
        "qwen3moe128_fp8_block",
        "fp8_block",
        MOE128_IGNORE,
    );
}

#[test]
fn qwen3moe_fp8_dynamic_is_llm_compressors() {
    check_case(
        "golden/qwen3moe_nvfp4/input",
        "qwen3moe_fp8_dynamic",
        "fp8_dynamic",
        &[
            "lm_head",
            "model.embed_tokens",
            "model.layers.0.mlp.gate",
            "model.layers.1.mlp.gate",
        ],
    );
}

/// NVFP4 MoE: identical except the experts whose gate and up amax differ (expert 0, 1, 3's up
/// and expert 2's gate in qwen3moe128: the smaller one takes the pair's global scale); the
/// all-zero expert 1 down_proj gets global scale 1.0 and is identical.
#[test]
fn qwen3moe_nvfp4a16_differs_only_in_shared_expert_gate_up_scales() {
    let d = check_case(
        "ct/qwen3moe128_source",
        "qwen3moe128_nvfp4a16",
        "w4a16_nvfp4",
        MOE128_IGNORE,
    );
    assert!(!d.is_empty());
    assert!(!d.iter().any(|n| n.contains("down_proj")), "{d:?}");
    let d = check_case(
        "golden/qwen3moe_nvfp4/input",
        "qwen3moe_nvfp4a16",
        "w4a16_nvfp4",
        &[
            "lm_head",
            "model.embed_tokens",
            "model.layers.0.mlp.gate",
            "model.layers.1.mlp.gate",
        ],
    );
    assert!(!d.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Combinations not built: refused up front (exit 2), naming the option and what to use instead.
// ---------------------------------------------------------------------------------------------

fn refused(extra: &[&str], needles: &[&str]) {
    let tmp = TempDir::new("ct-refused");
    let out = tmp.join("out");
    let src = fixtures().join("ct/llama128_source");
    let mut args = vec!["convert", s(&src), s(&out)];
    args.extend_from_slice(extra);
    let r = sq(&args);
    r.expect_error(USAGE, needles);
    assert_no_output(&out);
}

#[test]
fn unbuilt_combinations_are_refused() {
    let ct = ["--export", "compressed-tensors"];
    refused(
        &[&ct[..], &["--format", "fp8_block", "--calib", "mse"]].concat(),
        &["--calib mse", "--export modelopt"],
    );
    refused(
        &[&ct[..], &["--format", "w4a16_nvfp4", "--allow-nonfinite"]].concat(),
        &["--allow-nonfinite"],
    );
    refused(
        &["--format", "fp8_dynamic"],
        &[
            "--format fp8_dynamic",
            "--export compressed-tensors",
            "--format fp8",
        ],
    );
    refused(
        &["--format", "fp8_block", "--export", "modelopt"],
        &["--format fp8_block", "--export compressed-tensors"],
    );
}

#[test]
fn cpu_device_is_accepted() {
    let tmp = TempDir::new("ct-cpu");
    let out = tmp.join("out");
    let src = fixtures().join("ct/llama128_source");
    sq(&[
        "convert",
        s(&src),
        s(&out),
        "--format",
        "fp8_dynamic",
        "--export",
        "compressed-tensors",
        "--device",
        "cpu",
    ])
    .expect_success();
    assert!(Path::new(&out.join("config.json")).is_file());
}

#[test]
fn inspect_refuses_the_compressed_tensors_plan() {
    let src = fixtures().join("ct/llama128_source");
    sq(&[
        "inspect",
        s(&src),
        "--format",
        "w4a16_nvfp4",
        "--export",
        "compressed-tensors",
    ])
    .expect_error(
        USAGE,
        &["inspect", "--export compressed-tensors", "not built"],
    );
}
