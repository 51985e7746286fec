//! FP8 block-scaled sources (DeepSeek-V3 style): dequantized on the fly and converted in one
//! pass; checked against a BF16 checkpoint of the same dequantized weights, and end to end with
//! ModelOpt's DeepSeek amax dumps (fixtures/golden/stats).

mod common;

use common::{fixtures, load_tensors, TempDir};
use shardquant::compute;
use shardquant::compute::{DequantPrecision, QuantFormat};
use shardquant::input::checkpoint::Dtype;
use shardquant::options::Options;
use shardquant::output::ShardWriter;
use shardquant::plan::{OutputTensor, ShardPlan};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const HIDDEN: usize = 144; // one full 128-block and a partial one

/// (module, rows, cols) of every linear of the tiny DeepSeek-V3-shaped model: layer 0 dense,
/// layer 1 MoE with 4 routed experts and a shared expert; MLA attention in both.
fn linears() -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for l in 0..2 {
        let a = format!("model.layers.{l}.self_attn");
        out.push((format!("{a}.q_a_proj"), 96, HIDDEN));
        out.push((format!("{a}.q_b_proj"), 200, 96));
        out.push((format!("{a}.kv_a_proj_with_mqa"), 80, HIDDEN));
        out.push((format!("{a}.kv_b_proj"), 256, 64));
        out.push((format!("{a}.o_proj"), HIDDEN, 128));
    }
    for m in ["gate_proj", "up_proj"] {
        out.push((format!("model.layers.0.mlp.{m}"), 208, HIDDEN));
        out.push((format!("model.layers.1.mlp.shared_experts.{m}"), 48, HIDDEN));
        for e in 0..4 {
            out.push((format!("model.layers.1.mlp.experts.{e}.{m}"), 48, HIDDEN));
        }
    }
    out.push(("model.layers.0.mlp.down_proj".into(), HIDDEN, 208));
    out.push((
        "model.layers.1.mlp.shared_experts.down_proj".into(),
        HIDDEN,
        48,
    ));
    for e in 0..4 {
        out.push((
            format!("model.layers.1.mlp.experts.{e}.down_proj"),
            HIDDEN,
            48,
        ));
    }
    out
}

fn dumps() -> Vec<PathBuf> {
    [
        "deepseek.amax_dict_rank0-mp2.pt",
        "deepseek.amax_dict_rank1-mp2.pt",
    ]
    .iter()
    .map(|f| fixtures().join("golden/stats").join(f))
    .collect()
}

