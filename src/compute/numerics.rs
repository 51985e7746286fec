//! Source element types and the two ModelOpt export arithmetics.
//!
//! [`SourceDtype`] says how to decode a raw little-endian weight buffer and how PyTorch rounds
//! results back to that dtype. [`Numerics`] says which of ModelOpt's two export arithmetics to
//! reproduce: on CUDA, `tensor / python_float` is a multiplication by the f32 reciprocal, on CPU
//! it is an IEEE division (golden/README.md "Two numerics").

use crate::compute::codec::{bf16_round, f16_round};

/// Element type of a source weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDtype {
    /// bfloat16 (safetensors `BF16`).
    Bf16,
    /// IEEE half (safetensors `F16`).
    F16,
    /// IEEE single (safetensors `F32`).
    F32,
}

impl SourceDtype {
    /// Every source dtype, for tests and help texts.
    pub const ALL: [SourceDtype; 3] = [SourceDtype::Bf16, SourceDtype::F16, SourceDtype::F32];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            SourceDtype::Bf16 | SourceDtype::F16 => 2,
            SourceDtype::F32 => 4,
        }
    }

    /// Rounds an f32 to this dtype (round half to even) and back; the identity for F32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            SourceDtype::Bf16 => bf16_round(x),
            SourceDtype::F16 => f16_round(x),
            SourceDtype::F32 => x,
        }
    }

    /// The safetensors dtype name: `"BF16"`, `"F16"` or `"F32"`.
    pub fn name(self) -> &'static str {
        match self {
            SourceDtype::Bf16 => "BF16",
            SourceDtype::F16 => "F16",
            SourceDtype::F32 => "F32",
        }
    }

    /// The dtype with safetensors name `name`, or `None` for any other name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|dtype| dtype.name() == name)
    }
}

/// Decodes element `i` of a little-endian raw buffer of `dtype` elements (the buffer may come
/// from an mmap and be unaligned). Panics if the element is out of bounds.
pub fn load_f32(src: &[u8], dtype: SourceDtype, i: usize) -> f32 {
    let size = dtype.size();
    let bytes = &src[i * size..(i + 1) * size];
    match dtype {
        SourceDtype::Bf16 => bf16_bits_to_f32(u16::from_le_bytes([bytes[0], bytes[1]])),
        SourceDtype::F16 => half::f16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32(),
        SourceDtype::F32 => f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
    }
}

