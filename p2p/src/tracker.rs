//! The node's side of the tracker and the chunk-manifest service (both served by
//! `shoal-registry-ext`): the [`Tracker`] seam, its HTTP client for several trackers
//! ([`HttpTrackers`]), and an in-memory fake ([`MemoryTracker`]).

pub(crate) mod http;
mod memory;
pub mod proto;
#[cfg(test)]
mod tests;

use futures::future::BoxFuture;

use crate::chunk::ChunkManifest;
use crate::digest::Digest;
pub use http::HttpTrackers;
pub use memory::MemoryTracker;
pub use proto::{
    Announce, AnnounceReply, BlobHave, ChunkSet, DeltaAnnounce, DeltaReply, PeerEntry, PeerList,
    UploadStats, SEEDER_ID_PREFIX,
};

/// Why a tracker request failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// No tracker could be reached, or every one failed; each failure is listed.
    #[error("no tracker answered: {}", .0.join("; "))]
    Unavailable(Vec<String>),
    /// The trackers answered but do not know this blob (no chunk manifest can be made).
    #[error("chunk manifest of {digest} not available: {reason}")]
    NoManifest { digest: Digest, reason: String },
    /// A tracker answered something malformed.
    #[error("tracker {url}: {reason}")]
    BadResponse { url: String, reason: String },
}

/// Where a node announces what it holds, finds peers, and gets chunk manifests.
pub trait Tracker: Send + Sync {
    /// Sends this node's whole state.
    fn announce<'a>(&'a self, announce: &'a Announce) -> BoxFuture<'a, Result<(), TrackerError>>;

    /// Peers holding chunks of `digest`, best first, without `self_id`.
    fn peers<'a>(
        &'a self,
        digest: &'a Digest,
        self_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PeerEntry>, TrackerError>>;

    /// The chunk manifest of blob `digest` of `repository` on registry `registry` (a host, as
    /// in the image reference). The caller validates it against the digest.
    fn chunk_manifest<'a>(
        &'a self,
        registry: &'a str,
        repository: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<ChunkManifest, TrackerError>>;
}
