//! Dequantization of FP8 block-scaled source weights (DeepSeek-V3/R1, Kimi-K2, Qwen3-FP8):
//! `y[i, j] = f32(fp8[i, j]) * scale_inv[i / 128, j / 128]` (an f32 product), stored in the
//! intermediate precision: BF16 by default, as ModelOpt's DeepSeek calibration saw the weights
//! (`weight_dequant(..., dtype=bfloat16)`), or F32 (its conversion script at HEAD).

use super::codec::{bf16_round, e4m3_to_f32};
use super::SourceDtype;

/// Side of the square scale blocks.
pub const FP8_BLOCK: usize = 128;

/// Precision of the dequantized weight (`--fp8-dequant`; its values are the `clap::ValueEnum`
/// names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DequantPrecision {
    /// Round each product to BF16 (ModelOpt's DeepSeek calibration path; the default).
    Bf16,
    /// Keep the f32 product.
    F32,
}

impl DequantPrecision {
    /// The element type of the dequantized weight.
    pub fn dtype(self) -> SourceDtype {
        match self {
            DequantPrecision::Bf16 => SourceDtype::Bf16,
            DequantPrecision::F32 => SourceDtype::F32,
        }
    }
}

/// Shape of the `weight_scale_inv` of a `[rows, cols]` weight: `[ceil(rows/128), ceil(cols/128)]`.
pub fn scale_inv_shape(rows: usize, cols: usize) -> (usize, usize) {
    (rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK))
}

/// The block-scale grid of an FP8 weight `[rows, cols]`, after checking that `fp8` and
/// `scale_inv` hold what that shape needs (the plan checked the tensors' shapes: a mismatch here
/// is a bug, hence a panic).
fn checked_scale_shape(fp8: &[u8], scale_inv: &[u8], rows: usize, cols: usize) -> (usize, usize) {
    let (srows, scols) = scale_inv_shape(rows, cols);
    assert_eq!(fp8.len(), rows * cols, "fp8 must hold rows*cols bytes");
    assert_eq!(
        scale_inv.len(),
        srows * scols * 4,
        "scale_inv must hold [ceil(rows/128), ceil(cols/128)] f32"
    );
    (srows, scols)
}

/// Dequantizes a row-major FP8 E4M3 weight `[rows, cols]` with its f32 `scale_inv` (little-endian
/// bytes, shape [`scale_inv_shape`]; partial edge blocks use their block's scale) into `out`
/// (little-endian BF16 or F32 bytes per `precision`).
pub fn dequantize_fp8_block(
    fp8: &[u8],
    scale_inv: &[u8],
    rows: usize,
    cols: usize,
    precision: DequantPrecision,
    out: &mut [u8],
) {
    let (_, scols) = checked_scale_shape(fp8, scale_inv, rows, cols);
    let size = precision.dtype().size();
    assert_eq!(
        out.len(),
        rows * cols * size,
        "out must hold rows*cols elements"
    );
    if rows == 0 || cols == 0 {
        return;
    }
    // Every E4M3 code's value, once: the loops below are a lookup, one f32 product and a
    // rounding per element (the same operations, element for element, as decoding each code).
    let mut value = [0f32; 256];
    for (b, v) in value.iter_mut().enumerate() {
        *v = e4m3_to_f32(b as u8);
    }
    for (r, (codes, row_out)) in fp8
        .chunks_exact(cols)
        .zip(out.chunks_exact_mut(cols * size))
        .enumerate()
    {
        let scales = &scale_inv[4 * (r / FP8_BLOCK) * scols..4 * (r / FP8_BLOCK + 1) * scols];
        for (cb, s) in scales.chunks_exact(4).enumerate() {
            let s = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            let (c0, c1) = (cb * FP8_BLOCK, ((cb + 1) * FP8_BLOCK).min(cols));
            let codes = &codes[c0..c1];
            let dst = &mut row_out[c0 * size..c1 * size];
            match precision {
                DequantPrecision::Bf16 => {
                    for (&b, o) in codes.iter().zip(dst.chunks_exact_mut(2)) {
                        let bits = (bf16_round(value[b as usize] * s).to_bits() >> 16) as u16;
                        o.copy_from_slice(&bits.to_le_bytes());
                    }
                }
                DequantPrecision::F32 => {
                    for (&b, o) in codes.iter().zip(dst.chunks_exact_mut(4)) {
                        o.copy_from_slice(&(value[b as usize] * s).to_le_bytes());
                    }
                }
            }
        }
    }
}

