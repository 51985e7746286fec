//! `cargo fuzz run torch_pt`: see `shardquant::fuzzing::TARGETS`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = (shardquant::fuzzing::target("torch_pt")
        .expect("a fuzz target")
        .run)(data);
});
