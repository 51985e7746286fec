//! Scalar codecs: rounding to bf16 / f16, and the FP8 E4M3FN and FP4 E2M1 encodings.
//!
//! Pure functions on one value (ggml `_ref` style). Each documents its exact rule, which is
//! the rule PyTorch (for casts) or ModelOpt (for E2M1) applies, so that the kernels built on
//! them reproduce ModelOpt's bytes. See `docs/modelopt-format.md` §1.2–§1.3.

/// Largest finite E4M3FN value (`0x7E`).
pub const E4M3_MAX: f32 = 448.0;
/// Smallest positive E4M3FN value, the subnormal 2^-9 (`0x01`).
pub const E4M3_MIN_SUBNORMAL: f32 = 1.0 / 512.0;
/// Largest E2M1 magnitude (nibble 7).
pub const E2M1_MAX: f32 = 6.0;

/// The E2M1 value of each nibble: index = nibble, 8 is "-0".
pub const E2M1_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

const SIGN_MASK: u32 = 0x8000_0000;
const QUIET_NAN_BIT: u32 = 0x0040_0000;

/// Rounds `x` to the nearest bf16 (round half to even) and returns it as f32.
///
/// Rule: keep the top 16 bits of the f32 after adding `0x7FFF + lsb`, where `lsb` is the
/// lowest kept bit, so exact halves go to the even bf16. Values past the largest bf16 round to
/// ±inf as IEEE prescribes. NaN stays NaN (quieted, payload truncated to bf16, sign kept), as
/// PyTorch's and `half`'s conversions do.
pub fn bf16_round(x: f32) -> f32 {
    let bits = x.to_bits();
    let lsb = (bits >> 16) & 1;
    let rounded = bits.wrapping_add(0x7FFF + lsb) & 0xFFFF_0000;
    let nan = (bits | QUIET_NAN_BIT) & 0xFFFF_0000;
    // A select, not a branch: measured faster in loops over many elements (dequant_bench).
    f32::from_bits(if x.is_nan() { nan } else { rounded })
}

/// Rounds `x` to the nearest IEEE half (f16, round half to even, subnormals included) and
/// returns it as f32.
///
/// Rule: |x| >= 65520 (the midpoint between 65504 and 2^16, a tie that goes to the even 2^16)
/// gives ±inf. |x| < 2^-14 (the f16 subnormal range) is rounded to a multiple of 2^-24 by adding
/// and subtracting 0.5 (whose f32 ulp is 2^-24, so the f32 addition does the RNE). Otherwise the
/// mantissa is rounded from 23 to 10 bits, halves to even. NaN stays NaN (quieted, sign kept).
pub fn f16_round(x: f32) -> f32 {
    const F16_OVERFLOW: f32 = 65520.0;
    const F16_MIN_NORMAL: f32 = 1.0 / 16384.0; // 2^-14
    const SUBNORMAL_SHIFTER: f32 = 0.5; // f32 ulp of 0.5 is 2^-24, the f16 subnormal step
    let bits = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((bits | QUIET_NAN_BIT) & 0xFFFF_E000);
    }
    let sign = bits & SIGN_MASK;
    let magnitude = x.abs();
    let rounded = if magnitude >= F16_OVERFLOW {
        f32::INFINITY
    } else if magnitude < F16_MIN_NORMAL {
        (magnitude + SUBNORMAL_SHIFTER) - SUBNORMAL_SHIFTER
    } else {
        let abs_bits = magnitude.to_bits();
        let lsb = (abs_bits >> 13) & 1;
        f32::from_bits((abs_bits + 0xFFF + lsb) & !0x1FFF)
    };
    f32::from_bits(rounded.to_bits() | sign)
}

/// Encodes `x` as FP8 E4M3FN the way PyTorch's `.to(torch.float8_e4m3fn)` does
/// (c10 `fp8e4m3fn_from_fp32_value`, identical on CPU and CUDA).
///
/// Rule: round to nearest, ties to even, subnormals included (step 2^-9 below 2^-6), and no
/// saturation: 448, 456 and 464 (a tie, to the even 448) give `0x7E`; anything from just above
/// 464 up, and ±inf and NaN, give NaN `0x7F | sign`. The sign is always kept: -0.0 gives `0x80`
/// and a negative value that rounds to zero gives `0x80`.
pub fn e4m3_from_f32(x: f32) -> u8 {
    // f32 bits of 480.0: from here up (inf and NaN included) the result is NaN directly. Values
    // in (464, 480) reach NaN through the normal path, whose rounding carries them to 0x7F.
    const NAN_THRESHOLD_BITS: u32 = 1087 << 20;
    // f32 bits of 2^-6, the smallest normal E4M3 value.
    const MIN_NORMAL_BITS: u32 = 121 << 23;
    // 2^14: its f32 ulp is 2^-9, the E4M3 subnormal step, so adding it rounds to that step.
    const SUBNORMAL_SHIFTER_BITS: u32 = 141 << 23;
    // Moves the f32 exponent bias (127) to the E4M3 one (7).
    const REBIAS: u32 = (127 - 7) << 23;

    let bits = x.to_bits();
    let sign = ((bits & SIGN_MASK) >> 24) as u8;
    let abs_bits = bits & !SIGN_MASK;
    // Both paths are computed and one is selected, which keeps the loops that call this
    // branch-free (wrapping arithmetic: the path not taken may over- or underflow).
    let shifter = f32::from_bits(SUBNORMAL_SHIFTER_BITS);
    let subnormal = (f32::from_bits(abs_bits) + shifter)
        .to_bits()
        .wrapping_sub(SUBNORMAL_SHIFTER_BITS) as u8;
    // Normal: round the 23-bit mantissa to 3 bits, halves to even; a carry moves into the
    // exponent.
    let mantissa_odd = (abs_bits >> 20) & 1;
    let normal = (abs_bits
        .wrapping_sub(REBIAS)
        .wrapping_add(0x7FFFF + mantissa_odd)
        >> 20) as u8;
    let magnitude = if abs_bits >= NAN_THRESHOLD_BITS {
        0x7F
    } else if abs_bits < MIN_NORMAL_BITS {
        subnormal
    } else {
        normal
    };
    magnitude | sign
}

