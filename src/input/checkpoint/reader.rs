//! The input checkpoint: memory-mapped shards and the tensors in them.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use memmap2::{Advice, Mmap, UncheckedAdvice};
use safetensors::Dtype;

use super::lane::{Lane, Listing};
use super::validate;
use crate::error::Result;

/// One tensor of the input checkpoint.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// The tensor's name, e.g. `model.layers.0.mlp.down_proj.weight`.
    pub name: String,
    /// Element type, as the shard header says (any safetensors dtype).
    pub dtype: Dtype,
    /// Shape; `[]` for a 0-d scalar.
    pub shape: Vec<usize>,
    /// Index into [`Checkpoint::shards`].
    pub shard: usize,
    /// Absolute byte offset of the data in the shard file.
    pub start: usize,
    /// Byte length of the data.
    pub len: usize,
}

impl TensorEntry {
    /// Number of elements (1 for a 0-d scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One memory-mapped shard file.
pub struct Shard {
    /// Full path of the shard file.
    pub path: PathBuf,
    mmap: Mmap,
}

impl Shard {
    /// Size of the file in bytes.
    pub fn len(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// Whether the file is empty (never true for a validated shard).
    pub fn is_empty(&self) -> bool {
        self.mmap.is_empty()
    }

    /// The whole mapped file.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// Maps `path` read-only.
    pub(super) fn map(path: PathBuf) -> std::io::Result<Shard> {
        let file = File::open(&path)?;
        // SAFETY: the mapping is read-only, so this process never writes through it. Another
        // process truncating or rewriting the file while it is mapped would change what the
        // slices read (or raise SIGBUS); that is the documented contract of every mmap-based
        // safetensors reader: the input checkpoint must not be modified while shardquant runs.
        let mmap = unsafe { Mmap::map(&file)? };
        Ok(Shard { path, mmap })
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("len", &self.len())
            .finish()
    }
}

/// A validated, memory-mapped input checkpoint directory.
///
/// `Checkpoint` is `Send + Sync`: threads can read tensors concurrently through `&Checkpoint`.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: Vec<TensorEntry>,
    by_name: HashMap<String, usize>,
    index_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// File names in `dir` that hold the weights (shards, index, a redundant single file).
    weight_files: Vec<String>,
    total_bytes: u64,
    /// `dir`, resolved: what else may be read of it.
    lane: Lane,
    /// Canonical paths of the shards, to recognise them behind links.
    real_shards: std::collections::HashSet<PathBuf>,
}

impl Checkpoint {
    /// Opens `dir`: `model.safetensors.index.json` and the shards it names, or a single
    /// `model.safetensors`.
    ///
    /// Every shard is memory-mapped read-only and its header validated by the safetensors crate
    /// (offsets contiguous and inside the file, byte lengths matching dtype and shape), and the
    /// index is checked against the shards: every tensor of the index must be in the shard it
    /// names, every tensor of a shard must be in the index, and no name may be in two shards.
    /// When both an index and a `model.safetensors` are present and the index does not use
    /// the single file, the two must hold the same tensors (the shards are then read).
    ///
    /// Any dtype is accepted here; deciding what to do with a dtype is the caller's job.
    ///
    /// All problems found are reported together in one [`ErrorKind::BadInput`] error
    /// (the first 20 listed, then a count), each naming the file and, where there is one,
    /// the tensor.
    ///
    /// [`ErrorKind::BadInput`]: crate::error::ErrorKind::BadInput
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let loaded = validate::load(dir)?;
        let mut by_name = HashMap::with_capacity(loaded.tensors.len());
        for (i, t) in loaded.tensors.iter().enumerate() {
            by_name.insert(t.name.clone(), i);
        }
        let total_bytes = loaded.tensors.iter().map(|t| t.len as u64).sum();
        let real_shards = loaded
            .shards
            .iter()
            .filter_map(|s| s.path.canonicalize().ok())
            .collect();
        Ok(Checkpoint {
            real_shards,
            dir: dir.to_path_buf(),
            shards: loaded.shards,
            tensors: loaded.tensors,
            by_name,
            index_metadata: loaded.index_metadata,
            weight_files: loaded.weight_files,
            total_bytes,
            lane: loaded.lane,
        })
    }

