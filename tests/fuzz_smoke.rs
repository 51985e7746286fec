//! The short fuzz run that every `cargo test` does: each target of `shardquant::fuzzing` runs
//! on its seed corpus, on the inputs the long `cargo fuzz` runs found (`fuzz/regressions/`),
//! and on a few thousand deterministic mutations of the seeds (bit flips, byte sets,
//! truncations, length fields overwritten with extreme values, inserted, deleted and repeated
//! chunks, numbers in JSON replaced). No input may panic, and no input may make a reader ask
//! for more than [`HUGE`] bytes at once. An input that does is written to
//! `target/tmp/fuzz-smoke/` and named in the failure.

use shardquant::fuzzing::{seeds, Target, TARGETS};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Mutated inputs per target.
const MUTATIONS: usize = 20000;

/// A single allocation this large, from inputs of a few hundred KB, is a reader trusting a
/// length field: a failure.
const HUGE: usize = 256 << 20;

/// Allocations larger than this are refused outright (the process would abort) instead of
/// being attempted.
const REFUSED: usize = 8 << 30;

/// The system allocator, recording the largest single request of each thread (the tests of
/// this file run in parallel).
struct Recording;

thread_local! {
    // Const-initialised with no destructor: usable from inside the allocator.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// Records a request of `size` bytes; whether it may be attempted.
fn record(size: usize) -> bool {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    size <= REFUSED
}

// SAFETY: every call is forwarded to the system allocator unchanged, except requests above
// REFUSED, which get null (allocation failure) as the contract allows.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !record(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !record(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !record(new_size) {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Recording = Recording;

/// xorshift64*: a small deterministic generator, so every run tries the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Mostly small offsets (headers live at the start), sometimes anywhere.
    fn offset(&mut self, len: usize) -> usize {
        if len == 0 {
            0
        } else if self.below(2) == 0 {
            self.below(len.min(256))
        } else {
            self.below(len)
        }
    }
}

const INTERESTING_U64: [u64; 9] = [
    0,
    1,
    8,
    0x7F,
    0xFFFF_FFFF,
    0x8000_0000,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];
const INTERESTING_BYTES: &[u8] = b"\x00\x01\x7f\x80\xff{}[]\":,0-9eE.\\";
const NUMBERS: [&str; 7] = [
    "0",
    "-1",
    "4294967296",
    "18446744073709551615",
    "99999999999999999999999",
    "1e308",
    "7",
];

