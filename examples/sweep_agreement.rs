//! How often shardquant's FP8 scale sweep picks the same block scale as ModelOpt's Triton sweep
//! kernel (`nvfp4_fp8_sweep.py`), for BENCHMARKS.md.
//!
//! ModelOpt's kernel evaluates candidate `k` with `scale = c_k · g / 6` and `|w| / scale`;
//! shardquant evaluates it with the export's own denominator `f32(e4m3(k) · g / 2688)`, so both
//! see the same candidates but round a few of them one ulp apart, and near-ties can go either
//! way. This emulates ModelOpt's formula in IEEE f32 (Triton's own division may be approximate,
//! which this cannot reproduce) with its pairwise `tl.sum`, and counts matching blocks.
//!
//! `cargo run --release --example sweep_agreement -- CHECKPOINT [MAX_TENSORS]`

use shardquant::compute::mse;

use shardquant::compute;
use shardquant::compute::mse::SWEEP_CODES;
use shardquant::compute::{e2m1_nibble, e2m1_to_f32, load_f32_into, Numerics};
use shardquant::input::checkpoint::Checkpoint;
use shardquant::plan::source_dtype;
use std::path::PathBuf;

/// ModelOpt's per-block choice (code 1..=126) for one block of magnitudes.
fn modelopt_code(abs: &[f32; 16], global: f32) -> u8 {
    let mut best = (1u8, f32::INFINITY);
    for code in SWEEP_CODES {
        let c = mse::sweep_scale(code, Numerics::ModeloptCuda);
        let scale = (c * global) / 6.0;
        let mut d = [0.0f32; 16];
        for (d, &a) in d.iter_mut().zip(abs) {
            let q = e2m1_to_f32(e2m1_nibble(a / scale));
            let e = a - q * scale;
            *d = e * e;
        }
        // tl.sum over 16 lanes: a pairwise tree.
        let mut width = 16;
        while width > 1 {
            width /= 2;
            for i in 0..width {
                d[i] += d[i + width];
            }
        }
        if d[0] < best.1 {
            best = (code, d[0]);
        }
    }
    best.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        args.first()
            .expect("usage: sweep_agreement CHECKPOINT [MAX_TENSORS]"),
    );
    let max_tensors: usize = args
        .get(1)
        .map_or(usize::MAX, |s| s.parse().expect("a number"));
    let ckpt = Checkpoint::open(&dir).expect("opening the checkpoint");
    let (mut blocks, mut same, mut tensors) = (0u64, 0u64, 0usize);
    for t in ckpt.tensors() {
        let is_linear = t.name.ends_with("proj.weight") && t.shape.len() == 2;
        if !is_linear || t.shape[1] % 16 != 0 || tensors == max_tensors {
            continue;
        }
        let Some(dtype) = source_dtype(t.dtype) else {
            continue;
        };
        tensors += 1;
        let bytes = ckpt.bytes(t);
        let global = compute::amax(bytes, dtype).expect("finite weights");
        let ours = mse::sweep_block_amax(
            bytes,
            dtype,
            t.shape[1],
            global,
            Numerics::ModeloptCuda,
            None,
        );
        let mut row = vec![0.0f32; t.shape[1]];
        let row_bytes = t.shape[1] * dtype.size();
        let mut b = 0;
        for r in bytes.chunks_exact(row_bytes) {
            load_f32_into(r, dtype, &mut row);
            for block in row.chunks_exact(16) {
                let abs: [f32; 16] = std::array::from_fn(|j| block[j].abs());
                let theirs =
                    global * mse::sweep_scale(modelopt_code(&abs, global), Numerics::ModeloptCuda);
                same += u64::from(theirs == ours[b]);
                blocks += 1;
                b += 1;
            }
        }
    }
    println!(
        "{tensors} tensors, {blocks} blocks: {same} ({:.4}%) choose the same FP8 scale code as ModelOpt's sweep formula",
        100.0 * same as f64 / blocks.max(1) as f64
    );
}
