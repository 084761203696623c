//! The discrete-event loop: every node runs shoald's executor around the real planner (one
//! per blob, as `p2p/src/swarm/scheduler.rs`), its announcer (`Swarm::run_announcer`) and its
//! chunk server (upload slots, chunks it holds); the registry side runs the real tracker and
//! the seeder's super-seeding rule; chunks move as flows over [`crate::net::Net`].
//!
//! What the executor does, and so what this does:
//! - A download asks the tracker for peers at once and plans nothing before the first list;
//!   then it plans after every event (a chunk, a request's end, a peer list) and every
//!   100 ms tick, and asks for peers again every `peer_refresh` (one request at a time).
//! - After a plan the chunks in flight are published; new ones wake the announcer, as does
//!   every verified chunk and every finished download.
//! - The announcer announces, sleeps 200 ms, then waits for a wake-up or the rest of the
//!   announce interval; a download's first chunks in flight wake it within the 200 ms too.
//! - A request reaches its source after one round trip (request out, first byte back); a
//!   source with all upload slots taken answers busy, one without the chunk "not held", the
//!   seeder refuses a chunk it sent less than its deferral ago; otherwise the chunk flows.
//! - The tracker hears an announce, and answers a peer list, one latency after it is sent.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use shoal_p2p::swarm::planner::{Failure, NodeBudget, PeerRefresh, Planner, ReqId};
use shoal_p2p::tracker::proto::{ChunkSet, PeerEntry, UploadStats};

use crate::adapter::{self, BlobState, SeederPolicy, TrackerSim};
use crate::net::{FlowId, Net};
use crate::scenario::Scenario;
use crate::SimError;

mod announcer;
mod have;
mod requests;
mod sample;

pub use sample::Sample;

/// The executor's scheduling tick.
const TICK: f64 = 0.1;
/// The announcer's pause after each announce.
const ANNOUNCE_PAUSE: f64 = 0.2;

/// What a simulation gives.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Each node's pull time (s, from its start, with the pull overhead), `None` when it died
    /// or did not finish.
    pub pulls: Vec<Option<f64>>,
    /// Nodes that died.
    pub died: usize,
    /// Downloads that failed (the planner gave up).
    pub failed: usize,
    /// Bytes the registry side sent: the seeder's and the registry's (ranges).
    pub seeder_bytes: f64,
    pub range_bytes: f64,
    /// Bytes nodes sent each other.
    pub peer_bytes: f64,
    /// When the registry side sent its last byte (s).
    pub registry_last: f64,
    /// Requests that ended without their chunk, by kind.
    pub busy: u64,
    pub not_held: u64,
    pub transport: u64,
    /// Overdue chunks asked again elsewhere.
    pub overdue: u64,
    /// Requests the seeder answered busy, and requests that waited for one of its slots
    /// (`RegistrySide::seeder_queue`).
    pub seeder_busy: u64,
    pub seeder_waited: u64,
    /// Chunks the seeder sent again within their deferral because the tracker knew no live
    /// node holding them (`Tracker::lost`).
    pub seeder_lost: u64,
    /// The most chunk requests to peers and seeders one node had in flight at once, all its
    /// blobs together (shoald's node-wide `chunks_in_flight`).
    pub max_peer_requests: usize,
    /// Have streams opened (asked), refused (busy or no such download), and lines
    /// delivered (one per subscriber).
    pub have_opened: u64,
    pub have_refused: u64,
    pub have_lines: u64,
    /// Announces the tracker took, announce rounds skipped for its pacing, peer lists
    /// answered from the last one for its pacing.
    pub announces: u64,
    pub paced_announces: u64,
    pub reused_lists: u64,
    /// Peer lists the tracker made, and those of them asked within its pacing because the
    /// download was starved.
    pub lists: u64,
    pub fresh_lists: u64,
    /// The longest a node's pull waited for its first announce naming a blob (s, from the
    /// pull's start to the announce's sending).
    pub first_announce_wait: f64,
    /// The swarm's state every `Scenario::sample_every`.
    pub samples: Vec<Sample>,
    /// Events processed.
    pub events: u64,
    /// Simulated time at the end (s).
    pub end: f64,
}

