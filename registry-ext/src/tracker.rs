//! The tracker's state: which peers hold which chunks of which blobs, and how loaded they are.
//! Pure: no I/O, the clock is an argument and the randomness an [`fastrand::Rng`], so every
//! rule is unit-tested. The HTTP side is in [`crate::server`].
//!
//! - An announce replaces everything known about that peer (address, upload stats, blobs).
//! - A peer not heard from for `peer_ttl_ms` is dropped. State is soft: a restarted tracker
//!   knows every peer again after their next announce.
//! - A peer list holds the peers with at least one chunk of the blob (never the asking peer),
//!   in a weighted random order (Efraimidis–Spirakis: key `u^(1/w)`, largest first) where the
//!   weight is the peer's spare upload capacity divided by `1 + active uploads`, boosted for
//!   holding more of the blob. Fast, idle peers usually come first, but not always, so no
//!   peer (the seeder included) is everyone's first choice.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_p2p::tracker::proto::{Announce, AnnounceReply, ChunkSet, PeerEntry, UploadStats};
use shoal_p2p::Digest;

use crate::config::TrackerConfig;
use crate::Error;

/// Peer ids starting with this are the registry extension's seeders; peers may not use it.
pub use shoal_p2p::tracker::SEEDER_ID_PREFIX;
/// Longest accepted peer id.
pub const MAX_PEER_ID_LEN: usize = 253;
/// Most blobs one announce may list.
pub const MAX_BLOBS_PER_PEER: usize = 100_000;
/// Most chunks a blob may have (a 64 GiB blob in 64 KiB chunks).
pub const MAX_CHUNKS_PER_BLOB: u32 = 1 << 20;
/// Upload capacity assumed when no candidate has measured one (bytes/s).
const DEFAULT_CAPACITY: f64 = 100.0 * 1024.0 * 1024.0;

/// What one peer holds of one blob.
#[derive(Debug, Clone)]
struct Held {
    chunks: u32,
    count: u32,
    /// The normalised wire form of the chunk set.
    have: String,
    /// Chunks being fetched (normalised wire form), when any.
    fetching: Option<String>,
}

#[derive(Debug)]
struct PeerState {
    addr: SocketAddr,
    upload: UploadStats,
    blobs: HashMap<Digest, Held>,
    seen: Instant,
}

/// The tracker's soft state.
#[derive(Debug)]
pub struct Tracker {
    interval_ms: u64,
    ttl: Duration,
    max_peers: usize,
    peers: HashMap<String, PeerState>,
    /// Peers holding at least one chunk of each blob; ordered, so that a peer list draws its
    /// randomness in the same order for the same state (the simulator is deterministic).
    by_blob: HashMap<Digest, BTreeSet<String>>,
    /// (last heard, peer id), oldest first.
    deadlines: BTreeSet<(Instant, String)>,
}

impl Tracker {
    /// An empty tracker with `config`'s timing and list length.
    pub fn new(config: &TrackerConfig) -> Self {
        Self {
            interval_ms: config.announce_interval_ms,
            ttl: Duration::from_millis(config.peer_ttl_ms),
            max_peers: config.max_peers,
            peers: HashMap::new(),
            by_blob: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// Live peers (after the last expiry).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Replaces `announce.peer_id`'s state, heard at `now`. A malformed announce (bad id or
    /// address, bad or duplicate chunk set) is refused and changes nothing.
    pub fn announce(&mut self, announce: Announce, now: Instant) -> Result<AnnounceReply, Error> {
        self.expire(now);
        let blobs = validate(&announce)?;
        let id = announce.peer_id;
        self.forget(&id);
        for (digest, held) in &blobs {
            if held.count > 0 || held.fetching.is_some() {
                self.by_blob
                    .entry(digest.clone())
                    .or_default()
                    .insert(id.clone());
            }
        }
        self.deadlines.insert((now, id.clone()));
        self.peers.insert(
            id,
            PeerState {
                addr: announce.addr,
                upload: announce.upload,
                blobs,
                seen: now,
            },
        );
        Ok(AnnounceReply {
            interval_ms: self.interval_ms,
        })
    }

    /// Drops every peer not heard from for the TTL at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some((seen, id)) = self.deadlines.first().cloned() {
            if now.saturating_duration_since(seen) < self.ttl {
                break;
            }
            tracing::debug!(peer = %id, "peer expired");
            self.forget(&id);
        }
    }

