//! Tests of the imatrix readers and the llama.cpp → HF name mapping: the golden files, files
//! built byte by byte in both formats, and hostile inputs.

use super::gguf::tests::{f32_bytes, temp_file, GgufBuilder};
use super::*;
use crate::error::ErrorKind;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/golden")
        .join(name)
}

fn by_name(entries: &[ImatrixEntry]) -> BTreeMap<&str, &ImatrixEntry> {
    entries.iter().map(|e| (e.name.as_str(), e)).collect()
}

/// A legacy `.dat` from (name, ncall, values) and an optional trailer (last_chunk, dataset).
fn dat_bytes(entries: &[(&str, i32, &[f32])], trailer: Option<(i32, Option<&str>)>) -> Vec<u8> {
    let mut b = (entries.len() as i32).to_le_bytes().to_vec();
    for (name, ncall, values) in entries {
        b.extend_from_slice(&(name.len() as i32).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&ncall.to_le_bytes());
        b.extend_from_slice(&(values.len() as i32).to_le_bytes());
        b.extend(f32_bytes(values));
    }
    if let Some((last_chunk, dataset)) = trailer {
        b.extend_from_slice(&last_chunk.to_le_bytes());
        if let Some(d) = dataset {
            b.extend_from_slice(&(d.len() as i32).to_le_bytes());
            b.extend_from_slice(d.as_bytes());
        }
    }
    b
}

fn read_bytes(
    tag: &str,
    bytes: &[u8],
    n_experts: Option<usize>,
) -> Result<(Vec<ImatrixEntry>, ImatrixMeta)> {
    read_imatrix_with_experts(&temp_file(tag, bytes), n_experts)
}

fn refused(tag: &str, bytes: &[u8], n_experts: Option<usize>, want: &str) -> Error {
    let e = read_bytes(tag, bytes, n_experts).expect_err("bad input must be refused");
    assert_eq!(e.kind(), ErrorKind::BadInput, "{e}");
    assert!(e.message().contains(want), "expected {want:?} in: {e}");
    assert!(e.message().contains(tag), "error must name the file: {e}");
    assert!(e.hint().is_some(), "no hint: {e}");
    e
}

#[test]
fn golden_gguf_imatrix() {
    let (entries, meta) = read_imatrix(&golden("stats/qwen3moe.imatrix.gguf")).unwrap();
    assert_eq!(meta.format, ImatrixFormat::Gguf);
    assert_eq!(meta.datasets, ["calibration.txt"]);
    assert_eq!(
        (meta.chunk_count, meta.chunk_size, meta.n_layer_nextn),
        (Some(8), Some(32), None)
    );
    assert!(meta.counts_are_tokens);
    assert_eq!(entries.len(), 14);
    for e in &entries {
        assert_eq!(e.channels, 64, "{}", e.name);
        assert_eq!(
            e.experts,
            if e.is_expert_tensor() { 8 } else { 1 },
            "{}",
            e.name
        );
        assert_eq!(e.sum_sq.len(), e.experts * e.channels);
        assert!(e.sum.is_none());
        let dead = e.uncalibrated_experts();
        if e.name.starts_with("blk.1.") && e.is_expert_tensor() {
            assert_eq!(dead, [2, 5], "{}", e.name);
            assert!(e.expert_sum_sq(2).iter().all(|&v| v == 0.0));
            assert!(e.mean_sq(5).is_none());
        } else {
            assert!(dead.is_empty(), "{}", e.name);
        }
    }
    let (with_model, _) =
        read_imatrix_with_experts(&golden("stats/qwen3moe.imatrix.gguf"), Some(8)).unwrap();
    assert_eq!(with_model, entries);
    let m = by_name(&entries);
    assert_eq!(m["blk.0.attn_q.weight"].counts, [256]);
    assert_eq!(
        m["blk.1.ffn_gate_exps.weight"].counts,
        [96, 34, 0, 99, 94, 0, 110, 55]
    );
    assert_eq!(m["blk.0.attn_k.weight"].sum_sq[0], 751.871_3);
}

