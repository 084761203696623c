//! Starting this node's swarm peer, and starting it again with backoff while it cannot start
//! (unreadable certificates, the chunk port taken, no route to a tracker): the node's
//! pulls meanwhile go through the blob cache to the registry, and health shows the swarm
//! degraded with the reason until it starts; then the node's blob source switches to it.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_p2p::cache::BlobCache;
use shoal_p2p::metrics::{SwarmMetrics, UploadMetrics};
use shoal_p2p::peer::{PeerClient, UploadLimits};
use shoal_p2p::source::BlobSource;
use shoal_p2p::swarm::{Swarm, SwarmConfig};
use shoal_p2p::tls::{Role, Transport};
use shoal_p2p::tracker::HttpTrackers;
use tokio::task::JoinHandle;

use crate::config::SwarmSection;
use crate::health::watch::{SourceSlot, WatchedTrackers};
use crate::health::{Backoff, Component, Health};

/// Tasks aborted when this is dropped (a started swarm's server and announcer, owned by the
/// task that started it late).
pub(super) struct AbortOnDrop(pub(super) Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Everything needed to start the swarm, as often as it takes.
pub(super) struct SwarmStarter {
    pub(super) section: SwarmSection,
    /// The registry, for the swarm's ranges and whole-blob fallbacks (bytes counted).
    pub(super) registry: Arc<dyn BlobSource>,
    pub(super) cache: BlobCache,
    pub(super) swarm_metrics: SwarmMetrics,
    pub(super) upload_metrics: UploadMetrics,
    pub(super) health: Health,
    /// The node's blob source, switched to the swarm once it runs.
    pub(super) source: SourceSlot,
    /// The swarm, once it runs.
    pub(super) swarm: Arc<Mutex<Option<Swarm>>>,
}

impl SwarmStarter {
    /// Starts the swarm; on success the node's blob source is the swarm and health follows
    /// its trackers. Returns its server and announcer tasks.
    pub(super) async fn start(&self) -> Result<Vec<JoinHandle<()>>, SwarmStartError> {
        let (swarm, tasks) = start_swarm(self).await?;
        *self.source.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(swarm.clone());
        *self.swarm.lock().unwrap_or_else(|p| p.into_inner()) = Some(swarm);
        self.health.set_detail(
            Component::Remote,
            "layers through the swarm (peers, then the registry)",
        );
        Ok(tasks)
    }

    /// After the first attempt failed with `error`: shows the swarm degraded now, and tries
    /// again after each of `backoff`'s delays until it starts, in a task that then keeps the
    /// swarm's tasks until it is aborted.
    pub(super) fn retry_later(
        self,
        error: SwarmStartError,
        mut backoff: Backoff,
    ) -> JoinHandle<()> {
        let mut delay = backoff.next_delay();
        self.report(&error, delay);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(delay).await;
                match self.start().await {
                    Ok(tasks) => {
                        let _tasks = AbortOnDrop(tasks);
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        delay = backoff.next_delay();
                        self.report(&e, delay);
                    }
                }
            }
        })
    }

    fn report(&self, error: &SwarmStartError, delay: Duration) {
        self.health.retrying(
            Component::Swarm,
            format!("not started, layers come from the registry meanwhile: {error}"),
            Instant::now() + delay,
        );
    }
}

