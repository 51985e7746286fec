//! Reusable GPU work slots and the [`UnitCompute`] implementation that runs on them.
//!
//! A slot owns a CUDA stream, device buffers sized for the largest unit that goes to the GPU,
//! and two pinned host staging buffers of a fixed size (allocated once: pinned allocation costs
//! ~0.7 s per GiB, and the memory stays resident). Each worker thread takes a free slot for one
//! unit: its weights stream from the mapping through the pinned buffer up to the GPU, the
//! kernels run, the results stream back (`staging`). With several slots, the copies of one unit
//! overlap the kernels of another; GPU memory is `slots × capacity` and pinned memory
//! `slots × 2 × staging`, whatever the model size.

use super::device::dtype_code;
use super::staging::{DeviceBuffer, GpuClock, GpuStages};
use super::Gpu;
use crate::compute;
use crate::compute::backend::{MemberWeight, UnitCompute};
use crate::compute::codec::E2M1_MAX;
use crate::compute::mse::Candidates;
use crate::compute::{Numerics, SourceDtype};
use crate::error::{Error, Result};
use crate::progress::{add_elapsed, elapsed_seconds};
use cudarc::driver::{
    CudaEvent, CudaSlice, CudaStream, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Member weights start at multiples of this in the device buffers (aligned loads).
const ALIGN: usize = 256;

/// The smallest pinned staging buffer: two halves of 4 KiB.
const MIN_STAGING: usize = 8 << 10;

pub(super) fn cuda(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::other(format!("GPU: {what}: {e:?}"))
}

pub(super) struct Slot {
    pub(super) stream: Arc<CudaStream>,
    pub(super) host_in: PinnedHostSlice<u8>,
    pub(super) host_out: PinnedHostSlice<u8>,
    /// Recorded after the copies out of each half of `host_in` were queued.
    pub(super) in_done: [CudaEvent; 2],
    /// Recorded after the copies into each half of `host_out` were queued.
    pub(super) out_done: [CudaEvent; 2],
    pub(super) dev_in: CudaSlice<u8>,
    pub(super) dev_out: CudaSlice<u8>,
    pub(super) dev_scales: CudaSlice<u8>,
    pub(super) dev_blocks: CudaSlice<f32>,
    pub(super) dev_amax: CudaSlice<u32>,
}

/// A fixed set of slots on one GPU.
pub struct GpuPool {
    pub(super) gpu: Arc<Gpu>,
    capacity: usize,
    staging: usize,
    slots: Mutex<Vec<Slot>>,
    freed: Condvar,
    pub(super) clock: GpuClock,
}

impl GpuPool {
    /// Allocates `slots` slots that each hold units of up to `capacity` bytes of weights on the
    /// GPU, with two pinned host buffers of `staging` bytes each (at least 8 KiB; a unit of any
    /// size streams through them).
    pub fn new(gpu: Arc<Gpu>, slots: usize, capacity: usize, staging: usize) -> Result<GpuPool> {
        let capacity = capacity.max(ALIGN).next_multiple_of(ALIGN);
        let staging = staging.max(MIN_STAGING).next_multiple_of(2 * ALIGN);
        let mut all = Vec::new();
        gpu.ctx
            .bind_to_thread()
            .map_err(|e| cuda("binding the context", e))?;
        for _ in 0..slots.max(1) {
            let stream = gpu
                .ctx
                .new_stream()
                .map_err(|e| cuda("creating a stream", e))?;
            // SAFETY: pinned buffers are only read after the stream that wrote them synchronised.
            let host_in = unsafe { gpu.ctx.alloc_pinned_with_flags::<u8>(staging, 0) }
                .map_err(|e| cuda("pinned memory", e))?;
            // SAFETY: as above.
            let host_out = unsafe { gpu.ctx.alloc_pinned_with_flags::<u8>(staging, 0) }
                .map_err(|e| cuda("pinned memory", e))?;
            let event = || gpu.ctx.new_event(None).map_err(|e| cuda("event", e));
            let (in_done, out_done) = ([event()?, event()?], [event()?, event()?]);
            let dev_in = stream
                .alloc_zeros::<u8>(capacity)
                .map_err(|e| cuda("device memory", e))?;
            let dev_out = stream
                .alloc_zeros::<u8>(capacity)
                .map_err(|e| cuda("device memory", e))?;
            let dev_scales = stream
                .alloc_zeros::<u8>(capacity / 16 + 1)
                .map_err(|e| cuda("device memory", e))?;
            let dev_blocks = stream
                .alloc_zeros::<f32>(capacity / 32 + 1)
                .map_err(|e| cuda("device memory", e))?;
            let dev_amax = stream
                .alloc_zeros::<u32>(1)
                .map_err(|e| cuda("device memory", e))?;
            all.push(Slot {
                stream,
                host_in,
                host_out,
                in_done,
                out_done,
                dev_in,
                dev_out,
                dev_scales,
                dev_blocks,
                dev_amax,
            });
        }
        Ok(GpuPool {
            gpu,
            capacity,
            staging,
            slots: Mutex::new(all),
            freed: Condvar::new(),
            clock: GpuClock::default(),
        })
    }

    /// Counts the time since `since` as waiting for the device.
    pub(super) fn device_waited(&self, since: Instant) {
        add_elapsed(&self.clock.device_wait, since);
    }

    /// Where the worker threads spent their GPU time so far, summed over threads.
    pub fn stages(&self) -> GpuStages {
        let c = &self.clock;
        let s = elapsed_seconds;
        GpuStages {
            slot_wait_s: s(&c.slot_wait),
            staging_in_s: s(&c.staging_in),
            device_wait_s: s(&c.device_wait),
            staging_out_s: s(&c.staging_out),
            bytes_to_device: c.bytes_in.load(Ordering::Relaxed),
            bytes_from_device: c.bytes_out.load(Ordering::Relaxed),
        }
    }

    /// Device memory held by the slots, in bytes (fixed for the whole run).
    pub fn device_bytes(&self) -> usize {
        let slots = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            .max(1);
        slots * (2 * self.capacity + (self.capacity / 16 + 1) + 4 * (self.capacity / 32 + 1) + 4)
    }

    /// Pinned host memory held by the slots, in bytes (counted in `--max-memory`).
    pub fn pinned_bytes(&self) -> usize {
        let slots = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            .max(1);
        slots * 2 * self.staging
    }

    /// The GPU.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Whether a unit with these member byte lengths fits a slot.
    pub fn fits(&self, lengths: impl IntoIterator<Item = usize>) -> bool {
        lengths
            .into_iter()
            .map(|n| n.next_multiple_of(ALIGN))
            .sum::<usize>()
            <= self.capacity
    }

    /// Takes a free slot (waiting for one) for one unit's work.
    pub fn compute<'a>(&self) -> GpuCompute<'_, 'a> {
        let started = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        while slots.is_empty() {
            slots = self.freed.wait(slots).unwrap_or_else(|e| e.into_inner());
        }
        let slot = slots.pop();
        drop(slots);
        add_elapsed(&self.clock.slot_wait, started);
        GpuCompute {
            pool: self,
            slot,
            members: Vec::new(),
        }
    }
}

