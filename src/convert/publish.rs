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

/// The directory holding `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `.<name>.<suffix>` beside `target`: where shardquant keeps its temporary and lock files.
fn beside(target: &Path, suffix: &str) -> Result<PathBuf> {
    let name = target.file_name().ok_or_else(|| {
        Error::usage(format!(
            "output path {} has no directory name",
            target.display()
        ))
    })?;
    Ok(parent_dir(target).join(format!(".{}.{suffix}", name.to_string_lossy())))
}

fn sibling(target: &Path, tag: &str) -> Result<PathBuf> {
    beside(target, &format!("shardquant-{tag}-{}", std::process::id()))
}

impl Staging {
    /// Creates `.<name>.shardquant-tmp-<pid>` next to `target` (whose parent must exist).
    pub fn create(target: &Path) -> Result<Staging> {
        remove_stale(target);
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
            // Checked again here: something else may have appeared there during the run.
            if self.target.is_dir() && !replaceable(&self.target) {
                return Err(Error::usage(format!(
                    "refusing to replace {}: it is not empty and holds no config.json or shardquant.json",
                    self.target.display()
                ))
                .with_hint("--force only replaces an empty directory or a previous checkpoint; the new output is not published"));
            }
            let aside = sibling(&self.target, "old")?;
            std::fs::rename(&self.target, &aside)
                .map_err(|e| Error::io("moving aside", &self.target, e))?;
            old = Some(aside);
        }
        std::fs::rename(&self.dir, &self.target)
            .map_err(|e| Error::io("renaming into place", &self.target, e))?;
        self.published = true;
        sync_dir(parent_dir(&self.target))?;
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

/// Removes `.NAME.shardquant-tmp-PID` directories left by runs that were killed (their
/// process no longer exists). Only temporary directories are touched, never a moved-aside
/// previous output.
fn remove_stale(target: &Path) {
    let Some(name) = target.file_name() else {
        return;
    };
    let parent = parent_dir(target);
    let prefix = format!(".{}.shardquant-tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = file_name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() as i32 && !process_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Whether `dir` may be replaced by `--force`: it must be empty or look like a checkpoint
/// (a previous output), so a mistyped path never deletes unrelated data.
pub fn replaceable(dir: &Path) -> bool {
    ["config.json", "shardquant.json", "hf_quant_config.json"]
        .iter()
        .any(|f| dir.join(f).is_file())
        || std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
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

/// An advisory lock on an output path, held for a whole conversion: a second run on the same
/// output is refused, naming the process that holds it. The lock file
/// (`.NAME.shardquant.lock` beside the output) stays; the lock goes with the process.
#[derive(Debug)]
pub struct OutputLock {
    _file: std::fs::File,
}

impl OutputLock {
    /// Takes the lock for `target`, or says who holds it.
    pub fn acquire(target: &Path) -> Result<OutputLock> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        let path = beside(target, "shardquant.lock")?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("creating the lock file", &path, e))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(Error::other(format!(
                "another shardquant run (pid {}) is writing {}",
                holder.trim(),
                target.display()
            ))
            .with_hint(format!(
                "wait for it to finish, or remove {} if no such process exists",
                path.display()
            )));
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(OutputLock { _file: file })
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir` (statvfs).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| (st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Pre-flight: refuses to start when the filesystem of `dir` cannot hold `needed` bytes, so a
/// long run does not die at the end with a full disk.
pub fn check_free_space(dir: &Path, needed: u64) -> Result<()> {
    match free_bytes(dir) {
        Some(free) if free < needed => Err(Error::other(format!(
            "not enough free space in {}: the output needs {:.2} GB, {:.2} GB are free",
            dir.display(),
            needed as f64 / 1e9,
            free as f64 / 1e9
        ))
        .with_hint("free some space or write the output to another filesystem")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_checked_before_writing() {
        let dir = std::env::temp_dir();
        assert!(free_bytes(&dir).is_some_and(|f| f > 0));
        check_free_space(&dir, 1).unwrap();
        let err = check_free_space(&dir, u64::MAX / 2).unwrap_err();
        assert!(err.to_string().contains("not enough free space"), "{err}");
        assert!(err.hint().is_some());
    }
}
