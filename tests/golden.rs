//! The six checkpoints exported by ModelOpt 0.47 itself (fixtures/golden): converting each
//! case's input with its amax file must reproduce every tensor byte for byte, and the
//! metadata files exactly.

mod common;

use common::{assert_same_tensors, fixtures, TempDir};
use shardquant::options::Options;
use shardquant::quant::{Numerics, QuantFormat};

fn convert_case(case: &str, format: QuantFormat, numerics: Numerics) {
    let dir = fixtures().join("golden").join(case);
    let tmp = TempDir::new(case);
    let out = tmp.join("out");
    let mut options = Options::new(format);
    options.numerics = numerics;
    options.stats = vec![dir.join("amax.safetensors")];
    options.quiet = true;
    options.threads = 2;
    shardquant::convert::convert(&dir.join("input"), &out, &options).unwrap();
    let reference = dir.join("modelopt");
    assert_same_tensors(&out, &reference);
    for file in [
        "hf_quant_config.json",
        "config.json",
        "generation_config.json",
    ] {
        let ours = std::fs::read_to_string(out.join(file)).unwrap();
        let mut theirs = std::fs::read_to_string(reference.join(file)).unwrap();
        if case.ends_with("_gpu") && file != "hf_quant_config.json" {
            // The GPU exports ran under transformers 5.17, which save_pretrained stamps into
            // the files; the input (and so our output) says 5.23. Nothing else may differ.
            assert_eq!(theirs.matches("\"5.17.0\"").count(), 1, "{case}/{file}");
            theirs = theirs.replace("\"5.17.0\"", "\"5.23.0\"");
        }
        assert_eq!(ours, theirs, "{case}/{file}");
    }
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
    options.numerics = Numerics::ModeloptCpu;
    options.stats = vec![dir.join("amax.safetensors")];
    options.quiet = true;
    shardquant::convert::convert(&dir.join("input"), &out, &options).unwrap();
    let ours = common::load_tensors(&out);
    let theirs = common::load_tensors(&dir.join("modelopt"));
    let differ = theirs.iter().filter(|(k, v)| ours[*k].2 != v.2).count();
    assert!(
        differ > 0,
        "cpu numerics should differ from the CUDA export"
    );
}
