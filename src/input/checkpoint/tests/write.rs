//! Writing shards: round trips, write order, misuse.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{temp_dir, Rng};
use crate::error::ErrorKind;
use crate::input::checkpoint::Checkpoint;
use crate::output::writer::Service;
use crate::output::ShardWriter;
use crate::plan::{OutputTensor, ShardPlan};

const DTYPES: [Dtype; 7] = [
    Dtype::BF16,
    Dtype::U8,
    Dtype::F8_E4M3,
    Dtype::F32,
    Dtype::I64,
    Dtype::F16,
    Dtype::F4,
];

/// Random tensors of assorted dtypes and shapes (0-d and empty ones included) with their bytes.
fn random_tensors(rng: &mut Rng, n: usize) -> Vec<(OutputTensor, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let dtype = DTYPES[rng.below(DTYPES.len())];
            let shape = match rng.below(5) {
                0 => vec![],
                1 => vec![rng.below(3)],
                _ => vec![1 + rng.below(40), 2 * (1 + rng.below(64))],
            };
            let mut t = OutputTensor::new(format!("model.layers.{}.w{}", i % 7, i), dtype, shape);
            if t.checked_byte_len().is_none() {
                t.shape = vec![2]; // F4 needs an even number of elements
            }
            let bytes = rng.bytes(t.byte_len());
            (t, bytes)
        })
        .collect()
}

/// Plans `tensors` with `max` bytes per shard and writes them from `threads` threads, each taking
/// the tensors in a shuffled order; returns the written file names.
fn write_all(
    dir: &Path,
    tensors: &[(OutputTensor, Vec<u8>)],
    max: u64,
    seed: u64,
    threads: usize,
) -> Vec<String> {
    let plan = ShardPlan::new(tensors.iter().map(|(t, _)| t.clone()).collect(), max).unwrap();
    let writer = ShardWriter::create(dir, &plan).unwrap();
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    let mut rng = Rng::new(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    std::thread::scope(|s| {
        for chunk in order.chunks(order.len().div_ceil(threads)) {
            let writer = &writer;
            s.spawn(move || {
                for &i in chunk {
                    writer.write(i, &tensors[i].1).unwrap();
                }
            });
        }
    });
    writer.finish().unwrap()
}

/// Every file of `dir`, sorted by name, with its bytes.
fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_str().unwrap().to_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn round_trip_from_many_threads() {
    let mut rng = Rng::new(42);
    let tensors = random_tensors(&mut rng, 120);
    let total: usize = tensors.iter().map(|(t, _)| t.byte_len()).sum();
    let dir = temp_dir("roundtrip");
    let names = write_all(dir.path(), &tensors, (total / 5) as u64, 1, 4);
    assert!(names.len() >= 6, "{:?}", names);
    assert_eq!(names.last().unwrap(), "model.safetensors.index.json");
    assert_eq!(
        files_of(dir.path()).len(),
        names.len(),
        "no partial files left"
    );

    // Our reader.
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.tensors().len(), tensors.len());
    assert_eq!(ckpt.total_bytes(), total as u64);
    for (t, bytes) in &tensors {
        let e = ckpt.get(&t.name).unwrap();
        assert_eq!((e.dtype, &e.shape), (t.dtype, &t.shape), "{}", t.name);
        assert_eq!(ckpt.bytes(e), &bytes[..], "{}", t.name);
    }
    // The safetensors crate's own deserializer, shard by shard.
    let mut seen = 0;
    for name in &names[..names.len() - 1] {
        let buf = std::fs::read(dir.path().join(name)).unwrap();
        let st = SafeTensors::deserialize(&buf).unwrap();
        for (n, view) in st.tensors() {
            let (t, bytes) = tensors.iter().find(|(t, _)| t.name == n).unwrap();
            assert_eq!((view.dtype(), view.shape()), (t.dtype, &t.shape[..]));
            assert_eq!(view.data(), &bytes[..]);
            seen += 1;
        }
    }
    assert_eq!(seen, tensors.len());
}

