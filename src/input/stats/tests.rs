//! Tests of statistics loading: memory-mapped files, per-block weight amax handles, merging,
//! fused-expert splits, dtypes, and `--weight-amax compute` skipping weight keys.

use super::{ActivationStats, BlockAmax, ModelNames, WeightAmax};
use crate::error::Error;
use crate::input::layout::Layout;
use safetensors::Dtype;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// Counts the heap bytes each thread allocates, so a test can check what loading costs.
struct CountingAlloc;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    let _ = ALLOCATED.try_with(|c| c.set(c.get().saturating_add(bytes)));
}

/// Heap bytes allocated by this thread so far.
fn allocated() -> usize {
    ALLOCATED.with(|c| c.get())
}

// SAFETY: forwards every call to the system allocator unchanged; counting touches only a
// thread-local `Cell` (const-initialised, no destructor, so it never allocates).
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract is forwarded.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract is forwarded.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        count(new.saturating_sub(layout.size()));
        // SAFETY: the caller's contract is forwarded.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract is forwarded.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING_ALLOC: CountingAlloc = CountingAlloc;

/// A fresh directory under the system temp dir, removed on drop (also when the test fails).
fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("shardquant-stats-{tag}-"))
        .tempdir()
        .unwrap()
}

/// Little-endian bytes of `values` in `dtype` (F32, BF16 or F16).
fn encode(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| match dtype {
            Dtype::F32 => v.to_le_bytes().to_vec(),
            Dtype::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
            Dtype::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
            other => panic!("no encoder for {other:?}"),
        })
        .collect()
}

/// A tensor to write: key, dtype, shape, bytes.
type Tensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn tensor(key: &str, dtype: Dtype, shape: &[usize], values: &[f32]) -> Tensor {
    (
        key.to_string(),
        dtype,
        shape.to_vec(),
        encode(dtype, values),
    )
}

/// A one-value F32 tensor of shape `[]`.
fn scalar(key: &str, v: f32) -> Tensor {
    tensor(key, Dtype::F32, &[], &[v])
}

fn write(path: &Path, tensors: &[Tensor]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn layout(name: &str) -> Layout {
    Layout::builtin()
        .into_iter()
        .find(|l| l.name == name)
        .unwrap()
}

const ATTN: &str = "model.layers.0.self_attn";

/// A llama-like model with layer 0's attention linears `[rows, cols]`.
fn llama(rows: usize, cols: usize) -> ModelNames {
    let mut m = ModelNames::default();
    for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        m.linears.insert(format!("{ATTN}.{p}"), (rows, cols));
    }
    m.attention.insert(ATTN.to_string());
    m
}

fn load(paths: &[PathBuf], layout: &Layout, model: &ModelNames, weights: bool) -> ActivationStats {
    ActivationStats::load_with(paths, layout, model, weights).unwrap()
}

fn load_err(paths: &[PathBuf], layout: &Layout, model: &ModelNames, weights: bool) -> Error {
    ActivationStats::load_with(paths, layout, model, weights).unwrap_err()
}

/// The (global, decoded blocks, handle) of a module's per-block weight amax.
fn blocks_of(stats: &ActivationStats, module: &str) -> (f32, Vec<f32>, BlockAmax) {
    match &stats.module(module).unwrap().weight_amax {
        Some(WeightAmax::Blocks { global, blocks }) => (*global, blocks.decode(), blocks.clone()),
        other => panic!("{module}: expected per-block amax, got {other:?}"),
    }
}

