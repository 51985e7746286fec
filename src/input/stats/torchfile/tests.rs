//! Tests of the torch.save reader: the shipped golden files, files built here byte by byte, and
//! hostile variants of them.

use super::pickle::tests::Pw;
use super::*;
use crate::error::ErrorKind;
use std::io::Write;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/golden");

/// A file in the temp dir holding `bytes` (named `shardquant-pt-…-{name}`), removed when
/// dropped, also when the test fails.
fn tmp(name: &str, bytes: &[u8]) -> tempfile::TempPath {
    let mut f = tempfile::Builder::new()
        .prefix("shardquant-pt-")
        .suffix(&format!("-{name}"))
        .tempfile()
        .expect("create temp file");
    f.write_all(bytes).expect("write temp file");
    f.into_temp_path()
}

/// Builds a ZIP of entries, all stored. Layout (little-endian):
/// - per entry, a local header `PK\3\4` (30 bytes: version 20, flags 0, `method`, time/date 0,
///   CRC-32, compressed size = size, name length, extra length 0), the name, the data;
/// - the central directory: per entry `PK\1\2` (46 bytes, same fields + local header offset)
///   and the name. With `zip64`, size, compressed size and offset are `0xffffffff` there and
///   follow as u64 in a ZIP64 extra field (id 1, 24 bytes);
/// - with `zip64`, a ZIP64 end record `PK\6\6` (56 bytes) and its locator `PK\6\7` (20 bytes);
/// - the end record `PK\5\6` (22 bytes: count, directory size and offset; with `zip64` these
///   are `0xffff` / `0xffffffff`).
///
/// torch's own writer differs only in using data descriptors (sizes 0 in the local header) and
/// padding extras for 64-byte alignment; the shipped golden files cover that form.
fn zip(entries: &[(String, Vec<u8>)], zip64: bool, method: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = zip::crc32(data);
        let size = data.len() as u32;
        let fields = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend_from_slice(&20u16.to_le_bytes()); // version made by
            }
            h.extend_from_slice(&20u16.to_le_bytes()); // version needed
            h.extend_from_slice(&0u16.to_le_bytes()); // flags
            h.extend_from_slice(&method.to_le_bytes());
            h.extend_from_slice(&[0; 4]); // time, date
            h.extend_from_slice(&crc.to_le_bytes());
            let (sz, off) = if central && zip64 {
                (u32::MAX, u32::MAX)
            } else {
                (size, offset)
            };
            h.extend_from_slice(&sz.to_le_bytes());
            h.extend_from_slice(&sz.to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            let extra: u16 = if central && zip64 { 28 } else { 0 };
            h.extend_from_slice(&extra.to_le_bytes());
            if central {
                h.extend_from_slice(&[0; 10]); // comment len, disk, internal, external attrs
                h.extend_from_slice(&off.to_le_bytes());
            }
            h.extend_from_slice(name.as_bytes());
            if central && zip64 {
                h.extend_from_slice(&1u16.to_le_bytes());
                h.extend_from_slice(&24u16.to_le_bytes());
                for v in [u64::from(size), u64::from(size), u64::from(offset)] {
                    h.extend_from_slice(&v.to_le_bytes());
                }
            }
            h
        };
        out.extend(fields(0x0403_4b50, false));
        out.extend_from_slice(data);
        central.extend(fields(0x0201_4b50, true));
    }
    let cd_offset = out.len() as u64;
    out.extend_from_slice(&central);
    let n = entries.len() as u64;
    let mut eocd_fields = (n as u16, central.len() as u32, cd_offset as u32);
    if zip64 {
        let z64 = out.len() as u64;
        out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for v in [n, n, central.len() as u64, cd_offset] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&z64.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        eocd_fields = (u16::MAX, u32::MAX, u32::MAX);
    }
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&eocd_fields.0.to_le_bytes());
    out.extend_from_slice(&eocd_fields.0.to_le_bytes());
    out.extend_from_slice(&eocd_fields.1.to_le_bytes());
    out.extend_from_slice(&eocd_fields.2.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// The entries of a torch.save archive: `<prefix>/data.pkl`, `<prefix>/byteorder`,
/// `<prefix>/data/<key>` per storage, `<prefix>/version`.
fn pt_entries(prefix: &str, pkl: Vec<u8>, storages: &[(&str, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut e = vec![
        (format!("{prefix}/data.pkl"), pkl),
        (format!("{prefix}/byteorder"), b"little".to_vec()),
    ];
    for (k, bytes) in storages {
        e.push((format!("{prefix}/data/{k}"), bytes.clone()));
    }
    e.push((format!("{prefix}/version"), b"3\n".to_vec()));
    e
}

fn pt(pkl: Vec<u8>, storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    zip(&pt_entries("archive", pkl, storages), false, 0)
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bf16s(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect()
}

/// `{key: f32 tensor [4] of storage '0' = [1, 2, 3, 4]}` with the given view.
fn one_tensor(offset: u64, shape: &[u64], stride: &[u64]) -> Vec<u8> {
    let mut p = Pw::new();
    p.op(b"}(")
        .s("w")
        .tensor("FloatStorage", "0", 4, offset, shape, stride)
        .op(b"u");
    pt(p.done(), &[("0", f32s(&[1.0, 2.0, 3.0, 4.0]))])
}

fn read(name: &str, bytes: &[u8]) -> Result<(Vec<PtTensor>, Vec<String>)> {
    let t = tmp(name, bytes);
    read_pt_tensors(&t)
}

fn read_err(name: &str, bytes: &[u8]) -> String {
    let e = read(name, bytes).expect_err("must be refused");
    assert_eq!(e.kind(), ErrorKind::BadInput, "{e}");
    assert!(e.message().contains("shardquant-pt-"), "no file named: {e}");
    e.message().to_string()
}

// ---- shipped golden files ----------------------------------------------------------------

fn safetensors_f32(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).expect("read safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let vals = match view.dtype() {
                safetensors::Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                _ => Vec::new(),
            };
            (name, view.shape().to_vec(), vals)
        })
        .collect()
}

#[test]
fn llama_act_scales_give_modelopt_input_amax_exactly() {
    let path = Path::new(GOLDEN).join("stats/llama.act_scales.pt");
    let (tensors, skipped) = read_pt_tensors(&path).unwrap();
    assert!(skipped.is_empty());
    assert_eq!(tensors.len(), 14);
    assert_eq!(tensors[0].key, "model.layers.0.mlp.down_proj");
    let amax = safetensors_f32(&Path::new(GOLDEN).join("llama_nvfp4/amax.safetensors"));
    let amax: HashMap<String, f32> = amax.into_iter().map(|(n, _, v)| (n, v[0])).collect();
    // in_features of every linear, from the input model's weight shapes [out, in].
    let dir = Path::new(GOLDEN).join("llama_nvfp4/input");
    let mut in_features = HashMap::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for (name, view) in st.tensors() {
                if view.shape().len() == 2 {
                    in_features.insert(name, view.shape()[1]);
                }
            }
        }
    }
    for t in &tensors {
        assert_eq!(t.dtype, "F32", "{}", t.key);
        assert_eq!(
            t.shape,
            vec![in_features[&format!("{}.weight", t.key)]],
            "{}",
            t.key
        );
        assert!(
            t.values.iter().all(|v| v.is_finite() && *v >= 0.0),
            "{}",
            t.key
        );
        let max = t.values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let want = amax[&format!("{}.input_quantizer._amax", t.key)];
        assert_eq!(max.to_bits(), want.to_bits(), "{}: {max} vs {want}", t.key);
    }
    let covered = amax
        .keys()
        .filter(|k| k.ends_with(".input_quantizer._amax"))
        .count();
    assert_eq!(
        covered, 14,
        "every input amax of the model has an act_scales entry"
    );
}

