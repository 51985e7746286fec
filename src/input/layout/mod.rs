//! Architecture layouts: which tensors of a checkpoint are quantizable linears, which read one
//! input, where the MoE experts are and how ModelOpt names them in memory.
//!
//! A [`Layout`] comes from one of three places, in this order: a `--layout FILE`; a shipped
//! layout (`layouts/*.json`, compiled in) that `config.json`'s `architectures` (or
//! `model_type`) selects; or, for any other model, [`infer`]ence from `config.json` and the
//! checkpoint's tensor names and shapes. Whatever its origin, the same rules then apply: the
//! ModelOpt default-disabled modules ([`disabled`]) stay unquantized, every weight under a
//! decoder layer must be classified (an unknown one stops the run), and every linear's shape
//! is checked against `config.json` before anything is written. `shardquant inspect
//! --layout-json` prints the layout in the JSON form `--layout` accepts.

pub mod disabled;
mod file;
pub mod infer;
mod template;
pub mod vocabulary;

pub use file::{ExpertsFile, KvCacheFile, LayoutFile, LinearFile};
pub use template::{glob_match, Captures, Template};

use crate::error::{Error, Result};
use crate::input::checkpoint::TensorEntry;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The layouts shipped with shardquant: (file name, JSON text).
pub const BUILTIN_LAYOUTS: &[(&str, &str)] = &[
    ("llama.json", include_str!("../../../layouts/llama.json")),
    (
        "qwen3_moe.json",
        include_str!("../../../layouts/qwen3_moe.json"),
    ),
    (
        "mixtral.json",
        include_str!("../../../layouts/mixtral.json"),
    ),
    (
        "deepseek_v3.json",
        include_str!("../../../layouts/deepseek_v3.json"),
    ),
    ("phi3.json", include_str!("../../../layouts/phi3.json")),
    (
        "glm4_moe.json",
        include_str!("../../../layouts/glm4_moe.json"),
    ),
    (
        "qwen2_moe.json",
        include_str!("../../../layouts/qwen2_moe.json"),
    ),
    (
        "qwen3_next.json",
        include_str!("../../../layouts/qwen3_next.json"),
    ),
    (
        "gpt_oss.json",
        include_str!("../../../layouts/gpt_oss.json"),
    ),
    ("llama4.json", include_str!("../../../layouts/llama4.json")),
    (
        "mistral3.json",
        include_str!("../../../layouts/mistral3.json"),
    ),
    ("gemma3.json", include_str!("../../../layouts/gemma3.json")),
    (
        "gemma3_text.json",
        include_str!("../../../layouts/gemma3_text.json"),
    ),
    (
        "minimax_m2.json",
        include_str!("../../../layouts/minimax_m2.json"),
    ),
    (
        "qwen3_vl_moe.json",
        include_str!("../../../layouts/qwen3_vl_moe.json"),
    ),
];

/// `shardquant layouts`: the shipped layouts, one line each (name, architectures,
/// description); with `name`, that layout's JSON exactly as shipped.
pub fn describe_shipped(name: Option<&str>) -> Result<String> {
    if let Some(name) = name {
        let file = format!("{name}.json");
        return BUILTIN_LAYOUTS
            .iter()
            .find(|(f, _)| *f == file)
            .map(|(_, text)| text.to_string())
            .ok_or_else(|| {
                Error::usage(format!("no shipped layout named '{name}'"))
                    .with_hint("`shardquant layouts` lists them")
            });
    }
    let mut out = String::new();
    for l in Layout::builtin() {
        out.push_str(&format!(
            "{:14} {}\n{:14}   {}\n",
            l.name,
            l.architectures.join(", "),
            "",
            l.description
        ));
    }
    out.push_str(
        "\nA checkpoint whose config.json selects none gets a layout inferred from its files \
         (`shardquant inspect DIR --layout-json` prints it).\n",
    );
    Ok(out)
}

/// What part of the model a linear belongs to; used by `--scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Attention projections.
    Attention,
    /// Dense MLP and shared-expert projections.
    Mlp,
    /// Routed MoE experts.
    Expert,
}

