//! The command line on bad input: every case runs the built binary on a broken copy of a golden
//! checkpoint (or a bad option) and checks the exit code, that the message names the file, the
//! tensor and the fix, that nothing panicked, and that no output directory (nor a
//! `.NAME.shardquant-*` staging sibling) is left behind.

mod common;

use common::cli::*;
use common::TempDir;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Sorted (name, length) of every entry of a directory, to check it was not touched.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// The input directory and config.json
// ---------------------------------------------------------------------------------------------

#[test]
fn input_dir_missing() {
    let tmp = TempDir::new("nodir");
    let input = tmp.join("does-not-exist");
    let out = tmp.join("out");
    let r = sq(&["convert", s(&input), s(&out), "--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, &[s(&input), "not a directory", "hint: "]);
    assert_no_output(&out);
}

#[test]
fn input_is_a_file() {
    let tmp = TempDir::new("infile");
    let input = tmp.join("model.safetensors");
    std::fs::write(&input, b"not a directory").unwrap();
    let out = tmp.join("out");
    let r = sq(&["convert", s(&input), s(&out), "--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, &[s(&input), "not a directory", "hint: "]);
    assert_no_output(&out);
}

#[test]
fn inspect_input_dir_missing() {
    let tmp = TempDir::new("inspnodir");
    let input = tmp.join("does-not-exist");
    let r = sq(&["inspect", s(&input)]);
    r.expect_error(BAD_INPUT, &[s(&input), "hint: "]);
}

#[test]
fn no_config_json() {
    let sb = Sandbox::new("llama_nvfp4", "noconfig");
    std::fs::remove_file(sb.file("config.json")).unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(
        BAD_INPUT,
        &[
            s(&sb.file("config.json")),
            "No such file or directory",
            "hint: ",
            "needs its config.json",
        ],
    );
    assert_no_output(&sb.out);
}

#[test]
fn invalid_config_json() {
    let sb = Sandbox::new("llama_nvfp4", "badconfig");
    std::fs::write(sb.file("config.json"), b"{\"architectures\": [\"Llama").unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, &[s(&sb.file("config.json")), "invalid JSON"]);
    assert_no_output(&sb.out);
}

#[test]
fn config_json_not_an_object() {
    let sb = Sandbox::new("llama_nvfp4", "arrayconfig");
    std::fs::write(sb.file("config.json"), b"[1, 2, 3]").unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(
        BAD_INPUT,
        &[s(&sb.file("config.json")), "not a JSON object"],
    );
    assert_no_output(&sb.out);
}

/// Replaces the architecture of the sandbox's config.json with an unknown one.
fn make_unknown_architecture(sb: &Sandbox) {
    let path = sb.file("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("LlamaForCausalLM", "FooBarForCausalLM")
        .replace("\"model_type\": \"llama\"", "\"model_type\": \"foobar\"");
    std::fs::write(&path, text).unwrap();
}

/// A model no shipped layout names is inferred from its tensors: the renamed Llama converts to
/// the same checkpoint as with the Llama layout (tests/architectures.rs checks many more).
#[test]
fn unknown_architecture_is_inferred() {
    let sb = Sandbox::new("llama_nvfp4", "unknownarch");
    make_unknown_architecture(&sb);
    let r = sb.convert(&["--format", "w4a16_nvfp4", "-q"]);
    r.expect_success();
    let named = Sandbox::new("llama_nvfp4", "unknownarchnamed");
    named
        .convert(&["--format", "w4a16_nvfp4", "-q"])
        .expect_success();
    common::assert_same_tensors(&sb.out, &named.out);
}

/// Inference that cannot find the decoder stops, naming what it found and how to go on.
#[test]
fn layout_not_inferable() {
    let sb = Sandbox::new("llama_nvfp4", "notinferable");
    make_unknown_architecture(&sb);
    let path = sb.file("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 5");
    std::fs::write(&path, text).unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(
        BAD_INPUT,
        &[
            s(&sb.file("config.json")),
            "cannot infer a layout",
            "0..5",
            "model.layers (2 layers)",
            "hint: ",
            "--layout",
        ],
    );
    assert_no_output(&sb.out);
}

/// The hint of the unknown-architecture error works: the same checkpoint converts with
/// `--layout layouts/llama.json`.
#[test]
fn unknown_architecture_converts_with_layout_file() {
    let sb = Sandbox::new("llama_nvfp4", "unknownarchlayout");
    make_unknown_architecture(&sb);
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("layouts/llama.json");
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--layout", s(&layout), "-q"]);
    r.expect_success();
    assert!(sb.out.join("hf_quant_config.json").is_file());
    assert_no_sibling(&sb.out);
}

// ---------------------------------------------------------------------------------------------
// Shards and the index
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_shard() {
    let sb = Sandbox::new("llama_nvfp4", "missingshard");
    let shard = sb.shard_of("model.layers.0.mlp.gate_proj.weight");
    std::fs::remove_file(&shard).unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(
        BAD_INPUT,
        &[
            s(&shard),
            "missing",
            "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.mlp.up_proj.weight",
            REDOWNLOAD,
        ],
    );
    assert_no_output(&sb.out);
}

#[test]
fn truncated_shard() {
    let sb = Sandbox::new("llama_nvfp4", "truncated");
    let shard = sb.shard_of("model.layers.0.mlp.gate_proj.weight");
    // The tensor whose data ends last is the one cut off.
    let file = ShardFile::read(&shard);
    let last = file
        .header
        .keys()
        .filter(|k| *k != "__metadata__")
        .max_by_key(|k| file.range(k).end)
        .unwrap()
        .clone();
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(
        BAD_INPUT,
        &[s(&shard), "truncated", "100 missing", &last, REDOWNLOAD],
    );
    assert_no_output(&sb.out);
}

#[test]
fn shard_shorter_than_its_header() {
    let sb = Sandbox::new("llama_nvfp4", "tinyshard");
    let shard = sb.shard_of("model.norm.weight");
    std::fs::write(&shard, [1u8, 2, 3]).unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, &[s(&shard), "3 bytes", REDOWNLOAD]);
    assert_no_output(&sb.out);
}

#[test]
fn index_names_tensor_absent_from_its_shard() {
    let sb = Sandbox::new("llama_nvfp4", "absent");
    let shard = sb.shard_of("model.layers.0.self_attn.q_proj.weight");
    let file_name = shard.file_name().unwrap().to_str().unwrap().to_string();
    sb.edit_weight_map(|m| {
        m.insert(
            "model.layers.0.self_attn.q_proj.bias".into(),
            Value::String(file_name),
        );
    });
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(
        BAD_INPUT,
        &[
            s(&shard),
            "does not contain",
            "model.layers.0.self_attn.q_proj.bias",
            MISMATCH,
        ],
    );
    assert_no_output(&sb.out);
}

#[test]
fn index_puts_tensor_in_the_wrong_shard() {
    let sb = Sandbox::new("llama_nvfp4", "wrongshard");
    let tensor = "model.layers.0.self_attn.q_proj.weight";
    let real = sb.shard_of(tensor);
    let claimed = sb.shard_of("model.embed_tokens.weight");
    assert_ne!(real, claimed);
    let claimed_name = claimed.file_name().unwrap().to_str().unwrap().to_string();
    sb.edit_weight_map(|m| {
        m.insert(tensor.into(), Value::String(claimed_name));
    });
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(
        BAD_INPUT,
        &[s(&claimed), s(&real), tensor, "does not contain", MISMATCH],
    );
    assert_no_output(&sb.out);
}

#[test]
fn shard_holds_tensor_the_index_does_not_list() {
    let sb = Sandbox::new("llama_nvfp4", "unlisted");
    let tensor = "model.layers.1.post_attention_layernorm.weight";
    let shard = sb.shard_of(tensor);
    sb.edit_weight_map(|m| {
        m.remove(tensor);
    });
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, &[s(&shard), tensor, "does not list", MISMATCH]);
    assert_no_output(&sb.out);
}

#[test]
fn index_missing() {
    let sb = Sandbox::new("llama_nvfp4", "noindex");
    let index = sb.file("model.safetensors.index.json");
    std::fs::remove_file(&index).unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(
        BAD_INPUT,
        &[
            s(&sb.input),
            "model.safetensors.index.json",
            "model-00001-of-00007.safetensors",
            "hint: ",
            "index is missing",
        ],
    );
    assert_no_output(&sb.out);
}

#[test]
fn index_invalid_json() {
    let sb = Sandbox::new("llama_nvfp4", "badindex");
    let index = sb.file("model.safetensors.index.json");
    std::fs::write(&index, b"{\"weight_map\": {\"lm_head.weight\": ").unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, &[s(&index), "invalid JSON", REDOWNLOAD]);
    assert_no_output(&sb.out);
}

#[test]
fn index_without_weight_map() {
    let sb = Sandbox::new("llama_nvfp4", "noweightmap");
    let index = sb.file("model.safetensors.index.json");
    std::fs::write(&index, b"{\"metadata\": {}}").unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, &[s(&index), "weight_map", "hint: "]);
    assert_no_output(&sb.out);
}

