//! The modules ModelOpt 0.47 never quantizes by default: the one list shardquant applies to
//! every layout, shipped, given or inferred.
//!
//! ModelOpt's presets (`NVFP4_DEFAULT_CFG`, `FP8_DEFAULT_CFG`, `W4A16_NVFP4_CFG`) first enable
//! every `*weight_quantizer` / `*input_quantizer`, then apply
//! `modelopt_recipes/configs/ptq/units/default_disabled_quantizers.yaml`: quantizer-name globs
//! (below, verbatim and in its order) and parent classes (`nn.Embedding`, batch norms,
//! `nn.LeakyReLU`). A module whose quantizers are disabled stays in its original precision and,
//! because it carries (disabled) quantizers, is listed in `exclude_modules`.
//!
//! The globs match quantizer names: `M.weight_quantizer` for a linear `M`, and
//! `M.P_weight_quantizer` for a fused expert parameter `P` of module `M`.

use super::glob_match;

/// `default_disabled_quantizers.yaml` of ModelOpt 0.47.0, in file order.
pub const DISABLED_QUANTIZERS: &[&str] = &[
    "*block_sparse_moe.gate*",
    "*linear_attn.conv1d*",
    "*self_attention.conv1d*",
    "*linear_attn.in_proj_a*",
    "*linear_attn.in_proj_b*",
    "*lm_head*",
    "*mixer.conv1d*",
    "*mlp.gate.*",
    "*mlp.shared_expert_gate.*",
    "*output_layer*",
    "*proj_out.*",
    "*router*",
    "mtp.*",
    "output.*",
    "*embed_vision*",
    "*vision_tower*",
    "*visual*",
    "*vision_model*",
    "*multi_modal_projector*",
];

/// The quantizer name ModelOpt gives a weight tensor's quantizer: `M.weight` →
/// `M.weight_quantizer`; a fused parameter `M.P` (no `.weight` suffix) → `M.P_weight_quantizer`.
pub fn weight_quantizer_name(tensor: &str) -> String {
    match tensor.strip_suffix(".weight") {
        Some(module) => format!("{module}.weight_quantizer"),
        None => format!("{tensor}_weight_quantizer"),
    }
}

/// The default-disabled glob that keeps the weight tensor `tensor` unquantized, if any.
pub fn disabled_pattern(tensor: &str) -> Option<&'static str> {
    let quantizer = weight_quantizer_name(tensor);
    DISABLED_QUANTIZERS
        .iter()
        .copied()
        .find(|p| glob_match(p, &quantizer))
}

/// Whether a 2-D `M.weight` is an embedding table (`nn.Embedding`, disabled by parent class):
/// its module's last name contains `embed` (`embed_tokens`, `word_embeddings`,
/// `embed_tokens_per_layer`, ...) or is GPT-2's `wte` / `wpe`.
pub fn is_embedding(module: &str) -> bool {
    let last = module.rsplit('.').next().unwrap_or(module);
    last.contains("embed") || last == "wte" || last == "wpe"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routers_and_gates_but_not_gate_projections() {
        for t in [
            "model.layers.0.mlp.gate.weight",
            "model.layers.0.block_sparse_moe.gate.weight",
            "model.layers.0.mlp.router.weight",
            "language_model.model.layers.3.feed_forward.router.weight",
            "model.layers.0.mlp.shared_expert_gate.weight",
        ] {
            assert!(disabled_pattern(t).is_some(), "{t}");
        }
        for t in [
            "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.mlp.shared_expert.gate_proj.weight",
            "model.layers.0.mlp.experts.3.gate_proj.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.linear_attn.in_proj_qkvz.weight",
            "model.layers.0.linear_attn.out_proj.weight",
            "model.layers.0.mlp.experts.gate_up_proj",
        ] {
            assert_eq!(disabled_pattern(t), None, "{t}");
        }
    }

    #[test]
    fn linear_attention_towers_heads_and_mtp() {
        let cases = [
            (
                "model.layers.0.linear_attn.conv1d.weight",
                "*linear_attn.conv1d*",
            ),
            (
                "model.layers.0.linear_attn.in_proj_ba.weight",
                "*linear_attn.in_proj_b*",
            ),
            ("lm_head.weight", "*lm_head*"),
            ("language_model.lm_head.weight", "*lm_head*"),
            (
                "vision_tower.transformer.layers.0.attention.q_proj.weight",
                "*vision_tower*",
            ),
            ("model.visual.blocks.0.attn.qkv.weight", "*visual*"),
            (
                "multi_modal_projector.linear_1.weight",
                "*multi_modal_projector*",
            ),
            ("mtp.layers.0.self_attn.q_proj.weight", "mtp.*"),
        ];
        for (t, p) in cases {
            assert_eq!(disabled_pattern(t), Some(p), "{t}");
        }
        // "mtp.*" is anchored: a module merely containing "mtp" is not disabled.
        assert_eq!(disabled_pattern("model.mtp_proj.weight"), None);
    }

    #[test]
    fn quantizer_names_of_plain_and_fused_weights() {
        assert_eq!(weight_quantizer_name("a.b.weight"), "a.b.weight_quantizer");
        assert_eq!(
            weight_quantizer_name("m.experts.gate_up_proj"),
            "m.experts.gate_up_proj_weight_quantizer"
        );
    }

    #[test]
    fn embeddings() {
        assert!(is_embedding("model.embed_tokens"));
        assert!(is_embedding("model.language_model.embed_tokens"));
        assert!(is_embedding("transformer.wte"));
        assert!(!is_embedding("model.layers.0.self_attn.q_proj"));
    }
}