/// Which projection of an expert a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExpertProj {
    /// The gate projection (`gate_proj` / `w1`).
    Gate,
    /// The up projection (`up_proj` / `w3`).
    Up,
    /// The down projection (`down_proj` / `w2`).
    Down,
}

/// A dense linear of a decoder layer (relative to the layer prefix).
#[derive(Debug, Clone)]
pub struct LinearSpec {
    /// Module name relative to the layer, e.g. `self_attn.q_proj`.
    pub module: String,
    /// Full module template, e.g. `model.layers.{layer}.self_attn.q_proj`.
    pub template: Template,
    /// Role for `--scope`.
    pub role: Role,
    /// Index into [`Layout::shared_input`] of the group this linear belongs to, if any.
    pub shared_group: Option<usize>,
}

/// Where the routed experts of a MoE layer live.
#[derive(Debug, Clone)]
pub struct ExpertsSpec {
    /// Per-expert module template, e.g. `model.layers.{layer}.mlp.experts.{expert}`; `None`
    /// when the experts exist only fused and stay fused.
    pub module: Option<Template>,
    /// Child names of the gate, up and down projections (`gate_proj`/`w1`, ...).
    pub gate: String,
    /// See [`ExpertsSpec::gate`].
    pub up: String,
    /// See [`ExpertsSpec::gate`].
    pub down: String,
    /// Fused gate/up parameter template, if the layout accepts one.
    pub fused_gate_up: Option<Template>,
    /// Fused down parameter template.
    pub fused_down: Option<Template>,
    /// Fused parameters are `[E, in, out]` and stay fused (see [`ExpertsFile::fused_transposed`]).
    pub fused_transposed: bool,
    /// ModelOpt's in-memory fused-experts module, e.g. `model.layers.{layer}.mlp.experts`.
    pub stats_module: Template,
    /// The router module, e.g. `model.layers.{layer}.mlp.gate`.
    pub router: Template,
}

impl ExpertsSpec {
    /// The child name of a projection.
    pub fn proj_name(&self, proj: ExpertProj) -> &str {
        match proj {
            ExpertProj::Gate => &self.gate,
            ExpertProj::Up => &self.up,
            ExpertProj::Down => &self.down,
        }
    }

    /// On-disk module name of one expert projection (`None` for experts that only exist
    /// fused).
    pub fn module_name(&self, layer: usize, expert: usize, proj: ExpertProj) -> Option<String> {
        let module = self.module.as_ref()?;
        Some(format!(
            "{}.{}",
            module.render(Some(layer), Some(expert)),
            self.proj_name(proj)
        ))
    }
}

/// Where the KV-cache scales of an attention block go.
#[derive(Debug, Clone)]
pub struct KvCacheSpec {
    /// The attention module (ModelOpt's `k_bmm_quantizer` lives here).
    pub attention: Template,
    /// Module that receives `k_scale`.
    pub k_proj: Template,
    /// Module that receives `v_scale`.
    pub v_proj: Template,
}

/// Where a layout came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A shipped layout selected by `config.json`.
    Shipped,
    /// A `--layout` file.
    File,
    /// Inferred from `config.json` and the tensor names.
    Inferred,
}

/// A parsed, validated architecture layout.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Short name, e.g. `llama`.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// `config.json` `architectures` values this layout handles.
    pub architectures: Vec<String>,
    /// `config.json` `model_type` values this layout handles.
    pub model_types: Vec<String>,
    /// Template of a decoder layer's prefix.
    pub layer_prefix: Template,
    /// Dense linears.
    pub linears: Vec<LinearSpec>,
    /// Groups of linears (relative module names) that read the same input.
    pub shared_input: Vec<Vec<String>>,
    /// Routed experts, for MoE layouts.
    pub experts: Option<ExpertsSpec>,
    /// KV-cache scale placement, where the layout supports `--kv-cache`.
    pub kv_cache: Option<KvCacheSpec>,
    /// Modules listed in `exclude_modules` even without a tensor (a tied `lm_head`).
    pub unquantized_modules: Vec<String>,
    /// `config.json` key (dotted path) holding the number of regular layers; layers past it
    /// (MTP) pass through.
    pub mtp_from_config: Option<String>,
    /// transformers' load-time renames `(checkpoint prefix, in-memory prefix)`.
    pub memory_renames: Vec<(String, String)>,
    /// Modules ModelOpt does not wrap (glob patterns): not listed in `exclude_modules`.
    pub unwrapped_modules: Vec<String>,
    /// Where the layout came from.
    pub origin: Origin,
    /// The layout in the JSON form `--layout` reads.
    pub file: LayoutFile,
}

