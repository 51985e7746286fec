//! `shardquant.json`, the manifest in every output: what made it (tool version and build id, the options
//! that decide the bytes, every input file, the statistics and a layout file, each with a
//! content fingerprint) and what it holds (every output file's size and SHA-256).
//!
//! The *key* of a conversion is the part that decides the output bytes: tool version and build id,
//! byte-affecting options ([`Options::output_options`]), input files (relative path and
//! [`Fingerprint`]), statistics and layout file (by content, not by path). An output whose
//! manifest has the key of the conversion asked for, and whose files are all there with their
//! recorded sizes, is up to date: it is left alone. The same key guards the resume journal.
//! Deciding that reads no weight data: small files are hashed whole, large ones sampled
//! ([`crate::digest`]).

use crate::digest::{fingerprint, hash_files, FileDigest, Fingerprint};
use crate::error::{Error, Result};
use crate::input::checkpoint::Checkpoint;
use crate::options::Options;
use crate::plan::Plan;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub use crate::output::metadata::MANIFEST_FILE;

/// How many differences an explanation names.
const MAX_EXPLAINED: usize = 3;

/// This build's id (`build.rs`): a fingerprint of the source, kernels, layouts and locked
/// dependencies, part of the key so that another build never reuses this one's output.
pub const BUILD_ID: &str = env!("SHARDQUANT_BUILD_ID");

/// What decides a conversion's output, gathered before planning.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The manifest fields that make the key (`version`, `options`, `inputs`, `stats`,
    /// `layout_file`), paths included.
    value: Value,
}

/// `fp` as a JSON object, with `path` first when given.
fn entry(path: Option<&str>, fp: &Fingerprint) -> Value {
    let mut v = serde_json::Map::new();
    if let Some(p) = path {
        v.insert("path".into(), json!(p));
    }
    if let Ok(Value::Object(fields)) = serde_json::to_value(fp) {
        v.extend(fields);
    }
    Value::Object(v)
}

