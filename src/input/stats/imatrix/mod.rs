//! llama.cpp importance matrices: the legacy `.dat` binary and the GGUF imatrix.
//!
//! Both give, per llama.cpp weight tensor and per matrix (expert), the per-input-channel sum
//! of x² over the calibration tokens and how many token rows reached the matrix. They give no
//! amax. The format is detected from the content (`"GGUF"` magic, else the `.dat` layout,
//! which must parse exactly to the end of the file); `docs/stats-formats.md` §3 has
//! the byte layouts.
//!
//! What [`ImatrixEntry`] holds for each format:
//!
//! - **GGUF** (`*.in_sum2`, `*.counts`, optional `*.in_sum`): `sum_sq` is `in_sum2` as stored
//!   (raw Σx²) and `counts` are the token-row counts, rounded from their `f32` storage as
//!   llama.cpp does. [`ImatrixMeta::counts_are_tokens`] is true.
//! - **Legacy `.dat`**: a value is `E[x²] · ncall` with one `ncall` per tensor, so per-expert
//!   token counts are not in the file. `sum_sq` holds the stored values unchanged and every
//!   calibrated expert gets the pseudo-count `ncall`, so `sum_sq / count` is `E[x²]` exactly as
//!   llama-quantize computes it, and summing several files weights them by `ncall` as llama.cpp
//!   did when combining them. [`ImatrixMeta::counts_are_tokens`] is false: consumers must treat
//!   counts > 0 as "calibrated, token count unknown", never as token counts.
//!   An expert row that is entirely equal to `ncall` (the writer's sentinel for an expert that
//!   saw no token: it stores `1/1 · ncall`) or entirely NaN (older writers' `0/0`) gets count 0
//!   and zero sums. A real expert whose every channel has `E[x²] = 1.0` exactly would be taken
//!   for the sentinel; no real activation does that. The sentinel is only looked for when a
//!   tensor has more than one matrix (llama.cpp skips tensors with no data at all).
//!   The `.dat` does not store the number of experts of a `*_exps` tensor: it is taken from the
//!   caller ([`read_imatrix_with_experts`]) or, failing that, inferred from the layer's hidden
//!   size (the input width of `attn_q`, `attn_k`, ... in the same file); when neither works the
//!   tensor is kept as one matrix and a note says so.
//!
//! For an expert with count 0, `sum_sq` (and `sum`) are zero. Values of calibrated experts are
//! finite and non-negative (`sum` only finite); anything else is an error naming the file,
//! tensor, expert and channel.
//!
//! [`llama_cpp_to_hf`] maps llama.cpp tensor names to HF module names (§6.5 of the document).

mod dat;
pub mod gguf;
mod names;

pub use names::llama_cpp_to_hf;

use self::dat::{dat_entries, parse_dat};
use self::gguf::{is_gguf, GgufFile, GgufTensorInfo, GgufValue};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Counts above this are not exact in the GGUF's `f32` storage.
const EXACT_F32_COUNT: f32 = 16_777_216.0;

/// Which kind of imatrix file was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImatrixFormat {
    /// llama.cpp's legacy binary (`--output-format dat`).
    LegacyDat,
    /// The GGUF imatrix (`general.type = "imatrix"`).
    Gguf,
}

/// What an imatrix file says about the calibration as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct ImatrixMeta {
    /// The format of the file.
    pub format: ImatrixFormat,
    /// Calibration data sets (`imatrix.datasets`; the `.dat` trailer's one file name).
    pub datasets: Vec<String>,
    /// Chunks processed (`imatrix.chunk_count`; the `.dat` trailer's `last_chunk`).
    pub chunk_count: Option<u64>,
    /// Tokens per chunk (`imatrix.chunk_size`; not in a `.dat`).
    pub chunk_size: Option<u64>,
    /// Number of NextN/MTP layers at the top of the model (`imatrix.n_layer_nextn`).
    pub n_layer_nextn: Option<u64>,
    /// True when [`ImatrixEntry::counts`] are token counts (GGUF); false when they are the
    /// `.dat`'s `ncall` pseudo-counts (see the module documentation).
    pub counts_are_tokens: bool,
    /// Things worth telling the user (tensors ignored, expert counts inferred or unknown,
    /// inexact counts), in the order found.
    pub notes: Vec<String>,
}

