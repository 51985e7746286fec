//! Activation statistics: the canonical in-memory schema, and importers that fill it.
//!
//! Every importer turns a file made by some tool into [`ActivationStats`], keyed by the
//! checkpoint's own (on-disk) module names, so the rest of shardquant never sees a foreign
//! naming scheme. Several files merge by the schema's rule: the max of each amax.
//!
//! Formats read today: ModelOpt amax files (safetensors of `*_quantizer._amax` buffers, as
//! written from a calibrated model's state dict), see [`modelopt`]. New importers add a
//! variant to [`StatsFormat`] and a module that fills [`ActivationStats`] (safetensors files
//! are read through [`StatsFile`]).
//!
//! Memory: a statistics file is memory-mapped, never read whole. Per-tensor amax are decoded
//! at load; static NVFP4 per-block weight amax (`params / 16` values) stay in the mapping as
//! [`BlockAmax`] handles, decoded by the worker that quantizes that weight.

mod blocks;
pub mod exported;
pub mod foreign;
pub mod imatrix;
pub mod modelopt;
pub mod native;
mod raw;
#[cfg(test)]
mod tests;
pub mod torchfile;

pub use blocks::BlockAmax;
/// The GGUF container reader, kept under its one user, the imatrix reader.
pub use imatrix::gguf;
pub use raw::{read_safetensors_entries, RawEntry, StatDtype, StatsEntry, StatsFile};
/// The safe pickle interpreter, kept under its one user, the `.pt` reader.
pub use torchfile::pickle;

use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Weight amax given by a statistics file (`--weight-amax stats`). Cheap to clone.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightAmax {
    /// One amax for the whole tensor (max calibration, or an MSE-chosen per-tensor amax).
    Tensor(f32),
    /// ModelOpt's static NVFP4 weights: per-16-block amax, row-major `[rows, cols/16]`, and the
    /// per-tensor `_global_amax`.
    Blocks {
        /// The `_global_amax`.
        global: f32,
        /// Per-block amax, row-major over `weight_scale [rows, cols/16]` (a handle on the
        /// statistics files; [`BlockAmax::decode`] reads the values).
        blocks: BlockAmax,
    },
}

/// Statistics of one module (a linear, or an attention block for the KV cache): the
/// canonical schema (`docs/stats-formats.md` §7.3). Every field is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModuleStats {
    /// max |x| over the calibration inputs of the linear.
    pub input_amax: Option<f32>,
    /// The input amax recovered exactly from an exported scale (`input_scale × bound`, held in
    /// f64): converting with it writes the same scale bytes (`docs/stats-formats.md` §7.6).
    pub input_amax_exact: Option<f64>,
    /// Per-input-channel max |x| (`[in]`).
    pub input_amax_ch: Option<Vec<f32>>,
    /// Per-input-channel sum of x² over the tokens that reached the module (`[in]`).
    pub input_sum_sq: Option<Vec<f64>>,
    /// Per-input-channel sum of x (`[in]`).
    pub input_sum: Option<Vec<f64>>,
    /// Per-input-channel mean of x² where the source has no usable token count (legacy imatrix).
    pub input_mean_sq: Option<Vec<f32>>,
    /// Tokens that reached the module: absent = unknown, 0 = saw no tokens (uncalibrated).
    pub token_count: Option<u64>,
    /// Weight amax, when the file carries one.
    pub weight_amax: Option<WeightAmax>,
    /// K-cache amax of an attention block.
    pub k_cache_amax: Option<f32>,
    /// V-cache amax of an attention block.
    pub v_cache_amax: Option<f32>,
    /// K/V-cache amax recovered exactly from exported `k_scale` / `v_scale` (f64).
    pub kv_cache_amax_exact: (Option<f64>, Option<f64>),
}

impl ModuleStats {
    /// `E[x²]` per input channel, the weights of an importance-weighted MSE search:
    /// `input_sum_sq / token_count` when both are there and the count is positive, else
    /// `input_mean_sq`; `None` when the statistics have neither.
    pub fn mean_sq(&self) -> Option<Vec<f64>> {
        match (&self.input_sum_sq, self.token_count) {
            (Some(sum_sq), Some(count)) if count > 0 => {
                Some(sum_sq.iter().map(|s| s / count as f64).collect())
            }
            _ => Some(
                self.input_mean_sq
                    .as_ref()?
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect(),
            ),
        }
    }
}

