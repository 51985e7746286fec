//! MSE weight calibration: ModelOpt's searches for the weight amax that minimises the
//! quantization error of the weight itself (`docs/modelopt-format.md` §5), on the CPU; the GPU
//! twins in `kernels/mse.cu` compute the same numbers bit for bit.
//!
//! Two searches:
//! - **Multiplier search** (`--calib mse`, [`MseTarget`]): candidates `amax0 · m_k` for the 39
//!   multipliers of `torch.linspace(0.25, 4.0, 39)` ([`multipliers`]); each candidate's
//!   fake-quant is the format's own export arithmetic; the loss `Σ (w − wq)²` is reduced over the
//!   whole tensor (per-tensor FP8 scale, NVFP4 global amax); the first minimum wins.
//! - **FP8 scale sweep** (`--calib mse-fp8-sweep`, NVFP4 only): per 16-block, each of the 126
//!   positive finite E4M3 scale codes `k` is tried with the export's denominator
//!   `f32(e4m3(k) · weight_scale_2)`; the block keeps the first code with the least squared error
//!   and its amax `global · c_k` ([`sweep_scale`]) maps back to code `k` in the static export.
//!
//! Deterministic reduction: losses are summed in a fixed tree that does not depend on threads
//! or GPU scheduling. Elements are taken in row-major order in groups of [`GROUP`] (summed one
//! after another), [`CHUNK_GROUPS`] group sums form a chunk (summed by the pairwise tree of a
//! 256-thread block: stride 128, 64, …, 1), and the chunk sums are added in order in f64 on the
//! host ([`pick`]). With importance weights ([`Importance`]) each squared error is multiplied by
//! its input channel's weight before it is summed (`(d · d) · imp`, ModelOpt's `wmse` order).

use crate::compute::codec::{
    e2m1_nibble, e2m1_to_f32, e4m3_from_f32, e4m3_to_f32, E2M1_MAX, E4M3_MAX,
};
use crate::compute::numerics::{load_f32_into, Numerics, SourceDtype};
use crate::compute::nvfp4::{nvfp4_global_scale, NVFP4_BLOCK_SIZE};

/// How weight amax is calibrated (`--calib`). The first paragraph of each variant's doc is its
/// `--help` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CalibMethod {
    /// max |W|.
    ///
    /// ModelOpt's max calibration.
    Max,
    /// Multiplier search of the per-tensor amax.
    ///
    /// The multiplier search around max |W| (per-tensor FP8 amax, NVFP4 global amax).
    Mse,
    /// Per-block FP8 scale sweep (NVFP4 only).
    ///
    /// The per-block FP8 scale sweep of static NVFP4.
    #[value(name = "mse-fp8-sweep")]
    MseFp8Sweep,
}

impl CalibMethod {
    /// The `--calib` value (from the `clap::ValueEnum` derive).
    pub fn name(self) -> String {
        super::value_name(&self)
    }
}

/// Number of multipliers of the multiplier search: `ceil((4.0 - 0.25) / 0.1) + 1`.
pub const MSE_STEPS: usize = 39;
/// Elements summed one after another before the tree (one NVFP4 block).
pub const GROUP: usize = 16;
/// Group sums per chunk: the leaves of one pairwise tree.
pub const CHUNK_GROUPS: usize = 256;
/// Elements per chunk.
pub const CHUNK: usize = GROUP * CHUNK_GROUPS;
/// The E4M3 codes the FP8 scale sweep tries: 0x01 (2^-9) ..= 0x7E (448).
pub const SWEEP_CODES: std::ops::RangeInclusive<u8> = 1..=126;
/// Number of candidates of the FP8 scale sweep.
pub const SWEEP_STEPS: usize = 126;
/// Smallest importance weight after normalisation (mean weight = 1): a channel that saw no
/// activation still counts a little, so all-zero-importance blocks keep a sensible scale.
pub const IMPORTANCE_FLOOR: f64 = 1e-6;

