//! `shardquant verify` on compressed-tensors checkpoints: llm-compressor 0.14.0.1's own outputs
//! (`fixtures/ct/`) and ours (`convert --export compressed-tensors`, the static schemes too)
//! pass, except llm-compressor's NVFP4A16 MoE output, whose experts' gate and up global scales
//! differ (vLLM uses the gate's for both), and its `kv_cache_scheme` without k/v scales; each
//! broken invariant is found.

mod common;

use common::{copy_dir, fixtures, TempDir};
use shardquant::commands::verify::{verify, Verification};
use shardquant::input::checkpoint::Checkpoint;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// llm-compressor's case and the source it was made from.
const CASES: &[(&str, &str)] = &[
    ("llama_nvfp4a16", "golden/llama_nvfp4/input"),
    ("llama_fp8_dynamic", "golden/llama_nvfp4/input"),
    ("llama128_nvfp4a16", "ct/llama128_source"),
    ("llama128_fp8_dynamic", "ct/llama128_source"),
    ("llama128_fp8_block", "ct/llama128_source"),
    ("llama128_fp8_static_kv_oneshot", "ct/llama128_source"),
    ("llama128_nvfp4_oneshot", "ct/llama128_source"),
    ("qwen3moe_fp8_dynamic", "golden/qwen3moe_nvfp4/input"),
    ("qwen3moe128_fp8_dynamic", "ct/qwen3moe128_source"),
    ("qwen3moe128_fp8_block", "ct/qwen3moe128_source"),
    ("qwen3moe128_nvfp4_oneshot", "ct/qwen3moe128_source"),
    ("qwen3moe128_fp8_static_kv_oneshot", "ct/qwen3moe128_source"),
];

fn case(name: &str) -> PathBuf {
    fixtures().join("ct").join(name)
}

fn check(dir: &Path, source: &Path) -> Verification {
    verify(dir, Some(source)).unwrap()
}