/// Weight amax the DeepSeek dumps recorded, by HF module name.
fn recorded_weight_amax() -> HashMap<String, f32> {
    let mut out = HashMap::new();
    for path in dumps() {
        let (tensors, _) = shardquant::input::stats::torchfile::read_pt_tensors(&path).unwrap();
        for t in tensors {
            if let Some(m) = t.key.strip_suffix(".weight_quantizer._amax") {
                out.insert(
                    shardquant::input::stats::torchfile::deepseek_to_hf(m),
                    t.values[0],
                );
            }
        }
    }
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// An FP8 weight and its f32 block scales whose dequantized max is exactly `amax` (a bf16
/// value): element [0, 0] is 448 in the block scaled by f32(amax / 448), everything else is
/// smaller.
fn fp8_weight(rows: usize, cols: usize, amax: f32, rng: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    let (sr, sc) = compute::scale_inv_shape(rows, cols);
    let s0 = amax / 448.0;
    let scales: Vec<f32> = (0..sr * sc)
        .map(|b| if b == 0 { s0 } else { s0 / (b + 1) as f32 })
        .collect();
    let mut w: Vec<u8> = (0..rows * cols)
        .map(|_| {
            let code = (rng.next() % 0x7E) as u8; // 0x00..=0x7D: below 448, never NaN
            code | if rng.next().is_multiple_of(2) {
                0x80
            } else {
                0
            }
        })
        .collect();
    w[0] = 0x7E;
    (w, scales)
}

fn bf16_tensor(name: &str, shape: Vec<usize>, rng: &mut Rng) -> (OutputTensor, Vec<u8>) {
    let n: usize = shape.iter().product();
    let bytes = (0..n)
        .flat_map(|_| {
            half::bf16::from_f32(((rng.next() >> 40) as f32 / (1u64 << 24) as f32) - 0.5)
                .to_le_bytes()
        })
        .collect();
    (OutputTensor::new(name, Dtype::BF16, shape), bytes)
}

fn write_checkpoint(
    dir: &Path,
    tensors: Vec<(OutputTensor, Vec<u8>)>,
    quantization_config: Option<serde_json::Value>,
) {
    std::fs::create_dir_all(dir).unwrap();
    let (outs, data): (Vec<_>, Vec<_>) = tensors.into_iter().unzip();
    let plan = ShardPlan::new(outs, 60_000).unwrap();
    let w = ShardWriter::create(dir, &plan).unwrap();
    for (i, d) in data.iter().enumerate() {
        w.write(i, d).unwrap();
    }
    w.finish().unwrap();
    let mut config = serde_json::json!({
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": HIDDEN,
        "num_hidden_layers": 2, "first_k_dense_replace": 1, "n_routed_experts": 4, "dtype": "bfloat16"
    });
    if let Some(q) = quantization_config {
        config["quantization_config"] = q;
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
}

type Tensors = Vec<(OutputTensor, Vec<u8>)>;

/// Adds `module.weight` in FP8 (with its `weight_scale_inv`) to `fp8`, and the same weight
/// dequantized to BF16 to `bf16`.
fn push_fp8(
    module: &str,
    rows: usize,
    cols: usize,
    amax: f32,
    rng: &mut Rng,
    fp8: &mut Tensors,
    bf16: &mut Tensors,
) {
    let (w, scales) = fp8_weight(rows, cols, amax, rng);
    let scale_bytes: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut dequant = vec![0u8; rows * cols * 2];
    compute::dequantize_fp8_block(
        &w,
        &scale_bytes,
        rows,
        cols,
        DequantPrecision::Bf16,
        &mut dequant,
    );
    let (sr, sc) = compute::scale_inv_shape(rows, cols);
    fp8.push((
        OutputTensor::new(format!("{module}.weight"), Dtype::F8_E4M3, vec![rows, cols]),
        w,
    ));
    fp8.push((
        OutputTensor::new(
            format!("{module}.weight_scale_inv"),
            Dtype::F32,
            vec![sr, sc],
        ),
        scale_bytes,
    ));
    bf16.push((
        OutputTensor::new(format!("{module}.weight"), Dtype::BF16, vec![rows, cols]),
        dequant,
    ));
}

/// Writes the FP8 checkpoint and a BF16 checkpoint holding the same weights dequantized.
fn make_checkpoints(tmp: &TempDir) -> (PathBuf, PathBuf) {
    make_checkpoints_with_nan(tmp, None)
}

/// [`make_checkpoints`], with element [0, 5] of `nan_in`'s FP8 weight set to the NaN code 0x7F
/// (so its BF16 twin holds a NaN there too).
fn make_checkpoints_with_nan(tmp: &TempDir, nan_in: Option<&str>) -> (PathBuf, PathBuf) {
    let recorded = recorded_weight_amax();
    let mut rng = Rng(2024);
    let mut fp8_tensors = Vec::new();
    let mut bf16_tensors = Vec::new();
    let mut common_tensors = vec![bf16_tensor(
        "model.embed_tokens.weight",
        vec![256, HIDDEN],
        &mut rng,
    )];
    for l in 0..2 {
        for (n, s) in [
            ("input_layernorm", HIDDEN),
            ("post_attention_layernorm", HIDDEN),
            ("self_attn.q_a_layernorm", 96),
            ("self_attn.kv_a_layernorm", 64),
        ] {
            common_tensors.push(bf16_tensor(
                &format!("model.layers.{l}.{n}.weight"),
                vec![s],
                &mut rng,
            ));
        }
    }
    common_tensors.push(bf16_tensor(
        "model.layers.1.mlp.gate.weight",
        vec![4, HIDDEN],
        &mut rng,
    ));
    let bias: Vec<u8> = [0.1f32, -0.2, 0.3, 0.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    common_tensors.push((
        OutputTensor::new(
            "model.layers.1.mlp.gate.e_score_correction_bias",
            Dtype::F32,
            vec![4],
        ),
        bias,
    ));
    common_tensors.push(bf16_tensor("model.norm.weight", vec![HIDDEN], &mut rng));
    common_tensors.push(bf16_tensor("lm_head.weight", vec![256, HIDDEN], &mut rng));
    for (module, rows, cols) in linears() {
        let amax = recorded.get(&module).copied().unwrap_or(0.5);
        push_fp8(
            &module,
            rows,
            cols,
            amax,
            &mut rng,
            &mut fp8_tensors,
            &mut bf16_tensors,
        );
        if nan_in == Some(module.as_str()) {
            let (fp8, bf16) = (fp8_tensors.len() - 2, bf16_tensors.len() - 1);
            fp8_tensors[fp8].1[5] = 0x7F;
            bf16_tensors[bf16].1[10..12].copy_from_slice(&0x7FC0u16.to_le_bytes());
        }
    }
    // An MTP layer past num_hidden_layers (DeepSeek's layer 61): stays unquantized, and its FP8
    // weight is dequantized like any other.
    push_fp8(
        "model.layers.2.eh_proj",
        HIDDEN,
        2 * HIDDEN,
        0.75,
        &mut rng,
        &mut fp8_tensors,
        &mut bf16_tensors,
    );
    let fp8_dir = tmp.join("fp8");
    let bf16_dir = tmp.join("bf16");
    let q = serde_json::json!({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]});
    write_checkpoint(
        &fp8_dir,
        common_tensors.iter().cloned().chain(fp8_tensors).collect(),
        Some(q),
    );
    write_checkpoint(
        &bf16_dir,
        common_tensors.into_iter().chain(bf16_tensors).collect(),
        None,
    );
    (fp8_dir, bf16_dir)
}

fn options() -> Options {
    let mut o = Options::new(QuantFormat::Nvfp4);
    o.stats = dumps();
    o.run.quiet = true;
    o
}

#[test]
fn fp8_source_converts_like_its_bf16_dequantization() {
    let tmp = TempDir::new("fp8src");
    let (fp8_dir, bf16_dir) = make_checkpoints(&tmp);
    let (a, b) = (tmp.join("from-fp8"), tmp.join("from-bf16"));
    shardquant::commands::convert::convert(&fp8_dir, &a, &options()).unwrap();
    shardquant::commands::convert::convert(&bf16_dir, &b, &options()).unwrap();
    common::assert_same_tensors(&a, &b);
    let t = load_tensors(&a);
    assert!(
        !t.keys().any(|k| k.ends_with("_scale_inv")),
        "scale_inv tensors vanish"
    );
    assert_eq!(t["model.layers.1.mlp.experts.3.gate_proj.weight"].0, "U8");
    assert_eq!(
        t["model.layers.1.mlp.gate.e_score_correction_bias"].0,
        "F32"
    );
    // Expert 3 saw no tokens: its input scale is the layer's peer max.
    assert_eq!(
        t["model.layers.1.mlp.experts.3.gate_proj.input_scale"].2,
        t["model.layers.1.mlp.experts.0.gate_proj.input_scale"].2
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["quantization_config"]["quant_method"], "modelopt",
        "the FP8 config is replaced"
    );
    assert_eq!(config["quantization_config"]["quant_algo"], "NVFP4");
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("hf_quant_config.json")).unwrap())
            .unwrap();
    let excluded: Vec<&str> = hf["quantization"]["exclude_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        excluded.contains(&"model.layers.1.mlp.gate"),
        "{excluded:?}"
    );
    assert_eq!(
        excluded.last(),
        Some(&"model.layers.2*"),
        "MTP layer listed last: {excluded:?}"
    );
    assert_eq!(
        t["model.layers.2.eh_proj.weight"].0, "BF16",
        "MTP FP8 weight dequantized"
    );
}

