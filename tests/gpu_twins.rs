//! Every CPU kernel against its GPU twin, byte for byte, on random data and edge cases; and
//! whole conversions on the GPU against the CPU and the ModelOpt golden exports.
//!
//! Built where no CUDA driver is installed (CI), they are listed as ignored with the reason;
//! `--include-ignored` runs them (the GPU machine runs binaries built here that way). A driver
//! without a usable GPU makes them pass after saying so, unless SHARDQUANT_REQUIRE_GPU=1,
//! which makes a missing GPU a failure (set it on the GPU machine).

mod common;

use shardquant::compute::backend::{CpuCompute, MemberWeight, UnitCompute};
use shardquant::compute::cuda::{DeviceChoice, Gpu, GpuPool};
use shardquant::compute::mse::{CalibMethod, Candidates, Importance, MseTarget};
use shardquant::compute::{Fp8Quotient, Numerics, QuantFormat, SourceDtype};
use shardquant::options::Options;
use std::borrow::Cow;
use std::sync::Arc;

fn gpu() -> Option<Arc<Gpu>> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(reason) => {
            assert!(
                std::env::var("SHARDQUANT_REQUIRE_GPU").as_deref() != Ok("1"),
                "SHARDQUANT_REQUIRE_GPU=1 but no GPU: {reason}"
            );
            eprintln!("skipping: no usable GPU ({reason})");
            None
        }
    }
}

