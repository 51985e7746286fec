//! A byte budget for work in flight: the reader takes a permit before a unit enters the
//! pipeline and the writer gives it back once the unit's outputs are on disk.

use std::sync::{Condvar, Mutex};

/// Counting semaphore over bytes, with cancellation and a high-water mark.
#[derive(Debug)]
pub struct Budget {
    capacity: u64,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    used: u64,
    peak: u64,
    cancelled: bool,
}

impl Budget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: u64) -> Budget {
        Budget {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    /// The bytes a unit of `bytes` is charged: a unit larger than the whole budget is charged
    /// the whole budget, so it runs, alone.
    pub fn charge(&self, bytes: u64) -> u64 {
        bytes.min(self.capacity)
    }

    /// Waits until `charge` bytes fit (or nothing else is in flight). False if cancelled.
    pub fn acquire(&self, charge: u64) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !s.cancelled && s.used > 0 && s.used + charge > self.capacity {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.cancelled {
            return false;
        }
        s.used += charge;
        s.peak = s.peak.max(s.used);
        true
    }

    /// Returns `charge` bytes.
    pub fn release(&self, charge: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.used = s.used.saturating_sub(charge);
        self.changed.notify_all();
    }

    /// Wakes every waiter and makes further acquisitions fail.
    pub fn cancel(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.cancelled = true;
        self.changed.notify_all();
    }

    /// The most bytes that were in flight at once.
    pub fn peak(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).peak
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

/// Makes freed work buffers go back to the operating system at once, so that the process's
/// memory follows the budget. glibc's malloc otherwise raises its mmap threshold after a large
/// buffer is freed (up to 32 MiB) and serves later ones from per-thread heaps that keep the freed
/// memory (a DeepSeek-V3 FP8 layer on the CPU, 16 threads under `--max-memory 1GiB`: 1.09 GB
/// peak RSS with the default, 0.92 GB with this; BENCHMARKS.md). Buffers of 1 MiB and more are
/// then mapped on their own and unmapped when freed.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the pipeline's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn bounds_bytes_in_flight() {
        let b = Arc::new(Budget::new(100));
        assert!(b.acquire(60));
        let b2 = b.clone();
        let t = std::thread::spawn(move || {
            assert!(b2.acquire(60));
            b2.release(60);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(b.peak(), 60, "second unit must wait");
        b.release(60);
        t.join().unwrap();
        assert_eq!(b.peak(), 60);
    }

    #[test]
    fn oversized_unit_runs_alone_and_cancel_wakes() {
        let b = Budget::new(100);
        let c = b.charge(1000);
        assert_eq!(c, 100);
        assert!(b.acquire(c));
        b.cancel();
        assert!(!b.acquire(1));
    }
}
