//! The crate's error type.

use std::path::PathBuf;

use shoal_p2p::Digest;

/// Everything that can go wrong in shoald's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// shoal-p2p failed: the registry, the blob source (cache, swarm), TLS, the preheat
    /// coordinator.
    #[error(transparent)]
    P2p(#[from] shoal_p2p::Error),
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
    /// A CRI snapshot label that is missing.
    #[error("label {label}: missing")]
    MissingLabel { label: &'static str },
    /// A CRI snapshot label that is not a digest.
    #[error("label {label}: {source}")]
    LabelDigest {
        label: &'static str,
        #[source]
        source: shoal_p2p::digest::DigestParseError,
    },
    /// A CRI snapshot label that is not an image reference.
    #[error("label {label}: {source}")]
    LabelReference {
        label: &'static str,
        #[source]
        source: shoal_p2p::reference::ReferenceError,
    },
    /// The registry resolved a pinned image to another manifest than the labels name.
    #[error("remote layer: {image} resolved to manifest {resolved}, not {manifest}")]
    ManifestMismatch {
        image: String,
        resolved: Digest,
        manifest: Digest,
    },
    /// The labels name a layer that manifest `manifest` does not list.
    #[error("remote layer {layer}: not a layer of manifest {manifest}")]
    NotALayer { layer: Digest, manifest: Digest },
    /// The image config has no diff ID for layer `layer`.
    #[error("remote layer {layer}: the image config has no diff ID for it")]
    NoDiffId { layer: Digest },
    /// The chain ID the manifest gives is not the snapshot containerd asked for.
    #[error("remote layer {layer}: chain ID {chain} from the manifest is not the target {target}")]
    ChainMismatch {
        layer: Digest,
        chain: Digest,
        target: String,
    },
    /// Other Prepares took the unpacked layer twice in a row.
    #[error("remote layer {layer}: unpacked layer taken by another Prepare twice")]
    LayerTaken { layer: Digest },
    /// The fetch of remote layer `layer`, shared by the Prepares waiting for it, failed.
    #[error("remote layer {layer}: {source}")]
    RemoteFetch {
        layer: Digest,
        #[source]
        source: std::sync::Arc<Error>,
    },
    /// The shared fetch of remote layer `layer` went away without an outcome.
    #[error("internal task failed: fetch of layer {layer} vanished")]
    FetchVanished { layer: Digest },
    /// A blocking or background task (`what`) panicked or was cancelled.
    #[error("internal task failed: {what}: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// The swarm, or the node name it and the preheat worker use, cannot start now.
    #[error(transparent)]
    Start(#[from] crate::node::SwarmStartError),
    /// A preheat command's arguments or files are unusable (what is wrong with them).
    #[error("preheat: {0}")]
    PreheatInput(String),
    /// A preheat job built from the command's arguments is malformed.
    #[error("preheat: {0}")]
    PreheatSpec(#[source] shoal_p2p::preheat::proto::SpecError),
    /// A preheat command without a token and without a usable cluster certificate.
    #[error("preheat: no credentials: pass --token, or set [swarm.tls] (the cluster certificate) in the config: {0}")]
    PreheatCredentials(#[source] shoal_p2p::tls::TlsError),
}

impl From<shoal_p2p::registry::RegistryError> for Error {
    fn from(e: shoal_p2p::registry::RegistryError) -> Self {
        Error::P2p(e.into())
    }
}

impl From<shoal_p2p::preheat::PreheatClientError> for Error {
    fn from(e: shoal_p2p::preheat::PreheatClientError) -> Self {
        Error::P2p(e.into())
    }
}