/// Applies one random mutation to `data`.
fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>) {
    let len = data.len();
    match rng.below(9) {
        0 if len > 0 => {
            let at = rng.offset(len);
            data[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.offset(len);
            data[at] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
        }
        2 => data.truncate(rng.below(len + 1)),
        3 if len >= 8 => {
            // A length or offset field: u64 or u32, little-endian.
            let v = match rng.below(3) {
                0 => INTERESTING_U64[rng.below(INTERESTING_U64.len())],
                1 => len as u64 + rng.below(3) as u64 - 1,
                _ => rng.next() >> rng.below(64),
            };
            let at = rng.offset(len - 7);
            if rng.below(2) == 0 {
                data[at..at + 8].copy_from_slice(&v.to_le_bytes());
            } else {
                data[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
            }
        }
        4 => {
            let at = rng.offset(len + 1).min(len);
            let n = 1 + rng.below(16);
            let chunk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(at..at, chunk);
        }
        5 if len > 0 => {
            let at = rng.offset(len);
            let n = (1 + rng.below(64)).min(len - at);
            data.drain(at..at + n);
        }
        6 if len > 0 => {
            // Repeat a chunk (duplicate JSON entries, ZIP records, pickle ops).
            let at = rng.offset(len);
            let n = (1 + rng.below(256)).min(len - at);
            let chunk = data[at..at + n].to_vec();
            let to = rng.offset(len + 1).min(len);
            data.splice(to..to, chunk);
        }
        7 if len > 0 => {
            // Replace a run of digits (a JSON number) with an extreme one.
            let start = rng.offset(len);
            if let Some(d) = data[start..].iter().position(u8::is_ascii_digit) {
                let s = start + d;
                let e = s + data[s..].iter().take_while(|b| b.is_ascii_digit()).count();
                let number = NUMBERS[rng.below(NUMBERS.len())].as_bytes().to_vec();
                data.splice(s..e, number);
            }
        }
        _ => {
            // Copy bytes from one place to another (swap structures around).
            if len >= 2 {
                let a = rng.offset(len);
                let b = rng.offset(len);
                let n = (1 + rng.below(32)).min(len - a.max(b));
                let chunk = data[a..a + n].to_vec();
                data[b..b + n].copy_from_slice(&chunk);
            }
        }
    }
}

/// Where failing inputs are written.
fn failure_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-smoke")
}

/// Runs `target` on `input`: whether the reader accepted it, or the description of a panic or
/// a huge allocation (the input is written out).
fn check(target: &Target, label: &str, input: &[u8]) -> Result<bool, String> {
    LARGEST.with(|l| l.set(0));
    let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let largest = LARGEST.with(Cell::get);
    let problem = match outcome {
        Err(_) => "panicked".to_string(),
        Ok(_) if largest > HUGE => format!("allocated {largest} bytes at once"),
        Ok(accepted) => return Ok(accepted),
    };
    let dir = failure_dir();
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{}-{}.bin", target.name, label.replace('/', "_")));
    let _ = std::fs::write(&file, input);
    Err(format!(
        "{} {problem} on {label} (input written to {})",
        target.name,
        file.display()
    ))
}

/// Inputs found by the long runs, replayed: `fuzz/regressions/<target>/*`.
fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    Some((format!("regression {name}"), std::fs::read(e.path()).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Seeds that a reader refuses by design: they test its errors.
const REFUSED_SEEDS: &[&str] = &[
    "golden/stats/forbidden-global.pt",
    "forbidden-global.pt.pkl",
];

fn fuzz_target(name: &str) {
    let target = shardquant::fuzzing::target(name).expect("a fuzz target");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let corpus = seeds(name, &fixtures);
    assert!(!corpus.is_empty(), "{name}: no seed found");
    let mut failures = Vec::new();
    // Every seed but the refused-by-design ones is accepted: the target reaches the code
    // that handles valid input, so the mutations start from there.
    for (label, input) in &corpus {
        match check(target, label, input) {
            Ok(accepted) => assert_eq!(
                accepted,
                !REFUSED_SEEDS.contains(&label.as_str()),
                "{name}: seed {label} accepted: {accepted}"
            ),
            Err(e) => failures.push(e),
        }
    }
    for (label, input) in &regressions(name) {
        failures.extend(check(target, label, input).err());
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
    let mut accepted = 0;
    for i in 0..MUTATIONS {
        let (seed_name, seed) = &corpus[i % corpus.len()];
        let mut data = seed.clone();
        for _ in 0..1 + rng.below(4) {
            mutate_once(&mut rng, &mut data);
        }
        match check(target, &format!("mutation {i} of {seed_name}"), &data) {
            Ok(ok) => accepted += usize::from(ok),
            Err(e) => failures.push(e),
        }
        if failures.len() >= 5 {
            break;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Mutations are neither all refused (only the first checks would run) nor all accepted.
    assert!(
        accepted > 0 && accepted < MUTATIONS,
        "{name}: {accepted} of {MUTATIONS} mutated inputs accepted"
    );
}

#[test]
fn every_target_has_a_test() {
    let tested = [
        "safetensors_header",
        "index_json",
        "stats_modelopt",
        "stats_native",
        "imatrix_dat",
        "imatrix_gguf",
        "torch_pt",
        "pickle",
    ];
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(names, tested);
}

#[test]
fn safetensors_header() {
    fuzz_target("safetensors_header");
}

#[test]
fn index_json() {
    fuzz_target("index_json");
}

#[test]
fn stats_modelopt() {
    fuzz_target("stats_modelopt");
}

#[test]
fn stats_native() {
    fuzz_target("stats_native");
}

#[test]
fn imatrix_dat() {
    fuzz_target("imatrix_dat");
}

#[test]
fn imatrix_gguf() {
    fuzz_target("imatrix_gguf");
}

#[test]
fn torch_pt() {
    fuzz_target("torch_pt");
}

#[test]
fn pickle() {
    fuzz_target("pickle");
}

/// The mutations are not a no-op: the smoke run above would prove nothing if every mutated
/// input were a seed.
#[test]
fn mutations_change_the_input() {
    let mut rng = Rng(1);
    let seed: Vec<u8> = (0..512u32).map(|i| (i * 7) as u8).collect();
    let changed = (0..1000)
        .filter(|_| {
            let mut d = seed.clone();
            mutate_once(&mut rng, &mut d);
            d != seed
        })
        .count();
    assert!(
        changed > 900,
        "{changed} of 1000 mutations changed the input"
    );
}
