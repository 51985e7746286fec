//! The MSE searches against slow, straightforward references: each candidate fake-quantized
//! as ModelOpt's calibration does it (FP8: `_fp8_eager` / `fake_e4m3fy` on the f32 weight;
//! NVFP4: the Triton `fp4_fake_quant_block`), or through the export kernels of `crate::compute`
//! for the sweep, and its loss summed in f64, one candidate and one block at a time. The
//! chosen amax (and the export bytes that follow) must be the same.

use super::*;
use crate::compute::nvfp4::block_scale_byte;
use crate::compute::quantize_nvfp4_static;
use crate::compute::test_util::{encode, Rng};

/// Laplace-distributed weights (heavy tails, like real weights) with per-row magnitudes.
fn laplace(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let row_scale = 2f32.powi((i / cols % 7) as i32 - 4);
            let u = rng.unit() - 0.5;
            let v = -u.signum() * (1.0 - 2.0 * u.abs()).max(1e-12).ln();
            v as f32 * row_scale * 0.02
        })
        .collect()
}

/// The multiplier search done plainly: the whole tensor fake-quantized per candidate.
fn reference_multiplier(
    w: &[f32],
    dtype: SourceDtype,
    cols: usize,
    target: MseTarget,
    amax0: f32,
    imp: Option<&[f32]>,
) -> usize {
    let w: Vec<f32> = w.iter().map(|&x| dtype.round(x)).collect();
    let weight = |i: usize| imp.map_or(1.0, |v| f64::from(v[i % cols]));
    let mut best = (0, f64::INFINITY);
    for (k, m) in multipliers().iter().enumerate() {
        let g = amax0 * m;
        let xq: Vec<f32> = match target {
            MseTarget::Nvfp4(_) => {
                // fp4_fake_quant_block: global_amax / 2688.0 on CUDA (times the reciprocal).
                let gs = g * (1.0f32 / 2688.0);
                w.chunks(16)
                    .flat_map(|block| {
                        let bmax = max_abs(block);
                        let s = (bmax / (6.0 * gs)).min(448.0);
                        let q = e4m3_to_f32(e4m3_from_f32(s)) * gs;
                        let q = if q >= 1e-5 { q } else { 1.0 };
                        block
                            .iter()
                            .map(move |&x| e2m1_to_f32(e2m1_nibble(x / q)) * q)
                            .collect::<Vec<_>>()
                    })
                    .collect()
            }
            MseTarget::Fp8(numerics) => {
                let scale = match numerics {
                    Numerics::ModeloptCpu => (1.0 / g) * 448.0,
                    Numerics::ModeloptCuda => 448.0f32 / g,
                };
                w.iter()
                    .map(|&x| {
                        let code = e4m3_from_f32((x * scale).clamp(-448.0, 448.0));
                        e4m3_to_f32(code) * (1.0 / scale)
                    })
                    .collect()
            }
        };
        let loss: f64 = w
            .iter()
            .zip(&xq)
            .enumerate()
            .map(|(i, (&x, &q))| {
                let d = x - q;
                f64::from(d * d) * weight(i)
            })
            .sum();
        if loss < best.1 {
            best = (k, loss);
        }
    }
    best.0
}

/// The FP8 scale sweep done plainly: the chosen code of every block.
fn reference_sweep(
    w: &[f32],
    cols: usize,
    global: f32,
    numerics: Numerics,
    imp: Option<&[f32]>,
) -> Vec<u8> {
    let ws2 = nvfp4_global_scale(global, numerics);
    w.chunks(16)
        .enumerate()
        .map(|(b, block)| {
            let mut best = (1u8, f64::INFINITY);
            for code in SWEEP_CODES {
                let den = e4m3_to_f32(code) * ws2;
                let loss: f64 = block
                    .iter()
                    .enumerate()
                    .map(|(j, &x)| {
                        let d = x.abs() - e2m1_to_f32(e2m1_nibble(x.abs() / den)) * den;
                        let col = (b * 16 + j) % cols;
                        f64::from(d * d) * imp.map_or(1.0, |v| f64::from(v[col]))
                    })
                    .sum();
                if loss < best.1 {
                    best = (code, loss);
                }
            }
            best.0
        })
        .collect()
}

