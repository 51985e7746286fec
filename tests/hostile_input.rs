//! Inputs that lie (issue 7): shard headers, indexes and statistics files whose contents
//! contradict themselves or the model, and weights holding NaN or infinity. Each run must end
//! in a clear error naming the file (and the tensor or key) with exit code 3, never a panic or
//! a hang, leave nothing at the output path and leave the input as it was; or, for non-finite
//! weights with `--allow-nonfinite`, convert deterministically with the documented codes.

mod common;

use common::cli::*;
use common::load_tensors;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The shard of the llama fixture holding layer 0's attention: k_proj [32, 64] at [0, 4096],
/// o_proj [64, 64] at [4096, 12288], q_proj [64, 64], v_proj [32, 64] at [20480, 24576].
const ATTN_SHARD: &str = "model-00002-of-00007.safetensors";
const K: &str = "model.layers.0.self_attn.k_proj.weight";
const O: &str = "model.layers.0.self_attn.o_proj.weight";
const V: &str = "model.layers.0.self_attn.v_proj.weight";

/// Runs a weight-only conversion of a sandbox whose input `edit` broke; checks exit 3, that
/// stderr mentions `needles`, that nothing is left at the output and that the input was not
/// touched by the run.
fn refused(tag: &str, edit: impl FnOnce(&Sandbox), needles: &[&str]) {
    let sb = Sandbox::new("llama_nvfp4", tag);
    edit(&sb);
    let before = snapshot(&sb.input);
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, needles);
    assert_no_output(&sb.out);
    assert_unchanged(&sb.input, &before);
}

/// The header of the attention shard, as text.
fn attn_header(sb: &Sandbox) -> (PathBuf, ShardFile) {
    let path = sb.file(ATTN_SHARD);
    let file = ShardFile::read(&path);
    (path, file)
}

// ---------------------------------------------------------------------------------------------
// Shard headers
// ---------------------------------------------------------------------------------------------

#[test]
fn header_offsets_past_the_end_of_the_file() {
    let sb = Sandbox::new("llama_nvfp4", "pastend");
    let (path, mut f) = attn_header(&sb);
    // The last tensor claims twice its rows, consistently with its offsets: the data would end
    // 4096 bytes past the end of the file.
    f.header[V]["shape"] = serde_json::json!([64, 64]);
    f.header[V]["data_offsets"] = serde_json::json!([20480, 28672]);
    f.write(&path);
    let before = snapshot(&sb.input);
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, &[s(&path), "truncated", V, REDOWNLOAD]);
    assert_no_output(&sb.out);
    assert_unchanged(&sb.input, &before);
}

#[test]
fn header_offsets_overlap() {
    let file = std::cell::RefCell::new(PathBuf::new());
    refused(
        "overlap2",
        |sb| {
            let (path, mut f) = attn_header(sb);
            // o_proj starts 96 bytes before k_proj ends.
            f.header[O]["data_offsets"] = serde_json::json!([4000, 12192]);
            f.write(&path);
            *file.borrow_mut() = path;
        },
        &[ATTN_SHARD, O, "overlaps", K, "ends at 4096", REDOWNLOAD],
    );
}

#[test]
fn header_length_larger_than_the_file() {
    refused(
        "hdrlen",
        |sb| {
            let path = sb.file(ATTN_SHARD);
            let len = std::fs::metadata(&path).unwrap().len();
            patch_file(&path, 0, &(len + 1000).to_le_bytes());
        },
        &[
            ATTN_SHARD,
            "header length field says 26024 bytes, but the file has 25024 bytes",
            REDOWNLOAD,
        ],
    );
}

#[test]
fn header_dtype_does_not_match_the_byte_length() {
    refused(
        "dtype",
        |sb| {
            let (path, mut f) = attn_header(sb);
            f.header[K]["dtype"] = Value::String("F32".into());
            f.write(&path);
        },
        &[
            ATTN_SHARD,
            K,
            "F32 with shape [32, 64] needs 8192 bytes, but its data_offsets [0, 4096] give 4096",
            REDOWNLOAD,
        ],
    );
}

