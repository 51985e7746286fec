//! A quantized linear: the tensors it exports, in the one order the format table states, and the
//! per-member arithmetic that fills them, the same on the CPU and the GPU (both run through
//! [`UnitCompute`]).
//!
//! The scale policy that decides the inputs (which amax a group shares, MSE searches, the
//! checks against statistics) is the pipeline worker's; this module turns one member's
//! decided scales into bytes.

use crate::compute::backend::UnitCompute;
use crate::compute::ct::{bf16_bytes, ct_fp8_block_grid, ct_fp8_scale, ct_global_scale};
use crate::compute::{
    fp8_scale, nvfp4_global_scale, Export, Fp8Quotient, Numerics, QuantFormat, SourceDtype,
};
use crate::error::Result;
use safetensors::Dtype;

/// One tensor that a quantized linear exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The weight codes: packed E2M1 pairs (`U8 [rows, cols/2]`) or E4M3 bytes
    /// (`F8_E4M3 [rows, cols]`).
    Codes,
    /// The weight's scale tensor: NVFP4's E4M3 per-block scales (`F8_E4M3 [rows, cols/16]`);
    /// compressed-tensors FP8's bf16 per-tensor (`[1]`), per-channel (`[rows, 1]`) or
    /// per-128x128-block (`[ceil(rows/128), ceil(cols/128)]`) scales.
    BlockScales,
    /// The per-tensor f32 weight scale: NVFP4's `weight_scale_2` (ModelOpt, a multiplier) or
    /// `weight_global_scale` (compressed-tensors, a divisor), ModelOpt FP8's `weight_scale`.
    TensorScale,
    /// The per-tensor input scale (formats that quantize activations): ModelOpt's f32
    /// `input_scale`; compressed-tensors' f32 `input_global_scale` (NVFP4, a divisor) or bf16
    /// `input_scale` (FP8).
    InputScale,
}

/// `(part, name suffix)` of each tensor a quantized linear exports, in the order every
/// consumer uses: the plan's output tensors, the worker's payloads, the writer's offsets.
pub fn parts(format: QuantFormat, export: Export) -> &'static [(Part, &'static str)] {
    // compressed-tensors 0.19 names (SPEC §3, §7): the weight's scales are one tensor (bf16
    // for FP8, per tensor, channel or block), the activation scale is stored for the static
    // schemes only (`NVFP4`, `FP8`), as for ModelOpt.
    const CT_NVFP4: &[(Part, &str)] = &[
        (Part::Codes, "weight_packed"),
        (Part::BlockScales, "weight_scale"),
        (Part::TensorScale, "weight_global_scale"),
        (Part::InputScale, "input_global_scale"),
    ];
    const CT_FP8: &[(Part, &str)] = &[
        (Part::Codes, "weight"),
        (Part::BlockScales, "weight_scale"),
        (Part::InputScale, "input_scale"),
    ];
    const NVFP4: &[(Part, &str)] = &[
        (Part::Codes, "weight"),
        (Part::BlockScales, "weight_scale"),
        (Part::TensorScale, "weight_scale_2"),
        (Part::InputScale, "input_scale"),
    ];
    const FP8: &[(Part, &str)] = &[
        (Part::Codes, "weight"),
        (Part::TensorScale, "weight_scale"),
        (Part::InputScale, "input_scale"),
    ];
    let all = match (export, format.is_nvfp4()) {
        (Export::Modelopt, true) => NVFP4,
        (Export::Modelopt, false) => FP8,
        (Export::CompressedTensors, true) => CT_NVFP4,
        (Export::CompressedTensors, false) => CT_FP8,
    };
    if format.needs_input_amax() {
        all
    } else {
        &all[..all.len() - 1]
    }
}

