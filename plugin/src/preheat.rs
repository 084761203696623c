//! shoald's preheat worker (Hound's worker; coordinator in shoal-registry-ext, protocol in
//! [`shoal_p2p::preheat::proto`]), and the `shoald preheat` / `shoald nodes` commands
//! ([`cli`]).
//!
//! - Started by [`crate::node::Node::start`] when `[preheat] coordinator` is set. It
//!   registers (name, labels, kernel, containerd and shoal versions), then heartbeats at the
//!   interval the coordinator gives. The node needs no listener: the heartbeat reply lists
//!   the tasks to run; a running task that is no longer listed is stopped (cancelled, or
//!   failed by the coordinator), a finished one no longer listed was recorded and is
//!   forgotten.
//! - A task is CRI `PullImage` on the configured containerd socket, as kubelet pulls, so
//!   the image goes through shoal's snapshotter and the swarm. All of a node's tasks run at
//!   once; layers shared between images are fetched once (the swarm and the snapshotter
//!   share downloads by digest).
//! - Progress, "bytes done" of an image: the bytes of its layers (from its manifest,
//!   resolved through the node's registry client) present on the node: a blob in the blob
//!   cache counts whole, a blob the swarm is fetching counts its verified chunks, and a blob
//!   containerd downloads itself (fallback) counts its ingest offset. Shared layers count for
//!   every image that has them.
//! - Stopping a task drops its `PullImage` call: containerd 1.6 then cancels that request's
//!   downloads; layers shoal's snapshotter already started are finished into its store.

pub mod cli;
mod real;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use shoal_p2p::preheat::proto::{
    Heartbeat, HeartbeatReply, NodeInfo, Registered, TaskProgress, TaskRef, TaskState,
};
use shoal_p2p::preheat::{PreheatClient, PreheatClientError};
use shoal_p2p::Digest;
use tokio::task::JoinHandle;

use crate::cri::CriError;

pub use real::{start, CriPuller, NodeBlobs};

/// The coordinator, as the worker uses it ([`PreheatClient`] is the real one).
pub trait Coordinator: Send + Sync {
    fn register(&self, info: NodeInfo) -> BoxFuture<'_, Result<Registered, PreheatClientError>>;
    fn heartbeat(&self, hb: Heartbeat)
        -> BoxFuture<'_, Result<HeartbeatReply, PreheatClientError>>;
}

impl Coordinator for PreheatClient {
    fn register(&self, info: NodeInfo) -> BoxFuture<'_, Result<Registered, PreheatClientError>> {
        Box::pin(async move { PreheatClient::register(self, &info).await })
    }

    fn heartbeat(
        &self,
        hb: Heartbeat,
    ) -> BoxFuture<'_, Result<HeartbeatReply, PreheatClientError>> {
        Box::pin(async move { PreheatClient::heartbeat(self, &hb).await })
    }
}

/// Bytes of a blob containerd is downloading itself, by digest, as a pull reports them.
pub type Ingests = Arc<Mutex<HashMap<String, u64>>>;

/// How images are pulled ([`CriPuller`]: CRI `PullImage`).
pub trait Puller: Send + Sync {
    /// Pulls `image`; keeps `ingests` up to date while it runs.
    fn pull(&self, image: String, ingests: Ingests) -> BoxFuture<'static, Result<(), CriError>>;
    /// The runtime's version (`None` while it does not answer).
    fn version(&self) -> BoxFuture<'static, Option<String>>;
}

/// Which blobs of an image are on the node ([`NodeBlobs`]).
pub trait LocalBlobs: Send + Sync {
    /// The layers (digest, size) of `image`.
    fn layers(
        &self,
        image: String,
    ) -> BoxFuture<'static, Result<Vec<(Digest, u64)>, shoal_p2p::Error>>;
    /// Bytes of each of `layers` held on the node (at most its size).
    fn held(&self, layers: &[(Digest, u64)]) -> Vec<u64>;
}

/// One task as the worker runs it.
struct Task {
    handle: JoinHandle<()>,
    shared: Arc<Mutex<TaskLocal>>,
    ingests: Ingests,
}

#[derive(Default)]
struct TaskLocal {
    state: Option<Result<(), CriError>>,
    layers: Vec<(Digest, u64)>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The worker's state between heartbeats.
pub struct Worker {
    info: NodeInfo,
    coordinator: Arc<dyn Coordinator>,
    puller: Arc<dyn Puller>,
    blobs: Arc<dyn LocalBlobs>,
    registered: bool,
    interval: Duration,
    tasks: BTreeMap<TaskRef, Task>,
    /// Where the worker reports its heartbeats (and the coordinator's URL, for the detail).
    health: Option<(crate::health::Health, String)>,
    /// How long heartbeats may fail before the worker is degraded.
    grace: Duration,
}

impl Worker {
    /// A worker for the node `info` (its `containerd` version is asked for until known).
    pub fn new(
        info: NodeInfo,
        coordinator: Arc<dyn Coordinator>,
        puller: Arc<dyn Puller>,
        blobs: Arc<dyn LocalBlobs>,
    ) -> Self {
        Self {
            info,
            coordinator,
            puller,
            blobs,
            registered: false,
            interval: Duration::from_secs(1),
            tasks: BTreeMap::new(),
            health: None,
            grace: crate::health::GRACE,
        }
    }

