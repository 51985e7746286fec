//! The command line: clap definitions and their translation into [`Options`].

use crate::compute::cuda::DeviceChoice;
use crate::compute::mse::CalibMethod;
use crate::compute::{DequantPrecision, Export, Numerics, QuantFormat};
use crate::error::{Error, Result};
use crate::input::checkpoint::parse_size;
use crate::input::stats::StatsFormat;
use crate::options::{ExpertInputAmax, ImportanceSource, KvCache, UncalibratedExperts};
use crate::options::{Options, OutputOptions, RunOptions, Scope, WeightAmaxMode};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const EXIT_CODES: &str = "\
Exit codes:
  0    success (convert: also when the output was already up to date)
  1    any other failure (I/O error on the output, disk full, internal error)
  2    usage error (bad option, output exists without --force, a stopped run's partial
       conversion is there without --resume or --force)
  3    bad input (checkpoint, statistics file or layout unusable); nothing is written
  10   convert --check: the output is not up to date
  130  interrupted by SIGINT, 143 by SIGTERM (completed output shards are kept for --resume)";

const CONVERT_EXIT_CODES: &str = "\
Exit codes:
  0    done, or the output was already up to date
  1    failure on the output side (I/O error, disk full, lock held by another run, internal)
  2    usage error (bad option, output exists without --force, a stopped run's partial
       conversion is there without --resume or --force)
  3    bad input (checkpoint, statistics file or layout unusable); nothing is written
  10   --check: the output is not up to date
  130  interrupted by SIGINT, 143 by SIGTERM (completed output shards are kept for --resume)";

const INSPECT_EXIT_CODES: &str = "\
Exit codes:
  0    described; a conversion with these options would run
  2    usage error
  3    bad input, or a conversion with these options would stop in pre-flight (the
       description is printed, then why)";

const VERIFY_EXIT_CODES: &str = "\
Exit codes:
  0    every check passed
  2    usage error
  3    a problem was found (each is listed), or the checkpoint cannot be read";

const STATS_EXIT_CODES: &str = "\
Exit codes:
  0    done
  1    the output file cannot be written (stats import)
  2    usage error (stats import: the output exists without --force)
  3    a statistics file or the model is unusable, or (stats inspect --model) the files
       cover none of the model's linears";

/// Convert HuggingFace safetensors checkpoints to ModelOpt-compatible NVFP4 / FP8 checkpoints.
#[derive(Debug, Parser)]
#[command(name = "shardquant", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Quantize a checkpoint directory into a new directory.
    #[command(after_help = CONVERT_EXIT_CODES)]
    Convert(ConvertArgs),
    /// Explain a checkpoint: detected layout, tensors by role and group, output plan, memory.
    #[command(after_help = INSPECT_EXIT_CODES)]
    Inspect(InspectArgs),
    /// Activation-statistics files: what they hold, how they cover a model, conversion.
    #[command(subcommand)]
    Stats(StatsCommand),
    /// Re-read a ModelOpt-format checkpoint and check what serving engines rely on (exit 3 on
    /// any problem); with --source, the quantization error against the source weights.
    #[command(after_help = VERIFY_EXIT_CODES)]
    Verify(VerifyArgs),
    /// The shipped architecture layouts: a list, or one as the JSON `--layout` reads (to start
    /// a layout of your own from).
    Layouts(LayoutsArgs),
    /// Shell completions on stdout, e.g. `shardquant completions bash > /etc/bash_completion.d/shardquant`.
    Completions(CompletionsArgs),
    /// The manual page (roff) on stdout, e.g. `shardquant man | man -l -`.
    Man,
}

/// `completions` arguments.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `layouts` arguments.
#[derive(Debug, Clone, Args)]
pub struct LayoutsArgs {
    /// Print this layout's JSON (a name from the list).
    pub name: Option<String>,
}

