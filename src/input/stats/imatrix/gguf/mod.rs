//! A minimal reader of GGUF files (versions 2 and 3), enough for llama.cpp's imatrix files.
//!
//! Layout (little-endian): magic `"GGUF"`, `u32` version, `u64` tensor count, `u64` metadata
//! count; metadata key/value pairs (key: `u64` length + UTF-8 bytes, `u32` value type, value);
//! tensor infos (name, `u32` n_dims, `u64 ne[n_dims]` innermost first, `u32` ggml type, `u64`
//! offset relative to the data section); padding to `general.alignment` (default 32); data.
//!
//! The header is parsed once by [`GgufFile::open`]; tensor data is read on demand by
//! [`GgufFile::tensor_f32`], so only the tensors asked for are held in memory. Every length and
//! count read from the file is checked against the bytes that remain before anything is
//! allocated, so a hostile or truncated file gives an error, never a panic or a huge allocation.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Deepest nesting of arrays inside arrays that is accepted (llama.cpp writes at most 2).
const MAX_ARRAY_DEPTH: usize = 8;

/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;

/// Most metadata values (array elements included) held in memory for one file: far more than
/// any real file has (a model's tokenizer is a few hundred thousand), and it bounds the memory a
/// hostile file can make the reader take.
const MAX_METADATA_VALUES: u64 = 1 << 22;

/// A metadata value, with the GGUF value type it was stored as.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8 (invalid UTF-8 is replaced by U+FFFD).
    String(String),
    /// Type 9: elements of one type.
    Array(Vec<GgufValue>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl GgufValue {
    /// The string, for a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a `u64`, for any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(u64::from(v)),
            GgufValue::U16(v) => Some(u64::from(v)),
            GgufValue::U32(v) => Some(u64::from(v)),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The elements, for an array value.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// A ggml tensor type, as stored in a tensor info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    /// `GGML_TYPE_F32`.
    pub const F32: GgmlType = GgmlType(0);
    /// `GGML_TYPE_F16`.
    pub const F16: GgmlType = GgmlType(1);
    /// `GGML_TYPE_F64`.
    pub const F64: GgmlType = GgmlType(28);
    /// `GGML_TYPE_BF16`.
    pub const BF16: GgmlType = GgmlType(30);

    /// Bytes per element for the float types [`GgufFile::tensor_f32`] reads; `None` for others.
    pub fn float_size(self) -> Option<u64> {
        match self {
            GgmlType::F32 => Some(4),
            GgmlType::F16 | GgmlType::BF16 => Some(2),
            GgmlType::F64 => Some(8),
            _ => None,
        }
    }

    /// ggml's name of the type (`"f32"`, `"q4_K"`, ...), or `"type N"` when unknown.
    pub fn name(self) -> String {
        const NAMES: [&str; 40] = [
            "f32", "f16", "q4_0", "q4_1", "type 4", "type 5", "q5_0", "q5_1", "q8_0", "q8_1",
            "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K", "iq2_xxs", "iq2_xs", "iq3_xxs",
            "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs", "i8", "i16", "i32", "i64", "f64",
            "iq1_m", "bf16", "type 31", "type 32", "type 33", "tq1_0", "tq2_0", "type 36",
            "type 37", "type 38", "mxfp4",
        ];
        match NAMES.get(self.0 as usize) {
            Some(n) => (*n).to_string(),
            None => format!("type {}", self.0),
        }
    }
}

/// Where one tensor is and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// The tensor's name.
    pub name: String,
    /// `ne`: the extent of each dimension, innermost (contiguous) first.
    pub dims: Vec<u64>,
    /// The element type.
    pub ggml_type: GgmlType,
    /// Byte offset of the data, relative to the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Number of elements (the product of `dims`; 1 for a 0-dimensional tensor). Never
    /// overflows: [`GgufFile::open`] rejects tensors whose element count overflows `u64`.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header; tensor data is read from the file on demand.
#[derive(Debug, Clone)]
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    file_len: u64,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

/// Tells whether `bytes` (the start of a file) carry the GGUF magic.
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && bytes[..4] == GGUF_MAGIC
}

/// Little-endian reads that never go past the end of the file and name it in every error.
pub(crate) struct LeReader<'p, R> {
    inner: R,
    pos: u64,
    len: u64,
    path: &'p Path,
    /// Metadata values decoded so far (bounded by [`MAX_METADATA_VALUES`]).
    values: u64,
}

