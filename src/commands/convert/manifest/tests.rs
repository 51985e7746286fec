//! The manifest's bytes, key and checks.

use super::*;

fn key(version: &str, format: &str, size: u64, stats: &[&str]) -> Value {
    key_of(&json!({
        "version": version,
        "build": "b1",
        "options": {"format": format, "exclude": []},
        "inputs": [{"path": "config.json", "size": size, "sha256": "aa"}],
        "stats": stats.iter().map(|s| json!({"path": format!("/x/{s}"), "size": 1, "sha256": s})).collect::<Vec<_>>(),
        "layout_file": null,
    }))
}

#[test]
fn keys_ignore_where_statistics_are_and_their_order() {
    assert_eq!(
        key("1", "nvfp4", 5, &["a", "b"]),
        key("1", "nvfp4", 5, &["b", "a"])
    );
    assert_ne!(key("1", "nvfp4", 5, &["a"]), key("1", "nvfp4", 5, &["c"]));
}

#[test]
fn another_build_of_the_same_version_is_another_key() {
    let mine = key("1", "nvfp4", 5, &["a"]);
    let mut other = mine.clone();
    other["build"] = json!("b2");
    assert_ne!(mine, other);
    assert!(
        explain(&other, &mine).contains("another build"),
        "{}",
        explain(&other, &mine)
    );
    // Manifests written before builds were recorded are stale too.
    let mut old = mine.clone();
    old["build"] = Value::Null;
    assert_ne!(mine, old);
}

#[test]
fn differences_are_explained() {
    let base = key("1", "nvfp4", 5, &["a"]);
    assert!(explain(&key("0", "nvfp4", 5, &["a"]), &base).contains("made by shardquant"));
    let why = explain(&key("1", "fp8", 5, &["a"]), &base);
    assert!(
        why.contains("option format was \"fp8\", now \"nvfp4\""),
        "{why}"
    );
    assert!(explain(&key("1", "nvfp4", 6, &["a"]), &base).contains("config.json changed (size)"));
    assert!(explain(&key("1", "nvfp4", 5, &["z"]), &base).contains("statistics"));
}

/// The key of a conversion with `options` (what [`Provenance::compute`] records, inputs
/// left out).
fn options_key(options: &Options) -> Value {
    key_of(&json!({
        "version": "1",
        "build": "b1",
        "options": options.output_options(),
        "inputs": [],
        "stats": [],
        "layout_file": null,
    }))
}

#[test]
fn every_output_option_is_in_the_key() {
    use crate::compute::mse::CalibMethod;
    use crate::compute::{DequantPrecision, Numerics, QuantFormat};
    use crate::input::stats::StatsFormat;
    use crate::options::*;
    let base = Options::new(QuantFormat::Nvfp4);
    // No `..`: a new field does not compile until it gets a change in the table below.
    let OutputOptions {
        format: _,
        export: _,
        numerics: _,
        weight_amax: _,
        scope: _,
        excludes: _,
        kv_cache: _,
        fp8_dequant: _,
        keep_fp8_source: _,
        uncalibrated_experts: _,
        expert_input_amax: _,
        stats_format: _,
        max_shard_size: _,
        allow_nonfinite: _,
        calib: _,
        importance: _,
    } = &base.output;
    // The options of a conversion with the defaults, as manifests record them (in this
    // order): manifests written before must keep their key.
    let defaults = json!({
        "format": "nvfp4",
        "numerics": "modelopt-cuda",
        "weight_amax": "compute",
        "scope": "all",
        "exclude": [],
        "kv_cache": "none",
        "fp8_dequant": "bf16",
        "keep_fp8_source": false,
        "uncalibrated_experts": "peer-max",
        "expert_input_amax": "layer-max",
        "stats_format": null,
        "max_shard_size": 5_000_000_000u64,
        "allow_nonfinite": false,
        "calib": "max",
        "importance": "none",
    });
    assert_eq!(base.output_options().to_string(), defaults.to_string());
    // A change to each field, and what the manifest records for it.
    type Change = fn(&mut OutputOptions);
    let changes: [(Change, Value); 15] = [
        (|o| o.format = QuantFormat::Fp8, json!({"format": "fp8"})),
        (
            |o| o.numerics = Numerics::ModeloptCpu,
            json!({"numerics": "modelopt-cpu"}),
        ),
        (
            |o| o.weight_amax = WeightAmaxMode::Stats,
            json!({"weight_amax": "stats"}),
        ),
        (|o| o.scope = Scope::Experts, json!({"scope": "experts"})),
        (
            |o| o.excludes.push("*.mlp.*".into()),
            json!({"exclude": ["*.mlp.*"]}),
        ),
        (|o| o.kv_cache = KvCache::Fp8, json!({"kv_cache": "fp8"})),
        (
            |o| o.fp8_dequant = DequantPrecision::F32,
            json!({"fp8_dequant": "f32"}),
        ),
        (
            |o| o.keep_fp8_source = true,
            json!({"keep_fp8_source": true}),
        ),
        (
            |o| o.uncalibrated_experts = UncalibratedExperts::Error,
            json!({"uncalibrated_experts": "error"}),
        ),
        (
            |o| o.expert_input_amax = ExpertInputAmax::PerExpert,
            json!({"expert_input_amax": "per-expert"}),
        ),
        (
            |o| o.stats_format = Some(StatsFormat::ModeloptAmax),
            json!({"stats_format": "modelopt"}),
        ),
        (
            |o| o.max_shard_size = 1 << 20,
            json!({"max_shard_size": 1 << 20}),
        ),
        (
            |o| o.allow_nonfinite = true,
            json!({"allow_nonfinite": true}),
        ),
        (
            |o| o.calib = CalibMethod::MseFp8Sweep,
            json!({"calib": "mse-fp8-sweep"}),
        ),
        (
            |o| o.importance = ImportanceSource::Stats,
            json!({"importance": "stats"}),
        ),
    ];
    let old = options_key(&base);
    let mut changed = Vec::new();
    for (change, recorded) in &changes {
        let mut o = base.clone();
        change(&mut o.output);
        let new = options_key(&o);
        let (name, value) = recorded.as_object().unwrap().iter().next().unwrap();
        assert_eq!(&new["options"][name], value, "{name}");
        let mut back = new.clone();
        back["options"][name] = old["options"][name].clone();
        assert_eq!(back, old, "changing {name} changed more than {name}");
        let why = explain(&old, &new);
        assert!(why.starts_with(&format!("option {name} was ")), "{why}");
        changed.push(name.clone());
    }
    let all: Vec<String> = defaults.as_object().unwrap().keys().cloned().collect();
    assert_eq!(changed, all, "each option is changed once");
    // `export` is recorded only when it is not the default, so that the manifests of
    // ModelOpt conversions written before it existed keep their key.
    let mut o = base.clone();
    o.output.export = crate::compute::Export::CompressedTensors;
    let new = options_key(&o);
    assert_eq!(new["options"]["export"], json!("compressed-tensors"));
    let mut back = new.clone();
    back["options"].as_object_mut().unwrap().remove("export");
    assert_eq!(back, old);
    assert_ne!(new, old);
    // How a conversion runs is not in the key.
    let mut o = base.clone();
    o.run = RunOptions {
        threads: 3,
        device: crate::compute::cuda::DeviceChoice::Cpu,
        max_memory: 1,
        max_gpu_memory: 1,
        quiet: true,
        silent: true,
        verbose: true,
        report: Some("r.json".into()),
        force: true,
        resume: true,
    };
    assert_eq!(options_key(&o), old);
}
