//! Sizes written the way HuggingFace's `max_shard_size` is.

use crate::error::{Error, Result};

/// The units [`parse_size`] accepts (upper case) and their sizes in bytes.
const UNITS: [(&str, u64); 9] = [
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KIB", 1 << 10),
    ("MIB", 1 << 20),
    ("GIB", 1 << 30),
    ("TIB", 1 << 40),
];

/// Parses a size like HuggingFace's `max_shard_size`: `5GB` (5·10⁹ bytes), `500MB`, `40KB`,
/// `2TB`, the binary `5GiB` (5·2³⁰), `512MiB`, `40KiB`, or a plain number of bytes (`1024`,
/// `1024B`).
///
/// Units are case-insensitive (`5gb` is `5GB`) and may follow a space; the number may have a
/// fraction (`1.5GB`), rounded down to whole bytes as HuggingFace does. A usage error for
/// anything else, for zero, and for sizes beyond 2⁶⁴ bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = |why: &str| {
        Error::usage(format!("invalid size {:?}: {}", s, why)).with_hint(
            "write a size like 5GB, 500MB, 40KB, 5GiB, or a number of bytes such as 1048576",
        )
    };
    let text = s.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim().to_ascii_uppercase();
    let unit = if unit.is_empty() { "B" } else { unit.as_str() };
    let Some(&(_, multiplier)) = UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(bad(&format!(
            "unknown unit {:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)",
            unit
        )));
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(bad("no number"));
    }
    if fraction.contains('.') || fraction.len() > 18 {
        return Err(bad("not a number"));
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad("the number is too large"))?
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| bad("not a number"))?
    };
    let bytes = whole
        .checked_mul(multiplier as u128)
        .and_then(|w| w.checked_add(fraction * multiplier as u128 / scale))
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| bad("too large"))?;
    if bytes == 0 {
        return Err(bad("must be at least one byte"));
    }
    Ok(bytes)
}
