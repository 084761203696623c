//! The chunk planner of one blob download: pure policy (DESIGN "Conventions"), shared by
//! shoald's executor ([`super::scheduler`]) and the simulator. No tokio, no I/O: its input is
//! the download's state, the peers' state (from the trackers), the time and a random source;
//! its output is [`Action`]s (fetch this chunk from that peer or this range from the registry,
//! cancel that request, drop that peer). The executor does the I/O and feeds every result
//! back ([`Planner::chunk`], [`Planner::ended`], [`Planner::peers`]).
//!
//! - Order: the chunks just past the reader's position first, in order, when another node
//!   holds them (a stream waits on them); then rarest first, counting the nodes that hold a
//!   chunk and those fetching it, ties broken by a per-node random key so nodes spread over
//!   different chunks.
//! - First-seeder discipline: a registry-side seeder is asked only for a chunk no other node
//!   holds or fetches; a chunk some node holds waits for a free slot at a node (never goes to
//!   the seeder because the nodes are busy), and a chunk another node fetches is left to it
//!   for as long as a chunk may take ([`Planner::overdue_after`]). Requests to seeders go
//!   through a node-wide [`SeederBudget`] (one at a time by default), so nodes that start
//!   together ask the seeder for different chunks and trade them. The registry (HTTP Range,
//!   consecutive chunks merged) gets chunks nobody holds.
//! - Peer choice: among the usable holders (not dropped, not busy, a free slot), the best
//!   measured throughput (smoothed; untried peers optimistically) divided by (1 + requests in
//!   flight), with a little randomness. A peer measured at less than a third of the fastest
//!   gets one request at a time, so slow nodes are not everyone's source and fast nodes do
//!   not queue behind them. A chunk that only slow nodes hold while a fast node fetches it
//!   is left to the fast node (for as long as a chunk may take), and a request to a slow
//!   node that has taken longer than the median chunk time is asked again of a fast holder
//!   with a free slot (the first copy wins).
//! - Overdue: a single-chunk peer request older than [`Planner::overdue_after`] (3x the median
//!   chunk time, at least 1 s; 8 s before three are measured) is asked of another node; of a
//!   seeder when it is twice that; of the registry when four times that. The first verified
//!   copy wins and the others are cancelled.
//! - Failures: a chunk failing its hash drops its peer for this blob; a busy peer is left
//!   alone for 500 ms; a peer that says it does not hold a chunk is not asked for it again
//!   until the next peer list; three transport failures in a row (no chunk from it between
//!   them) drop a peer; registry failures back
//!   off, and the download fails ([`PlanError`]) only when chunks no peer holds cannot be had
//!   from the registry, the registry's bytes contradict the manifest, or nothing arrived for
//!   two minutes.
//!
//! Cost per decision: per-chunk counts (node holders, seeder holders, fetchers) are kept up
//! to date as peer lists arrive (O(chunks) per listed peer), so ordering the missing chunks
//! never scans the peers; choosing a source for a chunk looks at the usable peers only (the
//! trackers' lists are bounded), and so does the slow-holder rule, only while some peer is
//! measured slow.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::tracker::ChunkSet;

mod api;
mod state;

pub use api::*;
use state::{Counts, Peer, Req};

/// An overdue chunk goes to a seeder at this many times the overdue limit.
const SEEDER_OVERDUE_FACTOR: u32 = 2;
/// An overdue chunk goes to the registry at this many times the overdue limit.
const REGISTRY_OVERDUE_FACTOR: u32 = 4;
/// The overdue limit before three chunk times are measured.
const FIRST_OVERDUE: Duration = Duration::from_secs(8);
/// Chunk times kept for the median.
const DURATIONS_KEPT: usize = 32;
/// Throughput assumed for untried peers when nothing is measured (bytes/s).
const DEFAULT_SPEED: f64 = 1e6;
/// A peer slower than this fraction of the fastest gets one request at a time.
const SLOW_FRACTION: f64 = 1.0 / 3.0;

