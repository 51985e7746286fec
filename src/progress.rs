//! Progress reporting: a bar with bytes and ETA on a terminal, plain periodic log lines
//! otherwise (cron jobs, CI logs), nothing with `--quiet`.

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
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
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
                        "shardquant: {:.1}/{:.1} GB ({:.0}%), {:.0} MB/s, ETA {:.0}s",
                        s.0 as f64 / 1e9,
                        *total as f64 / 1e9,
                        100.0 * s.0 as f64 / (*total).max(1) as f64,
                        rate / 1e6,
                        eta
                    );
                }
            }
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