/// What an importer needs to know about the model to place foreign names: its module names
/// and the shapes of its linears.
#[derive(Debug, Clone, Default)]
pub struct ModelNames {
    /// Every quantizable linear: module name → (rows, cols) of its weight.
    pub linears: HashMap<String, (usize, usize)>,
    /// Routed experts per layer: layer → expert numbers present.
    pub experts: BTreeMap<usize, BTreeSet<usize>>,
    /// Attention modules that can hold KV-cache amax.
    pub attention: BTreeSet<String>,
}

/// Activation statistics for one model, keyed by on-disk module name.
#[derive(Debug, Clone, Default)]
pub struct ActivationStats {
    /// The files these statistics came from.
    pub sources: Vec<PathBuf>,
    /// Per-module statistics.
    pub modules: BTreeMap<String, ModuleStats>,
    /// Keys that name modules the model does not have (likely the wrong model or naming).
    pub unmatched: Vec<String>,
    /// Keys understood but not used (e.g. output quantizers, or weight amax when they are not
    /// wanted), with the reason.
    pub ignored: Vec<String>,
    /// Values that were present but zero (an amax of 0 says the module saw no tokens, or only
    /// zeros), treated as missing. NaN, infinite and negative values are errors instead
    /// ([`corrupt_value`]).
    pub invalid: Vec<String>,
}

/// Whether an amax or scale read from a statistics file is damaged: NaN, infinite or negative.
/// Such a value can only come from a broken file or a diverged calibration, so importers
/// refuse the file (a zero is different: it is recorded in [`ActivationStats::invalid`] and
/// treated as missing).
pub fn is_corrupt(v: f32) -> bool {
    !v.is_finite() || v < 0.0
}

/// The error for a NaN, infinite or negative `value` of `key` in the statistics file `path`.
pub fn corrupt_value(path: &Path, key: &str, value: impl std::fmt::Display) -> Error {
    Error::bad_input(format!(
        "{}: '{key}' is {value}; an amax or scale must be finite and not negative",
        path.display()
    ))
    .with_hint(
        "the statistics file is damaged, or the calibration diverged (NaN/inf activations): \
         calibrate again, or leave this file out",
    )
}

/// A statistics file format, detected from content (`--stats-format` forces one; its values
/// are the `clap::ValueEnum` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsFormat {
    /// ModelOpt amax safetensors (`*_quantizer._amax` keys).
    #[value(name = "modelopt")]
    ModeloptAmax,
    /// shardquant's own schema v1 (`.stats.safetensors`, optionally zstd-compressed).
    #[value(name = "shardquant")]
    Native,
    /// A `torch.save` file: ModelOpt / DeepSeek amax dumps, SmoothQuant `act_scales`.
    #[value(name = "torch")]
    TorchPt,
    /// A llama.cpp importance matrix (legacy `.dat` or GGUF).
    Imatrix,
    /// The scales of an already exported checkpoint (a directory).
    Exported,
}

impl StatsFormat {
    /// The `--stats-format` name (from the `clap::ValueEnum` derive).
    pub fn name(self) -> String {
        crate::compute::value_name(&self)
    }
}

/// Refuses a statistics path that is neither a regular file nor a directory: opening a FIFO
/// for reading blocks until a writer comes, so it is never opened.
pub fn refuse_special(path: &Path) -> Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return Err(Error::bad_input(format!(
            "{}: is not a regular file (a FIFO, socket or device?)",
            path.display()
        ))
        .with_hint("pass the statistics file itself"));
    }
    Ok(())
}

/// Detects a statistics file's format from its first bytes.
pub fn detect_format(path: &Path) -> Result<StatsFormat> {
    use std::io::Read;
    if path.is_dir() {
        return Ok(StatsFormat::Exported);
    }
    let mut head = [0u8; 9];
    let mut file = std::fs::File::open(path).map_err(|e| {
        Error::input_io("opening statistics file", path, e).with_hint("check the --stats path")
    })?;
    let n = file
        .read(&mut head)
        .map_err(|e| Error::input_io("reading", path, e))?;
    let head = &head[..n];
    if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        return Ok(StatsFormat::Native);
    }
    if head.starts_with(b"PK\x03\x04") {
        return Ok(StatsFormat::TorchPt);
    }
    if head.starts_with(b"GGUF") || path.extension().is_some_and(|e| e == "dat") {
        return Ok(StatsFormat::Imatrix);
    }
    if n == 9 && head[8] == b'{' {
        let native = native::is_native(path)?;
        return Ok(if native {
            StatsFormat::Native
        } else {
            StatsFormat::ModeloptAmax
        });
    }
    Err(Error::bad_input(format!("{}: unrecognised statistics format", path.display())).with_hint(
        "shardquant reads ModelOpt amax safetensors, its own .stats.safetensors[.zst], torch.save .pt files \
         (ModelOpt/DeepSeek amax dumps, SmoothQuant act_scales) and llama.cpp imatrix .dat/.gguf; \
         --stats-format forces one",
    ))
}

