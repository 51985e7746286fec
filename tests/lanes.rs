//! Nothing outside its lane (issue 8): what a conversion reads stays inside the input
//! directory, what it writes stays outside it, and an existing directory that is not a
//! previous output is never replaced.
//!
//! Reads: an index naming `../x` or an absolute path, and weights, index or config.json that
//! are symbolic links leading out of the input (or FIFOs) are refused with exit 3; the other
//! files are copied only when they are regular files inside the input (links to files inside
//! it are copied as regular files; links leading out, links to directories and special files
//! are skipped with a warning). A HuggingFace cache snapshot, whose files all link into the
//! repository's `blobs/`, converts like a plain directory.
//!
//! Writes: an output equal to, inside or containing the input is refused, also through links
//! and `..`; so is a `--report` inside the input. The input tree is compared entry by entry
//! (contents, lengths, modification times, permissions) before and after every run, failed
//! runs included.

mod common;

use common::cli::*;
use serde_json::Value;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

const SHARD: &str = "model-00002-of-00007.safetensors";
const INDEX: &str = "model.safetensors.index.json";
const SHARD_TENSOR: &str = "model.layers.0.self_attn.k_proj.weight";
const OUTSIDE_HINT: &str = "reads only files inside the input directory";

/// Moves `name` of the sandbox's input to `elsewhere/` beside the input and puts a symbolic
/// link to it (relative, `../elsewhere/NAME`) in its place; returns the new place.
fn link_out(sb: &Sandbox, name: &str) -> PathBuf {
    let elsewhere = sb.tmp.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let moved = elsewhere.join(name);
    std::fs::rename(sb.file(name), &moved).unwrap();
    symlink(format!("../elsewhere/{name}"), sb.file(name)).unwrap();
    moved
}

/// Runs a weight-only conversion expected to fail with `code`; checks the message, that
/// nothing was left behind and that neither the input nor `elsewhere/` changed.
fn refused(sb: &Sandbox, code: i32, needles: &[&str]) -> Outcome {
    let before = snapshot(sb.tmp.path());
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(code, needles);
    assert_no_output(&sb.out);
    assert_unchanged(sb.tmp.path(), &before);
    r
}

// ---------------------------------------------------------------------------------------------
// Reading: the index and the weights
// ---------------------------------------------------------------------------------------------

#[test]
fn index_names_an_absolute_path() {
    let sb = Sandbox::new("llama_nvfp4", "abs");
    let shard = sb.shard_of(SHARD_TENSOR);
    sb.edit_weight_map(|m| {
        m.insert(SHARD_TENSOR.into(), Value::String(s(&shard).to_string()));
    });
    refused(
        &sb,
        BAD_INPUT,
        &[INDEX, s(&shard), SHARD_TENSOR, "not a plain file name"],
    );
}

#[test]
fn index_names_a_parent_path() {
    let sb = Sandbox::new("llama_nvfp4", "dotdot");
    std::fs::copy(sb.file(SHARD), sb.tmp.join(SHARD)).unwrap();
    sb.edit_weight_map(|m| {
        m.insert(SHARD_TENSOR.into(), Value::String(format!("../{SHARD}")));
    });
    refused(
        &sb,
        BAD_INPUT,
        &[
            INDEX,
            &format!("../{SHARD}"),
            SHARD_TENSOR,
            "not a plain file name",
        ],
    );
}

#[test]
fn shard_linked_out_of_the_input_is_refused() {
    let sb = Sandbox::new("llama_nvfp4", "shardout");
    let moved = link_out(&sb, SHARD);
    refused(
        &sb,
        BAD_INPUT,
        &[
            INDEX,
            SHARD,
            SHARD_TENSOR,
            s(&moved),
            "outside the input directory",
            OUTSIDE_HINT,
        ],
    );
}

#[test]
fn shard_linked_by_absolute_path_out_of_the_input_is_refused() {
    let sb = Sandbox::new("llama_nvfp4", "shardabs");
    let other = common::TempDir::new("shardabs-other");
    let moved = other.join(SHARD);
    std::fs::rename(sb.file(SHARD), &moved).unwrap();
    symlink(&moved, sb.file(SHARD)).unwrap();
    refused(
        &sb,
        BAD_INPUT,
        &[SHARD, s(&moved), "outside the input directory"],
    );
}

#[test]
fn index_linked_out_of_the_input_is_refused() {
    let sb = Sandbox::new("llama_nvfp4", "indexout");
    link_out(&sb, INDEX);
    refused(
        &sb,
        BAD_INPUT,
        &[INDEX, "outside the input directory", OUTSIDE_HINT],
    );
}

