use super::read::read_native_limited;
use super::write::{write_file, Data, Item};
use super::*;
use crate::error::ErrorKind;
use crate::input::layout::Layout;
use crate::input::stats::{ActivationStats, ModelNames, ModuleStats, StatDtype, WeightAmax};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use tempfile::TempPath;

/// A fresh path in the temp directory, not created yet (the writer makes it), removed when the
/// guard drops, also when the test fails.
fn tmp(name: &str) -> TempPath {
    let unused = |p: &Path| match p.symlink_metadata() {
        Ok(_) => Err(std::io::ErrorKind::AlreadyExists.into()),
        Err(_) => Ok(()),
    };
    tempfile::Builder::new()
        .prefix("shardquant-native-")
        .suffix(&format!("-{name}"))
        .make(unused)
        .unwrap()
        .into_temp_path()
}

fn qwen() -> Layout {
    Layout::builtin()
        .into_iter()
        .find(|l| l.name == "qwen3_moe")
        .unwrap()
}

const Q: &str = "model.layers.0.self_attn.q_proj";
const K: &str = "model.layers.0.self_attn.k_proj";
const ATTN: &str = "model.layers.0.self_attn";

fn expert(e: usize, proj: &str) -> String {
    format!("model.layers.1.mlp.experts.{e}.{proj}")
}

/// Layer 0: dense attention (in_features 8). Layer 1: experts 0..3, hidden 8, intermediate 4.
fn model() -> ModelNames {
    let mut m = ModelNames::default();
    for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        m.linears
            .insert(format!("model.layers.0.self_attn.{p}"), (8, 8));
    }
    for e in 0..3 {
        m.linears.insert(expert(e, "gate_proj"), (4, 8));
        m.linears.insert(expert(e, "up_proj"), (4, 8));
        m.linears.insert(expert(e, "down_proj"), (8, 4));
    }
    m.experts.insert(1, (0..3).collect::<BTreeSet<_>>());
    m.attention.insert(ATTN.to_string());
    m.attention.insert("model.layers.1.self_attn".to_string());
    m
}

fn meta() -> NativeMeta {
    NativeMeta {
        source_format: "modelopt-amax".into(),
        source_files: vec!["amax.safetensors".into(), "b \"quoted\".pt".into()],
        notes: vec!["layer 2 not calibrated".into()],
        expert_input_amax: "per_expert".into(),
    }
}

/// Statistics using every field the writer writes.
fn full() -> ActivationStats {
    let mut s = ActivationStats::default();
    s.modules.insert(
        Q.into(),
        ModuleStats {
            input_amax: Some(3.5),
            input_amax_ch: Some(vec![0.5, 3.5, 1.0, 0.0, 2.0, 0.25, 1.5, 3.0]),
            input_sum_sq: Some(vec![1.0, 2.5, 0.1, 0.0, 7.0, 1e-30, 3.0, 9.0]),
            input_sum: Some(vec![-1.0, 2.0, 0.3, 0.0, -7.5, 1e-10, 3.0, 0.0]),
            token_count: Some(12),
            weight_amax: Some(WeightAmax::Tensor(0.75)),
            ..Default::default()
        },
    );
    s.modules.insert(
        K.into(),
        ModuleStats {
            input_mean_sq: Some(vec![0.5; 8]),
            ..Default::default()
        },
    );
    s.modules.insert(
        ATTN.into(),
        ModuleStats {
            k_cache_amax: Some(11.0),
            v_cache_amax: Some(0.125),
            ..Default::default()
        },
    );
    s.modules.insert(
        expert(2, "down_proj"),
        ModuleStats {
            token_count: Some(0),
            ..Default::default()
        },
    );
    s.modules.insert(
        expert(0, "gate_proj"),
        ModuleStats {
            input_amax: Some(1.5),
            token_count: Some(7),
            ..Default::default()
        },
    );
    s
}

fn read(path: &Path) -> Result<(ActivationStats, NativeMeta)> {
    let mut stats = ActivationStats::default();
    let meta = read_native(path, &qwen(), &model(), &mut stats)?;
    Ok((stats, meta))
}

fn meta_json() -> String {
    r#"{"name_scheme":"hf","expert_input_amax":"unknown"}"#.into()
}

