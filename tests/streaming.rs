//! Streaming behaviour beyond the golden cases: determinism, many shards under a small memory
//! budget, the transformers-5 fused-experts input form, KV-cache scales, weight amax from
//! statistics, --scope / --exclude, and `inspect`.

mod common;

use common::{assert_same_tensors, fixtures, load_tensors, TempDir};
use shardquant::compute;
use shardquant::compute::{Numerics, QuantFormat};
use shardquant::input::checkpoint::Checkpoint;
use shardquant::options::{KvCache, Options, Scope, WeightAmaxMode};
use shardquant::output::ShardWriter;
use shardquant::plan::{OutputTensor, ShardPlan};
use shardquant::synthetic::SyntheticSpec;
use std::path::Path;

fn golden(case: &str) -> std::path::PathBuf {
    fixtures().join("golden").join(case)
}

fn nvfp4_options(stats: &Path) -> Options {
    let mut o = Options::new(QuantFormat::Nvfp4);
    o.output.numerics = Numerics::ModeloptCpu;
    o.stats = vec![stats.to_path_buf()];
    o.run.quiet = true;
    o
}

fn file_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn same_bytes_for_any_thread_count_and_tensors_for_any_shard_size() {
    let case = golden("qwen3moe_nvfp4");
    let tmp = TempDir::new("determinism");
    let mut outs = Vec::new();
    for (threads, shard) in [(1, 5_000_000_000u64), (4, 5_000_000_000), (3, 30_000)] {
        let out = tmp.join(&format!("out-{threads}-{shard}"));
        let mut o = nvfp4_options(&case.join("amax.safetensors"));
        o.run.threads = threads;
        o.output.max_shard_size = shard;
        o.run.max_memory = 50_000;
        shardquant::commands::convert::convert(&case.join("input"), &out, &o).unwrap();
        outs.push(out);
    }
    assert_eq!(file_bytes(&outs[0]), file_bytes(&outs[1]), "threads 1 vs 4");
    assert!(
        std::fs::read_dir(&outs[2]).unwrap().count() > std::fs::read_dir(&outs[0]).unwrap().count()
    );
    assert_same_tensors(&outs[2], &outs[0]);
    assert_same_tensors(&outs[2], &case.join("modelopt"));
}

#[test]
fn many_layers_and_experts_stream_under_a_small_budget() {
    let tmp = TempDir::new("synthetic");
    let spec = SyntheticSpec {
        layers: 32,
        hidden: 64,
        experts: 16,
        moe_intermediate: 32,
        shard_size: 200_000,
        ..Default::default()
    };
    let input = tmp.join("in");
    spec.write(&input).unwrap();
    let amax = tmp.join("amax.safetensors");
    spec.write_amax(&amax).unwrap();
    let ckpt = Checkpoint::open(&input).unwrap();
    assert!(
        ckpt.shards().len() >= 10,
        "{} input shards",
        ckpt.shards().len()
    );
    let out = tmp.join("out");
    let report_path = tmp.join("report.json");
    let mut o = nvfp4_options(&amax);
    o.run.max_memory = 64 << 10;
    o.output.max_shard_size = 150_000;
    o.run.threads = 4;
    o.run.report = Some(report_path.clone());
    shardquant::commands::convert::convert(&input, &out, &o).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let peak = report["memory"]["peak_in_flight_bytes"].as_u64().unwrap();
    let largest = report["memory"]["largest_unit_bytes"].as_u64().unwrap();
    assert!(peak <= (64 << 10).max(largest), "in flight {peak} > budget");
    assert!(report["counts"]["units"].as_u64().unwrap() > 1000);
    let t = load_tensors(&out);
    // 32 layers x (4 attention + 16 experts x 3) quantized linears, 4 tensors each.
    assert_eq!(
        t.keys().filter(|k| k.ends_with(".weight_scale_2")).count(),
        32 * (4 + 48)
    );
    for l in 0..32 {
        let input_scale = &t[&format!("model.layers.{l}.mlp.experts.0.gate_proj.input_scale")].2;
        for e in 0..16 {
            let p = format!("model.layers.{l}.mlp.experts.{e}");
            assert_eq!(
                &t[&format!("{p}.gate_proj.weight_scale_2")].2,
                &t[&format!("{p}.up_proj.weight_scale_2")].2
            );
            assert_eq!(&t[&format!("{p}.up_proj.input_scale")].2, input_scale);
            assert_eq!(t[&format!("{p}.down_proj.weight")].1, vec![64, 16]);
        }
        let q = &t[&format!("model.layers.{l}.self_attn.q_proj.weight_scale_2")].2;
        assert_eq!(
            q,
            &t[&format!("model.layers.{l}.self_attn.v_proj.weight_scale_2")].2
        );
        assert_eq!(t[&format!("model.layers.{l}.mlp.gate.weight")].0, "BF16");
    }
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("hf_quant_config.json")).unwrap())
            .unwrap();
    let excluded = hf["quantization"]["exclude_modules"].as_array().unwrap();
    assert_eq!(
        excluded.len(),
        2 + 32,
        "embed, lm_head and 32 routers: {excluded:?}"
    );
    assert!(out.join("tokenizer.json").exists());
}

