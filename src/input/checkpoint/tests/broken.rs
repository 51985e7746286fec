//! Broken checkpoints: every problem `Checkpoint::open` detects, alone and together.

use std::path::Path;

use serde_json::{json, Value};

use super::{bad_input_text, copy_dir, golden, raw_file, read_json, temp_dir, write_json, TempDir};
use crate::input::checkpoint::Checkpoint;

const S1: &str = "model-00001-of-00007.safetensors";
const S2: &str = "model-00002-of-00007.safetensors";
const S3: &str = "model-00003-of-00007.safetensors";
const S4: &str = "model-00004-of-00007.safetensors";
const S7: &str = "model-00007-of-00007.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// A writable copy of the llama input (7 shards + index).
fn llama() -> TempDir {
    copy_dir(&golden("llama_nvfp4").join("input"), "broken")
}

/// Applies `f` to the index's weight_map.
fn edit_index(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut index = read_json(&dir.join(INDEX));
    f(index["weight_map"].as_object_mut().unwrap());
    write_json(&dir.join(INDEX), &index);
}

/// The error text for opening `dir`, checked to be BadInput.
fn open_err(dir: &Path) -> String {
    bad_input_text(Checkpoint::open(dir))
}

fn assert_has(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "missing {:?} in:\n{}", p, text);
    }
}

/// The last tensor (by offset) of a golden llama input shard.
fn last_tensor_of(shard: &str) -> String {
    let ckpt = Checkpoint::open(&golden("llama_nvfp4").join("input")).unwrap();
    let si = ckpt
        .shards()
        .iter()
        .position(|s| s.path.ends_with(shard))
        .unwrap();
    ckpt.tensors()
        .iter()
        .rfind(|t| t.shard == si)
        .unwrap()
        .name
        .clone()
}

#[test]
fn missing_shard() {
    let d = llama();
    std::fs::remove_file(d.path().join(S3)).unwrap();
    let text = open_err(d.path());
    let path = d.path().join(S3).display().to_string();
    assert_has(
        &text,
        &[
            &path,
            "missing",
            "model.layers.0.mlp.gate_proj.weight",
            "hint: ",
            "download",
        ],
    );
}

#[test]
fn tensor_in_index_but_not_in_its_shard() {
    let d = llama();
    edit_index(d.path(), |m| {
        m.insert("model.layers.9.mlp.up_proj.weight".into(), json!(S2));
    });
    let text = open_err(d.path());
    let path = d.path().join(S2).display().to_string();
    assert_has(&text, &[&path, "1 tensor(s) in this file that the file does not contain: `model.layers.9.mlp.up_proj.weight`", "broken or mixed download"]);
}

#[test]
fn index_names_the_wrong_shard() {
    let d = llama();
    edit_index(d.path(), |m| {
        m.insert("lm_head.weight".into(), json!(S1));
    });
    let text = open_err(d.path());
    let s1 = d.path().join(S1).display().to_string();
    let s7 = d.path().join(S7).display().to_string();
    assert_has(
        &text,
        &[&s1, "`lm_head.weight`", &format!("it is in {}", s7)],
    );
}

#[test]
fn tensor_in_shard_but_not_in_index() {
    let d = llama();
    edit_index(d.path(), |m| {
        m.shift_remove("model.norm.weight");
    });
    let text = open_err(d.path());
    let path = d
        .path()
        .join("model-00006-of-00007.safetensors")
        .display()
        .to_string();
    assert_has(&text, &[&path, "contains 1 tensor(s) that model.safetensors.index.json does not list: `model.norm.weight`"]);
}

#[test]
fn same_tensor_in_two_shards() {
    let d = llama();
    // Shard 7 gets a second copy of the embedding from shard 1, next to lm_head.
    let src = Checkpoint::open(&golden("llama_nvfp4").join("input")).unwrap();
    let (lm, emb) = (
        src.get("lm_head.weight").unwrap(),
        src.get("model.embed_tokens.weight").unwrap(),
    );
    let header = format!(
        r#"{{"lm_head.weight":{{"dtype":"BF16","shape":[256,64],"data_offsets":[0,{a}]}},"model.embed_tokens.weight":{{"dtype":"BF16","shape":[256,64],"data_offsets":[{a},{b}]}}}}"#,
        a = lm.len,
        b = lm.len + emb.len
    );
    let data = [src.bytes(lm), src.bytes(emb)].concat();
    std::fs::write(d.path().join(S7), raw_file(&header, &data)).unwrap();
    let text = open_err(d.path());
    let (p1, p7) = (
        d.path().join(S1).display().to_string(),
        d.path().join(S7).display().to_string(),
    );
    assert_has(
        &text,
        &[
            "`model.embed_tokens.weight`",
            "more than one shard",
            &p1,
            &p7,
        ],
    );
}

