//! Entry points for fuzzing the readers of untrusted input, and their seed corpus.
//!
//! Every file shardquant reads comes from somewhere else: safetensors headers and the index
//! of a downloaded checkpoint, statistics files made by other tools (ModelOpt amax
//! safetensors, shardquant's own schema plain or zstd-compressed, llama.cpp importance matrices
//! as `.dat` or GGUF, `torch.save` archives and the pickles inside them). Each reader must turn
//! any bytes into a value or an error: never a panic, a hang or a huge allocation.
//!
//! [`TARGETS`] lists one entry point per reader, each taking arbitrary bytes. The `cargo fuzz`
//! targets in `fuzz/` call them, and so does `tests/fuzz_smoke.rs`, which runs every target
//! on [`seeds`] and a few thousand deterministic mutations of them in every `cargo test`.
//! Readers that take a path are given the bytes through a temporary file (in `/dev/shm` when
//! there is one), so what is fuzzed is the code a conversion runs, mapping included.
//!
//! This module is for the fuzzers and the tests; it is not a stable API.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::input::layout::Layout;
use crate::input::stats;
use crate::input::stats::{ActivationStats, ModelNames, ModuleStats, WeightAmax};

/// One fuzz target: a reader of untrusted bytes.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The target's name (also the `cargo fuzz` target's and the corpus directory's).
    pub name: &'static str,
    /// What it reads.
    pub what: &'static str,
    /// Runs the reader on arbitrary bytes and says whether it accepted them. Errors are
    /// expected; panics are bugs.
    pub run: fn(&[u8]) -> bool,
}

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "safetensors_header",
        what: "a checkpoint shard's header: validation and the diagnosis of what is wrong",
        run: safetensors_header,
    },
    Target {
        name: "index_json",
        what: "model.safetensors.index.json",
        run: index_json,
    },
    Target {
        name: "stats_modelopt",
        what: "ModelOpt amax safetensors, imported for a Qwen3-MoE model",
        run: stats_modelopt,
    },
    Target {
        name: "stats_native",
        what: "shardquant's statistics schema v1, plain or zstd-compressed",
        run: stats_native,
    },
    Target {
        name: "imatrix_dat",
        what: "a llama.cpp legacy imatrix .dat",
        run: imatrix_dat,
    },
    Target {
        name: "imatrix_gguf",
        what: "a llama.cpp GGUF imatrix (and the GGUF reader under it)",
        run: imatrix_gguf,
    },
    Target {
        name: "torch_pt",
        what: "a torch.save archive (ZIP, pickle, storages) of statistics",
        run: torch_pt,
    },
    Target {
        name: "pickle",
        what: "the safe pickle interpreter alone",
        run: pickle,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn safetensors_header(data: &[u8]) -> bool {
    let path = Path::new("fuzz.safetensors");
    let Ok((start, entries)) = crate::input::checkpoint::parse_header(path, data) else {
        return false;
    };
    // Every validated tensor must lie inside the buffer.
    let mut sum = 0u8;
    for (_, info) in &entries {
        let (s, e) = info.data_offsets;
        let bytes = &data[start + s..start + e];
        sum = sum.wrapping_add(bytes.first().copied().unwrap_or(0));
    }
    std::hint::black_box(sum);
    true
}

fn index_json(data: &[u8]) -> bool {
    crate::input::checkpoint::parse_index(Path::new("model.safetensors.index.json"), data).is_ok()
}

fn stats_modelopt(data: &[u8]) -> bool {
    with_file("amax.safetensors", data, |path| {
        let Ok(file) = stats::StatsFile::open(path) else {
            return false;
        };
        let mut accepted = true;
        for weights in [false, true] {
            let mut stats = ActivationStats::default();
            let imported = stats::modelopt::import(&file, layout(), model(), weights, &mut stats);
            if imported.is_ok() {
                decode_blocks(&stats);
            }
            accepted &= imported.is_ok();
        }
        accepted
    })
}

fn stats_native(data: &[u8]) -> bool {
    with_file("fuzz.stats.safetensors", data, |path| {
        let mut stats = ActivationStats::default();
        let _ = stats::native::is_native(path);
        let read = stats::native::read_native(path, layout(), model(), &mut stats);
        if read.is_ok() {
            decode_blocks(&stats);
        }
        read.is_ok()
    })
}

fn imatrix_dat(data: &[u8]) -> bool {
    with_file("imatrix.dat", data, |path| {
        stats::foreign::import_imatrix(path, layout(), model(), &mut Default::default()).is_ok()
    })
}

fn imatrix_gguf(data: &[u8]) -> bool {
    with_file("imatrix.gguf", data, |path| {
        if let Ok(g) = stats::gguf::GgufFile::open(path) {
            for t in g.tensors() {
                let _ = g.tensor_f32(&t.name);
            }
        }
        stats::foreign::import_imatrix(path, layout(), model(), &mut Default::default()).is_ok()
    })
}

fn torch_pt(data: &[u8]) -> bool {
    with_file("fuzz.pt", data, |path| {
        stats::foreign::import_pt(path, layout(), model(), true, &mut Default::default()).is_ok()
    })
}

fn pickle(data: &[u8]) -> bool {
    stats::pickle::load(data, "fuzz.pkl").is_ok()
}

/// Reads every per-block weight amax, as the worker that quantizes the weight would.
fn decode_blocks(stats: &ActivationStats) {
    for m in stats.modules.values() {
        if let Some(WeightAmax::Blocks { blocks, .. }) = &m.weight_amax {
            std::hint::black_box(blocks.decode());
        }
    }
}

/// Runs `f` on a temporary file holding `data`, removed afterwards. The name keeps `name`'s
/// extension (some readers detect the format by it) and is unique per process and thread.
/// Panics if the file cannot be written: a fuzz run that tests nothing must not pass.
fn with_file<R>(name: &str, data: &[u8], f: impl FnOnce(&Path) -> R) -> R {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    });
    let path = dir.join(format!(
        "shardquant-fuzz-{}-{:?}-{name}",
        std::process::id(),
        std::thread::current().id()
    ));
    if let Err(e) = std::fs::write(&path, data) {
        panic!("cannot write the fuzz input to {}: {e}", path.display());
    }
    let result = f(&path);
    let _ = std::fs::remove_file(&path);
    result
}