/// Rewrites a per-expert MoE checkpoint into transformers-5's fused form:
/// `experts.gate_up_proj [E, 2I, H]` (gate rows first) and `experts.down_proj [E, H, I]`.
fn write_fused(src: &Path, dest: &Path, layers: usize, experts: usize) {
    let ckpt = Checkpoint::open(src).unwrap();
    let mut outs = Vec::new();
    let mut data: Vec<Vec<u8>> = Vec::new();
    let mut fused_done = std::collections::HashSet::new();
    for t in ckpt.tensors() {
        let Some(rest) = t
            .name
            .strip_prefix("model.layers.")
            .filter(|r| r.contains(".mlp.experts."))
        else {
            outs.push(OutputTensor::new(t.name.clone(), t.dtype, t.shape.clone()));
            data.push(ckpt.bytes(t).to_vec());
            continue;
        };
        let layer: usize = rest.split('.').next().unwrap().parse().unwrap();
        if !fused_done.insert(layer) {
            continue;
        }
        assert!(layer < layers);
        let get = |e: usize, p: &str| {
            let t = ckpt
                .get(&format!("model.layers.{layer}.mlp.experts.{e}.{p}.weight"))
                .unwrap();
            (t.shape.clone(), ckpt.bytes(t).to_vec())
        };
        let (gshape, _) = get(0, "gate_proj");
        let (dshape, _) = get(0, "down_proj");
        let mut gate_up = Vec::new();
        let mut down = Vec::new();
        for e in 0..experts {
            gate_up.extend(get(e, "gate_proj").1);
            gate_up.extend(get(e, "up_proj").1);
            down.extend(get(e, "down_proj").1);
        }
        let p = format!("model.layers.{layer}.mlp.experts");
        outs.push(OutputTensor::new(
            format!("{p}.gate_up_proj"),
            t.dtype,
            vec![experts, 2 * gshape[0], gshape[1]],
        ));
        data.push(gate_up);
        outs.push(OutputTensor::new(
            format!("{p}.down_proj"),
            t.dtype,
            vec![experts, dshape[0], dshape[1]],
        ));
        data.push(down);
    }
    std::fs::create_dir_all(dest).unwrap();
    let plan = ShardPlan::new(outs, 100_000).unwrap();
    let writer = ShardWriter::create(dest, &plan).unwrap();
    for (i, d) in data.iter().enumerate() {
        writer.write(i, d).unwrap();
    }
    writer.finish().unwrap();
    for f in ["config.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dest.join(f)).unwrap();
    }
}

#[test]
fn fused_experts_input_gives_modelopts_per_expert_output() {
    let case = golden("qwen3moe_nvfp4");
    let tmp = TempDir::new("fused");
    let fused = tmp.join("fused");
    write_fused(&case.join("input"), &fused, 2, 8);
    let ckpt = Checkpoint::open(&fused).unwrap();
    assert!(ckpt
        .get("model.layers.0.mlp.experts.gate_up_proj")
        .is_some());
    let out = tmp.join("out");
    shardquant::commands::convert::convert(
        &fused,
        &out,
        &nvfp4_options(&case.join("amax.safetensors")),
    )
    .unwrap();
    assert_same_tensors(&out, &case.join("modelopt"));
}

