//! Architectures found from the checkpoint alone (fixtures/arch): tiny checkpoints of each
//! family, calibrated and exported by ModelOpt 0.47 itself (`fixtures/oracle/make_cases.py`).
//! Converting each case's input with its amax file and NO `--layout` must reproduce every
//! tensor and metadata file byte for byte; the shipped layout and the one inferred from the
//! files alone must plan the same checkpoint; `verify --source` must pass on ours and theirs.

mod common;

use common::{fixtures, run, TempDir};
use shardquant::compute::{Numerics, QuantFormat};
use shardquant::input::checkpoint::Checkpoint;
use shardquant::input::layout::{infer, Layout, Origin};
use shardquant::options::Options;
use shardquant::plan::Plan;
use std::path::{Path, PathBuf};

/// (case, format, the shipped layout config.json selects)
const CASES: &[(&str, QuantFormat, &str)] = &[
    ("phi3_nvfp4", QuantFormat::Nvfp4, "phi3"),
    ("glm4moe_nvfp4", QuantFormat::Nvfp4, "glm4_moe"),
    ("glm4moe_fp8", QuantFormat::Fp8, "glm4_moe"),
    ("qwen2moe_nvfp4", QuantFormat::Nvfp4, "qwen2_moe"),
    ("qwen3next_nvfp4", QuantFormat::Nvfp4, "qwen3_next"),
    ("gptoss_nvfp4", QuantFormat::Nvfp4, "gpt_oss"),
    ("gptoss_fp8", QuantFormat::Fp8, "gpt_oss"),
    ("llama4_nvfp4", QuantFormat::Nvfp4, "llama4"),
    ("mistral3_nvfp4", QuantFormat::Nvfp4, "mistral3"),
    ("gemma3_nvfp4", QuantFormat::Nvfp4, "gemma3"),
    ("gemma3text_nvfp4", QuantFormat::Nvfp4, "gemma3_text"),
    ("minimaxm2_nvfp4", QuantFormat::Nvfp4, "minimax_m2"),
    ("qwen3vlmoe_nvfp4", QuantFormat::Nvfp4, "qwen3_vl_moe"),
    ("deepseek_nvfp4", QuantFormat::Nvfp4, "deepseek_v3"),
];

fn case_dir(case: &str) -> PathBuf {
    fixtures().join("arch").join(case)
}

fn config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn convert_case(case: &str, format: QuantFormat) {
    let dir = case_dir(case);
    let tmp = TempDir::new(case);
    let out = tmp.join("out");
    let mut options = common::modelopt_case_options(format, Numerics::ModeloptCpu);
    options.stats = vec![dir.join("amax.safetensors")];
    shardquant::commands::convert::convert(&dir.join("input"), &out, &options).unwrap();
    let reference = dir.join("modelopt");
    common::assert_same_export(&out, &reference, case, |_, theirs| theirs);
    // verify --source compares every quantized linear with its source slice, on ours and theirs.
    for checkpoint in [&out, &reference] {
        let v = shardquant::commands::verify::verify(checkpoint, Some(&dir.join("input"))).unwrap();
        assert!(v.problems.is_empty(), "{case}: {:?}", v.problems);
        assert!(v.linears > 0 && v.errors.len() == v.linears, "{case}");
    }
}

#[test]
fn every_case_converts_byte_identically_without_a_layout() {
    for &(case, format, _) in CASES {
        convert_case(case, format);
    }
}

#[test]
fn shipped_and_inferred_layouts_plan_the_same_checkpoint() {
    for &(case, format, shipped) in CASES {
        let input = case_dir(case).join("input");
        let ckpt = Checkpoint::open(&input).unwrap();
        let config = config(&input);
        let layout = Layout::for_checkpoint(None, &config, &input, ckpt.tensors()).unwrap();
        assert_eq!(
            (layout.name.as_str(), layout.origin),
            (shipped, Origin::Shipped),
            "{case}"
        );
        let inferred = infer::infer(&config, ckpt.tensors(), &input.join("config.json")).unwrap();
        let mut options = Options::new(format);
        options.stats = vec![case_dir(case).join("amax.safetensors")];
        options.run.quiet = true;
        let a = Plan::build(&ckpt, layout, &config, &options).unwrap();
        let b = Plan::build(&ckpt, inferred, &config, &options).unwrap();
        assert_eq!(Plan::what_it_writes(&a), Plan::what_it_writes(&b), "{case}");
    }
}

