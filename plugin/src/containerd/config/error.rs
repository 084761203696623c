//! What can go wrong writing containerd's configuration.

use std::path::PathBuf;

use crate::containerd::{ContainerdVersion, VersionError};

/// Why containerd's configuration could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdConfigError {
    /// The file is not TOML; nothing is written.
    #[error("not valid TOML at line {line}, column {column}: {}", .source.message().trim_end())]
    Parse {
        line: usize,
        column: usize,
        source: toml_edit::TomlError,
    },
    /// No `version` (`found: None`) or `version = 1` (or less): containerd's schema 1, from
    /// before 1.5.
    #[error(
        "the file has {}, that is containerd's config schema 1, which shoal does not write: \
         {hint}",
        schema1(.found)
    )]
    Schema1 {
        found: Option<i64>,
        hint: &'static str,
    },
    /// A `version` that is no containerd schema.
    #[error(
        "version = {found} is no containerd config schema (2: containerd 1.x, 3: containerd 2.x)"
    )]
    UnknownSchema { found: i64 },
    /// A schema-2 file for a containerd 2.x: containerd migrates it at load, shoal writes 3.
    #[error(
        "the file is config version 2 but containerd {version} reads version 3: migrate it \
         first with `containerd config migrate > NEW` (it reads /etc/containerd/config.toml, or \
         --config FILE), check NEW and put it in place, then run this again"
    )]
    NeedsMigration { version: ContainerdVersion },
    /// A schema-3 file for a containerd 1.x, which refuses it.
    #[error("the file is config version 3 (containerd 2.x) but containerd {version} reads only version 2")]
    SchemaTooNew { version: ContainerdVersion },
    /// A containerd older than shoal supports.
    #[error("containerd {version} is not supported: shoal needs containerd 1.6 or later")]
    UnsupportedContainerd { version: ContainerdVersion },
    /// A key of the wrong type where shoal reads or writes.
    #[error("{key} is {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    /// Reading or writing the file (or its directory) failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// `containerd --version` could not be run.
    #[error("running `{bin:?} --version`: {source}; pass --containerd-version (e.g. 2.1.9)")]
    VersionCommand {
        bin: PathBuf,
        source: std::io::Error,
    },
    /// `containerd --version` failed.
    #[error(
        "`{bin:?} --version` failed ({status}): {stderr}; pass --containerd-version (e.g. 2.1.9)"
    )]
    VersionCommandFailed {
        bin: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// `containerd --version` printed no version.
    #[error("`{bin:?} --version`: {source}; pass --containerd-version (e.g. 2.1.9)")]
    VersionOutput { bin: PathBuf, source: VersionError },
}

fn schema1(found: &Option<i64>) -> String {
    match found {
        Some(n) => format!("version = {n}"),
        None => "no `version`".into(),
    }
}