#[test]
fn config_linked_out_of_the_input_is_refused() {
    let sb = Sandbox::new("llama_nvfp4", "configout");
    link_out(&sb, "config.json");
    refused(
        &sb,
        BAD_INPUT,
        &["config.json", "outside the input directory"],
    );
}

#[test]
fn single_file_linked_out_of_the_input_is_refused() {
    let sb = Sandbox::new("llama_nvfp4", "singleout");
    // A single-file checkpoint: model.safetensors (the shard) and no index.
    std::fs::remove_file(sb.file(INDEX)).unwrap();
    for e in std::fs::read_dir(&sb.input).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") && !p.ends_with(SHARD) {
            std::fs::remove_file(p).unwrap();
        }
    }
    std::fs::rename(sb.file(SHARD), sb.file("model.safetensors")).unwrap();
    link_out(&sb, "model.safetensors");
    refused(
        &sb,
        BAD_INPUT,
        &["model.safetensors", "outside the input directory"],
    );
}

/// Opening a FIFO for reading blocks until a writer comes: a FIFO in place of a shard or of
/// config.json must be refused, not opened (the run would hang).
#[test]
fn fifo_shard_is_refused_without_hanging() {
    let sb = Sandbox::new("llama_nvfp4", "fifoshard");
    std::fs::remove_file(sb.file(SHARD)).unwrap();
    mkfifo(&sb.file(SHARD));
    refused(&sb, BAD_INPUT, &[SHARD, "FIFO", SHARD_TENSOR]);
}

#[test]
fn fifo_config_is_refused_without_hanging() {
    let sb = Sandbox::new("llama_nvfp4", "fifoconfig");
    std::fs::remove_file(sb.file("config.json")).unwrap();
    mkfifo(&sb.file("config.json"));
    refused(&sb, BAD_INPUT, &["config.json", "FIFO"]);
}

/// A shard that is a link to a file inside the input is read like the file.
#[test]
fn shard_linked_inside_the_input_is_read() {
    let sb = Sandbox::new("llama_nvfp4", "shardin");
    std::fs::create_dir(sb.file("blobs")).unwrap();
    std::fs::rename(sb.file(SHARD), sb.file("blobs/abc")).unwrap();
    symlink("blobs/abc", sb.file(SHARD)).unwrap();
    let before = snapshot(&sb.input);
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_success();
    assert_unchanged(&sb.input, &before);
    // The blob in the subdirectory is weights outside the index: not copied.
    assert!(!sb.out.join("blobs/abc").exists());
}

// ---------------------------------------------------------------------------------------------
// Reading: the other files, copied to the output
// ---------------------------------------------------------------------------------------------

#[test]
fn only_regular_files_inside_the_input_are_copied() {
    let sb = Sandbox::new("llama_nvfp4", "copies");
    let secret = sb.tmp.join("secret.txt");
    std::fs::write(&secret, "not for the output").unwrap();
    std::fs::write(sb.file("tokenizer.json"), "{\"tokens\": 1}").unwrap();
    symlink("tokenizer.json", sb.file("tokenizer_copy.json")).unwrap();
    symlink("../secret.txt", sb.file("leak.txt")).unwrap();
    symlink(&secret, sb.file("leak_abs.txt")).unwrap();
    std::fs::create_dir_all(sb.file("assets/deeper")).unwrap();
    std::fs::write(sb.file("assets/a.txt"), "a").unwrap();
    std::fs::write(sb.file("assets/deeper/b.txt"), "b").unwrap();
    symlink("..", sb.file("assets/loop")).unwrap();
    symlink("../../secret.txt", sb.file("assets/leak.txt")).unwrap();
    symlink("../tokenizer.json", sb.file("assets/tok.json")).unwrap();
    mkfifo(&sb.file("assets/pipe"));
    symlink(sb.tmp.path(), sb.file("everything")).unwrap();
    let report = sb.tmp.join("report.json");
    let before = snapshot(&sb.input);
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--report", s(&report)]);
    r.expect_success();
    assert_unchanged(&sb.input, &before);

    let out = &sb.out;
    let regular = |p: &Path| p.symlink_metadata().is_ok_and(|m| m.file_type().is_file());
    for (name, text) in [
        ("tokenizer.json", "{\"tokens\": 1}"),
        ("tokenizer_copy.json", "{\"tokens\": 1}"),
        ("assets/a.txt", "a"),
        ("assets/deeper/b.txt", "b"),
        ("assets/tok.json", "{\"tokens\": 1}"),
    ] {
        let p = out.join(name);
        assert!(regular(&p), "{name} is not a regular file in the output");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text, "{name}");
    }
    for name in [
        "leak.txt",
        "leak_abs.txt",
        "everything",
        "assets/loop",
        "assets/leak.txt",
        "assets/pipe",
    ] {
        assert!(
            out.join(name).symlink_metadata().is_err(),
            "{name} was copied"
        );
    }
    r.expect_mentions(&[
        "warning: not copied",
        "leak.txt",
        "leak_abs.txt",
        "outside the input directory",
        "assets/loop",
        "links to directories are not followed",
        "assets/pipe",
        "FIFO",
        "everything",
    ]);
    let v: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let notes: Vec<&str> = v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for name in ["leak.txt", "assets/loop", "assets/pipe", "assets/leak.txt"] {
        assert!(
            notes.iter().any(|n| n.contains(name)),
            "{name} not in the report's notes: {notes:?}"
        );
    }
    // Nothing of the secret reached the output.
    let mut all = Vec::new();
    collect(out, &mut all);
    for p in all {
        if regular(&p) {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(18).any(|w| w == b"not for the output"),
                "{} holds the secret",
                p.display()
            );
        }
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.symlink_metadata().unwrap().is_dir() {
            collect(&p, out);
        }
        out.push(p);
    }
}

