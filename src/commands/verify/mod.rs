//! `shardquant verify`: re-reads a ModelOpt-format or compressed-tensors checkpoint (ours or
//! anyone's; compressed-tensors in `ct.rs`) and checks what
//! serving engines rely on; with `--source`, measures the quantization error against the source.
//!
//! Checked: the index against the shards and every header (as any input is); the metadata
//! (`hf_quant_config.json`, `config.json` `quantization_config`); each quantized linear's tensor
//! set, dtypes and shapes for its format; every scale finite and positive; NVFP4 block scales and
//! FP8 weights free of NaN codes; linears that engines fuse (q/k/v, gate/up, an expert's gate
//! and up) sharing `weight_scale_2` and `input_scale`; every expert's `input_scale` usable; and
//! `exclude_modules` agreeing with the tensors present.

mod ct;
mod groups;
mod pyre;
mod scales;

use crate::commands::convert::{check_checksums, ChecksumCheck, MANIFEST_FILE};
use crate::compute::backend::MemberWeight;
use crate::compute::{
    e2m1_to_f32, e4m3_to_f32, load_f32, DequantPrecision, QuantFormat, SourceDtype,
};
use crate::error::{Error, Result};
use crate::input::checkpoint::{Checkpoint, Dtype, TensorEntry};
use crate::input::config::read_config;
use crate::input::layout::{glob_match, ExpertProj, Layout};
use crate::options::Options;
use crate::plan::{classify, source_dtype, Linear};
use scales::{check_positive, scalar_f32};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;

/// Relative Frobenius error above which a tensor fails `--source`: NVFP4 (4-bit) and FP8.
pub const MAX_RELATIVE_ERROR: (f64, f64) = (0.25, 0.08);

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Problems (each fails the verification).
    pub problems: Vec<String>,
    /// Quantized linears checked.
    pub linears: usize,
    /// Per-tensor relative error against the source, when one was given: (module, error).
    pub errors: Vec<(String, f64)>,
    /// Per-tensor importance-weighted relative error `sqrt(Σ imp_c (w − wq)² / Σ imp_c w²)`,
    /// for the linears that [`verify_weighted`]'s importance gave weights for.
    pub weighted_errors: Vec<(String, f64)>,
    /// What the comparison with the checksums of `shardquant.json` found.
    pub checksums: Option<ChecksumCheck>,
}

/// Per-input-channel weights of a linear's error: (module, cols) → weights, or `None`.
pub type ChannelWeights<'a> = &'a dyn Fn(&str, usize) -> Option<Vec<f32>>;

impl Verification {
    /// The result as JSON (`verify --json`): `ok`, `problems`, `linears`, per-linear
    /// `relative_errors` against the source, and what the checksum check found.
    pub fn to_json(&self) -> serde_json::Value {
        let checksums = match &self.checksums {
            Some(ChecksumCheck::Checked { files, problems }) => serde_json::json!({
                "checked": files,
                "mismatched": problems.len(),
            }),
            Some(ChecksumCheck::NoChecksums) => serde_json::json!("not recorded"),
            Some(ChecksumCheck::NoManifest) | None => serde_json::json!("no manifest"),
        };
        let errors: serde_json::Map<String, serde_json::Value> = self
            .errors
            .iter()
            .map(|(m, e)| (m.clone(), serde_json::json!(e)))
            .collect();
        serde_json::json!({
            "ok": self.problems.is_empty(),
            "problems": self.problems,
            "linears": self.linears,
            "relative_errors": errors,
            "checksums": checksums,
        })
    }

