//! Opening a checkpoint directory and checking it: every problem found is reported at once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorInfo;
use safetensors::SafeTensors;
use serde_json::{Map, Value};

use super::diagnose::{describe_header_error, list_names, list_plain, Fix, MAX_NAMES};
use super::lane::{Lane, Resolved};
use super::reader::{Shard, TensorEntry};
use super::{INDEX_FILE_NAME, SINGLE_FILE_NAME};
use crate::error::{Error, Result};
use crate::json_keys::first_duplicate;

/// How many problems one error lists before it only counts the rest.
const MAX_LISTED: usize = 20;

/// The largest `model.safetensors.index.json` read: real ones are a few MB (DeepSeek-V3's,
/// with 91,000 tensors, is 9 MB), so anything larger is not an index.
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// A validated checkpoint, ready to become a [`super::Checkpoint`].
pub(super) struct Loaded {
    pub shards: Vec<Shard>,
    pub tensors: Vec<TensorEntry>,
    pub index_metadata: Option<Map<String, Value>>,
    /// File names in the directory that hold the weights.
    pub weight_files: Vec<String>,
    /// The directory, resolved: what else may be read of it.
    pub lane: Lane,
}

/// Problems found so far.
#[derive(Default)]
struct Problems(Vec<(String, Fix)>);

impl Problems {
    fn push(&mut self, message: String, fix: Fix) {
        self.0.push((message, fix));
    }

    /// One error listing every problem, or `Ok` if there is none.
    fn into_result(self, dir: &Path) -> Result<()> {
        let mut hints: Vec<Fix> = Vec::new();
        for (_, fix) in &self.0 {
            if !hints.contains(fix) {
                hints.push(*fix);
            }
        }
        let hint = hints
            .iter()
            .map(|f| f.hint())
            .collect::<Vec<_>>()
            .join("\n  hint: ");
        match self.0.len() {
            0 => Ok(()),
            1 => Err(Error::bad_input(self.0[0].0.clone()).with_hint(hint)),
            n => {
                let mut message = format!("checkpoint {} has {} problems:", dir.display(), n);
                for (problem, _) in self.0.iter().take(MAX_LISTED) {
                    message.push_str("\n  - ");
                    message.push_str(problem);
                }
                if n > MAX_LISTED {
                    message.push_str(&format!("\n  ... and {} more", n - MAX_LISTED));
                }
                Err(Error::bad_input(message).with_hint(hint))
            }
        }
    }
}

/// A shard whose header passed validation.
struct Parsed {
    shard: Shard,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    /// Tensors ordered by data offset (then name, for zero-length tensors).
    entries: Vec<(String, TensorInfo)>,
}

/// Opens and validates the checkpoint in `dir`.
pub(super) fn load(dir: &Path) -> Result<Loaded> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        Error::input_io("opening", dir, e)
            .with_hint("pass the directory that holds config.json and the .safetensors files")
    })?;
    if !meta.is_dir() {
        return Err(
            Error::bad_input(format!("{} is not a directory", dir.display()))
                .with_hint("pass the directory that holds config.json and the .safetensors files"),
        );
    }
    let lane = Lane::new(dir).map_err(|e| Error::input_io("opening", dir, e))?;
    let has_index = dir.join(INDEX_FILE_NAME).symlink_metadata().is_ok();
    let has_single = dir.join(SINGLE_FILE_NAME).symlink_metadata().is_ok();
    if has_index {
        load_sharded(lane, has_single)
    } else if has_single {
        load_single(lane)
    } else {
        Err(neither(dir))
    }
}

/// What a weight file that resolved to `what` (anything but a regular file inside the
/// directory) is, and what to do about it.
fn refusal(lane: &Lane, path: &Path, what: &Resolved) -> (String, Fix) {
    let fix = match what {
        Resolved::Outside { .. } | Resolved::LinkedDir { .. } => Fix::Lane,
        _ => Fix::Redownload,
    };
    (lane.refusal(path, what).message().to_owned(), fix)
}

/// The error for a directory with neither an index nor a `model.safetensors`.
fn neither(dir: &Path) -> Error {
    let found: Vec<String> = list_file_names(dir)
        .into_iter()
        .filter(|n| n.ends_with(".safetensors") || n.ends_with(".bin"))
        .collect();
    let mut message = format!(
        "{}: neither {} nor {} is there",
        dir.display(),
        INDEX_FILE_NAME,
        SINGLE_FILE_NAME
    );
    let hint = if found.is_empty() {
        "pass a HuggingFace checkpoint directory (with model.safetensors or model.safetensors.index.json)"
    } else {
        message.push_str(&format!(" (found {})", list_names(&found, found.len())));
        if found.iter().all(|n| n.ends_with(".bin")) {
            "only PyTorch .bin weights are there: convert them to safetensors first"
        } else {
            "if these are the shards of a sharded checkpoint, its index is missing: download \
             model.safetensors.index.json too"
        }
    };
    Error::bad_input(message).with_hint(hint)
}

