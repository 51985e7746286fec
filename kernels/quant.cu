// shardquant GPU kernels: the twins of src/compute (amax, NVFP4, FP8), bit-identical to the CPU.
//
// Compiled at run time by NVRTC with --fmad=false and no fast-math; every floating-point step
// that the CPU path rounds is written with an explicit round-to-nearest intrinsic (__fadd_rn,
// __fmul_rn, __fdiv_rn), so no contraction or approximation can change a bit. No CUDA headers
// are needed: dtype conversions and the E4M3 / E2M1 codecs are written out on bit patterns,
// line for line the same as src/compute/codec.rs.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// DTYPE_BF16, DTYPE_F16 and DTYPE_F32 (the dtype codes the host passes) are defined on the NVRTC
// command line from the Rust ones (src/compute/cuda/device.rs, kernel_constants).

__device__ __forceinline__ float bits_f32(u32 b) { return __int_as_float((int)b); }
__device__ __forceinline__ u32 f32_bits(float f) { return (u32)__float_as_int(f); }

// f16 -> f32, exact (normals, subnormals, inf, NaN).
__device__ __forceinline__ float f16_to_f32(u16 h) {
    u32 sign = ((u32)h & 0x8000u) << 16;
    u32 exp = ((u32)h >> 10) & 0x1Fu;
    u32 mant = (u32)h & 0x3FFu;
    if (exp == 0) {
        float m = __fmul_rn((float)mant, 5.9604644775390625e-8f);  // mant * 2^-24, exact
        return bits_f32(f32_bits(m) | sign);
    }
    if (exp == 31) return bits_f32(sign | 0x7F800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

__device__ __forceinline__ float load_elem(const u8* src, int dtype, u64 i) {
    if (dtype == DTYPE_BF16) {
        u16 b = (u16)src[2 * i] | ((u16)src[2 * i + 1] << 8);
        return bits_f32((u32)b << 16);
    } else if (dtype == DTYPE_F16) {
        u16 b = (u16)src[2 * i] | ((u16)src[2 * i + 1] << 8);
        return f16_to_f32(b);
    }
    u32 b = (u32)src[4 * i] | ((u32)src[4 * i + 1] << 8) | ((u32)src[4 * i + 2] << 16) | ((u32)src[4 * i + 3] << 24);
    return bits_f32(b);
}

// codec.rs bf16_round
__device__ __forceinline__ float bf16_round(float x) {
    u32 bits = f32_bits(x);
    if (x != x) return bits_f32((bits | 0x00400000u) & 0xFFFF0000u);
    u32 lsb = (bits >> 16) & 1u;
    return bits_f32((bits + 0x7FFFu + lsb) & 0xFFFF0000u);
}

// codec.rs f16_round
__device__ __forceinline__ float f16_round(float x) {
    u32 bits = f32_bits(x);
    if (x != x) return bits_f32((bits | 0x00400000u) & 0xFFFFE000u);
    u32 sign = bits & 0x80000000u;
    float magnitude = fabsf(x);
    float rounded;
    if (magnitude >= 65520.0f) {
        rounded = bits_f32(0x7F800000u);
    } else if (magnitude < 6.103515625e-05f) {
        rounded = __fadd_rn(__fadd_rn(magnitude, 0.5f), -0.5f);
    } else {
        u32 ab = f32_bits(magnitude);
        u32 lsb = (ab >> 13) & 1u;
        rounded = bits_f32((ab + 0xFFFu + lsb) & ~0x1FFFu);
    }
    return bits_f32(f32_bits(rounded) | sign);
}

__device__ __forceinline__ float round_to(int dtype, float x) {
    if (dtype == DTYPE_BF16) return bf16_round(x);
    if (dtype == DTYPE_F16) return f16_round(x);
    return x;
}

// codec.rs e4m3_from_f32 (torch's float8_e4m3fn cast: RNE, subnormals, NaN above 464)
__device__ __forceinline__ u8 e4m3_from_f32(float x) {
    const u32 NAN_THRESHOLD_BITS = 1087u << 20;
    const u32 MIN_NORMAL_BITS = 121u << 23;
    const u32 SUBNORMAL_SHIFTER_BITS = 141u << 23;
    const u32 REBIAS = (127u - 7u) << 23;
    u32 bits = f32_bits(x);
    u8 sign = (u8)((bits & 0x80000000u) >> 24);
    u32 abs_bits = bits & 0x7FFFFFFFu;
    u8 magnitude;
    if (abs_bits >= NAN_THRESHOLD_BITS) {
        magnitude = 0x7F;
    } else if (abs_bits < MIN_NORMAL_BITS) {
        float shifted = __fadd_rn(bits_f32(abs_bits), bits_f32(SUBNORMAL_SHIFTER_BITS));
        magnitude = (u8)(f32_bits(shifted) - SUBNORMAL_SHIFTER_BITS);
    } else {
        u32 mantissa_odd = (abs_bits >> 20) & 1u;
        magnitude = (u8)((abs_bits - REBIAS + 0x7FFFFu + mantissa_odd) >> 20);
    }
    return magnitude | sign;
}

// codec.rs e4m3_to_f32
__device__ __forceinline__ float e4m3_to_f32(u8 b) {
    u32 sign = ((u32)(b & 0x80)) << 24;
    u32 exponent = (b >> 3) & 0xFu;
    u32 mantissa = b & 0x7u;
    float magnitude;
    if (exponent == 0xF && mantissa == 0x7) magnitude = bits_f32(0x7FC00000u);
    else if (exponent == 0) magnitude = __fmul_rn((float)mantissa, 0.001953125f);  // 2^-9
    else magnitude = bits_f32(((exponent + 120u) << 23) | (mantissa << 20));
    return bits_f32(f32_bits(magnitude) | sign);
}

// codec.rs e2m1_nibble (ModelOpt _cast_fp4: ties to even code, negative zero for small negatives)
__device__ __forceinline__ u8 e2m1_nibble(float x) {
    u8 sign = (u8)(x < 0.0f) << 3;
    float a = fabsf(x);
    u8 code = (u8)(a > 0.25f) + (u8)(a >= 0.75f) + (u8)(a > 1.25f) + (u8)(a >= 1.75f) + (u8)(a > 2.5f) +
              (u8)(a >= 3.5f) + (u8)(a > 5.0f);
    if (a != a) code = 7;
    return sign | code;
}

// Rust's f32::clamp: NaN stays NaN.
__device__ __forceinline__ float clamp_scale(float s) {
    if (s < 0.001953125f) return 0.001953125f;
    if (s > 448.0f) return 448.0f;
    return s;
}

// ---- amax: max of the magnitude bits (exact; order-free) ----

__device__ __forceinline__ u32 warp_max(u32 m) {
    for (int off = 16; off > 0; off >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, off));
    return m;
}

extern "C" __global__ void amax_bits16(const u16* __restrict__ x, u64 n, u32* out) {
    u32 m = 0;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        m = max(m, (u32)(x[i] & 0x7FFFu));
    m = warp_max(m);
    if ((threadIdx.x & 31) == 0) atomicMax(out, m);
}

extern "C" __global__ void amax_bits32(const u32* __restrict__ x, u64 n, u32* out) {
    u32 m = 0;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        m = max(m, x[i] & 0x7FFFFFFFu);
    m = warp_max(m);
    if ((threadIdx.x & 31) == 0) atomicMax(out, m);
}

// ---- NVFP4 ----

// Packs one 16-block given its scale byte: nibble = e2m1(w / (e4m3(scale) * ws2)), element 2k low.
__device__ __forceinline__ void pack_block(const float* w, u8 scale, float ws2, u8* out) {
    float denominator = __fmul_rn(e4m3_to_f32(scale), ws2);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        u8 lo = e2m1_nibble(__fdiv_rn(w[2 * k], denominator));
        u8 hi = e2m1_nibble(__fdiv_rn(w[2 * k + 1], denominator));
        out[k] = lo | (u8)(hi << 4);
    }
}

