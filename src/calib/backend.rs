//! Where a unit's numeric work runs: the same calls on the CPU ([`CpuCompute`]) or on a GPU
//! (`crate::gpu::GpuCompute`), with bit-identical results. The scale policy that decides what
//! to compute lives in the pipeline's worker and is shared by both.

use crate::error::Result;
use crate::quant::{self, Numerics, SourceDtype};

/// The numeric kernels of one unit of work, over the unit's member weights.
pub trait UnitCompute<'a> {
    /// Makes the members' weights available (a GPU uploads them); called once per unit.
    fn load(&mut self, weights: Vec<(&'a [u8], SourceDtype)>) -> Result<()>;
    /// max |W| of member `m`, or the index of its first NaN / infinite element.
    fn amax(&mut self, m: usize) -> Result<std::result::Result<f32, usize>>;
    /// Dynamic NVFP4 of member `m` (see [`quant::quantize_nvfp4`]).
    fn nvfp4(
        &mut self,
        m: usize,
        rows: usize,
        cols: usize,
        ws2: f32,
        packed: &mut [u8],
        scales: &mut [u8],
    ) -> Result<()>;
    /// Static NVFP4 of member `m` from per-block amax (see [`quant::quantize_nvfp4_static`]).
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
    /// FP8 per-tensor of member `m` (see [`quant::quantize_fp8`]).
    fn fp8(&mut self, m: usize, scale: f32, numerics: Numerics, out: &mut [u8]) -> Result<()>;
}

/// The CPU reference path: calls the kernels of [`crate::quant`] directly.
#[derive(Default)]
pub struct CpuCompute<'a> {
    weights: Vec<(&'a [u8], SourceDtype)>,
}

impl<'a> UnitCompute<'a> for CpuCompute<'a> {
    fn load(&mut self, weights: Vec<(&'a [u8], SourceDtype)>) -> Result<()> {
        self.weights = weights;
        Ok(())
    }

    fn amax(&mut self, m: usize) -> Result<std::result::Result<f32, usize>> {
        let (src, dtype) = self.weights[m];
        Ok(quant::amax(src, dtype))
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
        let (src, dtype) = self.weights[m];
        quant::quantize_nvfp4(src, dtype, rows, cols, ws2, packed, scales);
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
        let (src, dtype) = self.weights[m];
        Ok(quant::quantize_nvfp4_static(
            src, dtype, rows, cols, blocks, global, numerics, packed, scales,
        ))
    }

    fn fp8(&mut self, m: usize, scale: f32, numerics: Numerics, out: &mut [u8]) -> Result<()> {
        let (src, dtype) = self.weights[m];
        quant::quantize_fp8(src, dtype, scale, numerics, out);
        Ok(())
    }
}
