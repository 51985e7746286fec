//! Executing one unit of work: amax, scales and quantized bytes of its linears.

use crate::compute;
use crate::compute::backend::{MemberWeight, UnitCompute};
use crate::compute::linear::{MemberScales, QuantizedLinear, Scaling};
use crate::compute::mse;
use crate::compute::mse::{CalibMethod, Candidates, Importance, MseTarget};
use crate::compute::{nonfinite, QuantFormat, SourceDtype};
use crate::error::{Error, Result};
use crate::input::checkpoint::Checkpoint;
use crate::input::stats::WeightAmax;
use crate::options::{ImportanceSource, Options};
use crate::plan::{Job, Linear, Plan, TensorSlice, Unit};
use std::borrow::Cow;

/// Bytes of one output tensor.
#[derive(Debug)]
pub enum Payload {
    /// Computed bytes.
    Owned(Vec<u8>),
    /// Unchanged bytes of an input tensor, written straight from the mapping.
    Input(TensorSlice),
}

/// One line of `.quant_summary.txt`.
#[derive(Debug, Clone)]
pub struct SummaryLine {
    /// Module name.
    pub module: String,
    /// Weight amax used (after group unification; the global amax for static blocks).
    pub weight_amax: f32,
    /// Whether the weight used per-block amax from statistics.
    pub static_blocks: bool,
    /// Input amax used, if the format quantizes activations.
    pub input_amax: Option<f32>,
    /// `weight_scale_2` (NVFP4) or `weight_scale` (FP8).
    pub weight_scale: f32,
    /// Whether the MSE search weighted its errors by activation statistics.
    pub importance_weighted: bool,
    /// NaN / infinite elements passed through (`--allow-nonfinite`).
    pub nonfinite: Option<NonFiniteWeight>,
}

/// A quantized weight whose NaN / infinite elements were passed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonFiniteWeight {
    /// The input tensor that holds the weight.
    pub tensor: String,
    /// How many elements of each kind.
    pub counts: nonfinite::NonFinite,
    /// [row, column] of the first one.
    pub first: [usize; 2],
}

/// The outputs of a unit, in the unit's output order.
#[derive(Debug)]
pub struct UnitResult {
    /// Index of the unit in the plan.
    pub unit: usize,
    /// One payload per output tensor.
    pub payloads: Vec<Payload>,
    /// Summary lines of the quantized linears.
    pub summary: Vec<SummaryLine>,
}

/// Runs one unit; quantized linears run on `compute` (CPU or GPU, the same bytes).
pub fn execute<'a>(
    plan: &Plan,
    ckpt: &'a Checkpoint,
    options: &Options,
    index: usize,
    compute: &mut dyn UnitCompute<'a>,
) -> Result<UnitResult> {
    let unit: &Unit = &plan.units[index];
    let (payloads, summary) = match &unit.job {
        Job::Copy(slice) => (vec![Payload::Input(*slice)], Vec::new()),
        Job::Scalars(values) => (
            values
                .iter()
                .map(|v| Payload::Owned(v.to_le_bytes()))
                .collect(),
            Vec::new(),
        ),
        Job::Quantize(members) => quantize_group(plan, ckpt, options, members, compute)?,
        Job::Dequant { tensor, scale } => {
            let (t, sc) = (&ckpt.tensors()[*tensor], &ckpt.tensors()[*scale]);
            // A pass-through FP8 weight: dequantized on the CPU, as a quantized member is there.
            let weight = MemberWeight::Fp8Block {
                fp8: ckpt.bytes(t),
                scale_inv: ckpt.bytes(sc),
                rows: t.shape[0],
                cols: t.shape[1],
                precision: options.output.fp8_dequant,
            };
            let mut out = Vec::new();
            weight.host_into(&mut out);
            (vec![Payload::Owned(out)], Vec::new())
        }
    };
    debug_assert_eq!(payloads.len(), unit.outputs.len());
    Ok(UnitResult {
        unit: index,
        payloads,
        summary,
    })
}