#[test]
fn golden_dat_imatrix_with_and_without_the_expert_count() {
    let path = golden("stats/qwen3moe.imatrix.dat");
    let (inferred, meta) = read_imatrix(&path).unwrap();
    assert_eq!(meta.format, ImatrixFormat::LegacyDat);
    assert_eq!(
        (meta.datasets.clone(), meta.chunk_count, meta.chunk_size),
        (vec!["calibration.txt".to_string()], Some(8), None)
    );
    assert!(!meta.counts_are_tokens);
    assert!(
        meta.notes.iter().any(|n| n.contains("inferred")),
        "{:?}",
        meta.notes
    );
    let (given, _) = read_imatrix_with_experts(&path, Some(8)).unwrap();
    assert_eq!(inferred, given);
    let m = by_name(&given);
    for t in ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"] {
        let e = m[format!("blk.1.{t}.weight").as_str()];
        assert_eq!((e.experts, e.channels), (8, 64));
        assert_eq!(e.uncalibrated_experts(), [2, 5], "{t}");
        let e0 = m[format!("blk.0.{t}.weight").as_str()];
        assert!(e0.uncalibrated_experts().is_empty());
    }
    // Pseudo-counts: ncall of the tensor for every calibrated expert.
    assert_eq!(
        m["blk.1.ffn_gate_exps.weight"].counts,
        [4, 4, 0, 4, 4, 0, 4, 4]
    );
    assert_eq!(m["blk.0.attn_q.weight"].counts, [8]);
    // A wrong expert count is refused.
    let e = read_imatrix_with_experts(&path, Some(3)).unwrap_err();
    assert!(
        e.message()
            .contains("not a multiple of the model's 3 experts"),
        "{e}"
    );
}

#[test]
fn golden_files_agree() {
    let (g, _) = read_imatrix(&golden("stats/qwen3moe.imatrix.gguf")).unwrap();
    let (d, _) = read_imatrix(&golden("stats/qwen3moe.imatrix.dat")).unwrap();
    assert_eq!(
        g.iter().map(|e| &e.name).collect::<Vec<_>>(),
        d.iter().map(|e| &e.name).collect::<Vec<_>>()
    );
    let mut compared = 0;
    for (a, b) in g.iter().zip(&d) {
        assert_eq!(
            (a.experts, a.channels),
            (b.experts, b.channels),
            "{}",
            a.name
        );
        for e in 0..a.experts {
            // The same experts saw no tokens in both.
            assert_eq!(a.counts[e] == 0, b.counts[e] == 0, "{} expert {e}", a.name);
            let (Some(ma), Some(mb)) = (a.mean_sq(e), b.mean_sq(e)) else {
                continue;
            };
            for (c, (x, y)) in ma.iter().zip(&mb).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-5 * x.abs().max(1e-6),
                    "{} e{e} c{c}: {x} vs {y}",
                    a.name
                );
                compared += 1;
            }
        }
        // The .dat is what llama.cpp's writer makes from the GGUF's sums and counts:
        // ncall = ceil(max count / chunk_size) and value = (sum / count) * ncall, in f32.
        let ncall = a.counts.iter().max().unwrap().div_ceil(32);
        for e in 0..a.experts {
            for c in 0..a.channels {
                let i = e * a.channels + c;
                let want = if a.counts[e] == 0 {
                    0.0
                } else {
                    (a.sum_sq[i] / a.counts[e] as f32) * ncall as f32
                };
                assert_eq!(
                    b.sum_sq[i].to_bits(),
                    want.to_bits(),
                    "{} e{e} c{c}",
                    a.name
                );
            }
        }
    }
    assert_eq!(compared, (2 * 4 + 3 * 8 + 3 * 6) * 64);
}

#[test]
fn golden_entries_map_to_modules_of_the_model() {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden("qwen3moe_nvfp4/input/config.json")).unwrap(),
    )
    .unwrap();
    let model_type = config["model_type"].as_str().unwrap();
    let n_experts = config
        .get("num_experts")
        .unwrap_or(&config["num_local_experts"])
        .as_u64()
        .unwrap() as usize;
    let tensors: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden("qwen3moe_nvfp4/tensors.json")).unwrap(),
    )
    .unwrap();
    let names: BTreeSet<&str> = tensors["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for file in ["stats/qwen3moe.imatrix.gguf", "stats/qwen3moe.imatrix.dat"] {
        let (entries, _) = read_imatrix(&golden(file)).unwrap();
        let mut hit = BTreeSet::new();
        for e in &entries {
            let mapped = llama_cpp_to_hf(&e.name, model_type, n_experts)
                .unwrap_or_else(|| panic!("{} unmapped", e.name));
            assert_eq!(mapped.len(), e.experts, "{}", e.name);
            for (i, (module, expert)) in mapped.iter().enumerate() {
                assert_eq!(*expert, e.is_expert_tensor().then_some(i));
                assert!(
                    names.contains(format!("{module}.weight").as_str()),
                    "{module} not in the model"
                );
                assert!(hit.insert(module.clone()), "{module} mapped twice");
            }
        }
        // Every quantizable linear of the model has statistics (2 layers x (4 + 8 x 3)).
        assert_eq!(hit.len(), 2 * (4 + 8 * 3));
    }
}

