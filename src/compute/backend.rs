//! Where a unit's numeric work runs: the same calls on the CPU ([`CpuCompute`]) or on a GPU
//! (`crate::compute::cuda::GpuCompute`), with bit-identical results. The scale policy that decides what
//! to compute lives in the pipeline's worker and is shared by both.

use crate::compute::mse;

use crate::compute;
use crate::compute::mse::Candidates;
use crate::compute::{DequantPrecision, Numerics, SourceDtype};
use crate::error::Result;
use std::borrow::Cow;

/// One member's weight, as the caller hands it to [`UnitCompute::load`].
#[derive(Debug, Clone)]
pub enum MemberWeight<'a> {
    /// The bytes the kernels read (row-major `[rows, cols]` of `dtype`).
    Plain(Cow<'a, [u8]>, SourceDtype),
    /// An FP8 block-scaled weight that the backend dequantizes to `dtype` first (see
    /// [`compute::dequantize_fp8_block`]); a GPU does it on the device, where the result stays.
    Fp8Block {
        /// `[rows, cols]` FP8 E4M3 codes.
        fp8: &'a [u8],
        /// The F32 `weight_scale_inv` of its 128x128 blocks.
        scale_inv: &'a [u8],
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// The dtype it is dequantized to.
        precision: DequantPrecision,
    },
}

impl<'a> MemberWeight<'a> {
    /// The dtype the kernels see.
    pub fn dtype(&self) -> SourceDtype {
        match self {
            MemberWeight::Plain(_, dtype) => *dtype,
            MemberWeight::Fp8Block { precision, .. } => precision.dtype(),
        }
    }

    /// Bytes the kernels see.
    pub fn len(&self) -> usize {
        match self {
            MemberWeight::Plain(bytes, _) => bytes.len(),
            MemberWeight::Fp8Block {
                rows,
                cols,
                precision,
                ..
            } => rows * cols * precision.dtype().size(),
        }
    }

    /// Whether the weight has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes the kernels see, computed on the CPU where they are not at hand.
    pub fn into_host(self) -> (Cow<'a, [u8]>, SourceDtype) {
        match self {
            MemberWeight::Plain(bytes, dtype) => (bytes, dtype),
            weight => {
                let mut out = Vec::new();
                weight.host_into(&mut out);
                (Cow::Owned(out), weight.dtype())
            }
        }
    }

    /// Writes the bytes the kernels see into `out` (resized to [`Self::len`]), dequantizing an
    /// FP8 block-scaled weight on the CPU: a caller that keeps `out` reuses its allocation.
    pub fn host_into(&self, out: &mut Vec<u8>) {
        match self {
            MemberWeight::Plain(bytes, _) => {
                out.clear();
                out.extend_from_slice(bytes);
            }
            MemberWeight::Fp8Block {
                fp8,
                scale_inv,
                rows,
                cols,
                precision,
            } => {
                out.resize(self.len(), 0);
                compute::dequantize_fp8_block(fp8, scale_inv, *rows, *cols, *precision, out);
            }
        }
    }
}