fn max_abs(w: &[f32]) -> f32 {
    w.iter().fold(0.0, |m, x| m.max(x.abs()))
}

#[test]
fn multipliers_are_torch_linspace_in_f32() {
    let m = multipliers();
    // torch.linspace(0.25, 4.0, 39)[:4] and the ends (docs/modelopt-format.md §5).
    assert_eq!(m[0], 0.25);
    assert_eq!(m[1], 0.348_684_22);
    assert_eq!(m[2], 0.447_368_44);
    assert_eq!(m[3], 0.546_052_63);
    assert_eq!(m[MSE_STEPS - 1], 4.0);
    assert!(m.windows(2).all(|p| p[0] < p[1]));
    assert!(m.iter().any(|&x| (x - 1.0).abs() < 0.05));
}

#[test]
fn multiplier_search_matches_the_reference() {
    let mut rng = Rng::new(7);
    for (rows, cols) in [(8, 64), (16, 48), (3, 4096 + 32)] {
        let w = laplace(&mut rng, rows, cols);
        for dtype in [SourceDtype::Bf16, SourceDtype::F32, SourceDtype::F16] {
            let src = encode(&w, dtype);
            let amax0 = crate::compute::amax(&src, dtype).unwrap();
            for target in [
                MseTarget::Nvfp4(Numerics::ModeloptCuda),
                MseTarget::Fp8(Numerics::ModeloptCpu),
                MseTarget::Fp8(Numerics::ModeloptCuda),
            ] {
                let c = Candidates::new(target, amax0);
                let ours = pick(&chunk_losses(&src, dtype, cols, &c, None), MSE_STEPS);
                let reference = reference_multiplier(&w, dtype, cols, target, amax0, None);
                assert_eq!(ours, reference, "{rows}x{cols} {dtype:?} {target:?}");
                // The stored amax: the f32 candidate rounded into the weight's dtype.
                assert_eq!(
                    mse_amax(&src, dtype, cols, target, amax0, None),
                    dtype.round(amax0 * multipliers()[ours])
                );
            }
        }
    }
}

#[test]
fn weighted_multiplier_search_matches_the_reference() {
    let mut rng = Rng::new(11);
    let (rows, cols) = (12, 64);
    let w = laplace(&mut rng, rows, cols);
    let mean_sq: Vec<f64> = (0..cols).map(|c| ((c * 37) % 11) as f64 * 0.3).collect();
    let imp = Importance::from_mean_sq(&mean_sq, cols).unwrap();
    let src = encode(&w, SourceDtype::Bf16);
    let amax0 = max_abs(&w.iter().map(|&x| bf16_round(x)).collect::<Vec<_>>());
    for target in [
        MseTarget::Nvfp4(Numerics::ModeloptCuda),
        MseTarget::Fp8(Numerics::ModeloptCpu),
    ] {
        let c = Candidates::new(target, amax0);
        let ours = pick(
            &chunk_losses(&src, SourceDtype::Bf16, cols, &c, Some(&imp.weights)),
            MSE_STEPS,
        );
        let reference = reference_multiplier(
            &w,
            SourceDtype::Bf16,
            cols,
            target,
            amax0,
            Some(&imp.weights),
        );
        assert_eq!(ours, reference, "{target:?}");
    }
}

#[test]
fn sweep_matches_the_reference_and_maps_back_to_its_code() {
    let mut rng = Rng::new(3);
    let (rows, cols) = (24, 96);
    let mut w = laplace(&mut rng, rows, cols);
    w[16..32].fill(0.0); // an all-zero block
    for dtype in [SourceDtype::Bf16, SourceDtype::F32] {
        let src = encode(&w, dtype);
        let wr: Vec<f32> = w.iter().map(|&x| dtype.round(x)).collect();
        let global = max_abs(&wr);
        for numerics in Numerics::ALL {
            let blocks = sweep_block_amax(&src, dtype, cols, global, numerics, None);
            let codes = reference_sweep(&wr, cols, global, numerics, None);
            // The export turns each chosen block amax back into exactly the chosen code.
            let mut packed = vec![0u8; rows * cols / 2];
            let mut scales = vec![0u8; rows * cols / 16];
            quantize_nvfp4_static(
                &src,
                dtype,
                rows,
                cols,
                &blocks,
                global,
                numerics,
                &mut packed,
                &mut scales,
            );
            assert_eq!(scales, codes, "{dtype:?} {numerics:?}");
            // All-zero block: every code ties at zero loss, the first (2^-9) wins.
            assert_eq!(scales[1], 0x01);
        }
    }
}

