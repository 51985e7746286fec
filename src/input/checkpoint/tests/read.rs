//! Opening valid checkpoints: the golden inputs and outputs, a single-file checkpoint.

use std::path::PathBuf;

use safetensors::SafeTensors;

use super::{copy_dir, expected_tensors, golden, golden_cases};
use crate::input::checkpoint::reader::inner_pages;
use crate::input::checkpoint::Checkpoint;
use crate::output::ShardWriter;
use crate::plan::{OutputTensor, ShardPlan};

/// Checks `dir` against the (name, dtype, shape, file) list and the safetensors crate's own view.
fn check_against(ckpt: &Checkpoint, expected: &[(String, String, Vec<usize>, String)]) {
    assert_eq!(
        ckpt.tensors().len(),
        expected.len(),
        "tensor count of {}",
        ckpt.dir().display()
    );
    for (name, dtype, shape, file) in expected {
        let t = ckpt.get(name).unwrap_or_else(|| panic!("{} missing", name));
        assert_eq!(&t.name, name);
        assert_eq!(&t.dtype.to_string(), dtype, "{}", name);
        assert_eq!(&t.shape, shape, "{}", name);
        let shard_file = ckpt.shards()[t.shard]
            .path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(shard_file, file, "{}", name);
        assert_eq!(t.len, t.numel() * t.dtype.bitsize() / 8, "{}", name);
    }
    // Ordered by (shard, offset), shards sorted by file name.
    let keys: Vec<(usize, usize)> = ckpt.tensors().iter().map(|t| (t.shard, t.start)).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "tensors not in (shard, offset) order"
    );
    let paths: Vec<&PathBuf> = ckpt.shards().iter().map(|s| &s.path).collect();
    assert!(paths.windows(2).all(|w| w[0] < w[1]), "shards not sorted");
    // Same bytes as the safetensors crate reads.
    let mut total = 0u64;
    for shard in ckpt.shards() {
        let buf = std::fs::read(&shard.path).unwrap();
        assert_eq!(shard.len(), buf.len() as u64);
        let st = SafeTensors::deserialize(&buf).unwrap();
        for (name, view) in st.tensors() {
            let t = ckpt.get(&name).unwrap();
            assert_eq!(ckpt.bytes(t), view.data(), "{}", name);
            total += t.len as u64;
        }
    }
    assert_eq!(ckpt.total_bytes(), total);
}

#[test]
fn opens_every_golden_input() {
    for case in golden_cases() {
        let ckpt = Checkpoint::open(&case.join("input")).unwrap();
        let expected = expected_tensors(&case, "input");
        assert!(expected.iter().all(|e| e.1 == "BF16"));
        check_against(&ckpt, &expected);
        assert_eq!(ckpt.dir(), case.join("input"));
        let meta = ckpt.index_metadata().unwrap();
        assert_eq!(meta["total_size"].as_u64(), Some(ckpt.total_bytes()));
    }
}

#[test]
fn opens_every_golden_modelopt_output_with_any_dtype() {
    for case in golden_cases() {
        let ckpt = Checkpoint::open(&case.join("modelopt")).unwrap();
        check_against(&ckpt, &expected_tensors(&case, "modelopt"));
    }
}

#[test]
fn other_files_are_the_non_weight_files() {
    let dir = golden("llama_nvfp4").join("input");
    let ckpt = Checkpoint::open(&dir).unwrap();
    let files = ckpt.other_files().unwrap();
    assert_eq!(
        files,
        vec![dir.join("config.json"), dir.join("generation_config.json")]
    );
    assert!(ckpt.other_dirs().unwrap().is_empty());

    // Subdirectories are listed apart; symbolic links are followed to files inside the
    // directory only: a link out of it, or to a directory, is left out and said why.
    let copy = copy_dir(&dir, "other-files");
    std::fs::create_dir(copy.path().join("original")).unwrap();
    std::os::unix::fs::symlink("config.json", copy.path().join("tokenizer.json")).unwrap();
    std::os::unix::fs::symlink(dir.join("config.json"), copy.path().join("outside.json")).unwrap();
    std::os::unix::fs::symlink("original", copy.path().join("linked-dir")).unwrap();
    let ckpt = Checkpoint::open(copy.path()).unwrap();
    let names: Vec<String> = ckpt
        .other_files()
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["config.json", "generation_config.json", "tokenizer.json"]
    );
    assert_eq!(
        ckpt.other_dirs().unwrap(),
        vec![copy.path().join("original")]
    );
    let skipped = ckpt.other_entries().unwrap().skipped;
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].contains("linked-dir") && skipped[0].contains("not followed"));
    assert!(skipped[1].contains("outside.json") && skipped[1].contains("outside the input"));

    // A broken link is an error, not a silently missing tokenizer.
    std::os::unix::fs::symlink(copy.path().join("nowhere"), copy.path().join("vocab.json"))
        .unwrap();
    let text = super::bad_input_text(ckpt.other_files());
    assert!(text.contains("vocab.json"), "{}", text);
}

