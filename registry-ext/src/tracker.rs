//! The tracker's state: which peers hold which chunks of which blobs, and how loaded they are.
//! Pure: no I/O, the clock is an argument and the randomness an [`fastrand::Rng`], so every
//! rule is unit-tested. The HTTP side is in [`crate::server`]; the protocol in
//! [`shoal_p2p::tracker::proto`].
//!
//! - A whole-state announce ([`Tracker::announce`], or [`Tracker::announce_delta`] without a
//!   base) replaces everything known about that peer (address, upload stats, blobs).
//! - A delta ([`Tracker::announce_delta`] with a base) is applied only on top of exactly the
//!   state its base names (the peer's last announce taken, by sequence number). Otherwise (the
//!   tracker restarted, a delta was lost, the peer expired, the peer's last announce was a
//!   whole-state one of the older route) nothing changes and the answer asks for the whole
//!   state. A malformed announce or delta is refused and changes nothing.
//! - A peer not heard from for `peer_ttl_ms` is dropped. State is soft: a restarted tracker
//!   knows every peer again after their next announce.
//! - A peer list holds the peers with at least one chunk of the blob (never the asking peer),
//!   in a weighted random order (Efraimidis–Spirakis: key `u^(1/w)`, largest first) where the
//!   weight is the peer's spare upload capacity divided by `1 + active uploads`, boosted for
//!   holding more of the blob. Fast, idle peers usually come first, but not always, so no
//!   peer (the seeder included) is everyone's first choice. When a blob has more holders than
//!   [`SAMPLE_PER_PEER`] times the list length, the order is drawn among that many holders
//!   picked uniformly at random, so a list costs the same with 50 holders or 5,000.
//! - The cover: a list's last [`COVER_PLACES`] places go, when needed, to holders of the
//!   chunks that at least a third of [`COVER_SAMPLE`] sampled holders have and neither the
//!   asker nor the list's other peers do, so that nodes joining late (whose lists the weight
//!   fills with other idle newcomers) know a holder of what the swarm holds widely and do not
//!   ask the seeder for it again.

mod select;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_p2p::tracker::proto::{
    Announce, AnnounceReply, ChunkSet, DeltaAnnounce, DeltaReply, PeerEntry, UploadStats,
};
use shoal_p2p::Digest;

use crate::config::TrackerConfig;
use crate::Error;
use select::Candidate;
use validate::{bad, validate_blobs, validate_peer, Announced};

/// Peer ids starting with this are the registry extension's seeders; peers may not use it.
pub use shoal_p2p::tracker::SEEDER_ID_PREFIX;
/// Longest accepted peer id.
pub const MAX_PEER_ID_LEN: usize = 253;
/// Most blobs one announce may list.
pub const MAX_BLOBS_PER_PEER: usize = 100_000;
/// Most chunks a blob may have (a 64 GiB blob in 64 KiB chunks).
pub const MAX_CHUNKS_PER_BLOB: u32 = 1 << 20;
/// A peer list is ordered among at most this many holders per entry asked for (picked
/// uniformly at random when there are more).
pub const SAMPLE_PER_PEER: usize = 4;

/// The last places of a peer list that may go to holders of chunks its other peers lack (the
/// cover: see [`Tracker::peers`]).
pub const COVER_PLACES: usize = 4;
/// The sampled holders the cover weighs and picks from, drawn uniformly.
pub const COVER_SAMPLE: usize = 32;
/// The cover names a holder of each chunk at least one in this many of the holders it weighs
/// have: chunks fewer hold are left to the askers' rarity order. (Simulated, 1,000 nodes
/// starting at once: covering every chunk made the pulls 1.3-2% slower, the lists naming
/// the nodes furthest ahead for the rarest chunks; a quarter of 32 holders, 1% slower at the
/// median; a third, the same figures as without the cover.)
pub const COVER_MIN_SHARE_OF: usize = 3;
/// Blobs of more chunks than this get no cover (its cost is a few bitmap passes per holder
/// weighed: 2 KiB each at this size).
pub const COVER_MAX_CHUNKS: u32 = 1 << 14;