/// ModelOpt's `_remap_key`, substring for substring, to check [`deepseek_to_hf`] against.
fn remap_like_modelopt(key: &str) -> String {
    let mut k = key.replace("layers", "model.layers");
    for (a, b) in [
        ("ffn", "mlp"),
        ("w1", "gate_proj"),
        ("w2", "down_proj"),
        ("w3", "up_proj"),
        ("attn", "self_attn"),
        ("wq_a", "q_a_proj"),
        ("wq_b", "q_b_proj"),
        ("wq", "q_proj"),
        ("wkv_a", "kv_a_proj_with_mqa"),
        ("wkv_b", "kv_b_proj"),
        ("wo", "o_proj"),
        ("head", "lm_head"),
    ] {
        k = k.replace(a, b);
    }
    k
}

#[test]
fn deepseek_dumps_split_experts_by_rank() {
    let mut ranks = Vec::new();
    for r in 0..2 {
        let path = Path::new(GOLDEN).join(format!("stats/deepseek.amax_dict_rank{r}-mp2.pt"));
        let (tensors, skipped) = read_pt_tensors(&path).unwrap();
        assert!(skipped.is_empty());
        for t in &tensors {
            assert_eq!(
                (t.dtype, t.shape.len(), t.values.len()),
                ("BF16", 0, 1),
                "{}",
                t.key
            );
            assert!(t.values[0].is_finite() && t.values[0] > 0.0, "{}", t.key);
            assert!(t.key.starts_with("layers."), "{}", t.key);
            assert_eq!(deepseek_to_hf(&t.key), remap_like_modelopt(&t.key));
        }
        let map: HashMap<String, f32> = tensors.into_iter().map(|t| (t.key, t.values[0])).collect();
        ranks.push(map);
    }
    let experts = |m: &HashMap<String, f32>, which: &str| -> Vec<u32> {
        let key = |e: u32| format!("layers.1.ffn.experts.{e}.w1.{which}_quantizer._amax");
        (0..8).filter(|&e| m.contains_key(&key(e))).collect()
    };
    assert_eq!(experts(&ranks[0], "weight"), [0, 1]);
    assert_eq!(experts(&ranks[0], "input"), [0, 1]);
    assert_eq!(experts(&ranks[1], "weight"), [2, 3]);
    assert_eq!(
        experts(&ranks[1], "input"),
        [2],
        "expert 3 saw no tokens: no input amax"
    );
    for w in ["w1", "w2", "w3"] {
        let k = format!("layers.1.ffn.experts.3.{w}.input_quantizer._amax");
        assert!(!ranks[1].contains_key(&k) && !ranks[0].contains_key(&k));
    }
    assert!(ranks[1].contains_key("layers.1.ffn.experts.2.w1.input_quantizer._amax"));
    // Attention, dense and shared-expert keys are in both files, with equal (synced) values.
    let shared: Vec<&String> = ranks[0]
        .keys()
        .filter(|k| !k.contains(".experts."))
        .collect();
    assert!(shared.iter().any(|k| k.contains(".attn.wq_a.")));
    assert!(shared.iter().any(|k| k.contains(".shared_experts.")));
    for k in shared {
        assert_eq!(
            ranks[1].get(k).map(|v| v.to_bits()),
            Some(ranks[0][k].to_bits()),
            "{k}"
        );
    }
    assert_eq!(ranks[0].len(), 44);
    assert_eq!(ranks[1].len(), 41);
    // Fixture facts an importer must cope with: expert input amax are per expert (not the
    // peer-max-synced values of ModelOpt's default DeepSeek flow), and gate (w1) and up (w3)
    // input amax differ although both read the same input.
    let input = |e: u32, w: &str| {
        ranks[(e / 2) as usize][&format!("layers.1.ffn.experts.{e}.{w}.input_quantizer._amax")]
    };
    assert_ne!(input(0, "w1"), input(1, "w1"));
    assert_ne!(input(0, "w1"), input(0, "w3"));
    let dense = |w: &str| ranks[0][&format!("layers.0.ffn.{w}.input_quantizer._amax")];
    assert_ne!(dense("w1"), dense("w3"));
}

