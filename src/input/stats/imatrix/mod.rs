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

pub mod gguf;

use self::gguf::{is_gguf, GgufFile, GgufTensorInfo, GgufValue, LeReader};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// Longest tensor name accepted in a `.dat` (ggml names are at most 64 bytes).
const MAX_DAT_NAME: i32 = 4096;

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

/// One `.dat` entry as stored.
struct DatEntry {
    name: String,
    ncall: i32,
    values: Vec<f32>,
}

/// Parses the structure of a legacy `.dat` imatrix (entries as stored, and the trailer).
/// The caller reports failures as "neither GGUF nor .dat".
fn parse_dat(path: &Path) -> Result<(Vec<DatEntry>, ImatrixMeta)> {
    let file = File::open(path).map_err(|e| Error::input_io("opening", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::input_io("reading", path, e))?
        .len();
    let mut r = LeReader::new(BufReader::new(file), len, path);
    let n_entries = r.i32("entry count")?;
    // The smallest entry is 17 bytes (4 + 1-byte name + 4 + 4 + one value).
    if n_entries < 1 || n_entries as u64 * 17 > r.remaining() {
        return Err(r.err(format!(
            "entry count {n_entries} is impossible for a file of {len} bytes"
        )));
    }
    let mut raw: Vec<DatEntry> = Vec::with_capacity((n_entries as usize).min(4096));
    let mut seen = HashMap::new();
    for i in 0..n_entries {
        let name_len = r.i32("name length")?;
        if !(1..=MAX_DAT_NAME).contains(&name_len) {
            return Err(r.err(format!("entry {i}: name length {name_len} is out of range")));
        }
        let name = String::from_utf8(r.bytes(name_len as u64, "tensor name")?)
            .map_err(|_| r.err(format!("entry {i}: tensor name is not UTF-8")))?;
        let ncall = r.i32("ncall")?;
        let nval = r.i32("value count")?;
        if ncall < 1 {
            return Err(r.err(format!(
                "tensor {name}: ncall is {ncall}; it must be at least 1 to give E[x^2] = value / ncall"
            )));
        }
        if nval < 1 {
            return Err(r.err(format!(
                "tensor {name}: value count {nval} must be at least 1"
            )));
        }
        let values = r.f32s(nval as u64, &format!("values of tensor {name}"))?;
        if seen.insert(name.clone(), i).is_some() {
            return Err(r.err(format!("tensor {name} appears twice")));
        }
        raw.push(DatEntry {
            name,
            ncall,
            values,
        });
    }
    let mut meta = ImatrixMeta {
        format: ImatrixFormat::LegacyDat,
        datasets: Vec::new(),
        chunk_count: None,
        chunk_size: None,
        n_layer_nextn: None,
        counts_are_tokens: false,
        notes: Vec::new(),
    };
    if r.remaining() > 0 {
        let last_chunk = r.i32("trailer chunk count")?;
        meta.chunk_count = Some(
            u64::try_from(last_chunk)
                .map_err(|_| r.err(format!("trailer chunk count {last_chunk} is negative")))?,
        );
        if r.remaining() > 0 {
            let n = r.i32("dataset name length")?;
            if n < 0 || n as u64 > r.remaining() {
                return Err(r.err(format!("dataset name length {n} is out of range")));
            }
            let dataset = r.bytes(n as u64, "dataset name")?;
            meta.datasets
                .push(String::from_utf8_lossy(&dataset).into_owned());
        }
        if r.remaining() > 0 {
            return Err(r.err(format!(
                "{} unexpected bytes after the trailer",
                r.remaining()
            )));
        }
    }
    Ok((raw, meta))
}

/// Turns parsed `.dat` entries into [`ImatrixEntry`]s: splits expert tensors and applies the
/// sentinel rules.
fn dat_entries(
    path: &Path,
    raw: Vec<DatEntry>,
    mut meta: ImatrixMeta,
    n_experts: Option<usize>,
) -> Result<(Vec<ImatrixEntry>, ImatrixMeta)> {
    let bad =
        |msg: String| Error::bad_input(format!("{}: legacy imatrix .dat: {msg}", path.display()));
    let hidden = hidden_sizes(&raw);
    let mut inferred: BTreeMap<String, usize> = BTreeMap::new();
    let mut split = Vec::with_capacity(raw.len());
    for d in &raw {
        let nval = d.values.len();
        let experts = if !is_expert_tensor_name(&d.name) {
            1
        } else if let Some(n) = n_experts {
            n
        } else if let Some(n) = infer_experts(&d.name, nval, &raw, &hidden) {
            inferred.insert(d.name.clone(), n);
            n
        } else {
            meta.notes.push(format!(
                "{}: number of experts unknown (no tensor of the same layer gives the hidden size); kept as one matrix of {nval} channels",
                d.name
            ));
            1
        };
        if nval % experts != 0 {
            return Err(bad(format!(
                "tensor {} has {nval} values, not a multiple of the model's {experts} experts",
                d.name
            ))
            .with_hint("the imatrix was made for a different model; pass the matching --model"));
        }
        split.push(experts);
    }
    let mut entries = Vec::with_capacity(raw.len());
    for (d, experts) in raw.into_iter().zip(split) {
        let name = d.name.clone();
        entries.push(dat_entry(d, experts).map_err(|m| {
            let mut e = bad(format!("tensor {name}: {m}")).with_hint(
                "the file is corrupt, or values were accumulated wrongly; re-create it with llama-imatrix",
            );
            if experts == 1 && is_expert_tensor_name(&name) {
                e = e.with_hint("pass the model (--model) so the expert rows can be told apart");
            }
            e
        })?);
    }
    if let Some((name, n)) = inferred.iter().next() {
        meta.notes.push(format!(
            "expert counts inferred from the hidden size of each layer ({} tensors, e.g. {name}: {n} experts)",
            inferred.len()
        ));
    }
    Ok((entries, meta))
}

/// Splits a `.dat` entry into `experts` rows and applies the sentinel rules.
fn dat_entry(d: DatEntry, experts: usize) -> Result<ImatrixEntry, String> {
    let channels = d.values.len() / experts;
    let ncall = d.ncall as f32;
    let mut sum_sq = d.values;
    let mut counts = Vec::with_capacity(experts);
    for (e, row) in sum_sq.chunks_exact_mut(channels).enumerate() {
        let all_nan = row.iter().all(|v| v.is_nan());
        let sentinel = experts > 1 && row.iter().all(|&v| v == ncall);
        if all_nan || sentinel {
            row.fill(0.0);
            counts.push(0);
        } else if let Some(c) = row.iter().position(|&v| !v.is_finite() || v < 0.0) {
            return Err(format!(
                "expert {e} channel {c} has value {}; expected a finite value >= 0",
                row[c]
            ));
        } else {
            counts.push(d.ncall as u64);
        }
    }
    Ok(ImatrixEntry {
        name: d.name,
        experts,
        channels,
        sum_sq,
        counts,
        sum: None,
    })
}

/// Splits `blk.L.TENSOR.weight` into (L, TENSOR).
fn split_block_name(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, tensor) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((layer.parse().ok()?, tensor))
}

