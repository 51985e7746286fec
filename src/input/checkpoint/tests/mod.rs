//! Tests of the checkpoint module, and the helpers they share.

mod broken;
mod plan;
mod read;
mod size;
mod write;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, ErrorKind};

pub(super) use tempfile::TempDir;

/// A fresh directory under the system temp dir, removed on drop (also when the test fails).
pub(super) fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("shardquant-ckpt-{tag}-"))
        .tempdir()
        .unwrap()
}

/// The golden cases: `fixtures/golden/<case>` directories that have an `input/`.
pub(super) fn golden_cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("input").is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 4,
        "golden cases missing under {}",
        root.display()
    );
    cases
}

/// One golden case by name.
pub(super) fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/golden")
        .join(case)
}

/// The `input` or `modelopt` list of a case's tensors.json: (name, dtype, shape, file).
pub(super) fn expected_tensors(
    case: &Path,
    which: &str,
) -> Vec<(String, String, Vec<usize>, String)> {
    let text = std::fs::read_to_string(case.join("tensors.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v[which]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["dtype"].as_str().unwrap().to_owned(),
                serde_json::from_value(t["shape"].clone()).unwrap(),
                t["file"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Copies the regular files of `src` into a new temp dir.
pub(super) fn copy_dir(src: &Path, tag: &str) -> TempDir {
    let dst = temp_dir(tag);
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dst.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    dst
}

/// A safetensors file made of `header` (JSON) and `data`, with the header padded to 8 bytes.
pub(super) fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// Reads a JSON file.
pub(super) fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Writes a JSON file.
pub(super) fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// The error's message and hint, after checking it is `BadInput`.
pub(super) fn bad_input_text(result: crate::error::Result<impl std::fmt::Debug>) -> String {
    let err: Error = result.expect_err("expected an error");
    assert_eq!(err.kind(), ErrorKind::BadInput, "{}", err);
    err.to_string()
}

/// A small deterministic random number generator (xorshift64*).
pub(super) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