/// A single-file checkpoint.
fn load_single(lane: Lane) -> Result<Loaded> {
    let path = lane.dir().join(SINGLE_FILE_NAME);
    let parsed = match lane.resolve(&path) {
        Resolved::File { .. } => parse_shard(path),
        other => Err(refusal(&lane, &path, &other)),
    }
    .map_err(|(message, fix)| Error::bad_input(message).with_hint(fix.hint()))?;
    if parsed.entries.is_empty() {
        return Err(
            Error::bad_input(format!("{}: holds no tensors", parsed.shard.path.display()))
                .with_hint(Fix::Redownload.hint()),
        );
    }
    Ok(assemble(
        vec![parsed],
        None,
        vec![SINGLE_FILE_NAME.to_owned()],
        lane,
    ))
}

/// A sharded checkpoint: the index and every shard it names.
fn load_sharded(lane: Lane, has_single: bool) -> Result<Loaded> {
    let dir = lane.dir();
    let index_path = dir.join(INDEX_FILE_NAME);
    let text = lane
        .read_small(INDEX_FILE_NAME, MAX_INDEX_BYTES)?
        .ok_or_else(|| {
            Error::input_io(
                "reading",
                &index_path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
            .with_hint(Fix::Redownload.hint())
        })?;
    let (weight_map, index_metadata) = parse_index(&index_path, &text)?;
    // file name -> tensor names the index puts there; sorted by file name.
    let mut files: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, file) in &weight_map {
        files.entry(file.clone()).or_default().push(name.as_str());
    }
    // Shard files the index does not name are read too: their tensors would otherwise be lost
    // without a word.
    for name in list_file_names(dir) {
        if looks_like_shard(&name) && !files.contains_key(&name) {
            files.insert(name, Vec::new());
        }
    }

    let mut problems = Problems::default();
    let mut parsed: Vec<Option<Parsed>> = Vec::with_capacity(files.len());
    for (file, names) in &files {
        let path = dir.join(file);
        if !is_plain_file_name(file) {
            problems.push(
                format!(
                    "{}: names the shard {:?} for {}, which is not a plain file name in {}",
                    index_path.display(),
                    file,
                    list_names(names, MAX_NAMES),
                    dir.display()
                ),
                Fix::Mismatch,
            );
            parsed.push(None);
            continue;
        }
        match lane.resolve(&path) {
            Resolved::Missing => {
                problems.push(
                    format!(
                        "{}: shard file is missing; the index lists {} tensor(s) in it: {}",
                        path.display(),
                        names.len(),
                        list_names(names, MAX_NAMES)
                    ),
                    Fix::Redownload,
                );
                parsed.push(None);
            }
            Resolved::File { .. } => match parse_shard(path) {
                Ok(p) if names.is_empty() && p.entries.is_empty() => {
                    problems.push(
                        format!(
                            "{}: shard file that {} does not name",
                            p.shard.path.display(),
                            INDEX_FILE_NAME
                        ),
                        Fix::Mismatch,
                    );
                    parsed.push(None);
                }
                Ok(p) => parsed.push(Some(p)),
                Err((message, fix)) => {
                    problems.push(message, fix);
                    parsed.push(None);
                }
            },
            other => {
                let (message, fix) = refusal(&lane, &path, &other);
                problems.push(
                    if names.is_empty() {
                        message
                    } else {
                        format!(
                            "{} names the shard {:?} for {}, but {}",
                            index_path.display(),
                            file,
                            list_names(names, MAX_NAMES),
                            message
                        )
                    },
                    fix,
                );
                parsed.push(None);
            }
        }
    }

    // Where each tensor really is (indices into `parsed`), and names found in two shards.
    let mut location: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut duplicates: Vec<&str> = Vec::new();
    for (fi, p) in parsed.iter().enumerate() {
        for (name, _) in p.iter().flat_map(|p| &p.entries) {
            let at = location.entry(name.as_str()).or_default();
            at.push(fi);
            if at.len() == 2 {
                duplicates.push(name);
            }
        }
    }
    let shard_path = |fi: usize| {
        parsed[fi]
            .as_ref()
            .map(|p| p.shard.path.display().to_string())
            .unwrap_or_default()
    };
    for name in &duplicates {
        let paths: Vec<String> = location[name].iter().map(|&fi| shard_path(fi)).collect();
        problems.push(
            format!(
                "tensor `{}` is in more than one shard: {}",
                name,
                paths.join(" and ")
            ),
            Fix::Mismatch,
        );
    }

    // Index -> shards.
    let file_index: HashMap<&str, usize> = files
        .keys()
        .enumerate()
        .map(|(i, f)| (f.as_str(), i))
        .collect();
    let mut absent: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (name, file) in &weight_map {
        let fi = file_index[file.as_str()];
        let Some(p) = &parsed[fi] else { continue };
        match location.get(name.as_str()) {
            Some(at) if at.contains(&fi) => {}
            Some(at) => {
                let paths: Vec<String> = at.iter().map(|&o| shard_path(o)).collect();
                problems.push(
                    format!(
                        "{}: the index lists tensor `{}` in this file, but the file does not contain it \
                         (it is in {})",
                        p.shard.path.display(),
                        name,
                        paths.join(" and ")
                    ),
                    Fix::Mismatch,
                );
            }
            None => absent.entry(fi).or_default().push(name),
        }
    }
    for (fi, names) in absent {
        problems.push(
            format!(
                "{}: the index lists {} tensor(s) in this file that the file does not contain: {}",
                shard_path(fi),
                names.len(),
                list_names(&names, MAX_NAMES)
            ),
            Fix::Mismatch,
        );
    }

    // Shards -> index.
    let indexed: HashMap<&str, &str> = weight_map
        .iter()
        .map(|(n, f)| (n.as_str(), f.as_str()))
        .collect();
    for p in parsed.iter().flatten() {
        let unlisted: Vec<&str> = p
            .entries
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !indexed.contains_key(n))
            .collect();
        if !unlisted.is_empty() {
            problems.push(
                format!(
                    "{}: contains {} tensor(s) that {} does not list: {}",
                    p.shard.path.display(),
                    unlisted.len(),
                    INDEX_FILE_NAME,
                    list_names(&unlisted, MAX_NAMES)
                ),
                Fix::Mismatch,
            );
        }
    }

    let mut weight_files: Vec<String> = files.keys().cloned().collect();
    weight_files.push(INDEX_FILE_NAME.to_owned());
    if has_single && !files.contains_key(SINGLE_FILE_NAME) && problems.0.is_empty() {
        let shards: Vec<&Parsed> = parsed.iter().flatten().collect();
        if check_single_agrees(&lane, &shards, &mut problems) {
            weight_files.push(SINGLE_FILE_NAME.to_owned());
        }
    }

    problems.into_result(dir)?;
    Ok(assemble(
        parsed.into_iter().flatten().collect(),
        index_metadata,
        weight_files,
        lane,
    ))
}

