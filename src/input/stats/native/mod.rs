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

use super::{ActivationStats, ModelNames, ModuleStats, StatDtype, WeightAmax};
use crate::error::{Error, Result};
use crate::input::layout::{ExpertProj, Layout};
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
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

/// Data of one tensor to write, borrowed from the statistics.
#[derive(Debug, Clone, Copy)]
enum Data<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    U64(&'a [u64]),
    /// Bytes as they are, of any dtype (for tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Raw(Dtype, &'a [u8]),
}

impl Data<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Data::F32(_) => Dtype::F32,
            Data::F64(_) => Dtype::F64,
            Data::U64(_) => Dtype::U64,
            Data::Raw(d, _) => *d,
        }
    }

    /// Elements (bytes for `Raw`).
    fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::U64(v) => v.len(),
            Data::Raw(_, v) => v.len(),
        }
    }

    fn byte_len(&self) -> usize {
        match self {
            Data::Raw(_, v) => v.len(),
            d => d.len() * d.dtype().bitsize() / 8,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Raw(_, v) => v.to_vec(),
        }
    }
}

/// One tensor of a file being written.
#[derive(Debug, Clone)]
struct Item<'a> {
    key: String,
    shape: Vec<usize>,
    data: Data<'a>,
}

/// Writes `stats` (HF module names) as a v1 `.stats.safetensors` file, or zstd-compressed
/// (level [`ZSTD_LEVEL`], the whole file) when `compress`.
///
/// Keys per §7.2/7.3: `input_amax` F32 `[]`, `input_amax_ch` F32 `[in]`, `input_sum_sq` F64
/// `[in]`, `input_sum` F64 `[in]`, `input_mean_sq` F32 `[in]`, `token_count` U64 `[]`,
/// `weight_amax` F32 `[]`, and `k_cache_amax` / `v_cache_amax` F32 `[]` on the attention
/// module. Only per-tensor weight amax are written: static per-block weight amax
/// ([`WeightAmax::Blocks`]) are not part of the schema and are left out.
///
/// The bytes are deterministic: no timestamps, header keys sorted by name, data ordered by
/// element size then name (8-byte values stay aligned). Statistics breaking the schema's
/// invariants are refused (a bad-input error naming the module: they came from the inputs),
/// so [`read_native`] reads back whatever this writes; the file appears under `path` only once
/// complete (written to a temporary file in the same directory, then renamed).
pub fn write_native(
    path: &Path,
    stats: &ActivationStats,
    meta: &NativeMeta,
    compress: bool,
) -> Result<()> {
    if !EXPERT_INPUT_AMAX.contains(&meta.expert_input_amax.as_str()) {
        return Err(Error::other(format!(
            "expert_input_amax '{}' is not one of {}",
            meta.expert_input_amax,
            EXPERT_INPUT_AMAX.join(", ")
        )));
    }
    let mut items = Vec::new();
    for (module, m) in &stats.modules {
        check(module, "", m).map_err(|(msg, hint)| {
            Error::bad_input(format!("{}: refusing to write: {msg}", path.display()))
                .with_hint(hint)
        })?;
        let weight = match &m.weight_amax {
            Some(WeightAmax::Tensor(w)) => Some(Data::F32(std::slice::from_ref(w))),
            _ => None,
        };
        let data = [
            (Stat::InputAmax, one(&m.input_amax).map(Data::F32)),
            (Stat::InputAmaxCh, m.input_amax_ch.as_deref().map(Data::F32)),
            (Stat::InputSumSq, m.input_sum_sq.as_deref().map(Data::F64)),
            (Stat::InputSum, m.input_sum.as_deref().map(Data::F64)),
            (Stat::InputMeanSq, m.input_mean_sq.as_deref().map(Data::F32)),
            (Stat::TokenCount, one(&m.token_count).map(Data::U64)),
            (Stat::WeightAmax, weight),
            (Stat::KCache, one(&m.k_cache_amax).map(Data::F32)),
            (Stat::VCache, one(&m.v_cache_amax).map(Data::F32)),
        ];
        for (stat, data) in data {
            let Some(data) = data else { continue };
            let key = format!("{module}.{}", stat.name());
            let shape = vec![data.len(); usize::from(stat.per_channel())]; // [] or [in]
            items.push(Item { key, shape, data });
        }
    }
    let meta_json = json!({
        "name_scheme": "hf",
        "producer": {
            "tool": "shardquant",
            "tool_version": env!("CARGO_PKG_VERSION"),
            "source_format": meta.source_format,
            "source_files": meta.source_files.iter().map(|p| json!({"path": p})).collect::<Vec<_>>(),
        },
        "expert_input_amax": meta.expert_input_amax,
        "notes": meta.notes,
    });
    let metadata = [
        ("format", FORMAT.to_string()),
        ("format_version", FORMAT_VERSION.to_string()),
        ("meta", meta_json.to_string()),
    ];
    write_file(path, items, &metadata, compress)
}