/// The numeric kernels of one unit of work, over the unit's member weights.
pub trait UnitCompute<'a> {
    /// Makes the members' weights available (a GPU uploads them, and dequantizes FP8 sources
    /// there); called once per unit.
    fn load(&mut self, weights: Vec<MemberWeight<'a>>) -> Result<()>;
    /// Member `m`'s weight as the kernels read it (an FP8 source dequantized), copied back:
    /// what the twin tests compare between devices.
    fn weight(&mut self, m: usize) -> Result<Vec<u8>>;
    /// max |W| of member `m`, or the index of its first NaN / infinite element.
    fn amax(&mut self, m: usize) -> Result<std::result::Result<f32, usize>>;
    /// Dynamic NVFP4 of member `m` (see [`compute::quantize_nvfp4`]).
    fn nvfp4(
        &mut self,
        m: usize,
        rows: usize,
        cols: usize,
        ws2: f32,
        packed: &mut [u8],
        scales: &mut [u8],
    ) -> Result<()>;
    /// Static NVFP4 of member `m` from per-block amax (see [`compute::quantize_nvfp4_static`]).
    #[allow(clippy::too_many_arguments)]
    fn nvfp4_static(
        &mut self,
        m: usize,
        rows: usize,
        cols: usize,
        blocks: &[f32],
        global: f32,
        numerics: Numerics,
        packed: &mut [u8],
        scales: &mut [u8],
    ) -> Result<f32>;
    /// FP8 per-tensor of member `m` (see [`compute::quantize_fp8`]).
    fn fp8(
        &mut self,
        m: usize,
        scale: f32,
        numerics: Numerics,
        quotient: compute::Fp8Quotient,
        out: &mut [u8],
    ) -> Result<()>;
    /// compressed-tensors NVFP4 of member `m` under the global scale `g` (see
    /// [`compute::ct::quantize_nvfp4_ct`]).
    fn ct_nvfp4(
        &mut self,
        m: usize,
        rows: usize,
        cols: usize,
        g: f32,
        packed: &mut [u8],
        scales: &mut [u8],
    ) -> Result<()>;
    /// compressed-tensors FP8 of member `m`, per channel or per 128x128 block as `format`
    /// says (see [`compute::ct::quantize_fp8_channel_ct`], [`compute::ct::quantize_fp8_block_ct`]).
    fn ct_fp8(
        &mut self,
        m: usize,
        rows: usize,
        cols: usize,
        format: compute::QuantFormat,
        codes: &mut [u8],
        scales: &mut [u8],
    ) -> Result<()>;
    /// compressed-tensors FP8 per tensor of member `m` under its bf16 scale `s` (see
    /// [`compute::ct::quantize_fp8_tensor_ct`]).
    fn ct_fp8_tensor(&mut self, m: usize, s: f32, codes: &mut [u8]) -> Result<()>;
    /// The multiplier search's chunk losses of member `m` (see [`mse::chunk_losses`]).
    fn mse_chunk_losses(
        &mut self,
        m: usize,
        cols: usize,
        candidates: &Candidates,
        importance: Option<&[f32]>,
    ) -> Result<Vec<f32>>;
    /// The FP8 scale sweep's per-block amax of member `m` (see [`mse::sweep_block_amax`]).
    fn sweep_block_amax(
        &mut self,
        m: usize,
        cols: usize,
        global: f32,
        numerics: Numerics,
        importance: Option<&[f32]>,
    ) -> Result<Vec<f32>>;
}

/// The CPU reference path: calls the kernels of [`crate::compute`] directly.
///
/// FP8 block-scaled members are dequantized when a kernel needs them, one at a time (the last
/// one is kept for the next call): a thread holds one member's dequantized copy, not its unit's.
/// Their amax comes from the codes and block scales ([`compute::amax_fp8_block`]).
#[derive(Default)]
pub struct CpuCompute<'a> {
    members: Vec<MemberWeight<'a>>,
    /// The FP8 member dequantized last, and its bytes.
    dequantized: Option<(usize, Vec<u8>)>,
}

impl CpuCompute<'_> {
    /// Member `m`'s weight as the kernels read it.
    fn host(&mut self, m: usize) -> (&[u8], SourceDtype) {
        let weight = &self.members[m];
        let dtype = weight.dtype();
        match weight {
            MemberWeight::Plain(bytes, _) => (bytes, dtype),
            MemberWeight::Fp8Block { .. } => {
                if self.dequantized.as_ref().map(|(k, _)| *k) != Some(m) {
                    // The previous member's buffer is reused.
                    let mut out = self.dequantized.take().map(|(_, b)| b).unwrap_or_default();
                    weight.host_into(&mut out);
                    self.dequantized = Some((m, out));
                }
                let (_, bytes) = self.dequantized.as_ref().expect("dequantized above");
                (bytes, dtype)
            }
        }
    }
}