#[test]
fn merged_files_take_the_elementwise_max_of_blocks() {
    let tmp = temp_dir("merge");
    // [2, 64]: 8 blocks.
    let model = llama(2, 64);
    let key = format!("{ATTN}.o_proj.weight_quantizer");
    let a = [1.0, 5.0, 2.0, 0.0, 3.0, 4.0, 0.5, 6.0];
    let b = [2.0, 4.0, 2.0, 1.0, 0.25, 8.0, 0.5, 3.0];
    let (fa, fb) = (
        tmp.path().join("a.safetensors"),
        tmp.path().join("b.safetensors"),
    );
    write(
        &fa,
        &[
            tensor(&format!("{key}._amax"), Dtype::F32, &[8, 1], &a),
            scalar(&format!("{key}._global_amax"), 6.0),
            scalar(&format!("{ATTN}.o_proj.input_quantizer._amax"), 1.5),
        ],
    );
    // The second file in BF16 (the values are exact in BF16): sources of mixed dtypes.
    write(
        &fb,
        &[
            tensor(&format!("{key}._amax"), Dtype::BF16, &[8, 1], &b),
            tensor(&format!("{key}._global_amax"), Dtype::BF16, &[], &[8.0]),
            scalar(&format!("{ATTN}.o_proj.input_quantizer._amax"), 2.5),
        ],
    );
    let stats = load(&[fa.clone(), fb.clone()], &layout("llama"), &model, true);
    let (global, values, handle) = blocks_of(&stats, &format!("{ATTN}.o_proj"));
    assert_eq!(global, 8.0);
    assert_eq!(values, vec![2.0, 5.0, 2.0, 1.0, 3.0, 8.0, 0.5, 6.0]);
    assert_eq!(handle.len(), 8);
    assert_eq!(handle.source_count(), 2);
    let m = stats.module(&format!("{ATTN}.o_proj")).unwrap();
    assert_eq!(m.input_amax, Some(2.5));
    assert_eq!(stats.sources, vec![fa, fb]);
    assert!(stats.ignored.is_empty(), "{:?}", stats.ignored);
}

#[test]
fn merging_block_and_tensor_amax_fails() {
    let tmp = temp_dir("mergecount");
    let key = format!("{ATTN}.o_proj.weight_quantizer");
    let (fa, fb) = (
        tmp.path().join("a.safetensors"),
        tmp.path().join("b.safetensors"),
    );
    write(
        &fa,
        &[
            tensor(&format!("{key}._amax"), Dtype::F32, &[8, 1], &[1.0; 8]),
            scalar(&format!("{key}._global_amax"), 1.0),
        ],
    );
    write(&fb, &[scalar(&format!("{key}._amax"), 1.0)]);
    let err = load_err(&[fa, fb], &layout("llama"), &llama(2, 64), true);
    assert!(err.to_string().contains("incompatible shapes"), "{err}");
}

/// A Qwen3-MoE layer 0 with experts 0 and 1: gate/up `[16, 32]` (32 blocks each), down
/// `[32, 16]` (32 blocks).
fn qwen3moe() -> ModelNames {
    let mut m = ModelNames::default();
    for e in 0..2 {
        let base = format!("model.layers.0.mlp.experts.{e}");
        m.linears.insert(format!("{base}.gate_proj"), (16, 32));
        m.linears.insert(format!("{base}.up_proj"), (16, 32));
        m.linears.insert(format!("{base}.down_proj"), (32, 16));
        m.experts.entry(0).or_default().insert(e);
    }
    m
}

