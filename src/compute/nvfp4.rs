//! NVFP4 weight quantization: E2M1 elements in blocks of 16 with E4M3 block scales and an f32
//! global scale (`weight_scale_2`), as ModelOpt's `NVFP4QTensor` exports them.
//!
//! Two ways to get the block scales: the dynamic path ([`quantize_nvfp4`], `NVFP4_DEFAULT_CFG`)
//! takes each block's max |w| from the weight; the static path ([`quantize_nvfp4_static`],
//! ModelOpt's FP8-scale sweep) takes per-block amax from a calibration. Both then share the
//! element encoding and packing of [`pack_nvfp4`]. Formulas: golden/README.md "Formulas" and
//! "Static NVFP4 weights"; packing: docs/modelopt-format.md §1.3.

use crate::compute::codec::{
    e2m1_nibble, e4m3_from_f32, e4m3_to_f32, E2M1_MAX, E4M3_MAX, E4M3_MIN_SUBNORMAL,
};
use crate::compute::numerics::{load_f32_into, Numerics, SourceDtype};

/// Elements per NVFP4 block (one E4M3 scale each).
pub const NVFP4_BLOCK_SIZE: usize = 16;

/// `amax / NVFP4_GLOBAL_SCALE_DIVISOR` is the NVFP4 global scale: 2688 = 6 · 448
/// (E2M1 max times E4M3 max).
pub const NVFP4_GLOBAL_SCALE_DIVISOR: f32 = E2M1_MAX * E4M3_MAX;

/// `weight_scale_2` or `input_scale` from an amax: `numerics.div_const(amax, 2688.0)`.
pub fn nvfp4_global_scale(amax: f32, numerics: Numerics) -> f32 {
    numerics.div_const(amax, NVFP4_GLOBAL_SCALE_DIVISOR)
}

/// Dynamic NVFP4 (ModelOpt `NVFP4QTensor`, dynamic block path) of a row-major weight
/// `[rows, cols]` in `src` (little-endian `dtype` elements).
///
/// Per row `r` and block `b` of 16 columns:
/// `s = blockmax / f32(6 · weight_scale_2)`; `s == 0 → 1.0`; clamp to `[2^-9, 448]`;
/// `scales[r·cols/16 + b] = e4m3(s)`; then the elements are encoded and packed as
/// [`pack_nvfp4`] does. `numerics` plays no part: both divisions are by tensors, exact IEEE
/// division on both devices.
///
/// Expects finite weights (see [`crate::compute::amax()`], which rejects NaN/inf first); a NaN
/// element is ignored by its block's max. Panics if `cols` is not a multiple of 16 or a buffer
/// length does not match (`src`: rows·cols elements, `packed`: rows·cols/2 bytes, `scales`:
/// rows·cols/16 bytes).
pub fn quantize_nvfp4(
    src: &[u8],
    dtype: SourceDtype,
    rows: usize,
    cols: usize,
    weight_scale_2: f32,
    packed: &mut [u8],
    scales: &mut [u8],
) {
    check_buffers(src.len(), dtype, rows, cols, packed.len(), scales.len());
    let blocks_per_row = cols / NVFP4_BLOCK_SIZE;
    let row_bytes = cols * dtype.size();
    // ModelOpt divides by the tensor `6.0 * wss2`, which is rounded to f32 first.
    let six_ws2 = E2M1_MAX * weight_scale_2;
    let mut row = vec![0.0f32; cols];
    for r in 0..rows {
        load_f32_into(&src[r * row_bytes..(r + 1) * row_bytes], dtype, &mut row);
        let row_scales = &mut scales[r * blocks_per_row..(r + 1) * blocks_per_row];
        for (block, scale) in row
            .chunks_exact(NVFP4_BLOCK_SIZE)
            .zip(row_scales.iter_mut())
        {
            // `>` rather than f32::max: same result (a NaN element is skipped), but it vectorizes.
            let block_max = block
                .iter()
                .fold(0.0f32, |m, w| if w.abs() > m { w.abs() } else { m });
            let s = block_max / six_ws2;
            // An all-zero block (or an underflowing quotient) gets scale 1.0.
            *scale = block_scale_byte(if s == 0.0 { 1.0 } else { s });
        }
        pack_row(
            &row,
            row_scales,
            weight_scale_2,
            &mut packed[r * cols / 2..(r + 1) * cols / 2],
        );
    }
}

