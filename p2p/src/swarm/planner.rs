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
//!   through a node-wide [`NodeBudget`] (one at a time by default), so nodes that start
//!   together ask the seeder for different chunks and trade them. The registry (HTTP Range,
//!   consecutive chunks merged) gets chunks nobody holds.
//! - Node-wide: a node's blobs share one limit on chunk requests to peers in flight
//!   ([`NodeBudget::request_room`]; shoald's `chunks_in_flight`), each sure of one, so an
//!   image of many layers asks little more of the swarm's upload slots than one of a single
//!   layer. (On the emulated cluster with half the nodes at a quarter of the rate,
//!   per-blob limits let each slow node keep 32 requests in flight: each of its chunks took
//!   7.5 s on average, holding the fast nodes' upload slots, and the fast nodes waited.)
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
//!   copy wins and the others are cancelled. A request whose bytes are arriving
//!   ([`Planner::progress`]) is not overdue while, at the rate they came so far, the rest is
//!   due within a median chunk time: a second copy would then arrive later and take a share
//!   of both links meanwhile (on the emulated cluster at 30 Mbit/s, where TCP flows through
//!   one `tbf` get unequal shares, 69% of the chunks asked again by age alone still came first
//!   from the peer asked first).
//! - Starved: a plan that left request room unused for lack of a free holder, once a
//!   quarter of the blob is held, marks the download starved ([`Planner::starved`]); its
//!   executor then asks the trackers for a new peer list even within their pacing.
//! - Failures: a chunk failing its hash drops its peer for this blob; a busy peer is left
//!   alone for 500 ms; a peer that says it does not hold a chunk is not asked for it again
//!   until the next peer list; three transport failures in a row (no chunk from it between
//!   them) drop a peer; registry failures back
//!   off, and the download fails ([`PlanError`]) only when chunks no peer holds cannot be had
//!   from the registry, the registry's bytes contradict the manifest, or nothing arrived for
//!   two minutes.
//!
//! Cost per decision, independent of how many peers were ever heard of (P): the peers live in a
//! slab (in the order first heard of; a dropped one stays, marked), and an index keeps, per
//! chunk, the peers not dropped holding it (nodes and seeders apart) and the nodes fetching it
//! without holding it, as bitmaps (fetchers: sorted lists) over slab indexes with their sizes
//! (`planner/index.rs`). A peer's update diffs its old and new sets: O(chunks) bit tests (the
//! [`ChunkSet`] bitmap's bytes are not exposed) plus O(1) per chunk that changed (one
//! comparison of the sets when nothing changed); a "not held" answer touches only the request's
//! chunks. Ordering the missing chunks reads the sizes, never the peers; choosing a source for
//! chunk i (`Planner::pick`) and the slow-holder rule go through chunk i's holders (or
//! fetchers) only, in slab order (O(holders + P/64) word reads); whether any peer is slow is
//! the slowest of an ordered set of measured speeds (O(log P) per measurement); each peer lists
//! its requests, so dropping it does not scan the requests. Memory: 2 bits per (peer, chunk) at
//! most, over the peers' own sets, and a slab index per (fetcher, chunk fetched).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tracker::ChunkSet;

mod api;
mod feedback;
mod index;
pub mod refresh;
mod state;

pub use api::*;
use index::{Holders, PeerIdx, Speeds};
pub use refresh::PeerRefresh;
use state::{Peer, Req};

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
/// A download is starved ([`Planner::starved`]) only once it holds 1/`STARVED_FROM` of its
/// chunks. Before, what it lacks is mostly what nobody holds yet (a rollout's first
/// seconds, the seeder's first copies going out at its link's rate): a new list then names
/// nobody worth asking, and asking for it anyway cost 5,000 simulated nodes starting at once
/// 66% more lists and 1% at the median.
pub const STARVED_FROM: u32 = 4;

