//! `verify` for compressed-tensors checkpoints (`quantization_config.quant_method ==
//! "compressed-tensors"`): ours (`convert --export compressed-tensors`) and llm-compressor's.
//!
//! Checked: the `config_groups` schemes are ones verify knows (NVFP4 `nvfp4-pack-quantized`,
//! FP8 `float-quantized` per tensor / channel / block); each quantized linear's tensor set,
//! dtypes and shapes for its scheme, with the activation scale where `input_activations` are
//! static; every scale finite and positive (NVFP4 block scales: no NaN, negative or zero
//! code; FP8 weights: no NaN code); the `ignore` list (names and `re:` patterns) agreeing with
//! the tensors both ways; fused linears (q/k/v, gate/up, an expert's gate and up) sharing their
//! NVFP4 `weight_global_scale`; fused groups quantized whole; and with `--source`, the
//! dequantized weights against the source.

use super::pyre::Pattern;
use super::{groups, Found, Verification, MAX_RELATIVE_ERROR};
use crate::compute::{e2m1_to_f32, e4m3_to_f32, load_f32, DequantPrecision};
use crate::error::Result;
use crate::input::checkpoint::{Checkpoint, Dtype, TensorEntry};
use crate::input::layout::{ExpertProj, Layout};
use crate::plan::{source_dtype, Linear};
use std::collections::BTreeMap;
use std::path::Path;

/// The weight scheme of a config group.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scheme {
    /// `nvfp4-pack-quantized`: `weight_packed`, `weight_scale`, `weight_global_scale`.
    Nvfp4,
    /// `float-quantized` FP8 per tensor (`[1]`), per channel (`[out, 1]`) or per block.
    Fp8Tensor,
    Fp8Channel,
    Fp8Block(usize, usize),
}

/// One config group as verify reads it: its scheme, and whether activation scales are stored.
#[derive(Debug, Clone, Copy)]
struct Group {
    scheme: Scheme,
    static_input: bool,
    /// `targets` holds `"Linear"`: every linear not ignored is quantized.
    all_linears: bool,
}

impl Group {
    /// The `weight_scale` shape of an FP8 weight `[out, k]` under this group.
    fn fp8_scale_shape(&self, out: usize, k: usize) -> Vec<usize> {
        match self.scheme {
            Scheme::Fp8Tensor => vec![1],
            Scheme::Fp8Channel => vec![out, 1],
            Scheme::Fp8Block(br, bc) => vec![out.div_ceil(br), k.div_ceil(bc)],
            Scheme::Nvfp4 => Vec::new(),
        }
    }
}

/// Whether `config` declares a compressed-tensors checkpoint.
pub(super) fn is_ct(config: &serde_json::Value) -> bool {
    config
        .pointer("/quantization_config/quant_method")
        .and_then(|m| m.as_str())
        == Some("compressed-tensors")
}

