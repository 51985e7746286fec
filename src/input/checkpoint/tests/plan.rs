//! Shard plans: splitting, naming, layout, the index file.

use safetensors::Dtype;

use super::{expected_tensors, golden, golden_cases, read_json};
use crate::error::ErrorKind;
use crate::plan::shards::{format_index, is_quantizer_buffer};
use crate::plan::{OutputTensor, ShardPlan};

/// `U8` tensors of the given byte lengths, named t0, t1, ...
fn bytes_tensors(lens: &[usize]) -> Vec<OutputTensor> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| OutputTensor::new(format!("t{}", i), Dtype::U8, vec![n]))
        .collect()
}

/// The shard of every tensor.
fn shards_of(plan: &ShardPlan) -> Vec<usize> {
    (0..plan.tensors().len())
        .map(|i| plan.location(i).0)
        .collect()
}

#[test]
fn byte_lengths() {
    let t = |d, s: &[usize]| OutputTensor::new("x", d, s.to_vec());
    assert_eq!(t(Dtype::F8_E4M3, &[4, 16]).byte_len(), 64);
    assert_eq!(t(Dtype::U8, &[2, 3]).byte_len(), 6);
    assert_eq!(t(Dtype::F32, &[]).byte_len(), 4);
    assert_eq!(t(Dtype::BF16, &[0, 5]).byte_len(), 0);
    assert_eq!(t(Dtype::F4, &[2, 3]).byte_len(), 3);
    assert_eq!(t(Dtype::F64, &[3]).byte_len(), 24);
    assert_eq!(t(Dtype::F4, &[3]).checked_byte_len(), None);
    assert_eq!(t(Dtype::F32, &[usize::MAX, 2]).byte_len(), usize::MAX);
    assert_eq!(t(Dtype::F32, &[7, 3]).numel(), 21);
}

#[test]
fn greedy_split_like_huggingface() {
    // 30 + 30 fits in 64; 50 does not fit after them; 50 + 10 fits.
    let plan = ShardPlan::new(bytes_tensors(&[30, 30, 50, 10]), 64).unwrap();
    assert_eq!(shards_of(&plan), [0, 0, 1, 1]);
    assert_eq!(
        plan.file_names(),
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );
    // Exactly the limit still fits.
    let plan = ShardPlan::new(bytes_tensors(&[32, 32, 1]), 64).unwrap();
    assert_eq!(shards_of(&plan), [0, 0, 1]);
    // A tensor over the limit gets its own shard, placed before the shard being filled.
    let plan = ShardPlan::new(bytes_tensors(&[10, 100, 10, 60]), 64).unwrap();
    assert_eq!(shards_of(&plan), [1, 0, 1, 2]);
    assert_eq!(plan.shard_count(), 3);
    assert_eq!(plan.file_names()[2], "model-00003-of-00003.safetensors");
    assert_eq!(plan.total_bytes(), 180);
}

#[test]
fn one_shard_is_model_safetensors_without_index() {
    let plan = ShardPlan::new(bytes_tensors(&[32, 32]), 64).unwrap();
    assert_eq!(plan.shard_count(), 1);
    assert_eq!(plan.file_names(), ["model.safetensors"]);
    assert!(plan.index_json().is_none());
    let empty = ShardPlan::new(Vec::new(), 64).unwrap();
    assert_eq!(empty.file_names(), ["model.safetensors"]);
    assert_eq!(empty.total_bytes(), 0);
}

