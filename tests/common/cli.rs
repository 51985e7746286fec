//! Running the binary on a broken copy of a golden checkpoint, as `tests/hostile_input.rs` and
//! `tests/lanes.rs` do: the exit code, the messages, no panic, no hang, nothing left behind,
//! and the input untouched.

use super::{copy_dir, fixtures, TempDir};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The longest one run of the binary may take before the test calls it hung.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Exit code for usage errors.
pub const USAGE: i32 = 2;
/// Exit code for bad input.
pub const BAD_INPUT: i32 = 3;

/// What one run of the binary did.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Asserts the exit code, that the error is the tool's own (not a panic), and that stderr
    /// mentions every string in `needles`.
    pub fn expect_error(&self, code: i32, needles: &[&str]) {
        assert_eq!(
            self.code, code,
            "exit code: expected {code}, got {}\nstderr:\n{}",
            self.code, self.stderr
        );
        self.expect_no_panic();
        assert!(
            self.stderr.contains("shardquant: error: "),
            "no `shardquant: error:` line\nstderr:\n{}",
            self.stderr
        );
        self.expect_mentions(needles);
    }

    /// Asserts success.
    pub fn expect_success(&self) {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self.expect_no_panic();
    }

    pub fn expect_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked") && self.code != 101,
            "the binary panicked\nstderr:\n{}",
            self.stderr
        );
    }

    /// Asserts that stderr carries a hint (`hint:`) or a fix line (`fix:`).
    pub fn expect_hint(&self) {
        assert!(
            self.stderr.contains("hint: ") || self.stderr.contains("fix: "),
            "the error carries no hint or fix\nstderr:\n{}",
            self.stderr
        );
    }

    /// Asserts that stderr contains every string in `needles`.
    pub fn expect_mentions(&self, needles: &[&str]) {
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr does not mention {n:?}\nstderr:\n{}",
                self.stderr
            );
        }
    }
}

/// Runs the binary with `args`, killing it (and failing the test) if it runs past
/// [`RUN_TIMEOUT`].
pub fn sq(args: &[&str]) -> Outcome {
    let mut child = Command::new(super::bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning shardquant");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for shardquant") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shardquant {args:?} ran longer than {RUN_TIMEOUT:?} (hung?)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned(),
    }
}

/// A path as the `&str` the command line takes (temporary paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `fixtures/golden/<case>`.
pub fn golden(case: &str) -> PathBuf {
    fixtures().join("golden").join(case)
}

/// The amax file of a golden case.
pub fn amax(case: &str) -> PathBuf {
    golden(case).join("amax.safetensors")
}

/// Asserts that `out` does not exist and that its parent holds no `.NAME.shardquant-*`
/// staging or set-aside sibling.
pub fn assert_no_output(out: &Path) {
    assert!(
        out.symlink_metadata().is_err(),
        "{} was left behind",
        out.display()
    );
    assert_no_sibling(out);
}

/// Asserts that no `.NAME.shardquant*` sibling of `out` exists (staging, set-aside old
/// output, the lock file: a finished run leaves nothing beside its output).
pub fn assert_no_sibling(out: &Path) {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let prefix = format!(".{name}.shardquant");
    let parent = out.parent().unwrap();
    let leftovers: Vec<String> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(
        leftovers.is_empty(),
        "staging siblings left in {}: {leftovers:?}",
        parent.display()
    );
}

/// Everything about a directory tree that a conversion must not change: per entry (relative
/// path), its kind, length, modification time, permissions and (for files) contents; links
/// are recorded as links (with their target), not followed.
pub type Snapshot = BTreeMap<String, (String, u64, SystemTime, u32, Vec<u8>)>;

/// Takes a [`Snapshot`] of `dir`.
pub fn snapshot(dir: &Path) -> Snapshot {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let m = p.symlink_metadata().unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let (kind, data) = if m.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                ("link", target.display().to_string().into_bytes())
            } else if m.is_dir() {
                ("dir", Vec::new())
            } else if m.is_file() {
                ("file", std::fs::read(&p).unwrap())
            } else {
                ("special", Vec::new())
            };
            out.insert(
                rel,
                (
                    kind.to_string(),
                    m.len(),
                    m.modified().unwrap(),
                    m.permissions().mode(),
                    data,
                ),
            );
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Snapshot::new();
    walk(dir, dir, &mut out);
    out
}

