//! `shardquant convert`: pre-flight, up-to-date check, plan, stream, write metadata and
//! manifest, publish; and `convert --check`.

mod journal;
mod manifest;
mod paths;
mod report;
mod resume;

use crate::output::publish::{
    check_free_space, leftovers, parent_dir, sync_dir, write_file, OutputLock, Staging,
};
pub use journal::{Journal, JournalState, JOURNAL_FILE};
pub use manifest::{
    check_checksums, freshness, ChecksumCheck, Freshness, Provenance, MANIFEST_FILE,
};
pub use report::{nonfinite_warnings, quant_summary, Report};

use crate::input::checkpoint::Checkpoint;

use crate::plan::ShardPlan;

use crate::compute::cuda::{DeviceChoice, Gpu, GpuPool};
use crate::compute::Export;
use crate::digest::{hash_files, FileDigest};
use crate::error::{Error, ErrorKind, Result};
use crate::input::model::Model;
use crate::options::{KvCache, Options};
use crate::output::export::ct as ct_export;
use crate::output::export::{QuantMetadata, MODELOPT_VERSION};
use crate::output::metadata::is_weight_file;
use crate::output::metadata::CtMetadata;
use crate::output::ShardWriter;
use crate::pipeline;
use crate::plan::Plan;
use crate::progress::Progress;
use paths::{check_input_dir, check_paths, report_path_usable};
use std::path::Path;
use std::time::Instant;

/// Prints an info line unless quiet (`-q`).
pub fn info(options: &Options, msg: &str) {
    if !options.run.quiet {
        eprintln!("{}shardquant: {msg}", crate::progress::log_prefix());
    }
}

/// `-v`: the plan's decisions a user may want to review before the run.
fn verbose_plan(options: &Options, plan: &Plan) {
    let origin = match plan.layout.origin {
        crate::input::layout::Origin::Shipped => "shipped",
        crate::input::layout::Origin::File => "--layout file",
        crate::input::layout::Origin::Inferred => "inferred from the files",
    };
    info(options, &format!("layout {} ({origin})", plan.layout.name));
    for l in plan
        .linears
        .iter()
        .map(|p| &p.linear)
        .filter(|l| l.excluded.is_some())
    {
        info(
            options,
            &format!(
                "  unquantized {} ({})",
                l.module,
                l.excluded.as_deref().unwrap_or("")
            ),
        );
    }
    for (module, why) in &plan.classified.unquantized {
        info(options, &format!("  passes through {module} ({why})"));
    }
    info(
        options,
        &format!("exclude_modules: {}", plan.exclude_modules.join(", ")),
    );
}

/// Prints a warning unless silent (`-qq`): `-q` hides progress and info, never warnings.
pub fn warn(options: &Options, msg: &str) {
    if !options.run.silent {
        eprintln!(
            "{}shardquant: warning: {msg}",
            crate::progress::log_prefix()
        );
    }
}

/// Opens a checkpoint and plans its conversion (everything before any weight is read).
pub fn prepare(input: &Path, options: &Options) -> Result<(Checkpoint, String, Plan)> {
    let (model, plan) = plan_model(Model::open(input, options.layout.as_deref())?, options)?;
    Ok((model.checkpoint, model.config_text, plan))
}

/// Plans the conversion of an opened model; gives the model back with the plan.
fn plan_model(model: Model, options: &Options) -> Result<(Model, Plan)> {
    model.refuse_quantized()?;
    let plan = Plan::build(
        &model.checkpoint,
        model.layout.clone(),
        &model.config,
        options,
    )?;
    Ok((model, plan))
}

/// GPU work slots per device: units in flight on the GPU at once.
const GPU_SLOTS: usize = 4;

/// The largest pinned staging buffer of a slot (two per slot): units larger than this stream
/// through it in halves, at the copies' speed, without holding pinned memory the size of the
/// largest unit for the whole run.
const GPU_STAGING: usize = 64 << 20;

