//! Reading the tensors of a statistics file stored as safetensors, as f32 values.

use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// One tensor of a statistics file, decoded to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEntry {
    /// The key, as written by the tool that made the file.
    pub key: String,
    /// The tensor's shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// The values in row-major order.
    pub values: Vec<f32>,
}

/// Reads every tensor of a safetensors statistics file (F32, BF16 or F16), sorted by key.
pub fn read_safetensors_entries(path: &Path) -> Result<Vec<RawEntry>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::bad_input(format!(
            "{}: not a valid safetensors file: {e}",
            path.display()
        ))
        .with_hint("pass the amax file exactly as the calibration tool wrote it")
    })?;
    let mut out = Vec::new();
    for (key, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::bad_input(format!(
                    "{}: tensor '{key}' has dtype {other:?}; statistics must be F32, BF16 or F16",
                    path.display()
                ))
                .with_hint("pass the amax file exactly as the calibration tool wrote it"))
            }
        };
        out.push(RawEntry {
            key,
            shape: view.shape().to_vec(),
            values,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}
