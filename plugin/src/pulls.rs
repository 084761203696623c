//! What this node pulled, for Prometheus: every blob fetch of the snapshotter's remote path
//! and of the mirror (how it ended, its bytes, how long it took), the times containerd had to
//! fetch a layer itself, and every blob byte shoald read from a registry (whichever path: the
//! swarm's registry ranges, a whole blob when the swarm could not be used, the cache in front
//! of the registry without a swarm).
//!
//! Counted by two [`BlobSource`] wrappers: [`MeteredSource`] around what the snapshotter and
//! the mirror fetch from, [`RegistryMeter`] around the registry client the cache and the
//! swarm fetch from. Every label value is present (at 0) from the start, so that a rate or a
//! ratio has data before the first failure.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::Stream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use shoal_p2p::metrics::Registry;
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::BlobStream;
use shoal_p2p::source::{BlobSource, Reader, VerifiedStream};
use shoal_p2p::Digest;
use shoal_p2p::Error;

/// The paths a blob is pulled by: `snapshotter` (the remote layers of a CRI pull) and
/// `mirror` (containerd's downloads through the registry mirror).
pub const PATHS: [&str; 2] = ["snapshotter", "mirror"];

/// How a fetch ended: `ok` (every byte delivered), `error` (the fetch or its stream failed),
/// `dropped` (the reader stopped before the end: a client that went away, a containerd
/// range read closed after one buffer).
pub const RESULTS: [&str; 3] = ["ok", "error", "dropped"];

/// Labels of the per-path metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: &'static str,
}

/// Labels of the fetch counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PullLabels {
    pub path: &'static str,
    pub result: &'static str,
}

/// The histogram buckets of [`PullMetrics::seconds`]: 10 ms to about 5.5 min.
#[derive(Clone, Debug)]
pub struct SecondsBuckets;

impl MetricConstructor<Histogram> for SecondsBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.01, 2.0, 16))
    }
}

/// The pull metrics (names in [`PullMetrics::register`]). Clones share the counts.
#[derive(Clone, Debug)]
pub struct PullMetrics {
    /// Blob fetches (whole or a range), by path and result.
    pub blobs: Family<PullLabels, Counter>,
    /// Blob bytes delivered to the snapshotter or the mirror, by path.
    pub bytes: Family<PathLabel, Counter>,
    /// Seconds from the start of a fetch to its last byte, fetches that ended `ok`, by path.
    pub seconds: Family<PathLabel, Histogram, SecondsBuckets>,
    /// Times containerd fetched a blob itself because shoald could not give it: a remote
    /// layer that failed (containerd downloads and applies it), a mirror blob
    /// fetch whose source failed, at once or mid-blob (containerd goes to the next host, the
    /// registry). By path.
    pub fallbacks: Family<PathLabel, Counter>,
    /// Blob bytes shoald read from registries (whole blobs and ranges, every path).
    pub registry_bytes: Counter,
}

impl Default for PullMetrics {
    fn default() -> Self {
        let m = Self {
            blobs: Family::default(),
            bytes: Family::default(),
            seconds: Family::new_with_constructor(SecondsBuckets),
            fallbacks: Family::default(),
            registry_bytes: Counter::default(),
        };
        for path in PATHS {
            for result in RESULTS {
                let _ = m.blobs.get_or_create(&PullLabels { path, result });
            }
            let _ = m.bytes.get_or_create(&PathLabel { path });
            let _ = m.seconds.get_or_create(&PathLabel { path });
            let _ = m.fallbacks.get_or_create(&PathLabel { path });
        }
        m
    }
}

impl PullMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shoal_pull_blobs",
            "Blob fetches (whole or a range) of the snapshotter's remote path and the mirror, \
             by path and result (ok, error, dropped)",
            self.blobs.clone(),
        );
        registry.register(
            "shoal_pull_blob_bytes",
            "Blob bytes delivered to the snapshotter's remote path or the mirror, by path",
            self.bytes.clone(),
        );
        registry.register(
            "shoal_pull_seconds",
            "Seconds from the start of a blob fetch to its last byte (fetches that ended ok), by path",
            self.seconds.clone(),
        );
        registry.register(
            "shoal_pull_fallbacks",
            "Blobs containerd fetched itself because shoald could not give them, by path",
            self.fallbacks.clone(),
        );
        registry.register(
            "shoal_registry_received_bytes",
            "Blob bytes shoald read from registries (swarm ranges, whole blobs, the cache's fetches)",
            self.registry_bytes.clone(),
        );
    }

    /// Counts one blob containerd fetched itself on `path`.
    pub fn fallback(&self, path: &'static str) {
        self.fallbacks.get_or_create(&PathLabel { path }).inc();
    }
}

/// A blob source whose fetches are counted in [`PullMetrics`] under one path. A fetch a
/// mirror client may not have ([`Error::OtherOrigin`]: the request goes upstream
/// unchanged) is not a pull and is not counted.
pub struct MeteredSource {
    inner: Arc<dyn BlobSource>,
    metrics: PullMetrics,
    path: &'static str,
}

impl MeteredSource {
    /// Fetches from `inner`, counted under `path` (one of [`PATHS`]).
    pub fn new(inner: Arc<dyn BlobSource>, metrics: PullMetrics, path: &'static str) -> Self {
        Self {
            inner,
            metrics,
            path,
        }
    }