/// An index may not point outside the checkpoint directory.
#[test]
fn index_names_shard_outside_the_directory() {
    let sb = Sandbox::new("llama_nvfp4", "traversal");
    let tensor = "model.norm.weight";
    let shard = sb.shard_of(tensor);
    let name = shard.file_name().unwrap().to_str().unwrap().to_string();
    // A real shard beside the checkpoint, reachable as ../NAME.
    std::fs::copy(&shard, sb.tmp.join(&name)).unwrap();
    sb.edit_weight_map(|m| {
        m.insert(tensor.into(), Value::String(format!("../{name}")));
    });
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(
        BAD_INPUT,
        &[
            &format!("../{name}"),
            tensor,
            "not a plain file name",
            MISMATCH,
        ],
    );
    assert_no_output(&sb.out);
}

#[test]
fn shard_is_a_git_lfs_pointer() {
    let sb = Sandbox::new("llama_nvfp4", "lfs");
    let shard = sb.shard_of("model.layers.0.self_attn.q_proj.weight");
    std::fs::write(
        &shard,
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 25024\n",
    )
    .unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, &[s(&shard), "Git LFS pointer", "git lfs pull"]);
    assert_no_output(&sb.out);
}

#[test]
fn duplicate_tensor_across_shards() {
    let sb = Sandbox::new("llama_nvfp4", "duplicate");
    let tensor = "model.norm.weight";
    let home = sb.shard_of(tensor);
    let other = sb.shard_of("lm_head.weight");
    assert_ne!(home, other);
    // Copy the tensor (header entry and bytes) to the end of the other shard.
    let src = ShardFile::read(&home);
    let bytes = src.data[src.range(tensor)].to_vec();
    let mut dst = ShardFile::read(&other);
    let start = dst.data.len();
    let mut entry = src.header[tensor].clone();
    entry["data_offsets"] = serde_json::json!([start, start + bytes.len()]);
    dst.header.insert(tensor.into(), entry);
    dst.data.extend_from_slice(&bytes);
    dst.write(&other);
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(
        BAD_INPUT,
        &[tensor, "more than one shard", s(&home), s(&other), MISMATCH],
    );
    assert_no_output(&sb.out);
}

#[test]
fn corrupt_shard_header_json() {
    let sb = Sandbox::new("llama_nvfp4", "corrupthdr");
    let shard = sb.shard_of("model.layers.0.self_attn.o_proj.weight");
    // The header starts with `{` right after the 8-byte length.
    patch_file(&shard, 8, b"X");
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(
        BAD_INPUT,
        &[s(&shard), "invalid safetensors file", REDOWNLOAD],
    );
    assert_no_output(&sb.out);
}

#[test]
fn corrupt_shard_header_length() {
    let sb = Sandbox::new("llama_nvfp4", "corruptlen");
    let shard = sb.shard_of("model.layers.0.self_attn.o_proj.weight");
    patch_file(&shard, 0, &u64::MAX.to_le_bytes());
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, &[s(&shard), "header length", REDOWNLOAD]);
    assert_no_output(&sb.out);
}

#[test]
fn corrupt_shard_offsets_overlap() {
    let sb = Sandbox::new("llama_nvfp4", "overlap");
    let tensor = "model.layers.0.self_attn.k_proj.weight";
    let shard = sb.shard_of(tensor);
    let mut file = ShardFile::read(&shard);
    let r = file.range(tensor);
    // Claim one extra byte at the end: the byte length no longer matches dtype and shape.
    file.header[tensor]["data_offsets"] = serde_json::json!([r.start, r.end + 2]);
    file.write(&shard);
    let out = sb.convert(&["--format", "w4a16_nvfp4"]);
    out.expect_error(BAD_INPUT, &[s(&shard), tensor, REDOWNLOAD]);
    assert_no_output(&sb.out);
}

// ---------------------------------------------------------------------------------------------
// Weight values (found while streaming, after the output's staging directory exists)
// ---------------------------------------------------------------------------------------------

#[test]
fn nan_in_linear_weight() {
    let sb = Sandbox::new("llama_nvfp4", "nan");
    let tensor = "model.layers.0.mlp.down_proj.weight"; // [64, 128] bf16
    let shard = sb.shard_of(tensor);
    let file = ShardFile::read(&shard);
    assert_eq!(file.header[tensor]["dtype"], "BF16");
    assert_eq!(file.header[tensor]["shape"], serde_json::json!([64, 128]));
    // Row 40 lies past the first 4096 elements, which the amax scan checks as one chunk.
    let (row, col) = (40usize, 7usize);
    let at = ShardFile::data_start(&shard) + file.range(tensor).start + (row * 128 + col) * 2;
    patch_file(&shard, at, &0x7FC0u16.to_le_bytes()); // bf16 quiet NaN
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&amax("llama_nvfp4"))]);
    r.expect_error(BAD_INPUT, &[s(&shard), tensor, "[40, 7]", "NaN", "hint: "]);
    assert_no_output(&sb.out);
}

#[test]
fn infinity_in_linear_weight_fp8() {
    let sb = Sandbox::new("llama_fp8", "inf");
    let tensor = "model.layers.1.self_attn.v_proj.weight"; // [32, 64] bf16
    let shard = sb.shard_of(tensor);
    let file = ShardFile::read(&shard);
    assert_eq!(file.header[tensor]["shape"], serde_json::json!([32, 64]));
    let at = ShardFile::data_start(&shard) + file.range(tensor).start + (31 * 64 + 63) * 2;
    patch_file(&shard, at, &0xFF80u16.to_le_bytes()); // bf16 -inf
    let r = sb.convert(&["--format", "fp8", "--stats", s(&amax("llama_fp8"))]);
    r.expect_error(BAD_INPUT, &[s(&shard), tensor, "[31, 63]", "hint: "]);
    assert_no_output(&sb.out);
}

