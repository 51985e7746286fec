//! Reading statistics files stored as safetensors, through a read-only memory map.
//!
//! [`StatsFile::open`] maps the file and indexes it: for each key its dtype, shape and byte
//! range, with one-element tensors (per-tensor amax) decoded on the spot. Larger tensors (the
//! per-block weight amax of static NVFP4, `params / 16` values per model) stay in the mapping;
//! they are read through a [`super::BlockAmax`] handle when a worker needs them, so the heap
//! never holds a whole statistics file.

use crate::error::{Error, Result};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Hint for a statistics file that cannot be read as it is.
const AS_WRITTEN: &str = "pass the amax file exactly as the calibration tool wrote it";

/// Pages the kernel may map around a faulting address ("fault-around", 64 KiB by default) lie
/// well inside this margin; released ranges are widened by it.
const RELEASE_MARGIN: usize = 1 << 20;

/// Bytes read between two page releases when scanning a large tensor.
const SCAN_CHUNK: usize = 16 << 20;

/// Element type of a statistics tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatDtype {
    /// Little-endian IEEE f32.
    F32,
    /// Little-endian bfloat16.
    Bf16,
    /// Little-endian IEEE f16.
    F16,
}

impl StatDtype {
    /// The statistics dtype of a safetensors dtype, if it is one of F32, BF16, F16.
    pub fn from_safetensors(dtype: Dtype) -> Option<StatDtype> {
        match dtype {
            Dtype::F32 => Some(StatDtype::F32),
            Dtype::BF16 => Some(StatDtype::Bf16),
            Dtype::F16 => Some(StatDtype::F16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StatDtype::F32 => 4,
            StatDtype::Bf16 | StatDtype::F16 => 2,
        }
    }

    /// Decodes little-endian elements (`bytes.len()` a multiple of [`StatDtype::size`]).
    pub fn decode(self, bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
        bytes.chunks_exact(self.size()).map(move |c| match self {
            StatDtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            StatDtype::Bf16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
            StatDtype::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
        })
    }
}

/// One tensor of a statistics file, as indexed by [`StatsFile::open`] (no data copied).
#[derive(Debug, Clone, PartialEq)]
pub struct StatsEntry {
    /// The key, as written by the tool that made the file.
    pub key: String,
    /// The dtype as stored (not necessarily one statistics may use: see
    /// [`StatsFile::dtype`]).
    pub dtype: Dtype,
    /// The tensor's shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// Byte range of the data in the file.
    pub range: Range<usize>,
    /// The value, for a one-element tensor of a statistics dtype (decoded at open).
    pub scalar: Option<f32>,
}

impl StatsEntry {
    /// Number of elements (1 for a 0-d scalar).
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A statistics safetensors file, mapped read-only and indexed.
#[derive(Debug, Clone)]
pub struct StatsFile {
    path: PathBuf,
    map: Arc<Mmap>,
    entries: Vec<StatsEntry>,
}

impl StatsFile {
    /// Maps `path` read-only and indexes its tensors (sorted by key), validating the header
    /// (offsets inside the file, byte lengths matching dtype and shape). One-element tensors
    /// of a statistics dtype are decoded; nothing else is read, and the pages touched are
    /// given back before returning. Dtypes are not checked here: see [`StatsFile::dtype`].
    pub fn open(path: &Path) -> Result<StatsFile> {
        let file = std::fs::File::open(path).map_err(|e| {
            Error::input_io("opening statistics file", path, e).with_hint("check the --stats path")
        })?;
        // SAFETY: the mapping is read-only, so this process never writes through it. Another
        // process truncating or rewriting the file while it is mapped would change what the
        // slices read (or raise SIGBUS); as for the checkpoint, statistics files must not be
        // modified while shardquant runs.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::input_io("mapping", path, e))?;
        let (header, metadata) = SafeTensors::read_metadata(&map).map_err(|e| {
            Error::bad_input(format!(
                "{}: not a valid safetensors file: {e}",
                path.display()
            ))
            .with_hint(AS_WRITTEN)
        })?;
        let base = 8 + header;
        let mut entries: Vec<StatsEntry> = metadata
            .tensors()
            .into_iter()
            .map(|(key, info)| {
                let range = base + info.data_offsets.0..base + info.data_offsets.1;
                let shape = info.shape.clone();
                let scalar = match StatDtype::from_safetensors(info.dtype) {
                    Some(d) if shape.iter().product::<usize>() == 1 => {
                        d.decode(&map[range.clone()]).next()
                    }
                    _ => None,
                };
                StatsEntry {
                    key,
                    dtype: info.dtype,
                    shape,
                    range,
                    scalar,
                }
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let map = Arc::new(map);
        release(&map, 0..map.len());
        Ok(StatsFile {
            path: path.to_path_buf(),
            map,
            entries,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensors, sorted by key.
    pub fn entries(&self) -> &[StatsEntry] {
        &self.entries
    }

    /// The mapping, shared with the [`super::BlockAmax`] handles made from it.
    pub fn map(&self) -> &Arc<Mmap> {
        &self.map
    }

    /// The statistics dtype of an entry, or an error naming the file and key when it is not
    /// F32, BF16 or F16.
    pub fn dtype(&self, e: &StatsEntry) -> Result<StatDtype> {
        StatDtype::from_safetensors(e.dtype).ok_or_else(|| {
            Error::bad_input(format!(
                "{}: tensor '{}' has dtype {:?}; statistics must be F32, BF16 or F16",
                self.path.display(),
                e.key,
                e.dtype
            ))
            .with_hint(AS_WRITTEN)
        })
    }

    /// Decodes an entry's values into the heap (the whole tensor: for tools and tests, not the
    /// conversion path).
    pub fn decode(&self, e: &StatsEntry) -> Result<Vec<f32>> {
        let dtype = self.dtype(e)?;
        let values = dtype.decode(&self.map[e.range.clone()]).collect();
        release(&self.map, e.range.clone());
        Ok(values)
    }
}

/// One tensor of a statistics file, decoded to f32 (see [`read_safetensors_entries`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RawEntry {
    /// The key, as written by the tool that made the file.
    pub key: String,
    /// The tensor's shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// The values in row-major order.
    pub values: Vec<f32>,
}

/// Reads and decodes every tensor of a safetensors statistics file (F32, BF16 or F16), sorted
/// by key.
///
/// This holds the whole file in the heap: it is meant for tools and tests. The conversion
/// reads statistics through [`StatsFile`], which decodes only scalars.
pub fn read_safetensors_entries(path: &Path) -> Result<Vec<RawEntry>> {
    let file = StatsFile::open(path)?;
    file.entries()
        .iter()
        .map(|e| {
            Ok(RawEntry {
                key: e.key.clone(),
                shape: e.shape.clone(),
                values: file.decode(e)?,
            })
        })
        .collect()
}

/// Gives back the mapped pages of `range` (widened by [`RELEASE_MARGIN`], clamped to the
/// mapping), so that reading a statistics file does not leave it resident in this process.
pub(super) fn release(map: &Mmap, range: Range<usize>) {
    let start = range.start.saturating_sub(RELEASE_MARGIN).min(map.len());
    let end = range.end.saturating_add(RELEASE_MARGIN).min(map.len());
    if end <= start {
        return;
    }
    // SAFETY: MADV_DONTNEED is "unchecked" in memmap2 because on a private *writable* mapping
    // it throws away modified pages. This mapping is read-only and backed by the file, so
    // dropped pages are re-read from the file on the next access and no data changes (another
    // thread reading a neighbouring tensor at the same time only faults its pages in again);
    // the range lies inside the mapping (clamped above; memmap2 rounds its start down to a page).
    let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
}

/// Calls `f` on the bytes of `range` in chunks of whole elements, giving back each chunk's
/// pages after it (so a scan keeps at most one chunk resident).
pub(super) fn for_each_chunk(
    map: &Mmap,
    range: Range<usize>,
    elem: usize,
    mut f: impl FnMut(&[u8]),
) {
    let step = SCAN_CHUNK - SCAN_CHUNK % elem;
    let mut at = range.start;
    while at < range.end {
        let end = (at + step).min(range.end);
        f(&map[at..end]);
        release(map, at..end);
        at = end;
    }
}
