//! Explaining what is wrong with a checkpoint file, and what to do about it.

use std::path::Path;

use safetensors::{Dtype, SafeTensorError};
use serde_json::{Map, Value};

/// How many tensor names one problem quotes.
pub(super) const MAX_NAMES: usize = 3;

/// What the user can do about a problem; becomes the error's hint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fix {
    Redownload,
    LfsPointer,
    Mismatch,
    Ambiguous,
    Lane,
}

impl Fix {
    pub(super) fn hint(self) -> &'static str {
        match self {
            Fix::Redownload => {
                "the file is missing, damaged or truncated (an interrupted download?): download it again, \
                 e.g. `huggingface-cli download REPO FILE --local-dir DIR`"
            }
            Fix::LfsPointer => {
                "a Git LFS pointer is a placeholder, not the weights: run `git lfs pull` in the clone, or \
                 download with `huggingface-cli download`"
            }
            Fix::Mismatch => {
                "an index that disagrees with its shards means a broken or mixed download: download the \
                 index and all shards again, from the same revision"
            }
            Fix::Ambiguous => {
                "keep only one copy of the weights: delete model.safetensors, or the index and its shards, \
                 whichever is stale"
            }
            Fix::Lane => super::lane::OUTSIDE_HINT,
        }
    }
}

/// `` `a`, `b`, `c` and 4 more ``: at most `max` names, quoted.
pub(super) fn list_names<S: AsRef<str>>(names: &[S], max: usize) -> String {
    let quoted: Vec<String> = names
        .iter()
        .take(max)
        .map(|n| format!("`{}`", n.as_ref()))
        .collect();
    with_rest(quoted.join(", "), names.len(), max)
}

/// `a, b, c and 4 more`: at most `max` items.
pub(super) fn list_plain(items: &[String], max: usize) -> String {
    with_rest(items[..items.len().min(max)].join(", "), items.len(), max)
}

/// Appends " and N more" when `total` items were cut to `max`.
fn with_rest(mut s: String, total: usize, max: usize) -> String {
    if total > max {
        s.push_str(&format!(" and {} more", total - max));
    }
    s
}

/// One header entry as written, for explaining a header the safetensors crate rejected.
struct RawEntry {
    name: String,
    dtype: Option<Dtype>,
    shape: Vec<usize>,
    offsets: (usize, usize),
}

/// The tensor entries of a header that is at least valid JSON, sorted by offsets.
fn raw_entries(bytes: &[u8]) -> Option<(usize, Vec<RawEntry>)> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header: Map<String, Value> =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    let mut entries: Vec<RawEntry> = header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .filter_map(|(name, v)| {
            let dtype = serde_json::from_value(v.get("dtype")?.clone()).ok();
            let shape = serde_json::from_value(v.get("shape")?.clone()).ok()?;
            let offsets = serde_json::from_value(v.get("data_offsets")?.clone()).ok()?;
            Some(RawEntry {
                name,
                dtype,
                shape,
                offsets,
            })
        })
        .collect();
    entries.sort_by(|a, b| (a.offsets, &a.name).cmp(&(b.offsets, &b.name)));
    Some((n, entries))
}

/// Bytes a tensor of `dtype` and `shape` takes, if that is a whole number that fits.
fn byte_size(dtype: Dtype, shape: &[usize]) -> Option<usize> {
    let bits = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))?
        .checked_mul(dtype.bitsize())?;
    (bits % 8 == 0).then_some(bits / 8)
}