#[test]
fn forbidden_global_file_is_refused_before_anything_runs() {
    let path = Path::new(GOLDEN).join("stats/forbidden-global.pt");
    let e = read_pt_tensors(&path).expect_err("must be refused");
    assert_eq!(e.kind(), ErrorKind::BadInput);
    let msg = e.message();
    assert!(msg.starts_with(&format!("{} (forbidden-global/data.pkl): ", path.display())));
    assert!(msg.contains(
        "refusing to load 'builtins.print' (not a tensor or dict; shardquant never executes \
         pickled code)"
    ));
    // The file's pickle is `{key: print('…')}`: GLOBAL `__builtin__ print` at byte 43, its
    // REDUCE (the call) at byte 137. The load stops at the GLOBAL, so no call is ever reached.
    assert!(msg.ends_with("(pickle byte 43)"), "{msg}");
    assert!(e.hint().is_some());
}

// ---- files built here --------------------------------------------------------------------

#[test]
fn hand_built_file_with_every_supported_form() {
    // {'a': {'x': f32 [2] at offset 1 of storage '0', 'y': 7},
    //  'b': bf16 0-d, 'c': f16 [2, 2], 'd': 'text', 'e': None, 3: Parameter(f32 [3])}
    let mut p = Pw::new();
    p.global("collections", "OrderedDict").op(b")Rq\x00(");
    p.s("a")
        .op(b"}(")
        .s("x")
        .tensor("FloatStorage", "0", 4, 1, &[2], &[1]);
    p.s("y").int(7).op(b"u");
    p.s("b").tensor("BFloat16Storage", "1", 1, 0, &[], &[]);
    p.s("c").tensor("HalfStorage", "2", 4, 0, &[2, 2], &[2, 1]);
    p.s("d").s("text").s("e").op(b"N");
    p.int(3)
        .global("torch._utils", "_rebuild_parameter")
        .op(b"(");
    p.tensor("FloatStorage", "0", 4, 0, &[3], &[1])
        .op(&[0x89])
        .op(b"}tR");
    p.op(b"u").s("ignored-state").op(b"b");
    let f16: Vec<u8> = [0.5f32, -1.0, 65504.0, 1e-7]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let storages = [
        ("0", f32s(&[1.0, 2.5, -3.0, 4.0])),
        ("1", bf16s(&[0.1])),
        ("2", f16),
    ];
    let pkl = p.done();
    for (zip64, prefix) in [(false, "archive"), (true, "my.stats.v2")] {
        let file = zip(&pt_entries(prefix, pkl.clone(), &storages), zip64, 0);
        let (t, skipped) = read(&format!("every-form-{zip64}"), &file).unwrap();
        let keys: Vec<&str> = t.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["a.x", "b", "c", "3"]);
        assert_eq!(skipped, ["a.y", "d", "e"]);
        assert_eq!(
            (t[0].shape.as_slice(), t[0].values.as_slice()),
            (&[2][..], &[2.5, -3.0][..])
        );
        assert_eq!((t[1].dtype, t[1].shape.len()), ("BF16", 0));
        assert_eq!(t[1].values, [half::bf16::from_f32(0.1).to_f32()]);
        assert_eq!((t[2].dtype, t[2].shape.as_slice()), ("F16", &[2, 2][..]));
        assert_eq!(
            t[2].values,
            [0.5, -1.0, 65504.0, half::f16::from_f32(1e-7).to_f32()]
        );
        assert_eq!(
            (t[3].dtype, t[3].values.as_slice()),
            ("F32", &[1.0, 2.5, -3.0][..])
        );
    }
}

