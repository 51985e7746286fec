//! The NVFP4 and FP8 kernels on random data against slow references written from the formulas
//! (f64 arithmetic rounded once to f32, which equals the f32 operation for one `+ - * /`;
//! reference codecs by exhaustive search; packing by element index).

use crate::compute::test_util::{e2m1_ref, e4m3_magnitude_ref, e4m3_ref, encode, round_ref, Rng};
use crate::compute::{
    amax, fp8_scale, nvfp4_global_scale, pack_nvfp4, quantize_fp8, quantize_nvfp4,
    quantize_nvfp4_static, Numerics, SourceDtype,
};

const SHAPES: [(usize, usize); 5] = [(1, 16), (3, 48), (17, 256), (64, 128), (5, 1024)];

/// The E2M1 ties of ModelOpt's rounding (golden/README.md).
const E2M1_TIES: [f32; 7] = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0];

/// One correctly rounded f32 operation, through f64.
fn f32_div(a: f32, b: f32) -> f32 {
    (f64::from(a) / f64::from(b)) as f32
}

fn f32_mul(a: f32, b: f32) -> f32 {
    (f64::from(a) * f64::from(b)) as f32
}

/// ModelOpt's `x / python_float`, from the definitions: CPU divides, CUDA multiplies by the
/// rounded reciprocal.
fn div_const_ref(x: f32, c: f32, numerics: Numerics) -> f32 {
    match numerics {
        Numerics::ModeloptCpu => f32_div(x, c),
        Numerics::ModeloptCuda => f32_mul(x, f32_div(1.0, c)),
    }
}

fn clamp_ref(s: f32) -> f32 {
    let min = 2f32.powi(-9);
    if s < min {
        min
    } else if s > 448.0 {
        448.0
    } else {
        s
    }
}

/// Random weight values (already values of `dtype`), block by block of different kinds.
/// With `tie_ws2` (a power of two), some blocks are built so that their scaled values land
/// exactly on E2M1 ties under that `weight_scale_2`.
fn random_weight(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    dtype: SourceDtype,
    tie_ws2: Option<f32>,
) -> Vec<f32> {
    let mut w = Vec::with_capacity(rows * cols);
    for _ in 0..rows * cols / 16 {
        let scale = rng.scale();
        let kind = rng.below(if tie_ws2.is_some() { 8 } else { 7 });
        let mut block: Vec<f32> = (0..16).map(|_| rng.normal() * scale).collect();
        match kind {
            3 => block.iter_mut().for_each(|v| *v = 0.0),
            4 => block.iter_mut().for_each(|v| *v *= 1e-6),
            5 => block[rng.below(16) as usize] *= 50.0,
            6 => {
                // Small negatives under one large value: many scaled values round to "-0" (0x8).
                block.iter_mut().for_each(|v| *v = -v.abs() * 0.01);
                block[rng.below(16) as usize] = scale;
            }
            7 => {
                // A normal E4M3 scale with exponent field 5..=14, so every value fits f16 too.
                let code = (5 + rng.below(10) as u8) << 3 | rng.below(8) as u8;
                let den = e4m3_magnitude_ref(code) as f32 * tie_ws2.unwrap();
                let choices = [
                    0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0,
                ];
                for v in block.iter_mut() {
                    let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
                    *v = sign * choices[rng.below(choices.len() as u64) as usize] * den;
                }
                block[rng.below(16) as usize] = 6.0 * den; // the block max: scale = code exactly
            }
            _ => {}
        }
        w.extend(block.into_iter().map(|v| round_ref(v, dtype)));
    }
    w
}

/// Packs nibbles by element index: element j of a row goes to byte j/2, low nibble if j even.
fn pack_ref(w: &[f32], cols: usize, scales: &[u8], ws2: f32, tie_hits: &mut usize) -> Vec<u8> {
    let mut packed = vec![0u8; w.len() / 2];
    for (i, x) in w.iter().enumerate() {
        let (r, j) = (i / cols, i % cols);
        let den = f32_mul(
            e4m3_magnitude_ref(scales[r * cols / 16 + j / 16]) as f32,
            ws2,
        );
        let q = f32_div(*x, den);
        *tie_hits += usize::from(E2M1_TIES.contains(&q.abs()));
        packed[i / 2] |= e2m1_ref(q) << (4 * (j % 2));
    }
    packed
}

/// Dynamic NVFP4 from golden/README.md "Formulas", element by element.
fn nvfp4_ref(w: &[f32], cols: usize, ws2: f32, tie_hits: &mut usize) -> (Vec<u8>, Vec<u8>) {
    let six_ws2 = f32_mul(6.0, ws2);
    let scales: Vec<u8> = w
        .chunks(16)
        .map(|block| {
            let block_max = block
                .iter()
                .map(|v| f64::from(*v).abs())
                .fold(0.0, f64::max) as f32;
            let s = f32_div(block_max, six_ws2);
            e4m3_ref(clamp_ref(if s == 0.0 { 1.0 } else { s }))
        })
        .collect();
    (pack_ref(w, cols, &scales, ws2, tie_hits), scales)
}