#[test]
fn header_is_not_utf8() {
    refused(
        "utf8",
        |sb| {
            let (path, f) = attn_header(sb);
            let mut json = serde_json::to_vec(&f.header).unwrap();
            // Turn the `k` of `k_proj` into an invalid UTF-8 byte.
            let at = json.windows(6).position(|w| w == b"k_proj").unwrap();
            json[at] = 0xFF;
            write_raw(&path, &json, &f.data);
        },
        &[ATTN_SHARD, "invalid UTF-8", REDOWNLOAD],
    );
}

/// The same tensor twice in one header, identical: every JSON reader keeps one of them
/// silently, so the header is refused rather than read one way or the other.
#[test]
fn header_names_a_tensor_twice() {
    refused(
        "dupname",
        |sb| {
            let (path, f) = attn_header(sb);
            let json = String::from_utf8(serde_json::to_vec(&f.header).unwrap()).unwrap();
            let entry = format!("\"{K}\":{}", serde_json::to_string(&f.header[K]).unwrap());
            let doubled = json.replacen('{', &format!("{{{entry},"), 1);
            write_raw(&path, doubled.as_bytes(), &f.data);
        },
        &[ATTN_SHARD, "gives", K, "twice", REDOWNLOAD],
    );
}

#[test]
fn header_gives_one_name_two_dtypes() {
    refused(
        "dupdtype",
        |sb| {
            let (path, f) = attn_header(sb);
            let json = String::from_utf8(serde_json::to_vec(&f.header).unwrap()).unwrap();
            let mut other = f.header[K].clone();
            other["dtype"] = Value::String("F16".into());
            let entry = format!("\"{K}\":{}", serde_json::to_string(&other).unwrap());
            let doubled = json.replacen('{', &format!("{{{entry},"), 1);
            write_raw(&path, doubled.as_bytes(), &f.data);
        },
        &[ATTN_SHARD, K, "twice"],
    );
}

// ---------------------------------------------------------------------------------------------
// The index
// ---------------------------------------------------------------------------------------------

#[test]
fn index_lists_a_tensor_twice() {
    refused(
        "dupindex",
        |sb| {
            let path = sb.file("model.safetensors.index.json");
            let text = std::fs::read_to_string(&path).unwrap();
            // The second entry names another shard: which one holds the tensor?
            let doubled = text.replacen(
                "\"weight_map\": {",
                &format!("\"weight_map\": {{\n    \"{K}\": \"model-00007-of-00007.safetensors\","),
                1,
            );
            assert_ne!(doubled, text);
            std::fs::write(&path, doubled).unwrap();
        },
        &[
            "model.safetensors.index.json",
            "\"weight_map\" lists tensor",
            K,
            "twice",
        ],
    );
}

#[test]
fn index_gives_weight_map_twice() {
    refused(
        "dupwm",
        |sb| {
            let path = sb.file("model.safetensors.index.json");
            let text = std::fs::read_to_string(&path).unwrap();
            let doubled = text.replacen('{', "{\"weight_map\": {},", 1);
            std::fs::write(&path, doubled).unwrap();
        },
        &["model.safetensors.index.json", "\"weight_map\" twice"],
    );
}

// ---------------------------------------------------------------------------------------------
// Statistics whose values are impossible
// ---------------------------------------------------------------------------------------------

/// A copy of the llama amax file with `key` set to `value`.
fn amax_with(sb: &Sandbox, key: &str, value: f32) -> PathBuf {
    let src = amax("llama_nvfp4");
    let f = ShardFile::read(&src);
    let r = f.range(key);
    let path = sb.tmp.join("amax.safetensors");
    std::fs::copy(&src, &path).unwrap();
    patch_file(
        &path,
        ShardFile::data_start(&src) + r.start,
        &value.to_le_bytes(),
    );
    path
}

