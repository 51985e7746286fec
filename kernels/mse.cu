// shardquant MSE calibration kernels: the twins of src/compute/mse.rs, bit for bit.
//
// Appended to kernels/quant.cu at compile time (it uses that file's codecs). The reductions
// are fixed trees: a thread sums its 16-element group in index order, a 256-thread block sums
// its 256 group sums pairwise (stride 128, 64, ..., 1) in shared memory, and the host adds the
// chunk sums in order. Nothing depends on scheduling, so every run gives the same bits.

// MSE_STEPS, SWEEP_STEPS and CHUNK_GROUPS come from src/compute/mse.rs, defined on the NVRTC
// command line (src/compute/cuda/device.rs, kernel_constants).

// |E2M1 value| of e2m1_nibble(a) for a >= 0 or NaN (codec.rs: the same rounding bounds), without
// a table: a local array here would cost local-memory traffic in the hottest loop.
__device__ __forceinline__ float e2m1_magnitude(float a) {
    if (a != a) return 6.0f;
    int halves = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f);
    int ones = (a > 2.5f) + (a >= 3.5f);
    int twos = (a > 5.0f);
    return __fadd_rn(__fadd_rn(__fmul_rn(0.5f, (float)halves), (float)ones), __fmul_rn(2.0f, (float)twos));
}

// e2m1_to_f32(e2m1_nibble(t)): the signed value (a negative t that rounds to zero gives -0).
__device__ __forceinline__ float e2m1_round(float t) {
    float m = e2m1_magnitude(fabsf(t));
    return t < 0.0f ? -m : m;
}

// mse.rs weighted: (d * d) * importance[col]
__device__ __forceinline__ float weighted_sq(float d, const float* imp, int has_imp, u64 col) {
    float e = __fmul_rn(d, d);
    return has_imp ? __fmul_rn(e, imp[col]) : e;
}

// Rust's f32::clamp(-448, 448): NaN stays NaN.
__device__ __forceinline__ float clamp_e4m3_range(float y) {
    if (y < -448.0f) return -448.0f;
    if (y > 448.0f) return 448.0f;
    return y;
}

// The pairwise tree of one chunk; thread 0 stores the result.
__device__ __forceinline__ void chunk_tree(float* leaves, float sum, float* out) {
    int t = threadIdx.x;
    leaves[t] = sum;
    __syncthreads();
    for (int stride = CHUNK_GROUPS / 2; stride > 0; stride >>= 1) {
        if (t < stride) leaves[t] = __fadd_rn(leaves[t], leaves[t + stride]);
        __syncthreads();
    }
    if (t == 0) *out = leaves[0];
    __syncthreads();
}

// mse.rs nvfp4_search_block_scale: the Triton NVFP4 fake quant's block scale, saturated at 448,
// not clamped below, 1.0 under 1e-5.
__device__ __forceinline__ float nvfp4_search_block_scale(float block_max, float gs, float six_gs) {
    float s = __fdiv_rn(block_max, six_gs);
    if (s > 448.0f) s = 448.0f;
    float q = __fmul_rn(e4m3_to_f32(e4m3_from_f32(s)), gs);
    return q >= 1e-5f ? q : 1.0f;
}

// Multiplier search (mse.rs chunk_losses). One block per chunk of 4096 elements, one thread per
// 16-element group. target 0 = NVFP4 (a = global scale, b = 6 * global scale per candidate),
// 1 = FP8 (a = 448 / amax, b = 1 / a). out[k * chunks + chunk].
extern "C" __global__ void mse_chunk_losses(const u8* __restrict__ src, int dtype, u64 n, u64 cols, int target,
                                            const float* __restrict__ a, const float* __restrict__ b,
                                            const float* __restrict__ imp, int has_imp, u64 chunks,
                                            float* __restrict__ out) {
    __shared__ float leaves[CHUNK_GROUPS];
    u64 chunk = blockIdx.x;
    u64 first = (chunk * CHUNK_GROUPS + threadIdx.x) * 16;
    float w[16];
    int len = 0;
    float block_max = 0.0f;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        if (first + j < n) {
            w[j] = load_elem(src, dtype, first + j);
            float m = fabsf(w[j]);
            block_max = m > block_max ? m : block_max;
            len = j + 1;
        } else {
            w[j] = 0.0f;
        }
    }
    for (int k = 0; k < MSE_STEPS; ++k) {
        float sum = 0.0f;
        if (target == 0) {
            if (len > 0) {
                float den = nvfp4_search_block_scale(block_max, a[k], b[k]);
                for (int j = 0; j < len; ++j) {
                    float xq = __fmul_rn(e2m1_round(__fdiv_rn(w[j], den)), den);
                    sum = __fadd_rn(sum, weighted_sq(__fsub_rn(w[j], xq), imp, has_imp, (first + j) % cols));
                }
            }
        } else {
            for (int j = 0; j < len; ++j) {
                float y = clamp_e4m3_range(__fmul_rn(w[j], a[k]));
                float xq = __fmul_rn(e4m3_to_f32(e4m3_from_f32(y)), b[k]);
                sum = __fadd_rn(sum, weighted_sq(__fsub_rn(w[j], xq), imp, has_imp, (first + j) % cols));
            }
        }
        chunk_tree(leaves, sum, &out[(u64)k * chunks + chunk]);
    }
}

// FP8 scale sweep (mse.rs sweep_block_amax): one thread per 16-block; dens[k] =
// f32(e4m3(k + 1) * weight_scale_2), amax_of[k] = global * c_(k+1); first strict minimum.
extern "C" __global__ void nvfp4_sweep(const u8* __restrict__ src, int dtype, u64 nblocks, u64 cols,
                                       const float* __restrict__ dens, const float* __restrict__ amax_of,
                                       const float* __restrict__ imp, int has_imp, float* __restrict__ block_amax) {
    __shared__ float den_s[SWEEP_STEPS];
    for (int k = threadIdx.x; k < SWEEP_STEPS; k += blockDim.x) den_s[k] = dens[k];
    __syncthreads();
    u64 blk = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (blk >= nblocks) return;
    float w[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) w[j] = fabsf(load_elem(src, dtype, blk * 16 + j));
    u64 col0 = (blk * 16) % cols;
    int best = 0;
    float best_loss = __int_as_float(0x7F800000);
    for (int k = 0; k < SWEEP_STEPS; ++k) {
        float den = den_s[k];
        float loss = 0.0f;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            float d = __fsub_rn(w[j], __fmul_rn(e2m1_magnitude(__fdiv_rn(w[j], den)), den));
            loss = __fadd_rn(loss, weighted_sq(d, imp, has_imp, col0 + j));
        }
        if (loss < best_loss) {
            best_loss = loss;
            best = k;
        }
    }
    block_amax[blk] = amax_of[best];
}
