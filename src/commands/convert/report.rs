//! What a conversion tells its users: `.quant_summary.txt` and the `--report` JSON (the
//! `shardquant.json` manifest is [`super::manifest`]'s).

use crate::input::checkpoint::Checkpoint;
use crate::options::{ImportanceSource, Options};
use crate::pipeline::{RunStats, SummaryLine};
use crate::plan::Plan;
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
fn calibration_json(options: &Options, lines: &[SummaryLine]) -> serde_json::Value {
    let (weighted, unweighted): (Vec<&SummaryLine>, Vec<&SummaryLine>) =
        lines.iter().partition(|l| l.importance_weighted);
    let names = |v: &[&SummaryLine]| v.iter().map(|l| l.module.clone()).collect::<Vec<_>>();
    json!({
        "method": options.output.calib.name(),
        "importance": if options.output.importance == ImportanceSource::Stats {
            json!({
                "weighted": names(&weighted),
                "unweighted": names(&unweighted),
            })
        } else {
            serde_json::Value::Null
        },
    })
}

/// The weights whose NaN / infinite elements were passed through (`--allow-nonfinite`), in
/// output order.
fn nonfinite_json(lines: &[SummaryLine]) -> serde_json::Value {
    lines
        .iter()
        .filter_map(|l| {
            let n = l.nonfinite.as_ref()?;
            Some(json!({
                "tensor": n.tensor,
                "module": l.module,
                "nan": n.counts.nan,
                "inf": n.counts.inf,
                "first": n.first,
            }))
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

/// The `--report` JSON: inputs, options, counts, timings, memory, warnings.
#[derive(Debug, Clone)]
pub struct Report {
    value: serde_json::Value,
}

impl Report {
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
        let value = json!({
            "status": "ok",
            "input": input.display().to_string(),
            "output": output.display().to_string(),
            "device": run.device,
            "gpu_units": run.gpu_units,
            "layout": plan.layout.name,
            "stats": options.stats.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "options": options.output_options(),
            "calibration": calibration_json(options, &run.summary),
            "threads": options.run.threads,
            "max_memory": options.run.max_memory,
            "counts": {
                "input_tensors": ckpt.tensors().len(),
                "input_bytes": ckpt.total_bytes(),
                "output_tensors": run.tensors_written,
                "output_bytes": run.bytes_written,
                "quantized_linears": plan.quantized_count(),
                "unquantized_linears": plan.linears.len() - plan.quantized_count(),
                "passthrough_tensors": plan.classified.passthrough.len(),
                "fp8_source_linears": plan.linears.iter().filter(|p| p.linear.source.fp8_scale.is_some()).count(),
                "fp8_source_unquantized": plan.classified.fp8_other.len(),
                "units": plan.units.len(),
                "units_skipped": run.units_skipped,
            },
            "timings_s": {
                "preflight": preflight_s,
                "convert": convert_s,
                "total": started.elapsed().as_secs_f64(),
                // Thread-seconds per stage: several threads run each stage, so these add up
                // to more than the wall time; their ratios show where the run spends it.
                "stages_thread_s": run
                    .stage_seconds
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect::<serde_json::Map<String, serde_json::Value>>(),
            },
            "memory": {
                "peak_rss_bytes": peak_rss_bytes(),
                "peak_in_flight_bytes": run.peak_in_flight,
                "largest_unit_bytes": plan.largest_unit_bytes(),
                "gpu_memory_bytes": run.gpu_memory_bytes,
            },
            "warnings": plan.warnings,
            "nonfinite_weights": nonfinite_json(&run.summary),
            "notes": notes,
            "files": files,
        });
        Report { value }
    }

    /// The report of a run that found the output up to date and wrote nothing.
    pub fn up_to_date(input: &Path, output: &Path, options: &Options, started: Instant) -> Report {
        let value = json!({
            "status": "up_to_date",
            "input": input.display().to_string(),
            "output": output.display().to_string(),
            "stats": options.stats.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "options": options.output_options(),
            "timings_s": { "total": started.elapsed().as_secs_f64() },
        });
        Report { value }
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
        let value = json!({
            "status": status,
            "exit_code": error.kind().exit_code(),
            "error": error.to_string(),
            "input": input.display().to_string(),
            "output": output.display().to_string(),
            "stats": options.stats.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "options": options.output_options(),
            "timings_s": { "total": started.elapsed().as_secs_f64() },
        });
        Report { value }
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.value).unwrap_or_default() + "\n"
    }

    /// The report as a JSON value.
    pub fn value(&self) -> &serde_json::Value {
        &self.value
    }
}
