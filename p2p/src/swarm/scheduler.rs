//! The executor of one blob download: it runs the [`Planner`] (pure policy, see
//! [`super::planner`]) against the real world. It asks the trackers for peers (waiting for
//! the first list before the first chunk, so a blob the swarm holds is not fetched from the
//! registry just because the list was late, then every `peer_refresh`, or up to eight times
//! as late while the lists tell nothing its have streams do not: [`PeerRefresh`]), carries
//! out the planner's [`Action`]s as tasks ([`super::fetch`]), feeds every chunk, every
//! request's bytes so far and every request's end back to it, publishes the chunks in flight
//! for the announce, keeps the node-wide seeder slots and peer speeds, and counts it all in
//! the metrics. It also keeps the download's have-stream subscriptions
//! ([`super::subscribe`]): each line is given to the planner as that peer's state at once
//! (and the planner plans again).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::download::{AnnounceWake, Download};
use super::error::RequestError;
use super::planner::{
    Action, DropReason, Failure, NodeBudget, PeerInfo, PeerRefresh, Planner, PlannerConfig, ReqId,
};
use super::subscribe::{self, Subscriptions};
use super::{Swarm, SwarmError};
use crate::digest::Digest;
use crate::peer::have::HaveUpdate;
use crate::single_flight::Entry;
use crate::tracker::{ChunkSet, PeerEntry, TrackerError, SEEDER_ID_PREFIX};

/// Scheduling pass interval (overdue checks, peer refreshes).
const TICK: Duration = Duration::from_millis(100);
/// How long to wait for the first peer list (a tracker that is down answers at once).
const FIRST_PEERS_TIMEOUT: Duration = Duration::from_secs(10);

/// How a request's task ended.
pub(super) enum Ended {
    /// With its chunks (each reported as an [`Event::Chunk`]).
    Ok,
    /// Without them: the planner's kind of failure and why, for the metrics and the log.
    Failed(Failure, RequestError),
    /// A verified chunk could not be stored: the download cannot go on.
    Store(crate::Error),
}

/// What the tasks report to the executor.
pub(super) enum Event {
    /// Chunk `index` of request `req` arrived: verified (and stored) or not.
    Chunk {
        req: ReqId,
        index: u32,
        len: u64,
        verified: bool,
    },
    /// Request `req` ended (after its chunks).
    End { req: ReqId, ended: Ended },
    /// A peer list (or why there is none).
    Peers(Result<Vec<PeerEntry>, TrackerError>),
    /// A line of peer `peer`'s have stream: its state now.
    Have { peer: String, update: HaveUpdate },
    /// Peer `peer`'s have stream ended (after its lines): with `done` (it holds the whole
    /// blob) or not (refused, failed, or its download ended).
    HaveEnded { peer: String, done: bool },
}

/// A request's task, and the seeder slot it holds, if any.
struct Task {
    abort: AbortHandle,
    seeder: Option<SocketAddr>,
    /// The peer asked (`None`: the registry).
    peer: Option<String>,
    /// When it was started (for the debug log of each chunk).
    started: Instant,
    /// A peer request's bytes received so far, of `len` (the planner's overdue rule).
    progress: Option<(Arc<AtomicU64>, u64)>,
}

/// Runs the download of `download` (`entry` among the swarm's downloads) to its end:
/// committed to the cache, or failed.
pub(crate) async fn run(swarm: Swarm, download: Arc<Download>, entry: Entry<Digest>) {
    let mut scheduler = Scheduler::new(swarm.clone(), download.clone());
    let result = scheduler.run().await;
    scheduler.cancel_all();
    let metrics = &swarm.inner().metrics;
    metrics
        .have_streams
        .dec_by(scheduler.subscriptions.close_all() as i64);
    metrics.peers.dec_by(scheduler.peer_count as i64);
    let result = match result {
        Ok(()) => {
            let committing = download.clone();
            match tokio::task::spawn_blocking(move || committing.commit()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(SwarmError::Task {
                    chunk: None,
                    source: Arc::new(e),
                }),
            }
        }
        Err(e) => {
            // The readers get it as `Error::Swarm`.
            download.end(Err(e.clone()));
            Err(e)
        }
    };
    let secs = download.started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => {
            metrics.fetch_seconds.observe(secs);
            metrics.blob_fetches.get_or_create(&label("ok")).inc();
            tracing::info!(blob = %download.digest(), bytes = download.manifest().size, secs, "blob fetched through the swarm");
        }
        Err(reason) => {
            metrics.blob_fetches.get_or_create(&label("error")).inc();
            tracing::warn!(blob = %download.digest(), "swarm download failed: {reason}");
        }
    }
    swarm.finished(&download, &entry, result.is_ok());
}