/// The inferred layout, printed by `inspect --layout-json`, is accepted by `--layout` and
/// gives the same output.
#[test]
fn printed_layout_round_trips_through_layout() {
    let input = case_dir("gptoss_nvfp4").join("input");
    let (code, json, err) = run(&["inspect", input.to_str().unwrap(), "--layout-json"]);
    assert_eq!(code, 0, "{err}");
    let layout = Layout::from_json(&json, "printed").unwrap();
    assert_eq!(layout.name, "gpt_oss");
    let tmp = TempDir::new("arch-roundtrip");
    std::fs::write(tmp.join("layout.json"), &json).unwrap();
    for (name, extra) in [("a", None), ("b", Some(tmp.join("layout.json")))] {
        let mut args = vec![
            "convert".to_string(),
            input.display().to_string(),
            tmp.join(name).display().to_string(),
            "--format".into(),
            "w4a16_nvfp4".into(),
            "-q".into(),
        ];
        if let Some(l) = extra {
            args.extend(["--layout".to_string(), l.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{err}");
    }
    common::assert_same_tensors(&tmp.join("a"), &tmp.join("b"));
}

/// The worst case: gpt-oss experts declared as [E, out, in] fused gate/up (they are
/// [E, in, out]) must be refused before anything is written, naming the shape.
#[test]
fn gpt_oss_experts_in_the_wrong_orientation_are_refused() {
    let input = case_dir("gptoss_nvfp4").join("input");
    let (_, json, _) = run(&["inspect", input.to_str().unwrap(), "--layout-json"]);
    let mut layout: serde_json::Value = serde_json::from_str(&json).unwrap();
    let experts = layout["experts"].as_object_mut().unwrap();
    experts.insert("fused_transposed".into(), false.into());
    experts.insert("module".into(), "mlp.experts.{expert}".into());
    let tmp = TempDir::new("arch-wrong");
    std::fs::write(tmp.join("layout.json"), layout.to_string()).unwrap();
    let out = tmp.join("out");
    let (code, _, err) = run(&[
        "convert",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--format",
        "w4a16_nvfp4",
        "--layout",
        tmp.join("layout.json").to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("gate_up_proj") && err.contains("hidden_size"),
        "{err}"
    );
    assert!(!out.exists());
}

/// Real-size planning from a real tensor list (gpt-oss-20b's header, written over sparse
/// files): the shipped layout is chosen, 24 layers × (4 attention + 2 fused experts) are
/// quantized, and inference alone plans the same.
#[test]
fn gpt_oss_20b_header_plans_right() {
    use shardquant::skeleton::TensorList;
    let list = TensorList::read(&fixtures().join("headers").join("gpt-oss-20b.json")).unwrap();
    let tmp = TempDir::new("arch-header");
    let dir = tmp.join("gpt-oss-20b");
    list.write_skeleton(&dir).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let layout = Layout::for_checkpoint(None, &list.config, &dir, ckpt.tensors()).unwrap();
    assert_eq!(
        (layout.name.as_str(), layout.origin),
        ("gpt_oss", Origin::Shipped)
    );
    let options = Options::new(QuantFormat::W4a16Nvfp4);
    let plan = Plan::build(&ckpt, layout, &list.config, &options).unwrap();
    assert_eq!(plan.quantized_count(), 24 * 6);
    let fused: Vec<_> = plan
        .outputs
        .iter()
        .filter(|o| o.name == "model.layers.0.mlp.experts.gate_up_proj")
        .collect();
    // [E, in / 2, out] packed: 32 experts, hidden 2880 / 2, 2 × 2880 outputs.
    assert_eq!(fused.len(), 1);
    assert_eq!(fused[0].shape, vec![32, 1440, 5760]);
    let inferred = infer::infer(&list.config, ckpt.tensors(), &dir.join("config.json")).unwrap();
    let other = Plan::build(&ckpt, inferred, &list.config, &options).unwrap();
    assert_eq!(Plan::what_it_writes(&plan), Plan::what_it_writes(&other));
}

/// A copy of a fixture's input with extra BF16 tensors in a new shard (listed in the index).
fn input_with_extra(case: &str, tag: &str, extra: &[(&str, &[usize])]) -> (TempDir, PathBuf) {
    let tmp = TempDir::new(tag);
    let input = tmp.join("input");
    common::copy_dir(&case_dir(case).join("input"), &input);
    let data: Vec<Vec<u8>> = extra
        .iter()
        .map(|(_, shape)| {
            let n: usize = shape.iter().product();
            // bf16 values 0.5 + small steps: finite, nonzero, deterministic.
            (0..n)
                .flat_map(|i| half::bf16::from_f32(0.5 + (i % 7) as f32 / 64.0).to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = extra
        .iter()
        .zip(&data)
        .map(|((name, shape), bytes)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::BF16,
                shape.to_vec(),
                bytes,
            )
            .unwrap();
            (name.to_string(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &input.join("extra.safetensors")).unwrap();
    let index_path = input.join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    for (name, _) in extra {
        index["weight_map"][*name] = "extra.safetensors".into();
    }
    std::fs::write(&index_path, index.to_string()).unwrap();
    (tmp, input)
}

fn hf_exclude(out: &Path) -> Vec<String> {
    let hq: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("hf_quant_config.json")).unwrap())
            .unwrap();
    serde_json::from_value(hq["quantization"]["exclude_modules"].clone()).unwrap()
}

/// MTP layers (past `num_hidden_layers`, GLM-4.5's `num_nextn_predict_layers`) pass through
/// unquantized and are listed as `prefix.N*`, as ModelOpt's `_add_mtp_exclusions` does.
#[test]
fn mtp_layers_pass_through_and_are_listed() {
    let (tmp, input) = input_with_extra(
        "glm4moe_nvfp4",
        "arch-mtp",
        &[
            ("model.layers.2.self_attn.q_proj.weight", &[64, 64]),
            ("model.layers.2.eh_proj.weight", &[64, 128]),
        ],
    );
    let out = tmp.join("out");
    let (code, _, err) = run(&[
        "convert",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--format",
        "w4a16_nvfp4",
        "-q",
    ]);
    assert_eq!(code, 0, "{err}");
    let tensors = common::load_tensors(&out);
    let q = &tensors["model.layers.2.self_attn.q_proj.weight"];
    assert_eq!((q.0.as_str(), q.1.clone()), ("BF16", vec![64, 64]));
    assert!(!tensors.contains_key("model.layers.2.self_attn.q_proj.weight_scale"));
    assert!(tensors.contains_key("model.layers.1.self_attn.q_proj.weight_scale"));
    assert!(hf_exclude(&out).contains(&"model.layers.2*".to_string()));
}

/// A 2-D weight no rule classifies stops the run, naming it and how to go on.
#[test]
fn unclassified_weight_is_refused() {
    let (tmp, input) = input_with_extra(
        "phi3_nvfp4",
        "arch-unclassified",
        &[("model.layers.0.mlp.mystery.weight", &[64, 64])],
    );
    let out = tmp.join("out");
    let (code, _, err) = run(&[
        "convert",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--format",
        "w4a16_nvfp4",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("model.layers.0.mlp.mystery.weight"), "{err}");
    assert!(
        err.contains("--layout-json") && err.contains("--exclude"),
        "{err}"
    );
    assert!(!out.exists());
}

/// One rule each, as planned from the fixtures: the module is not quantized, its tensors pass
/// through unchanged, and it is (or, for an unwrapped module, is not) in `exclude_modules`.
#[test]
fn classification_rules() {
    // (case, tensor, listed in exclude_modules as)
    let rules: &[(&str, &str, Option<&str>)] = &[
        // *linear_attn.conv1d* (a [C, 1, K] conv weight, not fused experts)
        (
            "qwen3next_nvfp4",
            "model.layers.0.linear_attn.conv1d.weight",
            Some("model.layers.0.linear_attn.conv1d"),
        ),
        // *linear_attn.in_proj_b* (in_proj_ba)
        (
            "qwen3next_nvfp4",
            "model.layers.0.linear_attn.in_proj_ba.weight",
            Some("model.layers.0.linear_attn.in_proj_ba"),
        ),
        // *mlp.shared_expert_gate.*
        (
            "qwen2moe_nvfp4",
            "model.layers.0.mlp.shared_expert_gate.weight",
            Some("model.layers.0.mlp.shared_expert_gate"),
        ),
        // routers: *router*, *mlp.gate.*, *block_sparse_moe.gate*
        (
            "gptoss_nvfp4",
            "model.layers.0.mlp.router.weight",
            Some("model.layers.0.mlp.router"),
        ),
        (
            "minimaxm2_nvfp4",
            "model.layers.0.block_sparse_moe.gate.weight",
            Some("model.layers.0.block_sparse_moe.gate"),
        ),
        (
            "glm4moe_nvfp4",
            "model.layers.1.mlp.gate.weight",
            Some("model.layers.1.mlp.gate"),
        ),
        // biases pass through beside their quantized weight
        (
            "gptoss_nvfp4",
            "model.layers.0.mlp.experts.gate_up_proj_bias",
            None,
        ),
        ("gptoss_nvfp4", "model.layers.0.self_attn.q_proj.bias", None),
        ("gptoss_nvfp4", "model.layers.0.self_attn.sinks", None),
        // vision towers and projectors
        (
            "mistral3_nvfp4",
            "vision_tower.patch_conv.weight",
            Some("vision_tower*"),
        ),
        (
            "mistral3_nvfp4",
            "multi_modal_projector.linear_1.weight",
            Some("multi_modal_projector*"),
        ),
        (
            "llama4_nvfp4",
            "vision_model.patch_embedding.linear.weight",
            Some("vision_model*"),
        ),
        (
            "qwen3vlmoe_nvfp4",
            "model.visual.blocks.0.attn.qkv.weight",
            Some("model.visual*"),
        ),
        (
            "gemma3_nvfp4",
            "multi_modal_projector.mm_input_projection_weight",
            None,
        ),
        // embeddings: nn.Embedding listed, Gemma's scaled embedding not
        (
            "mistral3_nvfp4",
            "language_model.model.embed_tokens.weight",
            Some("language_model.model.embed_tokens"),
        ),
        ("gemma3text_nvfp4", "model.embed_tokens.weight", None),
    ];
    for &(case, tensor, listed) in rules {
        let input = case_dir(case).join("input");
        let ckpt = Checkpoint::open(&input).unwrap();
        let config = config(&input);
        let layout = Layout::for_checkpoint(None, &config, &input, ckpt.tensors()).unwrap();
        let mut options = Options::new(QuantFormat::W4a16Nvfp4);
        options.run.quiet = true;
        let plan = Plan::build(&ckpt, layout, &config, &options).unwrap();
        let module = tensor.rsplit_once('.').unwrap().0;
        // A bias or sink belongs to a quantized module; anything else is not quantized.
        let beside_a_linear = tensor.ends_with("bias") || tensor.ends_with("sinks");
        let quantized = plan
            .linears
            .iter()
            .any(|p| p.linear.excluded.is_none() && p.linear.module == module);
        assert!(
            beside_a_linear || !quantized,
            "{case}: {module} is quantized"
        );
        let source = ckpt.tensors().iter().find(|t| t.name == tensor).unwrap();
        let out = plan.outputs.iter().find(|o| o.name == tensor);
        let out = out.unwrap_or_else(|| panic!("{case}: {tensor} is not written"));
        assert_eq!(
            (out.dtype, &out.shape),
            (source.dtype, &source.shape),
            "{tensor}"
        );
        match listed {
            Some(name) => assert!(
                plan.exclude_modules.iter().any(|e| e == name),
                "{case}: {name} not in {:?}",
                plan.exclude_modules
            ),
            None => assert!(
                beside_a_linear || !plan.exclude_modules.iter().any(|e| e.starts_with(module)),
                "{case}: {module} listed in {:?}",
                plan.exclude_modules
            ),
        }
    }
}

/// Progress counts the model's bytes: every tensor of the checkpoint is read once, so the
/// units' read bytes add up to the checkpoint's tensor bytes (not input + output + copies).
#[test]
fn progress_counts_the_models_bytes() {
    for case in ["gptoss_nvfp4", "qwen3vlmoe_nvfp4", "glm4moe_fp8"] {
        let input = case_dir(case).join("input");
        let ckpt = Checkpoint::open(&input).unwrap();
        let config = config(&input);
        let layout = Layout::for_checkpoint(None, &config, &input, ckpt.tensors()).unwrap();
        let options = Options::new(QuantFormat::W4a16Nvfp4);
        let plan = Plan::build(&ckpt, layout, &config, &options).unwrap();
        let read: u64 = plan.units.iter().map(|u| u.read_bytes()).sum();
        let tensors: u64 = ckpt.tensors().iter().map(|t| t.len as u64).sum();
        assert_eq!(read, tensors, "{case}");
    }
}
