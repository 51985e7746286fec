//! Pre-flight checks of the paths a conversion reads and writes: the input is a directory; the
//! output and `--report` are outside it, also through links and `..`; an existing output is
//! replaced only with `--force`, and only when it is empty or a previous checkpoint.

use crate::error::{Error, Result};
use crate::options::Options;
use crate::output::publish::{parent_dir, replaceable};
use std::path::{Path, PathBuf};

/// The input must be a directory.
pub(super) fn check_input_dir(input: &Path) -> Result<()> {
    if !input.is_dir() {
        return Err(
            Error::bad_input(format!("{} is not a directory", input.display())).with_hint(
                "INPUT_DIR is a HuggingFace checkpoint directory (config.json + *.safetensors)",
            ),
        );
    }
    Ok(())
}

/// Where `path` is once symbolic links and `..` are resolved, whether or not it exists yet:
/// the canonical path when it exists, else its canonical parent joined with its name.
fn resolved_path(path: &Path) -> Result<PathBuf> {
    if path.symlink_metadata().is_ok() {
        if let Ok(p) = path.canonicalize() {
            return Ok(p);
        }
    }
    let parent = parent_dir(path);
    let canon_parent = parent.canonicalize().map_err(|e| {
        Error::usage(format!(
            "parent directory {} of {}: {e}",
            parent.display(),
            path.display()
        ))
        .with_hint("create the parent directory first")
    })?;
    Ok(match path.file_name() {
        Some(name) => canon_parent.join(name),
        None => canon_parent,
    })
}

/// Pre-flight checks of the paths: the input is a directory; the output (and `--report`) is
/// outside it, does not contain it, and is not the input itself, also through links and `..`;
/// an existing output is replaced only with `--force`, and only when it is empty or a
/// previous checkpoint.
pub(super) fn check_paths(input: &Path, output: &Path, options: &Options) -> Result<()> {
    check_input_dir(input)?;
    let canon_in = input
        .canonicalize()
        .map_err(|e| Error::input_io("reading", input, e))?;
    let canon_out = resolved_path(output)?;
    if canon_out.starts_with(&canon_in) || canon_in.starts_with(&canon_out) {
        return Err(Error::usage(format!(
            "output {} and input {} overlap{}",
            output.display(),
            input.display(),
            if canon_out == canon_in {
                " (they are the same directory)"
            } else if canon_out.starts_with(&canon_in) {
                " (the output would be inside the input)"
            } else {
                " (the output contains the input)"
            }
        ))
        .with_hint("write the output to a directory outside the input"));
    }
    if output.exists() && !output.is_dir() {
        return Err(Error::usage(format!(
            "output {} exists and is not a directory",
            output.display()
        ))
        .with_hint("remove it or choose another OUTPUT_DIR"));
    }
    if let Some(report) = &options.run.report {
        check_report_path(report, input, &canon_in)?;
    }
    if output.is_dir() && options.run.force && !replaceable(output) {
        return Err(Error::usage(format!(
            "refusing to replace {}: it is not empty and holds no config.json or shardquant.json",
            output.display()
        ))
        .with_hint(
            "--force only replaces an empty directory or a previous checkpoint; check the path",
        ));
    }
    Ok(())
}

/// Whether `--report` names a file that may be written ([`check_report_path`], the check
/// `check_paths` makes before a run).
pub(super) fn report_path_usable(input: &Path, report: &Path) -> bool {
    match std::fs::canonicalize(input) {
        Ok(canon_in) => check_report_path(report, input, &canon_in).is_ok(),
        Err(_) => parent_dir(report).is_dir(),
    }
}

/// `--report` must name a file in an existing directory, outside the input (`canon_in`).
fn check_report_path(report: &Path, input: &Path, canon_in: &Path) -> Result<()> {
    let parent = parent_dir(report);
    if !parent.is_dir() {
        return Err(Error::usage(format!(
            "--report {}: directory {} does not exist",
            report.display(),
            parent.display()
        ))
        .with_hint("create the directory or choose another report path"));
    }
    if resolved_path(report)?.starts_with(canon_in) {
        return Err(Error::usage(format!(
            "--report {}: is inside the input directory {}, which shardquant never writes to",
            report.display(),
            input.display()
        ))
        .with_hint("write the report outside the input directory"));
    }
    Ok(())
}