#[test]
fn strided_views_are_gathered_in_row_major_order() {
    let storage = f32s(&(0..6).map(|x| x as f32).collect::<Vec<_>>());
    type Case<'a> = (u64, &'a [u64], &'a [u64], &'a [f32]);
    let cases: &[Case] = &[
        (0, &[2, 3], &[3, 1], &[0., 1., 2., 3., 4., 5.]), // contiguous
        (0, &[2, 3], &[1, 2], &[0., 2., 4., 1., 3., 5.]), // transposed [3, 2] storage
        (1, &[2, 2], &[3, 1], &[1., 2., 4., 5.]),         // a [:, 1:] slice
        (5, &[3], &[0], &[5., 5., 5.]),                   // broadcast (expand)
        (2, &[1, 2], &[u64::MAX / 2, 3], &[2., 5.]),      // size-1 dim with any stride
        (3, &[0, 7], &[1, 1], &[]),                       // empty
    ];
    for (i, (offset, shape, stride, want)) in cases.iter().enumerate() {
        let mut p = Pw::new();
        p.op(b"}(")
            .s("v")
            .tensor("FloatStorage", "0", 6, *offset, shape, stride)
            .op(b"u");
        let (t, _) = read(
            &format!("strided-{i}"),
            &pt(p.done(), &[("0", storage.clone())]),
        )
        .unwrap();
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        assert_eq!(
            (&t[0].shape, t[0].values.as_slice()),
            (&shape, *want),
            "case {i}"
        );
    }
}