/// Per layer, the hidden size: the input width of a dense tensor that reads the residual
/// stream. `None` for a layer where such tensors disagree.
fn hidden_sizes(raw: &[DatEntry]) -> HashMap<usize, Option<usize>> {
    const READS_HIDDEN: [&str; 9] = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_qkv",
        "attn_q_a",
        "attn_kv_a_mqa",
        "ffn_gate_inp",
        "ffn_gate_shexp",
        "ffn_up_shexp",
    ];
    let mut out: HashMap<usize, Option<usize>> = HashMap::new();
    for d in raw {
        if let Some((layer, t)) = split_block_name(&d.name) {
            if READS_HIDDEN.contains(&t) {
                let n = d.values.len();
                out.entry(layer)
                    .and_modify(|h| *h = h.filter(|&h| h == n))
                    .or_insert(Some(n));
            }
        }
    }
    out
}

/// Infers the expert count of a `.dat` `*_exps` tensor: gate/up read the hidden state;
/// down has the same experts as gate/up of its layer.
fn infer_experts(
    name: &str,
    nval: usize,
    raw: &[DatEntry],
    hidden: &HashMap<usize, Option<usize>>,
) -> Option<usize> {
    let (layer, tensor) = split_block_name(name)?;
    let h = (*hidden.get(&layer)?)?;
    let from_hidden = |n: usize| (n % h == 0 && n >= h).then_some(n / h);
    match tensor {
        "ffn_gate_exps" | "ffn_up_exps" => from_hidden(nval),
        "ffn_down_exps" => {
            let mut found = ["ffn_gate_exps", "ffn_up_exps"].iter().filter_map(|t| {
                let n = format!("blk.{layer}.{t}.weight");
                raw.iter()
                    .find(|d| d.name == n)
                    .and_then(|d| from_hidden(d.values.len()))
            });
            let first = found.next()?;
            found.all(|n| n == first).then_some(first)
        }
        _ => None,
    }
}

/// How an architecture names its modules, as far as the mapping needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Llama-style names; routed experts `mlp.experts.E.{gate,up,down}_proj`, no shared expert.
    Generic,
    /// Mixtral: `block_sparse_moe.experts.E.w{1,3,2}`, router `block_sparse_moe.gate`.
    Mixtral,
    /// Qwen2-MoE: shared expert `mlp.shared_expert` (singular) with `mlp.shared_expert_gate`.
    Qwen2Moe,
    /// DeepSeek V2/V3 (and Kimi K2): MLA projections, `mlp.shared_experts` (plural).
    DeepSeek,
    /// Llama4, GPT-OSS: routed experts are stored fused (3-D), not per expert.
    FusedExperts,
}

