//! What a conversion tells its users: `.quant_summary.txt` and the `--report` JSON (the
//! `shardquant.json` manifest is [`super::manifest`]'s).

use crate::input::checkpoint::Checkpoint;
use crate::options::{ImportanceSource, Options};
use crate::pipeline::{RunStats, SummaryLine};
use crate::plan::Plan;
use serde::Serialize;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// `.quant_summary.txt`: one line per quantized linear (format, amax, scale), then the
/// unquantized linears.
pub fn quant_summary(plan: &Plan, options: &Options, lines: &[SummaryLine]) -> String {
    let mut out = format!(
        "# shardquant {} quantization summary: format {}, numerics {}, calib {}{}\n",
        env!("CARGO_PKG_VERSION"),
        options.output.format.cli_name(),
        options.output.numerics.name(),
        options.output.calib.name(),
        if options.output.importance == ImportanceSource::Stats {
            " (importance-weighted)"
        } else {
            ""
        }
    );
    out.push_str("# module  format  weight_amax  input_amax  weight_scale(_2)\n");
    for l in lines {
        let input = l.input_amax.map_or("-".to_string(), |a| format!("{a:.6e}"));
        let nonfinite = l.nonfinite.as_ref().map_or(String::new(), |n| {
            format!(
                " nonfinite={} (NaN {}, inf {}; passed through)",
                n.counts.count(),
                n.counts.nan,
                n.counts.inf
            )
        });
        out.push_str(&format!(
            "{:80} {} weight_amax={:.6e}{}{} input_amax={} weight_scale={:.6e}{nonfinite}\n",
            l.module,
            options.output.format.quant_algo(),
            l.weight_amax,
            if l.static_blocks {
                " (static per-block)"
            } else {
                ""
            },
            if l.importance_weighted {
                " (weighted)"
            } else {
                ""
            },
            input,
            l.weight_scale
        ));
    }
    for l in plan
        .linears
        .iter()
        .map(|p| &p.linear)
        .filter(|l| l.excluded.is_some())
    {
        out.push_str(&format!(
            "{:80} unquantized ({})\n",
            l.module,
            l.excluded.as_deref().unwrap_or("")
        ));
    }
    out.push_str(&format!("{} linears quantized\n", lines.len()));
    out
}

/// Which calibration each quantized linear got: the method, and with `--importance stats`
/// which linears' searches were weighted by activation statistics and which were not.
#[derive(Debug, Clone, Serialize)]
struct Calibration {
    method: String,
    importance: Option<ImportanceCoverage>,
}

/// The linears whose MSE searches were weighted by activation statistics, and the others.
#[derive(Debug, Clone, Serialize)]
struct ImportanceCoverage {
    weighted: Vec<String>,
    unweighted: Vec<String>,
}

impl Calibration {
    fn of(options: &Options, lines: &[SummaryLine]) -> Calibration {
        let (weighted, unweighted): (Vec<&SummaryLine>, Vec<&SummaryLine>) =
            lines.iter().partition(|l| l.importance_weighted);
        let names = |v: &[&SummaryLine]| v.iter().map(|l| l.module.clone()).collect();
        Calibration {
            method: options.output.calib.name(),
            importance: (options.output.importance == ImportanceSource::Stats).then(|| {
                ImportanceCoverage {
                    weighted: names(&weighted),
                    unweighted: names(&unweighted),
                }
            }),
        }
    }
}

/// A weight whose NaN / infinite elements were passed through (`--allow-nonfinite`).
#[derive(Debug, Clone, Serialize)]
struct NonFiniteEntry {
    tensor: String,
    module: String,
    nan: u64,
    inf: u64,
    first: [usize; 2],
}

