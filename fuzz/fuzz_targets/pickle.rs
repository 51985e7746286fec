//! `cargo fuzz run pickle`: see `shardquant::fuzzing::TARGETS`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = (shardquant::fuzzing::target("pickle")
        .expect("a fuzz target")
        .run)(data);
});
