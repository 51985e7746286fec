//! Checkpoint skeletons: a real model's tensor list (names, dtypes, shapes) written as
//! safetensors shards whose headers are real and whose data is a hole in a sparse file, with
//! the model's `config.json` and an index. Planning reads only headers, so a 700 GB model's
//! plan can be measured and tested on any machine (`examples/plan_scale.rs`, tests/architectures.rs).
//!
//! A tensor list is JSON (`bench/models/*.json.zst` compressed with zstd, `fixtures/headers/*.json`
//! plain): `{"model": ..., "config": {...}, "shards": N or null, "tensors": [[name, dtype,
//! shape], ...]}`.

use crate::error::{Error, Result};
use safetensors::Dtype;
use serde::Deserialize;
use std::io::Write;
use std::path::Path;

/// A released model's tensor list.
#[derive(Debug, Clone, Deserialize)]
pub struct TensorList {
    /// The model's hub id.
    pub model: String,
    /// Its `config.json`.
    pub config: serde_json::Value,
    /// The number of shards of the hub repository, if known.
    #[serde(default)]
    pub shards: Option<usize>,
    /// (name, dtype, shape), as the hub's safetensors files hold them.
    pub tensors: Vec<(String, Dtype, Vec<usize>)>,
}

impl TensorList {
    /// Reads a tensor list, zstd-compressed when the file name ends in `.zst`.
    pub fn read(path: &Path) -> Result<TensorList> {
        let bytes = std::fs::read(path).map_err(|e| Error::input_io("reading", path, e))?;
        let text = if path.extension().is_some_and(|e| e == "zst") {
            zstd::decode_all(bytes.as_slice())
                .map_err(|e| Error::bad_input(format!("{}: not zstd data: {e}", path.display())))?
        } else {
            bytes
        };
        serde_json::from_slice(&text)
            .map_err(|e| Error::bad_input(format!("{}: not a tensor list: {e}", path.display())))
    }

    /// Bytes of all tensors.
    pub fn total_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .map(|(_, d, s)| byte_len(*d, s) as u64)
            .sum()
    }

    /// Elements of all tensors.
    pub fn parameters(&self) -> u64 {
        self.tensors
            .iter()
            .map(|(_, _, s)| s.iter().product::<usize>() as u64)
            .sum()
    }

    /// Writes the skeleton into the empty or new directory `dir`: `config.json`, the index and
    /// the shards (as many as the hub has, else one per 5 GB), tensors in list order.
    pub fn write_skeleton(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::output_io("creating", dir, e))?;
        let total = self.total_bytes();
        let shards = self
            .shards
            .unwrap_or_else(|| total.div_ceil(5_000_000_000) as usize)
            .clamp(1, self.tensors.len().max(1));
        let per_shard = total.div_ceil(shards as u64).max(1);
        let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
        let mut bytes = 0u64;
        for (i, (_, d, s)) in self.tensors.iter().enumerate() {
            let len = byte_len(*d, s) as u64;
            if bytes > 0 && bytes + len > per_shard && groups.len() < shards {
                groups.push(Vec::new());
                bytes = 0;
            }
            groups.last_mut().expect("one group").push(i);
            bytes += len;
        }
        let count = groups.len();
        let mut weight_map = serde_json::Map::new();
        for (s, members) in groups.iter().enumerate() {
            let name = format!("model-{:05}-of-{:05}.safetensors", s + 1, count);
            let mut header = serde_json::Map::new();
            let mut offset = 0usize;
            for &i in members {
                let (tensor, dtype, shape) = &self.tensors[i];
                let len = byte_len(*dtype, shape);
                header.insert(
                    tensor.clone(),
                    serde_json::json!({
                        "dtype": dtype,
                        "shape": shape,
                        "data_offsets": [offset, offset + len],
                    }),
                );
                weight_map.insert(tensor.clone(), serde_json::Value::String(name.clone()));
                offset += len;
            }
            let mut text = serde_json::to_vec(&header).expect("a header serializes");
            while !text.len().is_multiple_of(8) {
                text.push(b' ');
            }
            let path = dir.join(&name);
            let mut file =
                std::fs::File::create(&path).map_err(|e| Error::output_io("creating", &path, e))?;
            file.write_all(&(text.len() as u64).to_le_bytes())
                .and_then(|_| file.write_all(&text))
                .and_then(|_| file.set_len(8 + text.len() as u64 + offset as u64))
                .map_err(|e| Error::output_io("writing", &path, e))?;
        }
        let index = serde_json::json!({
            "metadata": {"total_size": total},
            "weight_map": weight_map,
        });
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
        write_json(&dir.join("config.json"), &self.config)
    }
}

fn byte_len(dtype: Dtype, shape: &[usize]) -> usize {
    shape.iter().product::<usize>() * dtype.bitsize() / 8
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON serializes");
    std::fs::write(path, text).map_err(|e| Error::output_io("writing", path, e))
}
