//! CPU dequantization of FP8 block-scaled weights against its memory floor, for BENCHMARKS.md:
//! one DeepSeek-V3 expert-sized weight (2048 x 7168) dequantized to BF16 and to F32, beside a
//! plain copy of the same output bytes (what any dequantization must at least write) and the
//! implementation before the lookup table. Prints ns per element and
//! the ratios; the two implementations produce the same bytes (checked).
//!
//! `cargo run --release --example dequant_bench`

use shardquant::compute::{
    bf16_round, dequantize_fp8_block, e4m3_to_f32, scale_inv_shape, DequantPrecision,
};
use std::time::Instant;

const ROUNDS: usize = 5;

/// The implementation the lookup table replaced (src/compute/fp8_block.rs at f709a41), verbatim
/// but for the block constant.
fn before(fp8: &[u8], scale_inv: &[u8], rows: usize, cols: usize, out: &mut [u8]) {
    let precision = std::hint::black_box(DequantPrecision::Bf16);
    let scols = cols.div_ceil(128);
    let size = precision.dtype().size();
    let scale = |r: usize, c: usize| {
        let k = 4 * ((r / 128) * scols + c / 128);
        f32::from_le_bytes([
            scale_inv[k],
            scale_inv[k + 1],
            scale_inv[k + 2],
            scale_inv[k + 3],
        ])
    };
    for r in 0..rows {
        for cb in 0..scols {
            let s = scale(r, cb * 128);
            let (c0, c1) = (cb * 128, ((cb + 1) * 128).min(cols));
            for c in c0..c1 {
                let y = e4m3_to_f32(fp8[r * cols + c]) * s;
                let o = (r * cols + c) * size;
                match precision {
                    DequantPrecision::Bf16 => {
                        let bits = (bf16_round(y).to_bits() >> 16) as u16;
                        out[o..o + 2].copy_from_slice(&bits.to_le_bytes());
                    }
                    DequantPrecision::F32 => out[o..o + 4].copy_from_slice(&y.to_le_bytes()),
                }
            }
        }
    }
}

fn best_ns(elements: usize, mut f: impl FnMut()) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64 / elements as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let (rows, cols) = (2048usize, 7168usize);
    let n = rows * cols;
    let mut s = 7u64;
    let fp8: Vec<u8> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    let (sr, sc) = scale_inv_shape(rows, cols);
    let bytes: Vec<u8> = (0..sr * sc)
        .flat_map(|i| (1.3 * (i % 7 + 1) as f32 / 64.0).to_le_bytes())
        .collect();
    let (mut a, mut b) = (vec![0u8; 2 * n], vec![0u8; 2 * n]);
    let mut f32_out = vec![0u8; 4 * n];
    let bf16 = best_ns(n, || {
        dequantize_fp8_block(&fp8, &bytes, rows, cols, DequantPrecision::Bf16, &mut a)
    });
    let f32 = best_ns(n, || {
        dequantize_fp8_block(
            &fp8,
            &bytes,
            rows,
            cols,
            DequantPrecision::F32,
            &mut f32_out,
        )
    });
    let old = best_ns(n, || before(&fp8, &bytes, rows, cols, &mut b));
    let copy_src = vec![1u8; 2 * n];
    let floor = best_ns(n, || {
        b.copy_from_slice(std::hint::black_box(&copy_src));
        std::hint::black_box(&mut b);
    });
    before(&fp8, &bytes, rows, cols, &mut b);
    assert!(a == b, "the lookup table changed the bytes");
    println!("{rows} x {cols} FP8 weight, best of {ROUNDS}, one thread:");
    println!("  copy of the BF16 output bytes (floor): {floor:.2} ns/element");
    println!(
        "  dequantize to BF16: {bf16:.2} ns/element ({:.1}x the floor)",
        bf16 / floor
    );
    println!("  dequantize to F32:  {f32:.2} ns/element");
    println!(
        "  before the lookup table: {old:.2} ns/element ({:.1}x the lookup table)",
        old / bf16
    );
}