#[test]
fn fp8_kv_cache_scales_from_statistics() {
    let tmp = TempDir::new("kv");
    let spec = SyntheticSpec::default();
    let input = tmp.join("in");
    spec.write(&input).unwrap();
    let amax = tmp.join("amax.safetensors");
    spec.write_amax(&amax).unwrap();
    let out = tmp.join("out");
    let mut o = Options::new(QuantFormat::Fp8);
    o.stats = vec![amax.clone()];
    o.output.kv_cache = KvCache::Fp8;
    o.run.quiet = true;
    shardquant::commands::convert::convert(&input, &out, &o).unwrap();
    let t = load_tensors(&out);
    let stats = shardquant::input::stats::read_safetensors_entries(&amax).unwrap();
    for l in 0..spec.layers {
        for (q, tensor) in [
            ("k_bmm_quantizer", "k_proj.k_scale"),
            ("v_bmm_quantizer", "v_proj.v_scale"),
        ] {
            let key = format!("model.layers.{l}.self_attn.{q}._amax");
            let a = stats.iter().find(|e| e.key == key).unwrap().values[0];
            let (dtype, shape, bytes) = &t[&format!("model.layers.{l}.self_attn.{tensor}")];
            assert_eq!((dtype.as_str(), shape.len()), ("F32", 0));
            // CUDA numerics: multiplication by the f32 reciprocal of 448.
            assert_eq!(
                f32::from_le_bytes(bytes[..4].try_into().unwrap()),
                a * (1.0f32 / 448.0)
            );
        }
    }
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("hf_quant_config.json")).unwrap())
            .unwrap();
    assert_eq!(hf["quantization"]["kv_cache_quant_algo"], "FP8");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["kv_cache_scheme"]["num_bits"], 8);
}

#[test]
fn weight_amax_from_statistics_matches_computed() {
    let case = golden("llama_nvfp4");
    let tmp = TempDir::new("wstats");
    let out = tmp.join("out");
    let mut o = nvfp4_options(&case.join("amax.safetensors"));
    o.output.weight_amax = WeightAmaxMode::Stats;
    shardquant::commands::convert::convert(&case.join("input"), &out, &o).unwrap();
    assert_same_tensors(&out, &case.join("modelopt"));
}

/// Static per-block NVFP4 amax (ModelOpt's FP8-sweep calibration) with `_global_amax`.
#[test]
fn static_block_amax_from_statistics() {
    let case = golden("llama_nvfp4");
    let tmp = TempDir::new("static");
    let ckpt = Checkpoint::open(&case.join("input")).unwrap();
    let module = "model.layers.0.self_attn.o_proj";
    let w = ckpt.get(&format!("{module}.weight")).unwrap();
    let (rows, cols) = (w.shape[0], w.shape[1]);
    let vals: Vec<f32> = ckpt
        .bytes(w)
        .chunks(2)
        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    // An "MSE-chosen" amax: 0.75 of each block's max, so it differs from the dynamic path.
    let blocks: Vec<f32> = vals
        .chunks(16)
        .map(|b| 0.75 * b.iter().fold(0.0f32, |m, v| m.max(v.abs())))
        .collect();
    let global = blocks.iter().fold(0.0f32, |m, v| m.max(*v));
    let mut entries: Vec<(String, Vec<f32>, Vec<usize>)> =
        shardquant::input::stats::read_safetensors_entries(&case.join("amax.safetensors"))
            .unwrap()
            .into_iter()
            .filter(|e| e.key != format!("{module}.weight_quantizer._amax"))
            .map(|e| (e.key, e.values, e.shape))
            .collect();
    entries.push((
        format!("{module}.weight_quantizer._amax"),
        blocks.clone(),
        vec![blocks.len(), 1],
    ));
    entries.push((
        format!("{module}.weight_quantizer._global_amax"),
        vec![global],
        vec![],
    ));
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = entries
        .into_iter()
        .map(|(k, v, s)| (k, v.iter().flat_map(|x| x.to_le_bytes()).collect(), s))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, b, s)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let amax = tmp.join("amax.safetensors");
    safetensors::serialize_to_file(views, None, &amax).unwrap();
    let out = tmp.join("out");
    let mut o = nvfp4_options(&amax);
    o.output.weight_amax = WeightAmaxMode::Stats;
    shardquant::commands::convert::convert(&case.join("input"), &out, &o).unwrap();
    let t = load_tensors(&out);
    // The golden README's static-block export formula, in CPU numerics, written out here.
    let ws2 = global / 2688.0;
    let expected: Vec<u8> = blocks
        .iter()
        .map(|&a| {
            let s = a / 6.0;
            let s = if s == 0.0 { 1.0 } else { s };
            compute::e4m3_from_f32(((s * 448.0) / (global / 6.0)).clamp(2f32.powi(-9), 448.0))
        })
        .collect();
    assert_eq!(t[&format!("{module}.weight_scale")].2, expected);
    assert_eq!(
        t[&format!("{module}.weight_scale_2")].2,
        ws2.to_le_bytes().to_vec()
    );
    let mut packed = vec![0u8; rows * cols / 2];
    compute::pack_nvfp4(
        ckpt.bytes(w),
        compute::SourceDtype::Bf16,
        rows,
        cols,
        ws2,
        &expected,
        &mut packed,
    );
    assert_eq!(t[&format!("{module}.weight")].2, packed);
    // The other linears are unaffected.
    let golden_t = load_tensors(&case.join("modelopt"));
    assert_eq!(
        t["model.layers.1.self_attn.o_proj.weight"].2,
        golden_t["model.layers.1.self_attn.o_proj.weight"].2
    );
}