#[test]
fn output_bytes_do_not_depend_on_write_order() {
    let mut rng = Rng::new(7);
    let tensors = random_tensors(&mut rng, 60);
    let (a, b) = (temp_dir("order-a"), temp_dir("order-b"));
    write_all(a.path(), &tensors, 3000, 1, 1);
    write_all(b.path(), &tensors, 3000, 99, 3);
    let (fa, fb) = (files_of(a.path()), files_of(b.path()));
    assert!(fa.len() > 2);
    assert_eq!(fa, fb);
}

#[test]
fn single_shard_round_trip() {
    let mut rng = Rng::new(3);
    let tensors = random_tensors(&mut rng, 10);
    let dir = temp_dir("one");
    assert_eq!(
        write_all(dir.path(), &tensors, u64::MAX, 5, 2),
        ["model.safetensors"]
    );
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    for (t, bytes) in &tensors {
        assert_eq!(ckpt.bytes(ckpt.get(&t.name).unwrap()), &bytes[..]);
    }
}

#[test]
fn misuse_is_an_error_and_leaves_no_files() {
    let dir = temp_dir("misuse");
    let tensors = vec![
        OutputTensor::new("a", Dtype::F32, vec![2]),
        OutputTensor::new("b", Dtype::U8, vec![3]),
    ];
    let plan = ShardPlan::new(tensors, 8).unwrap();
    assert_eq!(plan.shard_count(), 2);
    let w = ShardWriter::create(dir.path(), &plan).unwrap();
    assert_eq!(
        files_of(dir.path()).len(),
        2,
        "partial files exist while writing"
    );
    let err = w.write(0, &[0; 7]).unwrap_err();
    assert!(
        err.message().contains("`a`") && err.message().contains("7 bytes"),
        "{}",
        err
    );
    assert!(w.write(2, &[]).is_err());
    w.write(0, &[1; 8]).unwrap();
    let err = w.write(0, &[1; 8]).unwrap_err();
    assert!(err.message().contains("written twice"), "{}", err);
    let err = w.finish().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Other);
    assert!(
        err.message().contains("`b`") && !err.message().contains("`a`"),
        "{}",
        err
    );
    assert!(files_of(dir.path()).is_empty(), "partial files removed");
}

#[test]
fn finish_replaces_existing_files_without_touching_their_old_inode() {
    let dir = temp_dir("replace");
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, b"old").unwrap();
    let old = std::fs::File::open(&path).unwrap();
    let plan = ShardPlan::new(vec![OutputTensor::new("x", Dtype::U8, vec![2])], 64).unwrap();
    let w = ShardWriter::create(dir.path(), &plan).unwrap();
    w.write(0, &[5, 6]).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"old",
        "not replaced before finish"
    );
    w.finish().unwrap();
    let mut content = Vec::new();
    std::io::Read::read_to_end(&mut &old, &mut content).unwrap();
    assert_eq!(
        content, b"old",
        "the old file was not truncated under its reader"
    );
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.bytes(ckpt.get("x").unwrap()), [5, 6]);
}

