//! The input directory as a lane: what shardquant reads of a checkpoint must lie inside it.
//!
//! An index whose `weight_map` names `../x` or `/etc/x` is refused by the validator (only plain
//! file names are accepted); this module decides where a name that *is* plain leads once
//! symbolic links are followed. [`Lane::resolve`] follows links and classifies the result:
//! a regular file inside the directory, a real subdirectory, a link to a directory (never
//! followed: it could loop or leave the directory), something outside the directory, a FIFO,
//! socket or device (never opened: opening a FIFO blocks), or nothing at all.
//!
//! One exception keeps HuggingFace's cache usable: in a snapshot directory
//! `.../models--ORG--NAME/snapshots/REV/` every file is a link into the repository's
//! `../../blobs/`. When the input directory is such a snapshot, regular files directly inside
//! that `blobs` directory count as inside the lane.

use std::fs::Metadata;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where one path of the input directory leads.
#[derive(Debug)]
pub enum Resolved {
    /// A regular file inside the lane (possibly through symbolic links).
    File {
        /// The file's size in bytes.
        len: u64,
        /// Whether the path itself is a symbolic link.
        linked: bool,
    },
    /// A real subdirectory (not a link).
    Dir,
    /// A symbolic link to a directory: never followed.
    LinkedDir {
        /// Where the link leads.
        target: PathBuf,
    },
    /// A symbolic link that leads outside the lane.
    Outside {
        /// Where the link leads.
        target: PathBuf,
    },
    /// Neither a regular file nor a directory: a FIFO, a socket or a device. Never opened.
    Special {
        /// What it is, in words.
        kind: &'static str,
    },
    /// Nothing is there.
    Missing,
    /// It cannot be read: a dangling link, a permission problem.
    Unreadable(std::io::Error),
}

/// The entries of a directory of the input, sorted by name, as [`Lane::list`] finds them.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Regular files inside the lane (links to them included).
    pub files: Vec<PathBuf>,
    /// Real subdirectories (links to directories are never followed).
    pub dirs: Vec<PathBuf>,
    /// What was left out and why, one line each: links leading outside the lane, links to
    /// directories, FIFOs, sockets and devices.
    pub skipped: Vec<String>,
}

/// The input directory, resolved once.
#[derive(Debug, Clone)]
pub struct Lane {
    /// The directory as given.
    dir: PathBuf,
    /// Its canonical path.
    root: PathBuf,
    /// The `blobs` directory of the HuggingFace cache repository, when `dir` is a snapshot.
    blobs: Option<PathBuf>,
}

impl Lane {
    /// The lane of directory `dir` (which must exist).
    pub fn new(dir: &Path) -> std::io::Result<Lane> {
        let root = dir.canonicalize()?;
        Ok(Lane {
            dir: dir.to_path_buf(),
            blobs: hf_cache_blobs(&root),
            root,
        })
    }

    /// The directory as given.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The canonical path of the directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the canonical path `real` lies inside the lane.
    pub fn contains(&self, real: &Path) -> bool {
        real.starts_with(&self.root)
            || self
                .blobs
                .as_deref()
                .is_some_and(|b| real.parent() == Some(b))
    }

