//! `shardquant stats inspect` and `shardquant stats import`: what statistics files hold, how
//! well they cover a model, and conversion into shardquant's own schema.

use crate::error::{Error, Result};
use crate::input::checkpoint::Checkpoint;
use crate::input::layout::{ExpertProj, Layout};
use crate::input::model::Model;
use crate::input::stats::imatrix::read_imatrix;
use crate::input::stats::torchfile::read_pt_tensors;
use crate::input::stats::{detect_format, ActivationStats, ModelNames, StatsFile, StatsFormat};
use crate::options::Options;
use crate::plan::{classify, model_names, Classified};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// A model opened for statistics: its layout, linears and names.
struct StatsModel {
    layout: Layout,
    classified: Classified,
    names: ModelNames,
}

fn open_model(dir: &Path, options: &Options) -> Result<StatsModel> {
    let Model {
        checkpoint: ckpt,
        config,
        layout,
        ..
    } = Model::open(dir, options.layout.as_deref())?;
    let classified = classify(&ckpt, &layout, &config, options)?;
    let names = model_names(&classified, &layout);
    Ok(StatsModel {
        layout,
        classified,
        names,
    })
}

fn format_of(path: &Path, options: &Options) -> Result<StatsFormat> {
    crate::input::stats::refuse_special(path)?;
    match options.output.stats_format {
        Some(f) => Ok(f),
        None => detect_format(path),
    }
}

/// What one file holds, without a model to map it to.
fn describe_file(path: &Path, format: StatsFormat, w: &mut String) -> Result<()> {
    let size = if path.is_dir() {
        0
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    };
    let size = crate::progress::human_bytes(size);
    let _ = writeln!(w, "{}  ({}, {size})", path.display(), format.name());
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    match format {
        StatsFormat::ModeloptAmax | StatsFormat::Native => {
            if let Ok(file) = StatsFile::open(path) {
                for e in file.entries() {
                    *kinds.entry(kind_of(&e.key)).or_default() += 1;
                }
            } else {
                let _ = writeln!(
                    w,
                    "  zstd-compressed; pass --model DIR to read it against a model"
                );
            }
        }
        StatsFormat::TorchPt => {
            let (tensors, skipped) = read_pt_tensors(path)?;
            for t in &tensors {
                let kind = if t.key.ends_with("_amax") {
                    kind_of(&t.key)
                } else {
                    format!("per-channel [{}] (act_scales)", t.shape.len())
                };
                *kinds.entry(kind).or_default() += 1;
            }
            if !skipped.is_empty() {
                kinds.insert("non-tensor entries (skipped)".into(), skipped.len());
            }
        }
        StatsFormat::Exported => {
            let ckpt = Checkpoint::open(path)?;
            for t in ckpt.tensors() {
                for suffix in [
                    "input_scale",
                    "input_global_scale",
                    "k_scale",
                    "v_scale",
                    "weight_scale_2",
                    "weight_scale",
                ] {
                    if t.name.ends_with(&format!(".{suffix}")) {
                        *kinds
                            .entry(format!("{suffix} (exported scale)"))
                            .or_default() += 1;
                    }
                }
            }
        }
        StatsFormat::Imatrix => {
            let (entries, meta) = read_imatrix(path)?;
            let _ = writeln!(
                w,
                "  {:?} imatrix, datasets {:?}, {} tensors",
                meta.format,
                meta.datasets,
                entries.len()
            );
            for e in &entries {
                let dead = e.uncalibrated_experts();
                if !dead.is_empty() {
                    let _ = writeln!(w, "  {}: experts {:?} saw no tokens", e.name, dead);
                }
            }
        }
    }
    for (kind, n) in kinds {
        let _ = writeln!(w, "  {n:6}  {kind}");
    }
    Ok(())
}

/// A coarse kind for a key: the quantizer or statistic it names.
fn kind_of(key: &str) -> String {
    for k in [
        "input_quantizer",
        "weight_quantizer",
        "k_bmm_quantizer",
        "v_bmm_quantizer",
        "output_quantizer",
    ] {
        if key.contains(k) {
            return format!(
                "{k} ({})",
                if key.ends_with("_global_amax") {
                    "_global_amax"
                } else {
                    "_amax"
                }
            );
        }
    }
    key.rsplit('.').next().unwrap_or(key).to_string()
}

