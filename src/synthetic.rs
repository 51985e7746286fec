//! Synthetic checkpoints for tests and benchmarks: a Llama-style or Qwen3-MoE-style model
//! with random BF16 weights of any size, plus a matching ModelOpt amax file.
//!
//! Weights come from a fixed-seed generator, so the same spec always gives the same bytes.

use crate::input::checkpoint::Dtype;

use crate::plan::{OutputTensor, ShardPlan};

use crate::error::{Error, Result};
use crate::output::ShardWriter;
use std::path::Path;

/// Shape of a synthetic model.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size (multiple of 16).
    pub hidden: usize,
    /// Dense MLP intermediate size (multiple of 16), used when `experts == 0`.
    pub intermediate: usize,
    /// Routed experts per layer (0: dense Llama).
    pub experts: usize,
    /// Expert intermediate size (multiple of 16).
    pub moe_intermediate: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Largest input shard in bytes.
    pub shard_size: u64,
    /// Generator seed.
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            layers: 2,
            hidden: 64,
            intermediate: 128,
            experts: 0,
            moe_intermediate: 32,
            vocab: 256,
            shard_size: 1 << 20,
            seed: 1,
        }
    }
}

/// xorshift64*: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Roughly normal values (a sum of four 16-bit uniforms from one draw), scaled.
    fn normal(&mut self, scale: f32) -> f32 {
        let r = self.next();
        let sum: u32 = (0..4).map(|k| ((r >> (16 * k)) & 0xFFFF) as u32).sum();
        (sum as f32 / 65536.0 - 2.0) * scale
    }
}

