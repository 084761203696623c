//! The node side of the swarm (DESIGN "Swarm"): [`Swarm`] is a [`BlobSource`] that fetches a
//! layer blob chunk by chunk from peers and the registry, and streams it in order to the
//! unpacker while chunks arrive.
//!
//! - A blob already in the node's [`BlobCache`] is served from there.
//! - Otherwise the blob's chunk manifest comes from the trackers (the registry extension); a
//!   [`download::Download`] assembles the blob in a [`crate::cache::PartialFile`] and is
//!   shared by every concurrent fetch of the same digest (one download per blob per node),
//!   whole blobs and ranges alike ([`BlobSource::fetch_range_as`] reads its range out of the
//!   download as the chunks covering it arrive).
//!   The [`scheduler`] fetches chunks from peers (several in flight per peer and across
//!   peers; in order near the reader, rarest first further ahead; overdue chunks re-asked
//!   elsewhere) and from the registry (HTTP Range, merged) for chunks no peer holds. Every
//!   chunk is checked against the manifest; a peer that sends a bad chunk is dropped for the
//!   blob. The whole blob is checked against its digest before it is committed to the cache.
//! - Chunks are announced to the trackers as they arrive, so a half-done node seeds too; the
//!   node's chunk server ([`crate::peer::router`]) serves them through [`Swarm`]'s
//!   [`ChunkProvider`] implementation (downloads in progress, then the cache), and so are
//!   their have streams: a download subscribes to the have streams of up to
//!   [`SwarmConfig::have_peers`] of the nodes its peer lists name, and takes each line as
//!   that peer's state ([`subscribe`]).
//! - A download is from one registry, its origin: the registry of the image that started it,
//!   whose extension made the chunk manifest; the blob is committed to the cache as known
//!   from it. A fetch for a client of shoald's mirror ([`Reader::Client`]) of another
//!   registry is not attached to it, and gets no cached blob that is not known from its
//!   registry ([`Error::OtherOrigin`]: the mirror passes it upstream).
//! - Each reader attached to a download adds a grant: its repository of the origin registry
//!   and its credentials (a client's own, or the node's). Each registry range goes to the
//!   newest grant's repository with that grant's credentials, so a token is only sent to the
//!   registry that issued it, for the repository it was issued for; a grant the registry
//!   refuses is dropped and the next range uses an older one. Sharing a download is safe
//!   because every client checked with the registry that it may pull this very blob, and the
//!   bytes are the same, verified blob whoever's credentials fetched them.
//! - If the trackers cannot give a manifest (down, unreachable, no manifest), the blob is
//!   fetched whole from the registry and cached, as without a swarm: the swarm can only make
//!   pulls faster, never break them.

mod download;
mod error;
mod fetch;
#[cfg(test)]
mod have_tests;
#[cfg(test)]
mod origin_tests;
pub mod planner;
#[cfg(test)]
mod planner_tests;
mod scheduler;
mod subscribe;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod verified_tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{Notify, OnceCell};

use crate::cache::{BlobCache, CachingSource};
use crate::chunk::ChunkManifest;
use crate::digest::Digest;
use crate::metrics::SwarmMetrics;
use crate::peer::have::HaveFeed;
use crate::peer::{ChunkProvider, Held, PeerFetcher};
use crate::reference::ImageReference;
use crate::registry::BlobStream;
use crate::single_flight::{Entry, InFlight, Joined};
use crate::source::{BlobSource, Reader, VerifiedStream};
use crate::tracker::{Announce, BlobHave, ChunkSet, Tracker, UploadStats};
use crate::Error;
use download::Download;
pub use error::SwarmError;

/// Subdirectory of the cache directory holding the chunk manifests of cached blobs, so a
/// restarted node announces (seeds) what it already holds.
const MANIFEST_DIR: &str = "chunk-manifests";

