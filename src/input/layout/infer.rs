//! Layout inference: a [`Layout`] for a model no shipped layout describes, from `config.json`
//! and the checkpoint's tensor names and shapes alone.
//!
//! 1. The decoder: the `….layers.N` stack whose layer numbers cover `0..num_hidden_layers`
//!    (of `config.json`, or of its `text_config` for multimodal models), outside the towers
//!    ModelOpt never quantizes (`vision_tower`, `visual`, ...). Layers past the count are
//!    multi-token-prediction layers and pass through.
//! 2. Inside a layer, every weight of two or more dimensions that ModelOpt's default-disabled
//!    list does not cover ([`super::disabled`]) is classified by its name
//!    ([`super::vocabulary`]): a dense linear (`q_proj`, `qkv_proj`, `in_proj_qkvz`, `w2`,
//!    ...), a per-expert projection (`experts.N.gate_proj`, `experts.N.w1`), or a fused expert
//!    parameter (`experts.gate_up_proj`, `experts.down_proj`, 3-D). A weight no rule classifies
//!    is not guessed at: it is left out of the layout, and planning stops naming it.
//! 3. Fused expert parameters are `[E, out, in]` or `[E, in, out]`; which one is read from the
//!    shapes against `hidden_size` (gate/up reads the hidden state, down writes it).
//! 4. Linears of one parent in one shared-input family (q/k/v, gate/up, w1/w3, MLA's
//!    q_a/kv_a, the linear-attention input projections) read one input.

use super::disabled::{disabled_pattern, DISABLED_QUANTIZERS};
use super::file::{ExpertsFile, KvCacheFile, LayoutFile, LinearFile};
use super::vocabulary::{
    dense, expert_proj, family_in, is_attention_path, BMM_EXPERT_MODEL_TYPES, LLAVA_RENAMES,
    LLAVA_RENAME_MODEL_TYPES, SCALED_EMBEDDING_MODEL_TYPES,
};
use super::{config_value, glob_match, Layout, Origin, Role};
use crate::error::{Error, Result};
use crate::input::checkpoint::TensorEntry;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The part of `config.json` that describes the text decoder, and the dotted path to it
/// (`""` for the top level, `"text_config."` for most multimodal models).
pub fn text_config(config: &serde_json::Value) -> (&serde_json::Value, &'static str) {
    for key in ["text_config", "language_config", "llm_config"] {
        if let Some(section) = config.get(key).filter(|s| s.is_object()) {
            if section.get("hidden_size").is_some() {
                let path = match key {
                    "text_config" => "text_config.",
                    "language_config" => "language_config.",
                    _ => "llm_config.",
                };
                return (section, path);
            }
        }
    }
    (config, "")
}

/// The first of `keys` that the decoder's config section has, as an integer.
pub fn config_usize(config: &serde_json::Value, keys: &[&str]) -> Option<usize> {
    let (text, _) = text_config(config);
    keys.iter()
        .find_map(|k| text.get(*k).or_else(|| config.get(*k)))
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
}

/// `config.json` keys that give the number of routed experts, by model family.
pub const EXPERT_COUNT_KEYS: &[&str] = &[
    "num_experts",
    "num_local_experts",
    "n_routed_experts",
    "moe_num_experts",
];

/// The decoder layer stacks in `tensors`: prefix (e.g. `model.layers`) → layer numbers.
fn layer_stacks(tensors: &[TensorEntry]) -> BTreeMap<String, BTreeSet<usize>> {
    let mut stacks: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for t in tensors {
        let mut start = 0;
        for part in t.name.split('.') {
            let end = start + part.len();
            if part == "layers" {
                let rest = &t.name[(end + 1).min(t.name.len())..];
                let digits: &str = rest.split('.').next().unwrap_or("");
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    if let Ok(n) = digits.parse::<usize>() {
                        stacks
                            .entry(t.name[..end].to_string())
                            .or_default()
                            .insert(n);
                    }
                    break;
                }
            }
            start = end + 1;
        }
    }
    stacks
}

fn tower(prefix: &str) -> bool {
    DISABLED_QUANTIZERS
        .iter()
        .any(|p| glob_match(p, &format!("{prefix}.0.x")))
}

