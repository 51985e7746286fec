//! Statistics from other tools (fixtures/golden/stats, made by torch.save and llama.cpp's
//! gguf-py) and the policies for experts that saw no calibration tokens.

mod common;

use common::{assert_same_tensors, fixtures, load_tensors, TempDir};
use shardquant::compute::{Numerics, QuantFormat};
use shardquant::input::layout::Layout;
use shardquant::input::stats::{ActivationStats, ModelNames};
use shardquant::options::Options;
use shardquant::options::{ExpertInputAmax, KvCache, UncalibratedExperts};
use std::path::PathBuf;

fn stats_fixture(name: &str) -> PathBuf {
    fixtures().join("golden/stats").join(name)
}

fn layout(name: &str) -> Layout {
    Layout::builtin()
        .into_iter()
        .find(|l| l.name == name)
        .unwrap()
}

#[test]
fn smoothquant_act_scales_reproduce_the_modelopt_export() {
    let case = fixtures().join("golden/llama_nvfp4");
    let tmp = TempDir::new("actscales");
    let mut o = Options::new(QuantFormat::Nvfp4);
    o.output.numerics = Numerics::ModeloptCpu;
    o.stats = vec![stats_fixture("llama.act_scales.pt")];
    o.run.quiet = true;
    shardquant::commands::convert::convert(&case.join("input"), &tmp.join("out"), &o).unwrap();
    assert_same_tensors(&tmp.join("out"), &case.join("modelopt"));
}