fn run_nvfp4(
    src: &[u8],
    dtype: SourceDtype,
    rows: usize,
    cols: usize,
    ws2: f32,
) -> (Vec<u8>, Vec<u8>) {
    let mut packed = vec![0xEEu8; rows * cols / 2];
    let mut scales = vec![0xEEu8; rows * cols / 16];
    quantize_nvfp4(src, dtype, rows, cols, ws2, &mut packed, &mut scales);
    (packed, scales)
}

#[test]
fn test_nvfp4_random_against_reference() {
    let mut rng = Rng::new(5);
    let mut tie_hits = 0;
    for dtype in SourceDtype::ALL {
        for (rows, cols) in SHAPES {
            let w = random_weight(&mut rng, rows, cols, dtype, None);
            let src = encode(&w, dtype);
            let weight_amax = amax(&src, dtype).unwrap();
            for numerics in Numerics::ALL {
                let ws2 = nvfp4_global_scale(weight_amax, numerics);
                assert_eq!(
                    ws2.to_bits(),
                    div_const_ref(weight_amax, 2688.0, numerics).to_bits()
                );
                let (packed, scales) = run_nvfp4(&src, dtype, rows, cols, ws2);
                let (want_packed, want_scales) = nvfp4_ref(&w, cols, ws2, &mut tie_hits);
                assert_eq!(
                    scales, want_scales,
                    "{dtype:?} [{rows},{cols}] {numerics:?} scales"
                );
                assert_eq!(
                    packed, want_packed,
                    "{dtype:?} [{rows},{cols}] {numerics:?} packed"
                );
                // pack_nvfp4 from the same scales gives the same bytes.
                let mut repacked = vec![0u8; packed.len()];
                pack_nvfp4(&src, dtype, rows, cols, ws2, &scales, &mut repacked);
                assert_eq!(repacked, packed);
            }
        }
    }
}

#[test]
fn test_nvfp4_planted_ties_against_reference() {
    let mut rng = Rng::new(6);
    let mut tie_hits = 0;
    for dtype in SourceDtype::ALL {
        for ws2 in [2f32.powi(-8), 2f32.powi(-4), 1.0] {
            for (rows, cols) in SHAPES {
                let w = random_weight(&mut rng, rows, cols, dtype, Some(ws2));
                let src = encode(&w, dtype);
                let (packed, scales) = run_nvfp4(&src, dtype, rows, cols, ws2);
                let (want_packed, want_scales) = nvfp4_ref(&w, cols, ws2, &mut tie_hits);
                assert_eq!(
                    scales, want_scales,
                    "{dtype:?} [{rows},{cols}] ws2 {ws2} scales"
                );
                assert_eq!(
                    packed, want_packed,
                    "{dtype:?} [{rows},{cols}] ws2 {ws2} packed"
                );
            }
        }
    }
    // The test is about ties: make sure it really saw many.
    assert!(tie_hits > 1000, "only {tie_hits} E2M1 ties were exercised");
}

#[test]
fn test_nvfp4_static_against_reference() {
    let mut rng = Rng::new(7);
    let mut tie_hits = 0;
    for dtype in SourceDtype::ALL {
        for (rows, cols) in SHAPES {
            let w = random_weight(&mut rng, rows, cols, dtype, None);
            let src = encode(&w, dtype);
            // Per-block amax as a sweep would pick them: the block max times a factor, some 0.
            let block_amax: Vec<f32> = w
                .chunks(16)
                .map(|block| {
                    let m = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    match rng.below(6) {
                        0 => 0.0,
                        1 => m,
                        _ => m * (0.3 + rng.unit() as f32),
                    }
                })
                .collect();
            let global_amax = block_amax.iter().fold(0.0f32, |m, v| m.max(*v)).max(1e-3);
            for numerics in Numerics::ALL {
                let mut packed = vec![0u8; rows * cols / 2];
                let mut scales = vec![0u8; rows * cols / 16];
                let ws2 = quantize_nvfp4_static(
                    &src,
                    dtype,
                    rows,
                    cols,
                    &block_amax,
                    global_amax,
                    numerics,
                    &mut packed,
                    &mut scales,
                );
                let want_ws2 = div_const_ref(global_amax, 2688.0, numerics);
                let scale_max = div_const_ref(global_amax, 6.0, numerics);
                let want_scales: Vec<u8> = block_amax
                    .iter()
                    .map(|a| {
                        let s = div_const_ref(*a, 6.0, numerics);
                        let s = if s == 0.0 { 1.0 } else { s };
                        e4m3_ref(clamp_ref(f32_div(f32_mul(s, 448.0), scale_max)))
                    })
                    .collect();
                assert_eq!(
                    ws2.to_bits(),
                    want_ws2.to_bits(),
                    "{dtype:?} {numerics:?} ws2"
                );
                assert_eq!(
                    scales, want_scales,
                    "{dtype:?} [{rows},{cols}] {numerics:?} scales"
                );
                let want_packed = pack_ref(&w, cols, &want_scales, want_ws2, &mut tie_hits);
                assert_eq!(
                    packed, want_packed,
                    "{dtype:?} [{rows},{cols}] {numerics:?} packed"
                );
            }
        }
    }
}