#[test]
fn fused_gate_up_blocks_split_into_gate_rows_then_up_rows() {
    let tmp = temp_dir("fused");
    let model = qwen3moe();
    let fused = "model.layers.0.mlp.experts.gate_up_proj_weight_quantizers.1";
    let down = "model.layers.0.mlp.experts.down_proj_weight_quantizers.1";
    // gate_up [2·16, 32] → 64 blocks: rows 0..16 (blocks 0..32) are gate, the rest up.
    let values: Vec<f32> = (0..64).map(|i| 0.25 + i as f32).collect();
    let down_values: Vec<f32> = (0..32).map(|i| 100.0 + i as f32).collect();
    let f1 = tmp.path().join("a.safetensors");
    write(
        &f1,
        &[
            tensor(&format!("{fused}._amax"), Dtype::F32, &[64, 1], &values),
            scalar(&format!("{fused}._global_amax"), 64.0),
            tensor(&format!("{down}._amax"), Dtype::F32, &[32, 1], &down_values),
            scalar(&format!("{down}._global_amax"), 131.0),
        ],
    );
    let lay = layout("qwen3_moe");
    let stats = load(std::slice::from_ref(&f1), &lay, &model, true);
    let gate = blocks_of(&stats, "model.layers.0.mlp.experts.1.gate_proj");
    let up = blocks_of(&stats, "model.layers.0.mlp.experts.1.up_proj");
    let dn = blocks_of(&stats, "model.layers.0.mlp.experts.1.down_proj");
    assert_eq!((gate.0, up.0, dn.0), (64.0, 64.0, 131.0));
    assert_eq!(gate.1, values[..32]);
    assert_eq!(up.1, values[32..]);
    assert_eq!(dn.1, down_values);
    assert!(stats
        .module("model.layers.0.mlp.experts.0.gate_proj")
        .is_none());

    // A second file, in F16, whose up half is larger: the split halves merge per module.
    let f2 = tmp.path().join("b.safetensors");
    let second: Vec<f32> = (0..64).map(|i| if i < 32 { 0.0 } else { 1000.0 }).collect();
    write(
        &f2,
        &[
            tensor(&format!("{fused}._amax"), Dtype::F16, &[64, 1], &second),
            scalar(&format!("{fused}._global_amax"), 1000.0),
        ],
    );
    let stats = load(&[f1, f2], &lay, &model, true);
    let gate = blocks_of(&stats, "model.layers.0.mlp.experts.1.gate_proj");
    let up = blocks_of(&stats, "model.layers.0.mlp.experts.1.up_proj");
    assert_eq!((gate.0, up.0), (1000.0, 1000.0));
    assert_eq!(gate.1, values[..32]);
    assert_eq!(up.1, vec![1000.0; 32]);
    assert_eq!(up.2.source_count(), 2);
}

#[test]
fn fused_gate_up_block_count_must_match_the_experts() {
    let tmp = temp_dir("fusedcount");
    let fused = "model.layers.0.mlp.experts.gate_up_proj_weight_quantizers.0";
    let f = tmp.path().join("a.safetensors");
    write(
        &f,
        &[
            tensor(&format!("{fused}._amax"), Dtype::F32, &[63, 1], &[1.0; 63]),
            scalar(&format!("{fused}._global_amax"), 1.0),
        ],
    );
    let lay = layout("qwen3_moe");
    let err = load_err(std::slice::from_ref(&f), &lay, &qwen3moe(), true);
    assert!(err.to_string().contains("63 block amax values"), "{err}");
    // Not read at all when weight amax are not wanted.
    let stats = load(&[f], &lay, &qwen3moe(), false);
    assert_eq!(stats.ignored.len(), 2, "{:?}", stats.ignored);
}

#[test]
fn stats_dtypes_f32_bf16_f16() {
    let tmp = temp_dir("dtypes");
    let model = llama(1, 64);
    // Exact in all three dtypes.
    let blocks = [0.5, 1.0, 2.5, 0.0];
    for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
        let f = tmp.path().join(format!("{dtype:?}.safetensors"));
        write(
            &f,
            &[
                tensor(
                    &format!("{ATTN}.q_proj.input_quantizer._amax"),
                    dtype,
                    &[],
                    &[1.5],
                ),
                tensor(&format!("{ATTN}.k_bmm_quantizer._amax"), dtype, &[], &[3.0]),
                tensor(
                    &format!("{ATTN}.o_proj.weight_quantizer._amax"),
                    dtype,
                    &[4, 1],
                    &blocks,
                ),
                tensor(
                    &format!("{ATTN}.o_proj.weight_quantizer._global_amax"),
                    dtype,
                    &[],
                    &[2.5],
                ),
                tensor(
                    &format!("{ATTN}.v_proj.weight_quantizer._amax"),
                    dtype,
                    &[],
                    &[0.75],
                ),
            ],
        );
        let stats = load(&[f], &layout("llama"), &model, true);
        let q = stats.module(&format!("{ATTN}.q_proj")).unwrap();
        assert_eq!(q.input_amax, Some(1.5), "{dtype:?}");
        assert_eq!(
            stats.module(ATTN).unwrap().k_cache_amax,
            Some(3.0),
            "{dtype:?}"
        );
        let (global, values, _) = blocks_of(&stats, &format!("{ATTN}.o_proj"));
        assert_eq!((global, values), (2.5, blocks.to_vec()), "{dtype:?}");
        let v = stats.module(&format!("{ATTN}.v_proj")).unwrap();
        assert_eq!(v.weight_amax, Some(WeightAmax::Tensor(0.75)), "{dtype:?}");
    }
}