/// A present scalar as a one-element slice.
fn one<T>(v: &Option<T>) -> Option<&[T]> {
    v.as_ref().map(std::slice::from_ref)
}

/// Writes tensors and `__metadata__` as a safetensors file (zstd-compressed when `compress`),
/// through a temporary file renamed into place.
fn write_file(
    path: &Path,
    mut items: Vec<Item<'_>>,
    metadata: &[(&str, String)],
    compress: bool,
) -> Result<()> {
    let size = |i: &Item<'_>| i.data.dtype().bitsize();
    items.sort_by(|a, b| size(b).cmp(&size(a)).then_with(|| a.key.cmp(&b.key)));
    let mut offsets = BTreeMap::new();
    let mut at = 0usize;
    for item in &items {
        let end = at + item.data.byte_len();
        offsets.insert(item.key.as_str(), (item, [at, end]));
        at = end;
    }
    let mut header = Map::new();
    let md = metadata.iter().map(|(k, v)| (k.to_string(), json!(v)));
    header.insert("__metadata__".into(), Value::Object(md.collect()));
    for (key, (item, span)) in offsets {
        let dtype = item.data.dtype();
        let info = json!({"dtype": dtype, "shape": item.shape, "data_offsets": span});
        header.insert(key.to_string(), info);
    }
    let mut header = Value::Object(header).to_string().into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let total = (8 + header.len() + at) as u64;

    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let body = |w: &mut dyn Write| -> std::io::Result<()> {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        items.iter().try_for_each(|i| w.write_all(&i.data.bytes()))
    };
    let written = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        if compress {
            let mut enc = zstd::Encoder::new(&mut w, ZSTD_LEVEL)?;
            enc.include_checksum(true)?;
            enc.include_contentsize(true)?;
            enc.set_pledged_src_size(Some(total))?;
            body(&mut enc)?;
            enc.finish()?;
        } else {
            body(&mut w)?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::output_io("writing", path, e)
    })
}

/// The bytes of a statistics file: the mapping of a plain file, or a decompressed copy.
enum Bytes {
    Map(memmap2::Mmap),
    Heap(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Heap(v) => v,
        }
    }
}