fn map(name: &str, model_type: &str, n: usize) -> Vec<String> {
    llama_cpp_to_hf(name, model_type, n)
        .unwrap_or_default()
        .into_iter()
        .map(|(m, _)| m)
        .collect()
}

#[test]
fn name_mapping_dense_attention_and_mlp() {
    for mt in [
        "llama",
        "LlamaForCausalLM",
        "qwen3_moe",
        "mixtral",
        "deepseek_v3",
    ] {
        assert_eq!(
            map("blk.3.attn_q.weight", mt, 8),
            ["model.layers.3.self_attn.q_proj"]
        );
        assert_eq!(
            map("blk.3.attn_k.weight", mt, 8),
            ["model.layers.3.self_attn.k_proj"]
        );
        assert_eq!(
            map("blk.3.attn_v.weight", mt, 8),
            ["model.layers.3.self_attn.v_proj"]
        );
        assert_eq!(
            map("blk.3.attn_output.weight", mt, 8),
            ["model.layers.3.self_attn.o_proj"]
        );
        assert_eq!(
            map("blk.12.ffn_gate.weight", mt, 8),
            ["model.layers.12.mlp.gate_proj"]
        );
        assert_eq!(
            map("blk.12.ffn_up.weight", mt, 8),
            ["model.layers.12.mlp.up_proj"]
        );
        assert_eq!(
            map("blk.12.ffn_down.weight", mt, 8),
            ["model.layers.12.mlp.down_proj"]
        );
        assert_eq!(map("output.weight", mt, 8), ["lm_head"]);
    }
    assert_eq!(
        map("blk.0.attn_qkv.weight", "llama", 0),
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.k_proj",
            "model.layers.0.self_attn.v_proj"
        ]
    );
    assert_eq!(
        llama_cpp_to_hf("blk.0.attn_q.weight", "llama", 0),
        Some(vec![("model.layers.0.self_attn.q_proj".into(), None)])
    );
}