/// Static NVFP4 (per-block amax from a calibration, e.g. ModelOpt's FP8-scale sweep,
/// `NVFP4QTensor.get_weights_scaling_factor_from_quantizer`); returns `weight_scale_2`.
///
/// With `g = global_amax` and `a_b = block_amax[b]` (row-major `[rows, cols/16]`):
/// `ws2 = div_const(g, 2688)`; `s = div_const(a_b, 6)`; `s == 0 → 1`;
/// `s = f32(s · 448) / div_const(g, 6)` (the last division is by a tensor: exact IEEE);
/// clamp to `[2^-9, 448]`; `scales[b] = e4m3(s)`; then [`pack_nvfp4`] with `ws2`.
///
/// Panics on the buffer lengths of [`quantize_nvfp4`] or if `block_amax.len()` is not
/// rows·cols/16.
#[allow(clippy::too_many_arguments)]
pub fn quantize_nvfp4_static(
    src: &[u8],
    dtype: SourceDtype,
    rows: usize,
    cols: usize,
    block_amax: &[f32],
    global_amax: f32,
    numerics: Numerics,
    packed: &mut [u8],
    scales: &mut [u8],
) -> f32 {
    check_buffers(src.len(), dtype, rows, cols, packed.len(), scales.len());
    assert_eq!(
        block_amax.len(),
        scales.len(),
        "block_amax must hold rows*cols/16 values"
    );
    let weight_scale_2 = nvfp4_global_scale(global_amax, numerics);
    let block_scale_max = numerics.div_const(global_amax, E2M1_MAX);
    for (a, scale) in block_amax.iter().zip(scales.iter_mut()) {
        let mut s = numerics.div_const(*a, E2M1_MAX);
        if s == 0.0 {
            s = 1.0;
        }
        *scale = block_scale_byte((s * E4M3_MAX) / block_scale_max);
    }
    pack_nvfp4(src, dtype, rows, cols, weight_scale_2, scales, packed);
    weight_scale_2
}

/// Encodes and packs a row-major weight `[rows, cols]` given its E4M3 block scales
/// (`scales`, `[rows, cols/16]`) and `weight_scale_2`.
///
/// Element `j` of row `r` in block `b`: `q = f32(w) / f32(e4m3_to_f32(scales[b]) · ws2)`
/// (f32 product, then IEEE f32 division), nibble = [`e2m1_nibble`]`(q)`; byte
/// `packed[r·cols/2 + j/2]` holds element `2k` in its LOW nibble and `2k+1` in its high nibble.
/// Panics on the buffer lengths of [`quantize_nvfp4`].
pub fn pack_nvfp4(
    src: &[u8],
    dtype: SourceDtype,
    rows: usize,
    cols: usize,
    weight_scale_2: f32,
    scales: &[u8],
    packed: &mut [u8],
) {
    check_buffers(src.len(), dtype, rows, cols, packed.len(), scales.len());
    let blocks_per_row = cols / NVFP4_BLOCK_SIZE;
    let row_bytes = cols * dtype.size();
    let mut row = vec![0.0f32; cols];
    for r in 0..rows {
        load_f32_into(&src[r * row_bytes..(r + 1) * row_bytes], dtype, &mut row);
        let row_scales = &scales[r * blocks_per_row..(r + 1) * blocks_per_row];
        pack_row(
            &row,
            row_scales,
            weight_scale_2,
            &mut packed[r * cols / 2..(r + 1) * cols / 2],
        );
    }
}

/// The E4M3 byte of a block scale: clamp to `[2^-9, 448]` (ModelOpt ≥ 0.45
/// `_cast_per_block_scale_to_fp8`: a tiny block gets 2^-9, never 0), round to E4M3. NaN stays
/// NaN, as `torch.clamp` leaves it, and encodes as `0x7F`. The callers replace a zero scale by
/// 1.0 first, each at the step where ModelOpt does it.
/// `e4m3(clamp(scale, 2^-9, 448))`: the E4M3 byte of an NVFP4 block scale.
pub(crate) fn block_scale_byte(scale: f32) -> u8 {
    e4m3_from_f32(scale.clamp(E4M3_MIN_SUBNORMAL, E4M3_MAX))
}

/// Encodes one decoded row given its block scale bytes; `out` is the row's `cols/2` bytes.
fn pack_row(row: &[f32], scales: &[u8], weight_scale_2: f32, out: &mut [u8]) {
    let blocks = row
        .chunks_exact(NVFP4_BLOCK_SIZE)
        .zip(scales)
        .zip(out.chunks_exact_mut(NVFP4_BLOCK_SIZE / 2));
    for ((block, &scale), out_block) in blocks {
        let denominator = e4m3_to_f32(scale) * weight_scale_2;
        let mut nibbles = [0u8; NVFP4_BLOCK_SIZE];
        for (nibble, w) in nibbles.iter_mut().zip(block) {
            *nibble = e2m1_nibble(w / denominator);
        }
        for (pair, byte) in nibbles.chunks_exact(2).zip(out_block.iter_mut()) {
            *byte = pair[0] | (pair[1] << 4);
        }
    }
}