/// The weight bytes the kernels of a unit see, one entry per member (dequantized size for FP8
/// sources): what a GPU slot must hold.
pub fn compute_bytes(plan: &Plan, index: usize) -> Vec<usize> {
    match &plan.units[index].job {
        Job::Quantize(members) => members
            .iter()
            .map(|&i| {
                let s = &plan.linears[i].linear.source;
                s.rows * s.cols * s.dtype.size()
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a unit has numeric work (and so may use a GPU slot).
pub fn is_compute(plan: &Plan, index: usize) -> bool {
    matches!(plan.units[index].job, Job::Quantize(_))
}

fn weight_bytes<'a>(ckpt: &'a Checkpoint, l: &Linear) -> &'a [u8] {
    let t = &ckpt.tensors()[l.source.tensor];
    &ckpt.bytes(t)[l.source.offset..l.source.offset + l.source.byte_len()]
}

fn where_is(ckpt: &Checkpoint, l: &Linear) -> String {
    let t = &ckpt.tensors()[l.source.tensor];
    format!(
        "{}: tensor '{}'",
        ckpt.shards()[t.shard].path.display(),
        t.name
    )
}

/// The weight amax of member `m` (plan linear `i`): from statistics, or max |W|; `Err` with
/// the index of the first NaN or infinite element. The weight is scanned in both cases, so a
/// non-finite weight is found even when its amax comes from the statistics.
fn member_amax(
    plan: &Plan,
    ckpt: &Checkpoint,
    i: usize,
    m: usize,
    compute: &mut dyn UnitCompute,
) -> Result<std::result::Result<WeightAmax, usize>> {
    let scanned = compute.amax(m)?;
    Ok(match (&plan.linears[i].weight_from_stats, scanned) {
        (_, Err(at)) => Err(at),
        (Some(a), Ok(v)) => {
            check_recorded_weight_amax(plan, ckpt, i, a, v)?;
            Ok(a.clone())
        }
        (None, Ok(v)) => Ok(WeightAmax::Tensor(v)),
    })
}

/// `--weight-amax stats`: a recorded weight amax must be one a ModelOpt calibration of THIS
/// weight can pick: max calibration records max|W|, the MSE search `max|W| · [0.25, 4]`
/// (rounded to the weight dtype); a static NVFP4 `_global_amax` is held to the same range.
/// Anything outside was made on another checkpoint.
fn check_recorded_weight_amax(
    plan: &Plan,
    ckpt: &Checkpoint,
    i: usize,
    recorded: &WeightAmax,
    max_abs: f32,
) -> Result<()> {
    // One BF16 ulp of slack on each bound (the chosen amax is rounded to the weight dtype).
    const SLACK: f32 = 1.0 / 128.0;
    let value = match recorded {
        WeightAmax::Tensor(a) => *a,
        WeightAmax::Blocks { global, .. } => *global,
    };
    let (low, high) = (
        0.25 * max_abs * (1.0 - SLACK),
        4.0 * max_abs * (1.0 + SLACK),
    );
    if max_abs == 0.0 || (low..=high).contains(&value) {
        return Ok(());
    }
    let l = &plan.linears[i].linear;
    Err(Error::bad_input(format!(
        "{}: the statistics say the weight amax of {} is {value}, but max|W| of this checkpoint is {max_abs}; \
         no ModelOpt calibration of this weight picks that (max: max|W|, MSE: 0.25 to 4 x max|W|), \
         so the statistics were made on a different checkpoint",
        where_is(ckpt, l),
        l.module
    ))
    .with_hint("pass the statistics made on this checkpoint, or use --weight-amax compute to take max|W| from the weights"))
}

/// The error for a non-finite element at index `at` of linear `l`.
fn nonfinite_error(ckpt: &Checkpoint, l: &Linear, at: usize) -> Error {
    let (r, c) = (at / l.source.cols, at % l.source.cols);
    // Element coordinates as the tensor stores them ([E, in, out] for a BMM expert stack).
    let element = match l.source.bmm_experts {
        Some(_) => {
            let out = l.source.rows_per_matrix();
            format!("[{}, {c}, {}]", r / out, r % out)
        }
        None => format!("[{r}, {c}]"),
    };
    Error::bad_input(format!(
        "{}: element {element} of {} is NaN or infinite",
        where_is(ckpt, l),
        l.module
    ))
    .with_hint(
        "the checkpoint is corrupt or was saved after a diverged run; re-download or re-export it \
         (or pass --allow-nonfinite to quantize it anyway, the NaN/inf elements left out of the \
         scales and written as NaN or saturated)",
    )
}

/// The members' weights as the kernels will see them: FP8 block-scaled sources are dequantized
/// by the backend (on the GPU when there is one).
fn member_weights<'a>(
    plan: &Plan,
    ckpt: &'a Checkpoint,
    options: &Options,
    members: &[usize],
) -> Vec<MemberWeight<'a>> {
    members
        .iter()
        .map(|&i| {
            let l = &plan.linears[i].linear;
            let bytes = weight_bytes(ckpt, l);
            match l.source.fp8_scale {
                Some(scale) => MemberWeight::Fp8Block {
                    fp8: bytes,
                    scale_inv: ckpt.bytes(&ckpt.tensors()[scale]),
                    rows: l.source.rows,
                    cols: l.source.cols,
                    precision: options.output.fp8_dequant,
                },
                // A BMM expert stack [E, in, out] or a column slice of one expert's [in, out]:
                // the kernels quantize along `in`, so they see the transposed matrix.
                None => MemberWeight::Plain(l.source.kernel_matrix(bytes), l.source.dtype),
            }
        })
        .collect()
}

