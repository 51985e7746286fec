//! Golden checks: quantize the fixtures' bf16 inputs with the fixtures' amax and compare with
//! ModelOpt's own export byte for byte (fixtures/golden/, see its README.md).
//!
//! Every quantized linear of every case is checked: `weight`, `weight_scale`,
//! `weight_scale_2` (NVFP4) and `input_scale`. The amax comes from `amax_after_export.safetensors`
//! where the case has one (NVFP4 unifies q/k/v and gate/up at export), else `amax.safetensors`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::compute::{
    amax, fp8_scale, nvfp4_global_scale, quantize_fp8, quantize_nvfp4, Numerics, QuantFormat,
    SourceDtype,
};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/golden");

/// One tensor of a safetensors file: dtype name, shape, raw bytes.
struct RawTensor {
    dtype: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Every tensor of a safetensors file (8-byte LE header length, JSON header, data).
fn read_safetensors(path: &Path) -> BTreeMap<String, RawTensor> {
    let file = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let header_len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&file[8..8 + header_len]).expect("safetensors header is JSON");
    let data = &file[8 + header_len..];
    let mut tensors = BTreeMap::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let offsets: Vec<usize> = serde_json::from_value(info["data_offsets"].clone()).unwrap();
        tensors.insert(
            name,
            RawTensor {
                dtype: info["dtype"].as_str().unwrap().to_string(),
                shape: serde_json::from_value(info["shape"].clone()).unwrap(),
                bytes: data[offsets[0]..offsets[1]].to_vec(),
            },
        );
    }
    tensors
}

/// Every tensor of a sharded checkpoint directory (through `model.safetensors.index.json`).
fn read_checkpoint(dir: &Path) -> BTreeMap<String, RawTensor> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let mut shards: Vec<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    shards.sort();
    shards.dedup();
    shards
        .into_iter()
        .flat_map(|shard| read_safetensors(&dir.join(shard)))
        .collect()
}

fn scalar_f32(t: &RawTensor) -> f32 {
    assert_eq!((t.dtype.as_str(), t.shape.len()), ("F32", 0));
    f32::from_le_bytes(t.bytes[..4].try_into().unwrap())
}

/// The ModelOpt amax keys (weight, input) of the exported linear `linear` (golden/README.md
/// "Name mapping": fused experts in memory, hub names on disk, Mixtral w1/w3/w2 reverted).
fn amax_keys(linear: &str) -> (String, String) {
    let parts: Vec<&str> = linear.split('.').collect();
    if let Some(i) = parts.iter().position(|p| *p == "experts") {
        let layer = parts[..i - 1].join(".");
        let expert = parts[i + 1];
        let fused = match parts[i + 2] {
            "gate_proj" | "up_proj" | "w1" | "w3" => "gate_up_proj",
            "down_proj" | "w2" => "down_proj",
            other => panic!("unknown expert projection {other}"),
        };
        let prefix = format!("{layer}.mlp.experts.{fused}");
        return (
            format!("{prefix}_weight_quantizers.{expert}._amax"),
            format!("{prefix}_input_quantizer._amax"),
        );
    }
    (
        format!("{linear}.weight_quantizer._amax"),
        format!("{linear}.input_quantizer._amax"),
    )
}

/// What one case check found.
#[derive(Debug, Default)]
struct CaseReport {
    linears: Vec<String>,
    equal: usize,
    mismatches: Vec<String>,
}

/// Quantizes every linear of `case` with `numerics` and compares with ModelOpt's tensors.
fn check_case(case: &str, format: QuantFormat, numerics: Numerics) -> CaseReport {
    let root = PathBuf::from(GOLDEN).join(case);
    let input = read_checkpoint(&root.join("input"));
    let exported = read_checkpoint(&root.join("modelopt"));
    let after_export = root.join("amax_after_export.safetensors");
    let amax_file = if after_export.exists() {
        after_export
    } else {
        root.join("amax.safetensors")
    };
    let amaxes = read_safetensors(&amax_file);

    let mut report = CaseReport::default();
    let compare = |name: String, got: &[u8], report: &mut CaseReport| {
        let want = &exported[&name].bytes;
        if want.as_slice() == got {
            report.equal += 1;
        } else {
            let first = got.iter().zip(want.iter()).position(|(a, b)| a != b);
            let differing = got.iter().zip(want.iter()).filter(|(a, b)| a != b).count();
            report.mismatches.push(format!(
                "{name}: {differing} bytes differ, first at {first:?}"
            ));
        }
    };
    for name in exported
        .keys()
        .filter_map(|k| k.strip_suffix(".weight_scale"))
    {
        report.linears.push(name.to_string());
        let weight = &input[&format!("{name}.weight")];
        assert_eq!(weight.dtype, "BF16", "{name}");
        let (rows, cols) = (weight.shape[0], weight.shape[1]);
        let (weight_key, input_key) = amax_keys(name);
        let weight_amax = scalar_f32(&amaxes[&weight_key]);
        let input_amax = scalar_f32(&amaxes[&input_key]);
        assert!(
            exported.contains_key(&format!("{name}.input_scale")),
            "{name} has an input_scale"
        );
        if format.is_nvfp4() {
            let ws2 = nvfp4_global_scale(weight_amax, numerics);
            let mut packed = vec![0u8; rows * cols / 2];
            let mut scales = vec![0u8; rows * cols / 16];
            quantize_nvfp4(
                &weight.bytes,
                SourceDtype::Bf16,
                rows,
                cols,
                ws2,
                &mut packed,
                &mut scales,
            );
            compare(format!("{name}.weight"), &packed, &mut report);
            compare(format!("{name}.weight_scale"), &scales, &mut report);
            compare(
                format!("{name}.weight_scale_2"),
                &ws2.to_le_bytes(),
                &mut report,
            );
            compare(
                format!("{name}.input_scale"),
                &nvfp4_global_scale(input_amax, numerics).to_le_bytes(),
                &mut report,
            );
        } else {
            let weight_scale = fp8_scale(weight_amax, numerics);
            let mut out = vec![0u8; rows * cols];
            quantize_fp8(
                &weight.bytes,
                SourceDtype::Bf16,
                weight_scale,
                numerics,
                crate::compute::Fp8Quotient::WeightDtype,
                &mut out,
            );
            compare(format!("{name}.weight"), &out, &mut report);
            compare(
                format!("{name}.weight_scale"),
                &weight_scale.to_le_bytes(),
                &mut report,
            );
            compare(
                format!("{name}.input_scale"),
                &fp8_scale(input_amax, numerics).to_le_bytes(),
                &mut report,
            );
        }
    }
    // The exported dtypes and shapes are the ones `output_tensors` promises.
    for name in &report.linears {
        let weight = &input[&format!("{name}.weight")];
        for (suffix, dtype, shape) in crate::compute::output_tensors(
            format,
            crate::compute::Export::Modelopt,
            weight.shape[0],
            weight.shape[1],
        ) {
            let t = &exported[&format!("{name}.{suffix}")];
            assert_eq!(
                (t.dtype.as_str(), &t.shape),
                (format!("{dtype:?}").as_str(), &shape),
                "{name}.{suffix}"
            );
        }
    }
    report
}