fn stats_refused(tag: &str, key: &str, value: f32, extra: &[&str], needles: &[&str]) {
    let sb = Sandbox::new("llama_nvfp4", tag);
    let stats = amax_with(&sb, key, value);
    let before = snapshot(&sb.input);
    let stats_before = std::fs::read(&stats).unwrap();
    let mut args = vec!["--format", "nvfp4", "--stats", s(&stats)];
    args.extend_from_slice(extra);
    let r = sb.convert(&args);
    let mut all = vec![s(&stats), key];
    all.extend_from_slice(needles);
    r.expect_error(BAD_INPUT, &all);
    assert_no_output(&sb.out);
    assert_unchanged(&sb.input, &before);
    assert_eq!(std::fs::read(&stats).unwrap(), stats_before);
}

const Q_INPUT: &str = "model.layers.0.self_attn.q_proj.input_quantizer._amax";
const O_INPUT: &str = "model.layers.0.self_attn.o_proj.input_quantizer._amax";

#[test]
fn stats_nan_input_amax() {
    stats_refused(
        "statsnan",
        Q_INPUT,
        f32::NAN,
        &[],
        &["is NaN", "finite and not negative", "hint: "],
    );
}

#[test]
fn stats_negative_input_amax() {
    stats_refused(
        "statsneg",
        Q_INPUT,
        -1.5,
        &[],
        &["is -1.5", "finite and not negative"],
    );
}

#[test]
fn stats_infinite_weight_amax() {
    stats_refused(
        "statsinf",
        "model.layers.1.mlp.up_proj.weight_quantizer._amax",
        f32::INFINITY,
        &["--weight-amax", "stats"],
        &["is inf"],
    );
}

/// A zero amax means "saw no tokens": treated as missing, so a linear that needs it (o_proj
/// shares its input with no other linear) stops the run, and the error says why.
#[test]
fn stats_zero_input_amax() {
    stats_refused(
        "statszero",
        O_INPUT,
        0.0,
        &[],
        &[
            "1 quantized linear(s) have no input amax",
            "model.layers.0.self_attn.o_proj",
            "the statistics give zero, treated as missing",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// NaN and infinite weights
// ---------------------------------------------------------------------------------------------

/// down_proj of layer 0 in the llama fixtures: [64, 128] BF16.
const DOWN: &str = "model.layers.0.mlp.down_proj.weight";
const DOWN_COLS: usize = 128;

/// Writes BF16 `bits` at [row, col] of `tensor` in the sandbox's input.
fn poke(sb: &Sandbox, tensor: &str, cols: usize, (row, col): (usize, usize), bits: u16) {
    let shard = sb.shard_of(tensor);
    let f = ShardFile::read(&shard);
    let at = ShardFile::data_start(&shard) + f.range(tensor).start + (row * cols + col) * 2;
    patch_file(&shard, at, &bits.to_le_bytes());
}

/// Where the tests put non-finite elements (inside a [32, 64] weight, so both tests can use
/// them): (position, BF16 bits).
const POKES: [((usize, usize), u16); 4] = [
    ((3, 5), 0x7F80),   // +inf
    ((10, 0), 0xFF80),  // -inf
    ((20, 7), 0x7FC0),  // NaN
    ((21, 60), 0xFFC1), // negative NaN with a payload
];

#[test]
fn nan_weight_is_refused_and_the_hint_names_the_flag() {
    let sb = Sandbox::new("llama_nvfp4", "nanflag");
    poke(&sb, DOWN, DOWN_COLS, (40, 7), 0x7FC0);
    let before = snapshot(&sb.input);
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&amax("llama_nvfp4"))]);
    r.expect_error(BAD_INPUT, &[DOWN, "[40, 7]", "NaN", "--allow-nonfinite"]);
    assert_no_output(&sb.out);
    assert_unchanged(&sb.input, &before);
}