/// A shard sealed as soon as it is complete survives a writer that is dropped unfinished (a
/// stopped run); a resumed writer skips it and the result is the one-shot result, byte for byte.
#[test]
fn sealed_shards_survive_and_a_resumed_writer_completes_the_same_bytes() {
    let mut rng = Rng::new(11);
    let tensors = random_tensors(&mut rng, 40);
    let total: usize = tensors.iter().map(|(t, _)| t.byte_len()).sum();
    let max = (total / 4) as u64;
    let reference = temp_dir("seal-ref");
    write_all(reference.path(), &tensors, max, 1, 1);
    let plan = ShardPlan::new(tensors.iter().map(|(t, _)| t.clone()).collect(), max).unwrap();
    assert!(plan.shard_count() >= 3);

    let dir = temp_dir("seal");
    let w = ShardWriter::create(dir.path(), &plan).unwrap();
    let plan_ref = &plan;
    let in_shard = |s: usize| (0..tensors.len()).filter(move |&i| plan_ref.location(i).0 == s);
    for i in in_shard(1) {
        w.write(i, &tensors[i].1).unwrap();
    }
    let err = w.seal(0).unwrap_err();
    assert!(err.message().contains("never written"), "{err}");
    let digest = w.seal(1).unwrap();
    assert!(w.is_sealed(1) && !w.is_sealed(0));
    assert!(w.seal(1).unwrap_err().message().contains("sealed twice"));
    let name = &plan.file_names()[1];
    let on_disk = std::fs::read(dir.path().join(name)).unwrap();
    assert_eq!(
        (digest.path.as_str(), digest.size, digest.sha256.as_str()),
        (
            name.as_str(),
            on_disk.len() as u64,
            crate::digest::sha256_hex(&on_disk).as_str()
        )
    );
    // Half of shard 0, then the run stops.
    let first = in_shard(0).next().unwrap();
    w.write(first, &tensors[first].1).unwrap();
    drop(w);
    assert_eq!(
        files_of(dir.path())
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        std::slice::from_ref(name),
        "only the sealed shard is left"
    );

    let mut done = vec![None; plan.shard_count()];
    done[1] = Some(digest.clone());
    let w = ShardWriter::resume(dir.path(), &plan, done).unwrap();
    let other = in_shard(1).next().unwrap();
    let err = w.write(other, &tensors[other].1).unwrap_err();
    assert!(err.message().contains("complete before this run"), "{err}");
    for i in (0..tensors.len()).filter(|&i| plan.location(i).0 != 1) {
        w.write(i, &tensors[i].1).unwrap();
    }
    let digests = w.finish_hashed().unwrap();
    assert_eq!(digests[1], digest, "the resumed shard keeps its digest");
    assert_eq!(files_of(dir.path()), files_of(reference.path()));
    for d in &digests {
        let bytes = std::fs::read(dir.path().join(&d.path)).unwrap();
        assert_eq!(d.sha256, crate::digest::sha256_hex(&bytes), "{}", d.path);
    }
    assert_eq!(digests.last().unwrap().path, "model.safetensors.index.json");
}

#[test]
fn digests_hashed_while_writing_match_the_files() {
    // Shuffled order, several threads, some tensors in small chunks: the prefix hash that
    // follows the writes (on background threads for odd seeds, else all at sealing) must equal
    // the SHA-256 of each finished file.
    for seed in 1..7u64 {
        let serving = seed % 2 == 1;
        let mut rng = Rng::new(seed);
        let tensors = random_tensors(&mut rng, 60);
        let plan = ShardPlan::new(tensors.iter().map(|(t, _)| t.clone()).collect(), 3000).unwrap();
        let dir = temp_dir("prefixhash");
        let writer = ShardWriter::create(dir.path(), &plan).unwrap();
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        std::thread::scope(|s| {
            let servers: Vec<_> = [Service::Writeback, Service::Hashing, Service::Hashing]
                .into_iter()
                .filter(|_| serving)
                .map(|service| {
                    let writer = &writer;
                    s.spawn(move || writer.serve(service))
                })
                .collect();
            let writers: Vec<_> = order
                .chunks(order.len().div_ceil(4))
                .map(|chunk| {
                    let (writer, tensors) = (&writer, &tensors);
                    s.spawn(move || {
                        for &i in chunk {
                            let step = if i % 3 == 0 { 7 } else { usize::MAX };
                            writer
                                .write_in_chunks(i, &tensors[i].1, step, |_| {})
                                .unwrap();
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            writer.stop_serving();
            for h in servers {
                h.join().unwrap();
            }
        });
        let hashed_while_writing = writer.seconds().hash > 0.0;
        assert_eq!(hashed_while_writing, serving, "seed {seed}");
        for d in writer.finish_hashed().unwrap() {
            let bytes = std::fs::read(dir.path().join(&d.path)).unwrap();
            assert_eq!(
                d.sha256,
                crate::digest::sha256_hex(&bytes),
                "{} seed {seed}",
                d.path
            );
            assert_eq!(d.size, bytes.len() as u64);
        }
    }
}
