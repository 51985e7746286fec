//! FP8 E4M3 per-tensor quantization (ModelOpt `FP8_DEFAULT_CFG`): one f32 scale per tensor.
//!
//! The weight quotient is rounded twice, first to the weight's dtype, then to E4M3, because
//! PyTorch keeps the weight dtype for `bf16_tensor / f32_0d_tensor` (golden/README.md "FP8" and
//! "Two numerics").

use crate::compute::codec::{bf16_round, e4m3_from_f32, f16_round, E4M3_MAX};
use crate::compute::numerics::{load_f32_into, Numerics, SourceDtype};

/// Elements decoded per step of [`quantize_fp8`] (a stack buffer, no allocation).
const CHUNK_ELEMENTS: usize = 1024;

/// FP8 per-tensor scale (`weight_scale`, `input_scale`, `k_scale`, `v_scale`):
/// `numerics.div_const(amax, 448.0)`.
pub fn fp8_scale(amax: f32, numerics: Numerics) -> f32 {
    numerics.div_const(amax, E4M3_MAX)
}

/// The precision of the FP8 weight quotient `w / weight_scale` before its E4M3 cast, as PyTorch's
/// type promotion decides it in ModelOpt's `to_quantized_weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Quotient {
    /// A 2-D weight divided by the 0-d f32 scale: the quotient keeps the weight's dtype
    /// (rounded twice: to the dtype, then to E4M3).
    WeightDtype,
    /// A stacked 3-D expert weight (gpt-oss, Llama-4) divided by `scale.unsqueeze(-1)`, a
    /// 1-D tensor: promotion to f32, one rounding, and the divisor is the f32 scale itself
    /// in both numerics.
    F32,
}

/// FP8 per-tensor weight: `out[i] = e4m3(dtype.round(f32(w_i) / d))`, where `d` is
/// `weight_scale` (ModeloptCpu: the CPU kernel reads the original f32 scalar) or
/// `dtype.round(weight_scale)` (ModeloptCuda: the CUDA kernel loads the f32 0-d divisor in the
/// weight's dtype). The quotient is computed in f32 (IEEE division) and rounded to the weight's
/// dtype, the DOUBLE rounding, before the E4M3 cast ([`e4m3_from_f32`]: no saturation, a
/// quotient above 464 would give NaN `0x7F`).
///
/// With [`Fp8Quotient::F32`] the quotient is not rounded to the dtype and `d` is the f32 scale.
///
/// Panics if `src` does not hold exactly `out.len()` elements.
pub fn quantize_fp8(
    src: &[u8],
    dtype: SourceDtype,
    weight_scale: f32,
    numerics: Numerics,
    quotient: Fp8Quotient,
    out: &mut [u8],
) {
    assert_eq!(
        src.len(),
        out.len() * dtype.size(),
        "src must hold out.len() {} elements",
        dtype.name()
    );
    let divisor = fp8_divisor(weight_scale, dtype, numerics, quotient);
    // One monomorphic loop per dtype keeps the rounding out of the per-element branch.
    if quotient == Fp8Quotient::F32 {
        return quantize_chunks(src, dtype, divisor, out, |x| x);
    }
    match dtype {
        SourceDtype::Bf16 => quantize_chunks(src, dtype, divisor, out, bf16_round),
        SourceDtype::F16 => quantize_chunks(src, dtype, divisor, out, f16_round),
        SourceDtype::F32 => quantize_chunks(src, dtype, divisor, out, |x| x),
    }
}

/// The divisor [`quantize_fp8`] (and its GPU twin) divides by.
pub fn fp8_divisor(
    weight_scale: f32,
    dtype: SourceDtype,
    numerics: Numerics,
    quotient: Fp8Quotient,
) -> f32 {
    match (numerics, quotient) {
        (Numerics::ModeloptCuda, Fp8Quotient::WeightDtype) => dtype.round(weight_scale),
        _ => weight_scale,
    }
}