fn read_groups(q: &serde_json::Value, problems: &mut Vec<String>) -> Vec<(String, Group)> {
    let mut out = Vec::new();
    let Some(groups) = q.get("config_groups").and_then(|g| g.as_object()) else {
        problems.push("config.json: quantization_config has no config_groups".into());
        return out;
    };
    for (name, g) in groups {
        let w = &g["weights"];
        let format = g
            .get("format")
            .and_then(|f| f.as_str())
            .or_else(|| q.get("format").and_then(|f| f.as_str()))
            .unwrap_or("");
        let bits = w["num_bits"].as_u64();
        let strategy = w["strategy"].as_str().unwrap_or("");
        let scheme = match (format, bits, w["type"].as_str(), strategy) {
            ("nvfp4-pack-quantized", Some(4), Some("float"), "tensor_group")
                if w["group_size"].as_u64() == Some(16) =>
            {
                Some(Scheme::Nvfp4)
            }
            ("float-quantized", Some(8), Some("float"), "tensor") => Some(Scheme::Fp8Tensor),
            ("float-quantized", Some(8), Some("float"), "channel") => Some(Scheme::Fp8Channel),
            ("float-quantized", Some(8), Some("float"), "block") => {
                match w["block_structure"].as_array().map(|b| b.as_slice()) {
                    Some([r, c]) => match (r.as_u64(), c.as_u64()) {
                        (Some(r), Some(c)) if r > 0 && c > 0 => {
                            Some(Scheme::Fp8Block(r as usize, c as usize))
                        }
                        _ => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(scheme) = scheme else {
            problems.push(format!(
                "config.json: config group {name}: format {format:?} with {bits:?}-bit {strategy:?} \
                 weights is not a scheme verify knows (NVFP4, FP8 per tensor / channel / block)"
            ));
            continue;
        };
        // Static activations (`dynamic: false`, or NVFP4's `"local"`: a stored global scale
        // with per-block scales computed at run time) store a scale per linear.
        let input = &g["input_activations"];
        let static_input = !input.is_null() && input["dynamic"] != serde_json::Value::Bool(true);
        let all_linears = g["targets"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "Linear"));
        out.push((
            name.clone(),
            Group {
                scheme,
                static_input,
                all_linears,
            },
        ));
    }
    out
}

/// A quantized linear's tensors, by compressed-tensors name.
struct CtLinear<'a> {
    weight: Option<&'a TensorEntry>,
    scale: Option<&'a TensorEntry>,
    global: Option<&'a TensorEntry>,
    input: Option<&'a TensorEntry>,
    nvfp4: bool,
}

/// Every module with a compressed-tensors weight tensor: `weight_packed`, `weight_scale`,
/// `weight_global_scale`, or an F8_E4M3 `weight`.
fn ct_linears(ckpt: &Checkpoint) -> BTreeMap<&str, CtLinear<'_>> {
    let mut found = BTreeMap::new();
    for t in ckpt.tensors() {
        let m = [".weight_packed", ".weight_scale", ".weight_global_scale"]
            .iter()
            .find_map(|s| t.name.strip_suffix(s))
            .or_else(|| {
                t.name
                    .strip_suffix(".weight")
                    .filter(|_| t.dtype == Dtype::F8_E4M3)
            });
        let Some(m) = m else { continue };
        if found.contains_key(m) {
            continue;
        }
        let get = |s: &str| ckpt.get(&format!("{m}.{s}"));
        let packed = get("weight_packed");
        let nvfp4 = packed.is_some() || get("weight_global_scale").is_some();
        found.insert(
            m,
            CtLinear {
                weight: if nvfp4 { packed } else { get("weight") },
                scale: get("weight_scale"),
                global: get("weight_global_scale"),
                input: get(if nvfp4 {
                    "input_global_scale"
                } else {
                    "input_scale"
                }),
                nvfp4,
            },
        );
    }
    found
}

/// All elements of a float tensor as f32 (`None` for another dtype).
fn floats(ckpt: &Checkpoint, t: &TensorEntry) -> Option<Vec<f32>> {
    let d = source_dtype(t.dtype)?;
    let b = ckpt.bytes(t);
    Some((0..b.len() / d.size()).map(|i| load_f32(b, d, i)).collect())
}

/// Every element finite and positive; else a problem.
fn check_positive(ckpt: &Checkpoint, m: &str, what: &str, t: &TensorEntry, p: &mut Vec<String>) {
    match floats(ckpt, t) {
        Some(v) => {
            let bad = v.iter().filter(|s| !(s.is_finite() && **s > 0.0)).count();
            if bad > 0 {
                let first = v.iter().find(|s| !(s.is_finite() && **s > 0.0)).unwrap();
                p.push(format!(
                    "{m}: {bad} {what} value(s) are not finite and positive (e.g. {first})"
                ));
            }
        }
        None => p.push(format!("{m}: {what} has dtype {:?}, not a float", t.dtype)),
    }
}

fn check_linear(ckpt: &Checkpoint, m: &str, f: &CtLinear, g: Group, p: &mut Vec<String>) {
    let name = |s: &str| format!("{m}.{s}");
    let Some(w) = f.weight else {
        p.push(format!(
            "{m}: {} is missing",
            name(if f.nvfp4 { "weight_packed" } else { "weight" })
        ));
        return;
    };
    let Some(scale) = f.scale else {
        p.push(format!("{m}: {} is missing", name("weight_scale")));
        return;
    };
    let &[out, k] = w.shape.as_slice() else {
        p.push(format!("{m}: weight should be 2-D, is {:?}", w.shape));
        return;
    };
    if f.nvfp4 {
        let cols = k * 2;
        if w.dtype != Dtype::U8 || scale.dtype != Dtype::F8_E4M3 || scale.shape != [out, cols / 16]
        {
            p.push(format!(
                "{m}: NVFP4 tensors should be weight_packed U8 [out, in/2] and weight_scale \
                 F8_E4M3 [out, in/16] = [{out}, {}]; found {:?} {:?} and {:?} {:?}",
                cols / 16,
                w.dtype,
                w.shape,
                scale.dtype,
                scale.shape
            ));
        }
        if scale.dtype == Dtype::F8_E4M3 {
            let bad = ckpt
                .bytes(scale)
                .iter()
                .filter(|b| **b & 0x7F == 0x7F || **b & 0x80 != 0 || **b == 0)
                .count();
            if bad > 0 {
                p.push(format!(
                    "{m}: {bad} block scale(s) are NaN, negative or zero"
                ));
            }
        }
        match f.global {
            Some(t) if t.dtype == Dtype::F32 && t.shape == [1] => {
                check_positive(ckpt, m, "weight_global_scale", t, p)
            }
            Some(t) => p.push(format!(
                "{m}: weight_global_scale should be F32 [1], is {:?} {:?}",
                t.dtype, t.shape
            )),
            None => p.push(format!("{m}: {} is missing", name("weight_global_scale"))),
        }
    } else {
        if w.dtype != Dtype::F8_E4M3 {
            p.push(format!(
                "{m}: FP8 weight should be F8_E4M3, is {:?}",
                w.dtype
            ));
        }
        let expected = g.fp8_scale_shape(out, k);
        if scale.shape != expected || source_dtype(scale.dtype).is_none() {
            p.push(format!(
                "{m}: FP8 weight_scale should be a float {expected:?} for {:?}, is {:?} {:?}",
                g.scheme, scale.dtype, scale.shape
            ));
        }
        check_positive(ckpt, m, "weight_scale", scale, p);
        let nan = ckpt.bytes(w).iter().filter(|b| **b & 0x7F == 0x7F).count();
        if nan > 0 && w.dtype == Dtype::F8_E4M3 {
            p.push(format!("{m}: {nan} FP8 weight byte(s) are NaN codes"));
        }
    }
    let input_name = if f.nvfp4 {
        "input_global_scale"
    } else {
        "input_scale"
    };
    match (f.input, g.static_input) {
        (Some(t), _) if t.shape == [1] || t.shape.is_empty() => {
            check_positive(ckpt, m, input_name, t, p)
        }
        (Some(t), _) => p.push(format!(
            "{m}: {input_name} should be [1], is {:?} {:?}",
            t.dtype, t.shape
        )),
        (None, true) => p.push(format!(
            "{m}: {} is missing (the config's input_activations are static)",
            name(input_name)
        )),
        (None, false) => {}
    }
}

/// compressed-tensors' `ignore` entries: exact module names, or `re:` + a Python regex that
/// `re.match`es the module name.
enum Ignore {
    Name(String),
    Re(Pattern),
}

impl Ignore {
    fn matches(&self, m: &str) -> bool {
        match self {
            Ignore::Name(n) => n == m,
            Ignore::Re(p) => p.matches_prefix(m),
        }
    }
}

fn read_ignore(q: &serde_json::Value, problems: &mut Vec<String>) -> Vec<Ignore> {
    let mut out = Vec::new();
    for e in q["ignore"].as_array().into_iter().flatten() {
        let Some(s) = e.as_str() else { continue };
        match s.strip_prefix("re:") {
            Some(re) => match Pattern::new(re) {
                Ok(p) => out.push(Ignore::Re(p)),
                Err(why) => problems.push(format!(
                    "config.json: ignore pattern {s:?} cannot be read by verify: {why}"
                )),
            },
            None => out.push(Ignore::Name(s.to_string())),
        }
    }
    out
}

/// Whether a module name is an embedding (not a `Linear`, so not a `targets: ["Linear"]` one).
fn is_embedding(m: &str) -> bool {
    let leaf = m.rsplit('.').next().unwrap_or(m);
    leaf.contains("embed") || leaf == "wte" || leaf == "wpe"
}

/// Linears that engines fuse must share the NVFP4 global scale.
fn check_shared(
    ckpt: &Checkpoint,
    layout: &Layout,
    q: &BTreeMap<&str, CtLinear>,
    problems: &mut Vec<String>,
) {
    let mut groups: BTreeMap<String, (bool, Vec<&str>)> = BTreeMap::new();
    for (m, f) in q {
        if !f.nvfp4 {
            continue;
        }
        if let Some((spec, layer)) = layout.match_linear(m) {
            if let Some(g) = spec.shared_group {
                groups.entry(format!("{layer}/{g}")).or_default().1.push(m);
            }
        } else if let Some((layer, e, proj)) = layout.match_expert(m) {
            if proj != ExpertProj::Down {
                let entry = groups.entry(format!("{layer}/expert{e}")).or_default();
                entry.0 = true;
                entry.1.push(m);
            }
        }
    }
    let global = |m: &str| q[m].global.map(|t| ckpt.bytes(t).to_vec());
    let mut expert_pairs = Vec::new();
    for (expert, members) in groups.values().filter(|g| g.1.len() > 1) {
        let first = members[0];
        for m in &members[1..] {
            if global(first) == global(m) {
                continue;
            }
            if *expert {
                expert_pairs.push((first, *m));
            } else {
                problems.push(format!(
                    "{first} and {m} are fused by engines but have different weight_global_scale"
                ));
            }
        }
    }
    if let Some((gate, up)) = expert_pairs.first() {
        problems.push(format!(
            "{} expert(s) have gate and up projections with different weight_global_scale \
             (e.g. {gate} and {up}): vLLM's MoE loader uses the gate's scale for both, so the \
             up halves are mis-scaled. llm-compressor's model_free_ptq writes this (a known \
             bug); shardquant's --export compressed-tensors shares one scale",
            expert_pairs.len()
        ));
    }
}

/// Verifies a compressed-tensors checkpoint (after the checksums and the index, which
/// `verify_weighted` checked).
pub(super) fn verify_ct(
    ckpt: &Checkpoint,
    dir: &Path,
    config: &serde_json::Value,
    source: Option<&Path>,
    v: &mut Verification,
) -> Result<()> {
    let q = &config["quantization_config"];
    let problems = &mut v.problems;
    let groups_ = read_groups(q, problems);
    let found = ct_linears(ckpt);
    v.linears = found.len();
    // Each linear's group: the one of its scheme (for FP8, the one whose scale shape its
    // weight_scale has, when groups differ in strategy). `targets` are not matched.
    let mut group_of: BTreeMap<&str, Group> = BTreeMap::new();
    for (m, f) in &found {
        let mut candidates = groups_
            .iter()
            .map(|(_, g)| *g)
            .filter(|g| (g.scheme == Scheme::Nvfp4) == f.nvfp4);
        let first = candidates.clone().next();
        let fits = |g: &Group| match (f.weight.map(|w| w.shape.as_slice()), f.scale) {
            (Some(&[out, k]), Some(s)) => g.fp8_scale_shape(out, k) == s.shape,
            _ => false,
        };
        match candidates.find(fits).or(first) {
            Some(g) => {
                check_linear(ckpt, m, f, g, problems);
                group_of.insert(m, g);
            }
            None => problems.push(format!(
                "{m}: quantized as {} but no config group declares that scheme",
                if f.nvfp4 { "NVFP4" } else { "FP8" }
            )),
        }
    }
    // Embeddings are not `Linear`s: engines load them as plain tensors.
    for m in found.keys().filter(|m| is_embedding(m)) {
        problems.push(format!(
            "{m} is quantized but it is an embedding: engines (vLLM, transformers) load it \
             unquantized and cannot read its compressed-tensors weights; add it to ignore"
        ));
    }
    // `ignore` against the tensors, both ways.
    let ignore = read_ignore(q, problems);
    let ignored = |m: &str| ignore.iter().any(|i| i.matches(m));
    let wrong: Vec<&str> = found.keys().copied().filter(|m| ignored(m)).collect();
    for m in wrong.iter().take(10) {
        problems.push(format!("{m} is quantized but the ignore list names it"));
    }
    let missed: Vec<&str> = ckpt
        .tensors()
        .iter()
        .filter(|t| t.shape.len() == 2 && source_dtype(t.dtype).is_some())
        .filter_map(|t| t.name.strip_suffix(".weight"))
        .filter(|m| !found.contains_key(m) && !ignored(m) && !is_embedding(m))
        .collect();
    let all_linears = groups_.iter().any(|(_, g)| g.all_linears);
    if let Some(first) = missed.first().filter(|_| all_linears) {
        problems.push(format!(
            "{} linear(s) are not quantized but the ignore list does not name them (e.g. \
             {first}): engines expect quantized tensors for every targeted Linear",
            missed.len()
        ));
    }
    let layout = Layout::shipped_for(config).or_else(|| {
        crate::input::layout::infer::infer(config, ckpt.tensors(), &dir.join("config.json")).ok()
    });
    if let Some(layout) = &layout {
        check_shared(ckpt, layout, &found, problems);
    }
    // Fused groups quantized whole: the ModelOpt check, on the modules found here.
    let as_found: BTreeMap<&str, Found> = found
        .iter()
        .filter_map(|(m, f)| {
            Some((
                *m,
                Found {
                    weight: f.weight?,
                    scale: f.scale?,
                    scale_2: f.global,
                    input: f.input,
                    bmm: false,
                },
            ))
        })
        .collect();
    groups::check_partial_groups(ckpt, &as_found, problems);
    if let Some(src_dir) = source {
        let src = Checkpoint::open(src_dir)?;
        let any_nvfp4 = found.values().any(|f| f.nvfp4);
        let algo = if any_nvfp4 { "W4A16_NVFP4" } else { "FP8" };
        let sources = super::source_linears(&src, src_dir, algo, &mut v.problems)?;
        compare(ckpt, &src, &sources, &found, &group_of, v);
    }
    Ok(())
}

/// The source weight of a (non-BMM) linear as f32 `[rows, cols]`, read as convert reads it.
fn source_matrix(src: &Checkpoint, l: &Linear) -> std::result::Result<Vec<f32>, String> {
    let s = &l.source;
    let t = &src.tensors()[s.tensor];
    if s.bmm_experts.is_some() {
        return Err("a BMM expert stack (not compared for compressed-tensors)".into());
    }
    let stored = &src.bytes(t)[s.offset..s.offset + s.byte_len()];
    let (rows, cols) = (s.rows, s.cols);
    let (bytes, dtype) = match s.fp8_scale {
        Some(scale) => {
            let precision = DequantPrecision::Bf16;
            let mut out = vec![0u8; rows * cols * precision.dtype().size()];
            crate::compute::dequantize_fp8_block(
                stored,
                src.bytes(&src.tensors()[scale]),
                rows,
                cols,
                precision,
                &mut out,
            );
            (std::borrow::Cow::Owned(out), precision.dtype())
        }
        None => match source_dtype(t.dtype) {
            Some(d) => (std::borrow::Cow::Borrowed(stored), d),
            None => return Err(format!("its source {} has dtype {:?}", t.name, t.dtype)),
        },
    };
    let mut w = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let i = match s.fp8_scale {
                Some(_) => r * cols + c,
                None => s.stored_index(r, c),
            };
            w[r * cols + c] = load_f32(&bytes, dtype, i);
        }
    }
    Ok(w)
}

