//! Writes a synthetic checkpoint (and a matching ModelOpt amax file) for benchmarks.
//!
//! `cargo run --release --example synth -- DIR LAYERS [HIDDEN] [EXPERTS] [MOE_INTERMEDIATE]`

use shardquant::synthetic::SyntheticSpec;
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: synth DIR LAYERS [HIDDEN] [EXPERTS] [MOE_INTERMEDIATE]");
        std::process::exit(2);
    }
    let num = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |s| s.parse().expect("a number"))
    };
    let spec = SyntheticSpec {
        layers: num(1, 8),
        hidden: num(2, 1024),
        intermediate: 4 * num(2, 1024),
        experts: num(3, 0),
        moe_intermediate: num(4, 512),
        vocab: 8192,
        shard_size: 512 << 20,
        seed: 7,
    };
    let dir = PathBuf::from(&args[0]);
    spec.write(&dir).expect("writing the checkpoint");
    spec.write_amax(&dir.with_extension("amax.safetensors"))
        .expect("writing the amax file");
}