impl<'p, R: Read> LeReader<'p, R> {
    /// Reads from `inner`, positioned at offset 0 of a file of `len` bytes.
    pub(crate) fn new(inner: R, len: u64, path: &'p Path) -> Self {
        LeReader {
            inner,
            pos: 0,
            len,
            path,
            values: 0,
        }
    }

    /// Current offset in the file.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Bytes left before the end of the file.
    pub(crate) fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    /// An error for bad content at the current offset, naming the file.
    pub(crate) fn err(&self, what: impl std::fmt::Display) -> Error {
        Error::bad_input(format!(
            "{}: {} (at byte {})",
            self.path.display(),
            what,
            self.pos
        ))
    }

    /// Reads exactly `n` bytes; `what` names the field in the error for a truncated file.
    pub(crate) fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        if n > self.remaining() {
            return Err(self
                .err(format!(
                    "truncated file: {what} needs {n} bytes but only {} remain",
                    self.remaining()
                ))
                .with_hint("the file is incomplete or not in the expected format; re-create it"));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| Error::input_io("reading", self.path, e))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let v = self.bytes(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&v);
        Ok(a)
    }

    /// Reads a little-endian `u32`.
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// Reads a little-endian `i32`.
    pub(crate) fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    /// Reads a little-endian `u64`.
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads `n` little-endian `f32`.
    pub(crate) fn f32s(&mut self, n: u64, what: &str) -> Result<Vec<f32>> {
        let nbytes = n
            .checked_mul(4)
            .ok_or_else(|| self.err(format!("{what}: {n} values is too many")))?;
        let raw = self.bytes(nbytes, what)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Reads a GGUF string (`u64` length + bytes).
    fn string_bytes(&mut self, what: &str) -> Result<Vec<u8>> {
        let n = self.u64(what)?;
        self.bytes(n, what)
    }

    /// Reads a GGUF string that must be UTF-8 (keys and tensor names).
    fn utf8_string(&mut self, what: &str) -> Result<String> {
        let b = self.string_bytes(what)?;
        String::from_utf8(b).map_err(|_| self.err(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, depth: usize, key: &str) -> Result<GgufValue> {
        self.values += 1;
        if self.values > MAX_METADATA_VALUES {
            return Err(self.err(format!(
                "metadata {key:?}: more than {MAX_METADATA_VALUES} metadata values in the file"
            )));
        }
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(key)?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(key)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => GgufValue::U32(self.u32(key)?),
            5 => GgufValue::I32(self.i32(key)?),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("metadata {key:?}: bool byte {b} is not 0 or 1"))),
            },
            8 => GgufValue::String(String::from_utf8_lossy(&self.string_bytes(key)?).into_owned()),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("metadata {key:?}: arrays nested too deeply")));
                }
                let elem = self.u32(key)?;
                let n = self.u64(key)?;
                let min = min_value_size(elem)
                    .ok_or_else(|| self.err(format!("metadata {key:?}: unknown array element type {elem}")))?;
                if n.checked_mul(min).is_none_or(|b| b > self.remaining()) {
                    return Err(self.err(format!(
                        "metadata {key:?}: array of {n} elements cannot fit in the {} bytes left",
                        self.remaining()
                    )));
                }
                let mut v = Vec::with_capacity(n.min(4096) as usize);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1, key)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            t => {
                return Err(self
                    .err(format!("metadata {key:?} has unknown value type {t}"))
                    .with_hint("the value's size is unknown, so the rest of the file cannot be read; is this a newer GGUF version?"))
            }
        })
    }
}

/// The fewest bytes one value of GGUF type `ty` takes; `None` for an unknown type.
fn min_value_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

