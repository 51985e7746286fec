//! Build id: a fingerprint of everything that decides the bytes shardquant writes (its source,
//! kernels, shipped layouts and locked dependencies). It is part of a conversion's key, so a
//! build that writes other bytes never calls an older output up to date, and `--resume` never
//! mixes shards of two builds, even without a version bump.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// FNV-1a, 64 bits: stable across toolchains (std's hasher is not).
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

/// Whether this machine has a CUDA driver: the GPU twin tests run by default where it does,
/// and are listed as ignored (with the reason) where it does not, instead of passing silently.
fn cuda_driver_present() -> bool {
    println!("cargo:rerun-if-env-changed=SHARDQUANT_GPU_TESTS");
    if let Ok(v) = std::env::var("SHARDQUANT_GPU_TESTS") {
        return v == "1";
    }
    [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
        "/usr/lib/aarch64-linux-gnu/libcuda.so.1",
        "/usr/local/nvidia/lib64/libcuda.so.1",
        "/usr/lib/wsl/lib/libcuda.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}

fn main() {
    println!("cargo:rustc-check-cfg=cfg(gpu_tests)");
    if cuda_driver_present() {
        println!("cargo:rustc-cfg=gpu_tests");
    }
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let mut paths = Vec::new();
    for dir in ["src", "kernels", "layouts"] {
        println!("cargo:rerun-if-changed={dir}");
        files(&root.join(dir), &mut paths);
    }
    for file in ["Cargo.lock", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={file}");
        paths.push(root.join(file));
    }
    paths.sort();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for p in &paths {
        let rel = p.strip_prefix(&root).unwrap_or(p);
        fnv(&mut hash, rel.to_string_lossy().as_bytes());
        fnv(&mut hash, &[0]);
        fnv(&mut hash, &std::fs::read(p).unwrap_or_default());
    }
    println!("cargo:rustc-env=SHARDQUANT_BUILD_ID={hash:016x}");
}