/// `--allow-nonfinite` on an FP8 source: the member holding a NaN is dequantized and patched,
/// its unit's other members load as they were (FP8 codes), and the output is the BF16 twin's,
/// NaN included.
#[test]
fn a_nan_in_one_fp8_member_is_patched_like_its_bf16_twin() {
    let tmp = TempDir::new("fp8nan");
    let module = "model.layers.1.mlp.experts.1.gate_proj";
    let (fp8_dir, bf16_dir) = make_checkpoints_with_nan(&tmp, Some(module));
    let err = shardquant::commands::convert::convert(&fp8_dir, &tmp.join("refused"), &options())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(module) && err.contains("--allow-nonfinite"),
        "{err}"
    );
    let mut o = options();
    o.output.allow_nonfinite = true;
    for format in [QuantFormat::Nvfp4, QuantFormat::Fp8] {
        o.output.format = format;
        let (a, b) = (tmp.join("from-fp8"), tmp.join("from-bf16"));
        let report = shardquant::commands::convert::convert(&fp8_dir, &a, &o).unwrap();
        shardquant::commands::convert::convert(&bf16_dir, &b, &o).unwrap();
        common::assert_same_tensors(&a, &b);
        let json = report.to_json();
        assert!(json.contains(module), "the report names {module}: {json}");
        // The NaN gets the documented code: element 5 of the gate is the high nibble of byte
        // 2 (NVFP4) or byte 5 (FP8).
        let t = load_tensors(&a);
        let w = &t[&format!("{module}.weight")].2;
        match format {
            QuantFormat::Nvfp4 => assert_eq!(w[2] >> 4, compute::nonfinite::E2M1_NAN),
            _ => assert_eq!(w[5], compute::nonfinite::E4M3_NAN),
        }
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }
}