    /// Reports to `health`: up while heartbeats to `coordinator` go through, degraded when
    /// they have failed for [`crate::health::GRACE`].
    pub fn with_health(mut self, health: crate::health::Health, coordinator: String) -> Self {
        use crate::health::Component;
        health.set_detail(Component::Preheat, format!("coordinator {coordinator}"));
        health.up(Component::Preheat);
        self.health = Some((health, coordinator));
        self
    }

    /// Runs rounds forever (until the future is dropped, which stops every task).
    pub async fn run(mut self) {
        use crate::health::{Component, State};
        let mut outage = crate::health::Outage::default();
        loop {
            let result = self.round().await;
            let now = std::time::Instant::now();
            match result {
                Ok(()) => {
                    if outage.failing_since.is_some() {
                        tracing::info!("preheat coordinator reachable again");
                    }
                    outage.ok(now);
                }
                Err(e) => {
                    if outage.failing_since.is_none() {
                        tracing::warn!("preheat coordinator: {e}");
                    }
                    outage.failed(e.to_string(), now);
                }
            }
            if let Some((health, url)) = &self.health {
                match (outage.is_out(now, self.grace), &outage.last_error) {
                    (true, Some(e)) => health.set(
                        Component::Preheat,
                        State::Degraded,
                        Some(format!("heartbeats to {url} failing: {e}")),
                    ),
                    _ if outage.failing_since.is_none() => health.up(Component::Preheat),
                    _ => {}
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// The tasks running or not yet acknowledged.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// One round: (re-)register when needed, heartbeat, start and stop tasks.
    pub async fn round(&mut self) -> Result<(), PreheatClientError> {
        if self.info.containerd.is_empty() {
            if let Some(v) = self.puller.version().await {
                self.info.containerd = v;
                self.registered = false;
            }
        }
        if !self.registered {
            let r = self.coordinator.register(self.info.clone()).await?;
            self.interval = Duration::from_millis(r.heartbeat_interval_ms.max(1));
            self.registered = true;
            tracing::info!(node = %self.info.name, "registered with the preheat coordinator");
        }
        let hb = Heartbeat {
            node: self.info.name.clone(),
            tasks: self.progress(),
        };
        let reply = self.coordinator.heartbeat(hb).await?;
        self.interval = Duration::from_millis(reply.heartbeat_interval_ms.max(1));
        if !reply.registered {
            self.registered = false;
            return Ok(());
        }
        let wanted: std::collections::BTreeSet<&TaskRef> = reply.tasks.iter().collect();
        self.tasks.retain(|k, t| {
            let keep = wanted.contains(k);
            if !keep && lock(&t.shared).state.is_none() {
                tracing::info!(job = %k.job, image = %k.image, "preheat task stopped");
            }
            keep
        });
        for t in &reply.tasks {
            if !self.tasks.contains_key(t) {
                tracing::info!(job = %t.job, image = %t.image, "preheat task started");
                let task = self.start(t.image.clone());
                self.tasks.insert(t.clone(), task);
            }
        }
        Ok(())
    }

    fn start(&self, image: String) -> Task {
        let shared = Arc::new(Mutex::new(TaskLocal::default()));
        let ingests = Ingests::default();
        let (puller, blobs) = (self.puller.clone(), self.blobs.clone());
        let handle = tokio::spawn({
            let (shared, ingests) = (shared.clone(), ingests.clone());
            async move {
                // Layer sizes are for progress only: the pull goes on without them.
                match blobs.layers(image.clone()).await {
                    Ok(layers) => lock(&shared).layers = layers,
                    Err(e) => tracing::debug!(%image, "layers for progress: {e}"),
                }
                let result = puller.pull(image.clone(), ingests).await;
                if let Err(e) = &result {
                    tracing::warn!(%image, "preheat pull failed: {e}");
                }
                lock(&shared).state = Some(result);
            }
        });
        Task {
            handle,
            shared,
            ingests,
        }
    }

    /// What is reported in the heartbeat.
    fn progress(&self) -> Vec<TaskProgress> {
        self.tasks
            .iter()
            .map(|(k, t)| {
                let local = lock(&t.shared);
                let held = self.blobs.held(&local.layers);
                let ingests = lock(&t.ingests);
                let bytes_done = local
                    .layers
                    .iter()
                    .zip(held)
                    .map(|((d, size), h)| {
                        let ingest = ingests.get(&d.to_string()).copied().unwrap_or(0);
                        h.max(ingest).min(*size)
                    })
                    .sum();
                let bytes_total = local.layers.iter().map(|(_, s)| s).sum();
                let (state, error) = match &local.state {
                    None => (TaskState::Pulling, None),
                    Some(Ok(())) => (TaskState::Done, None),
                    Some(Err(e)) => (TaskState::Failed, Some(e.to_string())),
                };
                TaskProgress {
                    job: k.job.clone(),
                    image: k.image.clone(),
                    state,
                    bytes_done: if state == TaskState::Done {
                        bytes_total
                    } else {
                        bytes_done
                    },
                    bytes_total,
                    error,
                }
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// This host's kernel release (`uname -r`), or "" when unreadable.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
