//! Chunk server and client together, over real mutual TLS on 127.0.0.1.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tempfile::TempDir;

use super::test_pki::TestCa;
use super::*;
use crate::cache::BlobCache;
use crate::metrics::{ReasonLabel, UploadMetrics};
use crate::tls::Transport;

pub(super) const TIMEOUT: Duration = Duration::from_secs(10);

/// A running chunk server; stops when dropped.
pub(super) struct Running {
    pub(super) addr: SocketAddr,
    meter: UploadMeter,
    pub(super) metrics: UploadMetrics,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub(super) async fn serve(
    transport: &Transport,
    provider: Arc<dyn ChunkProvider>,
    limits: UploadLimits,
) -> Running {
    let metrics = UploadMetrics::default();
    let (router, meter) = router(provider, limits, metrics.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let transport = transport.clone();
    tokio::spawn(async move {
        let _ = transport
            .serve(listener, router, async {
                let _ = stopped.await;
            })
            .await;
    });
    Running {
        addr,
        meter,
        metrics,
        _stop: stop,
    }
}

/// Deterministic, non-repeating-looking test bytes.
fn blob_bytes(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// A cache in `dir` holding one blob of `len` bytes.
fn cache_with_blob(dir: &std::path::Path, len: usize) -> (BlobCache, Digest, Vec<u8>) {
    let cache = BlobCache::open(dir.join("cache"), 1 << 30).unwrap();
    let data = blob_bytes(len);
    let digest = Digest::of(&data);
    let mut w = cache.writer().unwrap();
    w.write(&data).unwrap();
    w.finish(&digest).unwrap();
    (cache, digest, data)
}

/// Server and client nodes of one cluster CA, serving one blob of `len` bytes.
struct Cluster {
    _dir: TempDir,
    dir: std::path::PathBuf,
    ca: TestCa,
    server: Running,
    client: PeerClient,
    digest: Digest,
    data: Vec<u8>,
}

async fn cluster(len: usize, limits: UploadLimits) -> Cluster {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = TestCa::new("cluster");
    let (cache, digest, data) = cache_with_blob(&dir, len);
    let server = serve(&ca.transport(&dir, "seeder"), Arc::new(cache), limits).await;
    let client = PeerClient::new(&ca.transport(&dir, "leecher"), TIMEOUT, TIMEOUT).unwrap();
    Cluster {
        _dir: tmp,
        dir,
        ca,
        server,
        client,
        digest,
        data,
    }
}

pub(super) const OPEN: UploadLimits = UploadLimits {
    max_uploads: 4,
    bytes_per_sec: 0,
    max_have_streams: 8,
};

fn count(metrics: &UploadMetrics, result: &'static str) -> u64 {
    metrics
        .requests
        .get_or_create(&ReasonLabel { reason: result })
        .get()
}

fn requests(metrics: &UploadMetrics) -> u64 {
    ["ok", "not_held", "busy", "bad_request", "error"]
        .into_iter()
        .map(|r| count(metrics, r))
        .sum()
}

#[tokio::test]
async fn serves_exact_ranges_over_mutual_tls() {
    let c = cluster(300_000, OPEN).await;
    let len = c.data.len() as u64;
    for range in [0..1, 100..200, 65_530..200_000, 0..len, len - 1..len] {
        let got = c
            .client
            .fetch(
                c.server.addr,
                &c.digest,
                range.clone(),
                &AtomicU64::default(),
            )
            .await
            .unwrap();
        let want = &c.data[range.start as usize..range.end as usize];
        assert!(got == want, "range {range:?}: {} bytes", got.len());
    }
    assert_eq!(count(&c.server.metrics, "ok"), 5);
    assert_eq!(c.server.metrics.active.get(), 0);
    let sent = 1 + 100 + (200_000 - 65_530) + len + 1;
    assert_eq!(c.server.metrics.bytes.get(), sent);
}

#[tokio::test]
async fn a_blob_not_held_is_not_found() {
    let c = cluster(1000, OPEN).await;
    let other = Digest::of(b"not here");
    match c
        .client
        .fetch(c.server.addr, &other, 0..10, &AtomicU64::default())
        .await
    {
        Err(PeerError::NotHeld {
            digest, start, end, ..
        }) => assert_eq!((digest, start, end), (other, 0, 10)),
        other => panic!("{other:?}"),
    }
    assert_eq!(count(&c.server.metrics, "not_held"), 1);
}

#[tokio::test]
async fn ranges_past_the_end_and_bad_requests_are_refused() {
    let c = cluster(1000, OPEN).await;
    match c
        .client
        .fetch(c.server.addr, &c.digest, 990..1001, &AtomicU64::default())
        .await
    {
        Err(PeerError::BadResponse { reason, .. }) => assert!(reason.contains("416"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Raw requests: no range, a malformed range, a malformed digest.
    let http =
        c.ca.transport(&c.dir, "raw")
            .http_client(TIMEOUT, TIMEOUT)
            .unwrap();
    let url = |d: &str| format!("https://{}/v1/blobs/{d}", c.server.addr);
    let digest = c.digest.to_string();
    let cases = [
        (url(&digest), None, 400),
        (url(&digest), Some("bytes=5-"), 400),
        (url(&digest), Some("bytes=0-1,4-5"), 400),
        (url("sha256:1234"), Some("bytes=0-1"), 400),
        (url(&digest), Some("bytes=1000-1000"), 416),
    ];
    for (url, range, status) in cases {
        let mut req = http.get(&url);
        if let Some(r) = range {
            req = req.header("range", r);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{url} {range:?}");
        let body: crate::tracker::proto::ErrorBody = resp.json().await.unwrap();
        assert!(!body.error.is_empty());
    }
    assert_eq!(count(&c.server.metrics, "bad_request"), 6);
    assert_eq!(count(&c.server.metrics, "ok"), 0);
}

#[tokio::test]
async fn busy_when_every_slot_is_taken() {
    let limits = UploadLimits {
        max_uploads: 1,
        bytes_per_sec: 0,
        max_have_streams: 8,
    };
    // Far more than the socket buffers hold, so an unread response keeps its slot.
    let c = cluster(32 << 20, limits).await;
    let http =
        c.ca.transport(&c.dir, "slow")
            .http_client(TIMEOUT, Duration::from_secs(60))
            .unwrap();
    let slow = http
        .get(format!("https://{}/v1/blobs/{}", c.server.addr, c.digest))
        .header("range", format!("bytes=0-{}", c.data.len() - 1))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status().as_u16(), 206);
    match c
        .client
        .fetch(c.server.addr, &c.digest, 0..10, &AtomicU64::default())
        .await
    {
        Err(PeerError::Busy { peer }) => assert_eq!(peer, c.server.addr),
        other => panic!("{other:?}"),
    }
    assert_eq!(count(&c.server.metrics, "busy"), 1);
    assert_eq!(c.server.meter.stats().active, 1);
    // The slow consumer goes away: its slot comes back.
    drop(slow);
    drop(http);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match c
            .client
            .fetch(c.server.addr, &c.digest, 0..10, &AtomicU64::default())
            .await
        {
            Ok(b) => {
                assert_eq!(&b[..], &c.data[..10]);
                break;
            }
            Err(PeerError::Busy { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_rate_the_older_upload_goes_first_at_the_whole_rate() {
    // 8 MiB/s and two 4 MiB chunks asked 50 ms apart, over mutual TLS on loopback: the
    // older upload gets the rate and ends after about half a second, the younger one after
    // it (shared equally, both would end together after about a second).
    let limits = UploadLimits {
        max_uploads: 4,
        bytes_per_sec: 8 << 20,
        max_have_streams: 8,
    };
    let c = cluster(8 << 20, limits).await;
    let start = Instant::now();
    let fetch = |range: std::ops::Range<u64>| {
        let (client, addr, digest) = (c.client.clone(), c.server.addr, c.digest.clone());
        tokio::spawn(async move {
            let bytes = client
                .fetch(addr, &digest, range, &AtomicU64::default())
                .await
                .unwrap();
            (bytes, start.elapsed())
        })
    };
    let older = fetch(0..4 << 20);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let younger = fetch(4 << 20..8 << 20);
    let (a, a_took) = older.await.unwrap();
    let (b, b_took) = younger.await.unwrap();
    assert_eq!(&a[..], &c.data[..4 << 20]);
    assert_eq!(&b[..], &c.data[4 << 20..]);
    assert!(
        a_took.as_secs_f64() < 0.7 * b_took.as_secs_f64(),
        "older {a_took:?}, younger {b_took:?}"
    );
    // Paced: 8 MiB at 8 MiB/s, less the burst.
    assert!(b_took >= Duration::from_millis(800), "{b_took:?}");
}

#[tokio::test]
async fn a_client_of_another_ca_is_refused_before_any_request() {
    let c = cluster(1000, OPEN).await;
    let foreign = TestCa::new("foreign");
    // Trusting the cluster CA (so only the server's check can refuse) or not.
    let mut trusting = foreign.node_files(&c.dir, "intruder");
    trusting.ca = c.dir.join("cluster.ca.pem");
    let trusting = Transport::load(Some(&trusting), false).unwrap();
    let distrusting = foreign.transport(&c.dir, "stranger");
    for transport in [trusting, distrusting] {
        let intruder = PeerClient::new(&transport, TIMEOUT, TIMEOUT).unwrap();
        match intruder
            .fetch(c.server.addr, &c.digest, 0..10, &AtomicU64::default())
            .await
        {
            Err(PeerError::Transport { peer, .. }) => assert_eq!(peer, c.server.addr),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(requests(&c.server.metrics), 0);
    assert_eq!(c.server.metrics.bytes.get(), 0);
}

#[tokio::test]
async fn a_plaintext_client_fails_against_tls() {
    let c = cluster(1000, OPEN).await;
    let plain = PeerClient::new(&Transport::Plaintext, TIMEOUT, TIMEOUT).unwrap();
    match plain
        .fetch(c.server.addr, &c.digest, 0..10, &AtomicU64::default())
        .await
    {
        Err(PeerError::Transport { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(requests(&c.server.metrics), 0);
}

#[tokio::test]
async fn the_bandwidth_limit_paces_uploads_and_stats_measure_them() {
    let limits = UploadLimits {
        max_uploads: 4,
        bytes_per_sec: 2 << 20,
        max_have_streams: 8,
    };
    let c = cluster(1 << 20, limits).await;
    assert_eq!(c.server.meter.stats().capacity_bytes_per_sec, 2 << 20);
    let start = Instant::now();
    let progress = AtomicU64::default();
    let fetch = c
        .client
        .fetch(c.server.addr, &c.digest, 0..1 << 20, &progress);
    tokio::pin!(fetch);
    // The bytes received so far show while the paced body arrives (at least 0.4 s).
    let mut seen_part = false;
    let got = loop {
        tokio::select! {
            got = &mut fetch => break got.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(5)) => {
                let so_far = progress.load(Ordering::Relaxed);
                seen_part |= so_far > 0 && so_far < 1 << 20;
            }
        }
    };
    let took = start.elapsed();
    assert_eq!(got.len(), 1 << 20);
    assert!(
        seen_part,
        "no partial progress seen in {:?}",
        start.elapsed()
    );
    assert_eq!(progress.load(Ordering::Relaxed), 1 << 20);
    // 1 MiB at 2 MiB/s with a 0.2 MiB burst: at least ~0.4 s.
    assert!(took >= Duration::from_millis(350), "{took:?}");
    let stats = c.server.meter.stats();
    assert!(stats.rate_bytes_per_sec > 0, "{stats:?}");
    assert!(stats.capacity_bytes_per_sec > 0, "{stats:?}");
    assert!(stats.capacity_bytes_per_sec <= 2 << 20, "{stats:?}");
    assert_eq!((stats.active, stats.max), (0, 4));
}

#[tokio::test]
async fn unlimited_uploads_are_measured() {
    let c = cluster(1 << 20, OPEN).await;
    for _ in 0..3 {
        c.client
            .fetch(c.server.addr, &c.digest, 0..1 << 20, &AtomicU64::default())
            .await
            .unwrap();
    }
    let stats = c.server.meter.stats();
    assert!(stats.rate_bytes_per_sec > 0, "{stats:?}");
    assert!(stats.capacity_bytes_per_sec > 0, "{stats:?}");
}

/// A provider holding some ranges of one blob in memory (like a download in progress).
struct Partial {
    digest: Digest,
    data: Bytes,
    held: Range<u64>,
}

impl ChunkProvider for Partial {
    fn open(&self, digest: &Digest, range: Range<u64>) -> Option<Held> {
        let size = self.data.len() as u64;
        if *digest != self.digest || range.start > range.end || range.end > size {
            return None;
        }
        let empty = range.start == range.end;
        let inside = self.held.start <= range.start && range.end <= self.held.end;
        (empty || inside)
            .then(|| Held::Bytes(self.data.slice(range.start as usize..range.end as usize)))
    }
}

#[tokio::test]
async fn partial_blobs_in_memory_over_plaintext() {
    let data = Bytes::from(blob_bytes(200_000));
    let digest = Digest::of(&data);
    let provider = Partial {
        digest: digest.clone(),
        data: data.clone(),
        held: 100_000..200_000,
    };
    let server = serve(&Transport::Plaintext, Arc::new(provider), OPEN).await;
    let client = PeerClient::new(&Transport::Plaintext, TIMEOUT, TIMEOUT).unwrap();
    let got = client
        .fetch(
            server.addr,
            &digest,
            120_000..190_000,
            &AtomicU64::default(),
        )
        .await
        .unwrap();
    assert_eq!(got, data.slice(120_000..190_000));
    // In bounds but not held: 404; past the end: 416.
    assert!(matches!(
        client
            .fetch(server.addr, &digest, 0..10, &AtomicU64::default())
            .await,
        Err(PeerError::NotHeld { .. })
    ));
    assert!(matches!(
        client
            .fetch(
                server.addr,
                &digest,
                199_000..200_001,
                &AtomicU64::default()
            )
            .await,
        Err(PeerError::BadResponse { .. })
    ));
    assert_eq!(count(&server.metrics, "ok"), 1);
    assert_eq!(count(&server.metrics, "not_held"), 1);
    assert_eq!(count(&server.metrics, "bad_request"), 1);
}

/// [`Partial`], recording each upload's end.
struct Recording {
    inner: Partial,
    ended: std::sync::Mutex<Vec<(Range<u64>, bool)>>,
}

impl ChunkProvider for Recording {
    fn open(&self, digest: &Digest, range: Range<u64>) -> Option<Held> {
        self.inner.open(digest, range)
    }

    fn ended(&self, _digest: &Digest, range: Range<u64>, whole: bool) {
        self.ended.lock().unwrap().push((range, whole));
    }
}

#[tokio::test]
async fn the_provider_hears_when_each_upload_ends_and_whether_whole() {
    let data = Bytes::from(blob_bytes(1 << 20));
    let digest = Digest::of(&data);
    let provider = Arc::new(Recording {
        inner: Partial {
            digest: digest.clone(),
            data: data.clone(),
            held: 0..1 << 20,
        },
        ended: Default::default(),
    });
    let paced = UploadLimits {
        bytes_per_sec: 1 << 20,
        ..OPEN
    };
    let server = serve(&Transport::Plaintext, provider.clone(), paced).await;
    let client = PeerClient::new(&Transport::Plaintext, TIMEOUT, TIMEOUT).unwrap();
    client
        .fetch(server.addr, &digest, 0..1000, &AtomicU64::default())
        .await
        .unwrap();
    assert_eq!(*provider.ended.lock().unwrap(), vec![(0..1000, true)]);
    // A client that goes away half-way (1 MiB at 1 MiB/s): ended, not whole.
    let progress = AtomicU64::default();
    {
        let fetch = client.fetch(server.addr, &digest, 0..1 << 20, &progress);
        tokio::pin!(fetch);
        let deadline = Instant::now() + Duration::from_secs(10);
        while progress.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::select! {
                _ = &mut fetch => panic!("the paced fetch ended at once"),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        assert!(progress.load(Ordering::Relaxed) > 0);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while provider.ended.lock().unwrap().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        *provider.ended.lock().unwrap(),
        vec![(0..1000, true), (0..1 << 20, false)]
    );
}

#[tokio::test]
async fn an_unreachable_peer_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = PeerClient::new(&Transport::Plaintext, TIMEOUT, TIMEOUT).unwrap();
    match client
        .fetch(addr, &Digest::of(b"x"), 0..1, &AtomicU64::default())
        .await
    {
        Err(e @ PeerError::Transport { peer, .. }) => {
            assert_eq!(peer, addr);
            let text = e.to_string();
            assert!(text.contains("sha256:"), "{text}");
            assert!(
                std::error::Error::source(&e).is_some_and(|s| s.is::<reqwest::Error>()),
                "{e:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A canned answer of a test peer.
pub(super) type Answer = fn() -> axum::response::Response;

/// A peer answering every request with `answer()`, over plaintext.
pub(super) async fn liar(answer: Answer) -> Running {
    let metrics = UploadMetrics::default();
    let meter = UploadMeter::new(1, 0, metrics.clone());
    let router = axum::Router::new().fallback(move || async move { answer() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = Transport::Plaintext
            .serve(listener, router, async {
                let _ = stopped.await;
            })
            .await;
    });
    Running {
        addr,
        meter,
        metrics,
        _stop: stop,
    }
}

/// A 206 with `content_range` and a streamed (chunked, unsized) body of `len` bytes.
fn partial(content_range: Option<&'static str>, len: usize) -> axum::response::Response {
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(vec![1u8; len]))]);
    let mut response = axum::response::Response::new(axum::body::Body::from_stream(body));
    *response.status_mut() = axum::http::StatusCode::PARTIAL_CONTENT;
    if let Some(v) = content_range {
        response
            .headers_mut()
            .insert("content-range", axum::http::HeaderValue::from_static(v));
    }
    response
}

#[tokio::test]
async fn lying_peers_are_bad_responses() {
    use axum::response::IntoResponse;
    let answers: [(Answer, &str); 6] = [
        (
            || (axum::http::StatusCode::OK, "whole blob").into_response(),
            "200",
        ),
        (|| partial(Some("bytes 10-19/100"), 10), "Content-Range"),
        (|| partial(None, 10), "Content-Range"),
        (|| partial(Some("bytes 0-9/100"), 15), "more than"),
        (|| partial(Some("bytes 0-9/*"), 5), "5 bytes"),
        (
            || (axum::http::StatusCode::FORBIDDEN, "no").into_response(),
            "403",
        ),
    ];
    let client = PeerClient::new(&Transport::Plaintext, TIMEOUT, TIMEOUT).unwrap();
    let digest = Digest::of(b"x");
    for (answer, why) in answers {
        let peer = liar(answer).await;
        match client
            .fetch(peer.addr, &digest, 0..10, &AtomicU64::default())
            .await
        {
            Err(PeerError::BadResponse { peer: p, reason }) => {
                assert_eq!(p, peer.addr);
                assert!(reason.contains(why), "{why}: {reason}");
                assert!(reason.contains("sha256:"), "{reason}");
            }
            other => panic!("{why}: {other:?}"),
        }
    }
    // The honest answer, for contrast.
    let peer = liar(|| partial(Some("bytes 0-9/*"), 10)).await;
    assert_eq!(
        client
            .fetch(peer.addr, &digest, 0..10, &AtomicU64::default())
            .await
            .unwrap()
            .len(),
        10
    );
}