#[test]
fn a_pickle_calling_a_function_is_refused_and_nothing_runs() {
    let case = fixtures().join("golden/llama_nvfp4");
    let tmp = TempDir::new("forbidden");
    let forbidden = stats_fixture("forbidden-global.pt");
    let out = tmp.join("out");
    let (code, _, stderr) = common::run(&[
        "convert",
        case.join("input").to_str().unwrap(),
        out.to_str().unwrap(),
        "--format",
        "nvfp4",
        "--stats",
        forbidden.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("builtins.print"), "{stderr}");
    assert!(stderr.contains("forbidden-global.pt"), "{stderr}");
    assert!(!out.exists());
}

/// The modules of the DeepSeek-V3-shaped model the dumps were made for: layer 0 dense,
/// layer 1 MoE with 4 routed experts and a shared expert.
fn deepseek_names() -> ModelNames {
    let mut names = ModelNames::default();
    for l in 0..2 {
        for m in [
            "q_a_proj",
            "q_b_proj",
            "kv_a_proj_with_mqa",
            "kv_b_proj",
            "o_proj",
        ] {
            names
                .linears
                .insert(format!("model.layers.{l}.self_attn.{m}"), (64, 64));
        }
    }
    for m in ["gate_proj", "up_proj", "down_proj"] {
        names
            .linears
            .insert(format!("model.layers.0.mlp.{m}"), (64, 64));
        names
            .linears
            .insert(format!("model.layers.1.mlp.shared_experts.{m}"), (64, 64));
        for e in 0..4 {
            names
                .linears
                .insert(format!("model.layers.1.mlp.experts.{e}.{m}"), (64, 64));
        }
    }
    names.experts.insert(1, (0..4).collect());
    names
}

#[test]
fn deepseek_amax_dumps_merge_ranks_and_map_native_names() {
    let paths = vec![
        stats_fixture("deepseek.amax_dict_rank1-mp2.pt"),
        stats_fixture("deepseek.amax_dict_rank0-mp2.pt"),
    ];
    let stats = ActivationStats::load_with(&paths, &layout("deepseek_v3"), &deepseek_names(), true)
        .unwrap();
    assert!(stats.unmatched.is_empty(), "{:?}", stats.unmatched);
    for e in 0..3 {
        for m in ["gate_proj", "up_proj", "down_proj"] {
            let s = stats
                .module(&format!("model.layers.1.mlp.experts.{e}.{m}"))
                .unwrap();
            assert!(
                s.input_amax.unwrap() > 0.0 && s.weight_amax.is_some(),
                "expert {e} {m}"
            );
        }
    }
    let dead = stats
        .module("model.layers.1.mlp.experts.3.gate_proj")
        .unwrap();
    assert_eq!(dead.input_amax, None, "expert 3 saw no tokens");
    assert!(dead.weight_amax.is_some(), "but its weight amax is there");
    assert!(stats
        .module("model.layers.0.self_attn.q_a_proj")
        .unwrap()
        .input_amax
        .is_some());
    // The order of the files does not matter.
    let reversed: Vec<PathBuf> = paths.iter().rev().cloned().collect();
    let again =
        ActivationStats::load_with(&reversed, &layout("deepseek_v3"), &deepseek_names(), true)
            .unwrap();
    assert_eq!(
        format!("{:?}", again.modules),
        format!("{:?}", stats.modules)
    );
}

fn qwen3moe_names() -> ModelNames {
    names_of("qwen3moe_nvfp4")
}

/// Module names and shapes of a golden case's input, as the planner gives them to importers.
fn names_of(case: &str) -> ModelNames {
    let ckpt = shardquant::input::checkpoint::Checkpoint::open(
        &fixtures().join("golden").join(case).join("input"),
    )
    .unwrap();
    let mut names = ModelNames::default();
    for t in ckpt.tensors() {
        let Some(m) = t.name.strip_suffix(".weight") else {
            continue;
        };
        if t.shape.len() == 2 && m.contains("_proj") {
            names
                .linears
                .insert(m.to_string(), (t.shape[0], t.shape[1]));
            if let Some(rest) = m
                .strip_prefix("model.layers.")
                .filter(|r| r.contains(".experts."))
            {
                let mut parts = rest.split('.');
                let layer: usize = parts.next().unwrap().parse().unwrap();
                let expert: usize = parts.nth(2).unwrap().parse().unwrap();
                names.experts.entry(layer).or_default().insert(expert);
            }
        }
    }
    names
}

#[test]
fn imatrix_files_mark_the_uncalibrated_experts() {
    for file in ["qwen3moe.imatrix.gguf", "qwen3moe.imatrix.dat"] {
        let stats = ActivationStats::load_with(
            &[stats_fixture(file)],
            &layout("qwen3_moe"),
            &qwen3moe_names(),
            false,
        )
        .unwrap();
        assert!(stats.unmatched.is_empty(), "{file}: {:?}", stats.unmatched);
        for e in 0..8 {
            let s = stats
                .module(&format!("model.layers.1.mlp.experts.{e}.gate_proj"))
                .unwrap();
            if e == 2 || e == 5 {
                assert_eq!(s.token_count, Some(0), "{file}: expert {e}");
            } else {
                assert_ne!(s.token_count, Some(0), "{file}: expert {e}");
                let channels = s
                    .input_sum_sq
                    .as_ref()
                    .map(Vec::len)
                    .or(s.input_mean_sq.as_ref().map(Vec::len));
                assert_eq!(channels, Some(64), "{file}: expert {e}");
            }
        }
        let q = stats.module("model.layers.0.self_attn.q_proj").unwrap();
        assert!(q.input_sum_sq.is_some() || q.input_mean_sq.is_some());
    }
}

/// A MoE model with per-expert input amax (transformers-4 ModelOpt names), some missing.
fn moe_with_partial_stats(tmp: &TempDir) -> (PathBuf, PathBuf) {
    let spec = shardquant::synthetic::SyntheticSpec {
        layers: 2,
        hidden: 64,
        experts: 4,
        moe_intermediate: 32,
        ..Default::default()
    };
    let input = tmp.join("in");
    spec.write(&input).unwrap();
    let mut entries: Vec<(String, f32)> = Vec::new();
    for l in 0..2 {
        for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            entries.push((
                format!("model.layers.{l}.self_attn.{m}.input_quantizer._amax"),
                1.5,
            ));
        }
        for e in 0..4 {
            // Layer 1 expert 2 saw no tokens: no keys at all.
            if l == 1 && e == 2 {
                continue;
            }
            let v = 1.0 + e as f32 * 0.25;
            for m in ["gate_proj", "up_proj"] {
                entries.push((
                    format!("model.layers.{l}.mlp.experts.{e}.{m}.input_quantizer._amax"),
                    v,
                ));
            }
            entries.push((
                format!("model.layers.{l}.mlp.experts.{e}.down_proj.input_quantizer._amax"),
                2.0 * v,
            ));
        }
    }
    let bytes: Vec<(String, Vec<u8>)> = entries
        .into_iter()
        .map(|(k, v)| (k, v.to_le_bytes().to_vec()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![], b).unwrap(),
            )
        })
        .collect();
    let amax = tmp.join("amax.safetensors");
    safetensors::serialize_to_file(views, None, &amax).unwrap();
    (input, amax)
}