/// The tensors a quantized linear exports for a weight `[rows, cols]`, as (suffix, dtype,
/// shape), in [`parts`] order. ModelOpt:
/// - NVFP4: `weight` U8 `[rows, cols/2]`, `weight_scale` F8_E4M3 `[rows, cols/16]`,
///   `weight_scale_2` F32 `[]`, `input_scale` F32 `[]` (none for W4A16);
/// - FP8: `weight` F8_E4M3 `[rows, cols]`, `weight_scale` F32 `[]`, `input_scale` F32 `[]`.
///
/// compressed-tensors (scalars are `[1]`, FP8 scales bf16, the BF16 weights' dtype):
/// - NVFP4: `weight_packed` U8 `[rows, cols/2]`, `weight_scale` F8_E4M3 `[rows, cols/16]`,
///   `weight_global_scale` F32 `[1]`, `input_global_scale` F32 `[1]` (W4A4 only);
/// - FP8 per tensor: `weight` F8_E4M3 `[rows, cols]`, `weight_scale` BF16 `[1]`,
///   `input_scale` BF16 `[1]`;
/// - FP8 per channel: `weight` F8_E4M3 `[rows, cols]`, `weight_scale` BF16 `[rows, 1]`;
/// - FP8 block: `weight` F8_E4M3 `[rows, cols]`, `weight_scale` BF16
///   `[ceil(rows/128), ceil(cols/128)]`.
///
/// Assumes [`crate::compute::check_shape`] passed.
pub fn output_tensors(
    format: QuantFormat,
    export: Export,
    rows: usize,
    cols: usize,
) -> Vec<(&'static str, Dtype, Vec<usize>)> {
    parts(format, export)
        .iter()
        .map(|&(part, suffix)| {
            let (dtype, shape) = match part {
                Part::Codes if format.is_nvfp4() => (Dtype::U8, vec![rows, cols / 2]),
                Part::Codes => (Dtype::F8_E4M3, vec![rows, cols]),
                Part::BlockScales if format.is_nvfp4() => (Dtype::F8_E4M3, vec![rows, cols / 16]),
                Part::BlockScales if format.is_fp8_block() => {
                    let (gr, gc) = ct_fp8_block_grid(rows, cols);
                    (Dtype::BF16, vec![gr, gc])
                }
                Part::BlockScales if format.is_fp8_per_tensor() => (Dtype::BF16, vec![1]),
                Part::BlockScales => (Dtype::BF16, vec![rows, 1]),
                Part::TensorScale | Part::InputScale => scalar_layout(part, format, export),
            };
            (suffix, dtype, shape)
        })
        .collect()
}

/// The dtype and shape of a scalar part ([`Part::TensorScale`], [`Part::InputScale`]): f32 `[]`
/// for ModelOpt; f32 `[1]` for compressed-tensors, except FP8's `input_scale`, which is bf16
/// `[1]` like its other scales (llm-compressor stores FP8 scales in the weights' dtype).
fn scalar_layout(part: Part, format: QuantFormat, export: Export) -> (Dtype, Vec<usize>) {
    match export {
        Export::Modelopt => (Dtype::F32, vec![]),
        Export::CompressedTensors if part == Part::InputScale && !format.is_nvfp4() => {
            (Dtype::BF16, vec![1])
        }
        Export::CompressedTensors => (Dtype::F32, vec![1]),
    }
}

/// The stored bytes of a scalar part's value `x` (see [`scalar_layout`]; a bf16 part holds a
/// value already rounded to bf16).
fn scalar_bytes(part: Part, format: QuantFormat, export: Export, x: f32) -> Vec<u8> {
    match scalar_layout(part, format, export).0 {
        Dtype::BF16 => bf16_bytes(x).to_vec(),
        _ => x.to_le_bytes().to_vec(),
    }
}

/// Where a quantized input scale comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputAmax {
    /// The input amax after the sharing rules.
    pub amax: f32,
    /// The same, exactly, where it was recovered from an exported scale: the scale is then
    /// `f32(exact / bound)`, which gives back the exported scale itself.
    pub exact: Option<f64>,
}

impl InputAmax {
    /// The input scale of `format` in `export`'s form. ModelOpt: `amax / 2688` for NVFP4,
    /// `amax / 448` for FP8 (or, with [`InputAmax::exact`], the exported scale back).
    /// compressed-tensors: NVFP4's divisor `input_global_scale` by the weight global scale's
    /// formula ([`ct_global_scale`], SPEC §7.1), FP8's bf16 `input_scale` by the weight scale's
    /// ([`ct_fp8_scale`], §7.2). Both round to bf16 on the way, so they take the f32 amax: a
    /// scale read back from a compressed-tensors export comes back as it was (its amax is
    /// `scale × 448`, exact in f32, or `2688 / g`, which gives `g` back:
    /// [`crate::compute::ct::ct_amax_for_global_scale`]).
    pub fn scale(self, format: QuantFormat, export: Export, numerics: Numerics) -> f32 {
        if export == Export::CompressedTensors {
            return if format.is_nvfp4() {
                ct_global_scale(self.amax)
            } else {
                ct_fp8_scale(self.amax)
            };
        }
        let (bound, computed) = if format.is_nvfp4() {
            (2688.0, nvfp4_global_scale(self.amax, numerics))
        } else {
            (448.0, fp8_scale(self.amax, numerics))
        };
        self.exact.map_or(computed, |x| (x / bound) as f32)
    }
}