fn label(reason: &'static str) -> crate::metrics::ReasonLabel {
    crate::metrics::ReasonLabel { reason }
}

/// The node-wide seeder slots and chunk requests, as the planner's [`NodeBudget`].
struct SwarmBudget<'a>(&'a Swarm);

impl NodeBudget for SwarmBudget<'_> {
    fn take_seeder(&mut self, addr: SocketAddr) -> bool {
        self.0.take_seeder_slot(addr)
    }

    fn request_room(&self, own: usize) -> bool {
        self.0.request_room(own)
    }

    fn count_request(&mut self) {
        self.0.count_request();
    }
}

struct Scheduler {
    swarm: Swarm,
    download: Arc<Download>,
    n: u32,
    planner: Planner,
    rng: fastrand::Rng,
    tasks: HashMap<ReqId, Task>,
    peer_count: usize,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    refreshing: bool,
    last_refresh: Instant,
    /// The interval between peer lists (longer while they tell nothing the streams do not).
    refresh: PeerRefresh,
    subscriptions: Subscriptions,
}

impl Scheduler {
    fn new(swarm: Swarm, download: Arc<Download>) -> Self {
        let n = download.manifest().chunks.len() as u32;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        let config = &swarm.inner().config;
        let chunk_size = download.manifest().chunk_size.max(1);
        let planner_config = PlannerConfig {
            in_flight: config.in_flight,
            per_peer_in_flight: config.per_peer_in_flight,
            registry_in_flight: config.registry_in_flight,
            max_registry_chunks: (config.max_registry_range / chunk_size).clamp(1, u32::MAX as u64)
                as u32,
            near_window: config.near_window as u32,
        };
        let mut rng = fastrand::Rng::new();
        let planner = Planner::new(planner_config, n, now, &mut rng);
        let subscriptions = Subscriptions::new(config.have_peers);
        let refresh = PeerRefresh::new(config.peer_refresh);
        Self {
            swarm,
            download,
            n,
            planner,
            rng,
            tasks: HashMap::new(),
            peer_count: 0,
            events_tx,
            events_rx,
            refreshing: false,
            last_refresh: now,
            refresh,
            subscriptions,
        }
    }

    async fn run(&mut self) -> Result<(), SwarmError> {
        self.refresh_peers();
        // Wait for the first peer list before choosing sources.
        let first = tokio::time::timeout(FIRST_PEERS_TIMEOUT, self.events_rx.recv()).await;
        if let Ok(Some(event)) = first {
            self.handle(event)?;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.planner.is_done() {
                return Ok(());
            }
            let now = Instant::now();
            self.planner.check(now)?;
            for (&req, task) in &self.tasks {
                if let Some((got, len)) = &task.progress {
                    self.planner
                        .progress(req, got.load(Ordering::Relaxed), *len);
                }
            }
            let actions = self
                .planner
                .plan(now, &mut self.rng, &mut SwarmBudget(&self.swarm));
            self.execute(actions);
            self.publish_fetching();
            tokio::select! {
                event = self.events_rx.recv() => {
                    if let Some(event) = event {
                        self.handle(event)?;
                    }
                    // Take whatever else is ready before planning again.
                    while let Ok(event) = self.events_rx.try_recv() {
                        self.handle(event)?;
                    }
                }
                _ = tick.tick() => {
                    if !self.refreshing && self.last_refresh.elapsed() >= self.refresh.every() {
                        self.refresh_peers();
                    }
                }
            }
        }
    }

    fn refresh_peers(&mut self) {
        self.refreshing = true;
        self.last_refresh = Instant::now();
        let swarm = self.swarm.clone();
        let digest = self.download.digest().clone();
        let tx = self.events_tx.clone();
        let fresh = self.refresh.fresh(self.planner.starved(), Instant::now());
        tokio::spawn(async move {
            let inner = swarm.inner();
            let name = &inner.config.node_name;
            let peers = if fresh {
                inner.tracker.fresh_peers(&digest, name).await
            } else {
                inner.tracker.peers(&digest, name).await
            };
            let _ = tx.send(Event::Peers(peers));
        });
    }

