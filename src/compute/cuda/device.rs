//! Finding a usable GPU without panicking, and compiling `kernels/*.cu` for it with NVRTC.
//!
//! cudarc's dynamic loading panics when libcuda or libnvrtc is missing, so presence is checked
//! first (`is_culib_present`) and the remaining calls run under `catch_unwind` with a silent
//! panic hook (the recipe of `docs/gpu.md`). The kernels are compiled to a CUBIN for the
//! device's architecture, once per process, with `--fmad=false` and IEEE division: the same
//! arithmetic as the CPU path, bit for bit.

use crate::compute::SourceDtype;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{self, Ptx};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// The kernel source, compiled into the binary: the quantization kernels, then the MSE
/// calibration kernels and the compressed-tensors kernels, which use their codecs.
pub const KERNEL_SOURCE: &str = concat!(
    include_str!("../../../kernels/quant.cu"),
    "\n",
    include_str!("../../../kernels/mse.cu"),
    "\n",
    include_str!("../../../kernels/ct.cu")
);

/// Constants the kernels share with the Rust code, declared once (here and in
/// [`crate::compute::mse`]) and given to NVRTC as `-D` definitions.
pub fn kernel_constants() -> [(&'static str, usize); 6] {
    use crate::compute::mse::{CHUNK_GROUPS, MSE_STEPS, SWEEP_STEPS};
    [
        ("MSE_STEPS", MSE_STEPS),
        ("SWEEP_STEPS", SWEEP_STEPS),
        ("CHUNK_GROUPS", CHUNK_GROUPS),
        ("DTYPE_BF16", dtype_code(SourceDtype::Bf16) as usize),
        ("DTYPE_F16", dtype_code(SourceDtype::F16) as usize),
        ("DTYPE_F32", dtype_code(SourceDtype::F32) as usize),
    ]
}

/// The code of a source dtype in the kernels' `dtype` arguments.
pub(crate) fn dtype_code(dtype: SourceDtype) -> i32 {
    match dtype {
        SourceDtype::Bf16 => 0,
        SourceDtype::F16 => 1,
        SourceDtype::F32 => 2,
    }
}

/// A usable GPU with the kernels loaded.
pub struct Gpu {
    /// The CUDA context.
    pub ctx: Arc<CudaContext>,
    /// Device ordinal.
    pub ordinal: usize,
    /// Device name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
    _module: Arc<CudaModule>,
    pub(crate) amax16: CudaFunction,
    pub(crate) amax32: CudaFunction,
    pub(crate) nvfp4_dynamic: CudaFunction,
    pub(crate) nvfp4_static_scales: CudaFunction,
    pub(crate) nvfp4_pack: CudaFunction,
    pub(crate) fp8_quantize: CudaFunction,
    pub(crate) fp8_block_dequant: CudaFunction,
    pub(crate) mse_chunk_losses: CudaFunction,
    pub(crate) nvfp4_sweep: CudaFunction,
    pub(crate) ct_global_scales: CudaFunction,
    pub(crate) ct_nvfp4: CudaFunction,
    pub(crate) ct_fp8_tiles: CudaFunction,
    pub(crate) ct_fp8_tensor: CudaFunction,
}

/// Runs `f`, turning a panic into an error message without printing it.
fn quiet<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string())
    })
}

/// Directories that hold the CUDA headers NVRTC may need (none are needed today: the
/// kernels include no header; kept for the include path option).
fn cuda_include_dir() -> Option<String> {
    let mut roots: Vec<String> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .collect();
    roots.push("/usr/local/cuda".to_string());
    roots
        .iter()
        .flat_map(|r| {
            [
                format!("{r}/include"),
                format!("{r}/targets/x86_64-linux/include"),
            ]
        })
        .find(|d| std::path::Path::new(&format!("{d}/cuda_runtime.h")).exists())
}