#[test]
fn layout_is_contiguous_aligned_and_padded() {
    let tensors = vec![
        OutputTensor::new("codes", Dtype::U8, vec![3]),
        OutputTensor::new("scale", Dtype::F32, vec![]),
        OutputTensor::new("norm", Dtype::BF16, vec![1]),
        OutputTensor::new("big", Dtype::F64, vec![2]),
        OutputTensor::new("fp4", Dtype::F4, vec![2]),
    ];
    let plan = ShardPlan::new(tensors, 1 << 20).unwrap();
    let header = &plan.planned_shards()[0].header;
    let n = u64::from_le_bytes(header[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    assert_eq!(header.len(), 8 + n);
    assert!(header[8..].starts_with(br#"{"__metadata__":{"format":"pt"},"big":{"dtype":"F64""#));
    // Largest alignment first; the given order otherwise.
    let order: Vec<u64> = (0..5).map(|i| plan.location(i).1).collect();
    let start = 8 + n as u64;
    assert_eq!(
        order,
        [start + 22, start + 16, start + 20, start, start + 25]
    );
    for (i, t) in plan.tensors().iter().enumerate() {
        let (_, at, len) = plan.location(i);
        assert_eq!(len, t.byte_len());
        assert_eq!(
            at % (t.dtype.bitsize() / 8).max(1) as u64,
            0,
            "{} misaligned",
            t.name
        );
    }
    assert_eq!(plan.file_len(0), start + 26);
}

#[test]
fn repeated_or_reserved_names_are_errors() {
    let mut tensors = bytes_tensors(&[1, 2]);
    tensors.push(OutputTensor::new("t0", Dtype::F32, vec![]));
    let err = ShardPlan::new(tensors, 64).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadInput);
    assert!(err.message().contains("`t0`"), "{}", err);
    assert!(ShardPlan::new(
        vec![OutputTensor::new("__metadata__", Dtype::U8, vec![1])],
        64
    )
    .is_err());
    assert!(ShardPlan::new(vec![OutputTensor::new("x", Dtype::F4, vec![3])], 64).is_err());
}

#[test]
fn index_of_and_tensors() {
    let plan = ShardPlan::new(bytes_tensors(&[1, 2, 3]), 64).unwrap();
    assert_eq!(plan.index_of("t2"), Some(2));
    assert_eq!(plan.index_of("nope"), None);
    assert_eq!(plan.tensors()[1].name, "t1");
}

#[test]
fn index_text_matches_huggingface_byte_for_byte() {
    for case in golden_cases() {
        for which in ["input", "modelopt"] {
            let path = case.join(which).join("model.safetensors.index.json");
            let golden_text = std::fs::read_to_string(&path).unwrap();
            let v = read_json(&path);
            let entries: Vec<(&str, &str)> = v["weight_map"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, f)| (k.as_str(), f.as_str().unwrap()))
                .collect();
            let text = format_index(
                entries,
                v["metadata"]["total_parameters"].as_u64().unwrap(),
                v["metadata"]["total_size"].as_u64().unwrap(),
            );
            assert_eq!(text, golden_text, "{}", path.display());
        }
    }
}

#[test]
fn index_escapes_like_python() {
    let text = format_index(vec![("b\"\\\n\u{7f}é😀", "f"), ("a", "f")], 1, 2);
    assert!(
        text.contains(
            r#""a": "f",
    "b\"\\\n\u007f\u00e9\ud83d\ude00": "f""#
        ),
        "{}",
        text
    );
    assert_eq!(format_index(vec![], 0, 0), "{\n  \"metadata\": {\n    \"total_parameters\": 0,\n    \"total_size\": 0\n  },\n  \"weight_map\": {}\n}\n");
}

#[test]
fn totals_follow_the_golden_modelopt_rule() {
    // total_size: all tensor bytes. total_parameters: elements of every tensor except the
    // quantization scales (buffers), with packed U8 NVFP4 weights counted by their bytes.
    for case in golden_cases() {
        let tensors: Vec<OutputTensor> = expected_tensors(&case, "modelopt")
            .into_iter()
            .map(|(name, dtype, shape, _)| {
                OutputTensor::new(
                    name,
                    serde_json::from_value(serde_json::json!(dtype)).unwrap(),
                    shape,
                )
            })
            .collect();
        let plan = ShardPlan::new(tensors, 40_000).unwrap();
        let golden_index = read_json(&case.join("modelopt/model.safetensors.index.json"));
        assert_eq!(
            Some(plan.total_bytes()),
            golden_index["metadata"]["total_size"].as_u64(),
            "{}",
            case.display()
        );
        assert_eq!(
            Some(plan.total_parameters()),
            golden_index["metadata"]["total_parameters"].as_u64(),
            "{}",
            case.display()
        );
        let index: serde_json::Value = serde_json::from_str(&plan.index_json().unwrap()).unwrap();
        assert_eq!(index["metadata"], golden_index["metadata"]);
        let map = index["weight_map"].as_object().unwrap();
        assert_eq!(map.len(), plan.tensors().len());
        for (i, t) in plan.tensors().iter().enumerate() {
            assert_eq!(map[&t.name], plan.file_names()[plan.location(i).0]);
        }
    }
    assert!(is_quantizer_buffer(
        "model.layers.0.mlp.down_proj.weight_scale_2"
    ));
    assert!(is_quantizer_buffer(
        "model.layers.0.self_attn.k_proj.k_scale"
    ));
    assert!(!is_quantizer_buffer("model.layers.0.mlp.down_proj.weight"));
    let mut plan = ShardPlan::new(bytes_tensors(&[40, 40]), 64).unwrap();
    assert_eq!(plan.total_parameters(), 80);
    plan.set_total_parameters(7);
    assert!(plan
        .index_json()
        .unwrap()
        .contains("\"total_parameters\": 7,"));
}

#[test]
fn golden_input_totals_count_every_element() {
    let case = golden("qwen3moe_nvfp4");
    let tensors: Vec<OutputTensor> = expected_tensors(&case, "input")
        .into_iter()
        .map(|(name, _, shape, _)| OutputTensor::new(name, Dtype::BF16, shape))
        .collect();
    let plan = ShardPlan::new(tensors, 60_000).unwrap();
    let golden_index = read_json(&case.join("input/model.safetensors.index.json"));
    assert_eq!(
        Some(plan.total_parameters()),
        golden_index["metadata"]["total_parameters"].as_u64()
    );
    assert_eq!(
        Some(plan.total_bytes()),
        golden_index["metadata"]["total_size"].as_u64()
    );
}