// Dynamic NVFP4 (nvfp4.rs quantize_nvfp4): one thread per 16-element block.
// six_ws2 = f32(6 * ws2), computed by the host exactly as the CPU does.
extern "C" __global__ void nvfp4_dynamic(const u8* __restrict__ src, int dtype, u64 nblocks, float ws2, float six_ws2,
                                         u8* __restrict__ packed, u8* __restrict__ scales) {
    u64 b = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nblocks) return;
    float w[16];
    float block_max = 0.0f;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        w[j] = load_elem(src, dtype, b * 16 + j);
        float a = fabsf(w[j]);
        block_max = a > block_max ? a : block_max;  // a NaN element is skipped, as on the CPU
    }
    float s = __fdiv_rn(block_max, six_ws2);
    u8 scale = e4m3_from_f32(clamp_scale(s == 0.0f ? 1.0f : s));
    scales[b] = scale;
    u8 out[8];
    pack_block(w, scale, ws2, out);
#pragma unroll
    for (int k = 0; k < 8; ++k) packed[b * 8 + k] = out[k];
}

// Static NVFP4 block scales (nvfp4.rs quantize_nvfp4_static): s = a/6 ([÷s] per numerics), 0 -> 1,
// e4m3(clamp(f32(s * 448) / g6)) with g6 = div_const(global_amax, 6) from the host.
extern "C" __global__ void nvfp4_static_scales(const float* __restrict__ block_amax, u64 nblocks, int cuda_numerics,
                                               float recip6, float g6, u8* __restrict__ scales) {
    u64 b = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nblocks) return;
    float a = block_amax[b];
    float s = cuda_numerics ? __fmul_rn(a, recip6) : __fdiv_rn(a, 6.0f);
    if (s == 0.0f) s = 1.0f;
    scales[b] = e4m3_from_f32(clamp_scale(__fdiv_rn(__fmul_rn(s, 448.0f), g6)));
}