/// generation_config.json is rewritten into the output; linked out of the input it is
/// skipped with a warning like any other file.
#[test]
fn generation_config_linked_out_is_skipped() {
    let sb = Sandbox::new("llama_nvfp4", "genout");
    link_out(&sb, "generation_config.json");
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_success();
    r.expect_mentions(&[
        "warning: not copied",
        "generation_config.json",
        "outside the input directory",
    ]);
    assert!(!sb.out.join("generation_config.json").exists());
}

/// A HuggingFace cache snapshot: every file is a link into the repository's blobs/. It
/// converts to the same tensors as a plain copy.
#[test]
fn huggingface_cache_snapshot_converts() {
    let sb = Sandbox::new("llama_nvfp4", "hfcache");
    let repo = sb.tmp.join("hub/models--org--tiny-llama");
    let snap = repo.join("snapshots/0123456789abcdef");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    for (i, e) in std::fs::read_dir(&sb.input).unwrap().enumerate() {
        let p = e.unwrap().path();
        let blob = format!("blob{i:04}");
        std::fs::copy(&p, repo.join("blobs").join(&blob)).unwrap();
        symlink(
            format!("../../blobs/{blob}"),
            snap.join(p.file_name().unwrap()),
        )
        .unwrap();
    }
    let out = sb.tmp.join("from-cache");
    let r = sq(&[
        "convert",
        s(&snap),
        s(&out),
        "--format",
        "w4a16_nvfp4",
        "-q",
    ]);
    r.expect_success();
    let plain = sb.convert(&["--format", "w4a16_nvfp4", "-q"]);
    plain.expect_success();
    common::assert_same_tensors(&out, &sb.out);
    assert!(out.join("generation_config.json").is_file());
}

// ---------------------------------------------------------------------------------------------
// Writing: the output and the report
// ---------------------------------------------------------------------------------------------

/// `convert INPUT OUTPUT --format w4a16_nvfp4 EXTRA`, expected to be refused as overlapping;
/// the whole sandbox must be unchanged afterwards.
fn overlap_refused(sb: &Sandbox, input: &Path, output: &Path, extra: &[&str], why: &str) {
    let before = snapshot(sb.tmp.path());
    let mut args = vec!["convert", s(input), s(output), "--format", "w4a16_nvfp4"];
    args.extend_from_slice(extra);
    let r = sq(&args);
    r.expect_error(USAGE, &["overlap", why, "hint: "]);
    assert_unchanged(sb.tmp.path(), &before);
}

#[test]
fn output_is_the_input_through_a_link() {
    let sb = Sandbox::new("llama_nvfp4", "samelink");
    let alias = sb.tmp.join("alias");
    symlink(&sb.input, &alias).unwrap();
    overlap_refused(&sb, &sb.input, &alias, &["--force"], "the same directory");
    overlap_refused(&sb, &alias, &sb.input, &["--force"], "the same directory");
}

#[test]
fn output_is_the_input_through_dotdot() {
    let sb = Sandbox::new("llama_nvfp4", "samedots");
    let dots = sb.input.join("../input");
    overlap_refused(&sb, &sb.input, &dots, &["--force"], "the same directory");
}

#[test]
fn output_inside_the_input_through_a_link() {
    let sb = Sandbox::new("llama_nvfp4", "insidelink");
    let alias = sb.tmp.join("alias");
    symlink(&sb.input, &alias).unwrap();
    overlap_refused(&sb, &sb.input, &alias.join("out"), &[], "inside the input");
    // And the input given through the link, the output inside the real directory.
    overlap_refused(&sb, &alias, &sb.input.join("out"), &[], "inside the input");
}