/// The multipliers of ModelOpt's `MseCalibrator`: `torch.linspace(0.25, 4.0, 39)` in f32, as
/// ATen computes it: `step = (end − start) / (steps − 1)`; the first half counts up from the
/// start, the second half down from the end, each value with a single rounding (the fused
/// multiply-add that PyTorch's CPU and CUDA kernels both get: verified bit for bit against
/// PyTorch's output in the tests; two roundings differ at 4 of the 39 values).
pub fn multipliers() -> [f32; MSE_STEPS] {
    let (start, end) = (0.25f32, 4.0f32);
    let step = (end - start) / (MSE_STEPS - 1) as f32;
    let halfway = MSE_STEPS / 2;
    std::array::from_fn(|i| {
        if i < halfway {
            step.mul_add(i as f32, start)
        } else {
            (-step).mul_add((MSE_STEPS - i - 1) as f32, end)
        }
    })
}

/// The sweep's normalised scale of E4M3 code `code`: `e4m3(code) / 448` (ModelOpt's
/// `fp8_scale_candidates`, a tensor divided by a Python float: [`Numerics::div_const`]).
pub fn sweep_scale(code: u8, numerics: Numerics) -> f32 {
    numerics.div_const(e4m3_to_f32(code), E4M3_MAX)
}

/// What the multiplier search fake-quantizes with, and with whose arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MseTarget {
    /// NVFP4 with dynamic block scales: the candidate is the global amax. ModelOpt runs this
    /// search only on CUDA (its NVFP4 fake quant needs a CUDA tensor), in the Triton kernel
    /// `fp4_fake_quant_block`, whatever numerics the export then uses: the search arithmetic
    /// is that kernel's for either value (see [`Candidates::new`]).
    Nvfp4(Numerics),
    /// FP8 per-tensor: the candidate is the tensor amax; `ModeloptCpu` is ModelOpt's
    /// `_fp8_eager` (`448.0 / amax` in Python is `reciprocal(amax) * 448`: two roundings),
    /// `ModeloptCuda` its `fake_e4m3fy` CUDA extension (`448.f / amax` in C++: one division).
    Fp8(Numerics),
}

/// The FP8 fake quant's floor on the amax (`_fp8_eager`, `fake_e4m3fy`): an amax at or below
/// 2^-24 is replaced by 1.
const FP8_AMAX_EPSILON: f32 = 1.0 / (1u32 << 24) as f32;
/// The Triton NVFP4 fake quant replaces a quantized block scale below this (zero included) by
/// 1.0 (`fp4_fake_quant_kernel`: `tl.where(block_max_quant >= 1e-5, block_max_quant, 1.0)`).
pub const NVFP4_MIN_BLOCK_SCALE: f32 = 1e-5;

/// Per-candidate constants of the multiplier search, computed once on the host and used by
/// both the CPU kernel and the GPU kernel (so both see the same f32 values).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidates {
    /// What is fake-quantized.
    pub target: MseTarget,
    /// The candidate amax `f32(amax0) · m_k` (one f32 product: ModelOpt's
    /// `_initial_amax * candidate`, a 0-d model-dtype tensor times a 0-d f32 tensor).
    pub amax: Vec<f32>,
    /// NVFP4: the global scale `amax · f32(1/2688)` (CUDA's `tensor / 2688.0`, 1e-12 when not
    /// positive); FP8: the scale `448 / amax` (rounded as the numerics say).
    pub a: Vec<f32>,
    /// NVFP4: `f32(6 · a)`; FP8: `1 / a`.
    pub b: Vec<f32>,
}

impl Candidates {
    /// The candidates around the max-calibrated amax `amax0`.
    pub fn new(target: MseTarget, amax0: f32) -> Candidates {
        let amax: Vec<f32> = multipliers().iter().map(|m| amax0 * m).collect();
        let (a, b) = match target {
            MseTarget::Nvfp4(_) => amax
                .iter()
                .map(|&g| {
                    let gs = nvfp4_global_scale(g, Numerics::ModeloptCuda);
                    let gs = if gs > 0.0 { gs } else { 1e-12 };
                    (gs, E2M1_MAX * gs)
                })
                .unzip(),
            MseTarget::Fp8(numerics) => amax
                .iter()
                .map(|&g| {
                    let g = if g <= FP8_AMAX_EPSILON { 1.0 } else { g };
                    let scale = match numerics {
                        Numerics::ModeloptCpu => (1.0 / g) * E4M3_MAX,
                        Numerics::ModeloptCuda => E4M3_MAX / g,
                    };
                    (scale, 1.0 / scale)
                })
                .unzip(),
        };
        Candidates { target, amax, a, b }
    }
}

