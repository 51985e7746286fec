//! Fault injection for the crash, resume and disk-full tests, controlled by environment
//! variables that are read once. Unset (as in any normal run), every hook is a no-op.
//!
//! - `SHARDQUANT_CRASH_AT=POINT:N` aborts the process (SIGABRT: no destructor, no signal
//!   handler, no cleanup runs, as after `kill -9` or a power loss) when the counter of `POINT`
//!   reaches `N`. Points: `bytes` (checked after each write of tensor data: bytes written to
//!   the output so far, small files included), `sealed`
//!   (output shards synced and renamed, before the resume journal records them), `journaled`
//!   (shards recorded in the journal), `publish` (reached once, just before the finished
//!   output is renamed into place; `publish:1`).
//! - `SHARDQUANT_FAIL_WRITE_AFTER=N`: writes of tensor data and of the small output files
//!   (metadata, manifest, journal) fail with ENOSPC ("No space left on device") once `N` bytes
//!   of them have been written, as on a full disk.
//! - `SHARDQUANT_FAIL_PUBLISH=1`: renaming the finished output into place fails with EIO (and
//!   the atomic exchange is reported unsupported, so the move-aside path runs).
//! - `SHARDQUANT_FAIL_READ_BACK_AFTER=N`: reading back an output shard for its SHA-256 fails
//!   with EIO ("Input/output error") once `N` shards have been read back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The injection settings of this process.
#[derive(Debug, Default)]
struct Faults {
    crash: Option<(String, u64)>,
    fail_write_after: Option<u64>,
    fail_read_back_after: Option<u64>,
    fail_publish: bool,
}

fn faults() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(|| Faults {
        crash: std::env::var("SHARDQUANT_CRASH_AT").ok().and_then(|v| {
            let (point, n) = v.split_once(':')?;
            Some((point.to_string(), n.parse().ok()?))
        }),
        fail_write_after: std::env::var("SHARDQUANT_FAIL_WRITE_AFTER")
            .ok()
            .and_then(|v| v.parse().ok()),
        fail_read_back_after: std::env::var("SHARDQUANT_FAIL_READ_BACK_AFTER")
            .ok()
            .and_then(|v| v.parse().ok()),
        fail_publish: std::env::var_os("SHARDQUANT_FAIL_PUBLISH").is_some(),
    })
}

/// Bytes written or reserved so far: tensor data and small files (for `bytes` and the limit).
static DATA_BYTES: AtomicU64 = AtomicU64::new(0);

/// Aborts the process if the crash point `point` is set and `count` reached it.
pub fn crash_point(point: &str, count: u64) {
    if let Some((p, n)) = &faults().crash {
        if p == point && count >= *n {
            eprintln!("shardquant: SHARDQUANT_CRASH_AT={point}:{n} reached; aborting");
            std::process::abort();
        }
    }
}

/// Before writing `len` bytes to the output: how many of them fit before the simulated disk
/// is full (`len` when no limit is set). The bytes are counted as written.
pub fn write_allowance(len: usize) -> usize {
    let f = faults();
    if f.crash.is_none() && f.fail_write_after.is_none() {
        return len;
    }
    let before = DATA_BYTES.fetch_add(len as u64, Ordering::SeqCst);
    match f.fail_write_after {
        Some(limit) => limit.saturating_sub(before).min(len as u64) as usize,
        None => len,
    }
}

/// After writing tensor data: aborts at the `bytes` crash point.
pub fn data_written() {
    if faults().crash.is_some() {
        crash_point("bytes", DATA_BYTES.load(Ordering::SeqCst));
    }
}

/// Before reading back an output shard: the injected EIO, once the limit is reached.
pub fn read_back() -> std::io::Result<()> {
    static READ_BACKS: AtomicU64 = AtomicU64::new(0);
    match faults().fail_read_back_after {
        Some(limit) if READ_BACKS.fetch_add(1, Ordering::SeqCst) >= limit => {
            Err(std::io::Error::from_raw_os_error(libc::EIO))
        }
        _ => Ok(()),
    }
}

/// Before renaming the finished output into place: the injected EIO.
pub fn publish_rename() -> std::io::Result<()> {
    if faults().fail_publish {
        return Err(std::io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

/// The error a full disk gives.
pub fn disk_full() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::ENOSPC)
}