/// A message for a header the safetensors crate rejected: the path, its error, and which tensor
/// and numbers are at fault where that can be found.
pub(super) fn describe_header_error(
    path: &Path,
    bytes: &[u8],
    err: &SafeTensorError,
) -> (String, Fix) {
    let p = path.display();
    if bytes.starts_with(b"version https://git-lfs") {
        return (
            format!("{}: is a Git LFS pointer file, not safetensors data", p),
            Fix::LfsPointer,
        );
    }
    let head = bytes[..bytes.len().min(64)]
        .trim_ascii_start()
        .to_ascii_lowercase();
    if [&b"<!doctype"[..], b"<html", b"<?xml"]
        .iter()
        .any(|m| head.starts_with(m))
    {
        return (
            format!(
                "{}: is an HTML/XML page, not safetensors data (a failed download?)",
                p
            ),
            Fix::Redownload,
        );
    }
    let detail = match (err, raw_entries(bytes)) {
        (SafeTensorError::HeaderTooSmall, _) => {
            format!("the file is {} bytes, too short for a safetensors header", bytes.len())
        }
        (SafeTensorError::InvalidHeaderLength | SafeTensorError::HeaderTooLarge, _) if bytes.len() >= 8 => {
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default());
            format!("the header length field says {} bytes, but the file has {} bytes", n, bytes.len())
        }
        (SafeTensorError::InvalidOffset(name), Some((_, entries))) => {
            describe_offset(name, &entries).unwrap_or_else(|| format!("tensor `{}` has invalid data_offsets", name))
        }
        (SafeTensorError::TensorInvalidInfo, Some((_, entries))) => entries
            .iter()
            .find_map(|e| {
                let need = e.dtype.and_then(|d| byte_size(d, &e.shape))?;
                let have = e.offsets.1.checked_sub(e.offsets.0)?;
                (need != have).then(|| {
                    format!(
                        "tensor `{}`: {} with shape {:?} needs {} bytes, but its data_offsets [{}, {}] give {}",
                        e.name,
                        e.dtype.map(|d| d.to_string()).unwrap_or_default(),
                        e.shape,
                        need,
                        e.offsets.0,
                        e.offsets.1,
                        have
                    )
                })
            })
            .unwrap_or_else(|| "a tensor's byte length does not match its dtype and shape".into()),
        (SafeTensorError::MisalignedSlice | SafeTensorError::ValidationOverflow, Some((_, entries))) => entries
            .iter()
            .find(|e| e.dtype.is_some_and(|d| byte_size(d, &e.shape).is_none()))
            .map(|e| format!("tensor `{}`: shape {:?} is not a whole number of bytes or overflows", e.name, e.shape))
            .unwrap_or_else(|| "a tensor's shape overflows or is not a whole number of bytes".into()),
        (SafeTensorError::MetadataIncompleteBuffer, Some((n, entries))) => {
            let end = entries.iter().map(|e| e.offsets.1).max().unwrap_or(0);
            let have = bytes.len().saturating_sub(8 + n);
            if have < end {
                let cut: Vec<&str> =
                    entries.iter().filter(|e| e.offsets.1 > have).map(|e| e.name.as_str()).collect();
                format!(
                    "the file is truncated: the header describes {} bytes of tensor data but only {} are \
                     there ({} missing); cut off: {}",
                    end,
                    have,
                    end - have,
                    list_names(&cut, MAX_NAMES)
                )
            } else {
                format!("{} unexpected bytes follow the last tensor", have - end)
            }
        }
        _ => return (format!("{}: invalid safetensors file: {}", p, err), Fix::Redownload),
    };
    (
        format!("{}: invalid safetensors file ({}): {}", p, err, detail),
        Fix::Redownload,
    )
}

/// Why tensor `name`'s offsets break the contiguous layout: the neighbour it overlaps or the gap.
fn describe_offset(name: &str, entries: &[RawEntry]) -> Option<String> {
    let i = entries.iter().position(|e| e.name == name)?;
    let e = &entries[i];
    let (s, end) = e.offsets;
    if end < s {
        return Some(format!(
            "tensor `{}` has data_offsets [{}, {}], which end before they start",
            name, s, end
        ));
    }
    let (prev_name, prev_end) = match i.checked_sub(1) {
        Some(j) => (format!("`{}`", entries[j].name), entries[j].offsets.1),
        None => ("the data section start".to_owned(), 0),
    };
    Some(if s < prev_end {
        format!(
            "tensor `{}` (data_offsets [{}, {}]) overlaps {}, which ends at {}",
            name, s, end, prev_name, prev_end
        )
    } else {
        format!(
            "tensor `{}` (data_offsets [{}, {}]) leaves a gap of {} bytes after {}, which ends at {}",
            name,
            s,
            end,
            s - prev_end,
            prev_name,
            prev_end
        )
    })
}