#[test]
fn fp8_source_exports_compressed_tensors_like_its_bf16_dequantization() {
    // The compressed-tensors export of an FP8 block-scaled checkpoint is the export of its BF16
    // dequantization (what a user of llm-compressor makes first), for the weight-only, dynamic
    // and static schemes; the FP8 config and the block scales are gone.
    let tmp = TempDir::new("fp8src-ct");
    let (fp8_dir, bf16_dir) = make_checkpoints(&tmp);
    for (format, stats) in [
        (QuantFormat::W4a16Nvfp4, false),
        (QuantFormat::Fp8Dynamic, false),
        (QuantFormat::Nvfp4, true),
        (QuantFormat::Fp8, true),
    ] {
        let mut o = Options::new(format);
        o.output.export = compute::Export::CompressedTensors;
        if stats {
            o.stats = dumps();
        }
        o.run.quiet = true;
        let name = format.cli_name();
        let (a, b) = (
            tmp.join(&format!("fp8-{name}")),
            tmp.join(&format!("bf16-{name}")),
        );
        shardquant::commands::convert::convert(&fp8_dir, &a, &o).unwrap();
        shardquant::commands::convert::convert(&bf16_dir, &b, &o).unwrap();
        common::assert_same_tensors(&a, &b);
        let t = load_tensors(&a);
        assert!(
            !t.keys().any(|k| k.ends_with("_scale_inv")),
            "{name}: scale_inv tensors vanish"
        );
        let quantized = if format.is_nvfp4() {
            "model.layers.1.mlp.experts.3.gate_proj.weight_packed"
        } else {
            "model.layers.1.mlp.experts.3.gate_proj.weight"
        };
        let expected = if format.is_nvfp4() { "U8" } else { "F8_E4M3" };
        assert_eq!(t[quantized].0, expected, "{name}");
        assert_eq!(
            t["model.layers.2.eh_proj.weight"].0, "BF16",
            "{name}: MTP dequantized"
        );
        let config = |d: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap()
        };
        let q = &config(&a)["quantization_config"];
        assert_eq!(q["quant_method"], "compressed-tensors", "{name}: {q}");
        assert!(
            q.get("weight_block_size").is_none(),
            "{name}: the FP8 config is replaced: {q}"
        );
        assert_eq!(*q, config(&b)["quantization_config"], "{name}");
        // verify reads it, and compares every quantized linear with the FP8 source as with
        // its BF16 dequantization.
        let from_fp8 = shardquant::commands::verify::verify(&a, Some(&fp8_dir)).unwrap();
        assert!(
            from_fp8.problems.is_empty(),
            "{name}: {:?}",
            from_fp8.problems
        );
        assert!(from_fp8.linears > 0, "{name}");
        assert_eq!(
            from_fp8.errors.len(),
            from_fp8.linears,
            "{name}: every linear compared"
        );
        let from_bf16 = shardquant::commands::verify::verify(&a, Some(&bf16_dir)).unwrap();
        assert_eq!(from_fp8.errors, from_bf16.errors, "{name}");
    }
    // Dequantized to F32, the scale dtype would follow F32: refused before anything is written.
    let mut o = Options::new(QuantFormat::W4a16Nvfp4);
    o.output.export = compute::Export::CompressedTensors;
    o.output.fp8_dequant = DequantPrecision::F32;
    o.run.quiet = true;
    let out = tmp.join("f32");
    let e = shardquant::commands::convert::convert(&fp8_dir, &out, &o).unwrap_err();
    assert!(e.to_string().contains("--fp8-dequant f32"), "{e}");
    assert!(!out.exists());
}

