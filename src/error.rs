//! One error type for the whole crate, and the mapping from errors to process exit codes.
//!
//! Every error carries a message that names what went wrong (the file, the tensor) and, where
//! there is one, a hint that says what the user can do about it. The [`ErrorKind`] decides the
//! exit code, in this one place.

use std::fmt;
use std::path::Path;

/// What class of failure an [`Error`] is; decides the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command line is wrong (exit code 2).
    Usage,
    /// The checkpoint, statistics file or layout is unusable as given (exit code 3).
    BadInput,
    /// Anything else: I/O failures on the output, internal errors (exit code 1).
    Other,
    /// Stopped by a signal (exit code 128 + the signal: 130 for SIGINT, 143 for SIGTERM).
    Interrupted(u8),
}

impl ErrorKind {
    /// The process exit code documented in the README and `--help`.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Other => 1,
            ErrorKind::Usage => 2,
            ErrorKind::BadInput => 3,
            ErrorKind::Interrupted(signal) => 128u8.saturating_add(signal),
        }
    }
}

/// Exit code of `convert --check` when the output is not up to date (missing, or made from
/// other inputs, statistics, options or another shardquant version).
pub const EXIT_NOT_UP_TO_DATE: u8 = 10;

/// A failure with a human-readable message and an optional hint.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
}

/// Result type used throughout shardquant.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A problem with the input checkpoint, statistics or layout (exit code 3).
    pub fn bad_input(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::BadInput,
            message: message.into(),
            hint: None,
        }
    }

    /// A problem with the command line (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Usage,
            message: message.into(),
            hint: None,
        }
    }

    /// Any other failure (exit code 1).
    pub fn other(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Other,
            message: message.into(),
            hint: None,
        }
    }

    /// The run was stopped by a signal (exit code 128 + `signal`).
    pub fn interrupted(signal: i32) -> Self {
        Error {
            kind: ErrorKind::Interrupted(u8::try_from(signal).unwrap_or(0)),
            message: "interrupted; nothing was published".to_string(),
            hint: None,
        }
    }

    /// An I/O error on an input of the run (checkpoint, statistics, layout file), while doing
    /// `what` (e.g. "reading"): bad input (exit 3), which the user fixes.
    pub fn input_io(what: &str, path: &Path, err: std::io::Error) -> Self {
        Error::io_of(ErrorKind::BadInput, what, path, err)
    }

    /// An I/O error on the output (shards, metadata, staging, journal, lock, report), while
    /// doing `what`: exit 1, and the staging directory is kept for `--resume`. A full disk
    /// (ENOSPC, or EDQUOT for a full quota) says so and how to go on.
    pub fn output_io(what: &str, path: &Path, err: std::io::Error) -> Self {
        Error::io_of(ErrorKind::Other, what, path, err)
    }

    /// The kind is chosen by the caller, who knows which side of the run `path` is on; only a
    /// full disk overrides it (never the input's fault).
    fn io_of(kind: ErrorKind, what: &str, path: &Path, err: std::io::Error) -> Self {
        let disk_full = matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
        Error {
            kind: if disk_full { ErrorKind::Other } else { kind },
            message: format!("{} {}: {}", what, path.display(), err),
            hint: disk_full.then(|| {
                "the output's filesystem is full: free some space, then run the same command \
                 again with --resume (it reuses the output shards completed so far)"
                    .to_string()
            }),
        }
    }

    /// Appends `text` to the message (after "; "), keeping the kind and the hint.
    pub fn context(mut self, text: &str) -> Self {
        self.message = format!("{}; {text}", self.message);
        self
    }

    /// Adds a hint: what the user can do to fix the problem.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The class of the error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the hint.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {}", hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_kinds_are_chosen_by_the_caller_not_the_verb() {
        let path = Path::new("/x/model-00001.safetensors");
        let eio = || std::io::Error::from_raw_os_error(libc::EIO);
        // Reading an output back is the output's fault (exit 1: the staging stays).
        assert_eq!(
            Error::output_io("reading back", path, eio()).kind(),
            ErrorKind::Other
        );
        assert_eq!(
            Error::output_io("opening", path, eio()).kind(),
            ErrorKind::Other
        );
        // Writing nothing but reading an input is bad input.
        assert_eq!(
            Error::input_io("reading", path, eio()).kind(),
            ErrorKind::BadInput
        );
        // A full disk is never the input's fault, and says how to go on.
        let full = Error::input_io(
            "reading",
            path,
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(full.kind(), ErrorKind::Other);
        assert!(full.hint().unwrap().contains("--resume"));
    }
}
