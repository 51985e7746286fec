//! Why pre-flight stops: each problem with the lines that explain it or say how to fix it.

use std::fmt;

/// One reason a conversion cannot run, found while planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, in one line.
    pub what: String,
    /// Lines that explain it or say how to fix it (shown indented below it).
    pub details: Vec<String>,
}

impl Problem {
    /// A problem without details.
    pub fn new(what: impl Into<String>) -> Problem {
        Problem {
            what: what.into(),
            details: Vec::new(),
        }
    }

    /// The same problem with one more line of detail.
    pub fn with(mut self, detail: impl Into<String>) -> Problem {
        self.details.push(detail.into());
        self
    }

    /// A problem from a multi-line message: its first line, the rest as details.
    pub fn from_lines(text: &str) -> Problem {
        let mut lines = text.lines();
        let mut p = Problem::new(lines.next().unwrap_or_default());
        p.details.extend(lines.map(|l| l.trim_start().to_string()));
        p
    }
}

impl From<String> for Problem {
    fn from(what: String) -> Problem {
        Problem::new(what)
    }
}

impl fmt::Display for Problem {
    /// The problem, then each detail on its own line, indented by two spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)?;
        for d in &self.details {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_indented_under_their_problem() {
        let p = Problem::new("no input amax").with("fix: pass --stats");
        assert_eq!(p.to_string(), "no input amax\n  fix: pass --stats");
        assert_eq!(
            Problem::from_lines("a\n  b\nc"),
            Problem::new("a").with("b").with("c")
        );
    }
}