/// The weights whose NaN / infinite elements were passed through, in output order.
fn nonfinite_entries(lines: &[SummaryLine]) -> Vec<NonFiniteEntry> {
    lines
        .iter()
        .filter_map(|l| {
            let n = l.nonfinite.as_ref()?;
            Some(NonFiniteEntry {
                tensor: n.tensor.clone(),
                module: l.module.clone(),
                nan: n.counts.nan as u64,
                inf: n.counts.inf as u64,
                first: n.first,
            })
        })
        .collect()
}

/// The warnings of the weights whose NaN / infinite elements were passed through, one line
/// each, naming the tensor.
pub fn nonfinite_warnings(lines: &[SummaryLine]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| {
            let n = l.nonfinite.as_ref()?;
            Some(format!(
                "warning: --allow-nonfinite: tensor '{}' ({}) has {} NaN and {} infinite element(s), first at [{}, {}]; \
                 left out of the scales and passed through",
                n.tensor, l.module, n.counts.nan, n.counts.inf, n.first[0], n.first[1]
            ))
        })
        .collect()
}

/// Peak resident set size of this process in bytes (getrusage).
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0;
    if ok {
        usage.ru_maxrss.max(0) as u64 * 1024
    } else {
        0
    }
}

/// The `--report` JSON: inputs, options, counts, timings, memory, warnings. The fields of a
/// finished conversion are `None` in the reports of runs that wrote nothing or stopped, and are
/// then left out.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    input: String,
    output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_units: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layout: Option<String>,
    stats: Vec<String>,
    options: serde_json::Value,
    #[serde(flatten)]
    run: Option<RunDetails>,
    timings_s: Timings,
    #[serde(flatten)]
    outcome: Option<Outcome>,
}

/// How a finished conversion ran.
#[derive(Debug, Clone, Serialize)]
struct RunDetails {
    calibration: Calibration,
    threads: usize,
    max_memory: u64,
    counts: Counts,
}

/// What a finished conversion read and wrote.
#[derive(Debug, Clone, Serialize)]
struct Counts {
    input_tensors: usize,
    input_bytes: u64,
    output_tensors: usize,
    output_bytes: u64,
    quantized_linears: usize,
    unquantized_linears: usize,
    passthrough_tensors: usize,
    fp8_source_linears: usize,
    fp8_source_unquantized: usize,
    units: usize,
    units_skipped: usize,
}

/// Seconds: pre-flight, conversion and total (only the total for runs that wrote nothing), and
/// thread-seconds per pipeline stage.
#[derive(Debug, Clone, Serialize)]
struct Timings {
    #[serde(skip_serializing_if = "Option::is_none")]
    preflight: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    convert: Option<f64>,
    total: f64,
    /// Part of `preflight`: opening the GPU (context, kernels compiled, work slots allocated).
    #[serde(skip_serializing_if = "Option::is_none")]
    device_init: Option<f64>,
    /// Several threads run each stage, so these add up to more than the wall time; their
    /// ratios show where the run spends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    stages_thread_s: Option<serde_json::Map<String, serde_json::Value>>,
    /// Wall-clock seconds from the start of the conversion (after pre-flight) to each milestone:
    /// the first unit written, every unit written, every shard sealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    milestones_s: Option<serde_json::Map<String, serde_json::Value>>,
    /// Bytes through the stages: input read, output written, to and from the GPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    stages_bytes: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Memory, warnings and files of a finished conversion.
#[derive(Debug, Clone, Serialize)]
struct Outcome {
    memory: Memory,
    warnings: Vec<String>,
    nonfinite_weights: Vec<NonFiniteEntry>,
    notes: Vec<String>,
    files: Vec<String>,
}

/// Peak memory of a finished conversion.
#[derive(Debug, Clone, Serialize)]
struct Memory {
    peak_rss_bytes: u64,
    peak_in_flight_bytes: u64,
    largest_unit_bytes: u64,
    gpu_memory_bytes: u64,
}

impl Report {
    /// A report with the fields every outcome has.
    fn base(
        status: &'static str,
        input: &Path,
        output: &Path,
        options: &Options,
        total: f64,
    ) -> Report {
        Report {
            status,
            exit_code: None,
            error: None,
            input: input.display().to_string(),
            output: output.display().to_string(),
            device: None,
            gpu_units: None,
            layout: None,
            stats: options
                .stats
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            options: options.output_options(),
            run: None,
            timings_s: Timings {
                preflight: None,
                device_init: None,
                convert: None,
                total,
                stages_thread_s: None,
                milestones_s: None,
                stages_bytes: None,
            },
            outcome: None,
        }
    }