    /// Removes a peer and its index entries.
    fn forget(&mut self, id: &str) {
        let Some(old) = self.peers.remove(id) else {
            return;
        };
        self.deadlines.remove(&(old.seen, id.to_string()));
        for digest in old.blobs.keys() {
            if let Some(holders) = self.by_blob.get_mut(digest) {
                holders.remove(id);
                if holders.is_empty() {
                    self.by_blob.remove(digest);
                }
            }
        }
    }

    /// Peers holding chunks of `digest`, without `asking`, best first with randomness, at
    /// most `limit` (and the configured `max_peers`); then, as many again at most, peers
    /// holding none yet but fetching some (for the askers' rarity counts). `seeder`, when
    /// given, competes like any other peer.
    pub fn peers(
        &mut self,
        digest: &Digest,
        asking: &str,
        limit: usize,
        seeder: Option<PeerEntry>,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Vec<PeerEntry> {
        self.expire(now);
        let mut candidates: Vec<(PeerEntry, u32)> = Vec::new();
        let mut fetching_only: Vec<PeerEntry> = Vec::new();
        if let Some(holders) = self.by_blob.get(digest) {
            for id in holders.iter().filter(|id| id.as_str() != asking) {
                let Some(peer) = self.peers.get(id) else {
                    continue;
                };
                let Some(held) = peer.blobs.get(digest) else {
                    continue;
                };
                let entry = PeerEntry {
                    peer_id: id.clone(),
                    addr: peer.addr,
                    chunks: held.chunks,
                    have: held.have.clone(),
                    upload: peer.upload,
                    fetching: held.fetching.clone(),
                };
                if held.count > 0 {
                    candidates.push((entry, held.count));
                } else {
                    fetching_only.push(entry);
                }
            }
        }
        if let Some(seeder) = seeder.filter(|s| s.peer_id != asking) {
            let count = seeder.set().map(|s| s.count()).unwrap_or(0);
            if count > 0 {
                candidates.push((seeder, count));
            }
        }
        let max = limit.min(self.max_peers);
        let mut ordered = order(candidates, rng);
        ordered.truncate(max);
        // Peers holding nothing yet come last, only so that askers count what they fetch.
        rng.shuffle(&mut fetching_only);
        fetching_only.truncate(max);
        ordered.extend(fetching_only);
        ordered
    }
}

/// Checks an announce and returns its blobs, decoded.
fn validate(a: &Announce) -> Result<HashMap<Digest, Held>, Error> {
    let bad = |reason: String| Err(Error::BadRequest(format!("announce: {reason}")));
    let id = &a.peer_id;
    if id.is_empty() || id.len() > MAX_PEER_ID_LEN || id.chars().any(char::is_control) {
        return bad(format!(
            "peer_id {id:?} must be 1..={MAX_PEER_ID_LEN} printable characters"
        ));
    }
    if id.starts_with(SEEDER_ID_PREFIX) {
        return bad(format!(
            "peer_id {id:?}: the prefix {SEEDER_ID_PREFIX:?} is reserved for the seeder"
        ));
    }
    if a.addr.ip().is_unspecified() || a.addr.port() == 0 {
        return bad(format!(
            "peer {id}: addr {} must name a specific IP and a port other than 0",
            a.addr
        ));
    }
    if a.blobs.len() > MAX_BLOBS_PER_PEER {
        return bad(format!(
            "peer {id}: {} blobs listed, at most {MAX_BLOBS_PER_PEER}",
            a.blobs.len()
        ));
    }
    let mut blobs = HashMap::with_capacity(a.blobs.len());
    for b in &a.blobs {
        if b.chunks > MAX_CHUNKS_PER_BLOB {
            return bad(format!(
                "peer {id}: blob {} has {} chunks, at most {MAX_CHUNKS_PER_BLOB}",
                b.digest, b.chunks
            ));
        }
        let set: ChunkSet = match b.set() {
            Ok(s) => s,
            Err(e) => return bad(format!("peer {id}: blob {}: {e}", b.digest)),
        };
        let fetching = match b.fetching_set() {
            Ok(s) if s.count() > 0 => Some(s.encode()),
            Ok(_) => None,
            Err(e) => return bad(format!("peer {id}: blob {} fetching: {e}", b.digest)),
        };
        let held = Held {
            chunks: set.len(),
            count: set.count(),
            have: set.encode(),
            fetching,
        };
        if blobs.insert(b.digest.clone(), held).is_some() {
            return bad(format!("peer {id}: blob {} listed twice", b.digest));
        }
    }
    Ok(blobs)
}

/// The weight of a candidate: spare upload capacity (`default_capacity` when it measured
/// none; never below 5% of capacity) over `1 + active uploads`, times `0.25..=1` by the share
/// of the blob it holds.
fn weight(upload: &UploadStats, default_capacity: f64, held: u32, chunks: u32) -> f64 {
    let capacity = if upload.capacity_bytes_per_sec > 0 {
        upload.capacity_bytes_per_sec as f64
    } else {
        default_capacity
    };
    let spare = (capacity - upload.rate_bytes_per_sec as f64)
        .max(capacity * 0.05)
        .max(1.0);
    let share = if chunks == 0 {
        1.0
    } else {
        f64::from(held.min(chunks)) / f64::from(chunks)
    };
    spare / (1.0 + f64::from(upload.active)) * (0.25 + 0.75 * share)
}

/// Weighted random order (Efraimidis–Spirakis, with keys `ln(u) / w` to stay in range).
fn order(candidates: Vec<(PeerEntry, u32)>, rng: &mut fastrand::Rng) -> Vec<PeerEntry> {
    let mut known: Vec<u64> = candidates
        .iter()
        .map(|(e, _)| e.upload.capacity_bytes_per_sec)
        .filter(|&c| c > 0)
        .collect();
    known.sort_unstable();
    let default_capacity = match known.get(known.len() / 2) {
        Some(&median) => median as f64,
        None => DEFAULT_CAPACITY,
    };
    let mut keyed: Vec<(f64, PeerEntry)> = candidates
        .into_iter()
        .map(|(entry, held)| {
            let w = weight(&entry.upload, default_capacity, held, entry.chunks);
            // u in (0, 1]: ln(u) <= 0, and a larger weight pulls the key towards 0.
            let u = 1.0 - rng.f64();
            (u.ln() / w, entry)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().map(|(_, e)| e).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_p2p::tracker::proto::BlobHave;

    fn cfg() -> TrackerConfig {
        TrackerConfig {
            announce_interval_ms: 1000,
            peer_ttl_ms: 5000,
            max_peers: 30,
        }
    }

    fn stats(capacity: u64, rate: u64, active: u32) -> UploadStats {
        UploadStats {
            capacity_bytes_per_sec: capacity,
            rate_bytes_per_sec: rate,
            active,
            max: 8,
        }
    }

    fn announce(
        id: &str,
        port: u16,
        upload: UploadStats,
        blobs: &[(&Digest, ChunkSet)],
    ) -> Announce {
        Announce {
            peer_id: id.into(),
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            upload,
            blobs: blobs
                .iter()
                .map(|(d, s)| BlobHave::new((*d).clone(), s))
                .collect(),
        }
    }

    fn ids(list: &[PeerEntry]) -> Vec<&str> {
        list.iter().map(|e| e.peer_id.as_str()).collect()
    }

    #[test]
    fn spare_capacity_usually_but_not_always_comes_first() {
        let d = Digest::of(b"blob");
        let full = ChunkSet::full(10);
        let mut t = Tracker::new(&cfg());
        let now = Instant::now();
        // Weights 100 : 10 : 10 (in MB/s of spare capacity).
        t.announce(
            announce("fast", 1, stats(100_000_000, 0, 0), &[(&d, full.clone())]),
            now,
        )
        .unwrap();
        t.announce(
            announce(
                "busy",
                2,
                stats(100_000_000, 90_000_000, 0),
                &[(&d, full.clone())],
            ),
            now,
        )
        .unwrap();
        t.announce(
            announce("loaded", 3, stats(20_000_000, 0, 1), &[(&d, full.clone())]),
            now,
        )
        .unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let samples = 10_000;
        let mut fast_first = 0;
        for _ in 0..samples {
            let list = t.peers(&d, "me", 30, None, now, &mut rng);
            assert_eq!(list.len(), 3);
            if list[0].peer_id == "fast" {
                fast_first += 1;
            }
        }
        // Expected share 100/120 = 0.83.
        assert!(fast_first > samples * 3 / 4, "{fast_first}");
        assert!(fast_first < samples * 9 / 10, "{fast_first}");
    }

    #[test]
    fn holding_more_of_the_blob_is_preferred_and_unknown_capacity_gets_the_median() {
        let d = Digest::of(b"blob");
        let mut one = ChunkSet::empty(100);
        one.insert(5);
        let mut t = Tracker::new(&cfg());
        let now = Instant::now();
        t.announce(
            announce("all", 1, stats(0, 0, 0), &[(&d, ChunkSet::full(100))]),
            now,
        )
        .unwrap();
        t.announce(announce("one", 2, stats(0, 0, 0), &[(&d, one)]), now)
            .unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        let all_first = (0..2000)
            .filter(|_| t.peers(&d, "me", 30, None, now, &mut rng)[0].peer_id == "all")
            .count();
        // Weights 1 : 0.2575 -> about 80%.
        assert!((1400..1800).contains(&all_first), "{all_first}");
        assert_eq!(weight(&stats(0, 0, 0), 50.0, 1, 1), 50.0);
        assert_eq!(weight(&stats(100, 100, 0), 50.0, 1, 1), 5.0);
    }

    #[test]
    fn holders_of_nothing_and_the_asker_are_left_out_and_lists_are_capped() {
        let d = Digest::of(b"blob");
        let other = Digest::of(b"other");
        let mut t = Tracker::new(&TrackerConfig {
            max_peers: 3,
            ..cfg()
        });
        let now = Instant::now();
        t.announce(
            announce("empty", 1, stats(0, 0, 0), &[(&d, ChunkSet::empty(4))]),
            now,
        )
        .unwrap();
        t.announce(
            announce(
                "elsewhere",
                2,
                stats(0, 0, 0),
                &[(&other, ChunkSet::full(4))],
            ),
            now,
        )
        .unwrap();
        for i in 0..5 {
            let id = format!("holder-{i}");
            t.announce(
                announce(&id, 10 + i, stats(0, 0, 0), &[(&d, ChunkSet::full(4))]),
                now,
            )
            .unwrap();
        }
        let mut rng = fastrand::Rng::with_seed(3);
        let list = t.peers(&d, "holder-0", 30, None, now, &mut rng);
        assert_eq!(list.len(), 3);
        for id in ids(&list) {
            assert!(id.starts_with("holder-") && id != "holder-0", "{id}");
        }
        assert_eq!(t.peers(&d, "x", 2, None, now, &mut rng).len(), 2);
        assert!(t
            .peers(&Digest::of(b"none"), "x", 9, None, now, &mut rng)
            .is_empty());
        assert_eq!(t.peer_count(), 7);
    }

    #[test]
    fn the_seeder_competes_like_a_peer() {
        let d = Digest::of(b"blob");
        let mut t = Tracker::new(&cfg());
        let now = Instant::now();
        t.announce(
            announce("node", 1, stats(100, 0, 0), &[(&d, ChunkSet::full(3))]),
            now,
        )
        .unwrap();
        let seeder = PeerEntry {
            peer_id: format!("{SEEDER_ID_PREFIX}10.0.0.9:7080"),
            addr: "10.0.0.9:7080".parse().unwrap(),
            chunks: 3,
            have: ChunkSet::full(3).encode(),
            upload: stats(100, 0, 0),
            fetching: None,
        };
        let mut rng = fastrand::Rng::with_seed(5);
        let seeder_first = (0..2000)
            .filter(|_| {
                let list = t.peers(&d, "me", 30, Some(seeder.clone()), now, &mut rng);
                assert_eq!(list.len(), 2);
                list[0].peer_id.starts_with(SEEDER_ID_PREFIX)
            })
            .count();
        assert!((800..1200).contains(&seeder_first), "{seeder_first}");
        // A seeder entry for an empty blob is not listed.
        let empty = PeerEntry {
            chunks: 0,
            have: ChunkSet::full(0).encode(),
            ..seeder
        };
        assert_eq!(t.peers(&d, "me", 30, Some(empty), now, &mut rng).len(), 1);
    }

    #[test]
    fn peers_fetching_but_holding_nothing_are_listed_last() {
        let d = Digest::of(b"blob");
        let now = Instant::now();
        let mut t = Tracker::new(&TrackerConfig::default());
        let mut holds = ChunkSet::empty(4);
        holds.insert(0);
        let mut fetching = ChunkSet::empty(4);
        fetching.insert(2);
        let announce = |id: &str, ip: u8, set: &ChunkSet, f: &ChunkSet| Announce {
            peer_id: id.into(),
            addr: format!("10.0.0.{ip}:7070").parse().unwrap(),
            upload: stats(100, 0, 0),
            blobs: vec![BlobHave::new(d.clone(), set).with_fetching(f)],
        };
        t.announce(announce("holder", 1, &holds, &ChunkSet::empty(4)), now)
            .unwrap();
        t.announce(announce("fetcher", 2, &ChunkSet::empty(4), &fetching), now)
            .unwrap();
        t.announce(
            announce("idle", 3, &ChunkSet::empty(4), &ChunkSet::empty(4)),
            now,
        )
        .unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..20 {
            let list = t.peers(&d, "me", 30, None, now, &mut rng);
            let ids: Vec<&str> = list.iter().map(|e| e.peer_id.as_str()).collect();
            assert_eq!(ids, ["holder", "fetcher"]);
            assert_eq!(list[1].fetching_set().unwrap(), fetching);
            assert!(list[0].fetching.is_none());
        }
        let mut bad = announce("bad", 4, &holds, &ChunkSet::empty(4));
        bad.blobs[0].fetching = Some("!!".into());
        assert!(t.announce(bad, now).is_err());
    }

    #[test]
    fn peers_expire_after_the_ttl_unless_they_announce_again() {
        let d = Digest::of(b"blob");
        let mut t = Tracker::new(&cfg());
        let t0 = Instant::now();
        let mut rng = fastrand::Rng::with_seed(9);
        let full = ChunkSet::full(2);
        t.announce(announce("a", 1, stats(0, 0, 0), &[(&d, full.clone())]), t0)
            .unwrap();
        t.announce(announce("b", 2, stats(0, 0, 0), &[(&d, full.clone())]), t0)
            .unwrap();
        let t4 = t0 + Duration::from_millis(4000);
        t.announce(announce("b", 2, stats(0, 0, 0), &[(&d, full.clone())]), t4)
            .unwrap();
        assert_eq!(t.peers(&d, "x", 9, None, t4, &mut rng).len(), 2);
        let t5 = t0 + Duration::from_millis(5000);
        assert_eq!(ids(&t.peers(&d, "x", 9, None, t5, &mut rng)), ["b"]);
        assert_eq!(t.peer_count(), 1);
        let t9 = t0 + Duration::from_millis(9000);
        assert!(t.peers(&d, "x", 9, None, t9, &mut rng).is_empty());
        assert_eq!(t.peer_count(), 0);
        assert!(t.by_blob.is_empty() && t.deadlines.is_empty());
    }

    #[test]
    fn an_announce_replaces_the_peers_state() {
        let d1 = Digest::of(b"one");
        let d2 = Digest::of(b"two");
        let mut t = Tracker::new(&cfg());
        let now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(2);
        let reply = t
            .announce(
                announce("a", 1, stats(0, 0, 0), &[(&d1, ChunkSet::full(2))]),
                now,
            )
            .unwrap();
        assert_eq!(reply.interval_ms, 1000);
        let mut half = ChunkSet::empty(4);
        half.insert(0);
        half.insert(1);
        t.announce(
            announce("a", 2, stats(5, 1, 2), &[(&d2, half.clone())]),
            now,
        )
        .unwrap();
        assert!(t.peers(&d1, "x", 9, None, now, &mut rng).is_empty());
        let list = t.peers(&d2, "x", 9, None, now, &mut rng);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].addr.port(), 2);
        assert_eq!(list[0].upload, stats(5, 1, 2));
        assert_eq!(list[0].set().unwrap(), half);
        assert_eq!(t.peer_count(), 1);
    }

    #[test]
    fn malformed_announces_are_refused_and_change_nothing() {
        let d = Digest::of(b"blob");
        let mut t = Tracker::new(&cfg());
        let now = Instant::now();
        let good = announce("a", 1, stats(0, 0, 0), &[(&d, ChunkSet::full(2))]);
        t.announce(good.clone(), now).unwrap();
        let mut bits_past_end = good.clone();
        bits_past_end.blobs[0].have = "CA".into();
        bits_past_end.blobs[0].chunks = 3;
        let mut wrong_len = good.clone();
        wrong_len.blobs[0].have = "AAA".into();
        wrong_len.blobs[0].chunks = 8;
        let mut not_base64 = good.clone();
        not_base64.blobs[0].have = "!!".into();
        let mut twice = good.clone();
        twice.blobs.push(twice.blobs[0].clone());
        let mut huge = good.clone();
        huge.blobs[0].chunks = MAX_CHUNKS_PER_BLOB + 1;
        let mut no_id = good.clone();
        no_id.peer_id.clear();
        let mut seeder_id = good.clone();
        seeder_id.peer_id = format!("{SEEDER_ID_PREFIX}x");
        let mut unspecified = good.clone();
        unspecified.addr = "0.0.0.0:7070".parse().unwrap();
        for bad in [
            bits_past_end,
            wrong_len,
            not_base64,
            twice,
            huge,
            no_id,
            seeder_id,
            unspecified,
        ] {
            let e = t.announce(bad, now).unwrap_err();
            assert!(matches!(e, Error::BadRequest(_)), "{e}");
        }
        let mut rng = fastrand::Rng::with_seed(0);
        let list = t.peers(&d, "x", 9, None, now, &mut rng);
        assert_eq!(ids(&list), ["a"]);
        assert_eq!(list[0].addr.port(), 1);
    }
}
