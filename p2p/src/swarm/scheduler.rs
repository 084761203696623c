//! The chunk scheduler of one blob download.
//!
//! - Sources: the peers the trackers list for the blob (refreshed every `peer_refresh`), and
//!   the registry (HTTP Range). Before the first chunk is asked, the scheduler waits for the
//!   first peer list (or its failure), so a blob the swarm holds is not fetched from the
//!   registry just because the list was late.
//! - Order: the chunks just past the reader's position first, in order, when at least two
//!   peers hold them (a stream waiting on them); then rarest first (fewest holders, counting
//!   the other nodes fetching it), ties broken by a per-node random key so nodes spread over
//!   different chunks. A chunk no node holds but another node is fetching is left to that node
//!   (it is announced as soon as it arrives), so the registry side sends it once. A chunk no
//!   usable peer holds goes to the registry, consecutive ones merged into one range.
//! - Limits: `in_flight` requests per blob, `per_peer_in_flight` per peer, and
//!   `registry_in_flight` registry ranges; a registry-side seeder gets at most
//!   `per_seeder_in_flight` requests from this node across all blobs (1 by default), so that
//!   many nodes starting at once ask it for different chunks and then trade them.
//! - Peer choice among the holders with a free slot: other nodes before a registry-side
//!   seeder (`registry-ext@…`), then measured speed (smoothed, shared across blobs; untried
//!   peers are tried optimistically) divided by (1 + requests in flight), with a little
//!   randomness.
//! - Overdue: a peer request taking more than 3x the median chunk time (at least 1 s; 8 s
//!   before anything is measured) is asked again from another holder, or, when no other
//!   holder is free and it is 4x past that, from the registry; the first verified copy wins
//!   and the other request is cancelled.
//! - Failures: a chunk failing its hash drops that peer for this blob (counted); a busy peer
//!   is left alone for 500 ms; a peer failing 3 times is dropped for this blob; registry
//!   errors back off. The download fails (its readers get the error and shoald falls back to
//!   containerd) only when chunks no peer holds cannot be had from the registry, or nothing
//!   arrived for two minutes.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::download::Download;
use super::Swarm;
use crate::digest::Digest;
use crate::peer::PeerError;
use crate::tracker::{ChunkSet, PeerEntry, TrackerError, SEEDER_ID_PREFIX};

/// Scheduling pass interval (overdue checks, peer refreshes).
const TICK: Duration = Duration::from_millis(100);
/// How long to wait for the first peer list (a tracker that is down answers at once).
const FIRST_PEERS_TIMEOUT: Duration = Duration::from_secs(10);
/// An overdue chunk goes to the registry only when no other peer can take it and it is this
/// many times past the overdue limit: the registry is the last resort.
const REGISTRY_OVERDUE_FACTOR: u32 = 4;
/// A download that receives nothing for this long fails.
const STALL_LIMIT: Duration = Duration::from_secs(120);
/// A busy peer is not asked again for this long.
const BUSY_BACKOFF: Duration = Duration::from_millis(500);
/// Transport failures after which a peer is dropped for the blob.
const MAX_PEER_FAILURES: u32 = 3;
/// Consecutive registry failures after which chunks no peer holds are given up.
const MAX_REGISTRY_FAILURES: u32 = 6;
/// Registry chunks failing their hash after which the manifest is taken to be wrong.
const MAX_REGISTRY_HASH_FAILURES: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Source {
    Peer(String),
    Registry,
}

enum Failure {
    Busy,
    NotHeld,
    Transport(String),
    Registry(String),
    Store(String),
}

enum Event {
    /// Chunk `index` from `source` arrived: verified (and stored) or not.
    Chunk {
        source: Source,
        index: u32,
        len: u64,
        verified: bool,
    },
    /// Request `req` ended (after its chunks), with an error or not.
    End {
        req: u64,
        failure: Option<Failure>,
    },
    Peers(Result<Vec<PeerEntry>, TrackerError>),
}

struct PeerState {
    addr: SocketAddr,
    /// A registry-side seeder (`registry-ext@…`): its requests count against the node-wide
    /// `per_seeder_in_flight`.
    seeder: bool,
    have: ChunkSet,
    /// Chunks it is fetching (from its announce).
    fetching: ChunkSet,
    in_flight: usize,
    failures: u32,
    dropped: bool,
    busy_until: Option<Instant>,
}