/// max |x| of the weight [`dequantize_fp8_block`] makes, from the codes and scales alone: the
/// largest E4M3 magnitude of each block times the block's |scale|, rounded as the dequantized
/// element is (rounding is monotone and symmetric, so the largest element rounds to the largest
/// magnitude). Bit-identical to [`crate::compute::amax`] of the dequantized weight whenever every
/// dequantized element is finite; `None` where some element may not be (a NaN code, a scale that
/// is not finite, a product that overflows), for the caller to dequantize and find it.
pub fn amax_fp8_block(
    fp8: &[u8],
    scale_inv: &[u8],
    rows: usize,
    cols: usize,
    precision: DequantPrecision,
) -> Option<f32> {
    let (srows, scols) = checked_scale_shape(fp8, scale_inv, rows, cols);
    if rows == 0 || cols == 0 {
        return Some(0.0);
    }
    let mut amax = 0f32;
    // The largest magnitude code (sign bit off) of each block of the current block row: E4M3
    // magnitudes grow with the code, and 0x7F is NaN.
    let mut largest = vec![0u8; scols];
    for br in 0..srows {
        largest.fill(0);
        let (r0, r1) = (br * FP8_BLOCK, ((br + 1) * FP8_BLOCK).min(rows));
        for codes in fp8[r0 * cols..r1 * cols].chunks_exact(cols) {
            for (cb, block) in codes.chunks(FP8_BLOCK).enumerate() {
                let m = block.iter().fold(0u8, |m, &b| m.max(b & 0x7F));
                largest[cb] = largest[cb].max(m);
            }
        }
        let scales = &scale_inv[4 * br * scols..4 * (br + 1) * scols];
        for (&code, s) in largest.iter().zip(scales.chunks_exact(4)) {
            let s = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            if code == 0x7F || !s.is_finite() {
                return None;
            }
            let product = e4m3_to_f32(code) * s.abs();
            let element = match precision {
                DequantPrecision::Bf16 => bf16_round(product),
                DequantPrecision::F32 => product,
            };
            if !element.is_finite() {
                return None;
            }
            amax = amax.max(element);
        }
    }
    Some(amax)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slow reference: the value of every element from the formula, in f64 then f32.
    fn reference(fp8: &[u8], scales: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let scols = cols.div_ceil(128);
        let mut out = Vec::new();
        for r in 0..rows {
            for c in 0..cols {
                let b = fp8[r * cols + c];
                let sign = if b & 0x80 != 0 { -1.0f64 } else { 1.0 };
                let e = i32::from((b >> 3) & 0xF);
                let m = f64::from(b & 7);
                let v = if e == 0 {
                    m / 8.0 * 2f64.powi(-6)
                } else {
                    (1.0 + m / 8.0) * 2f64.powi(e - 7)
                } * sign;
                // The product of two f32 values is exact in f64; rounding it once to f32 is the f32 product.
                out.push((v * f64::from(scales[(r / 128) * scols + c / 128])) as f32);
            }
        }
        out
    }

    #[test]
    fn every_code_under_every_kind_of_scale_decodes_element_by_element() {
        // Every code (NaN ones included) in every block, partial blocks at both edges, scales
        // that overflow to inf, underflow to subnormals or zero, and a NaN scale: each element
        // is bf16(decode(code) x scale), or the f32 product, bit for bit.
        let (rows, cols) = (130, 272);
        let fp8: Vec<u8> = (0..rows * cols).map(|i| (i * 7 % 256) as u8).collect();
        let (sr, sc) = scale_inv_shape(rows, cols);
        let kinds = [1.37f32, 3e38, 1e-40, 0.0, f32::NAN, 2f32.powi(-9)];
        let scales: Vec<f32> = (0..sr * sc).map(|i| kinds[i % kinds.len()]).collect();
        let bytes: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        for precision in [DequantPrecision::Bf16, DequantPrecision::F32] {
            let size = precision.dtype().size();
            let mut out = vec![0u8; rows * cols * size];
            dequantize_fp8_block(&fp8, &bytes, rows, cols, precision, &mut out);
            for r in 0..rows {
                for c in 0..cols {
                    let y = e4m3_to_f32(fp8[r * cols + c]) * scales[(r / 128) * sc + c / 128];
                    let o = (r * cols + c) * size;
                    let got = &out[o..o + size];
                    match precision {
                        DequantPrecision::Bf16 => assert_eq!(
                            got,
                            ((bf16_round(y).to_bits() >> 16) as u16).to_le_bytes(),
                            "[{r}, {c}]"
                        ),
                        DequantPrecision::F32 => assert_eq!(got, y.to_le_bytes(), "[{r}, {c}]"),
                    }
                }
            }
        }
    }

    #[test]
    fn matches_the_formula_with_partial_blocks() {
        let (rows, cols) = (200, 144);
        let mut state = 12345u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let fp8: Vec<u8> = (0..rows * cols)
            .map(|_| (next() as u8) & 0xFE | 0x01)
            .map(|b| if b & 0x7F == 0x7F { 0x7E } else { b })
            .collect();
        let (sr, sc) = scale_inv_shape(rows, cols);
        assert_eq!((sr, sc), (2, 2));
        let scales: Vec<f32> = (0..sr * sc)
            .map(|i| 2f32.powi(i as i32 - 9) * 1.37)
            .collect();
        let scale_bytes: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        let want = reference(&fp8, &scales, rows, cols);
        let mut out = vec![0u8; rows * cols * 4];
        dequantize_fp8_block(
            &fp8,
            &scale_bytes,
            rows,
            cols,
            DequantPrecision::F32,
            &mut out,
        );
        let got: Vec<f32> = out
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert!(got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        let mut out = vec![0u8; rows * cols * 2];
        dequantize_fp8_block(
            &fp8,
            &scale_bytes,
            rows,
            cols,
            DequantPrecision::Bf16,
            &mut out,
        );
        for (i, c) in out.chunks(2).enumerate() {
            let got = half::bf16::from_le_bytes([c[0], c[1]]);
            assert_eq!(got, half::bf16::from_f32(want[i]), "element {i}");
        }
    }

    #[test]
    fn amax_from_codes_and_scales_is_the_amax_of_the_dequantized_weight() {
        // Random codes (NaN ones in some weights), partial edge blocks, scales of both signs,
        // zero, subnormal, near overflow, inf and NaN: the fast amax is either None or the amax
        // of the dequantized weight bit for bit, and None only where that weight holds a
        // non-finite element.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let kinds = [
            1.37f32,
            -0.61,
            3e38,
            1e-40,
            0.0,
            -0.0,
            2f32.powi(-9),
            7e35,
            f32::INFINITY,
            f32::NAN,
        ];
        let (mut fast, mut slow) = (0, 0);
        for (rows, cols) in [(0, 16), (5, 0)] {
            let (sr, sc) = scale_inv_shape(rows, cols);
            let scales = vec![0u8; sr * sc * 4];
            assert_eq!(
                amax_fp8_block(&[], &scales, rows, cols, DequantPrecision::Bf16),
                Some(0.0)
            );
        }
        for (k, &(rows, cols)) in [(1usize, 16usize), (130, 272), (256, 128), (3, 300)]
            .iter()
            .enumerate()
        {
            for trial in 0..40 {
                let nan_codes = trial % 3 == 0;
                let fp8: Vec<u8> = (0..rows * cols)
                    .map(|_| match next() as u8 {
                        b @ (0x7F | 0xFF) if !nan_codes => b - 1,
                        b => b,
                    })
                    .collect();
                let (sr, sc) = scale_inv_shape(rows, cols);
                // Mostly ordinary scales, a special one now and then.
                let scales: Vec<u8> = (0..sr * sc)
                    .flat_map(|_| {
                        let r = next();
                        let s = if r % 4 == 0 {
                            kinds[(r >> 8) as usize % kinds.len()]
                        } else {
                            (r >> 40) as f32 * 2f32.powi(-30 - k as i32)
                        };
                        s.to_le_bytes()
                    })
                    .collect();
                for precision in [DequantPrecision::Bf16, DequantPrecision::F32] {
                    let mut out = vec![0u8; rows * cols * precision.dtype().size()];
                    dequantize_fp8_block(&fp8, &scales, rows, cols, precision, &mut out);
                    let full = crate::compute::amax(&out, precision.dtype());
                    match amax_fp8_block(&fp8, &scales, rows, cols, precision) {
                        Some(a) => {
                            fast += 1;
                            assert_eq!(
                                Ok(a.to_bits()),
                                full.map(f32::to_bits),
                                "{rows}x{cols} trial {trial} {precision:?}"
                            )
                        }
                        None => {
                            slow += 1;
                            assert!(
                                full.is_err(),
                                "{rows}x{cols} trial {trial} {precision:?}: None for a finite weight"
                            )
                        }
                    }
                }
            }
        }
        // Both answers were exercised.
        assert!(fast > 50 && slow > 50, "{fast} fast, {slow} slow");
    }
}
