//! This node's side of the swarm, as shoald runs it: the blob source layers are fetched
//! through, the chunk server for peers, the announcer, and the Prometheus endpoint.
//!
//! - Without `[swarm] enabled`, layers come from the registry through the blob cache, as
//!   before. With it, they come through [`Swarm`] (peers, then the registry per chunk).
//! - A swarm that cannot start (unreadable certificates, the chunk port taken, no cache) is
//!   logged as an error and shoald goes on without it: the swarm may only make pulls faster.
//! - With `[mirror] enabled`, the registry mirror ([`crate::mirror`]) serves blobs from the
//!   same blob source; a mirror that cannot start (port taken) is logged, like the swarm.
//! - Over TLS the node's certificate must have the `node` role, and the node's name is the
//!   certificate's (`swarm.node_name`, if set, must equal it): trackers accept announces only
//!   under that name. A certificate without a role stops the swarm with an error saying how to
//!   remake it.
//! - `advertise` defaults to `listen`'s IP when it is set, else to the source address this
//!   host uses towards the first tracker (what the tracker sees), with `listen`'s port.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use shoal_p2p::cache::{BlobCache, CachingSource};
use shoal_p2p::metrics::{Registry, SwarmMetrics, UploadMetrics};
use shoal_p2p::peer::{PeerClient, UploadLimits};
use shoal_p2p::registry::RegistryClient;
use shoal_p2p::source::BlobSource;
use shoal_p2p::swarm::{Swarm, SwarmConfig};
use shoal_p2p::tls::{Role, Transport};
use shoal_p2p::tracker::HttpTrackers;
use tokio::task::JoinHandle;

use crate::config::{Config, SwarmSection};

