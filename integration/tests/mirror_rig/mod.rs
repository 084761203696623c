//! What the mirror's integration tests share (`mirror_range`, `mirror_trust`): test data, the
//! registry client wrapped with controls ([`Gated`]), a swarm whose chunks all come from the
//! registry, and the mirror served in-process ([`Rig`]).
#![allow(dead_code)]

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use futures::future::BoxFuture;
use shoal_integration::registry::TestRegistry;
use shoal_integration::token_server::TokenServer;
use shoal_p2p::cache::BlobCache;
use shoal_p2p::chunk::ChunkManifestBuilder;
use shoal_p2p::metrics::SwarmMetrics;
use shoal_p2p::peer::{PeerError, PeerFetcher};
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::{BlobStream, ClientConfig, HostConfig, RegistryClient};
use shoal_p2p::source::{BlobSource, Reader};
use shoal_p2p::swarm::{Swarm, SwarmConfig};
use shoal_p2p::tracker::MemoryTracker;
use shoal_p2p::Digest;
use shoal_plugin::config::MirrorSection;
use shoal_plugin::mirror::{Mirror, MirrorMetrics, RouteLabel};
use tokio::sync::watch;

/// The swarm's chunk size here.
pub const CHUNK: u64 = 64 << 10;

pub use shoal_integration::cluster::noise;

/// A registry client configuration reaching every host of `hosts` over plain HTTP (which
/// makes them registries the operator configured).
pub fn client_config(hosts: &[String]) -> ClientConfig {
    let mut config = ClientConfig::default();
    for host in hosts {
        let plain = HostConfig {
            plain_http: true,
            ..Default::default()
        };
        config.hosts.insert(host.clone(), plain);
    }
    config
}

/// A `docker-registry` with token auth (user `bob`, password `pw`) and its token server.
pub async fn token_registry() -> Result<(TokenServer, TestRegistry)> {
    let tokens = TokenServer::start("bob", "pw").await?;
    let registry = TestRegistry::start_token_auth(&tokens, "bob", "pw")?;
    Ok((tokens, registry))
}

/// A pull token for `repo` from `tokens`.
pub fn token_for(tokens: &TokenServer, repo: &str) -> Result<String> {
    tokens.issuer().sign(
        "bob",
        &[("repository".into(), repo.into(), vec!["pull".into()])],
    )
}

/// One request the registry client made: registry, repository, `Authorization` (`None`: the
/// node's own credentials).
pub type Sent = (String, String, Option<String>);

/// The real registry client, with test controls: counts and records what is fetched through
/// it, holds ranges that start at or past `hold_from` until released, and flips the byte at
/// `corrupt_at` in the ranges covering it.
pub struct Gated {
    inner: RegistryClient,
    pub whole: AtomicU64,
    pub range_bytes: AtomicU64,
    pub hold_from: AtomicU64,
    pub corrupt_at: AtomicU64,
    pub released: watch::Sender<bool>,
    pub sent: Mutex<Vec<Sent>>,
}

impl Gated {
    pub fn new(hosts: &[String]) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            inner: RegistryClient::new(client_config(hosts))?,
            whole: AtomicU64::new(0),
            range_bytes: AtomicU64::new(0),
            hold_from: AtomicU64::new(u64::MAX),
            corrupt_at: AtomicU64::new(u64::MAX),
            released: watch::Sender::new(false),
            sent: Mutex::new(Vec::new()),
        }))
    }

    fn record(&self, image: &ImageReference, reader: &Reader) {
        let sent = (
            image.registry.clone(),
            image.repository.clone(),
            reader.credentials().map(|c| c.authorization().to_owned()),
        );
        self.sent.lock().expect("lock").push(sent);
    }

    /// Every request so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().expect("lock").clone()
    }
}

impl BlobSource for Gated {
    fn fetch_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, shoal_p2p::Error>> {
        self.whole.fetch_add(1, Ordering::SeqCst);
        self.record(image, reader);
        self.inner.fetch_as(image, digest, reader)
    }

