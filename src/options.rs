//! Conversion options, as resolved from the command line (or set by a library user).

use crate::compute::cuda::DeviceChoice;
use crate::compute::mse::CalibMethod;
use crate::compute::{value_name, DequantPrecision, Numerics, QuantFormat};
use crate::input::stats::StatsFormat;
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

/// Everything that decides what a conversion writes, plus how it runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Target format.
    pub format: QuantFormat,
    /// Which ModelOpt export arithmetic to reproduce.
    pub numerics: Numerics,
    /// Source of weight amax.
    pub weight_amax: WeightAmaxMode,
    /// Which linears to quantize.
    pub scope: Scope,
    /// Extra glob patterns over module names to leave unquantized.
    pub excludes: Vec<String>,
    /// Write FP8 KV-cache scales.
    pub kv_cache_fp8: bool,
    /// Activation statistics files.
    pub stats: Vec<PathBuf>,
    /// A layout file overriding detection.
    pub layout: Option<PathBuf>,
    /// Largest output shard in bytes.
    pub max_shard_size: u64,
    /// Bound on bytes of work in flight (input pages + output buffers).
    pub max_memory: u64,
    /// Worker threads.
    pub threads: usize,
    /// Replace an existing output directory.
    pub force: bool,
    /// No progress or info output (`-q`); warnings still go to stderr.
    pub quiet: bool,
    /// No warnings either (`-qq`): only errors.
    pub silent: bool,
    /// More detail (`-v`).
    pub verbose: bool,
    /// Where to write the JSON report.
    pub report: Option<PathBuf>,
    /// Compute device.
    pub device: DeviceChoice,
    /// Bound on GPU memory for the work slots.
    pub max_gpu_memory: u64,
    /// Policy for experts that saw no calibration tokens.
    pub uncalibrated_experts: UncalibratedExperts,
    /// How experts of a layer share input amax.
    pub expert_input_amax: ExpertInputAmax,
    /// Read every statistics file as this format instead of detecting it.
    pub stats_format: Option<StatsFormat>,
    /// Precision of FP8 block-scaled source weights once dequantized.
    pub fp8_dequant: DequantPrecision,
    /// Leave unquantized FP8 source tensors in FP8 with their block scales (instead of BF16).
    pub keep_fp8_source: bool,
    /// How weight amax is calibrated.
    pub calib: CalibMethod,
    /// Weight the MSE searches' squared errors by each input channel's mean squared activation
    /// from the statistics (`--importance stats`).
    pub importance: bool,
    /// Continue the partial conversion that a stopped run left beside the output.
    pub resume: bool,
    /// Quantize weights holding NaN / infinite elements instead of refusing them: the
    /// elements are left out of the scales and written as NaN or saturated
    /// ([`crate::compute::nonfinite`]).
    pub allow_nonfinite: bool,
}

impl Options {
    /// Options with the command line's defaults for a format.
    pub fn new(format: QuantFormat) -> Options {
        Options {
            format,
            numerics: Numerics::ModeloptCuda,
            weight_amax: WeightAmaxMode::Compute,
            scope: Scope::All,
            excludes: Vec::new(),
            kv_cache_fp8: false,
            stats: Vec::new(),
            layout: None,
            max_shard_size: 5_000_000_000,
            max_memory: 4 << 30,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            force: false,
            quiet: false,
            silent: false,
            verbose: false,
            report: None,
            device: DeviceChoice::Auto,
            max_gpu_memory: 8 << 30,
            uncalibrated_experts: UncalibratedExperts::PeerMax,
            expert_input_amax: ExpertInputAmax::LayerMax,
            stats_format: None,
            fp8_dequant: DequantPrecision::Bf16,
            keep_fp8_source: false,
            calib: CalibMethod::Max,
            importance: false,
            resume: false,
            allow_nonfinite: false,
        }
    }

    /// The options that decide the output bytes, by name, with their values as the command line
    /// spells them: recorded in `shardquant.json` and in the resume journal, and compared to
    /// decide whether an output is up to date. **Every new option that changes what is written
    /// must get a line here.** Options that only decide how the work runs (threads, device,
    /// memory bounds, --quiet, --report, --force, --resume) are left out: they never change the
    /// bytes (the CPU and the GPU write the same). The statistics files and a layout file are
    /// recorded by content, in their own manifest sections.
    pub fn output_options(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::json;
        let mut m = serde_json::Map::new();
        let mut put = |name: &str, value: serde_json::Value| {
            m.insert(name.to_string(), value);
        };
        put("format", json!(self.format.cli_name()));
        put("numerics", json!(self.numerics.name()));
        put("weight_amax", json!(value_name(&self.weight_amax)));
        put("scope", json!(self.scope.name()));
        put("exclude", json!(self.excludes));
        put(
            "kv_cache",
            json!(if self.kv_cache_fp8 { "fp8" } else { "none" }),
        );
        put("fp8_dequant", json!(value_name(&self.fp8_dequant)));
        put("keep_fp8_source", json!(self.keep_fp8_source));
        put(
            "uncalibrated_experts",
            json!(value_name(&self.uncalibrated_experts)),
        );
        put(
            "expert_input_amax",
            json!(value_name(&self.expert_input_amax)),
        );
        put("stats_format", json!(self.stats_format.map(|f| f.name())));
        put("max_shard_size", json!(self.max_shard_size));
        put("allow_nonfinite", json!(self.allow_nonfinite));
        put("calib", json!(self.calib.name()));
        put(
            "importance",
            json!(if self.importance { "stats" } else { "none" }),
        );
        m
    }
}