/// Overwrites the first bytes of tensor `name` in the checkpoint at `dir`.
fn poke(dir: &Path, name: &str, bytes: &[u8]) {
    let ckpt = Checkpoint::open(dir).unwrap();
    let t = ckpt.get(name).unwrap().clone();
    let path = ckpt.shards()[t.shard].path.clone();
    drop(ckpt);
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(t.start as u64)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn llm_compressor_outputs_pass_with_a_small_error_against_their_source() {
    let mut failures = Vec::new();
    for (name, source) in CASES {
        let v = check(&case(name), &fixtures().join(source));
        if !v.problems.is_empty() {
            failures.push(format!("{name}: {:#?}", v.problems));
            continue;
        }
        let nvfp4 = name.contains("nvfp4");
        let bound = if nvfp4 { 0.15 } else { 0.05 };
        assert!(v.linears >= 7 && v.errors.len() == v.linears, "{name}");
        assert!(
            v.errors.iter().all(|e| e.1 < bound) && v.errors.iter().any(|e| e.1 > 0.0),
            "{name}: {:?}",
            v.errors
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn llm_compressor_nvfp4a16_moe_is_flagged_for_expert_gate_up_global_scales() {
    for (name, source) in [
        ("qwen3moe_nvfp4a16", "golden/qwen3moe_nvfp4/input"),
        ("qwen3moe128_nvfp4a16", "ct/qwen3moe128_source"),
    ] {
        let v = check(&case(name), &fixtures().join(source));
        let text = v.problems.join("\n");
        assert_eq!(v.problems.len(), 1, "{name}: {text}");
        assert!(
            text.contains("different weight_global_scale")
                && text.contains("vLLM's MoE loader uses the gate's scale for both")
                && text.contains("llm-compressor's model_free_ptq"),
            "{name}: {text}"
        );
        // Nothing else is wrong: the error against the source is that of NVFP4.
        assert!(
            v.errors.iter().all(|e| e.1 < 0.15),
            "{name}: {:?}",
            v.errors
        );
    }
}

/// llm-compressor's model_free_ptq with a `kv_cache_scheme` writes no k/v scales: flagged.
#[test]
fn llm_compressor_kv_cache_scheme_without_scales_is_flagged() {
    let v = check(
        &case("llama128_fp8_dynamic_kvconfig"),
        &fixtures().join("ct/llama128_source"),
    );
    assert_eq!(
        v.problems,
        [
            "kv_cache_scheme is set but 2 KV-cache scale(s) are missing (e.g. \
          model.layers.0.self_attn.k_scale): transformers creates them uninitialised (garbage \
          logits) and vLLM uses 1.0; llm-compressor's model_free_ptq writes such checkpoints"
        ]
    );
    assert!(v.errors.iter().all(|e| e.1 < 0.05), "{:?}", v.errors);
}

#[test]
fn our_compressed_tensors_outputs_pass() {
    let tmp = TempDir::new("verify-ct-ours");
    let stats = |case: &str| {
        fixtures()
            .join("ct")
            .join(format!("{case}.amax.safetensors"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let (dense_fp8, dense_nvfp4, moe_nvfp4) = (
        stats("llama128_fp8_static_kv_oneshot"),
        stats("llama128_nvfp4_oneshot"),
        stats("qwen3moe128_nvfp4_oneshot"),
    );
    for (source, format, extra) in [
        ("ct/llama128_source", "w4a16_nvfp4", vec![]),
        ("ct/llama128_source", "fp8_block", vec![]),
        ("ct/qwen3moe128_source", "w4a16_nvfp4", vec![]),
        ("golden/qwen3moe_nvfp4/input", "fp8_dynamic", vec![]),
        ("golden/llama_nvfp4/input", "w4a16_nvfp4", vec![]),
        // The static schemes, with and without the KV cache.
        ("ct/llama128_source", "nvfp4", vec!["--stats", &dense_nvfp4]),
        (
            "ct/llama128_source",
            "fp8",
            vec!["--stats", &dense_fp8, "--kv-cache", "fp8"],
        ),
        (
            "ct/llama128_source",
            "fp8_dynamic",
            vec!["--stats", &dense_fp8, "--kv-cache", "fp8"],
        ),
        (
            "ct/qwen3moe128_source",
            "nvfp4",
            vec!["--stats", &moe_nvfp4],
        ),
        ("ct/qwen3moe128_source", "fp8", vec!["--stats", &moe_nvfp4]),
    ] {
        let src = fixtures().join(source);
        let out = tmp.join(&format!(
            "{}-{format}{}",
            source.replace('/', "_"),
            if extra.len() > 2 { "-kv" } else { "" }
        ));
        let mut args = vec![
            "convert",
            src.to_str().unwrap(),
            out.to_str().unwrap(),
            "--format",
            format,
            "--export",
            "compressed-tensors",
            "-q",
        ];
        args.extend(extra.iter().copied());
        let (code, _, stderr) = common::run(&args);
        assert_eq!(code, 0, "{source} {format}: {stderr}");
        let v = check(&out, &src);
        assert!(
            v.problems.is_empty(),
            "{source} {format}: {:#?}",
            v.problems
        );
        assert!(v.linears >= 7 && v.errors.len() == v.linears);
        // Through the CLI, as JSON.
        let (code, stdout, stderr) = common::run(&[
            "verify",
            out.to_str().unwrap(),
            "--source",
            src.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(code, 0, "{stderr}");
        let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(j["ok"], true, "{stdout}");
        assert_eq!(j["linears"].as_u64(), Some(v.linears as u64));
        assert_eq!(
            j["relative_errors"].as_object().unwrap().len(),
            v.linears,
            "{stdout}"
        );
    }
}

/// Rewrites the single `model.safetensors` of `dir` (and its index) after `edit`.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut std::collections::BTreeMap<String, common::Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut t = common::load_tensors_of_file(&path);
    edit(&mut t);
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, (dtype, shape, bytes)) in &t {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape,
                "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend(h);
    file.extend(data);
    std::fs::write(&path, file).unwrap();
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let mut j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
        j["weight_map"] = t
            .keys()
            .map(|k| (k.clone(), serde_json::json!("model.safetensors")))
            .collect::<serde_json::Map<_, _>>()
            .into();
        std::fs::write(&index, serde_json::to_string_pretty(&j).unwrap()).unwrap();
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut j["quantization_config"]);
    std::fs::write(&path, serde_json::to_string_pretty(&j).unwrap()).unwrap();
}

fn problems_of(dir: &Path) -> String {
    verify(dir, None).unwrap().problems.join("\n")
}

#[test]
fn broken_invariants_are_found() {
    let tmp = TempDir::new("verify-ct-broken");
    let src = fixtures().join("ct/llama128_source");
    let nvfp4 = tmp.join("nvfp4");
    copy_dir(&case("llama128_nvfp4a16"), &nvfp4);
    assert_eq!(problems_of(&nvfp4), "");
    let l0 = "model.layers.0";
    rewrite(&nvfp4, |t| {
        // A missing tensor, and a block-scale tensor of the wrong shape.
        t.remove(&format!("{l0}.self_attn.o_proj.weight_global_scale"));
        let s = t
            .get_mut(&format!("{l0}.mlp.down_proj.weight_scale"))
            .unwrap();
        s.1[0] -= 1;
        s.2.truncate(s.1[0] * s.1[1]);
    });
    // A zero global scale (and k_proj's then differs from q/v's) and a zero block scale.
    poke(
        &nvfp4,
        &format!("{l0}.self_attn.k_proj.weight_global_scale"),
        &0f32.to_le_bytes(),
    );
    poke(&nvfp4, &format!("{l0}.mlp.gate_proj.weight_scale"), &[0]);
    // A quantized module the ignore list names (by a regex), and an unquantized linear it
    // does not name.
    edit_config(&nvfp4, |q| {
        q["ignore"] = serde_json::json!(["model.embed_tokens", r"re:.*layers\.0\.mlp\.up_proj$"]);
    });
    let text = problems_of(&nvfp4);
    for want in [
        "model.layers.0.self_attn.o_proj: model.layers.0.self_attn.o_proj.weight_global_scale is missing",
        "model.layers.0.mlp.down_proj: NVFP4 tensors should be weight_packed U8 [out, in/2] and weight_scale F8_E4M3 [out, in/16] = [128, 16]",
        "model.layers.0.self_attn.k_proj: weight_global_scale is 0 (must be finite and positive)",
        "model.layers.0.self_attn.k_proj and model.layers.0.self_attn.q_proj are fused by engines but have different weight_global_scale",
        "model.layers.0.mlp.gate_proj: 1 block scale(s) are NaN, negative or zero",
        "model.layers.0.mlp.up_proj is quantized but the ignore list names it",
        "1 linear(s) are not quantized but the ignore list does not name them (e.g. lm_head)",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // Through the CLI: exit 3, and --json says why.
    let (code, stdout, _) = common::run(&["verify", nvfp4.to_str().unwrap(), "--json"]);
    assert_eq!(code, 3);
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["ok"], false);
    assert!(j["problems"].as_array().unwrap().len() >= 7, "{stdout}");

    // FP8 block: a zero block scale, a wrong scale grid, a missing scale; a static scheme
    // without its input scales.
    let fp8 = tmp.join("fp8");
    copy_dir(&case("llama128_fp8_block"), &fp8);
    poke(
        &fp8,
        &format!("{l0}.self_attn.o_proj.weight_scale"),
        &[0, 0],
    );
    rewrite(&fp8, |t| {
        t.get_mut(&format!("{l0}.mlp.gate_proj.weight_scale"))
            .unwrap()
            .1 = vec![1, 2];
        t.remove(&format!("{l0}.mlp.up_proj.weight_scale"));
    });
    let text = problems_of(&fp8);
    for want in [
        "model.layers.0.self_attn.o_proj: weight_scale is 0 (must be finite and positive)",
        "model.layers.0.mlp.gate_proj: FP8 weight_scale should be a float [2, 1] for Fp8Block(128, 128), is BF16 [1, 2]",
        "model.layers.0.mlp.up_proj: model.layers.0.mlp.up_proj.weight_scale is missing",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let stat = tmp.join("static");
    copy_dir(&case("llama128_fp8_static_kv_oneshot"), &stat);
    rewrite(&stat, |t| {
        t.remove(&format!("{l0}.self_attn.q_proj.input_scale"));
    });
    let text = problems_of(&stat);
    assert!(
        text.contains("model.layers.0.self_attn.q_proj: model.layers.0.self_attn.q_proj.input_scale is missing (the config's input_activations are static)"),
        "{text}"
    );

    // KV cache: a zero k_scale, a v_scale of two values; the scales without the scheme.
    let kv = tmp.join("kv");
    copy_dir(&case("llama128_fp8_static_kv_oneshot"), &kv);
    poke(&kv, &format!("{l0}.self_attn.k_scale"), &[0, 0]);
    rewrite(&kv, |t| {
        t.get_mut(&format!("{l0}.self_attn.v_scale")).unwrap().1 = vec![2];
        t.get_mut(&format!("{l0}.self_attn.v_scale")).unwrap().2 = vec![0x80, 0x3F, 0x80, 0x3F];
    });
    let text = problems_of(&kv);
    for want in [
        "model.layers.0.self_attn: k_scale is 0 (must be finite and positive)",
        "model.layers.0.self_attn.v_scale should hold one value (shape [1]), is BF16 [2]",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    edit_config(&kv, |q| q["kv_cache_scheme"] = serde_json::Value::Null);
    assert_eq!(
        problems_of(&kv),
        "2 KV-cache scale(s) are stored (e.g. model.layers.0.self_attn.k_scale) but \
         quantization_config has no kv_cache_scheme: engines do not apply them"
    );

    // An unquantized linear missing from `ignore` matters only when the groups target every
    // `Linear`.
    let targets = tmp.join("targets");
    copy_dir(&case("llama128_fp8_dynamic"), &targets);
    edit_config(&targets, |q| q["ignore"] = serde_json::json!([]));
    assert!(problems_of(&targets).contains("(e.g. lm_head)"));
    edit_config(&targets, |q| {
        q["config_groups"]["FP8_DYNAMIC"]["targets"] = serde_json::json!([r"re:.*_proj$"])
    });
    assert_eq!(problems_of(&targets), "");

    // llm-compressor with `ignore=[]` quantizes the embedding too; lm_head is compared with
    // its source tensor as stored.
    let v = check(&case("llama128_nvfp4a16_noignore"), &src);
    assert_eq!(
        v.problems,
        [
            "model.embed_tokens is quantized but it is an embedding: engines (vLLM, transformers) \
          load it unquantized and cannot read its compressed-tensors weights; add it to ignore"
        ]
    );
    assert!(
        v.errors.iter().any(|e| e.0 == "lm_head" && e.1 < 0.15),
        "{:?}",
        v.errors
    );

    // --source: a weight from another linear is far off the bound.
    let swapped = tmp.join("swapped");
    copy_dir(&case("llama128_fp8_dynamic"), &swapped);
    rewrite(&swapped, |t| {
        let q = t[&format!("{l0}.self_attn.o_proj.weight")].clone();
        t.insert(format!("{l0}.self_attn.q_proj.weight"), q);
    });
    let v = check(&swapped, &src);
    let text = v.problems.join("\n");
    assert!(
        text.contains("model.layers.0.self_attn.q_proj: relative error") && v.problems.len() == 1,
        "{text}"
    );
}

#[test]
fn inspect_says_a_compressed_tensors_checkpoint_is_already_quantized_and_points_to_verify() {
    let dir = case("llama128_nvfp4a16");
    let (code, _, stderr) = common::run(&["inspect", dir.to_str().unwrap()]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("already quantized (compressed-tensors")
            && stderr.contains("shardquant verify"),
        "{stderr}"
    );
}
