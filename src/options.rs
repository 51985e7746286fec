//! Conversion options, as resolved from the command line (or set by a library user).

use crate::calib::policy::{ExpertInputAmax, UncalibratedExperts};
use crate::gpu::DeviceChoice;
use crate::quant::{DequantPrecision, Numerics, QuantFormat};
use crate::stats::StatsFormat;
use std::path::PathBuf;

/// Where weight amax comes from (`--weight-amax`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightAmaxMode {
    /// max |W| computed from the weights (ModelOpt's max calibration).
    Compute,
    /// Taken from the statistics files (per-tensor, or static per-block with `_global_amax`).
    Stats,
}

/// Which quantized linears to convert (`--scope`), as ModelOpt's recipes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every quantizable linear of the layout.
    All,
    /// Dense MLP, shared experts and routed experts (ModelOpt's `*_mlp_only`).
    Mlp,
    /// Routed experts only (ModelOpt's `*_experts_only`).
    Experts,
}

impl Scope {
    /// The `--scope` value.
    pub fn name(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Mlp => "mlp",
            Scope::Experts => "experts",
        }
    }
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
    /// No progress or info output.
    pub quiet: bool,
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
    /// Quantize weights holding NaN / infinite elements instead of refusing them: the
    /// elements are left out of the scales and written as NaN or saturated
    /// ([`crate::quant::nonfinite`]).
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
            report: None,
            device: DeviceChoice::Auto,
            max_gpu_memory: 8 << 30,
            uncalibrated_experts: UncalibratedExperts::PeerMax,
            expert_input_amax: ExpertInputAmax::LayerMax,
            stats_format: None,
            fp8_dequant: DequantPrecision::Bf16,
            keep_fp8_source: false,
            allow_nonfinite: false,
        }
    }
}
