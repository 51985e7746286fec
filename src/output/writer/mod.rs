//! Writing the planned shards: positioned writes, in any order, from any thread; each shard
//! sealed (synced, optionally hashed, renamed) as soon as it is complete.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::digest::{hash_open_file, FileDigest, PrefixHasher};
use crate::error::{Error, Result};
use crate::fault;
use crate::input::checkpoint::INDEX_FILE_NAME;
use crate::plan::ShardPlan;

mod background;
use background::{lock, WriterClock, WrittenPrefix};
pub use background::{Service, WriterSeconds};

/// Suffix of the files being written; they get their final names when sealed.
const PARTIAL: &str = ".partial";
/// How many missing tensors the error of [`ShardWriter::finish`] names.
const MAX_NAMED: usize = 5;

/// Where a shard stands.
#[derive(Debug, Clone)]
enum Sealed {
    /// Still `NAME.partial`.
    No,
    /// Synced and renamed to its final name, with its digest when it was hashed.
    Yes(Option<FileDigest>),
}

/// One output file.
struct OpenShard {
    name: String,
    partial: PathBuf,
    /// `None` for a shard that was complete before this writer was made ([`ShardWriter::resume`]).
    file: Option<File>,
    file_len: u64,
    /// The planned tensors it holds.
    members: Vec<usize>,
    sealed: Mutex<Sealed>,
    /// The written byte ranges and the prefix they complete.
    prefix: Mutex<WrittenPrefix>,
    /// End of the written prefix's part whose disk writeback was started.
    writeback_started: Mutex<u64>,
    /// The SHA-256 of the written prefix, advanced as writes complete it; `None` once a
    /// read failed (sealing then reads the whole file back, and reports the error).
    hash: Mutex<Option<PrefixHasher>>,
}

/// Writes the shards of a [`ShardPlan`] with positioned writes (`pwrite`), so tensors can
/// arrive in any order from many threads and the output bytes are the same regardless.
///
/// The files are written as `NAME.partial`. A shard is *sealed* once all its tensors are in:
/// synced to disk, optionally hashed (SHA-256), renamed to its final name, and the directory
/// synced, so a sealed shard is complete and durable. The caller seals shards as they complete
/// ([`ShardWriter::seal`], which a resume journal can then record), and
/// [`ShardWriter::finish`] seals the rest and writes the index. An interrupted run never
/// leaves a partial file under a final name, and an existing file of the same name (which may be
/// memory-mapped by a reader) is replaced, never truncated in place. Dropping the writer
/// without finishing deletes the partial files and keeps the sealed ones.
///
/// [`ShardWriter::resume`] continues in a directory where some shards were sealed before: their
/// tensors are neither expected nor accepted.
///
/// `ShardWriter` is `Send + Sync`; its `&self` methods may be called from many threads.
pub struct ShardWriter {
    dir: PathBuf,
    shards: Vec<OpenShard>,
    /// Per tensor: (shard, absolute file offset, byte length).
    locations: Vec<(usize, u64, usize)>,
    names: Vec<String>,
    written: Vec<AtomicBool>,
    index: Option<String>,
    /// The index's partial file while it is being written (removed on drop).
    index_partial: Option<PathBuf>,
    finished: bool,
    /// Nanoseconds spent (summed over threads) for the report's stage timings.
    clock: WriterClock,
    /// Shards whose written prefix grew, for the background threads ([`ShardWriter::serve`]):
    /// one channel for the writeback, one for hashing; `None` once [`ShardWriter::stop_serving`]
    /// was called (the serving threads then drain what was sent and return).
    served: RwLock<Option<[Sender<usize>; 2]>>,
    to_serve: [Receiver<usize>; 2],
}

impl ShardWriter {
    /// Creates every shard file of `plan` in `dir` (which must exist), writes its header and sets
    /// its length. Existing files with the final names are left alone until their shard is
    /// sealed, which replaces them.
    pub fn create(dir: &Path, plan: &ShardPlan) -> Result<ShardWriter> {
        ShardWriter::resume(dir, plan, vec![None; plan.shard_count()])
    }