#[test]
fn name_mapping_experts() {
    let q = llama_cpp_to_hf("blk.1.ffn_gate_exps.weight", "qwen3_moe", 3).unwrap();
    assert_eq!(
        q,
        [0, 1, 2]
            .map(|e| (format!("model.layers.1.mlp.experts.{e}.gate_proj"), Some(e)))
            .to_vec()
    );
    assert_eq!(
        map("blk.1.ffn_up_exps.weight", "Qwen3MoeForCausalLM", 2),
        [
            "model.layers.1.mlp.experts.0.up_proj",
            "model.layers.1.mlp.experts.1.up_proj"
        ]
    );
    assert_eq!(
        map("blk.1.ffn_down_exps.weight", "qwen3_moe", 1),
        ["model.layers.1.mlp.experts.0.down_proj"]
    );
    assert_eq!(
        map("blk.1.ffn_gate_inp.weight", "qwen3_moe", 8),
        ["model.layers.1.mlp.gate"]
    );
    // Mixtral: w1 = gate, w3 = up, w2 = down, under block_sparse_moe.
    assert_eq!(
        map("blk.0.ffn_gate_exps.weight", "mixtral", 2),
        [
            "model.layers.0.block_sparse_moe.experts.0.w1",
            "model.layers.0.block_sparse_moe.experts.1.w1"
        ]
    );
    assert_eq!(
        map("blk.0.ffn_up_exps.weight", "MixtralForCausalLM", 1),
        ["model.layers.0.block_sparse_moe.experts.0.w3"]
    );
    assert_eq!(
        map("blk.0.ffn_down_exps.weight", "mixtral", 1),
        ["model.layers.0.block_sparse_moe.experts.0.w2"]
    );
    assert_eq!(
        map("blk.0.ffn_gate_inp.weight", "mixtral", 8),
        ["model.layers.0.block_sparse_moe.gate"]
    );
    // DeepSeek: routed and shared experts (plural).
    assert_eq!(
        map("blk.5.ffn_down_exps.weight", "deepseek_v3", 256).len(),
        256
    );
    assert_eq!(
        map("blk.5.ffn_down_exps.weight", "deepseek_v3", 256)[255],
        "model.layers.5.mlp.experts.255.down_proj"
    );
    assert_eq!(
        map("blk.5.ffn_gate_shexp.weight", "deepseek_v3", 256),
        ["model.layers.5.mlp.shared_experts.gate_proj"]
    );
    assert_eq!(
        map("blk.5.ffn_up_shexp.weight", "DeepseekV3ForCausalLM", 256),
        ["model.layers.5.mlp.shared_experts.up_proj"]
    );
    assert_eq!(
        map("blk.5.ffn_down_shexp.weight", "deepseek_v2", 64),
        ["model.layers.5.mlp.shared_experts.down_proj"]
    );
    // Qwen2-MoE: one shared expert (singular) and its gate.
    assert_eq!(
        map("blk.2.ffn_down_shexp.weight", "qwen2_moe", 60),
        ["model.layers.2.mlp.shared_expert.down_proj"]
    );
    assert_eq!(
        map("blk.2.ffn_gate_inp_shexp.weight", "qwen2_moe", 60),
        ["model.layers.2.mlp.shared_expert_gate"]
    );
    // Not mappable: no shared expert in the architecture, no experts, fused experts.
    assert!(llama_cpp_to_hf("blk.1.ffn_gate_shexp.weight", "qwen3_moe", 8).is_none());
    assert!(llama_cpp_to_hf("blk.1.ffn_gate_shexp.weight", "mixtral", 8).is_none());
    assert!(llama_cpp_to_hf("blk.1.ffn_gate_exps.weight", "qwen3_moe", 0).is_none());
    assert!(llama_cpp_to_hf("blk.1.ffn_gate_exps.weight", "llama4", 16).is_none());
}

#[test]
fn name_mapping_deepseek_mla_and_mtp() {
    let ds = |n: &str| map(n, "deepseek_v3", 256);
    assert_eq!(
        ds("blk.0.attn_q_a.weight"),
        ["model.layers.0.self_attn.q_a_proj"]
    );
    assert_eq!(
        ds("blk.0.attn_q_b.weight"),
        ["model.layers.0.self_attn.q_b_proj"]
    );
    assert_eq!(
        ds("blk.0.attn_kv_a_mqa.weight"),
        ["model.layers.0.self_attn.kv_a_proj_with_mqa"]
    );
    assert_eq!(
        ds("blk.0.attn_kv_b.weight"),
        ["model.layers.0.self_attn.kv_b_proj"]
    );
    assert_eq!(
        ds("blk.0.attn_output.weight"),
        ["model.layers.0.self_attn.o_proj"]
    );
    assert_eq!(
        map("blk.0.attn_q.weight", "deepseek_v2", 64),
        ["model.layers.0.self_attn.q_proj"]
    );
    assert_eq!(
        ds("blk.61.nextn.eh_proj.weight"),
        ["model.layers.61.eh_proj"]
    );
    assert_eq!(
        ds("blk.61.nextn.shared_head_head.weight"),
        ["model.layers.61.shared_head.head"]
    );
    // attn_k_b / attn_v_b are split out of kv_b_proj; their input is not kv_b_proj's.
    assert!(llama_cpp_to_hf("blk.0.attn_k_b.weight", "deepseek_v3", 256).is_none());
    assert!(llama_cpp_to_hf("blk.0.attn_v_b.weight", "deepseek_v3", 256).is_none());
}

#[test]
fn name_mapping_rejects_malformed_names() {
    for n in [
        "",
        "blk..attn_q.weight",
        "blk.x.attn_q.weight",
        "blk.+1.attn_q.weight",
        "blk.1.attn_q",
        "blk.1.attn_q.bias",
        "token_embd.weight",
        "blk.1.attn_norm.weight",
        "model.layers.0.self_attn.q_proj",
        "blk.99999999999999999999999.attn_q.weight",
    ] {
        assert!(llama_cpp_to_hf(n, "llama", 8).is_none(), "{n}");
    }
}

