//! `shoald doctor`: checks what a running containerd really does with shoal, without changing
//! anything.
//!
//! [`gather`] asks containerd's socket (Version, introspection `Plugins`, CRI's verbose
//! `Status` and `ImageFsInfo`), probes shoald's snapshotter socket and mirror, and reads
//! containerd's config file, shoald's config and the hosts.toml files CRI would read, into
//! [`Facts`]. [`diagnose`] (pure) turns them into a [`Report`]: one line per check, `ok`,
//! `warn` or `FAIL`, with what to change below each problem. Exit status: 0 when CRI pulls
//! use shoal (streaming snapshotter path with labels, or the mirror first in hosts.toml), 1
//! when they do not, 2 when the doctor cannot tell ([`DoctorError`]).

mod diagnose;
mod facts;
mod gather;
mod mirror_checks;
mod report;
mod settings;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use diagnose::diagnose;
pub use facts::{
    ContainerdFile, CriFacts, Facts, FileFacts, HostsFile, ImageSettingsFile, PluginFact, Probe,
    ProxyPluginFile, ShoaldFacts, StatusConfig, TransferFile, UnpackEntry,
};
pub use gather::{gather, Options};
pub use report::{Check, Level, Report, Verdict};
pub use settings::{
    effective_config_path, file_settings, first_host, pull_path, snapshotter_of_mountpoint,
    ImageSettings, PullPath,
};

/// Why the doctor cannot tell (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// containerd's socket cannot be connected to.
    #[error("cannot reach containerd at {socket:?}: {} (is containerd running, and is this its --containerd-address?)", causes(source))]
    Connect {
        socket: PathBuf,
        #[source]
        source: containerd_client::tonic::transport::Error,
    },
    /// containerd's socket accepted the connection but a call failed.
    #[error("containerd at {socket:?}: {call} failed: {status}")]
    Call {
        socket: PathBuf,
        call: &'static str,
        #[source]
        status: Box<containerd_client::tonic::Status>,
    },
    /// containerd answered within no reasonable time.
    #[error("containerd at {socket:?}: {call} did not answer within {secs} s")]
    Timeout {
        socket: PathBuf,
        call: &'static str,
        secs: u64,
    },
    /// containerd's Version API answered something that is not a version.
    #[error("containerd at {socket:?}: {source}")]
    Version {
        socket: PathBuf,
        #[source]
        source: crate::containerd::VersionError,
    },
    /// containerd's config file exists but cannot be read.
    #[error("reading containerd's config {path:?}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// containerd's config file is not TOML.
    #[error(
        "containerd's config {path:?} is not valid TOML at line {line}, column {column}: {message}"
    )]
    ConfigSyntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A setting of containerd's config file has the wrong type.
    #[error("containerd's config {path:?}: {key} must be {expected}")]
    ConfigValue {
        path: PathBuf,
        key: String,
        expected: &'static str,
    },
    /// shoald's own configuration is unusable.
    #[error(transparent)]
    ShoaldConfig(#[from] crate::config::ConfigError),
}

/// An error and its causes on one line (tonic's transport errors say only "transport error").
pub(crate) fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// `shoald doctor`: gathers, diagnoses, prints the report on stdout and returns the exit
/// status (errors go to stderr, status 2).
pub async fn run(options: &Options) -> i32 {
    match gather(options).await {
        Ok(facts) => {
            let report = diagnose(&facts);
            print!("{report}");
            report.exit_code()
        }
        Err(e) => {
            eprintln!("shoald doctor: cannot tell: {e}");
            2
        }
    }
}