    /// Names (relative to [`Checkpoint::dir`]) of the files that hold the weights: the shards,
    /// the index, and a redundant single `model.safetensors` when there is one.
    pub fn weight_files(&self) -> &[String] {
        &self.weight_files
    }

    /// The directory this checkpoint was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shard files, sorted by file name.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// All tensors, ordered by (shard index, data offset): the order in which a streaming reader
    /// touches the files.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// The tensor named `name`, if any (constant time).
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The index in [`Checkpoint::tensors`] of the tensor named `name`, if any (constant time).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The `metadata` object of `model.safetensors.index.json` (e.g. `total_size`), if the
    /// checkpoint has an index and the index has one. It is informational and not validated.
    pub fn index_metadata(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.index_metadata.as_ref()
    }

    /// Zero-copy view of a tensor's bytes.
    ///
    /// # Panics
    /// If `t` does not come from this checkpoint and lies outside its shard.
    pub fn bytes(&self, t: &TensorEntry) -> &[u8] {
        &self.shards[t.shard].bytes()[t.start..t.start + t.len]
    }

    /// Advises the kernel that this tensor will be read soon (`madvise(MADV_WILLNEED)` on its
    /// pages), so the read-ahead overlaps other work. Failures are ignored: it is only advice.
    pub fn prefetch(&self, t: &TensorEntry) {
        self.prefetch_range(t, 0..t.len);
    }

    /// Like [`Checkpoint::prefetch`] for the bytes `range` of the tensor's data only.
    pub fn prefetch_range(&self, t: &TensorEntry, range: std::ops::Range<usize>) {
        let start = range.start.min(t.len);
        let len = range.end.min(t.len).saturating_sub(start);
        if len == 0 {
            return;
        }
        if let Some(shard) = self.shards.get(t.shard) {
            // memmap2 rounds the start down to a page boundary itself.
            let _ = shard
                .mmap
                .advise_range(Advice::WillNeed, t.start + start, len);
        }
    }

    /// Tells the kernel this tensor's pages may be dropped from this process
    /// (`madvise(MADV_DONTNEED)`), so memory stays bounded while streaming a large checkpoint.
    ///
    /// Only the pages that lie entirely inside the tensor are released, so a neighbouring tensor
    /// that shares a page is untouched. The mapping is a read-only file mapping: a later read of
    /// the same bytes faults them in again from the file, so nothing is lost. Failures are
    /// ignored.
    pub fn release(&self, t: &TensorEntry) {
        self.release_range(t, 0..t.len);
    }

    /// Like [`Checkpoint::release`], and also drops the partly shared first / last page of the
    /// tensor when `first_page` / `last_page` say that the neighbours sharing them are finished.
    /// Without this, every tensor boundary would keep a page resident, and resident memory
    /// would grow with the number of tensors.
    pub fn release_with_edges(&self, t: &TensorEntry, first_page: bool, last_page: bool) {
        let Some(shard) = self.shards.get(t.shard) else {
            return;
        };
        let page = page_size();
        let end = t.start.saturating_add(t.len).min(shard.mmap.len());
        let start = if first_page {
            t.start - t.start % page
        } else {
            t.start
        };
        let end = if last_page {
            end.saturating_add(page - 1) / page * page
        } else {
            end
        };
        let end = end
            .min(shard.mmap.len() - shard.mmap.len() % page)
            .max(start);
        self.advise_dontneed(shard, start, end);
    }

