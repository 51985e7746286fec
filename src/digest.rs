//! Content hashes: SHA-256 of whole files (output checksums, small inputs, statistics), and a
//! cheap fingerprint of large inputs for the up-to-date check.
//!
//! SHA-256 because it is what `sha256sum` prints and what the HuggingFace Hub records for
//! large files (their Git LFS object id), so the checksums in `shardquant.json` can be checked
//! with standard tools.
//!
//! A large input (a weight shard of several GB) is not read whole to decide whether a previous
//! output is up to date: that would cost a full read of a checkpoint that may be hundreds of
//! GB. Its fingerprint is its size, its modification time, and the SHA-256 of its first
//! [`HEAD_BYTES`] (which hold the safetensors header: names, dtypes, shapes, offsets) and of
//! [`SAMPLES`] blocks of [`SAMPLE_BYTES`] spread evenly over the file.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Files up to this size are hashed whole; larger ones get a sampled fingerprint.
pub const FULL_HASH_LIMIT: u64 = 64 << 20;
/// Bytes at the start of a large file that its fingerprint always covers (more when its
/// safetensors header is longer).
pub const HEAD_BYTES: u64 = 1 << 20;
/// Blocks sampled from a large file.
pub const SAMPLES: u64 = 16;
/// Bytes per sampled block.
pub const SAMPLE_BYTES: u64 = 16 << 10;
/// Read size while hashing.
const CHUNK: usize = 4 << 20;

/// The SHA-256 of bytes, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Size and SHA-256 of one file of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Path relative to the directory, `/`-separated.
    pub path: String,
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the whole content, lower-case hex.
    pub sha256: String,
}

/// SHA-256 of a file being written, advanced over its written prefix while the rest is still
/// being written, so that sealing it does not read the whole file back at the end.
pub struct PrefixHasher {
    hasher: Sha256,
    at: u64,
    /// Read buffer, kept between calls; small enough to stay in the core's L2 cache between
    /// the read and the hash.
    buf: Vec<u8>,
}

/// Bytes a [`PrefixHasher`] reads back at a time.
const PREFIX_CHUNK: usize = 256 << 10;

impl Default for PrefixHasher {
    fn default() -> Self {
        PrefixHasher {
            hasher: Sha256::new(),
            at: 0,
            buf: Vec::new(),
        }
    }
}

impl PrefixHasher {
    /// Bytes hashed so far (the file's first `at()` bytes).
    pub fn at(&self) -> u64 {
        self.at
    }

    /// Hashes the file's bytes from `at()` to `to` (positioned reads; the bytes must be
    /// written and never change again).
    pub fn advance(&mut self, file: &File, to: u64) -> std::io::Result<()> {
        if self.buf.is_empty() {
            self.buf = vec![0u8; PREFIX_CHUNK];
        }
        while self.at < to {
            let n = self.buf.len().min((to - self.at) as usize);
            file.read_exact_at(&mut self.buf[..n], self.at)?;
            self.hasher.update(&self.buf[..n]);
            self.at += n as u64;
        }
        Ok(())
    }

    /// The SHA-256 of the file's first `len` bytes: the rest hashed now.
    pub fn finish(mut self, file: &File, len: u64) -> std::io::Result<String> {
        self.advance(file, len)?;
        Ok(hex(&self.hasher.finalize()))
    }
}

/// The SHA-256 of the first `len` bytes of an open file, read with positioned reads (the file
/// offset is not moved, so other threads may use the handle).
pub fn hash_open_file(file: &File, len: u64) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK.min(len as usize).max(1)];
    let mut at = 0u64;
    while at < len {
        let n = buf.len().min((len - at) as usize);
        file.read_exact_at(&mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hex(&hasher.finalize()))
}

/// Opens `path` for reading if it is a regular file (links followed). Anything else is refused
/// before it is opened: opening a FIFO for reading would block until a writer appears.
/// `io_error` chooses the error kind: the caller knows whether `path` is an input or an output.
fn open_regular(path: &Path, io_error: IoError) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| io_error("reading", path, e))?;
    if !meta.is_file() {
        return Err(
            Error::bad_input(format!("{}: not a regular file", path.display()))
                .with_hint("pass a regular file (not a FIFO, socket, device or directory)"),
        );
    }
    File::open(path).map_err(|e| io_error("reading", path, e))
}

/// [`Error::input_io`] or [`Error::output_io`].
type IoError = fn(&str, &Path, std::io::Error) -> Error;

/// Size and SHA-256 of the whole file at `path`, a file of the output (or of its staging
/// directory); `name` is what the digest calls it. Failures are output errors (exit 1).
pub fn hash_file(path: &Path, name: &str) -> Result<FileDigest> {
    let read_err = |e| Error::output_io("reading", path, e);
    let file = open_regular(path, Error::output_io)?;
    let size = file.metadata().map_err(read_err)?.len();
    let sha256 = hash_open_file(&file, size).map_err(read_err)?;
    Ok(FileDigest {
        path: name.to_string(),
        size,
        sha256,
    })
}

