//! Writes the seed corpus of every fuzz target into `DIR/<target>/` (default `fuzz/corpus`),
//! for `cargo fuzz run <target>`: `cargo run --example fuzz_seeds [DIR]`.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::args()
        .nth(1)
        .map_or_else(|| root.join("fuzz/corpus"), PathBuf::from);
    for target in shardquant::fuzzing::TARGETS {
        let dir = out.join(target.name);
        std::fs::create_dir_all(&dir).expect("creating the corpus directory");
        let seeds = shardquant::fuzzing::seeds(target.name, &root.join("fixtures"));
        for (name, bytes) in &seeds {
            let file: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            std::fs::write(dir.join(file), bytes).expect("writing a seed");
        }
        println!(
            "{}: {} seed(s) in {}",
            target.name,
            seeds.len(),
            dir.display()
        );
    }
}