fn check_buffers(
    src_len: usize,
    dtype: SourceDtype,
    rows: usize,
    cols: usize,
    packed_len: usize,
    scales_len: usize,
) {
    assert_eq!(
        cols % NVFP4_BLOCK_SIZE,
        0,
        "NVFP4 needs cols ({cols}) to be a multiple of {NVFP4_BLOCK_SIZE}"
    );
    let elements = rows * cols;
    assert_eq!(
        src_len,
        elements * dtype.size(),
        "src must hold rows*cols {} elements",
        dtype.name()
    );
    assert_eq!(
        packed_len,
        elements / 2,
        "packed must hold rows*cols/2 bytes"
    );
    assert_eq!(
        scales_len,
        elements / NVFP4_BLOCK_SIZE,
        "scales must hold rows*cols/16 bytes"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::test_util::encode;

    /// docs/modelopt-format.md §2.2, byte for byte.
    #[test]
    fn test_worked_example() {
        let mut w = vec![
            0.0, 0.1, -0.125, 0.25, 0.375, -0.5, 0.625, 0.75, 0.875, -1.0, 1.25, 1.5, -1.75, 2.25,
            2.75, 3.0, 10.5, -5.25, 2.625, 1.3125, 0.65625, -0.328125,
        ];
        w.extend([0.0; 9]);
        w.push(-10.5);
        w.extend([0.0; 16]);
        let src = encode(&w, SourceDtype::Bf16);
        let amax = crate::compute::amax(&src, SourceDtype::Bf16).unwrap();
        assert_eq!(amax, 10.5);
        for numerics in Numerics::ALL {
            let ws2 = nvfp4_global_scale(amax, numerics);
            assert_eq!(ws2.to_bits(), 0x3B80_0000, "{numerics:?}");
            let mut packed = [0u8; 24];
            let mut scales = [0u8; 3];
            quantize_nvfp4(
                &src,
                SourceDtype::Bf16,
                1,
                48,
                ws2,
                &mut packed,
                &mut scales,
            );
            assert_eq!(scales, [0x70, 0x7E, 0x38]);
            let want: [u8; 24] = [
                0x00, 0x18, 0xA2, 0x32, 0xC4, 0x54, 0x6E, 0x77, 0xD7, 0x23, 0x81, 0x00, 0x00, 0x00,
                0x00, 0xF0, 0, 0, 0, 0, 0, 0, 0, 0,
            ];
            assert_eq!(packed, want, "{numerics:?}");
        }
        assert_eq!(
            nvfp4_global_scale(20.0, Numerics::ModeloptCuda).to_bits(),
            0x3BF3_CF3D
        );
    }

    /// One row of `blocks` blocks, each all zero except element 0 = `block_max[b]`.
    fn block_scales_for(block_max: &[f32], ws2: f32) -> Vec<u8> {
        let mut w = vec![0.0f32; 16 * block_max.len()];
        for (b, m) in block_max.iter().enumerate() {
            w[16 * b] = *m;
        }
        let src = encode(&w, SourceDtype::Bf16);
        let mut packed = vec![0u8; w.len() / 2];
        let mut scales = vec![0u8; block_max.len()];
        quantize_nvfp4(
            &src,
            SourceDtype::Bf16,
            1,
            w.len(),
            ws2,
            &mut packed,
            &mut scales,
        );
        scales
    }

    #[test]
    fn test_block_scale_edge_cases() {
        // ws2 = 2^-4 so 6·ws2 = 0.375 exactly; a block max of 0.375·t gives s = t.
        let ws2 = 0.0625f32;
        let six = 0.375f32;
        let cases: [(f32, u8); 9] = [
            (0.0, 0x38),                // zero block -> 1.0
            (six / 1048576.0, 0x01),    // tiny block (2^-20) clamps to 2^-9, not 0
            (six * 3.0 / 1024.0, 0x02), // subnormal tie 3·2^-10 -> 2^-8 (even)
            (six * 8.5, 0x50),          // tie 8.5 -> 8 (even)
            (six * 9.5, 0x52),          // tie 9.5 -> 10 (even)
            (six * 448.0, 0x7E),        // exactly the max
            (six * 464.0, 0x7E),        // would round to 448 anyway
            (six * 1024.0, 0x7E),       // saturates via the clamp, not NaN
            (six * 1.0, 0x38),          // 1.0
        ];
        let block_max: Vec<f32> = cases.iter().map(|c| c.0).collect();
        // The block maxima must be bf16 values for the test to mean what it says.
        for m in &block_max {
            assert_eq!(
                half::bf16::from_f32(*m).to_f32(),
                *m,
                "{m} is not a bf16 value"
            );
        }
        let got = block_scales_for(&block_max, ws2);
        for (i, (m, want)) in cases.iter().enumerate() {
            assert_eq!(
                got[i], *want,
                "block max {m}: got {:#04x} want {want:#04x}",
                got[i]
            );
        }
        // The tiny block decodes to 2^-9 and its element to 6 (q far above 6 saturates).
        assert_eq!(e4m3_to_f32(0x01), E4M3_MIN_SUBNORMAL);
    }

    #[test]
    fn test_static_matches_formula_on_simple_values() {
        // g = 10.5 -> ws2 = 2^-8; a_b/6 * 448 / (g/6): a_b = 3.0 -> 128 (0x70), 10.5 -> 448,
        // 0 -> 1.0 * 448 / 1.75 = 256 (0x78), tiny -> clamp 2^-9.
        let w = vec![0.0f32; 64];
        let src = encode(&w, SourceDtype::Bf16);
        let mut packed = vec![0u8; 32];
        let mut scales = vec![0u8; 4];
        let ws2 = quantize_nvfp4_static(
            &src,
            SourceDtype::Bf16,
            1,
            64,
            &[3.0, 10.5, 0.0, 1e-9],
            10.5,
            Numerics::ModeloptCpu,
            &mut packed,
            &mut scales,
        );
        assert_eq!(ws2.to_bits(), 0x3B80_0000);
        assert_eq!(scales, vec![0x70, 0x7E, 0x78, 0x01]);
        assert!(packed.iter().all(|b| *b == 0));
    }

    #[test]
    fn test_static_zero_fixup_precedes_the_rescale() {
        // ModelOpt replaces zeros of `a_b / 6` by 1.0, before `* 448 / (g / 6)`; a quotient
        // that underflows to 0 only afterwards is clamped to 2^-9 (0x01), not set to 1.0.
        let tiny = f32::from_bits(3); // 3 * 2^-149: a_b / 6 = 2^-149, not zero
        let src = encode(&[0.0; 16], SourceDtype::F32);
        for numerics in Numerics::ALL {
            let mut scales = [0u8; 1];
            let mut packed = [0u8; 8];
            quantize_nvfp4_static(
                &src,
                SourceDtype::F32,
                1,
                16,
                &[tiny],
                1e38,
                numerics,
                &mut packed,
                &mut scales,
            );
            assert_eq!(scales, [0x01], "{numerics:?}");
            quantize_nvfp4_static(
                &src,
                SourceDtype::F32,
                1,
                16,
                &[0.0],
                6.0,
                numerics,
                &mut packed,
                &mut scales,
            );
            assert_eq!(
                scales,
                [e4m3_from_f32(448.0)],
                "{numerics:?}: a zero block amax is 1.0 * 448 / 1"
            );
        }
    }

    #[test]
    #[should_panic(expected = "multiple of 16")]
    fn test_rejects_cols_not_multiple_of_16() {
        let src = vec![0u8; 2 * 24];
        quantize_nvfp4(
            &src,
            SourceDtype::Bf16,
            1,
            24,
            1.0,
            &mut [0u8; 12],
            &mut [0u8; 1],
        );
    }

    #[test]
    fn test_degenerate_scales_do_not_panic() {
        let w: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let src = encode(&w, SourceDtype::F32);
        for ws2 in [0.0f32, f32::NAN, f32::INFINITY, 1e-30, 1e30] {
            let mut packed = vec![0u8; 16];
            let mut scales = vec![0u8; 2];
            quantize_nvfp4(&src, SourceDtype::F32, 1, 32, ws2, &mut packed, &mut scales);
        }
        let mut packed = vec![0u8; 16];
        let mut scales = vec![0u8; 2];
        for g in [0.0f32, f32::NAN] {
            quantize_nvfp4_static(
                &src,
                SourceDtype::F32,
                1,
                32,
                &[0.0, f32::NAN],
                g,
                Numerics::ModeloptCuda,
                &mut packed,
                &mut scales,
            );
        }
    }
}