/// Maps a plain file, or decompresses a zstd one (at most `limit` bytes).
fn load(path: &Path, limit: u64) -> Result<Bytes> {
    let open = || {
        File::open(path).map_err(|e| {
            Error::input_io("opening statistics file", path, e).with_hint("check the --stats path")
        })
    };
    let mut head = Vec::new();
    let read = open()?.take(18).read_to_end(&mut head); // 18: the longest zstd frame header
    read.map_err(|e| Error::input_io("reading", path, e))?;
    if !head.starts_with(&ZSTD_MAGIC) {
        // SAFETY: read-only mapping; as for every input, the file must not be modified while
        // shardquant runs (see `StatsFile::open`).
        let map = unsafe { memmap2::Mmap::map(&open()?) };
        return Ok(Bytes::Map(
            map.map_err(|e| Error::input_io("mapping", path, e))?,
        ));
    }
    let compressed = std::fs::metadata(path)
        .map_err(|e| Error::input_io("reading", path, e))?
        .len();
    let limit = limit.min(compressed.saturating_mul(MAX_RATIO).max(RATIO_FLOOR));
    let too_big = || {
        let limit = match limit {
            l if l >= 1 << 30 => format!("{} GiB", l >> 30),
            l if l >= 1 << 20 => format!("{} MiB", l >> 20),
            l => format!("{l} bytes"),
        };
        Error::bad_input(format!(
            "{}: decompresses to more than {limit}, the limit for compressed statistics \
             ({} GiB, and {MAX_RATIO} times the compressed size)",
            path.display(),
            MAX_DECOMPRESSED >> 30
        ))
        .with_hint("decompress it with `zstd -d` and pass the .stats.safetensors file")
    };
    let declared = zstd::zstd_safe::get_frame_content_size(&head)
        .ok()
        .flatten();
    if declared.is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(MAX_RESERVE) as usize);
    zstd::Decoder::new(open()?)
        .and_then(|d| d.take(limit + 1).read_to_end(&mut buf))
        .map_err(|e| {
            let msg = format!("{}: zstd data cannot be decompressed: {e}", path.display());
            Error::bad_input(msg).with_hint(DAMAGED)
        })?;
    if buf.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(Bytes::Heap(buf))
}

/// One module's statistics from a file, and the modules that receive them.
struct Group {
    /// What errors name: the module key, and ` (expert E)` for a row of a fused tensor.
    label: String,
    suffix: String,
    targets: Vec<String>,
    stats: ModuleStats,
}

/// Reads a v1 file (plain or zstd-compressed) into `stats`, merging by the schema's rules
/// through [`ActivationStats::merge_input`], [`ActivationStats::merge_kv`],
/// [`ActivationStats::merge_weight`] and [`ActivationStats::merge_channels`] (amax: max; sums
/// and counts: add), and returns the file's provenance. The caller records the path in
/// [`ActivationStats::sources`].
///
/// Keys naming a module the model lacks go to [`ActivationStats::unmatched`]; unknown
/// statistics to [`ActivationStats::ignored`]. 3-D fused expert keys under the layout's
/// `experts.stats_module` (`….gate_up_proj.<stat>` `[E]` / `[E, in]`, `….down_proj.<stat>`)
/// are expanded to the gate and up (resp. down) modules of every expert. The §7.3 invariants
/// are checked (finite non-negative values, `token_count` 0 without input statistics,
/// `input_amax == max(input_amax_ch)`, per-channel length == the module's `in_features`)
/// before anything is merged; a violation, a higher major `format_version` or a damaged file is
/// an error naming the file, the key and a remedy. Compressed files are decompressed in
/// memory, at most [`MAX_DECOMPRESSED`] bytes.
pub fn read_native(
    path: &Path,
    layout: &Layout,
    model: &ModelNames,
    stats: &mut ActivationStats,
) -> Result<NativeMeta> {
    read_native_limited(path, layout, model, stats, MAX_DECOMPRESSED)
}