/// `verify` arguments.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The quantized checkpoint directory.
    pub dir: PathBuf,
    /// The checkpoint it was made from: dequantize and compare every quantized linear.
    #[arg(long, value_name = "INPUT_DIR")]
    pub source: Option<PathBuf>,
    /// Print the result as JSON on stdout (same exit codes).
    #[arg(long)]
    pub json: bool,
}

/// `stats` subcommands.
#[derive(Debug, Subcommand)]
pub enum StatsCommand {
    /// What each file holds; with --model, which linears have input amax, which experts are
    /// uncalibrated and which names the model does not have.
    #[command(after_help = STATS_EXIT_CODES)]
    Inspect(StatsInspectArgs),
    /// Convert statistics files into shardquant's schema (`.stats.safetensors[.zst]`), with the
    /// model's own module names.
    #[command(after_help = STATS_EXIT_CODES)]
    Import(StatsImportArgs),
}

/// `stats inspect` arguments.
#[derive(Debug, Clone, Args)]
pub struct StatsInspectArgs {
    /// Statistics files (any supported format; merged for the coverage table).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Checkpoint directory to check the statistics against.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Print the coverage (with --model) as JSON on stdout (same exit codes).
    #[arg(long, requires = "model")]
    pub json: bool,
    /// Architecture layout JSON (overrides detection from the model's config.json).
    #[arg(long, value_name = "FILE")]
    pub layout: Option<PathBuf>,
    /// Read every file as this format instead of detecting it.
    #[arg(long, value_parser = listed_values::<StatsFormat>())]
    pub stats_format: Option<StatsFormat>,
}

