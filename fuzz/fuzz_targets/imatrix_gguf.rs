//! `cargo fuzz run imatrix_gguf`: see `shardquant::fuzzing::TARGETS`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = (shardquant::fuzzing::target("imatrix_gguf")
        .expect("a fuzz target")
        .run)(data);
});