/// Picks the text decoder's layer stack.
fn decoder_stack(tensors: &[TensorEntry], layers: usize, config_path: &Path) -> Result<String> {
    let stacks = layer_stacks(tensors);
    let full: Vec<&String> = stacks
        .iter()
        .filter(|(p, set)| !tower(p) && (0..layers).all(|l| set.contains(&l)))
        .map(|(p, _)| p)
        .collect();
    let pick = match full.as_slice() {
        [one] => Some((*one).clone()),
        [] => None,
        many => many
            .iter()
            .find(|p| p.contains("language_model"))
            .or_else(|| many.iter().find(|p| p.as_str() == "model.layers"))
            .map(|p| (*p).clone()),
    };
    pick.ok_or_else(|| {
        let found: Vec<String> = stacks
            .iter()
            .map(|(p, s)| format!("{p} ({} layers)", s.len()))
            .collect();
        Error::bad_input(format!(
            "{}: cannot infer a layout: no single stack of decoder layers '<prefix>.layers.N' covers layers 0..{layers} \
             (num_hidden_layers); found: {}",
            config_path.display(),
            if found.is_empty() { "none".to_string() } else { found.join(", ") }
        ))
        .with_hint(
            "write a layout JSON for this model (see layouts/llama.json) and pass it with --layout FILE",
        )
    })
}

/// What one layer-relative weight is.
enum Kind {
    Dense(String),
    Expert {
        parent: String,
        names: (&'static str, &'static str, &'static str),
    },
    Fused {
        parent: String,
        gate_up: bool,
        shape: Vec<usize>,
    },
}

fn classify_relative(rel: &str, t: &TensorEntry) -> Option<Kind> {
    if let Some(module) = rel.strip_suffix(".weight") {
        if t.shape.len() < 2 {
            return None;
        }
        let parts: Vec<&str> = module.split('.').collect();
        if let Some(i) = parts.iter().position(|p| *p == "experts") {
            let numbered = parts
                .get(i + 1)
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if numbered && parts.len() == i + 3 {
                let (_, names) = expert_proj(parts[i + 2])?;
                return Some(Kind::Expert {
                    parent: parts[..i].join("."),
                    names,
                });
            }
            return None;
        }
        let last = *parts.last()?;
        dense(last)?;
        return Some(Kind::Dense(module.to_string()));
    }
    let (parent, last) = rel.rsplit_once('.')?;
    let experts_parent = parent.strip_suffix("experts")?;
    if t.shape.len() != 3 || !(experts_parent.is_empty() || experts_parent.ends_with('.')) {
        return None;
    }
    let gate_up = match last {
        "gate_up_proj" => true,
        "down_proj" => false,
        _ => return None,
    };
    Some(Kind::Fused {
        parent: experts_parent.trim_end_matches('.').to_string(),
        gate_up,
        shape: t.shape.clone(),
    })
}

/// Infers the layout of a checkpoint from its `config.json` and tensors.
pub fn infer(
    config: &serde_json::Value,
    tensors: &[TensorEntry],
    config_path: &Path,
) -> Result<Layout> {
    let (text, text_path) = text_config(config);
    let layers = text
        .get("num_hidden_layers")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| {
            Error::bad_input(format!(
                "{}: cannot infer a layout: no num_hidden_layers",
                config_path.display()
            ))
            .with_hint("write a layout JSON for this model (see layouts/llama.json) and pass it with --layout FILE")
        })? as usize;
    let hidden = text
        .get("hidden_size")
        .and_then(|v| v.as_u64())
        .map(|v| v as usize);
    let stack = decoder_stack(tensors, layers, config_path)?;
    let head = format!("{stack}.");

