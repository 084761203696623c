//! The one place where the simulator meets shoal's own policy code: the tracker
//! ([`shoal_registry_ext::tracker::Tracker`]), the planner ([`shoal_p2p::swarm::planner`])
//! and the seeder's super-seeding rule ([`shoal_registry_ext::super_seed::RecentSends`]).
//! Everything here mirrors what shoald's executor (`p2p/src/swarm/scheduler.rs`) and the
//! registry extension's HTTP handlers (`registry-ext/src/server.rs`) do around them, so a
//! change of those APIs is absorbed here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_p2p::swarm::planner::{PeerInfo, PlannerConfig};
use shoal_p2p::tracker::proto::{
    reusable_list, reuse_kept_list, Announce, BlobHave, ChunkSet, DeltaAnnounce, PeerEntry,
    UploadStats,
};
use shoal_p2p::tracker::SEEDER_ID_PREFIX;
use shoal_p2p::Digest;
use shoal_registry_ext::config::TrackerConfig;
use shoal_registry_ext::super_seed::RecentSends;
use shoal_registry_ext::tracker::Tracker;

use crate::scenario::{NodeSettings, RegistrySide};
use crate::SimError;

/// Port of every node's chunk server.
const PEER_PORT: u16 = 7070;
/// The registry side's address.
pub const REGISTRY_ADDR: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 255, 255, 254)),
    7080,
);

/// Node `i`'s peer id.
pub fn node_id(i: usize) -> String {
    format!("node-{i}")
}

/// Node `i`'s chunk server address (a label: nothing is sent there).
pub fn node_addr(i: usize) -> SocketAddr {
    let i = i as u32 + 1;
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], PEER_PORT))
}

/// The seeder's peer id, as the registry extension lists itself.
pub fn seeder_id() -> String {
    format!("{SEEDER_ID_PREFIX}{REGISTRY_ADDR}")
}

/// Who a peer id names: `Some(i)` for node `i`, `None` for the seeder.
pub fn endpoint_of(id: &str) -> Option<usize> {
    id.strip_prefix("node-").and_then(|i| i.parse().ok())
}

/// The blobs an announce names: those holding or fetching a chunk.
pub(crate) fn announced<'a, 'b>(
    blobs: &'a [BlobState<'b>],
) -> impl Iterator<Item = &'a BlobState<'b>> {
    blobs
        .iter()
        .filter(|b| b.have.count() > 0 || b.fetching.is_some_and(|f| f.count() > 0))
}

/// Blob `k`'s digest.
pub fn blob_digest(k: usize) -> Digest {
    Digest::of(format!("shoal-sim blob {k}").as_bytes())
}

/// The planner's limits from shoald's settings, as the executor makes them.
pub fn planner_config(s: &NodeSettings, chunk_size: u64) -> PlannerConfig {
    PlannerConfig {
        in_flight: s.in_flight,
        per_peer_in_flight: s.per_peer_in_flight,
        registry_in_flight: s.registry_in_flight,
        max_registry_chunks: (s.max_registry_range / chunk_size.max(1)).clamp(1, u32::MAX as u64)
            as u32,
        near_window: s.near_window as u32,
    }
}

/// What one node announces of one blob.
pub struct BlobState<'a> {
    pub blob: usize,
    pub have: &'a ChunkSet,
    pub fetching: Option<&'a ChunkSet>,
}

/// What a node's tracker client (`p2p/src/tracker/http.rs`, `HttpTrackers`) keeps of the
/// tracker: the delta announces' sequence and the state the tracker took last, and the
/// tracker's pacing (times in simulated seconds).
#[derive(Default)]
struct Client {
    /// The last `seq` sent.
    seq: u64,
    /// The last announce the tracker took, with its `seq`.
    acked: Option<(u64, Announce)>,
    /// No announce before then (the tracker's pacing).
    next_announce: f64,
    /// A peer list of a blob is used again this long (s; the tracker's pacing).
    peer_list_interval: f64,
    /// The last peer list of each blob, with when it was asked.
    lists: HashMap<usize, (f64, Vec<PeerEntry>)>,
}

