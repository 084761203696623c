//! The BitTorrent export end to end, on 127.0.0.1 only: the real server (mutual TLS) against a
//! tiny fake registry, its `.torrent` fetched over the API and downloaded from its seeding
//! session by a separate librqbit session (no DHT, no trackers, no LSD, no UPnP).
#![cfg(feature = "torrent")]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use bytes::Bytes;
use librqbit::{AddTorrent, AddTorrentOptions, Session, SessionOptions};
use shoal_p2p::peer::test_pki::TestCa;
use shoal_p2p::tls::{TlsFiles, Transport};
use shoal_p2p::Digest;
use shoal_registry_ext::torrent::PEER_HEADER;
use shoal_registry_ext::{serve, Config, Listeners};
use tokio::net::TcpListener;

const PIECE: u32 = 16 << 10;

/// A registry serving one blob at `/v2/<repo>/blobs/<digest>`, counting GETs.
async fn fake_registry(digest: Digest, data: Bytes) -> (SocketAddr, Arc<AtomicUsize>) {
    let gets = Arc::new(AtomicUsize::new(0));
    let counter = gets.clone();
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let (data, digest, gets) = (data.clone(), digest.clone(), counter.clone());
        async move {
            if uri.path().ends_with(&format!("/blobs/{digest}")) {
                gets.fetch_add(1, Ordering::SeqCst);
                data.into_response()
            } else {
                (
                    StatusCode::NOT_FOUND,
                    "{\"errors\":[{\"code\":\"BLOB_UNKNOWN\",\"message\":\"unknown\"}]}",
                )
                    .into_response()
            }
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, gets)
}

/// A port on 127.0.0.1 that was free a moment ago (the seeding session binds it itself).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test cluster CA's certificates for the server and a node, as PEM files in `dir`.
fn pki(dir: &Path) -> (TlsFiles, TlsFiles) {
    let ca = TestCa::new("cluster");
    (
        ca.registry_side_files(dir, "registry-ext"),
        ca.node_files(dir, "node"),
    )
}

/// A running shoal-registry-ext with the BitTorrent export on.
struct Server {
    api: SocketAddr,
    metrics: SocketAddr,
    bt_port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), shoal_registry_ext::Error>>,
}

async fn start(dir: &Path, registry: &str, tls: &TlsFiles, max_bytes: u64) -> Server {
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api_addr, metrics_addr) = (api.local_addr().unwrap(), metrics.local_addr().unwrap());
    let bt_port = free_port();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadvertise = \"{api_addr}\"\nmetrics_listen = \"{metrics_addr}\"\n\
         registry_host = \"{registry}\"\n\
         [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\
         [registry]\nretries = 0\n[registry.hosts.\"{registry}\"]\nplain_http = true\n\
         [manifests]\ndir = {:?}\nchunk_size = 65536\n[seed]\ndir = {:?}\n\
         [torrent]\nenabled = true\nlisten = \"127.0.0.1:{bt_port}\"\ndir = {:?}\n\
         piece_length = {PIECE}\nmax_bytes = {max_bytes}\n",
        tls.ca,
        tls.cert,
        tls.key,
        dir.join("manifests"),
        dir.join("blobs"),
        dir.join("torrents"),
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
    Server {
        api: api_addr,
        metrics: metrics_addr,
        bt_port,
        stop,
        task,
    }
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    }
}