/// `stats inspect`: each file on its own, and with `--model` the coverage of the model.
/// With `--model`, a file that covers none of the model's linears is a failure
/// (exit 3 after the description: wrong model or naming).
pub fn inspect(
    files: &[PathBuf],
    model: Option<&Path>,
    options: &Options,
) -> Result<crate::commands::inspect::Inspection> {
    let mut w = String::new();
    for path in files {
        describe_file(path, format_of(path, options)?, &mut w)?;
    }
    let Some(dir) = model else {
        return Ok(crate::commands::inspect::Inspection {
            text: w,
            failure: None,
            json: serde_json::json!({"files": files}),
        });
    };
    let m = open_model(dir, options)?;
    let stats = ActivationStats::load_formats(
        files,
        options.output.stats_format,
        &m.layout,
        &m.names,
        true,
    )?;
    let (covered, summary) = coverage(&m, &stats, &mut w);
    if covered == 0 {
        let _ = writeln!(
            w,
            "the statistics cover none of the model's quantizable linears: made for another model, or named in a way shardquant does not read"
        );
    }
    Ok(crate::commands::inspect::Inspection {
        text: w,
        json: serde_json::json!({"files": files, "covered_linears": covered, "coverage": summary}),
        failure: (covered == 0).then(|| {
            "the statistics cover none of the model's quantizable linears (see above)".to_string()
        }),
    })
}