#[test]
fn handmade_dat_round_trips() {
    // Two dense tensors (hidden 4) and an expert tensor of 3 experts: expert 1 holds the
    // ncall sentinel, the others E[x^2] * ncall.
    let q = [0.5f32, 1.0, 1.5, 2.0];
    let exps = [
        3.0f32, 6.0, 9.0, 12.0, 5.0, 5.0, 5.0, 5.0, 0.0, 0.5, 1.0, 1.5,
    ];
    let k = [5.0f32; 4]; // a dense tensor equal to ncall is data, not the sentinel
    let entries: [(&str, i32, &[f32]); 3] = [
        ("blk.0.attn_q.weight", 2, &q),
        ("blk.0.ffn_up_exps.weight", 5, &exps),
        ("blk.0.attn_k.weight", 5, &k),
    ];
    for (tag, trailer) in [
        ("no-trailer.dat", None),
        ("short-trailer.dat", Some((7, None))),
        ("full-trailer.dat", Some((7, Some("wiki.txt")))),
    ] {
        let (got, meta) = read_bytes(tag, &dat_bytes(&entries, trailer), None).unwrap();
        assert_eq!(meta.chunk_count, trailer.map(|t| t.0 as u64));
        assert_eq!(
            meta.datasets,
            trailer
                .and_then(|t| t.1)
                .map(String::from)
                .into_iter()
                .collect::<Vec<_>>()
        );
        let names: Vec<_> = got.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "blk.0.attn_k.weight",
                "blk.0.attn_q.weight",
                "blk.0.ffn_up_exps.weight"
            ]
        );
        let m = by_name(&got);
        assert_eq!(m["blk.0.attn_k.weight"].counts, [5]);
        let qe = m["blk.0.attn_q.weight"];
        assert_eq!(
            (
                qe.experts,
                qe.channels,
                qe.counts.clone(),
                qe.sum_sq.clone()
            ),
            (1, 4, vec![2], q.to_vec())
        );
        assert_eq!(qe.mean_sq(0).unwrap(), [0.25, 0.5, 0.75, 1.0]);
        let x = m["blk.0.ffn_up_exps.weight"];
        assert_eq!((x.experts, x.channels), (3, 4));
        assert_eq!(x.counts, [5, 0, 5]);
        assert_eq!(
            x.sum_sq,
            [3.0, 6.0, 9.0, 12.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.5]
        );
        assert_eq!(x.mean_sq(0).unwrap(), [0.6, 1.2, 1.8, 2.4]);
        assert_eq!(x.uncalibrated_experts(), [1]);
    }
}

#[test]
fn handmade_dat_nan_rows_and_unknown_expert_counts() {
    let nan = f32::NAN;
    let exps = [1.0f32, 2.0, nan, nan, 4.0, 4.0];
    let b = dat_bytes(&[("blk.0.ffn_gate_exps.weight", 3, &exps)], None);
    // No tensor gives the hidden size: the expert count must come from the caller, and the
    // NaN row cannot be told from the others until then.
    let e = refused("nan-unsplit.dat", &b, None, "channel 2 has value NaN");
    assert!(e.hint().unwrap().contains("--model"), "{e}");
    let (got, _) = read_bytes("nan-split.dat", &b, Some(3)).unwrap();
    assert_eq!(got[0].counts, [3, 0, 3]);
    assert_eq!(got[0].sum_sq, [1.0, 2.0, 0.0, 0.0, 4.0, 4.0]);
    let (got, meta) = read_bytes(
        "unknown-experts.dat",
        &dat_bytes(&[("blk.0.ffn_gate_exps.weight", 3, &[1.0, 2.0])], None),
        None,
    )
    .unwrap();
    assert_eq!((got[0].experts, got[0].channels), (1, 2));
    assert!(
        meta.notes[0].contains("number of experts unknown"),
        "{:?}",
        meta.notes
    );
    // A partly NaN row is an error, as are negative and infinite values.
    refused(
        "partial-nan.dat",
        &dat_bytes(
            &[("blk.0.ffn_gate_exps.weight", 3, &[1.0, nan, 2.0, 2.0])],
            None,
        ),
        Some(2),
        "expert 0 channel 1 has value NaN",
    );
    refused(
        "negative.dat",
        &dat_bytes(&[("blk.0.attn_q.weight", 3, &[1.0, -1.0])], None),
        None,
        "channel 1 has value -1",
    );
    refused(
        "inf.dat",
        &dat_bytes(&[("blk.0.attn_q.weight", 3, &[f32::INFINITY])], None),
        None,
        "value inf",
    );
}