fn family(model_type: &str) -> Family {
    let t: String = model_type
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    if t.starts_with("mixtral") {
        Family::Mixtral
    } else if t.starts_with("qwen2moe") {
        Family::Qwen2Moe
    } else if t.starts_with("deepseekv2") || t.starts_with("deepseekv3") || t.starts_with("kimik2")
    {
        Family::DeepSeek
    } else if t.starts_with("llama4") || t.starts_with("gptoss") {
        Family::FusedExperts
    } else {
        Family::Generic
    }
}

/// Maps a llama.cpp tensor name to HF module names (the on-disk weight name without
/// `.weight`) for an architecture, given as config.json's `model_type` (`"qwen3_moe"`) or an
/// `architectures` entry (`"Qwen3MoeForCausalLM"`).
///
/// Returns one module (expert `None`) for a dense tensor, three for a fused `attn_qkv`, and
/// for `*_exps` tensors one module per expert `0..n_experts` with its index, in the
/// architecture's per-expert naming (qwen3_moe: `model.layers.L.mlp.experts.E.gate_proj`;
/// mixtral: `model.layers.L.block_sparse_moe.experts.E.w1`). `None` when the name has no HF
/// counterpart whose input is the same activation (DeepSeek `attn_k_b` / `attn_v_b`, which
/// llama.cpp splits out of `kv_b_proj`), is not a matmul weight, belongs to an architecture
/// that stores its experts fused (Llama4, GPT-OSS), or is an expert tensor with
/// `n_experts == 0`. Architectures not known here get Llama-style names; callers check every
/// mapped name against the checkpoint.
pub fn llama_cpp_to_hf(
    name: &str,
    model_type: &str,
    n_experts: usize,
) -> Option<Vec<(String, Option<usize>)>> {
    if name == "output.weight" {
        return Some(vec![("lm_head".to_string(), None)]);
    }
    let fam = family(model_type);
    let (layer, tensor) = split_block_name(name)?;
    let pre = format!("model.layers.{layer}");
    let one = |m: &str| Some(vec![(format!("{pre}.{m}"), None)]);
    let moe = if fam == Family::Mixtral {
        "block_sparse_moe"
    } else {
        "mlp"
    };
    match tensor {
        "attn_q" => one("self_attn.q_proj"),
        "attn_k" => one("self_attn.k_proj"),
        "attn_v" => one("self_attn.v_proj"),
        "attn_qkv" => Some(
            ["q_proj", "k_proj", "v_proj"]
                .iter()
                .map(|p| (format!("{pre}.self_attn.{p}"), None))
                .collect(),
        ),
        "attn_output" => one("self_attn.o_proj"),
        "attn_q_a" => one("self_attn.q_a_proj"),
        "attn_q_b" => one("self_attn.q_b_proj"),
        "attn_kv_a_mqa" => one("self_attn.kv_a_proj_with_mqa"),
        "attn_kv_b" => one("self_attn.kv_b_proj"),
        "ffn_gate" => one("mlp.gate_proj"),
        "ffn_up" => one("mlp.up_proj"),
        "ffn_down" => one("mlp.down_proj"),
        "ffn_gate_inp" => one(&format!("{moe}.gate")),
        "ffn_gate_inp_shexp" if fam == Family::Qwen2Moe => one("mlp.shared_expert_gate"),
        "nextn.eh_proj" if fam == Family::DeepSeek => one("eh_proj"),
        "nextn.shared_head_head" if fam == Family::DeepSeek => one("shared_head.head"),
        "ffn_gate_shexp" | "ffn_up_shexp" | "ffn_down_shexp" => {
            let shared = match fam {
                Family::Qwen2Moe => "mlp.shared_expert",
                Family::DeepSeek => "mlp.shared_experts",
                _ => return None,
            };
            let proj = &tensor[4..tensor.len() - 6];
            one(&format!("{shared}.{proj}_proj"))
        }
        "ffn_gate_exps" | "ffn_up_exps" | "ffn_down_exps" => {
            if n_experts == 0 || fam == Family::FusedExperts {
                return None;
            }
            let proj = &tensor[4..tensor.len() - 5];
            let leaf = match (fam, proj) {
                (Family::Mixtral, "gate") => "w1".to_string(),
                (Family::Mixtral, "up") => "w3".to_string(),
                (Family::Mixtral, _) => "w2".to_string(),
                _ => format!("{proj}_proj"),
            };
            Some(
                (0..n_experts)
                    .map(|e| (format!("{pre}.{moe}.experts.{e}.{leaf}"), Some(e)))
                    .collect(),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