    /// A human-readable report.
    pub fn report(&self) -> String {
        let mut w = String::new();
        match &self.checksums {
            Some(ChecksumCheck::Checked { files, problems }) => {
                let _ = writeln!(
                    w,
                    "{} of {files} files match the checksums in {MANIFEST_FILE}",
                    files - problems.len().min(*files)
                );
            }
            Some(ChecksumCheck::NoChecksums) => {
                let _ = writeln!(
                    w,
                    "{MANIFEST_FILE} lists no output checksums (an older shardquant): files not checked"
                );
            }
            Some(ChecksumCheck::NoManifest) | None => {
                let _ = writeln!(w, "no {MANIFEST_FILE}: file checksums not checked");
            }
        }
        let _ = writeln!(w, "{} quantized linears checked", self.linears);
        if !self.errors.is_empty() {
            let mean = self.errors.iter().map(|e| e.1).sum::<f64>() / self.errors.len() as f64;
            let worst = self
                .errors
                .iter()
                .cloned()
                .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
            let _ = writeln!(
                w,
                "relative error vs source: mean {mean:.4}, worst {:.4} ({})",
                worst.1, worst.0
            );
        }
        for p in self.problems.iter().take(50) {
            let _ = writeln!(w, "problem: {p}");
        }
        if self.problems.len() > 50 {
            let _ = writeln!(w, "... and {} more problems", self.problems.len() - 50);
        }
        let _ = writeln!(
            w,
            "{}",
            if self.problems.is_empty() {
                "OK"
            } else {
                "FAILED"
            }
        );
        w
    }
}

/// One quantized linear as found in the checkpoint.
struct Found<'a> {
    weight: &'a TensorEntry,
    scale: &'a TensorEntry,
    scale_2: Option<&'a TensorEntry>,
    input: Option<&'a TensorEntry>,
    /// A BMM-style expert stack kept fused: `P`, `P_weight_scale`, ... of shape `[E, k, out]`.
    bmm: bool,
}

impl Found<'_> {
    /// The kernels' matrix `[rows, cols]` this linear was quantized as (for a BMM stack
    /// `[E * out, in]`), from the quantized weight's shape.
    fn matrix(&self, nvfp4: bool) -> Option<(usize, usize)> {
        let pack = if nvfp4 { 2 } else { 1 };
        match (self.bmm, self.weight.shape.as_slice()) {
            (false, &[rows, k]) => Some((rows, k * pack)),
            (true, &[e, k, out]) => Some((e * out, k * pack)),
            _ => None,
        }
    }
}

/// The quantized linears of a checkpoint, by module (for a BMM stack, by parameter): every
/// `X.weight_scale` with its `X.weight`, and every `P_weight_scale` with its 3-D `P`.
fn quantized_linears(ckpt: &Checkpoint) -> BTreeMap<&str, Found<'_>> {
    let mut found = BTreeMap::new();
    for t in ckpt.tensors() {
        let (m, weight, bmm, sep) = if let Some(m) = t.name.strip_suffix(".weight_scale") {
            (m, ckpt.get(&format!("{m}.weight")), false, ".")
        } else if let Some(p) = t.name.strip_suffix("_weight_scale") {
            let w = ckpt.get(p).filter(|w| w.shape.len() == 3);
            (p, w, true, "_")
        } else {
            continue;
        };
        let Some(weight) = weight else {
            continue;
        };
        found.insert(
            m,
            Found {
                weight,
                scale: t,
                scale_2: ckpt.get(&format!("{m}{sep}weight_scale_2")),
                input: ckpt.get(&format!("{m}{sep}input_scale")),
                bmm,
            },
        );
    }
    found
}

/// Verifies the checkpoint in `dir`; `source` is the checkpoint it was made from.
pub fn verify(dir: &Path, source: Option<&Path>) -> Result<Verification> {
    verify_weighted(dir, source, &|_, _| None)
}