/// Writes a v1 file by hand (any keys, dtypes and version).
fn raw(name: &str, items: Vec<Item<'_>>, version: &str, meta: Option<String>) -> TempPath {
    let path = tmp(name);
    let mut md = vec![
        ("format", FORMAT.to_string()),
        ("format_version", version.to_string()),
    ];
    md.extend(meta.map(|m| ("meta", m)));
    write_file(&path, items, &md, false).unwrap();
    path
}

fn it<'a>(key: &str, shape: &[usize], data: Data<'a>) -> Item<'a> {
    Item {
        key: key.into(),
        shape: shape.to_vec(),
        data,
    }
}

fn f32s(key: &str, shape: &[usize], v: &'static [f32]) -> Item<'static> {
    it(key, shape, Data::F32(v))
}

fn bad(path: &Path, want: &[&str]) -> Error {
    let e = read(path).expect_err("must be refused");
    assert_eq!(e.kind(), ErrorKind::BadInput, "{e}");
    for w in want {
        assert!(e.message().contains(w), "expected {w:?} in: {e}");
    }
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(e.message().contains(name), "error must name the file: {e}");
    assert!(
        e.hint().is_some_and(|h| !h.is_empty()),
        "error needs a remedy: {e}"
    );
    e
}

#[test]
fn round_trip_plain_and_zstd() {
    let stats = full();
    for compress in [false, true] {
        let path = tmp(if compress {
            "rt.stats.safetensors.zst"
        } else {
            "rt.stats.safetensors"
        });
        write_native(&path, &stats, &meta(), compress).unwrap();
        let head = std::fs::read(&path).unwrap();
        assert_eq!(head.starts_with(&ZSTD_MAGIC), compress);
        assert!(is_native(&path).unwrap());
        let (back, m) = read(&path).unwrap();
        assert_eq!(back.modules, stats.modules);
        assert_eq!(m, meta());
        assert!(
            back.unmatched.is_empty() && back.ignored.is_empty(),
            "{back:?}"
        );
    }
}

#[test]
fn stored_keys_dtypes_and_metadata_follow_the_schema() {
    let path = tmp("schema.stats.safetensors");
    write_native(&path, &full(), &meta(), false).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (n, md) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!((8 + n) % 8, 0, "data must start 8-aligned");
    for (key, t) in md.tensors() {
        let wide = matches!(t.dtype, Dtype::F64 | Dtype::U64);
        assert!(!wide || t.data_offsets.0 % 8 == 0, "{key} is not 8-aligned");
    }
    let info = |k: &str| md.info(k).unwrap_or_else(|| panic!("{k} missing")).clone();
    let q = |s: &str| info(&format!("{Q}.{s}"));
    assert_eq!(
        (q("input_amax").dtype, q("input_amax").shape),
        (Dtype::F32, vec![])
    );
    assert_eq!(
        (q("input_amax_ch").dtype, q("input_amax_ch").shape),
        (Dtype::F32, vec![8])
    );
    assert_eq!(
        (q("input_sum_sq").dtype, q("input_sum_sq").shape),
        (Dtype::F64, vec![8])
    );
    assert_eq!(
        (q("input_sum").dtype, q("input_sum").shape),
        (Dtype::F64, vec![8])
    );
    assert_eq!(
        (q("token_count").dtype, q("token_count").shape),
        (Dtype::U64, vec![])
    );
    assert_eq!(q("weight_amax").dtype, Dtype::F32);
    assert_eq!(info(&format!("{K}.input_mean_sq")).dtype, Dtype::F32);
    assert_eq!(
        info(&format!("{ATTN}.k_cache_amax")).shape,
        Vec::<usize>::new()
    );
    assert_eq!(info(&format!("{ATTN}.v_cache_amax")).dtype, Dtype::F32);
    assert_eq!(md.tensors().len(), 12);
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let pos = |k: &str| header.find(&format!("\"{k}\"")).unwrap();
    assert!(pos("__metadata__") < pos(&format!("{ATTN}.k_cache_amax")));
    assert!(pos(&format!("{ATTN}.k_cache_amax")) < pos(&format!("{K}.input_mean_sq")));
    assert!(pos(&format!("{K}.input_mean_sq")) < pos(&format!("{Q}.input_amax")));
    assert!(pos(&format!("{Q}.weight_amax")) < pos(&format!("{ATTN}.v_cache_amax")));
    assert!(pos(&format!("{Q}.input_sum")) < pos(&format!("{Q}.input_sum_sq")));
    let md = md.metadata().clone().unwrap();
    assert_eq!(md["format"], "shardquant.activation_stats");
    assert_eq!(md["format_version"], "1");
    let v: Value = serde_json::from_str(&md["meta"]).unwrap();
    assert_eq!(v["name_scheme"], "hf");
    assert_eq!(v["producer"]["tool"], "shardquant");
    assert_eq!(v["producer"]["source_format"], "modelopt-amax");
    assert_eq!(v["producer"]["source_files"][1]["path"], "b \"quoted\".pt");
    assert_eq!(v["expert_input_amax"], "per_expert");
    assert_eq!(v["notes"][0], "layer 2 not calibrated");
}

#[test]
fn output_is_deterministic() {
    let a = full();
    let mut b = ActivationStats::default();
    for (k, v) in a.modules.iter().rev() {
        b.modules.insert(k.clone(), v.clone());
    }
    b.sources.push("unrelated".into());
    for compress in [false, true] {
        let files: Vec<Vec<u8>> = [&a, &a, &b]
            .iter()
            .map(|s| {
                let p = tmp("det");
                write_native(&p, s, &meta(), compress).unwrap();
                std::fs::read(p).unwrap()
            })
            .collect();
        assert_eq!(files[0], files[1]);
        assert_eq!(files[0], files[2]);
    }
}

#[test]
fn block_weight_amax_is_not_written() {
    let blocks_file = tmp("blocks");
    std::fs::write(&blocks_file, [0u8; 64]).unwrap();
    let map = unsafe { memmap2::Mmap::map(&File::open(&blocks_file).unwrap()) }.unwrap();
    let blocks = super::super::BlockAmax::new(std::sync::Arc::new(map), 0, 16, StatDtype::F32);
    let mut s = full();
    s.modules.get_mut(Q).unwrap().weight_amax = Some(WeightAmax::Blocks {
        global: 1.0,
        blocks: blocks.unwrap(),
    });
    let path = tmp("blocks.stats.safetensors");
    write_native(&path, &s, &meta(), false).unwrap();
    let (back, _) = read(&path).unwrap();
    assert_eq!(back.modules[Q].weight_amax, None);
    assert_eq!(back.modules[Q].input_amax, Some(3.5));
}

#[test]
fn detects_native_files() {
    let plain = tmp("d.stats.safetensors");
    write_native(&plain, &full(), &meta(), false).unwrap();
    assert!(is_native(&plain).unwrap());
    let zst = tmp("d.stats.safetensors.zst");
    write_native(&zst, &full(), &meta(), true).unwrap();
    assert!(is_native(&zst).unwrap());
    // A ModelOpt amax file: safetensors without the format marker.
    let modelopt = tmp("amax.safetensors");
    let items = vec![f32s("a.input_quantizer._amax", &[], &[1.0])];
    write_file(&modelopt, items, &[], false).unwrap();
    assert!(!is_native(&modelopt).unwrap());
    let other = tmp("other.safetensors");
    let items = vec![f32s("x", &[], &[1.0])];
    write_file(&other, items, &[("format", "pt".into())], false).unwrap();
    assert!(!is_native(&other).unwrap());
    for (name, bytes) in [
        ("short", &b"\x28\xb5"[..]),
        ("text", b"hello world, not stats"),
    ] {
        let p = tmp(name);
        std::fs::write(&p, bytes).unwrap();
        assert!(!is_native(&p).unwrap(), "{name}");
    }
    assert_eq!(
        is_native(Path::new("/nonexistent/x.stats"))
            .unwrap_err()
            .kind(),
        ErrorKind::BadInput
    );
}

#[test]
fn fused_expert_keys_expand_to_every_expert() {
    const P: &str = "model.layers.1.mlp.experts";
    // Expert 2 saw no tokens: all-zero rows.
    static AMAX: [f32; 3] = [2.0, 4.0, 0.0];
    static CH: [f32; 24] = [
        0.5, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, //
        4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, //
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    static COUNT: [u64; 3] = [5, 6, 0];
    static SQ: [f64; 12] = [1., 2., 3., 4., 5., 6., 7., 8., 0., 0., 0., 0.];
    static W: [f32; 3] = [0.5, 0.25, 0.125];
    let items = vec![
        f32s(&format!("{P}.gate_up_proj.input_amax"), &[3], &AMAX),
        f32s(&format!("{P}.gate_up_proj.input_amax_ch"), &[3, 8], &CH),
        it(
            &format!("{P}.gate_up_proj.token_count"),
            &[3],
            Data::U64(&COUNT),
        ),
        f32s(&format!("{P}.gate_up_proj.weight_amax"), &[3], &W),
        it(
            &format!("{P}.down_proj.input_sum_sq"),
            &[3, 4],
            Data::F64(&SQ),
        ),
        it(
            &format!("{P}.down_proj.token_count"),
            &[3],
            Data::U64(&COUNT),
        ),
    ];
    let path = raw("fused", items, "1", Some(meta_json()));
    let (s, _) = read(&path).unwrap();
    assert!(s.unmatched.is_empty() && s.ignored.is_empty(), "{s:?}");
    assert_eq!(s.modules.len(), 9);
    for e in 0..3 {
        for proj in ["gate_proj", "up_proj"] {
            let m = &s.modules[&expert(e, proj)];
            assert_eq!(m.token_count, Some(COUNT[e]));
            assert_eq!(m.weight_amax, Some(WeightAmax::Tensor(W[e])));
            if e == 2 {
                assert_eq!((m.input_amax, m.input_amax_ch.as_ref()), (None, None));
            } else {
                assert_eq!(m.input_amax, Some(AMAX[e]));
                assert_eq!(m.input_amax_ch.as_deref(), Some(&CH[e * 8..e * 8 + 8]));
            }
        }
        let d = &s.modules[&expert(e, "down_proj")];
        assert_eq!(d.token_count, Some(COUNT[e]));
        assert_eq!(d.input_amax, None);
        let want = (e < 2).then(|| SQ[e * 4..e * 4 + 4].to_vec());
        assert_eq!(d.input_sum_sq, want);
    }
}

#[test]
fn fused_and_per_expert_keys_for_one_module_are_refused() {
    let items = vec![
        f32s(
            "model.layers.1.mlp.experts.down_proj.input_amax",
            &[3],
            &[1.0, 1.0, 1.0],
        ),
        f32s(
            "model.layers.1.mlp.experts.1.down_proj.input_amax",
            &[],
            &[1.0],
        ),
    ];
    let p = raw("twice", items, "1", None);
    bad(
        &p,
        &["receives statistics from both", "experts.1.down_proj"],
    );
}

#[test]
fn invariant_violations_are_errors() {
    static CH8: [f32; 8] = [1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let q = |s: &str| format!("{Q}.{s}");
    let f = "model.layers.1.mlp.experts.gate_up_proj";
    let cases: Vec<(&str, Vec<Item<'static>>, Vec<&str>)> = vec![
        (
            "nan",
            vec![f32s(&q("input_amax"), &[], &[f32::NAN])],
            vec!["q_proj.input_amax'", "NaN", "finite"],
        ),
        (
            "neg",
            vec![it(
                &q("input_sum_sq"),
                &[8],
                Data::F64(&[1., -1., 0., 0., 0., 0., 0., 0.]),
            )],
            vec!["input_sum_sq'", "-1 at channel 1"],
        ),
        (
            "inf",
            vec![f32s(&format!("{ATTN}.k_cache_amax"), &[], &[f32::INFINITY])],
            vec!["k_cache_amax'", "inf"],
        ),
        (
            "dead",
            vec![
                f32s(&q("input_amax"), &[], &[1.0]),
                it(&q("token_count"), &[], Data::U64(&[0])),
            ],
            vec!["input_amax' is present", "token_count' is 0"],
        ),
        (
            "max",
            vec![
                f32s(&q("input_amax"), &[], &[3.0]),
                f32s(&q("input_amax_ch"), &[8], &CH8),
            ],
            vec!["= 3 but the max", "input_amax_ch' is 2", "must be equal"],
        ),
        (
            "features",
            vec![f32s(&q("input_amax_ch"), &[4], &[1.0; 4])],
            vec!["holds 4 channels", "q_proj has in_features 8"],
        ),
        (
            "widths",
            vec![
                f32s(&q("input_amax_ch"), &[8], &CH8),
                it(&q("input_sum"), &[4], Data::F64(&[0.0; 4])),
            ],
            vec!["input_sum' has 4 channels", "input_amax_ch' has 8"],
        ),
        (
            "shape",
            vec![f32s(&q("input_amax"), &[2], &[1.0, 2.0])],
            vec!["input_amax' has shape [2]", "must have shape []"],
        ),
        (
            "count-dtype",
            vec![f32s(&q("token_count"), &[], &[3.0])],
            vec!["token_count' has dtype F32", "must be U64"],
        ),
        (
            "amax-dtype",
            vec![it(
                &q("input_amax"),
                &[],
                Data::Raw(Dtype::I32, &[1, 0, 0, 0]),
            )],
            vec!["dtype I32", "F32, F64, BF16 or F16"],
        ),
        (
            "experts",
            vec![f32s(&format!("{f}.input_amax"), &[2], &[1.0, 2.0])],
            vec![
                "gate_up_proj.input_amax' has shape [2]",
                "[3] (one value per expert)",
            ],
        ),
        (
            "dead-row",
            vec![
                f32s(&format!("{f}.input_amax"), &[3], &[1.0, 2.0, 0.5]),
                it(&format!("{f}.token_count"), &[3], Data::U64(&[1, 1, 0])),
            ],
            vec![
                "gate_up_proj.input_amax' (expert 2) holds 0.5",
                "saw no calibration tokens",
            ],
        ),
        (
            "expert-features",
            vec![f32s(&format!("{f}.input_amax_ch"), &[3, 4], &[0.0; 12])],
            vec!["(expert 0) holds 4 channels", "in_features 8"],
        ),
    ];
    for (name, items, want) in cases {
        let p = raw(name, items, "1", None);
        bad(&p, &want);
    }
    // input_sum may be negative; BF16 / F64 storage is accepted.
    let items = vec![
        it(&q("input_sum"), &[8], Data::F64(&[-1.0; 8])),
        it(
            &q("input_amax_ch"),
            &[8],
            Data::Raw(
                Dtype::BF16,
                &[0x80, 0x3f, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
        ),
        it(&q("input_amax"), &[], Data::F64(&[2.0])),
    ];
    let (s, _) = read(&raw("ok", items, "1", None)).unwrap();
    assert_eq!(s.modules[Q].input_sum, Some(vec![-1.0; 8]));
    assert_eq!(s.modules[Q].input_amax, Some(2.0));
    assert_eq!(
        s.modules[Q].input_amax_ch.as_ref().unwrap()[..2],
        [1.0, 2.0]
    );
}

#[test]
fn unknown_names_are_reported_not_fatal() {
    let items = vec![
        f32s(&format!("{Q}.input_amax"), &[], &[1.0]),
        f32s(&format!("{Q}.output_amax"), &[], &[1.0]),
        f32s(&format!("{ATTN}.kv_cache_amax"), &[], &[1.0]),
        f32s("model.layers.9.self_attn.q_proj.input_amax", &[], &[1.0]),
        f32s(&format!("{Q}.k_cache_amax"), &[], &[1.0]),
        f32s(&format!("{ATTN}.input_amax"), &[], &[1.0]),
    ];
    let meta = r#"{"expert_input_amax":"sideways","future_field":1}"#.to_string();
    let (s, m) = read(&raw("unknown", items, "1.4", Some(meta))).unwrap();
    assert_eq!(s.modules.len(), 1);
    assert_eq!(
        s.unmatched,
        [
            format!("{ATTN}.input_amax"),
            format!("{Q}.k_cache_amax"),
            "model.layers.9.self_attn.q_proj.input_amax".to_string(),
        ]
    );
    assert_eq!(s.ignored.len(), 3, "{:?}", s.ignored);
    assert!(s
        .ignored
        .iter()
        .any(|i| i.contains("output_amax") && i.contains("not a statistic")));
    assert!(s
        .ignored
        .iter()
        .any(|i| i.contains("kv_cache_amax") && i.contains("MLA")));
    assert!(s.ignored.iter().any(|i| i.contains("sideways")));
    assert_eq!(m.expert_input_amax, "unknown");
}

#[test]
fn versions_and_markers() {
    let item = || vec![f32s(&format!("{Q}.input_amax"), &[], &[1.0])];
    for v in ["2", "2.0", "10.1"] {
        bad(
            &raw("v2", item(), v, None),
            &[&format!("format_version \"{v}\" is newer"), "(1)"],
        );
    }
    for v in ["0", "", "one"] {
        bad(&raw("v0", item(), v, None), &["is not a version"]);
    }
    assert!(read(&raw("v1", item(), "1.9", None)).is_ok());
    let p = tmp("nomarker");
    write_file(&p, item(), &[], false).unwrap();
    bad(&p, &["not a shardquant statistics file"]);
    bad(
        &raw("meta", item(), "1", Some("{oops".into())),
        &["\"meta\": invalid JSON"],
    );
    bad(
        &raw(
            "scheme",
            item(),
            "1",
            Some(r#"{"name_scheme":"gguf"}"#.into()),
        ),
        &["name_scheme \"gguf\""],
    );
}

#[test]
fn damaged_files_are_refused() {
    let zst = tmp("t.stats.safetensors.zst");
    write_native(&zst, &full(), &meta(), true).unwrap();
    let bytes = std::fs::read(&zst).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 1, 12] {
        let p = tmp("trunc.zst");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        bad(&p, &["cannot be decompressed"]);
    }
    let plain = tmp("t.stats.safetensors");
    write_native(&plain, &full(), &meta(), false).unwrap();
    let bytes = std::fs::read(&plain).unwrap();
    let p = tmp("trunc.plain");
    std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
    bad(&p, &["not a valid safetensors file"]);
}

#[test]
fn decompression_is_bounded() {
    let zst = tmp("big.stats.safetensors.zst");
    write_native(&zst, &full(), &meta(), true).unwrap();
    let mut s = ActivationStats::default();
    let e = read_native_limited(&zst, &qwen(), &model(), &mut s, 100).unwrap_err();
    assert!(
        e.message().contains("decompresses to more than 100 B,"),
        "{e}"
    );
    assert!(e.hint().unwrap().contains("zstd -d"));
    // Without a declared content size the limit still holds (streamed frame).
    let plain = tmp("big.stats.safetensors");
    write_native(&plain, &full(), &meta(), false).unwrap();
    let data = std::fs::read(&plain).unwrap();
    let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_contentsize(false).unwrap();
    enc.write_all(&data).unwrap();
    let streamed = tmp("streamed.zst");
    std::fs::write(&streamed, enc.finish().unwrap()).unwrap();
    let e = read_native_limited(&streamed, &qwen(), &model(), &mut s, 100).unwrap_err();
    assert!(e.message().contains("more than 100 B,"), "{e}");
    let limit = data.len() as u64;
    read_native_limited(&streamed, &qwen(), &model(), &mut s, limit).unwrap();
}

/// A zstd frame header claiming a huge content size reserves nothing of that size, and a
/// small file may not decompress to more than RATIO_FLOOR or MAX_RATIO times its size.
#[test]
fn a_declared_size_is_only_a_claim() {
    // Single-segment frame header: magic, descriptor 0xE0 (8-byte content size), size 60 GiB,
    // then nothing: the claim alone must not allocate 60 GiB.
    let mut bytes = ZSTD_MAGIC.to_vec();
    bytes.push(0xE0);
    bytes.extend_from_slice(&(60u64 << 30).to_le_bytes());
    let claim = tmp("claim.zst");
    std::fs::write(&claim, &bytes).unwrap();
    let mut s = ActivationStats::default();
    let e = read_native(&claim, &qwen(), &model(), &mut s).unwrap_err();
    assert!(
        e.message().contains("decompresses to more than 268.44 MB"),
        "{e}"
    );
    // 300 MiB of zeros compress to a few KB: above the floor and the ratio, refused.
    let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_contentsize(false).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..300 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = tmp("bomb.zst");
    std::fs::write(&bomb, enc.finish().unwrap()).unwrap();
    assert!(std::fs::metadata(&bomb).unwrap().len() < 64 << 10);
    let e = read_native(&bomb, &qwen(), &model(), &mut s).unwrap_err();
    assert!(
        e.message().contains("4096 times the compressed size"),
        "{e}"
    );
}

#[test]
fn merging_two_files_is_order_independent() {
    let mut a = ActivationStats::default();
    a.modules.insert(
        Q.into(),
        ModuleStats {
            input_amax: Some(2.0),
            input_amax_ch: Some(vec![2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]),
            input_sum_sq: Some(vec![0.1; 8]),
            input_sum: Some(vec![-0.3; 8]),
            token_count: Some(3),
            weight_amax: Some(WeightAmax::Tensor(0.5)),
            ..Default::default()
        },
    );
    a.modules.insert(
        ATTN.into(),
        ModuleStats {
            k_cache_amax: Some(4.0),
            v_cache_amax: Some(1.0),
            ..Default::default()
        },
    );
    let mut b = ActivationStats::default();
    b.modules.insert(
        Q.into(),
        ModuleStats {
            input_amax: Some(1.5),
            input_amax_ch: Some(vec![0.5, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
            input_sum_sq: Some(vec![0.2; 8]),
            input_sum: Some(vec![0.7; 8]),
            token_count: Some(4),
            weight_amax: Some(WeightAmax::Tensor(0.5)),
            ..Default::default()
        },
    );
    b.modules.insert(
        ATTN.into(),
        ModuleStats {
            k_cache_amax: Some(3.0),
            v_cache_amax: Some(2.0),
            ..Default::default()
        },
    );
    b.modules.insert(
        expert(0, "up_proj"),
        ModuleStats {
            token_count: Some(0),
            ..Default::default()
        },
    );
    let (pa, pb) = (tmp("a.stats.safetensors"), tmp("b.stats.safetensors.zst"));
    write_native(&pa, &a, &meta(), false).unwrap();
    write_native(&pb, &b, &meta(), true).unwrap();
    let merged = |first: &Path, second: &Path| {
        let mut s = ActivationStats::default();
        read_native(first, &qwen(), &model(), &mut s).unwrap();
        read_native(second, &qwen(), &model(), &mut s).unwrap();
        s.modules
    };
    let ab = merged(&pa, &pb);
    assert_eq!(ab, merged(&pb, &pa));
    let q = &ab[Q];
    assert_eq!(q.input_amax, Some(2.0));
    assert_eq!(
        q.input_amax_ch,
        Some(vec![2.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    );
    assert_eq!(q.input_sum_sq, Some(vec![0.1 + 0.2; 8]));
    assert_eq!(q.input_sum, Some(vec![-0.3 + 0.7; 8]));
    assert_eq!(q.token_count, Some(7));
    assert_eq!(q.weight_amax, Some(WeightAmax::Tensor(0.5)));
    assert_eq!(
        (ab[ATTN].k_cache_amax, ab[ATTN].v_cache_amax),
        (Some(4.0), Some(2.0))
    );
    assert_eq!(ab[&expert(0, "up_proj")].token_count, Some(0));

    // Weight amax is verification data: a different value means another checkpoint.
    b.modules.get_mut(Q).unwrap().weight_amax = Some(WeightAmax::Tensor(0.625));
    write_native(&pb, &b, &meta(), true).unwrap();
    let mut s = ActivationStats::default();
    read_native(&pa, &qwen(), &model(), &mut s).unwrap();
    let e = read_native(&pb, &qwen(), &model(), &mut s).unwrap_err();
    assert!(e.message().contains("different checkpoints"), "{e}");
    // input_mean_sq (no counts) cannot be merged.
    let mut s = ActivationStats::default();
    let p = tmp("mean.stats.safetensors");
    write_native(&p, &full(), &meta(), false).unwrap();
    read_native(&p, &qwen(), &model(), &mut s).unwrap();
    let e = read_native(&p, &qwen(), &model(), &mut s).unwrap_err();
    assert!(e.message().contains("cannot be merged"), "{e}");
}

#[test]
fn writer_refuses_what_the_reader_would() {
    let mut s = full();
    s.modules.get_mut(Q).unwrap().input_amax = Some(9.0);
    let p = tmp("refused.stats.safetensors");
    let e = write_native(&p, &s, &meta(), false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput);
    assert!(
        e.message().contains("refusing to write") && e.message().contains("must be equal"),
        "{e}"
    );
    assert!(!p.exists());
    let mut m = meta();
    m.expert_input_amax = "sometimes".into();
    assert!(write_native(&p, &full(), &m, false).is_err());
    assert!(!p.exists());
}

#[test]
fn aliases_give_the_target_statistics() {
    let items = vec![f32s(&format!("{Q}.input_amax_ch"), &[8], &[1.0; 8])];
    let meta = format!(r#"{{"aliases":{{"{K}":"{Q}","model.layers.0.self_attn.x_proj":"{Q}"}}}}"#);
    let (s, _) = read(&raw("alias", items, "1", Some(meta))).unwrap();
    assert_eq!(s.modules[K].input_amax_ch, Some(vec![1.0; 8]));
    assert_eq!(s.modules[Q], s.modules[K]);
    assert_eq!(s.unmatched.len(), 1, "{:?}", s.unmatched);
}