/// The tracker in memory, behind the calls shoald makes to it: delta announces
/// ([`Tracker::announce_delta`]) numbered and based as shoald's client numbers them, the
/// tracker's pacing followed (a round sooner than its announce interval skips it, a peer
/// list asked again sooner than its peer-list interval is the last one).
pub struct TrackerSim {
    tracker: Tracker,
    rng: fastrand::Rng,
    digests: Vec<Digest>,
    chunks: Vec<u32>,
    clients: Vec<Client>,
    /// Delta announces taken (whole states included) and whole states the tracker asked for.
    pub announces: u64,
    pub full_states_asked: u64,
    /// Announce rounds skipped for the pacing, and peer lists answered from the last one.
    pub paced_announces: u64,
    pub reused_lists: u64,
    /// Peer lists the tracker made, and those of them asked within the pacing because the
    /// download was starved ([`shoal_p2p::swarm::planner::Planner::starved`]).
    pub lists: u64,
    pub fresh_lists: u64,
}

impl TrackerSim {
    /// A tracker with `registry`'s settings for blobs of `chunks` chunks each, and the
    /// clients of `nodes` nodes.
    pub fn new(registry: &RegistrySide, chunks: Vec<u32>, nodes: usize, seed: u64) -> Self {
        let config = TrackerConfig {
            announce_interval_ms: registry.announce_interval_ms,
            peer_ttl_ms: registry.peer_ttl_ms,
            max_peers: registry.max_peers,
        };
        Self {
            tracker: Tracker::new(&config),
            rng: fastrand::Rng::with_seed(seed),
            digests: (0..chunks.len()).map(blob_digest).collect(),
            chunks,
            clients: (0..nodes).map(|_| Client::default()).collect(),
            announces: 0,
            full_states_asked: 0,
            paced_announces: 0,
            reused_lists: 0,
            lists: 0,
            fresh_lists: 0,
        }
    }

    /// Whether chunk `chunk` of `blob`, sent whole by the seeder with its hold ending at
    /// `since`, is held by no live node at `now` ([`Tracker::lost`]).
    pub fn lost(&self, blob: usize, chunk: u32, since: Instant, now: Instant) -> bool {
        self.tracker.lost(&self.digests[blob], chunk, since, now)
    }