/// Peers per step of pacing: up to this many peers, the tracker does not pace its nodes (they
/// announce at most every 200 ms and ask for a blob's peers every 500 ms on their own); with
/// more, `k = ceil(peers / PACING_STEP_PEERS)`, they announce at most every `k ×`
/// [`MIN_ANNOUNCE_MS`] and ask at most every `k ×` [`MIN_PEER_LIST_MS`], so the requests a
/// tracker receives stay about the same past it.
pub const PACING_STEP_PEERS: usize = 1000;
/// Shortest interval between a node's announces to one tracker while pacing (ms).
pub const MIN_ANNOUNCE_MS: u64 = 200;
/// Shortest interval between a node's peer lists of one blob from one tracker (ms).
pub const MIN_PEER_LIST_MS: u64 = 500;
/// Longest interval between peer lists the pacing asks for (ms).
pub const MAX_PEER_LIST_MS: u64 = 5000;

/// Announce intervals after which a chunk the seeder sent whole and no peer heard from
/// within as long holds counts as lost ([`Tracker::lost`]).
pub const LOST_AFTER_INTERVALS: u64 = 2;

/// A peer's place in the tracker's tables.
type Slot = u32;

/// Which holder list of a blob a peer is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    /// Holds at least one chunk.
    Holding(u32),
    /// Holds none yet, fetches some.
    Fetching(u32),
}

#[derive(Debug)]
struct PeerState {
    id: String,
    addr: SocketAddr,
    /// The blobs it announced, each with its place in the blob's holder lists when listed
    /// (holding or fetching chunks).
    blobs: HashMap<Digest, Option<Listed>>,
    seen: Instant,
    /// The `seq` of the announce taken last, when it came with one (deltas build on it).
    seq: Option<u64>,
}

/// A peer in a blob's holder list, with what a peer list weighs, covers and sends of it: a
/// list's entries are built from here and the peer's slot, without looking the blob up in
/// the peer's own table (at 5,000 nodes those lookups, each a few cache misses, were a
/// quarter of the tracker's CPU in a rollout).
#[derive(Debug, Clone)]
struct Holder {
    slot: Slot,
    /// Chunks held (`set.count()`, kept: every list weighs it for each sampled holder).
    count: u32,
    /// The chunks held, of the blob's (`set.len()`).
    set: ChunkSet,
    /// The chunks being fetched, when any.
    fetching: Option<ChunkSet>,
    /// Its peer-list entry as JSON, made when a list last named it, with the peer's
    /// [`Tracker::stamps`] then: valid while the stamp is the same (a new holder entry, made
    /// when its chunk sets change, has none).
    json: Option<(u64, Box<[u8]>)>,
}

impl Holder {
    /// Which list it belongs in (position to be set): holding, fetching only, or none.
    fn list_kind(&self) -> Option<fn(u32) -> Listed> {
        if self.count > 0 {
            Some(Listed::Holding)
        } else if self.fetching.is_some() {
            Some(Listed::Fetching)
        } else {
            None
        }
    }
}

/// The peers listed for one blob.
#[derive(Debug, Default)]
struct Holders {
    holding: Vec<Holder>,
    fetching: Vec<Holder>,
}

/// The tracker's soft state.
#[derive(Debug)]
pub struct Tracker {
    interval_ms: u64,
    ttl: Duration,
    max_peers: usize,
    /// Peers by slot; `None` slots are in `free`.
    slots: Vec<Option<PeerState>>,
    /// Each slot's upload stats, apart from the rest of its state: a peer list weighs them
    /// for each of its ~120 sampled holders, and reading them from this dense array (24 bytes
    /// a peer) rather than from each peer's state made a list about a tenth cheaper at 5,000
    /// peers.
    uploads: Vec<UploadStats>,
    /// Each slot's count of changes to its address or upload stats: a holder's cached list
    /// entry made at another count is stale.
    stamps: Vec<u64>,
    free: Vec<Slot>,
    by_id: HashMap<String, Slot>,
    /// Peers holding or fetching chunks of each blob.
    by_blob: HashMap<Digest, Holders>,
    /// (last heard, peer), oldest first.
    deadlines: BTreeSet<(Instant, Slot)>,
}