#[test]
fn nan_in_expert_weight() {
    let sb = Sandbox::new("qwen3moe_nvfp4", "nanexpert");
    let tensor = "model.layers.1.mlp.experts.5.up_proj.weight";
    let shard = sb.shard_of(tensor);
    let file = ShardFile::read(&shard);
    assert_eq!(file.header[tensor]["dtype"], "BF16");
    let cols = file.header[tensor]["shape"][1].as_u64().unwrap() as usize;
    let at = ShardFile::data_start(&shard) + file.range(tensor).start + (2 * cols + 9) * 2;
    patch_file(&shard, at, &0xFFC1u16.to_le_bytes()); // a negative NaN with payload
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&amax("qwen3moe_nvfp4"))]);
    r.expect_error(BAD_INPUT, &[s(&shard), tensor, "[2, 9]", "NaN", "hint: "]);
    assert_no_output(&sb.out);
}

/// Zeroes every byte of `tensor` in the sandbox's input; returns its shard.
fn zero_tensor(sb: &Sandbox, tensor: &str) -> PathBuf {
    let shard = sb.shard_of(tensor);
    let file = ShardFile::read(&shard);
    let range = file.range(tensor);
    let at = ShardFile::data_start(&shard) + range.start;
    patch_file(&shard, at, &vec![0u8; range.len()]);
    shard
}

#[test]
fn all_zero_linear_weight() {
    let sb = Sandbox::new("llama_nvfp4", "zero");
    let tensor = "model.layers.0.self_attn.o_proj.weight";
    let shard = zero_tensor(&sb, tensor);
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&amax("llama_nvfp4"))]);
    r.expect_error(
        BAD_INPUT,
        &[
            s(&shard),
            tensor,
            "all zeros",
            "hint: ",
            "--exclude 'model.layers.0.self_attn.o_proj'",
        ],
    );
    assert_no_output(&sb.out);
}

/// The hint of the all-zero error works: excluding the linear converts.
#[test]
fn all_zero_linear_weight_converts_when_excluded() {
    let sb = Sandbox::new("llama_nvfp4", "zeroexcl");
    zero_tensor(&sb, "model.layers.0.self_attn.o_proj.weight");
    let r = sb.convert(&[
        "--format",
        "nvfp4",
        "--stats",
        s(&amax("llama_nvfp4")),
        "--exclude",
        "model.layers.0.self_attn.o_proj",
        "-q",
    ]);
    r.expect_success();
    assert!(sb.out.join("config.json").is_file());
    assert_no_sibling(&sb.out);
}

/// Rewrites the header of `tensor` ([32, 64] bf16) as [256, 8]: same bytes, 8 input features.
fn make_narrow_weight(sb: &Sandbox, tensor: &str) -> PathBuf {
    let shard = sb.shard_of(tensor);
    let mut file = ShardFile::read(&shard);
    assert_eq!(file.header[tensor]["shape"], serde_json::json!([32, 64]));
    file.header[tensor]["shape"] = serde_json::json!([256, 8]);
    file.write(&shard);
    shard
}

#[test]
fn nvfp4_in_features_not_multiple_of_16() {
    let sb = Sandbox::new("llama_nvfp4", "narrow");
    let tensor = "model.layers.0.self_attn.k_proj.weight";
    make_narrow_weight(&sb, tensor);
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(
        BAD_INPUT,
        &[tensor, "[256, 8]", "not a multiple of", "16", "--exclude"],
    );
    assert_no_output(&sb.out);
}

#[test]

fn nvfp4_in_features_error_names_the_shard_file() {
    let sb = Sandbox::new("llama_nvfp4", "narrowfile");
    let tensor = "model.layers.0.self_attn.k_proj.weight";
    let shard = make_narrow_weight(&sb, tensor);
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, &[tensor, s(&shard)]);
    assert_no_output(&sb.out);
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

#[test]
fn nvfp4_without_stats() {
    let sb = Sandbox::new("llama_nvfp4", "nvfp4nostats");
    let r = sb.convert(&["--format", "nvfp4"]);
    r.expect_error(
        BAD_INPUT,
        &[
            "--format nvfp4",
            "14 quantized linear(s) have no input amax",
            "no --stats file given",
            "model.layers.0.self_attn.q_proj",
            "--stats FILE",
            "w4a16_nvfp4",
        ],
    );
    r.expect_hint();
    assert_no_output(&sb.out);
}

#[test]
fn fp8_without_stats() {
    let sb = Sandbox::new("llama_fp8", "fp8nostats");
    let r = sb.convert(&["--format", "fp8"]);
    r.expect_error(
        BAD_INPUT,
        &[
            "--format fp8",
            "14 quantized linear(s) have no input amax",
            "no --stats file given",
            "--stats FILE",
            "w4a16_nvfp4",
        ],
    );
    r.expect_hint();
    assert_no_output(&sb.out);
}

/// `inspect` describes the checkpoint even when a conversion with these options would stop
/// (W4A4 without statistics), says why, and exits 3 so that scripts notice; with options that
/// would work it exits 0.
#[test]
fn inspect_without_stats_describes_and_exits_3() {
    let input = golden("llama_nvfp4").join("input");
    let r = sq(&["inspect", s(&input), "--format", "nvfp4"]);
    r.expect_error(BAD_INPUT, &["would stop in pre-flight"]);
    assert!(r.stdout.contains("llama"), "stdout:\n{}", r.stdout);
    assert!(
        r.stdout.contains("have no input amax"),
        "stdout:\n{}",
        r.stdout
    );
    let r = sq(&["inspect", s(&input), "--format", "w4a16_nvfp4"]);
    r.expect_success();
    assert!(
        r.stdout.contains("exclude_modules (2):\n    lm_head"),
        "{}",
        r.stdout
    );
}

/// `inspect` on an already-quantized checkpoint says so once, as convert does.
#[test]
fn inspect_of_a_quantized_checkpoint_says_so() {
    let r = sq(&["inspect", s(&golden("llama_nvfp4").join("modelopt"))]);
    r.expect_error(BAD_INPUT, &["already quantized", "original BF16"]);
}

#[test]
fn stats_file_not_safetensors() {
    let sb = Sandbox::new("llama_nvfp4", "statstext");
    let stats = sb.tmp.join("amax.txt");
    std::fs::write(&stats, "model.layers.0.self_attn.q_proj 1.5\n").unwrap();
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&stats)]);
    r.expect_error(
        BAD_INPUT,
        &[s(&stats), "unrecognised statistics format", "hint: "],
    );
    assert_no_output(&sb.out);
}

#[test]
fn stats_file_broken_safetensors() {
    let sb = Sandbox::new("llama_nvfp4", "statsbroken");
    let stats = sb.tmp.join("amax.safetensors");
    // Looks like safetensors (8 bytes then `{`) but the header is cut off.
    let mut bytes = 4096u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"model.layers.0.self_attn.q_proj.input_quantizer._amax\":");
    std::fs::write(&stats, bytes).unwrap();
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&stats)]);
    r.expect_error(
        BAD_INPUT,
        &[s(&stats), "not a valid safetensors file", "hint: "],
    );
    assert_no_output(&sb.out);
}

#[test]
fn stats_file_missing() {
    let sb = Sandbox::new("llama_nvfp4", "statsmissing");
    let stats = sb.tmp.join("no-such-amax.safetensors");
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&stats)]);
    r.expect_error(
        BAD_INPUT,
        &[s(&stats), "No such file or directory", "1 problem(s)"],
    );
    // Only the cause: the missing input amax follow from it and are not listed.
    assert!(!r.stderr.contains("have no input amax"), "{}", r.stderr);
    assert_no_output(&sb.out);
}

