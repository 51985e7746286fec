//! `shardquant convert`: pre-flight, plan, stream, write metadata, publish.

mod publish;
mod report;

pub use publish::{
    check_free_space, free_bytes, parent_dir, replaceable, sync_dir, write_file, OutputLock,
    Staging,
};
pub use report::{nonfinite_warnings, quant_summary, Report};

use crate::checkpoint::{Checkpoint, Lane, Resolved, ShardPlan, ShardWriter};
use crate::error::{Error, Result};
use crate::export::{
    export_config_json, hf_quant_config_json, sanitize_generation_config, QuantMetadata,
};
use crate::gpu::{DeviceChoice, Gpu, GpuPool};
use crate::layout::Layout;
use crate::options::Options;
use crate::pipeline;
use crate::plan::Plan;
use crate::progress::Progress;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The ModelOpt version whose export format shardquant reproduces.
pub const MODELOPT_VERSION: &str = "0.47.0";

/// Weight files that are not part of the safetensors checkpoint (another copy of the model in
/// another format): never copied into the output.
const WEIGHT_EXTENSIONS: &[&str] = &[
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".gguf",
    ".ckpt",
    ".h5",
    ".msgpack",
];

/// Whether a file is weights of another format (never copied into the output).
fn is_weight_file(name: &str) -> bool {
    WEIGHT_EXTENSIONS.iter().any(|ext| name.ends_with(ext))
}

/// Files of the input that the conversion writes itself instead of copying.
const REWRITTEN: &[&str] = &[
    "config.json",
    "generation_config.json",
    "hf_quant_config.json",
];

/// Prints an info line unless quiet.
pub fn info(options: &Options, msg: &str) {
    if !options.quiet {
        eprintln!("shardquant: {msg}");
    }
}

/// The largest `config.json` or `generation_config.json` read (real ones are a few KB).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads and parses `config.json` of a checkpoint directory. It must be a regular file inside
/// the directory (a link out of it is refused, see [`Lane`]).
pub fn read_config(dir: &Path) -> Result<(String, serde_json::Value)> {
    let path = dir.join("config.json");
    let needed = |e: Error| e.with_hint("a HuggingFace checkpoint directory needs its config.json");
    let lane = Lane::new(dir).map_err(|e| needed(Error::io("reading", dir, e)))?;
    let bytes = lane
        .read_small("config.json", MAX_CONFIG_BYTES)?
        .ok_or_else(|| {
            needed(Error::io(
                "reading",
                &path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ))
        })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Error::bad_input(format!("{}: is not UTF-8 text", path.display()))
            .with_hint("restore config.json from the model's original repository")
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::bad_input(format!("{}: invalid JSON: {e}", path.display()))
            .with_hint("restore config.json from the model's original repository")
    })?;
    if !value.is_object() {
        return Err(Error::bad_input(format!(
            "{}: not a JSON object",
            path.display()
        )));
    }
    Ok((text, value))
}

/// Opens a checkpoint and plans its conversion (everything before any weight is read).
pub fn prepare(input: &Path, options: &Options) -> Result<(Checkpoint, String, Plan)> {
    let ckpt = Checkpoint::open(input)?;
    let (config_text, config) = read_config(input)?;
    // An FP8 block-scaled source (DeepSeek-V3 style) is converted; any other quantized input is
    // refused: its weights are not the original ones.
    let fp8_block_source = config.get("quantization_config").is_some_and(|q| {
        q.get("quant_method").and_then(|m| m.as_str()) == Some("fp8")
            && q.get("weight_block_size").is_some()
    });
    if (config.get("quantization_config").is_some() && !fp8_block_source)
        || input.join("hf_quant_config.json").exists()
    {
        return Err(Error::bad_input(format!(
            "{}: this checkpoint is already quantized (config.json has quantization_config)",
            input.display()
        ))
        .with_hint("convert from the original BF16/FP16/FP32 checkpoint"));
    }
    let layout = Layout::for_checkpoint(options.layout.as_deref(), &config, input)?;
    let plan = Plan::build(&ckpt, layout, &config, options)?;
    Ok((ckpt, config_text, plan))
}