/// How one member's weight is scaled.
#[derive(Debug, Clone, Copy)]
pub enum Scaling<'b> {
    /// NVFP4 block scales from the data under the group's global amax; FP8 per tensor from
    /// the group amax.
    Dynamic,
    /// Static NVFP4: these per-block amax (`[rows, cols/16]`, from statistics or the FP8
    /// scale sweep) under the group's global amax.
    StaticBlocks(&'b [f32]),
}

/// What one member of a group is quantized with.
#[derive(Debug, Clone, Copy)]
pub struct MemberScales<'b> {
    /// The target format.
    pub format: QuantFormat,
    /// The export, whose arithmetic rules apply.
    pub export: Export,
    /// Which ModelOpt export arithmetic.
    pub numerics: Numerics,
    /// The group's unified weight amax (the static global amax for static blocks).
    pub group_amax: f32,
    /// Block scales from the data or given.
    pub scaling: Scaling<'b>,
    /// FP8: the precision of `w / weight_scale` ([`Fp8Quotient`]).
    pub quotient: Fp8Quotient,
    /// The input amax, for formats that quantize activations.
    pub input: Option<InputAmax>,
}

impl MemberScales<'_> {
    /// FP8's per-tensor weight scale, when it would divide by zero in the quotient's
    /// precision (the weight's `dtype`, or f32): a quantization that must be refused.
    pub fn fp8_zero_divisor(&self, dtype: SourceDtype) -> Option<f32> {
        // compressed-tensors replaces a zero scale by bf16 eps: it never divides by zero.
        if self.format.is_nvfp4() || self.export == Export::CompressedTensors {
            return None;
        }
        let ws = fp8_scale(self.group_amax, self.numerics);
        let zero = match self.quotient {
            Fp8Quotient::WeightDtype => dtype.round(ws) == 0.0,
            Fp8Quotient::F32 => ws == 0.0,
        };
        zero.then_some(ws)
    }
}

/// A quantized linear's bytes, before they are laid out in [`parts`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLinear {
    /// [`Part::Codes`].
    pub codes: Vec<u8>,
    /// [`Part::BlockScales`] (NVFP4; compressed-tensors FP8's bf16 scales), empty for
    /// ModelOpt FP8.
    pub block_scales: Vec<u8>,
    /// [`Part::TensorScale`].
    pub tensor_scale: f32,
    /// [`Part::InputScale`], for formats that quantize activations.
    pub input_scale: Option<f32>,
}

