//! The JSON form of a layout (`layouts/*.json`, `--layout FILE`, and what `inspect --layout-json`
//! prints for an inferred layout): read and written with the same types, so that what
//! shardquant prints is exactly what it accepts.

use serde::{Deserialize, Serialize};

use super::Role;

/// A layout file. `layouts/llama.json` and `layouts/gpt_oss.json` show every field.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutFile {
    /// Short name, e.g. `llama`.
    pub name: String,
    /// One-line description.
    #[serde(default)]
    pub description: String,
    /// `config.json` `architectures` values this layout is chosen for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// `config.json` `model_type` values this layout is chosen for (when no architecture
    /// matches).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_types: Vec<String>,
    /// Template of a decoder layer's prefix, e.g. `model.layers.{layer}`.
    pub layer_prefix: String,
    /// Dense linears, relative to the layer prefix.
    #[serde(default)]
    pub linears: Vec<LinearFile>,
    /// Groups of linears (relative names) that read one input.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_input: Vec<Vec<String>>,
    /// Routed experts of MoE layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts: Option<ExpertsFile>,
    /// Where FP8 KV-cache scales go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache: Option<KvCacheFile>,
    /// Modules ModelOpt lists in `exclude_modules` even when the checkpoint has no tensor for
    /// them (a tied `lm_head`), full names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unquantized_modules: Vec<String>,
    /// `config.json` key (dotted path, e.g. `text_config.num_hidden_layers`) holding the number
    /// of regular layers; layers past it (multi-token prediction) pass through unquantized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtp_from_config: Option<String>,
    /// transformers' load-time renames, `[checkpoint prefix, in-memory prefix]`, first match
    /// wins (Mistral-3, Gemma-3: `language_model.model.` is `model.language_model.` in
    /// memory). ModelOpt's amax files use the in-memory names, and it summarises
    /// `exclude_modules` over them before renaming back the prefixes the checkpoint uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_renames: Vec<[String; 2]>,
    /// Glob patterns of modules whose weights ModelOpt does not wrap with quantizers (a
    /// subclass of `nn.Embedding` such as Gemma's scaled embedding): passed through and not
    /// listed in `exclude_modules`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unwrapped_modules: Vec<String>,
}

/// One dense linear.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LinearFile {
    /// Module name relative to the layer prefix, e.g. `self_attn.q_proj`.
    pub module: String,
    /// Role, for `--scope`.
    pub role: Role,
}

/// Routed experts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertsFile {
    /// Per-expert module template relative to the layer, e.g. `mlp.experts.{expert}`: where
    /// per-expert tensors are, and the names fused `[E, out, in]` experts are written under.
    /// Absent when the experts only exist fused and stay fused (`fused_transposed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Child name of the gate projection (`gate_proj`, `w1`).
    #[serde(default = "default_gate")]
    pub gate: String,
    /// Child name of the up projection (`up_proj`, `w3`).
    #[serde(default = "default_up")]
    pub up: String,
    /// Child name of the down projection (`down_proj`, `w2`).
    #[serde(default = "default_down")]
    pub down: String,
    /// The fused gate/up parameter of all experts of a layer, e.g. `mlp.experts.gate_up_proj`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fused_gate_up: Option<String>,
    /// The fused down parameter, e.g. `mlp.experts.down_proj`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fused_down: Option<String>,
    /// `false` (default): fused parameters are `[E, out, in]` (transformers 5: gate rows first,
    /// then up rows) and are written per expert under `module`, as ModelOpt's export does.
    /// `true`: they are `[E, in, out]`. Without `module` (gpt-oss, Llama-4: BMM-style experts,
    /// gate/up possibly interleaved) they are written fused, quantized along `in` with one
    /// scale per parameter for all experts of the layer; with `module` (Qwen3-VL-MoE) each
    /// expert's `[in, out]` is transposed and written per expert (gate = the first half of
    /// gate_up's outputs), as ModelOpt's export does.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fused_transposed: bool,
    /// ModelOpt's in-memory experts module (names the fused quantizers in amax files), e.g.
    /// `mlp.experts`.
    pub stats_module: String,
    /// The router module, e.g. `mlp.gate`.
    pub router: String,
}

/// KV-cache scale placement.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KvCacheFile {
    /// The attention module (holds ModelOpt's `k_bmm_quantizer`).
    pub attention: String,
    /// The module that receives `k_scale`.
    pub k_proj: String,
    /// The module that receives `v_scale`.
    pub v_proj: String,
}

fn default_gate() -> String {
    "gate_proj".to_string()
}

fn default_up() -> String {
    "up_proj".to_string()
}

fn default_down() -> String {
    "down_proj".to_string()
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl LayoutFile {
    /// Pretty JSON, as `--layout` reads it.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a layout serializes");
        text.push('\n');
        text
    }
}
