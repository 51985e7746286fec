//! Conversion options, as resolved from the command line (or set by a library user).

use crate::compute::cuda::DeviceChoice;
use crate::compute::mse::CalibMethod;
use crate::compute::{value_name, DequantPrecision, Export, Numerics, QuantFormat};
use crate::input::stats::StatsFormat;
use clap::ValueEnum;
use serde::{Serialize, Serializer};
use std::path::PathBuf;

// The options' enums are the command line's values (`clap::ValueEnum`): the first paragraph of
// each variant's doc is its `--help` line, and `value_name` gives its spelling everywhere.

/// Where weight amax comes from (`--weight-amax`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightAmaxMode {
    /// max|W| computed from the weights.
    ///
    /// ModelOpt's max calibration.
    Compute,
    /// Taken from the statistics files.
    ///
    /// Per-tensor, or static per-block with `_global_amax`.
    Stats,
}

/// Which quantized linears to convert (`--scope`), as ModelOpt's recipes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    /// Every quantizable linear.
    All,
    /// MLP, shared experts and experts (ModelOpt's *_mlp_only).
    ///
    /// Dense MLP, shared experts and routed experts.
    Mlp,
    /// Routed experts only (ModelOpt's *_experts_only).
    Experts,
}

impl Scope {
    /// The `--scope` value (from the `clap::ValueEnum` derive).
    pub fn name(self) -> String {
        value_name(&self)
    }
}

/// What to do with experts that saw no calibration tokens (`--uncalibrated-experts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UncalibratedExperts {
    /// Max over the layer's calibrated experts, with a warning.
    ///
    /// Give each the max over the calibrated experts of the same layer and projection, with a
    /// warning naming them (ModelOpt's export and DeepSeek flow do this).
    PeerMax,
    /// Stop before writing anything (exit 3).
    ///
    /// The error names the experts.
    Error,
}

/// How experts of a layer share input amax (`--expert-input-amax`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExpertInputAmax {
    /// The layer's max per projection.
    ///
    /// Every expert gets the layer's max per projection (what ModelOpt writes).
    LayerMax,
    /// Each calibrated expert's own value.
    ///
    /// Each calibrated expert keeps its own value (uncalibrated ones follow
    /// [`UncalibratedExperts`]).
    PerExpert,
}

/// KV-cache quantization (`--kv-cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvCache {
    /// No KV-cache quantization.
    None,
    /// FP8 KV cache with k_scale / v_scale from the statistics.
    Fp8,
}

/// What weights the squared errors of the MSE searches (`--importance`); the weights
/// themselves are [`crate::compute::mse::Importance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportanceSource {
    /// Every element's squared error counts the same.
    None,
    /// Per input channel, the mean squared activation from the statistics.
    ///
    /// `input_sum_sq / token_count`, e.g. from a llama.cpp imatrix.
    Stats,
}

/// The options that decide the output bytes. Serialized, they are the `options` of
/// `shardquant.json` and of the resume journal's key, compared to decide whether an output is up
/// to date or a stopped run can be resumed ([`Options::output_options`]): every field is part of
/// the key, so an option that changes what is written belongs here, and nowhere else. Values are
/// spelled as on the command line (an enum field without `as_value_name` does not compile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputOptions {
    /// Target format.
    #[serde(serialize_with = "as_value_name")]
    pub format: QuantFormat,
    /// Output checkpoint format: ModelOpt or compressed-tensors. Recorded only when it is not
    /// ModelOpt, so that the keys of ModelOpt outputs made before the option existed still match.
    #[serde(
        serialize_with = "as_value_name",
        skip_serializing_if = "Export::is_modelopt"
    )]
    pub export: Export,
    /// Which ModelOpt export arithmetic to reproduce.
    #[serde(serialize_with = "as_value_name")]
    pub numerics: Numerics,
    /// Source of weight amax.
    #[serde(serialize_with = "as_value_name")]
    pub weight_amax: WeightAmaxMode,
    /// Which linears to quantize.
    #[serde(serialize_with = "as_value_name")]
    pub scope: Scope,
    /// Extra glob patterns over module names to leave unquantized (`--exclude`).
    #[serde(rename = "exclude")]
    pub excludes: Vec<String>,
    /// KV-cache quantization (FP8 k_scale / v_scale).
    #[serde(serialize_with = "as_value_name")]
    pub kv_cache: KvCache,
    /// Precision of FP8 block-scaled source weights once dequantized.
    #[serde(serialize_with = "as_value_name")]
    pub fp8_dequant: DequantPrecision,
    /// Leave unquantized FP8 source tensors in FP8 with their block scales (instead of BF16).
    pub keep_fp8_source: bool,
    /// Policy for experts that saw no calibration tokens.
    #[serde(serialize_with = "as_value_name")]
    pub uncalibrated_experts: UncalibratedExperts,
    /// How experts of a layer share input amax.
    #[serde(serialize_with = "as_value_name")]
    pub expert_input_amax: ExpertInputAmax,
    /// Read every statistics file as this format instead of detecting it.
    #[serde(serialize_with = "as_value_name_or_null")]
    pub stats_format: Option<StatsFormat>,
    /// Largest output shard in bytes.
    pub max_shard_size: u64,
    /// Quantize weights holding NaN / infinite elements instead of refusing them: the
    /// elements are left out of the scales and written as NaN or saturated
    /// ([`crate::compute::nonfinite`]).
    pub allow_nonfinite: bool,
    /// How weight amax is calibrated.
    #[serde(serialize_with = "as_value_name")]
    pub calib: CalibMethod,
    /// What weights the MSE searches' squared errors (`--importance stats`: each input
    /// channel's mean squared activation from the statistics).
    #[serde(serialize_with = "as_value_name")]
    pub importance: ImportanceSource,
}