impl Outcome {
    /// Bytes that left the registry side.
    pub fn registry_bytes(&self) -> f64 {
        self.seeder_bytes + self.range_bytes
    }

    /// The pull times of the nodes that finished, ascending.
    pub fn sorted_times(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self.pulls.iter().flatten().copied().collect();
        t.sort_by(f64::total_cmp);
        t
    }
}

/// The `p`th percentile (nearest rank) of ascending `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug)]
enum Event {
    Start(usize),
    Tick(usize),
    /// The announcer's wake-up (generation: a stale one is ignored).
    AnnounceWake(usize, u64),
    /// An announce reaches the tracker.
    Announced(usize, Box<Announced>),
    /// A node asks another for its have stream of a blob: (asking, blob, asked).
    HaveAsk(usize, usize, usize),
    /// A have-stream line reaches its subscribers.
    HaveLine(Box<have::Line>),
    /// A have stream ends without `done`: (subscriber, blob, server).
    HaveEnd(usize, usize, usize),
    /// A node's coalesced have line of a blob goes out.
    HaveFlush(usize, usize),
    /// The swarm's state is sampled.
    Sample,
    /// A peer-list request reaches the tracker.
    PeersAsked(usize, usize),
    /// A peer list reaches the node.
    Peers(usize, usize, Vec<PeerEntry>),
    /// A request reaches its source.
    Arrive(usize, usize, ReqId),
    Die(usize),
}

#[derive(Debug)]
struct Announced {
    /// When the node sent it (s).
    sent: f64,
    upload: UploadStats,
    blobs: Vec<(usize, ChunkSet, Option<ChunkSet>)>,
}

/// A node's downloads' states (blob, held, fetching) as the adapter takes them.
fn blob_states(blobs: &[(usize, ChunkSet, Option<ChunkSet>)]) -> Vec<BlobState<'_>> {
    blobs
        .iter()
        .map(|(blob, have, fetching)| BlobState {
            blob: *blob,
            have,
            fetching: fetching.as_ref(),
        })
        .collect()
}

struct Queued {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Src {
    Node(usize),
    Seeder,
    Registry,
}

struct Task {
    src: Src,
    chunks: Range<u32>,
    /// The chunk flowing now, if any.
    flow: Option<FlowId>,
    /// A seeder request the seeder took (its send goes on until the flow ends).
    seeded: bool,
}

/// A flow's purpose.
#[derive(Clone, Copy)]
struct Tag {
    node: usize,
    blob: usize,
    req: ReqId,
    chunk: u32,
}

#[derive(Default)]
struct Download {
    planner: Option<Planner>,
    /// Chunks held (all of them once done).
    have: Option<ChunkSet>,
    /// Chunks in flight, as last published.
    fetching: Option<ChunkSet>,
    done: bool,
    listed: bool,
    refreshing: bool,
    last_refresh: f64,
    /// The interval between peer lists (shoald's rule; set with the planner).
    refresh: Option<PeerRefresh>,
    tasks: HashMap<ReqId, Task>,
    /// Its have-stream subscriptions, and its own stream's subscribers.
    subs: have::Subs,
    served: have::Served,
}

struct NodeRt {
    alive: bool,
    pulling: bool,
    finished: bool,
    downloads: Vec<Download>,
    rng: fastrand::Rng,
    speeds: HashMap<SocketAddr, f64>,
    seeder_slots: usize,
    /// Chunk requests to peers and seeders in flight, all blobs ([`Budget`]).
    peer_requests: usize,
    /// Have streams it serves (all blobs).
    served_streams: usize,
    upload_peak: f64,
    /// Woken while the announcer paused.
    notified: bool,
    /// The announcer waits for a wake-up (not pausing).
    waiting: bool,
    announce_gen: u64,
    /// An announce naming a blob went out since the pull started.
    announced_pull: bool,
}

/// The node's budget as shoald's executor keeps it (`Swarm`): its seeder slots and its chunk
/// requests to peers (seeders included), shared by the blobs it downloads.
struct Budget<'a> {
    used: &'a mut usize,
    max: usize,
    requests: &'a mut usize,
    limit: usize,
}

