//! Prometheus metrics of the tracker, the chunk-manifest service and the optional BitTorrent
//! export (the seeder's upload side is [`shoal_p2p::metrics::UploadMetrics`]).
//! prometheus-client adds `_total` to counters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use shoal_p2p::metrics::Registry;
use shoal_p2p::Digest;

/// Labels of a manifest request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `cached`, `made`, `bad_request`, `wrong_registry`, `not_found`, `registry_error`,
    /// `error`.
    pub result: &'static str,
}

/// The tracker's metrics.
#[derive(Clone, Debug, Default)]
pub struct TrackerMetrics {
    /// Announces accepted.
    pub announces: Counter,
    /// Live peers.
    pub peers: Gauge,
    /// Peer lists served.
    pub peer_lists: Counter,
    /// Announces refused because their `peer_id` is not the node name of the client
    /// certificate (`reason="identity"`).
    pub announces_refused: Family<ReasonLabel, Counter>,
    /// Delta announces answered with a request for the whole state (the tracker did not hold
    /// their base: it restarted, a delta was lost, the peer expired).
    pub full_state_requests: Counter,
}

impl TrackerMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shoal_tracker_announces",
            "Announces accepted from peers",
            self.announces.clone(),
        );
        registry.register(
            "shoal_tracker_peers",
            "Peers heard from within the peer TTL",
            self.peers.clone(),
        );
        registry.register(
            "shoal_tracker_peer_lists",
            "Peer lists served",
            self.peer_lists.clone(),
        );
        registry.register(
            "shoal_tracker_announces_refused",
            "Announces refused, by reason (identity: the peer id is not the certificate's node name)",
            self.announces_refused.clone(),
        );
        registry.register(
            "shoal_tracker_full_state_requests",
            "Delta announces answered with a request for the whole state (the tracker did not hold their base)",
            self.full_state_requests.clone(),
        );
    }
}

/// How long a blob asked for counts once in [`ManifestMetrics::distinct_blob_bytes`]: asked
/// again within this time it is not counted again. The window of the registry-bytes alert
/// (`deploy/monitoring/alerts.yaml`) is the same.
pub const DISTINCT_WINDOW: Duration = Duration::from_secs(3600);

/// Most blobs [`DistinctBlobs`] remembers (then the ones seen longest ago are forgotten).
const MAX_DISTINCT: usize = 100_000;

/// Which blobs were asked for within [`DISTINCT_WINDOW`] (pure: the caller gives the time).
#[derive(Debug, Default)]
pub struct DistinctBlobs {
    /// When each blob was last counted.
    counted: HashMap<Digest, Instant>,
}

impl DistinctBlobs {
    /// Whether a request for `digest` at `now` counts: the blob was not counted within
    /// [`DISTINCT_WINDOW`] before. Records it if so.
    pub fn first_in_window(&mut self, digest: &Digest, now: Instant) -> bool {
        if let Some(&at) = self.counted.get(digest) {
            if now.saturating_duration_since(at) < DISTINCT_WINDOW {
                return false;
            }
        }
        if self.counted.len() >= MAX_DISTINCT {
            self.counted
                .retain(|_, at| now.saturating_duration_since(*at) < DISTINCT_WINDOW);
            if self.counted.len() >= MAX_DISTINCT {
                self.counted.clear();
            }
        }
        self.counted.insert(digest.clone(), now);
        true
    }
}

/// The chunk-manifest service's metrics.
#[derive(Clone, Debug)]
pub struct ManifestMetrics {
    /// Requests, by result.
    pub requests: Family<ResultLabel, Counter>,
    /// Seconds spent making one manifest (reading the blob and hashing it).
    pub seconds: Histogram,
    /// Blob bytes read from the registry to make manifests.
    pub registry_read_bytes: Counter,
    /// Sizes of the blobs nodes asked manifests for, each blob counted once per
    /// [`DISTINCT_WINDOW`]: the bytes the cluster pulled through the swarm, each blob once,
    /// which is what the registry would serve with a perfect swarm.
    pub distinct_blob_bytes: Counter,
    distinct: Arc<Mutex<DistinctBlobs>>,
}

impl Default for ManifestMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            registry_read_bytes: Counter::default(),
            distinct_blob_bytes: Counter::default(),
            distinct: Arc::default(),
        }
    }
}

