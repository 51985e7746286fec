//! Staging on the GPU path: the members' weights copied from the mapping through a slot's pinned
//! buffer up to the device (FP8 block-scaled sources dequantized there), results copied back
//! through the other pinned buffer, and the clock of where the worker threads spend their GPU
//! time.
//!
//! The pinned buffers are smaller than a unit (pinned memory is resident for the whole run and
//! counts in the peak RSS): each is used as two halves, one filled on the host while the other
//! crosses, so a unit of any size streams through at the copies' speed.

use super::slot::{cuda, grid_stride, GpuCompute, Slot};
use crate::compute::backend::MemberWeight;
use crate::compute::DequantPrecision;
use crate::error::{Error, Result};
use crate::progress::add_elapsed;
use cudarc::driver::{CudaEvent, CudaSlice, PushKernelArg};
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

/// A slot's device buffers that results are copied back from.
#[derive(Clone, Copy)]
pub(super) enum DeviceBuffer {
    /// The weights as the kernels read them.
    In,
    /// The kernels' main output.
    Out,
    /// The kernels' scale output.
    Scales,
}

/// The two halves of a pinned buffer and the events that say when each is free again.
struct Halves<'h> {
    host: &'h mut [u8],
    half: usize,
    done: &'h [CudaEvent; 2],
    /// The half being filled, and how much of it is.
    current: usize,
    filled: usize,
}

impl<'h> Halves<'h> {
    fn new(host: &'h mut [u8], done: &'h [CudaEvent; 2]) -> Halves<'h> {
        let half = host.len() / 2;
        Halves {
            host,
            half,
            done,
            current: 0,
            filled: 0,
        }
    }

    /// Room left in the current half.
    fn room(&self) -> usize {
        self.half - self.filled
    }

    /// The next `n` bytes of the current half (n <= room).
    fn take(&mut self, n: usize) -> &mut [u8] {
        let start = self.current * self.half + self.filled;
        self.filled += n;
        &mut self.host[start..start + n]
    }
}

