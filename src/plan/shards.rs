//! Deciding, before any weight is read, where every output tensor goes.

use std::cmp::Reverse;
use std::collections::HashMap;

use safetensors::Dtype;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

use crate::input::checkpoint::SINGLE_FILE_NAME;

/// The largest header the safetensors readers accept (their `MAX_HEADER_SIZE`).
const MAX_HEADER_BYTES: usize = 100_000_000;

/// Name suffixes of the tensors that ModelOpt exports from buffers rather than parameters: they
/// are not counted in the index's `total_parameters`.
const BUFFER_SUFFIXES: [&str; 7] = [
    ".weight_scale",
    ".weight_scale_2",
    ".input_scale",
    ".k_scale",
    ".v_scale",
    ".pre_quant_scale",
    "_amax",
];

/// A tensor to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTensor {
    /// The tensor's name in the output checkpoint.
    pub name: String,
    /// Element type as stored (e.g. `U8` for packed NVFP4 codes).
    pub dtype: Dtype,
    /// Shape as stored; `[]` for a 0-d scalar.
    pub shape: Vec<usize>,
}

impl OutputTensor {
    /// A tensor named `name` of `dtype` and `shape`.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> Self {
        OutputTensor {
            name: name.into(),
            dtype,
            shape,
        }
    }

    /// Number of elements (1 for shape `[]`), saturating at `usize::MAX`.
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// Byte length of the data: elements times the dtype's size (`F8_E4M3` and `U8` are 1 byte,
    /// shape `[]` is 1 element; sub-byte dtypes such as `F4` pack). Saturates at `usize::MAX`
    /// on overflow; [`ShardPlan::new`] rejects such tensors.
    pub fn byte_len(&self) -> usize {
        self.checked_byte_len().unwrap_or(usize::MAX)
    }

    /// The byte length, or `None` on overflow or a sub-byte dtype that does not fill whole bytes.
    pub(crate) fn checked_byte_len(&self) -> Option<usize> {
        let elements = self
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))?;
        let bits = elements.checked_mul(self.dtype.bitsize())?;
        (bits % 8 == 0).then_some(bits / 8)
    }
}