    fn handle(&mut self, event: Event) -> Result<(), SwarmError> {
        let now = Instant::now();
        let actions = match event {
            Event::Peers(result) => {
                self.refreshing = false;
                match result {
                    Ok(list) => {
                        let news = self.update_peers(list);
                        self.refresh.listed(news);
                    }
                    Err(e) => tracing::debug!(blob = %self.download.digest(), "peer list: {e}"),
                }
                self.subscribe_more();
                return Ok(());
            }
            Event::Have { peer, update } => {
                self.have_line(peer, update);
                return Ok(());
            }
            Event::HaveEnded { peer, done } => {
                if self.subscriptions.ended(&peer, done, now) {
                    self.swarm.inner().metrics.have_streams.dec();
                }
                self.refresh.stream_ended();
                self.subscribe_more();
                return Ok(());
            }
            Event::Chunk {
                req,
                index,
                len,
                verified,
            } => {
                if verified {
                    self.swarm.inner().announce_now.notify_one();
                    // One line per chunk (debug): the swarm's timeline, for the benchmark's
                    // diagnosis (docs/swarm-benchmark.md).
                    let task = self.tasks.get(&req);
                    let from = task.map_or("cancelled", |t| match &t.peer {
                        Some(peer) => peer.as_str(),
                        None => "registry",
                    });
                    tracing::debug!(
                        blob = %self.download.digest(),
                        chunk = index,
                        from,
                        at_ms = self.download.started.elapsed().as_millis() as u64,
                        took_ms = task.map_or(0, |t| t.started.elapsed().as_millis() as u64),
                        "chunk arrived"
                    );
                } else {
                    self.swarm.inner().metrics.chunk_failed("hash");
                }
                let actions = self.planner.chunk(now, req, index, len, verified);
                self.remember_speed(req);
                actions
            }
            Event::End { req, ended } => {
                let task = self.tasks.remove(&req);
                if let Some(task) = &task {
                    self.released(task);
                }
                let failure = match ended {
                    Ended::Ok => None,
                    Ended::Store(e) => return Err(SwarmError::Store(Arc::new(e))),
                    Ended::Failed(failure, reason) => {
                        let registry = task.as_ref().is_some_and(|t| t.peer.is_none());
                        self.count_failure(failure, registry, &reason);
                        Some(failure)
                    }
                };
                self.planner.ended(now, req, failure)
            }
        };
        self.execute(actions?);
        Ok(())
    }

    fn count_failure(&self, failure: Failure, registry: bool, reason: &RequestError) {
        let metrics = &self.swarm.inner().metrics;
        if registry {
            metrics.chunk_failed("registry");
            tracing::info!(blob = %self.download.digest(), "registry range failed: {reason}");
            return;
        }
        metrics.chunk_failed(match failure {
            Failure::Busy => "busy",
            Failure::NotHeld => "not_held",
            Failure::Transport => "transport",
        });
        tracing::debug!(blob = %self.download.digest(), "chunk request failed: {reason}");
    }

    /// Keeps the planner's measure of the peer that served request `req` for other blobs.
    fn remember_speed(&self, req: ReqId) {
        let peer = self.tasks.get(&req).and_then(|t| t.peer.as_deref());
        if let Some((addr, speed)) = peer.and_then(|id| self.planner.peer_speed(id)) {
            let mut speeds = self.swarm.inner().peer_speed.lock().expect("lock");
            speeds.insert(addr, speed);
        }
    }

    /// Gives a peer list to the planner. Returns whether it told anything the have streams
    /// do not (a node not followed by a stream, or a peer not known before).
    fn update_peers(&mut self, list: Vec<PeerEntry>) -> bool {
        let me = &self.swarm.inner().config.node_name;
        let speeds = self.swarm.inner().peer_speed.lock().expect("lock").clone();
        let mut infos = Vec::with_capacity(list.len());
        for entry in list {
            // A subscribed peer's stream is newer than the trackers' entry.
            if entry.peer_id == *me || self.subscriptions.ignores(&entry.peer_id) {
                continue;
            }
            let have = match entry.set() {
                Ok(set) if set.len() == self.n => set,
                Ok(set) => {
                    tracing::debug!(peer = %entry.peer_id, chunks = set.len(), "peer's chunk count does not match the manifest; ignored");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(peer = %entry.peer_id, "peer's chunk set: {e}");
                    continue;
                }
            };
            let fetching = entry
                .fetching_set()
                .ok()
                .filter(|f| f.len() == self.n)
                .unwrap_or_else(|| ChunkSet::empty(self.n));
            let seeder = entry.peer_id.starts_with(SEEDER_ID_PREFIX);
            if !seeder {
                self.subscriptions.listed(&entry.peer_id, entry.addr);
            }
            infos.push(PeerInfo {
                seeder,
                speed: speeds.get(&entry.addr).copied(),
                id: entry.peer_id,
                addr: entry.addr,
                have,
                fetching,
            });
        }
        let unstreamed = infos.iter().any(|p| !p.seeder);
        let added = self.planner.peers(infos);
        self.peer_count += added;
        self.swarm.inner().metrics.peers.inc_by(added as i64);
        unstreamed || added > 0
    }

