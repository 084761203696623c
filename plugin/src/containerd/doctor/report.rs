//! The doctor's report: one [`Check`] per line, `ok`, `warn` or `FAIL`, the fix below it,
//! and the [`Verdict`] that gives the exit status.

use std::fmt;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        })
    }
}

/// One line of the report, with what to change when it is not ok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub level: Level,
    pub text: String,
    pub fix: Vec<String>,
}

/// How CRI pulls reach shoal, if they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Layers stream into shoal's snapshotter (labels reach it).
    Streaming,
    /// Layers come through shoald's registry mirror (first in every hosts.toml).
    Mirror,
    /// Both.
    Both,
    /// Neither: CRI pulls do not use shoal.
    Neither,
}

/// The doctor's findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
    pub verdict: Verdict,
}

impl Report {
    /// 0 when CRI pulls use shoal, 1 when they do not.
    pub fn exit_code(&self) -> i32 {
        match self.verdict {
            Verdict::Neither => 1,
            _ => 0,
        }
    }

    /// The first check at `level` whose text contains `needle` (for tests and callers).
    pub fn find(&self, level: Level, needle: &str) -> Option<&Check> {
        self.checks
            .iter()
            .find(|c| c.level == level && c.text.contains(needle))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(f, "{:<4} {}", c.level.to_string(), c.text)?;
            for line in &c.fix {
                writeln!(f, "       {line}")?;
            }
        }
        Ok(())
    }
}