impl SyntheticSpec {
    fn linears(&self) -> Vec<(String, usize, usize)> {
        let h = self.hidden;
        let mut out = Vec::new();
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.self_attn.q_proj"), h, h));
            out.push((format!("{p}.self_attn.k_proj"), h / 2, h));
            out.push((format!("{p}.self_attn.v_proj"), h / 2, h));
            out.push((format!("{p}.self_attn.o_proj"), h, h));
            if self.experts == 0 {
                let i = self.intermediate;
                out.push((format!("{p}.mlp.gate_proj"), i, h));
                out.push((format!("{p}.mlp.up_proj"), i, h));
                out.push((format!("{p}.mlp.down_proj"), h, i));
            } else {
                let i = self.moe_intermediate;
                for e in 0..self.experts {
                    out.push((format!("{p}.mlp.experts.{e}.gate_proj"), i, h));
                    out.push((format!("{p}.mlp.experts.{e}.up_proj"), i, h));
                    out.push((format!("{p}.mlp.experts.{e}.down_proj"), h, i));
                }
            }
        }
        out
    }

    fn tensors(&self) -> Vec<OutputTensor> {
        let h = self.hidden;
        let bf16 = |name: String, shape: Vec<usize>| OutputTensor {
            name,
            dtype: Dtype::BF16,
            shape,
        };
        let mut out = vec![bf16(
            "model.embed_tokens.weight".into(),
            vec![self.vocab, h],
        )];
        let linears = self.linears();
        for l in 0..self.layers {
            let p = format!("model.layers.{l}.");
            out.push(bf16(format!("{p}input_layernorm.weight"), vec![h]));
            for (m, r, c) in linears.iter().filter(|(m, _, _)| m.starts_with(&p)) {
                out.push(bf16(format!("{m}.weight"), vec![*r, *c]));
            }
            if self.experts > 0 {
                out.push(bf16(format!("{p}mlp.gate.weight"), vec![self.experts, h]));
            }
            out.push(bf16(format!("{p}post_attention_layernorm.weight"), vec![h]));
        }
        out.push(bf16("model.norm.weight".into(), vec![h]));
        out.push(bf16("lm_head.weight".into(), vec![self.vocab, h]));
        out
    }

    fn config(&self) -> serde_json::Value {
        if self.experts == 0 {
            serde_json::json!({
                "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.hidden,
                "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": self.vocab,
                "rms_norm_eps": 1e-06, "dtype": "bfloat16", "tie_word_embeddings": false
            })
        } else {
            serde_json::json!({
                "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": self.hidden,
                "moe_intermediate_size": self.moe_intermediate, "num_experts": self.experts,
                "num_experts_per_tok": 2, "num_hidden_layers": self.layers, "num_attention_heads": 4,
                "num_key_value_heads": 2, "vocab_size": self.vocab, "rms_norm_eps": 1e-06, "dtype": "bfloat16"
            })
        }
    }

    /// Writes the checkpoint into `dir` (created if missing): config.json,
    /// generation_config.json, a tokenizer stand-in, and BF16 safetensors shards.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::output_io("creating", dir, e))?;
        let config = serde_json::to_string_pretty(&self.config()).unwrap_or_default();
        let put = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| Error::output_io("writing", &path, e))
        };
        put("config.json", &config)?;
        put(
            "generation_config.json",
            "{\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2\n}\n",
        )?;
        put(
            "tokenizer.json",
            "{\"version\": \"1.0\", \"synthetic\": true}\n",
        )?;
        let tensors = self.tensors();
        let plan = ShardPlan::new(tensors.clone(), self.shard_size)?;
        let writer = ShardWriter::create(dir, &plan)?;
        // Each tensor has its own generator (seeded by its index), so threads can fill them in
        // any order and the bytes stay the same.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(t) = tensors.get(i) else {
                                return Ok(());
                            };
                            let n: usize = t.shape.iter().product();
                            let mut rng = Rng((self.seed
                                ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                            .max(1));
                            let mut bytes = Vec::with_capacity(n * 2);
                            for _ in 0..n {
                                bytes.extend_from_slice(
                                    &half::bf16::from_f32(rng.normal(0.05)).to_le_bytes(),
                                );
                            }
                            writer.write(i, &bytes)?;
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join()
                    .map_err(|_| Error::other("a synthetic-data thread panicked"))??;
            }
            Ok(())
        })?;
        writer.finish()?;
        Ok(())
    }

    /// Writes a shardquant statistics file (schema v1) with per-input-channel sums of squares
    /// and a token count for every linear, as an imatrix would give: mostly moderate channels
    /// and a few outlier channels 100x larger (as LLM activations have). Linears that share an
    /// input (q/k/v, gate/up) get the same sums.
    pub fn write_channel_stats(&self, path: &Path) -> Result<()> {
        use crate::input::stats::{native, ActivationStats, ModuleStats};
        let mut rng = Rng(self.seed.wrapping_add(11).max(1));
        let tokens = 4096u64;
        let mut channel_sums = |cols: usize| -> Vec<f64> {
            (0..cols)
                .map(|_| {
                    let r = rng.next();
                    let base = f64::from(rng.normal(1.0)).powi(2) + 0.05;
                    let outlier = if r.is_multiple_of(97) { 100.0 } else { 1.0 };
                    base * outlier * tokens as f64
                })
                .collect()
        };
        let mut stats = ActivationStats::default();
        let mut shared: Option<(String, Vec<f64>)> = None;
        for (module, _, cols) in self.linears() {
            // The input a linear reads: q/k/v share one, gate/up share one.
            let input = module
                .trim_end_matches("q_proj")
                .trim_end_matches("k_proj")
                .trim_end_matches("v_proj")
                .trim_end_matches("gate_proj")
                .trim_end_matches("up_proj")
                .to_string();
            let sums = match &shared {
                Some((key, sums)) if *key == input && input != module => sums.clone(),
                _ => {
                    let sums = channel_sums(cols);
                    shared = Some((input, sums.clone()));
                    sums
                }
            };
            stats.modules.insert(
                module,
                ModuleStats {
                    input_sum_sq: Some(sums),
                    token_count: Some(tokens),
                    ..Default::default()
                },
            );
        }
        native::write_native(path, &stats, &native::NativeMeta::default(), false)
    }

    /// Writes a ModelOpt-style amax file (`*.input_quantizer._amax`, and the fused-experts
    /// names for MoE) with deterministic input amax for every linear.
    pub fn write_amax(&self, path: &Path) -> Result<()> {
        let mut rng = Rng(self.seed.wrapping_add(7).max(1));
        let mut entries: Vec<(String, f32)> = Vec::new();
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                entries.push((
                    format!("{p}.self_attn.{m}.input_quantizer._amax"),
                    1.0 + rng.normal(1.0).abs(),
                ));
            }
            if self.experts == 0 {
                for m in ["gate_proj", "up_proj", "down_proj"] {
                    entries.push((
                        format!("{p}.mlp.{m}.input_quantizer._amax"),
                        1.0 + rng.normal(1.0).abs(),
                    ));
                }
            } else {
                entries.push((
                    format!("{p}.mlp.experts.gate_up_proj_input_quantizer._amax"),
                    2.0,
                ));
                entries.push((
                    format!("{p}.mlp.experts.down_proj_input_quantizer._amax"),
                    3.0,
                ));
            }
            entries.push((
                format!("{p}.self_attn.k_bmm_quantizer._amax"),
                8.0 + rng.normal(1.0).abs(),
            ));
            entries.push((
                format!("{p}.self_attn.v_bmm_quantizer._amax"),
                4.0 + rng.normal(1.0).abs(),
            ));
        }
        let data: Vec<(String, Vec<u8>)> = entries
            .into_iter()
            .map(|(k, v)| (k, half::bf16::from_f32(v).to_f32().to_le_bytes().to_vec()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
            .iter()
            .map(|(k, b)| {
                let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![], b)
                    .map_err(|e| Error::other(format!("building amax tensor {k}: {e}")))?;
                Ok((k.clone(), view))
            })
            .collect::<Result<_>>()?;
        safetensors::serialize_to_file(views, None, path)
            .map_err(|e| Error::other(format!("writing {}: {e}", path.display())))
    }
}
