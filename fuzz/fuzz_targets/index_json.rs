//! `cargo fuzz run index_json`: see `shardquant::fuzzing::TARGETS`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = (shardquant::fuzzing::target("index_json")
        .expect("a fuzz target")
        .run)(data);
});
