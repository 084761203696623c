//! Why a swarm download failed: [`SwarmError`], shared by every reader of the download
//! (cheap to clone), and carried to them as [`crate::Error::Swarm`].

use std::sync::Arc;

use super::planner::PlanError;

/// Why a swarm download ended without its blob, or a read out of it failed (its readers get
/// it as [`crate::Error::Swarm`], and shoald falls back to containerd's own pull).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SwarmError {
    /// The planner gave up (stalled, registry failing, manifest contradicted).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A verified chunk could not be stored.
    #[error("storing a chunk: {0}")]
    Store(#[source] Arc<crate::Error>),
    /// The assembled blob could not be committed to the cache (its digest, or the disk).
    #[error("committing the blob: {0}")]
    Commit(#[source] Arc<crate::Error>),
    /// A blocking task (storing chunk `chunk`, or committing when `None`) panicked or was
    /// cancelled.
    #[error("blocking task {}: {source}", match .chunk { Some(i) => format!("storing chunk {i}"), None => "committing the blob".to_string() })]
    Task {
        chunk: Option<u32>,
        #[source]
        source: Arc<tokio::task::JoinError>,
    },
    /// Reading bytes at `offset` back out of the chunk store failed.
    #[error("reading the chunk store at offset {offset}: {source}")]
    Read {
        offset: u64,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The download went away without an outcome (its task was dropped).
    #[error("download abandoned")]
    Abandoned,
}

/// Why one chunk request (to a peer or the registry) failed; the planner asks elsewhere,
/// the executor counts and logs it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    /// The peer refused or failed.
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    /// The registry refused or failed the range (or its stream did).
    #[error(transparent)]
    Registry(#[from] crate::Error),
    /// The registry refused every reader's credentials for this blob.
    #[error("every reader's credentials were refused by the registry")]
    NoGrant,
    /// The registry's range ended early.
    #[error("range ended {missing} bytes short")]
    Short { missing: usize },
}
