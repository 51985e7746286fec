#!/usr/bin/env python3
"""Make the tensor lists (name, dtype, shape) of real released checkpoints, without their weights.

Each model is built on PyTorch's meta device by transformers 5.x from its real config.json (written
out below), its state_dict names and shapes are taken, transformers' own reverse weight conversion
(`revert_weight_conversion`, the one `save_pretrained` uses) turns the in-memory names back into the
hub's on-disk names (per-expert tensors, `language_model.model.*` prefixes, ...), and what transformers
does not model is added by hand from the loaders that read those checkpoints (vLLM / SGLang /
the model authors' docs): MTP / NextN layers, FP8 `weight_scale_inv` tensors, and on-disk dtypes.

Output: bench/models/<name>.json.zst (and fixtures/headers/gpt-oss-20b.json uncompressed), each
    {"model", "source", "config", "shards", "tensors": [[name, DTYPE, [shape...]], ...]}
with tensors sorted by name (the order of a sorted index's weight_map).

Run (needs torch + transformers 5.x on the Python that runs it, and the `zstd` CLI):
    /work/venv-modelopt/bin/python bench/models/make_tensor_lists.py            # all models
    /work/venv-modelopt/bin/python bench/models/make_tensor_lists.py gpt-oss-20b  # some
    ... --check   # only build and print the checks, write nothing
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURE = os.path.join(ROOT, "fixtures", "headers", "gpt-oss-20b.json")

BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "U8": 1, "I64": 8}

# --------------------------------------------------------------------------------------------
# Real config.json files (values as the hub has them; see SOURCES for what was checked where).
# --------------------------------------------------------------------------------------------


def _alt(n):
    return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]


GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "eos_token_id": 200002,
    "experts_per_token": 4,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2880,
    "initial_context_length": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 2880,
    "layer_types": _alt(24),
    "max_position_embeddings": 131072,
    "model_type": "gpt_oss",
    "num_attention_heads": 64,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 24,
    "num_key_value_heads": 8,
    "num_local_experts": 32,
    "output_router_logits": False,
    "pad_token_id": 199999,
    "quantization_config": {
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
        "quant_method": "mxfp4",
    },
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "rope_type": "yarn",
        "truncate": False,
    },
    "rope_theta": 150000,
    "router_aux_loss_coef": 0.9,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "transformers_version": "4.55.0.dev0",
    "use_cache": True,
    "vocab_size": 201088,
}

GPT_OSS_120B = dict(GPT_OSS_20B, layer_types=_alt(36), num_hidden_layers=36, num_local_experts=128)

GLM_45 = {
    "architectures": ["Glm4MoeForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "pad_token_id": 151329,
    "eos_token_id": [151329, 151336, 151338],
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 5120,
    "partial_rotary_factor": 0.5,
    "initializer_range": 0.02,
    "intermediate_size": 12288,
    "max_position_embeddings": 131072,
    "model_type": "glm4_moe",
    "moe_intermediate_size": 1536,
    "norm_topk_prob": True,
    "num_attention_heads": 96,
    "n_group": 1,
    "topk_group": 1,
    "n_routed_experts": 160,
    "n_shared_experts": 1,
    "routed_scaling_factor": 2.5,
    "num_experts_per_tok": 8,
    "first_k_dense_replace": 3,
    "num_hidden_layers": 92,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "num_nextn_predict_layers": 1,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.54.0",
    "use_cache": True,
    "use_qk_norm": True,
    "vocab_size": 151552,
}

GLM_45_AIR = dict(
    GLM_45,
    hidden_size=4096,
    intermediate_size=10944,
    moe_intermediate_size=1408,
    n_routed_experts=128,
    routed_scaling_factor=1.0,
    first_k_dense_replace=1,
    num_hidden_layers=46,
    use_qk_norm=False,
)

GLM_46 = dict(GLM_45, max_position_embeddings=202752, transformers_version="4.56.0.dev0")

QWEN3_NEXT = {
    "architectures": ["Qwen3NextForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "full_attention_interval": 4,
    "head_dim": 256,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_value_head_dim": 128,
    "max_position_embeddings": 262144,
    "mlp_only_layers": [],
    "model_type": "qwen3_next",
    "moe_intermediate_size": 512,
    "norm_topk_prob": True,
    "num_attention_heads": 16,
    "num_experts": 512,
    "num_experts_per_tok": 10,
    "num_hidden_layers": 48,
    "num_key_value_heads": 2,
    "output_router_logits": False,
    "partial_rotary_factor": 0.25,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000000,
    "router_aux_loss_coef": 0.001,
    "shared_expert_intermediate_size": 512,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.57.0.dev0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

QWEN2_57B = {
    "architectures": ["Qwen2MoeForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2_moe",
    "moe_intermediate_size": 2560,
    "norm_topk_prob": False,
    "num_attention_heads": 28,
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001,
    "shared_expert_intermediate_size": 20480,
    "sliding_window": 65536,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

QWEN15_MOE = {
    "architectures": ["Qwen2MoeForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 5632,
    "max_position_embeddings": 8192,
    "max_window_layers": 21,
    "model_type": "qwen2_moe",
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "num_key_value_heads": 16,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.39.0.dev0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
    "decoder_sparse_step": 1,
    "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632,
    "num_experts_per_tok": 4,
    "num_experts": 60,
    "norm_topk_prob": False,
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
}

QWEN3_30B = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 6144,
    "max_position_embeddings": 40960,
    "max_window_layers": 48,
    "mlp_only_layers": [],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 768,
    "norm_topk_prob": True,
    "num_attention_heads": 32,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 48,
    "num_key_value_heads": 4,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

QWEN3_235B = dict(
    QWEN3_30B,
    hidden_size=4096,
    intermediate_size=12288,
    max_window_layers=94,
    moe_intermediate_size=1536,
    num_attention_heads=64,
    num_hidden_layers=94,
)

_DS_AUTO_MAP = {
    "AutoConfig": "configuration_deepseek.DeepseekV3Config",
    "AutoModel": "modeling_deepseek.DeepseekV3Model",
    "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM",
}

DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "auto_map": _DS_AUTO_MAP,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "ep_size": 1,
    "first_k_dense_replace": 3,
    "hidden_act": "silu",
    "hidden_size": 7168,
    "initializer_range": 0.02,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048,
    "moe_layer_freq": 1,
    "n_group": 8,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 61,
    "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    },
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "tie_word_embeddings": False,
    "topk_group": 4,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1",
    "use_cache": True,
    "v_head_dim": 128,
    "vocab_size": 129280,
}

KIMI_K2 = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "auto_map": _DS_AUTO_MAP,
    "aux_loss_alpha": 0.001,
    "bos_token_id": 163584,
    "eos_token_id": 163585,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 7168,
    "initializer_range": 0.02,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 131072,
    "model_type": "kimi_k2",
    "moe_intermediate_size": 2048,
    "moe_layer_freq": 1,
    "n_group": 1,
    "n_routed_experts": 384,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 64,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 61,
    "num_key_value_heads": 64,
    "num_nextn_predict_layers": 0,
    "pretraining_tp": 1,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    },
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 1.0,
        "beta_slow": 1.0,
        "factor": 32.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "rope_theta": 50000.0,
    "routed_scaling_factor": 2.827,
    "scoring_func": "sigmoid",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": 1,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.48.3",
    "use_cache": True,
    "v_head_dim": 128,
    "vocab_size": 163840,
}


def _llama4(text_overrides, top_overrides=None):
    cfg = {
        "architectures": ["Llama4ForConditionalGeneration"],
        "boi_token_index": 200080,
        "eoi_token_index": 200081,
        "image_token_index": 200092,
        "model_type": "llama4",
        "text_config": {
            "_attn_implementation_autoset": True,
            "attention_bias": False,
            "attention_chunk_size": 8192,
            "attention_dropout": 0.0,
            "bos_token_id": 200000,
            "eos_token_id": [200001, 200007, 200008],
            "for_llm_compressor": False,
            "head_dim": 128,
            "hidden_act": "silu",
            "hidden_size": 5120,
            "initializer_range": 0.02,
            "interleave_moe_layer_step": 1,
            "intermediate_size": 8192,
            "intermediate_size_mlp": 16384,
            "max_position_embeddings": 10485760,
            "model_type": "llama4_text",
            "no_rope_layers": [],
            "num_attention_heads": 40,
            "num_experts_per_tok": 1,
            "num_hidden_layers": 48,
            "num_key_value_heads": 8,
            "num_local_experts": 16,
            "output_router_logits": False,
            "pad_token_id": 200018,
            "rms_norm_eps": 1e-05,
            "rope_scaling": {
                "factor": 16.0,
                "high_freq_factor": 1.0,
                "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192,
                "rope_type": "llama3",
            },
            "rope_theta": 500000.0,
            "router_aux_loss_coef": 0.001,
            "router_jitter_noise": 0.0,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "use_qk_norm": True,
            "vocab_size": 202048,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0.dev0",
        "vision_config": {
            "_attn_implementation_autoset": True,
            "attention_dropout": 0.0,
            "hidden_act": "gelu",
            "hidden_size": 1408,
            "image_size": 336,
            "initializer_range": 0.02,
            "intermediate_size": 5632,
            "model_type": "llama4_vision_model",
            "multi_modal_projector_bias": False,
            "norm_eps": 1e-05,
            "num_attention_heads": 16,
            "num_channels": 3,
            "num_hidden_layers": 34,
            "patch_size": 14,
            "pixel_shuffle_ratio": 0.5,
            "projector_dropout": 0.0,
            "projector_input_dim": 4096,
            "projector_output_dim": 4096,
            "rope_theta": 10000,
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "default",
            "vision_output_dim": 4096,
        },
    }
    cfg["text_config"].update(text_overrides)
    cfg.update(top_overrides or {})
    return cfg


LLAMA4_SCOUT = _llama4({})
LLAMA4_MAVERICK = _llama4(
    {
        "interleave_moe_layer_step": 2,
        "max_position_embeddings": 1048576,
        "num_local_experts": 128,
        "rope_scaling": None,
        "use_qk_norm": False,
    }
)

MISTRAL_SMALL_31 = {
    "architectures": ["Mistral3ForConditionalGeneration"],
    "image_token_index": 10,
    "model_type": "mistral3",
    "multimodal_projector_bias": False,
    "projector_hidden_act": "gelu",
    "spatial_merge_size": 2,
    "text_config": {
        "attention_dropout": 0.0,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 5120,
        "initializer_range": 0.02,
        "intermediate_size": 32768,
        "max_position_embeddings": 131072,
        "model_type": "mistral",
        "num_attention_heads": 32,
        "num_hidden_layers": 40,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000000.0,
        "sliding_window": None,
        "use_cache": True,
        "vocab_size": 131072,
    },
    "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0",
    "vision_config": {
        "attention_dropout": 0.0,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 1024,
        "image_size": 1540,
        "initializer_range": 0.02,
        "intermediate_size": 4096,
        "model_type": "pixtral",
        "num_attention_heads": 16,
        "num_channels": 3,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "rope_theta": 10000.0,
    },
    "vision_feature_layer": -1,
}

GEMMA3_27B = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "boi_token_index": 255999,
    "eoi_token_index": 256000,
    "eos_token_id": [1, 106],
    "image_token_index": 262144,
    "initializer_range": 0.02,
    "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {
        "head_dim": 128,
        "hidden_size": 5376,
        "intermediate_size": 21504,
        "model_type": "gemma3_text",
        "num_attention_heads": 32,
        "num_hidden_layers": 62,
        "num_key_value_heads": 16,
        "query_pre_attn_scalar": 168,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0",
    "vision_config": {
        "hidden_size": 1152,
        "image_size": 896,
        "intermediate_size": 4304,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "patch_size": 14,
        "vision_use_head": False,
    },
}

GEMMA3_1B = {
    "architectures": ["Gemma3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "bos_token_id": 2,
    "cache_implementation": "hybrid",
    "eos_token_id": [1, 106],
    "final_logit_softcapping": None,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 1152,
    "initializer_range": 0.02,
    "intermediate_size": 6912,
    "max_position_embeddings": 32768,
    "model_type": "gemma3_text",
    "num_attention_heads": 4,
    "num_hidden_layers": 26,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": 512,
    "sliding_window_pattern": 6,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0",
    "use_cache": True,
    "vocab_size": 262144,
}

PHI3_MINI_4K = {
    "_name_or_path": "Phi-3-mini-4k-instruct",
    "architectures": ["Phi3ForCausalLM"],
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_phi3.Phi3Config",
        "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM",
    },
    "bos_token_id": 1,
    "embd_pdrop": 0.0,
    "eos_token_id": 32000,
    "hidden_act": "silu",
    "hidden_size": 3072,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 4096,
    "model_type": "phi3",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "original_max_position_embeddings": 4096,
    "pad_token_id": 32000,
    "resid_pdrop": 0.0,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "sliding_window": 2047,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.2",
    "use_cache": True,
    "attention_bias": False,
    "vocab_size": 32064,
}

PHI4 = {
    "_name_or_path": "phi-4",
    "architectures": ["Phi3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 100257,
    "embd_pdrop": 0.0,
    "eos_token_id": 100265,
    "hidden_act": "silu",
    "hidden_size": 5120,
    "initializer_range": 0.02,
    "intermediate_size": 17920,
    "max_position_embeddings": 16384,
    "model_type": "phi3",
    "num_attention_heads": 40,
    "num_hidden_layers": 40,
    "num_key_value_heads": 10,
    "original_max_position_embeddings": 16384,
    "pad_token_id": 100349,
    "resid_pdrop": 0.0,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 250000,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.47.0",
    "use_cache": True,
    "vocab_size": 100352,
}

MINIMAX_M2 = {
    "architectures": ["MiniMaxM2ForCausalLM"],
    "attn_type_list": [1] * 62,
    "auto_map": {
        "AutoConfig": "configuration_minimax_m2.MiniMaxM2Config",
        "AutoModelForCausalLM": "modeling_minimax_m2.MiniMaxM2ForCausalLM",
    },
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 3072,
    "intermediate_size": 1536,
    "max_position_embeddings": 196608,
    "model_type": "minimax_m2",
    "mtp_transformer_layers": 1,
    "num_attention_heads": 48,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 62,
    "num_key_value_heads": 8,
    "num_local_experts": 256,
    "num_mtp_modules": 3,
    "qk_norm_type": "per_layer",
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "float8_e4m3fn",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
        "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"],
    },
    "rms_norm_eps": 1e-06,
    "rope_theta": 5000000,
    "rotary_dim": 64,
    "scoring_func": "sigmoid",
    "shared_intermediate_size": 0,
    "tie_word_embeddings": False,
    "transformers_version": "4.46.1",
    "use_cache": True,
    "use_mtp": True,
    "use_qk_norm": True,
    "use_routing_bias": True,
    "vocab_size": 200064,
}

QWEN3_VL_30B = {
    "architectures": ["Qwen3VLMoeForConditionalGeneration"],
    "image_token_id": 151655,
    "model_type": "qwen3_vl_moe",
    "text_config": {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "decoder_sparse_step": 1,
        "dtype": "bfloat16",
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 6144,
        "max_position_embeddings": 262144,
        "mlp_only_layers": [],
        "model_type": "qwen3_vl_moe_text",
        "moe_intermediate_size": 768,
        "norm_topk_prob": True,
        "num_attention_heads": 32,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "num_hidden_layers": 48,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        "rope_theta": 5000000,
        "use_cache": True,
        "vocab_size": 151936,
    },
    "tie_word_embeddings": False,
    "transformers_version": "4.57.0.dev0",
    "video_token_id": 151656,
    "vision_config": {
        "deepstack_visual_indexes": [8, 16, 24],
        "depth": 27,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 1152,
        "in_channels": 3,
        "initializer_range": 0.02,
        "intermediate_size": 4304,
        "model_type": "qwen3_vl_moe",
        "num_heads": 16,
        "num_position_embeddings": 2304,
        "out_hidden_size": 2048,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "vision_end_token_id": 151653,
    "vision_start_token_id": 151652,
}

LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}

# --------------------------------------------------------------------------------------------
# Building: transformers on the meta device, then back to hub names.
# --------------------------------------------------------------------------------------------


def hf_tensors(config: dict, arch: str | None = None, model_type: str | None = None, **overrides):
    """[(name, shape)] of the hub-format state dict transformers would save for `config`."""
    import torch
    import transformers
    from transformers import CONFIG_MAPPING
    from transformers.core_model_loading import revert_weight_conversion

    cfg = copy.deepcopy(config)
    for k in ("quantization_config", "auto_map", "_name_or_path"):
        cfg.pop(k, None)
    mt = model_type or cfg.pop("model_type")
    cfg.pop("model_type", None)
    cfg.update(overrides)
    conf = CONFIG_MAPPING[mt](**cfg)
    cls = getattr(transformers, arch or config["architectures"][0])
    with torch.device("meta"):
        model = cls(conf)
    sd = model.state_dict()
    sd = revert_weight_conversion(model, sd)
    return [(k, tuple(int(d) for d in v.shape)) for k, v in sd.items()]


def fp8_block_scale(shape, block=128):
    return (math.ceil(shape[0] / block), math.ceil(shape[1] / block))


def to_fp8(tensors, is_quantized):
    """Block-FP8 checkpoint: each quantized 2-D linear weight becomes F8_E4M3 with a F32 weight_scale_inv."""
    out = []
    for name, dtype, shape in tensors:
        if is_quantized(name, shape):
            assert len(shape) == 2 and name.endswith(".weight"), name
            out.append((name, "F8_E4M3", shape))
            out.append((name[: -len("weight")] + "weight_scale_inv", "F32", fp8_block_scale(shape)))
        else:
            out.append((name, dtype, shape))
    return out


def with_dtype(pairs, rule=lambda n, s: "BF16"):
    return [(n, rule(n, s), s) for n, s in pairs]


def layer_of(name):
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


# ---- per-family builders -------------------------------------------------------------------


def build_gpt_oss(cfg):
    return with_dtype(hf_tensors(cfg))


def gpt_oss_mxfp4_bytes(tensors, cfg):
    """Bytes of the original MXFP4 release (experts as U8 *_blocks [E,out,in/32,16] + U8 *_scales [E,out,in/32])."""
    total = 0
    for name, dtype, shape in tensors:
        if name.endswith("mlp.experts.gate_up_proj") or name.endswith("mlp.experts.down_proj"):
            e, k, n = shape  # on-disk BF16 form is [E, in, out]
            total += e * n * (k // 32) * 16 + e * n * (k // 32)
        else:
            total += math.prod(shape) * BYTES[dtype]
    return total


def build_glm(cfg, mtp_shared_copies: bool):
    """Glm4MoeForCausalLM + the NextN layer at index num_hidden_layers (a full MoE decoder layer + extras)."""
    n = cfg["num_hidden_layers"]
    h = cfg["hidden_size"]
    v = cfg["vocab_size"]
    pairs = hf_tensors(cfg, num_hidden_layers=n + cfg["num_nextn_predict_layers"])
    for i in range(n, n + cfg["num_nextn_predict_layers"]):
        p = f"model.layers.{i}."
        pairs += [(p + "eh_proj.weight", (h, 2 * h)), (p + "enorm.weight", (h,)), (p + "hnorm.weight", (h,)),
                  (p + "shared_head.norm.weight", (h,))]
        if mtp_shared_copies:
            pairs += [(p + "embed_tokens.weight", (v, h)), (p + "shared_head.head.weight", (v, h))]

    def rule(name, shape):
        return "F32" if name.endswith("e_score_correction_bias") else "BF16"

    return with_dtype(pairs, rule)


def build_qwen3_next(cfg):
    h = cfg["hidden_size"]
    pairs = hf_tensors(cfg)
    # mtp.layers.0 is one full-attention MoE decoder layer; take a full-attention layer's tensors.
    full = cfg["full_attention_interval"] - 1
    src = f"model.layers.{full}."
    mtp = [("mtp.layers.0." + k[len(src):], s) for k, s in pairs if k.startswith(src)]
    mtp += [("mtp.fc.weight", (h, 2 * h)), ("mtp.norm.weight", (h,)),
            ("mtp.pre_fc_norm_embedding.weight", (h,)), ("mtp.pre_fc_norm_hidden.weight", (h,))]
    return with_dtype(pairs + mtp)


def build_plain(cfg, tied=False, **kw):
    pairs = hf_tensors(cfg, **kw)
    if tied:
        pairs = [(k, s) for k, s in pairs if not k.endswith("lm_head.weight")]
    return with_dtype(pairs)


def build_deepseek(cfg):
    """DeepSeek-V3 family, FP8 block-scaled as released; MTP layers at index num_hidden_layers."""
    n = cfg["num_hidden_layers"]
    nn_ = cfg.get("num_nextn_predict_layers", 0)
    h = cfg["hidden_size"]
    v = cfg["vocab_size"]
    build_cfg = dict(cfg, model_type="deepseek_v3")
    pairs = hf_tensors(build_cfg, num_hidden_layers=n + nn_)
    for i in range(n, n + nn_):
        p = f"model.layers.{i}."
        pairs += [(p + "embed_tokens.weight", (v, h)), (p + "enorm.weight", (h,)), (p + "hnorm.weight", (h,)),
                  (p + "eh_proj.weight", (h, 2 * h)), (p + "shared_head.norm.weight", (h,)),
                  (p + "shared_head.head.weight", (v, h))]

    def rule(name, shape):
        return "F32" if name.endswith("e_score_correction_bias") else "BF16"

    def quantized(name, shape):
        return layer_of(name) is not None and bool(re.search(
            r"\.(q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$", name))

    return to_fp8(with_dtype(pairs, rule), quantized)


def build_minimax_m2(cfg):
    pairs = hf_tensors(cfg)

    def rule(name, shape):
        if name.endswith("block_sparse_moe.gate.weight") or name.endswith("e_score_correction_bias"):
            return "F32"
        return "BF16"

    def quantized(name, shape):
        return bool(re.search(r"\.(self_attn\.[qkvo]_proj|experts\.\d+\.w[123])\.weight$", name))

    return to_fp8(with_dtype(pairs, rule), quantized)


def build_gemma3_vlm(cfg):
    pairs = hf_tensors(cfg)
    out = []
    for k, s in pairs:
        if k == "language_model.lm_head.weight":
            continue  # tied to embed_tokens; not on disk
        if k.startswith("vision_tower."):
            k = "vision_tower.vision_model." + k[len("vision_tower."):]
        out.append((k, s))
    return with_dtype(out)


def build_qwen3_vl_moe(cfg):
    out = []
    for k, s in hf_tensors(cfg):
        if k.endswith("mlp.experts.gate_up_proj") or k.endswith("mlp.experts.down_proj"):
            s = (s[0], s[2], s[1])  # on disk [E, in, out]; transformers 5 keeps [E, out, in] in memory
        out.append((k, s))
    return with_dtype(out)


# --------------------------------------------------------------------------------------------
# The models, with what is known about each hub repo (for the checks) and where it came from.
# --------------------------------------------------------------------------------------------

MODELS = {
    "gpt-oss-20b": dict(
        hub="openai/gpt-oss-20b", config=GPT_OSS_20B, build=build_gpt_oss, shards=None,
        params=20_914_757_184, params_tol=0.0, mxfp4_total_size=13_761_264_768,
    ),
    "gpt-oss-120b": dict(
        hub="openai/gpt-oss-120b", config=GPT_OSS_120B, build=build_gpt_oss, shards=None,
        params=116_829_156_672, params_tol=0.0, mxfp4_total_size=65_248_815_744,
    ),
    "GLM-4.5": dict(
        hub="zai-org/GLM-4.5", config=GLM_45, build=lambda c: build_glm(c, True), shards=93,
        params=358_337_791_296, params_tol=0.0,
    ),
    "GLM-4.5-Air": dict(
        hub="zai-org/GLM-4.5-Air", config=GLM_45_AIR, build=lambda c: build_glm(c, True), shards=47,
        params=110_468_824_832, params_tol=0.0,
    ),
    "GLM-4.6": dict(
        hub="zai-org/GLM-4.6", config=GLM_46, build=lambda c: build_glm(c, False), shards=92,
        params=357e9, params_tol=0.003,
    ),
    "Qwen3-Next-80B-A3B-Instruct": dict(
        hub="Qwen/Qwen3-Next-80B-A3B-Instruct", config=QWEN3_NEXT, build=build_qwen3_next, shards=41,
        params=81_324_862_720, params_tol=0.0,
    ),
    "Qwen2-57B-A14B-Instruct": dict(
        hub="Qwen/Qwen2-57B-A14B-Instruct", config=QWEN2_57B, build=build_plain, shards=None,
        params=57.4e9, params_tol=0.003,
    ),
    "Qwen1.5-MoE-A2.7B": dict(
        hub="Qwen/Qwen1.5-MoE-A2.7B", config=QWEN15_MOE, build=build_plain, shards=8,
        params=14_315_784_192, params_tol=0.0, count=4_659, total_size=28_631_568_384,
    ),
    "Qwen3-30B-A3B": dict(
        hub="Qwen/Qwen3-30B-A3B", config=QWEN3_30B, build=build_plain, shards=16,
        params=30_532_122_624, params_tol=0.0, total_size=61_064_245_248,
    ),
    "Qwen3-235B-A22B": dict(
        hub="Qwen/Qwen3-235B-A22B", config=QWEN3_235B, build=build_plain, shards=118,
        params=235_093_634_560, params_tol=0.0, count=36_945, total_size=470_187_269_120,
    ),
    "DeepSeek-V3": dict(
        hub="deepseek-ai/DeepSeek-V3", config=DEEPSEEK_V3, build=build_deepseek, shards=163,
        params=685e9, params_tol=0.002, file_bytes=688_586_727_753,
    ),
    "Kimi-K2-Instruct": dict(
        hub="moonshotai/Kimi-K2-Instruct", config=KIMI_K2, build=build_deepseek, shards=61,
        params=1.03e12, params_tol=0.005,
    ),
    "Llama-4-Scout-17B-16E-Instruct": dict(
        hub="meta-llama/Llama-4-Scout-17B-16E-Instruct", config=LLAMA4_SCOUT, build=build_plain, shards=50,
        params=108_641_793_536, params_tol=0.0,
    ),
    "Llama-4-Maverick-17B-128E-Instruct": dict(
        hub="meta-llama/Llama-4-Maverick-17B-128E-Instruct", config=LLAMA4_MAVERICK, build=build_plain,
        shards=None, params=401_583_781_376, params_tol=0.0,
    ),
    "Mistral-Small-3.1-24B-Instruct-2503": dict(
        hub="mistralai/Mistral-Small-3.1-24B-Instruct-2503", config=MISTRAL_SMALL_31, build=build_plain,
        shards=10, params=24_011_361_280, params_tol=0.0,
    ),
    "gemma-3-27b-it": dict(
        hub="google/gemma-3-27b-it", config=GEMMA3_27B, build=build_gemma3_vlm, shards=12,
        params=27_432_406_640, params_tol=0.0, total_size=54_864_813_280,
    ),
    "gemma-3-1b-it": dict(
        hub="google/gemma-3-1b-it", config=GEMMA3_1B, build=lambda c: build_plain(c, tied=True), shards=1,
        params=999_885_952, params_tol=0.0,
    ),
    "Phi-3-mini-4k-instruct": dict(
        hub="microsoft/Phi-3-mini-4k-instruct", config=PHI3_MINI_4K, build=build_plain, shards=2,
        params=3_821_079_552, params_tol=0.0,
    ),
    "phi-4": dict(
        hub="microsoft/phi-4", config=PHI4, build=build_plain, shards=6,
        params=14.7e9, params_tol=0.005, total_size=29_319_014_400,
    ),
    "MiniMax-M2": dict(
        hub="MiniMaxAI/MiniMax-M2", config=MINIMAX_M2, build=build_minimax_m2, shards=None,
        params=229e9, params_tol=0.005, total_size=230_121_630_720, fp8_count=47_864,
    ),
    "Qwen3-VL-30B-A3B-Instruct": dict(
        hub="Qwen/Qwen3-VL-30B-A3B-Instruct", config=QWEN3_VL_30B, build=build_qwen3_vl_moe, shards=13,
        params=31_070_754_032, params_tol=0.0,
    ),
    "Llama-3.1-8B-Instruct": dict(
        hub="meta-llama/Llama-3.1-8B-Instruct", config=LLAMA31_8B, build=build_plain, shards=4,
        params=8_030_261_248, params_tol=0.0, total_size=16_060_522_496,
    ),
}

# What each list rests on, and what was checked (written into "source").
COMMON = (
    "Built by bench/models/make_tensor_lists.py: transformers {tf} model on the meta device from this "
    "config.json, state_dict names/shapes turned back into hub names by transformers' "
    "revert_weight_conversion (what save_pretrained writes), then the additions/dtypes listed here. "
)

SOURCES = {
    "gpt-oss-20b": (
        "BF16 form that users quantize from (as in the BF16 re-uploads, e.g. unsloth/gpt-oss-20b-BF16): "
        "experts fused on disk as mlp.experts.gate_up_proj [E, H, 2I] (gate/up interleaved along the last "
        "dim) + gate_up_proj_bias [E, 2I], down_proj [E, I, H] + down_proj_bias [E, H]; router "
        "mlp.router.weight/bias; self_attn.sinks [heads]; q/k/v/o biases; every tensor BF16. The original "
        "openai/gpt-oss-20b release (files model-0000{{0,1,2}}-of-00002.safetensors) instead stores the experts "
        "in MXFP4 as mlp.experts.gate_up_proj_blocks U8 [E, 2I, H/32, 16] + gate_up_proj_scales U8 "
        "[E, 2I, H/32] and down_proj_blocks U8 [E, H, I/32, 16] + down_proj_scales U8 [E, H, I/32] (biases, "
        "sinks, router, attention, embeddings BF16; 19 tensors a layer instead of 17) with quantization_config "
        "{{quant_method: mxfp4}}. config below is openai's config.json verbatim (compared with a public copy of "
        "the hub file) MINUS quantization_config, since these tensors are BF16. Checked: the same shapes in "
        "MXFP4 form add up to {mxfp4} bytes = metadata.total_size of the original index (public copy, whose "
        "weight_map lists the same per-layer names); parameter count {params} = the hub page's. Shard count of "
        "a BF16 re-upload not confirmed (null)."
    ),
    "gpt-oss-120b": (
        "BF16 form, same layout as gpt-oss-20b (see that file): experts fused as mlp.experts.gate_up_proj "
        "[E, H, 2I] + gate_up_proj_bias, down_proj [E, I, H] + down_proj_bias, mlp.router.weight/bias, "
        "self_attn.sinks; all BF16. The original openai release (15 files) stores the experts as MXFP4 "
        "gate_up_proj_blocks/_scales and down_proj_blocks/_scales (U8) with quantization_config mxfp4. config is "
        "openai's gpt-oss-20b config.json (verified copy) with the 120b differences (36 layers, 128 experts, "
        "layer_types x36) and quantization_config removed; the 120b file itself was not seen. Checked: the "
        "MXFP4 form of these shapes adds up to {mxfp4} bytes = the tensor bytes of the original 15-file release "
        "(public record); parameter count {params} = the hub page's. Shard count of a BF16 re-upload not "
        "confirmed (null)."
    ),
    "GLM-4.5": (
        "BF16. NextN/MTP layer model.layers.92 = a full MoE decoder layer plus eh_proj [H, 2H], enorm, hnorm, "
        "shared_head.norm, and for GLM-4.5 also the copies model.layers.92.embed_tokens.weight and "
        "model.layers.92.shared_head.head.weight (vLLM PR #27597: the GLM-4.5 checkpoint includes these two, "
        "GLM-4.6's does not). mlp.gate.e_score_correction_bias F32 (Zhipu's SGLang PR #8729 keeps it FP32 'as in "
        "training'; FreeToken PR #469 calls it FP32 in the checkpoint) - not read from a file header. Checked: "
        "parameter count {params} = the hub page's (358.3B; it includes the two vocab-sized MTP copies). config "
        "values from memory of the hub file; structural keys cross-checked with NeMo Megatron-Bridge docs (92 "
        "layers, first 3 dense, 160 experts top-8, 5120/12288/1536, 96 heads / 8 kv, qk-norm, vocab 151552, "
        "MTP 1 layer); non-structural keys (token ids, transformers_version) not confirmed. Shard count 93 from "
        "memory, not confirmed. Bytes not compared (index total_size not found)."
    ),
    "GLM-4.5-Air": (
        "BF16. NextN layer model.layers.46 = full MoE decoder layer + eh_proj, enorm, hnorm, shared_head.norm, "
        "embed_tokens, shared_head.head (llama.cpp PR #14939 lists all six NextN tensors for layer 46 of "
        "GLM-4.5-Air). e_score_correction_bias F32 (as GLM-4.5; not read from a header). Checked: parameter "
        "count {params} = the hub page's (110.5B); structural config keys match NeMo Megatron-Bridge docs (46 "
        "layers, first dense, 128 experts, 4096/10944/1408, 96/8 heads, no qk-norm). Shard count 47 from "
        "memory, not confirmed."
    ),
    "GLM-4.6": (
        "BF16, same architecture as GLM-4.5 but max_position_embeddings 202752; its NextN layer 92 has "
        "eh_proj, enorm, hnorm, shared_head.norm and NO embed_tokens / shared_head.head copies (vLLM PR "
        "#27597, which fixed loading GLM-4.6's MTP for exactly that). e_score_correction_bias F32 (not read "
        "from a header). Checked: parameter count {params} vs the hub page's ~357B (GLM-4.5's minus the two "
        "copies). Non-structural config keys copied from GLM-4.5 (not confirmed). Shard count 92 from memory, "
        "not confirmed."
    ),
    "Qwen3-Next-80B-A3B-Instruct": (
        "BF16. 48 layers, every 4th (3, 7, ..., 47) full attention (self_attn.q_proj carries the output gate: "
        "[2*heads*head_dim, H] = [8192, 2048], q_norm/k_norm [256]), the others Gated DeltaNet linear attention "
        "(linear_attn.in_proj_qkvz [12288, 2048], in_proj_ba [64, 2048], conv1d [8192, 1, 4], dt_bias [32], "
        "A_log [32], norm [128], out_proj [2048, 4096]); every layer MoE with 512 per-expert experts "
        "(mlp.experts.N.{{gate,up,down}}_proj), mlp.gate, mlp.shared_expert.*, mlp.shared_expert_gate [1, H]. "
        "MTP: mtp.fc [H, 2H], mtp.norm, mtp.pre_fc_norm_embedding, mtp.pre_fc_norm_hidden, mtp.layers.0.* (one "
        "full-attention MoE layer), as vLLM's qwen3_next_mtp loader and transformers' MtpModel mapping read "
        "them; no mtp embedding or head (shared with the main model). Checked: parameter count {params} = the "
        "hub page's (81.3B). NOT confirmed: A_log / dt_bias / linear_attn.norm dtypes are given as BF16 (the "
        "later Qwen3.5 checkpoints store A_log and linear_attn.norm in F32; Qwen3-Next's may too - a few KB); "
        "shard count 41 from memory."
    ),
    "Qwen2-57B-A14B-Instruct": (
        "BF16, Qwen2MoeForCausalLM: per-expert mlp.experts.N.{{gate,up,down}}_proj, mlp.gate, "
        "mlp.shared_expert.*, mlp.shared_expert_gate [1, H], q/k/v biases. Checked: parameter count {params} "
        "vs the hub page's 57.4B (within 0.3%). config from memory; shard count not confirmed (null)."
    ),
    "Qwen1.5-MoE-A2.7B": (
        "BF16, Qwen2MoeForCausalLM with 60 experts top-4, shared expert 5632, q/k/v biases. Checked against a "
        "public copy of the hub index: {count} weight_map entries and total_size {bytes} both equal, 8 shards; "
        "parameter count {params} = the hub page's. config from memory."
    ),
    "Qwen3-30B-A3B": (
        "BF16, per-expert hub names mlp.experts.N.{{gate,up,down}}_proj.weight, mlp.gate.weight, "
        "q_norm/k_norm, no biases. Checked: bytes {bytes} = the hub index's total_size (public copies, 16 "
        "shards model-000NN-of-00016); parameter count {params} = the hub page's. config from memory."
    ),
    "Qwen3-235B-A22B": (
        "BF16, same layout as Qwen3-30B-A3B (94 layers, 128 experts, hidden 4096, q_proj 8192 wide). Checked "
        "against public records of the hub index: {count} names (said to match the official index name by "
        "name) and total_size {bytes}; parameter count {params}. Shard count 118 from memory, not confirmed."
    ),
    "DeepSeek-V3": (
        "FP8 block-scaled as released: every linear weight of the decoder layers (self_attn q_a_proj, q_b_proj, "
        "kv_a_proj_with_mqa, kv_b_proj, o_proj; dense mlp and shared_experts gate/up/down; every expert) is "
        "F8_E4M3 with a F32 weight_scale_inv [ceil(out/128), ceil(in/128)]; embed_tokens, lm_head, norms, "
        "mlp.gate.weight (router) BF16; mlp.gate.e_score_correction_bias F32. Layers 0-2 dense, 3-60 MoE "
        "(256 experts + 1 shared), MTP layer 61 = full MoE decoder layer (FP8 as above) + embed_tokens, enorm, "
        "hnorm, eh_proj [7168, 14336] (BF16: vLLM's deepseek_mtp builds it as a plain nn.Linear), "
        "shared_head.norm, shared_head.head (README_WEIGHTS.md of the release describes the MTP module and the "
        "FP8 format). Counts: {count} tensors, {fp8} F8_E4M3 weights (= 59 MoE layers x (256x3 experts + 3 "
        "shared + 5 attention) + 3 dense layers x 8) and as many weight_scale_inv. NOTE: the '~94k tensors / "
        "46,848 FP8 weights' expected in the request do not fit this architecture (46,848 = 61 x 256 x 3, as "
        "if all 61 layers had experts) nor the byte check below. Checked: tensor bytes {bytes} plus simulated "
        "safetensors headers of 163 shards = {est}, vs the repository's weight-file bytes 688,586,727,753 "
        "(public record): {diff} bytes apart, i.e. header-layout noise, whereas one dtype or tensor-set "
        "difference would move it by at least tens of KB (e_score_correction_bias as BF16: -30,208; 2k more "
        "tensors: ~+250 KB of header alone); parameter count {params} (scales included) vs the hub page's 685B. "
        "config.json key set matches the hub file's. 163 shards (model-00001-of-000163.safetensors ...)."
    ),
    "Kimi-K2-Instruct": (
        "FP8 block-scaled like DeepSeek-V3 (same DeepseekV3ForCausalLM code, model_type kimi_k2): every "
        "decoder-layer linear weight (incl. kv_a_proj_with_mqa) F8_E4M3 + F32 weight_scale_inv "
        "[ceil(out/128), ceil(in/128)]; router mlp.gate.weight BF16, e_score_correction_bias F32; layer 0 "
        "dense, 1-60 MoE with 384 experts + 1 shared; 64 heads; no MTP layer on disk (num_nextn_predict_layers "
        "0). {count} tensors, {fp8} FP8 weights. Checked: parameter count {params} vs the hub page's ~1.03T "
        "(1T total / 32B active). config from memory (structural keys: 61 layers, 7168/18432/2048, 384 experts "
        "top-8, 64 heads, vocab 163840, q_lora 1536, kv_lora 512); rope/yarn values and token ids not "
        "confirmed; dtypes follow DeepSeek-V3 (not read from a header). Shard count 61 "
        "(model-1-of-61.safetensors ...) from memory, not confirmed."
    ),
    "Llama-4-Scout-17B-16E-Instruct": (
        "BF16, Llama4ForConditionalGeneration with the names transformers 4.51+ and vLLM's llama4 loader read "
        "from the hub (transformers has no rename for llama4, so its in-memory names are the hub names): "
        "language_model.model.layers.N.{{self_attn.{{q,k,v,o}}_proj, input_layernorm, post_attention_layernorm}}, "
        "MoE in every layer as feed_forward.router.weight [16, H], feed_forward.experts.gate_up_proj "
        "[16, 5120, 16384] and down_proj [16, 8192, 5120] (fused 3-D tensors on disk), "
        "feed_forward.shared_expert.{{gate,up,down}}_proj; language_model.lm_head; vision_model.* (34-layer ViT "
        "with biases, patch_embedding.linear, class_embedding, positional_embedding_vlm, "
        "vision_adapter.mlp.fc1/fc2) and multi_modal_projector.linear_1. Checked: parameter count {params} = "
        "the hub page's (108.6B). config from memory. Shard count 50 from memory, not confirmed."
    ),
    "Llama-4-Maverick-17B-128E-Instruct": (
        "BF16, same naming as Scout; interleave_moe_layer_step 2: odd layers (1, 3, ..., 47) MoE with 128 "
        "experts (feed_forward.experts.gate_up_proj [128, 5120, 16384], down_proj [128, 8192, 5120], router, "
        "shared_expert), even layers dense feed_forward.{{gate,up,down}}_proj with intermediate_size_mlp 16384. "
        "Checked: parameter count {params} = the hub page's (401.6B). config = Scout's with Maverick's known "
        "differences (128 experts, step 2, 1M context, no rope scaling, use_qk_norm false); not seen "
        "verbatim. Shard count not confirmed (null)."
    ),
    "Mistral-Small-3.1-24B-Instruct-2503": (
        "BF16, Mistral3ForConditionalGeneration in the HF-format shards (the repo also carries a Mistral-format "
        "consolidated.safetensors, not listed here): language_model.model.layers.*, language_model.lm_head, "
        "vision_tower.* (Pixtral: patch_conv, ln_pre, transformer.layers.N.attention.{{q,k,v,o}}_proj, "
        "attention_norm, ffn_norm, feed_forward.{{gate,up,down}}_proj), multi_modal_projector.{{norm, "
        "patch_merger.merging_layer, linear_1, linear_2}}. Checked: parameter count {params} = the hub page's "
        "(24.0B). config from memory. Shard count 10 from memory, not confirmed."
    ),
    "gemma-3-27b-it": (
        "BF16, Gemma3ForConditionalGeneration: language_model.model.* (tied embeddings: no lm_head on disk), "
        "vision_tower.vision_model.* (SigLIP, 27 layers), multi_modal_projector.mm_input_projection_weight "
        "[1152, 5376] + mm_soft_emb_norm. transformers 5 drops the vision_model level in memory and does not "
        "write it back; it is restored here as the hub has it. Checked: bytes {bytes} = the hub index's "
        "metadata.total_size (public record, 12 shards); parameter count {params} = the hub page's (27.4B). "
        "config from memory."
    ),
    "gemma-3-1b-it": (
        "BF16, Gemma3ForCausalLM, text only, tied embeddings (no lm_head on disk), single model.safetensors. "
        "Checked: parameter count {params} = the hub page's. config from memory."
    ),
    "Phi-3-mini-4k-instruct": (
        "BF16, Phi3ForCausalLM with fused self_attn.qkv_proj [3*3072, 3072] and mlp.gate_up_proj [2*8192, 3072]. "
        "Checked: parameter count {params} = the hub page's; bytes {bytes}. config from memory. 2 shards."
    ),
    "phi-4": (
        "BF16, Phi3ForCausalLM (GQA 40/10 heads): fused qkv_proj [7680, 5120], gate_up_proj [35840, 5120]. "
        "Checked: bytes {bytes} = the hub's total (public record); parameter count {params} (hub page 14.7B). "
        "config from memory. Shard count 6 from memory, not confirmed."
    ),
    "MiniMax-M2": (
        "FP8 block-scaled on the hub: self_attn.{{q,k,v,o}}_proj and every expert "
        "block_sparse_moe.experts.N.{{w1,w2,w3}} weight F8_E4M3 + F32 weight_scale_inv [ceil(out/128), "
        "ceil(in/128)]; router block_sparse_moe.gate.weight F32 and block_sparse_moe.e_score_correction_bias "
        "F32; q_norm [6144] / k_norm [1024] (per_layer qk-norm), norms, embed_tokens, lm_head BF16. No MTP "
        "weights on disk although config has use_mtp. Checked: bytes {bytes} = hf-mem's reading of the "
        "MiniMaxAI/MiniMax-M2 safetensors headers (public record: memory=230121630720), which also pins the F32 "
        "router and bias; {fp8} FP8 weights = the 47,864 weight_scale_inv tensors a public analysis of the "
        "checkpoint counted (= 62 x (4 + 256 x 3)); that analysis also reports router float32, lm_head / "
        "embedding / norms bf16. {count} tensors, parameter count {params} (hub page ~229B). config: "
        "MiniMax-M2.5's config.json (same architecture) as quoted publicly, plus the FP8 quantization_config as "
        "quoted in public tests; M2's own file may differ in non-structural keys. Shard count not confirmed "
        "(null)."
    ),
    "Qwen3-VL-30B-A3B-Instruct": (
        "BF16, Qwen3VLMoeForConditionalGeneration. Experts are stored FUSED on disk: "
        "model.language_model.layers.N.mlp.experts.gate_up_proj [E, H, 2I] = [128, 2048, 1536] and "
        "down_proj [E, I, H] = [128, 768, 2048] (vLLM's qwen3_vl_moe loader transposes them (-1, -2) and "
        "chunks gate/up along dim -2; transformers 5 keeps [E, out, in] in memory via Transpose(1, 2), whose "
        "reverse did not apply on the meta device, so the on-disk orientation is restored here); router "
        "mlp.gate.weight; model.visual.* (27 blocks, patch_embed.proj [1152, 3, 2, 16, 16], pos_embed, merger, "
        "deepstack_merger_list.0-2); lm_head (untied). Checked: parameter count {params} = the hub page's "
        "(31.1B). config from memory. Shard count 13 from memory, not confirmed."
    ),
    "Llama-3.1-8B-Instruct": (
        "BF16 dense baseline, LlamaForCausalLM. Checked: {count} tensors; parameter count {params} = the hub "
        "page's; bytes {bytes} = the hub index's total_size. config from memory. 4 shards."
    ),
}


def stats(tensors):
    params = sum(math.prod(s) for _, _, s in tensors)
    nbytes = sum(math.prod(s) * BYTES[d] for _, d, s in tensors)
    fp8 = sum(1 for _, d, _ in tensors if d == "F8_E4M3")
    return params, nbytes, fp8


def header_bytes(tensors, shards):
    """Bytes of the safetensors headers if `tensors` (sorted) were cut into `shards` files of about equal size."""
    sizes = [math.prod(s) * BYTES[d] for _, d, s in tensors]
    target = sum(sizes) / shards
    groups, acc = [[]], 0
    for t, b in zip(tensors, sizes):
        if acc + b > target and groups[-1] and len(groups) < shards:
            groups.append([])
            acc = 0
        groups[-1].append((t, b))
        acc += b
    total = 0
    for g in groups:
        off, h = 0, {"__metadata__": {"format": "pt"}}
        for (n, d, s), b in g:
            h[n] = {"dtype": d, "shape": list(s), "data_offsets": [off, off + b]}
            off += b
        n = len(json.dumps(h, separators=(",", ":")))
        total += 8 + n + (-n) % 8
    return total


def render(doc):
    """JSON with one tensor per line (small diffs, still compresses well)."""
    head = {k: doc[k] for k in ("model", "source", "config", "shards")}
    text = json.dumps(head, indent=1, ensure_ascii=False)
    assert text.endswith("\n}")
    lines = [json.dumps([n, d, list(s)], separators=(",", ":")) for n, d, s in doc["tensors"]]
    return text[:-2] + ',\n "tensors": [\n' + ",\n".join(lines) + "\n ]\n}\n"


def make(key, write=True):
    import transformers

    m = MODELS[key]
    cfg = m["config"]
    tensors = m["build"](cfg)
    names = [n for n, _, _ in tensors]
    assert len(names) == len(set(names)), f"{key}: duplicate names"
    tensors = sorted(((n, d, tuple(s)) for n, d, s in tensors), key=lambda t: t[0])
    params, nbytes, fp8 = stats(tensors)
    checks = []
    ok = True
    extra = {}
    out_cfg = cfg
    if m.get("params"):
        rel = abs(params - m["params"]) / m["params"]
        good = rel <= max(m["params_tol"], 0.0) + 1e-12
        tol = "exact" if m["params_tol"] == 0 else f"within {m['params_tol']:.1%}"
        checks.append(f"params {params:,} vs published {m['params']:,.0f} ({tol}): {'OK' if good else 'MISMATCH'}")
        ok &= good
    if m.get("count"):
        good = len(tensors) == m["count"]
        checks.append(f"tensors {len(tensors):,} vs index weight_map entries {m['count']:,}: {'OK' if good else 'MISMATCH'}")
        ok &= good
    if m.get("fp8_count"):
        good = fp8 == m["fp8_count"]
        checks.append(f"F8_E4M3 weights {fp8:,} vs published scale-tensor count {m['fp8_count']:,}: {'OK' if good else 'MISMATCH'}")
        ok &= good
    if m.get("file_bytes"):
        est = nbytes + header_bytes(tensors, m["shards"])
        good = abs(est - m["file_bytes"]) < 0.001 * (est - nbytes)
        checks.append(f"tensor bytes + simulated headers of {m['shards']} shards = {est:,} vs published weight-file bytes "
                      f"{m['file_bytes']:,} (diff {est - m['file_bytes']:+,}; tolerance 0.1% of header bytes): {'OK' if good else 'MISMATCH'}")
        extra["est"] = f"{est:,}"
        extra["diff"] = f"{est - m['file_bytes']:+,}"
        ok &= good
    if m.get("total_size"):
        good = nbytes == m["total_size"]
        checks.append(f"bytes {nbytes:,} vs reference total_size {m['total_size']:,}: {'OK' if good else 'MISMATCH'}")
        ok &= good
    if key.startswith("gpt-oss"):
        mx = gpt_oss_mxfp4_bytes(tensors, cfg)
        extra["mxfp4"] = f"{mx:,}"
        good = mx == m["mxfp4_total_size"]
        checks.append(f"MXFP4-form bytes {mx:,} vs original release's tensor bytes {m['mxfp4_total_size']:,}: "
                      f"{'OK' if good else 'MISMATCH'}")
        ok &= good
        out_cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}
    source = COMMON.format(tf=transformers.__version__) + SOURCES[key].format(
        params=f"{params:,}", count=f"{len(tensors):,}", fp8=f"{fp8:,}", bytes=f"{nbytes:,}", **extra
    )
    doc = {"model": m["hub"], "source": source, "config": out_cfg, "shards": m["shards"], "tensors": tensors}
    text = render(doc)
    size = None
    if write:
        path = os.path.join(HERE, f"{key}.json.zst")
        res = subprocess.run(["zstd", "-19", "-q", "-f", "-", "-o", path], input=text.encode(), check=True)
        size = os.path.getsize(path)
        if key == "gpt-oss-20b":
            os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
            with open(FIXTURE, "w", encoding="utf-8") as f:
                f.write(text)
    return dict(key=key, hub=m["hub"], tensors=len(tensors), params=params, bytes=nbytes, fp8=fp8,
                shards=m["shards"], checks=checks, ok=ok, zst=size)


def main(argv):
    check_only = "--check" in argv
    keys = [a for a in argv if not a.startswith("--")] or list(MODELS)
    rows = []
    for k in keys:
        r = make(k, write=not check_only)
        rows.append(r)
        flag = "ok" if r["ok"] else "CHECK FAILED"
        print(f"{k:38s} {r['tensors']:>8,} tensors {r['params']:>19,} params {r['bytes']:>19,} bytes "
              f"fp8={r['fp8']:<6} zst={r['zst']} {flag}")
        for c in r["checks"]:
            print("    " + c)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
