//! `convert --export compressed-tensors` for the static schemes (`--format nvfp4`, `--format fp8`,
//! `--kv-cache fp8`) against llm-compressor 0.14.0.1's own `oneshot` outputs
//! (`fixtures/ct/*_oneshot`; model_free_ptq refuses static activations).
//!
//! The statistics `fixtures/ct/<case>.amax.safetensors` give back the scales oneshot stored
//! (`fixtures/oracle/make_ct_oneshot_stats.py` derives and checks each amax: FP8 `s × 448`, NVFP4
//! a preimage of the global-scale formula). With them, every tensor must equal oneshot's byte
//! for byte, except one documented difference:
//!
//! - FP8 weights: oneshot writes a source `-0.0` as `0x00` (its model path loses the sign);
//!   we write `0x80`, as model_free and `torch`'s cast do (SPEC §6.1). Only such bytes may differ.
//!
//! `config.json` is compared on `quantization_config` (oneshot's file is written by
//! transformers' `save_pretrained`, with other keys): the config group, `kv_cache_scheme` and
//! every other key must be equal, except the documented differences, asserted exactly: the group
//! is named after the preset (`NVFP4`, `FP8`, as model_free names it; oneshot: `group_0`), the
//! weights' `observer` is `null` (model_free's; oneshot writes the observer it ran,
//! `memoryless_minmax`), `ignore` names every unquantized module with a 2-D weight (oneshot: the
//! unquantized `Linear`s only), and oneshot adds `"sparsity_config": {}`.

mod common;

use common::cli::*;
use common::{fixtures, load_tensors, TempDir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// `--device` for the conversions: the GPU with `SHARDQUANT_GOLDEN_DEVICE=cuda` (the GPU
/// machine's run), else the CPU.
fn device() -> &'static str {
    match std::env::var("SHARDQUANT_GOLDEN_DEVICE").as_deref() {
        Ok("cuda") => "cuda",
        _ => "cpu",
    }
}

fn ct_dir(name: &str) -> PathBuf {
    fixtures().join("ct").join(name)
}

/// Converts `source` (a folder of fixtures/ct) to compressed-tensors with `args`.
fn convert(tmp: &TempDir, source: &str, args: &[&str]) -> PathBuf {
    let out = tmp.join("out");
    let src = ct_dir(source);
    let mut all = vec![
        "convert",
        s(&src),
        s(&out),
        "--export",
        "compressed-tensors",
        "--device",
        device(),
    ];
    all.extend_from_slice(args);
    sq(&all).expect_success();
    out
}

/// The element at `i` of a BF16 tensor's bytes is `-0.0`.
fn is_negative_zero_bf16(bytes: &[u8], i: usize) -> bool {
    bytes[2 * i] == 0x00 && bytes[2 * i + 1] == 0x80
}

/// Every tensor of `ours` equals oneshot's `case`, except FP8 weight bytes where the BF16
/// source holds `-0.0` (ours `0x80`, theirs `0x00`). Returns how many such bytes there were.
fn assert_tensors_are_oneshots(ours: &Path, case: &str, source: &str) -> usize {
    let a = load_tensors(ours);
    let b = load_tensors(&ct_dir(case));
    let src = load_tensors(&ct_dir(source));
    let names = |m: &std::collections::BTreeMap<String, common::Tensor>| -> Vec<String> {
        m.keys().cloned().collect()
    };
    assert_eq!(names(&a), names(&b), "{case}: tensor names");
    let mut negative_zeros = 0;
    for (name, (dtype, shape, theirs)) in &b {
        let (odtype, oshape, mine) = &a[name];
        assert_eq!((odtype, oshape), (dtype, shape), "{case}: {name}");
        if mine == theirs {
            continue;
        }
        assert_eq!(dtype, "F8_E4M3", "{case}: {name} differs");
        let source = &src[name].2;
        for (i, (x, y)) in mine.iter().zip(theirs).enumerate() {
            if x != y {
                assert!(
                    *x == 0x80 && *y == 0x00 && is_negative_zero_bf16(source, i),
                    "{case}: {name}[{i}]: ours {x:#04x}, oneshot's {y:#04x}, not a source -0.0"
                );
                negative_zeros += 1;
            }
        }
    }
    negative_zeros
}

fn quantization_config(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config: Value = serde_json::from_str(&text).unwrap();
    config["quantization_config"].clone()
}