impl QuantizedLinear {
    /// Quantizes member `m` of the unit loaded in `compute` (a weight `[rows, cols]`).
    pub fn compute<'a>(
        compute: &mut dyn UnitCompute<'a>,
        m: usize,
        rows: usize,
        cols: usize,
        scales: &MemberScales<'_>,
    ) -> Result<QuantizedLinear> {
        let (format, numerics) = (scales.format, scales.numerics);
        if scales.export == Export::CompressedTensors {
            return Self::compute_ct(compute, m, rows, cols, scales);
        }
        let input_scale = scales
            .input
            .map(|i| i.scale(format, scales.export, numerics));
        if format.is_nvfp4() {
            let mut codes = vec![0u8; rows * cols / 2];
            let mut block_scales = vec![0u8; rows * cols / 16];
            let tensor_scale = match scales.scaling {
                Scaling::StaticBlocks(blocks) => compute.nvfp4_static(
                    m,
                    rows,
                    cols,
                    blocks,
                    scales.group_amax,
                    numerics,
                    &mut codes,
                    &mut block_scales,
                )?,
                Scaling::Dynamic => {
                    let ws2 = nvfp4_global_scale(scales.group_amax, numerics);
                    compute.nvfp4(m, rows, cols, ws2, &mut codes, &mut block_scales)?;
                    ws2
                }
            };
            Ok(QuantizedLinear {
                codes,
                block_scales,
                tensor_scale,
                input_scale,
            })
        } else {
            let ws = fp8_scale(scales.group_amax, numerics);
            let mut codes = vec![0u8; rows * cols];
            compute.fp8(m, ws, numerics, scales.quotient, &mut codes)?;
            Ok(QuantizedLinear {
                codes,
                block_scales: Vec::new(),
                tensor_scale: ws,
                input_scale,
            })
        }
    }

    /// compressed-tensors' arithmetic ([`crate::compute::ct`]): NVFP4 under the divisor
    /// global scale of the group amax; FP8 per tensor from the group amax (a compressed-tensors
    /// FP8 unit is one linear: the plan pairs no FP8 linears for this export), per channel or
    /// per block from the data. The input scale, for the static schemes, in compressed-tensors'
    /// form ([`InputAmax::scale`]).
    fn compute_ct<'a>(
        compute: &mut dyn UnitCompute<'a>,
        m: usize,
        rows: usize,
        cols: usize,
        scales: &MemberScales<'_>,
    ) -> Result<QuantizedLinear> {
        let format = scales.format;
        let input_scale = scales
            .input
            .map(|i| i.scale(format, scales.export, scales.numerics));
        if format.is_nvfp4() {
            let g = ct_global_scale(scales.group_amax);
            let mut codes = vec![0u8; rows * cols / 2];
            let mut block_scales = vec![0u8; rows * cols / 16];
            compute.ct_nvfp4(m, rows, cols, g, &mut codes, &mut block_scales)?;
            return Ok(QuantizedLinear {
                codes,
                block_scales,
                tensor_scale: g,
                input_scale,
            });
        }
        if format.is_fp8_per_tensor() {
            let s = ct_fp8_scale(scales.group_amax);
            let mut codes = vec![0u8; rows * cols];
            compute.ct_fp8_tensor(m, s, &mut codes)?;
            return Ok(QuantizedLinear {
                codes,
                block_scales: bf16_bytes(s).to_vec(),
                tensor_scale: s,
                input_scale,
            });
        }
        let scale_count = if format.is_fp8_block() {
            let (gr, gc) = ct_fp8_block_grid(rows, cols);
            gr * gc
        } else {
            rows
        };
        let mut codes = vec![0u8; rows * cols];
        let mut block_scales = vec![0u8; scale_count * 2];
        compute.ct_fp8(m, rows, cols, format, &mut codes, &mut block_scales)?;
        Ok(QuantizedLinear {
            codes,
            block_scales,
            tensor_scale: 0.0,
            input_scale,
        })
    }

    /// A BMM expert stack `[E, in, out]` was quantized as its transposed copy `[E * out, in]`:
    /// its codes and block scales go back to the stored order, as ModelOpt's export
    /// transposes them back.
    pub fn transpose_experts_back(&mut self, experts: usize, out: usize) {
        for bytes in [&mut self.codes, &mut self.block_scales] {
            if !bytes.is_empty() {
                let k = bytes.len() / (experts * out);
                *bytes = transpose_experts(bytes, experts, out, k, 1);
            }
        }
    }

    /// The exported tensors' bytes in [`parts`] order. `None` when `format` would export
    /// a part this linear does not hold (an input scale without an input amax).
    pub fn into_tensors(self, format: QuantFormat, export: Export) -> Option<Vec<Vec<u8>>> {
        let mut codes = Some(self.codes);
        let mut block_scales = Some(self.block_scales);
        parts(format, export)
            .iter()
            .map(|(part, _)| match part {
                Part::Codes => codes.take(),
                Part::BlockScales => block_scales.take(),
                Part::TensorScale => Some(scalar_bytes(*part, format, export, self.tensor_scale)),
                Part::InputScale => self
                    .input_scale
                    .map(|x| scalar_bytes(*part, format, export, x)),
            })
            .collect()
    }
}