fn compile_cubin(arch: (i32, i32)) -> Result<Vec<u8>, String> {
    use std::ffi::CString;
    let mut opts = vec![
        format!("--gpu-architecture=sm_{}{}", arch.0, arch.1),
        "--fmad=false".to_string(),
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
        "--ftz=false".to_string(),
        "--std=c++17".to_string(),
    ];
    if let Some(dir) = cuda_include_dir() {
        opts.push(format!("--include-path={dir}"));
    }
    opts.extend(
        kernel_constants()
            .iter()
            .map(|(name, value)| format!("-D{name}={value}")),
    );
    let src = CString::new(KERNEL_SOURCE).map_err(|e| e.to_string())?;
    let prog = nvrtc::result::create_program(&src, None).map_err(|e| format!("NVRTC: {e:?}"))?;
    // SAFETY: `prog` is a live program; the options outlive the call.
    if let Err(e) = unsafe { nvrtc::result::compile_program(prog, &opts) } {
        // SAFETY: as above.
        let log = unsafe { nvrtc::result::get_program_log(prog) }.unwrap_or_default();
        let log: String = log
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8 as char)
            .collect();
        // SAFETY: as above; the program is not used afterwards.
        let _ = unsafe { nvrtc::result::destroy_program(prog) };
        return Err(format!(
            "NVRTC could not compile kernels/quant.cu + mse.cu + ct.cu: {e:?}\n{log}"
        ));
    }
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; `size` receives the CUBIN size.
    unsafe { nvrtc::sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| format!("{e:?}"))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has exactly the size NVRTC reported.
    unsafe { nvrtc::sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut _) }
        .result()
        .map_err(|e| format!("{e:?}"))?;
    // SAFETY: the program is not used afterwards.
    let _ = unsafe { nvrtc::result::destroy_program(prog) };
    Ok(cubin)
}

impl Gpu {
    /// Opens GPU `ordinal` and loads the kernels, or says why it cannot.
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>, String> {
        // SAFETY: only tries dlopen on the library names; never panics.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no NVIDIA driver (libcuda) on this machine".to_string());
        }
        // SAFETY: as above.
        if !unsafe { nvrtc::sys::is_culib_present() } {
            return Err(
                "the NVIDIA driver is present but libnvrtc (CUDA runtime compiler) was not found"
                    .to_string(),
            );
        }
        quiet(|| Gpu::open_unchecked(ordinal))
            .map_err(|p| format!("CUDA initialisation failed: {p}"))?
    }

    fn open_unchecked(ordinal: usize) -> Result<Arc<Gpu>, String> {
        let count =
            CudaContext::device_count().map_err(|e| format!("cannot count CUDA devices: {e:?}"))?;
        if ordinal >= count.max(0) as usize {
            return Err(format!(
                "CUDA device {ordinal} does not exist ({count} device(s) present)"
            ));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| format!("cannot open CUDA device {ordinal}: {e:?}"))?;
        let capability = ctx.compute_capability().map_err(|e| format!("{e:?}"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".to_string());
        let cubin = compile_cubin(capability)?;
        let module = ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(|e| format!("loading the kernels: {e:?}"))?;
        let f = |n: &str| {
            module
                .load_function(n)
                .map_err(|e| format!("kernel {n}: {e:?}"))
        };
        Ok(Arc::new(Gpu {
            amax16: f("amax_bits16")?,
            amax32: f("amax_bits32")?,
            nvfp4_dynamic: f("nvfp4_dynamic")?,
            nvfp4_static_scales: f("nvfp4_static_scales")?,
            nvfp4_pack: f("nvfp4_pack")?,
            fp8_quantize: f("fp8_quantize")?,
            fp8_block_dequant: f("fp8_block_dequant")?,
            mse_chunk_losses: f("mse_chunk_losses")?,
            nvfp4_sweep: f("nvfp4_sweep")?,
            ct_global_scales: f("ct_global_scales")?,
            ct_nvfp4: f("ct_nvfp4")?,
            ct_fp8_tiles: f("ct_fp8_tiles")?,
            ct_fp8_tensor: f("ct_fp8_tensor")?,
            _module: module,
            ctx,
            ordinal,
            name,
            capability,
        }))
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize), String> {
        self.ctx.bind_to_thread().map_err(|e| format!("{e:?}"))?;
        cudarc::driver::result::mem_get_info().map_err(|e| format!("{e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels use every shared constant and define none of them themselves.
    #[test]
    fn kernel_constants_come_from_rust_only() {
        for (name, _) in kernel_constants() {
            assert!(
                KERNEL_SOURCE.contains(name),
                "{name} is not used by the kernels"
            );
            assert!(
                !KERNEL_SOURCE.contains(&format!("#define {name}")),
                "kernels/*.cu define {name}: it must come from Rust"
            );
        }
    }
}