/// Per-input-channel weights of the squared error (`--importance stats`): the channel's mean
/// squared activation `E[x²]`, normalised to mean 1 and floored at [`IMPORTANCE_FLOOR`].
#[derive(Debug, Clone, PartialEq)]
pub struct Importance {
    /// One weight per input channel (column of the weight).
    pub weights: Vec<f32>,
}

impl Importance {
    /// From `E[x²]` per input channel ([`crate::input::stats::ModuleStats::mean_sq`]). `None`
    /// when the length is not `cols`, a value is negative or not finite, or every channel is zero.
    pub fn from_mean_sq(mean_sq: &[f64], cols: usize) -> Option<Importance> {
        if mean_sq.len() != cols || mean_sq.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return None;
        }
        let mean = mean_sq.iter().sum::<f64>() / cols as f64;
        if mean <= 0.0 {
            return None;
        }
        let weights = mean_sq
            .iter()
            .map(|v| (v / mean).max(IMPORTANCE_FLOOR) as f32)
            .collect();
        Some(Importance { weights })
    }
}

/// The squared error of one element, weighted by its channel's importance.
#[inline]
fn weighted(d: f32, imp: Option<&[f32]>, col: usize) -> f32 {
    let e = d * d;
    match imp {
        Some(w) => e * w[col],
        None => e,
    }
}

/// One group's error sums, one per candidate (`sums[k]`), for the elements `w` starting at flat
/// index `first` of a tensor with `cols` columns.
fn group_losses(
    w: &[f32],
    first: usize,
    cols: usize,
    c: &Candidates,
    imp: Option<&[f32]>,
    sums: &mut [f32; MSE_STEPS],
) {
    match c.target {
        MseTarget::Nvfp4(_) => {
            // A group is one NVFP4 block (cols is a multiple of 16). The Triton kernel's block
            // scale: saturated at 448 but not clamped below, and 1.0 when under 1e-5.
            let block_max = w
                .iter()
                .fold(0.0f32, |m, x| if x.abs() > m { x.abs() } else { m });
            for ((sum, gs), six_gs) in sums.iter_mut().zip(&c.a).zip(&c.b) {
                let s = nvfp4_search_block_scale(block_max, *gs, *six_gs);
                *sum = 0.0;
                for (j, &x) in w.iter().enumerate() {
                    let xq = e2m1_to_f32(e2m1_nibble(x / s)) * s;
                    *sum += weighted(x - xq, imp, (first + j) % cols);
                }
            }
        }
        MseTarget::Fp8(_) => {
            // `_fp8_eager` on the f32 copy of the weight: the result stays f32.
            for ((sum, scale), inverse) in sums.iter_mut().zip(&c.a).zip(&c.b) {
                *sum = 0.0;
                for (j, &x) in w.iter().enumerate() {
                    let y = (x * scale).clamp(-E4M3_MAX, E4M3_MAX);
                    let xq = e4m3_to_f32(e4m3_from_f32(y)) * inverse;
                    *sum += weighted(x - xq, imp, (first + j) % cols);
                }
            }
        }
    }
}

/// The per-block scale of the Triton NVFP4 fake quant (`fp8_quantize_scale` and the 1e-5
/// floor): `e4m3(min(block_max / (6 · gs), 448)) · gs`, or 1.0 below [`NVFP4_MIN_BLOCK_SCALE`].
#[inline]
pub fn nvfp4_search_block_scale(block_max: f32, gs: f32, six_gs: f32) -> f32 {
    let s = block_max / six_gs;
    let s = if s > E4M3_MAX { E4M3_MAX } else { s };
    let q = e4m3_to_f32(e4m3_from_f32(s)) * gs;
    if q >= NVFP4_MIN_BLOCK_SCALE {
        q
    } else {
        1.0
    }
}

/// The pairwise tree of one chunk: `v` holds [`CHUNK_GROUPS`] leaves (zeros past the end).
fn tree_sum(v: &mut [f32; CHUNK_GROUPS]) -> f32 {
    let mut stride = CHUNK_GROUPS / 2;
    while stride > 0 {
        for t in 0..stride {
            v[t] += v[t + stride];
        }
        stride /= 2;
    }
    v[0]
}

/// Number of chunks of a tensor of `n` elements.
pub fn chunk_count(n: usize) -> usize {
    n.div_ceil(CHUNK).max(1)
}