    async fn metered(
        &self,
        fetch: BoxFuture<'_, Result<BlobStream, Error>>,
    ) -> Result<BlobStream, Error> {
        let tally = self.tally();
        match fetch.await {
            Ok(inner) => Ok(tally.stream(inner)),
            Err(e) => Err(tally.failed(e)),
        }
    }

    /// [`Self::metered`] for a checked fetch.
    async fn metered_verified(
        &self,
        fetch: BoxFuture<'_, Result<VerifiedStream, Error>>,
    ) -> Result<VerifiedStream, Error> {
        let tally = self.tally();
        match fetch.await {
            Ok(inner) => Ok(inner.wrap(|s| tally.stream(s))),
            Err(e) => Err(tally.failed(e)),
        }
    }

    fn tally(&self) -> Tally {
        Tally {
            metrics: self.metrics.clone(),
            path: self.path,
            start: Instant::now(),
            ended: None,
        }
    }
}

impl BlobSource for MeteredSource {
    fn fetch_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        Box::pin(self.metered(self.inner.fetch_as(image, digest, reader)))
    }

    fn fetch_verified_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<VerifiedStream, Error>> {
        let fetch = self.inner.fetch_verified_as(image, digest, reader);
        Box::pin(self.metered_verified(fetch))
    }

    fn fetch_range_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        range: Range<u64>,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        Box::pin(self.metered(self.inner.fetch_range_as(image, digest, range, reader)))
    }
}

/// One fetch being counted: ends once, as `ok` (with its seconds), `error` or, when dropped
/// unfinished, `dropped`.
struct Tally {
    metrics: PullMetrics,
    path: &'static str,
    start: Instant,
    /// Set once the fetch's result is counted.
    ended: Option<&'static str>,
}

impl Tally {
    /// `inner`, counted by this tally.
    fn stream(self, inner: BlobStream) -> BlobStream {
        Box::pin(Metered {
            inner,
            tally: Some(self),
        })
    }

    /// Counts the failed fetch (not one a mirror client may not have) and returns `e`.
    fn failed(self, e: Error) -> Error {
        match e {
            Error::OtherOrigin { .. } => self.forget(),
            _ => self.end("error"),
        }
        e
    }

    fn end(mut self, result: &'static str) {
        self.finish(result);
    }

    fn finish(&mut self, result: &'static str) {
        if self.ended.is_some() {
            return;
        }
        self.ended = Some(result);
        let path = self.path;
        self.metrics
            .blobs
            .get_or_create(&PullLabels { path, result })
            .inc();
        match result {
            "ok" => self
                .metrics
                .seconds
                .get_or_create(&PathLabel { path })
                .observe(self.start.elapsed().as_secs_f64()),
            // A mirror fetch that fails sends containerd to the next host (the registry); the
            // remote path's fallback is counted where the layer gives up
            // ([`crate::remote`]), since a layer can fail after its blob arrived.
            "error" if path == "mirror" => self.metrics.fallback(path),
            _ => {}
        }
    }

    /// Counts nothing for this fetch.
    fn forget(mut self) {
        self.ended = Some("");
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.finish("dropped");
    }
}

/// A fetch's stream, counted by its [`Tally`].
struct Metered {
    inner: BlobStream,
    tally: Option<Tally>,
}

impl Stream for Metered {
    type Item = Result<bytes::Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(item) = &polled {
            if let Some(tally) = self.tally.as_mut() {
                match item {
                    Some(Ok(bytes)) => {
                        let n = bytes.len() as u64;
                        tally
                            .metrics
                            .bytes
                            .get_or_create(&PathLabel { path: tally.path })
                            .inc_by(n);
                    }
                    Some(Err(_)) => tally.finish("error"),
                    None => tally.finish("ok"),
                }
            }
        }
        polled
    }
}

/// The registry as a blob source, every byte it delivers counted in
/// [`PullMetrics::registry_bytes`].
pub struct RegistryMeter {
    inner: Arc<dyn BlobSource>,
    bytes: Counter,
}

impl RegistryMeter {
    /// Fetches from `registry`, counting its bytes in `metrics`.
    pub fn new(registry: Arc<dyn BlobSource>, metrics: &PullMetrics) -> Self {
        Self {
            inner: registry,
            bytes: metrics.registry_bytes.clone(),
        }
    }

    fn counted(&self, stream: BlobStream) -> BlobStream {
        let bytes = self.bytes.clone();
        Box::pin(futures::StreamExt::inspect(stream, move |item| {
            if let Ok(b) = item {
                bytes.inc_by(b.len() as u64);
            }
        }))
    }
}

impl BlobSource for RegistryMeter {
    fn fetch_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        Box::pin(async move {
            let stream = self.inner.fetch_as(image, digest, reader).await?;
            Ok(self.counted(stream))
        })
    }

    fn fetch_verified_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<VerifiedStream, Error>> {
        Box::pin(async move {
            let stream = self.inner.fetch_verified_as(image, digest, reader).await?;
            Ok(stream.wrap(|s| self.counted(s)))
        })
    }

    fn fetch_range_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        range: Range<u64>,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        Box::pin(async move {
            let stream = self
                .inner
                .fetch_range_as(image, digest, range, reader)
                .await?;
            Ok(self.counted(stream))
        })
    }
}

#[cfg(test)]
mod tests;