impl ActivationStats {
    /// Reads and merges statistics files for a model.
    ///
    /// `weights` says whether weight amax are wanted (`--weight-amax stats`). When false,
    /// weight-quantizer keys of the model's modules (`X.weight_quantizer.*`,
    /// `*_weight_quantizers.E.*`) are listed in [`ActivationStats::ignored`] without being
    /// read or checked. When true, per-block amax are checked (block count, a `_global_amax`,
    /// values finite and not negative) by reading them from the mapping once, without
    /// keeping them.
    pub fn load_with(
        paths: &[PathBuf],
        layout: &crate::input::layout::Layout,
        model: &ModelNames,
        weights: bool,
    ) -> Result<Self> {
        Self::load_formats(paths, None, layout, model, weights)
    }

    /// Like [`ActivationStats::load_with`], with every file read as `forced` when given.
    /// Files are merged in path order (sums in f64), so the result does not depend on the
    /// order they were given in.
    pub fn load_formats(
        paths: &[PathBuf],
        forced: Option<StatsFormat>,
        layout: &crate::input::layout::Layout,
        model: &ModelNames,
        weights: bool,
    ) -> Result<Self> {
        let mut stats = ActivationStats::default();
        let mut sorted: Vec<&PathBuf> = paths.iter().collect();
        sorted.sort();
        for path in sorted {
            refuse_special(path)?;
            let format = match forced {
                Some(f) => f,
                None => detect_format(path)?,
            };
            match format {
                StatsFormat::ModeloptAmax => {
                    let file = StatsFile::open(path)?;
                    modelopt::import(&file, layout, model, weights, &mut stats)?;
                }
                StatsFormat::Native => {
                    native::read_native(path, layout, model, &mut stats)?;
                }
                StatsFormat::TorchPt => {
                    foreign::import_pt(path, layout, model, weights, &mut stats)?
                }
                StatsFormat::Imatrix => foreign::import_imatrix(path, layout, model, &mut stats)?,
                StatsFormat::Exported => exported::import_exported(path, model, &mut stats)?,
            }
            stats.sources.push(path.clone());
        }
        Ok(stats)
    }

    /// Statistics of one module, if any.
    pub fn module(&self, name: &str) -> Option<&ModuleStats> {
        self.modules.get(name)
    }

    /// Merges an input amax into a module's entry (max of the values).
    pub fn merge_input(&mut self, module: &str, amax: f32) {
        let entry = self.modules.entry(module.to_string()).or_default();
        entry.input_amax = Some(entry.input_amax.map_or(amax, |a| a.max(amax)));
        // An exact value stays only while it is the max.
        if entry
            .input_amax_exact
            .is_some_and(|x| Some(x as f32) != entry.input_amax)
        {
            entry.input_amax_exact = None;
        }
    }

    /// Merges a weight amax (max of per-tensor values; element-wise max of block values, taken
    /// when the blocks are decoded).
    pub fn merge_weight(&mut self, module: &str, amax: WeightAmax) -> Result<(), String> {
        let entry = self.modules.entry(module.to_string()).or_default();
        entry.weight_amax = Some(match (entry.weight_amax.take(), amax) {
            (None, new) => new,
            (Some(WeightAmax::Tensor(a)), WeightAmax::Tensor(b)) => WeightAmax::Tensor(a.max(b)),
            (
                Some(WeightAmax::Blocks {
                    global: g1,
                    blocks: b1,
                }),
                WeightAmax::Blocks {
                    global: g2,
                    blocks: b2,
                },
            ) if b1.len() == b2.len() => WeightAmax::Blocks {
                global: g1.max(g2),
                blocks: b1.merge(&b2).expect("same block count"),
            },
            _ => {
                return Err(format!(
                    "{module}: weight amax given in two incompatible shapes"
                ))
            }
        });
        Ok(())
    }

