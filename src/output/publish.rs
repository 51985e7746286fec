//! Writing into a temporary directory beside the output and renaming it into place, so an
//! interrupted run never leaves something that looks like a finished checkpoint; finding the
//! temporary directories that stopped runs left (for `--resume`); the output lock; the
//! free-space pre-flight.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A temporary output directory, removed on drop unless published or kept for `--resume`.
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
    /// Directories that earlier runs left are the caller's business ([`leftovers`]).
    pub fn create(target: &Path) -> Result<Staging> {
        let dir = sibling(target, "tmp")?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::output_io("removing stale", &dir, e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| {
            Error::output_io("creating", &dir, e)
                .with_hint("the output's parent directory must exist and be writable")
        })?;
        Ok(Staging {
            dir,
            target: target.to_path_buf(),
            published: false,
        })
    }

    /// Takes over `dir`, the temporary directory a stopped run left for `target`: renames it to
    /// this run's name and removes every entry except the files named in `keep` (files of the
    /// stopped run that may be half written go; what is kept was checked by the caller).
    pub fn adopt(target: &Path, dir: &Path, keep: &[String]) -> Result<Staging> {
        let ours = sibling(target, "tmp")?;
        if dir != ours {
            if ours.exists() {
                std::fs::remove_dir_all(&ours)
                    .map_err(|e| Error::output_io("removing stale", &ours, e))?;
            }
            std::fs::rename(dir, &ours).map_err(|e| Error::output_io("renaming", dir, e))?;
        }
        let staging = Staging {
            dir: ours,
            target: target.to_path_buf(),
            published: false,
        };
        prune(&staging.dir, keep)?;
        Ok(staging)
    }

    /// The temporary directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Leaves the directory where it is, with only the files named in `keep` (what can be
    /// resumed: nothing else there may look complete); returns its path. The directory stays
    /// even when removing the rest fails.
    pub fn keep(mut self, keep: &[String]) -> Result<PathBuf> {
        self.published = true;
        let dir = std::mem::take(&mut self.dir);
        prune(&dir, keep)?;
        Ok(dir)
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
            // One atomic swap where the filesystem has it: the old output is at the staging
            // path afterwards and is removed from there.
            match exchange(&self.dir, &self.target) {
                Ok(()) => {
                    self.published = true;
                    sync_dir(parent_dir(&self.target))?;
                    return std::fs::remove_dir_all(&self.dir).map_err(|e| {
                        Error::output_io("removing the replaced output", &self.dir, e)
                    });
                }
                Err(e) if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                    return Err(Error::output_io("replacing", &self.target, e));
                }
                // No RENAME_EXCHANGE here: move the old output aside, restored on failure.
                Err(_) => {}
            }
            let aside = sibling(&self.target, "old")?;
            std::fs::rename(&self.target, &aside)
                .map_err(|e| Error::output_io("moving aside", &self.target, e))?;
            old = Some(aside);
        }
        if let Err(e) =
            crate::fault::publish_rename().and_then(|_| std::fs::rename(&self.dir, &self.target))
        {
            if let Some(old) = &old {
                // Put the old output back: a failed run must not hide it.
                if let Err(back) = std::fs::rename(old, &self.target) {
                    return Err(Error::output_io("renaming into place", &self.target, e).context(
                        &format!("and restoring the previous output from {} failed too ({back}); it is there", old.display()),
                    ));
                }
            }
            return Err(Error::output_io("renaming into place", &self.target, e));
        }
        self.published = true;
        sync_dir(parent_dir(&self.target))?;
        if let Some(old) = old {
            std::fs::remove_dir_all(&old)
                .map_err(|e| Error::output_io("removing the replaced output", &old, e))?;
        }
        Ok(())
    }
}

/// Swaps two paths atomically (`renameat2(RENAME_EXCHANGE)`); EINVAL or ENOSYS where the
/// filesystem or kernel cannot. The injected publish fault fails it like a missing feature.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if crate::fault::publish_rename().is_err() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let a = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths that outlive the call; no memory is shared.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes every entry of `dir` except the files named in `keep`, and syncs it.
fn prune(dir: &Path, keep: &[String]) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::output_io("reading", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| Error::output_io("removing", &path, e))?;
    }
    sync_dir(dir)
}

/// The temporary directories (`.NAME.shardquant-tmp-PID`) that earlier runs on `target` left
/// (this process has none yet):
/// runs that were killed, lost power, ran out of disk or were interrupted. Call it with the
/// [`OutputLock`] held: then no other run is writing any of them, whatever their PIDs (after a
/// reboot, a stopped run's PID may belong to another process).
pub fn leftovers(target: &Path) -> Vec<PathBuf> {
    let Some(name) = target.file_name() else {
        return Vec::new();
    };
    let prefix = format!(".{}.shardquant-tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent_dir(target)) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && e.file_type().is_ok_and(|t| t.is_dir())
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
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
        .map_err(|e| Error::output_io("syncing", dir, e))
}

/// Writes a small file and fsyncs it (through the disk-full injection of [`crate::fault`]).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::output_io("writing", path, e))?;
    let allowed = crate::fault::write_allowance(bytes.len());
    f.write_all(&bytes[..allowed])
        .and_then(|_| match allowed < bytes.len() {
            true => Err(crate::fault::disk_full()),
            false => f.sync_all(),
        })
        .map_err(|e| Error::output_io("writing", path, e))
}

/// The lock that keeps two runs from writing one output: `flock` on `.NAME.shardquant.lock`
/// beside it, held for the whole run. A second run on the same output is refused, naming the
/// process that holds it. The lock goes with the process (a killed run leaves no stale lock);
/// the file is removed when the lock is released. A run that was waiting on a file that has
/// since been removed (or replaced) sees that the path no longer names its file and locks the
/// new one, so removing the file opens no race.
#[derive(Debug)]
pub struct OutputLock {
    /// Holds the lock while open.
    _file: std::fs::File,
    path: PathBuf,
}

impl OutputLock {
    /// Takes the lock for `target`, or says who holds it.
    pub fn acquire(target: &Path) -> Result<OutputLock> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::MetadataExt;
        let path = beside(target, "shardquant.lock")?;
        for _ in 0..1000 {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::output_io("creating the lock file", &path, e))?;
            if !try_lock(&file) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::other(format!(
                    "another shardquant run (pid {}) is writing {}",
                    holder.trim(),
                    target.display()
                ))
                .with_hint("wait for it to finish: the lock goes with that process"));
            }
            // Locked; but the previous holder may have removed the file meanwhile.
            let ours = file
                .metadata()
                .map_err(|e| Error::output_io("reading the lock file", &path, e))?;
            let same = std::fs::symlink_metadata(&path)
                .is_ok_and(|m| (m.dev(), m.ino()) == (ours.dev(), ours.ino()));
            if !same {
                continue;
            }
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = write!(file, "{}", std::process::id());
            return Ok(OutputLock { _file: file, path });
        }
        Err(Error::other(format!(
            "could not take the lock {}: it keeps being replaced",
            path.display()
        )))
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Removed while still locked: a run that opened it meanwhile finds the path gone once
        // it gets the lock, and retries with a new file. The lock goes when `file` closes.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An exclusive lock without waiting (`flock(LOCK_EX | LOCK_NB)` on Unix): false when another
/// run holds it.
fn try_lock(file: &std::fs::File) -> bool {
    file.try_lock().is_ok()
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
            "not enough free space in {}: the output needs {}, {} are free",
            dir.display(),
            crate::progress::human_bytes(needed),
            crate::progress::human_bytes(free)
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
