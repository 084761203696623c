//! Prometheus metrics of the tracker, the chunk-manifest service and the optional BitTorrent
//! export (the seeder's upload side is [`shoal_p2p::metrics::UploadMetrics`]).
//! prometheus-client adds `_total` to counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use shoal_p2p::metrics::Registry;

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

/// The chunk-manifest service's metrics.
#[derive(Clone, Debug)]
pub struct ManifestMetrics {
    /// Requests, by result.
    pub requests: Family<ResultLabel, Counter>,
    /// Seconds spent making one manifest (reading the blob and hashing it).
    pub seconds: Histogram,
    /// Blob bytes read from the registry to make manifests.
    pub registry_read_bytes: Counter,
}

impl Default for ManifestMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            registry_read_bytes: Counter::default(),
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
    }

    /// Counts one request that ended with `result`.
    pub fn request(&self, result: &'static str) {
        self.requests.get_or_create(&ResultLabel { result }).inc();
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
