//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in shoald's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Registry(#[from] shoal_p2p::registry::RegistryError),
    #[error(transparent)]
    Unpack(#[from] crate::unpack::UnpackError),
    #[error("{path:?}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Mirror(#[from] crate::mirror::MirrorError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// A CRI snapshot label that is missing or malformed.
    #[error("label {label}: {reason}")]
    Label { label: &'static str, reason: String },
    /// The remote path could not make a layer.
    #[error("remote layer {layer}: {reason}")]
    Remote { layer: String, reason: String },
    /// The fetch of remote layer `layer`, shared by the Prepares waiting for it, failed.
    #[error("remote layer {layer}: {source}")]
    RemoteFetch {
        layer: shoal_p2p::Digest,
        #[source]
        source: std::sync::Arc<Error>,
    },
    #[error("internal task failed: {0}")]
    Task(String),
    /// A request to the preheat coordinator failed.
    #[error(transparent)]
    Preheat(#[from] shoal_p2p::preheat::PreheatClientError),
    /// A preheat command's arguments or files are unusable.
    #[error("preheat: {0}")]
    PreheatInput(String),
}
