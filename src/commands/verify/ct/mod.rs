//! `verify` for compressed-tensors checkpoints (`quantization_config.quant_method ==
//! "compressed-tensors"`): ours (`convert --export compressed-tensors`) and llm-compressor's.
//!
//! Checked: the `config_groups` schemes are ones verify knows (NVFP4 `nvfp4-pack-quantized`,
//! FP8 `float-quantized` per tensor / channel / block); each quantized linear's tensor set,
//! dtypes and shapes for its scheme, with the activation scale where `input_activations` are
//! static (`linear.rs`); every scale finite and positive (NVFP4 block scales: no NaN, negative
//! or zero code; FP8 weights: no NaN code); the `ignore` list (names and `re:` patterns)
//! agreeing with the tensors both ways; fused linears (q/k/v, gate/up, an expert's gate and up)
//! sharing their NVFP4 `weight_global_scale`; fused groups quantized whole; `kv_cache_scheme`
//! and the attention modules' `k_scale` / `v_scale` present together (`kv.rs`); and with
//! `--source`, the dequantized weights against the source (`compare.rs`).

mod compare;
mod kv;
mod linear;

use super::pyre::Pattern;
use super::{groups, Found, Verification};
use crate::error::Result;
use crate::input::checkpoint::Checkpoint;
use crate::input::layout::{ExpertProj, Layout};
use crate::plan::source_dtype;
use linear::{check_linear, ct_linears, CtLinear};
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
    kv::check_kv_cache(ckpt, q, problems);
    if let Some(src_dir) = source {
        let src = Checkpoint::open(src_dir)?;
        let any_nvfp4 = found.values().any(|f| f.nvfp4);
        let algo = if any_nvfp4 { "W4A16_NVFP4" } else { "FP8" };
        let sources = super::source_linears(&src, src_dir, algo, &mut v.problems)?;
        compare::compare(ckpt, &src, &sources, &found, &group_of, v);
    }
    Ok(())
}
