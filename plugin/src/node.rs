//! This node's side of the swarm, as shoald runs it: the blob source layers are fetched
//! through, the chunk server for peers, the announcer, the health registry, and the local
//! HTTP endpoint (`/metrics`, `/status`).
//!
//! - Without `[swarm] enabled`, layers come from the registry through the blob cache, as
//!   before. With it, they come through [`Swarm`] (peers, then the registry per chunk).
//! - What cannot start never stops shoald; it shows in [`Health`] (`shoald status`,
//!   `/metrics`, the log): a swarm that cannot start (unreadable certificates, the chunk port
//!   taken) is degraded and started again with backoff ([`swarm`]) while layers come from the
//!   registry through the cache; once it starts the node's blob source switches to it. A
//!   blob cache that cannot be opened is down (and the swarm with it: it seeds from there).
//! - With `[mirror] enabled`, the registry mirror ([`crate::mirror`]) serves blobs from the
//!   same blob source; a mirror whose listener cannot be bound (port taken) is degraded and
//!   bound again with backoff.
//! - Over TLS the node's certificate must have the `node` role, and the node's name is the
//!   certificate's (`swarm.node_name`, if set, must equal it): trackers accept announces only
//!   under that name. A certificate without a role keeps the swarm from starting (degraded)
//!   with an error saying how to remake it.
//! - `advertise` defaults to `listen`'s IP when it is set, else to the source address this
//!   host uses towards the first tracker (what the tracker sees), with `listen`'s port.

mod swarm;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use shoal_p2p::cache::{BlobCache, CachingSource};
use shoal_p2p::metrics::{Registry, SwarmMetrics, UploadMetrics};
use shoal_p2p::registry::RegistryClient;
use shoal_p2p::source::BlobSource;
use shoal_p2p::swarm::Swarm;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::health::watch::{LiveSource, SourceSlot};
use crate::health::{Backoff, Component, Health, State};
use crate::pulls::{MeteredSource, PullMetrics, RegistryMeter};
pub(crate) use swarm::node_name;
pub use swarm::SwarmStartError;
use swarm::{host_name, SwarmStarter};

/// The blob source and the background services of this node. Dropping it stops them at
/// once; [`Node::drain`] first lets the mirror's downloads in flight finish.
pub struct Node {
    /// Where layer blobs come from, for the snapshotter's remote path (counted in
    /// `health.remote_in_flight`).
    pub blobs: Arc<dyn BlobSource>,
    /// The node's health registry.
    pub health: Health,
    /// What the node pulled (registered in its `/metrics`); the remote path counts its
    /// fallbacks to containerd here.
    pub pulls: PullMetrics,
    swarm: Arc<Mutex<Option<Swarm>>>,
    tasks: Vec<JoinHandle<()>>,
    /// The mirror's task, apart from `tasks` so that [`Node::drain`] can wait for it.
    mirror: Option<JoinHandle<()>>,
    stop: StopHandle,
}

impl Drop for Node {
    fn drop(&mut self) {
        for task in self.tasks.iter().chain(&self.mirror) {
            task.abort();
        }
    }
}

/// Tells the node's servers to stop taking new work ([`Node::stop_handle`]): the mirror
/// stops accepting connections and answers the requests it has.
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<tokio::sync::watch::Sender<bool>>);

impl StopHandle {
    fn new() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(false).0))
    }

    /// Stop taking new work (idempotent).
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// Completes once [`Self::stop`] was called.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

impl Node {
    /// Builds the blob source from `config` and starts the swarm's servers, the mirror and
    /// the metrics and status endpoint. Needs a tokio runtime; never fails (what cannot
    /// start shows in [`Self::health`]).
    pub async fn start(config: &Config, client: RegistryClient) -> Self {
        Self::start_with(config, client, Backoff::default()).await
    }

    /// What stops the node's servers taking new work; [`Self::drain`] uses it too.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Stops taking new work (as [`StopHandle::stop`]) and waits, at most `grace`, for the
    /// mirror's requests in flight (blobs being streamed to containerd) to finish; true when
    /// they did. The swarm, the cache and the rest stop when the node is dropped.
    pub async fn drain(&mut self, grace: std::time::Duration) -> bool {
        self.stop.stop();
        let Some(mut mirror) = self.mirror.take() else {
            return true;
        };
        match tokio::time::timeout(grace, &mut mirror).await {
            Ok(_) => true,
            Err(_) => {
                mirror.abort();
                tracing::warn!(
                    "registry mirror: downloads still running after {} s cut",
                    grace.as_secs()
                );
                false
            }
        }
    }