/// The planner of one blob download (see the module documentation).
pub struct Planner {
    config: PlannerConfig,
    n: u32,
    held: ChunkSet,
    /// Requests in flight per chunk.
    chunk_reqs: Vec<Vec<ReqId>>,
    /// Per-node random tie-break of rarest-first.
    tie: Vec<u32>,
    counts: Counts,
    /// By id: ordered, so that [`Planner::pick`] draws its randomness in the same order for
    /// the same state (the simulator is deterministic for a seed).
    peers: BTreeMap<String, Peer>,
    reqs: HashMap<ReqId, Req>,
    next_req: ReqId,
    registry_in_flight: usize,
    registry_failures: u32,
    registry_hash_failures: u32,
    registry_backoff_until: Option<Instant>,
    durations: VecDeque<Duration>,
    /// The best throughput measured of any peer (bytes/s; 0 before any).
    fastest: f64,
    last_progress: Instant,
    /// Since when each chunk has been left to another node fetching it.
    waiting: HashMap<u32, Instant>,
    /// When a seeder last refused each chunk.
    refused: HashMap<u32, Instant>,
}

impl Planner {
    /// The planner of a blob of `chunks` chunks, starting at `now`; `rng` draws the
    /// rarest-first tie-break.
    pub fn new(config: PlannerConfig, chunks: u32, now: Instant, rng: &mut fastrand::Rng) -> Self {
        let n = chunks as usize;
        Self {
            config,
            n: chunks,
            held: ChunkSet::empty(chunks),
            chunk_reqs: vec![Vec::new(); n],
            tie: (0..chunks).map(|_| rng.u32(..)).collect(),
            counts: Counts {
                nodes: vec![0; n],
                seeders: vec![0; n],
                fetchers: vec![0; n],
            },
            peers: BTreeMap::new(),
            reqs: HashMap::new(),
            next_req: 0,
            registry_in_flight: 0,
            registry_failures: 0,
            registry_hash_failures: 0,
            registry_backoff_until: None,
            durations: VecDeque::new(),
            fastest: 0.0,
            last_progress: now,
            waiting: HashMap::new(),
            refused: HashMap::new(),
        }
    }

    /// The chunks held.
    pub fn held(&self) -> &ChunkSet {
        &self.held
    }

    /// Every chunk held.
    pub fn is_done(&self) -> bool {
        self.held.is_full()
    }

    /// The chunks with a request in flight (announced, so other nodes leave them to this one).
    pub fn fetching(&self) -> ChunkSet {
        let mut set = ChunkSet::empty(self.n);
        for (i, reqs) in self.chunk_reqs.iter().enumerate() {
            if !reqs.is_empty() {
                set.insert(i as u32);
            }
        }
        set
    }

    /// Requests in flight.
    pub fn requests(&self) -> usize {
        self.reqs.len()
    }

    /// Peer `id`'s address and measured throughput (bytes/s), if measured.
    pub fn peer_speed(&self, id: &str) -> Option<(SocketAddr, f64)> {
        let peer = self.peers.get(id)?;
        Some((peer.addr, peer.speed?))
    }

    /// Fails the download when nothing arrived for [`STALL_LIMIT`].
    pub fn check(&self, now: Instant) -> Result<(), PlanError> {
        if now.saturating_duration_since(self.last_progress) > STALL_LIMIT {
            return Err(PlanError::Stalled {
                secs: STALL_LIMIT.as_secs(),
                held: self.held.count(),
                total: self.n,
            });
        }
        Ok(())
    }

    /// A new peer list: known peers are updated (a dropped one stays dropped), new ones
    /// added; entries whose chunk count differs from the manifest's are ignored. Returns how
    /// many peers are new.
    pub fn peers(&mut self, list: Vec<PeerInfo>) -> usize {
        let mut added = 0;
        for info in list {
            if info.have.len() != self.n {
                continue;
            }
            let fetching = if info.fetching.len() == self.n {
                info.fetching
            } else {
                ChunkSet::empty(self.n)
            };
            match self.peers.get_mut(&info.id) {
                Some(peer) => {
                    self.counts.apply(peer, false);
                    peer.addr = info.addr;
                    peer.have = info.have;
                    peer.fetching = fetching;
                    self.counts.apply(peer, true);
                }
                None => {
                    self.fastest = self.fastest.max(info.speed.unwrap_or(0.0));
                    let peer = Peer {
                        addr: info.addr,
                        seeder: info.seeder,
                        have: info.have,
                        fetching,
                        in_flight: 0,
                        failures: 0,
                        dropped: false,
                        busy_until: None,
                        speed: info.speed,
                    };
                    self.counts.apply(&peer, true);
                    self.peers.insert(info.id, peer);
                    added += 1;
                }
            }
        }
        added
    }