#[test]
fn scope_and_exclude_leave_linears_unquantized() {
    let case = golden("llama_nvfp4");
    let tmp = TempDir::new("scope");
    let out = tmp.join("out");
    let mut o = nvfp4_options(&case.join("amax.safetensors"));
    o.output.scope = Scope::Mlp;
    o.output.excludes = vec!["*.1.mlp.down_proj".to_string()];
    shardquant::commands::convert::convert(&case.join("input"), &out, &o).unwrap();
    let t = load_tensors(&out);
    let input = load_tensors(&case.join("input"));
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ] {
        assert_eq!(t[name], input[name], "{name} passes through unchanged");
    }
    assert!(!t.contains_key("model.layers.0.self_attn.q_proj.weight_scale"));
    assert_eq!(t["model.layers.0.mlp.down_proj.weight"].0, "U8");
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("hf_quant_config.json")).unwrap())
            .unwrap();
    let ex: Vec<&str> = hf["quantization"]["exclude_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(ex.contains(&"model.layers.0.self_attn*"), "{ex:?}");
    assert!(ex.contains(&"model.layers.1.mlp.down_proj"), "{ex:?}");
    let summary = std::fs::read_to_string(out.join(".quant_summary.txt")).unwrap();
    assert!(summary.contains("unquantized (--scope mlp)"));
}

#[test]
fn inspect_explains_a_moe_checkpoint() {
    let case = golden("qwen3moe_nvfp4");
    let mut o = nvfp4_options(&case.join("amax.safetensors"));
    o.output.max_shard_size = 100_000;
    let inspection = shardquant::commands::inspect::inspect(&case.join("input"), &o).unwrap();
    assert!(inspection.failure.is_none());
    let text = inspection.text;
    for needle in [
        "layout      qwen3_moe",
        "experts     2 MoE layer(s), {8} experts",
        "routers     2",
        "output plan",
        "memory",
        "exclude_modules",
    ] {
        assert!(text.contains(needle), "missing '{needle}' in:\n{text}");
    }
    // Without statistics, W4A4 cannot be planned: inspect says why (and exits 3).
    let inspection = shardquant::commands::inspect::inspect(
        &case.join("input"),
        &Options::new(QuantFormat::Nvfp4),
    )
    .unwrap();
    assert!(inspection.failure.is_some());
    let text = inspection.text;
    assert!(text.contains("would stop in pre-flight"), "{text}");
    assert!(text.contains("w4a16_nvfp4"), "{text}");
    // FP8 wording: no NVFP4 scale names, no claim that q/k/v share scales.
    let mut fp8 = Options::new(QuantFormat::Fp8);
    fp8.stats = vec![case.join("amax.safetensors")];
    let text = shardquant::commands::inspect::inspect(&case.join("input"), &fp8)
        .unwrap()
        .text;
    assert!(!text.contains("weight_scale_2"), "{text}");
    assert!(text.contains("each keeps its own scales"), "{text}");
}

#[test]
fn fused_experts_can_be_excluded_per_layer() {
    let case = golden("qwen3moe_nvfp4");
    let tmp = TempDir::new("fusedex");
    let fused = tmp.join("fused");
    write_fused(&case.join("input"), &fused, 2, 8);
    let out = tmp.join("out");
    let mut o = nvfp4_options(&case.join("amax.safetensors"));
    o.output.excludes = vec!["*.1.mlp.experts.*".to_string()];
    shardquant::commands::convert::convert(&fused, &out, &o).unwrap();
    let t = load_tensors(&out);
    let input = load_tensors(&case.join("input"));
    assert!(
        !t.keys()
            .any(|k| k.ends_with("gate_up_proj") || k.ends_with("experts.down_proj")),
        "no fused names"
    );
    for name in [
        "model.layers.1.mlp.experts.3.gate_proj.weight",
        "model.layers.1.mlp.experts.3.up_proj.weight",
        "model.layers.1.mlp.experts.5.down_proj.weight",
    ] {
        assert_eq!(
            t[name], input[name],
            "{name}: the excluded expert is the input slice, per-expert named"
        );
    }
    let reference = load_tensors(&case.join("modelopt"));
    for name in [
        "model.layers.0.mlp.experts.5.down_proj.weight",
        "model.layers.0.mlp.experts.3.up_proj.weight_scale",
    ] {
        assert_eq!(
            t[name], reference[name],
            "{name}: quantized experts are unaffected"
        );
    }
}