#[test]
fn every_sweep_code_maps_back_for_a_wide_range_of_global_amax() {
    for numerics in Numerics::ALL {
        for e in -60..=60 {
            for frac in [1.0f32, 1.1, 1.37, 1.999] {
                let global = 2f32.powi(e) * frac;
                let mut row = vec![0u8; 0];
                for code in SWEEP_CODES {
                    let a = global * sweep_scale(code, numerics);
                    let mut s = numerics.div_const(a, E2M1_MAX);
                    if s == 0.0 {
                        s = 1.0;
                    }
                    let back = block_scale_byte((s * E4M3_MAX) / numerics.div_const(global, 6.0));
                    if back != code {
                        row.push(code);
                    }
                }
                assert!(row.is_empty(), "g={global:e} {numerics:?}: codes {row:?}");
            }
        }
    }
}

#[test]
fn weighted_sweep_matches_the_reference() {
    let mut rng = Rng::new(5);
    let (rows, cols) = (8, 64);
    let w = laplace(&mut rng, rows, cols);
    let mut mean_sq: Vec<f64> = (0..cols).map(|c| (c % 5) as f64).collect();
    mean_sq[..16].fill(0.0); // a block of channels that saw nothing: floored weights
    let imp = Importance::from_mean_sq(&mean_sq, cols).unwrap();
    let src = encode(&w, SourceDtype::F32);
    let global = max_abs(&w);
    let blocks = sweep_block_amax(
        &src,
        SourceDtype::F32,
        cols,
        global,
        Numerics::ModeloptCuda,
        Some(&imp.weights),
    );
    let codes = reference_sweep(&w, cols, global, Numerics::ModeloptCuda, Some(&imp.weights));
    let expected: Vec<f32> = codes
        .iter()
        .map(|&k| global * sweep_scale(k, Numerics::ModeloptCuda))
        .collect();
    assert_eq!(blocks, expected);
    // The weighting changes choices: it is not a no-op.
    let plain = sweep_block_amax(
        &src,
        SourceDtype::F32,
        cols,
        global,
        Numerics::ModeloptCuda,
        None,
    );
    assert_ne!(blocks, plain);
}

#[test]
fn the_sweep_clips_outliers_when_that_lowers_the_error() {
    // A block whose max is an outlier over a dense cluster: representing the cluster finely
    // and clipping the outlier costs less than a scale that reaches the outlier.
    let mut block = [1.0f32; 16];
    for (j, v) in block.iter_mut().enumerate() {
        *v = 1.0 + j as f32 / 64.0;
    }
    block[5] = 6.9;
    let global = 8.0f32;
    let src = encode(&block, SourceDtype::F32);
    let chosen = sweep_block_amax(
        &src,
        SourceDtype::F32,
        16,
        global,
        Numerics::ModeloptCuda,
        None,
    );
    assert!(
        chosen[0] < 6.9,
        "the sweep kept the outlier's range: block amax {}",
        chosen[0]
    );
    // On heavy-tailed data a fair share of blocks clip.
    let mut rng = Rng::new(9);
    let w = laplace(&mut rng, 64, 256);
    let src = encode(&w, SourceDtype::F32);
    let blocks = sweep_block_amax(
        &src,
        SourceDtype::F32,
        256,
        max_abs(&w),
        Numerics::ModeloptCuda,
        None,
    );
    let clipped = blocks
        .iter()
        .zip(w.chunks(16))
        .filter(|(a, b)| **a < max_abs(b))
        .count();
    assert!(clipped * 10 > blocks.len(), "{clipped} of {}", blocks.len());
}

#[test]
fn pick_takes_the_first_minimum() {
    // Two chunks per candidate; candidates 1 and 3 tie at 3.0.
    let partials = [2.0, 2.0, 1.0, 2.0, 4.0, 0.0, 2.0, 1.0];
    assert_eq!(pick(&partials, 4), 1);
    assert_eq!(pick(&[f32::NAN, 1.0, 1.0], 3), 1);
    assert_eq!(pick(&[f32::NAN, f32::NAN], 2), 0);
}