/// Statistics of one llama.cpp tensor: per expert (1 for dense) the per-input-channel sum of
/// squares and the token count.
#[derive(Debug, Clone, PartialEq)]
pub struct ImatrixEntry {
    /// llama.cpp tensor name, e.g. `blk.1.ffn_gate_exps.weight`.
    pub name: String,
    /// Number of matrices (experts for `*_exps` tensors, else 1).
    pub experts: usize,
    /// Input channels (`in_features`) of each matrix.
    pub channels: usize,
    /// Σx² per channel, row-major `[experts][channels]` (see the module documentation for
    /// the `.dat` scaling).
    pub sum_sq: Vec<f32>,
    /// Token rows per expert (`.dat`: pseudo-counts); 0 = the expert saw no tokens.
    pub counts: Vec<u64>,
    /// Σx per channel, `[experts][channels]`, when the file has it (GGUF `*.in_sum`).
    pub sum: Option<Vec<f32>>,
}

impl ImatrixEntry {
    /// Whether this is a stacked-experts tensor (`*_exps`).
    pub fn is_expert_tensor(&self) -> bool {
        is_expert_tensor_name(&self.name)
    }

    /// The sums of squares of expert `e` (`channels` values). Panics if `e >= experts`.
    pub fn expert_sum_sq(&self, e: usize) -> &[f32] {
        &self.sum_sq[e * self.channels..(e + 1) * self.channels]
    }

    /// `E[x²]` per channel of expert `e` (`sum_sq / count`, in f64 rounded once); `None` when
    /// the expert saw no tokens.
    pub fn mean_sq(&self, e: usize) -> Option<Vec<f32>> {
        let n = *self.counts.get(e)?;
        (n > 0).then(|| {
            self.expert_sum_sq(e)
                .iter()
                .map(|&v| (f64::from(v) / n as f64) as f32)
                .collect()
        })
    }

    /// Experts with count 0 (uncalibrated), ascending.
    pub fn uncalibrated_experts(&self) -> Vec<usize> {
        (0..self.experts).filter(|&e| self.counts[e] == 0).collect()
    }
}

/// Whether a llama.cpp tensor name is a stacked-experts tensor (`blk.L.ffn_*_exps.weight`).
pub fn is_expert_tensor_name(name: &str) -> bool {
    name.split('.').any(|part| part.ends_with("_exps"))
}

/// Reads a legacy `.dat` or GGUF imatrix (detected by magic; the GGUF one has
/// `general.type = "imatrix"`). Entries are sorted by name.
pub fn read_imatrix(path: &Path) -> Result<(Vec<ImatrixEntry>, ImatrixMeta)> {
    read_imatrix_with_experts(path, None)
}

/// Like [`read_imatrix`], with the model's number of routed experts: `.dat` expert tensors are
/// split into that many rows, and GGUF expert tensors must have that many.
pub fn read_imatrix_with_experts(
    path: &Path,
    n_experts: Option<usize>,
) -> Result<(Vec<ImatrixEntry>, ImatrixMeta)> {
    if n_experts == Some(0) {
        return Err(Error::usage("the number of experts must be at least 1"));
    }
    let mut head = Vec::with_capacity(4);
    File::open(path)
        .map_err(|e| Error::input_io("opening", path, e))?
        .take(4)
        .read_to_end(&mut head)
        .map_err(|e| Error::input_io("reading", path, e))?;
    let (mut entries, meta) = if is_gguf(&head) {
        read_gguf(path, n_experts).map_err(|e| match e.hint() {
            Some(_) => e,
            None => e.with_hint(
                "re-create the importance matrix with llama-imatrix, and check that it is the file meant",
            ),
        })?
    } else {
        let (raw, meta) = parse_dat(path).map_err(|e| {
            let p = path.display().to_string();
            let detail = e.message().strip_prefix(&p).unwrap_or(e.message());
            let msg = format!("{p} is neither a GGUF imatrix nor a legacy imatrix .dat{detail}");
            Error::bad_input(msg).with_hint(e.hint().unwrap_or(
                "pass an importance matrix written by llama-imatrix (imatrix.gguf, or imatrix.dat from --output-format dat)",
            ))
        })?;
        dat_entries(path, raw, meta, n_experts)?
    };
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((entries, meta))
}