    /// Like [`Checkpoint::release`] for the bytes `range` of the tensor's data only.
    pub fn release_range(&self, t: &TensorEntry, range: std::ops::Range<usize>) {
        let Some(shard) = self.shards.get(t.shard) else {
            return;
        };
        let start = t.start.saturating_add(range.start.min(t.len));
        let end = t
            .start
            .saturating_add(range.end.min(t.len))
            .min(shard.mmap.len());
        self.advise_dontneed(shard, start, end);
    }

    /// Drops the pages wholly inside bytes `[start, end)` of shard `shard` (whatever tensors
    /// they hold); the caller guarantees no unfinished tensor lies there.
    pub fn release_span(&self, shard: usize, start: usize, end: usize) {
        if let Some(sh) = self.shards.get(shard) {
            self.advise_dontneed(sh, start, end.min(sh.mmap.len()));
        }
    }

    /// madvise(DONTNEED) on the pages that lie wholly inside `[start, end)` of a shard.
    fn advise_dontneed(&self, shard: &Shard, start: usize, end: usize) {
        let Some((first, len)) = inner_pages(start, end, page_size()) else {
            return;
        };
        // SAFETY: MADV_DONTNEED is "unchecked" in memmap2 because on a private *writable*
        // mapping it throws away modified pages. This mapping is read-only and backed by the
        // file, so dropped pages are re-read from the file on the next access and no data
        // changes; the range lies inside the mapping (clamped to its length above).
        let _ = unsafe {
            shard
                .mmap
                .unchecked_advise_range(UncheckedAdvice::DontNeed, first, len)
        };
    }

    /// Total bytes of tensor data (headers excluded).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The input directory, resolved: every other file of it is read through this, so that
    /// nothing outside the directory is (see [`Lane`]).
    pub fn lane(&self) -> &Lane {
        &self.lane
    }

    /// The entries of the checkpoint directory that are not weights, sorted by name: regular
    /// files (`config.json`, `generation_config.json`, tokenizer files, `README.md`, ...),
    /// real subdirectories, and what is left out and why. Not recursive.
    ///
    /// Symbolic links are followed only to regular files inside the directory (or, for a
    /// HuggingFace cache snapshot, inside its repository's `blobs/`); links that lead
    /// elsewhere, links to directories, FIFOs, sockets and devices are left out and listed in
    /// [`Listing::skipped`]. A dangling link is an error.
    ///
    /// The shards, the index and a `model.safetensors` that duplicates the shards are left out.
    /// Other `.safetensors` files that the checkpoint does not use (e.g. Mistral's
    /// `consolidated.safetensors`) *are* listed: the caller decides whether to copy them.
    pub fn other_entries(&self) -> Result<Listing> {
        self.lane.list(&self.dir, |name| {
            self.weight_files.iter().any(|w| w == name)
        })
    }

    /// Whether `path` is one of the shards, possibly through links (e.g. the file a shard
    /// link points to, seen again in a subdirectory).
    pub fn is_shard(&self, path: &Path) -> bool {
        path.canonicalize()
            .is_ok_and(|real| self.real_shards.contains(&real))
    }

    /// The regular files of [`Checkpoint::other_entries`].
    pub fn other_files(&self) -> Result<Vec<PathBuf>> {
        Ok(self.other_entries()?.files)
    }

    /// The subdirectories of [`Checkpoint::other_entries`] (e.g. `original/`, `.cache/`).
    pub fn other_dirs(&self) -> Result<Vec<PathBuf>> {
        Ok(self.other_entries()?.dirs)
    }
}

/// The whole pages inside the byte range `start..end`, as (offset, length); `None` if there is
/// no whole page. The mapping starts on a page boundary, so file offsets and addresses agree.
pub(super) fn inner_pages(start: usize, end: usize, page: usize) -> Option<(usize, usize)> {
    let first = start.checked_next_multiple_of(page)?;
    let last = end - end % page;
    (last > first).then(|| (first, last - first))
}

/// The size of a memory page, for rounding `madvise` ranges.
fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant; it has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 {
            n as usize
        } else {
            4096
        }
    })
}