impl ManifestMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shoal_manifest_requests",
            "Chunk-manifest requests, by result",
            self.requests.clone(),
        );
        registry.register(
            "shoal_manifest_seconds",
            "Seconds spent making one chunk manifest",
            self.seconds.clone(),
        );
        registry.register(
            "shoal_manifest_registry_read_bytes",
            "Blob bytes read from the registry to make chunk manifests",
            self.registry_read_bytes.clone(),
        );
        registry.register(
            "shoal_manifest_distinct_blob_bytes",
            "Sizes of the blobs nodes asked chunk manifests for, each blob once an hour",
            self.distinct_blob_bytes.clone(),
        );
    }

    /// Counts one request that ended with `result`.
    pub fn request(&self, result: &'static str) {
        self.requests.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a manifest served for blob `digest` of `size` bytes at `now` in
    /// [`Self::distinct_blob_bytes`], unless the blob was counted within the window.
    pub fn asked(&self, digest: &Digest, size: u64, now: Instant) {
        let mut distinct = self.distinct.lock().unwrap_or_else(|p| p.into_inner());
        if distinct.first_in_window(digest, now) {
            self.distinct_blob_bytes.inc_by(size);
        }
    }
}

/// The BitTorrent export's metrics (registered only when it is enabled).
#[derive(Clone, Debug)]
pub struct TorrentMetrics {
    /// `.torrent` requests, by result (as [`ManifestMetrics::requests`]).
    pub requests: Family<ResultLabel, Counter>,
    /// Torrents made (hashed and added to the seeding session).
    pub made: Counter,
    /// Seconds spent making one torrent (seeding the blob if needed, hashing, adding).
    pub seconds: Histogram,
    /// Torrents dropped to stay within `torrent.max_bytes`.
    pub evicted: Counter,
    /// Torrents the session seeds.
    pub seeding: Gauge,
    /// Bytes of torrent data kept.
    pub kept_bytes: Gauge,
    /// Bytes the seeding session uploaded to BitTorrent peers.
    pub uploaded_bytes: Counter,
    /// BitTorrent peers connected to the seeding session.
    pub peers: Gauge,
}

impl Default for TorrentMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            made: Counter::default(),
            seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            evicted: Counter::default(),
            seeding: Gauge::default(),
            kept_bytes: Gauge::default(),
            uploaded_bytes: Counter::default(),
            peers: Gauge::default(),
        }
    }
}

impl TorrentMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry;
        r.register(
            "shoal_torrent_requests",
            ".torrent requests, by result",
            self.requests.clone(),
        );
        r.register("shoal_torrent_made", "Torrents made", self.made.clone());
        r.register(
            "shoal_torrent_seconds",
            "Seconds spent making one torrent",
            self.seconds.clone(),
        );
        r.register(
            "shoal_torrent_evicted",
            "Torrents dropped to stay within torrent.max_bytes",
            self.evicted.clone(),
        );
        r.register(
            "shoal_torrent_seeding",
            "Torrents the BitTorrent session seeds",
            self.seeding.clone(),
        );
        r.register(
            "shoal_torrent_kept_bytes",
            "Bytes of torrent data kept",
            self.kept_bytes.clone(),
        );
        r.register(
            "shoal_torrent_uploaded_bytes",
            "Bytes uploaded to BitTorrent peers",
            self.uploaded_bytes.clone(),
        );
        r.register(
            "shoal_torrent_peers",
            "BitTorrent peers connected to the seeding session",
            self.peers.clone(),
        );
    }

    /// Counts one request that ended with `result`.
    pub fn request(&self, result: &'static str) {
        self.requests.get_or_create(&ResultLabel { result }).inc();
    }
}

/// The hot cache's metrics. Hit ratio = hits / (hits + misses); requests of chunks of blobs
/// too large for the cache are counted as `bypassed`, in neither.
#[derive(Clone, Debug, Default)]
pub struct HotCacheMetrics {
    /// Chunk requests served from memory.
    pub hits: Counter,
    /// Chunk requests of small blobs read from the seed cache's disk.
    pub misses: Counter,
    /// Chunk requests of blobs larger than `hot_cache.max_blob_bytes` (not cached).
    pub bypassed: Counter,
    /// Chunks pushed out to make room.
    pub evictions: Counter,
    /// Bytes held.
    pub bytes: Gauge,
    /// Chunks held.
    pub entries: Gauge,
}

impl HotCacheMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shoal_hotcache_hits",
            "Seeder chunk requests served from the in-memory hot cache",
            self.hits.clone(),
        );
        registry.register(
            "shoal_hotcache_misses",
            "Seeder chunk requests of small blobs read from the seed cache's disk",
            self.misses.clone(),
        );
        registry.register(
            "shoal_hotcache_bypassed",
            "Seeder chunk requests of blobs too large for the hot cache",
            self.bypassed.clone(),
        );
        registry.register(
            "shoal_hotcache_evictions",
            "Chunks pushed out of the hot cache to make room",
            self.evictions.clone(),
        );
        registry.register(
            "shoal_hotcache_bytes",
            "Bytes held in the hot cache",
            self.bytes.clone(),
        );
        registry.register(
            "shoal_hotcache_entries",
            "Chunks held in the hot cache",
            self.entries.clone(),
        );
    }
}