fn blob(len: usize, seed: u32) -> Bytes {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Downloads `torrent` into `out` with a librqbit session of its own that knows only `peer`;
/// returns the downloaded file's bytes.
async fn download(torrent: Bytes, peer: SocketAddr, out: &Path, name: &str) -> Vec<u8> {
    let session = Session::new_with_opts(
        out.to_path_buf(),
        SessionOptions {
            dht: None,
            disable_trackers: true,
            disable_local_service_discovery: true,
            listen: None,
            persistence: None,
            ipv4_only: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let handle = session
        .add_torrent(
            AddTorrent::from_bytes(torrent),
            Some(AddTorrentOptions {
                initial_peers: Some(vec![peer]),
                disable_trackers: true,
                output_folder: Some(out.to_str().unwrap().to_string()),
                ..Default::default()
            }),
        )
        .await
        .unwrap()
        .into_handle()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), handle.wait_until_completed())
        .await
        .expect("download completes within 60 s")
        .unwrap();
    session.stop().await;
    std::fs::read(out.join(name)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librqbit_client_downloads_a_blob_from_the_seeder() {
    let data = blob(300_000, 7);
    let digest = Digest::of(&data);
    let name = format!("sha256-{}", digest.hex());
    let (registry_addr, gets) = fake_registry(digest.clone(), data.clone()).await;
    let registry = registry_addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (server_files, node_files) = pki(dir.path());
    let server = start(dir.path(), &registry, &server_files, 10 << 20).await;
    let node = Transport::load(Some(&node_files), false)
        .unwrap()
        .http_client(Duration::from_secs(5), Duration::from_secs(30))
        .unwrap();
    let url = |d: &str, repo: &str| {
        format!(
            "https://{}/v1/torrents/{d}?registry={registry}&repository={repo}",
            server.api
        )
    };

    // Not the blob of any image: the registry says so, 404; nonsense: 400.
    let other = Digest::of(b"other");
    let resp = node
        .get(url(&other.to_string(), "team/app"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = node.get(url("sha256:zz", "team/app")).send().await.unwrap();
    assert_eq!(resp.status(), 400);

    // The .torrent, made on demand (the blob read from the registry once), then from disk.
    let resp = node
        .get(url(&digest.to_string(), "team/app"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/x-bittorrent",
        "{:?}",
        resp.headers()
    );
    let peer: SocketAddr = resp.headers()[PEER_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(peer, SocketAddr::from(([127, 0, 0, 1], server.bt_port)));
    let torrent = resp.bytes().await.unwrap();
    let again = node
        .get(url(&digest.to_string(), "team/app"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(again, torrent);
    assert_eq!(gets.load(Ordering::SeqCst), 1);
    let meta = librqbit::torrent_from_bytes(&torrent).unwrap();
    assert_eq!(meta.info.data.length, Some(data.len() as u64));
    assert_eq!(meta.info.data.piece_length, PIECE);
    assert!(dir
        .path()
        .join(format!("torrents/torrents/{name}.torrent"))
        .exists());

    // The seed cache evicting the blob does not break the torrent (its data is a link).
    std::fs::remove_file(dir.path().join("blobs").join(&name)).unwrap();

    let out = tempfile::tempdir().unwrap();
    let got = download(torrent, peer, out.path(), &name).await;
    assert_eq!(got.len(), data.len());
    assert_eq!(
        Digest::of(&got),
        digest,
        "the downloaded file hashes to the blob digest"
    );

    assert_eq!(server.metric("shoal_torrent_made_total").await, 1.0);
    assert_eq!(server.metric("shoal_torrent_seeding").await, 1.0);
    assert_eq!(
        server
            .metric("shoal_torrent_requests_total{result=\"cached\"}")
            .await,
        1.0
    );
    // The uploaded bytes are sampled every second.
    let mut uploaded = 0.0;
    for _ in 0..50 {
        uploaded = server.metric("shoal_torrent_uploaded_bytes_total").await;
        if uploaded >= data.len() as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(uploaded >= data.len() as f64, "uploaded {uploaded}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torrents_are_kept_across_restarts_and_bounded() {
    let (a, b) = (blob(100_000, 1), blob(100_000, 2));
    let (da, db) = (Digest::of(&a), Digest::of(&b));
    let (ra, gets) = fake_registry(da.clone(), a.clone()).await;
    let (rb, _) = fake_registry(db.clone(), b.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (server_files, node_files) = pki(dir.path());
    let node = Transport::load(Some(&node_files), false)
        .unwrap()
        .http_client(Duration::from_secs(5), Duration::from_secs(30))
        .unwrap();
    let fetch = |server: &Server, registry: SocketAddr, d: &Digest| {
        let url = format!(
            "https://{}/v1/torrents/{d}?registry={registry}&repository=team/app",
            server.api
        );
        let node = node.clone();
        async move {
            let resp = node.get(url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap()
        }
    };
    let torrent_file = |d: &Digest| {
        dir.path()
            .join(format!("torrents/torrents/sha256-{}.torrent", d.hex()))
    };

    // Room for one blob's data: the second torrent pushes the first out.
    let server = start(dir.path(), &ra.to_string(), &server_files, 150_000).await;
    fetch(&server, ra, &da).await;
    assert!(torrent_file(&da).exists());
    server.stop().await;

    // Started again: the kept torrent is seeded again, without a registry read.
    let server = start(dir.path(), &ra.to_string(), &server_files, 150_000).await;
    let torrent = fetch(&server, ra, &da).await;
    assert_eq!(
        gets.load(Ordering::SeqCst),
        1,
        "read once, before the restart"
    );
    assert_eq!(server.metric("shoal_torrent_seeding").await, 1.0);
    let out = tempfile::tempdir().unwrap();
    let name = format!("sha256-{}", da.hex());
    let peer = SocketAddr::from(([127, 0, 0, 1], server.bt_port));
    assert_eq!(
        Digest::of(&download(torrent, peer, out.path(), &name).await),
        da
    );
    server.stop().await;

    // Another registry host: the bound drops the older torrent when a new one is made.
    let server = start(dir.path(), &rb.to_string(), &server_files, 150_000).await;
    fetch(&server, rb, &db).await;
    assert!(torrent_file(&db).exists());
    assert!(!torrent_file(&da).exists(), "the older torrent is dropped");
    assert_eq!(server.metric("shoal_torrent_evicted_total").await, 1.0);
    assert_eq!(server.metric("shoal_torrent_seeding").await, 1.0);
    server.stop().await;
}