/// The CPU kernel of the multiplier search: per candidate `k` and chunk `c`, the chunk's loss
/// at `out[k · chunks + c]` (see the module doc for the order). `src` is a row-major weight with
/// `cols` columns in `dtype`; `imp` has `cols` weights.
pub fn chunk_losses(
    src: &[u8],
    dtype: SourceDtype,
    cols: usize,
    c: &Candidates,
    imp: Option<&[f32]>,
) -> Vec<f32> {
    let n = src.len() / dtype.size();
    let chunks = chunk_count(n);
    let mut out = vec![0.0f32; MSE_STEPS * chunks];
    let mut values = vec![0.0f32; CHUNK];
    let mut leaves = vec![[0.0f32; CHUNK_GROUPS]; MSE_STEPS];
    let mut sums = [0.0f32; MSE_STEPS];
    for chunk in 0..chunks {
        let first = chunk * CHUNK;
        let len = CHUNK.min(n.saturating_sub(first));
        let bytes = &src[first * dtype.size()..(first + len) * dtype.size()];
        load_f32_into(bytes, dtype, &mut values[..len]);
        leaves.iter_mut().for_each(|l| l.fill(0.0));
        for (g, w) in values[..len].chunks(GROUP).enumerate() {
            group_losses(w, first + g * GROUP, cols, c, imp, &mut sums);
            for k in 0..MSE_STEPS {
                leaves[k][g] = sums[k];
            }
        }
        for (k, leaf) in leaves.iter_mut().enumerate() {
            out[k * chunks + chunk] = tree_sum(leaf);
        }
    }
    out
}

/// The chosen candidate: chunk losses summed in order in f64 per candidate, then the first
/// strict minimum (a NaN loss is never chosen; candidate 0 if all are NaN).
pub fn pick(partials: &[f32], steps: usize) -> usize {
    pick_joint(&[partials], steps)
}

/// [`pick`] over the concatenation of several tensors searched with the same candidates (the
/// gate and up of a fused expert, one weight quantizer in ModelOpt): per candidate, the chunk
/// losses of `parts[0]`, then of `parts[1]`, ..., summed in order in f64.
pub fn pick_joint(parts: &[&[f32]], steps: usize) -> usize {
    let mut best = (0, f64::INFINITY);
    for (k, loss) in joint_losses(parts, steps).into_iter().enumerate() {
        if loss < best.1 {
            best = (k, loss);
        }
    }
    best.0
}

/// Each candidate's loss as [`pick_joint`] sums it.
pub fn joint_losses(parts: &[&[f32]], steps: usize) -> Vec<f64> {
    (0..steps)
        .map(|k| {
            parts
                .iter()
                .flat_map(|p| {
                    let chunks = p.len() / steps;
                    &p[k * chunks..(k + 1) * chunks]
                })
                .map(|&v| f64::from(v))
                .sum()
        })
        .collect()
}

/// The relative gap `(L₂ − L₁) / L₁` between the least loss and the next distinct-candidate
/// loss (0 for an exact tie, infinite when the least loss is 0 and the next is not). Below
/// about 1e-6 the f32 summation order (ours, PyTorch's) can decide which candidate wins.
pub fn near_tie_gap(losses: &[f64]) -> f64 {
    let Some(best) = (0..losses.len()).min_by(|&a, &b| losses[a].total_cmp(&losses[b])) else {
        return f64::INFINITY;
    };
    let l1 = losses[best];
    let l2 = losses
        .iter()
        .enumerate()
        .filter(|&(k, _)| k != best)
        .map(|(_, &l)| l)
        .fold(f64::INFINITY, f64::min);
    if l2 == l1 {
        0.0
    } else {
        (l2 - l1) / l1
    }
}

/// The amax ModelOpt stores for candidate `k`: the f32 product `amax0 · m_k` rounded (to
/// nearest, ties to even) into the quantizer's `_amax` buffer, which has the weight's dtype
/// (`TensorQuantizer._amax_setter_helper`: `self._amax.data.copy_(value)`).
pub fn stored_amax(c: &Candidates, k: usize, dtype: SourceDtype) -> f32 {
    dtype.round(c.amax[k])
}