fn input_scale(t: &std::collections::BTreeMap<String, common::Tensor>, name: &str) -> f32 {
    f32::from_le_bytes(t[name].2[..4].try_into().unwrap())
}

#[test]
fn dead_experts_under_each_policy() {
    let tmp = TempDir::new("deadexperts");
    let (input, amax) = moe_with_partial_stats(&tmp);
    let base = |u: UncalibratedExperts, e: ExpertInputAmax| {
        let mut o = Options::new(QuantFormat::Nvfp4);
        o.output.numerics = Numerics::ModeloptCpu;
        o.stats = vec![amax.clone()];
        o.run.quiet = true;
        o.output.uncalibrated_experts = u;
        o.output.expert_input_amax = e;
        o
    };
    // error: stops before writing anything, naming the layer and the expert.
    let err = shardquant::commands::convert::convert(
        &input,
        &tmp.join("e"),
        &base(UncalibratedExperts::Error, ExpertInputAmax::LayerMax),
    )
    .unwrap_err();
    assert_eq!(err.kind(), shardquant::error::ErrorKind::BadInput);
    assert!(
        err.to_string().contains("layer 1 (gate/up): experts 2"),
        "{err}"
    );
    assert!(
        err.to_string().contains("--uncalibrated-experts peer-max"),
        "{err}"
    );
    assert!(!tmp.join("e").exists());
    // peer-max + layer-max: every expert of a layer gets the layer's max (ModelOpt's output).
    let out = tmp.join("lm");
    shardquant::commands::convert::convert(
        &input,
        &out,
        &base(UncalibratedExperts::PeerMax, ExpertInputAmax::LayerMax),
    )
    .unwrap();
    let t = load_tensors(&out);
    for e in 0..4 {
        assert_eq!(
            input_scale(
                &t,
                &format!("model.layers.1.mlp.experts.{e}.gate_proj.input_scale")
            ),
            1.75f32 / 2688.0
        );
        assert_eq!(
            input_scale(
                &t,
                &format!("model.layers.1.mlp.experts.{e}.down_proj.input_scale")
            ),
            3.5f32 / 2688.0
        );
    }
    // per-expert: calibrated experts keep their own value, the dead one gets the peer max.
    let out = tmp.join("pe");
    shardquant::commands::convert::convert(
        &input,
        &out,
        &base(UncalibratedExperts::PeerMax, ExpertInputAmax::PerExpert),
    )
    .unwrap();
    let t = load_tensors(&out);
    for (e, want) in [(0, 1.0f32), (1, 1.25), (2, 1.75), (3, 1.75)] {
        assert_eq!(
            input_scale(
                &t,
                &format!("model.layers.1.mlp.experts.{e}.up_proj.input_scale")
            ),
            want / 2688.0,
            "expert {e}"
        );
    }
    assert_eq!(
        input_scale(&t, "model.layers.0.mlp.experts.1.up_proj.input_scale"),
        1.25 / 2688.0
    );
}

#[test]
fn token_counts_of_zero_make_an_expert_uncalibrated() {
    // The ModelOpt amax file gives every expert the layer's input amax; the imatrix says layer 1
    // experts 2 and 5 saw no tokens, which --uncalibrated-experts error then refuses.
    let case = fixtures().join("golden/qwen3moe_nvfp4");
    let tmp = TempDir::new("tokencount");
    let mut o = Options::new(QuantFormat::Nvfp4);
    o.output.numerics = Numerics::ModeloptCpu;
    o.stats = vec![
        case.join("amax.safetensors"),
        stats_fixture("qwen3moe.imatrix.gguf"),
    ];
    o.run.quiet = true;
    o.output.uncalibrated_experts = UncalibratedExperts::Error;
    let err = shardquant::commands::convert::convert(&case.join("input"), &tmp.join("out"), &o)
        .unwrap_err();
    assert!(
        err.to_string().contains("layer 1 (gate/up): experts 2, 5"),
        "{err}"
    );
    // peer-max reproduces ModelOpt's export (its layer-wide input amax is the peer max).
    o.output.uncalibrated_experts = UncalibratedExperts::PeerMax;
    shardquant::commands::convert::convert(&case.join("input"), &tmp.join("out"), &o).unwrap();
    assert_same_tensors(&tmp.join("out"), &case.join("modelopt"));
}