    /// Builds the report of a finished conversion.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        input: &Path,
        output: &Path,
        options: &Options,
        plan: &Plan,
        ckpt: &Checkpoint,
        run: &RunStats,
        files: Vec<String>,
        notes: Vec<String>,
        preflight_s: f64,
        convert_s: f64,
        started: Instant,
    ) -> Report {
        let mut report = Report::base(
            "ok",
            input,
            output,
            options,
            started.elapsed().as_secs_f64(),
        );
        report.device = Some(run.device.clone());
        report.gpu_units = Some(run.gpu_units);
        report.layout = Some(plan.layout.name.clone());
        report.run = Some(RunDetails {
            calibration: Calibration::of(options, &run.summary),
            threads: options.run.threads,
            max_memory: options.run.max_memory,
            counts: Counts {
                input_tensors: ckpt.tensors().len(),
                input_bytes: ckpt.total_bytes(),
                output_tensors: run.tensors_written,
                output_bytes: run.bytes_written,
                quantized_linears: plan.quantized_count(),
                unquantized_linears: plan.linears.len() - plan.quantized_count(),
                passthrough_tensors: plan.classified.passthrough.len(),
                fp8_source_linears: plan
                    .linears
                    .iter()
                    .filter(|p| p.linear.source.fp8_scale.is_some())
                    .count(),
                fp8_source_unquantized: plan.classified.fp8_other.len(),
                units: plan.units.len(),
                units_skipped: run.units_skipped,
            },
        });
        report.timings_s.preflight = Some(preflight_s);
        report.timings_s.convert = Some(convert_s);
        report.timings_s.device_init = run.device_init_s;
        report.timings_s.stages_thread_s = Some(
            run.stage_seconds
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
        );
        report.timings_s.milestones_s = Some(
            run.milestones
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
        );
        report.timings_s.stages_bytes = Some(
            [
                ("read", run.bytes_read),
                ("written", run.bytes_written),
                ("to_device", run.bytes_to_device),
                ("from_device", run.bytes_from_device),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
        );
        report.outcome = Some(Outcome {
            memory: Memory {
                peak_rss_bytes: peak_rss_bytes(),
                peak_in_flight_bytes: run.peak_in_flight,
                largest_unit_bytes: plan.largest_unit_bytes(),
                gpu_memory_bytes: run.gpu_memory_bytes,
            },
            warnings: plan.warnings.clone(),
            nonfinite_weights: nonfinite_entries(&run.summary),
            notes,
            files,
        });
        report
    }

    /// The report of a run that found the output up to date and wrote nothing.
    pub fn up_to_date(input: &Path, output: &Path, options: &Options, started: Instant) -> Report {
        Report::base(
            "up_to_date",
            input,
            output,
            options,
            started.elapsed().as_secs_f64(),
        )
    }

    /// The report of a run that stopped with `error`: what failed, with which exit code.
    pub fn failed(
        input: &Path,
        output: &Path,
        options: &Options,
        error: &crate::error::Error,
        started: Instant,
    ) -> Report {
        let status = match error.kind() {
            crate::error::ErrorKind::Interrupted(_) => "interrupted",
            _ => "failed",
        };
        let mut report = Report::base(
            status,
            input,
            output,
            options,
            started.elapsed().as_secs_f64(),
        );
        report.exit_code = Some(error.kind().exit_code());
        report.error = Some(error.to_string());
        report
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}