/// How the node's downloads behave. Every field has a default ([`SwarmConfig::new`]).
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// This node's unique name, announced to the trackers.
    pub node_name: String,
    /// Where this node's chunk server is reachable by peers.
    pub advertise: SocketAddr,
    /// Chunks asked of one peer at once, per blob. Default 1.
    pub per_peer_in_flight: usize,
    /// Chunk requests to peers in flight on this node, across its blobs, and one blob's
    /// limit on its requests (peers and registry together): one blob alone may use them
    /// all, and each blob downloading is sure of one (so at most this plus one per other
    /// blob at once). Default 8, the node's upload slots: a node asks as much of the swarm
    /// as it serves.
    pub in_flight: usize,
    /// Registry range requests in flight per blob. Default 2.
    pub registry_in_flight: usize,
    /// Most bytes in one merged registry range request. Default 16 MiB.
    pub max_registry_range: u64,
    /// Chunk requests from this node to one registry-side seeder at once, across all blobs.
    /// Default 1: the seeder's bandwidth is shared by every node, and a node that holds a
    /// chunk gives it on.
    pub per_seeder_in_flight: usize,
    /// Chunks just past the reader fetched in order (when other peers hold them). Default 2.
    pub near_window: usize,
    /// Announce at least this often. Default 1 s.
    pub announce_interval: Duration,
    /// Ask the trackers for peers this often while a blob downloads. Default 500 ms
    /// ([`DEFAULT_PEER_REFRESH`]; shoald takes [`PACED_PEER_REFRESH`] when it paces its
    /// uploads).
    pub peer_refresh: Duration,
    /// How long to wait for a chunk manifest before fetching the blob whole from the
    /// registry. Default 30 s.
    pub manifest_timeout: Duration,
    /// Have streams a download keeps open to the nodes its peer lists name (their state as
    /// it changes, instead of at the next peer list). Default 16; 0 turns them off.
    pub have_peers: usize,
}

impl SwarmConfig {
    /// Defaults for a node called `node_name` reachable at `advertise`.
    pub fn new(node_name: impl Into<String>, advertise: SocketAddr) -> Self {
        Self {
            node_name: node_name.into(),
            advertise,
            per_peer_in_flight: 1,
            per_seeder_in_flight: 1,
            in_flight: 8,
            registry_in_flight: 2,
            max_registry_range: 16 << 20,
            near_window: 2,
            announce_interval: Duration::from_secs(1),
            peer_refresh: DEFAULT_PEER_REFRESH,
            manifest_timeout: Duration::from_secs(30),
            have_peers: DEFAULT_HAVE_PEERS,
        }
    }
}

/// A download's peer refresh by default ([`SwarmConfig::peer_refresh`]).
pub const DEFAULT_PEER_REFRESH: Duration = Duration::from_millis(500);
/// A download's peer refresh for a node whose chunk server paces its uploads and serves the
/// oldest first (shoald's `upload_bytes_per_sec`). Such an uploader hands a chunk over whole
/// after one chunk time instead of all its uploads together after as many chunk times, so
/// new holders appear sooner and are worth hearing of sooner. Simulated, 1,000 nodes
/// (docs/simulator.md, "Paced uploads and the peer refresh"): paced uploads took 1.141x the
/// chunked bound at the median (p99 1.189x) with a 500 ms refresh, against 1.159x (1.165x)
/// unpaced, and 1.124x (1.136x) with 200 ms; 100 ms asked twice as many lists for no more.
/// Its cost is in the trackers' lists: below 1,000 peers 2.4 times as many; at 5,000 nodes
/// starting at once 0.90 times the lists of unpaced nodes before starved downloads' fresh
/// lists ([`crate::tracker::Tracker::fresh_peers`]) waited for half the trackers' pacing
/// ([`crate::tracker::proto::reuse_kept_list`]), 1.42 times when they came once per
/// [`crate::swarm::planner::refresh::FRESH_LIST_EVERY`], and 2.3 times when they came at
/// every refresh (docs/simulator.md, docs/tracker.md).
pub const PACED_PEER_REFRESH: Duration = Duration::from_millis(200);

/// A download's peer refresh when none is configured: [`PACED_PEER_REFRESH`] on a node that
/// paces its uploads, else [`DEFAULT_PEER_REFRESH`]. shoald's config and the simulator's
/// paced network both take it from here.
pub fn peer_refresh_for(paced_uploads: bool) -> Duration {
    if paced_uploads {
        PACED_PEER_REFRESH
    } else {
        DEFAULT_PEER_REFRESH
    }
}

/// Have streams a download keeps open by default ([`SwarmConfig::have_peers`]).
pub const DEFAULT_HAVE_PEERS: usize = 16;