/// A weight shard passed as statistics says so.
#[test]
fn weight_shard_as_stats_says_so() {
    let sb = Sandbox::new("llama_nvfp4", "weightshardstats");
    let shard = sb.shard_of("model.layers.0.self_attn.q_proj.weight");
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&shard)]);
    r.expect_error(
        BAD_INPUT,
        &["no quantizer amax", "is a weight shard passed as --stats?"],
    );
    assert_no_output(&sb.out);
}

/// Writes a safetensors file of (name, dtype, shape, bytes) tensors.
fn write_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [data.len(), data.len() + bytes.len()],
            }),
        );
        data.extend_from_slice(bytes);
    }
    ShardFile { header, data }.write(path);
}

#[test]
fn stats_value_with_unsupported_dtype() {
    let sb = Sandbox::new("llama_nvfp4", "statsdtype");
    let stats = sb.tmp.join("amax.safetensors");
    let key = "model.layers.0.self_attn.q_proj.input_quantizer._amax";
    write_safetensors(&stats, &[(key, "I32", vec![], 7i32.to_le_bytes().to_vec())]);
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&stats)]);
    r.expect_error(BAD_INPUT, &[s(&stats), key, "I32", "F32, BF16 or F16"]);
    assert_no_output(&sb.out);
}

#[test]
fn stats_input_amax_not_a_scalar() {
    let sb = Sandbox::new("llama_nvfp4", "statsshape");
    let stats = sb.tmp.join("amax.safetensors");
    let key = "model.layers.0.self_attn.q_proj.input_quantizer._amax";
    let bytes: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    write_safetensors(&stats, &[(key, "F32", vec![2], bytes)]);
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&stats)]);
    r.expect_error(BAD_INPUT, &[s(&stats), key, "[2]"]);
    assert_no_output(&sb.out);
}

#[test]
fn stats_block_weight_amax_without_global_amax() {
    let sb = Sandbox::new("llama_nvfp4", "statsblocks");
    let stats = sb.tmp.join("amax.safetensors");
    let key = "model.layers.0.self_attn.q_proj.weight_quantizer._amax";
    let bytes: Vec<u8> = [1.0f32; 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    write_safetensors(&stats, &[(key, "F32", vec![4], bytes)]);
    let r = sb.convert(&[
        "--format",
        "w4a16_nvfp4",
        "--stats",
        s(&stats),
        "--weight-amax",
        "stats",
    ]);
    r.expect_error(BAD_INPUT, &[s(&stats), key, "_global_amax", "hint: "]);
    assert_no_output(&sb.out);
}

/// Weight-only with a foreign amax file converts, and warns that the names do not match.
#[test]
fn stats_for_another_model_is_refused_by_its_weight_amax() {
    // Mixtral's amax file names attention modules the llama model also has; the weight amax it
    // recorded does not match this checkpoint's weights, so it was made on another model.
    let sb = Sandbox::new("llama_nvfp4", "foreignwo");
    let r = sb.convert(&[
        "--format",
        "w4a16_nvfp4",
        "--stats",
        s(&amax("mixtral_nvfp4")),
    ]);
    r.expect_error(
        BAD_INPUT,
        &["made on a different checkpoint", "self_attn", "hint: "],
    );
    assert_no_output(&sb.out);
}

/// `--weight-amax stats` uses the recorded weight amax, but still refuses one that no
/// ModelOpt calibration of this weight picks (here 0.2 x max|W|: made on another checkpoint).
#[test]
fn weight_amax_stats_for_another_checkpoint_is_refused() {
    let sb = Sandbox::new("llama_nvfp4", "foreignwstats");
    let tensors = common::load_tensors_of_file(&amax("llama_nvfp4"));
    let scaled: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, (_, shape, bytes))| {
            let bytes = if name.ends_with("weight_quantizer._amax") {
                let v = f32::from_le_bytes(bytes[..4].try_into().unwrap()) * 0.2;
                v.to_le_bytes().to_vec()
            } else {
                bytes
            };
            (name, shape, bytes)
        })
        .collect();
    let path = sb.tmp.join("scaled.safetensors");
    let rows: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = scaled
        .iter()
        .map(|(n, s, b)| (n.as_str(), "F32", s.clone(), b.clone()))
        .collect();
    write_safetensors(&path, &rows);
    let r = sb.convert(&[
        "--format",
        "nvfp4",
        "--stats",
        s(&path),
        "--weight-amax",
        "stats",
    ]);
    r.expect_error(
        BAD_INPUT,
        &[
            "made on a different checkpoint",
            "0.25 to 4",
            "--weight-amax compute",
        ],
    );
    assert_no_output(&sb.out);
    // The file's own weight amax (max calibration: max|W|) pass.
    let sb = Sandbox::new("llama_nvfp4", "ownwstats");
    sb.convert(&[
        "--format",
        "nvfp4",
        "--stats",
        s(&amax("llama_nvfp4")),
        "--weight-amax",
        "stats",
        "-q",
    ])
    .expect_success();
}

/// Mixtral's amax file for the llama checkpoint: the attention amax match (same names), the
/// MLP ones do not. The six MLP linears have no input amax: an error.
#[test]
fn stats_for_another_model() {
    let sb = Sandbox::new("llama_nvfp4", "foreignstats");
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&amax("mixtral_nvfp4"))]);
    r.expect_error(
        BAD_INPUT,
        &[
            "6 quantized linear(s) have no input amax",
            "model.layers.0.mlp.gate_proj",
            "model.layers.0.mlp.up_proj",
            "model.layers.0.mlp.down_proj",
            "w4a16_nvfp4",
        ],
    );
    r.expect_hint();
    assert_no_output(&sb.out);
}

/// The same run must also say why: the statistics name modules the model does not have.
#[test]
fn stats_for_another_model_warns_about_unmatched_names() {
    let sb = Sandbox::new("llama_nvfp4", "foreignstatswarn");
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&amax("mixtral_nvfp4"))]);
    r.expect_error(
        BAD_INPUT,
        &[
            "statistics key(s) name modules this model does not have",
            "model.layers.0.mlp.experts.",
        ],
    );
    assert_no_output(&sb.out);
}

/// With a `--stats` file given, the missing-amax error must say which file lacks the values.
#[test]
fn stats_for_another_model_error_names_the_stats_file() {
    let sb = Sandbox::new("llama_nvfp4", "foreignstatsfile");
    let stats = amax("mixtral_nvfp4");
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&stats)]);
    r.expect_error(BAD_INPUT, &[s(&stats)]);
    assert_no_output(&sb.out);
}

#[test]
fn weight_amax_stats_without_stats() {
    let sb = Sandbox::new("llama_nvfp4", "wamaxnostats");
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--weight-amax", "stats"]);
    r.expect_error(USAGE, &["--weight-amax stats", "--stats"]);
    assert_no_output(&sb.out);
}

#[test]
fn kv_cache_fp8_without_kv_amax() {
    let sb = Sandbox::new("llama_nvfp4", "kvnoamax");
    let r = sb.convert(&[
        "--format",
        "nvfp4",
        "--stats",
        s(&amax("llama_nvfp4")),
        "--kv-cache",
        "fp8",
    ]);
    r.expect_error(
        BAD_INPUT,
        &[
            "--kv-cache fp8",
            "k_bmm_quantizer",
            "2 attention block(s)",
            "model.layers.0.self_attn",
            "model.layers.1.self_attn",
        ],
    );
    assert_no_output(&sb.out);
}