/// Why the swarm (or a node name for it) cannot start now.
#[derive(Debug, thiserror::Error)]
pub enum SwarmStartError {
    /// The cluster certificate cannot be loaded, or is not a node's.
    #[error(transparent)]
    Tls(#[from] shoal_p2p::tls::TlsError),
    /// The chunk server's listen address cannot be bound.
    #[error("chunk server on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `swarm.node_name` differs from the certificate's node name.
    #[error("swarm.node_name {configured:?} is not the node name {name:?} of this node's certificate; set it to {name:?} or leave it empty (trackers accept announces only under the certificate's name)")]
    NodeName { configured: String, name: String },
    #[error("reading the host name (set swarm.node_name): {0}")]
    HostName(#[source] std::io::Error),
    #[error("empty host name (set swarm.node_name)")]
    EmptyHostName,
    /// `swarm.advertise` is neither `IP:PORT` nor an IP.
    #[error("swarm.advertise {value:?} is neither IP:PORT nor an IP: {source}")]
    Advertise {
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    /// No tracker to pick `swarm.advertise` by.
    #[error("no tracker configured")]
    NoTracker,
    /// The first tracker's host cannot be resolved.
    #[error("resolving tracker {host:?} to pick swarm.advertise: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tracker {host:?} has no address")]
    NoAddress { host: String },
    /// No route to the first tracker (the source of this node's address).
    #[error("no route to tracker {target} to pick swarm.advertise: {source}")]
    Route {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

async fn start_swarm(s: &SwarmStarter) -> Result<(Swarm, Vec<JoinHandle<()>>), SwarmStartError> {
    let section = &s.section;
    let transport = Transport::load(section.tls.as_ref(), section.insecure_plaintext)?;
    transport.require_role(Role::Node, "shoald's swarm")?;
    let node_name = node_name(&section.node_name, &transport)?;
    let (connect, request) = (Duration::from_secs(3), Duration::from_secs(30));
    let trackers = HttpTrackers::new(section.trackers.clone(), &transport, connect, request)?;
    let urls = trackers.urls().to_vec();
    let trackers = WatchedTrackers::new(trackers, s.health.clone());
    let peers = PeerClient::new(&transport, connect, request)?;
    let advertise = advertise_addr(section).await?;
    let listener = tokio::net::TcpListener::bind(section.listen)
        .await
        .map_err(|source| SwarmStartError::Listen {
            addr: section.listen,
            source,
        })?;

    let mut swarm_config = SwarmConfig::new(node_name.clone(), advertise);
    swarm_config.in_flight = section.chunks_in_flight;
    swarm_config.per_peer_in_flight = section.chunks_per_peer;
    swarm_config.have_peers = section.have_peers;
    swarm_config.peer_refresh = section.peer_refresh();
    let swarm = Swarm::new(
        swarm_config,
        Arc::new(trackers),
        Arc::new(peers),
        s.registry.clone(),
        s.cache.clone(),
        s.swarm_metrics.clone(),
    );
    let (router, meter) = shoal_p2p::peer::router(
        Arc::new(swarm.clone()),
        UploadLimits {
            max_uploads: section.max_uploads,
            bytes_per_sec: section.upload_bytes_per_sec,
            max_have_streams: section.max_have_streams,
        },
        s.upload_metrics.clone(),
    );
    swarm.set_upload_stats(move || meter.stats());
    let health = s.health.clone();
    let server = tokio::spawn(async move {
        let stopped = match transport
            .serve(listener, router, std::future::pending())
            .await
        {
            Ok(()) => "chunk server stopped".to_string(),
            Err(e) => format!("chunk server stopped: {e}"),
        };
        health.swarm_stopped(stopped);
    });
    let announcer = tokio::spawn(swarm.clone().run_announcer());
    s.health.set_detail(
        Component::Swarm,
        format!(
            "node {node_name}, chunks on {} (advertised {advertise})",
            section.listen
        ),
    );
    s.health.swarm_running(&node_name, &urls);
    tracing::info!(node = %node_name, listen = %section.listen, %advertise, trackers = ?section.trackers, "swarm peer serving");
    Ok((swarm, vec![server, announcer]))
}

/// This node's name: over TLS the certificate's node name (`configured`, when not empty, must
/// be the same), else `configured` or the host name.
pub(crate) fn node_name(
    configured: &str,
    transport: &Transport,
) -> Result<String, SwarmStartError> {
    match transport.identity() {
        Some(id) if configured.is_empty() || configured == id.name => Ok(id.name.clone()),
        Some(id) => Err(SwarmStartError::NodeName {
            configured: configured.to_owned(),
            name: id.name.clone(),
        }),
        None if configured.is_empty() => host_name(),
        None => Ok(configured.to_owned()),
    }
}

/// The host name, for the node name.
pub(super) fn host_name() -> Result<String, SwarmStartError> {
    let name =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(SwarmStartError::HostName)?;
    let name = name.trim();
    if name.is_empty() {
        return Err(SwarmStartError::EmptyHostName);
    }
    Ok(name.to_owned())
}

/// Where peers reach this node's chunk server (see the module documentation).
pub(super) async fn advertise_addr(section: &SwarmSection) -> Result<SocketAddr, SwarmStartError> {
    let port = section.listen.port();
    if !section.advertise.is_empty() {
        if let Ok(addr) = section.advertise.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let ip: IpAddr =
            section
                .advertise
                .parse()
                .map_err(|source| SwarmStartError::Advertise {
                    value: section.advertise.clone(),
                    source,
                })?;
        return Ok(SocketAddr::new(ip, port));
    }
    if !section.listen.ip().is_unspecified() {
        return Ok(section.listen);
    }
    let tracker = section.trackers.first().ok_or(SwarmStartError::NoTracker)?;
    let host_port = tracker
        .split_once("://")
        .map_or(tracker.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let target = tokio::net::lookup_host(host_port.clone())
        .await
        .map_err(|source| SwarmStartError::Resolve {
            host: host_port.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| SwarmStartError::NoAddress {
            host: host_port.clone(),
        })?;
    // A connected UDP socket sends nothing; it only asks the kernel for the route.
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let route = |source| SwarmStartError::Route { target, source };
    let socket = std::net::UdpSocket::bind(bind).map_err(route)?;
    socket.connect(target).map_err(route)?;
    let ip = socket.local_addr().map_err(route)?.ip();
    Ok(SocketAddr::new(ip, port))
}
