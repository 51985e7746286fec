//! Progress reporting: a bar with bytes and ETA on a terminal, plain periodic log lines with
//! timestamps otherwise (cron jobs, CI logs), nothing with `--quiet`. Progress counts the
//! model's bytes (what the units read), in decimal units everywhere.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How progress is shown.
pub enum Progress {
    /// Nothing is printed.
    Silent,
    /// An interactive bar on stderr.
    Bar(ProgressBar),
    /// A log line every `every`.
    Log {
        /// Total bytes.
        total: u64,
        /// Start time.
        start: Instant,
        /// Interval between lines.
        every: Duration,
        /// (bytes done, time of the last line).
        state: Mutex<(u64, Instant)>,
    },
}

impl Progress {
    /// Chooses the form: silent if `quiet`, a bar if stderr is a terminal, else log lines.
    pub fn new(total: u64, quiet: bool) -> Progress {
        if quiet {
            Progress::Silent
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            Progress::Bar(bar)
        } else {
            let now = Instant::now();
            Progress::Log {
                total,
                start: now,
                every: Duration::from_secs(10),
                state: Mutex::new((0, now)),
            }
        }
    }

    /// Records `bytes` more of work done.
    pub fn advance(&self, bytes: u64) {
        match self {
            Progress::Silent => {}
            Progress::Bar(bar) => bar.inc(bytes),
            Progress::Log {
                total,
                start,
                every,
                state,
            } => {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.0 += bytes;
                if s.1.elapsed() >= *every {
                    s.1 = Instant::now();
                    let secs = start.elapsed().as_secs_f64();
                    let rate = s.0 as f64 / secs.max(1e-9);
                    let eta = (total.saturating_sub(s.0)) as f64 / rate.max(1.0);
                    eprintln!(
                        "{}shardquant: {}/{} ({:.0}%), {}/s, ETA {:.0}s",
                        log_prefix(),
                        human_bytes(s.0),
                        human_bytes(*total),
                        100.0 * s.0 as f64 / (*total).max(1) as f64,
                        human_bytes(rate as u64),
                        eta
                    );
                }
            }
        }
    }

    /// All units are done but the run goes on (`msg`: sealing shards): shown on the bar, or
    /// logged once.
    pub fn phase(&self, msg: &str) {
        match self {
            Progress::Silent => {}
            Progress::Bar(bar) => {
                bar.set_message(msg.to_string());
                bar.enable_steady_tick(Duration::from_millis(200));
            }
            Progress::Log { .. } => eprintln!("{}shardquant: {msg}", log_prefix()),
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// What starts a log line: nothing on a terminal; elsewhere (cron, CI logs) the UTC time,
/// `2026-12-03T08:20:01Z `.
pub fn log_prefix() -> String {
    if std::io::stderr().is_terminal() {
        return String::new();
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{} ", utc_timestamp(secs))
}

/// `YYYY-MM-DDTHH:MM:SSZ` of seconds since the Unix epoch (proleptic Gregorian calendar).
pub fn utc_timestamp(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A byte count in decimal units (`412.00 kB`, `3.21 GB`), as the progress bar shows them: the
/// one way a size is written for a user (messages, `inspect`, progress lines).
pub fn human_bytes(n: u64) -> String {
    indicatif::DecimalBytes(n).to_string()
}

/// Adds the nanoseconds elapsed since `since` to a per-stage counter (the report's
/// thread-seconds per stage, summed over the threads that ran it).
pub fn add_elapsed(counter: &std::sync::atomic::AtomicU64, since: std::time::Instant) {
    counter.fetch_add(
        since.elapsed().as_nanos() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// A counter of [`add_elapsed`], in seconds.
pub fn elapsed_seconds(counter: &std::sync::atomic::AtomicU64) -> f64 {
    counter.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_796_284_801), "2026-12-03T08:00:01Z");
    }

    #[test]
    fn small_sizes_show() {
        assert_eq!(human_bytes(412_000), "412.00 kB");
        assert_eq!(human_bytes(3_210_000_000), "3.21 GB");
    }
}
