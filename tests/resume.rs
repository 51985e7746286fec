//! Stopped runs and `--resume`: the converter is killed at many points (after each output shard
//! is sealed or journaled, at seeded random byte offsets, just before publishing, by a real
//! SIGKILL), runs out of disk (simulated ENOSPC) or gets SIGTERM; every time, `--resume`
//! finishes the conversion, reusing the shards the journal records, and the output is
//! byte-identical to an uninterrupted run. Also: what happens to a leftover without `--resume`.

mod common;

use common::{assert_same_tree, journaled_shards, run_env, staging_dirs, TempDir};
use shardquant::synthetic::SyntheticSpec;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A small synthetic Llama whose output at 20 KB per shard spans about a dozen shards.
fn small_model(tmp: &TempDir) -> PathBuf {
    let input = tmp.join("in");
    SyntheticSpec {
        layers: 6,
        ..Default::default()
    }
    .write(&input)
    .unwrap();
    input
}

/// A synthetic Llama that takes long enough to convert on one thread to be stopped mid-run.
fn larger_model(tmp: &TempDir) -> PathBuf {
    let input = tmp.join("in");
    SyntheticSpec {
        layers: 12,
        hidden: 512,
        intermediate: 1024,
        vocab: 1024,
        shard_size: 4 << 20,
        ..Default::default()
    }
    .write(&input)
    .unwrap();
    input
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `convert IN OUT --format w4a16_nvfp4 --max-shard-size SHARD -q EXTRA...`.
fn args<'a>(input: &'a Path, out: &'a Path, shard: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "convert",
        s(input),
        s(out),
        "--format",
        "w4a16_nvfp4",
        "--max-shard-size",
        shard,
        "--threads",
        "2",
        "-q",
    ];
    a.extend_from_slice(extra);
    a
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn expect_success(o: &std::process::Output) {
    assert!(o.status.success(), "{:?}\n{}", o.status, stderr(o));
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

/// Inode of every journaled shard of the single staging directory of `out`.
fn journaled_inodes(out: &Path) -> Vec<(String, u64)> {
    let dirs = staging_dirs(out);
    assert_eq!(dirs.len(), 1, "one staging directory: {dirs:?}");
    journaled_shards(&dirs[0])
        .into_iter()
        .map(|n| {
            let ino = std::fs::metadata(dirs[0].join(&n)).unwrap().ino();
            (n, ino)
        })
        .collect()
}

/// Resumes the conversion of `out` and checks it against `reference`: same bytes, and the
/// journaled shards were reused (same inodes), not written again.
fn resume_and_compare(input: &Path, out: &Path, shard: &str, reference: &Path) {
    let kept = journaled_inodes(out);
    let o = run_env(&args(input, out, shard, &["--resume"]), &[]);
    expect_success(&o);
    assert_same_tree(out, reference);
    for (name, ino) in kept {
        assert_eq!(
            std::fs::metadata(out.join(&name)).unwrap().ino(),
            ino,
            "{name} was journaled but written again"
        );
    }
    assert!(
        staging_dirs(out).is_empty(),
        "staging left after the resume"
    );
}

/// xorshift64: seeded offsets, the same on every run.
fn offsets(seed: u64, n: usize, below: u64) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1 + x % below
        })
        .collect()
}

/// Tensor bytes of an output (the index's `total_size`).
fn total_size(out: &Path) -> u64 {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    index["metadata"]["total_size"].as_u64().unwrap()
}