impl<'a> UnitCompute<'a> for CpuCompute<'a> {
    fn load(&mut self, weights: Vec<MemberWeight<'a>>) -> Result<()> {
        self.members = weights;
        self.dequantized = None;
        Ok(())
    }

    fn weight(&mut self, m: usize) -> Result<Vec<u8>> {
        Ok(self.host(m).0.to_vec())
    }

    fn amax(&mut self, m: usize) -> Result<std::result::Result<f32, usize>> {
        if let MemberWeight::Fp8Block {
            fp8,
            scale_inv,
            rows,
            cols,
            precision,
        } = &self.members[m]
        {
            if let Some(amax) = compute::amax_fp8_block(fp8, scale_inv, *rows, *cols, *precision) {
                return Ok(Ok(amax));
            }
        }
        let (src, dtype) = self.host(m);
        Ok(compute::amax(src, dtype))
    }

    fn nvfp4(
        &mut self,
        m: usize,
        rows: usize,
        cols: usize,
        ws2: f32,
        packed: &mut [u8],
        scales: &mut [u8],
    ) -> Result<()> {
        let (src, dtype) = self.host(m);
        compute::quantize_nvfp4(src, dtype, rows, cols, ws2, packed, scales);
        Ok(())
    }

    fn nvfp4_static(
        &mut self,
        m: usize,
        rows: usize,
        cols: usize,
        blocks: &[f32],
        global: f32,
        numerics: Numerics,
        packed: &mut [u8],
        scales: &mut [u8],
    ) -> Result<f32> {
        let (src, dtype) = self.host(m);
        Ok(compute::quantize_nvfp4_static(
            src, dtype, rows, cols, blocks, global, numerics, packed, scales,
        ))
    }

    fn fp8(
        &mut self,
        m: usize,
        scale: f32,
        numerics: Numerics,
        quotient: compute::Fp8Quotient,
        out: &mut [u8],
    ) -> Result<()> {
        let (src, dtype) = self.host(m);
        compute::quantize_fp8(src, dtype, scale, numerics, quotient, out);
        Ok(())
    }

    fn ct_nvfp4(
        &mut self,
        m: usize,
        rows: usize,
        cols: usize,
        g: f32,
        packed: &mut [u8],
        scales: &mut [u8],
    ) -> Result<()> {
        let (src, dtype) = self.host(m);
        compute::ct::quantize_nvfp4_ct(src, dtype, rows, cols, g, packed, scales);
        Ok(())
    }

    fn ct_fp8(
        &mut self,
        m: usize,
        rows: usize,
        cols: usize,
        format: compute::QuantFormat,
        codes: &mut [u8],
        scales: &mut [u8],
    ) -> Result<()> {
        let (src, dtype) = self.host(m);
        if format.is_fp8_block() {
            compute::ct::quantize_fp8_block_ct(src, dtype, rows, cols, codes, scales);
        } else {
            compute::ct::quantize_fp8_channel_ct(src, dtype, rows, cols, codes, scales);
        }
        Ok(())
    }

    fn ct_fp8_tensor(&mut self, m: usize, s: f32, codes: &mut [u8]) -> Result<()> {
        let (src, dtype) = self.host(m);
        compute::ct::quantize_fp8_tensor_ct(src, dtype, s, codes);
        Ok(())
    }

    fn mse_chunk_losses(
        &mut self,
        m: usize,
        cols: usize,
        candidates: &Candidates,
        importance: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let (src, dtype) = self.host(m);
        Ok(mse::chunk_losses(src, dtype, cols, candidates, importance))
    }

    fn sweep_block_amax(
        &mut self,
        m: usize,
        cols: usize,
        global: f32,
        numerics: Numerics,
        importance: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let (src, dtype) = self.host(m);
        Ok(mse::sweep_block_amax(
            src, dtype, cols, global, numerics, importance,
        ))
    }
}