impl NodeBudget for Budget<'_> {
    fn take_seeder(&mut self, _addr: SocketAddr) -> bool {
        if *self.used < self.max {
            *self.used += 1;
            true
        } else {
            false
        }
    }

    fn request_room(&self, own: usize) -> bool {
        shoal_p2p::swarm::request_room(self.limit, *self.requests, own)
    }

    fn count_request(&mut self) {
        *self.requests += 1;
    }
}

/// Runs `scenario` to its end (every node finished, died or failed) or its horizon.
pub fn run(scenario: &Scenario) -> Result<Outcome, SimError> {
    Sim::new(scenario)?.run()
}

struct Sim<'a> {
    sc: &'a Scenario,
    base: Instant,
    now: f64,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    net: Net,
    reg: usize,
    tags: Vec<Option<Tag>>,
    nodes: Vec<NodeRt>,
    chunks: Vec<u32>,
    tracker: TrackerSim,
    seeder: SeederPolicy,
    seeder_uploads: usize,
    /// Requests waiting for a seeder slot: (node, blob, request), oldest first.
    seeder_waiting: VecDeque<(usize, usize, ReqId)>,
    seeder_peak: f64,
    open: usize,
    out: Outcome,
}

impl<'a> Sim<'a> {
    fn new(sc: &'a Scenario) -> Result<Self, SimError> {
        sc.validate()?;
        let n = sc.nodes.len();
        let mut up: Vec<f64> = sc.nodes.iter().map(|s| s.up).collect();
        let mut down: Vec<f64> = sc.nodes.iter().map(|s| s.down).collect();
        up.push(sc.registry.up);
        down.push(f64::MAX);
        let chunks: Vec<u32> = sc.blobs.iter().map(|&b| sc.chunks_of(b)).collect();
        let mut seeds = fastrand::Rng::with_seed(sc.seed);
        let nodes = (0..n)
            .map(|_| NodeRt {
                alive: true,
                pulling: false,
                finished: false,
                downloads: (0..chunks.len()).map(|_| Download::default()).collect(),
                rng: fastrand::Rng::with_seed(seeds.u64(..)),
                speeds: HashMap::new(),
                seeder_slots: 0,
                peer_requests: 0,
                served_streams: 0,
                upload_peak: 0.0,
                notified: false,
                waiting: true,
                announce_gen: 0,
                announced_pull: false,
            })
            .collect();
        let mut sim = Self {
            sc,
            base: Instant::now(),
            now: 0.0,
            queue: BinaryHeap::new(),
            seq: 0,
            net: Net::new(up, down)
                .with_sharing(sc.sharing)
                .with_oldest_uploader(n),
            reg: n,
            tags: Vec::new(),
            nodes,
            tracker: TrackerSim::new(&sc.registry, chunks.clone(), n, seeds.u64(..)),
            seeder: SeederPolicy::new(sc.registry.seeder_defer, chunks.len()),
            chunks,
            seeder_uploads: 0,
            seeder_waiting: VecDeque::new(),
            seeder_peak: 0.0,
            open: n,
            out: Outcome {
                pulls: vec![None; n],
                ..Outcome::default()
            },
        };
        if let Some(every) = sc.sample_every {
            sim.at(every, Event::Sample);
        }
        let interval = sc.settings.announce_interval.as_secs_f64();
        for (i, spec) in sc.nodes.iter().enumerate() {
            sim.at(sc.warmup + spec.start, Event::Start(i));
            // The announcer has run since shoald started: some phase of its interval.
            let phase = sim.nodes[i].rng.f64() * interval;
            sim.at(phase, Event::AnnounceWake(i, 0));
            if let Some(t) = spec.dies {
                sim.at(sc.warmup + t, Event::Die(i));
            }
        }
        Ok(sim)
    }