/// [`verify`], and with a source also the importance-weighted error of every linear that
/// `importance` has channel weights for (e.g. [`crate::compute::mse::Importance`] from an
/// imatrix): the error that `--importance stats` minimises.
pub fn verify_weighted(
    dir: &Path,
    source: Option<&Path>,
    importance: ChannelWeights,
) -> Result<Verification> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let checksums = check_checksums(dir, threads);
    let corrupt = match &checksums {
        ChecksumCheck::Checked { problems, .. } => problems.clone(),
        _ => Vec::new(),
    };
    let ckpt = Checkpoint::open(dir).map_err(|e| match corrupt.is_empty() {
        true => e,
        false => e.context(&format!("also: {}", corrupt.join("; "))),
    })?;
    let (_, config) = read_config(dir)?;
    if ct::is_ct(&config) {
        let mut v = Verification {
            problems: corrupt,
            checksums: Some(checksums),
            ..Verification::default()
        };
        ct::verify_ct(&ckpt, dir, &config, source, &mut v)?;
        return Ok(v);
    }
    let hf: serde_json::Value = crate::input::checkpoint::Lane::new(dir)
        .ok()
        .and_then(|lane| lane.read_small("hf_quant_config.json", 16 << 20).ok())
        .flatten()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .ok_or_else(|| {
            Error::bad_input(format!("{}: no readable hf_quant_config.json", dir.display()))
                .with_hint("verify checks ModelOpt-format checkpoints (hf_quant_config.json + quantization_config) and compressed-tensors ones (quantization_config.quant_method \"compressed-tensors\")")
        })?;
    let mut v = Verification {
        problems: corrupt,
        checksums: Some(checksums),
        ..Verification::default()
    };
    let algo = hf
        .pointer("/quantization/quant_algo")
        .and_then(|a| a.as_str())
        .unwrap_or("")
        .to_string();
    if !matches!(algo.as_str(), "NVFP4" | "W4A16_NVFP4" | "FP8") {
        v.problems.push(format!("hf_quant_config.json: quant_algo '{algo}' is not one verify knows (NVFP4, W4A16_NVFP4, FP8)"));
        return Ok(v);
    }
    if hf.pointer("/producer/name").and_then(|n| n.as_str()) != Some("modelopt") {
        v.problems.push(
            "hf_quant_config.json: producer.name is not \"modelopt\" (vLLM refuses the checkpoint)"
                .into(),
        );
    }
    match config.get("quantization_config") {
        Some(q) if q.get("quant_algo").and_then(|a| a.as_str()) == Some(algo.as_str()) => {}
        _ => v.problems.push(format!(
            "config.json: quantization_config missing or its quant_algo is not {algo}"
        )),
    }
    let nvfp4 = algo != "FP8";
    let quantized = quantized_linears(&ckpt);
    v.linears = quantized.len();
    for (m, f) in &quantized {
        check_linear(&ckpt, m, f, nvfp4, algo != "W4A16_NVFP4", &mut v.problems);
    }
    let layout = Layout::shipped_for(&config).or_else(|| {
        crate::input::layout::infer::infer(&config, ckpt.tensors(), &dir.join("config.json")).ok()
    });
    if let Some(layout) = &layout {
        check_shared(&ckpt, layout, &quantized, nvfp4, &mut v.problems);
    }
    check_excludes(&hf, &quantized, &mut v.problems);
    groups::check_partial_groups(&ckpt, &quantized, &mut v.problems);
    if let Some(dir) = source {
        let src = Checkpoint::open(dir)?;
        let sources = source_linears(&src, dir, &algo, &mut v.problems)?;
        compare_with_source(&ckpt, &src, &sources, &quantized, nvfp4, importance, &mut v);
    }
    Ok(v)
}

