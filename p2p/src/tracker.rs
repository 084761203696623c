//! The node's side of the tracker and the chunk-manifest service (both served by
//! `shoal-registry-ext`): the [`Tracker`] seam, its HTTP client for several trackers
//! ([`HttpTrackers`]), and an in-memory fake ([`MemoryTracker`]).

mod error;
pub(crate) mod http;
mod memory;
pub mod proto;
#[cfg(test)]
mod tests;

use futures::future::BoxFuture;

use crate::chunk::ChunkManifest;
use crate::digest::Digest;
pub use error::{Failure, Request, TrackerError, MAX_MESSAGE};
pub use http::HttpTrackers;
pub use memory::MemoryTracker;
pub use proto::{
    Announce, AnnounceReply, BlobHave, ChunkSet, DeltaAnnounce, DeltaReply, PeerEntry, PeerList,
    UploadStats, SEEDER_ID_PREFIX,
};

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

    /// [`Tracker::peers`] for a download that knows no free holder of what it lacks
    /// ([`crate::swarm::planner::Planner::starved`]): a client that reuses lists under the
    /// trackers' pacing reuses one only while it is younger than half the pacing
    /// ([`proto::reuse_kept_list`]). The same as `peers` for the others.
    fn fresh_peers<'a>(
        &'a self,
        digest: &'a Digest,
        self_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PeerEntry>, TrackerError>> {
        self.peers(digest, self_id)
    }

    /// The chunk manifest of blob `digest` of `repository` on registry `registry` (a host, as
    /// in the image reference). The caller validates it against the digest.
    fn chunk_manifest<'a>(
        &'a self,
        registry: &'a str,
        repository: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<ChunkManifest, TrackerError>>;
}