#[test]
fn kv_cache_fp8_error_names_stats_file_and_fix() {
    let sb = Sandbox::new("llama_nvfp4", "kvnoamaxhint");
    let stats = amax("llama_nvfp4");
    let r = sb.convert(&[
        "--format",
        "nvfp4",
        "--stats",
        s(&stats),
        "--kv-cache",
        "fp8",
    ]);
    r.expect_error(BAD_INPUT, &[s(&stats)]);
    r.expect_hint();
    assert_no_output(&sb.out);
}

// ---------------------------------------------------------------------------------------------
// The output directory
// ---------------------------------------------------------------------------------------------

#[test]
fn output_exists_without_force() {
    let sb = Sandbox::new("llama_nvfp4", "exists");
    std::fs::create_dir(&sb.out).unwrap();
    std::fs::write(sb.out.join("keep.txt"), b"user data").unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(USAGE, &[s(&sb.out), "already exists", "--force"]);
    assert_eq!(listing(&sb.out), vec![("keep.txt".to_string(), 9)]);
    assert_eq!(
        std::fs::read(sb.out.join("keep.txt")).unwrap(),
        b"user data"
    );
    assert_no_sibling(&sb.out);
}

#[test]
fn output_exists_with_force_is_replaced() {
    let sb = Sandbox::new("llama_nvfp4", "force");
    std::fs::create_dir(&sb.out).unwrap();
    std::fs::write(sb.out.join("keep.txt"), b"old output").unwrap();
    std::fs::write(sb.out.join("shardquant.json"), b"{}").unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--force", "-q"]);
    r.expect_success();
    assert!(!sb.out.join("keep.txt").exists(), "old output not replaced");
    assert!(sb.out.join("hf_quant_config.json").is_file());
    assert!(sb.out.join("config.json").is_file());
    assert_no_sibling(&sb.out);
}

/// A failed conversion with --force leaves the existing output as it was.
#[test]
fn output_exists_with_force_kept_on_failure() {
    let sb = Sandbox::new("llama_nvfp4", "forcefail");
    zero_tensor(&sb, "model.layers.1.self_attn.o_proj.weight");
    std::fs::create_dir(&sb.out).unwrap();
    std::fs::write(sb.out.join("keep.txt"), b"old output").unwrap();
    std::fs::write(sb.out.join("shardquant.json"), b"{}").unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--force"]);
    r.expect_error(BAD_INPUT, &["all zeros"]);
    assert_eq!(
        listing(&sb.out),
        vec![
            ("keep.txt".to_string(), 10),
            ("shardquant.json".to_string(), 2)
        ]
    );
    assert_no_sibling(&sb.out);
}

/// `--force` over an existing regular *file*: either refuse up front (usage error, file kept)
/// or replace it cleanly (success, no `.out.shardquant-old-*` left behind).
#[test]
fn output_is_a_file_with_force() {
    let sb = Sandbox::new("llama_nvfp4", "forcefile");
    std::fs::write(&sb.out, b"a file").unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--force", "-q"]);
    // --force replaces an output directory, never a file the user put there.
    r.expect_error(USAGE, &[s(&sb.out), "not a directory"]);
    assert_eq!(std::fs::read(&sb.out).unwrap(), b"a file");
    assert_no_sibling(&sb.out);
}

#[test]
fn output_is_a_file_without_force() {
    let sb = Sandbox::new("llama_nvfp4", "outfile");
    std::fs::write(&sb.out, b"a file").unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(USAGE, &[s(&sb.out), "not a directory"]);
    assert_eq!(std::fs::read(&sb.out).unwrap(), b"a file");
    assert_no_sibling(&sb.out);
}

#[test]
fn output_inside_input() {
    let sb = Sandbox::new("llama_nvfp4", "inside");
    let before = listing(&sb.input);
    let out = sb.input.join("quantized");
    let r = sq(&["convert", s(&sb.input), s(&out), "--format", "w4a16_nvfp4"]);
    r.expect_error(USAGE, &[s(&out), s(&sb.input), "overlap", "hint: "]);
    assert_no_output(&out);
    assert_eq!(listing(&sb.input), before, "the input was modified");
}

#[test]
fn output_is_the_input_with_force() {
    let sb = Sandbox::new("llama_nvfp4", "same");
    let before = listing(&sb.input);
    let r = sq(&[
        "convert",
        s(&sb.input),
        s(&sb.input),
        "--format",
        "w4a16_nvfp4",
        "--force",
    ]);
    r.expect_error(USAGE, &["overlap"]);
    assert_eq!(listing(&sb.input), before, "the input was modified");
    assert_no_sibling(&sb.input);
}

/// `--force` with an output that contains the input would delete the input: refused.
#[test]
fn output_containing_input_with_force() {
    let sb = Sandbox::new("llama_nvfp4", "contains");
    let before = listing(&sb.input);
    let r = sq(&[
        "convert",
        s(&sb.input),
        s(sb.tmp.path()),
        "--format",
        "w4a16_nvfp4",
        "--force",
    ]);
    r.expect_error(USAGE, &["overlap"]);
    assert_eq!(listing(&sb.input), before, "the input was modified");
    assert_no_sibling(sb.tmp.path());
}

#[test]
fn output_parent_missing() {
    let sb = Sandbox::new("llama_nvfp4", "noparent");
    let out = sb.tmp.join("no/such/parent/out");
    let r = sq(&["convert", s(&sb.input), s(&out), "--format", "w4a16_nvfp4"]);
    r.expect_error(USAGE, &["no/such/parent", "hint: "]);
    assert!(!sb.tmp.join("no").exists());
}