#[test]
fn output_containing_the_input_through_dotdot() {
    let sb = Sandbox::new("llama_nvfp4", "containsdots");
    let parent = sb.input.join("..");
    overlap_refused(&sb, &sb.input, &parent, &["--force"], "contains the input");
    let grandparent = sb.input.join("../..");
    overlap_refused(
        &sb,
        &sb.input,
        &grandparent,
        &["--force"],
        "contains the input",
    );
}

#[test]
fn report_inside_the_input_is_refused() {
    let sb = Sandbox::new("llama_nvfp4", "reportin");
    let before = snapshot(&sb.input);
    let report = sb.input.join("report.json");
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--report", s(&report)]);
    r.expect_error(USAGE, &["--report", "inside the input directory"]);
    assert_no_output(&sb.out);
    assert_unchanged(&sb.input, &before);
}

/// An output path that is a link to a directory holding someone's files: never replaced,
/// with or without --force.
#[test]
fn output_linked_to_a_directory_that_is_not_a_checkpoint() {
    let sb = Sandbox::new("llama_nvfp4", "outlink");
    let theirs = sb.tmp.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("thesis.tex"), "precious").unwrap();
    symlink(&theirs, &sb.out).unwrap();
    let before = snapshot(sb.tmp.path());
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(USAGE, &[s(&sb.out), "already exists", "--force"]);
    let r = sb.convert(&["--format", "w4a16_nvfp4", "--force"]);
    r.expect_error(USAGE, &[s(&sb.out), "refusing to replace"]);
    assert_unchanged(sb.tmp.path(), &before);
}

/// An existing directory is replaced only with --force, and only when it is a previous
/// output (or empty); the input is never touched either way.
#[test]
fn existing_directory_is_kept_without_force() {
    let sb = Sandbox::new("llama_nvfp4", "keepdir");
    std::fs::create_dir(&sb.out).unwrap();
    std::fs::write(sb.out.join("config.json"), "{}").unwrap();
    let before = snapshot(sb.tmp.path());
    let r = sb.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(USAGE, &["already exists"]);
    assert_unchanged(sb.tmp.path(), &before);
}

// ---------------------------------------------------------------------------------------------
// The input is never modified
// ---------------------------------------------------------------------------------------------

/// Successful runs (with a report, statistics, copies) and failing ones at every stage leave
/// the input tree exactly as it was: contents, lengths, mtimes, permissions, links.
#[test]
fn the_input_is_never_modified() {
    let sb = Sandbox::new("llama_nvfp4", "readonly");
    std::fs::create_dir(sb.file("assets")).unwrap();
    std::fs::write(sb.file("assets/template.jinja"), "{{ x }}").unwrap();
    symlink("assets/template.jinja", sb.file("chat_template.jinja")).unwrap();
    let stats = amax("llama_nvfp4");
    let before = snapshot(&sb.input);
    let report = sb.tmp.join("r.json");
    let ok = sb.convert(&[
        "--format",
        "nvfp4",
        "--stats",
        s(&stats),
        "--report",
        s(&report),
        "-q",
    ]);
    ok.expect_success();
    assert_unchanged(&sb.input, &before);
    // Again over the previous output.
    let again = sb.convert(&["--format", "fp8", "--stats", s(&stats), "--force", "-q"]);
    again.expect_success();
    assert_unchanged(&sb.input, &before);
    // Failing at planning (no statistics for W4A4), at a statistics file, while streaming.
    std::fs::remove_dir_all(&sb.out).unwrap();
    let r = sb.convert(&["--format", "nvfp4"]);
    r.expect_error(BAD_INPUT, &["no input amax"]);
    let bad = sb.tmp.join("bad.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{").unwrap();
    let r = sb.convert(&["--format", "nvfp4", "--stats", s(&bad)]);
    r.expect_error(BAD_INPUT, &[s(&bad)]);
    assert_unchanged(&sb.input, &before);
    // Streaming failure: a NaN found after the staging directory exists. A copy is broken,
    // and the copy must stay as broken as it was.
    let broken = Sandbox::new("llama_nvfp4", "readonly-nan");
    let shard = broken.shard_of("model.layers.1.mlp.up_proj.weight");
    let f = ShardFile::read(&shard);
    let at = ShardFile::data_start(&shard) + f.range("model.layers.1.mlp.up_proj.weight").start;
    patch_file(&shard, at + 64, &0x7FC0u16.to_le_bytes());
    let before_broken = snapshot(&broken.input);
    let r = broken.convert(&["--format", "w4a16_nvfp4"]);
    r.expect_error(BAD_INPUT, &["NaN or infinite"]);
    assert_no_output(&broken.out);
    assert_unchanged(&broken.input, &before_broken);
}