    /// Merges per-channel statistics into a module's entry by the schema's rules: element-wise
    /// max for `input_amax_ch`, sums add, counts add. `Err` on a channel-count mismatch.
    pub fn merge_channels(&mut self, module: &str, other: &ModuleStats) -> Result<(), String> {
        let entry = self.modules.entry(module.to_string()).or_default();
        fn zip_with<T: Copy>(
            a: &mut Option<Vec<T>>,
            b: &Option<Vec<T>>,
            f: impl Fn(T, T) -> T,
            what: &str,
            module: &str,
        ) -> Result<(), String> {
            match (a.as_mut(), b) {
                (_, None) => Ok(()),
                (None, Some(b)) => {
                    *a = Some(b.clone());
                    Ok(())
                }
                (Some(a), Some(b)) if a.len() == b.len() => {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x = f(*x, *y));
                    Ok(())
                }
                (Some(a), Some(b)) => Err(format!(
                    "{module}: {what} has {} channels in one file and {} in another",
                    a.len(),
                    b.len()
                )),
            }
        }
        zip_with(
            &mut entry.input_amax_ch,
            &other.input_amax_ch,
            f32::max,
            "input_amax_ch",
            module,
        )?;
        zip_with(
            &mut entry.input_sum_sq,
            &other.input_sum_sq,
            |x, y| x + y,
            "input_sum_sq",
            module,
        )?;
        zip_with(
            &mut entry.input_sum,
            &other.input_sum,
            |x, y| x + y,
            "input_sum",
            module,
        )?;
        if other.input_mean_sq.is_some() {
            if entry.input_mean_sq.is_some() {
                return Err(format!("{module}: two files give input_mean_sq without token counts; they cannot be merged"));
            }
            entry.input_mean_sq = other.input_mean_sq.clone();
        }
        if let Some(n) = other.token_count {
            entry.token_count = Some(entry.token_count.unwrap_or(0) + n);
        } else if entry.token_count == Some(0)
            && (other.input_mean_sq.is_some()
                || other.input_sum_sq.is_some()
                || other.input_amax_ch.is_some())
        {
            // Another file saw tokens here, without counting them: calibrated, count unknown.
            entry.token_count = None;
        }
        Ok(())
    }

    /// Merges an input amax recovered exactly from an exported scale.
    pub fn merge_input_exact(&mut self, module: &str, amax: f64) {
        let entry = self.modules.entry(module.to_string()).or_default();
        let had_plain_only = entry.input_amax.is_some() && entry.input_amax_exact.is_none();
        entry.input_amax_exact = Some(entry.input_amax_exact.map_or(amax, |a| a.max(amax)));
        // A plain value already merged that is at least as large wins: no exactness then.
        if had_plain_only && entry.input_amax >= Some(amax as f32) {
            entry.input_amax_exact = None;
        }
        self.merge_input(module, amax as f32);
    }

    /// Merges a K/V-cache amax recovered exactly from an exported scale.
    pub fn merge_kv_exact(&mut self, module: &str, is_k: bool, amax: f64) {
        let entry = self.modules.entry(module.to_string()).or_default();
        let (plain, exact) = if is_k {
            (entry.k_cache_amax, &mut entry.kv_cache_amax_exact.0)
        } else {
            (entry.v_cache_amax, &mut entry.kv_cache_amax_exact.1)
        };
        let had_plain_only = plain.is_some() && exact.is_none();
        *exact = Some(exact.map_or(amax, |a| a.max(amax)));
        if had_plain_only && plain >= Some(amax as f32) {
            *exact = None;
        }
        self.merge_kv(module, is_k, amax as f32);
    }
    /// Merges a KV-cache amax into an attention module's entry.
    pub fn merge_kv(&mut self, module: &str, is_k: bool, amax: f32) {
        let entry = self.modules.entry(module.to_string()).or_default();
        let (slot, exact) = if is_k {
            (&mut entry.k_cache_amax, &mut entry.kv_cache_amax_exact.0)
        } else {
            (&mut entry.v_cache_amax, &mut entry.kv_cache_amax_exact.1)
        };
        *slot = Some(slot.map_or(amax, |a| a.max(amax)));
        // An exact value stays only while it is the max.
        if exact.is_some_and(|x| Some(x as f32) != *slot) {
            *exact = None;
        }
    }
}