fn read_native_limited(
    path: &Path,
    layout: &Layout,
    model: &ModelNames,
    stats: &mut ActivationStats,
    limit: u64,
) -> Result<NativeMeta> {
    let bad =
        |(msg, hint): Fail| Error::bad_input(format!("{}: {msg}", path.display())).with_hint(hint);
    let bytes = load(path, limit)?;
    let (n, metadata) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad((format!("not a valid safetensors file: {e}"), DAMAGED)))?;
    let md = metadata.metadata().clone().unwrap_or_default();
    let version = md.get("format_version").map_or("", String::as_str);
    match version.split('.').next().and_then(|m| m.parse::<u32>().ok()) {
        _ if md.get("format").map(String::as_str) != Some(FORMAT) => Err((
            format!("no \"format\": \"{FORMAT}\" in __metadata__: not a shardquant statistics file"),
            "pass a file in another format as it is (the format is detected), or convert it with `shardquant stats import`",
        )),
        Some(1) => Ok(()),
        Some(major) if major > 1 => Err((
            format!("format_version \"{version}\" is newer than this shardquant reads ({FORMAT_VERSION})"),
            "upgrade shardquant, or write the statistics as format version 1",
        )),
        _ => Err((format!("format_version \"{version}\" is not a version of {FORMAT}"), REMAKE)),
    }
    .map_err(bad)?;
    let (meta, aliases) = parse_meta(md.get("meta"), stats)
        .map_err(|msg| bad((format!("__metadata__ \"meta\": {msg}"), REMAKE)))?;

    let tensors: BTreeMap<String, &TensorInfo> = metadata.tensors().into_iter().collect();
    let mut by_module: BTreeMap<String, Vec<(Stat, String, &TensorInfo)>> = BTreeMap::new();
    for (key, info) in tensors {
        match key.rsplit_once('.').map(|(m, s)| (m, s, Stat::parse(s))) {
            Some((module, _, Some(stat))) => {
                let list = by_module.entry(module.to_string()).or_default();
                list.push((stat, key.clone(), info));
            }
            Some((_, "kv_cache_amax", None)) => {
                stats
                    .ignored
                    .push(format!("{key}: MLA kv_cache_amax is not used yet"));
            }
            _ => stats
                .ignored
                .push(format!("{key}: not a statistic of {FORMAT} v1")),
        }
    }

    let data = &bytes[8 + n..];
    let mut groups = Vec::new();
    for (module, list) in by_module {
        let place = classify(&module, layout, model);
        let (fused, rows) = match place {
            Some(Place::Fused { layer, .. }) => (true, model.experts[&layer].len()),
            _ => (false, 1),
        };
        let attention = model.attention.contains(&module);
        let mut rows = vec![ModuleStats::default(); rows];
        let mut any = false;
        for (stat, key, info) in list {
            if stat.kv() != attention || (!attention && place.is_none()) {
                stats.unmatched.push(key);
                continue;
            }
            let bytes = &data[info.data_offsets.0..info.data_offsets.1];
            decode(&mut rows, fused, stat, &key, info, bytes).map_err(bad)?;
            any = true;
        }
        let Some(Place::Fused { layer, projs }) = place.filter(|_| any) else {
            let (label, suffix) = (module.clone(), String::new());
            let (targets, stats) = (vec![module], rows.remove(0));
            if any {
                groups.push(Group {
                    label,
                    suffix,
                    targets,
                    stats,
                });
            }
            continue;
        };
        for (expert, mut row) in rows.into_iter().enumerate() {
            let suffix = format!(" (expert {expert})");
            if row.token_count == Some(0) {
                let nonzero = inputs(&row)
                    .into_iter()
                    .find_map(|(s, v)| Some((s, v.into_iter().find(|&x| x != 0.0)?)));
                if let Some((stat, x)) = nonzero {
                    return Err(bad((
                        format!("'{module}.{}'{suffix} holds {x} but '{module}.token_count'{suffix} is 0 (the expert saw no calibration tokens)", stat.name()),
                        "the row of an expert that saw no tokens must be all zeros; fix the token count or the statistics",
                    )));
                }
                let weight_amax = row.weight_amax.take();
                row = ModuleStats {
                    token_count: Some(0),
                    weight_amax,
                    ..Default::default()
                };
            }
            let spec = layout
                .experts
                .as_ref()
                .expect("fused experts come from the layout");
            let targets: Vec<String> = projs
                .iter()
                .filter_map(|&p| spec.module_name(layer, expert, p))
                .filter(|m| model.linears.contains_key(m))
                .collect();
            if targets.is_empty() {
                stats.unmatched.push(format!("{module}.*{suffix}"));
                continue;
            }
            groups.push(Group {
                label: module.clone(),
                suffix,
                targets,
                stats: row,
            });
        }
    }
    for (alias, target) in aliases {
        let group = groups
            .iter_mut()
            .find(|g| g.suffix.is_empty() && g.label == target);
        match group {
            Some(g) if model.linears.contains_key(&alias) => g.targets.push(alias),
            _ => stats.unmatched.push(format!("alias {alias} -> {target}")),
        }
    }

    let mut receivers: HashMap<&str, String> = HashMap::new();
    for g in &groups {
        let width = check(&g.label, &g.suffix, &g.stats).map_err(bad)?;
        let source = format!("{}{}", g.label, g.suffix);
        for target in &g.targets {
            if let Some(before) = receivers.insert(target, source.clone()) {
                return Err(bad((
                    format!("{target} receives statistics from both '{before}' and '{source}'"),
                    "give each module's statistics once (per-expert keys or the fused key, not both)",
                )));
            }
            let cols = model.linears.get(target).map(|&(_, c)| c);
            if let (Some(width), Some(cols)) = (width, cols.filter(|&c| Some(c) != width)) {
                return Err(bad((
                    format!("'{}.*'{} holds {width} channels per statistic, but {target} has in_features {cols}", g.label, g.suffix),
                    OTHER_MODEL,
                )));
            }
        }
    }
    for g in &groups {
        for target in &g.targets {
            merge(stats, target, &g.stats).map_err(|m| bad((m, OTHER_MODEL)))?;
        }
    }
    Ok(meta)
}