    fn instant(&self, t: f64) -> Instant {
        self.base + Duration::from_secs_f64(t.max(0.0))
    }

    fn at(&mut self, t: f64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at: (t.max(self.now) * 1e9).round() as u64,
            seq: self.seq,
            event,
        }));
    }

    fn run(mut self) -> Result<Outcome, SimError> {
        while self.open > 0 {
            let next_event = self.queue.peek().map(|Reverse(q)| q.at as f64 / 1e9);
            let next_flow = self.net.next_done();
            match (next_event, next_flow) {
                (None, None) => break,
                (e, Some((t, flow))) if e.is_none_or(|e| t < e) => {
                    if t > self.sc.warmup + self.sc.horizon {
                        break;
                    }
                    self.now = t;
                    self.flow_done(flow)?;
                }
                _ => {
                    let Some(Reverse(q)) = self.queue.pop() else {
                        break;
                    };
                    let t = q.at as f64 / 1e9;
                    if t > self.sc.warmup + self.sc.horizon {
                        break;
                    }
                    self.now = t;
                    self.handle(q.event)?;
                }
            }
            self.out.events += 1;
        }
        self.out.end = self.now;
        // Counted from the pulls' start, as the pull times are.
        self.out.registry_last = (self.out.registry_last - self.sc.warmup).max(0.0);
        self.out.announces = self.tracker.announces;
        self.out.paced_announces = self.tracker.paced_announces;
        self.out.reused_lists = self.tracker.reused_lists;
        self.out.lists = self.tracker.lists;
        self.out.fresh_lists = self.tracker.fresh_lists;
        Ok(self.out)
    }

    fn handle(&mut self, event: Event) -> Result<(), SimError> {
        match event {
            Event::Start(i) => self.start(i),
            Event::Tick(i) => self.tick(i)?,
            Event::AnnounceWake(i, generation) => self.announce_wake(i, generation),
            Event::Announced(i, a) => {
                let blobs = blob_states(&a.blobs);
                let now = self.instant(self.now);
                self.tracker.announce(i, a.upload, &blobs, a.sent, now)?;
            }
            Event::PeersAsked(i, blob) => {
                let stats = self.seeder_stats();
                let now = self.instant(self.now);
                let asked = self.now - self.sc.latency;
                let list = self.tracker.peers(blob, i, stats, asked, now);
                self.at(self.now + self.sc.latency, Event::Peers(i, blob, list));
            }
            Event::HaveAsk(i, blob, j) => self.have_ask(i, blob, j),
            Event::HaveLine(line) => self.have_line(*line)?,
            Event::HaveEnd(i, blob, j) => self.have_end(i, blob, j),
            Event::HaveFlush(j, blob) => self.have_flush(j, blob),
            Event::Sample => self.sample(),
            Event::Peers(i, blob, list) => {
                if !self.nodes[i].alive {
                    return Ok(());
                }
                let chunks = self.chunks[blob];
                let node = &mut self.nodes[i];
                let d = &mut node.downloads[blob];
                d.refreshing = false;
                let Some(planner) = d.planner.as_mut() else {
                    return Ok(());
                };
                let subs = &d.subs;
                let infos = adapter::peer_infos(list, i, chunks, &node.speeds, |j| subs.ignores(j));
                if self.sc.settings.have_peers > 0 {
                    for info in infos.iter().filter(|p| !p.seeder) {
                        if let Some(j) = adapter::endpoint_of(&info.id) {
                            d.subs.listed(j);
                        }
                    }
                }
                let unstreamed = infos.iter().any(|p| !p.seeder);
                let added = planner.peers(infos);
                if let Some(r) = d.refresh.as_mut() {
                    r.listed(unstreamed || added > 0);
                }
                d.listed = true;
                self.subscribe_more(i, blob);
                self.plan(i, blob)?;
            }
            Event::Arrive(i, blob, req) => self.arrive(i, blob, req)?,
            Event::Die(i) => self.die(i)?,
        }
        Ok(())
    }

    /// Node `i`'s pull starts: its downloads, up to the layer concurrency.
    fn start(&mut self, i: usize) {
        if !self.nodes[i].alive {
            return;
        }
        self.nodes[i].pulling = true;
        let first = self
            .sc
            .settings
            .layer_concurrency
            .max(1)
            .min(self.chunks.len());
        for blob in 0..first {
            self.start_download(i, blob);
        }
        self.at(self.now + TICK, Event::Tick(i));
    }

    fn start_download(&mut self, i: usize, blob: usize) {
        let config = adapter::planner_config(&self.sc.settings, self.sc.chunk_size);
        let now = self.instant(self.now);
        let n = self.chunks[blob];
        let node = &mut self.nodes[i];
        let planner = Planner::new(config, n, now, &mut node.rng);
        let d = &mut node.downloads[blob];
        d.planner = Some(planner);
        d.refresh = Some(PeerRefresh::new(self.sc.settings.peer_refresh));
        d.have = Some(ChunkSet::empty(n));
        d.fetching = Some(ChunkSet::empty(n));
        self.refresh(i, blob);
    }

    /// Asks the tracker for the peers of `blob` (its last list, within its pacing).
    fn refresh(&mut self, i: usize, blob: usize) {
        let now = self.instant(self.now);
        let d = &mut self.nodes[i].downloads[blob];
        d.refreshing = true;
        d.last_refresh = self.now;
        // shoald's scheduler asks `fresh_peers` for a starved download, at most once per
        // `FRESH_LIST_EVERY`; its client makes one once the kept list is half the pacing old.
        let starved = d.planner.as_ref().is_some_and(|p| p.starved());
        let fresh = d.refresh.as_mut().is_some_and(|r| r.fresh(starved, now));
        match self.tracker.recent_list(i, blob, self.now, fresh) {
            Some(list) => self.at(self.now, Event::Peers(i, blob, list)),
            None => self.at(self.now + self.sc.latency, Event::PeersAsked(i, blob)),
        }
    }

    fn tick(&mut self, i: usize) -> Result<(), SimError> {
        if !self.nodes[i].alive || self.nodes[i].finished {
            return Ok(());
        }
        let base = self.sc.settings.peer_refresh;
        let now = self.instant(self.now);
        for blob in 0..self.chunks.len() {
            let d = &self.nodes[i].downloads[blob];
            let refresh = d.refresh.as_ref().map_or(base, |r| r.every()).as_secs_f64();
            let Some(planner) = d.planner.as_ref() else {
                continue;
            };
            if planner.check(now).is_err() {
                self.fail(i);
                return Ok(());
            }
            if !d.refreshing && self.now - d.last_refresh >= refresh - 1e-9 {
                self.refresh(i, blob);
            }
            self.plan(i, blob)?;
        }
        self.at(self.now + TICK, Event::Tick(i));
        Ok(())
    }

    /// Runs the planner of node `i`'s download of `blob` (once it has a peer list) and
    /// carries out what it asks.
    fn plan(&mut self, i: usize, blob: usize) -> Result<(), SimError> {
        let now = self.instant(self.now);
        let max = self.sc.settings.per_seeder_in_flight;
        let node = &mut self.nodes[i];
        let d = &mut node.downloads[blob];
        if !d.listed {
            return Ok(());
        }
        let Some(planner) = d.planner.as_mut() else {
            return Ok(());
        };
        // The bytes each chunk flowing from a peer has moved (shoald's executor reports
        // what each peer request has received).
        for (&req, task) in &d.tasks {
            if let (Some(flow), false) = (task.flow, matches!(task.src, Src::Registry)) {
                let (got, len) = self.net.progress(self.now, flow);
                planner.progress(req, got, len);
            }
        }
        let mut budget = Budget {
            used: &mut node.seeder_slots,
            max,
            requests: &mut node.peer_requests,
            limit: self.sc.settings.in_flight,
        };
        let actions = planner.plan(now, &mut node.rng, &mut budget);
        self.out.max_peer_requests = self.out.max_peer_requests.max(node.peer_requests);
        let fetching = planner.fetching();
        self.execute(i, blob, actions)?;
        let d = &mut self.nodes[i].downloads[blob];
        let grew = match &d.fetching {
            Some(old) => fetching.iter().any(|c| !old.contains(c)),
            None => fetching.count() > 0,
        };
        // The download's first chunks in flight (the announce names the blob from now on):
        // the announcer goes at once, within its pause too, as shoald's does.
        let first = d.fetching.as_ref().is_none_or(|f| f.count() == 0)
            && d.have.as_ref().is_none_or(|h| h.count() == 0);
        let changed = d.fetching.as_ref() != Some(&fetching);
        d.fetching = Some(fetching);
        if grew && first && !self.nodes[i].waiting {
            self.announce(i);
        } else if grew {
            self.notify(i);
        }
        if changed {
            self.have_changed(i, blob);
        }
        Ok(())
    }

    /// When node `i`'s download of `blob` holds every chunk: it ends (requests still in
    /// flight are cancelled, the blob is seeded), the next layer starts, and the pull ends
    /// with the last.
    fn check_done(&mut self, i: usize, blob: usize) {
        let d = &mut self.nodes[i].downloads[blob];
        if d.done || !d.planner.as_ref().is_some_and(|p| p.is_done()) {
            return;
        }
        d.done = true;
        self.stop_download(i, blob);
        self.have_changed(i, blob);
        self.notify(i);
        let next = self.nodes[i]
            .downloads
            .iter()
            .position(|d| d.planner.is_none() && !d.done);
        if let Some(next) = next {
            self.start_download(i, next);
        }
        if self.nodes[i].downloads.iter().all(|d| d.done) {
            self.nodes[i].finished = true;
            let start = self.sc.warmup + self.sc.nodes[i].start;
            self.out.pulls[i] = Some(self.now - start + self.sc.pull_overhead);
            self.open -= 1;
        }
    }

    /// Node `i`'s pull failed (a download gave up).
    fn fail(&mut self, i: usize) {
        if self.nodes[i].finished {
            return;
        }
        self.out.failed += 1;
        self.nodes[i].finished = true;
        self.open -= 1;
        for blob in 0..self.chunks.len() {
            self.stop_download(i, blob);
            self.have_abort(i, blob);
        }
    }

    /// Node `i`'s download of `blob` stops (done or failed): its planner goes, its requests
    /// in flight are released and its have-stream subscriptions closed.
    fn stop_download(&mut self, i: usize, blob: usize) {
        let d = &mut self.nodes[i].downloads[blob];
        d.planner = None;
        d.fetching = None;
        let tasks: Vec<Task> = d.tasks.drain().map(|(_, t)| t).collect();
        for task in tasks {
            self.release(i, blob, &task);
        }
        self.have_close_all(i, blob);
    }

    /// Node `i` dies: its transfers break (those to other nodes end with a transport
    /// failure there), it stops announcing (the tracker forgets it after the TTL) and
    /// answers nothing.
    fn die(&mut self, i: usize) -> Result<(), SimError> {
        if !self.nodes[i].alive {
            return Ok(());
        }
        self.nodes[i].alive = false;
        self.out.died += 1;
        if !self.nodes[i].finished {
            // A pull cut short (one finished before stays counted).
            self.nodes[i].finished = true;
            self.open -= 1;
        }
        for blob in 0..self.chunks.len() {
            let d = &mut self.nodes[i].downloads[blob];
            d.planner = None;
            let tasks: Vec<Task> = d.tasks.drain().map(|(_, t)| t).collect();
            for task in tasks {
                self.release(i, blob, &task);
            }
            self.have_close_all(i, blob);
            self.have_abort(i, blob);
        }
        // Its uploads: the receivers see the connection break.
        for flow in self.net.flows_at(i) {
            let Some(tag) = self.tags.get(flow).copied().flatten() else {
                continue;
            };
            if self.net.ends(flow).0 == i {
                self.out.transport += 1;
                self.end_request(tag.node, tag.blob, tag.req, Some(Failure::Transport))?;
            }
        }
        Ok(())
    }
}