#[test]
fn opens_a_single_file_checkpoint() {
    let src = Checkpoint::open(&golden("llama_fp8").join("input")).unwrap();
    let tmp = super::temp_dir("single");
    let outs: Vec<OutputTensor> = src
        .tensors()
        .iter()
        .map(|t| OutputTensor::new(&t.name, t.dtype, t.shape.clone()))
        .collect();
    let plan = ShardPlan::new(outs, u64::MAX).unwrap();
    let w = ShardWriter::create(tmp.path(), &plan).unwrap();
    for (i, t) in src.tensors().iter().enumerate() {
        w.write(i, src.bytes(t)).unwrap();
    }
    assert_eq!(w.finish().unwrap(), ["model.safetensors"]);
    std::fs::write(tmp.path().join("config.json"), "{}").unwrap();

    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    assert_eq!(ckpt.shards().len(), 1);
    assert!(ckpt.index_metadata().is_none());
    assert_eq!(ckpt.tensors().len(), src.tensors().len());
    for t in src.tensors() {
        assert_eq!(ckpt.bytes(ckpt.get(&t.name).unwrap()), src.bytes(t));
    }
    assert_eq!(
        ckpt.other_files().unwrap(),
        vec![tmp.path().join("config.json")]
    );
}

#[test]
fn a_single_file_that_agrees_with_the_index_is_accepted_and_not_listed() {
    let src_dir = golden("llama_nvfp4").join("input");
    let src = Checkpoint::open(&src_dir).unwrap();
    let copy = copy_dir(&src_dir, "agree");
    // Write model.safetensors with the same tensors next to the shards.
    let single = super::temp_dir("agree-single");
    let outs: Vec<OutputTensor> = src
        .tensors()
        .iter()
        .map(|t| OutputTensor::new(&t.name, t.dtype, t.shape.clone()))
        .collect();
    let plan = ShardPlan::new(outs, u64::MAX).unwrap();
    let w = ShardWriter::create(single.path(), &plan).unwrap();
    for (i, t) in src.tensors().iter().enumerate() {
        w.write(i, src.bytes(t)).unwrap();
    }
    w.finish().unwrap();
    std::fs::copy(
        single.path().join("model.safetensors"),
        copy.path().join("model.safetensors"),
    )
    .unwrap();

    let ckpt = Checkpoint::open(copy.path()).unwrap();
    assert_eq!(
        ckpt.shards().len(),
        7,
        "the shards are read, not the single file"
    );
    let names: Vec<_> = ckpt
        .other_files()
        .unwrap()
        .into_iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["config.json", "generation_config.json"]);
}

#[test]
fn prefetch_and_release_keep_the_data() {
    let ckpt = Checkpoint::open(&golden("mixtral_nvfp4").join("input")).unwrap();
    let before: Vec<Vec<u8>> = ckpt
        .tensors()
        .iter()
        .map(|t| ckpt.bytes(t).to_vec())
        .collect();
    for t in ckpt.tensors() {
        ckpt.prefetch(t);
        ckpt.release(t);
    }
    for (t, b) in ckpt.tensors().iter().zip(&before) {
        assert_eq!(ckpt.bytes(t), &b[..], "{}", t.name);
    }
}

#[test]
fn release_only_touches_whole_pages_inside_the_tensor() {
    assert_eq!(inner_pages(0, 4096, 4096), Some((0, 4096)));
    assert_eq!(inner_pages(1, 4096, 4096), None);
    assert_eq!(inner_pages(0, 4095, 4096), None);
    assert_eq!(inner_pages(100, 3 * 4096 + 5, 4096), Some((4096, 2 * 4096)));
    assert_eq!(inner_pages(4096, 8192, 4096), Some((4096, 4096)));
    assert_eq!(inner_pages(5000, 5000, 4096), None);
    assert_eq!(inner_pages(usize::MAX - 3, usize::MAX, 4096), None);
}

#[test]
fn checkpoint_and_writer_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Checkpoint>();
    check::<ShardWriter>();
    check::<ShardPlan>();
}
