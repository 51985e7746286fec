//! The streaming pipeline: reader → workers → writer, connected by bounded channels, with a
//! byte budget on the work in flight.
//!
//! - The reader walks the plan's units in streaming order, waits for budget, advises the kernel
//!   to read the unit's input pages ahead, and hands the unit to the workers.
//! - Workers compute amax, scales and quantized bytes ([`worker::execute`]).
//! - Workers write each output at its planned offset, so the output bytes do not depend on
//!   which worker finishes first. The collector (the calling thread) then drops the input pages
//!   that no later unit needs, returns the unit's budget, and counts the output shards' tensors:
//!   a shard whose tensors are all written goes to the sealing thread, which syncs, hashes and
//!   renames it and records it (the resume journal), so a run stopped later keeps it.
//! - A resumed run skips the units whose outputs all lie in shards sealed before.
//! - On an error or a signal, no new unit starts; units in flight finish, and the shards they
//!   complete are still sealed before the run returns.

pub mod budget;
pub mod pages;
pub mod seal;
pub mod worker;

use crate::compute::backend::CpuCompute;
use crate::compute::cuda::GpuPool;
use crate::error::{Error, Result};
use crate::input::checkpoint::Checkpoint;
use crate::interrupt;
use crate::options::Options;
use crate::output::writer::Service;
use crate::output::ShardWriter;
use crate::plan::Plan;
use crate::progress::{add_elapsed, elapsed_seconds, Progress};
use budget::Budget;
use crossbeam_channel::{bounded, unbounded, RecvTimeoutError};
use seal::ShardTracker;
pub use seal::{OnSealed, Sealing};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Threads that seal completed output shards.
const SEALERS: usize = 4;
/// Threads that start the writeback of written ranges, and threads that hash the shards as they
/// are written ([`ShardWriter::serve`]).
const WRITEBACK_THREADS: usize = 2;
const HASHING_THREADS: usize = 2;
use std::time::{Duration, Instant};
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
    /// Bytes of input read by the units run (skipped units not counted).
    pub bytes_read: u64,
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
    /// Seconds the caller took to open the GPU (context, kernels compiled, slots allocated);
    /// `None` on the CPU.
    pub device_init_s: Option<f64>,
    /// Units skipped because a previous run had completed their output shards.
    pub units_skipped: usize,
    /// Seconds per stage, summed over the threads that ran it: (stage, seconds).
    pub stage_seconds: Vec<(&'static str, f64)>,
    /// Wall-clock seconds from the start of the run to each milestone: (milestone, seconds).
    pub milestones: Vec<(&'static str, f64)>,
    /// Bytes of weights copied to the GPU (0 on the CPU).
    pub bytes_to_device: u64,
    /// Bytes of results copied back from the GPU.
    pub bytes_from_device: u64,
}

/// Nanoseconds per pipeline stage, summed over threads.
#[derive(Default)]
struct StageClock {
    /// The reader waiting for memory budget (back-pressure: workers or disk are behind).
    budget_wait: AtomicU64,
    /// Workers computing units: page faults of the input, amax, scales, packing (CPU or GPU).
    compute: AtomicU64,
    /// Workers writing output tensors into the shards.
    write: AtomicU64,
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
/// parallel, and the bytes do not depend on the order). Outputs in shards sealed before this
/// run (`sealed`) are already there.
fn write_outputs(
    plan: &Plan,
    ckpt: &Checkpoint,
    writer: &ShardWriter,
    sealed: &[bool],
    done: UnitResult,
) -> Result<Written> {
    let unit = &plan.units[done.unit];
    let mut bytes = 0u64;
    let mut tensors = 0;
    for (&out, payload) in unit.outputs.iter().zip(&done.payloads) {
        if sealed[writer.shard_of(out)] {
            continue;
        }
        tensors += 1;
        let len = match payload {
            Payload::Owned(b) => {
                writer.write(out, b)?;
                b.len()
            }
            Payload::Input(slice) => {
                // Straight from the mapping, dropping pages as they are written.
                let entry = &ckpt.tensors()[slice.tensor];
                writer.write_in_chunks(out, slice.bytes(ckpt), COPY_CHUNK, |r| {
                    ckpt.release_range(entry, slice.offset + r.start..slice.offset + r.end)
                })?;
                slice.len
            }
        };
        bytes += len as u64;
    }
    Ok(Written {
        unit: done.unit,
        summary: done.summary,
        bytes,
        tensors,
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
            for slice in &unit.reads {
                touch(slice.bytes(ckpt));
            }
            worker::execute(plan, ckpt, options, i, &mut pool.compute())
        }
        _ => worker::execute(plan, ckpt, options, i, &mut CpuCompute::default()),
    }
}

/// Runs the units of `plan`, writing through `writer`; numeric work goes to `gpu` when given.
/// Units whose outputs all lie in shards sealed before (`sealing.done`) are skipped; every
/// shard completed is sealed and reported to `sealing.on_sealed`.
pub fn run(
    plan: &Plan,
    ckpt: &Checkpoint,
    writer: &ShardWriter,
    options: &Options,
    progress: &Progress,
    gpu: Option<&GpuPool>,
    sealing: &Sealing,
) -> Result<RunStats> {
    let run_started = Instant::now();
    budget::return_freed_memory();
    let (mut first_written, mut all_written) = (None, None);
    let gpu_units = AtomicUsize::new(0);
    let threads = options.run.threads.max(1);
    // The GPU slots' pinned staging buffers live for the whole run: they come out of the budget.
    let pinned = gpu.map_or(0, |p| p.pinned_bytes() as u64);
    let budget = Budget::new(
        options
            .run
            .max_memory
            .saturating_sub(pinned)
            .max(options.run.max_memory / 4),
    );
    let cancelled = AtomicBool::new(false);
    let clock = StageClock::default();
    let (sealed_count, journaled_count) = (AtomicU64::new(0), AtomicU64::new(0));
    let (work_tx, work_rx) = bounded::<usize>(threads * 2);
    let (done_tx, done_rx) = bounded::<Result<Written>>(threads * 2);
    let (seal_tx, seal_rx) = unbounded::<(usize, Vec<(usize, Vec<SummaryLine>)>)>();
    let mut summaries: Vec<Vec<SummaryLine>> = vec![Vec::new(); plan.units.len()];
    let mut pages = pages::PageReleaser::new(ckpt, plan.tensor_users.clone());
    let mut tracker = ShardTracker::new(plan, writer, sealing.done);
    let mut stats = RunStats::default();
    let mut todo = Vec::with_capacity(plan.units.len());
    for (u, unit) in plan.units.iter().enumerate() {
        if ShardTracker::skippable(plan, writer, sealing, u) {
            summaries[u] = sealing.summaries[&u].clone();
            pages.unit_done(unit);
            progress.advance(unit.read_bytes());
            stats.units_skipped += 1;
        } else {
            todo.push(u);
        }
    }
    for s in tracker.empty_shards(sealing.done) {
        let _ = seal_tx.send((s, Vec::new()));
    }

    let outcome = std::thread::scope(|scope| -> Result<()> {
        let (budget, cancelled, gpu_units, todo) = (&budget, &cancelled, &gpu_units, &todo);
        let (sealed_count, journaled_count) = (&sealed_count, &journaled_count);
        let clock = &clock;
        let stop = || {
            cancelled.store(true, Ordering::Relaxed);
            budget.cancel();
        };
        // Sealing (fsync, SHA-256 read-back, rename) runs on a few threads: shards that
        // complete together (often at the end of a fast run) are hashed in parallel.
        let sealers: Vec<_> = (0..SEALERS.min(writer.shard_count()).max(1))
            .map(|_| {
                let seal_rx = seal_rx.clone();
                scope.spawn(move || -> Result<()> {
                    for (s, units) in seal_rx.iter() {
                        let sealed = writer.seal(s).and_then(|digest| {
                            let count = sealed_count.fetch_add(1, Ordering::SeqCst) + 1;
                            crate::fault::crash_point("sealed", count);
                            (sealing.on_sealed)(digest, &units)?;
                            // Counted after the record: at the k-th, k records are complete.
                            let count = journaled_count.fetch_add(1, Ordering::SeqCst) + 1;
                            crate::fault::crash_point("journaled", count);
                            Ok(())
                        });
                        if sealed.is_err() {
                            stop();
                            return sealed;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        drop(seal_rx);
        for _ in 0..WRITEBACK_THREADS {
            scope.spawn(|| writer.serve(Service::Writeback));
        }
        for _ in 0..HASHING_THREADS {
            scope.spawn(|| writer.serve(Service::Hashing));
        }
        scope.spawn(move || {
            for &i in todo {
                let unit = &plan.units[i];
                let stop = cancelled.load(Ordering::Relaxed) || interrupt::interrupted();
                let waiting = std::time::Instant::now();
                let granted = !stop && budget.acquire(budget.charge(unit.bytes));
                add_elapsed(&clock.budget_wait, waiting);
                if !granted {
                    break;
                }
                for r in &unit.reads {
                    ckpt.prefetch_range(&ckpt.tensors()[r.tensor], r.offset..r.offset + r.len);
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
                        let started = std::time::Instant::now();
                        let computed = compute_unit(plan, ckpt, options, i, gpu, gpu_units);
                        add_elapsed(&clock.compute, started);
                        let started = std::time::Instant::now();
                        let written = computed.and_then(|done| write_outputs(plan, ckpt, writer, sealing.done, done));
                        add_elapsed(&clock.write, started);
                        written
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
        // Collects results until every unit is in; after an error or a signal, until the
        // workers have finished what they had started, so its shards are still sealed.
        let mut first_error: Option<Error> = None;
        let mut remaining = todo.len();
        while remaining > 0 {
            if first_error.is_none() && interrupt::interrupted() {
                first_error = Some(Error::interrupted(interrupt::signal()));
                stop();
            }
            let done = match done_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(done)) => done,
                Ok(Err(e)) => {
                    remaining -= 1;
                    if first_error.is_none() {
                        first_error = Some(e);
                        stop();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    if !cancelled.load(Ordering::Relaxed) && first_error.is_none() {
                        first_error = Some(Error::other(
                            "internal error: the worker threads stopped early",
                        ));
                    }
                    break;
                }
            };
            remaining -= 1;
            first_written.get_or_insert_with(|| run_started.elapsed().as_secs_f64());
            let unit = &plan.units[done.unit];
            stats.bytes_written += done.bytes;
            stats.bytes_read += unit.read_bytes();
            stats.tensors_written += done.tensors;
            pages.unit_done(unit);
            summaries[done.unit] = done.summary;
            budget.release(budget.charge(unit.bytes));
            progress.advance(unit.read_bytes());
            for s in tracker.unit_written(plan, writer, sealing.done, done.unit) {
                let units = tracker
                    .units_of(s)
                    .iter()
                    .map(|&u| (u, summaries[u].clone()))
                    .collect();
                // The sealer only goes away after an error of its own, which stops the run.
                let _ = seal_tx.send((s, units));
            }
        }
        drop(done_rx);
        drop(seal_tx);
        all_written = Some(run_started.elapsed().as_secs_f64());
        writer.stop_serving();
        if first_error.is_none() {
            let pending = writer.shard_count() as u64
                - sealed_count
                    .load(Ordering::SeqCst)
                    .min(writer.shard_count() as u64);
            if pending > 0 {
                // The bar is full, the run is not: say what it is waiting for.
                progress.phase(&format!("sealing {pending} shard(s): fsync and SHA-256"));
            }
        }
        // Every sealer drains the channel before it ends; the first error wins.
        let mut sealed = Ok(());
        for h in sealers {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Error::other("internal error: a sealing thread panicked")));
            sealed = sealed.and(r);
        }
        match first_error {
            Some(e) => Err(e),
            None => sealed,
        }
    });
    outcome?;
    let w = writer.seconds();
    stats.stage_seconds = vec![
        (
            "reader_waiting_for_budget",
            elapsed_seconds(&clock.budget_wait),
        ),
        ("compute", elapsed_seconds(&clock.compute)),
        ("write", elapsed_seconds(&clock.write)),
        ("write_pwrite", w.pwrite),
        ("shard_writeback_start", w.writeback),
        ("shard_sha256", w.hash),
        ("shard_fsync", w.fsync),
    ];
    if let Some(pool) = gpu {
        let g = pool.stages();
        stats.stage_seconds.extend([
            ("gpu_slot_wait", g.slot_wait_s),
            ("gpu_staging_copy_in", g.staging_in_s),
            ("gpu_device_wait", g.device_wait_s),
            ("gpu_staging_copy_out", g.staging_out_s),
        ]);
        stats.bytes_to_device = g.bytes_to_device;
        stats.bytes_from_device = g.bytes_from_device;
    }
    stats.milestones = [
        ("first_unit_written", first_written),
        ("all_units_written", all_written),
        (
            "all_shards_sealed",
            Some(run_started.elapsed().as_secs_f64()),
        ),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect();
    stats.peak_in_flight = budget.peak();
    stats.gpu_units = gpu_units.into_inner();
    stats.summary = summaries.into_iter().flatten().collect();
    Ok(stats)
}
