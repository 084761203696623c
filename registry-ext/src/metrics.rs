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