/// A weight whose NaN / infinite elements are passed through: the weight as it was (to patch
/// the output codes from) and what it holds.
struct PassThrough<'a> {
    original: Cow<'a, [u8]>,
    dtype: SourceDtype,
    found: nonfinite::NonFinite,
}

/// Per member of a unit: its weight amax, and how its non-finite elements pass through.
type Amaxes<'a> = (Vec<WeightAmax>, Vec<Option<PassThrough<'a>>>);

/// Loads the members' weights into `compute` and takes their weight amax. With
/// `--allow-nonfinite`, a member holding NaN / infinite elements is loaded again as a copy with
/// those elements zeroed (see [`compute::nonfinite`]); its [`PassThrough`] is returned. The copy
/// is one more weight-sized buffer for that unit, outside the `--max-memory` budget: rare, and
/// the price of leaving the kernels (CPU and GPU) untouched.
fn load_and_amax<'a>(
    plan: &Plan,
    ckpt: &'a Checkpoint,
    options: &Options,
    members: &[usize],
    compute: &mut dyn UnitCompute<'a>,
) -> Result<Amaxes<'a>> {
    compute.load(member_weights(plan, ckpt, options, members))?;
    let mut amaxes = Vec::with_capacity(members.len());
    let mut bad = Vec::new();
    for (m, &i) in members.iter().enumerate() {
        match member_amax(plan, ckpt, i, m, compute)? {
            Ok(a) => amaxes.push(Some(a)),
            Err(_) if options.output.allow_nonfinite => {
                bad.push(m);
                amaxes.push(None);
            }
            Err(at) => return Err(nonfinite_error(ckpt, &plan.linears[i].linear, at)),
        }
    }
    let mut passed: Vec<Option<PassThrough<'a>>> = members.iter().map(|_| None).collect();
    if !bad.is_empty() {
        // On the host: their elements are patched here; the other members load as before.
        let mut weights = member_weights(plan, ckpt, options, members);
        for &m in &bad {
            let placeholder = MemberWeight::Plain(Cow::Borrowed(&[]), weights[m].dtype());
            let (mut data, dtype) = std::mem::replace(&mut weights[m], placeholder).into_host();
            let original = data.clone();
            let found = nonfinite::zero_nonfinite(data.to_mut(), dtype).ok_or_else(|| {
                Error::other(format!(
                    "internal error: {} was reported non-finite, but holds no NaN or infinity",
                    plan.linears[members[m]].linear.module
                ))
            })?;
            passed[m] = Some(PassThrough {
                original,
                dtype,
                found,
            });
            weights[m] = MemberWeight::Plain(data, dtype);
        }
        compute.load(weights)?;
        for &m in &bad {
            let i = members[m];
            let amax = member_amax(plan, ckpt, i, m, compute)?
                .map_err(|at| nonfinite_error(ckpt, &plan.linears[i].linear, at))?;
            amaxes[m] = Some(amax);
        }
    }
    Ok((amaxes.into_iter().flatten().collect(), passed))
}

