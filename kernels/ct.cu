// compressed-tensors kernels: the twins of src/compute/ct.rs, bit-identical to the CPU.
//
// Appended to kernels/quant.cu (src/compute/cuda/device.rs, KERNEL_SOURCE), whose typedefs, dtype
// loads and codecs (bf16_round, e4m3_from_f32, e4m3_to_f32, e2m1_nibble) they use. As there, every
// rounded step is an explicit round-to-nearest intrinsic (no contraction, no fast math).
//
// Maxima of |w| are taken in f32 with `x > m ? x : m` from 0: Rust's `m.max(x)` from 0 (a NaN
// element is skipped); the maximum is exact, so the reduction order changes nothing.

// ct.rs ct_global_scale: g = bf16(f32(bf16(1 / max(A, 2^-126))) * 2688), 1.0 when not finite.
__device__ __forceinline__ float ct_global_scale(float amax) {
    const float BF16_TINY = 1.1754943508222875e-38f;  // 2^-126
    float a = amax > BF16_TINY ? amax : BF16_TINY;    // Rust max: a NaN amax gives the floor
    float r = bf16_round(__fdiv_rn(1.0f, a));
    float g = bf16_round(__fmul_rn(r, 2688.0f));
    if ((f32_bits(g) & 0x7F800000u) == 0x7F800000u) return 1.0f;  // inf or NaN
    return g;
}

// ct.rs ct_fp8_scale: s = bf16(m / 448), 2^-7 (bf16 eps) when that is 0.
__device__ __forceinline__ float ct_fp8_scale(float m) {
    float s = bf16_round(__fdiv_rn(m, 448.0f));
    return s == 0.0f ? 0.0078125f : s;
}

// ct.rs ct_fp8_element: e4m3(clamp(bf16(w / s), -448, 448)); Rust's clamp keeps a NaN.
__device__ __forceinline__ u8 ct_fp8_element(float w, float s) {
    float q = bf16_round(__fdiv_rn(w, s));
    if (q < -448.0f) q = -448.0f;
    if (q > 448.0f) q = 448.0f;
    return e4m3_from_f32(q);
}

// Global scales of n amax values (the twin of ct_global_scale, for the tests and the host).
extern "C" __global__ void ct_global_scales(const float* __restrict__ amax, u64 n, float* __restrict__ out) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = ct_global_scale(amax[i]);
}

// ct.rs quantize_nvfp4_ct: one thread per 16-element block (blocks are contiguous and numbered
// row-major, so block b is scales[b] and packed[8b..8b+8]).
extern "C" __global__ void ct_nvfp4(const u8* __restrict__ src, int dtype, u64 nblocks, float g,
                                    u8* __restrict__ packed, u8* __restrict__ scales) {
    u64 b = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nblocks) return;
    float w[16];
    float m = 0.0f;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        w[j] = load_elem(src, dtype, b * 16 + j);
        float a = fabsf(w[j]);
        m = a > m ? a : m;
    }
    float s = __fmul_rn(g, bf16_round(__fdiv_rn(m, 6.0f)));
    s = s < 448.0f ? s : 448.0f;  // Rust min: a NaN product gives 448
    u8 c = e4m3_from_f32(s);
    if (c == 0) c = 0x20;  // 0.125
    scales[b] = c;
    float d = __fdiv_rn(e4m3_to_f32(c), g);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        float lo = __fdiv_rn(w[2 * k], d);
        float hi = __fdiv_rn(w[2 * k + 1], d);
        if (lo < -6.0f) lo = -6.0f;
        if (lo > 6.0f) lo = 6.0f;
        if (hi < -6.0f) hi = -6.0f;
        if (hi > 6.0f) hi = 6.0f;
        packed[b * 8 + k] = e2m1_nibble(lo) | (u8)(e2m1_nibble(hi) << 4);
    }
}

// ct.rs quantize_fp8_tensor_ct: codes[i] = ct_fp8_element(w[i], s) under the tensor's one scale s
// (computed on the host from the amax kernel's max |w|), grid-stride over the n elements.
extern "C" __global__ void ct_fp8_tensor(const u8* __restrict__ src, int dtype, u64 n, float s,
                                         u8* __restrict__ codes) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        codes[i] = ct_fp8_element(load_elem(src, dtype, i), s);
}

// The maximum of m over a thread block (blockDim.x a multiple of 32, at most 1024); every thread
// gets it. `part` is 32 floats of shared memory.
__device__ __forceinline__ float block_max_f32(float m, float* part) {
    for (int off = 16; off > 0; off >>= 1) {
        float o = __shfl_xor_sync(0xffffffffu, m, off);
        m = o > m ? o : m;
    }
    unsigned warps = blockDim.x / 32;
    if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = part[0];
        for (unsigned i = 1; i < warps; ++i) t = part[i] > t ? part[i] : t;
        part[0] = t;
    }
    __syncthreads();
    return part[0];
}

// ct.rs quantize_fp8_channel_ct and quantize_fp8_block_ct: one thread block per scale tile of
// tile_rows x tile_cols (1 x cols per channel; 128 x 128 per block, cut at the weight's edges),
// tiles numbered row-major over the grid of ceil(rows / tile_rows) x ceil(cols / tile_cols).
// The tile's scale s = ct_fp8_scale(max |w|) goes to scales[tile] as little-endian bf16, and every
// element of the tile to codes[r, c] = ct_fp8_element(w, s).
extern "C" __global__ void ct_fp8_tiles(const u8* __restrict__ src, int dtype, u64 rows, u64 cols, u64 tile_rows,
                                        u64 tile_cols, u8* __restrict__ codes, u8* __restrict__ scales) {
    __shared__ float part[32];
    u64 grid_cols = (cols + tile_cols - 1) / tile_cols;
    u64 tile = blockIdx.x;
    u64 r0 = (tile / grid_cols) * tile_rows;
    u64 c0 = (tile % grid_cols) * tile_cols;
    u64 n = rows - r0 < tile_rows ? rows - r0 : tile_rows;
    u64 width = cols - c0 < tile_cols ? cols - c0 : tile_cols;
    u64 count = n * width;
    float m = 0.0f;
    for (u64 i = threadIdx.x; i < count; i += blockDim.x) {
        float a = fabsf(load_elem(src, dtype, (r0 + i / width) * cols + c0 + i % width));
        m = a > m ? a : m;
    }
    m = block_max_f32(m, part);
    float s = ct_fp8_scale(m);
    if (threadIdx.x == 0) {
        u32 bits = f32_bits(s) >> 16;  // s is a bf16 value
        scales[2 * tile] = (u8)(bits & 0xFFu);
        scales[2 * tile + 1] = (u8)(bits >> 8);
    }
    for (u64 i = threadIdx.x; i < count; i += blockDim.x) {
        u64 at = (r0 + i / width) * cols + c0 + i % width;
        codes[at] = ct_fp8_element(load_elem(src, dtype, at), s);
    }
}
