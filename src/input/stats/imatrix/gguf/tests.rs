//! Tests of the GGUF reader, on files built byte by byte, plus a small writer used by the
//! imatrix tests too.

use super::*;
use crate::error::ErrorKind;
use std::io::Write;
use tempfile::TempPath;

/// A GGUF writer for tests: metadata values are given as (type, encoded bytes).
pub(crate) struct GgufBuilder {
    pub(crate) version: u32,
    pub(crate) alignment: u64,
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

/// Encodes a GGUF string.
pub(crate) fn gguf_str(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// Little-endian bytes of `f32` values.
pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl GgufBuilder {
    pub(crate) fn new() -> Self {
        GgufBuilder {
            version: 3,
            alignment: 32,
            kv: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub(crate) fn kv_raw(mut self, key: &str, ty: u32, value: Vec<u8>) -> Self {
        self.kv.push((key.to_string(), ty, value));
        self
    }

    pub(crate) fn kv_str(self, key: &str, value: &str) -> Self {
        self.kv_raw(key, 8, gguf_str(value))
    }

    pub(crate) fn kv_u32(self, key: &str, value: u32) -> Self {
        self.kv_raw(key, 4, value.to_le_bytes().to_vec())
    }

    pub(crate) fn kv_str_array(self, key: &str, values: &[&str]) -> Self {
        let mut v = 8u32.to_le_bytes().to_vec();
        v.extend_from_slice(&(values.len() as u64).to_le_bytes());
        for s in values {
            v.extend(gguf_str(s));
        }
        self.kv_raw(key, 9, v)
    }

    pub(crate) fn tensor_raw(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ty, data));
        self
    }

    pub(crate) fn tensor_f32(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        self.tensor_raw(name, dims, 0, f32_bytes(values))
    }

    /// The file's bytes: header, metadata, tensor infos, padding, aligned data.
    pub(crate) fn build(&self) -> Vec<u8> {
        let align = self.alignment as usize;
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kv {
            out.extend(gguf_str(k));
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(v);
        }
        let mut data = Vec::new();
        for (name, dims, ty, bytes) in &self.tensors {
            out.extend(gguf_str(name));
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(data.len() as u64).to_le_bytes());
            data.extend_from_slice(bytes);
            data.resize(data.len().div_ceil(align) * align, 0);
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        out.extend(data);
        out
    }
}

/// Writes `bytes` to a fresh file in the temp directory, removed when the returned path drops
/// (also when the test fails), so the tests leave nothing behind.
pub(crate) fn temp_file(tag: &str, bytes: &[u8]) -> TempPath {
    let mut f = tempfile::Builder::new()
        .prefix("shardquant-test-")
        .suffix(&format!("-{tag}"))
        .tempfile()
        .unwrap();
    f.write_all(bytes).unwrap();
    f.into_temp_path()
}

/// An opened GGUF file with the test file it reads (kept until the test is done with it).
#[derive(Debug)]
struct Opened {
    file: GgufFile,
    _path: TempPath,
}

impl std::ops::Deref for Opened {
    type Target = GgufFile;
    fn deref(&self) -> &GgufFile {
        &self.file
    }
}

fn open_bytes(tag: &str, bytes: &[u8]) -> Result<Opened> {
    let path = temp_file(tag, bytes);
    GgufFile::open(&path).map(|file| Opened { file, _path: path })
}

fn bad(tag: &str, bytes: &[u8], want: &str) -> Error {
    let e = open_bytes(tag, bytes).expect_err("hostile input must be refused");
    assert_eq!(e.kind(), ErrorKind::BadInput, "{e}");
    assert!(e.message().contains(want), "expected {want:?} in: {e}");
    assert!(e.message().contains(tag), "error must name the file: {e}");
    e
}

fn sample() -> GgufBuilder {
    GgufBuilder::new()
        .kv_str("general.type", "imatrix")
        .kv_u32("imatrix.chunk_size", 512)
        .kv_str_array("imatrix.datasets", &["a.txt", "b.txt"])
        .tensor_f32("x.in_sum2", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .tensor_f32("x.counts", &[1, 2], &[7.0, 0.0])
}

#[test]
fn reads_every_value_type_and_f32_tensors() {
    let mut nested = 9u32.to_le_bytes().to_vec(); // array of arrays of u8
    nested.extend_from_slice(&1u64.to_le_bytes());
    nested.extend_from_slice(&0u32.to_le_bytes());
    nested.extend_from_slice(&2u64.to_le_bytes());
    nested.extend_from_slice(&[5, 6]);
    let b = sample()
        .kv_raw("u8", 0, vec![200])
        .kv_raw("i8", 1, vec![0xff])
        .kv_raw("u16", 2, 700u16.to_le_bytes().to_vec())
        .kv_raw("i16", 3, (-7i16).to_le_bytes().to_vec())
        .kv_raw("i32", 5, (-3i32).to_le_bytes().to_vec())
        .kv_raw("f32", 6, 1.5f32.to_le_bytes().to_vec())
        .kv_raw("bool", 7, vec![1])
        .kv_raw("u64", 10, u64::MAX.to_le_bytes().to_vec())
        .kv_raw("i64", 11, (-9i64).to_le_bytes().to_vec())
        .kv_raw("f64", 12, 2.25f64.to_le_bytes().to_vec())
        .kv_raw("nested", 9, nested)
        .tensor_raw(
            "h",
            &[2],
            1,
            [half::f16::from_f32(0.5), half::f16::from_f32(-2.0)]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
        .tensor_raw(
            "b",
            &[1],
            30,
            half::bf16::from_f32(3.0).to_le_bytes().to_vec(),
        )
        .tensor_raw("d", &[1], 28, 0.125f64.to_le_bytes().to_vec())
        .build();
    let g = open_bytes("all-types.gguf", &b).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.data_offset() % 32, 0);
    assert_eq!(
        g.metadata("general.type").and_then(|v| v.as_str()),
        Some("imatrix")
    );
    assert_eq!(
        g.metadata("imatrix.chunk_size").and_then(|v| v.as_u64()),
        Some(512)
    );
    let ds = g
        .metadata("imatrix.datasets")
        .and_then(|v| v.as_array())
        .unwrap();
    assert_eq!(
        ds.iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>(),
        ["a.txt", "b.txt"]
    );
    assert_eq!(g.metadata("u8"), Some(&GgufValue::U8(200)));
    assert_eq!(g.metadata("i8"), Some(&GgufValue::I8(-1)));
    assert_eq!(g.metadata("u16"), Some(&GgufValue::U16(700)));
    assert_eq!(g.metadata("i16"), Some(&GgufValue::I16(-7)));
    assert_eq!(g.metadata("i32").unwrap().as_u64(), None);
    assert_eq!(g.metadata("f32"), Some(&GgufValue::F32(1.5)));
    assert_eq!(g.metadata("bool"), Some(&GgufValue::Bool(true)));
    assert_eq!(g.metadata("u64").unwrap().as_u64(), Some(u64::MAX));
    assert_eq!(g.metadata("i64"), Some(&GgufValue::I64(-9)));
    assert_eq!(g.metadata("f64"), Some(&GgufValue::F64(2.25)));
    assert_eq!(
        g.metadata("nested"),
        Some(&GgufValue::Array(vec![GgufValue::Array(vec![
            GgufValue::U8(5),
            GgufValue::U8(6)
        ])]))
    );
    assert_eq!(g.metadata_entries().len(), 14);
    assert!(g.metadata("absent").is_none());
    assert_eq!(g.tensors().len(), 5);
    let t = g.tensor("x.in_sum2").unwrap();
    assert_eq!(
        (t.dims.clone(), t.ggml_type, t.n_elements()),
        (vec![3, 2], GgmlType::F32, 6)
    );
    assert_eq!(
        g.tensor_f32("x.in_sum2").unwrap(),
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );
    assert_eq!(g.tensor_f32("x.counts").unwrap(), [7.0, 0.0]);
    assert_eq!(g.tensor_f32("h").unwrap(), [0.5, -2.0]);
    assert_eq!(g.tensor_f32("b").unwrap(), [3.0]);
    assert_eq!(g.tensor_f32("d").unwrap(), [0.125]);
    assert!(g
        .tensor_f32("nope")
        .unwrap_err()
        .message()
        .contains("no tensor \"nope\""));
}

#[test]
fn honours_general_alignment_and_version_2() {
    let mut b = sample().kv_u32("general.alignment", 64);
    b.alignment = 64;
    b.version = 2;
    let g = open_bytes("align64.gguf", &b.build()).unwrap();
    assert_eq!(
        (g.version(), g.alignment(), g.data_offset() % 64),
        (2, 64, 0)
    );
    assert_eq!(g.tensor_f32("x.counts").unwrap(), [7.0, 0.0]);
}

#[test]
fn reads_the_golden_imatrix_header() {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden/stats/qwen3moe.imatrix.gguf");
    let g = GgufFile::open(&p).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.tensors().len(), 28);
    assert_eq!(g.metadata("imatrix.chunk_count"), Some(&GgufValue::U32(8)));
    assert_eq!(
        g.tensor_f32("blk.1.ffn_gate_exps.weight.counts").unwrap()[2],
        0.0
    );
}

#[test]
fn hostile_headers_are_refused() {
    let good = sample().build();
    bad("empty.gguf", &[], "truncated file");
    bad("magic.gguf", b"GGML\x03\0\0\0", "not a GGUF file");
    let mut v1 = good.clone();
    v1[4] = 1;
    bad("v1.gguf", &v1, "version 1 is not supported");
    let mut big_endian = good.clone();
    big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
    let e = bad("be.gguf", &big_endian, "unsupported GGUF version");
    assert!(e.hint().unwrap().contains("big-endian"));
    for cut in [7, 20, 30, 60, 100, 150, 200, 250] {
        let e = open_bytes("cut.gguf", &good[..cut]).unwrap_err();
        let m = e.message();
        let known = [
            "truncated file",
            "more than the file can hold",
            "cannot fit",
        ];
        assert!(known.iter().any(|k| m.contains(k)), "{cut}: {e}");
        assert_eq!(e.kind(), ErrorKind::BadInput);
    }
    // Huge tensor and metadata counts.
    let mut huge = good.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    bad("huge-tensors.gguf", &huge, "more than the file can hold");
    let mut huge = good.clone();
    huge[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    bad("huge-kv.gguf", &huge, "more than the file can hold");
    // A huge key length (first key right after the 24-byte header).
    let mut huge = good.clone();
    huge[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    bad("huge-key.gguf", &huge, "truncated file");
    // Unknown value type, bad bool, huge arrays, deep nesting.
    bad(
        "type99.gguf",
        &GgufBuilder::new().kv_raw("k", 99, vec![0; 8]).build(),
        "unknown value type 99",
    );
    bad(
        "bool.gguf",
        &GgufBuilder::new().kv_raw("k", 7, vec![2]).build(),
        "bool byte 2",
    );
    let mut arr = 0u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&u64::MAX.to_le_bytes());
    bad(
        "huge-array.gguf",
        &GgufBuilder::new().kv_raw("k", 9, arr).build(),
        "cannot fit",
    );
    let mut arr = 77u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&1u64.to_le_bytes());
    bad(
        "array-type.gguf",
        &GgufBuilder::new().kv_raw("k", 9, arr).build(),
        "unknown array element type 77",
    );
    let mut deep = Vec::new();
    for _ in 0..20 {
        deep.extend_from_slice(&9u32.to_le_bytes());
        deep.extend_from_slice(&1u64.to_le_bytes());
    }
    deep.extend_from_slice(&[0; 16]);
    bad(
        "deep.gguf",
        &GgufBuilder::new().kv_raw("k", 9, deep).build(),
        "nested too deeply",
    );
    let dup = GgufBuilder::new().kv_u32("k", 1).kv_u32("k", 2).build();
    bad("dup-key.gguf", &dup, "duplicate metadata key");
    let mut badkey = GgufBuilder::new().kv_u32("kk", 1).build();
    badkey[32] = 0xff;
    bad("utf8.gguf", &badkey, "not valid UTF-8");
    let align = sample()
        .kv_raw("general.alignment", 4, 3u32.to_le_bytes().to_vec())
        .build();
    bad("align3.gguf", &align, "power of two");
    let align = sample()
        .kv_raw("general.alignment", 10, 32u64.to_le_bytes().to_vec())
        .build();
    bad("align-u64.gguf", &align, "power of two");
}

#[test]
fn hostile_tensor_infos_are_refused() {
    let five = GgufBuilder::new()
        .tensor_f32("t", &[1, 1, 1, 1, 1], &[1.0])
        .build();
    bad("dims.gguf", &five, "5 dimensions");
    let overflow = GgufBuilder::new()
        .tensor_f32("t", &[u64::MAX, 2], &[1.0])
        .build();
    bad("overflow.gguf", &overflow, "overflows");
    let dup = GgufBuilder::new()
        .tensor_f32("t", &[1], &[1.0])
        .tensor_f32("t", &[1], &[2.0])
        .build();
    bad("dup-tensor.gguf", &dup, "duplicate tensor name");
    // Misaligned offset: patch the offset field (last 8 bytes of the tensor info).
    let mut b = GgufBuilder::new().tensor_f32("t", &[1], &[1.0]).build();
    let off = 24 + 8 + 1 + 4 + 8 + 4;
    b[off..off + 8].copy_from_slice(&4u64.to_le_bytes());
    bad("misaligned.gguf", &b, "not a multiple of the alignment");
}

#[test]
fn hostile_tensor_data_gives_errors() {
    // Data beyond the end of the file: a huge shape, and a truncated data section.
    let g = open_bytes(
        "big.gguf",
        &GgufBuilder::new()
            .tensor_f32("t", &[1 << 40], &[1.0])
            .build(),
    )
    .unwrap();
    let e = g.tensor_f32("t").unwrap_err();
    assert!(e.message().contains("beyond the end of the file"), "{e}");
    let full = sample().build();
    let g = open_bytes("short-data.gguf", &full[..full.len() - 30]).unwrap();
    assert!(g
        .tensor_f32("x.counts")
        .unwrap_err()
        .message()
        .contains("beyond the end"));
    // Offsets that overflow when added to the data start.
    let mut b = GgufBuilder::new().tensor_f32("t", &[1], &[1.0]).build();
    let off = 24 + 8 + 1 + 4 + 8 + 4;
    b[off..off + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    let g = open_bytes("offset-overflow.gguf", &b).unwrap();
    assert!(g
        .tensor_f32("t")
        .unwrap_err()
        .message()
        .contains("beyond the end"));
    // A quantized tensor cannot be read as floats.
    let q = GgufBuilder::new()
        .tensor_raw("q", &[32], 12, vec![0; 144])
        .build();
    let e = open_bytes("quant.gguf", &q)
        .unwrap()
        .tensor_f32("q")
        .unwrap_err();
    assert!(e.message().contains("type q4_K"), "{e}");
    assert_eq!(GgmlType(999).name(), "type 999");
}