// Packing from given scales (nvfp4.rs pack_nvfp4).
extern "C" __global__ void nvfp4_pack(const u8* __restrict__ src, int dtype, u64 nblocks, float ws2,
                                      const u8* __restrict__ scales, u8* __restrict__ packed) {
    u64 b = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nblocks) return;
    float w[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) w[j] = load_elem(src, dtype, b * 16 + j);
    u8 out[8];
    pack_block(w, scales[b], ws2, out);
#pragma unroll
    for (int k = 0; k < 8; ++k) packed[b * 8 + k] = out[k];
}

// ---- FP8 per-tensor (fp8.rs quantize_fp8): e4m3(round_to(round_dtype, w / divisor)) ----
// round_dtype is the weight's dtype for 2-D weights, f32 (no rounding) for stacked experts.
extern "C" __global__ void fp8_quantize(const u8* __restrict__ src, int dtype, u64 n, float divisor, int round_dtype,
                                        u8* __restrict__ out) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = e4m3_from_f32(round_to(round_dtype, __fdiv_rn(load_elem(src, dtype, i), divisor)));
}

// ---- FP8 block-scaled source weights (fp8_block.rs dequantize_fp8_block) ----
// y = f32(fp8[r, c]) * scale_inv[r / 128, c / 128], stored as BF16 (rounded) or F32.
extern "C" __global__ void fp8_block_dequant(const u8* __restrict__ fp8, const float* __restrict__ scale_inv, u64 rows, u64 cols,
                                             int to_bf16, u8* __restrict__ out) {
    u64 scols = (cols + 127) / 128;
    u64 n = rows * cols;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 r = i / cols, c = i % cols;
        float y = __fmul_rn(e4m3_to_f32(fp8[i]), scale_inv[(r / 128) * scols + c / 128]);
        if (to_bf16) {
            u32 b = f32_bits(bf16_round(y)) >> 16;
            out[2 * i] = (u8)(b & 0xFF);
            out[2 * i + 1] = (u8)(b >> 8);
        } else {
            u32 b = f32_bits(y);
            out[4 * i] = (u8)(b & 0xFF);
            out[4 * i + 1] = (u8)((b >> 8) & 0xFF);
            out[4 * i + 2] = (u8)((b >> 16) & 0xFF);
            out[4 * i + 3] = (u8)(b >> 24);
        }
    }
}