/// The blob source and the background services of this node. Dropping it stops them.
pub struct Node {
    /// Where layer blobs come from.
    pub blobs: Arc<dyn BlobSource>,
    /// The swarm, when it runs.
    pub swarm: Option<Swarm>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Node {
    /// Builds the blob source from `config` and starts the swarm's servers and the metrics
    /// endpoint. Needs a tokio runtime; never fails (what cannot start is logged).
    pub async fn start(config: &Config, client: RegistryClient) -> Self {
        let mut registry = Registry::default();
        let mut tasks = Vec::new();
        let cache_config = config.cache.clone();
        let cache = tokio::task::spawn_blocking(move || {
            BlobCache::open(&cache_config.dir, cache_config.max_bytes)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        let cache = match cache {
            Ok(cache) => Some(cache),
            Err(e) => {
                // Without its cache shoald still streams layers: a cache it cannot open
                // (permissions, a full disk) costs re-downloads, never a pull.
                tracing::warn!(dir = %config.cache.dir.display(), error = %e, "blob cache unavailable; fetching without it (and without the swarm)");
                None
            }
        };
        let mut swarm = None;
        if let (true, Some(cache)) = (config.swarm.enabled, &cache) {
            match start_swarm(&config.swarm, client.clone(), cache.clone(), &mut registry).await {
                Ok((s, mut t)) => {
                    swarm = Some(s);
                    tasks.append(&mut t);
                }
                Err(e) => tracing::error!("swarm not started, layers come from the registry: {e}"),
            }
        }
        let (client_for_preheat, cache_for_preheat) = (client.clone(), cache.clone());
        let blobs: Arc<dyn BlobSource> = match (&swarm, cache) {
            (Some(swarm), _) => Arc::new(swarm.clone()),
            (None, Some(cache)) => Arc::new(CachingSource::new(client, cache)),
            (None, None) => Arc::new(client),
        };
        if config.mirror.enabled {
            if let Some(task) = start_mirror(config, blobs.clone(), &mut registry).await {
                tasks.push(task);
            }
        }
        if let Some(task) = start_metrics(&config.metrics.listen, registry).await {
            tasks.push(task);
        }
        if !config.preheat.coordinator.is_empty() {
            let name = match config.swarm.node_name.as_str() {
                "" => host_name(),
                n => Ok(n.to_owned()),
            };
            let started = match name {
                Ok(name) => {
                    crate::preheat::start(
                        config,
                        name,
                        client_for_preheat,
                        cache_for_preheat,
                        swarm.clone(),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match started {
                Ok(Some(task)) => tasks.push(task),
                Ok(None) => {}
                Err(e) => tracing::error!("preheat worker not started: {e}"),
            }
        }
        Self {
            blobs,
            swarm,
            tasks,
        }
    }
}

async fn start_swarm(
    section: &SwarmSection,
    client: RegistryClient,
    cache: BlobCache,
    registry: &mut Registry,
) -> Result<(Swarm, Vec<JoinHandle<()>>), String> {
    let transport = Transport::load(section.tls.as_ref(), section.insecure_plaintext)
        .map_err(|e| e.to_string())?;
    transport
        .require_role(Role::Node, "shoald's swarm")
        .map_err(|e| e.to_string())?;
    let node_name = node_name(&section.node_name, &transport)?;
    let trackers = HttpTrackers::new(
        section.trackers.clone(),
        &transport,
        Duration::from_secs(3),
        Duration::from_secs(30),
    )
    .map_err(|e| e.to_string())?;
    let peers = PeerClient::new(&transport, Duration::from_secs(3), Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let advertise = advertise_addr(section).await?;
    let listener = tokio::net::TcpListener::bind(section.listen)
        .await
        .map_err(|e| format!("chunk server on {}: {e}", section.listen))?;

    let mut swarm_config = SwarmConfig::new(node_name.clone(), advertise);
    swarm_config.in_flight = section.chunks_in_flight;
    swarm_config.per_peer_in_flight = section.chunks_per_peer;
    let swarm_metrics = SwarmMetrics::default();
    swarm_metrics.register(registry);
    let upload_metrics = UploadMetrics::default();
    upload_metrics.register(registry);
    let swarm = Swarm::new(
        swarm_config,
        Arc::new(trackers),
        Arc::new(peers),
        Arc::new(client),
        cache,
        swarm_metrics,
    );
    let (router, meter) = shoal_p2p::peer::router(
        Arc::new(swarm.clone()),
        UploadLimits {
            max_uploads: section.max_uploads,
            bytes_per_sec: section.upload_bytes_per_sec,
        },
        upload_metrics,
    );
    swarm.set_upload_stats(move || meter.stats());
    let server = tokio::spawn(async move {
        if let Err(e) = transport
            .serve(listener, router, std::future::pending())
            .await
        {
            tracing::error!("chunk server stopped: {e}");
        }
    });
    let announcer = tokio::spawn(swarm.clone().run_announcer());
    tracing::info!(node = %node_name, listen = %section.listen, %advertise, trackers = ?section.trackers, "swarm peer serving");
    Ok((swarm, vec![server, announcer]))
}

/// This node's name: over TLS the certificate's node name (`configured`, when not empty, must
/// be the same), else `configured` or the host name.
pub(crate) fn node_name(configured: &str, transport: &Transport) -> Result<String, String> {
    match transport.identity() {
        Some(id) if configured.is_empty() || configured == id.name => Ok(id.name.clone()),
        Some(id) => Err(format!(
            "swarm.node_name {configured:?} is not the node name {:?} of this node's certificate; \
             set it to {:?} or leave it empty (trackers accept announces only under the \
             certificate's name)",
            id.name, id.name
        )),
        None if configured.is_empty() => host_name(),
        None => Ok(configured.to_owned()),
    }
}

/// The host name, for the node name.
fn host_name() -> Result<String, String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| format!("reading the host name (set swarm.node_name): {e}"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err("empty host name (set swarm.node_name)".into());
    }
    Ok(name.to_owned())
}

/// Where peers reach this node's chunk server (see the module documentation).
async fn advertise_addr(section: &SwarmSection) -> Result<SocketAddr, String> {
    let port = section.listen.port();
    if !section.advertise.is_empty() {
        if let Ok(addr) = section.advertise.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let ip: IpAddr = section
            .advertise
            .parse()
            .map_err(|_| format!("swarm.advertise {:?}", section.advertise))?;
        return Ok(SocketAddr::new(ip, port));
    }
    if !section.listen.ip().is_unspecified() {
        return Ok(section.listen);
    }
    let tracker = section.trackers.first().ok_or("no tracker configured")?;
    let host_port = tracker
        .split_once("://")
        .map_or(tracker.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let target = tokio::net::lookup_host(host_port.clone())
        .await
        .map_err(|e| format!("resolving tracker {host_port:?} to pick swarm.advertise: {e}"))?
        .next()
        .ok_or_else(|| format!("tracker {host_port:?} has no address"))?;
    // A connected UDP socket sends nothing; it only asks the kernel for the route.
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = std::net::UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    socket
        .connect(target)
        .map_err(|e| format!("no route to tracker {target} to pick swarm.advertise: {e}"))?;
    let ip = socket.local_addr().map_err(|e| e.to_string())?.ip();
    Ok(SocketAddr::new(ip, port))
}

/// Serves the registry mirror on `mirror.listen`; `None` when it cannot start (logged).
async fn start_mirror(
    config: &Config,
    blobs: Arc<dyn BlobSource>,
    registry: &mut Registry,
) -> Option<JoinHandle<()>> {
    let metrics = crate::mirror::MirrorMetrics::default();
    let mirror = match crate::mirror::Mirror::new(
        &config.mirror,
        &config.registry,
        blobs,
        metrics.clone(),
    ) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            tracing::error!("mirror not started: {e}");
            return None;
        }
    };
    let addr = config.mirror.listen;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("mirror not started on {addr}: {e}");
            return None;
        }
    };
    metrics.register(registry);
    tracing::info!("registry mirror on http://{addr}");
    Some(tokio::spawn(async move {
        if let Err(e) = mirror.serve(listener, std::future::pending()).await {
            tracing::error!("mirror stopped: {e}");
        }
    }))
}

/// Serves `GET /metrics` on `listen` (plain HTTP); `None` when off or the port is taken
/// (logged).
async fn start_metrics(listen: &str, registry: Registry) -> Option<JoinHandle<()>> {
    if listen.is_empty() {
        return None;
    }
    let addr: SocketAddr = listen.parse().ok()?;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("metrics endpoint on {addr} not started: {e}");
            return None;
        }
    };
    let app = shoal_p2p::metrics::router(Arc::new(registry));
    tracing::info!("metrics on http://{addr}/metrics");
    Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics endpoint stopped: {e}");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn advertise_comes_from_config_listen_or_the_route() {
        let mut s = SwarmSection {
            advertise: "10.1.2.3".into(),
            ..Default::default()
        };
        assert_eq!(
            advertise_addr(&s).await.unwrap(),
            "10.1.2.3:7070".parse().unwrap()
        );
        s.advertise = "10.1.2.3:9000".into();
        assert_eq!(
            advertise_addr(&s).await.unwrap(),
            "10.1.2.3:9000".parse().unwrap()
        );
        s.advertise.clear();
        s.listen = "127.0.0.2:7071".parse().unwrap();
        assert_eq!(advertise_addr(&s).await.unwrap(), s.listen);
        s.listen = "0.0.0.0:7072".parse().unwrap();
        s.trackers = vec!["https://127.0.0.1:7080/".into()];
        assert_eq!(
            advertise_addr(&s).await.unwrap(),
            "127.0.0.1:7072".parse().unwrap()
        );
    }