/// Where a module key's statistics go.
enum Place {
    /// A linear of the model (or an attention module, for KV statistics).
    Linear,
    /// 3-D fused experts of one layer: the given projections of every expert.
    Fused {
        layer: usize,
        projs: &'static [ExpertProj],
    },
}

fn classify(module: &str, layout: &Layout, model: &ModelNames) -> Option<Place> {
    if model.linears.contains_key(module) {
        return Some(Place::Linear);
    }
    let (parent, child) = module.rsplit_once('.')?;
    let caps = layout.experts.as_ref()?.stats_module.matches(parent)?;
    let layer = caps.layer.filter(|l| model.experts.contains_key(l))?;
    let projs: &'static [ExpertProj] = match child {
        "gate_up_proj" => &[ExpertProj::Gate, ExpertProj::Up],
        "down_proj" => &[ExpertProj::Down],
        _ => return None,
    };
    Some(Place::Fused { layer, projs })
}

/// Decodes one tensor into `rows` (one per expert of a fused 3-D tensor, else one) after
/// checking its dtype and shape.
fn decode(
    rows: &mut [ModuleStats],
    fused: bool,
    stat: Stat,
    key: &str,
    info: &TensorInfo,
    bytes: &[u8],
) -> Result<(), Fail> {
    let (shape, e) = (info.shape.as_slice(), rows.len());
    let lead: &[usize] = if fused { &[e] } else { &[] };
    let width = if stat.per_channel() {
        (shape.len() == lead.len() + 1 && shape.starts_with(lead)).then(|| shape[lead.len()])
    } else {
        (shape == lead || (!fused && shape == [1])).then_some(1)
    };
    let Some(width) = width else {
        let want = match (fused, stat.per_channel()) {
            (false, false) => "[]".to_string(),
            (false, true) => "[in_features]".to_string(),
            (true, false) => format!("[{e}] (one value per expert)"),
            (true, true) => format!("[{e}, in_features] (one row per expert)"),
        };
        let msg = format!(
            "'{key}' has shape {shape:?}; {} must have shape {want}",
            stat.name()
        );
        return Err((msg, OTHER_MODEL));
    };
    let le8 = bytes
        .chunks_exact(8)
        .map(|c| <[u8; 8]>::try_from(c).expect("8 bytes"));
    let counts = stat == Stat::TokenCount;
    let values: Vec<f64> = match (counts, info.dtype, StatDtype::from_safetensors(info.dtype)) {
        (true, Dtype::U64, _) => {
            let counts = le8.map(u64::from_le_bytes);
            rows.iter_mut()
                .zip(counts)
                .for_each(|(m, c)| m.token_count = Some(c));
            return Ok(());
        }
        (false, Dtype::F64, _) => le8.map(f64::from_le_bytes).collect(),
        (false, _, Some(d)) => d.decode(bytes).map(f64::from).collect(),
        (_, dtype, _) => {
            let want = ["F32, F64, BF16 or F16", "U64"][usize::from(counts)];
            let msg = format!(
                "'{key}' has dtype {dtype:?}; {} must be {want}",
                stat.name()
            );
            return Err((msg, REMAKE));
        }
    };
    for (r, m) in rows.iter_mut().enumerate() {
        let v = &values[r * width..(r + 1) * width];
        let narrow = || v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let first = v.first().map_or(0.0, |&x| x as f32);
        match stat {
            Stat::InputAmax => m.input_amax = Some(first),
            Stat::InputAmaxCh => m.input_amax_ch = Some(narrow()),
            Stat::InputSumSq => m.input_sum_sq = Some(v.to_vec()),
            Stat::InputSum => m.input_sum = Some(v.to_vec()),
            Stat::InputMeanSq => m.input_mean_sq = Some(narrow()),
            Stat::TokenCount => {}
            Stat::WeightAmax => m.weight_amax = Some(WeightAmax::Tensor(first)),
            Stat::KCache => m.k_cache_amax = Some(first),
            Stat::VCache => m.v_cache_amax = Some(first),
        }
    }
    Ok(())
}

