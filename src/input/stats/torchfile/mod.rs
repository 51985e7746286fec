//! PyTorch `.pt` files (`torch.save`, PyTorch >= 1.6) read without Python and without running
//! any of the file's code.
//!
//! A `torch.save` file is a ZIP archive of stored entries under one top folder (any name, often
//! the file stem or `archive`): `<prefix>/data.pkl` (the pickled object), `<prefix>/data/<key>`
//! (one raw storage per key), `<prefix>/byteorder` (`little`/`big`, absent in old files),
//! `<prefix>/version` and a few other small files. The pickle is read by the safe interpreter in
//! [`pickle`]; tensors are strided views of those storages, decoded here to `f32`.
//!
//! [`read_pt_tensors`] covers the statistics files other tools write: SmoothQuant `act_scales`
//! (`dict[str, Tensor f32 [in_features]]`) and ModelOpt's DeepSeek dumps
//! (`amax_dict_rank{r}-mp{N}.pt`, `dict[str, Tensor bf16 []]` with DeepSeek-native names, see
//! [`deepseek_to_hf`]).

use self::pickle::{Object, TensorRef, TorchDtype};
use crate::error::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;

pub mod pickle;
mod zip;

/// One tensor from a `.pt` file, decoded to `f32` (exact for the F32/BF16/F16 storages read).
#[derive(Debug, Clone, PartialEq)]
pub struct PtTensor {
    /// Dict key; keys of nested dicts are joined with `.`.
    pub key: String,
    /// Shape (empty for a 0-d tensor).
    pub shape: Vec<usize>,
    /// Elements in row-major order of `shape` (strides and storage offset applied).
    pub values: Vec<f32>,
    /// Storage dtype: `"F32"`, `"BF16"` or `"F16"`.
    pub dtype: &'static str,
}

/// Reads a `torch.save` file whose top-level object is a dict (or `OrderedDict`,
/// `defaultdict`) of `str -> Tensor`.
///
/// Nested dicts are flattened with their keys joined by `.`. Values that are not tensors or
/// dicts (ints, floats, strings, `None`, lists, …) are skipped; their keys come back in the
/// second element, in file order. Tensors keep the dict's order.
///
/// Errors (all bad input, naming the file and, where there is one, the key): not a ZIP / torch
/// archive, a pickle global outside the whitelist, a tensor whose dtype is not F32/BF16/F16, a
/// view that reaches outside its storage, a storage entry missing or of the wrong size.
pub fn read_pt_tensors(path: &Path) -> Result<(Vec<PtTensor>, Vec<String>)> {
    let archive = zip::Archive::open(path)?;
    let bad = |msg: String| {
        Error::bad_input(format!("{}: {}", path.display(), msg))
            .with_hint("re-create the file with torch.save({name: tensor, ...}, path)")
    };
    let pkl: Vec<&zip::Entry> = archive
        .entries()
        .iter()
        .filter(|e| {
            e.name
                .split_once('/')
                .is_some_and(|(_, rest)| rest == "data.pkl")
        })
        .collect();
    let entry = match pkl.as_slice() {
        [e] => *e,
        [] => {
            return Err(
                bad("no '<folder>/data.pkl' entry; not a torch.save archive".into())
                    .with_hint("pass a file written by torch.save (PyTorch >= 1.6)"),
            )
        }
        _ => {
            return Err(bad(
                "several '<folder>/data.pkl' entries; ambiguous archive".into(),
            ))
        }
    };
    let prefix = entry.name.trim_end_matches("data.pkl").to_string();
    let big_endian = match archive.find(&format!("{prefix}byteorder")) {
        None => false,
        Some(e) => match archive.read(e)?.as_slice() {
            b"little" => false,
            b"big" => true,
            other => {
                let shown = String::from_utf8_lossy(&other[..other.len().min(16)]).into_owned();
                return Err(bad(format!("unknown byteorder '{shown}'")));
            }
        },
    };
    let data = archive.read(entry)?;
    let what = format!("{} ({})", path.display(), entry.name);
    let root = pickle::load(&data, &what)?;
    let Object::Dict(items) = root else {
        return Err(bad(format!(
            "top-level object is a {}, not a dict of tensors",
            root.type_name()
        ))
        .with_hint("statistics files must hold a dict mapping module names to tensors"));
    };

    let mut found = Vec::new();
    let mut skipped = Vec::new();
    flatten(items, "", &mut found, &mut skipped);
    let mut seen = HashSet::new();
    // Decoded elements are bounded by the file: twice its size in bytes covers every tensor
    // once and views sharing storages, while broadcast (stride-0) views cannot multiply it.
    let mut budget = 2 * archive.file_len() + 1024;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = Vec::with_capacity(found.len());
    for (key, t) in found {
        if !seen.insert(key.clone()) {
            return Err(bad(format!(
                "key '{key}' occurs twice once nested dicts are joined"
            )));
        }
        let ctx = Ctx {
            path,
            key: &key,
            budget,
        };
        let dtype = match t.storage.dtype {
            TorchDtype::F32 => "F32",
            TorchDtype::BF16 => "BF16",
            TorchDtype::F16 => "F16",
            other => {
                return Err(ctx
                    .bad(format!(
                        "has dtype {}; only F32, BF16 and F16 are read",
                        other.name()
                    ))
                    .with_hint("convert the statistics to float32 before torch.save"))
            }
        };
        if !storages.contains_key(&t.storage.key) {
            let name = format!("{prefix}data/{}", t.storage.key);
            let e = archive.find(&name).ok_or_else(|| {
                ctx.bad(format!(
                    "refers to storage '{}' but the archive has no '{name}'",
                    t.storage.key
                ))
            })?;
            let mut bytes = archive.read(e)?;
            if big_endian {
                bytes
                    .chunks_exact_mut(t.storage.dtype.size())
                    .for_each(|c| c.reverse());
            }
            storages.insert(t.storage.key.clone(), bytes);
        }
        let (shape, values) = ctx.decode(&t, &storages[&t.storage.key])?;
        budget -= values.len() as u64;
        tensors.push(PtTensor {
            key,
            shape,
            values,
            dtype,
        });
    }
    Ok((tensors, skipped))
}