/// One unit's work on a GPU slot; gives the slot back when dropped.
pub struct GpuCompute<'p, 'a> {
    pub(super) pool: &'p GpuPool,
    pub(super) slot: Option<Slot>,
    /// (offset in the staging and device buffers, weight)
    members: Vec<(usize, MemberWeight<'a>)>,
}

impl Drop for GpuCompute<'_, '_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // Whatever was in flight must finish before another unit reuses the buffers.
            let _ = slot.stream.synchronize();
            self.pool
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(slot);
            self.pool.freed.notify_one();
        }
    }
}

pub(super) fn per_block(nblocks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (nblocks.div_ceil(256).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn grid_stride(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 4096) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl GpuCompute<'_, '_> {
    /// Member `m`'s (offset in the staging and device buffers, byte length, dtype).
    pub(super) fn member(&self, m: usize) -> (usize, usize, SourceDtype) {
        let (off, weight) = &self.members[m];
        (*off, weight.len(), weight.dtype())
    }

    /// Member `m`'s weight on the host, for the rare paths that run on the CPU (an FP8 source
    /// is dequantized on the CPU: the same bytes as on the device).
    pub(super) fn host_weight(&self, m: usize) -> (Cow<'_, [u8]>, SourceDtype) {
        match &self.members[m].1 {
            MemberWeight::Plain(bytes, dtype) => (Cow::Borrowed(&**bytes), *dtype),
            other => {
                let (bytes, dtype) = other.clone().into_host();
                (Cow::Owned(bytes.into_owned()), dtype)
            }
        }
    }

    pub(super) fn slot(&mut self) -> &mut Slot {
        self.slot
            .as_mut()
            .expect("a GpuCompute holds its slot until dropped")
    }
}

impl<'a> UnitCompute<'a> for GpuCompute<'_, 'a> {
    fn load(&mut self, weights: Vec<MemberWeight<'a>>) -> Result<()> {
        let capacity = self.pool.capacity;
        let mut offset = 0;
        self.members.clear();
        for weight in weights {
            let len = weight.len();
            self.members.push((offset, weight));
            offset += len.next_multiple_of(ALIGN);
        }
        if offset > capacity {
            return Err(Error::other(format!(
                "GPU: a unit of {offset} bytes does not fit a slot of {capacity}"
            )));
        }
        let members = std::mem::take(&mut self.members);
        let result = self.upload(&members);
        self.members = members;
        result
    }

    fn weight(&mut self, m: usize) -> Result<Vec<u8>> {
        let (off, len, _) = self.member(m);
        let mut out = vec![0u8; len];
        self.download(&mut [(DeviceBuffer::In, off, &mut out)])?;
        Ok(out)
    }

    fn amax(&mut self, m: usize) -> Result<std::result::Result<f32, usize>> {
        let (off, len, dtype) = self.member(m);
        let gpu = self.pool.gpu.clone();
        let slot = self.slot();
        slot.stream
            .memset_zeros(&mut slot.dev_amax)
            .map_err(|e| cuda("memset", e))?;
        let n = (len / dtype.size()) as u64;
        let src = slot.dev_in.slice(off..off + len);
        let func = if dtype == SourceDtype::F32 {
            &gpu.amax32
        } else {
            &gpu.amax16
        };
        // SAFETY: the kernel reads n elements of `src` and writes one u32; sizes match.
        unsafe {
            slot.stream
                .launch_builder(func)
                .arg(&src)
                .arg(&n)
                .arg(&mut slot.dev_amax)
                .launch(grid_stride(n as usize))
        }
        .map_err(|e| cuda("amax kernel", e))?;
        let mut bits = [0u32; 1];
        slot.stream
            .memcpy_dtoh(&slot.dev_amax, &mut bits)
            .map_err(|e| cuda("copy to host", e))?;
        let started = Instant::now();
        slot.stream
            .synchronize()
            .map_err(|e| cuda("synchronise", e))?;
        add_elapsed(&self.pool.clock.device_wait, started);
        let (value, finite) = match dtype {
            SourceDtype::Bf16 => (f32::from_bits(bits[0] << 16), bits[0] < 0x7F80),
            SourceDtype::F16 => (
                half::f16::from_bits(bits[0] as u16).to_f32(),
                bits[0] < 0x7C00,
            ),
            SourceDtype::F32 => (f32::from_bits(bits[0]), bits[0] < 0x7F80_0000),
        };
        if finite {
            Ok(Ok(value))
        } else {
            // Rare error path: the CPU finds the first bad element for the message.
            Ok(compute::amax(&self.host_weight(m).0, dtype))
        }
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
        let (off, len, dtype) = self.member(m);
        let gpu = self.pool.gpu.clone();
        let nblocks = (rows * cols / 16) as u64;
        let six_ws2 = E2M1_MAX * ws2;
        let code = dtype_code(dtype);
        let slot = self.slot();
        let src = slot.dev_in.slice(off..off + len);
        // SAFETY: nblocks 16-element blocks are read from `src`; nblocks*8 packed bytes and
        // nblocks scale bytes are written, within the slot's buffers (checked in load).
        unsafe {
            slot.stream
                .launch_builder(&gpu.nvfp4_dynamic)
                .arg(&src)
                .arg(&code)
                .arg(&nblocks)
                .arg(&ws2)
                .arg(&six_ws2)
                .arg(&mut slot.dev_out)
                .arg(&mut slot.dev_scales)
                .launch(per_block(nblocks as usize))
        }
        .map_err(|e| cuda("nvfp4 kernel", e))?;
        self.fetch(packed, Some(scales))
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
        let (off, len, dtype) = self.member(m);
        let gpu = self.pool.gpu.clone();
        let nblocks = (rows * cols / 16) as u64;
        let ws2 = compute::nvfp4_global_scale(global, numerics);
        let g6 = numerics.div_const(global, E2M1_MAX);
        let recip6 = 1.0f32 / E2M1_MAX;
        let cuda_numerics = i32::from(numerics == Numerics::ModeloptCuda);
        let code = dtype_code(dtype);
        let slot = self.slot();
        slot.stream
            .memcpy_htod(blocks, &mut slot.dev_blocks.slice_mut(..blocks.len()))
            .map_err(|e| cuda("copy to GPU", e))?;
        // SAFETY: nblocks block amax are read and nblocks scale bytes written.
        unsafe {
            slot.stream
                .launch_builder(&gpu.nvfp4_static_scales)
                .arg(&slot.dev_blocks)
                .arg(&nblocks)
                .arg(&cuda_numerics)
                .arg(&recip6)
                .arg(&g6)
                .arg(&mut slot.dev_scales)
                .launch(per_block(nblocks as usize))
        }
        .map_err(|e| cuda("nvfp4 static scale kernel", e))?;
        let src = slot.dev_in.slice(off..off + len);
        // SAFETY: as in `nvfp4`.
        unsafe {
            slot.stream
                .launch_builder(&gpu.nvfp4_pack)
                .arg(&src)
                .arg(&code)
                .arg(&nblocks)
                .arg(&ws2)
                .arg(&slot.dev_scales)
                .arg(&mut slot.dev_out)
                .launch(per_block(nblocks as usize))
        }
        .map_err(|e| cuda("nvfp4 pack kernel", e))?;
        // The CPU twin synchronises implicitly; keep `blocks` alive until the copy is done.
        self.fetch(packed, Some(scales))?;
        Ok(ws2)
    }

    fn fp8(
        &mut self,
        m: usize,
        scale: f32,
        numerics: Numerics,
        quotient: compute::Fp8Quotient,
        out: &mut [u8],
    ) -> Result<()> {
        let (off, len, dtype) = self.member(m);
        let gpu = self.pool.gpu.clone();
        let n = (len / dtype.size()) as u64;
        let divisor = compute::fp8_divisor(scale, dtype, numerics, quotient);
        let code = dtype_code(dtype);
        // The dtype the quotient is rounded to before the E4M3 cast (f32: not rounded).
        let round_code = match quotient {
            compute::Fp8Quotient::WeightDtype => code,
            compute::Fp8Quotient::F32 => dtype_code(SourceDtype::F32),
        };
        let slot = self.slot();
        let src = slot.dev_in.slice(off..off + len);
        // SAFETY: n elements are read and n bytes written.
        unsafe {
            slot.stream
                .launch_builder(&gpu.fp8_quantize)
                .arg(&src)
                .arg(&code)
                .arg(&n)
                .arg(&divisor)
                .arg(&round_code)
                .arg(&mut slot.dev_out)
                .launch(grid_stride(n as usize))
        }
        .map_err(|e| cuda("fp8 kernel", e))?;
        self.fetch(out, None)
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
        self.ct_nvfp4_on_gpu(m, rows, cols, g, packed, scales)
    }

    fn ct_fp8(
        &mut self,
        m: usize,
        rows: usize,
        cols: usize,
        format: crate::compute::QuantFormat,
        codes: &mut [u8],
        scales: &mut [u8],
    ) -> Result<()> {
        self.ct_fp8_on_gpu(m, rows, cols, format, codes, scales)
    }

    fn ct_fp8_tensor(&mut self, m: usize, s: f32, codes: &mut [u8]) -> Result<()> {
        self.ct_fp8_tensor_on_gpu(m, s, codes)
    }

    fn mse_chunk_losses(
        &mut self,
        m: usize,
        cols: usize,
        candidates: &Candidates,
        importance: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        self.mse_chunk_losses_on_gpu(m, cols, candidates, importance)
    }

    fn sweep_block_amax(
        &mut self,
        m: usize,
        cols: usize,
        global: f32,
        numerics: Numerics,
        importance: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        self.sweep_block_amax_on_gpu(m, cols, global, numerics, importance)
    }
}