#[test]
fn unquantized_fp8_tensors_are_dequantized_or_kept() {
    let tmp = TempDir::new("fp8keep");
    let (fp8_dir, bf16_dir) = make_checkpoints(&tmp);
    let source = load_tensors(&fp8_dir);
    let dequantized = load_tensors(&bf16_dir);
    let mut o = options();
    o.output.excludes = vec!["*self_attn*".to_string()];
    shardquant::commands::convert::convert(&fp8_dir, &tmp.join("dq"), &o).unwrap();
    let t = load_tensors(&tmp.join("dq"));
    let name = "model.layers.0.self_attn.q_b_proj.weight";
    assert_eq!(t[name], dequantized[name], "written dequantized in BF16");
    assert!(!t.contains_key("model.layers.0.self_attn.q_b_proj.weight_scale_inv"));
    o.output.keep_fp8_source = true;
    shardquant::commands::convert::convert(&fp8_dir, &tmp.join("keep"), &o).unwrap();
    let t = load_tensors(&tmp.join("keep"));
    assert_eq!(t[name], source[name], "kept in FP8");
    let scale = "model.layers.0.self_attn.q_b_proj.weight_scale_inv";
    assert_eq!(t[scale], source[scale]);
    assert_eq!(t["model.layers.0.mlp.gate_proj.weight"].0, "U8");
}

