//! `cargo fuzz run imatrix_dat`: see `shardquant::fuzzing::TARGETS`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = (shardquant::fuzzing::target("imatrix_dat")
        .expect("a fuzz target")
        .run)(data);
});
