//! The GPU path: the same kernels as `crate::compute`, compiled by NVRTC from `kernels/quant.cu`,
//! run through reusable slots (pinned staging buffers, device buffers and a stream each), so
//! several units are in flight on the GPU at once while their weights are copied in and out.

mod ct;
mod device;
mod mse;
mod slot;
mod staging;

pub use device::{Gpu, KERNEL_SOURCE};
pub use slot::{GpuCompute, GpuPool};
pub use staging::GpuStages;

/// Which device `--device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The GPU when one is usable, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N; an error if it is not usable.
    Cuda(usize),
}

impl DeviceChoice {
    /// Parses `auto`, `cpu`, `cuda`, `cuda:N`.
    pub fn parse(text: &str) -> Option<DeviceChoice> {
        match text {
            "auto" => Some(DeviceChoice::Auto),
            "cpu" => Some(DeviceChoice::Cpu),
            "cuda" => Some(DeviceChoice::Cuda(0)),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda),
        }
    }
}
