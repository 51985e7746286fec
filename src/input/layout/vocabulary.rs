//! The names decoder layers give their linears, what each reads and writes, and which of them
//! read one input: what layout inference recognises and what the shape checks rely on.
//!
//! A name here is the last component of a module name (`q_proj` of
//! `model.layers.0.self_attn.q_proj`).

use super::ExpertProj;

/// What a linear reads or writes, for the shape checks against `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// Reads the hidden state: its input dimension is `hidden_size`.
    ReadsHidden,
    /// Writes the hidden state: its output dimension is `hidden_size`.
    WritesHidden,
    /// Between two other linears (MLA's `q_b_proj`, `kv_b_proj`).
    Inner,
}

/// Dense linear names: (name, what it reads/writes, shared-input family).
///
/// Linears of one parent module in the same family read the same tensor; ModelOpt finds them
/// with a dummy forward pass and, for NVFP4, gives them one `weight_scale_2` and `input_scale`.
const DENSE: &[(&str, Io, Option<&str>)] = &[
    // attention
    ("q_proj", Io::ReadsHidden, Some("qkv")),
    ("k_proj", Io::ReadsHidden, Some("qkv")),
    ("v_proj", Io::ReadsHidden, Some("qkv")),
    ("qkv_proj", Io::ReadsHidden, None),
    ("query_key_value", Io::ReadsHidden, None),
    ("o_proj", Io::WritesHidden, None),
    // multi-head latent attention (DeepSeek, Kimi)
    ("q_a_proj", Io::ReadsHidden, Some("mla")),
    ("kv_a_proj_with_mqa", Io::ReadsHidden, Some("mla")),
    ("q_b_proj", Io::Inner, None),
    ("kv_b_proj", Io::Inner, None),
    // gated delta-net linear attention (Qwen3-Next, Qwen3.5)
    ("in_proj_qkvz", Io::ReadsHidden, Some("linear_attn")),
    ("in_proj_ba", Io::ReadsHidden, Some("linear_attn")),
    ("in_proj_qkv", Io::ReadsHidden, Some("linear_attn")),
    ("in_proj_z", Io::ReadsHidden, Some("linear_attn")),
    ("in_proj_a", Io::ReadsHidden, Some("linear_attn")),
    ("in_proj_b", Io::ReadsHidden, Some("linear_attn")),
    ("out_proj", Io::WritesHidden, None),
    // MLP
    ("gate_proj", Io::ReadsHidden, Some("gate_up")),
    ("up_proj", Io::ReadsHidden, Some("gate_up")),
    ("gate_up_proj", Io::ReadsHidden, None),
    ("down_proj", Io::WritesHidden, None),
    ("w1", Io::ReadsHidden, Some("w13")),
    ("w3", Io::ReadsHidden, Some("w13")),
    ("w2", Io::WritesHidden, None),
];

/// Expert projection names: (gate, up, down).
pub const EXPERT_NAMES: &[(&str, &str, &str)] =
    &[("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2")];

/// What the vocabulary knows of a dense linear name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseName {
    /// What it reads or writes.
    pub io: Io,
    /// Its shared-input family, if it has one.
    pub family: Option<&'static str>,
}

/// Looks up a dense linear by its last name component.
pub fn dense(name: &str) -> Option<DenseName> {
    DENSE
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(_, io, family)| DenseName { io, family })
}

/// The shared-input family of `name` within a parent that holds `siblings`: MLA's `q_proj`
/// (DeepSeek-V2-Lite, no `q_a_proj`) reads the input of `kv_a_proj_with_mqa`.
pub fn family_in(name: &str, siblings: &[&str]) -> Option<&'static str> {
    if name == "q_proj" && siblings.contains(&"kv_a_proj_with_mqa") {
        return Some("mla");
    }
    dense(name)?.family
}

/// The expert projection a child name is, with the naming it belongs to.
pub fn expert_proj(name: &str) -> Option<(ExpertProj, (&'static str, &'static str, &'static str))> {
    EXPERT_NAMES.iter().find_map(|&names| {
        let proj = if name == names.0 {
            ExpertProj::Gate
        } else if name == names.1 {
            ExpertProj::Up
        } else if name == names.2 {
            ExpertProj::Down
        } else {
            return None;
        };
        Some((proj, names))
    })
}

/// What an expert projection reads or writes.
pub fn expert_io(proj: ExpertProj) -> Io {
    match proj {
        ExpertProj::Gate | ExpertProj::Up => Io::ReadsHidden,
        ExpertProj::Down => Io::WritesHidden,
    }
}

/// Whether a parent module path is attention (for `--scope`): it has an `attn` / `attention`
/// component.
pub fn is_attention_path(path: &str) -> bool {
    path.split('.')
        .any(|c| c.contains("attn") || c.contains("attention"))
}

/// `model_type`s that transformers 5 loads with the LLaVA renames (`conversion_mapping.py`:
/// `"llava"` and the types mapped to it): their checkpoints' `language_model.model.*` is
/// `model.language_model.*` in memory, where ModelOpt names quantizers.
pub const LLAVA_RENAME_MODEL_TYPES: &[&str] = &[
    "llava",
    "mistral3",
    "gemma3",
    "paligemma",
    "aya_vision",
    "got_ocr2",
    "internvl",
    "vipllava",
    "aria",
];

/// `model_type`s whose fused `[E, in, out]` experts are one BMM-style module in memory
/// (transformers' `GptOssExperts`, `Llama4TextExperts`), which ModelOpt quantizes and writes
/// fused; other models' `[E, in, out]` experts are transposed on load and written per expert.
pub const BMM_EXPERT_MODEL_TYPES: &[&str] = &["gpt_oss", "llama4", "llama4_text"];

/// The LLaVA renames, `(checkpoint prefix, in-memory prefix)`, first match wins.
pub const LLAVA_RENAMES: &[(&str, &str)] = &[
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head", "lm_head"),
    ("vision_tower", "model.vision_tower"),
    ("multi_modal_projector", "model.multi_modal_projector"),
];

/// `model_type`s (of the config or its `text_config`) whose token embedding is a subclass
/// of `nn.Embedding` (Gemma's scaled embedding), which ModelOpt does not wrap: not listed in
/// `exclude_modules`.
pub const SCALED_EMBEDDING_MODEL_TYPES: &[&str] =
    &["gemma", "gemma2", "gemma3", "gemma3_text", "vaultgemma"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        assert_eq!(family_in("q_proj", &["q_proj", "k_proj"]), Some("qkv"));
        assert_eq!(
            family_in("q_proj", &["q_proj", "kv_a_proj_with_mqa"]),
            Some("mla")
        );
        assert_eq!(family_in("o_proj", &[]), None);
        assert_eq!(dense("w2").unwrap().io, Io::WritesHidden);
        assert_eq!(dense("lm_head"), None);
        assert_eq!(expert_proj("w3").map(|p| p.0), Some(ExpertProj::Up));
        assert!(is_attention_path("self_attn"));
        assert!(is_attention_path("linear_attn"));
        assert!(!is_attention_path("mlp.shared_expert"));
    }
}