impl GgufFile {
    /// Parses the header of the GGUF file at `path` (versions 2 and 3, little-endian).
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| Error::input_io("opening", path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::input_io("reading", path, e))?
            .len();
        let mut r = LeReader::new(BufReader::new(file), file_len, path);
        let magic = r.array::<4>("magic")?;
        if magic != GGUF_MAGIC {
            return Err(Error::bad_input(format!(
                "{}: not a GGUF file (magic {:02x?}, expected \"GGUF\")",
                path.display(),
                magic
            )));
        }
        let version = r.u32("version")?;
        if version == 1 {
            return Err(r
                .err("GGUF version 1 is not supported")
                .with_hint("re-save the file with a current llama.cpp (GGUF v3)"));
        }
        if version != 2 && version != 3 {
            let hint = if version.swap_bytes() <= 3 {
                "the file looks big-endian; only little-endian GGUF is supported"
            } else {
                "only GGUF versions 2 and 3 are supported"
            };
            return Err(r
                .err(format!("unsupported GGUF version {version}"))
                .with_hint(hint));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // The smallest metadata pair is 13 bytes, the smallest tensor info 24.
        if n_kv.saturating_mul(13) > r.remaining() || n_tensors.saturating_mul(24) > r.remaining() {
            return Err(r.err(format!(
                "header claims {n_kv} metadata pairs and {n_tensors} tensors, more than the file can hold"
            )));
        }

        let mut metadata = Vec::with_capacity(n_kv.min(4096) as usize);
        let mut keys = HashMap::new();
        for _ in 0..n_kv {
            let key = r.utf8_string("metadata key")?;
            let ty = r.u32("metadata value type")?;
            let value = r.value(ty, 0, &key)?;
            if keys.insert(key.clone(), metadata.len()).is_some() {
                return Err(r.err(format!("duplicate metadata key {key:?}")));
            }
            metadata.push((key, value));
        }
        let alignment = match keys.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(GgufValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(v) => {
                return Err(r.err(format!(
                    "general.alignment must be a u32 power of two, found {v:?}"
                )))
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors.min(4096) as usize);
        let mut tensor_index = HashMap::new();
        for _ in 0..n_tensors {
            let name = r.utf8_string("tensor name")?;
            let n_dims = r.u32("tensor dimension count")?;
            if n_dims > MAX_DIMS {
                return Err(r.err(format!(
                    "tensor {name:?} has {n_dims} dimensions; at most {MAX_DIMS} are allowed"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64("tensor dimension")?);
            }
            if dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .is_none_or(|n| n > i64::MAX as u64)
            {
                return Err(r.err(format!(
                    "tensor {name:?}: element count of {dims:?} overflows"
                )));
            }
            let ggml_type = GgmlType(r.u32("tensor type")?);
            let offset = r.u64("tensor offset")?;
            if offset % alignment != 0 {
                return Err(r.err(format!(
                    "tensor {name:?}: data offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(r.err(format!("duplicate tensor name {name:?}")));
            }
            tensors.push(GgufTensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let data_offset = r.pos().div_ceil(alignment) * alignment;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            file_len,
            metadata,
            metadata_index: keys,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    /// The file this header was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of the data section (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset in the file where the data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The metadata value stored under `key`.
    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All metadata pairs, in file order.
    pub fn metadata_entries(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The info of the tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Reads the tensor called `name` as `f32` values, in storage order (innermost dimension
    /// fastest). F32 is returned as is; F16, BF16 and F64 are converted. Other types, a missing
    /// tensor, or data that lies outside the file are errors.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let p = self.path.display();
        let info = self.tensor(name).ok_or_else(|| {
            Error::bad_input(format!("{p}: no tensor {name:?} in this GGUF file"))
        })?;
        let size = info.ggml_type.float_size().ok_or_else(|| {
            Error::bad_input(format!(
                "{p}: tensor {name:?} has type {}; only f32, f16, bf16 and f64 tensors can be read",
                info.ggml_type.name()
            ))
            .with_hint(
                "statistics tensors must be stored as floats; re-create the file with llama.cpp",
            )
        })?;
        let n = info.n_elements();
        let start = self.data_offset.checked_add(info.offset);
        let nbytes = n.checked_mul(size);
        let end = start.zip(nbytes).and_then(|(s, b)| s.checked_add(b));
        let (start, end) = match (start, end) {
            (Some(s), Some(e)) if e <= self.file_len => (s, e),
            _ => {
                return Err(Error::bad_input(format!(
                    "{p}: data of tensor {name:?} ({n} x {}, at data offset {}) lies beyond the end of the file ({} bytes)",
                    info.ggml_type.name(),
                    info.offset,
                    self.file_len
                ))
                .with_hint("the file is truncated or corrupt; re-create it"))
            }
        };
        let mut file =
            File::open(&self.path).map_err(|e| Error::input_io("opening", &self.path, e))?;
        file.seek(SeekFrom::Start(start))
            .map_err(|e| Error::input_io("reading", &self.path, e))?;
        let mut raw = vec![0u8; (end - start) as usize];
        file.read_exact(&mut raw)
            .map_err(|e| Error::input_io("reading", &self.path, e))?;
        Ok(match info.ggml_type {
            GgmlType::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            GgmlType::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            GgmlType::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => raw
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_le_bytes(a) as f32
                })
                .collect(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
