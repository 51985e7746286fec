//! Writing the metadata files of the output: ModelOpt's `hf_quant_config.json`, `config.json`
//! with `quantization_config`, a sanitized `generation_config.json`, `.quant_summary.txt`, and
//! every other file of the input (weights of other formats excepted).

use super::{is_weight_file, quant_summary, write_file, REWRITTEN};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::export::{
    export_config_json, hf_quant_config_json, sanitize_generation_config, QuantMetadata,
};
use crate::options::Options;
use crate::pipeline;
use crate::plan::Plan;
use std::path::{Path, PathBuf};

/// Copies a file and syncs the copy to disk.
fn copy_synced(src: &Path, dest: &Path) -> Result<()> {
    std::fs::copy(src, dest).map_err(|e| Error::io("copying", src, e))?;
    std::fs::File::open(dest)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("syncing", dest, e))
}

/// Copies a subdirectory of the input (e.g. `assets/`), skipping weight files.
fn copy_tree(src: &Path, dest: &Path, notes: &mut Vec<String>) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|e| Error::io("creating", dest, e))?;
    let entries = std::fs::read_dir(src).map_err(|e| Error::io("reading", src, e))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let Some(name) = path.file_name() else {
            continue;
        };
        let target = dest.join(name);
        if path.is_dir() {
            copy_tree(&path, &target, notes)?;
        } else if is_weight_file(&name.to_string_lossy()) {
            notes.push(format!(
                "not copied: {} (weights outside the checkpoint's index)",
                path.display()
            ));
        } else {
            copy_synced(&path, &target)?;
        }
    }
    Ok(())
}

/// Writes the metadata files into the staging directory; returns their names.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_metadata(
    input: &Path,
    dir: &Path,
    ckpt: &Checkpoint,
    config_text: &str,
    plan: &Plan,
    options: &Options,
    run: &pipeline::RunStats,
    notes: &mut Vec<String>,
) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let meta = QuantMetadata {
        quant_algo: options.format.quant_algo().to_string(),
        group_size: options.format.group_size(),
        kv_cache_fp8: options.kv_cache_fp8,
        exclude_modules: plan.exclude_modules.clone(),
        producer_version: super::MODELOPT_VERSION.to_string(),
    };
    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        write_file(&dir.join(name), bytes)?;
        written.push(name.to_string());
        Ok(())
    };
    put(
        "hf_quant_config.json",
        hf_quant_config_json(&meta).as_bytes(),
    )?;
    let config_path = input.join("config.json");
    put(
        "config.json",
        export_config_json(config_text, &config_path, &meta)?.as_bytes(),
    )?;
    let gen_path = input.join("generation_config.json");
    if gen_path.exists() {
        let text =
            std::fs::read_to_string(&gen_path).map_err(|e| Error::io("reading", &gen_path, e))?;
        let sanitized = sanitize_generation_config(&text, &gen_path)?;
        if let Some(change) = &sanitized.changed {
            notes.push(format!("generation_config.json: {change}"));
        }
        put("generation_config.json", sanitized.text.as_bytes())?;
    }
    put(
        ".quant_summary.txt",
        quant_summary(plan, options, &run.summary).as_bytes(),
    )?;
    for path in ckpt.other_files()? {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_string()) else {
            continue;
        };
        if REWRITTEN.contains(&name.as_str())
            || name == ".quant_summary.txt"
            || name == super::manifest::MANIFEST_FILE
        {
            continue;
        }
        if is_weight_file(&name) {
            notes.push(format!(
                "not copied: {name} (weights outside the checkpoint's index)"
            ));
            continue;
        }
        let dest: PathBuf = dir.join(&name);
        copy_synced(&path, &dest)?;
        written.push(name);
    }
    for sub in ckpt.other_dirs()? {
        let Some(name) = sub.file_name() else {
            continue;
        };
        copy_tree(&sub, &dir.join(name), notes)?;
        written.push(format!("{}/", name.to_string_lossy()));
    }
    Ok(written)
}