/// With the weight amax taken from the statistics the weight is still scanned: a NaN is found.
#[test]
fn nan_weight_is_found_with_weight_amax_from_statistics() {
    let sb = Sandbox::new("llama_nvfp4", "nanwstats");
    poke(&sb, DOWN, DOWN_COLS, (2, 3), 0x7FC0);
    let r = sb.convert(&[
        "--format",
        "nvfp4",
        "--stats",
        s(&amax("llama_nvfp4")),
        "--weight-amax",
        "stats",
    ]);
    r.expect_error(BAD_INPUT, &[DOWN, "[2, 3]", "NaN or infinite"]);
    assert_no_output(&sb.out);
}

/// Converts `case` twice: once with the pokes and `--allow-nonfinite`, once with zeros at the
/// same places and no flag. Returns (with pokes, with zeros, the first run's report).
fn convert_pair(
    case: &str,
    format: &str,
    tensor: &str,
    cols: usize,
) -> (
    std::collections::BTreeMap<String, common::Tensor>,
    std::collections::BTreeMap<String, common::Tensor>,
    Value,
) {
    let sb = Sandbox::new(case, &format!("allow-{format}"));
    let zeros = Sandbox::new(case, &format!("zeros-{format}"));
    for (at, bits) in POKES {
        poke(&sb, tensor, cols, at, bits);
        poke(&zeros, tensor, cols, at, 0);
    }
    let report = sb.tmp.join("report.json");
    let stats = amax(case);
    let r = sb.convert(&[
        "--format",
        format,
        "--stats",
        s(&stats),
        "--allow-nonfinite",
        "--report",
        s(&report),
    ]);
    r.expect_success();
    r.expect_mentions(&[
        "warning: --allow-nonfinite",
        tensor,
        "2 NaN and 2 infinite element(s), first at [3, 5]",
    ]);
    // Deterministic: again, with another thread count, the same bytes.
    let again = sb.tmp.join("again");
    let r2 = sq(&[
        "convert",
        s(&sb.input),
        s(&again),
        "--format",
        format,
        "--stats",
        s(&stats),
        "--allow-nonfinite",
        "--threads",
        "1",
        "-q",
    ]);
    r2.expect_success();
    common::assert_same_tensors(&again, &sb.out);
    let z = zeros.convert(&["--format", format, "--stats", s(&stats), "-q"]);
    z.expect_success();
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (load_tensors(&sb.out), load_tensors(&zeros.out), report)
}

/// Every output tensor equal except `tensor`, whose bytes differ at most where `changed` says.
fn differ_only_at(
    a: &std::collections::BTreeMap<String, common::Tensor>,
    b: &std::collections::BTreeMap<String, common::Tensor>,
    tensor: &str,
    changed: &[usize],
) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, (dt, shape, bytes)) in a {
        let (dt2, shape2, bytes2) = &b[name];
        assert_eq!((dt, shape), (dt2, shape2), "{name}");
        let diff: Vec<usize> = (0..bytes.len())
            .filter(|&i| bytes[i] != bytes2[i])
            .collect();
        if name == tensor {
            assert!(
                diff.iter().all(|i| changed.contains(i)),
                "{name}: bytes {diff:?} differ, only {changed:?} may"
            );
        } else {
            assert!(diff.is_empty(), "{name}: {} bytes differ", diff.len());
        }
    }
}

