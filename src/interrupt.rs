//! Ctrl-C and SIGTERM: the first one asks the conversion to stop cleanly (no new unit of work
//! starts; the output shards that the units in flight complete are sealed and journaled, and the
//! staging directory is kept for `--resume` when it holds any, removed otherwise; the exit code
//! is 128 + the signal: 130 for SIGINT, 143 for SIGTERM); a second one ends the process at once.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal received, 0 if none.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
    // SAFETY: signal() is async-signal-safe; restoring the default makes a second signal fatal.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

/// Installs the handlers for SIGINT and SIGTERM.
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic and calls signal(), both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether a stop was asked for.
pub fn interrupted() -> bool {
    signal() != 0
}

/// The signal that asked for the stop (0 if none).
pub fn signal() -> i32 {
    SIGNAL.load(Ordering::Relaxed)
}
