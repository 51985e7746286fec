//! `--calib mse`, `--calib mse-fp8-sweep` and `--importance stats` through the converter:
//! the exported bytes equal the library's searches applied by hand, the error goes down, the
//! output is deterministic, and the option combinations that make no sense are refused.

mod common;

use common::{fixtures, load_tensors, run, TempDir};
use shardquant::compute;
use shardquant::compute::mse;
use shardquant::compute::mse::{Importance, MseTarget};
use shardquant::compute::{fp8_scale, quantize_nvfp4_static, Numerics, QuantFormat, SourceDtype};
use shardquant::synthetic::SyntheticSpec;
use std::path::{Path, PathBuf};

fn synthetic(dir: &Path, experts: usize) {
    SyntheticSpec {
        layers: 2,
        hidden: 128,
        intermediate: 256,
        experts,
        moe_intermediate: 64,
        shard_size: 200_000,
        ..Default::default()
    }
    .write(dir)
    .unwrap();
    if experts == 0 {
        SyntheticSpec {
            layers: 2,
            hidden: 128,
            intermediate: 256,
            ..Default::default()
        }
        .write_amax(&dir.join("amax.safetensors"))
        .unwrap();
    }
}

fn convert(input: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "convert",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
        "--force",
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = run(&args);
    (code, err)
}

/// The weight of `module` in the input checkpoint as raw BF16 bytes.
fn weight(input: &Path, module: &str) -> (Vec<u8>, usize, usize) {
    let t = load_tensors(input);
    let (_, shape, bytes) = &t[&format!("{module}.weight")];
    (bytes.clone(), shape[0], shape[1])
}

/// A dense synthetic checkpoint converted with its amax file; (temp dir, input, output).
fn dense_conversion(tag: &str, format: &str, calib: &str) -> (TempDir, PathBuf, PathBuf) {
    let dir = TempDir::new(tag);
    let input = dir.join("in");
    synthetic(&input, 0);
    let out = dir.join("out");
    let stats = input.join("amax.safetensors");
    let args = [
        "--format",
        format,
        "--stats",
        stats.to_str().unwrap(),
        "--calib",
        calib,
    ];
    let (code, err) = convert(&input, &out, &args);
    assert_eq!(code, 0, "{err}");
    (dir, input, out)
}

/// The library's sweep and static NVFP4 export of one BF16 weight: (packed, scales, ws2).
fn swept(
    bytes: &[u8],
    rows: usize,
    cols: usize,
    global: f32,
    imp: Option<&[f32]>,
) -> (Vec<u8>, Vec<u8>, f32) {
    let dtype = SourceDtype::Bf16;
    let numerics = Numerics::ModeloptCuda;
    let blocks = mse::sweep_block_amax(bytes, dtype, cols, global, numerics, imp);
    let mut packed = vec![0u8; rows * cols / 2];
    let mut scales = vec![0u8; rows * cols / 16];
    let ws2 = quantize_nvfp4_static(
        bytes,
        dtype,
        rows,
        cols,
        &blocks,
        global,
        numerics,
        &mut packed,
        &mut scales,
    );
    (packed, scales, ws2)
}

#[test]
fn the_sweep_exports_the_searched_block_scales_with_the_group_global_amax() {
    let (_dir, input, out) = dense_conversion("mse-sweep", "nvfp4", "mse-fp8-sweep");
    let tensors = load_tensors(&out);
    // q/k/v share one global amax: the max over the three weights.
    let p = "model.layers.1.self_attn";
    let members: Vec<_> = ["q_proj", "k_proj", "v_proj"]
        .iter()
        .map(|m| weight(&input, &format!("{p}.{m}")))
        .collect();
    let global = members
        .iter()
        .map(|(b, _, _)| compute::amax(b, SourceDtype::Bf16).unwrap())
        .fold(0.0f32, f32::max);
    for (name, (bytes, rows, cols)) in ["q_proj", "k_proj", "v_proj"].iter().zip(&members) {
        let (packed, scales, ws2) = swept(bytes, *rows, *cols, global, None);
        let m = format!("{p}.{name}");
        assert_eq!(tensors[&format!("{m}.weight")].2, packed, "{m}");
        assert_eq!(tensors[&format!("{m}.weight_scale")].2, scales, "{m}");
        assert_eq!(
            tensors[&format!("{m}.weight_scale_2")].2,
            ws2.to_le_bytes(),
            "{m}"
        );
    }
    let summary = std::fs::read_to_string(out.join(".quant_summary.txt")).unwrap();
    assert!(summary.contains("calib mse-fp8-sweep"), "{summary}");
    assert!(summary.contains("(static per-block)"));
}

