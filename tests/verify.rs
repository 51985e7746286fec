//! `shardquant verify`: ModelOpt's own exports and ours pass; each broken invariant is found.

mod common;

use common::{copy_dir, fixtures, TempDir};
use shardquant::input::checkpoint::Checkpoint;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

fn golden(case: &str) -> std::path::PathBuf {
    fixtures().join("golden").join(case)
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
fn modelopt_exports_pass_with_a_small_error_against_their_source() {
    for case in [
        "llama_nvfp4",
        "llama_fp8",
        "qwen3moe_nvfp4",
        "mixtral_nvfp4",
        "llama_fp8_gpu",
    ] {
        let dir = golden(case);
        let v =
            shardquant::commands::verify::verify(&dir.join("modelopt"), Some(&dir.join("input")))
                .unwrap();
        assert!(v.problems.is_empty(), "{case}: {:?}", v.problems);
        assert!(v.linears >= 14 && v.errors.len() == v.linears, "{case}");
        assert!(
            v.errors.iter().all(|e| e.1 > 0.0 && e.1 < 0.15),
            "{case}: {:?}",
            v.errors
        );
    }
}

#[test]
fn broken_invariants_are_found() {
    let tmp = TempDir::new("verify");
    let out = tmp.join("ckpt");
    copy_dir(&golden("llama_nvfp4").join("modelopt"), &out);
    // k_proj's global scale differs from q/v's: engines fuse them (vLLM #54974).
    poke(
        &out,
        "model.layers.0.self_attn.k_proj.weight_scale_2",
        &1.0f32.to_le_bytes(),
    );
    // A NaN block scale and a zero input scale.
    poke(&out, "model.layers.1.mlp.down_proj.weight_scale", &[0x7F]);
    poke(
        &out,
        "model.layers.1.self_attn.o_proj.input_scale",
        &0.0f32.to_le_bytes(),
    );
    let v = shardquant::commands::verify::verify(&out, None).unwrap();
    let text = v.problems.join("\n");
    assert!(text.contains("different weight_scale_2"), "{text}");
    assert!(
        text.contains("model.layers.1.mlp.down_proj: 1 block scale(s) are NaN"),
        "{text}"
    );
    assert!(
        text.contains("model.layers.1.self_attn.o_proj: input_scale is 0"),
        "{text}"
    );
    // Through the CLI: exit 3 and the report on stdout.
    let (code, stdout, stderr) = common::run(&["verify", out.to_str().unwrap()]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stdout.contains("FAILED") && stderr.contains("problem(s)"),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn exclude_modules_must_agree_with_the_tensors() {
    let tmp = TempDir::new("verify-excl");
    let out = tmp.join("ckpt");
    copy_dir(&golden("llama_fp8").join("modelopt"), &out);
    let path = out.join("hf_quant_config.json");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "\"lm_head\",",
        "\"lm_head\",\n            \"model.layers.0.mlp*\",",
    );
    std::fs::write(&path, text).unwrap();
    // And an FP8 weight with a NaN code.
    poke(&out, "model.layers.1.mlp.up_proj.weight", &[0xFF]);
    let v = shardquant::commands::verify::verify(&out, None).unwrap();
    let text = v.problems.join("\n");
    assert!(
        text.contains("model.layers.0.mlp.gate_proj is quantized but exclude_modules lists it"),
        "{text}"
    );
    assert!(
        text.contains("model.layers.1.mlp.up_proj: 1 FP8 weight byte(s) are NaN codes"),
        "{text}"
    );
}

#[test]
fn our_own_output_passes() {
    let case = golden("qwen3moe_nvfp4");
    let tmp = TempDir::new("verify-ours");
    let mut o = shardquant::options::Options::new(shardquant::compute::QuantFormat::Nvfp4);
    o.stats = vec![case.join("amax.safetensors")];
    o.run.quiet = true;
    shardquant::commands::convert::convert(&case.join("input"), &tmp.join("out"), &o).unwrap();
    let v =
        shardquant::commands::verify::verify(&tmp.join("out"), Some(&case.join("input"))).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}

#[test]
fn a_source_of_another_shape_is_a_problem_not_a_crash() {
    use shardquant::input::checkpoint::Dtype;
    use shardquant::output::ShardWriter;
    use shardquant::plan::{OutputTensor, ShardPlan};
    let tmp = TempDir::new("verify-shape");
    let src = tmp.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let t = OutputTensor::new(
        "model.layers.0.self_attn.q_proj.weight",
        Dtype::BF16,
        vec![32, 64],
    );
    let plan = ShardPlan::new(vec![t], 1 << 20).unwrap();
    let w = ShardWriter::create(&src, &plan).unwrap();
    w.write(0, &vec![0x3Fu8; 32 * 64 * 2]).unwrap();
    w.finish().unwrap();
    std::fs::copy(
        golden("llama_nvfp4").join("input/config.json"),
        src.join("config.json"),
    )
    .unwrap();
    let v =
        shardquant::commands::verify::verify(&golden("llama_nvfp4").join("modelopt"), Some(&src))
            .unwrap();
    let text = v.problems.join("\n");
    assert!(
        text.contains(
            "model.layers.0.self_attn.q_proj: the quantized weight [64, 32] does not match its source"
        ),
        "{text}"
    );
    // Every linear the source lacks is a problem, never a silent skip.
    assert!(
        text.contains("model.layers.1.mlp.down_proj: the source checkpoint has no weight"),
        "{text}"
    );
    assert!(v.errors.is_empty());
}

/// The ModelOpt export of `case` with `modules` put back unquantized (their input weights, in a
/// single new shard): what a tool that excludes part of a fused group writes.
fn partly_unquantized(case: &str, modules: &[&str], tmp: &TempDir) -> std::path::PathBuf {
    let (export, input) = (golden(case).join("modelopt"), golden(case).join("input"));
    let out = tmp.join("partial");
    std::fs::create_dir_all(&out).unwrap();
    for f in std::fs::read_dir(&export).unwrap() {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if !name.ends_with(".safetensors") && !name.ends_with(".index.json") {
            std::fs::copy(&p, out.join(&name)).unwrap();
        }
    }
    let dropped = |n: &str| modules.iter().any(|m| n.starts_with(&format!("{m}.")));
    let mut tensors: Vec<(String, String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (dir, keep) in [(&export, false), (&input, true)] {
        for (name, (dtype, shape, bytes)) in common::load_tensors(dir) {
            let wanted = if keep {
                modules.iter().any(|m| name == format!("{m}.weight"))
            } else {
                !dropped(&name)
            };
            if wanted {
                tensors.push((name, dtype, shape, bytes));
            }
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            let dtype: safetensors::Dtype =
                serde_json::from_value(serde_json::Value::String(d.clone())).unwrap();
            (
                n.clone(),
                safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
    out
}

/// A fused group only partly quantized (what vLLM refuses) is a problem in any checkpoint.
#[test]
fn a_partly_quantized_fused_group_is_a_problem() {
    let tmp = TempDir::new("verify-partial");
    let dir = partly_unquantized("llama_nvfp4", &["model.layers.0.self_attn.q_proj"], &tmp);
    let v = shardquant::commands::verify::verify(&dir, None).unwrap();
    let text = v.problems.join("\n");
    assert!(
        text.contains("model.layers.0.self_attn.k_proj is quantized but model.layers.0.self_attn.q_proj is not"),
        "{text}"
    );
    let tmp = TempDir::new("verify-partial-experts");
    let dir = partly_unquantized(
        "qwen3moe_nvfp4",
        &[
            "model.layers.1.mlp.experts.3.gate_proj",
            "model.layers.1.mlp.experts.3.up_proj",
            "model.layers.1.mlp.experts.3.down_proj",
        ],
        &tmp,
    );
    let v = shardquant::commands::verify::verify(&dir, None).unwrap();
    let text = v.problems.join("\n");
    assert!(
        text.contains(
            "model.layers.1.mlp.experts: 21 expert projection(s) are quantized but 3 are not"
        ),
        "{text}"
    );
    // The untouched exports pass.
    for case in ["llama_nvfp4", "qwen3moe_nvfp4"] {
        let v = shardquant::commands::verify::verify(&golden(case).join("modelopt"), None).unwrap();
        assert!(v.problems.is_empty(), "{case}: {:?}", v.problems);
    }
}