#[test]
fn truncated_shard() {
    let d = llama();
    let path = d.path().join(S4);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 100).unwrap();
    let text = open_err(d.path());
    assert_has(
        &text,
        &[
            &path.display().to_string(),
            "truncated",
            "100 missing",
            &format!("`{}`", last_tensor_of(S4)),
            "download",
        ],
    );
}

#[test]
fn corrupt_header() {
    let d = llama();
    let path = d.path().join(S2);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = b'X'; // the opening brace of the JSON header
    std::fs::write(&path, bytes).unwrap();
    let text = open_err(d.path());
    assert_has(
        &text,
        &[&path.display().to_string(), "invalid JSON in header"],
    );
}

#[test]
fn header_length_beyond_the_file() {
    let d = llama();
    let path = d.path().join(S2);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(&1_000_000u64.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    assert_has(
        &open_err(d.path()),
        &[&path.display().to_string(), "says 1000000 bytes"],
    );
}

#[test]
fn empty_html_and_lfs_pointer_shards() {
    let d = llama();
    std::fs::write(d.path().join(S1), b"").unwrap();
    std::fs::write(
        d.path().join(S3),
        b"\n<!doctype html><html>Access denied</html>",
    )
    .unwrap();
    std::fs::write(
        d.path().join(S2),
        b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 32896\n",
    )
    .unwrap();
    let text = open_err(d.path());
    assert_has(
        &text,
        &[
            "has 3 problems",
            "too short",
            "Git LFS pointer",
            "git lfs pull",
            S1,
            S2,
            S3,
            "HTML",
        ],
    );
}

/// A single-file checkpoint made of `header` and `data`.
fn single(header: &str, data: &[u8]) -> TempDir {
    let d = temp_dir("single-broken");
    std::fs::write(d.path().join("model.safetensors"), raw_file(header, data)).unwrap();
    d
}

#[test]
fn overlapping_offsets() {
    let d = single(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        &[0; 12],
    );
    let text = open_err(d.path());
    let path = d.path().join("model.safetensors").display().to_string();
    assert_has(&text, &[&path, "`b`", "overlaps `a`", "ends at 8"]);
}

#[test]
fn gap_between_tensors() {
    let d = single(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}"#,
        &[0; 16],
    );
    assert_has(&open_err(d.path()), &["`b`", "gap of 4 bytes after `a`"]);
}

#[test]
fn length_not_matching_dtype_and_shape() {
    let d = single(
        r#"{"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}}"#,
        &[0; 8],
    );
    assert_has(
        &open_err(d.path()),
        &["model.safetensors", "`w`", "needs 6 bytes", "give 8"],
    );
}

#[test]
fn trailing_bytes_after_the_data() {
    let d = single(
        r#"{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
        &[0; 9],
    );
    assert_has(
        &open_err(d.path()),
        &["model.safetensors", "5 unexpected bytes"],
    );
}

#[test]
fn unknown_dtype_in_header_is_reported_but_unusual_dtypes_are_fine() {
    let d = single(
        r#"{"w":{"dtype":"Q4_K","shape":[4],"data_offsets":[0,4]}}"#,
        &[0; 4],
    );
    assert_has(
        &open_err(d.path()),
        &[
            "model.safetensors",
            "invalid JSON in header: unknown variant `Q4_K`",
        ],
    );
    let d = single(
        r#"{"a":{"dtype":"F8_E8M0","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"I64","shape":[],"data_offsets":[4,12]},"c":{"dtype":"F4","shape":[2,2],"data_offsets":[12,14]}}"#,
        &[0; 14],
    );
    let ckpt = Checkpoint::open(d.path()).unwrap();
    assert_eq!(
        ckpt.tensors().iter().map(|t| t.len).collect::<Vec<_>>(),
        [4, 8, 2]
    );
}