impl Tracker {
    /// An empty tracker with `config`'s timing and list length.
    pub fn new(config: &TrackerConfig) -> Self {
        Self {
            interval_ms: config.announce_interval_ms,
            ttl: Duration::from_millis(config.peer_ttl_ms),
            max_peers: config.max_peers,
            slots: Vec::new(),
            uploads: Vec::new(),
            stamps: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            by_blob: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// Live peers (after the last expiry).
    pub fn peer_count(&self) -> usize {
        self.by_id.len()
    }

    /// Replaces `announce.peer_id`'s state, heard at `now` (the whole-state route). A
    /// malformed announce (bad id or address, bad or duplicate chunk set) is refused and
    /// changes nothing. A delta that follows it is answered with a request for the whole
    /// state (a whole-state announce carries no sequence number).
    pub fn announce(&mut self, announce: Announce, now: Instant) -> Result<AnnounceReply, Error> {
        self.expire(now);
        validate_peer(&announce.peer_id, announce.addr)?;
        let blobs = validate_blobs(&announce.peer_id, &announce.blobs)?;
        let Announce {
            peer_id,
            addr,
            upload,
            ..
        } = announce;
        self.replace(peer_id, addr, upload, blobs, None, now);
        Ok(AnnounceReply {
            interval_ms: self.interval_ms,
        })
    }

    /// Takes a [`DeltaAnnounce`] heard at `now`: a whole state replaces the peer's; changes
    /// are applied when the peer's last announce taken is `base`, else nothing changes and
    /// the reply asks for the whole state. A malformed delta (as [`Self::announce`], plus
    /// `seq` not after `base`, a blob both changed and removed, removed twice or not held,
    /// removals without a base, too many blobs after it) is refused and changes nothing.
    pub fn announce_delta(
        &mut self,
        delta: DeltaAnnounce,
        now: Instant,
    ) -> Result<DeltaReply, Error> {
        self.expire(now);
        let id = &delta.peer_id;
        validate_peer(id, delta.addr)?;
        let changed = validate_blobs(id, &delta.blobs)?;
        let Some(base) = delta.base else {
            if !delta.removed.is_empty() {
                return bad(format!(
                    "peer {id}: a whole state (no base) cannot remove blobs"
                ));
            }
            self.replace(
                delta.peer_id,
                delta.addr,
                delta.upload,
                changed,
                Some(delta.seq),
                now,
            );
            return Ok(self.delta_reply(false));
        };
        if delta.seq <= base {
            return bad(format!(
                "peer {id}: seq {} must be more than its base {base}",
                delta.seq
            ));
        }
        let known = self
            .by_id
            .get(id.as_str())
            .and_then(|&slot| Some((slot, self.slots[slot as usize].as_ref()?)));
        let Some((slot, peer)) = known.filter(|(_, p)| p.seq == Some(base)) else {
            return Ok(self.delta_reply(true));
        };
        let mut removed = HashSet::with_capacity(delta.removed.len());
        for digest in &delta.removed {
            if changed.contains_key(digest) {
                return bad(format!(
                    "peer {id}: blob {digest} is both changed and removed"
                ));
            }
            if !peer.blobs.contains_key(digest) {
                return bad(format!(
                    "peer {id}: blob {digest} removed but not held at base {base}"
                ));
            }
            if !removed.insert(digest) {
                return bad(format!("peer {id}: blob {digest} removed twice"));
            }
        }
        let added = changed
            .keys()
            .filter(|d| !peer.blobs.contains_key(*d))
            .count();
        let after = peer.blobs.len() + added - removed.len();
        if after > MAX_BLOBS_PER_PEER {
            return bad(format!(
                "peer {id}: {after} blobs after the delta, at most {MAX_BLOBS_PER_PEER}"
            ));
        }
        for digest in delta.removed {
            self.remove_blob(slot, &digest);
        }
        for (digest, announced) in changed {
            self.set_blob(slot, digest, announced);
        }
        let peer = self.peer_mut(slot);
        let moved = std::mem::replace(&mut peer.addr, delta.addr) != delta.addr;
        peer.seq = Some(delta.seq);
        let upload = std::mem::replace(&mut self.uploads[slot as usize], delta.upload);
        if moved || upload != delta.upload {
            self.stamps[slot as usize] += 1;
        }
        self.touch(slot, now);
        Ok(self.delta_reply(false))
    }

    fn delta_reply(&self, full_state_needed: bool) -> DeltaReply {
        let (min_interval_ms, peer_list_interval_ms) = self.pacing();
        DeltaReply {
            interval_ms: self.interval_ms,
            full_state_needed,
            min_interval_ms,
            peer_list_interval_ms,
        }
    }

    /// How often each node may announce (changes) and ask for a blob's peers, in ms, for
    /// the peers known now (0: as often as it likes): none up to [`PACING_STEP_PEERS`] peers,
    /// then [`MIN_ANNOUNCE_MS`] and [`MIN_PEER_LIST_MS`] times the number of steps, at most
    /// the announce interval and [`MAX_PEER_LIST_MS`].
    pub fn pacing(&self) -> (u64, u64) {
        let steps = self.peer_count().div_ceil(PACING_STEP_PEERS).max(1) as u64;
        if steps == 1 {
            return (0, 0);
        }
        (
            (MIN_ANNOUNCE_MS * steps).min(self.interval_ms),
            (MIN_PEER_LIST_MS * steps).min(MAX_PEER_LIST_MS),
        )
    }

    /// Whether chunk `chunk` of `digest`, which the seeder handed whole to a node whose
    /// announce of it was due by `since`, is held by no node heard from lately: at `now`,
    /// [`LOST_AFTER_INTERVALS`] announce intervals have passed since `since` and no peer
    /// heard from within as long announced it. A node announces at least once an interval
    /// (sooner while it fetches), so a live holder has announced it by then; a holder gone
    /// silent that long is likely dead, though the TTL has not dropped it yet. False before
    /// that time. Costs one pass over the blob's holders, ending at the first live one.
    pub fn lost(&self, digest: &Digest, chunk: u32, since: Instant, now: Instant) -> bool {
        let live = Duration::from_millis(self.interval_ms.saturating_mul(LOST_AFTER_INTERVALS));
        if now.saturating_duration_since(since) < live {
            return false;
        }
        let Some(holders) = self.by_blob.get(digest) else {
            return true;
        };
        !holders.holding.iter().any(|h| {
            h.set.contains(chunk)
                && self.slots[h.slot as usize]
                    .as_ref()
                    .is_some_and(|p| now.saturating_duration_since(p.seen) < live)
        })
    }

    /// Drops every peer not heard from for the TTL at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(seen, slot)) = self.deadlines.first() {
            if now.saturating_duration_since(seen) < self.ttl {
                break;
            }
            if let Some(peer) = &self.slots[slot as usize] {
                tracing::debug!(peer = %peer.id, "peer expired");
            }
            self.forget(slot);
        }
    }