#[test]
fn test_static_numerics_differ_somewhere() {
    // The CUDA reciprocal must change some static block scale, or the numerics switch is
    // untested there. Search every f32 block amax in [1, 2) (g = 3) for bytes that differ by
    // the reference formula, then check the kernel on those and on agreeing values.
    let global_amax = 3.0f32;
    let scale_ref = |a: f32, numerics: Numerics| {
        let s = div_const_ref(a, 6.0, numerics);
        e4m3_ref(clamp_ref(f32_div(
            f32_mul(s, 448.0),
            div_const_ref(global_amax, 6.0, numerics),
        )))
    };
    let fast = |a: f32, numerics: Numerics| {
        let s = numerics.div_const(a, 6.0) * 448.0 / numerics.div_const(global_amax, 6.0);
        crate::compute::e4m3_from_f32(s)
    };
    let mut differing = Vec::new();
    for bits in 1.0f32.to_bits()..2.0f32.to_bits() {
        let a = f32::from_bits(bits);
        if fast(a, Numerics::ModeloptCpu) != fast(a, Numerics::ModeloptCuda) {
            differing.push(a);
        }
    }
    assert!(
        !differing.is_empty(),
        "cpu and cuda static scales never differ"
    );
    let agreeing = [1.0f32, 1.25, 1.5, 1.9];
    let src = encode(&[0.0; 16], SourceDtype::Bf16);
    for a in differing.iter().chain(&agreeing) {
        let cpu = scale_ref(*a, Numerics::ModeloptCpu);
        let cuda = scale_ref(*a, Numerics::ModeloptCuda);
        assert_eq!(cpu != cuda, differing.contains(a), "a = {a:e}");
        for (numerics, want) in [(Numerics::ModeloptCpu, cpu), (Numerics::ModeloptCuda, cuda)] {
            let mut scales = [0u8; 1];
            quantize_nvfp4_static(
                &src,
                SourceDtype::Bf16,
                1,
                16,
                &[*a],
                global_amax,
                numerics,
                &mut [0u8; 8],
                &mut scales,
            );
            assert_eq!(scales[0], want, "a = {a:e} {numerics:?}");
        }
    }
    eprintln!(
        "{} block amax values in [1, 2) give different static scales",
        differing.len()
    );
}

/// FP8 from golden/README.md "FP8" and "Two numerics", element by element.
fn fp8_ref(w: &[f32], dtype: SourceDtype, weight_scale: f32, numerics: Numerics) -> Vec<u8> {
    let divisor = match numerics {
        Numerics::ModeloptCpu => weight_scale,
        Numerics::ModeloptCuda => round_ref(weight_scale, dtype),
    };
    w.iter()
        .map(|x| e4m3_ref(round_ref(f32_div(*x, divisor), dtype)))
        .collect()
}

#[test]
fn test_fp8_random_against_reference() {
    let mut rng = Rng::new(8);
    let mut cpu_cuda_differ = 0;
    for dtype in SourceDtype::ALL {
        for (rows, cols) in SHAPES {
            let w = random_weight(&mut rng, rows, cols, dtype, None);
            let src = encode(&w, dtype);
            let weight_amax = amax(&src, dtype).unwrap();
            for numerics in Numerics::ALL {
                let weight_scale = fp8_scale(weight_amax, numerics);
                assert_eq!(
                    weight_scale.to_bits(),
                    div_const_ref(weight_amax, 448.0, numerics).to_bits()
                );
                let mut out = vec![0xEEu8; w.len()];
                quantize_fp8(
                    &src,
                    dtype,
                    weight_scale,
                    numerics,
                    crate::compute::Fp8Quotient::WeightDtype,
                    &mut out,
                );
                assert_eq!(
                    out,
                    fp8_ref(&w, dtype, weight_scale, numerics),
                    "{dtype:?} [{rows},{cols}] {numerics:?}"
                );
                // No NaN from amax-derived scales: |w| / scale <= 448 (+ rounding) never passes 464.
                assert!(
                    out.iter().all(|b| b & 0x7F != 0x7F),
                    "{dtype:?} {numerics:?} produced NaN"
                );
            }
            // Same weight_scale for both numerics: only the divisor rounding differs.
            let weight_scale = fp8_scale(weight_amax, Numerics::ModeloptCpu);
            let mut cpu = vec![0u8; w.len()];
            let mut cuda = vec![0u8; w.len()];
            quantize_fp8(
                &src,
                dtype,
                weight_scale,
                Numerics::ModeloptCpu,
                crate::compute::Fp8Quotient::WeightDtype,
                &mut cpu,
            );
            quantize_fp8(
                &src,
                dtype,
                weight_scale,
                Numerics::ModeloptCuda,
                crate::compute::Fp8Quotient::WeightDtype,
                &mut cuda,
            );
            assert_eq!(
                cuda,
                fp8_ref(&w, dtype, weight_scale, Numerics::ModeloptCuda)
            );
            let differ = cpu.iter().zip(&cuda).filter(|(a, b)| a != b).count();
            if dtype == SourceDtype::F32 {
                assert_eq!(differ, 0, "f32 weights have no divisor rounding");
            }
            cpu_cuda_differ += differ;
        }
    }
    assert!(
        cpu_cuda_differ > 0,
        "the CUDA divisor rounding never changed a byte"
    );
}