/// The layout the statistics targets map names with (Qwen3-MoE: attention, dense MLP in
/// `mlp_only_layers`, routed experts, KV cache).
fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        Layout::builtin()
            .into_iter()
            .find(|l| l.name == "qwen3_moe")
            .expect("the qwen3_moe layout is built in")
    })
}

/// The model the statistics targets import for: the shapes of the golden Qwen3-MoE fixture
/// (2 layers, hidden 64, 8 experts of intermediate 64), plus the golden Llama's dense MLP names
/// so that its statistics match too.
fn model() -> &'static ModelNames {
    static MODEL: OnceLock<ModelNames> = OnceLock::new();
    MODEL.get_or_init(|| {
        let mut m = ModelNames::default();
        for layer in 0..2 {
            let attn = format!("model.layers.{layer}.self_attn");
            for (p, rows) in [
                ("q_proj", 64),
                ("k_proj", 32),
                ("v_proj", 32),
                ("o_proj", 64),
            ] {
                m.linears.insert(format!("{attn}.{p}"), (rows, 64));
            }
            m.attention.insert(attn);
            let mlp = format!("model.layers.{layer}.mlp");
            for (p, shape) in [
                ("gate_proj", (128, 64)),
                ("up_proj", (128, 64)),
                ("down_proj", (64, 128)),
            ] {
                m.linears.insert(format!("{mlp}.{p}"), shape);
            }
            for e in 0..8 {
                for p in ["gate_proj", "up_proj", "down_proj"] {
                    m.linears.insert(format!("{mlp}.experts.{e}.{p}"), (64, 64));
                }
            }
            m.experts.insert(layer, (0..8).collect::<BTreeSet<_>>());
        }
        m
    })
}