    fn peer_mut(&mut self, slot: Slot) -> &mut PeerState {
        self.slots[slot as usize]
            .as_mut()
            .expect("a listed slot holds a peer")
    }

    /// Makes `id`'s state exactly this, heard at `now`.
    fn replace(
        &mut self,
        id: String,
        addr: SocketAddr,
        upload: UploadStats,
        blobs: HashMap<Digest, Announced>,
        seq: Option<u64>,
        now: Instant,
    ) {
        if let Some(&slot) = self.by_id.get(&id) {
            self.forget(slot);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.uploads.push(UploadStats::default());
                self.stamps.push(0);
                Slot::try_from(self.slots.len() - 1).expect("fewer than 2^32 peers")
            }
        };
        self.slots[slot as usize] = Some(PeerState {
            id: id.clone(),
            addr,
            blobs: HashMap::with_capacity(blobs.len()),
            seen: now,
            seq,
        });
        self.uploads[slot as usize] = upload;
        self.stamps[slot as usize] += 1;
        self.by_id.insert(id, slot);
        self.deadlines.insert((now, slot));
        for (digest, announced) in blobs {
            self.set_blob(slot, digest, announced);
        }
    }

    /// Marks `slot` heard at `now`.
    fn touch(&mut self, slot: Slot, now: Instant) {
        let peer = self.peer_mut(slot);
        let before = std::mem::replace(&mut peer.seen, now);
        self.deadlines.remove(&(before, slot));
        self.deadlines.insert((now, slot));
    }

    /// Sets what `slot` holds and fetches of `digest`, moving it between the blob's holder
    /// lists.
    fn set_blob(&mut self, slot: Slot, digest: Digest, announced: Announced) {
        let before = self.peer_mut(slot).blobs.get(&digest).copied().flatten();
        let holder = Holder {
            slot,
            count: announced.set.count(),
            set: announced.set,
            fetching: announced.fetching,
            json: None,
        };
        let kind = holder.list_kind();
        let listed = match (before, kind) {
            (Some(Listed::Holding(p)), Some(k)) if k(0) == Listed::Holding(0) => {
                self.update_holder(&digest, Listed::Holding(p), holder);
                Some(Listed::Holding(p))
            }
            (Some(Listed::Fetching(p)), Some(k)) if k(0) == Listed::Fetching(0) => {
                self.update_holder(&digest, Listed::Fetching(p), holder);
                Some(Listed::Fetching(p))
            }
            (before, kind) => {
                if let Some(listed) = before {
                    self.unlist(&digest, listed);
                }
                kind.map(|k| self.list(&digest, holder, k))
            }
        };
        self.peer_mut(slot).blobs.insert(digest, listed);
    }

    /// Drops `digest` from what `slot` holds.
    fn remove_blob(&mut self, slot: Slot, digest: &Digest) {
        if let Some(Some(listed)) = self.peer_mut(slot).blobs.remove(digest) {
            self.unlist(digest, listed);
        }
    }

    /// Replaces the entry at `listed` of `digest`'s holder lists.
    fn update_holder(&mut self, digest: &Digest, listed: Listed, holder: Holder) {
        let Some(holders) = self.by_blob.get_mut(digest) else {
            return;
        };
        let entry = match listed {
            Listed::Holding(p) => holders.holding.get_mut(p as usize),
            Listed::Fetching(p) => holders.fetching.get_mut(p as usize),
        };
        if let Some(e) = entry {
            *e = holder;
        }
    }

    /// Appends `holder` to one of `digest`'s holder lists; its position.
    fn list(&mut self, digest: &Digest, holder: Holder, kind: fn(u32) -> Listed) -> Listed {
        let holders = self.by_blob.entry(digest.clone()).or_default();
        let list = match kind(0) {
            Listed::Holding(_) => &mut holders.holding,
            Listed::Fetching(_) => &mut holders.fetching,
        };
        list.push(holder);
        kind(u32::try_from(list.len() - 1).expect("fewer than 2^32 peers"))
    }

    /// Takes the entry at `listed` out of `digest`'s holder lists (the last one takes its
    /// place, and learns its new position).
    fn unlist(&mut self, digest: &Digest, listed: Listed) {
        let Some(holders) = self.by_blob.get_mut(digest) else {
            return;
        };
        let (list, at, kind): (_, _, fn(u32) -> Listed) = match listed {
            Listed::Holding(p) => (&mut holders.holding, p, Listed::Holding),
            Listed::Fetching(p) => (&mut holders.fetching, p, Listed::Fetching),
        };
        let at = at as usize;
        if at >= list.len() {
            return;
        }
        list.swap_remove(at);
        let moved = list.get(at).map(|h| h.slot);
        if holders.holding.is_empty() && holders.fetching.is_empty() {
            self.by_blob.remove(digest);
        }
        if let Some(moved) = moved {
            let peer = self.peer_mut(moved);
            if let Some(listed) = peer.blobs.get_mut(digest) {
                *listed = Some(kind(at as u32));
            }
        }
    }

    /// Removes a peer and its index entries.
    fn forget(&mut self, slot: Slot) {
        let Some(old) = self.slots[slot as usize].take() else {
            return;
        };
        self.deadlines.remove(&(old.seen, slot));
        self.by_id.remove(&old.id);
        for (digest, listed) in &old.blobs {
            if let Some(listed) = *listed {
                self.unlist(digest, listed);
            }
        }
        self.free.push(slot);
    }

    /// Peers holding chunks of `digest`, without `asking`, best first with randomness, at
    /// most `limit` (and the configured `max_peers`); then, as many again at most, peers
    /// holding none yet but fetching some (for the askers' rarity counts). `seeder`, when
    /// given and holding chunks, is always listed first and takes one of the places: a node
    /// that does not know the seeder takes a chunk none of its listed peers holds from the
    /// registry itself, so in a large swarm, where a list names few of the holders, nodes
    /// that never drew the seeder sent the registry many times the image (simulated: 27.7 F
    /// with 1,000 nodes joining over 30 s; docs/simulator.md). Nodes ask the seeder only
    /// for chunks no node they know holds or fetches, one at a time each. The holders' last
    /// [`COVER_PLACES`] places may go to holders of chunks the others lack (`cover`). Costs
    /// O(list length), not O(holders): see [`SAMPLE_PER_PEER`].
    pub fn peers(
        &mut self,
        digest: &Digest,
        asking: &str,
        limit: usize,
        seeder: Option<PeerEntry>,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Vec<PeerEntry> {
        let chosen = self.choose(digest, asking, limit, seeder, now, rng);
        let mut out = Vec::with_capacity(1 + chosen.holding.len() + chosen.fetching.len());
        out.extend(chosen.seeder);
        if let Some(holders) = self.by_blob.get(digest) {
            let entry = |h: &Holder| entry(&self.slots, &self.uploads, h);
            out.extend(
                chosen
                    .holding
                    .iter()
                    .filter_map(|&i| entry(&holders.holding[i])),
            );
            out.extend(
                chosen
                    .fetching
                    .iter()
                    .filter_map(|&i| entry(&holders.fetching[i])),
            );
        }
        out
    }

    /// [`Tracker::peers`] as the body of the answer, a
    /// [`shoal_p2p::tracker::proto::PeerList`] in JSON: the same list for the same arguments
    /// and randomness. Each holder's entry is kept as JSON until its peer's address or upload
    /// stats or its chunk sets change: in benches/tracker_state (5,000 nodes in a rollout)
    /// 94% of the entries listed were kept ones, and a list takes 0.47x the time of building
    /// it whole.
    pub fn peers_json(
        &mut self,
        digest: &Digest,
        asking: &str,
        limit: usize,
        seeder: Option<PeerEntry>,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Vec<u8> {
        let chosen = self.choose(digest, asking, limit, seeder, now, rng);
        let mut out = Vec::with_capacity(256 * (1 + chosen.holding.len() + chosen.fetching.len()));
        out.extend_from_slice(b"{\"digest\":");
        serde_json::to_writer(&mut out, digest).expect("a digest serialises");
        out.extend_from_slice(b",\"peers\":[");
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
        };
        if let Some(s) = &chosen.seeder {
            sep(&mut out);
            serde_json::to_writer(&mut out, s).expect("a peer entry serialises");
        }
        let Self {
            by_blob,
            slots,
            uploads,
            stamps,
            ..
        } = self;
        if let Some(holders) = by_blob.get_mut(digest) {
            for (list, chosen) in [
                (&mut holders.holding, chosen.holding),
                (&mut holders.fetching, chosen.fetching),
            ] {
                for i in chosen {
                    let h = &mut list[i];
                    let stamp = stamps[h.slot as usize];
                    if h.json.as_ref().map(|(s, _)| *s) != Some(stamp) {
                        let Some(e) = entry(slots, uploads, h) else {
                            continue;
                        };
                        let json = serde_json::to_vec(&e).expect("a peer entry serialises");
                        h.json = Some((stamp, json.into_boxed_slice()));
                    }
                    if let Some((_, json)) = &h.json {
                        sep(&mut out);
                        out.extend_from_slice(json);
                    }
                }
            }
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// What a peer list names: the seeder (when given and holding chunks, not the asker),
    /// then positions in the blob's holding list, then in its fetching list. See
    /// [`Tracker::peers`].
    fn choose(
        &mut self,
        digest: &Digest,
        asking: &str,
        limit: usize,
        seeder: Option<PeerEntry>,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Chosen {
        self.expire(now);
        let max = limit.min(self.max_peers);
        // One more, in case the asker is drawn.
        let want = max.saturating_mul(SAMPLE_PER_PEER).saturating_add(1);
        let asker = self.by_id.get(asking).copied();
        // Holders by their position in the blob's holding list.
        let mut candidates: Vec<(usize, Candidate)> = Vec::new();
        // Positions in the blob's fetching list.
        let mut fetching_only: Vec<usize> = Vec::new();
        let holders = self.by_blob.get(digest);
        if let Some(holders) = holders {
            for i in select::sample(holders.holding.len(), want, rng) {
                let h = &holders.holding[i];
                if Some(h.slot) == asker {
                    continue;
                }
                if let Some(&upload) = self.uploads.get(h.slot as usize) {
                    let c = Candidate {
                        upload,
                        held: h.count,
                        chunks: h.set.len(),
                    };
                    candidates.push((i, c));
                }
            }
            for i in select::sample(holders.fetching.len(), max.saturating_add(1), rng) {
                if Some(holders.fetching[i].slot) != asker {
                    fetching_only.push(i);
                }
            }
        }
        let seeder =
            seeder.filter(|s| s.peer_id != asking && s.set().map(|s| s.count()).unwrap_or(0) > 0);
        let others = max.saturating_sub(usize::from(seeder.is_some()));
        let sampled: Vec<usize> = candidates.iter().map(|&(i, _)| i).collect();
        let ordered = select::order(candidates, others, rng);
        let Some(holders) = holders else {
            return Chosen {
                seeder,
                holding: Vec::new(),
                fetching: Vec::new(),
            };
        };
        let mine = asker
            .and_then(|slot| self.slots.get(slot as usize)?.as_ref()?.blobs.get(digest))
            .and_then(|listed| match listed {
                Some(Listed::Holding(p)) => holders.holding.get(*p as usize),
                _ => None,
            })
            .map(|h| &h.set);
        let ordered = cover(&holders.holding, mine, ordered, &sampled, rng);
        // Peers holding nothing yet come last, only so that askers count what they fetch.
        rng.shuffle(&mut fetching_only);
        fetching_only.truncate(max);
        Chosen {
            seeder,
            holding: ordered,
            fetching: fetching_only,
        }
    }
}

/// What [`Tracker::choose`] picked for a peer list.
struct Chosen {
    seeder: Option<PeerEntry>,
    /// Positions in the blob's holding list, best first.
    holding: Vec<usize>,
    /// Positions in the blob's fetching list.
    fetching: Vec<usize>,
}

/// `holder`'s entry in a peer list.
fn entry(
    slots: &[Option<PeerState>],
    uploads: &[UploadStats],
    holder: &Holder,
) -> Option<PeerEntry> {
    let peer = slots.get(holder.slot as usize)?.as_ref()?;
    Some(PeerEntry {
        peer_id: peer.id.clone(),
        addr: peer.addr,
        chunks: holder.set.len(),
        have: holder.set.encode(),
        upload: *uploads.get(holder.slot as usize)?,
        fetching: holder.fetching.as_ref().map(ChunkSet::encode),
    })
}

/// The cover: `list` (positions in a blob's `holding` list, best first) with up to
/// [`COVER_PLACES`] of its last places given to holders among [`COVER_SAMPLE`] of `sampled`
/// (drawn with `rng`), so that with the asker's chunks (`mine`) it names a holder of every
/// chunk at least one in [`COVER_MIN_SHARE_OF`] of those holders has: greedily, the holder
/// adding the most such chunks first; the places not needed keep their peers. (The order's
/// weight favours holders with spare upload capacity, and in a rolling deploy those are
/// mostly the nodes that just joined: without the cover, simulated nodes joining a
/// 5,000-node swarm late knew no holder of chunks half the swarm held, and the seeder sent
/// 20 of 256 chunks twice.)
fn cover(
    holding: &[Holder],
    mine: Option<&ChunkSet>,
    list: Vec<usize>,
    sampled: &[usize],
    rng: &mut fastrand::Rng,
) -> Vec<usize> {
    if sampled.len() <= list.len() {
        return list; // every sampled holder is listed already
    }
    let Some(chunks) = list.first().map(|&i| holding[i].set.len()) else {
        return list;
    };
    if chunks > COVER_MAX_CHUNKS {
        return list;
    }
    let set = |i: usize| Some(&holding[i].set).filter(|s| s.len() == chunks);
    let pool: Vec<(usize, &ChunkSet)> = select::sample(sampled.len(), COVER_SAMPLE, rng)
        .into_iter()
        .filter_map(|k| Some((sampled[k], set(sampled[k])?)))
        .collect();
    // The chunks the pool has that neither the asker nor the list's first places do.
    let mut lacking = ChunkSet::empty(chunks);
    for (_, s) in &pool {
        lacking.union_with(s);
    }
    if let Some(mine) = mine.filter(|s| s.len() == chunks) {
        lacking.difference_with(mine);
    }
    let head = list.len().saturating_sub(COVER_PLACES);
    for s in list[..head].iter().filter_map(|&i| set(i)) {
        if lacking.count() == 0 {
            return list;
        }
        lacking.difference_with(s);
    }
    // Those fewer than one in COVER_MIN_SHARE_OF of the pool hold are left to the askers'
    // rarity order.
    let mut holding_lacking = vec![0u32; chunks as usize];
    for (_, s) in &pool {
        s.count_into(&lacking, &mut holding_lacking);
    }
    for (i, &n) in holding_lacking.iter().enumerate() {
        if n > 0 && (n as usize) * COVER_MIN_SHARE_OF < pool.len() {
            lacking.remove(i as u32);
        }
    }
    if lacking.count() == 0 {
        return list;
    }
    let mut out = list[..head].to_vec();
    while out.len() < list.len() && lacking.count() > 0 {
        let mut best: Option<(u32, usize, &ChunkSet)> = None;
        for &(i, s) in &pool {
            let adds = s.count_common(&lacking);
            if adds > best.map_or(0, |b| b.0) {
                best = Some((adds, i, s));
            }
        }
        let Some((_, i, s)) = best else {
            break;
        };
        lacking.difference_with(s);
        out.push(i);
    }
    for &i in &list[head..] {
        if out.len() >= list.len() {
            break;
        }
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}