fn check_linear(
    ckpt: &Checkpoint,
    m: &str,
    f: &Found,
    nvfp4: bool,
    needs_input: bool,
    problems: &mut Vec<String>,
) {
    let shape = &f.weight.shape;
    let positive = |t: &TensorEntry, what: &str, problems: &mut Vec<String>| {
        if scalar_f32(ckpt, t).is_some() {
            check_positive(ckpt, m, what, t, problems)
        } else {
            problems.push(format!(
                "{m}: {what} should be an F32 scalar, is {:?} {:?}",
                t.dtype, t.shape
            ))
        }
    };
    if nvfp4 {
        let expected_scale = match (f.bmm, shape.as_slice()) {
            (false, &[rows, half]) => vec![rows, half * 2 / 16],
            (true, &[e, half, out]) => vec![e, half * 2 / 16, out],
            _ => {
                problems.push(format!(
                    "{m}: NVFP4 weight should be {}, is {shape:?}",
                    if f.bmm {
                        "3-D [experts, in/2, out]"
                    } else {
                        "2-D [out, in/2]"
                    }
                ));
                return;
            }
        };
        if f.weight.dtype != Dtype::U8
            || f.scale.dtype != Dtype::F8_E4M3
            || f.scale.shape != expected_scale
        {
            problems.push(format!(
                "{m}: NVFP4 tensors should be weight U8 {} and weight_scale F8_E4M3 {}; found {:?} {:?} and {:?} {:?}",
                if f.bmm { "[experts, in/2, out]" } else { "[out, in/2]" },
                if f.bmm { "[experts, in/16, out]" } else { "[out, in/16]" },
                f.weight.dtype, shape, f.scale.dtype, f.scale.shape
            ));
        }
        let bad = ckpt
            .bytes(f.scale)
            .iter()
            .filter(|b| **b & 0x7F == 0x7F || **b & 0x80 != 0 || **b == 0)
            .count();
        if bad > 0 {
            problems.push(format!(
                "{m}: {bad} block scale(s) are NaN, negative or zero"
            ));
        }
        match f.scale_2 {
            Some(t) => positive(t, "weight_scale_2", problems),
            None => problems.push(format!("{m}: weight_scale_2 is missing")),
        }
    } else {
        if f.weight.dtype != Dtype::F8_E4M3 {
            problems.push(format!(
                "{m}: FP8 weight should be F8_E4M3, is {:?}",
                f.weight.dtype
            ));
        }
        positive(f.scale, "weight_scale", problems);
        let nan = ckpt
            .bytes(f.weight)
            .iter()
            .filter(|b| **b & 0x7F == 0x7F)
            .count();
        if nan > 0 {
            problems.push(format!("{m}: {nan} FP8 weight byte(s) are NaN codes"));
        }
    }
    match (f.input, needs_input) {
        (Some(t), _) => positive(t, "input_scale", problems),
        (None, true) => problems.push(format!("{m}: input_scale is missing")),
        (None, false) => {}
    }
}

/// Linears that engines fuse must share their scales.
fn check_shared(
    ckpt: &Checkpoint,
    layout: &Layout,
    q: &BTreeMap<&str, Found>,
    nvfp4: bool,
    problems: &mut Vec<String>,
) {
    let bytes = |t: Option<&TensorEntry>| t.map(|t| ckpt.bytes(t).to_vec());
    let mut groups: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for m in q.keys() {
        if let Some((spec, layer)) = layout.match_linear(m) {
            if let Some(g) = spec.shared_group {
                groups.entry(format!("{layer}/{g}")).or_default().push(m);
            }
        } else if let Some((layer, e, proj)) = layout.match_expert(m) {
            if proj != ExpertProj::Down {
                groups
                    .entry(format!("{layer}/expert{e}"))
                    .or_default()
                    .push(m);
            }
        }
    }
    for members in groups.values().filter(|g| g.len() > 1) {
        let first = &q[members[0]];
        for m in &members[1..] {
            let other = &q[m];
            if nvfp4 && bytes(first.scale_2) != bytes(other.scale_2) {
                problems.push(format!(
                    "{} and {m} are fused by engines but have different weight_scale_2",
                    members[0]
                ));
            }
            if bytes(first.input) != bytes(other.input) {
                problems.push(format!(
                    "{} and {m} read one input but have different input_scale",
                    members[0]
                ));
            }
        }
    }
}