/// Reads a GGUF imatrix.
fn read_gguf(path: &Path, n_experts: Option<usize>) -> Result<(Vec<ImatrixEntry>, ImatrixMeta)> {
    let g = GgufFile::open(path)?;
    let p = path.display();
    let bad = |msg: String| Error::bad_input(format!("{p}: {msg}"));
    let mut notes = Vec::new();
    match g.metadata("general.type") {
        Some(GgufValue::String(t)) if t == "imatrix" => {}
        Some(v) => {
            return Err(bad(format!(
                "this GGUF file is not an importance matrix (general.type = {v:?})"
            ))
            .with_hint("pass the imatrix.gguf written by llama-imatrix, not a model file"))
        }
        None if g.tensors().iter().any(|t| t.name.ends_with(".in_sum2")) => {
            notes.push("general.type is missing; read as an imatrix because it has *.in_sum2 tensors".into());
        }
        None => {
            return Err(bad("GGUF file without general.type and without *.in_sum2 tensors: not an importance matrix".into())
                .with_hint("pass the imatrix.gguf written by llama-imatrix"))
        }
    }
    let datasets = match g.metadata("imatrix.datasets") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|s| s.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                bad(format!(
                    "imatrix.datasets must be an array of strings, found {v:?}"
                ))
            })?,
    };
    let uint = |key: &str| -> Result<Option<u64>> {
        match g.metadata(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad(format!("{key} must be a non-negative integer, found {v:?}"))),
        }
    };
    let meta_counts = (uint("imatrix.chunk_count")?, uint("imatrix.chunk_size")?);
    let n_layer_nextn = uint("imatrix.n_layer_nextn")?;

    // Group the tensors by weight name; ignore suffixes this reader does not use.
    const SUFFIXES: [&str; 3] = [".in_sum2", ".counts", ".in_sum"];
    let mut groups: BTreeMap<&str, [Option<&GgufTensorInfo>; 3]> = BTreeMap::new();
    let mut ignored = 0usize;
    for t in g.tensors() {
        match SUFFIXES.iter().position(|suf| t.name.ends_with(suf)) {
            Some(i) => {
                let base = &t.name[..t.name.len() - SUFFIXES[i].len()];
                groups.entry(base).or_default()[i] = Some(t);
            }
            None => ignored += 1,
        }
    }
    if ignored > 0 {
        notes.push(format!(
            "{ignored} tensors with other suffixes (e.g. *.stats) ignored"
        ));
    }
    let fix = "the file is incomplete or corrupt; re-create it with llama-imatrix";
    let mut entries = Vec::with_capacity(groups.len());
    let mut inexact = Vec::new();
    for (base, [sum2, counts_info, sum_info]) in groups {
        let missing = |s: &str| bad(format!("tensor {base}{s} is missing")).with_hint(fix);
        let (sum2, counts_info) = (
            sum2.ok_or_else(|| missing(".in_sum2"))?,
            counts_info.ok_or_else(|| missing(".counts"))?,
        );
        let shape = |t: &GgufTensorInfo, want: &str| {
            bad(format!(
                "tensor {} has shape {:?}; expected {want}",
                t.name, t.dims
            ))
        };
        let (channels, n_mat) = match sum2.dims[..] {
            [c] => (c, 1),
            [c, m] => (c, m),
            _ => return Err(shape(sum2, "[in_features, n_matrices]")),
        };
        if channels == 0 || n_mat == 0 {
            return Err(shape(sum2, "a non-empty tensor"));
        }
        if counts_info.n_elements() != n_mat
            || (counts_info.dims.len() > 1 && counts_info.dims[0] != 1)
        {
            return Err(shape(
                counts_info,
                &format!("[1, {n_mat}] to match {} {:?}", sum2.name, sum2.dims),
            ));
        }
        let (channels, n_mat) = (channels as usize, n_mat as usize);
        if let Some(n) = n_experts.filter(|&n| is_expert_tensor_name(base) && n != n_mat) {
            return Err(bad(format!("tensor {base} has statistics for {n_mat} experts but the model has {n}"))
                .with_hint("the imatrix was made for a model with a different number of experts; pass the matching --model"));
        }
        let mut counts = Vec::with_capacity(n_mat);
        for (e, &c) in g.tensor_f32(&counts_info.name)?.iter().enumerate() {
            if !c.is_finite() || c < 0.0 {
                let m = format!(
                    "tensor {}: count of matrix {e} is {c}; counts must be finite and non-negative",
                    counts_info.name
                );
                return Err(bad(m).with_hint(fix));
            }
            if c > EXACT_F32_COUNT {
                inexact.push(base);
            }
            counts.push(c.round() as u64);
        }
        let mut sum_sq = g.tensor_f32(&sum2.name)?;
        if clean_rows(&mut sum_sq, &counts, channels, true)
            .map_err(|m| bad(format!("tensor {}: {m}", sum2.name)).with_hint(fix))?
        {
            notes.push(format!(
                "{base}: sums of experts with count 0 were not zero; set to zero"
            ));
        }
        let sum = match sum_info {
            Some(t) if t.dims != sum2.dims => {
                return Err(shape(t, &format!("{:?} like {}", sum2.dims, sum2.name)))
            }
            Some(t) => {
                let mut s = g.tensor_f32(&t.name)?;
                clean_rows(&mut s, &counts, channels, false)
                    .map_err(|m| bad(format!("tensor {}: {m}", t.name)).with_hint(fix))?;
                Some(s)
            }
            None => None,
        };
        entries.push(ImatrixEntry {
            name: base.to_string(),
            experts: n_mat,
            channels,
            sum_sq,
            counts,
            sum,
        });
    }
    if !inexact.is_empty() {
        notes.push(format!(
            "token counts above 2^24 are stored inexactly as f32 ({} tensors, e.g. {})",
            inexact.len(),
            inexact[0]
        ));
    }
    Ok((
        entries,
        ImatrixMeta {
            format: ImatrixFormat::Gguf,
            datasets,
            chunk_count: meta_counts.0,
            chunk_size: meta_counts.1,
            n_layer_nextn,
            counts_are_tokens: true,
            notes,
        },
    ))
}

/// Checks the rows of calibrated experts (finite, and `>= 0` when `sum_sq`) and zeroes the
/// rows of experts with count 0. Returns whether a zeroed row held anything but zeros.
fn clean_rows(
    values: &mut [f32],
    counts: &[u64],
    channels: usize,
    sum_sq: bool,
) -> Result<bool, String> {
    let mut zeroed = false;
    for (e, row) in values.chunks_exact_mut(channels).enumerate() {
        if counts[e] == 0 {
            zeroed |= row.iter().any(|&v| v != 0.0);
            row.fill(0.0);
        } else if let Some(c) = row
            .iter()
            .position(|&v| !v.is_finite() || (sum_sq && v < 0.0))
        {
            let (what, want) = if sum_sq {
                ("sum of squares", "a finite value >= 0")
            } else {
                ("sum", "a finite value")
            };
            return Err(format!(
                "expert {e} channel {c} has {what} {}; expected {want}",
                row[c]
            ));
        }
    }
    Ok(zeroed)
}

#[cfg(test)]
mod tests;