#[test]
fn ties_in_the_search_keep_the_first_candidate() {
    // An all-zero tensor: every candidate has loss 0, the first one must be kept.
    let w = [0.0f32; 32];
    let src = encode(&w, SourceDtype::F32);
    // amax0 = 0: nothing to search, the amax stays 0.
    assert_eq!(
        mse_amax(
            &src,
            SourceDtype::F32,
            16,
            MseTarget::Fp8(Numerics::ModeloptCpu),
            0.0,
            None
        ),
        0.0
    );
    let c = Candidates::new(MseTarget::Fp8(Numerics::ModeloptCpu), 1.0);
    let partials = chunk_losses(&src, SourceDtype::F32, 16, &c, None);
    assert!(partials.iter().all(|&v| v == 0.0));
    assert_eq!(pick(&partials, MSE_STEPS), 0);
}

#[test]
fn the_reduction_follows_the_documented_tree() {
    // 2 chunks + a partial third; the f32 sums of the tree differ from a plain running sum for
    // these magnitudes, so this pins the order.
    let cols = 16;
    let n = 2 * CHUNK + 100;
    let w: Vec<f32> = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                1e4
            } else {
                1e-3 * (i % 7) as f32
            }
        })
        .collect();
    let src = encode(&w, SourceDtype::F32);
    let c = Candidates::new(MseTarget::Fp8(Numerics::ModeloptCpu), 1e4);
    let partials = chunk_losses(&src, SourceDtype::F32, cols, &c, None);
    let chunks = chunk_count(n);
    assert_eq!(chunks, 3);
    for k in [0, 17, 38] {
        for chunk in 0..chunks {
            let mut leaves = [0.0f32; CHUNK_GROUPS];
            for (g, leaf) in leaves.iter_mut().enumerate() {
                let first = chunk * CHUNK + g * GROUP;
                for &x in w
                    .iter()
                    .skip(first)
                    .take(GROUP.min(n.saturating_sub(first)))
                {
                    let y = (x * c.a[k]).clamp(-448.0, 448.0);
                    let d = x - e4m3_to_f32(e4m3_from_f32(y)) * c.b[k];
                    *leaf += d * d;
                }
            }
            let mut width = CHUNK_GROUPS;
            while width > 1 {
                width /= 2;
                for t in 0..width {
                    leaves[t] += leaves[t + width];
                }
            }
            assert_eq!(partials[k * chunks + chunk], leaves[0]);
        }
    }
}

/// The whole way from statistics to channel weights.
#[test]
fn importance_comes_from_sums_and_counts_or_mean_squares() {
    use crate::input::stats::ModuleStats;
    let stats = ModuleStats {
        input_sum_sq: Some(vec![4.0, 0.0, 8.0, 4.0]),
        token_count: Some(2),
        ..Default::default()
    };
    let imp = Importance::from_mean_sq(&stats.mean_sq().unwrap_or_default(), 4).unwrap();
    // E[x²] = [2, 0, 4, 2], mean 2 → [1, floor, 2, 1].
    assert_eq!(imp.weights, vec![1.0, IMPORTANCE_FLOOR as f32, 2.0, 1.0]);
    let legacy = ModuleStats {
        input_mean_sq: Some(vec![1.0, 3.0]),
        ..Default::default()
    };
    assert_eq!(
        Importance::from_mean_sq(&legacy.mean_sq().unwrap_or_default(), 2)
            .unwrap()
            .weights,
        vec![0.5, 1.5]
    );
    // Wrong length, no data, all zero, uncalibrated (count 0 and no mean): none.
    assert!(Importance::from_mean_sq(&legacy.mean_sq().unwrap_or_default(), 3).is_none());
    assert!(
        Importance::from_mean_sq(&ModuleStats::default().mean_sq().unwrap_or_default(), 2)
            .is_none()
    );
    let zero = ModuleStats {
        input_mean_sq: Some(vec![0.0, 0.0]),
        ..Default::default()
    };
    assert!(Importance::from_mean_sq(&zero.mean_sq().unwrap_or_default(), 2).is_none());
    let unseen = ModuleStats {
        input_sum_sq: Some(vec![0.0, 0.0]),
        token_count: Some(0),
        ..Default::default()
    };
    assert!(Importance::from_mean_sq(&unseen.mean_sq().unwrap_or_default(), 2).is_none());
}