/// xorshift random bytes of a dtype, with planted edge cases.
fn weights(dtype: SourceDtype, n: usize, seed: u64, kind: usize) -> Vec<u8> {
    let mut s = seed.max(1);
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut out = Vec::with_capacity(n * dtype.size());
    for i in 0..n {
        let r = next();
        let block = i / 16;
        // Per-block magnitudes from 2^-30 to 2^10, zero blocks, ties on the e2m1 grid.
        let scale = 2f32.powi(((block * 7 + kind) % 41) as i32 - 30);
        let mut v = ((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale;
        if block % 13 == 5 {
            v = 0.0;
        }
        if block % 17 == 3 {
            v = [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, -0.25, -0.0][i % 10] * scale;
        }
        match dtype {
            SourceDtype::Bf16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            SourceDtype::F16 => out
                .extend_from_slice(&half::f16::from_f32(v.clamp(-60000.0, 60000.0)).to_le_bytes()),
            SourceDtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

fn both<'a, R: PartialEq + std::fmt::Debug>(
    pool: &GpuPool,
    w: &'a [u8],
    dtype: SourceDtype,
    f: impl Fn(&mut dyn UnitCompute<'a>) -> R,
) -> (R, R) {
    let mut cpu = CpuCompute::default();
    cpu.load(vec![MemberWeight::Plain(Cow::Borrowed(w), dtype)])
        .unwrap();
    let mut gpu = pool.compute();
    gpu.load(vec![MemberWeight::Plain(Cow::Borrowed(w), dtype)])
        .unwrap();
    (f(&mut cpu), f(&mut gpu))
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "no CUDA driver on this machine (run with --include-ignored on a GPU machine)"
)]
fn kernels_match_the_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    // The smallest staging buffers: weights and results stream through them in many pieces.
    let pool = GpuPool::new(gpu, 2, 8 << 20, 0).unwrap();
    let shapes = [
        (1usize, 32usize),
        (3, 32),
        (64, 64),
        (257, 128),
        (512, 1024),
    ];
    for dtype in [SourceDtype::Bf16, SourceDtype::F16, SourceDtype::F32] {
        for (k, &(rows, cols)) in shapes.iter().enumerate() {
            let w = weights(dtype, rows * cols, 1 + k as u64 * 31, k);
            let (a, b) = both(&pool, &w, dtype, |c| c.amax(0).unwrap());
            assert_eq!(
                a.map(f32::to_bits),
                b.map(f32::to_bits),
                "amax {dtype:?} {rows}x{cols}"
            );
            let amax = a.unwrap();
            // An all-zero weight never reaches the kernels (the pipeline stops on it): with a
            // zero scale the arithmetic makes NaNs whose sign differs between x86 and CUDA.
            assert!(amax > 0.0, "test data must not be all zero");
            for numerics in [Numerics::ModeloptCpu, Numerics::ModeloptCuda] {
                for ws_amax in [amax, amax * 0.37, amax * 3.0] {
                    let ws2 = shardquant::compute::nvfp4_global_scale(ws_amax, numerics);
                    let (a, b) = both(&pool, &w, dtype, |c| {
                        let (mut p, mut s) = (
                            vec![0xAAu8; rows * cols / 2],
                            vec![0xAAu8; rows * cols / 16],
                        );
                        c.nvfp4(0, rows, cols, ws2, &mut p, &mut s).unwrap();
                        (p, s)
                    });
                    assert!(
                        a == b,
                        "nvfp4 {dtype:?} {rows}x{cols} {numerics:?} amax {ws_amax}"
                    );
                    let blocks: Vec<f32> = (0..rows * cols / 16)
                        .map(|i| ws_amax * ((i % 9) as f32 / 8.0))
                        .collect();
                    let (a, b) = both(&pool, &w, dtype, |c| {
                        let (mut p, mut s) = (
                            vec![0x55u8; rows * cols / 2],
                            vec![0x55u8; rows * cols / 16],
                        );
                        let ws2 = c
                            .nvfp4_static(0, rows, cols, &blocks, ws_amax, numerics, &mut p, &mut s)
                            .unwrap();
                        (p, s, ws2.to_bits())
                    });
                    assert!(a == b, "nvfp4 static {dtype:?} {rows}x{cols} {numerics:?}");
                    let scale = shardquant::compute::fp8_scale(ws_amax, numerics);
                    if dtype.round(scale) == 0.0 {
                        // The pipeline refuses a scale that rounds to zero in the weight dtype
                        // (a division by zero: NaN signs differ between x86 and CUDA).
                        continue;
                    }
                    for quotient in [Fp8Quotient::WeightDtype, Fp8Quotient::F32] {
                        let (a, b) = both(&pool, &w, dtype, |c| {
                            let mut out = vec![0x11u8; rows * cols];
                            c.fp8(0, scale, numerics, quotient, &mut out).unwrap();
                            out
                        });
                        assert!(
                            a == b,
                            "fp8 {dtype:?} {quotient:?} {rows}x{cols} {numerics:?} amax {ws_amax}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "no CUDA driver on this machine (run with --include-ignored on a GPU machine)"
)]
fn mse_kernels_match_the_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let pool = GpuPool::new(gpu, 2, 8 << 20, 8 << 20).unwrap();
    // One group, a partial chunk, several chunks and a partial last group (FP8 only).
    let shapes = [
        (1usize, 32usize),
        (3, 48),
        (64, 64),
        (257, 128),
        (300, 1024),
        (5, 37),
    ];
    for dtype in [SourceDtype::Bf16, SourceDtype::F16, SourceDtype::F32] {
        for (k, &(rows, cols)) in shapes.iter().enumerate() {
            let w = weights(dtype, rows * cols, 7 + k as u64 * 13, k + 3);
            let amax = shardquant::compute::amax(&w, dtype).unwrap();
            let mean_sq: Vec<f64> = (0..cols)
                .map(|c| {
                    if c % 11 == 4 {
                        0.0
                    } else {
                        ((c * 29) % 17) as f64 + 0.5
                    }
                })
                .collect();
            let imp = Importance::from_mean_sq(&mean_sq, cols).unwrap();
            for importance in [None, Some(imp.weights.as_slice())] {
                for target in [
                    MseTarget::Nvfp4(Numerics::ModeloptCuda),
                    MseTarget::Nvfp4(Numerics::ModeloptCpu),
                    MseTarget::Fp8(Numerics::ModeloptCpu),
                    MseTarget::Fp8(Numerics::ModeloptCuda),
                ] {
                    if cols % 16 != 0 && !matches!(target, MseTarget::Fp8(_)) {
                        continue;
                    }
                    let cand = Candidates::new(target, amax);
                    let (a, b) = both(&pool, &w, dtype, |c| {
                        c.mse_chunk_losses(0, cols, &cand, importance)
                            .unwrap()
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>()
                    });
                    assert!(
                        a == b,
                        "mse losses {dtype:?} {rows}x{cols} {target:?} weighted {}",
                        importance.is_some()
                    );
                }
                if cols % 16 != 0 {
                    continue;
                }
                for numerics in [Numerics::ModeloptCpu, Numerics::ModeloptCuda] {
                    for global in [amax, amax * 1.7] {
                        let (a, b) = both(&pool, &w, dtype, |c| {
                            c.sweep_block_amax(0, cols, global, numerics, importance)
                                .unwrap()
                                .iter()
                                .map(|v| v.to_bits())
                                .collect::<Vec<_>>()
                        });
                        assert!(
                            a == b,
                            "sweep {dtype:?} {rows}x{cols} {numerics:?} weighted {}",
                            importance.is_some()
                        );
                    }
                }
            }
        }
    }
}

/// Random weights for the compressed-tensors kernels ([`weights`]: zero 16-blocks, E2M1 ties,
/// -0.0), with a zero row, a row of -0.0, a row of E4M3 ties under the scale 2^-8 (amax 1.75:
/// 8.5 → 8, 9.5 → 10 after the division) and, when the weight has a second 128-row band, an
/// all-zero 128x128 block.
fn ct_weights(dtype: SourceDtype, rows: usize, cols: usize, seed: u64, kind: usize) -> Vec<u8> {
    let mut w: Vec<f32> = weights(SourceDtype::F32, rows * cols, seed, kind)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let tie = 1.0f32 / 256.0;
    let ties = [
        1.75,
        8.5 * tie,
        9.5 * tie,
        -0.0,
        248.0 * tie,
        -232.0 * tie,
        -8.5 * tie,
        0.0,
    ];
    for r in 0..rows {
        for c in 0..cols {
            let v = &mut w[r * cols + c];
            match r % 7 {
                1 => *v = 0.0,
                2 => *v = -0.0,
                3 => *v = ties[c % ties.len()],
                _ => {}
            }
            if (128..256).contains(&r) && c < 128 {
                *v = 0.0;
            }
        }
    }
    w.iter()
        .flat_map(|&v| match dtype {
            SourceDtype::Bf16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
            SourceDtype::F16 => half::f16::from_f32(v.clamp(-60000.0, 60000.0))
                .to_le_bytes()
                .to_vec(),
            SourceDtype::F32 => v.to_le_bytes().to_vec(),
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "no CUDA driver on this machine (run with --include-ignored on a GPU machine)"
)]
fn ct_kernels_match_the_cpu_bit_for_bit() {
    use shardquant::compute::ct::{ct_fp8_block_grid, ct_fp8_scale, ct_global_scale};
    let Some(gpu) = gpu() else { return };
    // The small pool cannot hold the per-channel scales of narrow weights: those go to the CPU
    // twin (the same bytes by construction); the large one runs everything on the GPU.
    let pools = [
        GpuPool::new(gpu.clone(), 2, 8 << 20, 8 << 20).unwrap(),
        GpuPool::new(gpu, 1, 64 << 10, 0).unwrap(),
    ];
    // Ragged 128x128 edges in both directions, single rows and columns, an all-zero weight.
    let shapes = [
        (1usize, 16usize),
        (3, 32),
        (200, 130),
        (200, 144),
        (129, 129),
        (256, 256),
        (300, 1008),
        (5, 37),
        (1000, 16),
        (3000, 8),
        (1, 1),
    ];
    for dtype in [SourceDtype::Bf16, SourceDtype::F16, SourceDtype::F32] {
        for (k, &(rows, cols)) in shapes.iter().enumerate() {
            for zero in [false, true] {
                let w = if zero {
                    vec![0u8; rows * cols * dtype.size()]
                } else {
                    ct_weights(dtype, rows, cols, 5 + k as u64 * 17, k)
                };
                for pool in &pools {
                    if !pool.fits([w.len()]) {
                        continue;
                    }
                    let what = format!(
                        "{dtype:?} {rows}x{cols}{}",
                        if zero { " all zero" } else { "" }
                    );
                    let amax = shardquant::compute::amax(&w, dtype).unwrap();
                    if cols % 16 == 0 {
                        // The data's global scale, smaller and larger ones (block scales clamped
                        // at 448, elements at ±6), 1.0 (an all-zero group) and one that makes
                        // every block scale underflow to 0.125 (and every element to 0).
                        for g in [
                            ct_global_scale(amax),
                            ct_global_scale(amax * 0.37),
                            ct_global_scale(amax * 3.0),
                            1.0,
                            ct_global_scale(amax * 1e-3),
                            ct_global_scale(1e30),
                        ] {
                            let (a, b) = both(pool, &w, dtype, |c| {
                                let (mut p, mut s) = (
                                    vec![0xAAu8; rows * cols / 2],
                                    vec![0xAAu8; rows * cols / 16],
                                );
                                c.ct_nvfp4(0, rows, cols, g, &mut p, &mut s).unwrap();
                                (p, s)
                            });
                            assert!(a == b, "ct nvfp4 {what} g {g}");
                        }
                    }
                    // FP8 per tensor: the data's scale (from the amax kernel, as the export
                    // computes it), 2^-8 (the planted e4m3 ties), bf16 eps (an all-zero
                    // tensor's), and scales small enough to clamp at ±448 or large enough to
                    // make every element subnormal or zero.
                    for s in [
                        ct_fp8_scale(amax),
                        1.0 / 256.0,
                        0.007_812_5,
                        ct_fp8_scale(amax * 0.01),
                        ct_fp8_scale(amax * 1e4),
                    ] {
                        let (a, b) = both(pool, &w, dtype, |c| {
                            let amax = c.amax(0).unwrap().map(f32::to_bits);
                            let mut codes = vec![0x22u8; rows * cols];
                            c.ct_fp8_tensor(0, s, &mut codes).unwrap();
                            (amax, codes)
                        });
                        if a != b {
                            let first = (0..rows * cols).find(|&i| a.1[i] != b.1[i]);
                            panic!(
                                "ct fp8 per tensor {what} s {s:e}: amax {:?} / {:?}, first code \
                                 difference {first:?}",
                                a.0, b.0
                            );
                        }
                    }
                    for format in [QuantFormat::Fp8Dynamic, QuantFormat::Fp8Block] {
                        let scale_count = if format == QuantFormat::Fp8Block {
                            let (gr, gc) = ct_fp8_block_grid(rows, cols);
                            gr * gc
                        } else {
                            rows
                        };
                        let (a, b) = both(pool, &w, dtype, |c| {
                            let (mut codes, mut s) =
                                (vec![0x11u8; rows * cols], vec![0x11u8; scale_count * 2]);
                            c.ct_fp8(0, rows, cols, format, &mut codes, &mut s).unwrap();
                            (codes, s)
                        });
                        if a != b {
                            let first = (0..rows * cols).find(|&i| a.0[i] != b.0[i]);
                            let first_scale = (0..scale_count * 2).find(|&i| a.1[i] != b.1[i]);
                            panic!(
                                "ct {format:?} {what}: first code difference {first:?}, \
                                 first scale byte difference {first_scale:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "no CUDA driver on this machine (run with --include-ignored on a GPU machine)"
)]
fn ct_global_scale_matches_the_cpu() {
    use shardquant::compute::ct::ct_global_scale;
    let Some(gpu) = gpu() else { return };
    let pool = GpuPool::new(gpu, 1, 1 << 20, 1 << 20).unwrap();
    // Every non-negative bf16 value (amaxes of bf16 weights), then f32 edge cases: subnormals,
    // the 2^-126 floor, where the scale stops being finite, the largest finite, inf, NaN.
    let mut amax: Vec<f32> = (0u32..=0x7F80).map(|b| f32::from_bits(b << 16)).collect();
    amax.extend([
        -0.0,
        f32::from_bits(1),
        1e-40,
        7.9e-36,
        7.8e-36,
        1e-37,
        f32::MIN_POSITIVE,
        f32::MAX,
        f32::INFINITY,
        f32::NAN,
        -1.0,
        0.1,
        1.3125,
        2688.0,
    ]);
    let mut state = 12345u64;
    for _ in 0..100_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        amax.push(f32::from_bits((state >> 33) as u32 & 0x7FFF_FFFF));
    }
    let gpu_scales = pool.ct_global_scales(&amax).unwrap();
    assert_eq!(gpu_scales.len(), amax.len());
    for (a, g) in amax.iter().zip(&gpu_scales) {
        assert_eq!(
            ct_global_scale(*a).to_bits(),
            g.to_bits(),
            "global scale of amax {a:e} ({:#010x})",
            a.to_bits()
        );
    }
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "no CUDA driver on this machine (run with --include-ignored on a GPU machine)"
)]
fn fp8_block_dequantization_matches_the_cpu() {
    // An FP8 member loaded on the device (codes streamed up, dequantized there) against the
    // CPU's dequantization, through staging buffers larger and smaller than the weight.
    let Some(gpu) = gpu() else { return };
    let pools = [
        GpuPool::new(gpu.clone(), 1, 4 << 20, 4 << 20).unwrap(),
        GpuPool::new(gpu, 1, 4 << 20, 0).unwrap(),
    ];
    for (k, &(rows, cols)) in [(200usize, 144usize), (128, 128), (1, 16), (300, 1000)]
        .iter()
        .enumerate()
    {
        let mut state = 99 + k as u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // All FP8 codes, NaN ones included, and scales over a wide range.
        let fp8: Vec<u8> = (0..rows * cols).map(|_| next() as u8).collect();
        let (sr, sc) = shardquant::compute::scale_inv_shape(rows, cols);
        let scales: Vec<u8> = (0..sr * sc)
            .flat_map(|i| (2f32.powi((i % 30) as i32 - 20) * 1.3).to_le_bytes())
            .collect();
        for precision in [
            shardquant::compute::DequantPrecision::Bf16,
            shardquant::compute::DequantPrecision::F32,
        ] {
            let member = || {
                vec![MemberWeight::Fp8Block {
                    fp8: &fp8,
                    scale_inv: &scales,
                    rows,
                    cols,
                    precision,
                }]
            };
            let mut cpu = CpuCompute::default();
            cpu.load(member()).unwrap();
            let a = cpu.weight(0).unwrap();
            for pool in &pools {
                let mut gpu = pool.compute();
                gpu.load(member()).unwrap();
                let b = gpu.weight(0).unwrap();
                assert_eq!(a.len(), b.len());
                // NaN inputs (0x7F / 0xFF) stay NaN on both; compare everything else bit for bit.
                let size = precision.dtype().size();
                for (i, (x, y)) in a.chunks(size).zip(b.chunks(size)).enumerate() {
                    if fp8[i] & 0x7F != 0x7F {
                        assert_eq!(x, y, "{rows}x{cols} {precision:?} element {i}");
                    }
                }
            }
        }
    }
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "no CUDA driver on this machine (run with --include-ignored on a GPU machine)"
)]
fn fp8_sources_dequantized_on_the_device_quantize_like_the_cpu() {
    // FP8 members loaded as codes + block scales (dequantized on the device, where they stay)
    // beside a plain member: amax and NVFP4 of each must equal the CPU's, which dequantizes on
    // the host.
    let Some(gpu) = gpu() else { return };
    // Small staging buffers: the FP8 codes stream up in pieces.
    let pool = GpuPool::new(gpu, 1, 8 << 20, 16 << 10).unwrap();
    let shapes = [(200usize, 144usize), (256, 512), (1, 16)];
    let mut state = 7u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Finite FP8 codes only (0x7F / 0xFF are NaN).
    let codes: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&(r, c)| {
            (0..r * c)
                .map(|_| match next() as u8 {
                    0x7F | 0xFF => 0,
                    b => b,
                })
                .collect()
        })
        .collect();
    let scales: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&(r, c)| {
            let (sr, sc) = shardquant::compute::scale_inv_shape(r, c);
            (0..sr * sc)
                .flat_map(|i| (2f32.powi((i % 9) as i32 - 6) * 1.7).to_le_bytes())
                .collect()
        })
        .collect();
    let plain = weights(SourceDtype::Bf16, 64 * 64, 5, 1);
    for precision in [
        shardquant::compute::DequantPrecision::Bf16,
        shardquant::compute::DequantPrecision::F32,
    ] {
        let members = || {
            let mut m: Vec<MemberWeight> = shapes
                .iter()
                .zip(&codes)
                .zip(&scales)
                .map(|((&(rows, cols), fp8), scale_inv)| MemberWeight::Fp8Block {
                    fp8,
                    scale_inv,
                    rows,
                    cols,
                    precision,
                })
                .collect();
            m.insert(
                1,
                MemberWeight::Plain(Cow::Borrowed(&plain), SourceDtype::Bf16),
            );
            m
        };
        let mut cpu = CpuCompute::default();
        cpu.load(members()).unwrap();
        let mut gpu = pool.compute();
        gpu.load(members()).unwrap();
        let dims: Vec<(usize, usize)> = members()
            .iter()
            .map(|w| match w {
                MemberWeight::Fp8Block { rows, cols, .. } => (*rows, *cols),
                MemberWeight::Plain(..) => (64, 64),
            })
            .collect();
        for (m, &(rows, cols)) in dims.iter().enumerate() {
            let a = cpu.amax(m).unwrap().unwrap();
            let b = gpu.amax(m).unwrap().unwrap();
            assert_eq!(a.to_bits(), b.to_bits(), "amax of member {m} {precision:?}");
            let ws2 = shardquant::compute::nvfp4_global_scale(a.max(1e-3), Numerics::ModeloptCuda);
            let run = |c: &mut dyn UnitCompute| {
                let (mut p, mut s) = (vec![0u8; rows * cols / 2], vec![0u8; rows * cols / 16]);
                c.nvfp4(m, rows, cols, ws2, &mut p, &mut s).unwrap();
                (p, s)
            };
            assert!(
                run(&mut cpu) == run(&mut gpu),
                "nvfp4 of member {m} {precision:?}"
            );
        }
    }
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "no CUDA driver on this machine (run with --include-ignored on a GPU machine)"
)]
fn non_finite_weights_are_found_on_the_gpu_too() {
    let Some(gpu) = gpu() else { return };
    let pool = GpuPool::new(gpu, 1, 1 << 20, 1 << 20).unwrap();
    for (dtype, bad) in [
        (SourceDtype::Bf16, vec![0xC0u8, 0x7F]),
        (SourceDtype::F16, vec![0x00, 0x7C]),
        (SourceDtype::F32, vec![0, 0, 0x80, 0xFF]),
    ] {
        let mut w = weights(dtype, 4096, 9, 1);
        let at = 1234 * dtype.size();
        w[at..at + bad.len()].copy_from_slice(&bad);
        let (a, b) = both(&pool, &w, dtype, |c| c.amax(0).unwrap().map(f32::to_bits));
        assert_eq!(a, Err(1234));
        assert_eq!(a, b);
    }
}

fn convert(
    input: &std::path::Path,
    out: &std::path::Path,
    format: QuantFormat,
    numerics: Numerics,
    stats: Option<&std::path::Path>,
    device: DeviceChoice,
) {
    convert_calib(
        input,
        out,
        format,
        numerics,
        stats,
        device,
        CalibMethod::Max,
    );
}

fn convert_calib(
    input: &std::path::Path,
    out: &std::path::Path,
    format: QuantFormat,
    numerics: Numerics,
    stats: Option<&std::path::Path>,
    device: DeviceChoice,
    calib: CalibMethod,
) {
    let mut o = Options::new(format);
    o.output.calib = calib;
    o.output.numerics = numerics;
    o.stats = stats.map(|s| vec![s.to_path_buf()]).unwrap_or_default();
    o.run.quiet = true;
    o.run.device = device;
    o.run.threads = 4;
    shardquant::commands::convert::convert(input, out, &o).unwrap();
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "no CUDA driver on this machine (run with --include-ignored on a GPU machine)"
)]
fn golden_cases_convert_bit_exactly_on_the_gpu() {
    if gpu().is_none() {
        return;
    }
    let cases = [
        ("llama_nvfp4", QuantFormat::Nvfp4, Numerics::ModeloptCpu),
        ("llama_fp8", QuantFormat::Fp8, Numerics::ModeloptCpu),
        ("qwen3moe_nvfp4", QuantFormat::Nvfp4, Numerics::ModeloptCpu),
        ("mixtral_nvfp4", QuantFormat::Nvfp4, Numerics::ModeloptCpu),
        (
            "llama_nvfp4_gpu",
            QuantFormat::Nvfp4,
            Numerics::ModeloptCuda,
        ),
        ("llama_fp8_gpu", QuantFormat::Fp8, Numerics::ModeloptCuda),
    ];
    for (case, format, numerics) in cases {
        let dir = common::fixtures().join("golden").join(case);
        let tmp = common::TempDir::new(&format!("gpu-{case}"));
        convert(
            &dir.join("input"),
            &tmp.join("out"),
            format,
            numerics,
            Some(&dir.join("amax.safetensors")),
            DeviceChoice::Cuda(0),
        );
        common::assert_same_tensors(&tmp.join("out"), &dir.join("modelopt"));
    }
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "no CUDA driver on this machine (run with --include-ignored on a GPU machine)"
)]
fn synthetic_models_give_the_same_bytes_on_cpu_and_gpu() {
    if gpu().is_none() {
        return;
    }
    let tmp = common::TempDir::new("gpu-synth");
    let spec = shardquant::synthetic::SyntheticSpec {
        layers: 3,
        hidden: 256,
        experts: 8,
        moe_intermediate: 128,
        ..Default::default()
    };
    let input = tmp.join("in");
    spec.write(&input).unwrap();
    let amax = tmp.join("amax.safetensors");
    spec.write_amax(&amax).unwrap();
    for (format, calib) in [
        (QuantFormat::Nvfp4, CalibMethod::Max),
        (QuantFormat::Fp8, CalibMethod::Max),
        (QuantFormat::W4a16Nvfp4, CalibMethod::Max),
        (QuantFormat::Nvfp4, CalibMethod::Mse),
        (QuantFormat::Nvfp4, CalibMethod::MseFp8Sweep),
        (QuantFormat::Fp8, CalibMethod::Mse),
    ] {
        for numerics in [Numerics::ModeloptCuda, Numerics::ModeloptCpu] {
            let (a, b) = (tmp.join("cpu"), tmp.join("gpu"));
            let stats = Some(amax.as_path());
            convert_calib(
                &input,
                &a,
                format,
                numerics,
                stats,
                DeviceChoice::Cpu,
                calib,
            );
            convert_calib(
                &input,
                &b,
                format,
                numerics,
                stats,
                DeviceChoice::Cuda(0),
                calib,
            );
            common::assert_same_tensors(&b, &a);
            std::fs::remove_dir_all(&a).unwrap();
            std::fs::remove_dir_all(&b).unwrap();
        }
    }
}
