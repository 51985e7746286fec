//! `cargo fuzz run safetensors_header`: see `shardquant::fuzzing::TARGETS`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = (shardquant::fuzzing::target("safetensors_header")
        .expect("a fuzz target")
        .run)(data);
});