/// `stats import` arguments.
#[derive(Debug, Clone, Args)]
pub struct StatsImportArgs {
    /// Statistics files (merged: max for amax, sums and counts add).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Checkpoint directory whose module names and shapes the statistics are mapped to.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Output file; zstd-compressed when it ends in `.zst`.
    #[arg(short, long, value_name = "OUT.stats.safetensors[.zst]")]
    pub output: PathBuf,
    /// Architecture layout JSON (overrides detection from the model's config.json).
    #[arg(long, value_name = "FILE")]
    pub layout: Option<PathBuf>,
    /// Read every file as this format instead of detecting it.
    #[arg(long, value_parser = listed_values::<StatsFormat>())]
    pub stats_format: Option<StatsFormat>,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// The parser of an option whose values `--help` lists by name only, `[possible values: ..]`
/// (as `value_enum` would with undocumented variants): the values and their spelling are the
/// enum's, its variants' docs stay out of the help.
fn listed_values<T: ValueEnum + Send + Sync + 'static>() -> impl TypedValueParser<Value = T> {
    let names = T::value_variants()
        .iter()
        .filter_map(ValueEnum::to_possible_value)
        .map(|v| v.help(None::<&'static str>));
    PossibleValuesParser::new(names).map(|name| {
        T::from_str(&name, false).unwrap_or_else(|_| unreachable!("{name} is a listed value"))
    })
}

/// Options for the `stats` subcommands: a layout override and a forced statistics format.
fn stats_options(layout: &Option<PathBuf>, stats_format: Option<StatsFormat>) -> Options {
    let mut o = Options::new(QuantFormat::Nvfp4);
    o.layout = layout.clone();
    o.output.stats_format = stats_format;
    o
}

impl StatsInspectArgs {
    /// Options carrying the layout and format choices.
    pub fn to_options(&self) -> Options {
        stats_options(&self.layout, self.stats_format)
    }
}

impl StatsImportArgs {
    /// Options carrying the layout, format and --force choices.
    pub fn to_options(&self) -> Options {
        let mut o = stats_options(&self.layout, self.stats_format);
        o.run.force = self.force;
        o
    }
}

/// Options shared by `convert` and `inspect`.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// Target format (required for convert; inspect plans nvfp4 when it is not given).
    #[arg(long, value_enum)]
    pub format: Option<QuantFormat>,
    /// Output checkpoint format. compressed-tensors writes every --format as llm-compressor
    /// 0.14 does (model_free_ptq's tensors and config; the static nvfp4 and fp8, and the KV
    /// cache, as its oneshot stores them); its output shards mirror the input's, so
    /// --max-shard-size does not apply.
    #[arg(long, value_enum, default_value_t = Export::Modelopt)]
    pub export: Export,
    /// Activation statistics: ModelOpt amax safetensors, shardquant's .stats.safetensors[.zst],
    /// torch.save amax dumps, llama.cpp imatrix (.dat or .gguf), or a quantized export whose
    /// input scales give the amax; the format is detected. Repeatable, merged by max.
    #[arg(long = "stats", value_name = "FILE")]
    pub stats: Vec<PathBuf>,
    /// Read every --stats file as this format instead of detecting it.
    #[arg(long, value_parser = listed_values::<StatsFormat>())]
    pub stats_format: Option<StatsFormat>,
    /// Experts that saw no calibration tokens: take the max over the layer's calibrated experts
    /// (with a warning naming them), or stop before writing anything.
    #[arg(long, value_enum, default_value_t = UncalibratedExperts::PeerMax)]
    pub uncalibrated_experts: UncalibratedExperts,
    /// Experts' input amax: the layer's max per projection (what ModelOpt writes), or each
    /// calibrated expert's own.
    #[arg(long, value_enum, default_value_t = ExpertInputAmax::LayerMax)]
    pub expert_input_amax: ExpertInputAmax,
    /// Precision of FP8 block-scaled source weights once dequantized: bf16 (as ModelOpt's
    /// DeepSeek calibration saw them) or f32.
    #[arg(long, value_parser = listed_values::<DequantPrecision>(), default_value = "bf16")]
    pub fp8_dequant: DequantPrecision,
    /// Leave FP8 source tensors that stay unquantized in FP8 with their block scales (default:
    /// written dequantized).
    #[arg(long)]
    pub keep_fp8_source: bool,
    /// Write FP8 KV-cache scales (k_scale / v_scale) from k/v amax in the statistics
    /// (compressed-tensors: with kv_cache_scheme, on the attention module).
    #[arg(long, value_enum, default_value_t = KvCache::None)]
    pub kv_cache: KvCache,
    /// Which ModelOpt export arithmetic to reproduce.
    #[arg(long, value_enum, default_value_t = Numerics::ModeloptCuda)]
    pub numerics: Numerics,
    /// Where weight amax comes from.
    #[arg(long, value_enum, default_value_t = WeightAmaxMode::Compute)]
    pub weight_amax: WeightAmaxMode,
    /// Weight calibration: max |W|; mse (ModelOpt's multiplier search of the per-tensor FP8
    /// amax or the NVFP4 global amax); mse-fp8-sweep (NVFP4: per-block search over all 126 FP8
    /// scale codes, exported as static NVFP4).
    #[arg(long, value_enum, default_value_t = CalibMethod::Max)]
    pub calib: CalibMethod,
    /// Weight the MSE search's squared errors by each input channel's mean squared activation
    /// (input_sum_sq / token_count, e.g. from a llama.cpp imatrix given with --stats).
    #[arg(long, value_enum, default_value_t = ImportanceSource::None)]
    pub importance: ImportanceSource,
    /// Which linears to quantize.
    #[arg(long, value_enum, default_value_t = Scope::All)]
    pub scope: Scope,
    /// Leave modules matching this glob unquantized (repeatable; added to the layout's defaults).
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Architecture layout JSON (overrides detection from config.json).
    #[arg(long, value_name = "FILE")]
    pub layout: Option<PathBuf>,
    /// Largest output shard (HF style: 5GB, 500MB, 2GiB).
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: String,
    /// Bound on bytes of work in flight (input pages + output buffers).
    #[arg(long, default_value = "4GiB")]
    pub max_memory: String,
    /// Worker threads (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Compute device: auto (the GPU when one is usable, else the CPU), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Bound on GPU memory used for work slots.
    #[arg(long, default_value = "8GiB")]
    pub max_gpu_memory: String,
}

/// `convert` arguments.
#[derive(Debug, Clone, Args)]
pub struct ConvertArgs {
    /// Input checkpoint directory (config.json + safetensors shards).
    pub input_dir: PathBuf,
    /// Output directory (must not exist, unless --force).
    pub output_dir: PathBuf,
    /// Planning options.
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Write a JSON report (inputs, options, counts, timings, peak memory, warnings).
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// No progress or info output; warnings still go to stderr (-qq silences them too).
    #[arg(long, short, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    /// More detail: the layout's origin, every unquantized linear and why, exclude_modules.
    #[arg(long, short)]
    pub verbose: bool,
    /// Replace an existing output directory that is not up to date (after the new one is
    /// complete), and discard a stopped run's partial conversion when --resume is not given.
    #[arg(long)]
    pub force: bool,
    /// Continue the partial conversion that a stopped run (killed, out of disk, interrupted)
    /// left beside the output, from its last completed output shards (checked by SHA-256),
    /// if it was made from the same inputs, statistics and options; else start over.
    #[arg(long)]
    pub resume: bool,
    /// Only report whether OUTPUT_DIR is up to date (exit 0) or not (exit 10): made by this
    /// build (version and build id) from the same inputs, statistics and options. Writes nothing.
    #[arg(long)]
    pub check: bool,
    /// With --check: print `{"up_to_date": bool, "reason": ...}` on stdout (same exit codes).
    #[arg(long, requires = "check")]
    pub json: bool,
    /// Quantize weights that hold NaN or infinite elements instead of stopping (exit 3): the
    /// elements are left out of the scales and written as NaN (FP8) or 0 (NVFP4), infinities
    /// saturated to the largest value; a warning and the report name the tensors.
    #[arg(long)]
    pub allow_nonfinite: bool,
}

/// `inspect` arguments.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// Checkpoint directory.
    pub dir: PathBuf,
    /// Planning options (what the output plan would be).
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Print only the layout (shipped, given with --layout, or inferred) as the JSON that
    /// --layout accepts, to review or adjust it.
    #[arg(long)]
    pub layout_json: bool,
    /// Print the findings as JSON on stdout (same exit codes).
    #[arg(long, conflicts_with = "layout_json")]
    pub json: bool,
}