fn assert_case_matches(case: &str, format: QuantFormat, numerics: Numerics, must_include: &[&str]) {
    let report = check_case(case, format, numerics);
    assert!(
        report.mismatches.is_empty(),
        "{case} ({}): {:#?}",
        numerics.name(),
        report.mismatches
    );
    for name in must_include {
        assert!(
            report.linears.iter().any(|l| l == name),
            "{case}: {name} was not checked"
        );
    }
    let per_linear = if format.is_nvfp4() { 4 } else { 3 };
    assert_eq!(report.equal, report.linears.len() * per_linear);
    eprintln!(
        "{case} ({}): {} linears, {} tensors equal",
        numerics.name(),
        report.linears.len(),
        report.equal
    );
}

const NAMED: [&str; 2] = [
    "model.layers.1.self_attn.o_proj",
    "model.layers.0.mlp.down_proj",
];

#[test]
fn test_golden_llama_nvfp4_cpu() {
    assert_case_matches(
        "llama_nvfp4",
        QuantFormat::Nvfp4,
        Numerics::ModeloptCpu,
        &NAMED,
    );
}

#[test]
fn test_golden_llama_nvfp4_gpu() {
    assert_case_matches(
        "llama_nvfp4_gpu",
        QuantFormat::Nvfp4,
        Numerics::ModeloptCuda,
        &NAMED,
    );
}

#[test]
fn test_golden_llama_fp8_cpu() {
    assert_case_matches("llama_fp8", QuantFormat::Fp8, Numerics::ModeloptCpu, &NAMED);
}

#[test]
fn test_golden_llama_fp8_gpu() {
    assert_case_matches(
        "llama_fp8_gpu",
        QuantFormat::Fp8,
        Numerics::ModeloptCuda,
        &NAMED,
    );
}

#[test]
fn test_golden_qwen3moe_nvfp4_cpu() {
    assert_case_matches(
        "qwen3moe_nvfp4",
        QuantFormat::Nvfp4,
        Numerics::ModeloptCpu,
        &[
            "model.layers.1.mlp.experts.7.gate_proj",
            "model.layers.1.mlp.experts.0.down_proj",
        ],
    );
}

#[test]
fn test_golden_mixtral_nvfp4_cpu() {
    assert_case_matches(
        "mixtral_nvfp4",
        QuantFormat::Nvfp4,
        Numerics::ModeloptCpu,
        &[
            "model.layers.1.block_sparse_moe.experts.3.w3",
            "model.layers.0.block_sparse_moe.experts.0.w2",
        ],
    );
}

/// The wrong numerics must fail on the `_gpu` cases, or they would not test the numerics.
#[test]
fn test_golden_gpu_cases_need_cuda_numerics() {
    for (case, format) in [
        ("llama_nvfp4_gpu", QuantFormat::Nvfp4),
        ("llama_fp8_gpu", QuantFormat::Fp8),
    ] {
        let report = check_case(case, format, Numerics::ModeloptCpu);
        assert!(
            !report.mismatches.is_empty(),
            "{case} also matches the CPU numerics"
        );
        eprintln!(
            "{case} with cpu numerics: {} tensors differ",
            report.mismatches.len()
        );
    }
}

/// Max calibration of a weight is max |W| of the bf16 weight: `amax.safetensors` (before
/// export unification) must equal `amax()` of every dense linear's input weight.
#[test]
fn test_golden_weight_amax_is_max_abs() {
    for case in [
        "llama_nvfp4",
        "llama_fp8",
        "llama_nvfp4_gpu",
        "llama_fp8_gpu",
    ] {
        let root = PathBuf::from(GOLDEN).join(case);
        let input = read_checkpoint(&root.join("input"));
        let amaxes = read_safetensors(&root.join("amax.safetensors"));
        let mut checked = 0;
        for (key, value) in &amaxes {
            let Some(linear) = key.strip_suffix(".weight_quantizer._amax") else {
                continue;
            };
            let weight = &input[&format!("{linear}.weight")];
            assert_eq!(
                amax(&weight.bytes, SourceDtype::Bf16),
                Ok(scalar_f32(value)),
                "{case} {linear}"
            );
            checked += 1;
        }
        assert_eq!(checked, 14, "{case}");
    }
}
