//! The legacy `.dat` imatrix: its parser, and the expert rows and sentinels read from it.

use super::gguf::LeReader;
use super::names::split_block_name;
use super::{is_expert_tensor_name, ImatrixEntry, ImatrixFormat, ImatrixMeta};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// Longest tensor name accepted in a `.dat` (ggml names are at most 64 bytes).
const MAX_DAT_NAME: i32 = 4096;

/// One `.dat` entry as stored.
pub(super) struct DatEntry {
    name: String,
    ncall: i32,
    values: Vec<f32>,
}

/// Parses the structure of a legacy `.dat` imatrix (entries as stored, and the trailer).
/// The caller reports failures as "neither GGUF nor .dat".
pub(super) fn parse_dat(path: &Path) -> Result<(Vec<DatEntry>, ImatrixMeta)> {
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
pub(super) fn dat_entries(
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
    let from_hidden = |n: usize| (n.is_multiple_of(h) && n >= h).then_some(n / h);
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
