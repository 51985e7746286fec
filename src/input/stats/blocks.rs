//! Per-block weight amax of static NVFP4, left in the statistics files until a worker needs it.

use super::raw::{for_each_chunk, release, StatDtype};
use memmap2::Mmap;
use std::sync::Arc;

/// One file's per-block amax of one linear: `count` elements of `dtype` from byte `offset` of
/// a mapped statistics file.
#[derive(Clone)]
struct BlockSource {
    map: Arc<Mmap>,
    offset: usize,
    count: usize,
    dtype: StatDtype,
}

impl BlockSource {
    fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.count * self.dtype.size()
    }
}

/// Per-block amax of one linear (row-major over `weight_scale [rows, cols/16]`), as a handle
/// on the statistics files that hold it: nothing is decoded until [`BlockAmax::decode`], and
/// cloning only bumps a reference count.
///
/// When several files give the same linear, the handle keeps one source per file and
/// [`BlockAmax::decode`] takes the element-wise max, the schema's merge rule.
#[derive(Clone)]
pub struct BlockAmax {
    sources: Arc<[BlockSource]>,
}

impl BlockAmax {
    /// A handle on `count` elements of `dtype` at byte `offset` of `map`; `None` if they do
    /// not lie inside the mapping.
    pub(super) fn new(
        map: Arc<Mmap>,
        offset: usize,
        count: usize,
        dtype: StatDtype,
    ) -> Option<BlockAmax> {
        let end = count.checked_mul(dtype.size())?.checked_add(offset)?;
        (end <= map.len()).then(|| BlockAmax {
            sources: Arc::from([BlockSource {
                map,
                offset,
                count,
                dtype,
            }]),
        })
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.sources.first().map_or(0, |s| s.count)
    }

    /// Whether there is no block.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of files the values come from.
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Decodes the blocks to f32: the element-wise max over the sources. Allocates
    /// `len() × 4` bytes; the mapped pages read are given back afterwards.
    pub fn decode(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len());
        for (i, s) in self.sources.iter().enumerate() {
            let values = s.dtype.decode(&s.map[s.range()]);
            if i == 0 {
                out.extend(values);
            } else {
                for (o, v) in out.iter_mut().zip(values) {
                    *o = o.max(v);
                }
            }
            release(&s.map, s.range());
        }
        out
    }

    /// Whether every block of every source is finite and not negative. Reads the values
    /// straight from the mapping, a chunk at a time, without decoding them into the heap.
    pub fn all_usable(&self) -> bool {
        self.sources.iter().all(|s| {
            let mut ok = true;
            for_each_chunk(&s.map, s.range(), s.dtype.size(), |bytes| {
                ok = ok && s.dtype.decode(bytes).all(|v| v.is_finite() && v >= 0.0);
            });
            ok
        })
    }

    /// The blocks `start..start + count` (in row-major order: whole rows of a fused tensor,
    /// e.g. the gate rows of a fused gate_up): the same sources, offset. `None` if the range
    /// is not inside.
    pub fn slice(&self, start: usize, count: usize) -> Option<BlockAmax> {
        if start.checked_add(count)? > self.len() {
            return None;
        }
        Some(BlockAmax {
            sources: self
                .sources
                .iter()
                .map(|s| BlockSource {
                    offset: s.offset + start * s.dtype.size(),
                    count,
                    ..s.clone()
                })
                .collect(),
        })
    }

    /// Both handles' sources, for the element-wise max; `None` if the block counts differ.
    pub fn merge(&self, other: &BlockAmax) -> Option<BlockAmax> {
        (self.len() == other.len()).then(|| BlockAmax {
            sources: self
                .sources
                .iter()
                .chain(other.sources.iter())
                .cloned()
                .collect(),
        })
    }
}

impl PartialEq for BlockAmax {
    /// Equal when the decoded values are (reads both; meant for tests).
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.decode() == other.decode()
    }
}

impl std::fmt::Debug for BlockAmax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockAmax")
            .field("len", &self.len())
            .field(
                "sources",
                &self
                    .sources
                    .iter()
                    .map(|s| (s.offset, s.dtype))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}
