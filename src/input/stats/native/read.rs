//! The reader of v1 files: [`read_native`].

use super::check::{check, inputs};
use super::{
    Fail, NativeMeta, Stat, DAMAGED, EXPERT_INPUT_AMAX, FORMAT, FORMAT_VERSION, MAX_DECOMPRESSED,
    MAX_RATIO, MAX_RESERVE, OTHER_MODEL, RATIO_FLOOR, REMAKE, ZSTD_MAGIC,
};
use crate::error::{Error, Result};
use crate::input::layout::{ExpertProj, Layout};
use crate::input::stats::{ActivationStats, ModelNames, ModuleStats, StatDtype, WeightAmax};
use crate::progress::human_bytes;
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::Path;

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
        Error::bad_input(format!(
            "{}: decompresses to more than {}, the limit for compressed statistics \
             ({}, and {MAX_RATIO} times the compressed size)",
            path.display(),
            human_bytes(limit),
            human_bytes(MAX_DECOMPRESSED)
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

pub(super) fn read_native_limited(
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