/// Least time between two announces (but for a download's first, see
/// [`Swarm::run_announcer`]). A chunk is relayed only once the others know it is
/// here (this node's announce, then their peer refresh), so each hop of a chunk through the
/// swarm waits about half of this plus half a `peer_refresh`. 50 ms (and a 200 ms refresh)
/// made no measurable difference on the emulated cluster while asking 4 times as much of the
/// trackers (docs/swarm-benchmark.md), so it stays at 200 ms.
const ANNOUNCE_GAP: Duration = Duration::from_millis(200);

/// A download starting or running: `None` inside once the swarm cannot be used for it.
type DownloadSlot = Arc<OnceCell<Option<Arc<Download>>>>;

/// Reads the chunk server's upload stats.
type UploadStatsFn = Box<dyn Fn() -> UploadStats + Send + Sync>;

/// The node's swarm: a [`BlobSource`] and a [`ChunkProvider`]. Cloning shares it.
#[derive(Clone)]
pub struct Swarm {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: SwarmConfig,
    pub(crate) tracker: Arc<dyn Tracker>,
    pub(crate) peers: Arc<dyn PeerFetcher>,
    /// The registry, for ranges (the swarm's last resort per chunk).
    pub(crate) registry: Arc<dyn BlobSource>,
    /// The registry behind the cache: whole blobs when the swarm cannot be used.
    fallback: CachingSource<Arc<dyn BlobSource>>,
    pub(crate) cache: BlobCache,
    pub(crate) metrics: SwarmMetrics,
    /// Downloads in progress (or starting), by digest.
    downloads: InFlight<Digest, DownloadSlot>,
    /// Chunk counts of cached blobs whose manifest is known, for announcing them.
    seeded: Mutex<HashMap<Digest, u32>>,
    /// Upload stats reported with each announce.
    upload_stats: Mutex<Option<UploadStatsFn>>,
    /// Wakes the announcer (a chunk arrived), after the gap since its last round.
    pub(crate) announce_now: Notify,
    /// Wakes the announcer within the gap too: a download's first chunks are in flight.
    pub(crate) announce_new_blob: Notify,
    /// Throughput seen from each peer (bytes/s, smoothed), across blobs.
    pub(crate) peer_speed: Mutex<HashMap<SocketAddr, f64>>,
    /// Requests in flight to each registry-side seeder, across blobs.
    seeder_requests: Mutex<HashMap<SocketAddr, usize>>,
    /// Chunk requests to peers in flight, across blobs ([`SwarmConfig::in_flight`]).
    peer_requests: AtomicUsize,
}

impl Swarm {
    /// A swarm that fetches through `peers` and `registry`, asks `tracker`, and keeps blobs in
    /// `cache`. Call [`Swarm::run_announcer`] in a task for it to announce.
    pub fn new(
        config: SwarmConfig,
        tracker: Arc<dyn Tracker>,
        peers: Arc<dyn PeerFetcher>,
        registry: Arc<dyn BlobSource>,
        cache: BlobCache,
        metrics: SwarmMetrics,
    ) -> Self {
        let seeded = load_seeded(&cache);
        Self {
            inner: Arc::new(Inner {
                config,
                tracker,
                peers,
                fallback: CachingSource::new(registry.clone(), cache.clone()),
                registry,
                cache,
                metrics,
                downloads: InFlight::new(),
                seeded: Mutex::new(seeded),
                upload_stats: Mutex::new(None),
                announce_now: Notify::new(),
                announce_new_blob: Notify::new(),
                peer_speed: Mutex::new(HashMap::new()),
                seeder_requests: Mutex::new(HashMap::new()),
                peer_requests: AtomicUsize::new(0),
            }),
        }
    }

    /// Reports `stats` (the chunk server's upload meter) with every announce.
    pub fn set_upload_stats(&self, stats: impl Fn() -> UploadStats + Send + Sync + 'static) {
        *self.inner.upload_stats.lock().expect("lock") = Some(Box::new(stats));
    }

    /// The node's blob cache.
    pub fn cache(&self) -> &BlobCache {
        &self.inner.cache
    }