/// A `--report` path that cannot be written is found before anything is written: the command
/// fails and leaves no output directory.
#[test]
fn report_path_unwritable() {
    let sb = Sandbox::new("llama_nvfp4", "report");
    let report = sb.tmp.join("no-such-dir/report.json");
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--report", s(&report)]);
    assert!(
        r.code == USAGE || r.code == 1,
        "expected a usage or output error\nstderr:\n{}",
        r.stderr
    );
    r.expect_error(r.code, &["no-such-dir/report.json"]);
    assert_no_output(&sb.out);
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

#[test]
fn device_cuda() {
    // A GPU that is not there (no driver here; no 100th device anywhere) is an error with the
    // reason and a hint, exit 1, before anything is written.
    let sb = Sandbox::new("llama_nvfp4", "cuda");
    let devices: &[&str] = if shardquant::compute::cuda::Gpu::open(0).is_ok() {
        &["cuda:99"]
    } else {
        &["cuda", "cuda:99"]
    };
    for device in devices {
        let r = sb.convert(&["--format", "w4a16_nvfp4", "--device", device]);
        r.expect_error(1, &["--device cuda:", "hint: ", "--device cpu"]);
        assert_no_output(&sb.out);
    }
}

#[test]
fn device_unknown() {
    let sb = Sandbox::new("llama_nvfp4", "tpu");
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--device", "tpu"]);
    r.expect_error(USAGE, &["--device tpu", "auto, cpu, cuda"]);
    assert_no_output(&sb.out);
}

#[test]
fn threads_zero() {
    let sb = Sandbox::new("llama_nvfp4", "threads0");
    let r = sq(&[
        "convert",
        s(&sb.input),
        s(&sb.out),
        "--format",
        "w4a16_nvfp4",
        "--threads",
        "0",
    ]);
    // clap rejects it (1..=1024) with its own usage message.
    assert_eq!(r.code, USAGE, "{}", r.stderr);
    assert!(r.stderr.contains("--threads"), "{}", r.stderr);
    assert_no_output(&sb.out);
}

#[test]
fn bad_max_shard_size() {
    let sb = Sandbox::new("llama_nvfp4", "shardsize");
    for bad in [
        "5XB",
        "0",
        "GB",
        "-5GB",
        "1.2.3GB",
        "99999999999999999999TB",
    ] {
        let flag = format!("--max-shard-size={bad}");
        let r = sb.convert(&["--format", "w4a16_nvfp4", &flag]);
        r.expect_error(USAGE, &[&format!("invalid size {bad:?}"), "hint: "]);
        assert_no_output(&sb.out);
    }
}

#[test]
fn bad_max_memory() {
    let sb = Sandbox::new("llama_nvfp4", "maxmem");
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--max-memory", "lots"]);
    r.expect_error(USAGE, &["invalid size \"lots\"", "hint: "]);
    assert_no_output(&sb.out);
}

#[test]
fn already_quantized_input() {
    let tmp = TempDir::new("quantized");
    let input = golden("llama_nvfp4").join("modelopt");
    let out = tmp.join("out");
    let r = sq(&["convert", s(&input), s(&out), "--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, &[s(&input), "already quantized", "hint: "]);
    assert_no_output(&out);
}

/// Writes a layout file into the sandbox and converts with it.
fn convert_with_layout(sb: &Sandbox, text: &str) -> (PathBuf, Outcome) {
    let layout = sb.tmp.join("layout.json");
    std::fs::write(&layout, text).unwrap();
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--layout", s(&layout)]);
    (layout, r)
}

#[test]
fn layout_file_not_json() {
    let sb = Sandbox::new("llama_nvfp4", "layoutjson");
    let (layout, r) = convert_with_layout(&sb, "{\"name\": \"mine\", ");
    r.expect_error(
        BAD_INPUT,
        &[
            s(&layout),
            "invalid layout JSON",
            "hint: ",
            "layouts/llama.json",
        ],
    );
    assert_no_output(&sb.out);
}

#[test]
fn layout_file_unknown_field() {
    let sb = Sandbox::new("llama_nvfp4", "layoutfield");
    let (layout, r) = convert_with_layout(
        &sb,
        r#"{"name": "mine", "layer_prefix": "model.layers.{layer}", "linear": []}"#,
    );
    r.expect_error(BAD_INPUT, &[s(&layout), "linear", "hint: "]);
    assert_no_output(&sb.out);
}

#[test]
fn layout_file_shared_input_names_unknown_linear() {
    let sb = Sandbox::new("llama_nvfp4", "layoutshared");
    let (layout, r) = convert_with_layout(
        &sb,
        r#"{"name": "mine", "layer_prefix": "model.layers.{layer}",
            "linears": [{"module": "self_attn.q_proj", "role": "attention"}],
            "shared_input": [["self_attn.q_proj", "self_attn.k_proj"]]}"#,
    );
    r.expect_error(BAD_INPUT, &[s(&layout), "self_attn.k_proj"]);
    assert_no_output(&sb.out);
}

#[test]
fn layout_file_missing() {
    let sb = Sandbox::new("llama_nvfp4", "layoutmissing");
    let layout = sb.tmp.join("no-such-layout.json");
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--layout", s(&layout)]);
    r.expect_error(BAD_INPUT, &[s(&layout)]);
    assert_no_output(&sb.out);
}

/// The contract: every bad-input error says what to do about it.
#[test]
fn every_bad_input_error_has_a_hint() {
    let sb = Sandbox::new("llama_nvfp4", "hints");
    let mut missing = Vec::new();
    let mut check = |what: &str, r: Outcome| {
        assert_eq!(r.code, BAD_INPUT, "{what}: {}", r.stderr);
        if !(r.stderr.contains("hint: ") || r.stderr.contains("fix: ")) {
            missing.push(format!("{what}: {}", r.stderr.trim()));
        }
    };
    let layout = sb.tmp.join("no-such-layout.json");
    check(
        "missing --layout file",
        sb.convert(&["--format", "w4a16_nvfp4", "--layout", s(&layout)]),
    );
    let stats = sb.tmp.join("no-such-amax.safetensors");
    check(
        "missing --stats file",
        sb.convert(&["--format", "nvfp4", "--stats", s(&stats)]),
    );
    let (_, r) = convert_with_layout(
        &sb,
        r#"{"name": "mine", "layer_prefix": "model.layers.{layer}",
            "linears": [{"module": "self_attn.q_proj", "role": "attention"}],
            "shared_input": [["self_attn.q_proj", "self_attn.k_proj"]]}"#,
    );
    check("layout shared_input error", r);
    check(
        "--kv-cache fp8 without k/v amax",
        sb.convert(&[
            "--format",
            "nvfp4",
            "--stats",
            s(&amax("llama_nvfp4")),
            "--kv-cache",
            "fp8",
        ]),
    );
    let bad_stats = sb.tmp.join("bad-amax.safetensors");
    let key = "model.layers.0.self_attn.q_proj.input_quantizer._amax";
    write_safetensors(&bad_stats, &[(key, "I32", vec![], vec![0; 4])]);
    check(
        "statistics value of dtype I32",
        sb.convert(&["--format", "nvfp4", "--stats", s(&bad_stats)]),
    );
    write_safetensors(&bad_stats, &[(key, "F32", vec![2], vec![0; 8])]);
    check(
        "input amax that is not a scalar",
        sb.convert(&["--format", "nvfp4", "--stats", s(&bad_stats)]),
    );
    std::fs::write(sb.file("config.json"), b"{").unwrap();
    check(
        "invalid config.json",
        sb.convert(&["--format", "w4a16_nvfp4"]),
    );
    assert!(
        missing.is_empty(),
        "errors without a hint:\n{}",
        missing.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Command-line syntax (clap)
// ---------------------------------------------------------------------------------------------

#[test]
fn clap_unknown_flag() {
    let tmp = TempDir::new("clapflag");
    let input = golden("llama_nvfp4").join("input");
    let out = tmp.join("out");
    let (code, _, stderr) = common::run(&["convert", s(&input), s(&out), "--bogus"]);
    assert_eq!(code, USAGE, "stderr:\n{stderr}");
    assert!(stderr.contains("--bogus"), "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
    assert_no_output(&out);
}

#[test]
fn clap_bad_format_value() {
    let tmp = TempDir::new("clapformat");
    let input = golden("llama_nvfp4").join("input");
    let out = tmp.join("out");
    let (code, _, stderr) = common::run(&["convert", s(&input), s(&out), "--format", "int4"]);
    assert_eq!(code, USAGE, "stderr:\n{stderr}");
    assert!(stderr.contains("int4"), "stderr:\n{stderr}");
    assert!(stderr.contains("w4a16_nvfp4"), "stderr:\n{stderr}");
    assert_no_output(&out);
}

#[test]
fn clap_missing_output_argument() {
    let input = golden("llama_nvfp4").join("input");
    let (code, _, stderr) = common::run(&["convert", s(&input)]);
    assert_eq!(code, USAGE, "stderr:\n{stderr}");
    assert!(stderr.contains("OUTPUT_DIR"), "stderr:\n{stderr}");
}

#[test]
fn clap_threads_not_a_number() {
    let tmp = TempDir::new("clapthreads");
    let input = golden("llama_nvfp4").join("input");
    let out = tmp.join("out");
    let (code, _, stderr) = common::run(&["convert", s(&input), s(&out), "--threads", "-1"]);
    assert_eq!(code, USAGE, "stderr:\n{stderr}");
    assert_no_output(&out);
}

// ---------------------------------------------------------------------------------------------
// Success, with a report
// ---------------------------------------------------------------------------------------------

/// `--report` is written on every outcome: a failed run after a good one replaces the "ok"
/// with what failed and its exit code; an interrupted run says so too.
#[test]
fn failure_writes_the_report_too() {
    let sb = Sandbox::new("llama_nvfp4", "failreport");
    let report = sb.tmp.join("report.json");
    sb.convert(&["--format", "w4a16_nvfp4", "--report", s(&report), "-q"])
        .expect_success();
    let ok: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(ok["status"], "ok");
    // Same report path, a run that fails in pre-flight (W4A4 without statistics).
    let out2 = sb.tmp.join("out2");
    let r = sq(&[
        "convert",
        s(&sb.input),
        s(&out2),
        "--format",
        "nvfp4",
        "--report",
        s(&report),
        "-q",
    ]);
    r.expect_error(BAD_INPUT, &["input amax"]);
    let failed: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["exit_code"], 3, "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("input amax"),
        "{failed}"
    );
    assert_eq!(failed["output"], s(&out2));
    // A report path the run refuses (inside the input) is not written.
    let inside = sb.input.join("report.json");
    sq(&[
        "convert",
        s(&sb.input),
        s(&sb.tmp.join("out3")),
        "--format",
        "w4a16_nvfp4",
        "--report",
        s(&inside),
    ])
    .expect_error(USAGE, &["--report"]);
    assert!(!inside.exists());
}

#[test]
fn success_writes_output_and_report() {
    let sb = Sandbox::new("llama_nvfp4", "success");
    let report = sb.tmp.join("report.json");
    let r = sb.convert(&[
        "--format",
        "nvfp4",
        "--stats",
        s(&amax("llama_nvfp4")),
        "--report",
        s(&report),
        "-q",
    ]);
    r.expect_success();
    assert!(r.stderr.trim().is_empty(), "--quiet printed:\n{}", r.stderr);
    for f in [
        "config.json",
        "hf_quant_config.json",
        "generation_config.json",
    ] {
        assert!(sb.out.join(f).is_file(), "{f} missing from the output");
    }
    assert_no_sibling(&sb.out);

    let value: Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).expect("the report is valid JSON");
    assert_eq!(value["status"], "ok");
    // Where the time went, per stage (thread-seconds), for tuning a nightly job.
    let stages = value["timings_s"]["stages_thread_s"].as_object().unwrap();
    for stage in [
        "reader_waiting_for_budget",
        "compute",
        "write",
        "write_pwrite",
        "shard_writeback_start",
        "shard_sha256",
        "shard_fsync",
    ] {
        assert!(
            stages[stage].as_f64().unwrap() >= 0.0,
            "{stage}: {stages:?}"
        );
    }
    assert!(stages["compute"].as_f64().unwrap() > 0.0);
    // When the run reached each milestone, in order, and the bytes through the stages.
    let milestones = value["timings_s"]["milestones_s"].as_object().unwrap();
    let at = |m: &str| {
        milestones[m]
            .as_f64()
            .unwrap_or_else(|| panic!("{m}: {milestones:?}"))
    };
    assert!(0.0 < at("first_unit_written"), "{milestones:?}");
    assert!(
        at("first_unit_written") <= at("all_units_written"),
        "{milestones:?}"
    );
    assert!(
        at("all_units_written") <= at("all_shards_sealed"),
        "{milestones:?}"
    );
    let bytes = value["timings_s"]["stages_bytes"].as_object().unwrap();
    let input: u64 = std::fs::read_dir(&sb.input)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let read = bytes["read"].as_u64().unwrap();
    assert!(
        read > 0 && read <= input,
        "read {read} of {input}: {bytes:?}"
    );
    assert!(bytes["written"].as_u64().unwrap() > 0, "{bytes:?}");
    assert_eq!(
        bytes["to_device"], 0,
        "a CPU run copies nothing to a GPU: {bytes:?}"
    );
    let counts = &value["counts"];
    assert_eq!(counts["input_tensors"], 21, "{counts}");
    assert_eq!(counts["quantized_linears"], 14, "{counts}");
    assert_eq!(counts["unquantized_linears"], 0, "{counts}");
    // 14 linears × 4 tensors (weight, weight_scale, weight_scale_2, input_scale) + 7 others.
    assert_eq!(counts["output_tensors"], 14 * 4 + 7, "{counts}");
    assert!(counts["output_bytes"].as_u64().unwrap() > 0, "{counts}");
    let memory = &value["memory"];
    assert!(memory["peak_rss_bytes"].as_u64().unwrap() > 0, "{memory}");
    assert!(
        memory["peak_in_flight_bytes"].as_u64().unwrap() > 0,
        "{memory}"
    );
    assert!(
        memory["largest_unit_bytes"].as_u64().unwrap() > 0,
        "{memory}"
    );
    assert!(value["warnings"].is_array(), "{value}");
    let written = common::load_tensors(&sb.out);
    assert_eq!(written.len(), 14 * 4 + 7);
}

#[test]
fn force_refuses_a_directory_that_is_not_a_checkpoint() {
    let sb = Sandbox::new("llama_nvfp4", "forcenotckpt");
    std::fs::create_dir_all(&sb.out).unwrap();
    std::fs::write(sb.out.join("thesis.tex"), b"precious").unwrap();
    // Without --force the hint does not suggest --force, which would refuse too.
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(
        USAGE,
        &[s(&sb.out), "--force never replaces", "new output path"],
    );
    assert!(!r.stderr.contains("pass --force"), "{}", r.stderr);
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--force"]);
    r.expect_error(USAGE, &[s(&sb.out), "refusing"]);
    assert_eq!(
        std::fs::read(sb.out.join("thesis.tex")).unwrap(),
        b"precious"
    );
    assert_no_sibling(&sb.out);
}

#[test]
fn format_is_required_for_convert() {
    let sb = Sandbox::new("llama_nvfp4", "noformat");
    let r = sb.convert(&[]);
    r.expect_error(USAGE, &["--format"]);
    assert!(!sb.out.exists());
}

#[test]
fn sigterm_stops_cleanly_with_exit_143() {
    let tmp = TempDir::new("sigterm");
    let spec = shardquant::synthetic::SyntheticSpec {
        layers: 12,
        hidden: 1024,
        intermediate: 4096,
        shard_size: 64 << 20,
        ..Default::default()
    };
    let input = tmp.join("in");
    spec.write(&input).unwrap();
    let out = tmp.join("out");
    let child = std::process::Command::new(common::bin())
        .args([
            "convert",
            s(&input),
            s(&out),
            "--format",
            "w4a16_nvfp4",
            "--threads",
            "1",
            "--max-memory",
            "1MiB",
            "-q",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    // SAFETY: sending SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert_eq!(status.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!out.exists());
    assert_no_sibling(&out);
}

#[test]
fn a_second_run_on_the_same_output_is_refused() {
    use std::os::fd::AsRawFd;
    let sb = Sandbox::new("llama_nvfp4", "locked");
    // Another run holds the lock (this test process plays it).
    let lock_path = sb.out.parent().unwrap().join(".out.shardquant.lock");
    std::fs::write(&lock_path, "4242").unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
        .unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(1, &["another shardquant run (pid 4242)", "hint: "]);
    // Nothing written; the lock file is the other run's and stays.
    assert!(sb.out.symlink_metadata().is_err());
    assert!(lock_path.exists());
    drop(file);
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_success();
    assert!(
        !lock_path.exists(),
        "the lock file is removed when the run ends"
    );
    assert_no_sibling(&sb.out);
}

/// `-q` hides progress and info, never warnings; `-qq` silences warnings too; `--check -q`
/// prints nothing when up to date; log lines off a terminal carry a UTC timestamp.
#[test]
fn quiet_is_not_blind() {
    let sb = Sandbox::new("llama_nvfp4", "quietwarn");
    let args = ["--format", "w4a16_nvfp4", "--exclude", "no.such.module"];
    let r = sb.convert(&[&args[..], &["-q"]].concat());
    r.expect_success();
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("warning: --exclude pattern(s) matched no linear"))
        .unwrap_or_else(|| panic!("the warning is hidden by -q:\n{}", r.stderr));
    // 2026-12-03T08:20:01Z shardquant: warning: ...
    let (stamp, rest) = line.split_once(' ').unwrap();
    assert!(
        stamp.len() == 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "{line}"
    );
    assert!(rest.starts_with("shardquant: warning: "), "{line}");
    assert!(
        !r.stderr.contains("wrote "),
        "info shown with -q:\n{}",
        r.stderr
    );

    let sb = Sandbox::new("llama_nvfp4", "quietwarn2");
    let r = sb.convert(&[&args[..], &["-qq"]].concat());
    r.expect_success();
    assert!(r.stderr.trim().is_empty(), "-qq printed:\n{}", r.stderr);
    let r = sb.convert(&[&args[..], &["--check", "-q"]].concat());
    r.expect_success();
    assert!(
        r.stdout.trim().is_empty() && r.stderr.trim().is_empty(),
        "--check -q printed: {} {}",
        r.stdout,
        r.stderr
    );
}

/// `stats inspect --model` shows coverage (KV amax included) and exits 3 when the file covers
/// none of the model's linears.
#[test]
fn stats_inspect_exits_3_when_nothing_is_covered() {
    let tmp = TempDir::new("statscover");
    let foreign = tmp.join("foreign.safetensors");
    write_safetensors(
        &foreign,
        &[(
            "transformer.h.0.attn.c_attn.input_quantizer._amax",
            "F32",
            vec![],
            1.5f32.to_le_bytes().to_vec(),
        )],
    );
    let model = golden("llama_nvfp4").join("input");
    let r = sq(&["stats", "inspect", s(&foreign), "--model", s(&model)]);
    r.expect_error(BAD_INPUT, &["cover none"]);
    assert!(
        r.stdout.contains("input amax:            0 of 14"),
        "{}",
        r.stdout
    );
    let r = sq(&[
        "stats",
        "inspect",
        s(&amax("llama_nvfp4")),
        "--model",
        s(&model),
    ]);
    r.expect_success();
    assert!(r.stdout.contains("KV-cache amax"), "{}", r.stdout);
}

/// Each subcommand's help lists its own exit codes; `--stats` help names the formats read; a
/// clap error has the same "shardquant: error:" prefix as ours, exit 2.
#[test]
fn help_and_error_style() {
    let convert = sq(&["convert", "--help"]);
    convert.expect_success();
    assert!(
        convert.stdout.contains("10   --check"),
        "{}",
        convert.stdout
    );
    assert!(convert.stdout.contains("imatrix"), "{}", convert.stdout);
    let verify = sq(&["verify", "--help"]);
    assert!(
        verify.stdout.contains("a problem was found"),
        "{}",
        verify.stdout
    );
    assert!(!verify.stdout.contains("--check"), "{}", verify.stdout);
    let inspect = sq(&["inspect", "--help"]);
    assert!(
        inspect.stdout.contains("would stop in pre-flight"),
        "{}",
        inspect.stdout
    );
    let r = sq(&["convert", "--format", "bogus", "a", "b"]);
    r.expect_error(USAGE, &["shardquant: error: invalid value 'bogus'"]);
}

/// `shardquant layouts` lists every shipped layout; `layouts NAME` prints one that `--layout`
/// accepts; an unknown name is a usage error.
#[test]
fn layouts_lists_and_prints() {
    let r = sq(&["layouts"]);
    r.expect_success();
    for name in ["llama", "gpt_oss", "qwen3_vl_moe", "GptOssForCausalLM"] {
        assert!(r.stdout.contains(name), "{name}: {}", r.stdout);
    }
    let r = sq(&["layouts", "gpt_oss"]);
    r.expect_success();
    let layout = shardquant::input::layout::Layout::from_json(&r.stdout, "printed").unwrap();
    assert_eq!(layout.name, "gpt_oss");
    sq(&["layouts", "nope"]).expect_error(USAGE, &["no shipped layout named 'nope'"]);
}

/// `--json` for scripts: verify, inspect and convert --check print JSON with the same exit codes.
#[test]
fn json_outputs() {
    let golden_out = golden("llama_nvfp4").join("modelopt");
    let r = sq(&["verify", s(&golden_out), "--json"]);
    r.expect_success();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["linears"].as_u64()),
        (Some(true), Some(14))
    );

    let input = golden("llama_nvfp4").join("input");
    let r = sq(&["inspect", s(&input), "--format", "w4a16_nvfp4", "--json"]);
    r.expect_success();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["layout"], "llama");
    assert_eq!(
        v["plan"]["exclude_modules"],
        serde_json::json!(["lm_head", "model.embed_tokens"])
    );
    let r = sq(&["inspect", s(&input), "--format", "nvfp4", "--json"]);
    assert_eq!(r.code, BAD_INPUT);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["would_stop"].as_str().unwrap().contains("input amax"));

    let r = sq(&[
        "stats",
        "inspect",
        s(&amax("qwen3moe_nvfp4")),
        "--model",
        s(&golden("qwen3moe_nvfp4").join("input")),
        "--json",
    ]);
    r.expect_success();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["coverage"]["input_amax"], 56, "{v}");

    let sb = Sandbox::new("llama_nvfp4", "checkjson");
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--check", "--json"]);
    assert_eq!(r.code, 10);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["up_to_date"], false);
    sb.convert(&["--format", "w4a16_nvfp4", "-q"])
        .expect_success();
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--check", "--json"]);
    r.expect_success();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"up_to_date": true, "reason": null}));
}

