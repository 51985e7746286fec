//! The work background threads do for a [`ShardWriter`] while tensors are written: starting
//! the disk writeback of the written prefix in large pieces, and hashing it; and the writer's
//! per-stage clock.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use super::{OpenShard, ShardWriter};
use crate::progress::{add_elapsed, elapsed_seconds};

/// Writeback is started for a shard's written prefix in pieces of at least this many bytes: the
/// disk then sees large sequential writes, as from `dd`, not one small write per tensor in the
/// order the workers finish.
const WRITEBACK_CHUNK: u64 = 32 << 20;

/// A shard's written byte ranges, merged into the prefix they complete: the one record that the
/// writeback and the hashing threads both follow.
pub(super) struct WrittenPrefix {
    /// Written ranges (start → end) beyond the prefix.
    beyond: BTreeMap<u64, u64>,
    /// End of the written prefix.
    end: u64,
}

impl WrittenPrefix {
    /// A shard whose first `end` bytes (its header) are written.
    pub(super) fn new(end: u64) -> WrittenPrefix {
        WrittenPrefix {
            beyond: BTreeMap::new(),
            end,
        }
    }

    /// Records the written range `start..end`; returns whether the prefix grew.
    pub(super) fn add(&mut self, start: u64, end: u64) -> bool {
        let before = self.end;
        self.beyond.insert(start, end);
        while let Some((&s, &e)) = self.beyond.first_key_value() {
            if s > self.end {
                break;
            }
            self.beyond.remove(&s);
            self.end = self.end.max(e);
        }
        self.end > before
    }

    /// End of the written prefix.
    pub(super) fn end(&self) -> u64 {
        self.end
    }
}

/// The range whose writeback should start now, given the written prefix's end and where the
/// started part ends (moved on): the new part of the prefix, once it is [`WRITEBACK_CHUNK`]
/// long or reaches the end of the file.
fn writeback_due(started: &mut u64, written: u64, file_len: u64) -> Option<(u64, u64)> {
    let ready = written.saturating_sub(*started);
    if ready >= WRITEBACK_CHUNK || (ready > 0 && written >= file_len) {
        let range = (*started, written);
        *started = written;
        return Some(range);
    }
    None
}

/// Work that background threads do for a [`ShardWriter`] while tensors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Start the disk writeback of each shard's written prefix (`sync_file_range`, in pieces of
    /// at least 32 MiB), so that the disk is busy from the first tensors on
    /// and the fsync at sealing has little left to do. The call blocks while the disk's queue
    /// is full, so it has threads of its own.
    Writeback = 0,
    /// Advance each shard's SHA-256 over its written prefix (read back from the page cache),
    /// so that sealing does not read the shard back. One thread hashes a shard at a time.
    Hashing = 1,
}

/// Nanoseconds per writer stage, summed over the threads that ran it.
#[derive(Default)]
pub(super) struct WriterClock {
    /// Positioned writes into the shard files (page-cache copies; queueing on the file).
    pub(super) pwrite: AtomicU64,
    /// Starting the disk writeback of written ranges (`sync_file_range`).
    pub(super) writeback: AtomicU64,
    /// SHA-256 of the written prefixes (read back from the page cache), and of what sealing
    /// had left to hash.
    pub(super) hash: AtomicU64,
    /// fsync of complete shards at sealing.
    pub(super) fsync: AtomicU64,
}

/// Seconds a writer spent per stage, summed over threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterSeconds {
    /// Positioned writes into the shard files.
    pub pwrite: f64,
    /// Starting the disk writeback of written ranges.
    pub writeback: f64,
    /// SHA-256 of the shards.
    pub hash: f64,
    /// fsync of complete shards.
    pub fsync: f64,
}

impl ShardWriter {
    /// Seconds spent per writer stage, summed over threads.
    pub fn seconds(&self) -> WriterSeconds {
        let s = elapsed_seconds;
        WriterSeconds {
            pwrite: s(&self.clock.pwrite),
            writeback: s(&self.clock.writeback),
            hash: s(&self.clock.hash),
            fsync: s(&self.clock.fsync),
        }
    }

