//! The MSE calibration kernels (`kernels/mse.cu`) on a GPU slot: the twins of
//! [`crate::compute::mse::chunk_losses`] and [`crate::compute::mse::sweep_block_amax`].
//!
//! Per call the small per-candidate tables and the importance weights go up in one copy (one
//! device allocation from the stream's pool), and only the losses or block amax come back.

use super::device::dtype_code;
use super::slot::{cuda, per_block, GpuCompute};
use crate::compute::mse;
use crate::compute::mse::{Candidates, MseTarget};
use crate::compute::Numerics;
use crate::error::Result;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// `first` followed by the importance weights (or one placeholder value), as one upload.
fn tables(first: &[&[f32]], importance: Option<&[f32]>) -> Vec<f32> {
    let mut all: Vec<f32> = first.iter().flat_map(|t| t.iter().copied()).collect();
    all.extend_from_slice(importance.unwrap_or(&[0.0]));
    all
}

impl GpuCompute<'_, '_> {
    /// The multiplier search's chunk losses of member `m`, `[MSE_STEPS × chunks]`.
    pub(super) fn mse_chunk_losses_on_gpu(
        &mut self,
        m: usize,
        cols: usize,
        candidates: &Candidates,
        importance: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let (off, len, dtype) = self.member(m);
        let gpu = self.pool.gpu.clone();
        let n = len / dtype.size();
        let chunks = mse::chunk_count(n);
        let (n64, cols64, chunks64) = (n as u64, cols as u64, chunks as u64);
        let target = match candidates.target {
            MseTarget::Nvfp4(_) => 0i32,
            MseTarget::Fp8(_) => 1i32,
        };
        let code = dtype_code(dtype);
        let has_imp = i32::from(importance.is_some());
        let slot = self.slot();
        let stream = slot.stream.clone();
        let host = tables(&[&candidates.a, &candidates.b], importance);
        let all = stream
            .clone_htod(&host)
            .map_err(|e| cuda("copy to GPU", e))?;
        let steps = mse::MSE_STEPS;
        let (a, b, imp) = (
            all.slice(..steps),
            all.slice(steps..2 * steps),
            all.slice(2 * steps..),
        );
        let mut out = stream
            .alloc_zeros::<f32>(steps * chunks)
            .map_err(|e| cuda("device memory", e))?;
        let src = slot.dev_in.slice(off..off + len);
        // SAFETY: n elements of `src`, MSE_STEPS values of `a` and `b`, `cols` importance
        // weights (when has_imp) are read; MSE_STEPS * chunks losses are written.
        unsafe {
            stream
                .launch_builder(&gpu.mse_chunk_losses)
                .arg(&src)
                .arg(&code)
                .arg(&n64)
                .arg(&cols64)
                .arg(&target)
                .arg(&a)
                .arg(&b)
                .arg(&imp)
                .arg(&has_imp)
                .arg(&chunks64)
                .arg(&mut out)
                .launch(LaunchConfig {
                    grid_dim: (chunks as u32, 1, 1),
                    block_dim: (mse::CHUNK_GROUPS as u32, 1, 1),
                    shared_mem_bytes: 0,
                })
        }
        .map_err(|e| cuda("mse kernel", e))?;
        let mut partials = vec![0.0f32; steps * chunks];
        stream
            .memcpy_dtoh(&out, &mut partials)
            .map_err(|e| cuda("copy to host", e))?;
        let started = std::time::Instant::now();
        stream.synchronize().map_err(|e| cuda("synchronise", e))?;
        self.pool.device_waited(started);
        Ok(partials)
    }

    /// The FP8 scale sweep's per-block amax of member `m`.
    pub(super) fn sweep_block_amax_on_gpu(
        &mut self,
        m: usize,
        cols: usize,
        global: f32,
        numerics: Numerics,
        importance: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let (off, len, dtype) = self.member(m);
        let gpu = self.pool.gpu.clone();
        let nblocks = len / dtype.size() / 16;
        let (nblocks64, cols64) = (nblocks as u64, cols as u64);
        let dens = mse::sweep_denominators(global, numerics);
        let amax_of: Vec<f32> = mse::SWEEP_CODES
            .map(|code| global * mse::sweep_scale(code, numerics))
            .collect();
        let code = dtype_code(dtype);
        let has_imp = i32::from(importance.is_some());
        let slot = self.slot();
        let stream = slot.stream.clone();
        let host = tables(&[&dens, &amax_of], importance);
        let all = stream
            .clone_htod(&host)
            .map_err(|e| cuda("copy to GPU", e))?;
        let steps = mse::SWEEP_STEPS;
        let (dens, amax_of, imp) = (
            all.slice(..steps),
            all.slice(steps..2 * steps),
            all.slice(2 * steps..),
        );
        let src = slot.dev_in.slice(off..off + len);
        // SAFETY: nblocks 16-element blocks of `src`, 126 denominators and amax, `cols`
        // importance weights (when has_imp) are read; nblocks amax are written into the slot's
        // block buffer (capacity / 32 + 1 values, at least nblocks for 2-byte weights).
        unsafe {
            stream
                .launch_builder(&gpu.nvfp4_sweep)
                .arg(&src)
                .arg(&code)
                .arg(&nblocks64)
                .arg(&cols64)
                .arg(&dens)
                .arg(&amax_of)
                .arg(&imp)
                .arg(&has_imp)
                .arg(&mut slot.dev_blocks)
                .launch(per_block(nblocks))
        }
        .map_err(|e| cuda("nvfp4 sweep kernel", e))?;
        let mut blocks = vec![0.0f32; nblocks];
        stream
            .memcpy_dtoh(&slot.dev_blocks.slice(..nblocks), &mut blocks)
            .map_err(|e| cuda("copy to host", e))?;
        let started = std::time::Instant::now();
        stream.synchronize().map_err(|e| cuda("synchronise", e))?;
        self.pool.device_waited(started);
        Ok(blocks)
    }
}