#[test]
fn big_endian_archives_are_byte_swapped() {
    let mut p = Pw::new();
    p.op(b"}(")
        .s("w")
        .tensor("FloatStorage", "0", 2, 0, &[2], &[1])
        .op(b"u");
    let be: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect();
    let mut e = pt_entries("archive", p.done(), &[("0", be)]);
    e[1].1 = b"big".to_vec();
    let (t, _) = read("big-endian", &zip(&e, false, 0)).unwrap();
    assert_eq!(t[0].values, [1.5, -2.0]);
}

// ---- hostile and broken files ------------------------------------------------------------

#[test]
fn truncated_archives_fail_cleanly_at_every_length() {
    let full = one_tensor(0, &[4], &[1]);
    assert!(read("trunc-full", &full).is_ok());
    let t = tmp("trunc", b"");
    for cut in 0..full.len() {
        std::fs::write(&t, &full[..cut]).unwrap();
        let e = read_pt_tensors(&t).expect_err("truncated file accepted");
        assert_eq!(e.kind(), ErrorKind::BadInput, "cut {cut}: {e}");
    }
}

#[test]
fn corrupt_zip_structures_are_reported() {
    let good = one_tensor(0, &[4], &[1]);
    let cd = good.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    let eocd = good.len() - 22;
    let patch = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    let data_at = good
        .windows(4)
        .position(|w| w == f32s(&[1.0]).as_slice())
        .unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (patch(data_at, &[0xff]), "fails its CRC-32 check"),
        // first central entry (data.pkl): sizes 0xfffffff0, far past the end of the file.
        (
            patch(cd + 20, &[0xf0, 0xff, 0xff, 0xff, 0xf0, 0xff, 0xff, 0xff]),
            "past the end",
        ),
        (patch(cd + 10, &[8, 0]), "is compressed (method 8)"),
        (patch(cd + 8, &[1, 0]), "is encrypted"),
        (patch(eocd + 10, &[0xff, 0xff]), "declares 65535 entries"),
        (
            patch(eocd + 16, &[0xff, 0xff, 0xff, 0x7f]),
            "does not fit before its end record",
        ),
        (
            patch(cd, b"PK\x09\x09"),
            "bad central directory entry signature",
        ),
        (patch(0, b"PK\x09\x09"), "bad local header"),
        (b"not a zip at all".to_vec(), "not a ZIP archive"),
        (b"\x80\x02}q\x00.".to_vec(), "legacy torch.save file"),
    ];
    for (i, (bytes, want)) in cases.iter().enumerate() {
        let msg = read_err(&format!("corrupt-{i}"), bytes);
        assert!(msg.contains(want), "case {i}: {msg}");
    }
}

