//! Prometheus metrics of the swarm, shared by shoald and shoal-registry-ext. Names follow
//! `shoal_<subsystem>_<name>_{total,seconds,bytes}`; prometheus-client adds `_total` to
//! counters when it encodes them.
//!
//! A component holds its metrics struct (cheap clones of atomics) and registers it once in the
//! process's [`Registry`]; [`render`] gives the text exposition format for `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
pub use prometheus_client::registry::Registry;

/// Labels of a byte or chunk counter split by where the bytes came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `peer` or `registry`.
    pub source: &'static str,
}

/// Labels of a failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The download side of a node: where chunks came from and how fetches went.
#[derive(Clone, Debug)]
pub struct SwarmMetrics {
    /// Verified blob bytes received, by source (`peer`, `registry`).
    pub bytes: Family<SourceLabel, Counter>,
    /// Verified chunks received, by source.
    pub chunks: Family<SourceLabel, Counter>,
    /// Chunk fetches that failed, by reason (`hash`, `transport`, `busy`, `not_held`,
    /// `overdue`, `registry`).
    pub chunk_failures: Family<ReasonLabel, Counter>,
    /// Peers dropped for a blob after sending a chunk that failed its hash.
    pub peers_dropped: Counter,
    /// Peers known for the blobs being fetched now.
    pub peers: Gauge,
    /// Blobs fetched whole from the registry because the swarm could not be used (tracker or
    /// manifest service unreachable, no manifest).
    pub registry_fallbacks: Counter,
    /// Blob fetches by how they ended (`ok`, `error`).
    pub blob_fetches: Family<ReasonLabel, Counter>,
    /// Seconds from the start of a blob fetch to its last verified byte.
    pub fetch_seconds: Histogram,
    /// Have streams this node is subscribed to (opening or open), across blobs.
    pub have_streams: Gauge,
    /// Have-stream lines received.
    pub have_updates: Counter,
}

/// The reasons of [`SwarmMetrics::chunk_failures`].
pub const CHUNK_FAILURE_REASONS: [&str; 6] = [
    "hash",
    "transport",
    "busy",
    "not_held",
    "overdue",
    "registry",
];

impl Default for SwarmMetrics {
    /// Every label value (sources, failure reasons, fetch results) present at 0 from the
    /// start, so that rates and ratios have data before the first chunk or failure.
    fn default() -> Self {
        let m = Self {
            bytes: Family::default(),
            chunks: Family::default(),
            chunk_failures: Family::default(),
            peers_dropped: Counter::default(),
            peers: Gauge::default(),
            registry_fallbacks: Counter::default(),
            blob_fetches: Family::default(),
            fetch_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            have_streams: Gauge::default(),
            have_updates: Counter::default(),
        };
        for source in ["peer", "registry"] {
            let _ = m.bytes.get_or_create(&SourceLabel { source });
            let _ = m.chunks.get_or_create(&SourceLabel { source });
        }
        for reason in CHUNK_FAILURE_REASONS {
            let _ = m.chunk_failures.get_or_create(&ReasonLabel { reason });
        }
        for reason in ["ok", "error"] {
            let _ = m.blob_fetches.get_or_create(&ReasonLabel { reason });
        }
        m
    }
}