/// Transposes each of `experts` row-major `[rows, cols]` matrices of `elem`-byte elements in
/// `src` into `[cols, rows]`: the BMM-style `[E, in, out]` ↔ `[E, out, in]` change of order.
pub fn transpose_experts(
    src: &[u8],
    experts: usize,
    rows: usize,
    cols: usize,
    elem: usize,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), experts * rows * cols * elem);
    let mut dst = vec![0u8; src.len()];
    let matrix = rows * cols * elem;
    for (s, d) in src.chunks_exact(matrix).zip(dst.chunks_exact_mut(matrix)) {
        // Tiles keep both sides in cache for large matrices.
        const TILE: usize = 32;
        for r0 in (0..rows).step_by(TILE) {
            for c0 in (0..cols).step_by(TILE) {
                for r in r0..(r0 + TILE).min(rows) {
                    for c in c0..(c0 + TILE).min(cols) {
                        let from = (r * cols + c) * elem;
                        let to = (c * rows + r) * elem;
                        d[to..to + elem].copy_from_slice(&s[from..from + elem]);
                    }
                }
            }
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::codec::bf16_round;

    #[test]
    fn transposes_each_expert() {
        // 2 experts of [2, 3] u16 elements.
        let src: Vec<u16> = (0..12).collect();
        let bytes: Vec<u8> = src.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = transpose_experts(&bytes, 2, 2, 3, 2);
        let got: Vec<u16> = t
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(got, vec![0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]);
        // Twice is the identity, also for sizes that are not multiples of the tile.
        let big: Vec<u8> = (0..3 * 37 * 45).map(|i| (i * 7 % 251) as u8).collect();
        let there = transpose_experts(&big, 3, 37, 45, 1);
        assert_eq!(transpose_experts(&there, 3, 45, 37, 1), big);
    }

    #[test]
    fn parts_and_tensors_agree() {
        assert_eq!(
            output_tensors(QuantFormat::Nvfp4, Export::Modelopt, 64, 128),
            vec![
                ("weight", Dtype::U8, vec![64, 64]),
                ("weight_scale", Dtype::F8_E4M3, vec![64, 8]),
                ("weight_scale_2", Dtype::F32, vec![]),
                ("input_scale", Dtype::F32, vec![]),
            ]
        );
        assert_eq!(
            output_tensors(QuantFormat::W4a16Nvfp4, Export::Modelopt, 3, 32),
            vec![
                ("weight", Dtype::U8, vec![3, 16]),
                ("weight_scale", Dtype::F8_E4M3, vec![3, 2]),
                ("weight_scale_2", Dtype::F32, vec![]),
            ]
        );
        assert_eq!(
            output_tensors(QuantFormat::Fp8, Export::Modelopt, 5, 7),
            vec![
                ("weight", Dtype::F8_E4M3, vec![5, 7]),
                ("weight_scale", Dtype::F32, vec![]),
                ("input_scale", Dtype::F32, vec![]),
            ]
        );
        assert_eq!(
            output_tensors(QuantFormat::W4a16Nvfp4, Export::CompressedTensors, 3, 32),
            vec![
                ("weight_packed", Dtype::U8, vec![3, 16]),
                ("weight_scale", Dtype::F8_E4M3, vec![3, 2]),
                ("weight_global_scale", Dtype::F32, vec![1]),
            ]
        );
        assert_eq!(
            output_tensors(QuantFormat::Fp8Dynamic, Export::CompressedTensors, 5, 7),
            vec![
                ("weight", Dtype::F8_E4M3, vec![5, 7]),
                ("weight_scale", Dtype::BF16, vec![5, 1]),
            ]
        );
        assert_eq!(
            output_tensors(QuantFormat::Fp8Block, Export::CompressedTensors, 64, 256),
            vec![
                ("weight", Dtype::F8_E4M3, vec![64, 256]),
                ("weight_scale", Dtype::BF16, vec![1, 2]),
            ]
        );
        // The static schemes: W4A4 adds the divisor-form input global scale (f32), static FP8
        // stores its weight and input scales in bf16, like llm-compressor's oneshot.
        assert_eq!(
            output_tensors(QuantFormat::Nvfp4, Export::CompressedTensors, 3, 32),
            vec![
                ("weight_packed", Dtype::U8, vec![3, 16]),
                ("weight_scale", Dtype::F8_E4M3, vec![3, 2]),
                ("weight_global_scale", Dtype::F32, vec![1]),
                ("input_global_scale", Dtype::F32, vec![1]),
            ]
        );
        assert_eq!(
            output_tensors(QuantFormat::Fp8, Export::CompressedTensors, 5, 7),
            vec![
                ("weight", Dtype::F8_E4M3, vec![5, 7]),
                ("weight_scale", Dtype::BF16, vec![1]),
                ("input_scale", Dtype::BF16, vec![1]),
            ]
        );
        // Each format's payloads come out in the same order and sizes as its tensors.
        for (format, export) in [
            (QuantFormat::Nvfp4, Export::Modelopt),
            (QuantFormat::W4a16Nvfp4, Export::Modelopt),
            (QuantFormat::Fp8, Export::Modelopt),
            (QuantFormat::Nvfp4, Export::CompressedTensors),
            (QuantFormat::Fp8, Export::CompressedTensors),
        ] {
            let (rows, cols) = (4, 32);
            let ct = export == Export::CompressedTensors;
            let q = QuantizedLinear {
                codes: vec![1; rows * cols / if format.is_nvfp4() { 2 } else { 1 }],
                block_scales: match (format.is_nvfp4(), ct) {
                    (true, _) => vec![2; rows * cols / 16],
                    (false, true) => bf16_bytes(0.5).to_vec(),
                    (false, false) => Vec::new(),
                },
                tensor_scale: 3.0,
                input_scale: Some(4.0),
            };
            let tensors = q.into_tensors(format, export).unwrap();
            let expected = output_tensors(format, export, rows, cols);
            assert_eq!(tensors.len(), expected.len());
            for (bytes, (name, dtype, shape)) in tensors.iter().zip(&expected) {
                let len = shape.iter().product::<usize>() * dtype.bitsize() / 8;
                assert_eq!(bytes.len(), len, "{format:?} {export:?} {name}");
            }
            let input = tensors.last().unwrap();
            match (format.needs_input_amax(), format.is_nvfp4(), ct) {
                (false, _, _) => {}
                (true, false, true) => assert_eq!(input, &bf16_bytes(4.0).to_vec()),
                (true, _, _) => assert_eq!(input, &4.0f32.to_le_bytes().to_vec()),
            }
        }
    }

    #[test]
    fn a_missing_input_scale_is_not_laid_out() {
        let q = QuantizedLinear {
            codes: vec![0; 8],
            block_scales: Vec::new(),
            tensor_scale: 1.0,
            input_scale: None,
        };
        assert_eq!(q.into_tensors(QuantFormat::Fp8, Export::Modelopt), None);
    }

    #[test]
    fn input_scales_divide_or_give_back_the_exported_scale() {
        let n = Numerics::ModeloptCuda;
        let mo = Export::Modelopt;
        let a = InputAmax {
            amax: 10.0,
            exact: None,
        };
        assert_eq!(
            a.scale(QuantFormat::Nvfp4, mo, n),
            nvfp4_global_scale(10.0, n)
        );
        assert_eq!(a.scale(QuantFormat::Fp8, mo, n), fp8_scale(10.0, n));
        let exported = 0.013_f32;
        let exact = InputAmax {
            amax: 0.0,
            exact: Some(f64::from(exported) * 448.0),
        };
        assert_eq!(exact.scale(QuantFormat::Fp8, mo, n), exported);
        // compressed-tensors: the weight global scale's formula (a divisor) and bf16(amax / 448),
        // from the f32 amax whatever `exact` says; a zero amax gives bf16 eps, as for weights.
        let ct = Export::CompressedTensors;
        assert_eq!(a.scale(QuantFormat::Nvfp4, ct, n), ct_global_scale(10.0));
        assert_eq!(a.scale(QuantFormat::Fp8, ct, n), bf16_round(10.0 / 448.0));
        let zero = InputAmax {
            amax: 0.0,
            exact: None,
        };
        assert_eq!(zero.scale(QuantFormat::Fp8, ct, n), 0.007_812_5);
        // oneshot's values (fixtures/ct): amax 4.9765625 gives input_scale 0.0111083984375.
        let oneshot = InputAmax {
            amax: 4.976_562_5,
            exact: None,
        };
        assert_eq!(
            oneshot.scale(QuantFormat::Fp8, ct, n),
            f32::from_bits(0x3C36 << 16)
        );
    }
}