/// Resolves `--device`: a pool of GPU slots sized for the plan's units, or None for the CPU.
fn open_device(plan: &Plan, options: &Options) -> Result<Option<GpuPool>> {
    let ordinal = match options.run.device {
        DeviceChoice::Cpu => return Ok(None),
        DeviceChoice::Auto => 0,
        DeviceChoice::Cuda(n) => n,
    };
    let gpu = match Gpu::open(ordinal) {
        Ok(gpu) => gpu,
        Err(reason) if options.run.device == DeviceChoice::Auto => {
            info(options, &format!("no usable GPU ({reason}); using the CPU"));
            return Ok(None);
        }
        Err(reason) => {
            return Err(Error::other(format!("--device cuda:{ordinal}: {reason}"))
                .with_hint("use --device cpu (same output bytes) or --device auto"))
        }
    };
    // Each slot holds one unit's weights on the GPU (about 2.2x that with outputs): bound by
    // --max-gpu-memory. The weights stream through two pinned buffers per slot of at most
    // GPU_STAGING bytes (and at most an eighth of --max-memory in all).
    let largest = (0..plan.units.len())
        .map(|i| {
            crate::pipeline::worker::compute_bytes(plan, i)
                .iter()
                .map(|n| n.next_multiple_of(256))
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);
    let gpu_bound = (options.run.max_gpu_memory as f64 / (GPU_SLOTS as f64 * 2.25)) as usize;
    let capacity = largest.min(gpu_bound);
    if capacity < largest {
        info(
            options,
            &format!(
                "units larger than {} run on the CPU (raise --max-gpu-memory)",
                crate::progress::human_bytes(capacity as u64)
            ),
        );
    }
    let host_bound = (options.run.max_memory / (16 * GPU_SLOTS as u64)) as usize;
    // A tiny --max-memory still leaves 1 MiB buffers: smaller ones would make every copy slow.
    let staging = largest.min(GPU_STAGING).min(host_bound.max(1 << 20));
    GpuPool::new(gpu, GPU_SLOTS, capacity, staging).map(Some)
}

/// Whether a file of the input (by name) is copied or rewritten into the output.
fn is_copied(name: &str) -> bool {
    !is_weight_file(name)
}

/// `convert --check`: whether `output` is up to date for converting `input` with `options`.
/// Reads the input's headers, its small files and samples of its large ones, and the output's
/// manifest and file sizes; writes nothing and takes no lock.
pub fn check(input: &Path, output: &Path, options: &Options) -> Result<Freshness> {
    check_input_dir(input)?;
    let ckpt = Checkpoint::open(input)?;
    let provenance = Provenance::compute(&ckpt, options, &is_copied)?;
    let key = provenance.key();
    Ok(match freshness(output, &key) {
        Freshness::Stale(why) => match resume::resumable(output, &key) {
            Some((dir, n)) => Freshness::Stale(format!(
                "{why}; the partial conversion in {} ({n} output shard(s) complete) can be continued with --resume",
                dir.display()
            )),
            None => Freshness::Stale(why),
        },
        fresh => fresh,
    })
}

/// Converts `input` into `output`. Nothing appears at `output` unless the conversion succeeds.
///
/// An output that is up to date (its manifest records this conversion: same inputs,
/// statistics, byte-affecting options and version, and its files are all there) is left alone,
/// even with `--force`. A stopped run's partial conversion beside the output is continued
/// (`--resume`), discarded (`--force`) or makes the run refuse to start (see the README,
/// "Running unattended").
/// When this run stops on an error or a signal, the output shards it completed are kept for
/// `--resume`, unless the input itself is at fault.
pub fn convert(input: &Path, output: &Path, options: &Options) -> Result<Report> {
    let started = Instant::now();
    let result = convert_and_report(input, output, options, started);
    if let (Err(e), Some(path)) = (&result, &options.run.report) {
        // A nightly job with a fixed report path must not keep yesterday's "ok": every outcome
        // writes one, unless the report path itself is what was refused.
        if report_path_usable(input, path) {
            let report = Report::failed(input, output, options, e, started);
            if let Err(w) = write_file(path, report.to_json().as_bytes()) {
                eprintln!(
                    "shardquant: warning: could not write the failure report {}: {w}",
                    path.display()
                );
            }
        }
    }
    result
}

fn convert_and_report(
    input: &Path,
    output: &Path,
    options: &Options,
    started: Instant,
) -> Result<Report> {
    // The command line refused these already; a library caller gets the same refusal.
    options.check_export()?;
    check_paths(input, output, options)?;
    let _lock = OutputLock::acquire(output)?;
    let ckpt = Checkpoint::open(input)?;
    let provenance = Provenance::compute(&ckpt, options, &is_copied)?;
    let key = provenance.key();
    match freshness(output, &key) {
        Freshness::UpToDate => {
            info(
                options,
                &format!(
                    "{} is up to date (its {MANIFEST_FILE} records this input, statistics and options); nothing to do",
                    output.display()
                ),
            );
            let report = Report::up_to_date(input, output, options, started);
            if let Some(path) = &options.run.report {
                write_file(path, report.to_json().as_bytes())?;
            }
            return Ok(report);
        }
        Freshness::Stale(why) if output.symlink_metadata().is_ok() && !options.run.force => {
            // Say what will work: --force replaces only a previous checkpoint or an empty
            // directory, never other files.
            let hint = if !output.is_dir() || crate::output::publish::replaceable(output) {
                "pass --force to replace it (the old one is removed only after the new one is complete)"
            } else {
                "it is a directory of other files, which --force never replaces: choose a new \
                 output path, or empty or remove that directory yourself"
            };
            return Err(Error::usage(format!(
                "output directory {} already exists and is not up to date: {why}",
                output.display()
            ))
            .with_hint(hint));
        }
        Freshness::Stale(_) => {}
    }
    resume::refuse_unasked(output, options)?;
    let (model, mut plan) = plan_model(
        Model::with_checkpoint(ckpt, input, options.layout.as_deref())?,
        options,
    )?;
    let (ckpt, config_text) = (&model.checkpoint, model.config_text.as_str());
    for w in &plan.warnings {
        warn(options, w);
    }
    let ct = options.output.export == Export::CompressedTensors;
    let shard_plan = if ct {
        // compressed-tensors: output shards mirror the input's (llm-compressor's layout).
        let shard_of = ct_export::output_shards(ckpt, &plan, options.output.format);
        let names: Vec<String> = ckpt
            .shards()
            .iter()
            .map(|s| {
                s.path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            })
            .collect();
        ShardPlan::mirrored(std::mem::take(&mut plan.outputs), &shard_of, &names)?
    } else {
        ShardPlan::new(
            std::mem::take(&mut plan.outputs),
            options.output.max_shard_size,
        )?
    };
    info(
        options,
        &format!(
            "{}: layout {}, {} tensors ({} linears quantized to {}), {} output shard(s), {} thread(s)",
            input.display(),
            plan.layout.name,
            ckpt.tensors().len(),
            plan.quantized_count(),
            options.output.format.cli_name(),
            shard_plan.shard_count(),
            options.run.threads
        ),
    );
    if options.run.verbose {
        verbose_plan(options, &plan);
    }
    let device_started = Instant::now();
    let gpu = open_device(&plan, options)?;
    let device_init_s = gpu.as_ref().map(|_| device_started.elapsed().as_secs_f64());
    let device = gpu.as_ref().map_or("cpu".to_string(), |p| {
        format!("cuda:{} ({})", p.gpu().ordinal, p.gpu().name)
    });
    info(options, &format!("device: {device}"));
    let preflight_s = started.elapsed().as_secs_f64();
    let (staging, state, done) = resume::staging_for(output, &key, &shard_plan, options)?;
    let job = Conversion {
        input,
        options,
        ckpt,
        plan: &plan,
        shard_plan: &shard_plan,
        config_text,
        provenance: &provenance,
        gpu: gpu.as_ref(),
    };
    let (mut run, mut files, notes, convert_s) = match job.run(&staging, &state, done) {
        Ok(done) => done,
        Err(e) => return Err(stopped(e, staging, shard_plan.shard_count())),
    };
    if crate::interrupt::interrupted() {
        let e = Error::interrupted(crate::interrupt::signal());
        return Err(stopped(e, staging, shard_plan.shard_count()));
    }
    run.device = device;
    run.gpu_memory_bytes = gpu.as_ref().map_or(0, |p| p.device_bytes() as u64);
    run.device_init_s = device_init_s;
    crate::fault::crash_point("publish", 1);
    std::fs::remove_file(staging.path().join(JOURNAL_FILE))
        .map_err(|e| Error::output_io("removing", &staging.path().join(JOURNAL_FILE), e))?;
    staging.publish(options.run.force)?;
    files.sort();
    let report = Report::new(
        input,
        output,
        options,
        &plan,
        ckpt,
        &run,
        files,
        notes,
        preflight_s,
        convert_s,
        started,
    );
    if let Some(path) = &options.run.report {
        write_file(path, report.to_json().as_bytes())?;
    }
    info(
        options,
        &format!(
            "wrote {} ({}) in {:.1}s",
            output.display(),
            crate::progress::human_bytes(run.bytes_written),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(report)
}

/// What a run that stopped with `e` leaves: its staging directory is kept for `--resume` when
/// its journal records completed shards (unless the input is at fault: a run on the same input
/// would stop again), and removed otherwise. Returns `e`, saying which.
fn stopped(e: Error, staging: Staging, shards: usize) -> Error {
    let journal = JournalState::read(staging.path());
    let kept = journal.as_ref().map_or(0, |j| j.shards.len());
    if kept > 0 && e.kind() != ErrorKind::BadInput {
        let mut keep: Vec<String> = journal
            .into_iter()
            .flat_map(|j| j.shards)
            .map(|d| d.path)
            .collect();
        keep.push(JOURNAL_FILE.to_string());
        let shown = staging.path().display().to_string();
        let e = match staging.keep(&keep) {
            Ok(_) => e.context(&format!(
                "{kept} of {shards} output shard(s) are complete and kept in {shown} for --resume"
            )),
            Err(cleanup) => e.context(&format!(
                "{kept} of {shards} output shard(s) are complete in {shown}, but {}",
                cleanup.message()
            )),
        };
        if e.hint().is_some() {
            e
        } else {
            e.with_hint("run the same command again with --resume to continue from them")
        }
    } else {
        drop(staging);
        match e.kind() {
            ErrorKind::Interrupted(_) => e.context("the temporary output was removed"),
            _ => e,
        }
    }
}

/// A planned conversion, ready to run in a staging directory.
struct Conversion<'a> {
    input: &'a Path,
    options: &'a Options,
    ckpt: &'a Checkpoint,
    plan: &'a Plan,
    shard_plan: &'a ShardPlan,
    config_text: &'a str,
    provenance: &'a Provenance,
    gpu: Option<&'a GpuPool>,
}

/// What [`Conversion::run`] gives back: run statistics, files written, notes, conversion seconds.
type Ran = (pipeline::RunStats, Vec<String>, Vec<String>, f64);

impl Conversion<'_> {
    /// Writes the shards that `done` does not hold (journaling each as it is sealed), then the
    /// index, the metadata files and the manifest, into the staging directory.
    fn run(
        &self,
        staging: &Staging,
        state: &JournalState,
        done: Vec<Option<FileDigest>>,
    ) -> Result<Ran> {
        let (options, plan) = (self.options, self.plan);
        // Only what will be copied: weights of other formats are left behind.
        let copied: u64 = self
            .ckpt
            .other_files()?
            .iter()
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| is_weight_file(&n.to_string_lossy()))
            })
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let pending: u64 = (0..done.len())
            .filter(|&s| done[s].is_none())
            .map(|s| self.shard_plan.file_len(s))
            .sum();
        check_free_space(parent_dir(staging.path()), pending + copied)?;
        let journal = Journal::start(staging.path(), state)?;
        let sealed_before: Vec<bool> = done.iter().map(Option::is_some).collect();
        let writer = ShardWriter::resume(staging.path(), self.shard_plan, done)?;
        let total: u64 = plan.units.iter().map(|u| u.read_bytes()).sum();
        let progress = Progress::new(total, options.run.quiet);
        let run_started = Instant::now();
        let on_sealed = |digest: FileDigest, units: &[(usize, Vec<pipeline::SummaryLine>)]| {
            journal.record(digest, units)
        };
        let sealing = pipeline::Sealing {
            done: &sealed_before,
            summaries: &state.units,
            on_sealed: &on_sealed,
        };
        let run = pipeline::run(
            plan, self.ckpt, &writer, options, &progress, self.gpu, &sealing,
        );
        progress.finish();
        let run = run?;
        info(
            options,
            &format!(
                "finishing: checksums, metadata and publishing {} shard(s)",
                self.shard_plan.shard_count()
            ),
        );
        if run.units_skipped > 0 {
            info(
                options,
                &format!(
                    "skipped {} of {} units of work: their output shards were complete",
                    run.units_skipped,
                    plan.units.len()
                ),
            );
        }
        let shards = writer.finish_hashed()?;
        let convert_s = run_started.elapsed().as_secs_f64();
        let mut notes = nonfinite_warnings(&run.summary);
        let mut files: Vec<String> = shards.iter().map(|d| d.path.clone()).collect();
        files.extend(crate::output::metadata::write_metadata(
            self.input,
            staging.path(),
            self.ckpt,
            self.config_text,
            &QuantMetadata {
                quant_algo: options.output.format.quant_algo().to_string(),
                group_size: options.output.format.group_size(),
                kv_cache_fp8: options.output.kv_cache == KvCache::Fp8,
                exclude_modules: plan.exclude_modules.clone(),
                producer_version: MODELOPT_VERSION.to_string(),
            },
            (options.output.export == Export::CompressedTensors)
                .then(|| CtMetadata {
                    format: options.output.format,
                    ignore: ct_export::ignore_list(self.ckpt, plan),
                    kv_cache: options.output.kv_cache == KvCache::Fp8,
                })
                .as_ref(),
            &quant_summary(plan, options, &run.summary),
            &mut notes,
        )?);
        for n in &notes {
            match n.strip_prefix("warning: ") {
                Some(w) => warn(options, w),
                None => info(options, n),
            }
        }
        let outputs = output_digests(staging.path(), shards, options.run.threads)?;
        write_file(
            &staging.path().join(MANIFEST_FILE),
            manifest::manifest_json(self.provenance, self.input, plan, &outputs).as_bytes(),
        )?;
        files.push(MANIFEST_FILE.to_string());
        Ok((run, files, notes, convert_s))
    }
}

/// Size and SHA-256 of every file in the staging directory `dir` but the manifest and the
/// journal, sorted by path; `known` are the shards' and index's, hashed already.
fn output_digests(dir: &Path, known: Vec<FileDigest>, threads: usize) -> Result<Vec<FileDigest>> {
    let all = manifest::files_under(dir, &|name| {
        name == MANIFEST_FILE || name.starts_with(JOURNAL_FILE)
    })?;
    let (mut digests, rest): (Vec<FileDigest>, Vec<(String, std::path::PathBuf)>) = {
        let mut rest = Vec::new();
        let mut digests = Vec::new();
        for (rel, full) in all {
            match known.iter().find(|d| d.path == rel) {
                Some(d) => digests.push(d.clone()),
                None => rest.push((rel, full)),
            }
        }
        (digests, rest)
    };
    for d in hash_files(&rest, threads) {
        digests.push(d?);
    }
    digests.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(digests)
}