/// Asserts the tree at `dir` still matches `before`, naming what changed. Lock files
/// (`.NAME.shardquant.lock`, which stay beside an output by design) are not compared.
pub fn assert_unchanged(dir: &Path, before: &Snapshot) {
    let after = snapshot(dir);
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| !k.ends_with(".shardquant.lock"))
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(
        changed.is_empty(),
        "{} was modified: {changed:?}",
        dir.display()
    );
}

/// A writable copy of a golden case's input in a fresh temporary directory, and an output
/// path beside it.
pub struct Sandbox {
    pub tmp: TempDir,
    pub input: PathBuf,
    pub out: PathBuf,
}

impl Sandbox {
    pub fn new(case: &str, tag: &str) -> Sandbox {
        let tmp = TempDir::new(tag);
        let input = tmp.join("input");
        copy_dir(&golden(case).join("input"), &input);
        let out = tmp.join("out");
        Sandbox { tmp, input, out }
    }

    /// `shardquant convert INPUT OUT --threads 2 EXTRA...`.
    pub fn convert(&self, extra: &[&str]) -> Outcome {
        let mut args = vec!["convert", s(&self.input), s(&self.out), "--threads", "2"];
        args.extend_from_slice(extra);
        sq(&args)
    }

    /// A file of the input.
    pub fn file(&self, name: &str) -> PathBuf {
        self.input.join(name)
    }

    /// The `weight_map` of the input's index.
    pub fn weight_map(&self) -> Map<String, Value> {
        let index: Value = serde_json::from_slice(
            &std::fs::read(self.file("model.safetensors.index.json")).unwrap(),
        )
        .unwrap();
        index["weight_map"].as_object().unwrap().clone()
    }

    /// Rewrites the input's index with `f` applied to its `weight_map`.
    pub fn edit_weight_map(&self, f: impl FnOnce(&mut Map<String, Value>)) {
        let path = self.file("model.safetensors.index.json");
        let mut index: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(index["weight_map"].as_object_mut().unwrap());
        std::fs::write(&path, serde_json::to_string_pretty(&index).unwrap()).unwrap();
    }

    /// The shard that holds `tensor`, according to the index.
    pub fn shard_of(&self, tensor: &str) -> PathBuf {
        let map = self.weight_map();
        let file = map[tensor].as_str().expect("tensor in the index");
        self.file(file)
    }
}

/// A safetensors file split into its JSON header (as text, so that tests can write headers
/// no JSON library would) and its data section.
pub struct ShardFile {
    pub header: Map<String, Value>,
    pub data: Vec<u8>,
}

impl ShardFile {
    pub fn read(path: &Path) -> ShardFile {
        let bytes = std::fs::read(path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        ShardFile {
            header,
            data: bytes[8 + n..].to_vec(),
        }
    }

    /// Writes the file back: 8-byte length, header padded with spaces to 8 bytes, data.
    pub fn write(&self, path: &Path) {
        write_raw(path, &serde_json::to_vec(&self.header).unwrap(), &self.data);
    }

    /// The data range of `tensor` inside [`ShardFile::data`].
    pub fn range(&self, tensor: &str) -> std::ops::Range<usize> {
        let offsets = &self.header[tensor]["data_offsets"];
        offsets[0].as_u64().unwrap() as usize..offsets[1].as_u64().unwrap() as usize
    }

    /// Byte offset of the data section in the file.
    pub fn data_start(path: &Path) -> usize {
        let bytes = std::fs::read(path).unwrap();
        8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
    }
}

/// Writes a safetensors file from raw header bytes (padded with spaces to 8 bytes) and data.
pub fn write_raw(path: &Path, header: &[u8], data: &[u8]) {
    let mut json = header.to_vec();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Overwrites `bytes` at absolute offset `at` of the file, in place.
pub fn patch_file(path: &Path, at: usize, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.write_all(bytes).unwrap();
}

/// Writes a safetensors file of (name, dtype, shape, bytes) tensors.
pub fn write_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [data.len(), data.len() + bytes.len()],
            }),
        );
        data.extend_from_slice(bytes);
    }
    ShardFile { header, data }.write(path);
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(s(path)).unwrap();
    // SAFETY: mkfifo reads a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// The hint every broken-download error carries.
pub const REDOWNLOAD: &str = "download it again";
/// The hint of an index that disagrees with its shards.
pub const MISMATCH: &str = "download the index and all shards again";