impl SwarmMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shoal_swarm_received_bytes",
            "Verified blob bytes received, by source (peer or registry)",
            self.bytes.clone(),
        );
        registry.register(
            "shoal_swarm_chunks",
            "Verified chunks received, by source (peer or registry)",
            self.chunks.clone(),
        );
        registry.register(
            "shoal_swarm_chunk_failures",
            "Chunk fetches that failed, by reason",
            self.chunk_failures.clone(),
        );
        registry.register(
            "shoal_swarm_peers_dropped",
            "Peers dropped for a blob after a chunk failed its hash",
            self.peers_dropped.clone(),
        );
        registry.register(
            "shoal_swarm_peers",
            "Peers known for the blobs being fetched now",
            self.peers.clone(),
        );
        registry.register(
            "shoal_swarm_registry_fallbacks",
            "Blobs fetched whole from the registry because the swarm was unavailable",
            self.registry_fallbacks.clone(),
        );
        registry.register(
            "shoal_swarm_blob_fetches",
            "Blob fetches, by result",
            self.blob_fetches.clone(),
        );
        registry.register(
            "shoal_swarm_fetch_seconds",
            "Seconds from the start of a blob fetch to its last verified byte",
            self.fetch_seconds.clone(),
        );
        registry.register(
            "shoal_swarm_have_streams",
            "Have streams this node is subscribed to (opening or open)",
            self.have_streams.clone(),
        );
        registry.register(
            "shoal_swarm_have_updates",
            "Have-stream lines received from peers",
            self.have_updates.clone(),
        );
    }

    /// Counts `n` verified bytes (one chunk) from `source` (`"peer"` or `"registry"`).
    pub fn received(&self, source: &'static str, n: u64) {
        let label = SourceLabel { source };
        self.bytes.get_or_create(&label).inc_by(n);
        self.chunks.get_or_create(&label).inc();
    }

    /// Counts one failed chunk fetch.
    pub fn chunk_failed(&self, reason: &'static str) {
        self.chunk_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// The upload side: what this node (or the registry extension's seeder) served to peers.
#[derive(Clone, Debug, Default)]
pub struct UploadMetrics {
    /// Bytes sent to peers.
    pub bytes: Counter,
    /// Chunk requests served, by result (`ok`, `not_held`, `busy`, `bad_request`, `error`).
    pub requests: Family<ReasonLabel, Counter>,
    /// Uploads in progress.
    pub active: Gauge,
    /// Have streams served now.
    pub have_streams: Gauge,
}

impl UploadMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shoal_upload_sent_bytes",
            "Chunk bytes sent to peers",
            self.bytes.clone(),
        );
        registry.register(
            "shoal_upload_requests",
            "Chunk requests from peers, by result",
            self.requests.clone(),
        );
        registry.register(
            "shoal_upload_active",
            "Chunk uploads in progress",
            self.active.clone(),
        );
        registry.register(
            "shoal_upload_have_streams",
            "Have streams served to peers now",
            self.have_streams.clone(),
        );
    }

    /// Counts one chunk request that ended with `result`.
    pub fn request(&self, result: &'static str) {
        self.requests
            .get_or_create(&ReasonLabel { reason: result })
            .inc();
    }
}

/// The text exposition of `registry` (for `GET /metrics`, content type
/// `application/openmetrics-text; version=1.0.0; charset=utf-8`).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`: [`render`] of `registry`, for a daemon's metrics listener.
pub fn router(registry: std::sync::Arc<Registry>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                    render(&registry),
                )
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_counters_with_their_names() {
        let mut registry = Registry::default();
        let swarm = SwarmMetrics::default();
        swarm.register(&mut registry);
        let upload = UploadMetrics::default();
        upload.register(&mut registry);
        swarm.received("peer", 4096);
        swarm.received("registry", 10);
        swarm.chunk_failed("hash");
        upload.bytes.inc_by(7);
        let text = render(&registry);
        assert!(
            text.contains("shoal_swarm_received_bytes_total{source=\"peer\"} 4096"),
            "{text}"
        );
        assert!(text.contains("shoal_swarm_chunk_failures_total{reason=\"hash\"} 1"));
        assert!(text.contains("shoal_upload_sent_bytes_total 7"));
        assert!(text.contains("shoal_swarm_fetch_seconds_bucket"));
        assert!(text.contains("shoal_swarm_have_streams 0"));
        assert!(text.contains("shoal_swarm_have_updates_total 0"));
        assert!(text.contains("shoal_upload_have_streams 0"));
        // Present at 0 before anything happened.
        assert!(text.contains("shoal_swarm_chunk_failures_total{reason=\"overdue\"} 0"));
        assert!(text.contains("shoal_swarm_blob_fetches_total{reason=\"error\"} 0"));
    }
}