impl Layout {
    /// Parses a layout from JSON text; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Layout> {
        let file: LayoutFile = serde_json::from_str(text).map_err(|e| {
            Error::bad_input(format!("layout {origin}: invalid layout JSON: {e}"))
                .with_hint("see layouts/llama.json for the format")
        })?;
        Layout::from_layout_file(file, origin, Origin::File)
    }

    /// Validates a layout given as its JSON form.
    pub fn from_layout_file(file: LayoutFile, origin: &str, kind: Origin) -> Result<Layout> {
        let bad = |msg: String| {
            Error::bad_input(format!("layout {origin}: {msg}")).with_hint(
                "fix the layout file; layouts/llama.json and layouts/gpt_oss.json show every field",
            )
        };
        let layer_prefix = Template::parse(&file.layer_prefix).map_err(bad)?;
        if layer_prefix.render(Some(0), None) == layer_prefix.render(Some(1), None) {
            return Err(bad(format!(
                "layer_prefix '{}' has no {{layer}} placeholder",
                file.layer_prefix
            )));
        }
        let mut linears = Vec::new();
        for l in &file.linears {
            let rel = Template::parse(&l.module).map_err(bad)?;
            let shared_group = file.shared_input.iter().position(|g| g.contains(&l.module));
            linears.push(LinearSpec {
                module: l.module.clone(),
                template: layer_prefix.join(&rel),
                role: l.role,
                shared_group,
            });
        }
        for group in &file.shared_input {
            for member in group {
                if !file.linears.iter().any(|l| &l.module == member) {
                    return Err(bad(format!(
                        "shared_input names '{member}', which is not among the linears"
                    )));
                }
            }
        }
        let under_layer = |t: &str| -> Result<Template> {
            Ok(layer_prefix.join(&Template::parse(t).map_err(bad)?))
        };
        let experts = match &file.experts {
            None => None,
            Some(e) => {
                let fused = e.fused_gate_up.is_some() || e.fused_down.is_some();
                if e.module.is_none() && !(fused && e.fused_transposed) {
                    return Err(bad(
                        "experts needs \"module\" (per-expert tensors, or the names fused [E, out, in] experts are written under), \
                         unless its fused parameters are [E, in, out] (\"fused_transposed\": true)"
                            .to_string(),
                    ));
                }
                if e.fused_transposed && !fused {
                    return Err(bad(
                        "experts: \"fused_transposed\" needs fused_gate_up / fused_down"
                            .to_string(),
                    ));
                }
                Some(ExpertsSpec {
                    module: e.module.as_deref().map(under_layer).transpose()?,
                    gate: e.gate.clone(),
                    up: e.up.clone(),
                    down: e.down.clone(),
                    fused_gate_up: e.fused_gate_up.as_deref().map(under_layer).transpose()?,
                    fused_down: e.fused_down.as_deref().map(under_layer).transpose()?,
                    fused_transposed: e.fused_transposed,
                    stats_module: under_layer(&e.stats_module)?,
                    router: under_layer(&e.router)?,
                })
            }
        };
        let kv_cache = match &file.kv_cache {
            None => None,
            Some(k) => Some(KvCacheSpec {
                attention: under_layer(&k.attention)?,
                k_proj: under_layer(&k.k_proj)?,
                v_proj: under_layer(&k.v_proj)?,
            }),
        };
        Ok(Layout {
            name: file.name.clone(),
            description: file.description.clone(),
            architectures: file.architectures.clone(),
            model_types: file.model_types.clone(),
            layer_prefix,
            linears,
            shared_input: file.shared_input.clone(),
            experts,
            kv_cache,
            unquantized_modules: file.unquantized_modules.clone(),
            mtp_from_config: file.mtp_from_config.clone(),
            memory_renames: file
                .memory_renames
                .iter()
                .map(|[disk, memory]| (disk.clone(), memory.clone()))
                .collect(),
            unwrapped_modules: file.unwrapped_modules.clone(),
            origin: kind,
            file,
        })
    }

    /// The in-memory (ModelOpt) name of a checkpoint module name: the first rename whose
    /// checkpoint prefix it starts with, applied.
    pub fn memory_name<'n>(&self, disk: &'n str) -> std::borrow::Cow<'n, str> {
        for (from, to) in &self.memory_renames {
            if let Some(rest) = disk.strip_prefix(from.as_str()) {
                return format!("{to}{rest}").into();
            }
        }
        disk.into()
    }

    /// The checkpoint name of an in-memory name (or pattern), renaming back with every rename,
    /// or (`Some(used)`) only with the renames `used[i]` marks (transformers' reverse mapping
    /// knows only the renames it applied while loading: a tied `lm_head` keeps its in-memory
    /// name).
    pub fn disk_name<'n>(
        &self,
        memory: &'n str,
        used: Option<&[bool]>,
    ) -> std::borrow::Cow<'n, str> {
        for (i, (from, to)) in self.memory_renames.iter().enumerate() {
            if let Some(rest) = memory.strip_prefix(to.as_str()) {
                if used.is_none_or(|u| u.get(i).copied().unwrap_or(false)) {
                    return format!("{from}{rest}").into();
                }
            }
        }
        memory.into()
    }

    /// Whether ModelOpt leaves `module` unwrapped (no quantizers, not in `exclude_modules`).
    pub fn is_unwrapped(&self, module: &str) -> bool {
        self.unwrapped_modules
            .iter()
            .any(|p| crate::input::layout::template::glob_match(p, module))
    }

    /// Loads a layout file given with `--layout`.
    pub fn from_file(path: &Path) -> Result<Layout> {
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            return Err(
                Error::bad_input(format!("{}: is not a regular file", path.display()))
                    .with_hint("--layout takes the path of a layout JSON file"),
            );
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::input_io("reading layout", path, e)
                .with_hint("--layout takes the path of a layout JSON file")
        })?;
        Layout::from_json(&text, &path.display().to_string())
    }

    /// All built-in layouts.
    pub fn builtin() -> Vec<Layout> {
        BUILTIN_LAYOUTS
            .iter()
            .map(|(name, text)| {
                let mut l =
                    Layout::from_json(text, name).expect("built-in layouts are valid (tested)");
                l.origin = Origin::Shipped;
                l
            })
            .collect()
    }

    /// The shipped layout `config.json` selects: by `architectures` first, then by
    /// `model_type`; `None` when it selects none.
    pub fn shipped_for(config: &serde_json::Value) -> Option<Layout> {
        let archs: Vec<&str> = config
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let model_type = config
            .get("model_type")
            .and_then(|m| m.as_str())
            .unwrap_or("");
        let layouts = Layout::builtin();
        if let Some(l) = layouts
            .iter()
            .find(|l| archs.iter().any(|a| l.architectures.iter().any(|x| x == a)))
        {
            return Some(l.clone());
        }
        layouts
            .into_iter()
            .find(|l| l.model_types.iter().any(|m| m == model_type))
    }

    /// The layout of a checkpoint: the `--layout` file when one is given, else the shipped
    /// layout its `config.json` selects, else one inferred from `config.json` and `tensors`.
    pub fn for_checkpoint(
        override_file: Option<&Path>,
        config: &serde_json::Value,
        dir: &Path,
        tensors: &[TensorEntry],
    ) -> Result<Layout> {
        match override_file {
            Some(path) => Layout::from_file(path),
            None => match Layout::shipped_for(config) {
                Some(layout) => Ok(layout),
                None => infer::infer(config, tensors, &dir.join("config.json")),
            },
        }
    }

    /// The dense linear whose full module name is `module`, with its captured layer.
    pub fn match_linear(&self, module: &str) -> Option<(&LinearSpec, usize)> {
        self.linears
            .iter()
            .find_map(|l| l.template.matches(module).and_then(|c| Some((l, c.layer?))))
    }

    /// If `module` is a per-expert projection, returns (layer, expert, projection).
    pub fn match_expert(&self, module: &str) -> Option<(usize, usize, ExpertProj)> {
        let e = self.experts.as_ref()?;
        let (parent, child) = module.rsplit_once('.')?;
        let proj = [ExpertProj::Gate, ExpertProj::Up, ExpertProj::Down]
            .into_iter()
            .find(|p| e.proj_name(*p) == child)?;
        let caps = e.module.as_ref()?.matches(parent)?;
        Some((caps.layer?, caps.expert?, proj))
    }

    /// The decoder layer number of a tensor or module name, if it is under a layer.
    pub fn layer_of(&self, name: &str) -> Option<usize> {
        name.match_indices('.')
            .map(|(i, _)| &name[..i])
            .chain(std::iter::once(name))
            .find_map(|prefix| self.layer_prefix.matches(prefix).and_then(|c| c.layer))
    }

    /// The number of regular layers (`mtp_from_config`), when the layout names the key and
    /// `config.json` has it.
    pub fn mtp_limit(&self, config: &serde_json::Value) -> Option<usize> {
        let key = self.mtp_from_config.as_ref()?;
        config_value(config, key)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
    }
}

