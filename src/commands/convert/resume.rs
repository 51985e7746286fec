//! What to do with the temporary directories that stopped runs left beside the output.
//!
//! A run that is killed, loses power, runs out of disk or is interrupted leaves its
//! `.NAME.shardquant-tmp-PID` directory with a resume journal ([`super::journal`]) naming the
//! output shards it had sealed. The next run on the same output:
//! - with `--resume`, continues from the one whose journal has its key (same inputs,
//!   statistics, byte-affecting options and version), after checking each journaled shard's
//!   size and SHA-256 (a shard that fails is written again); leftovers made with another key
//!   are reported and discarded;
//! - with `--force` (and no `--resume`), reports and discards them;
//! - otherwise refuses to start (usage error) while one holds completed shards, saying to pass
//!   `--resume` or `--force`, as it refuses to replace an existing output without `--force`.
//!
//! Leftovers without a journal or without a completed shard hold nothing worth keeping and are
//! removed silently.

use super::journal::{JournalState, JOURNAL_FILE};
use super::manifest::explain;
use super::{info, leftovers, Staging};
use crate::digest::{hash_files, FileDigest};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::plan::ShardPlan;
use std::path::{Path, PathBuf};

/// A stopped run's directory and its journal (if it has a readable one).
type Leftover = (PathBuf, Option<JournalState>);

fn found(output: &Path) -> Vec<Leftover> {
    leftovers(output)
        .into_iter()
        .map(|dir| {
            let journal = JournalState::read(&dir);
            (dir, journal)
        })
        .collect()
}

/// Shards a leftover's journal records as complete.
fn completed(l: &Leftover) -> usize {
    l.1.as_ref().map_or(0, |j| j.shards.len())
}

/// For `--check`: a stopped run's partial conversion that `--resume` would continue (made with
/// the key `key`), as (directory, output shards complete).
pub fn resumable(output: &Path, key: &serde_json::Value) -> Option<(PathBuf, usize)> {
    found(output)
        .into_iter()
        .filter(|l| l.1.as_ref().is_some_and(|j| &j.key == key))
        .map(|l| {
            let n = completed(&l);
            (l.0, n)
        })
        .filter(|(_, n)| *n > 0)
        .max_by_key(|(_, n)| *n)
}

/// Before planning: refuses to start while a stopped run's completed work lies beside the
/// output and neither `--resume` nor `--force` says what to do with it. Touches nothing.
pub fn refuse_unasked(output: &Path, options: &Options) -> Result<()> {
    if options.run.resume || options.run.force {
        return Ok(());
    }
    let Some(l) = found(output).into_iter().find(|l| completed(l) > 0) else {
        return Ok(());
    };
    Err(Error::usage(format!(
        "a stopped run left a partial conversion of {} in {} ({} output shard(s) complete)",
        output.display(),
        l.0.display(),
        completed(&l)
    ))
    .with_hint(
        "run the same command with --resume to continue it, or with --force to discard it and start over",
    ))
}

/// This run's staging directory: a stopped run's, resumed (with `--resume` and a matching
/// journal), or a new one. Returns it with the journal state to start from and, per planned
/// shard, the digest of the shards complete already (checked against their journal checksums).
/// Every other leftover is removed, the ones with completed work named in an info line.
pub fn staging_for(
    output: &Path,
    key: &serde_json::Value,
    shards: &ShardPlan,
    options: &Options,
) -> Result<(Staging, JournalState, Vec<Option<FileDigest>>)> {
    let mut lefts = found(output);
    let pick = options
        .run
        .resume
        .then(|| {
            lefts
                .iter()
                .enumerate()
                .filter(|(_, l)| l.1.as_ref().is_some_and(|j| &j.key == key))
                .max_by_key(|(_, l)| completed(l))
                .map(|(i, _)| i)
        })
        .flatten();
    let chosen = pick.map(|i| lefts.remove(i));
    for l in &lefts {
        if completed(l) > 0 {
            let why = match (&l.1, options.run.resume) {
                (Some(j), true) => format!(
                    "it was made with other inputs or options: {}",
                    explain(&j.key, key)
                ),
                _ => "--force without --resume".to_string(),
            };
            info(
                options,
                &format!(
                    "discarding the partial conversion in {} ({} output shard(s) complete): {why}",
                    l.0.display(),
                    completed(l)
                ),
            );
        }
        std::fs::remove_dir_all(&l.0).map_err(|e| Error::output_io("removing", &l.0, e))?;
    }
    let fresh = JournalState {
        key: key.clone(),
        ..JournalState::default()
    };
    let Some((dir, Some(state))) = chosen else {
        if options.run.resume {
            info(
                options,
                "--resume: no partial conversion to continue; starting from the beginning",
            );
        }
        return Ok((
            Staging::create(output)?,
            fresh,
            vec![None; shards.shard_count()],
        ));
    };
    let done = check_shards(&dir, &state, shards, options)?;
    let mut state = state;
    state.shards = done.iter().flatten().cloned().collect();
    let mut keep: Vec<String> = state.shards.iter().map(|d| d.path.clone()).collect();
    keep.push(JOURNAL_FILE.to_string());
    info(
        options,
        &format!(
            "resuming the partial conversion in {}: {} of {} output shard(s) complete (checksums verified)",
            dir.display(),
            state.shards.len(),
            shards.shard_count()
        ),
    );
    Ok((Staging::adopt(output, &dir, &keep)?, state, done))
}

/// Checks every shard a journal records against the plan and its checksum; returns the digest
/// per planned shard of those that pass.
fn check_shards(
    dir: &Path,
    state: &JournalState,
    shards: &ShardPlan,
    options: &Options,
) -> Result<Vec<Option<FileDigest>>> {
    let names = shards.file_names();
    let mut done = vec![None; names.len()];
    let listed: Vec<(usize, &FileDigest)> = state
        .shards
        .iter()
        .filter_map(|d| {
            let s = names.iter().position(|n| *n == d.path)?;
            (shards.file_len(s) == d.size).then_some((s, d))
        })
        .collect();
    let paths: Vec<(String, PathBuf)> = listed
        .iter()
        .map(|(_, d)| (d.path.clone(), dir.join(&d.path)))
        .collect();
    for ((s, want), got) in listed.iter().zip(hash_files(&paths, options.run.threads)) {
        match got {
            Ok(got) if &got == *want => done[*s] = Some(got),
            _ => info(
                options,
                &format!(
                    "{}: does not match the checksum its journal records; writing it again",
                    dir.join(&want.path).display()
                ),
            ),
        }
    }
    Ok(done)
}
