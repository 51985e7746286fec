//! Writes a synthetic checkpoint (and a matching ModelOpt amax file, and per-channel activation
//! sums `DIR.sums.stats.safetensors` for `--importance stats`) for benchmarks.
//!
//! `cargo run --release --example synth -- DIR LAYERS [HIDDEN] [EXPERTS] [MOE_INTERMEDIATE]`
//! `cargo run --release --example synth -- --deepseek-fp8 DIR LAYERS`: a DeepSeek-V3-shaped FP8
//! block-scaled slice (hidden 7168, MLA attention, 256 experts of 2048, a shared expert).

use shardquant::input::checkpoint::Dtype;

use shardquant::plan::{OutputTensor, ShardPlan};

use shardquant::output::ShardWriter;
use shardquant::synthetic::SyntheticSpec;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--deepseek-fp8") {
        let dir = PathBuf::from(args.get(1).expect("DIR"));
        let layers = args.get(2).map_or(1, |s| s.parse().expect("a number"));
        deepseek_fp8(&dir, layers);
        return;
    }
    if args.len() < 2 {
        eprintln!("usage: synth DIR LAYERS [HIDDEN] [EXPERTS] [MOE_INTERMEDIATE] | synth --deepseek-fp8 DIR LAYERS");
        std::process::exit(2);
    }
    let num = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |s| s.parse().expect("a number"))
    };
    let spec = SyntheticSpec {
        layers: num(1, 8),
        hidden: num(2, 1024),
        intermediate: 4 * num(2, 1024),
        experts: num(3, 0),
        moe_intermediate: num(4, 512),
        vocab: 8192,
        shard_size: 512 << 20,
        seed: 7,
    };
    let dir = PathBuf::from(&args[0]);
    spec.write(&dir).expect("writing the checkpoint");
    spec.write_amax(&dir.with_extension("amax.safetensors"))
        .expect("writing the amax file");
    spec.write_channel_stats(&dir.with_extension("sums.stats.safetensors"))
        .expect("writing the per-channel statistics");
}

/// DeepSeek-V3 layer shapes: (module, rows, cols) of every linear of MoE layer `l`.
fn deepseek_linears(l: usize) -> Vec<(String, usize, usize)> {
    let h = 7168;
    let a = format!("model.layers.{l}.self_attn");
    let mut out = vec![
        (format!("{a}.q_a_proj"), 1536, h),
        (format!("{a}.q_b_proj"), 24576, 1536),
        (format!("{a}.kv_a_proj_with_mqa"), 576, h),
        (format!("{a}.kv_b_proj"), 32768, 512),
        (format!("{a}.o_proj"), h, 16384),
    ];
    let m = format!("model.layers.{l}.mlp");
    for e in (0..256)
        .map(|e| format!("{m}.experts.{e}"))
        .chain([format!("{m}.shared_experts")])
    {
        out.push((format!("{e}.gate_proj"), 2048, h));
        out.push((format!("{e}.up_proj"), 2048, h));
        out.push((format!("{e}.down_proj"), h, 2048));
    }
    out
}

fn deepseek_fp8(dir: &Path, layers: usize) {
    std::fs::create_dir_all(dir).expect("creating the directory");
    let mut tensors = Vec::new();
    let mut amax: Vec<(String, f32)> = Vec::new();
    for l in 0..layers {
        for (module, rows, cols) in deepseek_linears(l) {
            let (sr, sc) = shardquant::compute::scale_inv_shape(rows, cols);
            tensors.push(OutputTensor::new(
                format!("{module}.weight"),
                Dtype::F8_E4M3,
                vec![rows, cols],
            ));
            tensors.push(OutputTensor::new(
                format!("{module}.weight_scale_inv"),
                Dtype::F32,
                vec![sr, sc],
            ));
            amax.push((format!("{module}.input_quantizer._amax"), 4.0));
        }
        tensors.push(OutputTensor::new(
            format!("model.layers.{l}.mlp.gate.weight"),
            Dtype::BF16,
            vec![256, 7168],
        ));
        tensors.push(OutputTensor::new(
            format!("model.layers.{l}.input_layernorm.weight"),
            Dtype::BF16,
            vec![7168],
        ));
    }
    let plan = ShardPlan::new(tensors.clone(), 4_000_000_000).expect("plan");
    let writer = ShardWriter::create(dir, &plan).expect("writer");
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..std::thread::available_parallelism().map_or(1, |n| n.get()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(t) = tensors.get(i) else { return };
                let n: usize = t.shape.iter().product();
                let mut s = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let bytes: Vec<u8> = match t.dtype {
                    Dtype::F32 => (0..n)
                        .flat_map(|k| (1e-3f32 * (1.0 + (k % 7) as f32)).to_le_bytes())
                        .collect(),
                    Dtype::BF16 => (0..n)
                        .flat_map(|k| {
                            half::bf16::from_f32(0.01 * ((k % 13) as f32 - 6.0)).to_le_bytes()
                        })
                        .collect(),
                    _ => (0..n)
                        .map(|_| {
                            s ^= s << 13;
                            s ^= s >> 7;
                            s ^= s << 17;
                            let b = (s >> 32) as u8;
                            if b & 0x7F == 0x7F {
                                b & 0xFE
                            } else {
                                b
                            }
                        })
                        .collect(),
                };
                writer.write(i, &bytes).expect("write");
            });
        }
    });
    writer.finish().expect("finish");
    let config = serde_json::json!({
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168,
        "num_hidden_layers": layers, "n_routed_experts": 256, "dtype": "bfloat16",
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .expect("config");
    let data: Vec<(String, Vec<u8>)> = amax
        .into_iter()
        .map(|(k, v)| (k, v.to_le_bytes().to_vec()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(k, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(Dtype::F32, vec![], b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.with_extension("amax.safetensors"))
        .expect("amax");
}