#[test]
fn hostile_dat_files_are_refused() {
    let good = dat_bytes(
        &[("blk.0.attn_q.weight", 2, &[1.0, 2.0])],
        Some((1, Some("d.txt"))),
    );
    read_bytes("good.dat", &good, None).unwrap();
    for cut in [0, 2, 6, 10, 20, 30, 34, good.len() - 3] {
        refused(
            &format!("cut{cut}.dat"),
            &good[..cut],
            None,
            "neither a GGUF imatrix nor a legacy imatrix .dat",
        );
    }
    refused(
        "cut-trailer.dat",
        &good[..good.len() - 2],
        None,
        "dataset name length 5 is out of range",
    );
    let mut extra = good.clone();
    extra.push(0);
    refused(
        "extra.dat",
        &extra,
        None,
        "1 unexpected bytes after the trailer",
    );
    refused(
        "zero-entries.dat",
        &0i32.to_le_bytes(),
        None,
        "entry count 0",
    );
    let mut huge = good.clone();
    huge[..4].copy_from_slice(&i32::MAX.to_le_bytes());
    refused("huge-entries.dat", &huge, None, "impossible for a file");
    let mut huge = good.clone();
    huge[4..8].copy_from_slice(&i32::MAX.to_le_bytes());
    refused(
        "huge-name.dat",
        &huge,
        None,
        "name length 2147483647 is out of range",
    );
    let mut neg = good.clone();
    neg[4..8].copy_from_slice(&(-5i32).to_le_bytes());
    refused("neg-name.dat", &neg, None, "name length -5");
    let nval_at = 4 + 4 + 19 + 4;
    let mut huge = good.clone();
    huge[nval_at..nval_at + 4].copy_from_slice(&i32::MAX.to_le_bytes());
    refused("huge-nval.dat", &huge, None, "truncated file");
    let mut zero = good.clone();
    zero[nval_at..nval_at + 4].copy_from_slice(&0i32.to_le_bytes());
    refused("zero-nval.dat", &zero, None, "value count 0");
    refused(
        "ncall0.dat",
        &dat_bytes(&[("blk.0.attn_q.weight", 0, &[1.0])], None),
        None,
        "ncall is 0",
    );
    let mut bad_utf8 = good.clone();
    bad_utf8[8] = 0xff;
    refused("utf8.dat", &bad_utf8, None, "not UTF-8");
    refused(
        "dup.dat",
        &dat_bytes(
            &[
                ("blk.0.attn_q.weight", 1, &[1.0]),
                ("blk.0.attn_q.weight", 1, &[1.0]),
            ],
            None,
        ),
        None,
        "appears twice",
    );
    let mut neg_chunk = good.clone();
    let at = good.len() - 4 - 5 - 4;
    neg_chunk[at..at + 4].copy_from_slice(&(-1i32).to_le_bytes());
    refused(
        "neg-chunk.dat",
        &neg_chunk,
        None,
        "chunk count -1 is negative",
    );
    // Other formats: a zip (torch.save), a safetensors header, text.
    refused(
        "torch.pt",
        b"PK\x03\x04\x14\0\0\0\0\0\0\0\0\0",
        None,
        "neither a GGUF imatrix",
    );
    refused(
        "model.safetensors",
        b"\x10\0\0\0\0\0\0\0{\"a\":{}}       ",
        None,
        "neither a GGUF imatrix",
    );
    refused(
        "text.txt",
        b"hello world, this is not an imatrix file\n",
        None,
        "neither a GGUF imatrix",
    );
    let e = read_imatrix(Path::new("/nonexistent/imatrix.dat")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput);
}

/// A GGUF imatrix of one dense tensor (3 channels) and one expert tensor (2 experts x 2).
fn imatrix_gguf() -> GgufBuilder {
    GgufBuilder::new()
        .kv_str("general.architecture", "imatrix")
        .kv_str("general.type", "imatrix")
        .kv_str_array("imatrix.datasets", &["a.txt", "b.txt"])
        .kv_u32("imatrix.chunk_count", 3)
        .kv_u32("imatrix.chunk_size", 512)
        .kv_u32("imatrix.n_layer_nextn", 1)
        .tensor_f32("blk.0.attn_q.weight.in_sum2", &[3, 1], &[1.0, 4.0, 9.0])
        .tensor_f32("blk.0.attn_q.weight.counts", &[1, 1], &[20_000_000.0])
        .tensor_f32("blk.0.attn_q.weight.in_sum", &[3, 1], &[-1.0, 2.0, 3.0])
        .tensor_f32("blk.0.attn_q.weight.stats", &[11], &[0.0; 11])
        .tensor_f32(
            "blk.0.ffn_gate_exps.weight.in_sum2",
            &[2, 2],
            &[0.0, 0.0, 8.0, 2.0],
        )
        .tensor_f32("blk.0.ffn_gate_exps.weight.counts", &[1, 2], &[0.0, 4.0])
}