/// Serializes an option's enum value as the command line spells it.
fn as_value_name<T: ValueEnum, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&value_name(value))
}

/// [`as_value_name`] for an optional value; `null` when there is none.
fn as_value_name_or_null<T: ValueEnum, S: Serializer>(
    value: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => as_value_name(v, s),
        None => s.serialize_none(),
    }
}

impl OutputOptions {
    /// The command line's defaults for a format.
    pub fn new(format: QuantFormat) -> OutputOptions {
        OutputOptions {
            format,
            export: Export::Modelopt,
            numerics: Numerics::ModeloptCuda,
            weight_amax: WeightAmaxMode::Compute,
            scope: Scope::All,
            excludes: Vec::new(),
            kv_cache: KvCache::None,
            fp8_dequant: DequantPrecision::Bf16,
            keep_fp8_source: false,
            uncalibrated_experts: UncalibratedExperts::PeerMax,
            expert_input_amax: ExpertInputAmax::LayerMax,
            stats_format: None,
            max_shard_size: 5_000_000_000,
            allow_nonfinite: false,
            calib: CalibMethod::Max,
            importance: ImportanceSource::None,
        }
    }
}

/// How a conversion runs. None of it changes the bytes written (the CPU and the GPU write the
/// same, with any number of threads), so none of it is in the manifest's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Worker threads.
    pub threads: usize,
    /// Compute device.
    pub device: DeviceChoice,
    /// Bound on bytes of work in flight (input pages + output buffers).
    pub max_memory: u64,
    /// Bound on GPU memory for the work slots.
    pub max_gpu_memory: u64,
    /// No progress or info output (`-q`); warnings still go to stderr.
    pub quiet: bool,
    /// No warnings either (`-qq`): only errors.
    pub silent: bool,
    /// More detail (`-v`).
    pub verbose: bool,
    /// Where to write the JSON report.
    pub report: Option<PathBuf>,
    /// Replace an existing output directory.
    pub force: bool,
    /// Continue the partial conversion that a stopped run left beside the output.
    pub resume: bool,
}

impl Default for RunOptions {
    /// The command line's defaults: all cores, the GPU when one is usable.
    fn default() -> RunOptions {
        RunOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            device: DeviceChoice::Auto,
            max_memory: 4 << 30,
            max_gpu_memory: 8 << 30,
            quiet: false,
            silent: false,
            verbose: false,
            report: None,
            force: false,
            resume: false,
        }
    }
}

/// Everything a conversion needs: what decides the bytes it writes, the statistics and layout
/// files it reads (the manifest records them by content, in their own sections), and how it
/// runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The options that decide the output bytes.
    pub output: OutputOptions,
    /// Activation statistics files.
    pub stats: Vec<PathBuf>,
    /// A layout file overriding detection.
    pub layout: Option<PathBuf>,
    /// How the conversion runs.
    pub run: RunOptions,
}

impl Options {
    /// Options with the command line's defaults for a format.
    pub fn new(format: QuantFormat) -> Options {
        Options {
            output: OutputOptions::new(format),
            stats: Vec::new(),
            layout: None,
            run: RunOptions::default(),
        }
    }

    /// Refuses the combinations with `--export` that are not built (a usage error naming the
    /// option and what to use instead): a format the export cannot write, and, for
    /// compressed-tensors, what it does not do yet (weight calibration other than max|W|,
    /// weight amax from statistics, `--allow-nonfinite`).
    pub fn check_export(&self) -> crate::error::Result<()> {
        use crate::error::Error;
        let o = &self.output;
        o.format.check_export(o.export).map_err(Error::usage)?;
        if o.export == Export::Modelopt {
            return Ok(());
        }
        let not_yet = |what: &str, instead: &str| {
            Err(Error::usage(format!(
                "--export compressed-tensors does not support {what} yet (not built in this version)"
            ))
            .with_hint(instead.to_string()))
        };
        if o.calib != CalibMethod::Max {
            return not_yet(
                &format!("--calib {}", o.calib.name()),
                "drop --calib (max|W|, what llm-compressor's model_free_ptq does), or use --export modelopt",
            );
        }
        if o.weight_amax != WeightAmaxMode::Compute {
            return not_yet(
                "--weight-amax stats",
                "drop --weight-amax (max|W| from the weights), or use --export modelopt",
            );
        }
        if o.allow_nonfinite {
            return not_yet(
                "--allow-nonfinite",
                "drop --allow-nonfinite (NaN / infinite weights are then refused), or use --export modelopt",
            );
        }
        Ok(())
    }

    /// The options that decide the output bytes, by name, with their values as the command line
    /// spells them ([`OutputOptions`], serialized): recorded in `shardquant.json` and in the
    /// resume journal, and compared to decide whether an output is up to date.
    pub fn output_options(&self) -> serde_json::Value {
        serde_json::to_value(&self.output).unwrap_or_default()
    }
}
