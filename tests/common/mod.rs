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

/// A fresh, empty temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("shardquant-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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
        let bytes = std::fs::read(&f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let prev = out.insert(
                name.clone(),
                (
                    format!("{:?}", view.dtype()),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            );
            assert!(prev.is_none(), "{name} appears twice in {}", dir.display());
        }
    }
    out
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

/// Path of the built `shardquant` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shardquant"))
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
