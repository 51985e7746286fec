//! The small part of ZIP that `torch.save` archives use: stored (uncompressed) entries found
//! through the central directory, with ZIP64 sizes and offsets when present.
//!
//! torch's writer sets the data-descriptor flag and leaves sizes at zero in the local headers,
//! so the central directory is the only source of sizes. Every entry is checked to lie inside
//! the file before it is read, read entries are checked against their CRC-32, and nothing is
//! allocated from a declared size that the file cannot hold.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
/// Fixed part of the end-of-central-directory record.
const EOCD_LEN: u64 = 22;
/// A comment can be at most 65535 bytes, so the EOCD lies within this many bytes of the end.
const EOCD_SEARCH: u64 = EOCD_LEN + 0xffff;

/// One archive entry, as the central directory describes it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Full name inside the archive (`archive/data/0`).
    pub name: String,
    method: u16,
    flags: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    local_header: u64,
}

/// An opened archive: the central directory, read once; entries are read on demand.
pub(super) struct Archive {
    file: File,
    path: PathBuf,
    len: u64,
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Archive {
    /// Opens `path` and reads its central directory.
    pub fn open(path: &Path) -> Result<Archive> {
        let file = File::open(path).map_err(|e| Error::input_io("opening", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::input_io("reading", path, e))?
            .len();
        let mut ar = Archive {
            file,
            path: path.to_path_buf(),
            len,
            entries: Vec::new(),
            by_name: HashMap::new(),
        };
        ar.read_directory()?;
        Ok(ar)
    }

    fn bad(&self, msg: impl std::fmt::Display) -> Error {
        Error::bad_input(format!("{}: {}", self.path.display(), msg)).with_hint(
            "the file is truncated or corrupt, or was not written by torch.save (PyTorch >= 1.6); \
             re-create it",
        )
    }

    /// Reads `n` bytes at `at`, after checking they lie inside the file.
    fn read_at(&self, at: u64, n: u64) -> Result<Vec<u8>> {
        if at.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(self.bad(format!(
                "ZIP structure points past the end of the file ({n} bytes at offset {at}, file \
                 is {} bytes)",
                self.len
            )));
        }
        let mut buf = vec![0u8; n as usize];
        let mut f = &self.file;
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| Error::input_io("reading", &self.path, e))?;
        Ok(buf)
    }

    fn read_directory(&mut self) -> Result<()> {
        let tail_len = self.len.min(EOCD_SEARCH);
        let tail_start = self.len - tail_len;
        let tail = self.read_at(tail_start, tail_len)?;
        let eocd = (0..tail.len().saturating_sub(EOCD_LEN as usize - 1))
            .rev()
            .find(|&i| u32_at(&tail, i) == EOCD_SIG);
        let Some(eocd) = eocd else {
            // A legacy (PyTorch < 1.6) torch.save file is a bare pickle: it starts with PROTO.
            let legacy = self.len >= 2 && self.read_at(0, 1)?[0] == 0x80;
            return Err(self.bad(if legacy {
                "a legacy torch.save file (raw pickle, PyTorch < 1.6), not a ZIP archive; \
                 re-save it with a current PyTorch"
            } else {
                "not a ZIP archive (no end-of-central-directory record)"
            }));
        };
        let e = &tail[eocd..];
        let mut count = u64::from(u16_at(e, 10));
        let mut cd_size = u64::from(u32_at(e, 12));
        let mut cd_offset = u64::from(u32_at(e, 16));
        let eocd_pos = tail_start + eocd as u64;
        // ZIP64: a locator sits right before the EOCD and points at the ZIP64 EOCD record.
        if eocd >= 20 && u32_at(&tail, eocd - 20) == ZIP64_LOCATOR_SIG {
            let at = u64_at(&tail, eocd - 20 + 8);
            let z = self.read_at(at, 56)?;
            if u32_at(&z, 0) != ZIP64_EOCD_SIG {
                return Err(self.bad("ZIP64 locator does not point at a ZIP64 directory record"));
            }
            count = u64_at(&z, 32);
            cd_size = u64_at(&z, 40);
            cd_offset = u64_at(&z, 48);
        }
        if cd_offset
            .checked_add(cd_size)
            .is_none_or(|end| end > eocd_pos)
        {
            return Err(self.bad(format!(
                "central directory ({cd_size} bytes at offset {cd_offset}) does not fit before \
                 its end record at {eocd_pos}"
            )));
        }
        if count > cd_size / 46 {
            return Err(self.bad(format!(
                "central directory declares {count} entries but holds {cd_size} bytes"
            )));
        }
        let cd = self.read_at(cd_offset, cd_size)?;
        let mut at = 0usize;
        for _ in 0..count {
            let entry = self.parse_central(&cd, &mut at)?;
            if self
                .by_name
                .insert(entry.name.clone(), self.entries.len())
                .is_some()
            {
                return Err(self.bad(format!("duplicate ZIP entry '{}'", entry.name)));
            }
            self.entries.push(entry);
        }
        Ok(())
    }