/// Every file under `dir`, recursively, as (`/`-separated relative path, full path), sorted;
/// `skip` filters file names out.
pub fn files_under(dir: &Path, skip: &dyn Fn(&str) -> bool) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, path)) = stack.pop() {
        let entries =
            std::fs::read_dir(&path).map_err(|e| Error::output_io("reading", &path, e))?;
        for e in entries {
            let e = e.map_err(|e| Error::output_io("reading", &path, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let full = e.path();
            let rel = format!("{prefix}{name}");
            let kind = e
                .file_type()
                .map_err(|e| Error::output_io("reading", &full, e))?;
            if kind.is_dir() {
                stack.push((format!("{rel}/"), full));
            } else if kind.is_symlink() && std::fs::metadata(&full).is_ok_and(|m| m.is_dir()) {
                // A link to a directory is never followed: it can loop.
                continue;
            } else if !skip(&name) {
                out.push((rel, full));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The files under input subdirectory `dir` that the output copies (see [`Provenance::compute`]),
/// named `prefix` + relative path.
fn lane_files(
    ckpt: &Checkpoint,
    dir: &Path,
    prefix: &str,
    copied: &dyn Fn(&str) -> bool,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<()> {
    let listing = ckpt.lane().list(dir, |_| false)?;
    for sub in &listing.dirs {
        let name = sub.file_name().unwrap_or_default().to_string_lossy();
        lane_files(ckpt, sub, &format!("{prefix}{name}/"), copied, out)?;
    }
    for path in &listing.files {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if copied(&name) {
            out.push((format!("{prefix}{name}"), path.clone()));
        }
    }
    Ok(())
}

/// Fingerprints of a `--stats` or `--layout` path (a directory: every file in it); one that
/// cannot be read is recorded as such (planning then reports it properly).
fn path_entries(path: &Path) -> Vec<Value> {
    let shown = path.display().to_string();
    let files = if path.is_dir() {
        files_under(path, &|_| false)
            .map(|f| {
                f.into_iter()
                    .map(|(rel, full)| (format!("{shown}/{rel}"), full))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        vec![(shown.clone(), path.to_path_buf())]
    };
    let entries: Vec<Value> = files
        .iter()
        .map(|(name, full)| match fingerprint(full) {
            Ok(fp) => entry(Some(name), &fp),
            Err(_) => json!({"path": name, "unreadable": true}),
        })
        .collect();
    if entries.is_empty() {
        vec![json!({"path": shown, "unreadable": true})]
    } else {
        entries
    }
}

impl Provenance {
    /// Fingerprints what a conversion of `ckpt` with `options` reads: the weight files, every
    /// other file it copies or rewrites (`copied` filters out the ones it leaves behind), the
    /// statistics and a layout file.
    pub fn compute(
        ckpt: &Checkpoint,
        options: &Options,
        copied: &dyn Fn(&str) -> bool,
    ) -> Result<Provenance> {
        let dir = ckpt.dir();
        let mut files: Vec<(String, PathBuf)> = ckpt
            .weight_files()
            .iter()
            .map(|n| (n.clone(), dir.join(n)))
            .filter(|(_, p)| p.is_file())
            .collect();
        // Exactly what the output copies: the lane's listing (regular files inside the input,
        // no links out of it or to directories, no FIFOs), as `metadata::write_metadata` does.
        let others = ckpt.other_entries()?;
        for path in &others.files {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if copied(&name) {
                files.push((name.into_owned(), path.clone()));
            }
        }
        for sub in &others.dirs {
            let name = sub.file_name().unwrap_or_default().to_string_lossy();
            lane_files(ckpt, sub, &format!("{name}/"), copied, &mut files)?;
        }
        files.sort();
        files.dedup();
        let inputs = files
            .iter()
            .map(|(name, full)| fingerprint(full).map(|fp| entry(Some(name), &fp)))
            .collect::<Result<Vec<_>>>()?;
        let stats: Vec<Value> = options.stats.iter().flat_map(|p| path_entries(p)).collect();
        let layout_file = options
            .layout
            .as_deref()
            .map(|p| path_entries(p).swap_remove(0));
        Ok(Provenance {
            value: json!({
                "version": env!("CARGO_PKG_VERSION"),
                "build": BUILD_ID,
                "options": options.output_options(),
                "inputs": inputs,
                "stats": stats,
                "layout_file": layout_file,
            }),
        })
    }

    /// The key (see the module docs).
    pub fn key(&self) -> Value {
        key_of(&self.value)
    }
}

/// The key of a manifest (or of a [`Provenance`]): paths of statistics and layout file dropped
/// (their content counts, not where they are), statistics sorted (their order does not change
/// the merge).
pub fn key_of(manifest: &Value) -> Value {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("path");
        }
        v
    };
    let mut stats: Vec<Value> = manifest["stats"]
        .as_array()
        .map(|a| a.iter().map(strip).collect())
        .unwrap_or_default();
    stats.sort_by_key(|v| v.to_string());
    json!({
        "version": manifest["version"],
        "build": manifest["build"],
        "options": manifest["options"],
        "inputs": manifest["inputs"],
        "stats": stats,
        "layout_file": strip(&manifest["layout_file"]),
    })
}

/// `shardquant.json`, in the order its fields are written.
#[derive(serde::Serialize)]
struct Manifest<'a> {
    tool: &'static str,
    version: &'a Value,
    build: &'a Value,
    modelopt_format_version: &'static str,
    input: String,
    layout: &'a str,
    quantized_linears: usize,
    unquantized_linears: usize,
    options: &'a Value,
    inputs: &'a Value,
    stats: &'a Value,
    layout_file: &'a Value,
    outputs: &'a [FileDigest],
}

/// The text of `shardquant.json`.
pub fn manifest_json(
    provenance: &Provenance,
    input: &Path,
    plan: &Plan,
    outputs: &[FileDigest],
) -> String {
    let p = &provenance.value;
    let manifest = Manifest {
        tool: "shardquant",
        version: &p["version"],
        build: &p["build"],
        modelopt_format_version: crate::output::export::MODELOPT_VERSION,
        input: input.display().to_string(),
        layout: &plan.layout.name,
        quantized_linears: plan.quantized_count(),
        unquantized_linears: plan.linears.len() - plan.quantized_count(),
        options: &p["options"],
        inputs: &p["inputs"],
        stats: &p["stats"],
        layout_file: &p["layout_file"],
        outputs,
    };
    serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n"
}

/// Reads `dir/shardquant.json`: `None` when there is none, an error text when it is unreadable.
pub fn read_manifest(dir: &Path) -> Option<std::result::Result<Value, String>> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("{}: {e}", path.display()))),
        Ok(t) => t,
    };
    Some(
        serde_json::from_str::<Value>(&text)
            .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))
            .and_then(|v| match v.is_object() {
                true => Ok(v),
                false => Err(format!("{}: not a JSON object", path.display())),
            }),
    )
}

/// The output files a manifest lists, if it lists them (older manifests did not).
fn listed_outputs(manifest: &Value) -> Option<Vec<FileDigest>> {
    serde_json::from_value(manifest.get("outputs")?.clone()).ok()
}

/// Whether an existing output is what a conversion would write now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Made from the same inputs, statistics and options by this build, all files present.
    UpToDate,
    /// Not up to date, and why.
    Stale(String),
}

/// Compares the output at `output` with the conversion whose key is `key`. Reads only the
/// manifest and the output files' sizes.
pub fn freshness(output: &Path, key: &Value) -> Freshness {
    let shown = output.display();
    if !output.is_dir() {
        return Freshness::Stale(format!("{shown} does not exist"));
    }
    let manifest = match read_manifest(output) {
        None => return Freshness::Stale(format!("{shown} has no {MANIFEST_FILE}")),
        Some(Err(e)) => return Freshness::Stale(format!("unreadable manifest: {e}")),
        Some(Ok(m)) => m,
    };
    let Some(outputs) = listed_outputs(&manifest) else {
        return Freshness::Stale(format!(
            "{shown}/{MANIFEST_FILE} lists no output checksums (an older shardquant made it)"
        ));
    };
    let old = key_of(&manifest);
    if &old != key {
        return Freshness::Stale(explain(&old, key));
    }
    for f in &outputs {
        let path = output.join(&f.path);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == f.size => {}
            Ok(_) => {
                return Freshness::Stale(format!(
                    "{} is not the {} bytes {MANIFEST_FILE} records",
                    path.display(),
                    f.size
                ))
            }
            Err(_) => return Freshness::Stale(format!("{} is missing", path.display())),
        }
    }
    Freshness::UpToDate
}

