//! compressed-tensors' weight arithmetic (llm-compressor 0.14.0.1 `model_free_ptq` on the CPU,
//! compressed-tensors 0.19.0; `oneshot` for the static schemes): NVFP4 with a divisor-form
//! global scale, and FP8 per tensor, per channel or per 128x128 block with bf16 scales.
//!
//! Every formula was verified against llm-compressor's bytes (`fixtures/ct/verify_ct.py`, a numpy
//! port that rebuilds the fixtures byte for byte; this is a port of its arithmetic). Notation:
//! `bf16(x)` rounds an f32 to the nearest bf16, ties to even ([`bf16_round`]); all other
//! arithmetic is IEEE f32 (no FMA); `e4m3` is [`e4m3_from_f32`] (ties to even, sign kept, so
//! `-0.0 → 0x80`); `e2m1` is [`e2m1_nibble`] (`-0.0 → 0x0`, small negatives `0x8`).
//!
//! The kernels read the weight's stored values (exact in f32). compressed-tensors writes FP8
//! scales in the weight's dtype; the export plans only BF16 weights, whose scales are BF16.

use crate::compute::codec::{bf16_round, e2m1_nibble, e4m3_from_f32, e4m3_to_f32};
use crate::compute::numerics::{load_f32_into, SourceDtype};

/// NVFP4 elements per block scale.
const NVFP4_BLOCK: usize = 16;
/// FP8_BLOCK's block edge (rows and columns).
pub const CT_FP8_BLOCK: usize = 128;
/// `torch.finfo(torch.bfloat16).tiny`, the floor of the global scale's amax.
const BF16_TINY: f32 = f32::MIN_POSITIVE; // 2^-126
/// `torch.finfo(torch.bfloat16).eps`, the FP8 scale that replaces a zero one.
const BF16_EPS: f32 = 0.007_812_5; // 2^-7
/// E4M3 code of 0.125, the NVFP4 block scale that replaces a zero (or underflowed) one.
const E4M3_EIGHTH: u8 = 0x20;

/// compressed-tensors' NVFP4 global scale (`weight_global_scale`, a divisor) of a weight amax
/// `A` (`generate_gparam`: torch evaluates `2688.0 / t` as `t.reciprocal() * 2688.0` in bf16):
///
/// `g = bf16(f32(bf16(1 / max(A, 2^-126))) · 2688)`; `g = 1.0` when that is not finite
/// (`A ≤ 7.9e-36`, an all-zero weight included). Stored as f32; always a bf16 value.
/// Two roundings: not `bf16(2688 / A)` (27 % of bf16 amaxes in [1e-3, 1e3] differ).
pub fn ct_global_scale(amax: f32) -> f32 {
    let a = amax.max(BF16_TINY);
    let r = bf16_round(1.0 / a);
    let g = bf16_round(r * 2688.0);
    if g.is_finite() {
        g
    } else {
        1.0
    }
}

/// An amax whose compressed-tensors global scale ([`ct_global_scale`]) is `g`: `2688 / g` in
/// f32, checked through the formula. The formula has no exact inverse (two bf16 roundings), but
/// this preimage gives `g` back for the global scale of every bf16 amax from 2^-126 to 2^100
/// (tested), so an exported `input_global_scale` read back as statistics is written again
/// unchanged. `None` when it does not (`g` not a value the formula gives).
pub fn ct_amax_for_global_scale(g: f32) -> Option<f32> {
    let amax = 2688.0 / g;
    (g > 0.0 && amax.is_finite() && ct_global_scale(amax) == g).then_some(amax)
}