/// The planner of one blob download (see the module documentation).
pub struct Planner {
    config: PlannerConfig,
    n: u32,
    held: ChunkSet,
    /// Requests in flight per chunk.
    chunk_reqs: Vec<Vec<ReqId>>,
    /// Per-node random tie-break of rarest-first.
    tie: Vec<u32>,
    /// Every peer heard of, in the order first heard of; never removed (a dropped one is
    /// marked). [`Planner::pick`] goes through a chunk's holders in this order, so it draws
    /// its randomness in the same order for the same history (the simulator is deterministic
    /// for a seed).
    peers: Vec<Peer>,
    /// Slab index by peer id (looked up, never iterated; the id shared with the slab).
    by_id: HashMap<Arc<str>, PeerIdx>,
    /// Per chunk, the peers (not dropped) holding it and the nodes fetching it.
    holders: Holders,
    /// The measured speeds of the peers not dropped.
    speeds: Speeds,
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
    /// Whether the last plan left request room unused ([`Planner::starved`]).
    starved: bool,
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
            holders: Holders::new(chunks),
            speeds: Speeds::default(),
            peers: Vec::new(),
            by_id: HashMap::new(),
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
            starved: false,
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

    /// Requests to peers in flight (those the node's budget counts).
    fn peer_requests(&self) -> usize {
        self.reqs.len().saturating_sub(self.registry_in_flight)
    }