/// Whether ModelOpt saves tensor `name` from a buffer (a quantization scale), so that
/// HuggingFace's `num_parameters()` does not count it.
pub(crate) fn is_quantizer_buffer(name: &str) -> bool {
    BUFFER_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// One planned output file.
#[derive(Debug, Clone)]
pub(crate) struct PlannedShard {
    pub name: String,
    /// The first bytes of the file: 8-byte length, JSON header, space padding.
    pub header: Vec<u8>,
    /// Total file length.
    pub file_len: u64,
}

/// Where every output tensor goes: decided before any weight is read.
#[derive(Debug, Clone)]
pub struct ShardPlan {
    tensors: Vec<OutputTensor>,
    by_name: HashMap<String, usize>,
    /// Per tensor: (shard, absolute file offset, byte length).
    locations: Vec<(usize, u64, usize)>,
    shards: Vec<PlannedShard>,
    total_bytes: u64,
    total_parameters: u64,
    /// compressed-tensors style (llm-compressor's `save_file` and index): see
    /// [`ShardPlan::mirrored`].
    compressed_tensors: bool,
}

impl ShardPlan {
    /// compressed-tensors' layout, as llm-compressor's `model_free_ptq` writes it (SPEC §10):
    /// tensor `i` goes to the file `names[shard_of[i]]` (the input's shard names: output shards
    /// mirror the input's, with no resharding; a file left without tensors is not written).
    /// Inside a file the tensors are ordered by dtype descending (safetensors' `Dtype` order:
    /// F32, BF16, F8_E4M3, U8), then by name bytewise; the header has no `__metadata__` and is
    /// padded with spaces to a multiple of 8 (`safetensors.torch.save_file` without metadata).
    /// The index is always written ([`ShardPlan::index_json`]).
    ///
    /// Errors as [`ShardPlan::new`] does.
    pub fn mirrored(
        tensors: Vec<OutputTensor>,
        shard_of: &[usize],
        names: &[String],
    ) -> Result<ShardPlan> {
        let lens = check_tensors(&tensors)?;
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
        for (i, &s) in shard_of.iter().enumerate() {
            groups[s].push(i);
        }
        let (groups, names): (Vec<Vec<usize>>, Vec<String>) = groups
            .into_iter()
            .zip(names.iter().cloned())
            .filter(|(g, _)| !g.is_empty())
            .unzip();
        let mut plan = ShardPlan::lay_out(tensors, lens, groups, |_, n| names[n].clone(), true)?;
        plan.compressed_tensors = true;
        Ok(plan)
    }

    /// Assigns tensors to shards greedily, like HuggingFace `save_pretrained`
    /// (`huggingface_hub.split_state_dict_into_shards_factory`): walking the tensors in the given
    /// order, a new shard is started when adding the next tensor would make the current one's
    /// data exceed `max_shard_size` bytes; a tensor larger than the limit gets a shard of its own
    /// (placed, as HuggingFace does, before the shard still being filled).
    ///
    /// Files are named `model-00001-of-0000N.safetensors` when N > 1 and `model.safetensors`
    /// when N == 1. Each file is an 8-byte little-endian header length, a JSON header (the
    /// tensors' dtype, shape and data_offsets, plus `"__metadata__":{"format":"pt"}`) padded with
    /// spaces to a multiple of 8, then the data without gaps. Inside a file the tensors are
    /// ordered by decreasing dtype alignment (8, 4, 2, 1 bytes), otherwise in the given order, so
    /// that every tensor's data is aligned to its element size, as the safetensors crate
    /// arranges it: zero-copy loaders need that.
    ///
    /// Errors if two tensors have the same name, a name is `__metadata__`, a byte length
    /// overflows, or a header would exceed the 100 MB that safetensors readers accept.
    pub fn new(tensors: Vec<OutputTensor>, max_shard_size: u64) -> Result<ShardPlan> {
        let lens = check_tensors(&tensors)?;
        let groups = split(&lens, max_shard_size);
        let n = groups.len();
        let name = |si: usize, _: usize| {
            if n == 1 {
                SINGLE_FILE_NAME.to_owned()
            } else {
                shard_name(si, n)
            }
        };
        ShardPlan::lay_out(tensors, lens, groups, name, false)
    }

    /// Lays out `groups` of tensors as files named by `name(shard, index in groups)`:
    /// ModelOpt / transformers style, or compressed-tensors style (`ct`).
    fn lay_out(
        tensors: Vec<OutputTensor>,
        lens: Vec<usize>,
        groups: Vec<Vec<usize>>,
        name: impl Fn(usize, usize) -> String,
        ct: bool,
    ) -> Result<ShardPlan> {
        let by_name: HashMap<String, usize> = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let mut locations = vec![(0usize, 0u64, 0usize); tensors.len()];
        let mut shards = Vec::with_capacity(groups.len());
        for (si, mut members) in groups.into_iter().enumerate() {
            let mut header = Map::new();
            if ct {
                members.sort_by(|&a, &b| {
                    (Reverse(tensors[a].dtype), tensors[a].name.as_bytes())
                        .cmp(&(Reverse(tensors[b].dtype), tensors[b].name.as_bytes()))
                });
            } else {
                members.sort_by_key(|&i| Reverse(alignment(tensors[i].dtype)));
                header.insert("__metadata__".into(), json!({"format": "pt"}));
            }
            let mut offset = 0usize;
            for &i in &members {
                let t = &tensors[i];
                header.insert(
                    t.name.clone(),
                    json!({"dtype": t.dtype.to_string(), "shape": t.shape, "data_offsets": [offset, offset + lens[i]]}),
                );
                offset += lens[i];
            }
            let name = name(si, si);
            let mut json = serde_json::to_vec(&Value::Object(header))
                .map_err(|e| Error::other(format!("building the header of {}: {}", name, e)))?;
            json.resize(json.len().div_ceil(8) * 8, b' ');
            if json.len() > MAX_HEADER_BYTES {
                return Err(Error::usage(format!(
                    "the header of {} would be {} bytes, more than safetensors readers accept ({})",
                    name,
                    json.len(),
                    MAX_HEADER_BYTES
                ))
                .with_hint("use a smaller maximum shard size"));
            }
            let data_start = 8 + json.len() as u64;
            let mut file = Vec::with_capacity(json.len() + 8);
            file.extend_from_slice(&(json.len() as u64).to_le_bytes());
            file.extend_from_slice(&json);
            let mut at = data_start;
            for &i in &members {
                locations[i] = (si, at, lens[i]);
                at += lens[i] as u64;
            }
            shards.push(PlannedShard {
                name,
                header: file,
                file_len: at,
            });
        }

        let total_bytes = lens.iter().map(|&l| l as u64).sum();
        let total_parameters = tensors
            .iter()
            .filter(|t| !is_quantizer_buffer(&t.name))
            .map(|t| t.numel() as u64)
            .sum();
        Ok(ShardPlan {
            tensors,
            by_name,
            locations,
            shards,
            total_bytes,
            total_parameters,
            compressed_tensors: false,
        })
    }
}

/// Checks the tensors' names and byte lengths (see [`ShardPlan::new`]); returns the lengths.
fn check_tensors(tensors: &[OutputTensor]) -> Result<Vec<usize>> {
    {
        let mut by_name = HashMap::with_capacity(tensors.len());
        let mut lens = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if t.name == "__metadata__" {
                return Err(Error::other(
                    "output tensor name `__metadata__` is reserved by the safetensors format",
                ));
            }
            if let Some(j) = by_name.insert(t.name.clone(), i) {
                return Err(Error::bad_input(format!(
                    "output tensor `{}` would be written twice (entries {} and {} of the output plan)",
                    t.name, j, i
                ))
                .with_hint("is the input already quantized? Its scale tensors collide with the ones being added"));
            }
            let len = t.checked_byte_len().ok_or_else(|| {
                Error::other(format!(
                    "output tensor `{}`: {} with shape {:?} is not a whole number of bytes or overflows",
                    t.name, t.dtype, t.shape
                ))
            })?;
            lens.push(len);
        }
        Ok(lens)
    }
}