/// `exclude_modules` must agree with the tensors: nothing excluded is quantized.
fn check_excludes(hf: &serde_json::Value, q: &BTreeMap<&str, Found>, problems: &mut Vec<String>) {
    let patterns: Vec<&str> = hf
        .pointer("/quantization/exclude_modules")
        .and_then(|e| e.as_array())
        .map(|a| a.iter().filter_map(|p| p.as_str()).collect())
        .unwrap_or_default();
    let wrong: BTreeSet<&str> = q
        .keys()
        .copied()
        .filter(|m| patterns.iter().any(|p| glob_match(p, m)))
        .collect();
    for m in wrong.iter().take(10) {
        problems.push(format!("{m} is quantized but exclude_modules lists it"));
    }
}

/// The source checkpoint's linears by module, as a conversion reads them (per expert for fused
/// `[E, out, in]` experts, whole for BMM stacks, dequantized for FP8-block sources).
fn source_linears(
    src: &Checkpoint,
    dir: &Path,
    algo: &str,
    problems: &mut Vec<String>,
) -> Result<BTreeMap<String, Linear>> {
    let (_, config) = read_config(dir)?;
    let layout = Layout::for_checkpoint(None, &config, dir, src.tensors())?;
    let format = match algo {
        "FP8" => QuantFormat::Fp8,
        "W4A16_NVFP4" => QuantFormat::W4a16Nvfp4,
        _ => QuantFormat::Nvfp4,
    };
    let classified = classify(src, &layout, &config, &Options::new(format))?;
    // Shape contradictions and weights the layout cannot classify make the comparison
    // untrustworthy; other planning problems (odd dtypes of excluded tensors) do not matter.
    for p in &classified.problems {
        for line in std::iter::once(&p.what).chain(&p.details) {
            problems.push(format!("source {}: {line}", dir.display()));
        }
    }
    Ok(classified
        .linears
        .into_iter()
        .map(|l| (l.module.clone(), l))
        .collect())
}

