//! The streaming pipeline: reader → workers → writer, connected by bounded channels, with a
//! byte budget on the work in flight.
//!
//! - The reader walks the plan's units in streaming order, waits for budget, advises the kernel
//!   to read the unit's input pages ahead, and hands the unit to the workers.
//! - Workers compute amax, scales and quantized bytes ([`worker::execute`]).
//! - The writer (the calling thread) writes each output at its planned offset, so the output
//!   bytes do not depend on which worker finishes first; then it drops the input pages that no
//!   later unit needs and returns the unit's budget.

pub mod budget;
pub mod pages;
pub mod worker;

use crate::calib::backend::CpuCompute;
use crate::checkpoint::{Checkpoint, ShardWriter};
use crate::error::{Error, Result};
use crate::gpu::GpuPool;
use crate::interrupt;
use crate::options::Options;
use crate::plan::Plan;
use crate::progress::Progress;
use budget::Budget;
use crossbeam_channel::{bounded, RecvTimeoutError};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
pub use worker::{NonFiniteWeight, Payload, SummaryLine, UnitResult};

/// Pass-through tensors are copied in pieces of this size, releasing each piece's input pages.
const COPY_CHUNK: usize = 64 << 20;

/// What a pipeline run measured.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Summary lines of every quantized linear, in output order.
    pub summary: Vec<SummaryLine>,
    /// Most bytes of work in flight at once.
    pub peak_in_flight: u64,
    /// Bytes of output written.
    pub bytes_written: u64,
    /// Output tensors written.
    pub tensors_written: usize,
    /// Units whose numeric work ran on the GPU.
    pub gpu_units: usize,
    /// The device used ("cpu" or "cuda:N (name)").
    pub device: String,
    /// GPU memory held by the work slots (0 on the CPU).
    pub gpu_memory_bytes: u64,
}

/// Reads one byte of every page of `bytes`, so that page faults (disk reads) happen now.
fn touch(bytes: &[u8]) {
    let mut sum = 0u8;
    for i in (0..bytes.len()).step_by(4096) {
        sum = sum.wrapping_add(bytes[i]);
    }
    std::hint::black_box(sum);
}

/// A unit whose outputs are on disk.
struct Written {
    unit: usize,
    summary: Vec<SummaryLine>,
    bytes: u64,
    tensors: usize,
}

/// Writes a unit's outputs at their planned offsets (from the worker thread: writes run in
/// parallel, and the bytes do not depend on the order).
fn write_outputs(
    plan: &Plan,
    ckpt: &Checkpoint,
    writer: &ShardWriter,
    done: UnitResult,
) -> Result<Written> {
    let unit = &plan.units[done.unit];
    let mut bytes = 0u64;
    for (&out, payload) in unit.outputs.iter().zip(&done.payloads) {
        let len = match payload {
            Payload::Owned(b) => {
                writer.write(out, b)?;
                b.len()
            }
            Payload::Input {
                tensor,
                offset,
                len,
            } => {
                // Straight from the mapping, dropping pages as they are written.
                let entry = &ckpt.tensors()[*tensor];
                let data = &ckpt.bytes(entry)[*offset..offset + len];
                writer.write_in_chunks(out, data, COPY_CHUNK, |r| {
                    ckpt.release_range(entry, offset + r.start..offset + r.end)
                })?;
                *len
            }
        };
        bytes += len as u64;
    }
    Ok(Written {
        unit: done.unit,
        summary: done.summary,
        bytes,
        tensors: unit.outputs.len(),
    })
}

/// Computes one unit on the GPU when there is one and the unit fits a slot, else on the CPU.
fn compute_unit(
    plan: &Plan,
    ckpt: &Checkpoint,
    options: &Options,
    i: usize,
    gpu: Option<&GpuPool>,
    gpu_units: &AtomicUsize,
) -> Result<UnitResult> {
    let unit = &plan.units[i];
    match gpu {
        Some(pool) if worker::is_compute(plan, i) && pool.fits(worker::compute_bytes(plan, i)) => {
            gpu_units.fetch_add(1, Ordering::Relaxed);
            // Fault the pages in before taking a GPU slot, so slots are held for copies and
            // kernels, not for disk reads.
            for &(t, offset, len) in &unit.reads {
                touch(&ckpt.bytes(&ckpt.tensors()[t])[offset..offset + len]);
            }
            worker::execute(plan, ckpt, options, i, &mut pool.compute())
        }
        _ => worker::execute(plan, ckpt, options, i, &mut CpuCompute::default()),
    }
}