    /// Like [`ShardWriter::create`], except for the shards with `done[s]` set: those are already
    /// complete in `dir` under their final names (the caller has checked them against the
    /// digest given), so they are not created and their tensors are not written again.
    pub fn resume(
        dir: &Path,
        plan: &ShardPlan,
        done: Vec<Option<FileDigest>>,
    ) -> Result<ShardWriter> {
        if done.len() != plan.shard_count() {
            return Err(Error::other(format!(
                "internal error: resuming {} shards, the plan has {}",
                done.len(),
                plan.shard_count()
            )));
        }
        let locations: Vec<(usize, u64, usize)> = (0..plan.tensors().len())
            .map(|i| plan.location(i))
            .collect();
        let mut members = vec![Vec::new(); plan.shard_count()];
        let (writeback_tx, writeback_rx) = unbounded();
        let (hashing_tx, hashing_rx) = unbounded();
        for (i, &(s, _, _)) in locations.iter().enumerate() {
            members[s].push(i);
        }
        let mut writer = ShardWriter {
            dir: dir.to_path_buf(),
            shards: Vec::with_capacity(plan.shard_count()),
            written: locations
                .iter()
                .map(|&(s, _, _)| AtomicBool::new(done[s].is_some()))
                .collect(),
            locations,
            names: plan.tensors().iter().map(|t| t.name.clone()).collect(),
            index: plan.index_json(),
            index_partial: None,
            finished: false,
            clock: WriterClock::default(),
            served: RwLock::new(Some([writeback_tx, hashing_tx])),
            to_serve: [writeback_rx, hashing_rx],
        };
        for ((shard, members), done) in plan.planned_shards().iter().zip(members).zip(done) {
            let partial = dir.join(format!("{}{}", shard.name, PARTIAL));
            let (file, sealed) = match done {
                Some(digest) => (None, Sealed::Yes(Some(digest))),
                None => {
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&partial)
                        .map_err(|e| Error::output_io("creating", &partial, e))?;
                    (Some(file), Sealed::No)
                }
            };
            writer.shards.push(OpenShard {
                name: shard.name.clone(),
                partial,
                file,
                file_len: shard.file_len,
                members,
                sealed: Mutex::new(sealed),
                // The header is written below, before any tensor.
                prefix: Mutex::new(WrittenPrefix::new(shard.header.len() as u64)),
                writeback_started: Mutex::new(0),
                hash: Mutex::new(Some(PrefixHasher::default())),
            });
            let open = writer.shards.last().expect("just pushed");
            if let Some(file) = &open.file {
                file.write_all_at(&shard.header, 0)
                    .and_then(|_| file.set_len(shard.file_len))
                    .map_err(|e| Error::output_io("writing", &open.partial, e))?;
            }
        }
        Ok(writer)
    }

    /// The shard (index into the plan's shards) that tensor `i` goes to.
    ///
    /// # Panics
    /// If `i` is not a planned tensor.
    pub fn shard_of(&self, i: usize) -> usize {
        self.locations[i].0
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Whether shard `s` is sealed (complete under its final name).
    pub fn is_sealed(&self, s: usize) -> bool {
        self.shards
            .get(s)
            .and_then(|sh| sh.sealed.lock().ok().map(|g| matches!(*g, Sealed::Yes(_))))
            .unwrap_or(false)
    }

    /// Seals shard `s` once all its tensors are written: syncs it, computes its SHA-256,
    /// renames it to its final name and syncs the directory. Returns its digest.
    ///
    /// Errors if a tensor of the shard is missing, the shard is sealed already, or an I/O
    /// operation fails.
    pub fn seal(&self, s: usize) -> Result<FileDigest> {
        self.seal_shard(s, true)?
            .ok_or_else(|| Error::other("internal error: a hashed seal gave no digest"))
    }

    fn seal_shard(&self, s: usize, hash: bool) -> Result<Option<FileDigest>> {
        let shard = self
            .shards
            .get(s)
            .ok_or_else(|| Error::other(format!("internal error: no output shard number {s}")))?;
        let mut state = shard
            .sealed
            .lock()
            .map_err(|_| Error::other("internal error: a shard's lock is poisoned"))?;
        let (Sealed::No, Some(file)) = (&*state, &shard.file) else {
            return Err(Error::other(format!(
                "internal error: output shard {} was sealed twice",
                shard.name
            )));
        };
        self.check_written(shard.members.iter().copied())?;
        let started = std::time::Instant::now();
        file.sync_all()
            .map_err(|e| Error::output_io("syncing", &shard.partial, e))?;
        crate::progress::add_elapsed(&self.clock.fsync, started);
        let digest = if hash {
            // The prefix hashed while writing (waiting for a hashing thread that holds it: its
            // time is counted there), completed; or the whole file read back.
            let prefix = shard.hash.lock().unwrap_or_else(|e| e.into_inner()).take();
            let started = std::time::Instant::now();
            let sha256 = crate::fault::read_back()
                .and_then(|_| match prefix {
                    Some(h) => h.finish(file, shard.file_len),
                    None => hash_open_file(file, shard.file_len),
                })
                .map_err(|e| Error::output_io("reading back", &shard.partial, e))?;
            crate::progress::add_elapsed(&self.clock.hash, started);
            Some(FileDigest {
                path: shard.name.clone(),
                size: shard.file_len,
                sha256,
            })
        } else {
            None
        };
        let target = self.dir.join(&shard.name);
        std::fs::rename(&shard.partial, &target)
            .map_err(|e| Error::output_io("renaming", &shard.partial, e))?;
        sync_dir(&self.dir)?;
        *state = Sealed::Yes(digest.clone());
        Ok(digest)
    }

    /// Errors naming the first tensors of `tensors` not written yet.
    fn check_written(&self, tensors: impl Iterator<Item = usize>) -> Result<()> {
        let missing: Vec<&str> = tensors
            .filter(|&i| !self.written[i].load(Ordering::Acquire))
            .map(|i| self.names[i].as_str())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut list = missing
            .iter()
            .take(MAX_NAMED)
            .map(|n| format!("`{}`", n))
            .collect::<Vec<_>>()
            .join(", ");
        if missing.len() > MAX_NAMED {
            list.push_str(&format!(" and {} more", missing.len() - MAX_NAMED));
        }
        Err(Error::other(format!(
            "{} output tensor(s) were never written: {}",
            missing.len(),
            list
        )))
    }

    /// Writes tensor `i`'s bytes (`i` as in [`ShardPlan::tensors`]) at its planned place.
    ///
    /// Errors if `i` is not planned, `bytes` is not the planned length, the tensor was written
    /// before, or the write fails.
    pub fn write(&self, i: usize, bytes: &[u8]) -> Result<()> {
        self.write_in_chunks(i, bytes, usize::MAX, |_| {})
    }

    /// Like [`ShardWriter::write`], in pieces of at most `chunk` bytes, calling `after` with
    /// each piece's byte range once it is written: lets the caller drop the source pages of a
    /// huge tensor as it goes, so a multi-gigabyte embedding never becomes resident at once.
    pub fn write_in_chunks(
        &self,
        i: usize,
        bytes: &[u8],
        chunk: usize,
        mut after: impl FnMut(std::ops::Range<usize>),
    ) -> Result<()> {
        let Some(&(s, offset, len)) = self.locations.get(i) else {
            return Err(Error::other(format!(
                "output tensor number {} is not in the shard plan ({} tensors)",
                i,
                self.locations.len()
            )));
        };
        let name = &self.names[i];
        if bytes.len() != len {
            return Err(Error::other(format!(
                "output tensor `{}`: got {} bytes, the shard plan has {}",
                name,
                bytes.len(),
                len
            )));
        }
        let shard = &self.shards[s];
        let Some(file) = &shard.file else {
            return Err(Error::other(format!(
                "output tensor `{}` belongs to {}, which was complete before this run",
                name, shard.name
            )));
        };
        if self.written[i].swap(true, Ordering::AcqRel) {
            return Err(Error::other(format!(
                "output tensor `{}` was written twice",
                name
            )));
        }
        let chunk = chunk.max(1);
        let mut start = 0;
        while start < bytes.len() || (start == 0 && bytes.is_empty()) {
            let end = bytes.len().min(start.saturating_add(chunk));
            let piece = &bytes[start..end];
            let allowed = fault::write_allowance(piece.len());
            let started = std::time::Instant::now();
            file.write_all_at(&piece[..allowed], offset + start as u64)
                .and_then(|_| match allowed < piece.len() {
                    true => Err(fault::disk_full()),
                    false => Ok(()),
                })
                .map_err(|e| Error::output_io("writing", &shard.partial, e))?;
            crate::progress::add_elapsed(&self.clock.pwrite, started);
            fault::data_written();
            let range = (offset + start as u64, offset + end as u64);
            // The serving threads are told when the written prefix grows: they follow it.
            if lock(&shard.prefix).add(range.0, range.1) {
                if let Some(served) = &*self.served.read().unwrap_or_else(|e| e.into_inner()) {
                    for tx in served {
                        let _ = tx.send(s);
                    }
                }
            }
            after(start..end);
            if end == bytes.len() {
                break;
            }
            start = end;
        }
        Ok(())
    }

    /// Checks that every tensor was written exactly once, seals every shard not sealed yet
    /// (synced and renamed; not hashed), writes the index (if there is more than one shard;
    /// also synced) and syncs the directory. Returns the names of the files, relative to the
    /// directory: the shards in order, then the index.
    pub fn finish(self) -> Result<Vec<String>> {
        Ok(self
            .finish_files(false)?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// Like [`ShardWriter::finish`], hashing what was not hashed yet: returns the size and
    /// SHA-256 of every file (shards in order, then the index), with the digests given to
    /// [`ShardWriter::resume`] for shards complete before.
    pub fn finish_hashed(self) -> Result<Vec<FileDigest>> {
        self.finish_files(true)?
            .into_iter()
            .map(|(name, d)| {
                d.ok_or_else(|| {
                    Error::other(format!(
                        "internal error: {name} was sealed without a digest"
                    ))
                })
            })
            .collect()
    }

    fn finish_files(mut self, hash: bool) -> Result<Vec<(String, Option<FileDigest>)>> {
        self.check_written(0..self.names.len())?;
        let mut files = Vec::with_capacity(self.shards.len() + 1);
        for s in 0..self.shards.len() {
            let sealed = self.shards[s]
                .sealed
                .lock()
                .map_err(|_| Error::other("internal error: a shard's lock is poisoned"))?
                .clone();
            let digest = match sealed {
                Sealed::Yes(Some(d)) => Some(d),
                Sealed::Yes(None) if hash => Some(crate::digest::hash_file(
                    &self.dir.join(&self.shards[s].name),
                    &self.shards[s].name,
                )?),
                Sealed::Yes(None) => None,
                Sealed::No => self.seal_shard(s, hash)?,
            };
            files.push((self.shards[s].name.clone(), digest));
        }
        if let Some(index) = self.index.take() {
            let partial = self.dir.join(format!("{}{}", INDEX_FILE_NAME, PARTIAL));
            // Registered first, so that Drop removes it if anything below fails.
            self.index_partial = Some(partial.clone());
            let file =
                File::create(&partial).map_err(|e| Error::output_io("creating", &partial, e))?;
            file.write_all_at(index.as_bytes(), 0)
                .and_then(|_| file.sync_all())
                .map_err(|e| Error::output_io("writing", &partial, e))?;
            let digest = hash.then(|| FileDigest {
                path: INDEX_FILE_NAME.to_owned(),
                size: index.len() as u64,
                sha256: crate::digest::sha256_hex(index.as_bytes()),
            });
            std::fs::rename(&partial, self.dir.join(INDEX_FILE_NAME))
                .map_err(|e| Error::output_io("renaming", &partial, e))?;
            self.index_partial = None;
            files.push((INDEX_FILE_NAME.to_owned(), digest));
        }
        sync_dir(&self.dir)?;
        self.finished = true;
        Ok(files)
    }
}

/// fsyncs a directory, so that renames in it are durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::output_io("syncing", dir, e))
}

impl Drop for ShardWriter {
    /// Removes the partial files of an unfinished write; sealed shards stay.
    fn drop(&mut self) {
        if !self.finished {
            for shard in &self.shards {
                if shard.file.is_some()
                    && !matches!(shard.sealed.lock().as_deref(), Ok(Sealed::Yes(_)))
                {
                    let _ = std::fs::remove_file(&shard.partial);
                }
            }
            if let Some(partial) = &self.index_partial {
                let _ = std::fs::remove_file(partial);
            }
        }
    }
}
