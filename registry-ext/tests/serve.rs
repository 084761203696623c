//! The real server, in process, on 127.0.0.1, against a tiny fake registry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use bytes::Bytes;
use shoal_p2p::chunk::{ChunkManifest, ChunkManifestBuilder};
use shoal_p2p::peer::test_pki::TestCa;
use shoal_p2p::peer::{PeerClient, PeerError, PeerFetcher};
use shoal_p2p::tls::{TlsFiles, Transport};
use shoal_p2p::tracker::proto::{
    Announce, AnnounceReply, BlobHave, ChunkSet, ErrorBody, PeerList, UploadStats,
};
use shoal_p2p::Digest;
use shoal_registry_ext::{serve, Config, Listeners};
use tokio::net::TcpListener;

const CHUNK: u64 = 64 << 10;

/// A registry serving `/v2/<repo>/blobs/<digest>` from a table, counting blob GETs.
struct FakeRegistry {
    addr: SocketAddr,
    gets: Arc<AtomicUsize>,
}

impl FakeRegistry {
    /// Serves `blobs` (digest -> bytes; the bytes need not match). Repository `private/*`
    /// answers 401 without a challenge; unknown digests get BLOB_UNKNOWN.
    async fn start(blobs: HashMap<Digest, Bytes>) -> Self {
        let gets = Arc::new(AtomicUsize::new(0));
        let blobs = Arc::new(blobs);
        let counter = gets.clone();
        let app = axum::Router::new().fallback(move |uri: Uri| {
            let blobs = blobs.clone();
            let gets = counter.clone();
            async move {
                let path = uri.path().to_string();
                let Some((repo, digest)) = path
                    .strip_prefix("/v2/")
                    .and_then(|p| p.rsplit_once("/blobs/"))
                else {
                    return StatusCode::NOT_FOUND.into_response();
                };
                if repo.starts_with("private/") {
                    return (StatusCode::UNAUTHORIZED, "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"no entry\"}]}").into_response();
                }
                gets.fetch_add(1, Ordering::SeqCst);
                // Long enough for concurrent requests to overlap.
                tokio::time::sleep(Duration::from_millis(200)).await;
                match digest.parse::<Digest>().ok().and_then(|d| blobs.get(&d).cloned()) {
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
        Self { addr, gets }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

/// A running shoal-registry-ext.
struct Server {
    addr: SocketAddr,
    metrics: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), shoal_registry_ext::Error>>,
}

impl Server {
    /// Starts one on `dir`'s `manifests/` and `blobs/`, for `registry`, with TLS files if
    /// given (else plaintext).
    async fn start(dir: &Path, registry: &str, tls: Option<&TlsFiles>) -> Self {
        Self::start_with(dir, registry, tls, "").await
    }

    /// The same, with `extra` (TOML sections) after the configuration's others.
    async fn start_with(dir: &Path, registry: &str, tls: Option<&TlsFiles>, extra: &str) -> Self {
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = api.local_addr().unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let security = match tls {
            Some(f) => format!(
                "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                f.ca, f.cert, f.key
            ),
            None => "insecure_plaintext = true\n".into(),
        };
        let text = format!(
            "listen = \"127.0.0.1:0\"\nadvertise = \"{addr}\"\nmetrics_listen = \"{metrics_addr}\"\n\
             registry_host = \"{registry}\"\n{security}\
             [registry]\nretries = 0\n[registry.hosts.\"{registry}\"]\nplain_http = true\n\
             [manifests]\ndir = {:?}\nchunk_size = {CHUNK}\n\
             [seed]\ndir = {:?}\n{extra}",
            dir.join("manifests"),
            dir.join("blobs"),
        );
        let config = Config::parse(&text, Path::new("test.toml")).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let listeners = Listeners {
            api,
            metrics: Some(metrics),
            notify: None,
            preheat_admin: None,
        };
        let task = tokio::spawn(serve(config, listeners, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            metrics: metrics_addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn manifest_url(&self, registry: &str, repo: &str, digest: &Digest) -> String {
        self.url(&format!(
            "/v1/chunk-manifests/{digest}?registry={registry}&repository={repo}"
        ))
    }

    /// The chunk manifest of `digest` in repository `a/b` of `registry`, made on request.
    async fn manifest(
        &self,
        http: &reqwest::Client,
        registry: &str,
        digest: &Digest,
    ) -> ChunkManifest {
        let resp = http
            .get(self.manifest_url(registry, "a/b", digest))
            .send()
            .await
            .unwrap();
        ChunkManifest::from_json(&resp.bytes().await.unwrap()).unwrap()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// A plaintext chunk client, as a node's.
fn plain_client() -> PeerClient {
    PeerClient::new(
        &Transport::Plaintext,
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .unwrap()
}

fn blob(len: usize, seed: u32) -> Bytes {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn expected_manifest(data: &[u8]) -> ChunkManifest {
    let mut b = ChunkManifestBuilder::new(CHUNK).unwrap();
    b.update(data);
    b.finish(&Digest::of(data)).unwrap()
}

fn manifest_file(dir: &Path, digest: &Digest) -> std::path::PathBuf {
    shoal_registry_ext::manifests::manifest_path(&dir.join("manifests"), digest, CHUNK)
}

fn seed_file(dir: &Path, digest: &Digest) -> std::path::PathBuf {
    dir.join("blobs").join(format!("sha256-{}", digest.hex()))
}

async fn error_of(resp: reqwest::Response) -> (StatusCode, String) {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let body: ErrorBody = resp.json().await.unwrap();
    (status, body.error)
}

#[tokio::test]
async fn concurrent_manifest_requests_read_the_registry_once_then_disk_serves() {
    let data = blob(200_000, 1);
    let digest = Digest::of(&data);
    let registry = FakeRegistry::start(HashMap::from([(digest.clone(), data.clone())])).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &registry.host(), None).await;
    let http = reqwest::Client::new();
    let url = server.manifest_url(&registry.host(), "team/app", &digest);
    let requests = (0..10).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let resp = http.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            ChunkManifest::from_json(&resp.bytes().await.unwrap()).unwrap()
        }
    });
    let manifests = futures::future::join_all(requests).await;
    let want = expected_manifest(&data);
    assert_eq!(want.chunks.len(), 4);
    assert!(manifests.iter().all(|m| *m == want));
    assert_eq!(registry.gets(), 1, "one registry read for ten requests");
    assert_eq!(
        ChunkManifest::from_json(&std::fs::read(manifest_file(dir.path(), &digest)).unwrap())
            .unwrap(),
        want
    );
    assert_eq!(
        std::fs::read(seed_file(dir.path(), &digest)).unwrap(),
        data,
        "the seed cache holds the blob"
    );
    server.stop().await;

    // A second instance on the same directories serves from disk.
    let server = Server::start(dir.path(), &registry.host(), None).await;
    let url = server.manifest_url(&registry.host(), "team/app", &digest);
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        ChunkManifest::from_json(&resp.bytes().await.unwrap()).unwrap(),
        want
    );
    assert_eq!(registry.gets(), 1);

    // A corrupt manifest file is made again, from the seed cache: still no registry read.
    std::fs::write(manifest_file(dir.path(), &digest), b"{\"digest\":").unwrap();
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        ChunkManifest::from_json(&resp.bytes().await.unwrap()).unwrap(),
        want
    );
    assert_eq!(registry.gets(), 1);
    server.stop().await;
}

#[tokio::test]
async fn wrong_registry_bad_requests_and_registry_errors() {
    let registry = FakeRegistry::start(HashMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &registry.host(), None).await;
    let http = reqwest::Client::new();
    let d = Digest::of(b"nothing");

    let resp = http
        .get(server.manifest_url("other.example", "a/b", &d))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(resp).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        error.contains(&format!("serves registry {}", registry.host())),
        "{error}"
    );

    for url in [
        server.url(&format!(
            "/v1/chunk-manifests/{d}?registry={}",
            registry.host()
        )),
        server.url(&format!("/v1/chunk-manifests/{d}?repository=a")),
        server.url(&format!(
            "/v1/chunk-manifests/sha256:abc?registry={}&repository=a",
            registry.host()
        )),
        server.manifest_url(&registry.host(), "a:b", &d),
    ] {
        let (status, error) = error_of(http.get(&url).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {error}");
    }

    let resp = http
        .get(server.manifest_url(&registry.host(), "a/b", &d))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(resp).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error.contains("BLOB_UNKNOWN"), "{error}");

    let resp = http
        .get(server.manifest_url(&registry.host(), "private/b", &d))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(resp).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(error.contains("no entry"), "{error}");
    assert!(!manifest_file(dir.path(), &d).exists());
    server.stop().await;
}

#[tokio::test]
async fn a_corrupt_blob_gives_502_and_nothing_is_kept() {
    let data = blob(100_000, 2);
    let digest = Digest::of(&data);
    let mut corrupt = data.to_vec();
    corrupt[5000] ^= 1;
    let registry = FakeRegistry::start(HashMap::from([(digest.clone(), corrupt.into())])).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &registry.host(), None).await;
    let resp = reqwest::get(server.manifest_url(&registry.host(), "a/b", &digest))
        .await
        .unwrap();
    let (status, error) = error_of(resp).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        error.contains(&digest.to_string()) && error.contains("nothing kept"),
        "{error}"
    );
    assert!(!manifest_file(dir.path(), &digest).exists());
    assert!(!seed_file(dir.path(), &digest).exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("manifests"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs/tmp"))
            .unwrap()
            .count(),
        0
    );
    server.stop().await;
}

fn announce(id: &str, port: u16, digest: &Digest, set: &ChunkSet) -> Announce {
    Announce {
        peer_id: id.into(),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        upload: UploadStats::default(),
        blobs: vec![BlobHave::new(digest.clone(), set)],
    }
}

#[tokio::test]
async fn announce_and_peer_lists_round_trip() {
    let registry = FakeRegistry::start(HashMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &registry.host(), None).await;
    let http = reqwest::Client::new();
    let d = Digest::of(b"layer");
    let mut set = ChunkSet::empty(10);
    set.insert(3);
    let reply: AnnounceReply = http
        .post(server.url("/v1/announce"))
        .json(&announce("node-a", 7070, &d, &set))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply.interval_ms, 1000);
    http.post(server.url("/v1/announce"))
        .json(&announce("node-b", 7071, &d, &ChunkSet::full(10)))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    let list: PeerList = http
        .get(server.url(&format!("/v1/peers/{d}?peer=node-a")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.digest, d);
    assert_eq!(list.peers.len(), 1);
    assert_eq!(list.peers[0].peer_id, "node-b");
    assert!(list.peers[0].set().unwrap().is_full());
    let list: PeerList = http
        .get(server.url(&format!("/v1/peers/{d}?peer=node-c&limit=1")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.peers.len(), 1);

    // A malformed chunk set, an unknown field, a bad query: 400 with an error body.
    let mut bad = announce("node-a", 7070, &d, &set);
    bad.blobs[0].have = "!!".into();
    let resp = http
        .post(server.url("/v1/announce"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(resp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error.contains("chunk set"), "{error}");
    let resp = http
        .post(server.url("/v1/announce"))
        .header("content-type", "application/json")
        .body("{\"peer_id\":1}")
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(resp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error.starts_with("bad request: announce body: ") && error.contains("peer_id"),
        "{error}"
    );
    for q in ["", "?peer=x&limit=0", "?peer=x&limit=many"] {
        let resp = http
            .get(server.url(&format!("/v1/peers/{d}{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(resp).await.0, StatusCode::BAD_REQUEST, "{q}");
    }
    let resp = http
        .get(server.url("/v1/peers/sha256:zz?peer=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, StatusCode::BAD_REQUEST);
    server.stop().await;
}

/// A rolling upgrade: a node of before delta announces (whole states on `POST /v1/announce`)
/// and a node of today (the real client: whole state, then deltas) on the same tracker, each
/// listed to the other with its latest state.
#[tokio::test]
async fn older_and_newer_nodes_announce_side_by_side() {
    use shoal_p2p::tracker::{HttpTrackers, Tracker};
    let registry = FakeRegistry::start(HashMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &registry.host(), None).await;
    let http = reqwest::Client::new();
    let d = Digest::of(b"layer");
    let timeout = Duration::from_secs(5);
    let newer = HttpTrackers::new(
        vec![server.url("")],
        &Transport::Plaintext,
        timeout,
        timeout,
    )
    .unwrap();
    let mut state = announce("newer", 7071, &d, &ChunkSet::empty(10));
    let mut set = ChunkSet::empty(10);
    for round in 0..3u32 {
        // The older node: its whole state, every time.
        http.post(server.url("/v1/announce"))
            .json(&announce("older", 7070, &d, &ChunkSet::full(10)))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        set.insert(round);
        state.blobs = vec![BlobHave::new(d.clone(), &set)];
        newer.announce(&state).await.unwrap();
        let listed = newer.peers(&d, "newer").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].peer_id, "older");
        let list: PeerList = http
            .get(server.url(&format!("/v1/peers/{d}?peer=older")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list.peers.len(), 1);
        assert_eq!(list.peers[0].peer_id, "newer");
        assert_eq!(list.peers[0].set().unwrap(), set, "round {round}");
    }
    let text = reqwest::get(format!("http://{}/metrics", server.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("shoal_tracker_announces_total 6"), "{text}");
    assert!(
        text.contains("shoal_tracker_full_state_requests_total 0"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_seeder_is_listed_and_serves_chunks_and_metrics_count() {
    let data = blob(200_000, 3);
    let digest = Digest::of(&data);
    let registry = FakeRegistry::start(HashMap::from([(digest.clone(), data.clone())])).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &registry.host(), None).await;
    let http = reqwest::Client::new();

    // Before the manifest is made, the seeder holds nothing.
    let list: PeerList = http
        .get(server.url(&format!("/v1/peers/{digest}?peer=node-a")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list.peers.is_empty());

    let manifest = server.manifest(&http, &registry.host(), &digest).await;
    http.post(server.url("/v1/announce"))
        .json(&announce("node-a", 7070, &digest, &ChunkSet::empty(4)))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let list: PeerList = http
        .get(server.url(&format!("/v1/peers/{digest}?peer=node-a")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.peers.len(), 1, "{list:?}");
    let seeder = &list.peers[0];
    assert_eq!(seeder.peer_id, format!("registry-ext@{}", server.addr));
    assert_eq!(seeder.addr, server.addr);
    assert_eq!(seeder.chunks, 4);
    assert!(seeder.set().unwrap().is_full());

    let client = plain_client();
    let range = manifest.chunk_range(1);
    let chunk = client
        .fetch(
            seeder.addr,
            &digest,
            range.clone(),
            &std::sync::atomic::AtomicU64::default(),
        )
        .await
        .unwrap();
    assert_eq!(&chunk[..], &data[range.start as usize..range.end as usize]);
    assert_eq!(Digest::of(&chunk), manifest.chunks[1]);

    let text = http
        .get(format!("http://{}/metrics", server.metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "shoal_tracker_announces_total 1",
        "shoal_tracker_peers 1",
        "shoal_tracker_peer_lists_total 2",
        "shoal_manifest_requests_total{result=\"made\"} 1",
        "shoal_manifest_registry_read_bytes_total 200000",
        "shoal_manifest_seconds_count 1",
        &format!("shoal_upload_sent_bytes_total {}", range.end - range.start),
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_seeder_sends_a_chunk_again_within_its_deferral_when_no_live_node_holds_it() {
    let data = blob(200_000, 5);
    let digest = Digest::of(&data);
    let registry = FakeRegistry::start(HashMap::from([(digest.clone(), data.clone())])).await;
    let dir = tempfile::tempdir().unwrap();
    // Announces due every 500 ms: a chunk is lost 1 s after the hold that follows its send,
    // when no peer heard from within 1 s announced it (the deferral is 6 s).
    let server = Server::start_with(
        dir.path(),
        &registry.host(),
        None,
        "[tracker]\nannounce_interval_ms = 500\n",
    )
    .await;
    let http = reqwest::Client::new();
    let manifest = server.manifest(&http, &registry.host(), &digest).await;
    let client = plain_client();
    let fetch = |chunk: usize| {
        let (client, digest, range) = (&client, &digest, manifest.chunk_range(chunk));
        async move {
            client
                .fetch(
                    server.addr,
                    digest,
                    range,
                    &std::sync::atomic::AtomicU64::default(),
                )
                .await
        }
    };
    // Chunks 1 and 2 sent whole, to a node that keeps announcing chunk 1 and to one that
    // never announces chunk 2 (gone).
    let sent = std::time::Instant::now();
    fetch(1).await.unwrap();
    fetch(2).await.unwrap();
    for chunk in [1, 2] {
        let e = fetch(chunk).await.unwrap_err();
        assert!(matches!(e, PeerError::NotHeld { .. }), "{e}");
    }
    let mut held = ChunkSet::empty(manifest.chunks.len() as u32);
    held.insert(1);
    let announcer = {
        let (http, url, a) = (
            http.clone(),
            server.url("/v1/announce"),
            announce("node-a", 7070, &digest, &held),
        );
        tokio::spawn(async move {
            loop {
                http.post(&url)
                    .json(&a)
                    .send()
                    .await
                    .unwrap()
                    .error_for_status()
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(bytes) = fetch(1).await {
            panic!(
                "chunk 1, held by a node heard from lately, sent again after {:?} ({} bytes)",
                sent.elapsed(),
                bytes.len()
            );
        }
        if fetch(2).await.is_ok() {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_millis(5_500),
            "chunk 2 not sent again within 5.5 s of its first send: only after the deferral"
        );
    }
    // Not before its hold (1 s) and two announce intervals.
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
    announcer.abort();
    server.stop().await;
}

/// A test cluster CA's certificates for the server and a node, as PEM files in `dir`.
fn pki(dir: &Path) -> (TlsFiles, TlsFiles) {
    let ca = TestCa::new("cluster");
    (
        ca.registry_side_files(dir, "registry-ext"),
        ca.node_files(dir, "node"),
    )
}

#[tokio::test]
async fn over_tls_a_client_without_a_certificate_gets_no_peer_list() {
    let registry = FakeRegistry::start(HashMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let (server_files, node_files) = pki(dir.path());
    let server = Server::start(dir.path(), &registry.host(), Some(&server_files)).await;
    let d = Digest::of(b"layer");
    let path = format!("/v1/peers/{d}?peer=x");

    // A node with a certificate from the cluster CA gets its list.
    let node = Transport::load(Some(&node_files), false)
        .unwrap()
        .http_client(Duration::from_secs(5), Duration::from_secs(10))
        .unwrap();
    let resp = node
        .get(format!("https://{}{path}", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let list: PeerList = resp.json().await.unwrap();
    assert!(list.peers.is_empty());

    // Clients that trust the CA and check the server's name: with the node's certificate,
    // a list; without one, no answer at all.
    let url = format!(
        "https://registry-ext.shoal.test:{}{path}",
        server.addr.port()
    );
    let client = |identity: Option<reqwest::Identity>| {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&node_files.ca).unwrap()).unwrap();
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(ca)
            .resolve("registry-ext.shoal.test", server.addr);
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        builder.build().unwrap()
    };
    let mut pem = std::fs::read(&node_files.cert).unwrap();
    pem.extend(std::fs::read(&node_files.key).unwrap());
    let with_cert = client(Some(reqwest::Identity::from_pem(&pem).unwrap()));
    let resp = with_cert.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let result = client(None).get(&url).send().await;
    assert!(result.is_err(), "{result:?}");
    // Nor does plain HTTP.
    assert!(reqwest::get(server.url(&path)).await.is_err());
    server.stop().await;
}
