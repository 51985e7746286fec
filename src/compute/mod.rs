//! Numeric kernels: the CPU reference implementation of ModelOpt 0.47's NVFP4 and FP8 export
//! arithmetic, bit for bit.
//!
//! Brief overview:
//! - [`codec`]: scalar codecs (bf16 / f16 rounding, E4M3, E2M1), pure functions, one rule each.
//! - [`numerics`]: the source element types ([`SourceDtype`]) and the two ModelOpt export
//!   arithmetics ([`Numerics`]: CUDA and CPU round `tensor / python_float` differently).
//! - [`format`](mod@format): every quantization format declared once, as data
//!   ([`QuantFormat`]).
//! - [`linear`]: the tensors a quantized linear exports, in one order, and how one member
//!   is quantized.
//! - [`amax`](mod@amax): exact max |x| of a raw tensor.
//! - [`nvfp4`]: dynamic and static NVFP4 weight quantization and scales.
//! - [`ct`]: compressed-tensors' NVFP4 and per-channel / 128x128-block FP8 arithmetic.
//! - [`fp8`]: per-tensor FP8 weight quantization and scales.
//! - [`nonfinite`]: NaN / infinite weight elements passed through (`--allow-nonfinite`).
//! - [`value_name`]: the command line's spelling of the options' enums declared here.
//!
//! The formulas are those of `shared/golden/README.md` (verified against ModelOpt's bytes) and
//! `docs/modelopt-format.md` §1–§2. Every function here works on little-endian byte
//! slices, as they come from an mmap of a safetensors shard.

pub mod amax;
pub mod backend;
pub mod codec;
pub mod ct;
pub mod cuda;
pub mod format;
pub mod fp8;
pub mod fp8_block;
pub mod linear;
pub mod mse;
pub mod nonfinite;
pub mod numerics;
pub mod nvfp4;

pub use amax::amax;
pub use codec::{bf16_round, e2m1_nibble, e2m1_to_f32, e4m3_from_f32, e4m3_to_f32, f16_round};
pub use format::{check_shape, Export, QuantFormat};
pub use fp8::{fp8_divisor, fp8_scale, quantize_fp8, Fp8Quotient};
pub use fp8_block::{
    amax_fp8_block, dequantize_fp8_block, scale_inv_shape, DequantPrecision, FP8_BLOCK,
};
pub use linear::{output_tensors, transpose_experts};
pub use numerics::{load_f32, load_f32_into, Numerics, SourceDtype};
pub use nvfp4::{
    nvfp4_global_scale, pack_nvfp4, quantize_nvfp4, quantize_nvfp4_static, NVFP4_BLOCK_SIZE,
    NVFP4_GLOBAL_SCALE_DIVISOR,
};

/// How the command line spells `value`, a value of an option's enum (its `#[value(name)]`, else
/// clap's kebab-case of the variant). The help, the manifest, the report and the error messages
/// all take the spelling from here, so it is written once, on the enum.
pub fn value_name<T: clap::ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod test_util;
#[cfg(test)]
mod tests_codec;
#[cfg(test)]
mod tests_golden;
#[cfg(test)]
mod tests_kernels;