    fn parse_central(&self, cd: &[u8], at: &mut usize) -> Result<Entry> {
        let truncated = || self.bad("central directory entry truncated");
        let h = cd.get(*at..*at + 46).ok_or_else(truncated)?;
        if u32_at(h, 0) != CENTRAL_SIG {
            return Err(self.bad("bad central directory entry signature"));
        }
        let (nlen, xlen, clen) = (
            usize::from(u16_at(h, 28)),
            usize::from(u16_at(h, 30)),
            usize::from(u16_at(h, 32)),
        );
        let name_start = *at + 46;
        let end = name_start + nlen + xlen + clen;
        let rest = cd.get(name_start..end).ok_or_else(truncated)?;
        let name = String::from_utf8(rest[..nlen].to_vec())
            .map_err(|_| self.bad("ZIP entry name is not UTF-8"))?;
        let mut e = Entry {
            name,
            flags: u16_at(h, 8),
            method: u16_at(h, 10),
            crc: u32_at(h, 16),
            compressed: u64::from(u32_at(h, 20)),
            size: u64::from(u32_at(h, 24)),
            local_header: u64::from(u32_at(h, 42)),
        };
        // ZIP64 extra field (id 1): the 0xffffffff fields, in this order, as u64.
        let mut extra = &rest[nlen..nlen + xlen];
        while extra.len() >= 4 {
            let (id, n) = (u16_at(extra, 0), usize::from(u16_at(extra, 2)));
            let data = extra.get(4..4 + n).ok_or_else(truncated)?;
            if id == 1 {
                let mut fields = data.chunks_exact(8).map(|c| u64_at(c, 0));
                for slot in [&mut e.size, &mut e.compressed, &mut e.local_header] {
                    if *slot == u64::from(u32::MAX) {
                        *slot = fields.next().ok_or_else(truncated)?;
                    }
                }
            }
            extra = &extra[4 + n..];
        }
        *at = end;
        Ok(e)
    }

    /// All entries, in central-directory order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry named `name`, if any.
    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// Reads one entry whole, checking it is stored, inside the file, and matches its CRC.
    pub fn read(&self, e: &Entry) -> Result<Vec<u8>> {
        if e.flags & 1 != 0 {
            return Err(self.bad(format!("ZIP entry '{}' is encrypted", e.name)));
        }
        if e.compressed != e.size && e.method == 0 {
            return Err(self.bad(format!(
                "ZIP entry '{}' is stored but declares {} bytes stored for {} bytes of data",
                e.name, e.compressed, e.size
            )));
        }
        if e.method != 0 {
            return Err(self.bad(format!(
                "ZIP entry '{}' is compressed (method {}); torch.save writes entries stored, \
                 and only those are read",
                e.name, e.method
            )));
        }
        let h = self.read_at(e.local_header, 30)?;
        if u32_at(&h, 0) != LOCAL_SIG {
            return Err(self.bad(format!("ZIP entry '{}': bad local header", e.name)));
        }
        let skip = 30 + u64::from(u16_at(&h, 26)) + u64::from(u16_at(&h, 28));
        let data = self.read_at(e.local_header + skip, e.size)?;
        if crc32(&data) != e.crc {
            return Err(self.bad(format!(
                "ZIP entry '{}' fails its CRC-32 check (corrupt data)",
                e.name
            )));
        }
        Ok(data)
    }

    /// Size of the archive file in bytes.
    pub fn file_len(&self) -> u64 {
        self.len
    }
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32 (IEEE, as ZIP uses).
pub(super) fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}