/// compressed-tensors NVFP4 (`nvfp4-pack-quantized`) of a row-major weight `[rows, cols]` in
/// `src` (little-endian `dtype` elements) under the global scale `g` ([`ct_global_scale`] of
/// the fused group's amax).
///
/// Per row and block `b` of 16 columns, `m` = the block's max |w|:
/// `s = min(g · bf16(m / 6), 448)` (f32 product); `c = e4m3(s)`, and `c = 0x20` (0.125) when it
/// is 0x00 (a zero block, or `s ≤ 2^-10`): `scales[r, b] = c`. Then `d = e4m3_value(c) / g`
/// (f32 division, once per block) and each element is `e2m1(clamp(w / d, -6, 6))`, packed two
/// per byte, the even column in the low nibble: `packed[r, j/2]`.
///
/// Panics if `cols` is not a multiple of 16 or a buffer length does not match.
pub fn quantize_nvfp4_ct(
    src: &[u8],
    dtype: SourceDtype,
    rows: usize,
    cols: usize,
    g: f32,
    packed: &mut [u8],
    scales: &mut [u8],
) {
    assert_eq!(cols % NVFP4_BLOCK, 0, "cols {cols} is not a multiple of 16");
    assert_eq!(src.len(), rows * cols * dtype.size());
    assert_eq!(packed.len(), rows * cols / 2);
    assert_eq!(scales.len(), rows * cols / NVFP4_BLOCK);
    let row_bytes = cols * dtype.size();
    let blocks = cols / NVFP4_BLOCK;
    let mut row = vec![0.0f32; cols];
    for r in 0..rows {
        load_f32_into(&src[r * row_bytes..(r + 1) * row_bytes], dtype, &mut row);
        for b in 0..blocks {
            let block = &row[b * NVFP4_BLOCK..(b + 1) * NVFP4_BLOCK];
            let m = block.iter().fold(0.0f32, |a, &w| a.max(w.abs()));
            let s = (g * bf16_round(m / 6.0)).min(448.0);
            let mut c = e4m3_from_f32(s);
            if c == 0 {
                c = E4M3_EIGHTH;
            }
            scales[r * blocks + b] = c;
            let d = e4m3_to_f32(c) / g;
            let out = &mut packed[(r * cols + b * NVFP4_BLOCK) / 2..][..NVFP4_BLOCK / 2];
            for (o, pair) in out.iter_mut().zip(block.chunks_exact(2)) {
                let lo = e2m1_nibble((pair[0] / d).clamp(-6.0, 6.0));
                let hi = e2m1_nibble((pair[1] / d).clamp(-6.0, 6.0));
                *o = lo | (hi << 4);
            }
        }
    }
}

/// compressed-tensors' FP8 scale of a group with max |w| = `m`: `s = bf16(m / 448)`, and
/// `s = 2^-7` (bf16 eps) when that is 0.
pub fn ct_fp8_scale(m: f32) -> f32 {
    let s = bf16_round(m / 448.0);
    if s == 0.0 {
        BF16_EPS
    } else {
        s
    }
}

/// One FP8 element under the bf16 scale `s`: `e4m3(clamp(bf16(w / s), -448, 448))` (bf16 ÷
/// bf16 in torch: one f32 division, then a rounding to bf16, then the cast: double rounding).
#[inline]
pub fn ct_fp8_element(w: f32, s: f32) -> u8 {
    e4m3_from_f32(bf16_round(w / s).clamp(-448.0, 448.0))
}

/// compressed-tensors FP8 per channel (`FP8_DYNAMIC` weights) of a row-major `[rows, cols]`
/// weight: per row `r`, `s = ct_fp8_scale(max |w[r, :]|)` ([`ct_fp8_scale`]), written as
/// little-endian bf16 to `scales[r]` (`[rows, 1]`), and `codes[r, j] = ct_fp8_element(w, s)`.
pub fn quantize_fp8_channel_ct(
    src: &[u8],
    dtype: SourceDtype,
    rows: usize,
    cols: usize,
    codes: &mut [u8],
    scales: &mut [u8],
) {
    assert_eq!(src.len(), rows * cols * dtype.size());
    assert_eq!(codes.len(), rows * cols);
    assert_eq!(scales.len(), rows * 2);
    let row_bytes = cols * dtype.size();
    let mut row = vec![0.0f32; cols];
    for r in 0..rows {
        load_f32_into(&src[r * row_bytes..(r + 1) * row_bytes], dtype, &mut row);
        let s = ct_fp8_scale(row.iter().fold(0.0f32, |a, &w| a.max(w.abs())));
        scales[r * 2..r * 2 + 2].copy_from_slice(&bf16_bytes(s));
        for (c, &w) in codes[r * cols..(r + 1) * cols].iter_mut().zip(&row) {
            *c = ct_fp8_element(w, s);
        }
    }
}

