//! NaN and infinite weight elements, passed through a quantization (`--allow-nonfinite`).
//!
//! ModelOpt would calibrate a NaN or infinite amax from such a weight, which makes every scale
//! of the tensor meaningless; by default shardquant refuses the tensor. When asked to pass them
//! through, the rule is the same on the CPU and the GPU, and the output stays deterministic
//! and loadable:
//!
//! 1. the non-finite elements are left out of every amax: the weight is quantized as if they
//!    were `+0.0` ([`zero_nonfinite`]), so `weight_scale_2`, the block scales and the FP8
//!    scale are those of the finite elements (the GPU kernels see the same zeroed copy, so
//!    their bytes stay the CPU's);
//! 2. then the codes of those elements are overwritten ([`patch_nvfp4`], [`patch_fp8`]):
//!
//! | element | FP8 E4M3FN | NVFP4 (E2M1) |
//! |---------|------------|--------------|
//! | NaN     | NaN: `0x7F`, `0xFF` with its sign bit | `0x0` (zero: E2M1 has no NaN) |
//! | +inf    | `0x7E` (+448, saturated: no infinity) | `0x7` (+6, saturated) |
//! | -inf    | `0xFE` (-448) | `0xF` (-6) |
//!
//! An infinity thus becomes the largest magnitude its scale can express, with its sign; a NaN
//! stays NaN where the format has one and becomes 0 where it has none.

use crate::compute::numerics::SourceDtype;

/// The E2M1 code of a NaN element (0: E2M1 has no NaN).
pub const E2M1_NAN: u8 = 0x0;
/// The E2M1 code of a +inf element (+6, the largest magnitude).
pub const E2M1_POS_INF: u8 = 0x7;
/// The E2M1 code of a -inf element (-6).
pub const E2M1_NEG_INF: u8 = 0xF;
/// The E4M3FN code of a positive NaN element (a negative one gets `0xFF`).
pub const E4M3_NAN: u8 = 0x7F;
/// The E4M3FN code of a +inf element (+448, the largest finite value: E4M3FN has no infinity).
pub const E4M3_POS_INF: u8 = 0x7E;
/// The E4M3FN code of a -inf element (-448).
pub const E4M3_NEG_INF: u8 = 0xFE;

/// What non-finite elements a weight holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NonFinite {
    /// NaN elements.
    pub nan: usize,
    /// +inf and -inf elements.
    pub inf: usize,
    /// Index of the first non-finite element (row-major).
    pub first: usize,
}

impl NonFinite {
    /// Non-finite elements in all.
    pub fn count(&self) -> usize {
        self.nan + self.inf
    }
}

/// One element's class.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A NaN, with its sign bit.
    Nan(bool),
    /// An infinity, with its sign bit.
    Inf(bool),
}

/// (exponent mask, mantissa mask, sign bit) of `dtype`, on an element's bits.
fn masks(dtype: SourceDtype) -> (u32, u32, u32) {
    match dtype {
        SourceDtype::Bf16 => (0x7F80, 0x007F, 0x8000),
        SourceDtype::F16 => (0x7C00, 0x03FF, 0x8000),
        SourceDtype::F32 => (0x7F80_0000, 0x007F_FFFF, 0x8000_0000),
    }
}

/// The bits of one little-endian element (`b.len()` is the dtype's size).
fn bits(b: &[u8]) -> u32 {
    match *b {
        [b0, b1] => u32::from(u16::from_le_bytes([b0, b1])),
        [b0, b1, b2, b3] => u32::from_le_bytes([b0, b1, b2, b3]),
        _ => 0,
    }
}

/// Calls `f(index, class)` for every non-finite little-endian `dtype` element of `src`.
fn for_each_nonfinite(src: &[u8], dtype: SourceDtype, mut f: impl FnMut(usize, Class)) {
    let (exp, mant, sign) = masks(dtype);
    for (i, b) in src.chunks_exact(dtype.size()).enumerate() {
        let bits = bits(b);
        if bits & exp != exp {
            continue;
        }
        let negative = bits & sign != 0;
        f(
            i,
            if bits & mant != 0 {
                Class::Nan(negative)
            } else {
                Class::Inf(negative)
            },
        );
    }
}

/// Counts the non-finite elements of `src` (little-endian `dtype`); `None` if there is none.
pub fn count_nonfinite(src: &[u8], dtype: SourceDtype) -> Option<NonFinite> {
    let mut found: Option<NonFinite> = None;
    for_each_nonfinite(src, dtype, |i, class| {
        let n = found.get_or_insert(NonFinite {
            first: i,
            ..NonFinite::default()
        });
        match class {
            Class::Nan(_) => n.nan += 1,
            _ => n.inf += 1,
        }
    });
    found
}

/// Replaces every NaN and infinite element of `buf` (little-endian `dtype`) by `+0.0`, so that
/// amax and block maxima are those of the finite elements; returns what was replaced.
pub fn zero_nonfinite(buf: &mut [u8], dtype: SourceDtype) -> Option<NonFinite> {
    let found = count_nonfinite(buf, dtype)?;
    let (exp, _, _) = masks(dtype);
    for b in buf.chunks_exact_mut(dtype.size()) {
        if bits(b) & exp == exp {
            b.fill(0);
        }
    }
    Some(found)
}