fn quantize_chunks(
    src: &[u8],
    dtype: SourceDtype,
    divisor: f32,
    out: &mut [u8],
    round: impl Fn(f32) -> f32,
) {
    let mut values = [0.0f32; CHUNK_ELEMENTS];
    for (src_chunk, out_chunk) in src
        .chunks(CHUNK_ELEMENTS * dtype.size())
        .zip(out.chunks_mut(CHUNK_ELEMENTS))
    {
        let values = &mut values[..out_chunk.len()];
        load_f32_into(src_chunk, dtype, values);
        for (byte, w) in out_chunk.iter_mut().zip(values.iter()) {
            *byte = e4m3_from_f32(round(*w / divisor));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::test_util::encode;

    #[test]
    fn test_fp8_scale_both_numerics() {
        // 1/448 in f32 is 0x3B124925 (docs/modelopt-format.md §1.1).
        let amax = 0.128_906_25f32;
        assert_eq!(fp8_scale(amax, Numerics::ModeloptCpu), amax / 448.0);
        assert_eq!(
            fp8_scale(amax, Numerics::ModeloptCuda),
            amax * f32::from_bits(0x3B12_4925)
        );
        assert_eq!(fp8_scale(448.0, Numerics::ModeloptCpu), 1.0);
    }

    #[test]
    fn test_double_rounding_changes_the_byte() {
        // The quotient 1.0625 + 2^-9 rounds (bf16, 8 bits) to 1.0625, an e4m3 tie -> the even
        // 1.0 (0x38), while a direct e4m3 cast sees 1.0645.. > the tie and gives 1.125 (0x39).
        let q = 1.0625f32 + 1.0 / 512.0;
        assert_eq!(e4m3_from_f32(q), 0x39);
        assert_eq!(bf16_round(q), 1.0625);
        let src = encode(&[q], SourceDtype::F32);
        let mut out = [0u8; 1];
        // f32 source: no double rounding.
        quantize_fp8(
            &src,
            SourceDtype::F32,
            1.0,
            Numerics::ModeloptCpu,
            Fp8Quotient::WeightDtype,
            &mut out,
        );
        assert_eq!(out, [0x39]);
        // bf16 source: w = 1.0625 exactly (bf16 of q) with divisor 1.0 is a tie -> 0x38.
        let src = encode(&[q], SourceDtype::Bf16);
        quantize_fp8(
            &src,
            SourceDtype::Bf16,
            1.0,
            Numerics::ModeloptCpu,
            Fp8Quotient::WeightDtype,
            &mut out,
        );
        assert_eq!(out, [0x38]);
        // bf16 weight 1.0 divided by a scale just below 1: the f32 quotient is above the tie,
        // the bf16-rounded quotient is exactly the tie.
        let w = encode(&[1.0], SourceDtype::Bf16);
        let scale = 1.0 / q; // 1.0 / (1.0625 + 2^-9), rounded to f32
        quantize_fp8(
            &w,
            SourceDtype::Bf16,
            scale,
            Numerics::ModeloptCpu,
            Fp8Quotient::WeightDtype,
            &mut out,
        );
        assert_eq!(out, [0x38]);
        assert_eq!(e4m3_from_f32(1.0 / scale), 0x39);
    }

    #[test]
    fn test_cuda_rounds_the_divisor_to_the_weight_dtype() {
        // Divisor 1 + 2^-8 - 2^-20 is not a bf16 value; bf16 rounds it to 1.0, so CUDA divides
        // by 1.0. Weight 1.0703125 (bf16):
        // CUDA: 1.0703125 / 1.0 = 1.0703125 -> e4m3 1.125 (0x39), above the tie 1.0625.
        // CPU: 1.0703125 / 1.0039 = 1.06615 -> bf16 1.0625 (below the bf16 midpoint 1.06640625)
        //      -> the e4m3 tie 1.0625 -> even 1.0 (0x38).
        let scale = 1.0f32 + 1.0 / 256.0 - 1.0 / 1_048_576.0;
        assert_eq!(bf16_round(scale), 1.0);
        let w = encode(&[1.0703125], SourceDtype::Bf16);
        let mut cpu = [0u8; 1];
        let mut cuda = [0u8; 1];
        quantize_fp8(
            &w,
            SourceDtype::Bf16,
            scale,
            Numerics::ModeloptCpu,
            Fp8Quotient::WeightDtype,
            &mut cpu,
        );
        quantize_fp8(
            &w,
            SourceDtype::Bf16,
            scale,
            Numerics::ModeloptCuda,
            Fp8Quotient::WeightDtype,
            &mut cuda,
        );
        assert_eq!((cpu, cuda), ([0x38], [0x39]));
        // An f32 weight has no dtype rounding: both numerics divide by the f32 scale.
        let w = encode(&[1.0703125], SourceDtype::F32);
        quantize_fp8(
            &w,
            SourceDtype::F32,
            scale,
            Numerics::ModeloptCpu,
            Fp8Quotient::WeightDtype,
            &mut cpu,
        );
        quantize_fp8(
            &w,
            SourceDtype::F32,
            scale,
            Numerics::ModeloptCuda,
            Fp8Quotient::WeightDtype,
            &mut cuda,
        );
        assert_eq!((cpu, cuda), ([0x39], [0x39]));
    }

    #[test]
    fn test_quantize_fp8_chunk_boundaries() {
        // Lengths around the chunk size must decode every element exactly once.
        for len in [
            0usize,
            1,
            CHUNK_ELEMENTS - 1,
            CHUNK_ELEMENTS,
            CHUNK_ELEMENTS + 1,
            3 * CHUNK_ELEMENTS + 7,
        ] {
            let values: Vec<f32> = (0..len).map(|i| (i % 897) as f32 - 448.0).collect();
            let src = encode(&values, SourceDtype::F32);
            let mut out = vec![0u8; len];
            quantize_fp8(
                &src,
                SourceDtype::F32,
                1.0,
                Numerics::ModeloptCpu,
                Fp8Quotient::WeightDtype,
                &mut out,
            );
            for (i, v) in values.iter().enumerate() {
                assert_eq!(out[i], e4m3_from_f32(*v), "len {len} element {i}");
            }
        }
    }
}