/// The seed corpus of target `name`: the fixtures it applies to (from `fixtures`, the
/// repository's `fixtures/` directory) and a few files made here, as (seed name, bytes),
/// sorted by name.
pub fn seeds(name: &str, fixtures: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    collect_files(fixtures, &mut files);
    files.sort();
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let pick = |keep: &dyn Fn(&str) -> bool| -> Vec<(String, Vec<u8>)> {
        files
            .iter()
            .filter(|p| file_name(p).is_some_and(|n| keep(&n)))
            .filter_map(|p| {
                let rel = p.strip_prefix(fixtures).unwrap_or(p);
                Some((rel.display().to_string(), std::fs::read(p).ok()?))
            })
            .collect()
    };
    let mut out = match name {
        "safetensors_header" => pick(&|n| n.ends_with(".safetensors")),
        "index_json" => pick(&|n| n == "model.safetensors.index.json"),
        "stats_modelopt" => pick(&|n| n.starts_with("amax") && n.ends_with(".safetensors")),
        "stats_native" => native_seeds(),
        "imatrix_dat" => pick(&|n| n.ends_with(".dat")),
        "imatrix_gguf" => pick(&|n| n.ends_with(".gguf")),
        "torch_pt" => pick(&|n| n.ends_with(".pt")),
        "pickle" => files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pt"))
            .filter_map(|p| {
                let pkl = stats::torchfile::read_data_pkl(p).ok()?;
                Some((format!("{}.pkl", file_name(p)?), pkl))
            })
            .collect(),
        _ => Vec::new(),
    };
    out.sort();
    out
}

/// Every regular file under `dir`, recursively (links are not followed).
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => collect_files(&e.path(), out),
            Ok(t) if t.is_file() => out.push(e.path()),
            _ => {}
        }
    }
}

/// Schema-v1 files written by shardquant itself, plain and compressed, using every field.
fn native_seeds() -> Vec<(String, Vec<u8>)> {
    let mut stats = ActivationStats::default();
    let q = "model.layers.0.self_attn.q_proj";
    let channels: Vec<f32> = (0..64).map(|i| (i % 7) as f32 * 0.5).collect();
    stats.modules.insert(
        q.into(),
        ModuleStats {
            input_amax: Some(3.0),
            input_amax_ch: Some(channels.clone()),
            input_sum_sq: Some(channels.iter().map(|&c| f64::from(c * c) * 9.0).collect()),
            input_sum: Some(channels.iter().map(|&c| f64::from(c) - 1.0).collect()),
            token_count: Some(9),
            weight_amax: Some(WeightAmax::Tensor(0.5)),
            ..Default::default()
        },
    );
    stats.modules.insert(
        "model.layers.0.self_attn.k_proj".into(),
        ModuleStats {
            input_mean_sq: Some(vec![0.25; 64]),
            ..Default::default()
        },
    );
    stats.modules.insert(
        "model.layers.0.self_attn".into(),
        ModuleStats {
            k_cache_amax: Some(11.0),
            v_cache_amax: Some(0.5),
            ..Default::default()
        },
    );
    for e in 0..2 {
        stats.modules.insert(
            format!("model.layers.1.mlp.experts.{e}.gate_proj"),
            ModuleStats {
                input_amax: Some(1.5),
                token_count: Some(e + 1),
                ..Default::default()
            },
        );
    }
    stats.modules.insert(
        "model.layers.1.mlp.experts.2.gate_proj".into(),
        ModuleStats {
            token_count: Some(0),
            ..Default::default()
        },
    );
    let mut out = Vec::new();
    for compress in [false, true] {
        let name = if compress {
            "native.stats.safetensors.zst"
        } else {
            "native.stats.safetensors"
        };
        let bytes = with_file(name, &[], |path| {
            let meta = stats::native::NativeMeta::default();
            match stats::native::write_native(path, &stats, &meta, compress) {
                Ok(()) => std::fs::read(path).ok(),
                Err(e) => panic!("the native seed cannot be written: {e}"),
            }
        });
        out.extend(bytes.map(|b| (name.to_string(), b)));
    }
    out
}