/// Where `path` is once symbolic links and `..` are resolved, whether or not it exists yet:
/// the canonical path when it exists, else its canonical parent joined with its name.
fn resolved_path(path: &Path) -> Result<PathBuf> {
    if path.symlink_metadata().is_ok() {
        if let Ok(p) = path.canonicalize() {
            return Ok(p);
        }
    }
    let parent = parent_dir(path);
    let canon_parent = parent.canonicalize().map_err(|e| {
        Error::usage(format!(
            "parent directory {} of {}: {e}",
            parent.display(),
            path.display()
        ))
        .with_hint("create the parent directory first")
    })?;
    Ok(match path.file_name() {
        Some(name) => canon_parent.join(name),
        None => canon_parent,
    })
}

/// Pre-flight checks of the paths: the input is a directory; the output (and `--report`) is
/// outside it, does not contain it, and is not the input itself, also through links and `..`;
/// an existing output is replaced only with `--force`, and only when it is empty or a
/// previous checkpoint.
fn check_paths(input: &Path, output: &Path, options: &Options) -> Result<()> {
    if !input.is_dir() {
        return Err(
            Error::bad_input(format!("{} is not a directory", input.display())).with_hint(
                "INPUT_DIR is a HuggingFace checkpoint directory (config.json + *.safetensors)",
            ),
        );
    }
    let canon_in = input
        .canonicalize()
        .map_err(|e| Error::io("reading", input, e))?;
    let canon_out = resolved_path(output)?;
    if canon_out.starts_with(&canon_in) || canon_in.starts_with(&canon_out) {
        return Err(Error::usage(format!(
            "output {} and input {} overlap{}",
            output.display(),
            input.display(),
            if canon_out == canon_in {
                " (they are the same directory)"
            } else if canon_out.starts_with(&canon_in) {
                " (the output would be inside the input)"
            } else {
                " (the output contains the input)"
            }
        ))
        .with_hint("write the output to a directory outside the input"));
    }
    if output.exists() && !output.is_dir() {
        return Err(Error::usage(format!(
            "output {} exists and is not a directory",
            output.display()
        ))
        .with_hint("remove it or choose another OUTPUT_DIR"));
    }
    if let Some(report) = &options.report {
        let parent = parent_dir(report);
        if !parent.is_dir() {
            return Err(Error::usage(format!(
                "--report {}: directory {} does not exist",
                report.display(),
                parent.display()
            ))
            .with_hint("create the directory or choose another report path"));
        }
        if resolved_path(report)?.starts_with(&canon_in) {
            return Err(Error::usage(format!(
                "--report {}: is inside the input directory {}, which shardquant never writes to",
                report.display(),
                input.display()
            ))
            .with_hint("write the report outside the input directory"));
        }
    }
    if output.is_dir() && options.force && !replaceable(output) {
        return Err(Error::usage(format!(
            "refusing to replace {}: it is not empty and holds no config.json or shardquant.json",
            output.display()
        ))
        .with_hint(
            "--force only replaces an empty directory or a previous checkpoint; check the path",
        ));
    }
    if output.symlink_metadata().is_ok() && !options.force {
        return Err(Error::usage(format!("output directory {} already exists", output.display()))
            .with_hint("pass --force to replace it (the old one is removed only after the new one is complete)"));
    }
    Ok(())
}

/// GPU work slots per device: units in flight on the GPU at once.
const GPU_SLOTS: usize = 4;

