//! `shardquant inspect`: what shardquant sees in a checkpoint and what it would write.

use crate::error::{Error, Result};
use crate::input::layout::{Origin, Role};
use crate::input::model::Model;
use crate::options::Options;
use crate::plan::ShardPlan;
use crate::plan::{classify, Plan};
use crate::progress::human_bytes;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// What `inspect` (or `stats inspect`) found: the text, and why the command fails after
/// printing it, if it does.
#[derive(Debug)]
pub struct Inspection {
    /// The description.
    pub text: String,
    /// Why the command fails after printing the text, if it does (exit 3): a conversion with
    /// these options would stop in pre-flight, statistics that cover nothing, ...
    pub failure: Option<String>,
    /// The same findings for scripts (`--json`).
    pub json: serde_json::Value,
}

/// The layout of the checkpoint in `dir` (the `--layout` file, the shipped one its
/// `config.json` selects, or the inferred one) as the JSON `--layout` accepts.
pub fn layout_json(dir: &Path, options: &Options) -> Result<String> {
    Ok(Model::open(dir, options.layout.as_deref())?
        .layout
        .file
        .to_json())
}

/// Describes the checkpoint in `dir` under `options`.
pub fn inspect(dir: &Path, options: &Options) -> Result<Inspection> {
    let model = Model::open(dir, options.layout.as_deref())?;
    model.refuse_quantized()?;
    let Model {
        checkpoint: ckpt,
        config,
        layout,
        ..
    } = model;
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "checkpoint  {}", dir.display());
    let _ = writeln!(
        w,
        "  {} shard(s), {} tensors, {}",
        ckpt.shards().len(),
        ckpt.tensors().len(),
        human_bytes(ckpt.total_bytes())
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
        options.output.format.cli_name()
    );
    for (role, (q, x)) in &by_role {
        let _ = writeln!(w, "  {role:10} {q} quantized, {x} left unquantized");
    }
    let layers: std::collections::BTreeSet<usize> =
        classified.linears.iter().map(|l| l.layer).collect();
    if let (Some(first), Some(last)) = (layers.first(), layers.last()) {
        let _ = writeln!(w, "layers      {} ({first}..={last})", layers.len());
    }
    let format = options.output.format;
    let shared = match (format.shares_group_scales(), format.needs_input_amax()) {
        (true, true) => "one input_scale and one weight_scale_2",
        (true, false) => "one weight_scale_2",
        (false, _) => "each keeps its own scales: ModelOpt does not unify them for this format",
    };
    for g in &layout.shared_input {
        let _ = writeln!(w, "  shared input ({shared}): {}", g.join(" + "));
    }
    let mut experts: BTreeMap<usize, std::collections::BTreeSet<usize>> = BTreeMap::new();
    for l in &classified.linears {
        if let Some((e, _)) = l.expert {
            experts.entry(l.layer).or_default().insert(e);
        }
    }
    if !experts.is_empty() {
        let counts: std::collections::BTreeSet<usize> = experts.values().map(|s| s.len()).collect();
        let scale = if format.is_nvfp4() {
            "weight_scale_2"
        } else {
            "weight_scale"
        };
        let inputs = if format.needs_input_amax() {
            ", all experts of a layer share input_scale per projection"
        } else {
            ""
        };
        let _ = writeln!(
            w,
            "experts     {} MoE layer(s), {:?} experts per layer; gate+up of an expert share {scale}{inputs}",
            experts.len(),
            counts
        );
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
    let mut json = serde_json::json!({
        "checkpoint": dir.display().to_string(),
        "tensors": ckpt.tensors().len(),
        "bytes": ckpt.total_bytes(),
        "layout": layout.name,
        "layout_origin": match layout.origin {
            Origin::Shipped => "shipped",
            Origin::File => "file",
            Origin::Inferred => "inferred",
        },
        "format": options.output.format.cli_name(),
        "linears": classified.linears.len(),
        "quantized_linears": classified.linears.iter().filter(|l| l.excluded.is_none()).count(),
        "routers": classified.routers.len(),
        "mtp_layers": classified.mtp_layers,
        "passthrough_tensors": classified.passthrough.len(),
    });
    let would_fail = match Plan::from_classified(&ckpt, layout, &config, options, classified) {
        Ok(plan) => {
            let shards = ShardPlan::new(plan.outputs.clone(), options.output.max_shard_size)?;
            describe_plan(w, &plan, &shards, options);
            json["plan"] = serde_json::json!({
                "output_tensors": plan.outputs.len(),
                "output_bytes": shards.total_bytes(),
                "shards": shards.shard_count(),
                "exclude_modules": plan.exclude_modules,
                "work_units": plan.units.len(),
                "largest_unit_bytes": plan.largest_unit_bytes(),
                "warnings": plan.warnings,
            });
            false
        }
        Err(e) => {
            let _ = writeln!(
                w,
                "plan        a conversion with these options would stop in pre-flight:"
            );
            for line in e.to_string().lines() {
                let _ = writeln!(w, "  {line}");
            }
            json["would_stop"] = serde_json::json!(e.to_string());
            true
        }
    };
    Ok(Inspection {
        text: s,
        failure: would_fail.then(|| {
            "a conversion with these options would stop in pre-flight (see above)".to_string()
        }),
        json,
    })
}

impl Inspection {
    /// The exit status: the text is printed either way; a plan that would fail is exit 3.
    pub fn into_result(self) -> Result<String> {
        self.print_as(false)
    }

    /// As [`Self::into_result`], the text or (`json`) the JSON findings.
    pub fn print_as(mut self, json: bool) -> Result<String> {
        if json {
            self.text = serde_json::to_string_pretty(&self.json).unwrap_or_default() + "\n";
        }
        match self.failure {
            Some(why) => {
                print!("{}", self.text);
                Err(Error::bad_input(why))
            }
            None => Ok(self.text),
        }
    }
}

fn describe_plan(w: &mut String, plan: &Plan, shards: &ShardPlan, options: &Options) {
    let _ = writeln!(
        w,
        "output plan {} tensors, {} in {} shard(s) of at most {}",
        plan.outputs.len(),
        human_bytes(shards.total_bytes()),
        shards.shard_count(),
        human_bytes(options.output.max_shard_size)
    );
    let _ = writeln!(w, "  exclude_modules ({}):", plan.exclude_modules.len());
    for name in &plan.exclude_modules {
        let _ = writeln!(w, "    {name}");
    }
    if !options.stats.is_empty() {
        let with_input = plan.linears.iter().filter(|p| p.input.is_some()).count();
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
    // A bound, not a prediction: pages of finished units are released as the run goes, so
    // measured peaks are usually far below it (BENCHMARKS.md).
    let _ = writeln!(
        w,
        "memory      {} work units, the largest {}; work in flight never exceeds --max-memory {} \
         (or the largest unit, if larger), plus ~50 MB of bookkeeping",
        plan.units.len(),
        human_bytes(largest),
        human_bytes(options.run.max_memory),
    );
}