/// The f32 values within `ulps` steps of the positive `center`.
fn around(center: f32, ulps: u32) -> impl Iterator<Item = f32> {
    let bits = center.to_bits();
    (bits - ulps..=bits + ulps).map(f32::from_bits)
}

/// The E4M3 midpoints (ties) between adjacent normal codes, as f32.
fn e4m3_ties() -> Vec<f32> {
    (0x08u8..0x7E)
        .map(|code| ((e4m3_magnitude_ref(code) + e4m3_magnitude_ref(code + 1)) / 2.0) as f32)
        .collect()
}

#[test]
fn test_dynamic_block_scale_divides_by_rounded_six_ws2() {
    // ModelOpt divides the block max by the f32 tensor `6 * ws2`; dividing by 6 and then by ws2
    // rounds twice. Find block maxima (f32 weights) near E4M3 ties where the two differ and check
    // the kernel follows the documented one.
    let mut rng = Rng::new(9);
    let mut differing = 0;
    for _ in 0..20 {
        let ws2 = nvfp4_global_scale(rng.f32_with_exponent(120, 130).abs(), Numerics::ModeloptCpu);
        let six_ws2 = f32_mul(6.0, ws2);
        for tie in e4m3_ties() {
            for block_max in around(f32_mul(tie, six_ws2), 8) {
                let documented = e4m3_ref(clamp_ref(f32_div(block_max, six_ws2)));
                let alternative = e4m3_ref(clamp_ref(f32_div(f32_div(block_max, 6.0), ws2)));
                if documented == alternative {
                    continue;
                }
                differing += 1;
                let mut w = [0.0f32; 16];
                w[3] = -block_max;
                let (_, scales) =
                    run_nvfp4(&encode(&w, SourceDtype::F32), SourceDtype::F32, 1, 16, ws2);
                assert_eq!(scales[0], documented, "block max {block_max:e} ws2 {ws2:e}");
            }
        }
    }
    assert!(differing > 0, "no block max distinguishes the two formulas");
}

#[test]
fn test_static_block_scale_multiplies_before_dividing() {
    // golden/README.md: s = (s * 448) / (g / 6), product first. s * (448 / (g / 6)) differs near
    // E4M3 ties; check the kernel follows the documented order in both numerics.
    let mut rng = Rng::new(10);
    let mut differing = 0;
    for numerics in Numerics::ALL {
        for _ in 0..20 {
            let global_amax = rng.f32_with_exponent(124, 130).abs();
            let scale_max = div_const_ref(global_amax, 6.0, numerics);
            for tie in e4m3_ties() {
                let center = f32_div(f32_mul(tie, global_amax), 448.0);
                for block_amax in around(center, 8) {
                    let s = div_const_ref(block_amax, 6.0, numerics);
                    let documented = e4m3_ref(clamp_ref(f32_div(f32_mul(s, 448.0), scale_max)));
                    let alternative = e4m3_ref(clamp_ref(f32_mul(s, f32_div(448.0, scale_max))));
                    if documented == alternative {
                        continue;
                    }
                    differing += 1;
                    let mut scales = [0u8; 1];
                    let src = encode(&[0.0; 16], SourceDtype::Bf16);
                    quantize_nvfp4_static(
                        &src,
                        SourceDtype::Bf16,
                        1,
                        16,
                        &[block_amax],
                        global_amax,
                        numerics,
                        &mut [0u8; 8],
                        &mut scales,
                    );
                    assert_eq!(
                        scales[0], documented,
                        "a {block_amax:e} g {global_amax:e} {numerics:?}"
                    );
                }
            }
        }
    }
    assert!(
        differing > 0,
        "no block amax distinguishes the two formulas"
    );
}