#[test]
fn handmade_gguf_round_trips() {
    let (got, meta) =
        read_bytes("handmade.imatrix.gguf", &imatrix_gguf().build(), Some(2)).unwrap();
    assert_eq!(meta.datasets, ["a.txt", "b.txt"]);
    assert_eq!(
        (meta.chunk_count, meta.chunk_size, meta.n_layer_nextn),
        (Some(3), Some(512), Some(1))
    );
    assert!(
        meta.notes
            .iter()
            .any(|n| n.contains("1 tensors with other suffixes")),
        "{:?}",
        meta.notes
    );
    assert!(
        meta.notes.iter().any(|n| n.contains("above 2^24")),
        "{:?}",
        meta.notes
    );
    let q = &got[0];
    assert_eq!(
        (q.name.as_str(), q.experts, q.channels),
        ("blk.0.attn_q.weight", 1, 3)
    );
    assert_eq!(
        (q.sum_sq.clone(), q.counts.clone()),
        (vec![1.0, 4.0, 9.0], vec![20_000_000])
    );
    assert_eq!(q.sum.as_deref(), Some(&[-1.0, 2.0, 3.0][..]));
    let x = &got[1];
    assert_eq!(
        (x.experts, x.channels, x.counts.clone()),
        (2, 2, vec![0, 4])
    );
    assert_eq!(x.sum_sq, [0.0, 0.0, 8.0, 2.0]);
    assert_eq!(x.mean_sq(1).unwrap(), [2.0, 0.5]);
    assert_eq!(x.uncalibrated_experts(), [0]);
    // Without general.type, *.in_sum2 tensors still identify an imatrix.
    let b = GgufBuilder::new()
        .tensor_f32("w.in_sum2", &[1], &[2.0])
        .tensor_f32("w.counts", &[1], &[1.0])
        .build();
    let (got, meta) = read_bytes("untyped.gguf", &b, None).unwrap();
    assert_eq!((got[0].counts.clone(), meta.chunk_size), (vec![1], None));
    assert!(meta.notes[0].contains("general.type is missing"));
    // Non-zero sums of a zero-count expert are dropped, with a note.
    let b = GgufBuilder::new()
        .kv_str("general.type", "imatrix")
        .tensor_f32(
            "blk.0.ffn_up_exps.weight.in_sum2",
            &[1, 2],
            &[f32::NAN, 3.0],
        )
        .tensor_f32("blk.0.ffn_up_exps.weight.counts", &[1, 2], &[0.0, 1.0])
        .build();
    let (got, meta) = read_bytes("zero-count-sums.gguf", &b, None).unwrap();
    assert_eq!(got[0].sum_sq, [0.0, 3.0]);
    assert!(meta.notes.iter().any(|n| n.contains("set to zero")));
}