/// Resolves `--device`: a pool of GPU slots sized for the plan's units, or None for the CPU.
fn open_device(plan: &Plan, options: &Options) -> Result<Option<GpuPool>> {
    let ordinal = match options.device {
        DeviceChoice::Cpu => return Ok(None),
        DeviceChoice::Auto => 0,
        DeviceChoice::Cuda(n) => n,
    };
    let gpu = match Gpu::open(ordinal) {
        Ok(gpu) => gpu,
        Err(reason) if options.device == DeviceChoice::Auto => {
            info(options, &format!("no usable GPU ({reason}); using the CPU"));
            return Ok(None);
        }
        Err(reason) => {
            return Err(Error::other(format!("--device cuda:{ordinal}: {reason}"))
                .with_hint("use --device cpu (same output bytes) or --device auto"))
        }
    };
    // Each slot holds one unit's weights on the GPU (about 2.2x that with outputs) and twice
    // that in pinned host memory: bound both by the memory options.
    let largest = (0..plan.units.len())
        .map(|i| {
            crate::pipeline::worker::compute_bytes(plan, i)
                .iter()
                .map(|n| n.next_multiple_of(256))
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);
    let gpu_bound = (options.max_gpu_memory as f64 / (GPU_SLOTS as f64 * 2.25)) as usize;
    // Pinned staging (2 x capacity per slot) takes at most half of --max-memory.
    let host_bound = (options.max_memory / (4 * GPU_SLOTS as u64)) as usize;
    let capacity = largest.min(gpu_bound).min(host_bound);
    if capacity < largest {
        info(options, &format!("units larger than {capacity} bytes run on the CPU (raise --max-gpu-memory / --max-memory)"));
    }
    GpuPool::new(gpu, GPU_SLOTS, capacity).map(Some)
}

/// Converts `input` into `output`. Nothing appears at `output` unless the conversion succeeds.
pub fn convert(input: &Path, output: &Path, options: &Options) -> Result<Report> {
    let started = Instant::now();
    check_paths(input, output, options)?;
    let _lock = OutputLock::acquire(output)?;
    let (ckpt, config_text, mut plan) = prepare(input, options)?;
    for w in &plan.warnings {
        info(options, &format!("warning: {w}"));
    }
    let shard_plan = ShardPlan::new(std::mem::take(&mut plan.outputs), options.max_shard_size)?;
    info(
        options,
        &format!(
            "{}: layout {}, {} tensors ({} linears quantized to {}), {} output shard(s), {} thread(s)",
            input.display(),
            plan.layout.name,
            ckpt.tensors().len(),
            plan.quantized_count(),
            options.format.cli_name(),
            shard_plan.shard_count(),
            options.threads
        ),
    );
    let gpu = open_device(&plan, options)?;
    let device = gpu.as_ref().map_or("cpu".to_string(), |p| {
        format!("cuda:{} ({})", p.gpu().ordinal, p.gpu().name)
    });
    info(options, &format!("device: {device}"));
    let preflight_s = started.elapsed().as_secs_f64();
    // Only what will be copied: weights of other formats are left behind.
    let copied: u64 = ckpt
        .other_files()?
        .iter()
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| is_weight_file(&n.to_string_lossy()))
        })
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let parent = parent_dir(output);
    check_free_space(parent, shard_plan.total_bytes() + copied)?;
    let staging = Staging::create(output)?;
    let writer = ShardWriter::create(staging.path(), &shard_plan)?;
    let total: u64 = plan.units.iter().map(|u| u.bytes).sum();
    let progress = Progress::new(total, options.quiet);
    let run_started = Instant::now();
    let run = pipeline::run(&plan, &ckpt, &writer, options, &progress, gpu.as_ref());
    progress.finish();
    let mut run = run?;
    run.device = device;
    run.gpu_memory_bytes = gpu.as_ref().map_or(0, |p| p.device_bytes() as u64);
    let mut files = writer.finish()?;
    let convert_s = run_started.elapsed().as_secs_f64();
    let mut notes = nonfinite_warnings(&run.summary);
    files.extend(write_metadata(
        input,
        staging.path(),
        &ckpt,
        &config_text,
        &plan,
        options,
        &run,
        &mut notes,
    )?);
    for n in &notes {
        info(options, n);
    }
    if crate::interrupt::interrupted() {
        return Err(Error::interrupted(crate::interrupt::signal()));
    }
    staging.publish(options.force)?;
    files.sort();
    let report = Report::new(
        input,
        output,
        options,
        &plan,
        &ckpt,
        &run,
        files,
        notes,
        preflight_s,
        convert_s,
        started,
    );
    if let Some(path) = &options.report {
        write_file(path, report.to_json().as_bytes())?;
    }
    info(
        options,
        &format!(
            "wrote {} ({:.2} GB) in {:.1}s",
            output.display(),
            run.bytes_written as f64 / 1e9,
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(report)
}

/// Copies a subdirectory of the input (e.g. `assets/`), skipping weight files and, with a
/// warning, whatever [`Lane::list`] leaves out (links out of the input, links to directories,
/// FIFOs, sockets, devices).
fn copy_tree(ckpt: &Checkpoint, src: &Path, dest: &Path, notes: &mut Vec<String>) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|e| Error::io("creating", dest, e))?;
    let listing = ckpt.lane().list(src, |_| false)?;
    notes.extend(listing.skipped.iter().map(|s| format!("warning: {s}")));
    for dir in &listing.dirs {
        if let Some(name) = dir.file_name() {
            copy_tree(ckpt, dir, &dest.join(name), notes)?;
        }
    }
    for path in &listing.files {
        let Some(name) = path.file_name() else {
            continue;
        };
        if is_weight_file(&name.to_string_lossy()) || ckpt.is_shard(path) {
            notes.push(format!(
                "not copied: {} (weights outside the checkpoint's index)",
                path.display()
            ));
        } else {
            std::fs::copy(path, dest.join(name)).map_err(|e| Error::io("copying", path, e))?;
        }
    }
    Ok(())
}