/// Dequantizes each linear with compressed-tensors' formulas (NVFP4: `e2m1(code) ·
/// (e4m3(s) / g)`; FP8: `e4m3(code) · scale` of its tensor, row or block) and measures
/// `||W − W_q|| / ||W||` against its source.
fn compare(
    ckpt: &Checkpoint,
    src: &Checkpoint,
    sources: &BTreeMap<String, Linear>,
    found: &BTreeMap<&str, CtLinear>,
    group_of: &BTreeMap<&str, Group>,
    v: &mut Verification,
) {
    for (m, f) in found {
        let (Some(w), Some(scale)) = (f.weight, f.scale) else {
            continue; // reported by check_linear
        };
        let &[rows, k] = w.shape.as_slice() else {
            continue;
        };
        let cols = if f.nvfp4 { k * 2 } else { k };
        // A linear the plan does not quantize (lm_head, when a checkpoint quantized it): its
        // source tensor as stored.
        let raw = src
            .get(&format!("{m}.weight"))
            .filter(|t| t.shape.len() == 2 && source_dtype(t.dtype).is_some());
        let (source_shape, source) = match (sources.get(*m), raw) {
            (Some(l), _) => ((l.source.rows, l.source.cols), source_matrix(src, l)),
            (None, Some(t)) => (
                (t.shape[0], t.shape[1]),
                floats(src, t).ok_or_else(|| "unreadable".to_string()),
            ),
            (None, None) => {
                v.problems.push(format!(
                    "{m}: the source checkpoint has no weight for this linear, so it cannot be \
                     compared (is --source the checkpoint this one was made from?)"
                ));
                continue;
            }
        };
        if (rows, cols) != source_shape {
            v.problems.push(format!(
                "{m}: the quantized weight {:?} does not match its source: {source_shape:?} expected",
                w.shape
            ));
            continue;
        }
        let source = match source {
            Ok(s) => s,
            Err(why) => {
                v.problems.push(format!("{m}: cannot be compared: {why}"));
                continue;
            }
        };
        let codes = ckpt.bytes(w);
        let (num, den, bound) = if f.nvfp4 {
            let Some(g) = f
                .global
                .and_then(|t| floats(ckpt, t))
                .and_then(|g| g.first().copied())
            else {
                continue;
            };
            if scale.shape != [rows, cols / 16] || codes.len() != rows * cols / 2 {
                continue;
            }
            let scales = ckpt.bytes(scale);
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for r in 0..rows {
                for c in 0..cols {
                    let i = r * cols + c;
                    let nibble = (codes[i / 2] >> (4 * (i % 2))) & 0xF;
                    let d = e4m3_to_f32(scales[r * (cols / 16) + c / 16]) / g;
                    let wq = f64::from(e2m1_to_f32(nibble) * d);
                    let x = f64::from(source[i]);
                    num += (x - wq) * (x - wq);
                    den += x * x;
                }
            }
            (num, den, MAX_RELATIVE_ERROR.0)
        } else {
            let Some(s) = floats(ckpt, scale) else {
                continue;
            };
            let Some(g) = group_of.get(m) else {
                continue;
            };
            let at = |r: usize, c: usize| match g.scheme {
                Scheme::Fp8Tensor => 0,
                Scheme::Fp8Channel => r,
                Scheme::Fp8Block(br, bc) => (r / br) * cols.div_ceil(bc) + c / bc,
                Scheme::Nvfp4 => unreachable!(),
            };
            if codes.len() != rows * cols || s.len() <= at(rows - 1, cols - 1) {
                continue;
            }
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for r in 0..rows {
                for c in 0..cols {
                    let i = r * cols + c;
                    let wq = f64::from(e4m3_to_f32(codes[i]) * s[at(r, c)]);
                    let x = f64::from(source[i]);
                    num += (x - wq) * (x - wq);
                    den += x * x;
                }
            }
            (num, den, MAX_RELATIVE_ERROR.1)
        };
        let error = if den > 0.0 { (num / den).sqrt() } else { 0.0 };
        if error.is_nan() || error > bound {
            v.problems.push(format!(
                "{m}: relative error {error:.4} against the source is above {bound}"
            ));
        }
        v.errors.push((m.to_string(), error));
    }
}