    /// Opens have streams to fill the free subscription slots.
    fn subscribe_more(&mut self) {
        for (peer, addr) in self.subscriptions.due(Instant::now()) {
            let task = tokio::spawn(subscribe::subscribe(
                self.swarm.clone(),
                self.download.clone(),
                peer.clone(),
                addr,
                self.events_tx.clone(),
            ));
            self.subscriptions.started(peer, addr, task.abort_handle());
            self.swarm.inner().metrics.have_streams.inc();
        }
    }

    /// A have-stream line: `peer`'s state, replacing the planner's view of it at once.
    fn have_line(&mut self, peer: String, update: HaveUpdate) {
        let Some(addr) = self.subscriptions.line(&peer) else {
            return; // the subscription was closed meanwhile
        };
        let metrics = &self.swarm.inner().metrics;
        metrics.have_updates.inc();
        let speed = self
            .swarm
            .inner()
            .peer_speed
            .lock()
            .expect("lock")
            .get(&addr)
            .copied();
        let info = PeerInfo {
            id: peer,
            addr,
            seeder: false,
            have: update.have,
            fetching: update.fetching,
            speed,
        };
        let added = self.planner.peers(vec![info]);
        self.peer_count += added;
        metrics.peers.inc_by(added as i64);
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Peer {
                    req,
                    peer,
                    addr,
                    seeder,
                    chunk,
                    overdue,
                } => {
                    if overdue {
                        tracing::debug!(chunk, other = %peer, "chunk overdue; asked elsewhere");
                        self.swarm.inner().metrics.chunk_failed("overdue");
                    }
                    let progress = Arc::new(AtomicU64::new(0));
                    let range = self.download.manifest().chunk_range(chunk as usize);
                    let request = super::fetch::PeerRequest {
                        req,
                        index: chunk,
                        addr,
                        seeder,
                        progress: progress.clone(),
                    };
                    let task = tokio::spawn(super::fetch::from_peer(
                        self.swarm.clone(),
                        self.download.clone(),
                        request,
                        self.events_tx.clone(),
                    ));
                    let task = Task {
                        abort: task.abort_handle(),
                        seeder: seeder.then_some(addr),
                        peer: Some(peer),
                        started: Instant::now(),
                        progress: Some((progress, range.end - range.start)),
                    };
                    self.tasks.insert(req, task);
                }
                Action::Registry {
                    req,
                    chunks,
                    overdue,
                } => {
                    if overdue {
                        tracing::debug!(?chunks, "chunk overdue; asked of the registry");
                        self.swarm.inner().metrics.chunk_failed("overdue");
                    }
                    let task = tokio::spawn(super::fetch::from_registry(
                        self.swarm.clone(),
                        self.download.clone(),
                        req,
                        chunks,
                        self.events_tx.clone(),
                    ));
                    let task = Task {
                        abort: task.abort_handle(),
                        seeder: None,
                        peer: None,
                        started: Instant::now(),
                        progress: None,
                    };
                    self.tasks.insert(req, task);
                }
                Action::Cancel { req } => self.cancel(req),
                Action::Drop { peer, addr, reason } => {
                    if self.subscriptions.dropped(&peer) {
                        self.swarm.inner().metrics.have_streams.dec();
                    }
                    match reason {
                        DropReason::Corrupt => {
                            tracing::warn!(peer = %peer, addr = %addr, blob = %self.download.digest(), "chunk failed its hash; peer dropped for this blob");
                            self.swarm.inner().metrics.peers_dropped.inc();
                        }
                        DropReason::Failing => {
                            tracing::info!(peer = %peer, addr = %addr, blob = %self.download.digest(), "peer failing; dropped for this blob");
                            self.swarm.inner().metrics.peers_dropped.inc();
                        }
                    }
                }
            }
        }
    }

    fn cancel(&mut self, req: ReqId) {
        if let Some(task) = self.tasks.remove(&req) {
            task.abort.abort();
            self.released(&task);
        }
    }

    /// Gives back the node-wide allowances an ended request took: its seeder slot, its place
    /// among the node's peer requests.
    fn released(&self, task: &Task) {
        if let Some(addr) = task.seeder {
            self.swarm.release_seeder_slot(addr);
        }
        if task.peer.is_some() {
            self.swarm.request_ended();
        }
    }

    fn cancel_all(&mut self) {
        let reqs: Vec<ReqId> = self.tasks.keys().copied().collect();
        for req in reqs {
            self.cancel(req);
        }
    }

    /// Tells the download which chunks are in flight (for the announce); wakes the announcer
    /// when that names new ones, at once when they are the download's first.
    fn publish_fetching(&self) {
        let inner = self.swarm.inner();
        match self.download.set_fetching(self.planner.fetching()) {
            AnnounceWake::No => {}
            AnnounceWake::Soon => inner.announce_now.notify_one(),
            AnnounceWake::Now => inner.announce_new_blob.notify_one(),
        }
    }
}