fn report_lists(report: &Value, tensor: &str) {
    let list = report["nonfinite_weights"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{report}");
    assert_eq!(list[0]["tensor"], tensor);
    assert_eq!(list[0]["nan"], 2);
    assert_eq!(list[0]["inf"], 2);
    assert_eq!(list[0]["first"], serde_json::json!([3, 5]));
    assert_eq!(report["options"]["allow_nonfinite"], true);
}

/// NVFP4: the weight is quantized as if its NaN / inf elements were zero (same scales as the
/// zeroed input, byte for byte), then those nibbles are 0 (NaN), 7 (+inf) and F (-inf).
#[test]
fn allow_nonfinite_nvfp4() {
    let (ours, zeros, report) = convert_pair("llama_nvfp4", "nvfp4", DOWN, DOWN_COLS);
    report_lists(&report, DOWN);
    let nibble = |bytes: &[u8], (r, c): (usize, usize)| {
        let i = r * DOWN_COLS + c;
        (bytes[i / 2] >> (4 * (i % 2))) & 0xF
    };
    let packed = &ours[DOWN].2;
    let expected = [0x7, 0xF, 0x0, 0x0];
    for ((at, _), want) in POKES.iter().zip(expected) {
        assert_eq!(nibble(packed, *at), want, "element {at:?}");
    }
    let changed: Vec<usize> = POKES
        .iter()
        .map(|((r, c), _)| (r * DOWN_COLS + c) / 2)
        .collect();
    differ_only_at(&ours, &zeros, DOWN, &changed);
}

/// FP8: NaN stays NaN (0x7F, 0xFF for a negative one), infinities saturate to ±448.
#[test]
fn allow_nonfinite_fp8() {
    let tensor = "model.layers.1.self_attn.v_proj.weight"; // [32, 64] BF16
    let cols = 64;
    let (ours, zeros, report) = convert_pair("llama_fp8", "fp8", tensor, cols);
    report_lists(&report, tensor);
    let weight = &ours[tensor].2;
    let expected = [0x7E, 0xFE, 0x7F, 0xFF];
    for (((r, c), _), want) in POKES.iter().zip(expected) {
        let i = r * cols + c;
        assert_eq!(weight[i], want, "element {i}");
    }
    let changed: Vec<usize> = POKES.iter().map(|((r, c), _)| r * cols + c).collect();
    differ_only_at(&ours, &zeros, tensor, &changed);
}

/// A weight with nothing finite but zeros cannot be scaled, flag or not.
#[test]
fn allow_nonfinite_with_no_finite_value() {
    let sb = Sandbox::new("llama_nvfp4", "allnan");
    let shard = sb.shard_of(O);
    let f = ShardFile::read(&shard);
    let r = f.range(O);
    let nan: Vec<u8> = std::iter::repeat_n(0x7FC0u16.to_le_bytes(), r.len() / 2)
        .flatten()
        .collect();
    patch_file(&shard, ShardFile::data_start(&shard) + r.start, &nan);
    let out = sb.convert(&["--format", "w4a16_nvfp4", "--allow-nonfinite"]);
    out.expect_error(
        BAD_INPUT,
        &[O, "all zeros (its finite elements", "--exclude"],
    );
    assert_no_output(&sb.out);
}

/// The report of a run without non-finite weights has an empty list.
#[test]
fn report_lists_no_nonfinite_weight_when_there_is_none() {
    let sb = Sandbox::new("llama_nvfp4", "nonf-none");
    let report = sb.tmp.join("r.json");
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--report", s(&report), "-q"]);
    r.expect_success();
    let v: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(v["nonfinite_weights"], serde_json::json!([]));
    assert_eq!(v["options"]["allow_nonfinite"], false);
    assert!(Path::new(&sb.out).join("shardquant.json").is_file());
}

/// Statistics and layout files named on the command line that are FIFOs are refused, never
/// opened (opening a FIFO blocks until a writer comes: the run would hang).
#[test]
fn fifo_statistics_and_layout_files_are_refused_without_hanging() {
    let sb = Sandbox::new("llama_nvfp4", "fifostats");
    let fifo = sb.tmp.join("amax.safetensors");
    mkfifo(&fifo);
    for extra in [&[][..], &["--stats-format", "modelopt"][..]] {
        let mut args = vec!["--format", "nvfp4", "--stats", s(&fifo)];
        args.extend_from_slice(extra);
        sb.convert(&args)
            .expect_error(BAD_INPUT, &[s(&fifo), "not a regular file"]);
        assert_no_output(&sb.out);
    }
    let r = sq(&["stats", "inspect", s(&fifo), "--stats-format", "modelopt"]);
    r.expect_error(BAD_INPUT, &[s(&fifo), "not a regular file"]);
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--layout", s(&fifo)]);
    r.expect_error(BAD_INPUT, &[s(&fifo), "not a regular file"]);
    assert_no_output(&sb.out);
}
