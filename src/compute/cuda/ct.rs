//! The compressed-tensors kernels (`kernels/ct.cu`) on a GPU slot: the twins of
//! [`crate::compute::ct`]'s NVFP4, FP8 per tensor / channel / block and global-scale functions.

use super::device::dtype_code;
use super::slot::{cuda, grid_stride, per_block, GpuCompute, GpuPool};
use crate::compute;
use crate::compute::ct::CT_FP8_BLOCK;
use crate::error::{Error, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

impl GpuPool {
    /// compressed-tensors' NVFP4 global scales ([`compute::ct::ct_global_scale`]) of `amax`, on
    /// the GPU: the twin of the CPU function, for the tests (the export computes the one scale
    /// each group needs on the host, whatever the device).
    pub fn ct_global_scales(&self, amax: &[f32]) -> Result<Vec<f32>> {
        if amax.is_empty() {
            return Ok(Vec::new());
        }
        let mut unit = self.compute();
        let slot = unit.slot();
        slot.stream
            .context()
            .bind_to_thread()
            .map_err(|e| cuda("binding the context", e))?;
        let dev_amax = slot
            .stream
            .clone_htod(amax)
            .map_err(|e| cuda("copy to GPU", e))?;
        let mut dev_out = slot
            .stream
            .alloc_zeros::<f32>(amax.len())
            .map_err(|e| cuda("device memory", e))?;
        let n = amax.len() as u64;
        // SAFETY: n floats are read from `dev_amax` and n written to `dev_out`.
        unsafe {
            slot.stream
                .launch_builder(&self.gpu.ct_global_scales)
                .arg(&dev_amax)
                .arg(&n)
                .arg(&mut dev_out)
                .launch(per_block(amax.len()))
        }
        .map_err(|e| cuda("compressed-tensors global scale kernel", e))?;
        let mut out = vec![0f32; amax.len()];
        slot.stream
            .memcpy_dtoh(&dev_out, &mut out)
            .map_err(|e| cuda("copy to host", e))?;
        slot.stream
            .synchronize()
            .map_err(|e| cuda("synchronise", e))?;
        Ok(out)
    }
}

impl GpuCompute<'_, '_> {
    /// [`UnitCompute::ct_nvfp4`](crate::compute::backend::UnitCompute::ct_nvfp4) on the GPU.
    pub(super) fn ct_nvfp4_on_gpu(
        &mut self,
        m: usize,
        rows: usize,
        cols: usize,
        g: f32,
        packed: &mut [u8],
        scales: &mut [u8],
    ) -> Result<()> {
        let (off, len, dtype) = self.member(m);
        if !cols.is_multiple_of(16)
            || len != rows * cols * dtype.size()
            || packed.len() != rows * cols / 2
            || scales.len() != rows * cols / 16
        {
            return Err(Error::other(format!(
                "internal: compressed-tensors NVFP4 of a [{rows}, {cols}] weight of {len} bytes \
                 into {} + {} bytes",
                packed.len(),
                scales.len()
            )));
        }
        let gpu = self.pool.gpu.clone();
        let nblocks = (rows * cols / 16) as u64;
        let code = dtype_code(dtype);
        let slot = self.slot();
        let src = slot.dev_in.slice(off..off + len);
        // SAFETY: nblocks 16-element blocks are read from `src`; nblocks*8 packed bytes and
        // nblocks scale bytes are written, within the slot's buffers (checked in load).
        unsafe {
            slot.stream
                .launch_builder(&gpu.ct_nvfp4)
                .arg(&src)
                .arg(&code)
                .arg(&nblocks)
                .arg(&g)
                .arg(&mut slot.dev_out)
                .arg(&mut slot.dev_scales)
                .launch(per_block(nblocks as usize))
        }
        .map_err(|e| cuda("compressed-tensors nvfp4 kernel", e))?;
        self.fetch(packed, Some(scales))
    }

    /// [`UnitCompute::ct_fp8`](crate::compute::backend::UnitCompute::ct_fp8) on the GPU.
    pub(super) fn ct_fp8_on_gpu(
        &mut self,
        m: usize,
        rows: usize,
        cols: usize,
        format: compute::QuantFormat,
        codes: &mut [u8],
        scales: &mut [u8],
    ) -> Result<()> {
        let (off, len, dtype) = self.member(m);
        // One scale per tile: a row (FP8_DYNAMIC) or a 128x128 block cut at the edges (FP8_BLOCK).
        let (tile_rows, tile_cols) = if format.is_fp8_block() {
            (CT_FP8_BLOCK, CT_FP8_BLOCK)
        } else {
            (1, cols)
        };
        if len != rows * cols * dtype.size() || codes.len() != rows * cols {
            return Err(Error::other(format!(
                "internal: compressed-tensors FP8 of a [{rows}, {cols}] weight of {len} bytes \
                 into {} bytes",
                codes.len()
            )));
        }
        if rows == 0 || cols == 0 || scales.len() > self.slot().dev_scales.len() {
            // Empty, or more scales than the slot holds (per channel, rows narrower than 32
            // bytes): the CPU twin gives the same bytes.
            let (src, dtype) = self.host_weight(m);
            if format.is_fp8_block() {
                compute::ct::quantize_fp8_block_ct(&src, dtype, rows, cols, codes, scales);
            } else {
                compute::ct::quantize_fp8_channel_ct(&src, dtype, rows, cols, codes, scales);
            }
            return Ok(());
        }
        let tiles = rows.div_ceil(tile_rows) * cols.div_ceil(tile_cols);
        if scales.len() != tiles * 2 {
            return Err(Error::other(format!(
                "internal: {tiles} compressed-tensors FP8 scales into {} bytes",
                scales.len()
            )));
        }
        let gpu = self.pool.gpu.clone();
        let code = dtype_code(dtype);
        let (r, c, tr, tc) = (rows as u64, cols as u64, tile_rows as u64, tile_cols as u64);
        let slot = self.slot();
        let src = slot.dev_in.slice(off..off + len);
        // SAFETY: rows*cols elements are read from `src`; rows*cols code bytes and 2 bytes per
        // tile of scales are written, within the slot's buffers (checked above and in load).
        unsafe {
            slot.stream
                .launch_builder(&gpu.ct_fp8_tiles)
                .arg(&src)
                .arg(&code)
                .arg(&r)
                .arg(&c)
                .arg(&tr)
                .arg(&tc)
                .arg(&mut slot.dev_out)
                .arg(&mut slot.dev_scales)
                .launch(LaunchConfig {
                    grid_dim: (tiles as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                })
        }
        .map_err(|e| cuda("compressed-tensors fp8 kernel", e))?;
        self.fetch(codes, Some(scales))
    }

    /// [`UnitCompute::ct_fp8_tensor`](crate::compute::backend::UnitCompute::ct_fp8_tensor) on
    /// the GPU: one element per thread step, under the host's scale `s`.
    pub(super) fn ct_fp8_tensor_on_gpu(
        &mut self,
        m: usize,
        s: f32,
        codes: &mut [u8],
    ) -> Result<()> {
        let (off, len, dtype) = self.member(m);
        if len != codes.len() * dtype.size() {
            return Err(Error::other(format!(
                "internal: compressed-tensors FP8 of a weight of {len} bytes into {} bytes",
                codes.len()
            )));
        }
        let gpu = self.pool.gpu.clone();
        let n = codes.len() as u64;
        let code = dtype_code(dtype);
        let slot = self.slot();
        let src = slot.dev_in.slice(off..off + len);
        // SAFETY: n elements are read from `src` and n code bytes written to the slot's output
        // buffer, which holds the unit's weights (checked in load), so at least n bytes.
        unsafe {
            slot.stream
                .launch_builder(&gpu.ct_fp8_tensor)
                .arg(&src)
                .arg(&code)
                .arg(&n)
                .arg(&s)
                .arg(&mut slot.dev_out)
                .launch(grid_stride(codes.len()))
        }
        .map_err(|e| cuda("compressed-tensors fp8 per-tensor kernel", e))?;
        self.fetch(codes, None)
    }
}