#[test]
fn killed_at_any_point_then_resumed_is_byte_identical() {
    let tmp = TempDir::new("crash");
    let input = small_model(&tmp);
    let shard = "20KB";
    let reference = tmp.join("reference");
    expect_success(&run_env(&args(&input, &reference, shard, &[]), &[]));
    let shards = std::fs::read_dir(&reference)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            n.to_string_lossy().ends_with(".safetensors")
        })
        .count() as u64;
    assert!(
        shards >= 8,
        "the model should span many shards, has {shards}"
    );

    let mut points: Vec<String> = (1..=shards).map(|k| format!("journaled:{k}")).collect();
    points.extend([1, shards / 2, shards].map(|k| format!("sealed:{k}")));
    points.extend(
        offsets(0x5eed, 6, total_size(&reference))
            .iter()
            .map(|b| format!("bytes:{b}")),
    );
    points.push("publish:1".into());
    for (i, point) in points.iter().enumerate() {
        let out = tmp.join(&format!("out{i}"));
        let o = run_env(
            &args(&input, &out, shard, &[]),
            &[("SHARDQUANT_CRASH_AT", point)],
        );
        assert_eq!(
            o.status.signal(),
            Some(libc::SIGABRT),
            "{point}: {:?}\n{}",
            o.status,
            stderr(&o)
        );
        assert!(!out.exists(), "{point}: the output appeared");
        if point.starts_with("journaled") || point.starts_with("publish") {
            let expect = point
                .strip_prefix("journaled:")
                .map_or(shards, |k| k.parse().unwrap());
            // Shards are sealed by up to 4 threads: when one stops at its k-th record, the
            // others may have recorded theirs too.
            let journaled = journaled_inodes(&out).len() as u64;
            assert!(
                (expect..=(expect + 3).min(shards)).contains(&journaled),
                "{point}: {journaled} shards journaled, expected {expect} (+ up to 3 in flight)"
            );
        }
        resume_and_compare(&input, &out, shard, &reference);
    }

    // Stopped twice: at a byte offset, then again while resuming.
    let out = tmp.join("twice");
    let crash = |point: &str, extra: &[&str]| {
        let o = run_env(
            &args(&input, &out, shard, extra),
            &[("SHARDQUANT_CRASH_AT", point)],
        );
        assert_eq!(o.status.signal(), Some(libc::SIGABRT), "{}", stderr(&o));
    };
    crash("journaled:3", &[]);
    crash("journaled:2", &["--resume"]);
    // 3 + 2 records, plus up to 3 more per run from the other sealing threads.
    let journaled = journaled_inodes(&out).len();
    assert!(
        (5..=11).contains(&journaled),
        "{journaled} shards journaled, expected 3 + 2 (+ up to 3 in flight per run)"
    );
    resume_and_compare(&input, &out, shard, &reference);
}

/// Waits until the running conversion's journal records at least one shard.
fn wait_for_a_journaled_shard(child: &mut std::process::Child, out: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if staging_dirs(out)
            .iter()
            .any(|d| !journaled_shards(d).is_empty())
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
            panic!("the conversion ended ({status:?}) before a shard was journaled\n{err}");
        }
        assert!(Instant::now() < deadline, "no shard journaled in 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn spawn(args: &[&str]) -> std::process::Child {
    std::process::Command::new(common::bin())
        .args(args)
        .env_remove("SHARDQUANT_CRASH_AT")
        .env_remove("SHARDQUANT_FAIL_WRITE_AFTER")
        .env_remove("SHARDQUANT_FAIL_READ_BACK_AFTER")
        .env_remove("SHARDQUANT_FAIL_PUBLISH")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_mid_run_then_resume_is_byte_identical() {
    let tmp = TempDir::new("sigkill");
    let input = larger_model(&tmp);
    let shard = "500KB";
    let reference = tmp.join("reference");
    expect_success(&run_env(&args(&input, &reference, shard, &[]), &[]));
    let out = tmp.join("out");
    let mut a = args(&input, &out, shard, &[]);
    let threads = a.iter().position(|x| *x == "--threads").unwrap();
    a[threads + 1] = "1";
    let mut child = spawn(&a);
    wait_for_a_journaled_shard(&mut child, &out);
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(!out.exists());
    resume_and_compare(&input, &out, shard, &reference);
}

#[test]
fn sigterm_keeps_completed_shards_for_resume() {
    let tmp = TempDir::new("sigterm-resume");
    let input = larger_model(&tmp);
    let shard = "500KB";
    let reference = tmp.join("reference");
    expect_success(&run_env(&args(&input, &reference, shard, &[]), &[]));
    let out = tmp.join("out");
    let mut a = args(&input, &out, shard, &[]);
    let threads = a.iter().position(|x| *x == "--threads").unwrap();
    a[threads + 1] = "1";
    let mut child = spawn(&a);
    wait_for_a_journaled_shard(&mut child, &out);
    // SAFETY: sending SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(143), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("--resume") && err.contains("complete"),
        "{err}"
    );
    assert!(!out.exists());
    let dirs = staging_dirs(&out);
    assert_eq!(dirs.len(), 1);
    let journaled = journaled_shards(&dirs[0]);
    assert!(!journaled.is_empty());
    for e in std::fs::read_dir(&dirs[0]).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            journaled.contains(&name) || name.starts_with(".shardquant-journal"),
            "{name} left in the staging directory beside the journaled shards"
        );
    }
    resume_and_compare(&input, &out, shard, &reference);
}

