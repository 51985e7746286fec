//! Architecture descriptions, loaded from `layouts/*.json`.
//!
//! A [`Layout`] says which tensors of a checkpoint are quantizable linears (and their role),
//! which linears share one input (and so, for NVFP4, one `weight_scale_2` and `input_scale`),
//! where the MoE experts are and how ModelOpt names them in memory, and which modules stay
//! unquantized but are listed in `exclude_modules`. Everything not described as a linear
//! passes through unchanged. The built-in layouts are compiled into the binary; `--layout FILE`
//! loads another one in the same format.

mod template;

pub use template::{glob_match, Captures, Template};

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// The layouts shipped with shardquant: (file name, JSON text).
pub const BUILTIN_LAYOUTS: &[(&str, &str)] = &[
    ("llama.json", include_str!("../../layouts/llama.json")),
    (
        "qwen3_moe.json",
        include_str!("../../layouts/qwen3_moe.json"),
    ),
    ("mixtral.json", include_str!("../../layouts/mixtral.json")),
    (
        "deepseek_v3.json",
        include_str!("../../layouts/deepseek_v3.json"),
    ),
];

/// What part of the model a linear belongs to; used by `--scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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

/// JSON form of a layout file (see `layouts/llama.json` for an example).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_types: Vec<String>,
    layer_prefix: String,
    #[serde(default)]
    linears: Vec<LinearFile>,
    #[serde(default)]
    shared_input: Vec<Vec<String>>,
    #[serde(default)]
    experts: Option<ExpertsFile>,
    #[serde(default)]
    kv_cache: Option<KvCacheFile>,
    #[serde(default)]
    unquantized_modules: Vec<String>,
    #[serde(default)]
    mtp_from_config: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinearFile {
    module: String,
    role: Role,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpertsFile {
    module: String,
    gate: String,
    up: String,
    down: String,
    #[serde(default)]
    fused_gate_up: Option<String>,
    #[serde(default)]
    fused_down: Option<String>,
    stats_module: String,
    router: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KvCacheFile {
    attention: String,
    k_proj: String,
    v_proj: String,
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
    /// Per-expert module template, e.g. `model.layers.{layer}.mlp.experts.{expert}`.
    pub module: Template,
    /// Child names of the gate, up and down projections (`gate_proj`/`w1`, ...).
    pub gate: String,
    /// See [`ExpertsSpec::gate`].
    pub up: String,
    /// See [`ExpertsSpec::gate`].
    pub down: String,
    /// transformers-5 fused `gate_up_proj [E, 2I, H]` parameter template, if the layout accepts it.
    pub fused_gate_up: Option<Template>,
    /// transformers-5 fused `down_proj [E, H, I]` parameter template.
    pub fused_down: Option<Template>,
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

    /// On-disk module name of one expert projection.
    pub fn module_name(&self, layer: usize, expert: usize, proj: ExpertProj) -> String {
        format!(
            "{}.{}",
            self.module.render(Some(layer), Some(expert)),
            self.proj_name(proj)
        )
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
    /// Modules that ModelOpt wraps but never quantizes (listed in `exclude_modules`).
    pub unquantized_modules: Vec<String>,
    /// `config.json` key holding the number of regular layers; layers past it (MTP) pass through.
    pub mtp_from_config: Option<String>,
}

impl Layout {
    /// Parses a layout from JSON text; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Layout> {
        let file: LayoutFile = serde_json::from_str(text).map_err(|e| {
            Error::bad_input(format!("layout {origin}: invalid layout JSON: {e}"))
                .with_hint("see layouts/llama.json for the format")
        })?;
        let bad = |msg: String| {
            Error::bad_input(format!("layout {origin}: {msg}"))
                .with_hint("fix the layout file; layouts/llama.json shows every field")
        };
        let layer_prefix = Template::parse(&file.layer_prefix).map_err(bad)?;
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
            Some(e) => Some(ExpertsSpec {
                module: under_layer(&e.module)?,
                gate: e.gate.clone(),
                up: e.up.clone(),
                down: e.down.clone(),
                fused_gate_up: e.fused_gate_up.as_deref().map(under_layer).transpose()?,
                fused_down: e.fused_down.as_deref().map(under_layer).transpose()?,
                stats_module: under_layer(&e.stats_module)?,
                router: under_layer(&e.router)?,
            }),
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
            name: file.name,
            description: file.description,
            architectures: file.architectures,
            model_types: file.model_types,
            layer_prefix,
            linears,
            shared_input: file.shared_input,
            experts,
            kv_cache,
            unquantized_modules: file.unquantized_modules,
            mtp_from_config: file.mtp_from_config,
        })
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
            Error::io("reading layout", path, e)
                .with_hint("--layout takes the path of a layout JSON file")
        })?;
        Layout::from_json(&text, &path.display().to_string())
    }

    /// All built-in layouts.
    pub fn builtin() -> Vec<Layout> {
        BUILTIN_LAYOUTS
            .iter()
            .map(|(name, text)| {
                Layout::from_json(text, name).expect("built-in layouts are valid (tested)")
            })
            .collect()
    }

    /// Picks the built-in layout for a model's `config.json`: by `architectures` first, then
    /// by `model_type`. The error lists the known architectures and how to write a layout.
    pub fn detect(config: &serde_json::Value, config_path: &Path) -> Result<Layout> {
        let archs: Vec<String> = config
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let model_type = config
            .get("model_type")
            .and_then(|m| m.as_str())
            .unwrap_or("");
        let layouts = Layout::builtin();
        if let Some(l) = layouts
            .iter()
            .find(|l| archs.iter().any(|a| l.architectures.contains(a)))
        {
            return Ok(l.clone());
        }
        if let Some(l) = layouts
            .iter()
            .find(|l| l.model_types.iter().any(|m| m == model_type))
        {
            return Ok(l.clone());
        }
        let known: Vec<String> = layouts
            .iter()
            .map(|l| format!("{} ({})", l.name, l.architectures.join(", ")))
            .collect();
        Err(Error::bad_input(format!(
            "{}: unknown architecture {:?} (model_type '{}'); known layouts: {}",
            config_path.display(),
            archs,
            model_type,
            known.join("; ")
        ))
        .with_hint(
            "write a layout JSON for this model (copy layouts/llama.json: layer_prefix, linears, \
             shared_input, experts, unquantized_modules) and pass it with --layout FILE",
        ))
    }

    /// The layout of the checkpoint in `dir`: the `--layout` file when one is given, else the
    /// built-in one its `config.json` names.
    pub fn for_checkpoint(
        override_file: Option<&Path>,
        config: &serde_json::Value,
        dir: &Path,
    ) -> Result<Layout> {
        match override_file {
            Some(path) => Layout::from_file(path),
            None => Layout::detect(config, &dir.join("config.json")),
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
        let caps = e.module.matches(parent)?;
        Some((caps.layer?, caps.expert?, proj))
    }

    /// The decoder layer number of a tensor or module name, if it is under a layer.
    pub fn layer_of(&self, name: &str) -> Option<usize> {
        name.match_indices('.')
            .map(|(i, _)| &name[..i])
            .chain(std::iter::once(name))
            .find_map(|prefix| self.layer_prefix.matches(prefix).and_then(|c| c.layer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_layouts_parse() {
        let all = Layout::builtin();
        assert_eq!(all.len(), BUILTIN_LAYOUTS.len());
        for l in &all {
            for lin in &l.linears {
                assert!(lin
                    .template
                    .render(Some(0), None)
                    .starts_with("model.layers.0."));
            }
        }
    }

    #[test]
    fn detects_by_architecture_and_model_type() {
        let p = Path::new("config.json");
        let cfg = serde_json::json!({"architectures": ["MixtralForCausalLM"], "model_type": "x"});
        assert_eq!(Layout::detect(&cfg, p).unwrap().name, "mixtral");
        let cfg = serde_json::json!({"model_type": "kimi_k2"});
        assert_eq!(Layout::detect(&cfg, p).unwrap().name, "deepseek_v3");
        let cfg = serde_json::json!({"architectures": ["FooForCausalLM"], "model_type": "foo"});
        let err = Layout::detect(&cfg, p).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::BadInput);
        assert!(err.to_string().contains("FooForCausalLM"));
        assert!(err.to_string().contains("llama"));
        assert!(err.to_string().contains("--layout"));
    }

    #[test]
    fn matches_linears_and_experts() {
        let cfg = serde_json::json!({"architectures": ["MixtralForCausalLM"]});
        let l = Layout::detect(&cfg, Path::new("c")).unwrap();
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