struct Request {
    source: Source,
    chunks: Range<u32>,
    started: Instant,
    /// When its last chunk arrived (per-chunk durations of merged ranges).
    last_chunk: Instant,
    abort: AbortHandle,
}

/// Runs the download of `download` to its end: committed to the cache, or failed.
pub(crate) async fn run(swarm: Swarm, download: Arc<Download>) {
    let mut scheduler = Scheduler::new(swarm.clone(), download.clone());
    let result = scheduler.run().await;
    scheduler.cancel_all();
    let metrics = &swarm.inner().metrics;
    metrics.peers.dec_by(scheduler.peers.len() as i64);
    let result = match result {
        Ok(()) => {
            let committing = download.clone();
            match tokio::task::spawn_blocking(move || committing.commit()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        Err(reason) => {
            download.end(Err(reason.clone()));
            Err(reason)
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
    swarm.finished(&download, result.is_ok());
}

fn label(reason: &'static str) -> crate::metrics::ReasonLabel {
    crate::metrics::ReasonLabel { reason }
}

struct Scheduler {
    swarm: Swarm,
    download: Arc<Download>,
    n: u32,
    held: ChunkSet,
    /// Requests in flight per chunk.
    chunk_reqs: Vec<Vec<u64>>,
    /// Per-node random tie-break of rarest-first.
    tie: Vec<u32>,
    peers: HashMap<String, PeerState>,
    reqs: HashMap<u64, Request>,
    next_req: u64,
    registry_in_flight: usize,
    registry_failures: u32,
    registry_hash_failures: u32,
    registry_backoff_until: Option<Instant>,
    durations: VecDeque<Duration>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    refreshing: bool,
    last_refresh: Instant,
    last_progress: Instant,
    /// Since when each chunk has been left to another node fetching it.
    waiting: HashMap<u32, Instant>,
}

impl Scheduler {
    fn new(swarm: Swarm, download: Arc<Download>) -> Self {
        let n = download.manifest().chunks.len() as u32;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        Self {
            swarm,
            held: ChunkSet::empty(n),
            chunk_reqs: vec![Vec::new(); n as usize],
            tie: (0..n).map(|_| fastrand::u32(..)).collect(),
            download,
            n,
            peers: HashMap::new(),
            reqs: HashMap::new(),
            next_req: 0,
            registry_in_flight: 0,
            registry_failures: 0,
            registry_hash_failures: 0,
            registry_backoff_until: None,
            durations: VecDeque::new(),
            events_tx,
            events_rx,
            refreshing: false,
            last_refresh: now,
            last_progress: now,
            waiting: HashMap::new(),
        }
    }

    async fn run(&mut self) -> Result<(), String> {
        self.refresh_peers();
        // Wait for the first peer list before choosing sources.
        let first = tokio::time::timeout(FIRST_PEERS_TIMEOUT, self.events_rx.recv()).await;
        if let Ok(Some(event)) = first {
            self.handle(event)?;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.held = self.download.held();
            if self.held.is_full() {
                return Ok(());
            }
            if self.last_progress.elapsed() > STALL_LIMIT {
                return Err(format!(
                    "no chunk arrived for {}s ({} of {} held)",
                    STALL_LIMIT.as_secs(),
                    self.held.count(),
                    self.n
                ));
            }
            self.schedule()?;
            self.publish_fetching();
            tokio::select! {
                event = self.events_rx.recv() => {
                    if let Some(event) = event {
                        self.handle(event)?;
                    }
                    // Take whatever else is ready before scheduling again.
                    while let Ok(event) = self.events_rx.try_recv() {
                        self.handle(event)?;
                    }
                }
                _ = tick.tick() => {
                    let refresh = self.swarm.inner().config.peer_refresh;
                    if !self.refreshing && self.last_refresh.elapsed() >= refresh {
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
        tokio::spawn(async move {
            let inner = swarm.inner();
            let peers = inner.tracker.peers(&digest, &inner.config.node_name).await;
            let _ = tx.send(Event::Peers(peers));
        });
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Peers(result) => {
                self.refreshing = false;
                match result {
                    Ok(list) => self.update_peers(list),
                    Err(e) => {
                        tracing::debug!(blob = %self.download.digest(), "peer list: {e}");
                    }
                }
                Ok(())
            }
            Event::Chunk {
                source,
                index,
                len,
                verified,
            } => self.chunk_arrived(source, index, len, verified),
            Event::End { req, failure } => self.request_ended(req, failure),
        }
    }

    fn update_peers(&mut self, list: Vec<PeerEntry>) {
        let before = self.peers.len();
        for entry in list {
            if entry.peer_id == self.swarm.inner().config.node_name {
                continue;
            }
            let fetching = entry
                .fetching_set()
                .ok()
                .filter(|f| f.len() == self.n)
                .unwrap_or_else(|| ChunkSet::empty(self.n));
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
            match self.peers.get_mut(&entry.peer_id) {
                Some(peer) => {
                    peer.addr = entry.addr;
                    peer.have = have;
                    peer.fetching = fetching;
                }
                None => {
                    let seeder = entry.peer_id.starts_with(SEEDER_ID_PREFIX);
                    self.peers.insert(
                        entry.peer_id,
                        PeerState {
                            addr: entry.addr,
                            seeder,
                            have,
                            fetching,
                            in_flight: 0,
                            failures: 0,
                            dropped: false,
                            busy_until: None,
                        },
                    );
                }
            }
        }
        let added = self.peers.len() - before;
        self.swarm.inner().metrics.peers.inc_by(added as i64);
    }

    fn chunk_arrived(
        &mut self,
        source: Source,
        index: u32,
        len: u64,
        verified: bool,
    ) -> Result<(), String> {
        let metrics = &self.swarm.inner().metrics;
        if !verified {
            metrics.chunk_failed("hash");
            match &source {
                Source::Peer(id) => {
                    if let Some(peer) = self.peers.get_mut(id) {
                        if !peer.dropped {
                            tracing::warn!(peer = %id, addr = %peer.addr, blob = %self.download.digest(), chunk = index, "chunk failed its hash; peer dropped for this blob");
                            peer.dropped = true;
                            metrics.peers_dropped.inc();
                        }
                    }
                    self.cancel_from(&source);
                }
                Source::Registry => {
                    self.registry_hash_failures += 1;
                    if self.registry_hash_failures >= MAX_REGISTRY_HASH_FAILURES {
                        return Err(format!(
                            "the registry's chunk {index} does not match the chunk manifest"
                        ));
                    }
                }
            }
            return Ok(());
        }
        let now = Instant::now();
        self.last_progress = now;
        // Bytes are counted where they are stored (verify_and_store).
        self.held.insert(index);
        if matches!(source, Source::Registry) {
            self.registry_failures = 0;
        }
        // Timing and speed, from the request that brought it.
        let from = self.chunk_reqs[index as usize]
            .iter()
            .copied()
            .find(|id| self.reqs.get(id).is_some_and(|r| r.source == source));
        if let Some(id) = from {
            if let Some(req) = self.reqs.get_mut(&id) {
                let took = now.duration_since(req.last_chunk);
                req.last_chunk = now;
                self.durations.push_back(took);
                if self.durations.len() > 32 {
                    self.durations.pop_front();
                }
                if let Source::Peer(id) = &source {
                    if let Some(peer) = self.peers.get(id) {
                        let speed = len as f64 / took.as_secs_f64().max(1e-3);
                        let mut speeds = self.swarm.inner().peer_speed.lock().expect("lock");
                        let s = speeds.entry(peer.addr).or_insert(speed);
                        *s = 0.7 * *s + 0.3 * speed;
                    }
                }
            }
        }
        // Cancel duplicate single-chunk requests for it.
        let duplicates: Vec<u64> = self.chunk_reqs[index as usize]
            .iter()
            .copied()
            .filter(|id| {
                self.reqs
                    .get(id)
                    .is_some_and(|r| r.source != source && r.chunks.len() == 1)
            })
            .collect();
        for id in duplicates {
            self.cancel(id);
        }
        self.swarm.inner().announce_now.notify_one();
        Ok(())
    }

    fn request_ended(&mut self, id: u64, failure: Option<Failure>) -> Result<(), String> {
        let Some(req) = self.forget(id) else {
            return Ok(());
        };
        let Some(failure) = failure else {
            return Ok(());
        };
        let metrics = &self.swarm.inner().metrics;
        let now = Instant::now();
        match (&req.source, failure) {
            (Source::Peer(peer_id), failure) => {
                let Some(peer) = self.peers.get_mut(peer_id) else {
                    return Ok(());
                };
                match failure {
                    Failure::Busy => {
                        metrics.chunk_failed("busy");
                        peer.busy_until = Some(now + BUSY_BACKOFF);
                    }
                    Failure::NotHeld => {
                        metrics.chunk_failed("not_held");
                        let mut have = ChunkSet::empty(self.n);
                        for i in peer.have.iter().filter(|i| !req.chunks.contains(i)) {
                            have.insert(i);
                        }
                        peer.have = have;
                    }
                    Failure::Transport(reason) | Failure::Registry(reason) => {
                        metrics.chunk_failed("transport");
                        peer.failures += 1;
                        tracing::debug!(peer = %peer_id, "chunk request failed: {reason}");
                        if peer.failures >= MAX_PEER_FAILURES && !peer.dropped {
                            tracing::info!(peer = %peer_id, addr = %peer.addr, blob = %self.download.digest(), "peer failing; dropped for this blob: {reason}");
                            peer.dropped = true;
                        }
                    }
                    Failure::Store(reason) => return Err(reason),
                }
            }
            (Source::Registry, Failure::Store(reason)) => return Err(reason),
            (Source::Registry, failure) => {
                let reason = match failure {
                    Failure::Registry(r) | Failure::Transport(r) => r,
                    Failure::Busy => "busy".into(),
                    Failure::NotHeld => "not held".into(),
                    Failure::Store(r) => r,
                };
                metrics.chunk_failed("registry");
                self.registry_failures += 1;
                let backoff = Duration::from_millis(200 << self.registry_failures.min(5));
                self.registry_backoff_until = Some(now + backoff);
                tracing::info!(blob = %self.download.digest(), "registry range failed ({} in a row): {reason}", self.registry_failures);
                if self.registry_failures >= MAX_REGISTRY_FAILURES
                    && !self.any_usable_holder_of_missing()
                {
                    return Err(format!(
                        "registry failing ({reason}) and no peer holds the rest"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether some usable peer holds some missing chunk (the download can still progress).
    fn any_usable_holder_of_missing(&self) -> bool {
        (0..self.n).filter(|&i| !self.held.contains(i)).any(|i| {
            self.peers
                .values()
                .any(|p| !p.dropped && p.have.contains(i))
        })
    }

    /// Removes request `id` from the books; returns it.
    fn forget(&mut self, id: u64) -> Option<Request> {
        let req = self.reqs.remove(&id)?;
        for i in req.chunks.clone() {
            self.chunk_reqs[i as usize].retain(|r| *r != id);
        }
        match &req.source {
            Source::Peer(peer_id) => {
                if let Some(peer) = self.peers.get_mut(peer_id) {
                    peer.in_flight = peer.in_flight.saturating_sub(1);
                    if peer.seeder {
                        self.swarm.seeder_slot(peer.addr, false);
                    }
                }
            }
            Source::Registry => self.registry_in_flight = self.registry_in_flight.saturating_sub(1),
        }
        Some(req)
    }

    fn cancel(&mut self, id: u64) {
        if let Some(req) = self.forget(id) {
            req.abort.abort();
        }
    }

    fn cancel_from(&mut self, source: &Source) {
        let ids: Vec<u64> = self
            .reqs
            .iter()
            .filter(|(_, r)| r.source == *source)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.cancel(id);
        }
    }

    fn cancel_all(&mut self) {
        let ids: Vec<u64> = self.reqs.keys().copied().collect();
        for id in ids {
            self.cancel(id);
        }
    }

    /// How long a peer request may take before it is asked elsewhere too.
    fn overdue_after(&self) -> Duration {
        if self.durations.len() < 3 {
            return Duration::from_secs(8);
        }
        let mut d: Vec<Duration> = self.durations.iter().copied().collect();
        d.sort();
        (d[d.len() / 2] * 3).max(Duration::from_secs(1))
    }

    fn usable(&self, peer: &PeerState, now: Instant) -> bool {
        !peer.dropped
            && peer.busy_until.is_none_or(|t| t <= now)
            && peer.in_flight < self.swarm.inner().config.per_peer_in_flight
            && (!peer.seeder || self.swarm.seeder_has_slot(peer.addr))
    }

    /// Other nodes fetching chunk `i` without holding it yet.
    fn fetchers(&self, i: u32) -> usize {
        self.peers
            .values()
            .filter(|p| !p.seeder && !p.dropped && p.fetching.contains(i) && !p.have.contains(i))
            .count()
    }

    /// Whether a node (not a registry-side seeder) holds chunk `i`.
    fn node_holds(&self, i: u32) -> bool {
        self.peers
            .values()
            .any(|p| !p.seeder && !p.dropped && p.have.contains(i))
    }

    /// Tells the download which chunks are in flight (for the announce); wakes the announcer
    /// when that names new ones.
    fn publish_fetching(&self) {
        let mut fetching = ChunkSet::empty(self.n);
        for (i, reqs) in self.chunk_reqs.iter().enumerate() {
            if !reqs.is_empty() {
                fetching.insert(i as u32);
            }
        }
        if self.download.set_fetching(fetching) {
            self.swarm.inner().announce_now.notify_one();
        }
    }

    /// Holders of chunk `i` that are not dropped (busy or not).
    fn holders(&self, i: u32) -> usize {
        self.peers
            .values()
            .filter(|p| !p.dropped && p.have.contains(i))
            .count()
    }

    /// The best usable holder of chunk `i`, other than `not`: a node if one can take it, a
    /// registry-side seeder otherwise (so the registry side sends each chunk about once and
    /// the nodes spread it).
    fn pick_peer(&self, i: u32, now: Instant, not: Option<&str>) -> Option<String> {
        let speeds = self.swarm.inner().peer_speed.lock().expect("lock");
        let optimistic = speeds.values().copied().fold(1e6_f64, f64::max) * 1.5;
        self.peers
            .iter()
            .filter(|(id, p)| Some(id.as_str()) != not && p.have.contains(i) && self.usable(p, now))
            .map(|(id, p)| {
                let speed = speeds.get(&p.addr).copied().unwrap_or(optimistic);
                let jitter = 0.8 + 0.4 * fastrand::f64();
                let node = !id.starts_with(SEEDER_ID_PREFIX);
                (node, speed * jitter / (1.0 + p.in_flight as f64), id)
            })
            .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
            .map(|(_, _, id)| id.clone())
    }

    fn schedule(&mut self) -> Result<(), String> {
        let now = Instant::now();
        let config = self.swarm.inner().config.clone();
        self.reissue_overdue(now);
        if self.reqs.len() >= config.in_flight {
            return Ok(());
        }
        let missing: Vec<u32> = (0..self.n)
            .filter(|&i| !self.held.contains(i) && self.chunk_reqs[i as usize].is_empty())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let reader = (0..self.n).find(|&i| !self.held.contains(i)).unwrap_or(0);
        let rarity: HashMap<u32, usize> = missing.iter().map(|&i| (i, self.holders(i))).collect();
        let near: Vec<u32> = missing
            .iter()
            .copied()
            .filter(|&i| i < reader + config.near_window as u32 && rarity[&i] >= 2)
            .collect();
        let mut rest: Vec<u32> = missing
            .iter()
            .copied()
            .filter(|i| !near.contains(i))
            .collect();
        // Chunks other nodes are fetching count as (soon) held by them.
        let fetchers: HashMap<u32, usize> = rest.iter().map(|&i| (i, self.fetchers(i))).collect();
        let wait_limit = self.overdue_after();
        rest.sort_by_key(|&i| (rarity[&i] + fetchers[&i], self.tie[i as usize]));
        let mut for_registry = Vec::new();
        for i in near.into_iter().chain(rest) {
            if self.reqs.len() >= config.in_flight {
                break;
            }
            if fetchers.get(&i).is_some_and(|&f| f > 0) && !self.node_holds(i) {
                // Only the registry side has it and another node is fetching it: wait for
                // that node rather than have the registry side send it twice, but no longer
                // than a chunk may take (a slow or lying node must not stall this one).
                let since = *self.waiting.entry(i).or_insert(now);
                if now.duration_since(since) < wait_limit {
                    continue;
                }
            }
            if rarity[&i] == 0 {
                for_registry.push(i);
                continue;
            }
            if let Some(peer) = self.pick_peer(i, now, None) {
                self.request_from_peer(peer, i);
            }
        }
        self.request_from_registry(for_registry, now);
        Ok(())
    }

    fn reissue_overdue(&mut self, now: Instant) {
        let limit = self.overdue_after();
        let overdue: Vec<(Duration, u32, Source)> = self
            .reqs
            .values()
            .filter(|r| {
                r.chunks.len() == 1
                    && matches!(r.source, Source::Peer(_))
                    && now.duration_since(r.started) > limit
                    && self.chunk_reqs[r.chunks.start as usize].len() == 1
            })
            .map(|r| {
                (
                    now.duration_since(r.started),
                    r.chunks.start,
                    r.source.clone(),
                )
            })
            .collect();
        for (elapsed, i, source) in overdue {
            let Source::Peer(slow) = &source else {
                continue;
            };
            if let Some(peer) = self.pick_peer(i, now, Some(slow)) {
                tracing::debug!(chunk = i, slow = %slow, other = %peer, "chunk overdue; asked elsewhere");
                self.swarm.inner().metrics.chunk_failed("overdue");
                self.request_from_peer(peer, i);
            } else if elapsed > limit * REGISTRY_OVERDUE_FACTOR && self.registry_ready(now) {
                tracing::debug!(chunk = i, slow = %slow, "chunk overdue; asked of the registry");
                self.swarm.inner().metrics.chunk_failed("overdue");
                self.spawn_registry(i..i + 1);
            }
        }
    }

    fn registry_ready(&self, now: Instant) -> bool {
        self.registry_in_flight < self.swarm.inner().config.registry_in_flight
            && self.registry_backoff_until.is_none_or(|t| t <= now)
    }

    fn next_id(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    fn request_from_peer(&mut self, peer_id: String, index: u32) {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        peer.in_flight += 1;
        let (addr, seeder) = (peer.addr, peer.seeder);
        if seeder {
            self.swarm.seeder_slot(addr, true);
        }
        let id = self.next_id();
        let source = Source::Peer(peer_id);
        let download = self.download.clone();
        let fetcher = self.swarm.inner().peers.clone();
        let tx = self.events_tx.clone();
        let task_source = source.clone();
        let swarm = self.swarm.clone();
        let handle = tokio::spawn(async move {
            let range = download.manifest().chunk_range(index as usize);
            let digest = download.digest().clone();
            let fetched = match seeder {
                true => fetcher.fetch_from_seeder(addr, &digest, range).await,
                false => fetcher.fetch(addr, &digest, range).await,
            };
            let failure = match fetched {
                Ok(bytes) => {
                    match verify_and_store(&swarm, "peer", &download, index, bytes).await {
                        Ok((len, verified)) => {
                            let _ = tx.send(Event::Chunk {
                                source: task_source,
                                index,
                                len,
                                verified,
                            });
                            None
                        }
                        Err(reason) => Some(Failure::Store(reason)),
                    }
                }
                Err(PeerError::Busy { .. }) => Some(Failure::Busy),
                Err(PeerError::NotHeld { .. }) => Some(Failure::NotHeld),
                Err(e) => Some(Failure::Transport(e.to_string())),
            };
            let _ = tx.send(Event::End { req: id, failure });
        });
        self.track(id, source, index..index + 1, handle.abort_handle());
    }

    fn track(&mut self, id: u64, source: Source, chunks: Range<u32>, abort: AbortHandle) {
        for i in chunks.clone() {
            self.chunk_reqs[i as usize].push(id);
        }
        let now = Instant::now();
        self.reqs.insert(
            id,
            Request {
                source,
                chunks,
                started: now,
                last_chunk: now,
                abort,
            },
        );
    }

    /// Asks the registry for `chunks` (ascending), merged into ranges of consecutive chunks.
    fn request_from_registry(&mut self, mut chunks: Vec<u32>, now: Instant) {
        chunks.sort_unstable();
        let chunk_size = self.download.manifest().chunk_size;
        let max_chunks = (self.swarm.inner().config.max_registry_range / chunk_size).max(1) as u32;
        let mut i = 0;
        while i < chunks.len() && self.registry_ready(now) {
            if self.reqs.len() >= self.swarm.inner().config.in_flight {
                break;
            }
            let start = chunks[i];
            let mut end = start + 1;
            i += 1;
            while i < chunks.len() && chunks[i] == end && end - start < max_chunks {
                end += 1;
                i += 1;
            }
            self.spawn_registry(start..end);
        }
    }

    fn spawn_registry(&mut self, chunks: Range<u32>) {
        self.registry_in_flight += 1;
        let id = self.next_id();
        let download = self.download.clone();
        let swarm = self.swarm.clone();
        let tx = self.events_tx.clone();
        let range_chunks = chunks.clone();
        let handle = tokio::spawn(async move {
            let failure = fetch_registry_range(&swarm, &download, range_chunks, &tx).await;
            let _ = tx.send(Event::End { req: id, failure });
        });
        self.track(id, Source::Registry, chunks, handle.abort_handle());
    }
}

/// Checks `bytes` against chunk `index`'s hash and, if it matches and is not held yet, stores
/// it (counting it in the metrics when it is new). Returns its length and whether it
/// matched; `Err` when the store failed.
async fn verify_and_store(
    swarm: &Swarm,
    source: &'static str,
    download: &Arc<Download>,
    index: u32,
    bytes: Bytes,
) -> Result<(u64, bool), String> {
    let download = download.clone();
    let metrics = swarm.inner().metrics.clone();
    let len = bytes.len() as u64;
    tokio::task::spawn_blocking(move || {
        let expected = &download.manifest().chunks[index as usize];
        if Digest::of(&bytes) != *expected {
            return Ok((len, false));
        }
        let new = download.store(index, &bytes).map_err(|e| e.to_string())?;
        if new {
            metrics.received(source, len);
        }
        Ok((len, true))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Fetches `chunks` as one range from the registry, storing each chunk as soon as its bytes
/// are in; returns the failure, if any.
async fn fetch_registry_range(
    swarm: &Swarm,
    download: &Arc<Download>,
    chunks: Range<u32>,
    tx: &mpsc::UnboundedSender<Event>,
) -> Option<Failure> {
    let manifest = download.manifest();
    let range = manifest.chunk_range(chunks.start as usize).start
        ..manifest.chunk_range(chunks.end as usize - 1).end;
    let credentials = download.credentials();
    let mut stream = match swarm
        .inner()
        .registry
        .fetch_range_as(
            download.image(),
            download.digest(),
            range,
            credentials.as_ref(),
        )
        .await
    {
        Ok(s) => s,
        Err(e) => return Some(Failure::Registry(e.to_string())),
    };
    let mut index = chunks.start;
    let mut buf = BytesMut::new();
    while index < chunks.end {
        let want = {
            let r = manifest.chunk_range(index as usize);
            (r.end - r.start) as usize
        };
        if buf.len() >= want {
            let bytes = buf.split_to(want).freeze();
            match verify_and_store(swarm, "registry", download, index, bytes).await {
                Ok((len, verified)) => {
                    let _ = tx.send(Event::Chunk {
                        source: Source::Registry,
                        index,
                        len,
                        verified,
                    });
                    if !verified {
                        return None;
                    }
                }
                Err(reason) => return Some(Failure::Store(reason)),
            }
            index += 1;
            continue;
        }
        match stream.next().await {
            Some(Ok(bytes)) => buf.extend_from_slice(&bytes),
            Some(Err(e)) => return Some(Failure::Registry(e.to_string())),
            None => {
                return Some(Failure::Registry(format!(
                    "range ended {} bytes short",
                    want - buf.len()
                )))
            }
        }
    }
    None
}