    /// The announce this node would send now: every download in progress with the chunks it
    /// holds and those it is fetching, and every cached blob whose manifest is known.
    pub fn announcement(&self) -> Announce {
        let mut blobs: HashMap<Digest, BlobHave> = HashMap::new();
        {
            let seeded = self.inner.seeded.lock().expect("lock");
            for (digest, &chunks) in seeded.iter() {
                if self.inner.cache.contains(digest) {
                    let have = BlobHave::new(digest.clone(), &ChunkSet::full(chunks));
                    blobs.insert(digest.clone(), have);
                }
            }
        }
        for download in self.active_downloads() {
            let held = download.held();
            let fetching = download.fetching();
            if held.count() > 0 || fetching.count() > 0 {
                let have = BlobHave::new(download.digest().clone(), &held).with_fetching(&fetching);
                blobs.insert(download.digest().clone(), have);
            }
        }
        let upload = match &*self.inner.upload_stats.lock().expect("lock") {
            Some(stats) => stats(),
            None => UploadStats::default(),
        };
        let mut blobs: Vec<BlobHave> = blobs.into_values().collect();
        blobs.sort_by(|a, b| a.digest.hex().cmp(b.digest.hex()));
        Announce {
            peer_id: self.inner.config.node_name.clone(),
            addr: self.inner.config.advertise,
            upload,
            blobs,
        }
    }