/// A value of `config.json` by dotted path (`text_config.hidden_size`).
pub fn config_value<'a>(
    config: &'a serde_json::Value,
    path: &str,
) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(config, |v, key| v.get(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_layouts_parse() {
        let all = Layout::builtin();
        assert_eq!(all.len(), BUILTIN_LAYOUTS.len());
        for l in &all {
            let prefix = l.layer_prefix.render(Some(0), None);
            assert!(prefix.ends_with("layers.0"), "{}", l.name);
            for lin in &l.linears {
                assert!(lin
                    .template
                    .render(Some(0), None)
                    .starts_with(&format!("{prefix}.")));
            }
            // Every shipped layout is selected by its own architectures.
            for arch in &l.architectures {
                let cfg = serde_json::json!({"architectures": [arch], "model_type": "x"});
                assert_eq!(Layout::shipped_for(&cfg).unwrap().name, l.name);
            }
        }
    }

    #[test]
    fn selects_shipped_layouts_by_architecture_and_model_type() {
        let cfg = serde_json::json!({"architectures": ["MixtralForCausalLM"], "model_type": "x"});
        assert_eq!(Layout::shipped_for(&cfg).unwrap().name, "mixtral");
        let cfg = serde_json::json!({"model_type": "kimi_k2"});
        assert_eq!(Layout::shipped_for(&cfg).unwrap().name, "deepseek_v3");
        let cfg = serde_json::json!({"architectures": ["FooForCausalLM"], "model_type": "foo"});
        assert!(Layout::shipped_for(&cfg).is_none());
    }

    #[test]
    fn matches_linears_and_experts() {
        let cfg = serde_json::json!({"architectures": ["MixtralForCausalLM"]});
        let l = Layout::shipped_for(&cfg).unwrap();
        let (spec, layer) = l.match_linear("model.layers.3.self_attn.k_proj").unwrap();
        assert_eq!((spec.module.as_str(), layer), ("self_attn.k_proj", 3));
        assert_eq!(spec.shared_group, Some(0));
        assert_eq!(
            l.match_expert("model.layers.1.block_sparse_moe.experts.7.w3"),
            Some((1, 7, ExpertProj::Up))
        );
        assert_eq!(l.match_expert("model.layers.1.block_sparse_moe.gate"), None);
        assert_eq!(
            l.layer_of("model.layers.12.input_layernorm.weight"),
            Some(12)
        );
        assert_eq!(l.layer_of("model.norm.weight"), None);
    }

    #[test]
    fn rejects_bad_layouts() {
        let err = Layout::from_json("{\"name\": 1}", "x.json").unwrap_err();
        assert!(err.to_string().contains("x.json"));
        let text = r#"{"name":"a","layer_prefix":"model.layers.{layer}",
            "linears":[{"module":"q","role":"attention"}],"shared_input":[["q","k"]]}"#;
        let err = Layout::from_json(text, "y.json").unwrap_err();
        assert!(err.to_string().contains("'k'"), "{err}");
        let text = r#"{"name":"a","layer_prefix":"model.{layers}"}"#;
        assert!(Layout::from_json(text, "z.json").is_err());
    }
}