    /// Where `path` (an entry of the directory or of one of its real subdirectories) leads.
    pub fn resolve(&self, path: &Path) -> Resolved {
        let meta = match path.symlink_metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Resolved::Missing,
            Err(e) => return Resolved::Unreadable(e),
        };
        if !meta.file_type().is_symlink() {
            return kind_of(&meta, false);
        }
        let target = match path.canonicalize() {
            Ok(t) => t,
            Err(e) => return Resolved::Unreadable(e),
        };
        let meta = match std::fs::metadata(&target) {
            Ok(m) => m,
            Err(e) => return Resolved::Unreadable(e),
        };
        if !self.contains(&target) {
            return Resolved::Outside { target };
        }
        if meta.is_dir() {
            return Resolved::LinkedDir { target };
        }
        kind_of(&meta, true)
    }

    /// Lists `dir` (the input directory or one of its real subdirectories), leaving out the
    /// entries whose name `leave_out` accepts. A dangling link or an entry that cannot be read
    /// is an error (a broken download), not a file silently missing from the output.
    pub fn list(&self, dir: &Path, leave_out: impl Fn(&str) -> bool) -> Result<Listing> {
        let read_err = |e| Error::input_io("reading", dir, e);
        let mut listing = Listing::default();
        let mut entries: Vec<(PathBuf, String)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !leave_out(&name) {
                entries.push((entry.path(), name));
            }
        }
        entries.sort();
        for (path, _) in entries {
            let p = path.display();
            match self.resolve(&path) {
                Resolved::File { .. } => listing.files.push(path),
                Resolved::Dir => listing.dirs.push(path),
                Resolved::Missing => {} // removed while listing
                Resolved::LinkedDir { target } => listing.skipped.push(format!(
                    "not copied: {p} (a symbolic link to the directory {}; links to directories are not followed)",
                    target.display()
                )),
                Resolved::Outside { target } => listing.skipped.push(format!(
                    "not copied: {p} (a symbolic link to {}, outside the input directory)",
                    target.display()
                )),
                Resolved::Special { kind } => {
                    listing.skipped.push(format!("not copied: {p} (a {kind})"))
                }
                unreadable @ Resolved::Unreadable(_) => {
                    return Err(self.refusal(&path, &unreadable))
                }
            }
        }
        Ok(listing)
    }

    /// Reads a small file of the directory (`config.json`, the index): it must be a regular
    /// file inside the lane of at most `max` bytes. `Ok(None)` when it does not exist.
    pub fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        match self.resolve(&path) {
            Resolved::Missing => Ok(None),
            Resolved::File { len, .. } if len > max => Err(Error::bad_input(format!(
                "{}: is {len} bytes, more than the {max} bytes such a file can sensibly have",
                path.display()
            ))
            .with_hint("the file is damaged or not what it claims to be: download it again")),
            Resolved::File { .. } => {
                let mut bytes = Vec::new();
                std::fs::File::open(&path)
                    .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
                    .map_err(|e| Error::input_io("reading", &path, e))?;
                Ok(Some(bytes))
            }
            other => Err(self.refusal(&path, &other)),
        }
    }

    /// The error for a path that must be a regular file inside the lane but resolved to
    /// `what` (anything but [`Resolved::File`]).
    pub fn refusal(&self, path: &Path, what: &Resolved) -> Error {
        let p = path.display();
        match what {
            Resolved::Outside { target } => Error::bad_input(format!(
                "{p}: is a symbolic link to {}, outside the input directory {}",
                target.display(),
                self.dir.display()
            ))
            .with_hint(OUTSIDE_HINT),
            Resolved::LinkedDir { target } => Error::bad_input(format!(
                "{p}: is a symbolic link to the directory {}, not a file",
                target.display()
            )),
            Resolved::Dir => Error::bad_input(format!("{p}: is a directory, not a file")),
            Resolved::Special { kind } => Error::bad_input(format!(
                "{p}: is a {kind}, not a regular file; shardquant does not open it"
            ))
            .with_hint("replace it with the file itself"),
            Resolved::Missing => Error::input_io("reading",
                path,
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ),
            Resolved::Unreadable(e) => Error::bad_input(format!("{p}: cannot read it: {e}"))
                .with_hint(
                    "a broken symbolic link usually means an incomplete download: download the file again",
                ),
            Resolved::File { .. } => Error::other(format!("internal error: {p} is usable")),
        }
    }
}

/// The hint of every refusal to follow a link out of the input directory.
pub const OUTSIDE_HINT: &str =
    "shardquant reads only files inside the input directory (and, for a HuggingFace cache \
     snapshot, its repository's blobs/): copy the file into the directory instead of linking it, \
     or download with `huggingface-cli download REPO --local-dir DIR`";

/// What a non-link entry is.
fn kind_of(meta: &Metadata, linked: bool) -> Resolved {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        Resolved::File {
            len: meta.len(),
            linked,
        }
    } else if t.is_dir() {
        Resolved::Dir
    } else {
        Resolved::Special {
            kind: if t.is_fifo() {
                "FIFO (named pipe)"
            } else if t.is_socket() {
                "socket"
            } else if t.is_block_device() || t.is_char_device() {
                "device"
            } else {
                "special file"
            },
        }
    }
}

