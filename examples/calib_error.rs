//! The quantization error of converted checkpoints against their source, for BENCHMARKS.md:
//! mean relative Frobenius error over the quantized linears and, with channel statistics, the
//! mean importance-weighted error (the one `--importance stats` minimises).
//!
//! `cargo run --release --example calib_error -- SOURCE [--stats FILE] OUTPUT...`

use shardquant::compute::mse::Importance;
use shardquant::compute::QuantFormat;
use shardquant::options::Options;
use std::path::PathBuf;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: calib_error SOURCE [--stats FILE] OUTPUT...");
        std::process::exit(2);
    }
    let source = PathBuf::from(args.remove(0));
    let stats = if args.first().map(String::as_str) == Some("--stats") {
        args.remove(0);
        Some(PathBuf::from(args.remove(0)))
    } else {
        None
    };
    let plan = stats.as_ref().map(|s| {
        let mut o = Options::new(QuantFormat::W4a16Nvfp4);
        o.stats = vec![s.clone()];
        o.run.quiet = true;
        shardquant::commands::convert::prepare(&source, &o)
            .expect("planning the source with the statistics")
            .2
    });
    let importance = |module: &str, cols: usize| {
        plan.as_ref()?
            .stats
            .module(module)
            .and_then(|s| Importance::from_mean_sq(&s.mean_sq()?, cols))
            .map(|i| i.weights)
    };
    println!("| output | linears | mean relative error | mean weighted error |");
    println!("|---|---|---|---|");
    for out in args {
        let v =
            shardquant::commands::verify::verify_weighted(out.as_ref(), Some(&source), &importance)
                .expect("verifying the output");
        let mean = |e: &[(String, f64)]| e.iter().map(|x| x.1).sum::<f64>() / e.len().max(1) as f64;
        println!(
            "| {out} | {} | {:.5} | {} |",
            v.errors.len(),
            mean(&v.errors),
            if v.weighted_errors.is_empty() {
                "-".to_string()
            } else {
                format!("{:.5}", mean(&v.weighted_errors))
            }
        );
    }
}
