//! The push hook in process, against a tiny fake registry (the real one is in
//! `integration/tests/push_hook.rs`): a warm-up and an on-demand request share one registry
//! read; a full queue drops events and a failed warm-up is counted, and neither stops the
//! server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use bytes::Bytes;
use shoal_p2p::chunk::ChunkManifest;
use shoal_p2p::Digest;
use shoal_registry_ext::{serve, Config, Listeners};
use tokio::net::TcpListener;

const CHUNK: u64 = 64 << 10;
const TOKEN: &str = "notify-test-token-0123456789";

/// Serves `GET /v2/<repo>/blobs/<digest>` from `blobs` after 300 ms, counting GETs.
async fn fake_registry(blobs: HashMap<Digest, Bytes>) -> (SocketAddr, Arc<AtomicUsize>) {
    let gets = Arc::new(AtomicUsize::new(0));
    let (blobs, counter) = (Arc::new(blobs), gets.clone());
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let (blobs, gets) = (blobs.clone(), counter.clone());
        async move {
            let digest = uri.path().rsplit_once("/blobs/").map(|(_, d)| d.to_string());
            gets.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            match digest.and_then(|d| d.parse::<Digest>().ok()).and_then(|d| blobs.get(&d).cloned()) {
                Some(b) => b.into_response(),
                None => (
                    StatusCode::NOT_FOUND,
                    "{\"errors\":[{\"code\":\"BLOB_UNKNOWN\",\"message\":\"blob unknown to registry\"}]}",
                )
                    .into_response(),
            }
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, gets)
}

struct Running {
    api: SocketAddr,
    metrics: SocketAddr,
    hook: SocketAddr,
}

async fn start(dir: &Path, registry: SocketAddr, concurrency: usize, queue: usize) -> Running {
    let (api, metrics, hook) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let running = Running {
        api: api.local_addr().unwrap(),
        metrics: metrics.local_addr().unwrap(),
        hook: hook.local_addr().unwrap(),
    };
    let text = format!(
        "listen = \"{}\"\nmetrics_listen = \"{}\"\ninsecure_plaintext = true\n\
         registry_host = \"{registry}\"\n\
         [registry]\nretries = 0\n[registry.hosts.\"{registry}\"]\nplain_http = true\n\
         [manifests]\ndir = {:?}\nchunk_size = {CHUNK}\n[seed]\ndir = {:?}\n\
         [notifications]\nenabled = true\nlisten = \"{}\"\ntoken = \"{TOKEN}\"\n\
         concurrency = {concurrency}\nqueue = {queue}\n",
        running.api,
        running.metrics,
        dir.join("manifests"),
        dir.join("seed"),
        running.hook,
    );
    let config = Config::parse(&text, Path::new("notify.toml")).unwrap();
    let listeners = Listeners {
        api,
        metrics: Some(metrics),
        notify: Some(hook),
        preheat_admin: None,
    };
    tokio::spawn(serve(config, listeners, std::future::pending()));
    running
}

fn push_event(digest: &Digest, media_type: &str) -> serde_json::Value {
    serde_json::json!({
        "action": "push",
        "target": {"mediaType": media_type, "digest": digest.to_string(), "size": 1,
                   "repository": "team/app"}
    })
}

async fn post(hook: SocketAddr, events: Vec<serde_json::Value>) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("http://{hook}/v1/registry-events"))
        .bearer_auth(TOKEN)
        .header(
            "content-type",
            "application/vnd.docker.distribution.events.v1+json",
        )
        .json(&serde_json::json!({ "events": events }))
        .send()
        .await
        .unwrap()
        .status()
}

async fn metrics_until(addr: SocketAddr, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "{needle} not in\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_warm_up_and_an_on_demand_request_share_one_registry_read() {
    let data: Bytes = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let digest = Digest::of(&data);
    let (registry, gets) = fake_registry(HashMap::from([(digest.clone(), data.clone())])).await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), registry, 2, 16).await;

    let status = post(
        s.hook,
        vec![push_event(&digest, "application/octet-stream")],
    )
    .await;
    assert_eq!(status, 202);
    // While the warm-up reads the blob (300 ms), a node asks for the manifest.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = format!(
        "http://{}/v1/chunk-manifests/{digest}?registry={registry}&repository=team/app",
        s.api
    );
    let body = reqwest::get(&url)
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let m = ChunkManifest::from_json(&body).unwrap();
    assert_eq!((m.digest.clone(), m.chunks.len()), (digest.clone(), 4));
    metrics_until(s.metrics, "shoal_notify_warmups_total{result=\"ok\"} 1").await;
    assert_eq!(gets.load(Ordering::SeqCst), 1, "one registry read for both");
    assert!(dir
        .path()
        .join("seed")
        .join(format!("sha256-{}", digest.hex()))
        .is_file());
    // The same push again: nothing to do, no registry read.
    assert_eq!(
        post(
            s.hook,
            vec![push_event(&digest, "application/octet-stream")]
        )
        .await,
        202
    );
    metrics_until(s.metrics, "shoal_notify_warmups_total{result=\"ok\"} 2").await;
    assert_eq!(gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_full_queue_drops_events_and_failed_warm_ups_are_counted() {
    let (registry, gets) = fake_registry(HashMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), registry, 1, 1).await;
    // Five blobs the registry does not have, in one envelope: the handler queues them without
    // yielding (this runtime has one thread), so the queue of one takes the first only.
    let events = (0..5u8)
        .map(|i| {
            push_event(
                &Digest::of(&[i]),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        })
        .collect();
    assert_eq!(post(s.hook, events).await, 202);
    let text = metrics_until(s.metrics, "shoal_notify_warmups_total{result=\"error\"} 1").await;
    assert!(
        text.contains("shoal_notify_events_total{action=\"push\",result=\"queued\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("shoal_notify_events_total{action=\"push\",result=\"dropped\"} 4"),
        "{text}"
    );
    assert_eq!(gets.load(Ordering::SeqCst), 1);
    // The server goes on: the next event is taken.
    let events = vec![push_event(&Digest::of(b"next"), "application/octet-stream")];
    assert_eq!(post(s.hook, events).await, 202);
    metrics_until(s.metrics, "shoal_notify_warmups_total{result=\"error\"} 2").await;
}