#[test]
fn hostile_gguf_imatrices_are_refused() {
    let good = imatrix_gguf().build();
    for cut in [3, 16, 40, 200, 500] {
        refused(&format!("cut{cut}.gguf"), &good[..cut], None, "");
    }
    let with = |f: fn(GgufBuilder) -> GgufBuilder| {
        f(GgufBuilder::new().kv_str("general.type", "imatrix")).build()
    };
    refused(
        "model.gguf",
        &GgufBuilder::new().kv_str("general.type", "model").build(),
        None,
        "not an importance matrix",
    );
    refused(
        "no-type.gguf",
        &GgufBuilder::new().tensor_f32("t", &[1], &[1.0]).build(),
        None,
        "without general.type",
    );
    refused(
        "datasets.gguf",
        &with(|b| b.kv_u32("imatrix.datasets", 1)),
        None,
        "imatrix.datasets must be an array of strings",
    );
    refused(
        "chunks.gguf",
        &with(|b| b.kv_str("imatrix.chunk_count", "8")),
        None,
        "imatrix.chunk_count must be a non-negative integer",
    );
    refused(
        "no-counts.gguf",
        &with(|b| b.tensor_f32("w.in_sum2", &[2], &[1.0, 1.0])),
        None,
        "w.counts is missing",
    );
    refused(
        "no-sum2.gguf",
        &with(|b| b.tensor_f32("w.counts", &[1], &[1.0])),
        None,
        "w.in_sum2 is missing",
    );
    refused(
        "only-sum.gguf",
        &with(|b| {
            b.tensor_f32("w.in_sum", &[1], &[1.0])
                .tensor_f32("w.counts", &[1], &[1.0])
        }),
        None,
        "w.in_sum2 is missing",
    );
    refused(
        "shape3.gguf",
        &with(|b| {
            b.tensor_f32("w.in_sum2", &[1, 1, 1], &[1.0])
                .tensor_f32("w.counts", &[1], &[1.0])
        }),
        None,
        "expected [in_features, n_matrices]",
    );
    refused(
        "empty.gguf",
        &with(|b| {
            b.tensor_f32("w.in_sum2", &[0, 1], &[])
                .tensor_f32("w.counts", &[1], &[1.0])
        }),
        None,
        "expected a non-empty tensor",
    );
    refused(
        "counts-shape.gguf",
        &with(|b| {
            b.tensor_f32("w.in_sum2", &[1, 2], &[1.0, 1.0]).tensor_f32(
                "w.counts",
                &[1, 3],
                &[1.0; 3],
            )
        }),
        None,
        "expected [1, 2]",
    );
    refused(
        "sum-shape.gguf",
        &with(|b| {
            b.tensor_f32("w.in_sum2", &[2], &[1.0, 1.0])
                .tensor_f32("w.counts", &[1], &[1.0])
                .tensor_f32("w.in_sum", &[1], &[1.0])
        }),
        None,
        "expected [2] like w.in_sum2",
    );
    refused(
        "neg-count.gguf",
        &with(|b| {
            b.tensor_f32("w.in_sum2", &[1], &[1.0])
                .tensor_f32("w.counts", &[1], &[-1.0])
        }),
        None,
        "count of matrix 0 is -1",
    );
    refused(
        "nan-count.gguf",
        &with(|b| {
            b.tensor_f32("w.in_sum2", &[1], &[1.0])
                .tensor_f32("w.counts", &[1], &[f32::NAN])
        }),
        None,
        "count of matrix 0 is NaN",
    );
    refused(
        "nan-sum2.gguf",
        &with(|b| {
            b.tensor_f32("w.in_sum2", &[2], &[1.0, f32::NAN])
                .tensor_f32("w.counts", &[1], &[4.0])
        }),
        None,
        "expert 0 channel 1 has sum of squares NaN",
    );
    refused(
        "neg-sum2.gguf",
        &with(|b| {
            b.tensor_f32("w.in_sum2", &[1], &[-2.0])
                .tensor_f32("w.counts", &[1], &[4.0])
        }),
        None,
        "sum of squares -2",
    );
    refused(
        "inf-sum.gguf",
        &with(|b| {
            b.tensor_f32("w.in_sum2", &[1], &[2.0])
                .tensor_f32("w.counts", &[1], &[4.0])
                .tensor_f32("w.in_sum", &[1], &[f32::NEG_INFINITY])
        }),
        None,
        "has sum -inf",
    );
    refused(
        "q8.gguf",
        &with(|b| {
            b.tensor_raw("w.in_sum2", &[32], 8, vec![0; 34])
                .tensor_f32("w.counts", &[1], &[1.0])
        }),
        None,
        "type q8_0",
    );
    refused(
        "i32.gguf",
        &with(|b| {
            b.tensor_f32("w.in_sum2", &[1], &[1.0]).tensor_raw(
                "w.counts",
                &[1],
                26,
                vec![1, 0, 0, 0],
            )
        }),
        None,
        "type i32",
    );
    refused(
        "huge-shape.gguf",
        &with(|b| {
            b.tensor_f32("w.in_sum2", &[1 << 40, 1], &[1.0])
                .tensor_f32("w.counts", &[1], &[1.0])
        }),
        None,
        "beyond the end of the file",
    );
    refused(
        "experts.gguf",
        &imatrix_gguf().build(),
        Some(8),
        "statistics for 2 experts but the model has 8",
    );
}