#[test]
fn unsupported_dtype_is_an_error() {
    let tmp = temp_dir("i32");
    let f = tmp.path().join("a.safetensors");
    let key = format!("{ATTN}.q_proj.input_quantizer._amax");
    write(
        &f,
        &[(key.clone(), Dtype::I32, vec![], 7i32.to_le_bytes().to_vec())],
    );
    let err = load_err(&[f], &layout("llama"), &llama(1, 64), false);
    let msg = err.to_string();
    assert!(msg.contains(&key) && msg.contains("I32"), "{msg}");
}

#[test]
fn nan_block_values_are_refused() {
    let tmp = temp_dir("nan");
    let f = tmp.path().join("a.safetensors");
    let key = format!("{ATTN}.o_proj.weight_quantizer");
    write(
        &f,
        &[
            tensor(
                &format!("{key}._amax"),
                Dtype::F32,
                &[4, 1],
                &[1.0, f32::NAN, 1.0, 1.0],
            ),
            scalar(&format!("{key}._global_amax"), 1.0),
        ],
    );
    let err = load_err(
        std::slice::from_ref(&f),
        &layout("llama"),
        &llama(1, 64),
        true,
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&key) && msg.contains("NaN") && msg.contains(&f.display().to_string()),
        "{msg}"
    );
    // Not read at all when weight amax are not wanted.
    let stats = load(&[f], &layout("llama"), &llama(1, 64), false);
    assert!(stats.invalid.is_empty());
}

/// Rows × cols of the "large" o_proj: 4096 × 16384 → 4 Mi blocks, 16 MiB of F32 amax.
const BIG: (usize, usize) = (4096, 16384);

fn big_blocks() -> Vec<f32> {
    (0..BIG.0 * BIG.1 / 16).map(|i| (i % 97) as f32).collect()
}