    /// Whether node `node`'s announce round at `now` (s), of its downloads' states `blobs`
    /// (those holding or fetching a chunk are named, as shoald names them), skips the
    /// tracker: it took an announce, its pacing has not passed (the changes go with the next
    /// round) and the round names no blob the tracker was not told of, as shoald's client
    /// decides ([`Announce::names_new_blob`]).
    pub fn paced(&mut self, node: usize, now: f64, blobs: &[BlobState<'_>]) -> bool {
        let c = &self.clients[node];
        let paced = match &c.acked {
            Some((_, taken)) => {
                now < c.next_announce
                    && !taken.lacks_any(announced(blobs).map(|b| &self.digests[b.blob]))
            }
            None => false,
        };
        if paced {
            self.paced_announces += 1;
        }
        paced
    }

    /// The tracker's pacing now: (announces, peer lists) at most every that many seconds.
    pub fn pacing(&self) -> (f64, f64) {
        let (a, p) = self.tracker.pacing();
        (a as f64 / 1e3, p as f64 / 1e3)
    }

    /// Node `node`'s announce round (its whole state, as `Swarm::announcement`), sent at
    /// `sent` (s) and heard at `now`: a delta against what the tracker took last, the whole
    /// state when the tracker asks for it.
    pub fn announce(
        &mut self,
        node: usize,
        upload: UploadStats,
        blobs: &[BlobState<'_>],
        sent: f64,
        now: Instant,
    ) -> Result<(), SimError> {
        let mut list: Vec<BlobHave> = announced(blobs)
            .map(|b| {
                let have = BlobHave::new(self.digests[b.blob].clone(), b.have);
                match b.fetching {
                    Some(f) => have.with_fetching(f),
                    None => have,
                }
            })
            .collect();
        list.sort_by(|a, b| a.digest.hex().cmp(b.digest.hex()));
        let announce = Announce {
            peer_id: node_id(node),
            addr: node_addr(node),
            upload,
            blobs: list,
        };
        let refused = |source| SimError::Tracker {
            node,
            source: Box::new(source),
        };
        let client = &mut self.clients[node];
        client.seq += 1;
        let delta = DeltaAnnounce::between(client.acked.as_ref(), &announce, client.seq);
        let mut seq = delta.seq;
        let mut reply = self.tracker.announce_delta(delta, now).map_err(refused)?;
        self.announces += 1;
        if reply.full_state_needed {
            self.full_states_asked += 1;
            let client = &mut self.clients[node];
            client.seq += 1;
            seq = client.seq;
            let full = DeltaAnnounce::full(&announce, seq);
            reply = self.tracker.announce_delta(full, now).map_err(refused)?;
            self.announces += 1;
        }
        if reply.full_state_needed {
            // The tracker refused a whole state: a bug of the adapter or the tracker.
            return Err(SimError::Scenario(format!(
                "the tracker asked node {node} for its whole state after taking it"
            )));
        }
        let client = &mut self.clients[node];
        client.acked = Some((seq, announce));
        // The pacing counts from when the round was sent, as shoald's client counts it.
        client.next_announce = sent + reply.min_interval_ms as f64 / 1e3;
        client.peer_list_interval = reply.peer_list_interval_ms as f64 / 1e3;
        let keep = client.peer_list_interval;
        client.lists.retain(|_, (at, _)| sent - *at < keep);
        Ok(())
    }

    /// Node `node`'s last peer list of `blob`, if the pacing says to use it again at `now`
    /// (s), for a starved download's `fresh` ask (shoald's `Tracker::fresh_peers`, made
    /// when `PeerRefresh::fresh` says) or not: `proto::reuse_kept_list`.
    pub fn recent_list(
        &mut self,
        node: usize,
        blob: usize,
        now: f64,
        fresh: bool,
    ) -> Option<Vec<PeerEntry>> {
        let c = &self.clients[node];
        let (at, list) = c.lists.get(&blob)?;
        // Truncated to whole nanoseconds, so that a refresh falling on the pacing's end up to
        // the clock's rounding compares as the seconds compare (`from_secs_f64` rounds up to
        // it and turns such a tie into a new list).
        let nanos = |s: f64| Duration::from_nanos((s.max(0.0) * 1e9) as u64);
        let (age, pacing) = (nanos(now - at), nanos(c.peer_list_interval));
        if reuse_kept_list(age, pacing, fresh) {
            self.reused_lists += 1;
            Some(list.clone())
        } else {
            if fresh && reuse_kept_list(age, pacing, false) {
                self.fresh_lists += 1;
            }
            None
        }
    }

    /// The peer list of blob `blob` for node `asking` at `now`, asked at `asked` (s), with
    /// the seeder (which holds every blob) competing as the registry extension lists it.
    pub fn peers(
        &mut self,
        blob: usize,
        asking: usize,
        seeder_upload: UploadStats,
        asked: f64,
        now: Instant,
    ) -> Vec<PeerEntry> {
        self.lists += 1;
        let chunks = self.chunks[blob];
        let seeder = PeerEntry {
            peer_id: seeder_id(),
            addr: REGISTRY_ADDR,
            chunks,
            have: ChunkSet::full(chunks).encode(),
            upload: seeder_upload,
            fetching: None,
        };
        let list = self.tracker.peers(
            &self.digests[blob],
            &node_id(asking),
            usize::MAX,
            Some(seeder),
            now,
            &mut self.rng,
        );
        let client = &mut self.clients[asking];
        // Short lists are not kept, as shoald's client does not keep them.
        if client.peer_list_interval > 0.0 && reusable_list(&list, &node_id(asking)) {
            client.lists.insert(blob, (asked, list.clone()));
        }
        list
    }
}

/// A peer list as the planner takes it, as the executor's `update_peers` makes it: without
/// the node itself and the peers `ignored` says (their have streams are open), entries of
/// another chunk count dropped, the seeder marked, the node's measured speeds attached.
pub fn peer_infos(
    list: Vec<PeerEntry>,
    me: usize,
    chunks: u32,
    speeds: &HashMap<SocketAddr, f64>,
    ignored: impl Fn(usize) -> bool,
) -> Vec<PeerInfo> {
    let me = node_id(me);
    let mut infos = Vec::with_capacity(list.len());
    for entry in list {
        // A peer whose have stream is open: its stream is newer than the tracker's entry.
        if entry.peer_id == me || endpoint_of(&entry.peer_id).is_some_and(&ignored) {
            continue;
        }
        let have = match entry.set() {
            Ok(set) if set.len() == chunks => set,
            _ => continue,
        };
        let fetching = entry
            .fetching_set()
            .ok()
            .filter(|f| f.len() == chunks)
            .unwrap_or_else(|| ChunkSet::empty(chunks));
        infos.push(PeerInfo {
            seeder: entry.peer_id.starts_with(SEEDER_ID_PREFIX),
            speed: speeds.get(&entry.addr).copied(),
            id: entry.peer_id,
            addr: entry.addr,
            have,
            fetching,
        });
    }
    infos
}

/// The seeder's super-seeding rule.
pub struct SeederPolicy {
    recent: RecentSends,
    digests: Vec<Digest>,
}

impl SeederPolicy {
    /// Refusing a chunk for `defer` after it was sent, for `blobs` blobs.
    pub fn new(defer: Duration, blobs: usize) -> Self {
        Self {
            recent: RecentSends::new(defer),
            digests: (0..blobs).map(blob_digest).collect(),
        }
    }

    /// Whether the seeder sends the chunk at byte `offset` of `blob` at `now`; if it does,
    /// the send is remembered (call [`SeederPolicy::ended`] when it ends). `lost` is the
    /// tracker's answer whether a chunk sent whole is held by no live node
    /// ([`TrackerSim::lost`]), as the registry extension asks it.
    pub fn serve(
        &mut self,
        blob: usize,
        offset: u64,
        now: Instant,
        lost: impl FnOnce(Instant) -> bool,
    ) -> bool {
        let digest = &self.digests[blob];
        if !self.recent.may_send(digest, offset, now, lost) {
            return false;
        }
        self.recent.sent(digest, offset, now);
        true
    }

    /// The seeder's send of the chunk at `offset` of `blob` ended at `now`: `whole` or cut
    /// short.
    pub fn ended(&mut self, blob: usize, offset: u64, now: Instant, whole: bool) {
        self.recent.ended(&self.digests[blob], offset, now, whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_map_back_to_endpoints() {
        assert_eq!(endpoint_of(&node_id(4321)), Some(4321));
        assert_eq!(endpoint_of(&seeder_id()), None);
        assert_ne!(node_addr(0), node_addr(256));
        assert_ne!(node_addr(1), REGISTRY_ADDR);
    }

    #[test]
    fn the_tracker_lists_what_a_node_announced_and_the_seeder() {
        let t0 = Instant::now();
        let mut t = TrackerSim::new(&RegistrySide::new(1e6), vec![4], 2, 7);
        let mut have = ChunkSet::empty(4);
        have.insert(2);
        t.announce(
            0,
            UploadStats::default(),
            &[BlobState {
                blob: 0,
                have: &have,
                fetching: None,
            }],
            0.0,
            t0,
        )
        .unwrap();
        let list = t.peers(0, 1, UploadStats::default(), 0.0, t0);
        let infos = peer_infos(list, 1, 4, &HashMap::new(), |_| false);
        assert_eq!(infos.len(), 2);
        let node = infos.iter().find(|p| !p.seeder).unwrap();
        assert_eq!(node.id, node_id(0));
        assert!(node.have.contains(2) && node.have.count() == 1);
        assert!(infos.iter().any(|p| p.seeder && p.have.is_full()));
        // The node itself is not in its own list.
        let list = t.peers(0, 0, UploadStats::default(), 0.0, t0);
        assert!(peer_infos(list, 0, 4, &HashMap::new(), |_| false)
            .iter()
            .all(|p| p.seeder));
        // A peer whose stream is open is left out of the tracker's list.
        let list = t.peers(0, 1, UploadStats::default(), 0.0, t0);
        assert!(peer_infos(list, 1, 4, &HashMap::new(), |j| j == 0)
            .iter()
            .all(|p| p.seeder));
    }

    #[test]
    fn announces_are_deltas_and_the_pacing_is_followed_past_a_thousand_peers() {
        let t0 = Instant::now();
        let n = 1001;
        let mut t = TrackerSim::new(&RegistrySide::new(1e6), vec![4, 4], n, 7);
        let mut have = ChunkSet::empty(4);
        have.insert(1);
        let state = [BlobState {
            blob: 0,
            have: &have,
            fetching: None,
        }];
        for node in 0..n {
            assert!(!t.paced(node, 0.0, &state), "nothing taken yet: not paced");
            t.announce(node, UploadStats::default(), &state, 0.0, t0)
                .unwrap();
        }
        assert_eq!(t.announces, n as u64);
        assert_eq!(t.full_states_asked, 0);
        // 1,001 peers: two steps of pacing, 400 ms between announces, 1 s between lists.
        assert_eq!(t.pacing(), (0.4, 1.0));
        let last = n - 1;
        assert!(t.paced(last, 0.3, &state));
        assert!(!t.paced(last, 0.4, &state));
        // A round naming a blob the tracker was not told of (a download that just started)
        // is not paced, as shoald's client does not pace it.
        let fetching = ChunkSet::full(4);
        let started = [
            BlobState {
                blob: 0,
                have: &have,
                fetching: None,
            },
            BlobState {
                blob: 1,
                have: &ChunkSet::empty(4),
                fetching: Some(&fetching),
            },
        ];
        assert!(!t.paced(last, 0.3, &started));
        // A delta on top of the last announce taken: the tracker takes it.
        have.insert(2);
        let state = [BlobState {
            blob: 0,
            have: &have,
            fetching: None,
        }];
        t.announce(
            last,
            UploadStats::default(),
            &state,
            0.4,
            t0 + Duration::from_millis(400),
        )
        .unwrap();
        assert_eq!(t.full_states_asked, 0);
        let list = t.peers(
            0,
            last,
            UploadStats::default(),
            0.5,
            t0 + Duration::from_millis(500),
        );
        // Within the peer-list pacing (its last announce's reply) the last list is used
        // again; past it, a new one.
        assert_eq!(t.recent_list(last, 0, 1.4, false), Some(list.clone()));
        assert_eq!(t.recent_list(last, 0, 1.5, false), None);
        // A starved download asks anew once the list is half the pacing old (shoald's
        // `fresh_peers`), and reuses it before.
        assert_eq!(t.recent_list(last, 0, 0.99, true), Some(list));
        assert_eq!(t.recent_list(last, 0, 1.0, true), None);
        assert_eq!((t.reused_lists, t.fresh_lists, t.lists), (2, 1, 1));
        // Node 0 announced when the tracker knew one peer: not paced until its next reply.
        t.peers(0, 0, UploadStats::default(), 0.5, t0);
        assert_eq!(t.recent_list(0, 0, 0.6, false), None);
    }

    /// No chunk is ever lost.
    fn never(_: Instant) -> bool {
        false
    }

    #[test]
    fn the_seeder_sends_again_a_chunk_whose_holders_the_tracker_lost() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut t = TrackerSim::new(&RegistrySide::new(1e6), vec![4], 1, 7);
        let mut s = SeederPolicy::new(Duration::from_secs(6), 1);
        // Chunks 0 and 1 sent whole by 0.5 s: held until 1.75 s, then the tracker is asked
        // (it answers from 2 s after that).
        for chunk in [0u32, 1] {
            assert!(s.serve(0, u64::from(chunk) << 22, t0, never));
            s.ended(0, u64::from(chunk) << 22, at(500), true);
        }
        // Chunk 1's receiver announced it at 3 s; chunk 0's never did.
        let mut have = ChunkSet::empty(4);
        have.insert(1);
        let state = [BlobState {
            blob: 0,
            have: &have,
            fetching: None,
        }];
        t.announce(0, UploadStats::default(), &state, 3.0, at(3_000))
            .unwrap();
        let now = at(3_749);
        assert!(!s.serve(0, 0, now, |since| t.lost(0, 0, since, now)));
        let now = at(3_750);
        assert!(!s.serve(0, 1 << 22, now, |since| t.lost(0, 1, since, now)));
        assert!(s.serve(0, 0, now, |since| t.lost(0, 0, since, now)));
    }

    #[test]
    fn the_seeder_refuses_a_chunk_it_just_sent_or_is_sending() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut s = SeederPolicy::new(Duration::from_secs(3), 1);
        assert!(s.serve(0, 0, t0, never));
        assert!(!s.serve(0, 0, at(1_000), never));
        assert!(s.serve(0, 1 << 20, t0, never));
        // Still being sent after its deferral: held.
        assert!(!s.serve(0, 0, at(3_000), never));
        // Cut short: served again.
        s.ended(0, 0, at(3_000), false);
        assert!(s.serve(0, 0, at(3_000), never));
        // Sent whole in 2 s: held 1 s plus half of that after.
        s.ended(0, 1 << 20, at(2_000), true);
        assert!(!s.serve(0, 1 << 20, at(3_999), never));
        assert!(s.serve(0, 1 << 20, at(4_000), never));
    }
}