/// An I/O error on the output while reading a shard back for its checksum is the output's
/// fault (exit 1), not bad input: the shards sealed so far stay for `--resume`.
#[test]
fn output_read_error_keeps_the_staging_for_resume() {
    let tmp = TempDir::new("readback");
    let input = small_model(&tmp);
    let shard = "20KB";
    let reference = tmp.join("reference");
    expect_success(&run_env(&args(&input, &reference, shard, &[]), &[]));
    let out = tmp.join("out");
    let o = run_env(
        &args(&input, &out, shard, &[]),
        &[("SHARDQUANT_FAIL_READ_BACK_AFTER", "2")],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("reading back") && err.contains("Input/output error"),
        "{err}"
    );
    assert!(!out.exists());
    let dirs = staging_dirs(&out);
    assert_eq!(dirs.len(), 1, "the staging directory is kept");
    assert!(!journaled_shards(&dirs[0]).is_empty());
    resume_and_compare(&input, &out, shard, &reference);
}

/// Replacing an output (`--force`) whose final rename fails keeps the previous output where it
/// was, unchanged, with nothing left beside it.
#[test]
fn failed_replacement_keeps_the_previous_output() {
    let tmp = TempDir::new("publishfail");
    let input = small_model(&tmp);
    let out = tmp.join("out");
    expect_success(&run_env(&args(&input, &out, "20KB", &[]), &[]));
    let before = tmp.join("before");
    common::copy_dir(&out, &before);
    let o = run_env(
        &args(&input, &out, "30KB", &["--force"]),
        &[("SHARDQUANT_FAIL_PUBLISH", "1")],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("renaming into place"), "{err}");
    assert_same_tree(&out, &before);
    let siblings: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("out") && n != "out")
        .collect();
    assert!(siblings.is_empty(), "left beside the output: {siblings:?}");
    // Without the fault the same command replaces it (an atomic exchange where the
    // filesystem has one).
    expect_success(&run_env(&args(&input, &out, "30KB", &["--force"]), &[]));
    assert!(stderr(&run_env(&args(&input, &out, "30KB", &["--check"]), &[])).is_empty());
}

