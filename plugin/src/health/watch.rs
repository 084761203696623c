//! The seams that report into [`Health`] as traffic passes: [`WatchedTrackers`] (the swarm's
//! trackers, each one's announces recorded) and [`LiveSource`] (the blob source the remote
//! path and the mirror fetch from: fetches in flight counted, and switched to the swarm when
//! a swarm that could not start at first comes up).

use std::ops::Range;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::StreamExt;
use shoal_p2p::chunk::ChunkManifest;
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::BlobStream;
use shoal_p2p::source::{BlobSource, Reader, VerifiedStream};
use shoal_p2p::tracker::{Announce, HttpTrackers, PeerEntry, Tracker, TrackerError};
use shoal_p2p::Digest;

use super::{Health, InFlight};

/// The swarm's trackers, as [`HttpTrackers`] asks them, with every announce's outcome per
/// tracker and the peers they list reported to [`Health`].
pub struct WatchedTrackers {
    trackers: HttpTrackers,
    health: Health,
}

impl WatchedTrackers {
    /// `trackers`, reporting to `health`.
    pub fn new(trackers: HttpTrackers, health: Health) -> Self {
        Self { trackers, health }
    }

    async fn announce_each(&self, announce: &Announce) -> Result<(), TrackerError> {
        let answers = self.trackers.announce_each(announce).await;
        let now = Instant::now();
        for (url, answer) in &answers {
            let shown = answer.as_ref().map(|_| ()).map_err(shown_for_tracker);
            self.health.tracker_result(url, shown, now);
        }
        HttpTrackers::announce_outcome(announce, answers)
    }
}

/// What the status page shows of one tracker's failed announce, next to the tracker's URL:
/// the request and why it failed.
fn shown_for_tracker(e: &TrackerError) -> String {
    match e {
        TrackerError::Request {
            request, failure, ..
        } => format!("{request}: {failure}"),
        other => other.to_string(),
    }
}

impl Tracker for WatchedTrackers {
    fn announce<'a>(&'a self, announce: &'a Announce) -> BoxFuture<'a, Result<(), TrackerError>> {
        Box::pin(self.announce_each(announce))
    }

    fn peers<'a>(
        &'a self,
        digest: &'a Digest,
        self_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PeerEntry>, TrackerError>> {
        Box::pin(async move {
            let peers = self.trackers.peers(digest, self_id).await?;
            self.health.peers_listed(
                peers.iter().map(|p| (p.peer_id.as_str(), p.addr)),
                Instant::now(),
            );
            Ok(peers)
        })
    }

    fn chunk_manifest<'a>(
        &'a self,
        registry: &'a str,
        repository: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<ChunkManifest, TrackerError>> {
        self.trackers.chunk_manifest(registry, repository, digest)
    }
}

/// Where blobs come from now: shared by every [`LiveSource`] of a node, switched once the
/// swarm starts.
pub type SourceSlot = Arc<RwLock<Arc<dyn BlobSource>>>;

/// A blob source that fetches from whatever its [`SourceSlot`] holds at the time of the
/// fetch, counting each fetch in `in_flight` until its stream is dropped.
pub struct LiveSource {
    slot: SourceSlot,
    in_flight: InFlight,
}

impl LiveSource {
    /// Fetches from `slot`, counted in `in_flight`.
    pub fn new(slot: SourceSlot, in_flight: InFlight) -> Self {
        Self { slot, in_flight }
    }

    fn current(&self) -> Arc<dyn BlobSource> {
        self.slot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `fetch` on the current source; the stream counts as one in flight.
    fn counted<'a>(
        &'a self,
        fetch: impl FnOnce(Arc<dyn BlobSource>) -> BoxFuture<'a, Result<BlobStream, shoal_p2p::Error>>
            + Send
            + 'a,
    ) -> BoxFuture<'a, Result<BlobStream, shoal_p2p::Error>> {
        let guard = self.in_flight.enter();
        let source = self.current();
        Box::pin(async move { Ok(held_while(fetch(source).await?, guard)) })
    }
}

/// `stream`, holding `guard` until it is dropped.
fn held_while<G: Send + 'static>(stream: BlobStream, guard: G) -> BlobStream {
    Box::pin(stream.map(move |item| {
        let _held = &guard;
        item
    }))
}

impl BlobSource for LiveSource {
    fn fetch_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, shoal_p2p::Error>> {
        self.counted(move |source| {
            Box::pin(async move { source.fetch_as(image, digest, reader).await })
        })
    }

    fn fetch_verified_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<VerifiedStream, shoal_p2p::Error>> {
        let guard = self.in_flight.enter();
        let source = self.current();
        Box::pin(async move {
            let stream = source.fetch_verified_as(image, digest, reader).await?;
            Ok(stream.wrap(|s| held_while(s, guard)))
        })
    }

    fn fetch_range_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        range: Range<u64>,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, shoal_p2p::Error>> {
        self.counted(move |source| {
            Box::pin(async move { source.fetch_range_as(image, digest, range, reader).await })
        })
    }
}