    fn fetch_range_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        range: Range<u64>,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, shoal_p2p::Error>> {
        Box::pin(async move {
            if range.start >= self.hold_from.load(Ordering::SeqCst) {
                let _ = self.released.subscribe().wait_for(|r| *r).await;
            }
            self.record(image, reader);
            let len = range.end - range.start;
            self.range_bytes.fetch_add(len, Ordering::SeqCst);
            let at = self.corrupt_at.load(Ordering::SeqCst);
            let stream = self
                .inner
                .fetch_range_as(image, digest, range.clone(), reader)
                .await?;
            if !range.contains(&at) {
                return Ok(stream);
            }
            let parts: Vec<Bytes> = futures::TryStreamExt::try_collect(stream).await?;
            let mut bytes = parts.concat();
            bytes[(at - range.start) as usize] ^= 0xff;
            let once = futures::stream::once(async move { Ok(Bytes::from(bytes)) });
            Ok(Box::pin(once) as BlobStream)
        })
    }
}

/// No other node holds anything.
pub struct NoPeers;

impl PeerFetcher for NoPeers {
    fn fetch<'a>(
        &'a self,
        peer: std::net::SocketAddr,
        digest: &'a Digest,
        range: Range<u64>,
        _progress: &'a std::sync::atomic::AtomicU64,
    ) -> BoxFuture<'a, Result<Bytes, PeerError>> {
        Box::pin(async move {
            Err(PeerError::Transport {
                peer,
                digest: digest.clone(),
                start: range.start,
                end: range.end,
                source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            })
        })
    }
}

/// A node's swarm for blob `data`: the tracker has its chunk manifest, no peer holds it, so
/// every chunk comes from `gated` (two chunks per registry range at most).
pub fn swarm_over(gated: Arc<Gated>, data: &[u8], dir: &std::path::Path) -> Result<Swarm> {
    let mut builder = ChunkManifestBuilder::new(CHUNK)?;
    builder.update(data);
    let tracker = Arc::new(MemoryTracker::new());
    tracker.add_manifest(builder.finish(&Digest::of(data))?);
    let mut config = SwarmConfig::new("node-a", "127.0.0.1:9".parse()?);
    config.max_registry_range = 2 * CHUNK;
    config.peer_refresh = Duration::from_millis(50);
    Ok(Swarm::new(
        config,
        tracker,
        Arc::new(NoPeers),
        gated,
        BlobCache::open(dir, 1 << 30)?,
        SwarmMetrics::default(),
    ))
}

/// The mirror, served in-process, and a client for it.
pub struct Rig {
    pub url: String,
    pub metrics: MirrorMetrics,
    pub http: reqwest::Client,
}

/// The mirror over `blobs` with `section`, reaching `hosts` over plain HTTP (the registries
/// the operator configured), with no credentials of its own.
pub async fn start_mirror(
    hosts: &[String],
    section: MirrorSection,
    blobs: Arc<dyn BlobSource>,
) -> Result<Rig> {
    let metrics = MirrorMetrics::default();
    let section = MirrorSection {
        enabled: true,
        ..section
    };
    let config = client_config(hosts);
    let mirror = Arc::new(Mirror::new(&section, &config, blobs, metrics.clone())?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(mirror.serve(listener, std::future::pending()));
    Ok(Rig {
        url,
        metrics,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
    })
}

impl Rig {
    /// `method path?ns=registry` with `token` (as a bearer token) and `headers`.
    pub fn request(
        &self,
        method: reqwest::Method,
        registry: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{path}?ns={registry}", self.url);
        let mut rb = self.http.request(method, url);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        for (name, value) in headers {
            rb = rb.header(*name, *value);
        }
        rb
    }

    /// How many requests went `route`.
    pub fn route(&self, route: &'static str) -> u64 {
        self.metrics
            .requests
            .get_or_create(&RouteLabel { route })
            .get()
    }
}

/// `header` of `headers` as text ("" when absent).
pub fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Whether `TestRegistry` can run here (says so when it cannot).
pub fn registry_available() -> bool {
    !shoal_integration::tools::skip_unless(&["docker-registry"], false)
}