/// Both an index and a `model.safetensors` it does not use: the two must hold the same tensors.
/// Returns whether they agree (otherwise a problem has been recorded).
fn check_single_agrees(lane: &Lane, shards: &[&Parsed], problems: &mut Problems) -> bool {
    let dir = lane.dir();
    let path = dir.join(SINGLE_FILE_NAME);
    let single = match lane.resolve(&path) {
        Resolved::File { .. } => parse_shard(path),
        other => Err(refusal(lane, &path, &other)),
    };
    let single = match single {
        Ok(p) => p,
        Err((message, fix)) => {
            problems.push(
                format!("{} (the index does not use this file; delete it?)", message),
                fix,
            );
            return false;
        }
    };
    let in_single: HashMap<&str, &TensorInfo> = single
        .entries
        .iter()
        .map(|(n, i)| (n.as_str(), i))
        .collect();
    let in_shards: HashMap<&str, &TensorInfo> = shards
        .iter()
        .flat_map(|p| &p.entries)
        .map(|(n, i)| (n.as_str(), i))
        .collect();
    let mut differences: Vec<String> = Vec::new();
    for (name, info) in &single.entries {
        match in_shards.get(name.as_str()) {
            None => differences.push(format!("`{}` only in {}", name, SINGLE_FILE_NAME)),
            Some(other) if other.dtype != info.dtype || other.shape != info.shape => {
                differences.push(format!("`{}` differs in dtype or shape", name))
            }
            Some(_) => {}
        }
    }
    for p in shards {
        for (name, _) in &p.entries {
            if !in_single.contains_key(name.as_str()) {
                differences.push(format!("`{}` only in the shards", name));
            }
        }
    }
    if differences.is_empty() {
        return true;
    }
    problems.push(
        format!(
            "{}: has both {} and {}, and they hold different tensors ({} difference(s): {})",
            dir.display(),
            SINGLE_FILE_NAME,
            INDEX_FILE_NAME,
            differences.len(),
            list_plain(&differences, MAX_NAMES)
        ),
        Fix::Ambiguous,
    );
    false
}

/// An index's `weight_map` (tensor name, file name), in file order.
pub(crate) type WeightMap = Vec<(String, String)>;

