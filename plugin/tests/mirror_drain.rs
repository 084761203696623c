//! Stopping shoald leaves no mirror download broken: after [`Node::drain`] starts, the blob
//! containerd is reading through the mirror is sent to its end (the registry here sends it
//! slowly), no new connection is taken, and drain reports that everything finished. What the
//! Kubernetes DaemonSet's terminationGracePeriodSeconds and systemd's TimeoutStopSec rely on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use shoal_p2p::registry::RegistryClient;
use shoal_p2p::Digest;
use shoal_plugin::config::Config;
use shoal_plugin::node::Node;

const BLOB: usize = 1 << 20;
const PIECE: usize = 64 << 10;
const PIECE_DELAY: Duration = Duration::from_millis(100);

fn blob() -> Vec<u8> {
    (0..BLOB).map(|i| (i * 7 % 251) as u8).collect()
}

/// A registry that answers `HEAD`/`GET` of the one blob, the body in pieces with a pause
/// between them (about 1.6 s in all), and 404 to anything else.
async fn slow_registry(data: Vec<u8>, digest: Digest) -> SocketAddr {
    let path = format!("/v2/app/blobs/{digest}");
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (data, path) = (data.clone(), path.clone());
        async move {
            if req.uri().path() != path {
                return Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Body::empty())
                    .unwrap();
            }
            let head = Response::builder()
                .header(header::CONTENT_LENGTH, data.len())
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header("Docker-Content-Digest", digest.to_string());
            if req.method() == Method::HEAD {
                return head.body(Body::empty()).unwrap();
            }
            let pieces = futures::stream::unfold(0usize, move |at| {
                let data = data.clone();
                async move {
                    if at >= data.len() {
                        return None;
                    }
                    tokio::time::sleep(PIECE_DELAY).await;
                    let end = (at + PIECE).min(data.len());
                    Some((
                        Ok::<_, Infallible>(bytes::Bytes::copy_from_slice(&data[at..end])),
                        end,
                    ))
                }
            });
            head.body(Body::from_stream(pieces)).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_the_mirror_downloads_in_flight() {
    let data = blob();
    let digest = Digest::of(&data);
    let upstream = slow_registry(data.clone(), digest.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.cache.dir = dir.path().join("blobs");
    config.metrics.listen = String::new();
    config.mirror.enabled = true;
    config.mirror.default_upstream = upstream.to_string();
    config.mirror.listen = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap()
    };
    config
        .registry
        .hosts
        .entry(upstream.to_string())
        .or_default()
        .plain_http = true;
    let client = RegistryClient::new(config.registry.clone()).unwrap();
    let mut node = Node::start(&config, client).await;
    let url = format!(
        "http://{}/v2/app/blobs/{digest}?ns={upstream}",
        config.mirror.listen
    );
    let http = reqwest::Client::new();
    let mut response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut got = Vec::new();
    got.extend_from_slice(&response.chunk().await.unwrap().expect("a first piece"));
    assert!(
        got.len() < BLOB,
        "the whole blob before the stop: not a test of draining"
    );

    // The rest of the body read on its own, counting what has arrived.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(got.len()));
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(piece) = response.chunk().await.expect("the download was cut") {
                got.extend_from_slice(&piece);
                received.store(got.len(), std::sync::atomic::Ordering::SeqCst);
            }
            got
        })
    };

    // Stop now, as on SIGTERM, while the blob is still on its way.
    let started = Instant::now();
    let stop = node.stop_handle();
    let drain = tokio::spawn(async move {
        let finished = node.drain(Duration::from_secs(20)).await;
        (finished, node)
    });
    stop.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = reqwest::Client::new().get(&url).send().await;
    assert!(late.is_err(), "a new connection after the stop was served");
    let (finished, node) = drain.await.unwrap();
    assert!(finished, "drain gave up on the download");
    // When drain returns, shoald exits (its runtime and every connection with it): by then
    // the whole blob must be out. Allow the last bytes in transit a moment to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_exit = received.load(std::sync::atomic::Ordering::SeqCst);
    drop(node);
    assert_eq!(at_exit, BLOB, "drain returned with the download unfinished");
    let got = reader.await.unwrap();
    assert!(got == data, "the bytes differ");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "drain took {:?}",
        started.elapsed()
    );
}
