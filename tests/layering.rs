//! The modules depend on each other one way, in the order the data flows: a module may use
//! the modules listed before it, never one after it. A `use` that points back fails here,
//! naming the file, so an import circle cannot come back unnoticed.

use std::path::Path;

/// Top-level modules, lowest first. Support modules come first; tests and benchmarks' helpers
/// (`synthetic`, `skeleton`, `fuzzing`) last, since they may build anything.
const LAYERS: &[&[&str]] = &[
    &[
        "error",
        "fault",
        "interrupt",
        "progress",
        "json_keys",
        "pyjson_text",
        "digest",
    ],
    &["compute"],
    &["input"],
    &["options"],
    &["plan"],
    &["output"],
    &["pipeline"],
    &["commands"],
    &["synthetic", "skeleton", "fuzzing"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether a file holds only tests (they may reach anything they check against).
fn is_test_file(rel: &str) -> bool {
    rel.contains("/tests/")
        || rel.ends_with("tests.rs")
        || rel.contains("/tests_")
        || rel.ends_with("test_util.rs")
}

#[test]
fn modules_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let top = rel.split(['/', '.']).next().unwrap().to_string();
        if matches!(top.as_str(), "lib" | "main") || is_test_file(&rel) {
            continue;
        }
        let own =
            layer_of(&top).unwrap_or_else(|| panic!("src/{rel}: module {top} is not in LAYERS"));
        let text = std::fs::read_to_string(&path).unwrap();
        // Code only: a unit-test module at the end of a file may reach further.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                match layer_of(&name) {
                    Some(l) if l > own => {
                        wrong.push(format!("src/{rel}:{}: {top} uses {name}", n + 1))
                    }
                    Some(_) => {}
                    None => wrong.push(format!(
                        "src/{rel}:{}: crate::{name} is not in LAYERS",
                        n + 1
                    )),
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the flow:\n{}",
        wrong.join("\n")
    );
}