impl ConvertArgs {
    /// Resolves the arguments into [`Options`]: the planning options, `--allow-nonfinite`, and
    /// how the run reports and treats an existing output. `--check` gets the same options, so
    /// it compares the key that this conversion would record.
    pub fn to_options(&self) -> Result<Options> {
        if self.plan.format.is_none() {
            return Err(Error::usage(
                "convert needs --format: nvfp4 (W4A4, needs --stats), w4a16_nvfp4 (weights only) or fp8 (W8A8, needs --stats); \
                 with --export compressed-tensors also fp8_dynamic or fp8_block",
            ));
        }
        let mut o = self.plan.to_options()?;
        o.output.allow_nonfinite = self.allow_nonfinite;
        o.check_export()?;
        o.run.quiet = self.quiet > 0;
        o.run.silent = self.quiet > 1;
        o.run.verbose = self.verbose;
        o.run.force = self.force;
        o.run.resume = self.resume;
        o.run.report = self.report.clone();
        Ok(o)
    }
}

impl PlanArgs {
    /// Resolves the arguments into [`Options`].
    pub fn to_options(&self) -> Result<Options> {
        let device = DeviceChoice::parse(&self.device).ok_or_else(|| {
            Error::usage(format!(
                "--device {}: expected auto, cpu, cuda or cuda:N",
                self.device
            ))
        })?;
        let max_gpu_memory = parse_size(&self.max_gpu_memory)?;
        let max_shard_size = parse_size(&self.max_shard_size)?;
        let max_memory = parse_size(&self.max_memory)?;
        let mut run = RunOptions {
            device,
            max_memory,
            max_gpu_memory,
            ..RunOptions::default()
        };
        if let Some(t) = self.threads {
            run.threads = usize::from(t);
        }
        let o = Options {
            output: OutputOptions {
                format: self.format.unwrap_or(QuantFormat::Nvfp4),
                export: self.export,
                numerics: self.numerics,
                weight_amax: self.weight_amax,
                scope: self.scope,
                excludes: self.exclude.clone(),
                kv_cache: self.kv_cache,
                fp8_dequant: self.fp8_dequant,
                keep_fp8_source: self.keep_fp8_source,
                uncalibrated_experts: self.uncalibrated_experts,
                expert_input_amax: self.expert_input_amax,
                stats_format: self.stats_format,
                max_shard_size,
                // A `convert` flag, not a planning one: `ConvertArgs::to_options` sets it.
                allow_nonfinite: false,
                calib: self.calib,
                importance: self.importance,
            },
            stats: self.stats.clone(),
            layout: self.layout.clone(),
            run,
        };
        if o.output.weight_amax == WeightAmaxMode::Stats && o.stats.is_empty() {
            return Err(Error::usage("--weight-amax stats needs a --stats file"));
        }
        check_calib(&o)?;
        o.check_export()?;
        Ok(o)
    }
}

