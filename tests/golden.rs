//! The checkpoints exported by ModelOpt 0.47 itself (fixtures/golden): converting each case's
//! input with its amax file must reproduce every tensor byte for byte, and the metadata files
//! exactly. The MSE case gets only the input amax: the weight amax must come from the search.

mod common;

use common::{fixtures, TempDir};
use shardquant::compute::mse::CalibMethod;
use shardquant::compute::{Numerics, QuantFormat};
use shardquant::options::Options;
use std::path::{Path, PathBuf};

fn convert_case(case: &str, format: QuantFormat, numerics: Numerics) {
    convert_case_with(case, format, numerics, CalibMethod::Max);
}

/// A copy of `amax` (a safetensors file) without its weight-quantizer entries
/// (`*weight_quantizer._amax`, `*_weight_quantizers.E._amax`): only the input amax are left.
fn input_amax_only(amax: &Path, dest: &Path) -> PathBuf {
    let bytes = std::fs::read(amax).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let (mut kept, mut out) = (serde_json::Map::new(), Vec::new());
    for (name, info) in header {
        if name == "__metadata__" || name.contains("weight_quantizer") {
            continue;
        }
        let offsets = info["data_offsets"].as_array().unwrap();
        let (a, b) = (offsets[0].as_u64().unwrap(), offsets[1].as_u64().unwrap());
        let mut info = info.clone();
        let start = out.len() as u64;
        info["data_offsets"] = serde_json::json!([start, start + b - a]);
        out.extend_from_slice(&data[a as usize..b as usize]);
        kept.insert(name, info);
    }
    assert!(!kept.is_empty() && kept.keys().all(|k| k.contains("input_quantizer")));
    let mut text = serde_json::to_vec(&kept).unwrap();
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&text);
    file.extend_from_slice(&out);
    let path = dest.join("input_amax.safetensors");
    std::fs::write(&path, file).unwrap();
    path
}

fn convert_case_with(case: &str, format: QuantFormat, numerics: Numerics, calib: CalibMethod) {
    let dir = fixtures().join("golden").join(case);
    let tmp = TempDir::new(case);
    let out = tmp.join("out");
    let mut options = common::modelopt_case_options(format, numerics);
    options.output.calib = calib;
    options.stats = vec![if calib == CalibMethod::Max {
        dir.join("amax.safetensors")
    } else {
        input_amax_only(&dir.join("amax.safetensors"), tmp.path())
    }];
    shardquant::commands::convert::convert(&dir.join("input"), &out, &options).unwrap();
    common::assert_same_export(&out, &dir.join("modelopt"), case, |file, theirs| {
        if case.ends_with("_gpu") && file != "hf_quant_config.json" {
            // The GPU exports ran under transformers 5.17, which save_pretrained stamps into
            // the files; the input (and so our output) says 5.23. Nothing else may differ.
            assert_eq!(theirs.matches("\"5.17.0\"").count(), 1, "{case}/{file}");
            theirs.replace("\"5.17.0\"", "\"5.23.0\"")
        } else {
            theirs
        }
    });
    assert!(out.join(".quant_summary.txt").exists());
    assert!(out.join("shardquant.json").exists());
}

#[test]
fn llama_nvfp4_cpu() {
    convert_case("llama_nvfp4", QuantFormat::Nvfp4, Numerics::ModeloptCpu);
}

#[test]
fn llama_fp8_cpu() {
    convert_case("llama_fp8", QuantFormat::Fp8, Numerics::ModeloptCpu);
}

#[test]
fn qwen3moe_nvfp4_cpu() {
    convert_case("qwen3moe_nvfp4", QuantFormat::Nvfp4, Numerics::ModeloptCpu);
}

#[test]
fn mixtral_nvfp4_cpu() {
    convert_case("mixtral_nvfp4", QuantFormat::Nvfp4, Numerics::ModeloptCpu);
}

/// ModelOpt's `{"method": "mse"}` FP8 calibration on CPU (Qwen3-MoE with transformers-5 fused
/// experts: one search over each expert's gate and up), reproduced from the input amax alone.
#[test]
fn qwen3moe_mse_fp8_cpu() {
    convert_case_with(
        "qwen3moe_mse_fp8",
        QuantFormat::Fp8,
        Numerics::ModeloptCpu,
        CalibMethod::Mse,
    );
}

#[test]
fn llama_nvfp4_gpu_numerics() {
    convert_case(
        "llama_nvfp4_gpu",
        QuantFormat::Nvfp4,
        Numerics::ModeloptCuda,
    );
}

#[test]
fn llama_fp8_gpu_numerics() {
    convert_case("llama_fp8_gpu", QuantFormat::Fp8, Numerics::ModeloptCuda);
}

/// The other numerics mode must NOT reproduce a case: proves the switch matters.
#[test]
fn wrong_numerics_do_not_match() {
    let dir = fixtures().join("golden").join("llama_fp8_gpu");
    let tmp = TempDir::new("wrongnum");
    let out = tmp.join("out");
    let mut options = Options::new(QuantFormat::Fp8);
    options.output.numerics = Numerics::ModeloptCpu;
    options.stats = vec![dir.join("amax.safetensors")];
    options.run.quiet = true;
    shardquant::commands::convert::convert(&dir.join("input"), &out, &options).unwrap();
    let ours = common::load_tensors(&out);
    let theirs = common::load_tensors(&dir.join("modelopt"));
    let differ = theirs.iter().filter(|(k, v)| ours[*k].2 != v.2).count();
    assert!(
        differ > 0,
        "cpu numerics should differ from the CUDA export"
    );
}
