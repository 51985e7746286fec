//! Writing into a temporary directory beside the output and renaming it into place, so an
//! interrupted run never leaves something that looks like a finished checkpoint.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A temporary output directory, removed on drop unless published.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
    published: bool,
}

fn sibling(target: &Path, tag: &str) -> Result<PathBuf> {
    let name = target.file_name().ok_or_else(|| {
        Error::usage(format!(
            "output path {} has no directory name",
            target.display()
        ))
    })?;
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(parent.join(format!(
        ".{}.shardquant-{tag}-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

impl Staging {
    /// Creates `.<name>.shardquant-tmp-<pid>` next to `target` (whose parent must exist).
    pub fn create(target: &Path) -> Result<Staging> {
        let dir = sibling(target, "tmp")?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing stale", &dir, e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| {
            Error::io("creating", &dir, e)
                .with_hint("the output's parent directory must exist and be writable")
        })?;
        Ok(Staging {
            dir,
            target: target.to_path_buf(),
            published: false,
        })
    }

    /// The temporary directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Moves the finished directory into place, replacing an existing one when `replace`.
    pub fn publish(mut self, replace: bool) -> Result<()> {
        sync_dir(&self.dir)?;
        let mut old = None;
        if self.target.exists() {
            if !replace {
                return Err(
                    Error::usage(format!("{} already exists", self.target.display()))
                        .with_hint("pass --force to replace it"),
                );
            }
            let aside = sibling(&self.target, "old")?;
            std::fs::rename(&self.target, &aside)
                .map_err(|e| Error::io("moving aside", &self.target, e))?;
            old = Some(aside);
        }
        std::fs::rename(&self.dir, &self.target)
            .map_err(|e| Error::io("renaming into place", &self.target, e))?;
        self.published = true;
        if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(&old)
                .map_err(|e| Error::io("removing the replaced output", &old, e))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// fsyncs a directory so renames and new entries in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("syncing", dir, e))
}

/// Writes a small file and fsyncs it.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io("writing", path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("writing", path, e))
}