/// Hashes `paths` (directory-relative names and full paths) on up to `threads` threads;
/// digests come back in the order given.
pub fn hash_files(
    paths: &[(String, std::path::PathBuf)],
    threads: usize,
) -> Vec<Result<FileDigest>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<FileDigest>>>> =
        paths.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, paths.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, path)) = paths.get(i) else {
                    return;
                };
                let digest = hash_file(path, name);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(digest);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(Error::other("internal error: a hashing thread stopped")))
        })
        .collect()
}

/// What identifies the content of an input file for the up-to-date check.
///
/// Small files: size and SHA-256 of the content. Large files: size, modification time (ns
/// since the epoch) and the SHA-256 of the head and sampled blocks (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Length in bytes.
    pub size: u64,
    /// Modification time in ns since the epoch (large files only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mtime_ns: Option<i128>,
    /// SHA-256 of the whole content (small files).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
    /// SHA-256 of the head and the sampled blocks (large files).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sampled_sha256: Option<String>,
}

/// The [`Fingerprint`] of the file at `path` (symbolic links followed).
pub fn fingerprint(path: &Path) -> Result<Fingerprint> {
    let read_err = |e| Error::input_io("reading", path, e);
    let file = open_regular(path, Error::input_io)?;
    let meta = file.metadata().map_err(read_err)?;
    let size = meta.len();
    if size <= FULL_HASH_LIMIT {
        return Ok(Fingerprint {
            size,
            mtime_ns: None,
            sha256: Some(hash_open_file(&file, size).map_err(read_err)?),
            sampled_sha256: None,
        });
    }
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128);
    Ok(Fingerprint {
        size,
        mtime_ns,
        sha256: None,
        sampled_sha256: Some(sampled_hash(&file, size).map_err(read_err)?),
    })
}

/// SHA-256 of the head (at least the safetensors header when the file starts with one) and of
/// [`SAMPLES`] blocks spread evenly up to the end of the file.
fn sampled_hash(file: &File, size: u64) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut len8 = [0u8; 8];
    file.read_exact_at(&mut len8, 0)?;
    // A safetensors header is at most 100 MB (what its readers accept).
    let header = u64::from_le_bytes(len8).min(100_000_000).saturating_add(8);
    let head = HEAD_BYTES.max(header).min(size);
    let mut buf = vec![0u8; head as usize];
    file.read_exact_at(&mut buf, 0)?;
    hasher.update(&buf);
    buf.resize(SAMPLE_BYTES as usize, 0);
    let span = size - SAMPLE_BYTES;
    for k in 0..SAMPLES {
        let at = (u128::from(span) * u128::from(k) / u128::from(SAMPLES - 1)) as u64;
        file.read_exact_at(&mut buf, at)?;
        hasher.update(at.to_le_bytes());
        hasher.update(&buf);
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_text() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn small_files_are_hashed_whole_and_large_ones_sampled() {
        let tmp = tempfile::Builder::new()
            .prefix("sq-digest-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        let small = dir.join("small");
        std::fs::write(&small, b"abc").unwrap();
        let fp = fingerprint(&small).unwrap();
        assert_eq!(fp.size, 3);
        assert_eq!(fp.sha256.as_deref(), Some(sha256_hex(b"abc").as_str()));
        assert!(fp.mtime_ns.is_none() && fp.sampled_sha256.is_none());

        let large = dir.join("large");
        let mut bytes = vec![7u8; (FULL_HASH_LIMIT + 1) as usize];
        std::fs::write(&large, &bytes).unwrap();
        let a = fingerprint(&large).unwrap();
        assert!(a.sha256.is_none() && a.mtime_ns.is_some());
        // A byte inside the last sampled block changes the fingerprint; the mtime is pinned
        // by comparing only the sampled hash.
        let last = bytes.len() - 1;
        bytes[last] = 8;
        std::fs::write(&large, &bytes).unwrap();
        let b = fingerprint(&large).unwrap();
        assert_ne!(a.sampled_sha256, b.sampled_sha256);
        let digest = hash_file(&small, "small").unwrap();
        assert_eq!((digest.size, digest.sha256), (3, sha256_hex(b"abc")));
        let many = hash_files(
            &[
                ("small".into(), small.clone()),
                ("large".into(), large.clone()),
            ],
            2,
        );
        assert_eq!(many[1].as_ref().unwrap().size, FULL_HASH_LIMIT + 1);
        assert!(hash_files(&[("x".into(), dir.join("missing"))], 1)[0].is_err());
        tmp.close().unwrap();
    }
}