    /// The swarm, when it runs.
    pub fn swarm(&self) -> Option<Swarm> {
        self.swarm.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// [`Self::start`], retrying what could not start after `backoff`'s delays.
    pub(crate) async fn start_with(
        config: &Config,
        client: RegistryClient,
        backoff: Backoff,
    ) -> Self {
        let health = Health::new();
        let mut registry = Registry::default();
        health.metrics().register(&mut registry);
        let pulls = PullMetrics::default();
        pulls.register(&mut registry);
        // Every blob byte read from a registry, by the cache or the swarm, is counted.
        let upstream: Arc<dyn BlobSource> =
            Arc::new(RegistryMeter::new(Arc::new(client.clone()), &pulls));
        let mut tasks = Vec::new();
        let cache_config = config.cache.clone();
        let cache = tokio::task::spawn_blocking(move || {
            BlobCache::open(&cache_config.dir, cache_config.max_bytes)
        })
        .await
        .map_err(|source| crate::Error::Task {
            what: "opening the blob cache",
            source,
        })
        .and_then(|r| r.map_err(crate::Error::from));
        let cache = match cache {
            Ok(cache) => {
                health.set_cache(cache.clone());
                health.set_detail(Component::Cache, config.cache.dir.display().to_string());
                health.up(Component::Cache);
                Some(cache)
            }
            Err(e) => {
                // Without its cache shoald still streams layers: a cache it cannot open
                // (permissions, a full disk) costs re-downloads, never a pull.
                let reason = format!(
                    "{}: {e}; layers are fetched without it (and without the swarm)",
                    config.cache.dir.display()
                );
                health.set(Component::Cache, State::Down, Some(reason));
                None
            }
        };
        let fallback: Arc<dyn BlobSource> = match &cache {
            Some(cache) => Arc::new(CachingSource::new(upstream.clone(), cache.clone())),
            None => upstream.clone(),
        };
        health.set_detail(
            Component::Remote,
            match cache {
                Some(_) => "layers from the registry through the blob cache",
                None => "layers from the registry",
            },
        );
        let source: SourceSlot = Arc::new(RwLock::new(fallback));
        let swarm_slot = Arc::new(Mutex::new(None));
        match (config.swarm.enabled, &cache) {
            (false, _) => {}
            (true, None) => health.set(
                Component::Swarm,
                State::Down,
                Some("needs the blob cache, which is down".into()),
            ),
            (true, Some(cache)) => {
                let (swarm_metrics, upload_metrics) =
                    (SwarmMetrics::default(), UploadMetrics::default());
                swarm_metrics.register(&mut registry);
                upload_metrics.register(&mut registry);
                let starter = SwarmStarter {
                    section: config.swarm.clone(),
                    registry: upstream.clone(),
                    cache: cache.clone(),
                    swarm_metrics,
                    upload_metrics,
                    health: health.clone(),
                    source: source.clone(),
                    swarm: swarm_slot.clone(),
                };
                match starter.start().await {
                    Ok(mut t) => tasks.append(&mut t),
                    Err(e) => tasks.push(starter.retry_later(e, backoff.clone())),
                }
            }
        }
        let live = LiveSource::new(source.clone(), health.remote_in_flight.clone());
        let blobs: Arc<dyn BlobSource> = Arc::new(MeteredSource::new(
            Arc::new(live),
            pulls.clone(),
            "snapshotter",
        ));
        let stop = StopHandle::new();
        let mut mirror = None;
        if config.mirror.enabled {
            let live = LiveSource::new(source, health.mirror_in_flight.clone());
            let mirror_blobs =
                Arc::new(MeteredSource::new(Arc::new(live), pulls.clone(), "mirror"));
            mirror =
                start_mirror(config, mirror_blobs, &mut registry, &health, backoff, &stop).await;
        }
        if let Some(task) = start_metrics(&config.metrics.listen, registry, health.clone()).await {
            tasks.push(task);
        }
        if !config.preheat.coordinator.is_empty() {
            let name = match config.swarm.node_name.as_str() {
                "" => host_name().map_err(crate::Error::from),
                n => Ok(n.to_owned()),
            };
            let swarm = swarm_slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let started = match name {
                Ok(name) => {
                    crate::preheat::start(config, name, client, cache, swarm, health.clone()).await
                }
                Err(e) => Err(e),
            };
            match started {
                Ok(Some(task)) => tasks.push(task),
                Ok(None) => {}
                Err(e) => health.set(
                    Component::Preheat,
                    State::Down,
                    Some(format!("worker not started: {e}")),
                ),
            }
        }
        Self {
            blobs,
            health,
            pulls,
            swarm: swarm_slot,
            tasks,
            mirror,
            stop,
        }
    }
}

/// Serves the registry mirror on `mirror.listen`: `None` when its configuration is refused
/// (down); a listener that cannot be bound is bound again after `backoff`'s delays
/// (degraded meanwhile). After `stop`, it takes no new connection, answers the requests it
/// has, and the task ends.
async fn start_mirror(
    config: &Config,
    blobs: Arc<dyn BlobSource>,
    registry: &mut Registry,
    health: &Health,
    mut backoff: Backoff,
    stop: &StopHandle,
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
            health.set(
                Component::Mirror,
                State::Down,
                Some(format!("not started: {e}")),
            );
            return None;
        }
    };
    metrics.register(registry);
    let addr = config.mirror.listen;
    health.set_detail(Component::Mirror, format!("http://{addr}"));
    let report = {
        let health = health.clone();
        move |e: &std::io::Error, backoff: &mut Backoff| {
            let delay = backoff.next_delay();
            let reason = format!("listener on {addr}: {e}");
            health.retrying(Component::Mirror, reason, Instant::now() + delay);
            delay
        }
    };
    // The first attempt now, so that once the node has started the mirror serves or shows
    // why not.
    let mut attempt = tokio::net::TcpListener::bind(addr).await;
    let mut delay = attempt.as_ref().err().map(|e| report(e, &mut backoff));
    if attempt.is_ok() {
        health.up(Component::Mirror);
    }
    let health = health.clone();
    let stop = stop.clone();
    Some(tokio::spawn(async move {
        let listener = loop {
            match (attempt, delay) {
                (Ok(listener), _) => break listener,
                (Err(_), wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait.unwrap_or_default()) => {}
                        _ = stop.stopped() => return,
                    }
                    attempt = tokio::net::TcpListener::bind(addr).await;
                    delay = attempt.as_ref().err().map(|e| report(e, &mut backoff));
                }
            }
        };
        health.up(Component::Mirror);
        tracing::info!("registry mirror on http://{addr}");
        let reason = match mirror.serve(listener, stop.stopped()).await {
            Ok(()) => "stopped".to_string(),
            Err(e) => format!("stopped: {e}"),
        };
        health.set(Component::Mirror, State::Down, Some(reason));
    }))
}