    /// How long a peer request may take before it is asked elsewhere too, and how long a
    /// chunk is left to another node fetching it.
    pub fn overdue_after(&self) -> Duration {
        match self.median_chunk_time() {
            Some(median) => (median * 3).max(Duration::from_secs(1)),
            None => FIRST_OVERDUE,
        }
    }

    /// Chunk `index` (`len` bytes) of request `req` arrived at `now`: `verified` against the
    /// manifest (and stored) or not. Returns the requests to cancel and the peers dropped.
    pub fn chunk(
        &mut self,
        now: Instant,
        req: ReqId,
        index: u32,
        len: u64,
        verified: bool,
    ) -> Result<Vec<Action>, PlanError> {
        let mut out = Vec::new();
        let Some(source) = self.reqs.get(&req).map(|r| r.source.clone()) else {
            // Cancelled meanwhile; a verified chunk is still held.
            if verified && index < self.n {
                self.held.insert(index);
                self.last_progress = now;
            }
            return Ok(out);
        };
        if index >= self.n {
            return Ok(out);
        }
        if !verified {
            match source {
                Source::Peer(id) => self.drop_peer(&id, DropReason::Corrupt, &mut out),
                Source::Registry => {
                    self.registry_hash_failures += 1;
                    if self.registry_hash_failures >= MAX_REGISTRY_HASH_FAILURES {
                        return Err(PlanError::RegistryMismatch { index });
                    }
                }
            }
            return Ok(out);
        }
        self.last_progress = now;
        self.held.insert(index);
        self.waiting.remove(&index);
        self.refused.remove(&index);
        if source == Source::Registry {
            self.registry_failures = 0;
        }
        if let Some(r) = self.reqs.get_mut(&req) {
            let took = now.saturating_duration_since(r.last_chunk);
            r.last_chunk = now;
            self.durations.push_back(took);
            if self.durations.len() > DURATIONS_KEPT {
                self.durations.pop_front();
            }
            if let Source::Peer(id) = &source {
                if let Some(peer) = self.peers.get_mut(id) {
                    // Failures count in a row: a congested link's odd timeout among
                    // chunks served does not drop a good peer.
                    peer.failures = 0;
                    let speed = len as f64 / took.as_secs_f64().max(1e-3);
                    let smoothed = match peer.speed {
                        Some(s) => 0.7 * s + 0.3 * speed,
                        None => speed,
                    };
                    peer.speed = Some(smoothed);
                    // A slowly decaying maximum, so one burst does not make every other peer "slow".
                    self.fastest = (self.fastest * 0.95).max(smoothed);
                }
            }
        }
        // Other single-chunk requests for it are not needed any more.
        let duplicates: Vec<ReqId> = self.chunk_reqs[index as usize]
            .iter()
            .copied()
            .filter(|&id| id != req && self.reqs.get(&id).is_some_and(|r| r.chunks.len() == 1))
            .collect();
        for id in duplicates {
            self.forget(id);
            out.push(Action::Cancel { req: id });
        }
        Ok(out)
    }