impl ShardPlan {
    /// Number of output files holding tensors (the index not counted).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard file names, in shard order.
    pub fn file_names(&self) -> Vec<String> {
        self.shards.iter().map(|s| s.name.clone()).collect()
    }

    /// Position of tensor `i` (its index in the order given to [`ShardPlan::new`]):
    /// (shard index, absolute byte offset in the file, byte length).
    ///
    /// # Panics
    /// If `i` is not below `self.tensors().len()`.
    pub fn location(&self, i: usize) -> (usize, u64, usize) {
        self.locations[i]
    }

    /// Index of the tensor named `name`, if it is planned.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The planned tensors, in the order given to [`ShardPlan::new`].
    pub fn tensors(&self) -> &[OutputTensor] {
        &self.tensors
    }

    /// Total bytes of tensor data (the index's `total_size`).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The index's `total_parameters`: what HuggingFace `num_parameters()` reports for the
    /// exported model, i.e. the elements of every tensor saved from a parameter. Quantization
    /// scales (`*.weight_scale`, `*.weight_scale_2`, `*.input_scale`, `*.k_scale`, `*.v_scale`,
    /// `*.pre_quant_scale`, `*_amax`) are buffers and not counted; a packed `U8` NVFP4 weight
    /// counts its bytes (two FP4 values per element), as ModelOpt's export does. Override with
    /// [`ShardPlan::set_total_parameters`] when the model has other buffers.
    pub fn total_parameters(&self) -> u64 {
        self.total_parameters
    }

    /// Overrides the index's `total_parameters`.
    pub fn set_total_parameters(&mut self, n: u64) {
        self.total_parameters = n;
    }

    /// Length of shard `s`'s file in bytes.
    ///
    /// # Panics
    /// If `s` is not below [`ShardPlan::shard_count`].
    pub fn file_len(&self, s: usize) -> u64 {
        self.shards[s].file_len
    }

    /// The planned files, for the writer.
    pub(crate) fn planned_shards(&self) -> &[PlannedShard] {
        &self.shards
    }

