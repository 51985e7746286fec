//! Idempotence and the manifest: a re-run on an unchanged input is "up to date" and rewrites
//! nothing; `--check` says 0 or 10, and any change of input, statistics or byte-affecting
//! option makes the output stale while run-only options do not; `shardquant.json` records what
//! made the output and every output file's checksum; `verify` catches a corrupted byte.

mod common;

use common::{run_env, TempDir};
use serde_json::Value;
use sha2::{Digest, Sha256};
use shardquant::synthetic::SyntheticSpec;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small synthetic Llama, its amax file, and an output path.
struct Case {
    _tmp: TempDir,
    input: PathBuf,
    amax: PathBuf,
    out: PathBuf,
}

impl Case {
    fn new(tag: &str) -> Case {
        let tmp = TempDir::new(tag);
        let input = tmp.join("in");
        let spec = SyntheticSpec {
            layers: 3,
            ..Default::default()
        };
        spec.write(&input).unwrap();
        let amax = tmp.join("amax.safetensors");
        spec.write_amax(&amax).unwrap();
        let out = tmp.join("out");
        Case {
            _tmp: tmp,
            input,
            amax,
            out,
        }
    }

    /// `convert IN OUT --format nvfp4 --stats AMAX --max-shard-size 40KB EXTRA...`.
    fn run(&self, extra: &[&str]) -> (i32, String, String) {
        self.run_with(&self.amax, extra)
    }

    /// [`Case::run`] with another statistics file.
    fn run_with(&self, stats: &Path, extra: &[&str]) -> (i32, String, String) {
        let mut a = vec![
            "convert",
            s(&self.input),
            s(&self.out),
            "--format",
            "nvfp4",
            "--stats",
            s(stats),
            "--max-shard-size",
            "40KB",
        ];
        a.extend_from_slice(extra);
        let o = run_env(&a, &[]);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        assert!(!err.contains("panicked"), "{err}");
        (o.status.code().unwrap_or(-1), out, err)
    }

    /// `--check` with `extra`: the exit code and what it printed.
    fn check(&self, extra: &[&str]) -> (i32, String) {
        let mut a = vec!["--check"];
        a.extend_from_slice(extra);
        let (code, out, _) = self.run(&a);
        (code, out)
    }

    #[track_caller]
    fn assert_fresh(&self, extra: &[&str]) {
        let (code, out) = self.check(extra);
        assert_eq!(
            (code, out.trim()),
            (0, format!("up to date: {}", s(&self.out)).as_str()),
            "{extra:?}"
        );
    }

    #[track_caller]
    fn assert_stale(&self, extra: &[&str], why: &str) {
        let (code, out) = self.check(extra);
        assert_eq!(code, 10, "{extra:?}: {out}");
        assert!(
            out.starts_with("not up to date: ") && out.contains(why),
            "{extra:?}: {out}"
        );
    }
}

/// (name, inode, mtime in ns, size) of every file of a directory.
fn snapshot(dir: &Path) -> Vec<(String, u64, i64, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.ino(),
                mtime,
                m.len(),
            )
        })
        .collect();
    v.sort();
    v
}

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_rerun_on_unchanged_input_is_up_to_date_and_rewrites_nothing() {
    let c = Case::new("idem");
    let (code, _, err) = c.run(&["-q"]);
    assert_eq!(code, 0, "{err}");
    let before = snapshot(&c.out);
    assert!(before.len() >= 8, "{before:?}");
    // The same command, then with --force and with options that never change the bytes.
    for extra in [
        &[][..],
        &["--force"],
        &[
            "--threads",
            "1",
            "--device",
            "cpu",
            "--max-memory",
            "1MiB",
            "--max-gpu-memory",
            "1GiB",
        ],
    ] {
        let (code, _, err) = c.run(extra);
        assert_eq!(code, 0, "{extra:?}: {err}");
        assert!(
            err.contains("is up to date") && err.contains("nothing to do"),
            "{err}"
        );
        assert!(!err.contains("wrote"), "{err}");
        assert_eq!(snapshot(&c.out), before, "{extra:?}: files were rewritten");
    }
    // A missing output file makes it stale (sizes are checked, contents are verify's job).
    std::fs::remove_file(c.out.join(".quant_summary.txt")).unwrap();
    c.assert_stale(&[], ".quant_summary.txt is missing");
}

