//! The resume journal: `.shardquant-journal.jsonl` in the staging directory, which says what a
//! run that was stopped (killed, out of disk, interrupted) had completed, so that `--resume`
//! can continue from there.
//!
//! One JSON object per line, appended and synced:
//! - the first line is the header: the journal format version and the conversion key (the
//!   fingerprint of inputs, statistics, byte-affecting options, tool version and build id; see
//!   [`super::manifest`]); a later run resumes only with an equal key;
//! - each further line records one sealed output shard (name, size, SHA-256), written after
//!   the shard was synced and renamed, with the `.quant_summary.txt` lines of every unit of
//!   work that wrote into it (f32 values as their bit patterns, so they come back exactly).
//!
//! A line cut short by a crash does not parse and ends the journal there: the shard it would
//! have recorded is written again.

use crate::compute::nonfinite::NonFinite;
use crate::digest::FileDigest;
use crate::error::{Error, Result};
use crate::pipeline::{NonFiniteWeight, SummaryLine};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The journal's file name inside the staging directory.
pub const JOURNAL_FILE: &str = ".shardquant-journal.jsonl";
/// The journal format version.
const FORMAT: u32 = 1;

/// One `.quant_summary.txt` line, exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SummaryRecord {
    module: String,
    weight_amax_bits: u32,
    static_blocks: bool,
    input_amax_bits: Option<u32>,
    weight_scale_bits: u32,
    #[serde(default)]
    importance_weighted: bool,
    /// `--allow-nonfinite`: (input tensor, NaN count, inf count, first index, [row, col]).
    #[serde(default)]
    nonfinite: Option<(String, usize, usize, usize, [usize; 2])>,
}

impl From<&SummaryLine> for SummaryRecord {
    fn from(l: &SummaryLine) -> Self {
        SummaryRecord {
            module: l.module.clone(),
            weight_amax_bits: l.weight_amax.to_bits(),
            static_blocks: l.static_blocks,
            input_amax_bits: l.input_amax.map(f32::to_bits),
            weight_scale_bits: l.weight_scale.to_bits(),
            importance_weighted: l.importance_weighted,
            nonfinite: l.nonfinite.as_ref().map(|n| {
                (
                    n.tensor.clone(),
                    n.counts.nan,
                    n.counts.inf,
                    n.counts.first,
                    n.first,
                )
            }),
        }
    }
}

impl From<SummaryRecord> for SummaryLine {
    fn from(r: SummaryRecord) -> Self {
        SummaryLine {
            module: r.module,
            weight_amax: f32::from_bits(r.weight_amax_bits),
            static_blocks: r.static_blocks,
            input_amax: r.input_amax_bits.map(f32::from_bits),
            weight_scale: f32::from_bits(r.weight_scale_bits),
            importance_weighted: r.importance_weighted,
            nonfinite: r
                .nonfinite
                .map(|(tensor, nan, inf, first, at)| NonFiniteWeight {
                    tensor,
                    counts: NonFinite { nan, inf, first },
                    first: at,
                }),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    journal: u32,
    key: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// The shard sealed (`None` for a line that only carries summaries).
    shard: Option<FileDigest>,
    units: BTreeMap<usize, Vec<SummaryRecord>>,
}

/// What a journal says: the key of the run that wrote it and what it completed.
#[derive(Debug, Clone, Default)]
pub struct JournalState {
    /// The conversion key.
    pub key: serde_json::Value,
    /// Sealed shards, in the order they were sealed.
    pub shards: Vec<FileDigest>,
    /// Summary lines of the units that wrote into sealed shards, by unit index.
    pub units: BTreeMap<usize, Vec<SummaryLine>>,
}

impl JournalState {
    /// Reads the journal of the staging directory `dir`; `None` when there is none or its
    /// header is unreadable (nothing there can be trusted).
    pub fn read(dir: &Path) -> Option<JournalState> {
        let text = std::fs::read_to_string(dir.join(JOURNAL_FILE)).ok()?;
        let mut lines = text.lines();
        let header: Header = serde_json::from_str(lines.next()?).ok()?;
        if header.journal != FORMAT {
            return None;
        }
        let mut state = JournalState {
            key: header.key,
            ..JournalState::default()
        };
        for line in lines {
            let Ok(entry) = serde_json::from_str::<Entry>(line) else {
                break;
            };
            state.add(entry);
        }
        Some(state)
    }

    fn add(&mut self, entry: Entry) {
        if let Some(shard) = entry.shard {
            self.shards.retain(|s| s.path != shard.path);
            self.shards.push(shard);
        }
        for (unit, lines) in entry.units {
            self.units
                .insert(unit, lines.into_iter().map(SummaryLine::from).collect());
        }
    }
}

/// An open journal that records shards as they are sealed. `&self` methods may be called from
/// any thread.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    sealed: std::sync::atomic::AtomicUsize,
}

impl Journal {
    /// Writes a new journal into `dir` holding `state` (the key, and shards already checked
    /// complete when resuming), replacing any journal there atomically.
    pub fn start(dir: &Path, state: &JournalState) -> Result<Journal> {
        let path = dir.join(JOURNAL_FILE);
        let tmp = dir.join(format!("{JOURNAL_FILE}.tmp"));
        let mut text = line(&Header {
            journal: FORMAT,
            key: state.key.clone(),
        })?;
        for shard in &state.shards {
            text.push_str(&line(&Entry {
                shard: Some(shard.clone()),
                units: BTreeMap::new(),
            })?);
        }
        if !state.units.is_empty() {
            let units = state
                .units
                .iter()
                .map(|(u, lines)| (*u, lines.iter().map(SummaryRecord::from).collect()))
                .collect();
            text.push_str(&line(&Entry { shard: None, units })?);
        }
        super::write_file(&tmp, text.as_bytes())?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::output_io("renaming", &tmp, e))?;
        super::sync_dir(dir)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::output_io("opening for writing", &path, e))?;
        Ok(Journal {
            path,
            file: Mutex::new(file),
            sealed: std::sync::atomic::AtomicUsize::new(state.shards.len()),
        })
    }

    /// Records a sealed shard and the summary lines of the units that wrote into it; synced
    /// before it returns.
    pub fn record(&self, shard: FileDigest, units: &[(usize, Vec<SummaryLine>)]) -> Result<()> {
        let entry = Entry {
            shard: Some(shard),
            units: units
                .iter()
                .map(|(u, lines)| (*u, lines.iter().map(SummaryRecord::from).collect()))
                .collect(),
        };
        let text = line(&entry)?;
        let mut file = self
            .file
            .lock()
            .map_err(|_| Error::other("internal error: the journal's lock is poisoned"))?;
        // One write call per line: a crash leaves at most a cut-off last line.
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::output_io("writing", &self.path, e))?;
        self.sealed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Shards recorded, those carried over from a resumed run included.
    pub fn sealed(&self) -> usize {
        self.sealed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Removes the journal (before the directory is published).
    pub fn remove(&self) -> Result<()> {
        std::fs::remove_file(&self.path).map_err(|e| Error::output_io("removing", &self.path, e))
    }
}