/// The input statistics present in `m`, widened to f64.
fn inputs(m: &ModuleStats) -> Vec<(Stat, Vec<f64>)> {
    let wide = |v: &Vec<f32>| v.iter().map(|&x| f64::from(x)).collect();
    let all = [
        (Stat::InputAmax, m.input_amax.map(|a| vec![f64::from(a)])),
        (Stat::InputAmaxCh, m.input_amax_ch.as_ref().map(wide)),
        (Stat::InputSumSq, m.input_sum_sq.clone()),
        (Stat::InputSum, m.input_sum.clone()),
        (Stat::InputMeanSq, m.input_mean_sq.as_ref().map(wide)),
    ];
    all.into_iter().filter_map(|(s, v)| Some((s, v?))).collect()
}

/// Checks one module's statistics against §7.3: finite, non-negative values (`input_sum` may
/// be negative), no input statistics with `token_count` 0, `input_amax == max(input_amax_ch)`,
/// one channel count. Returns that channel count, if any per-channel statistic is present.
fn check(label: &str, suffix: &str, m: &ModuleStats) -> Result<Option<usize>, Fail> {
    let key = |stat: Stat| format!("'{label}.{}'{suffix}", stat.name());
    let weight = match m.weight_amax {
        Some(WeightAmax::Tensor(w)) => Some(w),
        _ => None,
    };
    let others = [
        (Stat::WeightAmax, weight),
        (Stat::KCache, m.k_cache_amax),
        (Stat::VCache, m.v_cache_amax),
    ];
    let others = others
        .into_iter()
        .filter_map(|(s, v)| Some((s, vec![f64::from(v?)])));
    let mut width: Option<(Stat, usize)> = None;
    for (stat, v) in inputs(m).into_iter().chain(others) {
        let signed = stat == Stat::InputSum;
        let bad = v
            .iter()
            .enumerate()
            .find(|(_, x)| !x.is_finite() || (!signed && **x < 0.0));
        if let Some((i, x)) = bad {
            let at = stat.per_channel().then(|| format!(" at channel {i}"));
            let (at, what) = (
                at.unwrap_or_default(),
                ["finite and non-negative", "finite"],
            );
            let what = what[usize::from(signed)];
            return Err((
                format!("{} holds {x}{at}; statistics must be {what}", key(stat)),
                "importers write a missing value or token_count 0 for an uncalibrated module, never NaN, infinite or negative values; re-create the file with `shardquant stats import`",
            ));
        }
        match width {
            Some((first, n)) if stat.per_channel() && n != v.len() => {
                let msg = format!(
                    "{} has {} channels but {} has {n}",
                    key(stat),
                    v.len(),
                    key(first)
                );
                return Err((msg, REMAKE));
            }
            None if stat.per_channel() => width = Some((stat, v.len())),
            _ => {}
        }
    }
    if let Some((stat, _)) = inputs(m).first().filter(|_| m.token_count == Some(0)) {
        return Err((
            format!(
                "{} is present but {} is 0 (the module saw no calibration tokens)",
                key(*stat),
                key(Stat::TokenCount)
            ),
            "a module that saw no tokens has no input statistics; drop them or fix the token count",
        ));
    }
    if let (Some(a), Some(ch)) = (m.input_amax, &m.input_amax_ch) {
        let max = ch.iter().fold(0.0f32, |x, &y| x.max(y));
        if a != max {
            return Err((
                format!(
                    "{} = {a} but the max of {} is {max}; they must be equal",
                    key(Stat::InputAmax),
                    key(Stat::InputAmaxCh)
                ),
                "write input_amax as the max of input_amax_ch, or leave one of them out",
            ));
        }
    }
    Ok(width.map(|(_, n)| n))
}