#[test]
fn every_problem_is_listed_at_once() {
    let d = llama();
    std::fs::remove_file(d.path().join(S3)).unwrap();
    let s4 = d.path().join(S4);
    let len = std::fs::metadata(&s4).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&s4)
        .unwrap()
        .set_len(len - 2)
        .unwrap();
    let s2 = d.path().join(S2);
    let mut bytes = std::fs::read(&s2).unwrap();
    bytes[8] = b'X';
    std::fs::write(&s2, bytes).unwrap();
    edit_index(d.path(), |m| {
        m.insert("extra.weight".into(), json!(S1));
        m.shift_remove("lm_head.weight");
    });
    let text = open_err(d.path());
    assert_has(
        &text,
        &[
            "has 5 problems",
            &d.path().join(S3).display().to_string(),
            &s4.display().to_string(),
            &s2.display().to_string(),
            "`extra.weight`",
            "`lm_head.weight`",
            "truncated",
            "invalid JSON",
        ],
    );
    // One hint per kind of fix, not one per problem.
    assert_eq!(text.matches("hint: ").count(), 2, "{}", text);
}

#[test]
fn long_lists_are_cut_at_twenty() {
    // 25 tensors that the index places in the wrong shard: one problem each.
    let d = copy_dir(&golden("mixtral_nvfp4").join("input"), "long");
    let (first, second) = (
        "model-00001-of-00010.safetensors",
        "model-00002-of-00010.safetensors",
    );
    let mut moved = Vec::new();
    edit_index(d.path(), |m| {
        for (name, file) in m.iter_mut().take(25) {
            *file = json!(if file == first { second } else { first });
            moved.push(name.clone());
        }
    });
    let text = open_err(d.path());
    assert_has(
        &text,
        &[
            "has 25 problems",
            &format!("`{}`", moved[0]),
            &format!("`{}`", moved[19]),
            "... and 5 more",
        ],
    );
    assert!(!text.contains(&format!("`{}`", moved[24])), "{}", text);
    assert_eq!(text.matches("\n  - ").count(), 20);
}

/// Several tensors of one file missing from the index: one problem naming a few of them.
#[test]
fn unlisted_tensors_are_grouped_per_file() {
    let d = llama();
    edit_index(d.path(), |m| {
        m.retain(|k, _| !k.starts_with("model.layers.0.self_attn."));
    });
    let text = open_err(d.path());
    assert_has(
        &text,
        &[
            S2,
            "contains 4 tensor(s)",
            "`model.layers.0.self_attn.k_proj.weight`",
            "and 1 more",
        ],
    );
}

#[test]
fn bad_index_files() {
    let d = llama();
    let index = d.path().join(INDEX);
    std::fs::write(&index, "{\"weight_map\": {").unwrap();
    assert_has(
        &open_err(d.path()),
        &[&index.display().to_string(), "invalid JSON"],
    );
    std::fs::write(&index, "{\"metadata\": {}}").unwrap();
    assert_has(
        &open_err(d.path()),
        &[&index.display().to_string(), "no \"weight_map\""],
    );
    std::fs::write(&index, "{\"weight_map\": {}}").unwrap();
    assert_has(&open_err(d.path()), &["lists no tensors"]);
    std::fs::write(&index, "{\"weight_map\": {\"a\": 3}}").unwrap();
    assert_has(&open_err(d.path()), &["`a`", "not a file name"]);
    write_json(
        &index,
        &json!({"weight_map": {"a": "../model-00001-of-00007.safetensors"}}),
    );
    assert_has(
        &open_err(d.path()),
        &[
            "\"../model-00001-of-00007.safetensors\"",
            "`a`",
            "not a plain file name",
        ],
    );
}

#[test]
fn no_weights_at_all() {
    let d = temp_dir("empty");
    std::fs::write(d.path().join("config.json"), "{}").unwrap();
    let text = open_err(d.path());
    assert_has(
        &text,
        &[
            &d.path().display().to_string(),
            "model.safetensors.index.json",
            "model.safetensors",
        ],
    );

    let d = llama();
    std::fs::remove_file(d.path().join(INDEX)).unwrap();
    assert_has(&open_err(d.path()), &[S1, "its index is missing"]);

    let missing = d.path().join("nowhere");
    assert_has(&open_err(&missing), &[&missing.display().to_string()]);
    assert_has(&open_err(&d.path().join(S1)), &["is not a directory"]);
}

#[test]
fn single_file_and_index_that_disagree() {
    let d = llama();
    std::fs::write(
        d.path().join("model.safetensors"),
        raw_file(
            r#"{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
            &[1, 2, 3, 4],
        ),
    )
    .unwrap();
    let text = open_err(d.path());
    assert_has(
        &text,
        &[
            "both model.safetensors and model.safetensors.index.json",
            "(22 difference(s): `w` only in model.safetensors, `",
        ],
    );
    assert_has(&text, &["delete model.safetensors, or the index"]);
}
