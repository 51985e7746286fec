//! Units of work: what each unit reads, does and writes, and the streaming order.

use super::{stats_files, Classified, Linear, OutputTensor, Problem};
use crate::compute::ct::bf16_bytes;
use crate::compute::linear::InputAmax;
use crate::compute::{output_tensors, Export, QuantFormat};
use crate::input::checkpoint::{Checkpoint, Dtype};
use crate::input::layout::{ExpertProj, Layout};
use crate::input::stats::ActivationStats;
use crate::options::Options;
use std::collections::BTreeMap;

/// A byte range of one input tensor's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TensorSlice {
    /// Index into [`Checkpoint::tensors`].
    pub tensor: usize,
    /// Byte offset in the tensor's data.
    pub offset: usize,
    /// Byte length.
    pub len: usize,
}

impl TensorSlice {
    /// `len` bytes from `offset` of tensor `tensor`.
    pub fn new(tensor: usize, offset: usize, len: usize) -> TensorSlice {
        TensorSlice {
            tensor,
            offset,
            len,
        }
    }

    /// The slice's bytes in the checkpoint's mapping.
    pub fn bytes<'a>(&self, ckpt: &'a Checkpoint) -> &'a [u8] {
        &ckpt.bytes(&ckpt.tensors()[self.tensor])[self.offset..self.offset + self.len]
    }
}

/// What a unit does.
#[derive(Debug, Clone)]
pub enum Job {
    /// Quantize these linears (indices into [`Plan::linears`]); they share one weight amax.
    Quantize(Vec<usize>),
    /// Copy bytes of one input tensor unchanged: a whole tensor, or one expert of a fused
    /// expert tensor that stays unquantized.
    Copy(TensorSlice),
    /// Write precomputed scalars (KV-cache scales).
    Scalars(Vec<Scalar>),
    /// Write an FP8 block-scaled tensor dequantized (it stays unquantized).
    Dequant {
        /// The FP8 weight (index into [`Checkpoint::tensors`]).
        tensor: usize,
        /// Its `weight_scale_inv`.
        scale: usize,
    },
}

/// A precomputed scalar tensor (a KV-cache scale) as it is stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    /// An f32 (ModelOpt's scales, shape `[]`).
    F32(f32),
    /// A bf16 value, already rounded to bf16 (compressed-tensors' scales of a BF16 model,
    /// shape `[1]`).
    Bf16(f32),
}

impl Scalar {
    /// The stored bytes, little-endian.
    pub fn to_le_bytes(self) -> Vec<u8> {
        match self {
            Scalar::F32(x) => x.to_le_bytes().to_vec(),
            Scalar::Bf16(x) => bf16_bytes(x).to_vec(),
        }
    }
}

/// One unit of work and the output tensors it produces.
#[derive(Debug, Clone)]
pub struct Unit {
    /// The work.
    pub job: Job,
    /// Output tensor indices (into [`Plan::outputs`]) in the order the job produces them.
    pub outputs: Vec<usize>,
    /// Input tensors the unit reads (indices into [`Checkpoint::tensors`]).
    pub inputs: Vec<usize>,
    /// The byte ranges it reads.
    pub reads: Vec<TensorSlice>,
    /// The input tensor the unit is ordered by: its first read, or for KV-cache scales (which
    /// read nothing) the layer's k_proj weight. Outputs that mirror the input's shards put a
    /// unit that reads nothing into this tensor's shard.
    pub anchor: usize,
    /// Bytes the unit holds while in flight: input pages plus output buffers.
    pub bytes: u64,
}

impl Unit {
    /// Bytes of the checkpoint the unit reads (each range once): what progress counts.
    pub fn read_bytes(&self) -> u64 {
        let mut reads = self.reads.clone();
        reads.sort_unstable();
        reads.dedup();
        reads.iter().map(|r| r.len as u64).sum()
    }
}

/// A unit waiting for its place: ((first input tensor, rank, creation order), unit, outputs).
type PendingUnit = ((usize, u8, usize), Unit, Vec<OutputTensor>);

/// Collects units with local output specs, then orders them for streaming.
#[derive(Default)]
pub(super) struct UnitBuilder {
    pending: Vec<PendingUnit>,
}

impl UnitBuilder {
    /// Adds a unit that reads `reads` (tensor, offset, length) and holds `extra` more bytes
    /// while it works (the dequantized copy of FP8 sources).
    pub(super) fn push(
        &mut self,
        key: (usize, u8),
        job: Job,
        reads: Vec<TensorSlice>,
        extra: u64,
        outputs: Vec<OutputTensor>,
    ) {
        let in_bytes: u64 = reads.iter().map(|r| r.len as u64).sum::<u64>() + extra;
        let out_bytes: u64 = outputs.iter().map(|o| o.byte_len() as u64).sum();
        let mut inputs: Vec<usize> = reads.iter().map(|r| r.tensor).collect();
        inputs.sort_unstable();
        inputs.dedup();
        let seq = self.pending.len();
        let unit = Unit {
            job,
            outputs: Vec::new(),
            inputs,
            reads,
            anchor: key.0,
            bytes: in_bytes + out_bytes,
        };
        self.pending.push(((key.0, key.1, seq), unit, outputs));
    }