/// The MSE amax of a weight: [`chunk_losses`], [`pick`], [`stored_amax`]; `amax0` (the max
/// calibration) when it is zero.
pub fn mse_amax(
    src: &[u8],
    dtype: SourceDtype,
    cols: usize,
    target: MseTarget,
    amax0: f32,
    imp: Option<&[f32]>,
) -> f32 {
    if amax0 == 0.0 {
        return amax0;
    }
    let c = Candidates::new(target, amax0);
    let k = pick(&chunk_losses(src, dtype, cols, &c, imp), MSE_STEPS);
    stored_amax(&c, k, dtype)
}

/// The sweep's denominators `f32(e4m3(k) · weight_scale_2)` for codes 1..=126 (index k − 1),
/// with `weight_scale_2` of the export's static path.
pub fn sweep_denominators(global: f32, numerics: Numerics) -> [f32; SWEEP_STEPS] {
    let ws2 = nvfp4_global_scale(global, numerics);
    std::array::from_fn(|i| e4m3_to_f32(i as u8 + 1) * ws2)
}

/// The winning code (1..=126) of one 16-block `w` whose first column is `col0`.
/// |E2M1 value| of `e2m1_nibble(a)` for `a >= 0` or NaN, from the rounding bounds (branch-free,
/// so the per-element pass of [`sweep_block`] vectorizes); equal to
/// `e2m1_to_f32(e2m1_nibble(a))` there.
#[inline]
fn e2m1_magnitude(a: f32) -> f32 {
    let halves =
        u8::from(a > 0.25) + u8::from(a >= 0.75) + u8::from(a > 1.25) + u8::from(a >= 1.75);
    let ones = u8::from(a > 2.5) + u8::from(a >= 3.5);
    let m = 0.5 * f32::from(halves) + f32::from(ones) + 2.0 * f32::from(u8::from(a > 5.0));
    if a.is_nan() {
        E2M1_MAX
    } else {
        m
    }
}

/// The winning code (1..=126) of one 16-block `w` whose first column is `col0`. Per candidate,
/// the weighted squared errors of the 16 elements are computed first (independent: SIMD), then
/// summed in index order.
fn sweep_block(w: &[f32], col0: usize, dens: &[f32; SWEEP_STEPS], imp: Option<&[f32]>) -> u8 {
    let a: [f32; NVFP4_BLOCK_SIZE] = std::array::from_fn(|j| w[j].abs());
    let ones = [1.0f32; NVFP4_BLOCK_SIZE];
    let weights: &[f32] = imp.map_or(&ones, |v| &v[col0..col0 + NVFP4_BLOCK_SIZE]);
    let mut best = (0usize, f32::INFINITY);
    let mut e = [0.0f32; NVFP4_BLOCK_SIZE];
    for (k, &den) in dens.iter().enumerate() {
        for ((e, &a), &imp) in e.iter_mut().zip(&a).zip(weights) {
            let d = a - e2m1_magnitude(a / den) * den;
            // Unweighted: `(d * d) * 1.0` is `d * d` exactly.
            *e = (d * d) * imp;
        }
        let loss = e.iter().fold(0.0f32, |sum, &x| sum + x);
        if loss < best.1 {
            best = (k, loss);
        }
    }
    best.0 as u8 + 1
}

/// The CPU kernel of the FP8 scale sweep: the chosen per-block amax `global · c_k`, row-major
/// `[rows, cols/16]`, of a weight with `cols` columns (a multiple of 16).
pub fn sweep_block_amax(
    src: &[u8],
    dtype: SourceDtype,
    cols: usize,
    global: f32,
    numerics: Numerics,
    imp: Option<&[f32]>,
) -> Vec<f32> {
    let dens = sweep_denominators(global, numerics);
    let amax_of: [f32; SWEEP_STEPS] =
        std::array::from_fn(|i| global * sweep_scale(i as u8 + 1, numerics));
    let row_bytes = cols * dtype.size();
    let mut row = vec![0.0f32; cols];
    let mut out = Vec::with_capacity(src.len() / dtype.size() / NVFP4_BLOCK_SIZE);
    for bytes in src.chunks_exact(row_bytes) {
        load_f32_into(bytes, dtype, &mut row);
        for (b, w) in row.chunks_exact(NVFP4_BLOCK_SIZE).enumerate() {
            let code = sweep_block(w, b * NVFP4_BLOCK_SIZE, &dens, imp);
            out.push(amax_of[usize::from(code) - 1]);
        }
    }
    out
}

#[cfg(test)]
mod tests;