/// compressed-tensors FP8 per tensor (`FP8` weights, static W8A8) of a weight in `src` under its
/// one bf16 scale `s` (`ct_fp8_scale` of the tensor's max |w|, [`ct_fp8_scale`]):
/// `codes[i] = ct_fp8_element(w_i, s)`, the element rule of the per-channel and per-block
/// variants ([`ct_fp8_element`]). The caller computes the tensor's amax (the unit's amax
/// kernel, on either device) and writes `s` as the `[1]` bf16 `weight_scale`.
///
/// Panics if `src` does not hold exactly `codes.len()` elements.
pub fn quantize_fp8_tensor_ct(src: &[u8], dtype: SourceDtype, s: f32, codes: &mut [u8]) {
    assert_eq!(src.len(), codes.len() * dtype.size());
    const CHUNK: usize = 4096;
    let mut buf = vec![0.0f32; CHUNK];
    for (out, chunk) in codes
        .chunks_mut(CHUNK)
        .zip(src.chunks(CHUNK * dtype.size()))
    {
        let w = &mut buf[..out.len()];
        load_f32_into(chunk, dtype, w);
        for (c, &x) in out.iter_mut().zip(w.iter()) {
            *c = ct_fp8_element(x, s);
        }
    }
}

/// The shape of FP8_BLOCK's scale tensor for a weight `[rows, cols]`:
/// `[ceil(rows / 128), ceil(cols / 128)]`.
pub fn ct_fp8_block_grid(rows: usize, cols: usize) -> (usize, usize) {
    (rows.div_ceil(CT_FP8_BLOCK), cols.div_ceil(CT_FP8_BLOCK))
}

/// compressed-tensors FP8 per 128x128 block (`FP8_BLOCK` weights) of a row-major `[rows, cols]`
/// weight: block `(R, C)` covers rows `128R..`, columns `128C..` (cut at the edges: a ragged
/// block's amax is over its real elements, as llm-compressor's zero padding leaves it);
/// `s = ct_fp8_scale(max |w| over the block)`, written as little-endian bf16 to
/// `scales[R, C]` (row-major [`ct_fp8_block_grid`]), and every element of the block is
/// `ct_fp8_element(w, s)`.
pub fn quantize_fp8_block_ct(
    src: &[u8],
    dtype: SourceDtype,
    rows: usize,
    cols: usize,
    codes: &mut [u8],
    scales: &mut [u8],
) {
    let (gr, gc) = ct_fp8_block_grid(rows, cols);
    assert_eq!(src.len(), rows * cols * dtype.size());
    assert_eq!(codes.len(), rows * cols);
    assert_eq!(scales.len(), gr * gc * 2);
    let row_bytes = cols * dtype.size();
    let mut band = vec![0.0f32; CT_FP8_BLOCK * cols];
    for br in 0..gr {
        let r0 = br * CT_FP8_BLOCK;
        let n = CT_FP8_BLOCK.min(rows - r0);
        let band = &mut band[..n * cols];
        load_f32_into(&src[r0 * row_bytes..(r0 + n) * row_bytes], dtype, band);
        for bc in 0..gc {
            let c0 = bc * CT_FP8_BLOCK;
            let c1 = (c0 + CT_FP8_BLOCK).min(cols);
            let m = (0..n)
                .flat_map(|r| &band[r * cols + c0..r * cols + c1])
                .fold(0.0f32, |a, &w| a.max(w.abs()));
            let s = ct_fp8_scale(m);
            let at = (br * gc + bc) * 2;
            scales[at..at + 2].copy_from_slice(&bf16_bytes(s));
            for r in 0..n {
                let out = &mut codes[(r0 + r) * cols + c0..(r0 + r) * cols + c1];
                for (c, &w) in out.iter_mut().zip(&band[r * cols + c0..r * cols + c1]) {
                    *c = ct_fp8_element(w, s);
                }
            }
        }
    }
}