/// Merges one module's statistics from a file into `stats`.
fn merge(stats: &mut ActivationStats, module: &str, m: &ModuleStats) -> Result<(), String> {
    if let Some(a) = m.input_amax {
        stats.merge_input(module, a);
    }
    for (is_k, v) in [(true, m.k_cache_amax), (false, m.v_cache_amax)] {
        if let Some(v) = v {
            stats.merge_kv(module, is_k, v);
        }
    }
    if let Some(WeightAmax::Tensor(w)) = m.weight_amax {
        let before = stats.module(module).and_then(|s| s.weight_amax.as_ref());
        if let Some(WeightAmax::Tensor(old)) = before.filter(|b| **b != WeightAmax::Tensor(w)) {
            return Err(format!(
                "weight_amax of {module} is {w} here but {old} in other statistics: they were made on different checkpoints"
            ));
        }
        stats.merge_weight(module, WeightAmax::Tensor(w))?;
    }
    stats.merge_channels(module, m)
}

/// Parses the JSON `meta` (absent: defaults); returns the provenance and the aliases.
fn parse_meta(
    text: Option<&String>,
    stats: &mut ActivationStats,
) -> Result<(NativeMeta, BTreeMap<String, String>), String> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Meta {
        name_scheme: Option<String>,
        producer: Producer,
        notes: Vec<String>,
        expert_input_amax: Option<String>,
        aliases: BTreeMap<String, String>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Producer {
        source_format: String,
        source_files: Vec<SourceFile>,
    }
    #[derive(Deserialize)]
    struct SourceFile {
        path: String,
    }
    let m: Meta = match text {
        Some(t) => serde_json::from_str(t).map_err(|e| format!("invalid JSON: {e}"))?,
        None => Meta::default(),
    };
    if let Some(s) = m.name_scheme.filter(|s| s != "hf") {
        return Err(format!(
            "name_scheme \"{s}\" is not \"hf\" (HF module names)"
        ));
    }
    let mut expert_input_amax = m.expert_input_amax.unwrap_or_else(|| "unknown".into());
    if !EXPERT_INPUT_AMAX.contains(&expert_input_amax.as_str()) {
        let note = format!(
            "meta.expert_input_amax \"{expert_input_amax}\" is unknown; read as \"unknown\""
        );
        stats.ignored.push(note);
        expert_input_amax = "unknown".into();
    }
    let (format, files) = (m.producer.source_format, m.producer.source_files);
    let meta = NativeMeta {
        source_format: format,
        source_files: files.into_iter().map(|f| f.path).collect(),
        notes: m.notes,
        expert_input_amax,
    };
    Ok((meta, m.aliases))
}

#[cfg(test)]
mod tests;