    /// `model.safetensors.index.json` as HuggingFace writes it (compressed-tensors: as
    /// llm-compressor writes it, [`format_ct_index`], also for a single shard) (Python
    /// `json.dumps(index, indent=2, sort_keys=True) + "\n"`, so non-ASCII names are `\u`-escaped):
    /// `{"metadata": {"total_parameters": .., "total_size": ..}, "weight_map": {name: file, ..}}`
    /// with the names sorted. `None` for a single shard, which has no index.
    pub fn index_json(&self) -> Option<String> {
        let entries: Vec<(&str, &str)> = self
            .tensors
            .iter()
            .zip(&self.locations)
            .map(|(t, &(s, _, _))| (t.name.as_str(), self.shards[s].name.as_str()))
            .collect();
        if self.compressed_tensors {
            return Some(format_ct_index(entries, self.total_bytes));
        }
        if self.shards.len() < 2 {
            return None;
        }
        Some(format_index(
            entries,
            self.total_parameters,
            self.total_bytes,
        ))
    }
}

/// The text of an index file: `entries` (tensor name, file name) sorted by name, formatted like
/// Python's `json.dumps({"metadata": .., "weight_map": ..}, indent=2, sort_keys=True) + "\n"`.
pub(crate) fn format_index(
    mut entries: Vec<(&str, &str)>,
    total_parameters: u64,
    total_size: u64,
) -> String {
    entries.sort_unstable();
    let mut out = String::with_capacity(64 + entries.len() * 96);
    out.push_str("{\n  \"metadata\": {\n");
    out.push_str(&format!(
        "    \"total_parameters\": {},\n",
        total_parameters
    ));
    out.push_str(&format!("    \"total_size\": {}\n", total_size));
    out.push_str("  },\n  \"weight_map\": {");
    push_weight_map_entries(&mut out, &entries);
    out.push_str(if entries.is_empty() {
        "}\n}\n"
    } else {
        "\n  }\n}\n"
    });
    out
}

/// The `"weight_map"` object's entries, one per line at indent 4, as Python's
/// `json.dumps(indent=2)` writes them (the closing brace is the caller's).
fn push_weight_map_entries(out: &mut String, entries: &[(&str, &str)]) {
    for (k, (name, file)) in entries.iter().enumerate() {
        out.push_str(if k == 0 { "\n    " } else { ",\n    " });
        crate::pyjson_text::push_py_json_str(out, name);
        out.push_str(": ");
        crate::pyjson_text::push_py_json_str(out, file);
    }
}

/// The index as llm-compressor's `model_free_ptq` writes it: Python
/// `json.dumps({"metadata": {"total_size": T}, "weight_map": {..}}, indent=2, sort_keys=True)`,
/// with no trailing newline and no other metadata.
pub(crate) fn format_ct_index(mut entries: Vec<(&str, &str)>, total_size: u64) -> String {
    entries.sort_unstable();
    let mut out = String::with_capacity(64 + entries.len() * 96);
    out.push_str(&format!(
        "{{\n  \"metadata\": {{\n    \"total_size\": {total_size}\n  }},\n  \"weight_map\": {{"
    ));
    push_weight_map_entries(&mut out, &entries);
    out.push_str(if entries.is_empty() {
        "}\n}"
    } else {
        "\n  }\n}"
    });
    out
}

/// HuggingFace's greedy split of tensors (by byte length) into shards of at most `max` bytes.
fn split(lens: &[usize], max: u64) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_size = 0u64;
    for (i, &len) in lens.iter().enumerate() {
        let len = len as u64;
        if len > max {
            groups.push(vec![i]);
            continue;
        }
        if current_size + len > max {
            groups.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(i);
        current_size += len;
    }
    if !current.is_empty() || groups.is_empty() {
        groups.push(current);
    }
    groups
}

/// The alignment a tensor's data needs: its element size, capped at 8 (sub-byte types: 1).
fn alignment(dtype: Dtype) -> usize {
    (dtype.bitsize() / 8).clamp(1, 8)
}

/// `model-00001-of-00003.safetensors` for shard `i` (0-based) of `n`.
fn shard_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
}