fn quantize_group<'a>(
    plan: &Plan,
    ckpt: &'a Checkpoint,
    options: &Options,
    members: &[usize],
    compute: &mut dyn UnitCompute<'a>,
) -> Result<(Vec<Payload>, Vec<SummaryLine>)> {
    let (amaxes, passed) = load_and_amax(plan, ckpt, options, members, compute)?;
    let is_static = amaxes
        .iter()
        .any(|a| matches!(a, WeightAmax::Blocks { .. }));
    if is_static
        && !amaxes
            .iter()
            .all(|a| matches!(a, WeightAmax::Blocks { .. }))
    {
        let names: Vec<&str> = members
            .iter()
            .map(|&i| plan.linears[i].linear.module.as_str())
            .collect();
        return Err(Error::bad_input(format!(
            "linears {} share scales, but the statistics give per-block amax for some and per-tensor amax for others",
            names.join(", ")
        )));
    }
    // ModelOpt unifies the weight amax (or static global amax) over the group at export.
    let max_amax = group_max(&amaxes);
    // compressed-tensors' formulas are defined for zero weights (global scale 1.0, scale
    // 0.125 or bf16 eps), and llm-compressor writes them.
    if max_amax == 0.0 && options.output.export == compute::Export::Modelopt {
        let l = &plan.linears[members[0]].linear;
        let finite = if passed.iter().any(Option::is_some) {
            " (its finite elements: the others are NaN or infinite)"
        } else {
            ""
        };
        return Err(Error::bad_input(format!(
            "{}: the weight of {} is all zeros{finite}, so ModelOpt's scale formulas are undefined",
            where_is(ckpt, l),
            l.module
        ))
        .with_hint(format!(
            "leave it unquantized with --exclude '{}'",
            l.module
        )));
    }
    check_against_stats(plan, ckpt, members, max_amax)?;
    let importance: Vec<Option<Importance>> = members
        .iter()
        .map(|&i| {
            let l = &plan.linears[i].linear;
            (options.output.importance == ImportanceSource::Stats)
                .then(|| plan.stats.module(&l.module))
                .flatten()
                .and_then(|s| Importance::from_mean_sq(&s.mean_sq()?, l.source.cols))
        })
        .collect();
    let imp = |m: usize| importance[m].as_ref().map(|i| i.weights.as_slice());
    // `--calib mse`: each weight quantizer's own search (ModelOpt calibrates each one), then
    // the same group unification as for max. The gate and up of a routed expert are one
    // quantizer in ModelOpt (the fused `gate_up_proj[e]`): one search over both.
    let amaxes = if options.output.calib == CalibMethod::Mse {
        let target = match options.output.format {
            QuantFormat::Fp8 => MseTarget::Fp8(options.output.numerics),
            QuantFormat::Nvfp4 | QuantFormat::W4a16Nvfp4 => {
                MseTarget::Nvfp4(options.output.numerics)
            }
            // Refused up front (`Options::check_export`): no MSE search for these yet.
            QuantFormat::Fp8Dynamic | QuantFormat::Fp8Block => {
                return Err(Error::usage(format!(
                    "--calib {} is not built for --format {}",
                    options.output.calib.name(),
                    options.output.format.cli_name()
                )))
            }
        };
        let joint = members.len() > 1
            && members
                .iter()
                .all(|&i| plan.linears[i].linear.expert.is_some())
            && amaxes.iter().all(|a| matches!(a, WeightAmax::Tensor(_)));
        let searches: Vec<Vec<usize>> = if joint {
            vec![(0..members.len()).collect()]
        } else {
            (0..members.len()).map(|m| vec![m]).collect()
        };
        let mut searched = amaxes.clone();
        for ms in searches {
            let a0 = group_max(&ms.iter().map(|&m| amaxes[m].clone()).collect::<Vec<_>>());
            if a0 <= 0.0
                || !ms
                    .iter()
                    .all(|&m| matches!(amaxes[m], WeightAmax::Tensor(_)))
            {
                continue;
            }
            let c = Candidates::new(target, a0);
            let mut partials = Vec::with_capacity(ms.len());
            for &m in &ms {
                let cols = plan.linears[members[m]].linear.source.cols;
                partials.push(compute.mse_chunk_losses(m, cols, &c, imp(m))?);
            }
            let parts: Vec<&[f32]> = partials.iter().map(Vec::as_slice).collect();
            let k = mse::pick_joint(&parts, mse::MSE_STEPS);
            let dtype = plan.linears[members[ms[0]]].linear.source.dtype;
            for &m in &ms {
                searched[m] = WeightAmax::Tensor(mse::stored_amax(&c, k, dtype));
            }
        }
        searched
    } else {
        amaxes
    };
    let group_amax = group_max(&amaxes);
    let mut payloads = Vec::new();
    let mut summary = Vec::new();
    for (m, (&i, amax)) in members.iter().zip(&amaxes).enumerate() {
        let l = &plan.linears[i].linear;
        let (rows, cols) = (l.source.rows, l.source.cols);
        let input = if options.output.format.needs_input_amax() {
            plan.linears[i].input
        } else {
            None
        };
        // Static blocks are decoded here, from the statistics file's mapping: only the blocks
        // of the units in flight are ever in memory. The sweep runs against the group's shared
        // global amax (ModelOpt's SharedWeightGlobalAmaxState), then exports as static NVFP4.
        let blocks = match amax {
            WeightAmax::Blocks { blocks, .. } => Some(blocks.decode()),
            WeightAmax::Tensor(_) if options.output.calib == CalibMethod::MseFp8Sweep => Some(
                compute.sweep_block_amax(m, cols, group_amax, options.output.numerics, imp(m))?,
            ),
            WeightAmax::Tensor(_) => None,
        };
        let scales = MemberScales {
            format: options.output.format,
            export: options.output.export,
            numerics: options.output.numerics,
            group_amax,
            scaling: blocks
                .as_deref()
                .map_or(Scaling::Dynamic, Scaling::StaticBlocks),
            // ModelOpt divides a stacked 3-D expert weight by a 1-D scale (f32 quotient), a
            // 2-D weight by a 0-d one (the quotient keeps the weight's dtype).
            quotient: match l.source.bmm_experts {
                Some(_) => compute::Fp8Quotient::F32,
                None => compute::Fp8Quotient::WeightDtype,
            },
            input,
        };
        if let Some(ws) = scales.fp8_zero_divisor(l.source.dtype) {
            return Err(Error::bad_input(format!(
                "{}: the FP8 weight scale of {} ({ws:e}) rounds to zero in {}, so the export would divide by zero",
                where_is(ckpt, l),
                l.module,
                l.source.dtype.name()
            ))
            .with_hint(format!("leave it unquantized with --exclude '{}'", l.module)));
        }
        let mut q = QuantizedLinear::compute(compute, m, rows, cols, &scales)?;
        if let Some(p) = &passed[m] {
            match options.output.format.is_nvfp4() {
                true => nonfinite::patch_nvfp4(&p.original, p.dtype, &mut q.codes),
                false => nonfinite::patch_fp8(&p.original, p.dtype, &mut q.codes),
            }
        }
        if let Some(experts) = l.source.bmm_experts {
            q.transpose_experts_back(experts, l.source.rows_per_matrix());
        }
        let weight_scale = q.tensor_scale;
        let tensors = q
            .into_tensors(options.output.format, options.output.export)
            .ok_or_else(|| {
                Error::other(format!(
                    "internal: {} was planned with an input scale but has no input amax",
                    l.module
                ))
            })?;
        payloads.extend(tensors.into_iter().map(Payload::Owned));
        summary.push(SummaryLine {
            module: l.module.clone(),
            weight_amax: group_amax,
            static_blocks: is_static || options.output.calib == CalibMethod::MseFp8Sweep,
            input_amax: input.map(|i| i.amax),
            weight_scale,
            importance_weighted: importance[m].is_some(),
            nonfinite: passed[m].as_ref().map(|p| NonFiniteWeight {
                tensor: ckpt.tensors()[l.source.tensor].name.clone(),
                counts: p.found,
                first: [p.found.first / cols, p.found.first % cols],
            }),
        });
    }
    Ok((payloads, summary))
}