/// Decodes `out.len()` consecutive elements from the start of `src` into `out` (exact: every
/// source dtype widens to f32 without rounding). Panics if `src` holds fewer elements.
pub fn load_f32_into(src: &[u8], dtype: SourceDtype, out: &mut [f32]) {
    let src = &src[..out.len() * dtype.size()];
    match dtype {
        SourceDtype::Bf16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        SourceDtype::F16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        SourceDtype::F32 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Which ModelOpt export arithmetic to reproduce (`--numerics`). The first paragraph of each
/// variant's doc is its `--help` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Numerics {
    /// Match ModelOpt's export on CUDA (NVIDIA's published checkpoints).
    ///
    /// ModelOpt exporting on a CUDA device: `x / c` for a Python float `c` is `x * f32(1 / c)`,
    /// and a bf16 tensor divided by an f32 0-d tensor reads the divisor as bf16.
    ModeloptCuda,
    /// Match ModelOpt's export on CPU.
    ///
    /// ModelOpt exporting on the CPU: IEEE f32 division, f32 divisors read as f32.
    ModeloptCpu,
}

impl Numerics {
    /// Both numerics, for tests and help texts.
    pub const ALL: [Numerics; 2] = [Numerics::ModeloptCuda, Numerics::ModeloptCpu];

    /// ModelOpt's `f32_tensor / python_float`: CPU = IEEE f32 division `x / c`;
    /// CUDA = `x * f32(1.0f32 / c)` (ATen `div_true_kernel_cuda` with a CPU-scalar divisor).
    pub fn div_const(self, x: f32, c: f32) -> f32 {
        match self {
            Numerics::ModeloptCpu => x / c,
            Numerics::ModeloptCuda => x * (1.0f32 / c),
        }
    }

    /// The CLI / report name: `"modelopt-cuda"` or `"modelopt-cpu"` (from the `clap::ValueEnum`
    /// derive).
    pub fn name(self) -> String {
        super::value_name(&self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn test_div_const_documented_values() {
        // docs/modelopt-format.md §1.1: reciprocal constants and the amax example.
        assert_eq!((1.0f32 / 2688.0).to_bits(), 0x39C3_0C31);
        assert_eq!((1.0f32 / 448.0).to_bits(), 0x3B12_4925);
        assert_eq!((1.0f32 / 6.0).to_bits(), 0x3E2A_AAAB);
        let amax = 0.128_906_25f32;
        assert_eq!(
            Numerics::ModeloptCpu.div_const(amax, 2688.0).to_bits(),
            0x3849_2492
        );
        assert_eq!(
            Numerics::ModeloptCuda.div_const(amax, 2688.0).to_bits(),
            0x3849_2493
        );
        // §2.2 step 7: input amax 20.0 on CUDA.
        assert_eq!(
            Numerics::ModeloptCuda.div_const(20.0, 2688.0).to_bits(),
            0x3BF3_CF3D
        );
    }

    #[test]
    fn test_div_const_against_f64() {
        // CPU must be the correctly rounded quotient; CUDA the correctly rounded product with
        // the correctly rounded reciprocal. Both are checked through f64 (exact for these).
        let mut cuda_differs = 0;
        for bits in (0x3000_0000u32..0x4400_0000).step_by(4099) {
            let x = f32::from_bits(bits);
            for c in [2688.0f32, 448.0, 6.0] {
                let cpu = Numerics::ModeloptCpu.div_const(x, c);
                assert_eq!(cpu, (f64::from(x) / f64::from(c)) as f32);
                let recip = (1.0f64 / f64::from(c)) as f32;
                let cuda = Numerics::ModeloptCuda.div_const(x, c);
                assert_eq!(cuda, (f64::from(x) * f64::from(recip)) as f32);
                cuda_differs += usize::from(cuda != cpu);
            }
        }
        assert!(cuda_differs > 0, "the two numerics never differed");
    }

    #[test]
    fn test_names_round_trip() {
        for numerics in Numerics::ALL {
            assert_eq!(Numerics::from_str(&numerics.name(), false), Ok(numerics));
        }
        for dtype in SourceDtype::ALL {
            assert_eq!(SourceDtype::from_name(dtype.name()), Some(dtype));
        }
        assert_eq!(SourceDtype::from_name("F8_E4M3"), None);
        assert!(Numerics::from_str("cuda", false).is_err());
    }

    #[test]
    fn test_load_f32_unaligned_and_sizes() {
        let values = [1.5f32, -0.099_609_375, 65504.0, -0.0];
        for dtype in SourceDtype::ALL {
            // One leading byte makes every element unaligned.
            let mut buf = vec![0xAAu8];
            for v in values {
                match dtype {
                    SourceDtype::Bf16 => {
                        buf.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes())
                    }
                    SourceDtype::F16 => {
                        buf.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes())
                    }
                    SourceDtype::F32 => buf.extend_from_slice(&v.to_le_bytes()),
                }
            }
            assert_eq!(buf.len(), 1 + values.len() * dtype.size());
            let mut out = [0.0f32; 4];
            load_f32_into(&buf[1..], dtype, &mut out);
            for (i, v) in values.iter().enumerate() {
                let want = dtype.round(*v);
                assert_eq!(
                    load_f32(&buf[1..], dtype, i).to_bits(),
                    want.to_bits(),
                    "{dtype:?} {i}"
                );
                assert_eq!(out[i].to_bits(), want.to_bits(), "{dtype:?} {i}");
            }
        }
    }
}