    /// Runs `service` on the calling thread for the ranges written, until
    /// [`ShardWriter::stop_serving`] was called and every range written before is handled.
    /// Writers never wait for it. Without serving threads, sealing hashes what is left and its
    /// fsync writes it: the bytes and digests are the same.
    pub fn serve(&self, service: Service) {
        let rx = &self.to_serve[service as usize];
        for s in rx.iter() {
            let shard = &self.shards[s];
            let Some(file) = &shard.file else { continue };
            match service {
                Service::Writeback => {
                    // The prefix read under the cursor's lock, so that two threads never
                    // start the same range and the started part only grows.
                    let range = {
                        let mut started = lock(&shard.writeback_started);
                        let written = lock(&shard.prefix).end();
                        writeback_due(&mut started, written, shard.file_len)
                    };
                    if let Some((from, to)) = range {
                        let started = std::time::Instant::now();
                        start_writeback(file, from, to - from);
                        add_elapsed(&self.clock.writeback, started);
                    }
                }
                Service::Hashing => self.advance_hash(shard, file),
            }
        }
    }

    /// Makes the threads running [`ShardWriter::serve`] return once the ranges written so far
    /// are handled. Ranges written later are left to sealing.
    pub fn stop_serving(&self) {
        self.served
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Advances `shard`'s hash over its written prefix, unless another thread is doing that
    /// now (it picks the new ranges up, or sealing does). The bytes read back are the ones
    /// just written, still in the page cache.
    fn advance_hash(&self, shard: &OpenShard, file: &File) {
        let Ok(mut hash) = shard.hash.try_lock() else {
            return;
        };
        loop {
            let Some(h) = hash.as_mut() else { return };
            let to = lock(&shard.prefix).end();
            if to <= h.at() {
                return;
            }
            let started = std::time::Instant::now();
            if h.advance(file, to).is_err() {
                *hash = None;
            }
            add_elapsed(&self.clock.hash, started);
        }
    }
}

/// Locks `m`, also when a panicking thread poisoned it (the guarded values stay consistent:
/// each is changed in one step).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts writing `len` bytes at `offset` of `file` back to disk without waiting, so that the
/// shard's fsync at sealing has little left to do. Advisory: an error changes nothing.
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on a descriptor we own; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{writeback_due, WrittenPrefix, WRITEBACK_CHUNK};

    #[test]
    fn the_prefix_grows_only_when_a_gap_closes() {
        let mut p = WrittenPrefix::new(10);
        assert!(!p.add(20, 30));
        assert_eq!(p.end(), 10);
        assert!(p.add(10, 20));
        assert_eq!(p.end(), 30);
        // A range inside the prefix (written in pieces) changes nothing.
        assert!(!p.add(0, 10));
        assert!(p.beyond.is_empty());
    }

    #[test]
    fn writeback_starts_in_prefix_order_and_in_large_pieces() {
        const C: u64 = WRITEBACK_CHUNK;
        let len = 3 * C + 10;
        let mut prefix = WrittenPrefix::new(10);
        let mut started = 0;
        let mut due = |p: &WrittenPrefix| writeback_due(&mut started, p.end(), len);
        // Out of order: nothing until the prefix is long enough.
        prefix.add(C, 2 * C);
        assert_eq!(due(&prefix), None);
        prefix.add(10, C / 2);
        assert_eq!(due(&prefix), None);
        // The gap filled: the whole prefix [0, 2C) at once.
        prefix.add(C / 2, C);
        assert_eq!(due(&prefix), Some((0, 2 * C)));
        prefix.add(2 * C, 2 * C + 5);
        assert_eq!(due(&prefix), None);
        // The end of the file: the rest, however short.
        prefix.add(2 * C + 5, len);
        assert_eq!(due(&prefix), Some((2 * C, len)));
        assert_eq!(due(&prefix), None);
    }
}