/// The group's unified amax: the max of the members' per-tensor (or static global) amax.
fn group_max(amaxes: &[WeightAmax]) -> f32 {
    amaxes
        .iter()
        .map(|a| match a {
            WeightAmax::Tensor(v) => *v,
            WeightAmax::Blocks { global, .. } => *global,
        })
        .fold(0.0f32, f32::max)
}

/// Statistics that carry a weight amax must have been made on this checkpoint: ModelOpt's
/// max calibration records max|W| (before the group unification that the export applies), so
/// the group max of the recorded values must equal the group max computed here, bit for bit.
fn check_against_stats(
    plan: &Plan,
    ckpt: &Checkpoint,
    members: &[usize],
    computed: f32,
) -> Result<()> {
    let recorded: Vec<f32> = members
        .iter()
        .filter_map(|&i| plan.linears[i].weight_check)
        .collect();
    if recorded.len() != members.len() || recorded.is_empty() {
        return Ok(());
    }
    let expected = recorded.iter().copied().fold(0.0f32, f32::max);
    // FP8 sources dequantized to f32: the recording tools saw BF16-dequantized weights.
    let f32_fp8 = members.iter().any(|&i| {
        let src = &plan.linears[i].linear.source;
        src.fp8_scale.is_some() && src.dtype == compute::SourceDtype::F32
    });
    let computed = if f32_fp8 {
        compute::bf16_round(computed)
    } else {
        computed
    };
    if expected.to_bits() == computed.to_bits() {
        return Ok(());
    }
    let l = &plan.linears[members[0]].linear;
    Err(Error::bad_input(format!(
        "{}: the statistics say the weight amax of {} is {expected}, but max|W| of this checkpoint is {computed}: \
         the statistics were made on a different checkpoint",
        where_is(ckpt, l),
        l.module
    ))
    .with_hint("calibrate this checkpoint, or pass the statistics that were made on it"))
}
