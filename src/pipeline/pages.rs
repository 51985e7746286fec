//! Giving input pages back to the kernel as the stream moves on.
//!
//! Each finished tensor's pages are dropped (with the pages it shares with finished
//! neighbours). That alone is not enough: when a worker faults in a page, the kernel also maps
//! the cached pages around it ("fault-around", 64 KiB by default), which re-maps pages of
//! tensors already finished just before it. So each shard also keeps a finished prefix, and
//! the pages from a margin before the last sweep up to the first unfinished tensor are dropped
//! again whenever the prefix grows. Resident input memory then stays bounded by the work in
//! flight, not by the number of tensors streamed so far.

use crate::input::checkpoint::Checkpoint;
use crate::plan::Unit;

/// Re-mapped pages can reach this far behind the last sweep (well above the kernel's
/// fault-around window).
const MARGIN: usize = 1 << 20;

/// Tracks which input tensors are finished and drops their pages.
pub struct PageReleaser<'a> {
    ckpt: &'a Checkpoint,
    /// Units still to read each tensor.
    users: Vec<usize>,
    /// Per shard: index of the first tensor not yet finished.
    next: Vec<usize>,
    /// Per shard: one past the index of its last tensor.
    end: Vec<usize>,
    /// Per shard: byte offset up to which pages were swept.
    swept: Vec<usize>,
}

impl<'a> PageReleaser<'a> {
    /// Starts with `users[t]` units still to read tensor `t`.
    pub fn new(ckpt: &'a Checkpoint, users: Vec<usize>) -> Self {
        let shards = ckpt.shards().len();
        let mut next = vec![usize::MAX; shards];
        let mut end = vec![0; shards];
        for (i, t) in ckpt.tensors().iter().enumerate() {
            next[t.shard] = next[t.shard].min(i);
            end[t.shard] = i + 1;
        }
        let next = next.iter().zip(&end).map(|(&n, &e)| n.min(e)).collect();
        PageReleaser {
            ckpt,
            users,
            next,
            end,
            swept: vec![0; shards],
        }
    }

    /// A unit is written: drop what it read. A slice of a tensor that other units still read
    /// (one expert of a fused tensor) is dropped at once; whole tensors when their last
    /// reader is done.
    pub fn unit_done(&mut self, unit: &Unit) {
        for r in &unit.reads {
            if self.users[r.tensor] > 1 {
                let entry = &self.ckpt.tensors()[r.tensor];
                self.ckpt.release_range(entry, r.offset..r.offset + r.len);
            }
        }
        for &t in &unit.inputs {
            self.tensor_done(t);
        }
    }

    /// One unit that read tensor `t` is done.
    fn tensor_done(&mut self, t: usize) {
        self.users[t] -= 1;
        if self.users[t] > 0 {
            return;
        }
        let tensors = self.ckpt.tensors();
        let entry = &tensors[t];
        let finished = |n: Option<usize>| {
            n.and_then(|n| tensors.get(n).map(|e| (n, e)))
                .is_none_or(|(n, e)| e.shard != entry.shard || self.users[n] == 0)
        };
        let (first, last) = (finished(t.checked_sub(1)), finished(t.checked_add(1)));
        self.ckpt.release_with_edges(entry, first, last);
        let s = entry.shard;
        while self.next[s] < self.end[s] && self.users[self.next[s]] == 0 {
            self.next[s] += 1;
        }
        let upto = if self.next[s] < self.end[s] {
            tensors[self.next[s]].start
        } else {
            usize::MAX
        };
        if upto > self.swept[s] {
            self.ckpt
                .release_span(s, self.swept[s].saturating_sub(MARGIN), upto);
            self.swept[s] = upto;
        }
    }
}
