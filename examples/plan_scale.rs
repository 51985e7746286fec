//! Planning at real scale: the tensor lists of released checkpoints (`bench/models/*.json.zst`)
//! written as skeletons (real headers over sparse files), then opened, their layout chosen
//! (shipped, and inferred as if no layout shipped) and their conversion planned, timed.
//!
//! ```sh
//! cargo run --release --example plan_scale -- bench/models/*.json.zst
//! ```
//!
//! With `PLAN_SCALE_LAYOUTS=DIR` it also writes each model's chosen layout there as JSON (the
//! form `--layout` reads), for review.
//!
//! Prints a Markdown table (BENCHMARKS.md, "Planning at real scale"). A row fails (and the
//! program exits 1) when planning fails, or when the inferred layout plans a different
//! checkpoint than the shipped one (other quantized linears, outputs or `exclude_modules`).

use shardquant::compute::QuantFormat;
use shardquant::input::checkpoint::Checkpoint;
use shardquant::input::layout::{infer, Layout, Origin};
use shardquant::options::Options;
use shardquant::plan::Plan;
use shardquant::skeleton::TensorList;
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Row {
    model: String,
    tensors: usize,
    params: f64,
    bytes: f64,
    layout: String,
    quantized: usize,
    outputs: usize,
    open_s: f64,
    plan_s: f64,
    inspect_s: f64,
    inferred: String,
}

fn planned(ckpt: &Checkpoint, layout: Layout, config: &serde_json::Value) -> Result<Plan, String> {
    let mut options = Options::new(QuantFormat::W4a16Nvfp4);
    options.run.quiet = true;
    Plan::build(ckpt, layout, config, &options).map_err(|e| e.to_string())
}

fn run(list_path: &Path, root: &Path) -> Result<Row, String> {
    let list = TensorList::read(list_path).map_err(|e| e.to_string())?;
    let dir = root.join(list.model.replace('/', "--"));
    let _ = std::fs::remove_dir_all(&dir);
    list.write_skeleton(&dir).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let ckpt = Checkpoint::open(&dir).map_err(|e| e.to_string())?;
    let open_s = t0.elapsed().as_secs_f64();
    let config = &list.config;
    let t1 = Instant::now();
    let layout =
        Layout::for_checkpoint(None, config, &dir, ckpt.tensors()).map_err(|e| e.to_string())?;
    let origin = layout.origin;
    let name = layout.name.clone();
    if let Some(out) = std::env::var_os("PLAN_SCALE_LAYOUTS") {
        let file = Path::new(&out).join(format!("{}.json", list.model.replace('/', "--")));
        std::fs::write(&file, layout.file.to_json()).map_err(|e| e.to_string())?;
    }
    let plan = planned(&ckpt, layout, config)?;
    let plan_s = t1.elapsed().as_secs_f64();
    let inferred = if origin == Origin::Shipped {
        let layout = infer::infer(config, ckpt.tensors(), &dir.join("config.json"))
            .map_err(|e| format!("inference failed: {e}"))?;
        let other =
            planned(&ckpt, layout, config).map_err(|e| format!("inferred plan failed: {e}"))?;
        if Plan::what_it_writes(&other) != Plan::what_it_writes(&plan) {
            let (a, b) = (Plan::what_it_writes(&plan), Plan::what_it_writes(&other));
            return Err(format!(
                "the inferred layout plans another checkpoint: quantized {} vs {}, outputs {} vs {}, exclude_modules {:?} vs {:?}",
                a.0.len(),
                b.0.len(),
                a.1.len(),
                b.1.len(),
                a.2,
                b.2
            ));
        }
        "same plan".to_string()
    } else {
        "(no shipped layout)".to_string()
    };
    let t2 = Instant::now();
    let mut options = Options::new(QuantFormat::W4a16Nvfp4);
    options.run.quiet = true;
    let inspection =
        shardquant::commands::inspect::inspect(&dir, &options).map_err(|e| e.to_string())?;
    if inspection.failure.is_some() {
        return Err(format!("inspect: {}", inspection.text));
    }
    let inspect_s = t2.elapsed().as_secs_f64();
    drop(ckpt);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Row {
        model: list.model.clone(),
        tensors: list.tensors.len(),
        params: list.parameters() as f64 / 1e9,
        bytes: list.total_bytes() as f64 / 1e9,
        layout: format!(
            "{name} ({})",
            if origin == Origin::Shipped {
                "shipped"
            } else {
                "inferred"
            }
        ),
        quantized: plan.quantized_count(),
        outputs: plan.outputs.len(),
        open_s,
        plan_s,
        inspect_s,
        inferred,
    })
}

fn main() {
    let lists: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if lists.is_empty() {
        eprintln!("usage: plan_scale TENSOR_LIST.json[.zst]...");
        std::process::exit(2);
    }
    let root = std::env::temp_dir().join(format!("shardquant-plan-scale-{}", std::process::id()));
    println!("| model | tensors | params (B) | GB | layout | quantized linears | output tensors | open s | layout + plan s | inspect s | inferred layout |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut failed = false;
    for path in &lists {
        match run(path, &root) {
            Ok(r) => println!(
                "| {} | {} | {:.1} | {:.0} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {} |",
                r.model,
                r.tensors,
                r.params,
                r.bytes,
                r.layout,
                r.quantized,
                r.outputs,
                r.open_s,
                r.plan_s,
                r.inspect_s,
                r.inferred
            ),
            Err(e) => {
                failed = true;
                println!("| {} | FAILED: {} |", path.display(), e.replace('\n', " "));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    if failed {
        std::process::exit(1);
    }
}
