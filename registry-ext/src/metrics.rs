//! Prometheus metrics of the tracker and the chunk-manifest service (the seeder's upload side
//! is [`shoal_p2p::metrics::UploadMetrics`]). prometheus-client adds `_total` to counters.

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