#[test]
fn stats_inspect_and_import_round_trip_through_the_cli() {
    let case = fixtures().join("golden/qwen3moe_nvfp4");
    let tmp = TempDir::new("statscli");
    let amax = case.join("amax.safetensors");
    let imatrix = stats_fixture("qwen3moe.imatrix.gguf");
    let model = case.join("input");
    let (code, out, err) = common::run(&[
        "stats",
        "inspect",
        amax.to_str().unwrap(),
        imatrix.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("input amax:            56 of 56"), "{out}");
    assert!(out.contains("layer 1 gate/up: experts [2, 5]"), "{out}");
    // Without a model: what each file holds.
    let (code, out, _) = common::run(&["stats", "inspect", imatrix.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("blk.1.ffn_gate_exps.weight: experts [2, 5] saw no tokens"),
        "{out}"
    );
    // Import into the canonical schema (zstd), then convert with it: same bytes as ModelOpt.
    let native = tmp.join("qwen3moe.stats.safetensors.zst");
    let (code, _, err) = common::run(&[
        "stats",
        "import",
        amax.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "-o",
        native.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let mut o = Options::new(QuantFormat::Nvfp4);
    o.output.numerics = Numerics::ModeloptCpu;
    o.stats = vec![native];
    o.run.quiet = true;
    shardquant::commands::convert::convert(&model, &tmp.join("out"), &o).unwrap();
    assert_same_tensors(&tmp.join("out"), &case.join("modelopt"));
}

#[test]
fn an_exported_checkpoint_gives_back_its_exact_scales() {
    // ModelOpt's own exports used as statistics: every input scale is written back unchanged,
    // whichever numerics mode computes the rest.
    for (case, format) in [
        ("llama_nvfp4", QuantFormat::Nvfp4),
        ("llama_fp8_gpu", QuantFormat::Fp8),
    ] {
        let dir = fixtures().join("golden").join(case);
        let reference = load_tensors(&dir.join("modelopt"));
        for numerics in [Numerics::ModeloptCpu, Numerics::ModeloptCuda] {
            let tmp = TempDir::new("exported");
            let mut o = Options::new(format);
            o.output.numerics = numerics;
            o.stats = vec![dir.join("modelopt")];
            o.run.quiet = true;
            shardquant::commands::convert::convert(&dir.join("input"), &tmp.join("out"), &o)
                .unwrap();
            let t = load_tensors(&tmp.join("out"));
            let scales: Vec<&String> = reference
                .keys()
                .filter(|k| k.ends_with(".input_scale"))
                .collect();
            assert_eq!(scales.len(), 14);
            for k in scales {
                assert_eq!(t[k].2, reference[k].2, "{case} {numerics:?} {k}");
            }
        }
    }
    // Across formats: an NVFP4 export's input amax (scale x 2688, exact in f64) becomes an FP8
    // scale rounded once.
    let dir = fixtures().join("golden/llama_nvfp4");
    let tmp = TempDir::new("exported-cross");
    let mut o = Options::new(QuantFormat::Fp8);
    o.stats = vec![dir.join("modelopt")];
    o.run.quiet = true;
    shardquant::commands::convert::convert(&dir.join("input"), &tmp.join("out"), &o).unwrap();
    let t = load_tensors(&tmp.join("out"));
    let reference = load_tensors(&dir.join("modelopt"));
    let k = "model.layers.1.self_attn.o_proj.input_scale";
    let s = f32::from_le_bytes(reference[k].2[..4].try_into().unwrap());
    let want = ((s as f64 * 2688.0) / 448.0) as f32;
    assert_eq!(t[k].2, want.to_le_bytes().to_vec());
}

#[test]
fn kv_cache_scales_survive_a_round_trip_through_an_export() {
    let tmp = TempDir::new("kvround");
    let spec = shardquant::synthetic::SyntheticSpec::default();
    let input = tmp.join("in");
    spec.write(&input).unwrap();
    let amax = tmp.join("amax.safetensors");
    spec.write_amax(&amax).unwrap();
    let convert = |stats: &std::path::Path, out: &std::path::Path, numerics: Numerics| {
        let mut o = Options::new(QuantFormat::Fp8);
        o.output.numerics = numerics;
        o.stats = vec![stats.to_path_buf()];
        o.output.kv_cache = KvCache::Fp8;
        o.run.quiet = true;
        shardquant::commands::convert::convert(&input, out, &o).unwrap();
    };
    convert(&amax, &tmp.join("first"), Numerics::ModeloptCuda);
    convert(
        &tmp.join("first"),
        &tmp.join("second"),
        Numerics::ModeloptCpu,
    );
    let (a, b) = (
        load_tensors(&tmp.join("first")),
        load_tensors(&tmp.join("second")),
    );
    let scales: Vec<&String> = a
        .keys()
        .filter(|k| k.ends_with("_scale") && !k.ends_with("weight_scale"))
        .collect();
    assert!(scales.iter().any(|k| k.ends_with("k_scale")));
    for k in scales {
        assert_eq!(a[k].2, b[k].2, "{k}");
    }
}

/// The statistics a model uses, in a comparable form (per module: input amax, token count,
/// per-channel lengths and sums).
fn summary(stats: &ActivationStats) -> Vec<String> {
    stats
        .modules
        .iter()
        .map(|(m, s)| {
            let sum = |v: &Option<Vec<f64>>| {
                v.as_ref()
                    .map(|v| (v.len(), v.iter().sum::<f64>().to_bits()))
            };
            let sum32 = |v: &Option<Vec<f32>>| {
                v.as_ref()
                    .map(|v| (v.len(), v.iter().map(|x| *x as f64).sum::<f64>().to_bits()))
            };
            format!(
                "{m} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                s.input_amax.map(f32::to_bits),
                s.token_count,
                sum(&s.input_sum_sq),
                sum32(&s.input_mean_sq),
                sum32(&s.input_amax_ch),
                s.k_cache_amax,
                s.v_cache_amax
            )
        })
        .collect()
}

#[test]
fn every_format_round_trips_through_the_canonical_schema() {
    let tmp = TempDir::new("roundtrip");
    let cases: Vec<(Vec<PathBuf>, &str, ModelNames)> = vec![
        (
            vec![stats_fixture("llama.act_scales.pt")],
            "llama",
            names_of("llama_nvfp4"),
        ),
        (
            vec![stats_fixture("qwen3moe.imatrix.gguf")],
            "qwen3_moe",
            qwen3moe_names(),
        ),
        (
            vec![stats_fixture("qwen3moe.imatrix.dat")],
            "qwen3_moe",
            qwen3moe_names(),
        ),
        (
            vec![fixtures().join("golden/qwen3moe_nvfp4/amax.safetensors")],
            "qwen3_moe",
            qwen3moe_names(),
        ),
        (
            vec![
                stats_fixture("deepseek.amax_dict_rank0-mp2.pt"),
                stats_fixture("deepseek.amax_dict_rank1-mp2.pt"),
            ],
            "deepseek_v3",
            deepseek_names(),
        ),
    ];
    for (k, (files, layout_name, names)) in cases.into_iter().enumerate() {
        let lay = layout(layout_name);
        let direct = ActivationStats::load_with(&files, &lay, &names, false).unwrap();
        for compress in [false, true] {
            let out = tmp.join(&format!(
                "{k}-{compress}.stats.safetensors{}",
                if compress { ".zst" } else { "" }
            ));
            let meta = shardquant::input::stats::native::NativeMeta {
                source_format: "test".into(),
                source_files: vec![],
                notes: vec![],
                expert_input_amax: "unknown".into(),
            };
            shardquant::input::stats::native::write_native(&out, &direct, &meta, compress).unwrap();
            let back = ActivationStats::load_with(&[out], &lay, &names, false).unwrap();
            assert_eq!(
                summary(&back),
                summary(&direct),
                "{files:?} compress={compress}"
            );
        }
    }
}

#[test]
fn a_larger_plain_amax_beats_an_exact_exported_one() {
    let dir = fixtures().join("golden/llama_nvfp4");
    let tmp = TempDir::new("exactmerge");
    let module = "model.layers.0.mlp.down_proj";
    let reference = load_tensors(&dir.join("modelopt"));
    let s = f32::from_le_bytes(
        reference[&format!("{module}.input_scale")].2[..4]
            .try_into()
            .unwrap(),
    );
    let big = 4.0 * s * 2688.0;
    let bytes = big.to_le_bytes().to_vec();
    let key = format!("{module}.input_quantizer._amax");
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![], &bytes).unwrap();
    let file = tmp.join("big.safetensors");
    safetensors::serialize_to_file(vec![(key, view)], None, &file).unwrap();
    let mut o = Options::new(QuantFormat::Nvfp4);
    o.output.numerics = Numerics::ModeloptCpu;
    o.stats = vec![dir.join("modelopt"), file];
    o.run.quiet = true;
    shardquant::commands::convert::convert(&dir.join("input"), &tmp.join("out"), &o).unwrap();
    let t = load_tensors(&tmp.join("out"));
    assert_eq!(
        t[&format!("{module}.input_scale")].2,
        (big / 2688.0).to_le_bytes().to_vec()
    );
}

#[test]
fn an_imatrix_alone_names_only_the_experts_without_tokens() {
    let model = fixtures().join("golden/qwen3moe_nvfp4/input");
    let imatrix = stats_fixture("qwen3moe.imatrix.gguf");
    let (code, out, err) = common::run(&[
        "stats",
        "inspect",
        imatrix.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("layer 1 gate/up: experts [2, 5]"), "{out}");
    assert!(!out.contains("layer 0 gate/up"), "{out}");
}

#[test]
fn an_expert_without_tokens_in_one_file_is_calibrated_by_another() {
    // Legacy .dat imatrices only know "no tokens" (count 0) or "some" (count unknown).
    let mut stats = ActivationStats::default();
    let module = "model.layers.1.mlp.experts.2.gate_proj";
    let dead = shardquant::input::stats::ModuleStats {
        token_count: Some(0),
        ..Default::default()
    };
    let seen = shardquant::input::stats::ModuleStats {
        input_mean_sq: Some(vec![1.0; 4]),
        ..Default::default()
    };
    stats.merge_channels(module, &dead).unwrap();
    stats.merge_channels(module, &seen).unwrap();
    assert_eq!(stats.module(module).unwrap().token_count, None);
    // Counted files add up.
    let counted = shardquant::input::stats::ModuleStats {
        token_count: Some(5),
        ..Default::default()
    };
    stats.merge_channels("m", &dead).unwrap();
    stats.merge_channels("m", &counted).unwrap();
    assert_eq!(stats.module("m").unwrap().token_count, Some(5));
}

/// `stats import` takes what `convert --stats A --stats B` takes: an imatrix (experts with no
/// tokens) with a ModelOpt amax file (a layer-wide input amax for every expert). The imported
/// file converts to the same bytes as the pair.
#[test]
fn import_accepts_what_convert_accepts() {
    let case = fixtures().join("golden").join("qwen3moe_nvfp4");
    let pair = vec![
        fixtures().join("golden/stats/qwen3moe.imatrix.gguf"),
        case.join("amax.safetensors"),
    ];
    let tmp = TempDir::new("import-pair");
    let imported = tmp.join("pair.stats.safetensors");
    let mut o = Options::new(QuantFormat::Nvfp4);
    o.run.quiet = true;
    let text =
        shardquant::commands::stats::import(&pair, &case.join("input"), &imported, &o).unwrap();
    assert!(
        text.contains("saw no calibration tokens in one file"),
        "{text}"
    );
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    o.stats = pair;
    shardquant::commands::convert::convert(&case.join("input"), &a, &o).unwrap();
    o.stats = vec![imported];
    shardquant::commands::convert::convert(&case.join("input"), &b, &o).unwrap();
    assert_same_tensors(&a, &b);
}