/// `value` as one JSON line.
fn line<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map(|s| s + "\n")
        .map_err(|e| Error::other(format!("internal error: writing the resume journal: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(name: &str) -> FileDigest {
        FileDigest {
            path: name.into(),
            size: 10,
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn records_survive_exactly_and_a_cut_line_ends_the_journal() {
        let tmp = tempfile::Builder::new()
            .prefix("sq-journal-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let key = serde_json::json!({"version": "x", "inputs": [1, 2]});
        let state = JournalState {
            key: key.clone(),
            ..JournalState::default()
        };
        let journal = Journal::start(&dir, &state).unwrap();
        let line = SummaryLine {
            module: "model.layers.0.mlp.up_proj".into(),
            weight_amax: f32::from_bits(0x3e4c_cccd),
            static_blocks: false,
            input_amax: Some(f32::MIN_POSITIVE / 3.0),
            weight_scale: 1.0e-30,
            importance_weighted: true,
            nonfinite: Some(NonFiniteWeight {
                tensor: "model.layers.0.mlp.up_proj.weight".into(),
                counts: NonFinite {
                    nan: 2,
                    inf: 1,
                    first: 70,
                },
                first: [1, 6],
            }),
        };
        journal
            .record(digest("a"), &[(3, vec![line.clone()]), (4, vec![])])
            .unwrap();
        journal.record(digest("b"), &[(5, vec![])]).unwrap();
        assert_eq!(journal.sealed(), 2);
        let back = JournalState::read(&dir).unwrap();
        assert_eq!(back.key, key);
        assert_eq!(back.shards, vec![digest("a"), digest("b")]);
        let got = &back.units[&3][0];
        assert_eq!(got.weight_amax.to_bits(), line.weight_amax.to_bits());
        assert_eq!(
            got.input_amax.map(f32::to_bits),
            line.input_amax.map(f32::to_bits)
        );
        assert_eq!(got.weight_scale.to_bits(), line.weight_scale.to_bits());
        assert!(back.units[&4].is_empty() && back.units.contains_key(&5));

        // A crash in the middle of appending: the cut line and anything after it are ignored.
        let path = dir.join(JOURNAL_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"shard\":{\"path\":\"c\",\"si");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(JournalState::read(&dir).unwrap().shards.len(), 2);

        // Restarting from a state carries its shards and summaries over.
        let again = Journal::start(&dir, &back).unwrap();
        assert_eq!(again.sealed(), 2);
        let reread = JournalState::read(&dir).unwrap();
        assert_eq!(reread.shards, back.shards);
        assert_eq!(reread.units.len(), 3);
        again.remove().unwrap();
        assert!(JournalState::read(&dir).is_none());
        tmp.close().unwrap();
    }
}