/// Overwrites the NVFP4 codes (`packed`, two per byte, element `2k` in the low nibble) of the
/// non-finite elements of `original` (the weight as it was before [`zero_nonfinite`]) by the
/// codes of the module docs.
pub fn patch_nvfp4(original: &[u8], dtype: SourceDtype, packed: &mut [u8]) {
    for_each_nonfinite(original, dtype, |i, class| {
        let code = match class {
            Class::Nan(_) => E2M1_NAN,
            Class::Inf(false) => E2M1_POS_INF,
            Class::Inf(true) => E2M1_NEG_INF,
        };
        let byte = &mut packed[i / 2];
        *byte = if i % 2 == 0 {
            (*byte & 0xF0) | code
        } else {
            (*byte & 0x0F) | (code << 4)
        };
    });
}

/// Overwrites the FP8 codes (`out`, one per element) of the non-finite elements of `original`
/// (the weight before [`zero_nonfinite`]) by the codes of the module docs.
pub fn patch_fp8(original: &[u8], dtype: SourceDtype, out: &mut [u8]) {
    for_each_nonfinite(original, dtype, |i, class| {
        out[i] = match class {
            Class::Nan(negative) => E4M3_NAN | if negative { 0x80 } else { 0 },
            Class::Inf(false) => E4M3_POS_INF,
            Class::Inf(true) => E4M3_NEG_INF,
        };
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::test_util::encode;
    use crate::compute::{amax, e2m1_to_f32, e4m3_to_f32, quantize_fp8, quantize_nvfp4, Numerics};

    /// 32 elements: finite values, then NaN, -NaN, +inf, -inf at odd and even positions.
    fn weight() -> Vec<f32> {
        let mut w: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) / 8.0).collect();
        w[3] = f32::NAN;
        w[4] = -f32::NAN;
        w[17] = f32::INFINITY;
        w[30] = f32::NEG_INFINITY;
        w
    }

    #[test]
    fn counts_and_zeroes_every_dtype() {
        for dtype in SourceDtype::ALL {
            let src = encode(&weight(), dtype);
            let n = count_nonfinite(&src, dtype).unwrap();
            assert_eq!(
                n,
                NonFinite {
                    nan: 2,
                    inf: 2,
                    first: 3
                },
                "{dtype:?}"
            );
            let mut zeroed = src.clone();
            assert_eq!(zero_nonfinite(&mut zeroed, dtype), Some(n));
            assert_eq!(count_nonfinite(&zeroed, dtype), None);
            // Finite elements are untouched; the others are +0.
            let size = dtype.size();
            for (i, v) in weight().iter().enumerate() {
                let z = &zeroed[i * size..(i + 1) * size];
                if v.is_finite() {
                    assert_eq!(z, &src[i * size..(i + 1) * size]);
                } else {
                    assert!(z.iter().all(|&b| b == 0));
                }
            }
            // amax now succeeds and is that of the finite elements (|-16/8|).
            assert_eq!(amax(&zeroed, dtype), Ok(2.0));
            let finite = encode(&[1.0, -2.0], dtype);
            assert_eq!(count_nonfinite(&finite, dtype), None);
            let mut same = finite.clone();
            assert_eq!(zero_nonfinite(&mut same, dtype), None);
            assert_eq!(same, finite);
        }
    }

    #[test]
    fn a_weight_of_nothing_but_nan() {
        let n = (1 << 16) * 2 + 5;
        let mut buf = encode(&vec![f32::NAN; n], SourceDtype::Bf16);
        let found = zero_nonfinite(&mut buf, SourceDtype::Bf16).unwrap();
        assert_eq!((found.nan, found.inf, found.first), (n, 0, 0));
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn fp8_codes() {
        for dtype in SourceDtype::ALL {
            let src = encode(&weight(), dtype);
            let mut zeroed = src.clone();
            zero_nonfinite(&mut zeroed, dtype);
            let mut out = vec![0u8; 32];
            quantize_fp8(
                &zeroed,
                dtype,
                1.0 / 128.0,
                Numerics::ModeloptCpu,
                crate::compute::Fp8Quotient::WeightDtype,
                &mut out,
            );
            let before = out.clone();
            patch_fp8(&src, dtype, &mut out);
            assert_eq!(out[3], 0x7F);
            assert_eq!(out[4], 0xFF);
            assert_eq!((out[17], e4m3_to_f32(out[17])), (0x7E, 448.0));
            assert_eq!((out[30], e4m3_to_f32(out[30])), (0xFE, -448.0));
            for i in (0..32).filter(|i| ![3, 4, 17, 30].contains(i)) {
                assert_eq!(out[i], before[i], "finite element {i} changed");
            }
        }
    }

    #[test]
    fn nvfp4_codes_keep_the_other_nibble() {
        for dtype in SourceDtype::ALL {
            let src = encode(&weight(), dtype);
            let mut zeroed = src.clone();
            zero_nonfinite(&mut zeroed, dtype);
            let (mut packed, mut scales) = (vec![0u8; 16], vec![0u8; 2]);
            quantize_nvfp4(
                &zeroed,
                dtype,
                1,
                32,
                1.0 / 2688.0,
                &mut packed,
                &mut scales,
            );
            let before = packed.clone();
            patch_nvfp4(&src, dtype, &mut packed);
            let nibble = |p: &[u8], i: usize| (p[i / 2] >> (4 * (i % 2))) & 0xF;
            assert_eq!(nibble(&packed, 3), E2M1_NAN);
            assert_eq!(nibble(&packed, 4), E2M1_NAN);
            assert_eq!(e2m1_to_f32(nibble(&packed, 17)), 6.0);
            assert_eq!(e2m1_to_f32(nibble(&packed, 30)), -6.0);
            for i in (0..32).filter(|i| ![3, 4, 17, 30].contains(i)) {
                assert_eq!(nibble(&packed, i), nibble(&before, i), "element {i}");
            }
        }
    }
}