#[test]
fn zip64_with_lying_sizes_is_refused() {
    let mut e = pt_entries("archive", Pw::new().op(b"}").done(), &[]);
    e.truncate(1);
    let good = zip(&e, true, 0);
    assert!(read("z64-good", &good).unwrap().0.is_empty());
    // The ZIP64 end record's directory size (at +40) claims 2^62 bytes.
    let z = good.windows(4).position(|w| w == b"PK\x06\x06").unwrap();
    let mut bad = good.clone();
    bad[z + 40..z + 48].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(read_err("z64-size", &bad).contains("does not fit"));
    // The ZIP64 extra field's entry size claims 2^40 bytes.
    let x = good.windows(4).position(|w| w == [1, 0, 24, 0]).unwrap();
    let mut bad = good.clone();
    bad[x + 4..x + 12].copy_from_slice(&(1u64 << 40).to_le_bytes());
    bad[x + 12..x + 20].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let msg = read_err("z64-entry", &bad);
    assert!(msg.contains("past the end"), "{msg}");
    bad[x + 12..x + 20].copy_from_slice(&3u64.to_le_bytes());
    let msg = read_err("z64-entry2", &bad);
    assert!(
        msg.contains("declares 3 bytes stored for 1099511627776 bytes"),
        "{msg}"
    );
}

#[test]
fn bad_tensors_name_their_key() {
    let f64_file = {
        let mut p = Pw::new();
        p.op(b"}(")
            .s("m.scale")
            .tensor("DoubleStorage", "0", 1, 0, &[], &[])
            .op(b"u");
        pt(p.done(), &[("0", 1.0f64.to_le_bytes().to_vec())])
    };
    let missing = {
        let mut p = Pw::new();
        p.op(b"}(")
            .s("w")
            .tensor("FloatStorage", "9", 4, 0, &[4], &[1])
            .op(b"u");
        pt(p.done(), &[("0", f32s(&[1.0; 4]))])
    };
    let wrong_size = {
        let mut p = Pw::new();
        p.op(b"}(")
            .s("w")
            .tensor("FloatStorage", "0", 5, 0, &[4], &[1])
            .op(b"u");
        pt(p.done(), &[("0", f32s(&[1.0; 4]))])
    };
    let huge_numel = {
        let mut p = Pw::new();
        p.op(b"}(")
            .s("w")
            .tensor("FloatStorage", "0", 1 << 62, 0, &[4], &[1])
            .op(b"u");
        pt(p.done(), &[("0", f32s(&[1.0; 4]))])
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            f64_file,
            "tensor 'm.scale' has dtype F64; only F32, BF16 and F16 are read",
        ),
        (
            missing,
            "tensor 'w' refers to storage '9' but the archive has no 'archive/data/9'",
        ),
        (
            wrong_size,
            "tensor 'w' declares a storage of 5 elements (4 bytes each) but storage",
        ),
        (
            huge_numel,
            "declares a storage of 4611686018427387904 elements",
        ),
        (
            one_tensor(1, &[4], &[1]),
            "tensor 'w' (offset 1, shape [4], stride [1]) reaches past",
        ),
        (
            one_tensor(10, &[], &[]),
            "reaches past the end of its storage of 4 elements",
        ),
        (one_tensor(0, &[2, 2], &[1, 3]), "reaches past the end"),
        (one_tensor(0, &[2], &[1 << 62]), "reaches past the end"),
        (
            one_tensor(0, &[1 << 40, 1 << 40], &[0, 0]),
            "more elements than a",
        ),
        (
            one_tensor(0, &[1 << 32, 1 << 32, 16], &[0, 0, 0]),
            "more elements than a",
        ),
    ];
    for (i, (bytes, want)) in cases.iter().enumerate() {
        let msg = read_err(&format!("bad-tensor-{i}"), bytes);
        assert!(msg.contains(want), "case {i}: {msg}");
    }
}

#[test]
fn many_broadcast_views_cannot_multiply_memory() {
    // 2 000 tensors, each a stride-0 view of one element as 1 000 elements: 2 M floats from a
    // file of ~200 kB. Each alone is plausible; together they exceed the file's budget.
    let mut p = Pw::new();
    p.op(b"}(");
    for i in 0..2000 {
        p.s(&format!("t{i}"))
            .tensor("FloatStorage", "0", 4, 0, &[1000], &[0]);
    }
    let file = pt(p.op(b"u").done(), &[("0", f32s(&[1.0; 4]))]);
    let msg = read_err("broadcast-bomb", &file);
    assert!(
        msg.contains("more elements than a file of this size"),
        "{msg}"
    );
    assert!(!msg.contains("tensor 't0'"), "the first views fit: {msg}");
}

