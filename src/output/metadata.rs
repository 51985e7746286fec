//! Writing the metadata files of the output: ModelOpt's `hf_quant_config.json`, `config.json`
//! with `quantization_config`, a sanitized `generation_config.json`, `.quant_summary.txt`, and
//! every other file of the input (weights of other formats excepted).

use crate::error::{Error, Result};
use crate::input::checkpoint::{Checkpoint, Resolved};
use crate::input::config::MAX_CONFIG_BYTES;
use crate::output::export::{
    export_config_json, hf_quant_config_json, sanitize_generation_config, QuantMetadata,
};
use crate::output::publish::write_file;
use std::path::{Path, PathBuf};

/// The manifest a conversion writes beside its output (`shardquant.json`): what made it.
pub const MANIFEST_FILE: &str = "shardquant.json";

/// Weight files that are not part of the safetensors checkpoint (another copy of the model in
/// another format): never copied into the output.
const WEIGHT_EXTENSIONS: &[&str] = &[
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".gguf",
    ".ckpt",
    ".h5",
    ".msgpack",
];

/// Whether a file is weights of another format (never copied into the output).
pub fn is_weight_file(name: &str) -> bool {
    WEIGHT_EXTENSIONS.iter().any(|ext| name.ends_with(ext))
}

/// Files of the input that the conversion writes itself instead of copying.
pub const REWRITTEN: &[&str] = &[
    "config.json",
    "generation_config.json",
    "hf_quant_config.json",
];

/// Copies a file and syncs the copy to disk.
fn copy_synced(src: &Path, dest: &Path) -> Result<()> {
    std::fs::copy(src, dest).map_err(|e| Error::output_io("copying", src, e))?;
    std::fs::File::open(dest)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::output_io("syncing", dest, e))
}

/// Copies a subdirectory of the input (e.g. `assets/`), skipping weight files and, with a
/// warning, whatever [`crate::input::checkpoint::Lane::list`] leaves out (links out of the input,
/// links to directories, FIFOs, sockets, devices).
fn copy_tree(ckpt: &Checkpoint, src: &Path, dest: &Path, notes: &mut Vec<String>) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|e| Error::output_io("creating", dest, e))?;
    let listing = ckpt.lane().list(src, |_| false)?;
    notes.extend(listing.skipped.iter().map(|s| format!("warning: {s}")));
    for dir in &listing.dirs {
        if let Some(name) = dir.file_name() {
            copy_tree(ckpt, dir, &dest.join(name), notes)?;
        }
    }
    for path in &listing.files {
        let Some(name) = path.file_name() else {
            continue;
        };
        if is_weight_file(&name.to_string_lossy()) || ckpt.is_shard(path) {
            notes.push(format!(
                "not copied: {} (weights outside the checkpoint's index)",
                path.display()
            ));
        } else {
            copy_synced(path, &dest.join(name))?;
        }
    }
    Ok(())
}

/// The compressed-tensors export's metadata: the format and the `ignore` list.
pub(crate) struct CtMetadata {
    /// The format written.
    pub format: crate::compute::QuantFormat,
    /// The `ignore` list ([`crate::output::export::ct::ignore_list`]).
    pub ignore: Vec<String>,
    /// Whether `kv_cache_scheme` is written (`--kv-cache fp8`; the plan wrote its scales).
    pub kv_cache: bool,
}

/// Writes the metadata files into the staging directory (`meta` gives ModelOpt's files, or
/// `ct` compressed-tensors' `config.json`; `quant_summary` is `.quant_summary.txt`); returns
/// their names. compressed-tensors writes no `hf_quant_config.json` and copies
/// `generation_config.json` unchanged, as llm-compressor does.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_metadata(
    input: &Path,
    dir: &Path,
    ckpt: &Checkpoint,
    config_text: &str,
    meta: &QuantMetadata,
    ct: Option<&CtMetadata>,
    quant_summary: &str,
    notes: &mut Vec<String>,
) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        write_file(&dir.join(name), bytes)?;
        written.push(name.to_string());
        Ok(())
    };
    let config_path = input.join("config.json");
    if let Some(ct) = ct {
        put(
            "config.json",
            crate::output::export::ct::config_json(
                config_text,
                &config_path,
                ct.format,
                &ct.ignore,
                ct.kv_cache,
            )?
            .as_bytes(),
        )?;
    } else {
        put(
            "hf_quant_config.json",
            hf_quant_config_json(meta).as_bytes(),
        )?;
        put(
            "config.json",
            export_config_json(config_text, &config_path, meta)?.as_bytes(),
        )?;
    }
    let gen_path = input.join("generation_config.json");
    let gen_text = match ckpt.lane().resolve(&gen_path) {
        Resolved::Missing => None,
        Resolved::File { .. } => ckpt
            .lane()
            .read_small("generation_config.json", MAX_CONFIG_BYTES)?,
        other => {
            notes.push(format!(
                "warning: not copied: {}",
                ckpt.lane().refusal(&gen_path, &other).message()
            ));
            None
        }
    };
    if let Some(bytes) = gen_text {
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::bad_input(format!("{}: is not UTF-8 text", gen_path.display())))?;
        if ct.is_some() {
            put("generation_config.json", text.as_bytes())?;
        } else {
            let sanitized = sanitize_generation_config(&text, &gen_path)?;
            if let Some(change) = &sanitized.changed {
                notes.push(format!("generation_config.json: {change}"));
            }
            put("generation_config.json", sanitized.text.as_bytes())?;
        }
    }
    put(".quant_summary.txt", quant_summary.as_bytes())?;
    let others = ckpt.other_entries()?;
    notes.extend(others.skipped.iter().map(|s| format!("warning: {s}")));
    for path in others.files {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_string()) else {
            continue;
        };
        if REWRITTEN.contains(&name.as_str())
            || name == ".quant_summary.txt"
            || name == MANIFEST_FILE
        {
            continue;
        }
        if is_weight_file(&name) || ckpt.is_shard(&path) {
            notes.push(format!(
                "not copied: {name} (weights outside the checkpoint's index)"
            ));
            continue;
        }
        let dest: PathBuf = dir.join(&name);
        copy_synced(&path, &dest)?;
        written.push(name);
    }
    for sub in others.dirs {
        let Some(name) = sub.file_name() else {
            continue;
        };
        copy_tree(ckpt, &sub, &dir.join(name), notes)?;
        written.push(format!("{}/", name.to_string_lossy()));
    }
    Ok(written)
}