/// Serving engines hold a layer's routed experts in one fused tensor, an expert's gate and up
/// in one `w13`, and q/k/v in one `qkv_proj`: excluding part of any of them is refused before
/// anything is written, naming the group.
#[test]
fn excluding_part_of_a_fused_group_is_refused() {
    let case = golden("qwen3moe_nvfp4");
    let tmp = TempDir::new("partialgroup");
    let fused = tmp.join("fused");
    write_fused(&case.join("input"), &fused, 2, 8);
    for (exclude, names) in [
        ("*.experts.3.*", "model.layers.0.mlp.experts.3.gate_proj"),
        ("*.0.mlp.experts.3.gate_proj", "an expert's gate and up"),
        ("*.1.mlp.experts.*.down_proj", "routed experts of one layer"),
        (
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.k_proj",
        ),
    ] {
        let out = tmp.join("out");
        let mut o = nvfp4_options(&case.join("amax.safetensors"));
        o.output.excludes = vec![exclude.to_string()];
        let err = shardquant::commands::convert::convert(&fused, &out, &o).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("part of a fused group"), "{exclude}: {text}");
        assert!(text.contains(names), "{exclude}: {text}");
        assert!(!out.exists(), "{exclude}: nothing written");
    }
}

#[test]
fn memory_of_a_fused_tensor_is_released_per_expert() {
    // Each expert of a fused tensor is its own unit; its bytes are released as soon as it is
    // written, so the budget bounds the work in flight even inside one huge tensor.
    let case = golden("qwen3moe_nvfp4");
    let tmp = TempDir::new("fusedmem");
    let fused = tmp.join("fused");
    write_fused(&case.join("input"), &fused, 2, 8);
    let mut o = nvfp4_options(&case.join("amax.safetensors"));
    o.run.max_memory = 1;
    o.run.threads = 3;
    let report = tmp.join("r.json");
    o.run.report = Some(report.clone());
    shardquant::commands::convert::convert(&fused, &tmp.join("out"), &o).unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        r["memory"]["peak_in_flight_bytes"], 1,
        "one unit at a time, each charged at most the budget"
    );
}

#[test]
fn an_undescribed_3d_tensor_stops_preflight_unless_excluded() {
    let case = golden("mixtral_nvfp4");
    let tmp = TempDir::new("undescribed");
    // Mixtral's layout has no fused-expert form: a transformers-5 fused Mixtral tensor must not
    // silently stay unquantized.
    let ckpt = Checkpoint::open(&case.join("input")).unwrap();
    let mut outs: Vec<OutputTensor> = Vec::new();
    let mut data = Vec::new();
    for t in ckpt.tensors() {
        outs.push(OutputTensor::new(t.name.clone(), t.dtype, t.shape.clone()));
        data.push(ckpt.bytes(t).to_vec());
    }
    outs.push(OutputTensor::new(
        "model.layers.0.mlp.experts.gate_up_proj",
        shardquant::input::checkpoint::Dtype::BF16,
        vec![2, 32, 64],
    ));
    data.push(vec![0x3f; 2 * 32 * 64 * 2]);
    let input = tmp.join("in");
    std::fs::create_dir_all(&input).unwrap();
    let plan = ShardPlan::new(outs, 1 << 30).unwrap();
    let w = ShardWriter::create(&input, &plan).unwrap();
    for (i, d) in data.iter().enumerate() {
        w.write(i, d).unwrap();
    }
    w.finish().unwrap();
    std::fs::copy(case.join("input/config.json"), input.join("config.json")).unwrap();
    let mut o = nvfp4_options(&case.join("amax.safetensors"));
    let err = shardquant::commands::convert::convert(&input, &tmp.join("out"), &o).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.0.mlp.experts.gate_up_proj"),
        "{err}"
    );
    assert!(err.to_string().contains("--exclude"), "{err}");
    assert!(!tmp.join("out").exists());
    o.output.excludes = vec!["model.layers.0.mlp.experts.gate_up_proj".to_string()];
    shardquant::commands::convert::convert(&input, &tmp.join("out"), &o).unwrap();
    assert_eq!(
        load_tensors(&tmp.join("out"))["model.layers.0.mlp.experts.gate_up_proj"].1,
        vec![2, 32, 64]
    );
}
