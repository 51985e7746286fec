//! Writing the planned shards: positioned writes, in any order, from any thread.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::plan::{ShardPlan, INDEX_FILE_NAME};
use crate::error::{Error, Result};

/// Suffix of the files being written; they get their final names in [`ShardWriter::finish`].
const PARTIAL: &str = ".partial";
/// How many missing tensors the error of [`ShardWriter::finish`] names.
const MAX_NAMED: usize = 5;

/// One output file being written under its temporary name.
struct OpenShard {
    name: String,
    partial: PathBuf,
    file: File,
}

/// Writes the shards of a [`ShardPlan`] with positioned writes (`pwrite`), so tensors can
/// arrive in any order from many threads and the output bytes are the same regardless.
///
/// The files are written as `NAME.partial` and renamed to their final names by
/// [`ShardWriter::finish`] once every tensor is in and synced to disk, so an interrupted run
/// never leaves a file that looks complete, and an existing file of the same name (which may be
/// memory-mapped by a reader) is replaced, never truncated in place. Dropping the writer without
/// finishing deletes the partial files.
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
    finished: bool,
}

impl ShardWriter {
    /// Creates every shard file of `plan` in `dir` (which must exist), writes its header and sets
    /// its length. Existing files with the final names are left alone until
    /// [`ShardWriter::finish`] replaces them.
    pub fn create(dir: &Path, plan: &ShardPlan) -> Result<ShardWriter> {
        let mut writer = ShardWriter {
            dir: dir.to_path_buf(),
            shards: Vec::with_capacity(plan.shard_count()),
            locations: (0..plan.tensors().len())
                .map(|i| plan.location(i))
                .collect(),
            names: plan.tensors().iter().map(|t| t.name.clone()).collect(),
            written: plan
                .tensors()
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            index: plan.index_json(),
            finished: false,
        };
        for shard in plan.planned_shards() {
            let partial = dir.join(format!("{}{}", shard.name, PARTIAL));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&partial)
                .map_err(|e| Error::io("creating", &partial, e))?;
            writer.shards.push(OpenShard {
                name: shard.name.clone(),
                partial,
                file,
            });
            let open = writer.shards.last().expect("just pushed");
            open.file
                .write_all_at(&shard.header, 0)
                .map_err(|e| Error::io("writing", &open.partial, e))?;
            open.file
                .set_len(shard.file_len)
                .map_err(|e| Error::io("writing", &open.partial, e))?;
        }
        Ok(writer)
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
        if self.written[i].swap(true, Ordering::AcqRel) {
            return Err(Error::other(format!(
                "output tensor `{}` was written twice",
                name
            )));
        }
        let shard = &self.shards[s];
        let chunk = chunk.max(1);
        let mut start = 0;
        while start < bytes.len() || (start == 0 && bytes.is_empty()) {
            let end = bytes.len().min(start.saturating_add(chunk));
            shard
                .file
                .write_all_at(&bytes[start..end], offset + start as u64)
                .map_err(|e| {
                    Error::io("writing", &shard.partial, e).with_hint("is the output disk full?")
                })?;
            after(start..end);
            if end == bytes.len() {
                break;
            }
            start = end;
        }
        Ok(())
    }
    /// Checks that every tensor was written exactly once, syncs every file to disk, writes the
    /// index (if there is more than one shard, also synced), gives every file its final name and
    /// syncs the directory. Returns the names of the files written, relative to the directory:
    /// the shards in order, then the index.
    pub fn finish(mut self) -> Result<Vec<String>> {
        let missing: Vec<&str> = self
            .written
            .iter()
            .zip(&self.names)
            .filter(|(w, _)| !w.load(Ordering::Acquire))
            .map(|(_, n)| n.as_str())
            .collect();
        if !missing.is_empty() {
            let mut list = missing
                .iter()
                .take(MAX_NAMED)
                .map(|n| format!("`{}`", n))
                .collect::<Vec<_>>()
                .join(", ");
            if missing.len() > MAX_NAMED {
                list.push_str(&format!(" and {} more", missing.len() - MAX_NAMED));
            }
            return Err(Error::other(format!(
                "{} output tensor(s) were never written: {}",
                missing.len(),
                list
            )));
        }
        for shard in &self.shards {
            shard
                .file
                .sync_all()
                .map_err(|e| Error::io("syncing", &shard.partial, e))?;
        }
        let mut renames: Vec<(PathBuf, String)> = self
            .shards
            .iter()
            .map(|s| (s.partial.clone(), s.name.clone()))
            .collect();
        if let Some(index) = self.index.take() {
            let partial = self.dir.join(format!("{}{}", INDEX_FILE_NAME, PARTIAL));
            // Registered first, so that Drop removes it if anything below fails.
            self.shards.push(OpenShard {
                name: INDEX_FILE_NAME.to_owned(),
                partial: partial.clone(),
                file: File::create(&partial).map_err(|e| Error::io("creating", &partial, e))?,
            });
            let file = &self.shards.last().expect("just pushed").file;
            file.write_all_at(index.as_bytes(), 0)
                .map_err(|e| Error::io("writing", &partial, e))?;
            file.sync_all()
                .map_err(|e| Error::io("syncing", &partial, e))?;
            renames.push((partial, INDEX_FILE_NAME.to_owned()));
        }
        for (partial, name) in &renames {
            let target = self.dir.join(name);
            std::fs::rename(partial, &target).map_err(|e| Error::io("renaming", partial, e))?;
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("syncing", &self.dir, e))?;
        self.finished = true;
        Ok(renames.into_iter().map(|(_, name)| name).collect())
    }
}

impl Drop for ShardWriter {
    /// Removes the partial files of an unfinished write.
    fn drop(&mut self) {
        if !self.finished {
            for shard in &self.shards {
                let _ = std::fs::remove_file(&shard.partial);
            }
        }
    }
}