/// Decodes an FP8 E4M3FN byte to f32 (exact).
///
/// Rule: sign bit 7, exponent bits 6..3 (bias 7), mantissa bits 2..0; exponent 0 is subnormal
/// (`mantissa · 2^-9`); `0x7F` and `0xFF` are NaN (E4M3FN has no infinity).
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = u32::from(b & 0x80) << 24;
    let exponent = u32::from((b >> 3) & 0xF);
    let mantissa = u32::from(b & 0x7);
    let magnitude = if exponent == 0xF && mantissa == 0x7 {
        f32::NAN
    } else if exponent == 0 {
        mantissa as f32 * E4M3_MIN_SUBNORMAL
    } else {
        f32::from_bits(((exponent + 120) << 23) | (mantissa << 20))
    };
    f32::from_bits(magnitude.to_bits() | sign)
}

/// Encodes `x` as an FP4 E2M1 nibble the way ModelOpt's `NVFP4QTensor._cast_fp4` does.
///
/// Rule: sign bit 3 is `x < 0` (so -0.0 gives `0x0`, and a small negative value that rounds to
/// zero gives `0x8`, "-0"). The magnitude rounds to {0, 0.5, 1, 1.5, 2, 3, 4, 6} by nearest,
/// ties to the even code (ModelOpt's `searchsorted` with its tie fix):
///
/// | \|x\|          | code | value |
/// |---------------|------|-------|
/// | ≤ 0.25        | 0    | 0     |
/// | (0.25, 0.75)  | 1    | 0.5   |
/// | [0.75, 1.25]  | 2    | 1     |
/// | (1.25, 1.75)  | 3    | 1.5   |
/// | [1.75, 2.5]   | 4    | 2     |
/// | (2.5, 3.5)    | 5    | 3     |
/// | [3.5, 5]      | 6    | 4     |
/// | > 5, inf, NaN | 7    | 6     |
pub fn e2m1_nibble(x: f32) -> u8 {
    let sign = u8::from(x < 0.0) << 3;
    let a = x.abs();
    // Branch-free (vectorizes): count the bounds below |x|, with `>=` at the bounds that round
    // up (0.75, 1.75, 3.5: ties whose upper neighbor has the even code). NaN passes none of
    // the comparisons and is set to 7 explicitly.
    let code = u8::from(a > 0.25)
        + u8::from(a >= 0.75)
        + u8::from(a > 1.25)
        + u8::from(a >= 1.75)
        + u8::from(a > 2.5)
        + u8::from(a >= 3.5)
        + u8::from(a > 5.0);
    let code = if a.is_nan() { 7 } else { code };
    sign | code
}

/// Decodes an E2M1 nibble (only the low 4 bits of `n` are used) to f32; `0x8` is -0.0.
pub fn e2m1_to_f32(n: u8) -> f32 {
    E2M1_VALUES[usize::from(n & 0xF)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_e4m3_documented_points() {
        // docs/modelopt-format.md §1.2, verified on CPU and CUDA.
        for (x, byte) in [
            (448.0, 0x7E),
            (456.0, 0x7E),
            (464.0, 0x7E),
            (465.0, 0x7F),
            (470.0, 0x7F),
            (479.0, 0x7F),
            (480.0, 0x7F),
            (1.0, 0x38),
            (128.0, 0x70),
            (E4M3_MIN_SUBNORMAL, 0x01),
            (1.0 / 1024.0, 0x00),
            (1.5 / 1024.0, 0x01),
            (1.03125, 0x38),
            (1.09375, 0x39),
            (-0.0, 0x80),
            (0.0, 0x00),
            (f32::INFINITY, 0x7F),
            (f32::NEG_INFINITY, 0xFF),
            (f32::NAN, 0x7F),
            (-f32::NAN, 0xFF),
            (-1e-30, 0x80),
        ] {
            assert_eq!(e4m3_from_f32(x), byte, "e4m3({x:e})");
        }
    }

    #[test]
    fn test_e2m1_documented_ties() {
        for (x, nibble) in [
            (0.25, 0x0),
            (0.75, 0x2),
            (1.25, 0x2),
            (1.75, 0x4),
            (2.5, 0x4),
            (3.5, 0x6),
            (5.0, 0x6),
            (5.0001, 0x7),
            (5.5, 0x7),
            (-0.25, 0x8),
            (-0.0, 0x0),
            (f32::INFINITY, 0x7),
            (f32::NEG_INFINITY, 0xF),
            (f32::NAN, 0x7),
        ] {
            assert_eq!(e2m1_nibble(x), nibble, "e2m1({x})");
        }
    }

    #[test]
    fn test_e2m1_round_trip() {
        for n in 0u8..16 {
            let v = e2m1_to_f32(n);
            assert_eq!(
                e2m1_nibble(v),
                if n == 0x8 { 0x0 } else { n },
                "nibble {n:#x}"
            );
        }
        assert!(e2m1_to_f32(0x8).is_sign_negative());
    }
}