#[test]
fn disk_full_is_a_clear_error_and_resumable_once_space_is_freed() {
    let tmp = TempDir::new("enospc");
    let input = small_model(&tmp);
    let shard = "20KB";
    let reference = tmp.join("reference");
    expect_success(&run_env(&args(&input, &reference, shard, &[]), &[]));
    let limit = (total_size(&reference) / 2).to_string();
    let out = tmp.join("out");
    let o = run_env(
        &args(&input, &out, shard, &[]),
        &[("SHARDQUANT_FAIL_WRITE_AFTER", &limit)],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("shardquant: error: writing ")
            && err.contains(".safetensors.partial: No space left on device")
            && err.contains("filesystem is full")
            && err.contains("--resume"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // Nothing looks complete: no output, and the staging directory holds only the journal
    // and the shards it records (no partial file, no metadata).
    assert!(!out.exists());
    let dirs = staging_dirs(&out);
    assert_eq!(dirs.len(), 1);
    let journaled = journaled_shards(&dirs[0]);
    assert!(
        !journaled.is_empty(),
        "half the data should complete shards"
    );
    let mut names: Vec<String> = std::fs::read_dir(&dirs[0])
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected = journaled.clone();
    expected.push(".shardquant-journal.jsonl".into());
    expected.sort();
    assert_eq!(names, expected);

    // A plain re-run does not throw the work away, nor silently continue it.
    let o = run_env(&args(&input, &out, shard, &[]), &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("partial conversion") && err.contains("--resume") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(journaled_shards(&staging_dirs(&out)[0]), journaled);
    resume_and_compare(&input, &out, shard, &reference);

    // Full while writing the metadata, after every shard was sealed: the metadata written so
    // far goes, the shards stay, and the resume only writes the metadata.
    let out = tmp.join("out-meta");
    let limit = (total_size(&reference) + 4096).to_string();
    let o = run_env(
        &args(&input, &out, shard, &[]),
        &[("SHARDQUANT_FAIL_WRITE_AFTER", &limit)],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left on device") && err.contains("--resume"),
        "{err}"
    );
    let dirs = staging_dirs(&out);
    let journaled = journaled_shards(&dirs[0]);
    let shards = std::fs::read_dir(&reference)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "safetensors")
        })
        .count();
    assert_eq!(journaled.len(), shards, "{err}");
    let mut names: Vec<String> = std::fs::read_dir(&dirs[0])
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected = journaled;
    expected.push(".shardquant-journal.jsonl".into());
    expected.sort();
    assert_eq!(names, expected, "{err}");
    resume_and_compare(&input, &out, shard, &reference);
}

#[test]
fn leftovers_are_discarded_with_force_or_when_made_with_other_options() {
    let tmp = TempDir::new("leftover");
    let input = small_model(&tmp);
    let shard = "20KB";
    let reference = tmp.join("reference");
    expect_success(&run_env(&args(&input, &reference, shard, &[]), &[]));
    let other = tmp.join("other");
    let cpu = ["--numerics", "modelopt-cpu"];
    expect_success(&run_env(&args(&input, &other, shard, &cpu), &[]));
    let out = tmp.join("out");
    let crash = |extra: &[&str]| {
        let o = run_env(
            &args(&input, &out, shard, extra),
            &[("SHARDQUANT_CRASH_AT", "journaled:3")],
        );
        assert_eq!(o.status.signal(), Some(libc::SIGABRT), "{}", stderr(&o));
    };

    // --resume with other options: reported, discarded, converted from the start.
    crash(&[]);
    let mut a = args(&input, &out, shard, &cpu);
    a.retain(|x| *x != "-q");
    a.push("--resume");
    let o = run_env(&a, &[]);
    expect_success(&o);
    let err = stderr(&o);
    assert!(
        err.contains("discarding the partial conversion")
            && err.contains("option numerics was \"modelopt-cuda\", now \"modelopt-cpu\""),
        "{err}"
    );
    assert_same_tree(&out, &other);
    assert!(staging_dirs(&out).is_empty());

    // --force without --resume: reported and discarded; the old output is replaced.
    crash(&["--force"]);
    assert_same_tree(&out, &other);
    let mut a = args(&input, &out, shard, &["--force"]);
    a.retain(|x| *x != "-q");
    let o = run_env(&a, &[]);
    expect_success(&o);
    assert!(
        stderr(&o).contains("discarding the partial conversion"),
        "{}",
        stderr(&o)
    );
    assert_same_tree(&out, &reference);
    assert!(staging_dirs(&out).is_empty());
}