/// Shell completions, the man page, and `-v`.
#[test]
fn completions_man_and_verbose() {
    for shell in ["bash", "zsh", "fish"] {
        let r = sq(&["completions", shell]);
        r.expect_success();
        assert!(
            r.stdout.contains("convert") && r.stdout.contains("format"),
            "{shell}"
        );
    }
    let r = sq(&["man"]);
    r.expect_success();
    assert!(r.stdout.contains(".TH shardquant"), "{}", r.stdout);
    let sb = Sandbox::new("llama_nvfp4", "verbose");
    let r = sb.convert(&["--format", "w4a16_nvfp4", "-v"]);
    r.expect_success();
    assert!(r.stderr.contains("layout llama (shipped)"), "{}", r.stderr);
    assert!(r.stderr.contains("passes through lm_head"), "{}", r.stderr);
    sb.convert(&["--format", "w4a16_nvfp4", "-v", "-q", "--force"])
        .expect_error(USAGE, &["cannot be used with"]);
}

/// Without -q the run names its finishing phase and says the size in a unit that shows it.
#[test]
fn finishing_phase_and_sizes_are_shown() {
    let sb = Sandbox::new("llama_nvfp4", "finishing");
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_success();
    assert!(
        r.stderr
            .contains("finishing: checksums, metadata and publishing"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(" kB) in "), "{}", r.stderr);
    assert!(!r.stderr.contains("0.00 GB"), "{}", r.stderr);
}