/// `.../models--ORG--NAME/blobs` when the canonical `root` is `.../models--ORG--NAME/snapshots/REV`
/// and that `blobs` directory exists.
fn hf_cache_blobs(root: &Path) -> Option<PathBuf> {
    let snapshots = root.parent()?;
    let repo = snapshots.parent()?;
    let is_repo = repo
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("models--"));
    if snapshots.file_name()? != "snapshots" || !is_repo {
        return None;
    }
    let blobs = repo.join("blobs");
    blobs
        .symlink_metadata()
        .is_ok_and(|m| m.is_dir())
        .then_some(blobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh directory: its canonical path (`.0`; the lane compares resolved paths) and the
    /// guard that removes it on drop, also when the test fails.
    fn tmp(tag: &str) -> (PathBuf, tempfile::TempDir) {
        let dir = tempfile::Builder::new()
            .prefix(&format!("shardquant-lane-{tag}-"))
            .tempdir()
            .unwrap();
        (dir.path().canonicalize().unwrap(), dir)
    }

    #[test]
    fn links_are_classified_by_where_they_lead() {
        let t = tmp("classify");
        let dir = t.0.join("in");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.json"), b"{}").unwrap();
        std::fs::write(t.0.join("secret"), b"x").unwrap();
        symlink(dir.join("a.json"), dir.join("in.json")).unwrap();
        symlink("../secret", dir.join("out.json")).unwrap();
        symlink("sub", dir.join("subdir")).unwrap();
        symlink("nowhere", dir.join("dangling")).unwrap();
        let lane = Lane::new(&dir).unwrap();
        assert!(matches!(
            lane.resolve(&dir.join("a.json")),
            Resolved::File {
                len: 2,
                linked: false
            }
        ));
        assert!(matches!(
            lane.resolve(&dir.join("in.json")),
            Resolved::File { linked: true, .. }
        ));
        match lane.resolve(&dir.join("out.json")) {
            Resolved::Outside { target } => assert_eq!(target, t.0.join("secret")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(lane.resolve(&dir.join("sub")), Resolved::Dir));
        assert!(matches!(
            lane.resolve(&dir.join("subdir")),
            Resolved::LinkedDir { .. }
        ));
        assert!(matches!(
            lane.resolve(&dir.join("dangling")),
            Resolved::Unreadable(_)
        ));
        assert!(matches!(lane.resolve(&dir.join("none")), Resolved::Missing));
        // The directory reached through a link to it is the same lane.
        symlink(&dir, t.0.join("link-to-in")).unwrap();
        let lane = Lane::new(&t.0.join("link-to-in")).unwrap();
        assert!(matches!(
            lane.resolve(&t.0.join("link-to-in/in.json")),
            Resolved::File { linked: true, .. }
        ));
    }

    #[test]
    fn a_fifo_is_never_opened() {
        let t = tmp("fifo");
        let fifo = t.0.join("config.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let lane = Lane::new(&t.0).unwrap();
        assert!(matches!(
            lane.resolve(&fifo),
            Resolved::Special {
                kind: "FIFO (named pipe)"
            }
        ));
        // Reading it would block forever; read_small refuses instead.
        let err = lane.read_small("config.json", 1 << 20).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
    }

    #[test]
    fn read_small_caps_the_size() {
        let t = tmp("cap");
        std::fs::write(t.0.join("config.json"), vec![b' '; 100]).unwrap();
        let lane = Lane::new(&t.0).unwrap();
        assert_eq!(
            lane.read_small("config.json", 100).unwrap().unwrap().len(),
            100
        );
        let err = lane.read_small("config.json", 99).unwrap_err();
        assert!(err.to_string().contains("100 bytes"), "{err}");
        assert!(lane.read_small("absent.json", 99).unwrap().is_none());
    }

    #[test]
    fn a_huggingface_cache_snapshot_may_link_into_its_blobs() {
        let t = tmp("hfcache");
        let repo = t.0.join("models--org--tiny");
        let snap = repo.join("snapshots/0123abc");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs/deadbeef"), b"{}").unwrap();
        std::fs::write(repo.join("elsewhere"), b"{}").unwrap();
        symlink("../../blobs/deadbeef", snap.join("config.json")).unwrap();
        symlink("../../elsewhere", snap.join("other.json")).unwrap();
        let lane = Lane::new(&snap).unwrap();
        assert!(matches!(
            lane.resolve(&snap.join("config.json")),
            Resolved::File { linked: true, .. }
        ));
        assert!(matches!(
            lane.resolve(&snap.join("other.json")),
            Resolved::Outside { .. }
        ));
        // The same layout without the `models--` repository name is not a cache.
        let fake = t.0.join("plain/snapshots/rev");
        std::fs::create_dir_all(&fake).unwrap();
        std::fs::create_dir_all(t.0.join("plain/blobs")).unwrap();
        std::fs::write(t.0.join("plain/blobs/b"), b"{}").unwrap();
        symlink("../../blobs/b", fake.join("config.json")).unwrap();
        let lane = Lane::new(&fake).unwrap();
        assert!(matches!(
            lane.resolve(&fake.join("config.json")),
            Resolved::Outside { .. }
        ));
    }
}