    /// Request `req` ended at `now` (after its chunks), with `failure` or not. Returns the
    /// requests to cancel and the peers dropped.
    pub fn ended(
        &mut self,
        now: Instant,
        req: ReqId,
        failure: Option<Failure>,
    ) -> Result<Vec<Action>, PlanError> {
        let mut out = Vec::new();
        let Some(r) = self.forget(req) else {
            return Ok(out);
        };
        let Some(failure) = failure else {
            return Ok(out);
        };
        match r.source {
            Source::Peer(id) => {
                let Some(peer) = self.peers.get_mut(&id) else {
                    return Ok(out);
                };
                match failure {
                    Failure::Busy => peer.busy_until = Some(now + BUSY_BACKOFF),
                    Failure::NotHeld if peer.seeder => {
                        // Sent to another node a moment ago: leave it to that node (not to
                        // the registry) until its announce arrives.
                        for i in r.chunks.clone() {
                            self.refused.insert(i, now);
                        }
                    }
                    Failure::NotHeld => {
                        self.counts.apply(peer, false);
                        let mut have = ChunkSet::empty(self.n);
                        for i in peer.have.iter().filter(|i| !r.chunks.contains(i)) {
                            have.insert(i);
                        }
                        peer.have = have;
                        self.counts.apply(peer, true);
                    }
                    Failure::Transport => {
                        peer.failures += 1;
                        if peer.failures >= MAX_PEER_FAILURES {
                            self.drop_peer(&id, DropReason::Failing, &mut out);
                        }
                    }
                }
            }
            Source::Registry => {
                self.registry_failures += 1;
                let backoff = Duration::from_millis(200 << self.registry_failures.min(5));
                self.registry_backoff_until = Some(now + backoff);
                if self.registry_failures >= MAX_REGISTRY_FAILURES && !self.missing_has_holder() {
                    return Err(PlanError::RegistryFailing {
                        failures: self.registry_failures,
                    });
                }
            }
        }
        Ok(out)
    }

    /// What to fetch now, from whom, and which overdue chunks to ask again elsewhere.
    pub fn plan(
        &mut self,
        now: Instant,
        rng: &mut fastrand::Rng,
        budget: &mut dyn SeederBudget,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        self.reissue_overdue(now, rng, budget, &mut out);
        if self.reqs.len() >= self.config.in_flight || self.held.is_full() {
            return out;
        }
        let reader = (0..self.n).find(|&i| !self.held.contains(i)).unwrap_or(0);
        let near_end = reader.saturating_add(self.config.near_window);
        let mut near = Vec::new();
        let mut rest = Vec::new();
        for i in (0..self.n)
            .filter(|&i| !self.held.contains(i) && self.chunk_reqs[i as usize].is_empty())
        {
            if i < near_end && self.counts.nodes[i as usize] > 0 {
                near.push(i);
            } else {
                rest.push(i);
            }
        }
        let c = &self.counts;
        rest.sort_by_key(|&i| {
            let i = i as usize;
            (c.nodes[i] + c.fetchers[i], self.tie[i])
        });
        let wait_limit = self.overdue_after();
        // Whether any peer is measured slow (else the slow-holder rule below has nothing to do
        // and the peers are not scanned for it).
        let any_slow = self.peers.values().any(|p| !p.dropped && self.is_slow(p));
        let mut for_registry = Vec::new();
        for i in near.into_iter().chain(rest) {
            if self.reqs.len() >= self.config.in_flight {
                break;
            }
            let k = i as usize;
            if let Some(&at) = self.refused.get(&i) {
                if now.saturating_duration_since(at) < SEEDER_REFUSAL_WAIT {
                    continue;
                }
                self.refused.remove(&i);
            }
            let (nodes, seeders) = (self.counts.nodes[k], self.counts.seeders[k]);
            if nodes == 0 && self.counts.fetchers[k] > 0 {
                // Another node fetches it: leave it to that node (the registry side sends it
                // once), but no longer than a chunk may take.
                let since = *self.waiting.entry(i).or_insert(now);
                if now.saturating_duration_since(since) < wait_limit {
                    continue;
                }
            }
            if nodes > 0 {
                // A node holds it: from a node, when one has a free slot; never from the
                // seeder just because the nodes are busy.
                if any_slow && self.only_slow_holders(i) && self.fast_fetcher(i) {
                    // Only slow nodes hold it and a fast one fetches it: leave it to the fast
                    // one (it will be ours sooner from there), no longer than a chunk may take.
                    let since = *self.waiting.entry(i).or_insert(now);
                    if now.saturating_duration_since(since) < wait_limit {
                        continue;
                    }
                }
                if let Some(id) = self.pick(i, now, rng, None, Pick::Nodes, budget) {
                    self.fetch_peer(id, i, now, false, &mut out);
                }
                continue;
            }
            if seeders > 0 {
                if let Some(id) = self.pick(i, now, rng, None, Pick::Seeders, budget) {
                    self.fetch_peer(id, i, now, false, &mut out);
                }
                continue;
            }
            for_registry.push(i);
        }
        self.fetch_registry(for_registry, now, &mut out);
        out
    }