#[test]
fn an_fp8_weight_without_block_scales_is_refused() {
    let tmp = TempDir::new("fp8noscale");
    let (fp8_dir, _) = make_checkpoints(&tmp);
    // Rewrite the checkpoint without one weight_scale_inv.
    let ckpt = shardquant::input::checkpoint::Checkpoint::open(&fp8_dir).unwrap();
    let broken = tmp.join("broken");
    let tensors: Vec<(OutputTensor, Vec<u8>)> = ckpt
        .tensors()
        .iter()
        .filter(|t| t.name != "model.layers.0.mlp.down_proj.weight_scale_inv")
        .map(|t| {
            (
                OutputTensor::new(t.name.clone(), t.dtype, t.shape.clone()),
                ckpt.bytes(t).to_vec(),
            )
        })
        .collect();
    write_checkpoint(
        &broken,
        tensors,
        Some(serde_json::json!({"quant_method": "fp8", "weight_block_size": [128, 128]})),
    );
    let err =
        shardquant::commands::convert::convert(&broken, &tmp.join("out"), &options()).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.0.mlp.down_proj.weight_scale_inv"),
        "{err}"
    );
    assert!(!tmp.join("out").exists());
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "no CUDA driver on this machine (run with --include-ignored on a GPU machine)"
)]
fn fp8_source_gives_the_same_bytes_on_the_gpu() {
    if let Err(reason) = shardquant::compute::cuda::Gpu::open(0) {
        assert!(
            std::env::var("SHARDQUANT_REQUIRE_GPU").as_deref() != Ok("1"),
            "no GPU: {reason}"
        );
        return;
    }
    let tmp = TempDir::new("fp8gpu");
    let (fp8_dir, _) = make_checkpoints(&tmp);
    // A NaN in one member: the GPU reloads that unit with the member patched on the host and
    // its other members as FP8 codes.
    let nan_tmp = TempDir::new("fp8gpunan");
    let (nan_dir, _) =
        make_checkpoints_with_nan(&nan_tmp, Some("model.layers.1.mlp.experts.1.up_proj"));
    let cases = [(&fp8_dir, false), (&nan_dir, true)];
    for ((source, allow_nonfinite), format) in cases
        .into_iter()
        .flat_map(|c| [(c, QuantFormat::Nvfp4), (c, QuantFormat::Fp8)])
    {
        let (a, b) = (tmp.join("cpu"), tmp.join("gpu"));
        let mut o = options();
        o.output.format = format;
        o.output.allow_nonfinite = allow_nonfinite;
        o.run.device = shardquant::compute::cuda::DeviceChoice::Cpu;
        shardquant::commands::convert::convert(source, &a, &o).unwrap();
        o.run.device = shardquant::compute::cuda::DeviceChoice::Cuda(0);
        shardquant::commands::convert::convert(source, &b, &o).unwrap();
        common::assert_same_tensors(&b, &a);
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }
}

#[test]
fn f32_dequantization_still_accepts_amax_recorded_on_bf16_weights() {
    // The DeepSeek dumps recorded max|W| of BF16-dequantized weights; with --fp8-dequant f32 the
    // computed max is compared after rounding to BF16, so the same statistics are accepted.
    let tmp = TempDir::new("fp8f32");
    let (fp8_dir, _) = make_checkpoints(&tmp);
    let mut o = options();
    o.output.fp8_dequant = DequantPrecision::F32;
    shardquant::commands::convert::convert(&fp8_dir, &tmp.join("out"), &o).unwrap();
    let t = load_tensors(&tmp.join("out"));
    assert_eq!(
        t["model.layers.2.eh_proj.weight"].0, "F32",
        "unquantized FP8 written in the chosen precision"
    );
}

/// `verify --source` on an FP8-block source dequantizes it as `convert` does and compares every
/// quantized linear: none is skipped, and the errors are those against the BF16 twin.
#[test]
fn verify_compares_every_linear_with_an_fp8_source() {
    let tmp = TempDir::new("fp8src-verify");
    let (fp8_dir, bf16_dir) = make_checkpoints(&tmp);
    let out = tmp.join("out");
    shardquant::commands::convert::convert(&fp8_dir, &out, &options()).unwrap();
    let from_fp8 = shardquant::commands::verify::verify(&out, Some(&fp8_dir)).unwrap();
    assert!(from_fp8.problems.is_empty(), "{:?}", from_fp8.problems);
    let quantized = load_tensors(&out)
        .keys()
        .filter(|k| k.ends_with(".weight_scale_2"))
        .count();
    assert!(quantized > 0);
    assert_eq!(from_fp8.linears, quantized);
    assert_eq!(from_fp8.errors.len(), quantized, "every linear compared");
    let from_bf16 = shardquant::commands::verify::verify(&out, Some(&bf16_dir)).unwrap();
    assert_eq!(from_fp8.errors, from_bf16.errors);
}