/// Writes the coverage of `stats` over the model; returns how many quantizable linears have
/// any input statistic, and the coverage as JSON.
fn coverage(m: &StatsModel, stats: &ActivationStats, w: &mut String) -> (usize, serde_json::Value) {
    let linears: Vec<_> = m
        .classified
        .linears
        .iter()
        .filter(|l| l.excluded.is_none())
        .collect();
    let with_input = linears
        .iter()
        .filter(|l| stats.module(&l.module).and_then(|s| s.input_amax).is_some())
        .count();
    let with_channels = linears
        .iter()
        .filter(|l| {
            stats.module(&l.module).is_some_and(|s| {
                s.input_sum_sq.is_some() || s.input_mean_sq.is_some() || s.input_amax_ch.is_some()
            })
        })
        .count();
    let _ = writeln!(
        w,
        "\nagainst the model (layout {}): {} quantizable linears",
        m.layout.name,
        linears.len()
    );
    let _ = writeln!(
        w,
        "  input amax:            {with_input} of {}",
        linears.len()
    );
    let _ = writeln!(
        w,
        "  per-channel statistics: {with_channels} of {}",
        linears.len()
    );
    let kv = m
        .names
        .attention
        .iter()
        .filter(|a| {
            stats
                .module(a)
                .is_some_and(|s| s.k_cache_amax.is_some() && s.v_cache_amax.is_some())
        })
        .count();
    let _ = writeln!(
        w,
        "  KV-cache amax (k and v, for --kv-cache fp8): {kv} of {} attention blocks",
        m.names.attention.len()
    );
    let covered = linears
        .iter()
        .filter(|l| {
            stats.module(&l.module).is_some_and(|s| {
                s.input_amax.is_some()
                    || s.input_sum_sq.is_some()
                    || s.input_mean_sq.is_some()
                    || s.input_amax_ch.is_some()
            })
        })
        .count();
    // Uncalibrated experts: token count 0, or no usable input amax while a peer of the same
    // layer and projection has one (files without amax, like an imatrix, say nothing then).
    let proj_of = |p: ExpertProj| {
        if p == ExpertProj::Down {
            "down"
        } else {
            "gate/up"
        }
    };
    let has_amax =
        |l: &crate::plan::Linear| stats.module(&l.module).and_then(|s| s.input_amax).is_some();
    let mut any_amax: std::collections::BTreeSet<(usize, &str)> = std::collections::BTreeSet::new();
    for l in linears.iter().filter(|l| has_amax(l)) {
        if let Some((_, p)) = l.expert {
            any_amax.insert((l.layer, proj_of(p)));
        }
    }
    let mut dead: BTreeMap<(usize, &str), Vec<usize>> = BTreeMap::new();
    for l in &linears {
        let Some((e, proj)) = l.expert else { continue };
        let p = proj_of(proj);
        let no_tokens = stats
            .module(&l.module)
            .is_some_and(|s| s.token_count == Some(0));
        let no_amax = !has_amax(l) && any_amax.contains(&(l.layer, p));
        if no_tokens || no_amax {
            let list = dead.entry((l.layer, p)).or_default();
            if !list.contains(&e) {
                list.push(e);
            }
        }
    }
    let dead_json: serde_json::Map<String, serde_json::Value> = dead
        .iter()
        .map(|((layer, proj), e)| (format!("layer {layer} {proj}"), serde_json::json!(e)))
        .collect();
    let summary = serde_json::json!({
        "layout": m.layout.name,
        "quantizable_linears": linears.len(),
        "input_amax": with_input,
        "per_channel": with_channels,
        "kv_cache_amax": kv,
        "attention_blocks": m.names.attention.len(),
        "uncalibrated_experts": dead_json,
        "unmatched_keys": stats.unmatched.len(),
        "unusable_values": stats.invalid.len(),
        "ignored_keys": stats.ignored.len(),
    });
    if dead.is_empty() {
        let _ = writeln!(w, "  uncalibrated experts:   none");
    } else {
        let _ = writeln!(
            w,
            "  uncalibrated experts (no tokens, or no usable input amax):"
        );
        for ((layer, proj), experts) in dead {
            let _ = writeln!(w, "    layer {layer} {proj}: experts {experts:?}");
        }
    }
    if !stats.unmatched.is_empty() {
        let _ =
            writeln!(
            w,
            "  {} key(s) name modules this model does not have (wrong model or naming?), e.g. {}",
            stats.unmatched.len(),
            stats.unmatched.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    for bad in stats.invalid.iter().take(10) {
        let _ = writeln!(w, "  unusable value (treated as missing): {bad}");
    }
    if !stats.ignored.is_empty() {
        let _ = writeln!(
            w,
            "  {} key(s) understood but not used (e.g. {})",
            stats.ignored.len(),
            stats.ignored[0]
        );
    }
    (covered, summary)
}

/// `stats import`: reads the files against a model and writes shardquant's schema v1 (zstd
/// when `out` ends in `.zst`).
pub fn import(files: &[PathBuf], model: &Path, out: &Path, options: &Options) -> Result<String> {
    let m = open_model(model, options)?;
    let mut stats = ActivationStats::load_formats(
        files,
        options.output.stats_format,
        &m.layout,
        &m.names,
        true,
    )?;
    // Merged files can disagree: an imatrix says an expert saw no tokens, a ModelOpt amax file
    // gives it the layer's shared input amax. `convert` treats such a module as uncalibrated
    // (its input statistics are not used); the imported file says the same.
    let mut dropped = Vec::new();
    for (name, module) in stats.modules.iter_mut() {
        let has_inputs = module.input_amax.is_some()
            || module.input_amax_ch.is_some()
            || module.input_sum_sq.is_some()
            || module.input_sum.is_some()
            || module.input_mean_sq.is_some();
        if module.token_count == Some(0) && has_inputs {
            module.input_amax = None;
            module.input_amax_exact = None;
            module.input_amax_ch = None;
            module.input_sum_sq = None;
            module.input_sum = None;
            module.input_mean_sq = None;
            dropped.push(name.clone());
        }
    }
    let formats: Vec<String> = files
        .iter()
        .map(|p| format_of(p, options).map(|f| f.name()))
        .collect::<Result<_>>()?;
    let meta = crate::input::stats::native::NativeMeta {
        source_format: formats.join(","),
        source_files: files.iter().map(|p| p.display().to_string()).collect(),
        notes: stats.ignored.iter().take(20).cloned().collect(),
        expert_input_amax: "unknown".to_string(),
    };
    let compress = out.extension().is_some_and(|e| e == "zst");
    if out.exists() && !options.run.force {
        return Err(Error::usage(format!("{} already exists", out.display()))
            .with_hint("pass --force to replace it"));
    }
    crate::input::stats::native::write_native(out, &stats, &meta, compress)?;
    let mut w = String::new();
    if !dropped.is_empty() {
        let _ = writeln!(
            w,
            "note: {} module(s) saw no calibration tokens in one file but have input statistics in another \
             (e.g. {}); their input statistics are left out, as convert leaves them unused",
            dropped.len(),
            dropped[0]
        );
    }
    let _ = coverage(&m, &stats, &mut w).0;
    let _ = writeln!(
        w,
        "wrote {} ({} modules)",
        out.display(),
        stats.modules.len()
    );
    Ok(w)
}