/// `torch.linspace(0.25, 4.0, 39)` as f32 bits, printed by PyTorch 2.x on the GPU machine (the
/// CPU and CUDA kernels gave the same bits).
const TORCH_LINSPACE: [u32; 39] = [
    0x3E800000, 0x3EB286BD, 0x3EE50D7A, 0x3F0BCA1B, 0x3F250D7A, 0x3F3E50D8, 0x3F579436, 0x3F70D795,
    0x3F850D7A, 0x3F91AF29, 0x3F9E50D8, 0x3FAAF287, 0x3FB79436, 0x3FC435E5, 0x3FD0D795, 0x3FDD7944,
    0x3FEA1AF3, 0x3FF6BCA2, 0x4001AF29, 0x40080000, 0x400E50D7, 0x4014A1AF, 0x401AF286, 0x4021435E,
    0x40279436, 0x402DE50D, 0x403435E5, 0x403A86BC, 0x4040D794, 0x4047286C, 0x404D7943, 0x4053CA1B,
    0x405A1AF2, 0x40606BCA, 0x4066BCA2, 0x406D0D79, 0x40735E51, 0x4079AF28, 0x40800000,
];

/// `fp8_scale_candidates(device)` (E4M3 codes 1..=126 as f32, divided by the Python float 448)
/// as f32 bits, printed by PyTorch on CUDA and on the CPU: they differ (docs/modelopt-format.md §1.1).
const TORCH_CANDIDATES_CUDA: [u32; 126] = [
    0x36924925, 0x37124925, 0x375B6DB8, 0x37924925, 0x37B6DB6E, 0x37DB6DB8, 0x38000000, 0x38124925,
    0x3824924A, 0x3836DB6E, 0x38492493, 0x385B6DB8, 0x386DB6DC, 0x38800000, 0x38892493, 0x38924925,
    0x38A4924A, 0x38B6DB6E, 0x38C92493, 0x38DB6DB8, 0x38EDB6DC, 0x39000000, 0x39092493, 0x39124925,
    0x3924924A, 0x3936DB6E, 0x39492493, 0x395B6DB8, 0x396DB6DC, 0x39800000, 0x39892493, 0x39924925,
    0x39A4924A, 0x39B6DB6E, 0x39C92493, 0x39DB6DB8, 0x39EDB6DC, 0x3A000000, 0x3A092493, 0x3A124925,
    0x3A24924A, 0x3A36DB6E, 0x3A492493, 0x3A5B6DB8, 0x3A6DB6DC, 0x3A800000, 0x3A892493, 0x3A924925,
    0x3AA4924A, 0x3AB6DB6E, 0x3AC92493, 0x3ADB6DB8, 0x3AEDB6DC, 0x3B000000, 0x3B092493, 0x3B124925,
    0x3B24924A, 0x3B36DB6E, 0x3B492493, 0x3B5B6DB8, 0x3B6DB6DC, 0x3B800000, 0x3B892493, 0x3B924925,
    0x3BA4924A, 0x3BB6DB6E, 0x3BC92493, 0x3BDB6DB8, 0x3BEDB6DC, 0x3C000000, 0x3C092493, 0x3C124925,
    0x3C24924A, 0x3C36DB6E, 0x3C492493, 0x3C5B6DB8, 0x3C6DB6DC, 0x3C800000, 0x3C892493, 0x3C924925,
    0x3CA4924A, 0x3CB6DB6E, 0x3CC92493, 0x3CDB6DB8, 0x3CEDB6DC, 0x3D000000, 0x3D092493, 0x3D124925,
    0x3D24924A, 0x3D36DB6E, 0x3D492493, 0x3D5B6DB8, 0x3D6DB6DC, 0x3D800000, 0x3D892493, 0x3D924925,
    0x3DA4924A, 0x3DB6DB6E, 0x3DC92493, 0x3DDB6DB8, 0x3DEDB6DC, 0x3E000000, 0x3E092493, 0x3E124925,
    0x3E24924A, 0x3E36DB6E, 0x3E492493, 0x3E5B6DB8, 0x3E6DB6DC, 0x3E800000, 0x3E892493, 0x3E924925,
    0x3EA4924A, 0x3EB6DB6E, 0x3EC92493, 0x3EDB6DB8, 0x3EEDB6DC, 0x3F000000, 0x3F092493, 0x3F124925,
    0x3F24924A, 0x3F36DB6E, 0x3F492493, 0x3F5B6DB8, 0x3F6DB6DC, 0x3F800000,
];
const TORCH_CANDIDATES_CPU: [u32; 126] = [
    0x36924925, 0x37124925, 0x375B6DB7, 0x37924925, 0x37B6DB6E, 0x37DB6DB7, 0x38000000, 0x38124925,
    0x38249249, 0x3836DB6E, 0x38492492, 0x385B6DB7, 0x386DB6DB, 0x38800000, 0x38892492, 0x38924925,
    0x38A49249, 0x38B6DB6E, 0x38C92492, 0x38DB6DB7, 0x38EDB6DB, 0x39000000, 0x39092492, 0x39124925,
    0x39249249, 0x3936DB6E, 0x39492492, 0x395B6DB7, 0x396DB6DB, 0x39800000, 0x39892492, 0x39924925,
    0x39A49249, 0x39B6DB6E, 0x39C92492, 0x39DB6DB7, 0x39EDB6DB, 0x3A000000, 0x3A092492, 0x3A124925,
    0x3A249249, 0x3A36DB6E, 0x3A492492, 0x3A5B6DB7, 0x3A6DB6DB, 0x3A800000, 0x3A892492, 0x3A924925,
    0x3AA49249, 0x3AB6DB6E, 0x3AC92492, 0x3ADB6DB7, 0x3AEDB6DB, 0x3B000000, 0x3B092492, 0x3B124925,
    0x3B249249, 0x3B36DB6E, 0x3B492492, 0x3B5B6DB7, 0x3B6DB6DB, 0x3B800000, 0x3B892492, 0x3B924925,
    0x3BA49249, 0x3BB6DB6E, 0x3BC92492, 0x3BDB6DB7, 0x3BEDB6DB, 0x3C000000, 0x3C092492, 0x3C124925,
    0x3C249249, 0x3C36DB6E, 0x3C492492, 0x3C5B6DB7, 0x3C6DB6DB, 0x3C800000, 0x3C892492, 0x3C924925,
    0x3CA49249, 0x3CB6DB6E, 0x3CC92492, 0x3CDB6DB7, 0x3CEDB6DB, 0x3D000000, 0x3D092492, 0x3D124925,
    0x3D249249, 0x3D36DB6E, 0x3D492492, 0x3D5B6DB7, 0x3D6DB6DB, 0x3D800000, 0x3D892492, 0x3D924925,
    0x3DA49249, 0x3DB6DB6E, 0x3DC92492, 0x3DDB6DB7, 0x3DEDB6DB, 0x3E000000, 0x3E092492, 0x3E124925,
    0x3E249249, 0x3E36DB6E, 0x3E492492, 0x3E5B6DB7, 0x3E6DB6DB, 0x3E800000, 0x3E892492, 0x3E924925,
    0x3EA49249, 0x3EB6DB6E, 0x3EC92492, 0x3EDB6DB7, 0x3EEDB6DB, 0x3F000000, 0x3F092492, 0x3F124925,
    0x3F249249, 0x3F36DB6E, 0x3F492492, 0x3F5B6DB7, 0x3F6DB6DB, 0x3F800000,
];

#[test]
fn grids_are_torchs_bit_for_bit() {
    let ours: Vec<u32> = multipliers().iter().map(|m| m.to_bits()).collect();
    assert_eq!(ours, TORCH_LINSPACE);
    for (numerics, torch) in [
        (Numerics::ModeloptCuda, TORCH_CANDIDATES_CUDA),
        (Numerics::ModeloptCpu, TORCH_CANDIDATES_CPU),
    ] {
        let ours: Vec<u32> = SWEEP_CODES
            .map(|k| sweep_scale(k, numerics).to_bits())
            .collect();
        assert_eq!(ours, torch, "{numerics:?}");
    }
    assert_ne!(TORCH_CANDIDATES_CUDA, TORCH_CANDIDATES_CPU);
}

use crate::compute::codec::bf16_round;