/// Labels of a notification event counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The event's action as sent (`push`, `pull`, `mount`, `delete`, ...; `other` for
    /// anything unexpected).
    pub action: &'static str,
    /// `queued` (a warm-up was queued), `ignored` (nothing to do: another action, media type or
    /// registry), `dropped` (the warm-up queue was full).
    pub result: &'static str,
}

/// The push hook's metrics.
#[derive(Clone, Debug)]
pub struct NotifyMetrics {
    /// Events received, by action and result.
    pub events: Family<EventLabels, Counter>,
    /// Notification requests refused, by reason (`unauthorized`, `bad_request`).
    pub refused: Family<ReasonLabel, Counter>,
    /// Warm-ups finished, by result (`ok`, `error`).
    pub warmups: Family<ResultLabel, Counter>,
    /// Seconds one warm-up took (a blob: manifest made and blob seeded; an image manifest:
    /// fetched and parsed).
    pub warmup_seconds: Histogram,
}

/// Labels of a refusal counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

impl Default for NotifyMetrics {
    fn default() -> Self {
        Self {
            events: Family::default(),
            refused: Family::default(),
            warmups: Family::default(),
            warmup_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        }
    }
}

impl NotifyMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shoal_notify_events",
            "Registry notification events received, by action and result",
            self.events.clone(),
        );
        registry.register(
            "shoal_notify_refused",
            "Notification requests refused, by reason",
            self.refused.clone(),
        );
        registry.register(
            "shoal_notify_warmups",
            "Warm-ups (chunk manifest + seed cache) finished, by result",
            self.warmups.clone(),
        );
        registry.register(
            "shoal_notify_warmup_seconds",
            "Seconds one warm-up took",
            self.warmup_seconds.clone(),
        );
    }

    /// Counts one event.
    pub fn event(&self, action: &'static str, result: &'static str) {
        self.events
            .get_or_create(&EventLabels { action, result })
            .inc();
    }
}

/// Labels of the preheat metrics: a node's state (`up`, `down`), a job's (`submitted`,
/// `done`, `failed`, `cancelled`) or a finished task's (`done`, `failed`, `cancelled`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// The preheat coordinator's metrics.
#[derive(Clone, Debug, Default)]
pub struct PreheatMetrics {
    /// Registered nodes, by state.
    pub nodes: Family<StateLabel, Gauge>,
    /// Heartbeats from known nodes.
    pub heartbeats: Counter,
    /// Jobs submitted, and finished by state.
    pub jobs: Family<StateLabel, Counter>,
    /// Tasks of finished jobs, by state.
    pub tasks: Family<StateLabel, Counter>,
}

impl PreheatMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shoal_preheat_nodes",
            "Registered preheat nodes, by state",
            self.nodes.clone(),
        );
        registry.register(
            "shoal_preheat_heartbeats",
            "Heartbeats from registered nodes",
            self.heartbeats.clone(),
        );
        registry.register(
            "shoal_preheat_jobs",
            "Preheat jobs submitted, and finished by state",
            self.jobs.clone(),
        );
        registry.register(
            "shoal_preheat_tasks",
            "Tasks (node, image) of finished preheat jobs, by state",
            self.tasks.clone(),
        );
    }

    /// Counts `n` in family `f` under `state`.
    pub(crate) fn count(f: &Family<StateLabel, Counter>, state: &str, n: u64) {
        f.get_or_create(&StateLabel {
            state: state.to_owned(),
        })
        .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_counts_once_per_window() {
        let m = ManifestMetrics::default();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let t0 = Instant::now();
        m.asked(&a, 100, t0);
        // Eight nodes asking for the same blob within the hour: once.
        for i in 0..8 {
            m.asked(&a, 100, t0 + Duration::from_secs(i * 60));
        }
        m.asked(&b, 10, t0 + Duration::from_secs(1));
        assert_eq!(m.distinct_blob_bytes.get(), 110);
        // Asked again after the window: counted again.
        m.asked(&a, 100, t0 + DISTINCT_WINDOW + Duration::from_secs(1));
        assert_eq!(m.distinct_blob_bytes.get(), 210);
        let mut registry = Registry::default();
        m.register(&mut registry);
        let text = shoal_p2p::metrics::render(&registry);
        assert!(
            text.contains("shoal_manifest_distinct_blob_bytes_total 210"),
            "{text}"
        );
    }

    #[test]
    fn the_memo_stays_bounded() {
        let mut d = DistinctBlobs::default();
        let t0 = Instant::now();
        for i in 0..MAX_DISTINCT + 10 {
            assert!(d.first_in_window(&Digest::of(&i.to_le_bytes()), t0));
        }
        assert!(d.counted.len() <= MAX_DISTINCT);
    }
}
