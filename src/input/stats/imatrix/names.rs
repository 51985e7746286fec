//! llama.cpp tensor names to HF module names: [`llama_cpp_to_hf`].

/// Splits `blk.L.TENSOR.weight` into (L, TENSOR).
pub(super) fn split_block_name(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, tensor) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((layer.parse().ok()?, tensor))
}

/// How an architecture names its modules, as far as the mapping needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Llama-style names; routed experts `mlp.experts.E.{gate,up,down}_proj`, no shared expert.
    Generic,
    /// Mixtral: `block_sparse_moe.experts.E.w{1,3,2}`, router `block_sparse_moe.gate`.
    Mixtral,
    /// Qwen2-MoE: shared expert `mlp.shared_expert` (singular) with `mlp.shared_expert_gate`.
    Qwen2Moe,
    /// DeepSeek V2/V3 (and Kimi K2): MLA projections, `mlp.shared_experts` (plural).
    DeepSeek,
    /// Llama4, GPT-OSS: routed experts are stored fused (3-D), not per expert.
    FusedExperts,
}

fn family(model_type: &str) -> Family {
    let t: String = model_type
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    if t.starts_with("mixtral") {
        Family::Mixtral
    } else if t.starts_with("qwen2moe") {
        Family::Qwen2Moe
    } else if t.starts_with("deepseekv2") || t.starts_with("deepseekv3") || t.starts_with("kimik2")
    {
        Family::DeepSeek
    } else if t.starts_with("llama4") || t.starts_with("gptoss") {
        Family::FusedExperts
    } else {
        Family::Generic
    }
}

/// Maps a llama.cpp tensor name to HF module names (the on-disk weight name without
/// `.weight`) for an architecture, given as config.json's `model_type` (`"qwen3_moe"`) or an
/// `architectures` entry (`"Qwen3MoeForCausalLM"`).
///
/// Returns one module (expert `None`) for a dense tensor, three for a fused `attn_qkv`, and
/// for `*_exps` tensors one module per expert `0..n_experts` with its index, in the
/// architecture's per-expert naming (qwen3_moe: `model.layers.L.mlp.experts.E.gate_proj`;
/// mixtral: `model.layers.L.block_sparse_moe.experts.E.w1`). `None` when the name has no HF
/// counterpart whose input is the same activation (DeepSeek `attn_k_b` / `attn_v_b`, which
/// llama.cpp splits out of `kv_b_proj`), is not a matmul weight, belongs to an architecture
/// that stores its experts fused (Llama4, GPT-OSS), or is an expert tensor with
/// `n_experts == 0`. Architectures not known here get Llama-style names; callers check every
/// mapped name against the checkpoint.
pub fn llama_cpp_to_hf(
    name: &str,
    model_type: &str,
    n_experts: usize,
) -> Option<Vec<(String, Option<usize>)>> {
    if name == "output.weight" {
        return Some(vec![("lm_head".to_string(), None)]);
    }
    let fam = family(model_type);
    let (layer, tensor) = split_block_name(name)?;
    let pre = format!("model.layers.{layer}");
    let one = |m: &str| Some(vec![(format!("{pre}.{m}"), None)]);
    let moe = if fam == Family::Mixtral {
        "block_sparse_moe"
    } else {
        "mlp"
    };
    match tensor {
        "attn_q" => one("self_attn.q_proj"),
        "attn_k" => one("self_attn.k_proj"),
        "attn_v" => one("self_attn.v_proj"),
        "attn_qkv" => Some(
            ["q_proj", "k_proj", "v_proj"]
                .iter()
                .map(|p| (format!("{pre}.self_attn.{p}"), None))
                .collect(),
        ),
        "attn_output" => one("self_attn.o_proj"),
        "attn_q_a" => one("self_attn.q_a_proj"),
        "attn_q_b" => one("self_attn.q_b_proj"),
        "attn_kv_a_mqa" => one("self_attn.kv_a_proj_with_mqa"),
        "attn_kv_b" => one("self_attn.kv_b_proj"),
        "ffn_gate" => one("mlp.gate_proj"),
        "ffn_up" => one("mlp.up_proj"),
        "ffn_down" => one("mlp.down_proj"),
        "ffn_gate_inp" => one(&format!("{moe}.gate")),
        "ffn_gate_inp_shexp" if fam == Family::Qwen2Moe => one("mlp.shared_expert_gate"),
        "nextn.eh_proj" if fam == Family::DeepSeek => one("eh_proj"),
        "nextn.shared_head_head" if fam == Family::DeepSeek => one("shared_head.head"),
        "ffn_gate_shexp" | "ffn_up_shexp" | "ffn_down_shexp" => {
            let shared = match fam {
                Family::Qwen2Moe => "mlp.shared_expert",
                Family::DeepSeek => "mlp.shared_experts",
                _ => return None,
            };
            let proj = &tensor[4..tensor.len() - 6];
            one(&format!("{shared}.{proj}_proj"))
        }
        "ffn_gate_exps" | "ffn_up_exps" | "ffn_down_exps" => {
            if n_experts == 0 || fam == Family::FusedExperts {
                return None;
            }
            let proj = &tensor[4..tensor.len() - 5];
            let leaf = match (fam, proj) {
                (Family::Mixtral, "gate") => "w1".to_string(),
                (Family::Mixtral, "up") => "w3".to_string(),
                (Family::Mixtral, _) => "w2".to_string(),
                _ => format!("{proj}_proj"),
            };
            Some(
                (0..n_experts)
                    .map(|e| (format!("{pre}.{moe}.experts.{e}.{leaf}"), Some(e)))
                    .collect(),
            )
        }
        _ => None,
    }
}
