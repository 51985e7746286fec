//! shardquant's own statistics files: the canonical schema "shardquant activation stats v1"
//! (`docs/stats-formats.md` §7), reader and writer.
//!
//! A v1 file is a safetensors file (`.stats.safetensors`), optionally zstd-compressed as a
//! whole (`.stats.safetensors.zst`, detected by the zstd magic). Its `__metadata__` holds
//! `"format": "shardquant.activation_stats"`, `"format_version": "1"` and `"meta"`, a JSON
//! document (§7.4). Keys are `<module>.<stat>` with HF on-disk module names; KV-cache amax live
//! on the attention module. 3-D fused experts may be given once per layer under the layout's
//! `experts.stats_module` (`model.layers.L.mlp.experts.gate_up_proj.<stat>` with a leading
//! expert dimension); the reader expands them to the per-expert modules.
//!
//! Choices where the schema leaves room:
//! - Float statistics are read from F32, F64, BF16 or F16 and held as the [`ModuleStats`]
//!   field type (f32 amax, f64 sums); `token_count` must be U64; scalars may be `[]` or `[1]`.
//! - `input_sum` may be negative; every other statistic must be finite and non-negative.
//! - A 3-D row of an expert with `token_count` 0 cannot be absent, so it must be all zeros; it
//!   is then read as absent (only the count 0 is kept).
//! - `weight_amax` is verification data: a different per-tensor value for the same module in
//!   two files (or in statistics read before) is an error.
//! - `kv_cache_amax` (MLA latent cache) has no place in [`ModuleStats`] yet: it is listed in
//!   [`ActivationStats::ignored`], as are unknown statistics.
//! - A module given twice in one file (a fused key and its per-expert keys, or an alias and
//!   its own keys) is an error: its sums would be added twice.
//! - `aliases` in `meta` are resolved for linears: the alias gets its target's statistics.
//!
//! [`ModuleStats`]: super::ModuleStats
//! [`ActivationStats::ignored`]: super::ActivationStats::ignored

use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The `format` value in `__metadata__`.
pub const FORMAT: &str = "shardquant.activation_stats";
/// The `format_version` written; files of the same major version are read.
pub const FORMAT_VERSION: &str = "1";
/// zstd compression level of [`write_native`].
pub const ZSTD_LEVEL: i32 = 10;
/// The most a compressed statistics file may decompress to (64 GiB).
pub const MAX_DECOMPRESSED: u64 = 64 << 30;
/// The most a compressed statistics file may decompress to per compressed byte, above
/// [`RATIO_FLOOR`]: real statistics compress a few times, while a few kilobytes of crafted zstd
/// can claim gigabytes ("decompression bomb").
pub const MAX_RATIO: u64 = 4096;
/// Every compressed file may decompress to this much, whatever its size.
pub const RATIO_FLOOR: u64 = 256 << 20;
/// The most memory reserved up front for the decompressed bytes: a frame's declared size is
/// only a claim, so larger files grow the buffer as data actually arrives.
const MAX_RESERVE: u64 = 64 << 20;
/// The values `meta.expert_input_amax` may take.
pub const EXPERT_INPUT_AMAX: [&str; 4] =
    ["per_expert", "peer_max_synced", "shared_grouped", "unknown"];

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
const REMAKE: &str = "re-create the file with `shardquant stats import`";
const DAMAGED: &str = "the file is truncated or damaged; copy it again from where it was made";
const OTHER_MODEL: &str = "the statistics were made for another model; check --model and --stats";

/// A problem found in statistics: (message naming the key, remedy).
type Fail = (String, &'static str);

/// The provenance part of a v1 file's JSON `meta` (§7.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeMeta {
    /// The format the statistics were imported from (`producer.source_format`).
    pub source_format: String,
    /// The files they were imported from (`producer.source_files[].path`).
    pub source_files: Vec<String>,
    /// Free-form notes (`notes`).
    pub notes: Vec<String>,
    /// How expert input amax were produced: one of [`EXPERT_INPUT_AMAX`].
    pub expert_input_amax: String,
}

impl Default for NativeMeta {
    fn default() -> Self {
        NativeMeta {
            source_format: String::new(),
            source_files: Vec::new(),
            notes: Vec::new(),
            expert_input_amax: "unknown".to_string(),
        }
    }
}

/// Whether the file starts a v1 file: the zstd frame magic `28 B5 2F FD` (any zstd file;
/// [`read_native`] checks the content), or a safetensors header whose `__metadata__` has
/// `"format": "shardquant.activation_stats"`. Reads only the header.
pub fn is_native(path: &Path) -> Result<bool> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "__metadata__", default)]
        metadata: HashMap<String, String>,
    }
    let mut file = File::open(path).map_err(|e| {
        Error::input_io("opening statistics file", path, e).with_hint("check the --stats path")
    })?;
    let mut head = Vec::new();
    let read = |f: &mut File, n: u64, buf: &mut Vec<u8>| {
        f.take(n)
            .read_to_end(buf)
            .map_err(|e| Error::input_io("reading", path, e))
    };
    read(&mut file, 8, &mut head)?;
    if head.starts_with(&ZSTD_MAGIC) {
        return Ok(true);
    }
    let len = <[u8; 8]>::try_from(head.as_slice()).map_or(u64::MAX, u64::from_le_bytes);
    if len > 100_000_000 {
        return Ok(false); // not safetensors (its own header limit)
    }
    let mut header = Vec::new();
    read(&mut file, len, &mut header)?;
    let probe = serde_json::from_slice::<Probe>(&header).ok();
    Ok(probe.is_some_and(|p| p.metadata.get("format").is_some_and(|f| f == FORMAT)))
}

/// A statistic of the schema (§7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stat {
    InputAmax,
    InputAmaxCh,
    InputSumSq,
    InputSum,
    InputMeanSq,
    TokenCount,
    WeightAmax,
    KCache,
    VCache,
}

const STATS: [(Stat, &str); 9] = [
    (Stat::InputAmax, "input_amax"),
    (Stat::InputAmaxCh, "input_amax_ch"),
    (Stat::InputSumSq, "input_sum_sq"),
    (Stat::InputSum, "input_sum"),
    (Stat::InputMeanSq, "input_mean_sq"),
    (Stat::TokenCount, "token_count"),
    (Stat::WeightAmax, "weight_amax"),
    (Stat::KCache, "k_cache_amax"),
    (Stat::VCache, "v_cache_amax"),
];

impl Stat {
    fn parse(name: &str) -> Option<Stat> {
        STATS.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
    }

    fn name(self) -> &'static str {
        STATS.iter().find(|(s, _)| *s == self).expect("listed").1
    }

    fn per_channel(self) -> bool {
        use Stat::*;
        matches!(self, InputAmaxCh | InputSumSq | InputSum | InputMeanSq)
    }

    fn kv(self) -> bool {
        matches!(self, Stat::KCache | Stat::VCache)
    }
}

mod check;
mod read;
mod write;

pub use read::read_native;
pub use write::write_native;

#[cfg(test)]
mod tests;