/// Writes the metadata files into the staging directory; returns their names.
#[allow(clippy::too_many_arguments)]
fn write_metadata(
    input: &Path,
    dir: &Path,
    ckpt: &Checkpoint,
    config_text: &str,
    plan: &Plan,
    options: &Options,
    run: &pipeline::RunStats,
    notes: &mut Vec<String>,
) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let meta = QuantMetadata {
        quant_algo: options.format.quant_algo().to_string(),
        group_size: options.format.group_size(),
        kv_cache_fp8: options.kv_cache_fp8,
        exclude_modules: plan.exclude_modules.clone(),
        producer_version: MODELOPT_VERSION.to_string(),
    };
    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        write_file(&dir.join(name), bytes)?;
        written.push(name.to_string());
        Ok(())
    };
    put(
        "hf_quant_config.json",
        hf_quant_config_json(&meta).as_bytes(),
    )?;
    let config_path = input.join("config.json");
    put(
        "config.json",
        export_config_json(config_text, &config_path, &meta)?.as_bytes(),
    )?;
    let gen_path = input.join("generation_config.json");
    let gen_text = match ckpt.lane().resolve(&gen_path) {
        Resolved::Missing => None,
        Resolved::File { .. } => ckpt
            .lane()
            .read_small("generation_config.json", MAX_CONFIG_BYTES)?,
        other => {
            notes.push(format!(
                "warning: not copied: {}",
                ckpt.lane().refusal(&gen_path, &other).message()
            ));
            None
        }
    };
    if let Some(bytes) = gen_text {
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::bad_input(format!("{}: is not UTF-8 text", gen_path.display())))?;
        let sanitized = sanitize_generation_config(&text, &gen_path)?;
        if let Some(change) = &sanitized.changed {
            notes.push(format!("generation_config.json: {change}"));
        }
        put("generation_config.json", sanitized.text.as_bytes())?;
    }
    put(
        ".quant_summary.txt",
        quant_summary(plan, options, &run.summary).as_bytes(),
    )?;
    put(
        "shardquant.json",
        report::manifest(input, plan, options).as_bytes(),
    )?;
    let others = ckpt.other_entries()?;
    notes.extend(others.skipped.iter().map(|s| format!("warning: {s}")));
    for path in others.files {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_string()) else {
            continue;
        };
        if REWRITTEN.contains(&name.as_str())
            || name == ".quant_summary.txt"
            || name == "shardquant.json"
        {
            continue;
        }
        if is_weight_file(&name) || ckpt.is_shard(&path) {
            notes.push(format!(
                "not copied: {name} (weights outside the checkpoint's index)"
            ));
            continue;
        }
        let dest: PathBuf = dir.join(&name);
        std::fs::copy(&path, &dest).map_err(|e| Error::io("copying", &path, e))?;
        std::fs::File::open(&dest)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("syncing", &dest, e))?;
        written.push(name);
    }
    for sub in others.dirs {
        let Some(name) = sub.file_name() else {
            continue;
        };
        copy_tree(ckpt, &sub, &dir.join(name), notes)?;
        written.push(format!("{}/", name.to_string_lossy()));
    }
    Ok(written)
}
