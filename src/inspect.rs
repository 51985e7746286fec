//! `shardquant inspect`: what shardquant sees in a checkpoint and what it would write.

use crate::checkpoint::{Checkpoint, ShardPlan};
use crate::convert::read_config;
use crate::error::Result;
use crate::layout::{Layout, Origin, Role};
use crate::options::Options;
use crate::plan::{classify, Plan};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

fn gb(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// The layout of the checkpoint in `dir` (the `--layout` file, the shipped one its
/// `config.json` selects, or the inferred one) as the JSON `--layout` accepts.
pub fn layout_json(dir: &Path, options: &Options) -> Result<String> {
    let ckpt = Checkpoint::open(dir)?;
    let (_, config) = read_config(dir)?;
    let layout = Layout::for_checkpoint(options.layout.as_deref(), &config, dir, ckpt.tensors())?;
    Ok(layout.file.to_json())
}

/// Describes the checkpoint in `dir` under `options`; returns the text to print.
pub fn inspect(dir: &Path, options: &Options) -> Result<String> {
    let ckpt = Checkpoint::open(dir)?;
    let (_, config) = read_config(dir)?;
    let layout = Layout::for_checkpoint(options.layout.as_deref(), &config, dir, ckpt.tensors())?;
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "checkpoint  {}", dir.display());
    let _ = writeln!(
        w,
        "  {} shard(s), {} tensors, {}",
        ckpt.shards().len(),
        ckpt.tensors().len(),
        gb(ckpt.total_bytes())
    );
    let origin = match layout.origin {
        Origin::Shipped => "shipped layout",
        Origin::File => "--layout file",
        Origin::Inferred => "inferred; `inspect --layout-json` prints it",
    };
    let _ = writeln!(
        w,
        "layout      {} ({origin}) — {}",
        layout.name, layout.description
    );
    let classified = classify(&ckpt, &layout, &config, options)?;
    let mut by_role: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for l in &classified.linears {
        let role = match l.role {
            Role::Attention => "attention",
            Role::Mlp => "mlp",
            Role::Expert => "experts",
        };
        let e = by_role.entry(role).or_default();
        if l.excluded.is_none() {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let _ = writeln!(
        w,
        "linears     {} ({} to quantize as {})",
        classified.linears.len(),
        classified
            .linears
            .iter()
            .filter(|l| l.excluded.is_none())
            .count(),
        options.format.cli_name()
    );
    for (role, (q, x)) in &by_role {
        let _ = writeln!(w, "  {role:10} {q} quantized, {x} left unquantized");
    }
    let layers: std::collections::BTreeSet<usize> =
        classified.linears.iter().map(|l| l.layer).collect();
    if let (Some(first), Some(last)) = (layers.first(), layers.last()) {
        let _ = writeln!(w, "layers      {} ({first}..={last})", layers.len());
    }
    for g in &layout.shared_input {
        let _ = writeln!(
            w,
            "  shared input (one input_scale; one weight_scale_2 for NVFP4): {}",
            g.join(" + ")
        );
    }
    let mut experts: BTreeMap<usize, std::collections::BTreeSet<usize>> = BTreeMap::new();
    for l in &classified.linears {
        if let Some((e, _)) = l.expert {
            experts.entry(l.layer).or_default().insert(e);
        }
    }
    if !experts.is_empty() {
        let counts: std::collections::BTreeSet<usize> = experts.values().map(|s| s.len()).collect();
        let _ = writeln!(w, "experts     {} MoE layer(s), {:?} experts per layer; gate+up of an expert share weight_scale_2, \
            all experts of a layer share input_scale per projection", experts.len(), counts);
    }
    if !classified.routers.is_empty() {
        let _ = writeln!(
            w,
            "routers     {} (never quantized)",
            classified.routers.len()
        );
    }
    if !classified.mtp_layers.is_empty() {
        let _ = writeln!(w, "mtp layers  {:?} pass through", classified.mtp_layers);
    }
    let _ = writeln!(
        w,
        "pass-through {} tensors (embeddings, norms, routers, biases, ...)",
        classified.passthrough.len()
    );
    if !classified.unquantized.is_empty() {
        let _ = writeln!(
            w,
            "unquantized {} module(s) with quantizers ModelOpt leaves off (listed in exclude_modules), e.g.",
            classified.unquantized.len()
        );
        for (module, why) in classified.unquantized.iter().take(6) {
            let _ = writeln!(w, "  {module} ({why})");
        }
    }
    for l in classified
        .linears
        .iter()
        .filter(|l| l.excluded.is_some())
        .take(10)
    {
        let _ = writeln!(
            w,
            "  unquantized {} ({})",
            l.module,
            l.excluded.as_deref().unwrap_or("")
        );
    }
    match Plan::from_classified(&ckpt, layout, &config, options, classified) {
        Ok(plan) => describe_plan(w, &plan, options)?,
        Err(e) => {
            let _ = writeln!(
                w,
                "plan        a conversion with these options would stop in pre-flight:"
            );
            for line in e.to_string().lines() {
                let _ = writeln!(w, "  {line}");
            }
        }
    }
    Ok(s)
}

fn describe_plan(w: &mut String, plan: &Plan, options: &Options) -> Result<()> {
    let shards = ShardPlan::new(plan.outputs.clone(), options.max_shard_size)?;
    let _ = writeln!(
        w,
        "output plan {} tensors, {} in {} shard(s) of at most {}",
        plan.outputs.len(),
        gb(shards.total_bytes()),
        shards.shard_count(),
        gb(options.max_shard_size)
    );
    let _ = writeln!(w, "  exclude_modules: {:?}", plan.exclude_modules);
    if !options.stats.is_empty() {
        let with_input = plan.input_amax.iter().filter(|a| a.is_some()).count();
        let _ = writeln!(
            w,
            "statistics  {} file(s): input amax for {} of {} quantized linears; {} unmatched key(s)",
            options.stats.len(),
            with_input,
            plan.quantized_count(),
            plan.stats.unmatched.len()
        );
    }
    for warning in &plan.warnings {
        let _ = writeln!(w, "  warning: {warning}");
    }
    let largest = plan.largest_unit_bytes();
    let _ = writeln!(
        w,
        "memory      {} work units; largest {}; --max-memory {} bounds work in flight, so expect a peak near {} plus ~50 MiB",
        plan.units.len(),
        gb(largest),
        gb(options.max_memory),
        gb(options.max_memory.min(plan.units.iter().map(|u| u.bytes).sum()).max(largest))
    );
    Ok(())
}
