//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The fixtures directory: the crate's, or `./fixtures` when the test binary was built on
/// another machine (the GPU machine runs binaries built here, from a copy of the repository).
pub fn fixtures() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("fixtures")
    }
}

/// A fresh, empty temporary directory, removed on drop, also when the test fails: a
/// `tempfile::TempDir` named after the test, with `join` for the paths the tests build in it.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("shardquant-test-{tag}-"))
            .tempdir()
            .unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.path().join(p)
    }
}

/// One tensor as (dtype name, shape, bytes).
pub type Tensor = (String, Vec<usize>, Vec<u8>);

/// Every tensor of every `*.safetensors` file in `dir`, by name.
pub fn load_tensors(dir: &Path) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    for f in files {
        for (name, tensor) in load_tensors_of_file(&f) {
            let prev = out.insert(name.clone(), tensor);
            assert!(prev.is_none(), "{name} appears twice in {}", dir.display());
        }
    }
    out
}

/// Every tensor of one safetensors file, by name.
pub fn load_tensors_of_file(path: &Path) -> BTreeMap<String, Tensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                (
                    format!("{:?}", view.dtype()),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            )
        })
        .collect()
}

/// Asserts two checkpoint directories hold the same tensors, byte for byte.
pub fn assert_same_tensors(ours: &Path, reference: &Path) {
    let a = load_tensors(ours);
    let b = load_tensors(reference);
    let missing: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let extra: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    let mut differ = Vec::new();
    for (name, (dt, shape, bytes)) in &b {
        let (odt, oshape, obytes) = &a[name];
        assert_eq!((odt, oshape), (dt, shape), "{name}: dtype/shape");
        if obytes != bytes {
            let n = obytes.iter().zip(bytes).filter(|(x, y)| x != y).count();
            differ.push(format!("{name} ({n} bytes differ)"));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} tensors differ: {differ:?}",
        differ.len(),
        b.len()
    );
}

/// Path of the built `shardquant` binary (`.device/shardquant` when the test binary runs on
/// another machine, as `fixtures()` does).
pub fn bin() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_shardquant"));
    if built.exists() {
        built
    } else {
        PathBuf::from(".device/shardquant")
    }
}

/// Runs the binary; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Copies a directory (flat) into `dest`, making files writable.
pub fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let d = dest.join(p.file_name().unwrap());
            std::fs::copy(&p, &d).unwrap();
            let mut perm = std::fs::metadata(&d).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&d, perm).unwrap();
        }
    }
}
pub mod cli;

/// Every file under `dir` (recursively), sorted by `/`-separated relative path, with its
/// bytes: two directories with equal trees are byte-identical.
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, path)) = stack.pop() {
        for e in std::fs::read_dir(&path).unwrap() {
            let e = e.unwrap();
            let rel = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.file_type().unwrap().is_dir() {
                stack.push((format!("{rel}/"), e.path()));
            } else {
                out.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Asserts that two output directories hold the same files with the same bytes, naming the
/// files that differ.
pub fn assert_same_tree(got: &Path, want: &Path) {
    let (a, b) = (tree(got), tree(want));
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&a),
        names(&b),
        "{} vs {}",
        got.display(),
        want.display()
    );
    let differ: Vec<&String> = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, _)| &x.0)
        .collect();
    assert!(
        differ.is_empty(),
        "{} differs from {} in {differ:?}",
        got.display(),
        want.display()
    );
}

/// Runs the binary with extra environment variables; returns its output (status included).
pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("SHARDQUANT_CRASH_AT")
        .env_remove("SHARDQUANT_FAIL_WRITE_AFTER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The `.NAME.shardquant-tmp-*` directories beside the output `out`.
pub fn staging_dirs(out: &Path) -> Vec<PathBuf> {
    let prefix = format!(
        ".{}.shardquant-tmp-",
        out.file_name().unwrap().to_string_lossy()
    );
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

/// The shard files a staging directory's resume journal records as complete.
pub fn journaled_shards(staging: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(staging.join(".shardquant-journal.jsonl")) else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .map_while(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["shard"]["path"].as_str().map(str::to_string))
        .collect()
}

/// Options for converting one of ModelOpt's own exports (fixtures/golden, fixtures/arch): the
/// format and numerics given, quiet, 2 threads; on the GPU when `SHARDQUANT_GOLDEN_DEVICE=cuda`
/// (the device check), else on the GPU when there is one.
pub fn modelopt_case_options(
    format: shardquant::compute::QuantFormat,
    numerics: shardquant::compute::Numerics,
) -> shardquant::options::Options {
    let mut options = shardquant::options::Options::new(format);
    options.output.numerics = numerics;
    options.run.quiet = true;
    options.run.threads = 2;
    if std::env::var("SHARDQUANT_GOLDEN_DEVICE").as_deref() == Ok("cuda") {
        options.run.device = shardquant::compute::cuda::DeviceChoice::Cuda(0);
    }
    options
}

/// Asserts that `out` is what ModelOpt exported in `reference`: every tensor byte for byte,
/// and `hf_quant_config.json`, `config.json` and `generation_config.json` exactly (ModelOpt's
/// text passed through `theirs(file, text)` first, for a known environment difference).
pub fn assert_same_export(
    out: &Path,
    reference: &Path,
    case: &str,
    theirs: impl Fn(&str, String) -> String,
) {
    assert_same_tensors(out, reference);
    for file in [
        "hf_quant_config.json",
        "config.json",
        "generation_config.json",
    ] {
        let ours = std::fs::read_to_string(out.join(file)).unwrap();
        let expected = theirs(file, std::fs::read_to_string(reference.join(file)).unwrap());
        assert_eq!(ours, expected, "{case}/{file}");
    }
}