impl GpuCompute<'_, '_> {
    /// Copies the members' weights through the pinned staging buffer up to the device, at their
    /// offsets in `dev_in`. An FP8 block-scaled member goes up as its FP8 codes (to the same
    /// offsets of `dev_out`, free until the kernels run) and is dequantized into `dev_in` on the
    /// device: half the bytes cross, and none come back.
    pub(super) fn upload(&mut self, members: &[(usize, MemberWeight<'_>)]) -> Result<()> {
        let gpu = self.pool.gpu.clone();
        let clock = &self.pool.clock;
        let slot = self.slot.as_mut().expect("slot");
        let Slot {
            stream,
            host_in,
            in_done,
            dev_in,
            dev_out,
            dev_blocks,
            ..
        } = slot;
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| cuda("binding the context", e))?;
        // A unit may load again (weights with non-finite elements are reloaded patched): the
        // copies out of both halves must be done before they are refilled.
        for done in in_done.iter() {
            done.synchronize().map_err(|e| cuda("synchronise", e))?;
        }
        let host = host_in.as_mut_slice().map_err(|e| cuda("staging", e))?;
        let mut halves = Halves::new(host, in_done);
        let (mut staged, mut copying) = (0, std::time::Duration::ZERO);
        for (off, weight) in members {
            let (bytes, dst): (&[u8], &mut CudaSlice<u8>) = match weight {
                MemberWeight::Plain(bytes, _) => (bytes, &mut *dev_in),
                MemberWeight::Fp8Block { fp8, .. } => (fp8, &mut *dev_out),
            };
            let mut done = 0;
            while done < bytes.len() {
                if halves.room() == 0 {
                    // The current half is queued: mark it, and wait until the other one
                    // has crossed before filling it.
                    halves.done[halves.current]
                        .record(stream)
                        .map_err(|e| cuda("event", e))?;
                    halves.current ^= 1;
                    halves.filled = 0;
                    let waited = Instant::now();
                    halves.done[halves.current]
                        .synchronize()
                        .map_err(|e| cuda("synchronise", e))?;
                    add_elapsed(&clock.device_wait, waited);
                }
                let n = halves.room().min(bytes.len() - done);
                let piece = halves.take(n);
                // The page faults of the mapping happen here, on the worker thread.
                let started = Instant::now();
                piece.copy_from_slice(&bytes[done..done + n]);
                copying += started.elapsed();
                let at = off + done;
                stream
                    .memcpy_htod(&*piece, &mut dst.slice_mut(at..at + n))
                    .map_err(|e| cuda("copy to GPU", e))?;
                done += n;
            }
            staged += bytes.len();
        }
        halves.done[halves.current]
            .record(stream)
            .map_err(|e| cuda("event", e))?;
        clock
            .staging_in
            .fetch_add(copying.as_nanos() as u64, Ordering::Relaxed);
        clock.bytes_in.fetch_add(staged as u64, Ordering::Relaxed);
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
            if scales.len() > dev_blocks.len() {
                return Err(Error::other(format!(
                    "GPU: {} block scales do not fit a slot",
                    scales.len()
                )));
            }
            let (off, n, out_len) = (*off, fp8.len(), weight.len());
            stream
                .memcpy_htod(&scales, &mut dev_blocks.slice_mut(..scales.len()))
                .map_err(|e| cuda("copy to GPU", e))?;
            let (r, c, to_bf16) = (
                *rows as u64,
                *cols as u64,
                i32::from(*precision == DequantPrecision::Bf16),
            );
            let src = dev_out.slice(off..off + n);
            let mut dst = dev_in.slice_mut(off..off + out_len);
            // SAFETY: rows*cols FP8 bytes and their block scales are read; out_len bytes are
            // written, inside the member's region of dev_in (checked against the capacity).
            unsafe {
                stream
                    .launch_builder(&gpu.fp8_block_dequant)
                    .arg(&src)
                    .arg(&*dev_blocks)
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

    /// Copies the kernels' first `out.len()` bytes of main output (and `scales.len()` bytes of
    /// scale output) back to the host, after the work queued before.
    pub(super) fn fetch(&mut self, out: &mut [u8], scales: Option<&mut [u8]>) -> Result<()> {
        match scales {
            Some(scales) if !scales.is_empty() => self.download(&mut [
                (DeviceBuffer::Out, 0, out),
                (DeviceBuffer::Scales, 0, scales),
            ]),
            _ => self.download(&mut [(DeviceBuffer::Out, 0, out)]),
        }
    }

    /// Copies device bytes back to the host through the pinned staging buffer, in its two
    /// halves: each part is (buffer, offset in it, destination).
    pub(super) fn download(
        &mut self,
        parts: &mut [(DeviceBuffer, usize, &mut [u8])],
    ) -> Result<()> {
        let clock = &self.pool.clock;
        let slot = self.slot.as_mut().expect("slot");
        let Slot {
            stream,
            host_out,
            out_done,
            dev_in,
            dev_out,
            dev_scales,
            ..
        } = slot;
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| cuda("binding the context", e))?;
        let host = host_out.as_mut_slice().map_err(|e| cuda("staging", e))?;
        let half = host.len() / 2;
        // Every part is checked before any copy is queued: an error leaves nothing in flight.
        for (buffer, offset, out) in parts.iter() {
            let size = match buffer {
                DeviceBuffer::In => dev_in.len(),
                DeviceBuffer::Out => dev_out.len(),
                DeviceBuffer::Scales => dev_scales.len(),
            };
            if offset + out.len() > size {
                return Err(Error::other(format!(
                    "internal: {} bytes at {offset} from a GPU buffer of {size}",
                    out.len()
                )));
            }
        }
        // Copies queued into each half, not yet taken out: (part, offset in part, offset in
        // the half, length).
        let mut queued: [Vec<(usize, usize, usize, usize)>; 2] = [Vec::new(), Vec::new()];
        let (mut current, mut filled, mut total) = (0, 0, 0);
        let (mut waiting, mut copying) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        // Waits for half `h`'s copies and takes its bytes out.
        let mut drain = |h: usize,
                         queued: &mut Vec<(usize, usize, usize, usize)>,
                         host: &[u8],
                         parts: &mut [(DeviceBuffer, usize, &mut [u8])]|
         -> Result<()> {
            if queued.is_empty() {
                return Ok(());
            }
            let started = Instant::now();
            out_done[h]
                .synchronize()
                .map_err(|e| cuda("synchronise", e))?;
            waiting += started.elapsed();
            let started = Instant::now();
            for &(p, at, from, n) in queued.iter() {
                parts[p].2[at..at + n].copy_from_slice(&host[h * half + from..h * half + from + n]);
            }
            copying += started.elapsed();
            queued.clear();
            Ok(())
        };
        for p in 0..parts.len() {
            let (buffer, offset, len) = (parts[p].0, parts[p].1, parts[p].2.len());
            let src = match buffer {
                DeviceBuffer::In => &*dev_in,
                DeviceBuffer::Out => &*dev_out,
                DeviceBuffer::Scales => &*dev_scales,
            };
            let mut done = 0;
            while done < len {
                if filled == half {
                    out_done[current]
                        .record(stream)
                        .map_err(|e| cuda("event", e))?;
                    current ^= 1;
                    filled = 0;
                    drain(current, &mut queued[current], host, parts)?;
                }
                let n = (half - filled).min(len - done);
                let at = current * half + filled;
                stream
                    .memcpy_dtoh(
                        &src.slice(offset + done..offset + done + n),
                        &mut host[at..at + n],
                    )
                    .map_err(|e| cuda("copy to host", e))?;
                queued[current].push((p, done, filled, n));
                filled += n;
                done += n;
            }
            total += len;
        }
        out_done[current]
            .record(stream)
            .map_err(|e| cuda("event", e))?;
        // The other half was queued first: drain it first.
        drain(current ^ 1, &mut queued[current ^ 1], host, parts)?;
        drain(current, &mut queued[current], host, parts)?;
        clock
            .device_wait
            .fetch_add(waiting.as_nanos() as u64, Ordering::Relaxed);
        clock
            .staging_out
            .fetch_add(copying.as_nanos() as u64, Ordering::Relaxed);
        clock.bytes_out.fetch_add(total as u64, Ordering::Relaxed);
        Ok(())
    }
}