/// The little-endian bf16 bytes of `x`, which must already be a bf16 value (compressed-tensors'
/// scales of BF16 weights are stored in bf16).
pub fn bf16_bytes(x: f32) -> [u8; 2] {
    debug_assert_eq!(bf16_round(x).to_bits(), x.to_bits());
    ((x.to_bits() >> 16) as u16).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_src(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| ((bf16_round(v).to_bits() >> 16) as u16).to_le_bytes())
            .collect()
    }

    #[test]
    fn global_scale_is_two_bf16_roundings() {
        // Values seen in the fixtures (SPEC §5).
        assert_eq!(ct_global_scale(1.3125), 2048.0);
        assert_eq!(ct_global_scale(0.0), 1.0);
        assert_eq!(ct_global_scale(1e-37), 1.0);
        // 2688 / 1.75 = 1536 exactly: both forms agree.
        assert_eq!(ct_global_scale(1.75), 1536.0);
        // A value where one rounding and two differ: search the bf16 grid for one.
        let mut differs = 0;
        for bits in (0x3A80u32..0x4480).map(|b| f32::from_bits(b << 16)) {
            let g = ct_global_scale(bits);
            assert_eq!(bf16_round(g), g);
            if g != bf16_round(2688.0 / bits) {
                differs += 1;
            }
        }
        assert!(differs > 0);
    }

    #[test]
    fn every_global_scale_has_an_amax_that_gives_it_back() {
        // Over the global scales of every bf16 amax from 2^-126 to 2^100 (no activation is
        // larger; beyond, 2688 / g leaves f32's range), the fallback 1.0 included.
        let mut seen = std::collections::BTreeSet::new();
        for bits in 0x0080u32..0x7180 {
            let g = ct_global_scale(f32::from_bits(bits << 16));
            if seen.insert(g.to_bits()) {
                let a = ct_amax_for_global_scale(g).unwrap_or_else(|| panic!("g {g}"));
                assert_eq!(ct_global_scale(a), g, "g {g}: amax {a}");
            }
        }
        assert!(seen.len() > 1000);
        // oneshot's (fixtures/ct/llama128_nvfp4_oneshot.amax.safetensors has the same value).
        assert_eq!(ct_amax_for_global_scale(540.0), Some(2688.0 / 540.0));
        assert_eq!(ct_amax_for_global_scale(0.0), None);
        assert_eq!(ct_amax_for_global_scale(f32::NAN), None);
    }

    #[test]
    fn nvfp4_zero_block_gets_an_eighth_and_negative_zero_a_plus_code() {
        // Row: block 0 all zero (with -0.0), block 1 = planted ties.
        let mut w = vec![0.0f32; 32];
        w[1] = -0.0;
        // g for amax 6: bf16(1/6) = 0.1669921875; * 2688 = 448.875 -> bf16 448.0
        let g = ct_global_scale(6.0);
        assert_eq!(g, 448.0);
        for (j, v) in [6.0, -6.0, 0.25, -0.25, 0.75, 2.5, 5.0, -1e-3]
            .into_iter()
            .enumerate()
        {
            w[16 + j] = v;
        }
        let src = bf16_src(&w);
        let (mut packed, mut scales) = (vec![0u8; 16], vec![0u8; 2]);
        quantize_nvfp4_ct(&src, SourceDtype::Bf16, 1, 32, g, &mut packed, &mut scales);
        assert_eq!(scales[0], 0x20);
        assert_eq!(&packed[..8], &[0u8; 8]); // -0.0 -> 0x0, not 0x8
                                             // block 1: s = min(448 * bf16(6/6), 448) = 448 -> 0x7E, d = 448/448.
        assert_eq!(scales[1], 0x7E);
        let d = 1.0f32;
        let expect: Vec<u8> = w[16..]
            .chunks_exact(2)
            .map(|p| {
                e2m1_nibble((p[0] / d).clamp(-6.0, 6.0))
                    | (e2m1_nibble((p[1] / d).clamp(-6.0, 6.0)) << 4)
            })
            .collect();
        assert_eq!(&packed[8..], &expect[..]);
        // A tiny negative rounds to magnitude 0 but keeps the sign: 0x8.
        assert_eq!(packed[11] >> 4, 0x8);
    }

    #[test]
    fn nvfp4_underflowing_block_scale_becomes_an_eighth() {
        // g = 1.0 (amax 2688) and a block of 1e-3: s = bf16(1e-3/6) ≈ 1.67e-4 < 2^-10.
        let g = ct_global_scale(2688.0);
        assert_eq!(g, 1.0);
        let src = bf16_src(&[1e-3f32; 16]);
        let (mut packed, mut scales) = (vec![0u8; 8], vec![0u8; 1]);
        quantize_nvfp4_ct(&src, SourceDtype::Bf16, 1, 16, g, &mut packed, &mut scales);
        assert_eq!(scales[0], 0x20);
        assert_eq!(packed, vec![0u8; 8]);
    }

    #[test]
    fn fp8_channel_ties_zero_rows_and_negative_zero() {
        // Row 0: scale 2^-8 (amax 448 * 2^-8 = 1.75) with e4m3 ties 8.5 -> 8, 9.5 -> 10.
        let s = 1.0f32 / 256.0;
        let row0 = [1.75, 8.5 * s, 9.5 * s, -0.0, 248.0 * s, 232.0 * s, 0.0, 0.0];
        let row1 = [0.0f32; 8];
        let row2 = [-0.0f32; 8];
        let src = bf16_src(&[row0, row1, row2].concat());
        let (mut codes, mut scales) = (vec![0u8; 24], vec![0u8; 6]);
        quantize_fp8_channel_ct(&src, SourceDtype::Bf16, 3, 8, &mut codes, &mut scales);
        assert_eq!(&scales, &[0x80, 0x3B, 0x00, 0x3C, 0x00, 0x3C]); // 2^-8, 2^-7, 2^-7
        assert_eq!(codes[0], 0x7E);
        assert_eq!(codes[1], e4m3_from_f32(8.0));
        assert_eq!(codes[2], e4m3_from_f32(10.0));
        assert_eq!(codes[3], 0x80);
        assert_eq!(codes[4], e4m3_from_f32(256.0));
        assert_eq!(codes[5], e4m3_from_f32(224.0));
        assert_eq!(&codes[8..16], &[0u8; 8]);
        assert_eq!(&codes[16..], &[0x80u8; 8]);
    }

    #[test]
    fn fp8_tensor_uses_the_element_rule_of_the_other_granularities() {
        // One scale for everything: ties at 2^-8, -0.0, a zero, and values beyond 448·s that
        // clamp (a scale smaller than the data's, as a caller could pass).
        let s = 1.0f32 / 256.0;
        let w: Vec<f32> = (0..5000)
            .map(|i| match i % 7 {
                0 => 8.5 * s,
                1 => 9.5 * s,
                2 => -0.0,
                3 => 0.0,
                4 => 500.0 * s,
                5 => -1e-9,
                _ => (i as f32 * 0.37).sin() * 1.75,
            })
            .collect();
        let src = bf16_src(&w);
        let mut codes = vec![0u8; w.len()];
        quantize_fp8_tensor_ct(&src, SourceDtype::Bf16, s, &mut codes);
        for (i, (&c, &x)) in codes.iter().zip(&w).enumerate() {
            assert_eq!(c, ct_fp8_element(bf16_round(x), s), "[{i}]");
        }
        assert_eq!(
            &codes[..6],
            &[
                e4m3_from_f32(8.0),
                e4m3_from_f32(10.0),
                0x80,
                0x00,
                0x7E,
                0x80
            ]
        );
        // The scale of an all-zero tensor is bf16 eps; of amax 1.75, 2^-8.
        assert_eq!(ct_fp8_scale(0.0), BF16_EPS);
        assert_eq!(ct_fp8_scale(1.75), s);
    }

    #[test]
    fn fp8_block_ragged_edges_and_zero_blocks() {
        // [200, 130]: grid 2 x 2; block (1, 0) all zero; block (0, 1) is 128 x 2.
        let (rows, cols) = (200, 130);
        let mut w = vec![0.0f32; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                if !(r >= 128 && c < 128) {
                    w[r * cols + c] = ((r * 7 + c * 13) % 29) as f32 / 16.0 - 0.9;
                }
            }
        }
        w[5 * cols + 129] = 3.5; // amax of block (0, 1)
        let src = bf16_src(&w);
        let (gr, gc) = ct_fp8_block_grid(rows, cols);
        assert_eq!((gr, gc), (2, 2));
        let (mut codes, mut scales) = (vec![0u8; rows * cols], vec![0u8; gr * gc * 2]);
        quantize_fp8_block_ct(&src, SourceDtype::Bf16, rows, cols, &mut codes, &mut scales);
        let scale = |i: usize| {
            f32::from_bits(u32::from(u16::from_le_bytes([scales[2 * i], scales[2 * i + 1]])) << 16)
        };
        assert_eq!(scale(1), bf16_round(3.5 / 448.0));
        assert_eq!(scale(2), BF16_EPS);
        // Against a direct per-element evaluation with the block's amax.
        for r in 0..rows {
            for c in 0..cols {
                let (br, bc) = (r / 128, c / 128);
                let mut m = 0.0f32;
                for rr in br * 128..((br + 1) * 128).min(rows) {
                    for cc in bc * 128..((bc + 1) * 128).min(cols) {
                        m = m.max(bf16_round(w[rr * cols + cc]).abs());
                    }
                }
                let s = ct_fp8_scale(m);
                assert_eq!(scale(br * gc + bc), s);
                assert_eq!(
                    codes[r * cols + c],
                    ct_fp8_element(bf16_round(w[r * cols + c]), s),
                    "[{r}, {c}]"
                );
            }
        }
    }
}