    fn reissue_overdue(
        &mut self,
        now: Instant,
        rng: &mut fastrand::Rng,
        budget: &mut dyn SeederBudget,
        out: &mut Vec<Action>,
    ) {
        let limit = self.overdue_after();
        // A request to a slow peer is due elsewhere once it took a fast peer's chunk time.
        let slow_limit = self.median_chunk_time().map_or(limit, |m| m.min(limit));
        let mut overdue: Vec<(Duration, u32, String, bool)> = self
            .reqs
            .values()
            .filter(|r| r.chunks.len() == 1 && self.chunk_reqs[r.chunks.start as usize].len() == 1)
            .filter_map(|r| match &r.source {
                Source::Peer(id) => {
                    let elapsed = now.saturating_duration_since(r.started);
                    let slow = self.peers.get(id).is_some_and(|p| self.is_slow(p));
                    if elapsed > limit {
                        Some((elapsed, r.chunks.start, id.clone(), false))
                    } else if slow && elapsed > slow_limit {
                        Some((elapsed, r.chunks.start, id.clone(), true))
                    } else {
                        None
                    }
                }
                Source::Registry => None,
            })
            .collect();
        overdue.sort_unstable_by_key(|(_, i, _, _)| *i);
        for (elapsed, i, slow, only_fast) in overdue {
            if only_fast {
                // Only to a fast node with a free slot; else it stays with the slow one
                // until the ordinary limit.
                if let Some(id) = self.pick(i, now, rng, Some(&slow), Pick::Nodes, budget) {
                    if self.peers.get(&id).is_some_and(|p| !self.is_slow(p)) {
                        self.fetch_peer(id, i, now, true, out);
                    }
                }
                continue;
            }
            let other = self
                .pick(i, now, rng, Some(&slow), Pick::Nodes, budget)
                .or_else(|| {
                    (elapsed > limit * SEEDER_OVERDUE_FACTOR)
                        .then(|| self.pick(i, now, rng, Some(&slow), Pick::Seeders, budget))
                        .flatten()
                });
            if let Some(id) = other {
                self.fetch_peer(id, i, now, true, out);
            } else if elapsed > limit * REGISTRY_OVERDUE_FACTOR && self.registry_ready(now) {
                self.fetch_registry_range(i..i + 1, now, true, out);
            }
        }
    }

    /// Whether `p` is measured at less than [`SLOW_FRACTION`] of the fastest peer.
    fn is_slow(&self, p: &Peer) -> bool {
        p.speed.is_some_and(|s| s < self.fastest * SLOW_FRACTION)
    }

    /// The median of the chunk times measured, once three are.
    fn median_chunk_time(&self) -> Option<Duration> {
        if self.durations.len() < 3 {
            return None;
        }
        let mut d: Vec<Duration> = self.durations.iter().copied().collect();
        d.sort_unstable();
        Some(d[d.len() / 2])
    }

    /// Whether every node (not seeder, not dropped) holding chunk `i` is slow.
    fn only_slow_holders(&self, i: u32) -> bool {
        self.peers
            .values()
            .filter(|p| !p.seeder && !p.dropped && p.have.contains(i))
            .all(|p| self.is_slow(p))
    }

    /// Whether a node not measured slow is fetching chunk `i` (without holding it yet).
    fn fast_fetcher(&self, i: u32) -> bool {
        self.peers.values().any(|p| {
            !p.seeder
                && !p.dropped
                && p.fetching.contains(i)
                && !p.have.contains(i)
                && !self.is_slow(p)
        })
    }