/// Dequantizes each linear and measures ||W - W_q|| / ||W|| against the source weight it was
/// made from (the slice of a fused source, an FP8 source dequantized as `convert` does). A
/// quantized linear the source does not have, or of another shape, is a problem: nothing is
/// skipped.
fn compare_with_source(
    ckpt: &Checkpoint,
    src: &Checkpoint,
    sources: &BTreeMap<String, Linear>,
    q: &BTreeMap<&str, Found>,
    nvfp4: bool,
    importance: ChannelWeights,
    v: &mut Verification,
) {
    let bound = if nvfp4 {
        MAX_RELATIVE_ERROR.0
    } else {
        MAX_RELATIVE_ERROR.1
    };
    for (m, f) in q {
        let Some(l) = sources.get(*m) else {
            v.problems.push(format!(
                "{m}: the source checkpoint has no weight for this linear, so it cannot be compared \
                 (is --source the checkpoint this one was made from?)"
            ));
            continue;
        };
        let Some((rows, cols)) = f.matrix(nvfp4) else {
            continue; // check_linear reported the shape
        };
        let s = &l.source;
        if (rows, cols) != (s.rows, s.cols) || f.bmm != s.bmm_experts.is_some() {
            v.problems.push(format!(
                "{m}: the quantized weight {:?} does not match its source {}: [{}, {}] expected{}",
                f.weight.shape,
                src.tensors()[s.tensor].name,
                s.rows,
                s.cols,
                if s.bmm_experts.is_some() {
                    " (as [experts * out, in])"
                } else {
                    ""
                }
            ));
            continue;
        }
        let (bytes, dtype) = match source_weight(src, s) {
            Ok(w) => w,
            Err(why) => {
                v.problems
                    .push(format!("{m}: {why}, which cannot be compared"));
                continue;
            }
        };
        // The per-tensor scale (weight_scale_2 or FP8 weight_scale); check_linear reports a bad one.
        let tensor_scale = if nvfp4 {
            f.scale_2.and_then(|t| scalar_f32(ckpt, t))
        } else {
            scalar_f32(ckpt, f.scale)
        };
        let Some(tensor_scale) = tensor_scale.map(f64::from) else {
            continue;
        };
        let (weight, scales) = (ckpt.bytes(f.weight), ckpt.bytes(f.scale));
        let out = s.rows_per_matrix();
        // Element (r, c) of the [rows, cols] matrix: its index in the stored source, in the
        // quantized weight's element order, and its block.
        let place = |r: usize, c: usize| -> (usize, usize, usize) {
            let stored = s.stored_index(r, c);
            match s.bmm_experts {
                // A BMM stack is written back in the source's [E, in, out] order.
                Some(_) => {
                    let (e, o) = (r / out, r % out);
                    (stored, stored, e * (cols / 16) * out + (c / 16) * out + o)
                }
                None => (stored, r * cols + c, r * (cols / 16) + c / 16),
            }
        };
        let channel = importance(m, cols);
        let (mut num, mut den) = (0.0f64, 0.0f64);
        let (mut wnum, mut wden) = (0.0f64, 0.0f64);
        for r in 0..rows {
            for c in 0..cols {
                let (si, qi, block) = place(r, c);
                let w = f64::from(load_f32(&bytes, dtype, si));
                let wq = if nvfp4 {
                    // Two elements per byte along the input dimension: for a BMM stack the
                    // byte of (c, c + 1) sits at element index (c / 2) * out + o.
                    let (byte, shift) = match s.bmm_experts {
                        Some(_) => {
                            let (e, o) = (r / out, r % out);
                            (e * (cols / 2) * out + (c / 2) * out + o, 4 * (c % 2))
                        }
                        None => (qi / 2, 4 * (qi % 2)),
                    };
                    let nibble = (weight[byte] >> shift) & 0xF;
                    f64::from(e2m1_to_f32(nibble))
                        * f64::from(e4m3_to_f32(scales[block]))
                        * tensor_scale
                } else {
                    f64::from(e4m3_to_f32(weight[qi])) * tensor_scale
                };
                num += (w - wq) * (w - wq);
                den += w * w;
                if let Some(ch) = &channel {
                    let imp = f64::from(ch[c]);
                    wnum += imp * (w - wq) * (w - wq);
                    wden += imp * w * w;
                }
            }
        }
        if channel.is_some() {
            let weighted = if wden > 0.0 {
                (wnum / wden).sqrt()
            } else {
                0.0
            };
            v.weighted_errors.push((m.to_string(), weighted));
        }
        let error = if den > 0.0 { (num / den).sqrt() } else { 0.0 };
        if error.is_nan() || error > bound {
            v.problems.push(format!(
                "{m}: relative error {error:.4} against the source is above {bound}"
            ));
        }
        v.errors.push((m.to_string(), error));
    }
}

/// The stored bytes of a linear's source weight and their dtype, as convert reads them: FP8
/// block-scaled sources dequantized to BF16 (the default `--fp8-dequant`), row-major
/// `[rows, cols]`; other weights as stored. `Err` says why it cannot be read.
pub(super) fn source_weight<'a>(
    src: &'a Checkpoint,
    s: &crate::plan::WeightSource,
) -> std::result::Result<(Cow<'a, [u8]>, SourceDtype), String> {
    let t = &src.tensors()[s.tensor];
    let stored = &src.bytes(t)[s.offset..s.offset + s.byte_len()];
    match (s.fp8_scale, source_dtype(t.dtype)) {
        (Some(scale), _) => Ok(MemberWeight::Fp8Block {
            fp8: stored,
            scale_inv: src.bytes(&src.tensors()[scale]),
            rows: s.rows,
            cols: s.cols,
            precision: DequantPrecision::Bf16,
        }
        .into_host()),
        (None, Some(dtype)) => Ok((Cow::Borrowed(stored), dtype)),
        (None, None) => Err(format!("its source {} has dtype {:?}", t.name, t.dtype)),
    }
}