    /// Announces to the trackers every `announce_interval`, and soon after a chunk arrives
    /// (at most every [`ANNOUNCE_GAP`]), at once when a download's first chunks are in
    /// flight. Runs until the future is dropped; tracker failures are logged
    /// (once per outage) and retried at the next round.
    pub async fn run_announcer(self) {
        let mut failing = false;
        loop {
            let announce = self.announcement();
            match self.inner.tracker.announce(&announce).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("trackers reachable again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("announce failed (pulls fall back to the registry): {e}");
                    }
                    failing = true;
                }
            }
            // A download's first chunks in flight do not wait out the gap: the others' lists
            // learn of a pull's fetchers through that announce (the trackers do not pace it
            // either: it names a blob they were not told of).
            let new_blob = tokio::select! {
                _ = tokio::time::sleep(ANNOUNCE_GAP) => false,
                _ = self.inner.announce_new_blob.notified() => true,
            };
            if new_blob {
                continue;
            }
            let rest = self
                .inner
                .config
                .announce_interval
                .saturating_sub(ANNOUNCE_GAP);
            tokio::select! {
                _ = self.inner.announce_now.notified() => {}
                _ = self.inner.announce_new_blob.notified() => {}
                _ = tokio::time::sleep(rest) => {}
            }
        }
    }

    fn active_downloads(&self) -> Vec<Arc<Download>> {
        let downloads = self.inner.downloads.values();
        downloads
            .iter()
            .filter_map(|cell| cell.get().cloned().flatten())
            .collect()
    }

    /// The download of `digest`, joined (with `reader`'s grant) or started; `None` when the
    /// swarm cannot be used for it (no manifest), and the caller fetches from the registry;
    /// [`Error::OtherOrigin`] when a client of another registry than the download's
    /// asks.
    async fn download(
        &self,
        image: &ImageReference,
        digest: &Digest,
        reader: &Reader,
    ) -> Result<Option<Arc<Download>>, Error> {
        // Joined or started here; whoever gets to the cell first (and is not cancelled)
        // starts the download, the others wait for it.
        let Joined {
            value: cell, entry, ..
        } = self
            .inner
            .downloads
            .join_or_start(digest, |_| DownloadSlot::default());
        let started = cell
            .get_or_init(|| self.start_download(image, digest, reader, &entry))
            .await
            .clone();
        match &started {
            Some(download) => download.attach(image, reader)?,
            None => {
                // Let a later fetch try the swarm again.
                self.inner.downloads.remove(&entry);
            }
        }
        Ok(started)
    }

    async fn start_download(
        &self,
        image: &ImageReference,
        digest: &Digest,
        reader: &Reader,
        entry: &Entry<Digest>,
    ) -> Option<Arc<Download>> {
        let inner = &self.inner;
        let manifest = tokio::time::timeout(
            inner.config.manifest_timeout,
            inner
                .tracker
                .chunk_manifest(&image.registry, &image.repository, digest),
        )
        .await;
        let manifest = match manifest {
            Ok(Ok(m)) if m.digest == *digest && m.validate().is_ok() => m,
            Ok(Ok(m)) => {
                tracing::warn!(blob = %digest, got = %m.digest, "unusable chunk manifest; fetching from the registry");
                return None;
            }
            Ok(Err(e)) => {
                tracing::info!(blob = %digest, "no chunk manifest ({e}); fetching from the registry");
                return None;
            }
            Err(_) => {
                tracing::warn!(blob = %digest, "chunk manifest not ready after {:?}; fetching from the registry", inner.config.manifest_timeout);
                return None;
            }
        };
        let cache = inner.cache.clone();
        let size = manifest.size;
        let partial = match tokio::task::spawn_blocking(move || cache.partial(size)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::warn!(blob = %digest, "cannot store the blob for the swarm ({e}); fetching from the registry");
                return None;
            }
            Err(e) => {
                tracing::warn!(blob = %digest, "cannot store the blob for the swarm ({e})");
                return None;
            }
        };
        let download = match Download::new(image.clone(), manifest, partial) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                tracing::warn!(blob = %digest, "cannot store the blob for the swarm ({e}); fetching from the registry");
                return None;
            }
        };
        // Its first grant before its first registry range.
        if let Err(e) = download.attach(image, reader) {
            tracing::warn!(blob = %digest, "{e}");
            return None;
        }
        tokio::spawn(scheduler::run(
            self.clone(),
            download.clone(),
            entry.clone(),
        ));
        Some(download)
    }

    /// Called by the scheduler when a download ended: forget it (its blob is in the cache if
    /// it succeeded) and remember its manifest for announcing.
    pub(crate) fn finished(&self, download: &Download, entry: &Entry<Digest>, committed: bool) {
        if committed {
            let manifest = download.manifest();
            self.inner
                .seeded
                .lock()
                .expect("lock")
                .insert(manifest.digest.clone(), manifest.chunks.len() as u32);
            save_manifest(&self.inner.cache, manifest);
        }
        self.inner.downloads.remove(entry);
        self.inner.announce_now.notify_one();
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Takes one of this node's slots for requests to the seeder at `addr` (across blobs),
    /// if one is free.
    pub(crate) fn take_seeder_slot(&self, addr: SocketAddr) -> bool {
        let mut requests = self.inner.seeder_requests.lock().expect("lock");
        let n = requests.entry(addr).or_default();
        if *n < self.inner.config.per_seeder_in_flight {
            *n += 1;
            true
        } else {
            false
        }
    }

    /// Whether a download with `own` peer requests in flight may start another: while the
    /// node's are under [`SwarmConfig::in_flight`], or when it has none, so a blob the
    /// others crowd out still goes on (it is never stalled by them).
    pub(crate) fn request_room(&self, own: usize) -> bool {
        request_room(
            self.inner.config.in_flight,
            self.inner.peer_requests.load(Ordering::Relaxed),
            own,
        )
    }

    /// Counts a peer request started ([`Swarm::request_room`]).
    pub(crate) fn count_request(&self) {
        self.inner.peer_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives back a request counted with [`Swarm::count_request`].
    pub(crate) fn request_ended(&self) {
        let _ = self
            .inner
            .peer_requests
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// Gives back a slot taken with [`Swarm::take_seeder_slot`].
    pub(crate) fn release_seeder_slot(&self, addr: SocketAddr) {
        let mut requests = self.inner.seeder_requests.lock().expect("lock");
        let n = requests.entry(addr).or_default();
        *n = n.saturating_sub(1);
    }
}

/// [`Swarm::request_room`]'s rule: with `total` of the node's `limit` peer requests in
/// flight, a download with `own` may start another (the simulator's executor uses it too).
pub fn request_room(limit: usize, total: usize, own: usize) -> bool {
    own == 0 || total < limit
}

impl Swarm {
    /// The blob's download, joined or started, when the cache does not hold it and the
    /// swarm can have it; `None` (counted as a registry fallback when the cache does not
    /// hold it) for the cache or the registry.
    async fn swarm_download(
        &self,
        image: &ImageReference,
        digest: &Digest,
        reader: &Reader,
    ) -> Result<Option<Arc<Download>>, Error> {
        if self.inner.cache.contains(digest) {
            return Ok(None);
        }
        let download = self.download(image, digest, reader).await?;
        if download.is_none() {
            self.inner.metrics.registry_fallbacks.inc();
        }
        Ok(download)
    }

    /// The blob (`range` `None`) or a range of it, for `reader`: from the cache when it
    /// holds the blob; otherwise from the blob's download, joined or started (so concurrent
    /// readers, whole or ranges, share one download, which goes on to the whole blob); else
    /// from the registry through the cache. A client gets only bytes known from `image`'s
    /// registry (see the module documentation).
    async fn fetch_part(
        &self,
        image: &ImageReference,
        digest: &Digest,
        range: Option<Range<u64>>,
        reader: &Reader,
    ) -> Result<BlobStream, Error> {
        if let Some(download) = self.swarm_download(image, digest, reader).await? {
            return download.reader(range.unwrap_or(0..download.manifest().size), false);
        }
        let fallback = &self.inner.fallback;
        match range {
            None => fallback.fetch_as(image, digest, reader).await,
            Some(range) => {
                let fetch = fallback.fetch_range_as(image, digest, range, reader);
                fetch.await
            }
        }
    }
}

impl BlobSource for Swarm {
    fn fetch_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        Box::pin(self.fetch_part(image, digest, None, reader))
    }

    /// A blob downloaded through the swarm is hashed once, by its download (which checks it
    /// before committing it to the cache): the stream ends only once that check passed.
    /// Otherwise as [`Self::fetch_as`], from the cache or the registry, checked there.
    fn fetch_verified_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<VerifiedStream, Error>> {
        Box::pin(async move {
            if let Some(download) = self.swarm_download(image, digest, reader).await? {
                let whole = 0..download.manifest().size;
                return Ok(VerifiedStream::checked(download.reader(whole, true)?));
            }
            self.inner
                .fallback
                .fetch_verified_as(image, digest, reader)
                .await
        })
    }

    fn fetch_range_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        range: Range<u64>,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        Box::pin(self.fetch_part(image, digest, Some(range), reader))
    }
}