/// Says how the key `old` (a previous output or partial run) differs from `new`.
pub fn explain(old: &Value, new: &Value) -> String {
    let mut why = Vec::new();
    if old["version"] != new["version"] {
        why.push(format!(
            "made by shardquant {}, this is {}",
            old["version"], new["version"]
        ));
    } else if old["build"] != new["build"] {
        why.push(format!(
            "made by another build of shardquant {} (build {}, this is {}): its output bytes may differ",
            new["version"], old["build"], new["build"]
        ));
    }
    let (o, n) = (&old["options"], &new["options"]);
    let mut names: Vec<&String> = o
        .as_object()
        .into_iter()
        .chain(n.as_object())
        .flat_map(|m| m.keys())
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        if o.get(name) != n.get(name) {
            let show = |v: Option<&Value>| v.map_or("(none)".to_string(), Value::to_string);
            why.push(format!(
                "option {name} was {}, now {}",
                show(o.get(name)),
                show(n.get(name))
            ));
        }
    }
    let by_path = |v: &Value| -> Vec<(String, Value)> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| (e["path"].as_str().unwrap_or("").to_string(), e.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (oi, ni) = (by_path(&old["inputs"]), by_path(&new["inputs"]));
    for (path, e) in &ni {
        match oi.iter().find(|(p, _)| p == path) {
            None => why.push(format!("input file {path} is new")),
            Some((_, prev)) if prev != e => {
                let what = if prev["size"] != e["size"] {
                    "size"
                } else if prev["mtime_ns"] != e["mtime_ns"] {
                    "modification time"
                } else {
                    "content"
                };
                why.push(format!("input file {path} changed ({what})"));
            }
            Some(_) => {}
        }
    }
    for (path, _) in oi.iter().filter(|(p, _)| !ni.iter().any(|(q, _)| q == p)) {
        why.push(format!("input file {path} is gone"));
    }
    if old["stats"] != new["stats"] {
        why.push("the statistics files changed".into());
    }
    if old["layout_file"] != new["layout_file"] {
        why.push("the layout file changed".into());
    }
    if why.is_empty() {
        why.push("the manifest differs".into());
    }
    let more = why.len().saturating_sub(MAX_EXPLAINED);
    why.truncate(MAX_EXPLAINED);
    let mut text = why.join("; ");
    if more > 0 {
        text.push_str(&format!(" (and {more} more difference(s))"));
    }
    text
}

/// What `verify` found checking a directory against its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksumCheck {
    /// No `shardquant.json` (e.g. a ModelOpt export): nothing to check.
    NoManifest,
    /// A manifest without output checksums (an older shardquant).
    NoChecksums,
    /// Every listed file was hashed; `problems` names those that differ.
    Checked {
        /// Files checked.
        files: usize,
        /// Files missing, of another size, or whose SHA-256 differs.
        problems: Vec<String>,
    },
}

/// Hashes every output file `dir/shardquant.json` lists (on up to `threads` threads) and
/// compares with the recorded size and SHA-256.
pub fn check_checksums(dir: &Path, threads: usize) -> ChecksumCheck {
    let manifest = match read_manifest(dir) {
        None => return ChecksumCheck::NoManifest,
        Some(Err(e)) => {
            return ChecksumCheck::Checked {
                files: 0,
                problems: vec![e],
            }
        }
        Some(Ok(m)) => m,
    };
    let Some(outputs) = listed_outputs(&manifest) else {
        return ChecksumCheck::NoChecksums;
    };
    let paths: Vec<(String, PathBuf)> = outputs
        .iter()
        .map(|f| (f.path.clone(), dir.join(&f.path)))
        .collect();
    let mut problems = Vec::new();
    for (want, got) in outputs.iter().zip(hash_files(&paths, threads)) {
        match got {
            Err(e) => problems.push(format!("{}: {} (listed in {MANIFEST_FILE})", want.path, e.message())),
            Ok(got) if got.size != want.size => problems.push(format!(
                "{}: {} bytes, {MANIFEST_FILE} records {}",
                want.path, got.size, want.size
            )),
            Ok(got) if got.sha256 != want.sha256 => problems.push(format!(
                "{}: SHA-256 {} differs from the {} that {MANIFEST_FILE} records (the file was changed or is corrupt)",
                want.path, got.sha256, want.sha256
            )),
            Ok(_) => {}
        }
    }
    ChecksumCheck::Checked {
        files: outputs.len(),
        problems,
    }
}

#[cfg(test)]
mod tests;