    let mut dense_seen: Vec<String> = Vec::new();
    let mut expert_parents: BTreeSet<String> = BTreeSet::new();
    let mut expert_names: BTreeSet<(&str, &str, &str)> = BTreeSet::new();
    let mut fused: BTreeMap<(String, bool), Vec<usize>> = BTreeMap::new();
    let mut relatives: BTreeSet<String> = BTreeSet::new();
    for t in tensors {
        let Some(rest) = t.name.strip_prefix(&head) else {
            continue;
        };
        let Some((number, rel)) = rest.split_once('.') else {
            continue;
        };
        if number.parse::<usize>().map_or(true, |n| n >= layers) {
            continue;
        }
        relatives.insert(rel.to_string());
        if disabled_pattern(&t.name).is_some() {
            continue;
        }
        match classify_relative(rel, t) {
            Some(Kind::Dense(m)) if !dense_seen.contains(&m) => dense_seen.push(m),
            Some(Kind::Dense(_)) => {}
            Some(Kind::Expert { parent, names }) => {
                expert_parents.insert(parent);
                expert_names.insert(names);
            }
            Some(Kind::Fused {
                parent,
                gate_up,
                shape,
            }) => {
                expert_parents.insert(parent.clone());
                fused.entry((parent, gate_up)).or_insert(shape);
            }
            None => {}
        }
    }
    let refuse = |msg: String| {
        Error::bad_input(format!("{}: cannot infer a layout: {msg}", config_path.display())).with_hint(
            "write a layout JSON for this model (start from `shardquant inspect --layout-json` or layouts/*.json) \
             and pass it with --layout FILE",
        )
    };
    if expert_parents.len() > 1 {
        return Err(refuse(format!(
            "experts under more than one module: {}",
            expert_parents
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if expert_names.len() > 1 {
        return Err(refuse(
            "experts named both gate_proj/up_proj/down_proj and w1/w3/w2".to_string(),
        ));
    }
    let model_type = |c: &serde_json::Value| {
        c.get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let (top_type, text_type) = (model_type(config), model_type(text_config(config).0));
    // gpt-oss and Llama-4 keep [E, in, out] experts as one BMM module in memory (ModelOpt
    // writes them fused); other models' [E, in, out] experts are transposed on load and written
    // per expert.
    let bmm_experts = [&top_type, &text_type]
        .iter()
        .any(|t| BMM_EXPERT_MODEL_TYPES.contains(&t.as_str()));
    let experts = match expert_parents.into_iter().next() {
        None => None,
        Some(parent) => Some(experts_file(
            &parent,
            expert_names.into_iter().next(),
            &fused,
            hidden,
            bmm_experts,
            &relatives,
            &refuse,
        )?),
    };

    // Linears and their shared-input groups, in first-seen order.
    let mut linears = Vec::new();
    let mut families: BTreeMap<(String, &str), Vec<String>> = BTreeMap::new();
    for m in &dense_seen {
        let (parent, last) = m.rsplit_once('.').unwrap_or(("", m.as_str()));
        let siblings: Vec<&str> = dense_seen
            .iter()
            .filter_map(|o| {
                o.rsplit_once('.')
                    .filter(|(p, _)| *p == parent)
                    .map(|(_, l)| l)
            })
            .collect();
        if let Some(f) = family_in(last, &siblings) {
            families
                .entry((parent.to_string(), f))
                .or_default()
                .push(m.clone());
        }
        let role = if is_attention_path(parent) {
            Role::Attention
        } else {
            Role::Mlp
        };
        linears.push(LinearFile {
            module: m.clone(),
            role,
        });
    }
    let mut shared_input: Vec<Vec<String>> =
        families.into_values().filter(|g| g.len() > 1).collect();
    shared_input.sort_by_key(|g| dense_seen.iter().position(|m| *m == g[0]));
    let kv_cache = dense_seen
        .iter()
        .filter_map(|m| m.strip_suffix(".k_proj"))
        .find(|parent| dense_seen.contains(&format!("{parent}.v_proj")))
        .map(|parent| KvCacheFile {
            attention: parent.to_string(),
            k_proj: format!("{parent}.k_proj"),
            v_proj: format!("{parent}.v_proj"),
        });
    let mut unquantized_modules = Vec::new();
    if !tensors.iter().any(|t| t.name.contains("lm_head")) {
        // A tied lm_head has no tensor, but ModelOpt's in-memory model has the module.
        unquantized_modules.push("lm_head".to_string());
    }
    let memory_renames = if LLAVA_RENAME_MODEL_TYPES.contains(&top_type.as_str()) {
        LLAVA_RENAMES
            .iter()
            .map(|(disk, memory)| [disk.to_string(), memory.to_string()])
            .collect()
    } else {
        Vec::new()
    };
    let unwrapped_modules = if [&top_type, &text_type]
        .iter()
        .any(|t| SCALED_EMBEDDING_MODEL_TYPES.contains(&t.as_str()))
    {
        vec!["*embed_tokens".to_string()]
    } else {
        Vec::new()
    };
    let archs: Vec<String> = config
        .get("architectures")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let file = LayoutFile {
        name: "inferred".to_string(),
        description: format!(
            "inferred from config.json ({}) and the tensor names",
            if archs.is_empty() {
                "no architectures".to_string()
            } else {
                archs.join(", ")
            }
        ),
        architectures: Vec::new(),
        model_types: Vec::new(),
        layer_prefix: format!("{stack}.{{layer}}"),
        linears,
        shared_input,
        experts,
        kv_cache,
        unquantized_modules,
        mtp_from_config: Some(format!("{text_path}num_hidden_layers")),
        memory_renames,
        unwrapped_modules,
    };
    debug_assert!(config_value(config, file.mtp_from_config.as_deref().unwrap_or("")).is_some());
    Layout::from_layout_file(file, &config_path.display().to_string(), Origin::Inferred)
}

/// The experts entry for experts under `parent` (`mlp`, `block_sparse_moe`, `feed_forward`).
fn experts_file(
    parent: &str,
    names: Option<(&'static str, &'static str, &'static str)>,
    fused: &BTreeMap<(String, bool), Vec<usize>>,
    hidden: Option<usize>,
    bmm_experts: bool,
    relatives: &BTreeSet<String>,
    refuse: &dyn Fn(String) -> Error,
) -> Result<ExpertsFile> {
    let join = |s: &str| {
        if parent.is_empty() {
            s.to_string()
        } else {
            format!("{parent}.{s}")
        }
    };
    let gate_up = fused.get(&(parent.to_string(), true));
    let down = fused.get(&(parent.to_string(), false));
    let fused_transposed = match (gate_up, down) {
        (None, None) => false,
        (Some(_), None) | (None, Some(_)) => {
            return Err(refuse(format!(
                "'{}' has only one of the fused expert parameters gate_up_proj / down_proj",
                join("experts")
            )))
        }
        (Some(gu), Some(dn)) => {
            let Some(h) = hidden else {
                return Err(refuse(
                    "config.json has no hidden_size, needed to tell [E, out, in] from [E, in, out] fused experts"
                        .to_string(),
                ));
            };
            // [E, 2I, H] + [E, H, I] (out, in), or [E, H, 2I] + [E, I, H] (in, out).
            let out_in = gu[2] == h && dn[1] == h;
            let in_out = gu[1] == h && dn[2] == h;
            match (out_in, in_out) {
                (true, false) => false,
                (false, true) => true,
                _ => {
                    return Err(refuse(format!(
                        "cannot tell the orientation of fused experts '{}' {:?} and '{}' {:?} from hidden_size {h}",
                        join("experts.gate_up_proj"),
                        gu,
                        join("experts.down_proj"),
                        dn
                    )))
                }
            }
        }
    };
    let (gate, up, down_name) = names.unwrap_or(("gate_proj", "up_proj", "down_proj"));
    let router = ["gate", "router"]
        .iter()
        .map(|r| join(r))
        .find(|r| relatives.contains(&format!("{r}.weight")))
        .unwrap_or_else(|| join("gate"));
    // transformers 5 fuses per-expert modules in memory under `<parent>.experts`; Mixtral-style
    // `block_sparse_moe` is `mlp` in memory.
    let memory_parent = if parent == "block_sparse_moe" {
        "mlp".to_string()
    } else {
        parent.to_string()
    };
    let stats_module = if memory_parent.is_empty() {
        "experts".to_string()
    } else {
        format!("{memory_parent}.experts")
    };
    Ok(ExpertsFile {
        module: (!(fused_transposed && bmm_experts)).then(|| join("experts.{expert}")),
        gate: gate.to_string(),
        up: up.to_string(),
        down: down_name.to_string(),
        fused_gate_up: gate_up.map(|_| join("experts.gate_up_proj")),
        fused_down: down.map(|_| join("experts.down_proj")),
        fused_transposed,
        stats_module,
        router,
    })
}