#[test]
fn fp8_mse_exports_each_weights_searched_scale() {
    let (dir, input, out) = dense_conversion("mse-fp8", "fp8", "mse");
    let stats = input.join("amax.safetensors");
    let tensors = load_tensors(&out);
    // FP8 does not unify gate/up (ModelOpt's export does not): each weight keeps its own.
    let p = "model.layers.0.mlp";
    for m in ["gate_proj", "up_proj", "down_proj"] {
        let (bytes, _, cols) = weight(&input, &format!("{p}.{m}"));
        let a0 = compute::amax(&bytes, SourceDtype::Bf16).unwrap();
        let searched = mse::mse_amax(
            &bytes,
            SourceDtype::Bf16,
            cols,
            MseTarget::Fp8(Numerics::ModeloptCuda),
            a0,
            None,
        );
        let scale = fp8_scale(searched, Numerics::ModeloptCuda);
        assert_eq!(
            tensors[&format!("{p}.{m}.weight_scale")].2,
            scale.to_le_bytes(),
            "{m}"
        );
    }
    // The search moved at least one amax away from max|W| somewhere in the model, or the test
    // proves nothing about the plumbing.
    let max_run = dir.join("max");
    assert_eq!(
        convert(
            &input,
            &max_run,
            &["--format", "fp8", "--stats", stats.to_str().unwrap()]
        )
        .0,
        0
    );
    assert_ne!(load_tensors(&max_run), tensors);
}

#[test]
fn mse_lowers_the_weight_error_and_outputs_verify() {
    let dir = TempDir::new("mse-error");
    let input = dir.join("in");
    synthetic(&input, 0);
    let stats = input.join("amax.safetensors");
    let mut mean_error = Vec::new();
    let mut per_tensor = Vec::new();
    for calib in ["max", "mse", "mse-fp8-sweep"] {
        let out = dir.join(calib);
        let (code, err) = convert(
            &input,
            &out,
            &[
                "--format",
                "nvfp4",
                "--stats",
                stats.to_str().unwrap(),
                "--calib",
                calib,
            ],
        );
        assert_eq!(code, 0, "{calib}: {err}");
        let v = shardquant::commands::verify::verify(&out, Some(&input)).unwrap();
        assert!(v.problems.is_empty(), "{calib}: {:?}", v.problems);
        mean_error.push(v.errors.iter().map(|e| e.1).sum::<f64>() / v.errors.len() as f64);
        per_tensor.push(v.errors);
    }
    // The sweep tries the max calibration's block scale among its candidates, per block:
    // it can only lower each tensor's error.
    for (sweep, max) in per_tensor[2].iter().zip(&per_tensor[0]) {
        assert_eq!(sweep.0, max.0);
        assert!(
            sweep.1 <= max.1 * (1.0 + 1e-9),
            "{}: {} > {}",
            sweep.0,
            sweep.1,
            max.1
        );
    }
    assert!(mean_error[2] < mean_error[0], "{mean_error:?}");
    assert!(mean_error[1] <= mean_error[0] * 1.001, "{mean_error:?}");
}