    /// Peer `id`'s address and measured throughput (bytes/s), if measured.
    pub fn peer_speed(&self, id: &str) -> Option<(SocketAddr, f64)> {
        let peer = &self.peers[*self.by_id.get(id)? as usize];
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
            match self.by_id.get(info.id.as_str()) {
                Some(&p) => {
                    let peer = &mut self.peers[p as usize];
                    peer.addr = info.addr;
                    if peer.have == info.have && peer.fetching == fetching {
                        continue;
                    }
                    let have = std::mem::replace(&mut peer.have, info.have);
                    let was_fetching = std::mem::replace(&mut peer.fetching, fetching);
                    if !peer.dropped {
                        self.holders.update(
                            p,
                            peer.seeder,
                            Some((&have, &was_fetching)),
                            peer.listed(),
                            0..self.n,
                        );
                    }
                }
                None => {
                    self.fastest = self.fastest.max(info.speed.unwrap_or(0.0));
                    let p = PeerIdx::try_from(self.peers.len()).expect("fewer than 2^32 peers");
                    let id: Arc<str> = info.id.into();
                    let peer = Peer {
                        id: id.clone(),
                        addr: info.addr,
                        seeder: info.seeder,
                        have: info.have,
                        fetching,
                        in_flight: 0,
                        reqs: Vec::new(),
                        failures: 0,
                        dropped: false,
                        busy_until: None,
                        speed: info.speed,
                    };
                    self.holders
                        .update(p, peer.seeder, None, peer.listed(), 0..self.n);
                    self.speeds.update(p, None, peer.speed);
                    self.peers.push(peer);
                    self.by_id.insert(id, p);
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

    /// What to fetch now, from whom, and which overdue chunks to ask again elsewhere.
    pub fn plan(
        &mut self,
        now: Instant,
        rng: &mut fastrand::Rng,
        budget: &mut dyn NodeBudget,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        self.reissue_overdue(now, rng, budget, &mut out);
        self.starved = false;
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
            if i < near_end && self.holders.nodes.count(i) > 0 {
                near.push(i);
            } else {
                rest.push(i);
            }
        }
        let h = &self.holders;
        rest.sort_by_key(|&i| (h.nodes.count(i) + h.fetchers.count(i), self.tie[i as usize]));
        let wait_limit = self.overdue_after();
        // Whether any peer is measured slow (else the slow-holder rule below has nothing to do
        // and the holders are not scanned for it).
        let any_slow = self
            .speeds
            .min()
            .is_some_and(|s| s < self.fastest * SLOW_FRACTION);
        let mut for_registry = Vec::new();
        for i in near.into_iter().chain(rest) {
            if self.reqs.len() >= self.config.in_flight {
                break;
            }
            let (nodes, seeders) = (self.holders.nodes.count(i), self.holders.seeders.count(i));
            if let Some(&at) = self.refused.get(&i) {
                // The seeder sent it to another node a moment ago: wait for that node's
                // word, unless a node is known to hold it already.
                if now.saturating_duration_since(at) < SEEDER_REFUSAL_WAIT {
                    if nodes == 0 {
                        continue;
                    }
                } else {
                    self.refused.remove(&i);
                }
            }
            if nodes == 0 && self.holders.fetchers.count(i) > 0 {
                // Another node fetches it: leave it to that node (the registry side sends it
                // once), but no longer than a chunk may take.
                let since = *self.waiting.entry(i).or_insert(now);
                if now.saturating_duration_since(since) < wait_limit {
                    continue;
                }
            }
            if (nodes > 0 || seeders > 0) && !budget.request_room(self.peer_requests()) {
                // The node's chunk requests are taken (by this blob and its others): what a
                // peer holds waits; only the registry's chunks go on.
                continue;
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
                    self.fetch_peer(id, i, now, false, budget, &mut out);
                }
                continue;
            }
            if seeders > 0 {
                if let Some(id) = self.pick(i, now, rng, None, Pick::Seeders, budget) {
                    self.fetch_peer(id, i, now, false, budget, &mut out);
                }
                continue;
            }
            for_registry.push(i);
        }
        self.fetch_registry(for_registry, now, &mut out);
        self.starved = self.reqs.len() < self.config.in_flight
            && budget.request_room(self.peer_requests())
            && self.held.count() * STARVED_FROM >= self.n;
        out
    }

    /// Whether the last [`Planner::plan`] left request room unused once the download held
    /// [`STARVED_FROM`] of the blob: it could ask for more chunks than it has in flight, and
    /// so could the node ([`NodeBudget`]), but it knew no free holder of a chunk it lacks
    /// (they were busy, or the chunks are with nodes it has not heard of). A paced trackers'
    /// client reuses its last peer list then only while it is younger than half the pacing
    /// ([`crate::tracker::Tracker::fresh_peers`]): the holders such a download waits for may
    /// have announced after that list was made. Simulated, 5,000 nodes joining over 30 s:
    /// the first to join waited on lists reused for the pacing's 2.5 s (docs/simulator.md,
    /// "A starved download's fresh list").
    pub fn starved(&self) -> bool {
        self.starved
    }

    fn reissue_overdue(
        &mut self,
        now: Instant,
        rng: &mut fastrand::Rng,
        budget: &mut dyn NodeBudget,
        out: &mut Vec<Action>,
    ) {
        let limit = self.overdue_after();
        let median = self.median_chunk_time();
        // A request to a slow peer is due elsewhere once it took a fast peer's chunk time.
        let slow_limit = median.map_or(limit, |m| m.min(limit));
        let mut overdue: Vec<(Duration, u32, PeerIdx, bool)> = self
            .reqs
            .values()
            .filter(|r| r.chunks.len() == 1 && self.chunk_reqs[r.chunks.start as usize].len() == 1)
            .filter_map(|r| {
                let p = r.peer?;
                let elapsed = now.saturating_duration_since(r.started);
                if r.coming_within(elapsed, median) {
                    // Its bytes are arriving and the rest is due sooner than a new request's.
                    return None;
                }
                let slow = self.is_slow(&self.peers[p as usize]);
                if elapsed > limit {
                    Some((elapsed, r.chunks.start, p, false))
                } else if slow && elapsed > slow_limit {
                    Some((elapsed, r.chunks.start, p, true))
                } else {
                    None
                }
            })
            .collect();
        overdue.sort_unstable_by_key(|(_, i, _, _)| *i);
        for (elapsed, i, slow, only_fast) in overdue {
            if only_fast {
                // Only to a fast node with a free slot; else it stays with the slow one
                // until the ordinary limit.
                if let Some(p) = self.pick(i, now, rng, Some(slow), Pick::Nodes, budget) {
                    if !self.is_slow(&self.peers[p as usize]) {
                        self.fetch_peer(p, i, now, true, budget, out);
                    }
                }
                continue;
            }
            let other = self
                .pick(i, now, rng, Some(slow), Pick::Nodes, budget)
                .or_else(|| {
                    (elapsed > limit * SEEDER_OVERDUE_FACTOR)
                        .then(|| self.pick(i, now, rng, Some(slow), Pick::Seeders, budget))
                        .flatten()
                });
            if let Some(id) = other {
                self.fetch_peer(id, i, now, true, budget, out);
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
        self.holders
            .nodes
            .iter(i)
            .all(|p| self.is_slow(&self.peers[p as usize]))
    }

    /// Whether a node not measured slow is fetching chunk `i` (without holding it yet).
    fn fast_fetcher(&self, i: u32) -> bool {
        self.holders
            .fetchers
            .iter(i)
            .any(|p| !self.is_slow(&self.peers[p as usize]))
    }

    /// The best usable holder of chunk `i` of kind `which`, other than `not` (see the module
    /// documentation); a seeder's slot is taken from `budget`.
    fn pick(
        &self,
        i: u32,
        now: Instant,
        rng: &mut fastrand::Rng,
        not: Option<PeerIdx>,
        which: Pick,
        budget: &mut dyn NodeBudget,
    ) -> Option<PeerIdx> {
        let optimistic = if self.fastest > 0.0 {
            self.fastest * 1.5
        } else {
            DEFAULT_SPEED
        };
        let holders = match which {
            Pick::Nodes => &self.holders.nodes,
            Pick::Seeders => &self.holders.seeders,
        };
        let mut best: Option<(f64, PeerIdx)> = None;
        for idx in holders.iter(i) {
            let p = &self.peers[idx as usize];
            if Some(idx) == not || p.busy_until.is_some_and(|t| t > now) {
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
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                best = Some((score, idx));
            }
        }
        let (_, idx) = best?;
        let peer = &self.peers[idx as usize];
        if peer.seeder && !budget.take_seeder(peer.addr) {
            return None;
        }
        Some(idx)
    }

    fn fetch_peer(
        &mut self,
        p: PeerIdx,
        i: u32,
        now: Instant,
        overdue: bool,
        budget: &mut dyn NodeBudget,
        out: &mut Vec<Action>,
    ) {
        budget.count_request();
        let peer = &mut self.peers[p as usize];
        peer.in_flight += 1;
        let (id, addr, seeder) = (peer.id.to_string(), peer.addr, peer.seeder);
        let req = self.track(Some(p), i..i + 1, now);
        self.peers[p as usize].reqs.push(req);
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
        let req = self.track(None, chunks.clone(), now);
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

    fn track(&mut self, peer: Option<PeerIdx>, chunks: Range<u32>, now: Instant) -> ReqId {
        self.next_req += 1;
        let id = self.next_req;
        for i in chunks.clone() {
            self.chunk_reqs[i as usize].push(id);
        }
        self.reqs.insert(
            id,
            Req {
                peer,
                chunks,
                started: now,
                last_chunk: now,
                got: 0,
                len: 0,
            },
        );
        id
    }

    /// Whether some peer not dropped holds some missing chunk (the download can go on).
    fn missing_has_holder(&self) -> bool {
        (0..self.n).any(|i| {
            !self.held.contains(i)
                && self.holders.nodes.count(i) + self.holders.seeders.count(i) > 0
        })
    }
}

/// Which holders [`Planner::pick`] considers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pick {
    Nodes,
    Seeders,
}