/// The pickle of a `torch.save` archive (its `<folder>/data.pkl` entry), checked against its
/// CRC. For the fuzzing seed corpus ([`crate::fuzzing`]), which fuzzes the pickle reader alone.
pub(crate) fn read_data_pkl(path: &Path) -> Result<Vec<u8>> {
    let archive = zip::Archive::open(path)?;
    let entry = archive
        .entries()
        .iter()
        .find(|e| {
            e.name
                .split_once('/')
                .is_some_and(|(_, rest)| rest == "data.pkl")
        })
        .ok_or_else(|| Error::bad_input(format!("{}: no data.pkl entry", path.display())))?;
    archive.read(entry)
}

/// Splits a dict into tensors (with joined keys) and the keys of everything else.
fn flatten(
    items: Vec<(Object, Object)>,
    prefix: &str,
    found: &mut Vec<(String, TensorRef)>,
    skipped: &mut Vec<String>,
) {
    for (k, v) in items {
        let key = match k {
            Object::Str(s) => format!("{prefix}{s}"),
            Object::Int(i) => format!("{prefix}{i}"),
            other => format!("{prefix}<{} key>", other.type_name()),
        };
        match v {
            Object::Tensor(t) => found.push((key, t)),
            Object::Dict(inner) => flatten(inner, &format!("{key}."), found, skipped),
            _ => skipped.push(key),
        }
    }
}

/// Where a tensor comes from, for messages and limits.
struct Ctx<'a> {
    path: &'a Path,
    key: &'a str,
    /// Elements all tensors of the file may still decode to (see [`read_pt_tensors`]).
    budget: u64,
}