/// The combinations of `--calib`, `--importance`, `--format` and `--weight-amax` that mean
/// something.
fn check_calib(o: &Options) -> Result<()> {
    if o.output.calib == CalibMethod::MseFp8Sweep && !o.output.format.is_nvfp4() {
        return Err(Error::usage(format!(
            "--calib mse-fp8-sweep searches NVFP4 block scales; --format {} has none (use --calib mse)",
            o.output.format.cli_name()
        )));
    }
    if o.output.calib != CalibMethod::Max && o.output.weight_amax == WeightAmaxMode::Stats {
        return Err(Error::usage(format!(
            "--calib {} computes the weight amax from the weights; it cannot be combined with --weight-amax stats",
            o.output.calib.name()
        )));
    }
    let importance = o.output.importance == ImportanceSource::Stats;
    if importance && o.output.calib == CalibMethod::Max {
        return Err(Error::usage(
            "--importance stats weights the errors of an MSE search; add --calib mse or --calib mse-fp8-sweep",
        ));
    }
    if importance && o.stats.is_empty() {
        return Err(Error::usage(
            "--importance stats needs --stats files with per-channel activation sums (e.g. a llama.cpp imatrix)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert_options(args: &[&str]) -> Result<Options> {
        let argv = ["shardquant", "convert", "in", "out"].iter().chain(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Convert(args) => args.to_options(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_command_lines_defaults_are_the_librarys() {
        let o = convert_options(&["--format", "fp8"]).unwrap();
        assert_eq!(o.output, OutputOptions::new(QuantFormat::Fp8));
        assert_eq!(o.run, RunOptions::default());
        assert!(o.stats.is_empty() && o.layout.is_none());
        let e = convert_options(&[]).unwrap_err();
        assert!(e.to_string().starts_with("convert needs --format"), "{e}");
    }

    #[test]
    fn convert_flags_reach_the_options() {
        let o = convert_options(&[
            "--format",
            "w4a16_nvfp4",
            "--allow-nonfinite",
            "-qq",
            "--force",
            "--resume",
            "--report",
            "r.json",
            "--threads",
            "3",
            "--kv-cache",
            "fp8",
            "--stats-format",
            "torch",
            "--fp8-dequant",
            "f32",
        ])
        .unwrap();
        assert!(o.output.allow_nonfinite);
        assert_eq!(o.output.format, QuantFormat::W4a16Nvfp4);
        assert_eq!(o.output.kv_cache, KvCache::Fp8);
        assert_eq!(o.output.stats_format, Some(StatsFormat::TorchPt));
        assert_eq!(o.output.fp8_dequant, DequantPrecision::F32);
        let run = &o.run;
        assert!(run.quiet && run.silent && !run.verbose && run.force && run.resume);
        assert_eq!(run.report.as_deref(), Some(std::path::Path::new("r.json")));
        assert_eq!(run.threads, 3);
    }
}