    /// The best usable holder of chunk `i` of kind `which`, other than `not` (see the module
    /// documentation); a seeder's slot is taken from `budget`.
    fn pick(
        &self,
        i: u32,
        now: Instant,
        rng: &mut fastrand::Rng,
        not: Option<&str>,
        which: Pick,
        budget: &mut dyn SeederBudget,
    ) -> Option<String> {
        let optimistic = if self.fastest > 0.0 {
            self.fastest * 1.5
        } else {
            DEFAULT_SPEED
        };
        let mut best: Option<(f64, &String, &Peer)> = None;
        for (id, p) in &self.peers {
            if Some(id.as_str()) == not
                || p.seeder != (which == Pick::Seeders)
                || p.dropped
                || !p.have.contains(i)
                || p.busy_until.is_some_and(|t| t > now)
            {
                continue;
            }
            let slots = if self.is_slow(p) {
                1
            } else {
                self.config.per_peer_in_flight
            };
            if p.in_flight >= slots {
                continue;
            }
            let speed = p.speed.unwrap_or(optimistic);
            let score = speed * (0.8 + 0.4 * rng.f64()) / (1.0 + p.in_flight as f64);
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, id, p));
            }
        }
        let (_, id, peer) = best?;
        if peer.seeder && !budget.take(peer.addr) {
            return None;
        }
        Some(id.clone())
    }

    fn fetch_peer(
        &mut self,
        id: String,
        i: u32,
        now: Instant,
        overdue: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.in_flight += 1;
        let (addr, seeder) = (peer.addr, peer.seeder);
        let req = self.track(Source::Peer(id.clone()), i..i + 1, now);
        out.push(Action::Peer {
            req,
            peer: id,
            addr,
            seeder,
            chunk: i,
            overdue,
        });
    }

    /// Asks the registry for `chunks` (ascending), merged into ranges of consecutive chunks.
    fn fetch_registry(&mut self, mut chunks: Vec<u32>, now: Instant, out: &mut Vec<Action>) {
        chunks.sort_unstable();
        let max = self.config.max_registry_chunks.max(1);
        let mut k = 0;
        while k < chunks.len()
            && self.registry_ready(now)
            && self.reqs.len() < self.config.in_flight
        {
            let start = chunks[k];
            let mut end = start + 1;
            k += 1;
            while k < chunks.len() && chunks[k] == end && end - start < max {
                end += 1;
                k += 1;
            }
            self.fetch_registry_range(start..end, now, false, out);
        }
    }

    fn fetch_registry_range(
        &mut self,
        chunks: Range<u32>,
        now: Instant,
        overdue: bool,
        out: &mut Vec<Action>,
    ) {
        self.registry_in_flight += 1;
        let req = self.track(Source::Registry, chunks.clone(), now);
        out.push(Action::Registry {
            req,
            chunks,
            overdue,
        });
    }

    fn registry_ready(&self, now: Instant) -> bool {
        self.registry_in_flight < self.config.registry_in_flight
            && self.registry_backoff_until.is_none_or(|t| t <= now)
    }

    fn track(&mut self, source: Source, chunks: Range<u32>, now: Instant) -> ReqId {
        self.next_req += 1;
        let id = self.next_req;
        for i in chunks.clone() {
            self.chunk_reqs[i as usize].push(id);
        }
        self.reqs.insert(
            id,
            Req {
                source,
                chunks,
                started: now,
                last_chunk: now,
            },
        );
        id
    }

    /// Removes request `id` from the books; returns it.
    fn forget(&mut self, id: ReqId) -> Option<Req> {
        let req = self.reqs.remove(&id)?;
        for i in req.chunks.clone() {
            self.chunk_reqs[i as usize].retain(|r| *r != id);
        }
        match &req.source {
            Source::Peer(peer_id) => {
                if let Some(peer) = self.peers.get_mut(peer_id) {
                    peer.in_flight = peer.in_flight.saturating_sub(1);
                }
            }
            Source::Registry => self.registry_in_flight = self.registry_in_flight.saturating_sub(1),
        }
        Some(req)
    }

    fn drop_peer(&mut self, id: &str, reason: DropReason, out: &mut Vec<Action>) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        if !peer.dropped {
            self.counts.apply(peer, false);
            peer.dropped = true;
            out.push(Action::Drop {
                peer: id.to_owned(),
                addr: peer.addr,
                reason,
            });
        }
        let source = Source::Peer(id.to_owned());
        let mut ids: Vec<ReqId> = self
            .reqs
            .iter()
            .filter(|(_, r)| r.source == source)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for req in ids {
            self.forget(req);
            out.push(Action::Cancel { req });
        }
    }

    /// Whether some peer not dropped holds some missing chunk (the download can go on).
    fn missing_has_holder(&self) -> bool {
        (0..self.n).any(|i| {
            let k = i as usize;
            !self.held.contains(i) && self.counts.nodes[k] + self.counts.seeders[k] > 0
        })
    }
}

/// Which holders [`Planner::pick`] considers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pick {
    Nodes,
    Seeders,
}