/// `quantization_config` equals oneshot's but for the documented differences (module doc).
fn assert_config_is_oneshots(ours: &Path, case: &str, scheme: &str, ignore: (&[&str], &[&str])) {
    let mut mine = quantization_config(ours);
    let mut theirs = quantization_config(&ct_dir(case));
    // The group: our preset name and model_free's null weight observer.
    let group_names = |q: &Value| -> Vec<String> {
        q["config_groups"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(group_names(&mine), [scheme], "{case}");
    assert_eq!(group_names(&theirs), ["group_0"], "{case}");
    let mut group = mine["config_groups"][scheme].take();
    let mut their_group = theirs["config_groups"]["group_0"].take();
    assert_eq!(group["weights"]["observer"], Value::Null, "{case}");
    assert_eq!(
        their_group["weights"]["observer"], "memoryless_minmax",
        "{case}"
    );
    group["weights"]["observer"] = Value::Null;
    their_group["weights"]["observer"] = Value::Null;
    assert_eq!(group, their_group, "{case}: config group");
    // ignore: every module we leave unquantized, by name; oneshot's unquantized Linears.
    assert_eq!(mine["ignore"], json!(ignore.0), "{case}: our ignore");
    assert_eq!(
        theirs["ignore"],
        json!(ignore.1),
        "{case}: oneshot's ignore"
    );
    assert_eq!(theirs["sparsity_config"], json!({}), "{case}");
    for q in [&mut mine, &mut theirs] {
        let q = q.as_object_mut().unwrap();
        for key in ["config_groups", "ignore", "sparsity_config"] {
            q.remove(key);
        }
    }
    // Everything else (format, kv_cache_scheme, quant_method, status, version, ...) is equal.
    assert_eq!(mine, theirs, "{case}: quantization_config");
}

const DENSE_IGNORE: (&[&str], &[&str]) = (&["lm_head", "model.embed_tokens"], &["lm_head"]);

#[test]
fn llama128_nvfp4_w4a4_is_oneshots() {
    let tmp = TempDir::new("ct-oneshot-llama-nvfp4");
    let stats = ct_dir("llama128_nvfp4_oneshot.amax.safetensors");
    let out = convert(
        &tmp,
        "llama128_source",
        &["--format", "nvfp4", "--stats", s(&stats)],
    );
    assert_eq!(
        assert_tensors_are_oneshots(&out, "llama128_nvfp4_oneshot", "llama128_source"),
        0
    );
    assert_config_is_oneshots(&out, "llama128_nvfp4_oneshot", "NVFP4", DENSE_IGNORE);
}

/// oneshot shares each expert's gate and up global scale as we do, and routes every token to
/// every expert while calibrating (`moe_calibrate_all_experts`), so each expert's down_proj
/// has its own input amax: `--expert-input-amax per-expert` keeps them (the default, the
/// layer's max, is what ModelOpt writes).
#[test]
fn qwen3moe128_nvfp4_w4a4_is_oneshots() {
    let tmp = TempDir::new("ct-oneshot-moe-nvfp4");
    let stats = ct_dir("qwen3moe128_nvfp4_oneshot.amax.safetensors");
    let out = convert(
        &tmp,
        "qwen3moe128_source",
        &[
            "--format",
            "nvfp4",
            "--stats",
            s(&stats),
            "--expert-input-amax",
            "per-expert",
        ],
    );
    assert_eq!(
        assert_tensors_are_oneshots(&out, "qwen3moe128_nvfp4_oneshot", "qwen3moe128_source"),
        0
    );
    assert_config_is_oneshots(
        &out,
        "qwen3moe128_nvfp4_oneshot",
        "NVFP4",
        (
            &["lm_head", "model.embed_tokens", "model.layers.0.mlp.gate"],
            &["model.layers.0.mlp.gate", "lm_head"],
        ),
    );
}

#[test]
fn llama128_fp8_static_with_kv_cache_is_oneshots() {
    let tmp = TempDir::new("ct-oneshot-llama-fp8");
    let stats = ct_dir("llama128_fp8_static_kv_oneshot.amax.safetensors");
    let out = convert(
        &tmp,
        "llama128_source",
        &["--format", "fp8", "--kv-cache", "fp8", "--stats", s(&stats)],
    );
    // The source's planted -0.0 (o_proj's block, down_proj's ties rows) are the only bytes
    // that differ.
    let negative_zeros =
        assert_tensors_are_oneshots(&out, "llama128_fp8_static_kv_oneshot", "llama128_source");
    assert!(negative_zeros > 0);
    assert_config_is_oneshots(&out, "llama128_fp8_static_kv_oneshot", "FP8", DENSE_IGNORE);
}

/// MoE static FP8: each expert's gate and up keep their own weight scale (oneshot does not fuse
/// per-tensor FP8 scales); each expert's input scales are its own (`--expert-input-amax
/// per-expert`, oneshot routes every token to every expert while calibrating).
#[test]
fn qwen3moe128_fp8_static_with_kv_cache_is_oneshots() {
    let tmp = TempDir::new("ct-oneshot-moe-fp8");
    let stats = ct_dir("qwen3moe128_fp8_static_kv_oneshot.amax.safetensors");
    let out = convert(
        &tmp,
        "qwen3moe128_source",
        &[
            "--format",
            "fp8",
            "--kv-cache",
            "fp8",
            "--expert-input-amax",
            "per-expert",
            "--stats",
            s(&stats),
        ],
    );
    let negative_zeros = assert_tensors_are_oneshots(
        &out,
        "qwen3moe128_fp8_static_kv_oneshot",
        "qwen3moe128_source",
    );
    assert!(negative_zeros > 0);
    assert_config_is_oneshots(
        &out,
        "qwen3moe128_fp8_static_kv_oneshot",
        "FP8",
        (
            &["lm_head", "model.embed_tokens", "model.layers.0.mlp.gate"],
            &["model.layers.0.mlp.gate", "lm_head"],
        ),
    );
}

/// The same statistics without `--kv-cache`: no k/v scales, `kv_cache_scheme` null.
#[test]
fn fp8_static_without_kv_cache_writes_no_kv_scales() {
    let tmp = TempDir::new("ct-oneshot-llama-fp8-nokv");
    let stats = ct_dir("llama128_fp8_static_kv_oneshot.amax.safetensors");
    let out = convert(
        &tmp,
        "llama128_source",
        &["--format", "fp8", "--stats", s(&stats)],
    );
    let tensors = load_tensors(&out);
    assert!(!tensors
        .keys()
        .any(|k| k.ends_with("k_scale") || k.ends_with("v_scale")));
    assert_eq!(quantization_config(&out)["kv_cache_scheme"], Value::Null);
    let theirs = load_tensors(&ct_dir("llama128_fp8_static_kv_oneshot"));
    for name in [
        "model.layers.0.self_attn.q_proj.input_scale",
        "model.layers.0.mlp.down_proj.weight_scale",
    ] {
        assert_eq!(tensors[name], theirs[name], "{name}");
    }
}

/// compressed-tensors FP8 scales are per linear: an expert's gate and up keep their own
/// (qwen3moe128's expert 2 up_proj is planted ×4), where ModelOpt shares one.
#[test]
fn fp8_static_experts_keep_their_own_weight_scales() {
    let tmp = TempDir::new("ct-fp8-static-moe");
    let stats = ct_dir("qwen3moe128_nvfp4_oneshot.amax.safetensors");
    let out = convert(
        &tmp,
        "qwen3moe128_source",
        &["--format", "fp8", "--stats", s(&stats)],
    );
    let t = load_tensors(&out);
    let scale = |m: &str| {
        t[&format!("model.layers.0.mlp.experts.2.{m}.weight_scale")]
            .2
            .clone()
    };
    assert_ne!(scale("gate_proj"), scale("up_proj"));
    // The experts' input scales follow the layer-max default: one per projection.
    let input = |e: usize, m: &str| {
        t[&format!("model.layers.0.mlp.experts.{e}.{m}.input_scale")]
            .2
            .clone()
    };
    for e in 1..4 {
        assert_eq!(input(e, "down_proj"), input(0, "down_proj"));
        assert_eq!(input(e, "gate_proj"), input(0, "up_proj"));
    }
}

/// A ModelOpt amax file (F32 0-d values) at `path`.
fn write_amax(path: &Path, values: &[(String, f32)]) {
    let bytes: Vec<(String, Vec<u8>)> = values
        .iter()
        .map(|(k, v)| (k.clone(), v.to_le_bytes().to_vec()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![], b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// With output shards mirroring a sharded input, a layer's k_scale / v_scale go into the shard
/// of its k_proj's outputs (for NVFP4, q_proj's shard, where llm-compressor moves k_proj).
#[test]
fn kv_scales_go_into_their_layers_k_proj_shard() {
    let tmp = TempDir::new("ct-kv-shards");
    let stats = tmp.join("kv.amax.safetensors");
    let mut values = Vec::new();
    for l in 0..2 {
        values.push((
            format!("model.layers.{l}.self_attn.k_bmm_quantizer._amax"),
            3.0 + l as f32,
        ));
        values.push((
            format!("model.layers.{l}.self_attn.v_bmm_quantizer._amax"),
            5.0 + l as f32,
        ));
    }
    write_amax(&stats, &values);
    let src = fixtures().join("golden/llama_nvfp4/input");
    for (format, weight) in [("fp8_dynamic", "weight"), ("w4a16_nvfp4", "weight_packed")] {
        let out = tmp.join(format);
        sq(&[
            "convert",
            s(&src),
            s(&out),
            "--format",
            format,
            "--export",
            "compressed-tensors",
            "--kv-cache",
            "fp8",
            "--stats",
            s(&stats),
            "--device",
            device(),
        ])
        .expect_success();
        let index: Value = serde_json::from_slice(
            &std::fs::read(out.join("model.safetensors.index.json")).unwrap(),
        )
        .unwrap();
        let map = &index["weight_map"];
        for l in 0..2 {
            let attn = format!("model.layers.{l}.self_attn");
            let k_proj = &map[format!("{attn}.k_proj.{weight}")];
            assert!(k_proj.is_string());
            assert_eq!(
                &map[format!("{attn}.k_scale")],
                k_proj,
                "{format} layer {l}"
            );
            assert_eq!(
                &map[format!("{attn}.v_scale")],
                k_proj,
                "{format} layer {l}"
            );
        }
        let t = load_tensors(&out);
        // bf16(3.0 / 448) and bf16(5.0 / 448), BF16 [1].
        let k = &t["model.layers.0.self_attn.k_scale"];
        assert_eq!((k.0.as_str(), k.1.as_slice()), ("BF16", &[1usize][..]));
        assert_eq!(k.2, half::bf16::from_f32(3.0 / 448.0).to_le_bytes());
        assert_eq!(
            t["model.layers.1.self_attn.v_scale"].2,
            half::bf16::from_f32(6.0 / 448.0).to_le_bytes()
        );
        assert!(!quantization_config(&out)["kv_cache_scheme"].is_null());
    }
}

// ---------------------------------------------------------------------------------------------
// Missing statistics: the same pre-flight errors as the ModelOpt export (exit 3, nothing
// written), whichever export is asked for.
// ---------------------------------------------------------------------------------------------

/// Runs `convert` of `source` with `args` for both exports; both must fail in pre-flight with
/// every needle, and write nothing.
fn refused_by_both_exports(tag: &str, source: &str, args: &[&str], needles: &[&str]) {
    for export in ["modelopt", "compressed-tensors"] {
        let tmp = TempDir::new(tag);
        let out = tmp.join("out");
        let src = ct_dir(source);
        let mut all = vec!["convert", s(&src), s(&out), "--export", export];
        all.extend_from_slice(args);
        let r = sq(&all);
        r.expect_error(BAD_INPUT, needles);
        assert_no_output(&out);
    }
}

#[test]
fn w4a4_and_fp8_without_statistics_are_refused_as_for_modelopt() {
    for format in ["nvfp4", "fp8"] {
        refused_by_both_exports(
            "ct-nostats",
            "llama128_source",
            &["--format", format],
            &[
                &format!("--format {format} quantizes activations"),
                "7 quantized linear(s) have no input amax",
                "no --stats file given",
                "model.layers.0.mlp.down_proj",
                "fix: pass a ModelOpt amax file",
            ],
        );
    }
}

#[test]
fn a_linear_missing_from_the_statistics_is_named() {
    let tmp = TempDir::new("ct-partial-stats");
    let stats = tmp.join("partial.amax.safetensors");
    // oneshot's FP8 statistics without o_proj's input amax.
    let full =
        common::load_tensors_of_file(&ct_dir("llama128_fp8_static_kv_oneshot.amax.safetensors"));
    let values: Vec<(String, f32)> = full
        .iter()
        .filter(|(k, _)| !k.contains("o_proj"))
        .map(|(k, (_, _, b))| (k.clone(), f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    write_amax(&stats, &values);
    for format in ["nvfp4", "fp8"] {
        refused_by_both_exports(
            "ct-partial-stats",
            "llama128_source",
            &["--format", format, "--stats", s(&stats)],
            &[
                "1 quantized linear(s) have no input amax",
                "model.layers.0.self_attn.o_proj",
            ],
        );
    }
}

#[test]
fn kv_cache_without_kv_statistics_is_refused_as_for_modelopt() {
    // Input amax for every linear, none for the KV cache.
    let stats = ct_dir("llama128_nvfp4_oneshot.amax.safetensors");
    for format in ["nvfp4", "w4a16_nvfp4"] {
        refused_by_both_exports(
            "ct-kv-nostats",
            "llama128_source",
            &[
                "--format",
                format,
                "--stats",
                s(&stats),
                "--kv-cache",
                "fp8",
            ],
            &[
                "--kv-cache fp8 needs k/v amax",
                "k_bmm_quantizer",
                "model.layers.0.self_attn",
                s(&stats),
                "fix: calibrate with KV-cache quantization enabled",
            ],
        );
    }
}

#[test]
fn an_uncalibrated_expert_follows_the_policy_as_for_modelopt() {
    let tmp = TempDir::new("ct-uncalibrated");
    let stats = tmp.join("no-expert-3.amax.safetensors");
    let full = common::load_tensors_of_file(&ct_dir("qwen3moe128_nvfp4_oneshot.amax.safetensors"));
    let values: Vec<(String, f32)> = full
        .iter()
        .filter(|(k, _)| !k.contains("experts.3."))
        .map(|(k, (_, _, b))| (k.clone(), f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    write_amax(&stats, &values);
    refused_by_both_exports(
        "ct-uncalibrated",
        "qwen3moe128_source",
        &[
            "--format",
            "nvfp4",
            "--stats",
            s(&stats),
            "--uncalibrated-experts",
            "error",
        ],
        &[
            "experts received no calibration tokens",
            "layer 0 (down): experts 3",
            "--uncalibrated-experts peer-max",
        ],
    );
    // peer-max (the default): expert 3 takes the layer's max and is named in a warning.
    let out = tmp.join("out");
    let r = sq(&[
        "convert",
        s(&ct_dir("qwen3moe128_source")),
        s(&out),
        "--export",
        "compressed-tensors",
        "--format",
        "nvfp4",
        "--stats",
        s(&stats),
        "--device",
        device(),
    ]);
    r.expect_success();
    r.expect_mentions(&[
        "layer 0: 1 expert(s) saw no calibration tokens",
        "experts 3",
        "peer-max",
    ]);
    let t = load_tensors(&out);
    let g = |e: usize| {
        t[&format!("model.layers.0.mlp.experts.{e}.down_proj.input_global_scale")]
            .2
            .clone()
    };
    assert_eq!(g(3), g(0));
}

/// A compressed-tensors checkpoint given to `--stats` (a directory) gives back its static
/// scales: oneshot's own outputs reproduce themselves (its bf16 FP8 and KV scales exactly,
/// `s × 448`; its NVFP4 input global scales through the amax `2688 / g`), and so do ours.
#[test]
fn compressed_tensors_checkpoints_read_back_as_statistics_give_the_same_scales() {
    for (case, source, args) in [
        (
            "llama128_nvfp4_oneshot",
            "llama128_source",
            vec!["--format", "nvfp4"],
        ),
        (
            "qwen3moe128_nvfp4_oneshot",
            "qwen3moe128_source",
            vec!["--format", "nvfp4", "--expert-input-amax", "per-expert"],
        ),
        (
            "llama128_fp8_static_kv_oneshot",
            "llama128_source",
            vec!["--format", "fp8", "--kv-cache", "fp8"],
        ),
        (
            "qwen3moe128_fp8_static_kv_oneshot",
            "qwen3moe128_source",
            vec![
                "--format",
                "fp8",
                "--kv-cache",
                "fp8",
                "--expert-input-amax",
                "per-expert",
            ],
        ),
    ] {
        let tmp = TempDir::new("ct-readback");
        let stats = ct_dir(case);
        let mut all = args.clone();
        all.extend(["--stats", s(&stats)]);
        let out = convert(&tmp, source, &all);
        assert_tensors_are_oneshots(&out, case, source);
        // Ours, read back: the same tensors again.
        let again = tmp.join("again");
        let src = ct_dir(source);
        let mut all = vec![
            "convert",
            s(&src),
            s(&again),
            "--export",
            "compressed-tensors",
            "--device",
            device(),
            "--stats",
            s(&out),
        ];
        all.extend(args.iter().copied());
        sq(&all).expect_success();
        assert_eq!(load_tensors(&again), load_tensors(&out), "{case}");
    }
}
