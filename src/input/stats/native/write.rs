//! The writer of v1 files: [`write_native`].

use super::check::check;
use super::{NativeMeta, Stat, EXPERT_INPUT_AMAX, FORMAT, FORMAT_VERSION, ZSTD_LEVEL};
use crate::error::{Error, Result};
use crate::input::stats::{ActivationStats, WeightAmax};
use safetensors::Dtype;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Data of one tensor to write, borrowed from the statistics.
#[derive(Debug, Clone, Copy)]
pub(super) enum Data<'a> {
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
pub(super) struct Item<'a> {
    pub(super) key: String,
    pub(super) shape: Vec<usize>,
    pub(super) data: Data<'a>,
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
///
/// [`read_native`]: super::read_native
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
pub(super) fn write_file(
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
