//! Exact max |x| of a raw tensor (ModelOpt's max calibration of a weight, `reduce_amax`).
//!
//! The maximum is taken on the bit patterns: for non-negative floats the order of the bits is
//! the order of the values, so masking off the sign and taking the integer max is exact, and the
//! result is a value of the source dtype.

use crate::compute::numerics::SourceDtype;

/// Elements scanned between checks for a non-finite value (keeps the hot loop branch-free).
const CHUNK_ELEMENTS: usize = 4096;

/// max |x| over all elements of `src` (little-endian `dtype` elements); 0.0 for an empty
/// tensor. Exact: the result is one of the elements' magnitudes.
///
/// `Err(i)` with the index of the first NaN or ±inf element: ModelOpt would calibrate a NaN or
/// inf amax, which makes every scale meaningless. Panics if `src.len()` is not a multiple of
/// `dtype.size()`.
pub fn amax(src: &[u8], dtype: SourceDtype) -> std::result::Result<f32, usize> {
    assert_eq!(
        src.len() % dtype.size(),
        0,
        "buffer is not a whole number of {} elements",
        dtype.name()
    );
    match dtype {
        SourceDtype::Bf16 => {
            amax_u16(src, 0x7F80).map(|bits| f32::from_bits(u32::from(bits) << 16))
        }
        SourceDtype::F16 => amax_u16(src, 0x7C00).map(|bits| half::f16::from_bits(bits).to_f32()),
        SourceDtype::F32 => amax_u32(src),
    }
}

/// Max of the magnitude bits of 16-bit floats whose exponent field is `exponent_mask`
/// (all ones = inf/NaN). Returns the bits of the largest magnitude.
fn amax_u16(src: &[u8], exponent_mask: u16) -> std::result::Result<u16, usize> {
    let mut max_bits = 0u16;
    for (chunk_index, chunk) in src.chunks(CHUNK_ELEMENTS * 2).enumerate() {
        let chunk_max = chunk
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7FFF)
            .fold(0u16, u16::max);
        if chunk_max >= exponent_mask {
            let first_bad = chunk
                .chunks_exact(2)
                .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7FFF >= exponent_mask)
                .unwrap_or(0);
            return Err(chunk_index * CHUNK_ELEMENTS + first_bad);
        }
        max_bits = max_bits.max(chunk_max);
    }
    Ok(max_bits)
}

/// [`amax_u16`] for f32 elements, returning the value.
fn amax_u32(src: &[u8]) -> std::result::Result<f32, usize> {
    const EXPONENT_MASK: u32 = 0x7F80_0000;
    let mut max_bits = 0u32;
    for (chunk_index, chunk) in src.chunks(CHUNK_ELEMENTS * 4).enumerate() {
        let chunk_max = chunk
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7FFF_FFFF)
            .fold(0u32, u32::max);
        if chunk_max >= EXPONENT_MASK {
            let first_bad = chunk
                .chunks_exact(4)
                .position(|b| {
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7FFF_FFFF >= EXPONENT_MASK
                })
                .unwrap_or(0);
            return Err(chunk_index * CHUNK_ELEMENTS + first_bad);
        }
        max_bits = max_bits.max(chunk_max);
    }
    Ok(f32::from_bits(max_bits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::numerics::load_f32;
    use crate::compute::test_util::{encode, Rng};

    /// The obvious definition: decode every element, fold with f32 max.
    fn amax_ref(src: &[u8], dtype: SourceDtype) -> std::result::Result<f32, usize> {
        let mut m = 0.0f32;
        for i in 0..src.len() / dtype.size() {
            let v = load_f32(src, dtype, i);
            if !v.is_finite() {
                return Err(i);
            }
            m = m.max(v.abs());
        }
        Ok(m)
    }

    #[test]
    fn test_amax_random_against_reference() {
        let mut rng = Rng::new(11);
        for dtype in SourceDtype::ALL {
            for len in [0usize, 1, 15, 16, 4095, 4096, 4097, 10_000] {
                let values: Vec<f32> = (0..len).map(|_| rng.normal() * rng.scale()).collect();
                let buf = encode(&values, dtype);
                let got = amax(&buf, dtype);
                assert_eq!(
                    got.map(f32::to_bits),
                    amax_ref(&buf, dtype).map(f32::to_bits),
                    "{dtype:?} {len}"
                );
                if len > 0 {
                    // The result is exactly one element's magnitude.
                    let m = got.unwrap();
                    assert!((0..len).any(|i| load_f32(&buf, dtype, i).abs() == m));
                }
            }
        }
    }

    #[test]
    fn test_amax_negative_zero_and_sign() {
        for dtype in SourceDtype::ALL {
            assert_eq!(amax(&encode(&[-0.0, -0.0], dtype), dtype), Ok(0.0));
            assert_eq!(amax(&encode(&[1.0, -3.5, 2.0], dtype), dtype), Ok(3.5));
            assert_eq!(amax(&[], dtype), Ok(0.0));
        }
        // Subnormal bf16 only.
        let tiny = f32::from_bits(0x0001_0000);
        assert_eq!(
            amax(&encode(&[0.0, -tiny], SourceDtype::Bf16), SourceDtype::Bf16),
            Ok(tiny)
        );
    }

    #[test]
    fn test_amax_reports_first_non_finite() {
        for dtype in SourceDtype::ALL {
            for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for (len, at) in [
                    (1usize, 0usize),
                    (10, 9),
                    (9000, 4096),
                    (9000, 4095),
                    (9000, 8999),
                ] {
                    let mut values = vec![1.0f32; len];
                    values[at] = bad;
                    if at + 1 < len {
                        values[len - 1] = bad; // a later bad value must not win
                    }
                    assert_eq!(
                        amax(&encode(&values, dtype), dtype),
                        Err(at),
                        "{dtype:?} {bad} {len} {at}"
                    );
                }
            }
        }
    }
}