    pub(super) fn finish(mut self) -> (Vec<Unit>, Vec<OutputTensor>) {
        self.pending.sort_by_key(|p| p.0);
        let mut units = Vec::with_capacity(self.pending.len());
        let mut outputs = Vec::new();
        for (_, mut unit, outs) in self.pending {
            for o in outs {
                unit.outputs.push(outputs.len());
                outputs.push(o);
            }
            units.push(unit);
        }
        (units, outputs)
    }
}

pub(super) fn build_units(
    ckpt: &Checkpoint,
    linears: &[Linear],
    classified: &Classified,
    options: &Options,
    b: &mut UnitBuilder,
) {
    for &t in &classified.passthrough {
        let e = &ckpt.tensors()[t];
        let out = OutputTensor {
            name: e.name.clone(),
            dtype: e.dtype,
            shape: e.shape.clone(),
        };
        b.push(
            (t, 0),
            Job::Copy(TensorSlice::new(t, 0, e.len)),
            vec![TensorSlice::new(t, 0, e.len)],
            0,
            vec![out],
        );
    }
    // FP8 block-scaled tensors that stay unquantized: dequantized, or kept with their scales.
    let fp8_excluded = linears
        .iter()
        .filter(|l| l.excluded.is_some())
        .filter_map(|l| l.source.fp8_scale.map(|sc| (l.source.tensor, sc)));
    for (t, scale) in classified.fp8_other.iter().copied().chain(fp8_excluded) {
        let (e, se) = (&ckpt.tensors()[t], &ckpt.tensors()[scale]);
        if options.output.keep_fp8_source {
            for (i, x) in [(t, e), (scale, se)] {
                let out = OutputTensor {
                    name: x.name.clone(),
                    dtype: x.dtype,
                    shape: x.shape.clone(),
                };
                b.push(
                    (i, 0),
                    Job::Copy(TensorSlice::new(i, 0, x.len)),
                    vec![TensorSlice::new(i, 0, x.len)],
                    0,
                    vec![out],
                );
            }
        } else {
            let dtype = match options.output.fp8_dequant {
                crate::compute::DequantPrecision::Bf16 => Dtype::BF16,
                crate::compute::DequantPrecision::F32 => Dtype::F32,
            };
            let out = OutputTensor {
                name: e.name.clone(),
                dtype,
                shape: e.shape.clone(),
            };
            b.push(
                (t, 0),
                Job::Dequant { tensor: t, scale },
                vec![
                    TensorSlice::new(t, 0, e.len),
                    TensorSlice::new(scale, 0, se.len),
                ],
                dequantized_len(options, e),
                vec![out],
            );
        }
    }
    // Excluded linears are copied unchanged: whole tensors, or single experts of a fused tensor
    // (written under the per-expert hub name, like every other expert).
    for l in linears
        .iter()
        .filter(|l| l.excluded.is_some() && l.source.fp8_scale.is_none())
    {
        let s = &l.source;
        let out = l.unchanged_output(ckpt);
        let read = TensorSlice::new(s.tensor, s.offset, s.byte_len());
        b.push(
            (s.tensor, 0),
            Job::Copy(TensorSlice::new(s.tensor, s.offset, s.byte_len())),
            vec![read],
            0,
            vec![out],
        );
    }
    // Group quantized linears: shared-input groups (NVFP4), expert gate+up pairs, or alone.
    // ModelOpt shares an expert's gate and up weight scale in every format (one fused
    // quantizer); compressed-tensors only NVFP4's global scale (vLLM's MoE loader assumes it),
    // its FP8 scales are each linear's own (as oneshot writes them; vLLM requantizes the pair).
    let pair_experts =
        options.output.export == Export::Modelopt || options.output.format.is_nvfp4();
    let mut groups: BTreeMap<(usize, u8, usize, usize), Vec<usize>> = BTreeMap::new();
    for (i, l) in linears.iter().enumerate() {
        if l.excluded.is_some() {
            continue;
        }
        let key = match (l.expert, l.shared_group) {
            (Some((e, ExpertProj::Gate | ExpertProj::Up)), _) if pair_experts => (l.layer, 0, e, 0),
            (None, Some(g)) if options.output.format.shares_group_scales() => (l.layer, 1, g, 0),
            _ => (l.layer, 2, i, 0),
        };
        groups.entry(key).or_default().push(i);
    }
    for members in groups.into_values() {
        let mut outs = Vec::new();
        let mut reads = Vec::new();
        for &i in &members {
            let l = &linears[i];
            for (suffix, dtype, shape) in output_tensors(
                options.output.format,
                options.output.export,
                l.source.rows,
                l.source.cols,
            ) {
                outs.push(OutputTensor {
                    name: l.output_name(suffix),
                    dtype,
                    shape: l.source.output_shape(shape),
                });
            }
            reads.push(TensorSlice::new(
                l.source.tensor,
                l.source.offset,
                l.source.byte_len(),
            ));
            if let Some(scale) = l.source.fp8_scale {
                reads.push(TensorSlice::new(scale, 0, ckpt.tensors()[scale].len));
            }
        }
        let key = reads.iter().map(|r| r.tensor).min().unwrap_or(0);
        // BMM expert stacks are held transposed while they work; FP8 sources are dequantized
        // one member at a time (on the CPU; a GPU dequantizes them on the device).
        let copy = |i: &usize| {
            let src = &linears[*i].source;
            (src.rows * src.cols * src.dtype.size()) as u64
        };
        let transposed: u64 = members
            .iter()
            .filter(|&&i| linears[i].source.bmm_experts.is_some())
            .map(copy)
            .sum();
        let dequantized = members
            .iter()
            .filter(|&&i| linears[i].source.fp8_scale.is_some())
            .map(copy)
            .max()
            .unwrap_or(0);
        let copies = transposed + dequantized;
        b.push((key, 0), Job::Quantize(members), reads, copies, outs);
    }
}