impl Swarm {
    /// The download of `digest` in progress on this node, if any (for the chunk server).
    fn download_in_progress(&self, digest: &Digest) -> Option<Arc<Download>> {
        self.inner
            .downloads
            .get(digest)
            .and_then(|c| c.get().cloned().flatten())
    }
}

impl ChunkProvider for Swarm {
    fn open(&self, digest: &Digest, range: Range<u64>) -> Option<Held> {
        let download = self.download_in_progress(digest);
        if let Some(download) = download {
            if let Some(held) = download.open(range.clone()) {
                return Some(held);
            }
        }
        self.inner.cache.open(digest, range)
    }

    /// A download in progress streams its state; a cached blob whose chunk manifest is known
    /// gives one `done` line; anything else has no have stream.
    fn have(&self, digest: &Digest) -> Option<HaveFeed> {
        let download = self.download_in_progress(digest);
        if let Some(download) = download {
            return Some(download.have_feed());
        }
        let chunks = self
            .inner
            .seeded
            .lock()
            .expect("lock")
            .get(digest)
            .copied()?;
        self.inner
            .cache
            .contains(digest)
            .then(|| HaveFeed::complete(chunks))
    }
}

fn manifest_path(cache: &BlobCache, digest: &Digest) -> PathBuf {
    cache
        .dir()
        .join(MANIFEST_DIR)
        .join(format!("sha256-{}.json", digest.hex()))
}

/// Keeps `manifest` beside the cache (best effort: without it the blob is just not seeded
/// after a restart).
fn save_manifest(cache: &BlobCache, manifest: &ChunkManifest) {
    let path = manifest_path(cache, &manifest.digest);
    let tmp = path.with_extension("tmp");
    let written = std::fs::create_dir_all(cache.dir().join(MANIFEST_DIR))
        .and_then(|()| std::fs::write(&tmp, manifest.to_json()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), "keeping a chunk manifest: {e}");
    }
}

/// Chunk counts of the cached blobs whose manifests were kept.
fn load_seeded(cache: &BlobCache) -> HashMap<Digest, u32> {
    let mut seeded = HashMap::new();
    let Ok(entries) = std::fs::read_dir(cache.dir().join(MANIFEST_DIR)) else {
        return seeded;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let manifest = std::fs::read(&path)
            .ok()
            .and_then(|b| ChunkManifest::from_json(&b).ok())
            .filter(|m| m.validate().is_ok());
        match manifest {
            Some(m) if cache.contains(&m.digest) => {
                seeded.insert(m.digest, m.chunks.len() as u32);
            }
            // Its blob was evicted (or the file is damaged): drop it.
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    seeded
}
