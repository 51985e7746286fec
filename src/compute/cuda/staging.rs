//! Staging on the GPU path: the members' weights copied from the mapping into a slot's pinned
//! buffer and up to the device (FP8 block-scaled sources dequantized there), and the clock of
//! where the worker threads spend their GPU time.

use super::slot::{cuda, grid_stride, GpuCompute};
use crate::compute::backend::MemberWeight;
use crate::compute::DequantPrecision;
use crate::error::{Error, Result};
use crate::progress::add_elapsed;
use cudarc::driver::PushKernelArg;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Nanoseconds and bytes of the GPU path's stages, summed over the worker threads.
#[derive(Default)]
pub(super) struct GpuClock {
    pub(super) slot_wait: AtomicU64,
    pub(super) staging_in: AtomicU64,
    pub(super) device_wait: AtomicU64,
    pub(super) staging_out: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
}

/// Where the GPU path's worker threads spent their time, summed over threads, and the bytes
/// that crossed to and from the device.
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuStages {
    /// Waiting for a free slot.
    pub slot_wait_s: f64,
    /// Copying weights from the input mapping into the pinned staging buffer (the input's
    /// page faults happen here).
    pub staging_in_s: f64,
    /// Waiting for the stream: host-to-device copies, kernels, device-to-host copies.
    pub device_wait_s: f64,
    /// Copying results out of the pinned staging buffer.
    pub staging_out_s: f64,
    /// Bytes copied to the device.
    pub bytes_to_device: u64,
    /// Bytes copied back from the device.
    pub bytes_from_device: u64,
}

impl GpuCompute<'_, '_> {
    /// Copies the members' weights into the pinned staging buffer and up to the device, at
    /// their offsets in `dev_in`. An FP8 block-scaled member goes up as its FP8 codes (to the
    /// same offsets of `dev_out`, free until the kernels run) and is dequantized into `dev_in`
    /// on the device: half the bytes cross, and none come back.
    pub(super) fn upload(
        &mut self,
        members: &[(usize, MemberWeight<'_>)],
        total: usize,
    ) -> Result<()> {
        let gpu = self.pool.gpu.clone();
        let clock = &self.pool.clock;
        let slot = self.slot.as_mut().expect("slot");
        slot.stream
            .context()
            .bind_to_thread()
            .map_err(|e| cuda("binding the context", e))?;
        let host = slot
            .host_in
            .as_mut_slice()
            .map_err(|e| cuda("staging", e))?;
        let started = Instant::now();
        let mut staged = 0;
        for (off, weight) in members {
            // The page faults of the mapping happen here, on the worker thread.
            let bytes: &[u8] = match weight {
                MemberWeight::Plain(bytes, _) => bytes,
                MemberWeight::Fp8Block { fp8, .. } => fp8,
            };
            host[*off..*off + bytes.len()].copy_from_slice(bytes);
            staged += bytes.len();
        }
        add_elapsed(&clock.staging_in, started);
        clock.bytes_in.fetch_add(staged as u64, Ordering::Relaxed);
        // Plain members in one copy (FP8 members' codes ride along, to be overwritten).
        slot.stream
            .memcpy_htod(&host[..total], &mut slot.dev_in.slice_mut(..total))
            .map_err(|e| cuda("copy to GPU", e))?;
        for (off, weight) in members {
            let MemberWeight::Fp8Block {
                fp8,
                scale_inv,
                rows,
                cols,
                precision,
            } = weight
            else {
                continue;
            };
            let scales: Vec<f32> = scale_inv
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if scales.len() > slot.dev_blocks.len() {
                return Err(Error::other(format!(
                    "GPU: {} block scales do not fit a slot",
                    scales.len()
                )));
            }
            let (off, n, out_len) = (*off, fp8.len(), weight.len());
            slot.stream
                .memcpy_dtod(
                    &slot.dev_in.slice(off..off + n),
                    &mut slot.dev_out.slice_mut(off..off + n),
                )
                .map_err(|e| cuda("copy on the GPU", e))?;
            slot.stream
                .memcpy_htod(&scales, &mut slot.dev_blocks.slice_mut(..scales.len()))
                .map_err(|e| cuda("copy to GPU", e))?;
            let (r, c, to_bf16) = (
                *rows as u64,
                *cols as u64,
                i32::from(*precision == DequantPrecision::Bf16),
            );
            let src = slot.dev_out.slice(off..off + n);
            let mut dst = slot.dev_in.slice_mut(off..off + out_len);
            // SAFETY: rows*cols FP8 bytes and their block scales are read; out_len bytes are
            // written, inside the member's region of dev_in (checked against the capacity).
            unsafe {
                slot.stream
                    .launch_builder(&gpu.fp8_block_dequant)
                    .arg(&src)
                    .arg(&slot.dev_blocks)
                    .arg(&r)
                    .arg(&c)
                    .arg(&to_bf16)
                    .arg(&mut dst)
                    .launch(grid_stride(rows * cols))
            }
            .map_err(|e| cuda("fp8 dequant kernel", e))?;
        }
        Ok(())
    }
}