/// FP8 KV-cache scales, one unit per layer, placed after the layer's k_proj. ModelOpt: f32 `[]`
/// `k_proj.k_scale` and `v_proj.v_scale`; compressed-tensors: bf16 `[1]` `k_scale` and
/// `v_scale` on the attention module (SPEC §7.3).
pub(super) fn kv_units(
    layout: &Layout,
    linears: &[Linear],
    stats: &ActivationStats,
    options: &Options,
    b: &mut UnitBuilder,
    problems: &mut Vec<Problem>,
) {
    let Some(kv) = &layout.kv_cache else {
        problems.push(Problem::new(format!(
            "--kv-cache fp8: layout '{}' does not say where KV-cache scales go (no \"kv_cache\" entry)",
            layout.name
        )));
        return;
    };
    let mut missing = Vec::new();
    for l in linears {
        if l.module != kv.k_proj.render(Some(l.layer), None) {
            continue;
        }
        let attention = kv.attention.render(Some(l.layer), None);
        let s = stats.module(&attention);
        let (Some(k), Some(v)) = (
            s.and_then(|s| s.k_cache_amax),
            s.and_then(|s| s.v_cache_amax),
        ) else {
            missing.push(attention);
            continue;
        };
        let export = options.output.export;
        let (k_name, v_name, dtype, shape) = match export {
            Export::Modelopt => (
                format!("{}.k_scale", l.module),
                format!("{}.v_scale", kv.v_proj.render(Some(l.layer), None)),
                Dtype::F32,
                vec![],
            ),
            Export::CompressedTensors => (
                format!("{attention}.k_scale"),
                format!("{attention}.v_scale"),
                Dtype::BF16,
                vec![1],
            ),
        };
        let outs = [k_name, v_name]
            .into_iter()
            .map(|name| OutputTensor {
                name,
                dtype,
                shape: shape.clone(),
            })
            .collect();
        // Scales recovered exactly from an export are written back unchanged.
        let exact = s.map(|s| s.kv_cache_amax_exact).unwrap_or_default();
        // FP8 KV scales follow the FP8 input-scale rule: ModelOpt amax / 448 (or the exported
        // scale back), compressed-tensors bf16(amax / 448).
        let scale = |amax: f32, exact: Option<f64>| {
            let x =
                InputAmax { amax, exact }.scale(QuantFormat::Fp8, export, options.output.numerics);
            match export {
                Export::Modelopt => Scalar::F32(x),
                Export::CompressedTensors => Scalar::Bf16(x),
            }
        };
        let values = vec![scale(k, exact.0), scale(v, exact.1)];
        b.push((l.source.tensor, 1), Job::Scalars(values), vec![], 0, outs);
    }
    if !missing.is_empty() {
        problems.push(Problem::new(format!(
            "--kv-cache fp8 needs k/v amax (ModelOpt k_bmm_quantizer / v_bmm_quantizer) for {} attention block(s) \
             missing from {}, e.g. {}",
            missing.len(),
            stats_files(options),
            missing.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ))
        .with(
            "fix: calibrate with KV-cache quantization enabled (ModelOpt --kv_cache_qformat fp8) and pass that amax file, \
             or drop --kv-cache fp8",
        ));
    }
}

/// Bytes of the dequantized copy of an FP8 tensor.
fn dequantized_len(options: &Options, e: &crate::input::checkpoint::TensorEntry) -> u64 {
    (e.len * options.output.fp8_dequant.dtype().size()) as u64
}