#[test]
fn mse_output_does_not_depend_on_threads_or_shards() {
    let dir = TempDir::new("mse-determinism");
    let input = dir.join("in");
    synthetic(&input, 4);
    let mut outputs = Vec::new();
    for (threads, shard) in [("1", "5GB"), ("3", "100KB")] {
        let out = dir.join(&format!("out-{threads}"));
        let (code, err) = convert(
            &input,
            &out,
            &[
                "--format",
                "w4a16_nvfp4",
                "--calib",
                "mse-fp8-sweep",
                "--threads",
                threads,
                "--max-shard-size",
                shard,
            ],
        );
        assert_eq!(code, 0, "{err}");
        outputs.push(load_tensors(&out));
    }
    assert_eq!(outputs[0], outputs[1]);
    // The calibration options are part of what makes an output up to date.
    let out = dir.join("out-1");
    let check = |calib: &str| {
        convert(
            &input,
            &out,
            &[
                "--format",
                "w4a16_nvfp4",
                "--calib",
                calib,
                "--max-shard-size",
                "5GB",
                "--check",
            ],
        )
        .0
    };
    assert_eq!(check("mse-fp8-sweep"), 0);
    assert_eq!(check("max"), 10);
    assert_eq!(check("mse"), 10);
}

fn stats_fixture(name: &str) -> std::path::PathBuf {
    fixtures().join("golden").join("stats").join(name)
}