    #[tokio::test]
    async fn without_the_swarm_layers_come_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.cache.dir = dir.path().join("blobs");
        config.metrics.listen = String::new();
        let client = RegistryClient::new(config.registry.clone()).unwrap();
        let node = Node::start(&config, client).await;
        assert!(node.swarm.is_none());
        assert!(dir.path().join("blobs").is_dir());
    }

    #[tokio::test]
    async fn a_swarm_that_cannot_start_leaves_the_registry_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.cache.dir = dir.path().join("blobs");
        config.metrics.listen = String::new();
        config.swarm.enabled = true;
        config.swarm.trackers = vec!["https://127.0.0.1:1".into()];
        config.swarm.tls = Some(shoal_p2p::tls::TlsFiles {
            ca: dir.path().join("missing-ca.pem"),
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("missing-key.pem"),
        });
        let client = RegistryClient::new(config.registry.clone()).unwrap();
        let node = Node::start(&config, client).await;
        assert!(node.swarm.is_none());
    }

    /// `start_swarm`'s error for `section` with TLS files `tls`.
    async fn swarm_error(mut section: SwarmSection, tls: shoal_p2p::tls::TlsFiles) -> String {
        let dir = tempfile::tempdir().unwrap();
        section.tls = Some(tls);
        section.listen = "127.0.0.1:0".parse().unwrap();
        section.advertise = "127.0.0.1".into();
        let client = RegistryClient::new(Default::default()).unwrap();
        let cache = BlobCache::open(dir.path().join("blobs"), 1 << 20).unwrap();
        match start_swarm(&section, client, cache, &mut Registry::default()).await {
            Ok(_) => panic!("the swarm started"),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn the_swarm_needs_a_node_certificate_naming_this_node() {
        let dir = tempfile::tempdir().unwrap();
        let ca = shoal_p2p::peer::test_pki::TestCa::new("cluster");
        let e = swarm_error(Default::default(), ca.files(dir.path(), "old", None)).await;
        assert!(
            e.contains("names no shoal role") && e.contains("scripts/cluster-certs.sh DIR NAME"),
            "{e}"
        );
        let reg = ca.registry_side_files(dir.path(), "reg");
        let e = swarm_error(Default::default(), reg).await;
        assert!(e.contains("needs a node certificate"), "{e}");
        let named = SwarmSection {
            node_name: "node-2".into(),
            ..Default::default()
        };
        let e = swarm_error(named, ca.node_files(dir.path(), "node-1")).await;
        assert!(
            e.contains("\"node-2\" is not the node name \"node-1\""),
            "{e}"
        );

        let node = ca.transport(dir.path(), "node-1");
        assert_eq!(node_name("", &node).unwrap(), "node-1");
        assert_eq!(node_name("node-1", &node).unwrap(), "node-1");
        assert_eq!(node_name("n", &Transport::Plaintext).unwrap(), "n");
    }
}
