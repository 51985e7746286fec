//! `shardquant verify`: re-reads a ModelOpt-format checkpoint (ours or anyone's) and checks what
//! serving engines rely on; with `--source`, measures the quantization error against the source.
//!
//! Checked: the index against the shards and every header (as any input is); the metadata
//! (`hf_quant_config.json`, `config.json` `quantization_config`); each quantized linear's tensor
//! set, dtypes and shapes for its format; every scale finite and positive; NVFP4 block scales and
//! FP8 weights free of NaN codes; linears that engines fuse (q/k/v, gate/up, an expert's gate
//! and up) sharing `weight_scale_2` and `input_scale`; every expert's `input_scale` usable; and
//! `exclude_modules` agreeing with the tensors present.

use crate::checkpoint::{Checkpoint, Dtype, TensorEntry};
use crate::convert::{check_checksums, read_config, ChecksumCheck, MANIFEST_FILE};
use crate::error::{Error, Result};
use crate::layout::{glob_match, ExpertProj, Layout};
use crate::plan::source_dtype;
use crate::quant::{e2m1_to_f32, e4m3_to_f32, load_f32};
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

fn scalar_f32(ckpt: &Checkpoint, t: &TensorEntry) -> Option<f32> {
    let b = ckpt.bytes(t);
    (t.dtype == Dtype::F32 && b.len() == 4).then(|| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// One quantized linear as found in the checkpoint.
struct Found<'a> {
    weight: &'a TensorEntry,
    scale: &'a TensorEntry,
    scale_2: Option<&'a TensorEntry>,
    input: Option<&'a TensorEntry>,
}

/// Verifies the checkpoint in `dir`; `source` is the checkpoint it was made from.
pub fn verify(dir: &Path, source: Option<&Path>) -> Result<Verification> {
    verify_weighted(dir, source, &|_, _| None)
}

/// [`verify`], and with a source also the importance-weighted error of every linear that
/// `importance` has channel weights for (e.g. [`crate::calib::mse::Importance`] from an
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
    let hf: serde_json::Value = crate::checkpoint::Lane::new(dir)
        .ok()
        .and_then(|lane| lane.read_small("hf_quant_config.json", 16 << 20).ok())
        .flatten()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .ok_or_else(|| {
            Error::bad_input(format!("{}: no readable hf_quant_config.json", dir.display()))
                .with_hint("verify checks ModelOpt-format checkpoints (hf_quant_config.json + quantization_config)")
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
    let quantized: BTreeMap<&str, Found> = ckpt
        .tensors()
        .iter()
        .filter_map(|t| t.name.strip_suffix(".weight_scale").map(|m| (m, t)))
        .filter_map(|(m, scale)| {
            let weight = ckpt.get(&format!("{m}.weight"))?;
            let scale_2 = ckpt.get(&format!("{m}.weight_scale_2"));
            let input = ckpt.get(&format!("{m}.input_scale"));
            Some((
                m,
                Found {
                    weight,
                    scale,
                    scale_2,
                    input,
                },
            ))
        })
        .collect();
    v.linears = quantized.len();
    for (m, f) in &quantized {
        check_linear(&ckpt, m, f, nvfp4, algo != "W4A16_NVFP4", &mut v.problems);
    }
    let layout = Layout::shipped_for(&config).or_else(|| {
        crate::layout::infer::infer(&config, ckpt.tensors(), &dir.join("config.json")).ok()
    });
    if let Some(layout) = &layout {
        check_shared(&ckpt, layout, &quantized, nvfp4, &mut v.problems);
    }
    check_excludes(&hf, &quantized, &mut v.problems);
    if let Some(src) = source {
        let src = Checkpoint::open(src)?;
        compare_with_source(&ckpt, &src, &quantized, nvfp4, importance, &mut v);
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
    let positive =
        |t: &TensorEntry, what: &str, problems: &mut Vec<String>| match scalar_f32(ckpt, t) {
            Some(s) if s.is_finite() && s > 0.0 => {}
            Some(s) => problems.push(format!("{m}: {what} is {s} (must be finite and positive)")),
            None => problems.push(format!(
                "{m}: {what} should be an F32 scalar, is {:?} {:?}",
                t.dtype, t.shape
            )),
        };
    if nvfp4 {
        let [rows, half] = shape.as_slice() else {
            problems.push(format!("{m}: NVFP4 weight should be 2-D, is {shape:?}"));
            return;
        };
        if f.weight.dtype != Dtype::U8
            || f.scale.dtype != Dtype::F8_E4M3
            || f.scale.shape != [*rows, half * 2 / 16]
        {
            problems.push(format!(
                "{m}: NVFP4 tensors should be weight U8 [out, in/2] and weight_scale F8_E4M3 [out, in/16]; found {:?} {:?} and {:?} {:?}",
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

/// Dequantizes each linear and measures ||W - W_q|| / ||W|| against the source weight.
fn compare_with_source(
    ckpt: &Checkpoint,
    src: &Checkpoint,
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
        let Some(s) = src.get(&format!("{m}.weight")) else {
            continue;
        };
        let (Some(dtype), [rows, cols]) = (source_dtype(s.dtype), s.shape.as_slice()) else {
            continue;
        };
        let source = src.bytes(s);
        let (weight, scales) = (ckpt.bytes(f.weight), ckpt.bytes(f.scale));
        let n = rows * cols;
        let sizes_match = if nvfp4 {
            weight.len() * 2 == n && scales.len() * 16 == n
        } else {
            weight.len() == n
        };
        if !sizes_match {
            v.problems.push(format!(
                "{m}: the quantized tensors do not match the source weight's shape {:?}",
                s.shape
            ));
            continue;
        }
        // The per-tensor scale (weight_scale_2 or FP8 weight_scale); check_linear reports a bad one.
        let tensor_scale = if nvfp4 {
            f.scale_2.and_then(|t| scalar_f32(ckpt, t))
        } else {
            scalar_f32(ckpt, f.scale)
        };
        let Some(tensor_scale) = tensor_scale.map(f64::from) else {
            continue;
        };
        let channel = importance(m, *cols);
        let (mut num, mut den) = (0.0f64, 0.0f64);
        let (mut wnum, mut wden) = (0.0f64, 0.0f64);
        for i in 0..n {
            let w = f64::from(load_f32(source, dtype, i));
            let wq = if nvfp4 {
                let nibble = (weight[i / 2] >> (4 * (i % 2))) & 0xF;
                let block = (i / cols) * (cols / 16) + (i % cols) / 16;
                f64::from(e2m1_to_f32(nibble))
                    * f64::from(e4m3_to_f32(scales[block]))
                    * tensor_scale
            } else {
                f64::from(e4m3_to_f32(weight[i])) * tensor_scale
            };
            num += (w - wq) * (w - wq);
            den += w * w;
            if let Some(c) = &channel {
                let imp = f64::from(c[i % cols]);
                wnum += imp * (w - wq) * (w - wq);
                wden += imp * w * w;
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