/// Parses the text of `model.safetensors.index.json` (read from `path`): its `weight_map`
/// (in file order) and `metadata`. A key given twice (a tensor, or `weight_map` itself) is an
/// error: JSON readers would silently keep the last one.
pub(crate) fn parse_index(
    path: &Path,
    text: &[u8],
) -> Result<(WeightMap, Option<Map<String, Value>>)> {
    let bad = |what: String| {
        Error::bad_input(format!("{}: {}", path.display(), what)).with_hint(Fix::Redownload.hint())
    };
    let root: Value =
        serde_json::from_slice(text).map_err(|e| bad(format!("invalid JSON: {}", e)))?;
    if let Some(key) = first_duplicate(text, &[]) {
        return Err(bad(format!("gives the key \"{key}\" twice")));
    }
    if let Some(name) = first_duplicate(text, &["weight_map"]) {
        return Err(bad(format!(
            "\"weight_map\" lists tensor `{name}` twice, so which shard holds it is ambiguous"
        )));
    }
    let Value::Object(mut root) = root else {
        return Err(bad("is not a JSON object".into()));
    };
    let metadata = match root.remove("metadata") {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    };
    let weight_map = match root.remove("weight_map") {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad("\"weight_map\" is not a JSON object".into())),
        None => {
            return Err(bad(
                "has no \"weight_map\" (tensor name -> shard file)".into()
            ))
        }
    };
    if weight_map.is_empty() {
        return Err(bad("\"weight_map\" lists no tensors".into()));
    }
    let mut out = Vec::with_capacity(weight_map.len());
    for (name, file) in weight_map {
        match file {
            Value::String(file) => out.push((name, file)),
            other => {
                return Err(bad(format!(
                    "\"weight_map\" gives tensor `{}` the shard {}, not a file name",
                    name, other
                )))
            }
        }
    }
    Ok((out, metadata))
}

/// The names of the entries of `dir` (those that are UTF-8), sorted.
fn list_file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Whether `name` is named like a HuggingFace shard: `model-00001-of-00003.safetensors`.
fn looks_like_shard(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix("model-")
        .and_then(|n| n.strip_suffix(".safetensors"))
        .and_then(|n| n.split_once("-of-"))
        .is_some_and(|(i, n)| digits(i) && digits(n))
}

/// A name that refers to a file directly inside the checkpoint directory.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Maps one shard and validates its header; on failure, a message that names the file.
fn parse_shard(path: PathBuf) -> std::result::Result<Parsed, (String, Fix)> {
    let shard = Shard::map(path.clone()).map_err(|e| {
        (
            format!("{}: cannot read the shard: {}", path.display(), e),
            Fix::Redownload,
        )
    })?;
    let (data_start, entries) = parse_header(&path, shard.bytes())?;
    Ok(Parsed {
        data_start,
        entries,
        shard,
    })
}

/// A safetensors file's tensors, validated (offsets contiguous and inside `bytes`, byte
/// lengths matching dtype and shape, no name twice) and ordered by data offset, with the
/// offset of its data section; on failure, a message that names `path` and the tensor.
pub(crate) type Header = (usize, Vec<(String, TensorInfo)>);

/// Validates the safetensors file `bytes` read from `path` (see [`Header`]).
pub(crate) fn parse_header(
    path: &Path,
    bytes: &[u8],
) -> std::result::Result<Header, (String, Fix)> {
    match SafeTensors::read_metadata(bytes) {
        Ok((n, metadata)) => {
            if let Some(name) = first_duplicate(&bytes[8..8 + n], &[]) {
                return Err((
                    format!(
                        "{}: invalid safetensors file: the header gives `{}` twice, and readers \
                         disagree on which entry counts",
                        path.display(),
                        name
                    ),
                    Fix::Redownload,
                ));
            }
            let mut entries: Vec<(String, TensorInfo)> = metadata
                .tensors()
                .into_iter()
                .map(|(name, info)| (name, info.clone()))
                .collect();
            entries.sort_by(|a, b| (a.1.data_offsets, &a.0).cmp(&(b.1.data_offsets, &b.0)));
            Ok((n + 8, entries))
        }
        Err(err) => Err(describe_header_error(path, bytes, &err)),
    }
}

/// Puts validated shards together: tensors ordered by (shard, offset).
fn assemble(
    parsed: Vec<Parsed>,
    index_metadata: Option<Map<String, Value>>,
    weight_files: Vec<String>,
    lane: Lane,
) -> Loaded {
    let mut shards = Vec::with_capacity(parsed.len());
    let mut tensors = Vec::new();
    for (si, p) in parsed.into_iter().enumerate() {
        for (name, info) in p.entries {
            let (s, e) = info.data_offsets;
            tensors.push(TensorEntry {
                name,
                dtype: info.dtype,
                shape: info.shape,
                shard: si,
                start: p.data_start + s,
                len: e - s,
            });
        }
        shards.push(p.shard);
    }
    Loaded {
        shards,
        tensors,
        index_metadata,
        weight_files,
        lane,
    }
}