#[test]
fn check_is_0_or_10_and_any_change_of_input_stats_or_options_makes_it_stale() {
    let c = Case::new("check");
    c.assert_stale(&[], "does not exist");
    let (code, _, err) = c.run(&["-q"]);
    assert_eq!(code, 0, "{err}");
    c.assert_fresh(&[]);
    c.assert_fresh(&["--threads", "1", "--device", "cpu", "--max-memory", "64MiB"]);

    // Options that change the bytes.
    c.assert_stale(&["--numerics", "modelopt-cpu"], "option numerics");
    c.assert_stale(&["--exclude", "*.mlp.down_proj"], "option exclude");
    c.assert_stale(&["--scope", "mlp"], "option scope");
    c.assert_stale(&["--kv-cache", "fp8"], "option kv_cache");
    // A `convert` flag rather than a planning one: --check must take it as the conversion does.
    c.assert_stale(
        &["--allow-nonfinite"],
        "option allow_nonfinite was false, now true",
    );

    // Statistics: by content, not by path or modification time.
    let copy = c.amax.with_extension("copy.safetensors");
    std::fs::copy(&c.amax, &copy).unwrap();
    let (code, out, _) = c.run_with(&copy, &["--check"]);
    assert_eq!((code, out.starts_with("up to date")), (0, true), "{out}");
    c.assert_stale(&["--stats", s(&copy)], "statistics files changed");
    let original = std::fs::read(&c.amax).unwrap();
    SyntheticSpec {
        layers: 3,
        seed: 99,
        ..Default::default()
    }
    .write_amax(&c.amax)
    .unwrap();
    c.assert_stale(&[], "statistics files changed");
    std::fs::write(&c.amax, &original).unwrap();
    c.assert_fresh(&[]);

    // Input files: a changed byte of a weight shard, config.json, a new file.
    let shard = c.input.join("model-00001-of-00002.safetensors");
    let shard = if shard.exists() {
        shard
    } else {
        c.input.join("model.safetensors")
    };
    let bytes = std::fs::read(&shard).unwrap();
    let mut changed = bytes.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&shard, &changed).unwrap();
    let name = shard.file_name().unwrap().to_string_lossy().into_owned();
    c.assert_stale(&[], &format!("input file {name} changed (content)"));
    std::fs::write(&shard, &bytes).unwrap();
    c.assert_fresh(&[]);
    let config = c.input.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n")).unwrap();
    c.assert_stale(&[], "input file config.json changed");
    std::fs::write(&config, &text).unwrap();
    c.assert_fresh(&[]);
    std::fs::write(c.input.join("chat_template.jinja"), "{{ messages }}").unwrap();
    c.assert_stale(&[], "input file chat_template.jinja is new");

    // A stale output is not replaced without --force; with it, it is, and is then up to date.
    let (code, _, err) = c.run(&["-q"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("already exists and is not up to date: input file chat_template.jinja is new"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    let (code, _, err) = c.run(&["-q", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(c.out.join("chat_template.jinja").is_file());
    c.assert_fresh(&[]);
}

#[test]
fn the_manifest_records_inputs_options_stats_and_output_checksums() {
    let c = Case::new("manifest");
    let (code, _, err) = c.run(&["-q", "--exclude", "*.o_proj"]);
    assert_eq!(code, 0, "{err}");
    let m: Value =
        serde_json::from_slice(&std::fs::read(c.out.join("shardquant.json")).unwrap()).unwrap();
    assert_eq!(m["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(m["options"]["format"], "nvfp4");
    assert_eq!(m["options"]["exclude"], serde_json::json!(["*.o_proj"]));
    assert_eq!(m["options"]["max_shard_size"], 40_000);
    for run_only in ["threads", "device", "max_memory", "max_gpu_memory"] {
        assert!(
            m["options"].get(run_only).is_none(),
            "{run_only} is recorded"
        );
    }
    // Every input file the conversion reads, with its size and content hash.
    let inputs = m["inputs"].as_array().unwrap();
    let mut on_disk: Vec<String> = std::fs::read_dir(&c.input)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let recorded: Vec<&str> = inputs.iter().map(|i| i["path"].as_str().unwrap()).collect();
    assert_eq!(recorded, on_disk);
    for i in inputs {
        let path = c.input.join(i["path"].as_str().unwrap());
        assert_eq!(i["size"], std::fs::metadata(&path).unwrap().len());
        assert_eq!(i["sha256"], sha256(&path), "{}", path.display());
    }
    assert_eq!(m["stats"][0]["path"], s(&c.amax));
    assert_eq!(m["stats"][0]["sha256"], sha256(&c.amax));
    // Every output file but the manifest itself, with its size and SHA-256.
    let outputs = m["outputs"].as_array().unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&c.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "shardquant.json")
        .collect();
    files.sort();
    let listed: Vec<&str> = outputs
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert_eq!(listed, files);
    for o in outputs {
        let path = c.out.join(o["path"].as_str().unwrap());
        assert_eq!(o["size"], std::fs::metadata(&path).unwrap().len());
        assert_eq!(o["sha256"], sha256(&path), "{}", path.display());
    }
}

#[test]
fn verify_catches_a_corrupted_byte_and_works_without_a_manifest() {
    let c = Case::new("verify");
    let (code, _, err) = c.run(&["-q"]);
    assert_eq!(code, 0, "{err}");
    let verify = |dir: &Path| {
        let o = run_env(&["verify", s(dir)], &[]);
        (
            o.status.code().unwrap(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (code, text) = verify(&c.out);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("files match the checksums in shardquant.json"),
        "{text}"
    );

    // One flipped bit in a packed NVFP4 weight: structurally still a valid checkpoint.
    let shard = std::fs::read_dir(&c.out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x10;
    std::fs::write(&shard, &bytes).unwrap();
    let (code, text) = verify(&c.out);
    let name = shard.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains(&format!("problem: {name}: SHA-256")) && text.contains("corrupt"),
        "{text}"
    );
    // The up-to-date check reads sizes only: verify is what catches this.
    c.assert_fresh(&[]);

    // Without a manifest (as ModelOpt exports are), verify checks the rest as before.
    std::fs::remove_file(c.out.join("shardquant.json")).unwrap();
    let (code, text) = verify(&c.out);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("no shardquant.json: file checksums not checked"),
        "{text}"
    );
}
