//! `cargo fuzz run stats_modelopt`: see `shardquant::fuzzing::TARGETS`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = (shardquant::fuzzing::target("stats_modelopt")
        .expect("a fuzz target")
        .run)(data);
});