#[test]
fn compute_mode_ignores_weight_keys_without_reading_them() {
    let tmp = temp_dir("compute");
    let model = llama(BIG.0, BIG.1);
    let blocks = big_blocks();
    let f = tmp.path().join("a.safetensors");
    let o = format!("{ATTN}.o_proj.weight_quantizer");
    let q = format!("{ATTN}.q_proj.weight_quantizer");
    let k = format!("{ATTN}.k_proj.weight_quantizer");
    let v = format!("{ATTN}.v_proj.weight_quantizer");
    let input = format!("{ATTN}.o_proj.input_quantizer._amax");
    write(
        &f,
        &[
            tensor(
                &format!("{o}._amax"),
                Dtype::F32,
                &[blocks.len(), 1],
                &blocks,
            ),
            scalar(&format!("{o}._global_amax"), 96.0),
            // Malformed: per-block amax without `_global_amax`.
            tensor(&format!("{q}._amax"), Dtype::F32, &[4, 1], &[1.0; 4]),
            // Malformed: a block count that does not match the weight.
            tensor(&format!("{k}._amax"), Dtype::F32, &[4, 1], &[1.0; 4]),
            scalar(&format!("{k}._global_amax"), 1.0),
            // Malformed: a dtype statistics cannot have.
            (
                format!("{v}._amax"),
                Dtype::I32,
                vec![],
                7i32.to_le_bytes().to_vec(),
            ),
            scalar(&input, 3.0),
        ],
    );
    let lay = layout("llama");
    let before = allocated();
    let stats = load(std::slice::from_ref(&f), &lay, &model, false);
    let used = allocated() - before;
    assert!(used < 1 << 20, "loading allocated {used} bytes");
    let reason = "weight amax not used with --weight-amax compute";
    let mut expect: Vec<String> = [
        format!("{o}._amax"),
        format!("{o}._global_amax"),
        format!("{q}._amax"),
        format!("{k}._amax"),
        format!("{k}._global_amax"),
        format!("{v}._amax"),
    ]
    .iter()
    .map(|key| format!("{key}: {reason}"))
    .collect();
    expect.sort();
    let mut ignored = stats.ignored.clone();
    ignored.sort();
    assert_eq!(ignored, expect);
    assert!(stats.invalid.is_empty() && stats.unmatched.is_empty());
    assert!(stats.modules.values().all(|m| m.weight_amax.is_none()));
    let om = stats.module(&format!("{ATTN}.o_proj")).unwrap();
    assert_eq!(om.input_amax, Some(3.0));

    // The same file with weight amax wanted: the malformed keys are errors.
    let err = load_err(std::slice::from_ref(&f), &lay, &model, true);
    let msg = err.to_string();
    assert!(msg.contains(&format!("{k}._amax")), "{msg}"); // first key in order
    let only = |tensors: &[Tensor], name: &str| {
        let p = tmp.path().join(name);
        write(&p, tensors);
        load_err(&[p], &lay, &model, true).to_string()
    };
    let msg = only(
        &[tensor(
            &format!("{q}._amax"),
            Dtype::F32,
            &[4, 1],
            &[1.0; 4],
        )],
        "noglobal.safetensors",
    );
    assert!(msg.contains("_global_amax") && msg.contains(&q), "{msg}");
    let msg = only(
        &[
            tensor(&format!("{k}._amax"), Dtype::F32, &[4, 1], &[1.0; 4]),
            scalar(&format!("{k}._global_amax"), 1.0),
        ],
        "count.safetensors",
    );
    assert!(msg.contains("4 block amax values"), "{msg}");
    let msg = only(
        &[(
            format!("{v}._amax"),
            Dtype::I32,
            vec![],
            7i32.to_le_bytes().to_vec(),
        )],
        "dtype.safetensors",
    );
    assert!(msg.contains("I32") && msg.contains(&v), "{msg}");
}

#[test]
fn loading_does_not_read_the_file_into_the_heap() {
    // The handle is a reference-counted list of (mapping, offset, count, dtype): no values.
    assert!(std::mem::size_of::<BlockAmax>() <= 2 * std::mem::size_of::<usize>());
    let tmp = temp_dir("heap");
    let model = llama(BIG.0, BIG.1);
    let blocks = big_blocks();
    let f = tmp.path().join("a.safetensors");
    let o = format!("{ATTN}.o_proj.weight_quantizer");
    write(
        &f,
        &[
            tensor(
                &format!("{o}._amax"),
                Dtype::F32,
                &[blocks.len(), 1],
                &blocks,
            ),
            scalar(&format!("{o}._global_amax"), 96.0),
        ],
    );
    let file_len = std::fs::metadata(&f).unwrap().len() as usize;
    assert!(file_len > 16 << 20);
    let lay = layout("llama");
    let before = allocated();
    let stats = load(&[f.clone(), f], &lay, &model, true);
    let used = allocated() - before;
    // Two files of 16 MiB merged and every block value checked: a few KiB of index.
    assert!(used < 1 << 20, "loading allocated {used} bytes");
    let WeightAmax::Blocks {
        global,
        blocks: handle,
    } = stats
        .module(&format!("{ATTN}.o_proj"))
        .unwrap()
        .weight_amax
        .clone()
        .unwrap()
    else {
        panic!("expected per-block amax");
    };
    assert_eq!(
        (global, handle.len(), handle.source_count()),
        (96.0, blocks.len(), 2)
    );
    let before = allocated();
    let copy = handle.clone();
    let half = handle.slice(0, blocks.len() / 2).unwrap();
    assert!(
        allocated() - before < 1024,
        "cloning and slicing copied values"
    );
    // Decoding is where the values reach the heap: once, in the worker.
    let before = allocated();
    let values = copy.decode();
    assert!(allocated() - before >= blocks.len() * 4);
    assert_eq!(values, blocks);
    assert_eq!(half.decode(), blocks[..blocks.len() / 2]);
}