/// Runs every unit of `plan`, writing through `writer`; numeric work goes to `gpu` when given.
pub fn run(
    plan: &Plan,
    ckpt: &Checkpoint,
    writer: &ShardWriter,
    options: &Options,
    progress: &Progress,
    gpu: Option<&GpuPool>,
) -> Result<RunStats> {
    let gpu_units = AtomicUsize::new(0);
    let threads = options.threads.max(1);
    // The GPU slots' pinned staging buffers live for the whole run: they come out of the budget.
    let pinned = gpu.map_or(0, |p| p.pinned_bytes() as u64);
    let budget = Budget::new(
        options
            .max_memory
            .saturating_sub(pinned)
            .max(options.max_memory / 4),
    );
    let cancelled = AtomicBool::new(false);
    let (work_tx, work_rx) = bounded::<usize>(threads * 2);
    let (done_tx, done_rx) = bounded::<Result<Written>>(threads * 2);
    let mut summaries: Vec<Vec<SummaryLine>> = vec![Vec::new(); plan.units.len()];
    let mut pages = pages::PageReleaser::new(ckpt, plan.tensor_users.clone());
    let mut stats = RunStats::default();

    let outcome = std::thread::scope(|scope| -> Result<()> {
        let (budget, cancelled, gpu_units) = (&budget, &cancelled, &gpu_units);
        scope.spawn(move || {
            for (i, unit) in plan.units.iter().enumerate() {
                let stop = cancelled.load(Ordering::Relaxed) || interrupt::interrupted();
                if stop || !budget.acquire(budget.charge(unit.bytes)) {
                    break;
                }
                for &(t, offset, len) in &unit.reads {
                    ckpt.prefetch_range(&ckpt.tensors()[t], offset..offset + len);
                }
                if work_tx.send(i).is_err() {
                    break;
                }
            }
        });
        for _ in 0..threads {
            let (work_rx, done_tx) = (work_rx.clone(), done_tx.clone());
            scope.spawn(move || {
                for i in work_rx.iter() {
                    if cancelled.load(Ordering::Relaxed) {
                        break;
                    }
                    // A panic would leave its unit's budget taken and hang the others: turn it
                    // into an error that stops the run.
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        compute_unit(plan, ckpt, options, i, gpu, gpu_units).and_then(|done| write_outputs(plan, ckpt, writer, done))
                    }))
                    .unwrap_or_else(|_| {
                        Err(Error::other(format!(
                            "internal error: a worker panicked on unit {i}; nothing was published (please report this)"
                        )))
                    });
                    if done_tx.send(result).is_err() {
                        break;
                    }
                }
            });
        }
        drop((work_rx, done_tx));
        let mut remaining = plan.units.len();
        let result = (|| -> Result<()> {
            while remaining > 0 {
                let done = loop {
                    if interrupt::interrupted() {
                        return Err(Error::interrupted(interrupt::signal()));
                    }
                    match done_rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(done) => break done?,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => {
                            return Err(Error::other(
                                "internal error: the worker threads stopped early",
                            ))
                        }
                    }
                };
                let unit = &plan.units[done.unit];
                stats.bytes_written += done.bytes;
                stats.tensors_written += done.tensors;
                pages.unit_done(unit);
                summaries[done.unit] = done.summary;
                budget.release(budget.charge(unit.bytes));
                progress.advance(unit.bytes);
                remaining -= 1;
            }
            Ok(())
        })();
        if result.is_err() {
            cancelled.store(true, Ordering::Relaxed);
            budget.cancel();
        }
        drop(done_rx);
        result
    });
    outcome?;
    stats.peak_in_flight = budget.peak();
    stats.gpu_units = gpu_units.into_inner();
    stats.summary = summaries.into_iter().flatten().collect();
    Ok(stats)
}
