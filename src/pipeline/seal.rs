//! Output shards as the units complete: which units write into each shard, how many tensors
//! each shard still waits for (a shard whose count reaches zero is handed to the sealing
//! thread), and which units a resumed run skips.

use crate::digest::FileDigest;
use crate::error::Result;
use crate::output::ShardWriter;
use crate::pipeline::SummaryLine;
use crate::plan::Plan;
use std::collections::BTreeMap;

/// Called on the sealing thread for each shard sealed, with its digest and the summary lines of
/// every unit that wrote into it; an error stops the run.
pub type OnSealed<'a> = dyn Fn(FileDigest, &[(usize, Vec<SummaryLine>)]) -> Result<()> + Sync + 'a;

/// What a run continues from, and where it reports sealed shards.
pub struct Sealing<'a> {
    /// Per output shard: complete (sealed and verified) before this run.
    pub done: &'a [bool],
    /// Summary lines of units that completed before this run, by unit index.
    pub summaries: &'a BTreeMap<usize, Vec<SummaryLine>>,
    /// Records each shard sealed (the resume journal).
    pub on_sealed: &'a OnSealed<'a>,
}

/// Counts, per shard, the tensors still to be written.
pub(super) struct ShardTracker {
    remaining: Vec<usize>,
    units_of: Vec<Vec<usize>>,
}

impl ShardTracker {
    /// Counts the tensors of every shard not done yet.
    pub fn new(plan: &Plan, writer: &ShardWriter, done: &[bool]) -> ShardTracker {
        let shards = writer.shard_count();
        let mut remaining = vec![0usize; shards];
        let mut units_of: Vec<Vec<usize>> = vec![Vec::new(); shards];
        for (u, unit) in plan.units.iter().enumerate() {
            for &out in &unit.outputs {
                let s = writer.shard_of(out);
                if !done[s] {
                    remaining[s] += 1;
                }
                if units_of[s].last() != Some(&u) {
                    units_of[s].push(u);
                }
            }
        }
        ShardTracker {
            remaining,
            units_of,
        }
    }

    /// Shards with no tensor at all (complete from the start), unless done before.
    pub fn empty_shards(&self, done: &[bool]) -> Vec<usize> {
        (0..self.remaining.len())
            .filter(|&s| self.remaining[s] == 0 && !done[s])
            .collect()
    }

    /// Whether unit `u` can be skipped: every output is in a shard done before, and its
    /// summary lines are known.
    pub fn skippable(plan: &Plan, writer: &ShardWriter, sealing: &Sealing, u: usize) -> bool {
        sealing.summaries.contains_key(&u)
            && plan.units[u]
                .outputs
                .iter()
                .all(|&out| sealing.done[writer.shard_of(out)])
    }

    /// Unit `u` was written: returns the shards that are now complete.
    pub fn unit_written(
        &mut self,
        plan: &Plan,
        writer: &ShardWriter,
        done: &[bool],
        u: usize,
    ) -> Vec<usize> {
        let mut complete = Vec::new();
        for &out in &plan.units[u].outputs {
            let s = writer.shard_of(out);
            if done[s] {
                continue;
            }
            self.remaining[s] -= 1;
            if self.remaining[s] == 0 {
                complete.push(s);
            }
        }
        complete
    }

    /// The units that write into shard `s`.
    pub fn units_of(&self, s: usize) -> &[usize] {
        &self.units_of[s]
    }
}