#[test]
fn archives_that_are_not_dicts_of_tensors() {
    let mut p = Pw::new();
    p.op(b"]")
        .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
        .op(b"a");
    let list = pt(p.done(), &[("0", f32s(&[1.0; 4]))]);
    assert!(read_err("list", &list).contains("top-level object is a list, not a dict"));
    let no_pkl = zip(&[("archive/other.bin".to_string(), vec![1, 2])], false, 0);
    assert!(read_err("no-pkl", &no_pkl).contains("no '<folder>/data.pkl' entry"));
    // {'a.b': t, 'a': {'b': t}} flattens to the same key twice.
    let mut p = Pw::new();
    p.op(b"}(")
        .s("a.b")
        .tensor("FloatStorage", "0", 4, 0, &[4], &[1]);
    p.s("a")
        .op(b"}")
        .s("b")
        .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
        .op(b"su");
    let dup = pt(p.done(), &[("0", f32s(&[1.0; 4]))]);
    assert!(read_err("dup", &dup).contains("key 'a.b' occurs twice"));
    let mut e = pt_entries("archive", Pw::new().op(b"}").done(), &[]);
    e[1].1 = b"middle".to_vec();
    assert!(read_err("byteorder", &zip(&e, false, 0)).contains("unknown byteorder 'middle'"));
    // A bad opcode inside data.pkl is reported with the archive entry name.
    let bad_op = pt(b"\x80\x02}\xfe.".to_vec(), &[]);
    let msg = read_err("bad-op", &bad_op);
    assert!(
        msg.contains("(archive/data.pkl): unknown pickle opcode 0xfe"),
        "{msg}"
    );
}

// ---- DeepSeek names ----------------------------------------------------------------------

#[test]
fn deepseek_names_map_component_wise() {
    let q = ".input_quantizer._amax";
    for (native, hf) in [
        (
            "layers.1.ffn.experts.2.w1",
            "model.layers.1.mlp.experts.2.gate_proj",
        ),
        (
            "layers.1.ffn.experts.2.w2",
            "model.layers.1.mlp.experts.2.down_proj",
        ),
        (
            "layers.1.ffn.experts.2.w3",
            "model.layers.1.mlp.experts.2.up_proj",
        ),
        (
            "layers.1.ffn.shared_experts.w1",
            "model.layers.1.mlp.shared_experts.gate_proj",
        ),
        ("layers.0.ffn.w2", "model.layers.0.mlp.down_proj"),
        ("layers.0.attn.wq", "model.layers.0.self_attn.q_proj"),
        ("layers.0.attn.wq_a", "model.layers.0.self_attn.q_a_proj"),
        ("layers.0.attn.wq_b", "model.layers.0.self_attn.q_b_proj"),
        (
            "layers.0.attn.wkv_a",
            "model.layers.0.self_attn.kv_a_proj_with_mqa",
        ),
        ("layers.0.attn.wkv_b", "model.layers.0.self_attn.kv_b_proj"),
        ("layers.0.attn.wo", "model.layers.0.self_attn.o_proj"),
        ("head", "lm_head"),
    ] {
        assert_eq!(deepseek_to_hf(native), hf);
        assert_eq!(deepseek_to_hf(&format!("{native}{q}")), format!("{hf}{q}"));
        assert_eq!(
            deepseek_to_hf(&format!("{native}{q}")),
            remap_like_modelopt(&format!("{native}{q}"))
        );
        // HF names pass through unchanged (no `model.model.layers`).
        assert_eq!(deepseek_to_hf(hf), hf);
    }
    assert_eq!(
        deepseek_to_hf("layers.3.attn.kv_bmm_quantizer._amax"),
        "model.layers.3.self_attn.kv_bmm_quantizer._amax"
    );
    // V4's underscore-joined quantizer attributes are not split.
    assert_eq!(
        deepseek_to_hf("layers.0.ffn.experts.5.w1_input_quantizer._amax"),
        "model.layers.0.mlp.experts.5.w1_input_quantizer._amax"
    );
}