#[test]
fn importance_weights_the_search_with_the_imatrix_and_the_report_says_where() {
    let dir = TempDir::new("mse-importance");
    let input = fixtures().join("golden/qwen3moe_nvfp4/input");
    let imatrix = stats_fixture("qwen3moe.imatrix.gguf");
    let report = dir.join("report.json");
    let weighted = dir.join("weighted");
    let (code, err) = convert(
        &input,
        &weighted,
        &[
            "--format",
            "w4a16_nvfp4",
            "--stats",
            imatrix.to_str().unwrap(),
            "--calib",
            "mse-fp8-sweep",
            "--importance",
            "stats",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    // Experts 2 and 5 of layer 1 saw no tokens: unweighted, with a warning.
    assert!(
        report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().starts_with("--importance stats:")),
        "{}",
        report["warnings"]
    );
    let cal = &report["calibration"];
    assert_eq!(cal["method"], "mse-fp8-sweep");
    let unweighted: Vec<&str> = cal["importance"]["unweighted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(unweighted.contains(&"model.layers.1.mlp.experts.2.down_proj"));
    assert!(!unweighted.iter().any(|m| m.contains("layers.0.")));
    let weighted_names = cal["importance"]["weighted"].as_array().unwrap();
    assert!(!weighted_names.is_empty());

    // The bytes are the library's weighted sweep of that tensor.
    let mut options = shardquant::options::Options::new(QuantFormat::W4a16Nvfp4);
    options.stats = vec![imatrix.clone()];
    let (_, _, plan) = shardquant::commands::convert::prepare(&input, &options).unwrap();
    let module = "model.layers.0.mlp.experts.1.down_proj";
    let (bytes, rows, cols) = weight(&input, module);
    let mean_sq = plan.stats.module(module).unwrap().mean_sq().unwrap();
    let imp = Importance::from_mean_sq(&mean_sq, cols).unwrap();
    let global = compute::amax(&bytes, SourceDtype::Bf16).unwrap();
    let (packed, scales, _) = swept(&bytes, rows, cols, global, Some(&imp.weights));
    let out = load_tensors(&weighted);
    assert_eq!(out[&format!("{module}.weight_scale")].2, scales);
    assert_eq!(out[&format!("{module}.weight")].2, packed);

    // And the weighting changed something against the unweighted sweep.
    let plain = dir.join("plain");
    let (code, err) = convert(
        &input,
        &plain,
        &["--format", "w4a16_nvfp4", "--calib", "mse-fp8-sweep"],
    );
    assert_eq!(code, 0, "{err}");
    assert_ne!(load_tensors(&plain), out);
}

#[test]
fn meaningless_combinations_are_refused_before_any_work() {
    let dir = TempDir::new("mse-usage");
    let input = fixtures().join("golden/llama_nvfp4/input");
    let amax = fixtures().join("golden/llama_nvfp4/amax.safetensors");
    let amax = amax.to_str().unwrap();
    let out = dir.join("out");
    for (args, code, needle) in [
        (
            vec![
                "--format",
                "fp8",
                "--stats",
                amax,
                "--calib",
                "mse-fp8-sweep",
            ],
            2,
            "--calib mse-fp8-sweep searches NVFP4 block scales",
        ),
        (
            vec![
                "--format",
                "nvfp4",
                "--stats",
                amax,
                "--importance",
                "stats",
            ],
            2,
            "add --calib mse",
        ),
        (
            vec![
                "--format",
                "w4a16_nvfp4",
                "--calib",
                "mse",
                "--importance",
                "stats",
            ],
            2,
            "--importance stats needs --stats",
        ),
        (
            vec![
                "--format",
                "nvfp4",
                "--stats",
                amax,
                "--weight-amax",
                "stats",
                "--calib",
                "mse",
            ],
            2,
            "cannot be combined with --weight-amax stats",
        ),
        (
            // A ModelOpt amax file has no per-channel sums.
            vec![
                "--format",
                "nvfp4",
                "--stats",
                amax,
                "--calib",
                "mse",
                "--importance",
                "stats",
            ],
            3,
            "hold no per-channel activation sums",
        ),
    ] {
        let (got, err) = convert(&input, &out, &args);
        assert_eq!(got, code, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} left an output");
    }
}

#[test]
fn non_finite_weights_are_an_error_naming_the_tensor_under_mse() {
    let dir = TempDir::new("mse-nan");
    let input = dir.join("in");
    synthetic(&input, 0);
    // Poison one element of one weight with a bf16 NaN.
    let ckpt = shardquant::input::checkpoint::Checkpoint::open(&input).unwrap();
    let t = ckpt
        .get("model.layers.1.mlp.up_proj.weight")
        .unwrap()
        .clone();
    let path = ckpt.shards()[t.shard].path.clone();
    drop(ckpt);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[t.start + 2 * 37] = 0xC0;
    bytes[t.start + 2 * 37 + 1] = 0x7F;
    std::fs::write(&path, bytes).unwrap();
    for calib in ["mse", "mse-fp8-sweep"] {
        let out = dir.join(calib);
        let (code, err) = convert(&input, &out, &["--format", "w4a16_nvfp4", "--calib", calib]);
        assert_eq!(code, 3, "{calib}: {err}");
        assert!(
            err.contains("model.layers.1.mlp.up_proj") && err.contains("NaN"),
            "{calib}: {err}"
        );
        assert!(!out.exists());
    }
}

/// The searched tensors of ModelOpt's Qwen3-MoE MSE case, as ModelOpt's weight quantizers see
/// them: (amax key, BF16 bytes, cols). A fused expert's gate and up are one tensor `[gate; up]`.
fn golden_mse_quantizers() -> Vec<(String, Vec<u8>, usize)> {
    let dir = fixtures().join("golden").join("qwen3moe_mse_fp8");
    let input = load_tensors(&dir.join("input"));
    let w = |name: &str| {
        let (_, shape, bytes) = &input[name];
        (bytes.clone(), shape[1])
    };
    let mut out = Vec::new();
    for key in load_tensors(&dir).keys() {
        let Some(q) = key.strip_suffix("._amax") else {
            continue;
        };
        let (bytes, cols) = if let Some(m) = q.strip_suffix(".weight_quantizer") {
            w(&format!("{m}.weight"))
        } else if let Some((experts, e)) = q.split_once(".gate_up_proj_weight_quantizers.") {
            let (mut gate, cols) = w(&format!("{experts}.{e}.gate_proj.weight"));
            gate.extend_from_slice(&w(&format!("{experts}.{e}.up_proj.weight")).0);
            (gate, cols)
        } else if let Some((experts, e)) = q.split_once(".down_proj_weight_quantizers.") {
            w(&format!("{experts}.{e}.down_proj.weight"))
        } else {
            continue;
        };
        out.push((key.clone(), bytes, cols));
    }
    out
}

/// Every weight amax of ModelOpt's FP8 MSE calibration (CPU) is the library's search over what
/// the quantizer saw, rounded to BF16; and the search is not max|W| for most of them.
#[test]
fn fp8_search_reproduces_every_modelopt_weight_amax() {
    let dir = fixtures().join("golden").join("qwen3moe_mse_fp8");
    let amax = load_tensors(&dir);
    let quantizers = golden_mse_quantizers();
    assert_eq!(quantizers.len(), 2 * (4 + 8 + 8));
    let mut moved = 0;
    for (key, bytes, cols) in &quantizers {
        let dtype = SourceDtype::Bf16;
        let a0 = compute::amax(bytes, dtype).unwrap();
        let target = MseTarget::Fp8(Numerics::ModeloptCpu);
        let ours = mse::mse_amax(bytes, dtype, *cols, target, a0, None);
        let theirs = f32::from_le_bytes(amax[key].2[..4].try_into().unwrap());
        assert_eq!(
            ours.to_bits(),
            theirs.to_bits(),
            "{key}: {ours} vs {theirs}"
        );
        moved += usize::from(ours != a0);
    }
    assert!(moved > quantizers.len() / 2, "{moved}");
}

/// How often two candidates are so close that the summation order could pick the other one
/// (relative gap under 1e-6), and how often they tie exactly (the first wins, as in
/// `torch.argmin`): on the golden case and on a synthetic MoE model, for every target. Printed
/// for the README (`cargo test --release --test mse near_ties -- --nocapture`).
#[test]
fn near_ties_are_rare() {
    let count = |tensors: &[(String, Vec<u8>, usize)], target: MseTarget| {
        let (mut near, mut exact) = (0, 0);
        for (_, bytes, cols) in tensors {
            let dtype = SourceDtype::Bf16;
            let a0 = compute::amax(bytes, dtype).unwrap();
            if a0 == 0.0 || (matches!(target, MseTarget::Nvfp4(_)) && cols % 16 != 0) {
                continue;
            }
            let c = mse::Candidates::new(target, a0);
            let partials = mse::chunk_losses(bytes, dtype, *cols, &c, None);
            let gap = mse::near_tie_gap(&mse::joint_losses(&[&partials], mse::MSE_STEPS));
            near += usize::from(gap < 1e-6);
            exact += usize::from(gap == 0.0);
        }
        (near, exact, tensors.len())
    };
    let golden = golden_mse_quantizers();
    let dir = TempDir::new("mse-ties");
    let input = dir.join("in");
    SyntheticSpec {
        layers: 2,
        hidden: 256,
        intermediate: 512,
        experts: 16,
        moe_intermediate: 128,
        shard_size: 4_000_000,
        ..Default::default()
    }
    .write(&input)
    .unwrap();
    let synthetic: Vec<(String, Vec<u8>, usize)> = load_tensors(&input)
        .into_iter()
        .filter(|(k, (_, shape, _))| k.ends_with("proj.weight") && shape.len() == 2)
        .map(|(k, (_, shape, bytes))| (k, bytes, shape[1]))
        .collect();
    assert!(synthetic.len() > 100);
    for numerics in Numerics::ALL {
        for target in [MseTarget::Fp8(numerics), MseTarget::Nvfp4(numerics)] {
            let g = count(&golden, target);
            let s = count(&synthetic, target);
            eprintln!(
                "{target:?}: golden {}/{} near ties ({} exact), synthetic {}/{} ({} exact)",
                g.0, g.2, g.1, s.0, s.2, s.1
            );
            // No near tie where the bytes are checked against ModelOpt.
            if target == MseTarget::Fp8(Numerics::ModeloptCpu) {
                assert_eq!(g.0, 0);
            }
        }
    }
}