/// Serves `GET /metrics` and `GET /status` ([`crate::health::http`]) on `listen` (plain
/// HTTP); `None` when off or the port is taken (logged).
async fn start_metrics(listen: &str, registry: Registry, health: Health) -> Option<JoinHandle<()>> {
    if listen.is_empty() {
        return None;
    }
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("metrics endpoint {listen:?} not started: {e}");
            return None;
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("metrics and status endpoint on {addr} not started: {e}");
            return None;
        }
    };
    let app = crate::health::http::router(Arc::new(registry), health);
    tracing::info!("metrics on http://{addr}/metrics, status on http://{addr}/status");
    Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics endpoint stopped: {e}");
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::swarm::advertise_addr;
    use super::*;
    use crate::config::SwarmSection;
    use crate::health::State;

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
        assert!(node.swarm().is_none());
        assert!(dir.path().join("blobs").is_dir());
        let h = &node.health;
        assert_eq!(h.get(Component::Cache).state, State::Up);
        assert_eq!(h.get(Component::Swarm).state, State::Off);
        assert_eq!(h.get(Component::Mirror).state, State::Off);
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
        assert!(node.swarm().is_none());
        let swarm = node.health.get(Component::Swarm);
        assert_eq!(swarm.state, State::Degraded);
        let reason = swarm.reason.unwrap();
        assert!(reason.contains("missing-ca.pem"), "{reason}");
        assert!(swarm.retry_at.is_some(), "retried");
    }

    /// Waits up to 10 s for `f`.
    async fn eventually(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..200 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_swarm_that_starts_later_takes_over_the_blob_source() {
        let dir = tempfile::tempdir().unwrap();
        // The chunk port is taken: the swarm cannot start until it is released.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = Config::default();
        config.cache.dir = dir.path().join("blobs");
        config.metrics.listen = String::new();
        config.swarm.enabled = true;
        config.swarm.insecure_plaintext = true;
        config.swarm.node_name = "node-1".into();
        config.swarm.listen = taken.local_addr().unwrap();
        config.swarm.trackers = vec!["http://127.0.0.1:1".into()];
        let client = RegistryClient::new(config.registry.clone()).unwrap();
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200));
        let node = Node::start_with(&config, client, backoff).await;
        let swarm = node.health.get(Component::Swarm);
        assert_eq!(swarm.state, State::Degraded);
        assert!(swarm.reason.unwrap().contains("chunk server on"));
        assert!(node.swarm().is_none());
        drop(taken);
        assert!(
            eventually(|| node.swarm().is_some()).await,
            "started on a retry"
        );
        let swarm = node.health.get(Component::Swarm);
        assert_eq!(swarm.state, State::Up, "{swarm:?}");
        assert!(node
            .health
            .get(Component::Remote)
            .detail
            .unwrap()
            .contains("swarm"));
    }

    #[tokio::test]
    async fn a_mirror_whose_port_is_taken_is_degraded_until_it_binds() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = Config::default();
        config.cache.dir = dir.path().join("blobs");
        config.metrics.listen = String::new();
        config.mirror.enabled = true;
        config.mirror.listen = taken.local_addr().unwrap();
        let client = RegistryClient::new(config.registry.clone()).unwrap();
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200));
        let node = Node::start_with(&config, client, backoff).await;
        let h = node.health.clone();
        assert!(eventually(|| h.get(Component::Mirror).state == State::Degraded).await);
        assert!(h
            .get(Component::Mirror)
            .reason
            .unwrap()
            .contains("listener on"));
        drop(taken);
        assert!(eventually(|| h.get(Component::Mirror).state == State::Up).await);
    }

    #[tokio::test]
    async fn status_and_metrics_are_served_on_the_metrics_listener() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut config = Config::default();
        config.cache.dir = dir.path().join("blobs");
        config.metrics.listen = port.to_string();
        config.swarm.enabled = true;
        config.swarm.trackers = vec!["https://127.0.0.1:1".into()];
        config.swarm.tls = Some(shoal_p2p::tls::TlsFiles {
            ca: dir.path().join("missing-ca.pem"),
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("missing-key.pem"),
        });
        let client = RegistryClient::new(config.registry.clone()).unwrap();
        let node = Node::start(&config, client).await;
        node.health.up(Component::Snapshotter);
        let report = crate::health::cli::fetch(&port.to_string()).await.unwrap();
        assert_eq!(report.exit_code(), 1);
        let swarm = report
            .components
            .iter()
            .find(|c| c.name == "swarm")
            .unwrap();
        assert_eq!(swarm.state, State::Degraded);
        assert!(swarm.reason.as_ref().unwrap().contains("missing-ca.pem"));
        assert_eq!(report.cache.as_ref().unwrap().blobs, 0);
        let metrics = reqwest::get(format!("http://{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("shoal_component_up{component=\"swarm\"} 0"),
            "{metrics}"
        );
        assert!(
            metrics.contains("shoal_component_up{component=\"cache\"} 1"),
            "{metrics}"
        );
        assert!(metrics.contains("shoal_cache_max_bytes "), "{metrics}");
        drop(node);
        let unreachable = crate::health::cli::fetch(&port.to_string()).await;
        assert!(
            matches!(
                &unreachable,
                Err(crate::health::cli::StatusError::Unreachable { source, .. }) if source.is_connect()
            ),
            "{unreachable:?}"
        );
    }

    #[test]
    fn the_swarm_needs_a_node_certificate_naming_this_node() {
        use shoal_p2p::tls::{Role, Transport};
        let dir = tempfile::tempdir().unwrap();
        let ca = shoal_p2p::peer::test_pki::TestCa::new("cluster");
        let old = ca.files(dir.path(), "old", None);
        let e = Transport::load(Some(&old), false).unwrap_err().to_string();
        assert!(
            e.contains("names no shoal role") && e.contains("scripts/cluster-certs.sh DIR NAME"),
            "{e}"
        );
        let reg = ca.registry_side_files(dir.path(), "reg");
        let reg = Transport::load(Some(&reg), false).unwrap();
        let e = reg.require_role(Role::Node, "shoald's swarm").unwrap_err();
        assert!(e.to_string().contains("needs a node certificate"), "{e}");
        let node = ca.transport(dir.path(), "node-1");
        assert!(node.require_role(Role::Node, "shoald's swarm").is_ok());
        let e = node_name("node-2", &node).unwrap_err().to_string();
        assert!(
            e.contains("\"node-2\" is not the node name \"node-1\""),
            "{e}"
        );
        assert_eq!(node_name("", &node).unwrap(), "node-1");
        assert_eq!(node_name("node-1", &node).unwrap(), "node-1");
        assert_eq!(node_name("n", &Transport::Plaintext).unwrap(), "n");
    }
}