impl Ctx<'_> {
    fn bad(&self, msg: impl std::fmt::Display) -> Error {
        Error::bad_input(format!(
            "{}: tensor '{}' {}",
            self.path.display(),
            self.key,
            msg
        ))
        .with_hint("the file is corrupt or was not written by torch.save; re-create it")
    }

    /// Checks the view against its storage and gathers its elements in row-major order.
    fn decode(&self, t: &TensorRef, bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
        let size = t.storage.dtype.size();
        let numel = t.storage.numel;
        if numel.checked_mul(size as u64) != Some(bytes.len() as u64) {
            return Err(self.bad(format!(
                "declares a storage of {numel} elements ({} bytes each) but storage '{}' holds \
                 {} bytes",
                size,
                t.storage.key,
                bytes.len()
            )));
        }
        let count = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let Some(count) = count.filter(|&c| c <= self.budget) else {
            return Err(self.bad(format!(
                "has shape {:?}: with the tensors before it, more elements than a file of this \
                 size can describe (overlapping or broadcast views?)",
                t.shape
            )));
        };
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        if count == 0 {
            return Ok((shape, Vec::new()));
        }
        let last = t
            .shape
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
            });
        if last.is_none_or(|l| l >= numel) {
            return Err(self.bad(format!(
                "(offset {}, shape {:?}, stride {:?}) reaches past the end of its storage of \
                 {numel} elements",
                t.offset, t.shape, t.stride
            )));
        }
        let elem = |i: u64| -> f32 {
            let at = i as usize * size;
            let b = &bytes[at..at + size];
            match t.storage.dtype {
                TorchDtype::BF16 => {
                    half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
                }
                TorchDtype::F16 => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
                _ => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            }
        };
        // Odometer over the multi-index, tracking the linear storage index incrementally.
        let mut values = Vec::with_capacity(count as usize);
        let mut idx = vec![0u64; shape.len()];
        let mut lin = t.offset;
        for _ in 0..count {
            values.push(elem(lin));
            for d in (0..idx.len()).rev() {
                // Wrapping: past the last element the odometer may step outside the storage
                // (a size-1 dim may carry any stride); every index actually read was checked.
                idx[d] += 1;
                lin = lin.wrapping_add(t.stride[d]);
                if idx[d] < t.shape[d] {
                    break;
                }
                lin = lin.wrapping_sub(t.stride[d].wrapping_mul(t.shape[d]));
                idx[d] = 0;
            }
        }
        Ok((shape, values))
    }
}

/// Maps a DeepSeek-native module or quantizer name to the HF name, as ModelOpt's
/// `quantize_to_nvfp4.py::_remap_key` intends.
///
/// Works on `.`-separated components, never substrings (so `wq_a` is not read as `wq` + `_a`):
/// a leading `layers` becomes `model.layers`, then `ffn`→`mlp`, `attn`→`self_attn`,
/// `w1`→`gate_proj`, `w2`→`down_proj`, `w3`→`up_proj`, `wq`→`q_proj`, `wq_a`→`q_a_proj`,
/// `wq_b`→`q_b_proj`, `wkv_a`→`kv_a_proj_with_mqa`, `wkv_b`→`kv_b_proj`, `wo`→`o_proj`,
/// `head`→`lm_head`. Other components are kept, so HF names pass through unchanged, and
/// DeepSeek V4's underscore-joined quantizers (`w1_input_quantizer`) are left alone (V4
/// checkpoints keep native names).
pub fn deepseek_to_hf(key: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for (i, part) in key.split('.').enumerate() {
        let mapped = match part {
            "layers" if i == 0 => "model.layers",
            "ffn" => "mlp",
            "attn" => "self_attn",
            "w1" => "gate_proj",
            "w2" => "down_proj",
            "w3" => "up_proj",
            "wq" => "q_proj",
            "wq_a" => "q_a_proj",
            "wq_b" => "q_b_proj",
            "wkv_a" => "kv_a_proj_with_mqa",
            "wkv_b" => "kv_b_proj",
            "wo" => "o_proj",
            "head" => "lm_head",
            other => other,
        };
        out.push(mapped);
    }
    out.join(".")
}

#[cfg(test)]
mod tests;
