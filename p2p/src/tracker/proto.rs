//! The tracker protocol's messages and the chunk-set codec. Pure: no I/O.
//!
//! HTTP(S) + JSON, served by `shoal-registry-ext`:
//!
//! - `POST /v1/announce`, body [`Announce`]: the peer's whole state (every blob it holds or is
//!   fetching, with the chunks it holds). Answer [`AnnounceReply`]. State is soft: a peer that
//!   stops announcing expires, and a restarted tracker knows everyone again after one round.
//!   Nodes before delta announces send only this; it stays for them.
//! - `POST /v1/announce/delta`, body [`DeltaAnnounce`]: the whole state, or the changes since
//!   the announce the tracker took last (its `seq`); answer [`DeltaReply`], which asks for the
//!   whole state when the tracker does not hold that one, and paces the node (how often to
//!   announce and to ask for a blob's peers). See docs/tracker.md.
//! - `GET /v1/peers/<digest>?peer=<id>&limit=<n>`: answer [`PeerList`], the peers holding
//!   chunks of the blob, best first (measured spare upload capacity, with randomness), without
//!   the asking peer; then peers holding nothing yet but fetching chunks of it (for the
//!   rarity count only).
//! - `GET /v1/chunk-manifests/<digest>?registry=<host>&repository=<repo>`: the blob's
//!   [`crate::chunk::ChunkManifest`] (JSON), made from the registry's blob with its digest
//!   verified.
//!
//! Errors are an HTTP status with body [`ErrorBody`].

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::swarm::planner::refresh::SHORT_LIST_NODES;

/// `peer_id` prefix of a registry extension's own seeder (followed by its address). Nodes
/// may not announce with it; their schedulers use a seeder only for chunks no other peer can
/// give them, so the registry side sends each chunk about once.
pub const SEEDER_ID_PREFIX: &str = "registry-ext@";

/// Whether node `me` may answer a peer list asked again within the tracker's pacing with
/// `peers`, the last one that tracker gave: not when it is short (names fewer than
/// [`SHORT_LIST_NODES`] nodes), made before the blob's other nodes announced (a rollout's
/// first lists; reusing one for the pacing's interval, 2.5 s at 5,000 nodes, left a node
/// knowing nobody that long). shoald's client, the simulator and the tracker's load bench
/// follow this one rule.
pub fn reusable_list(peers: &[PeerEntry], me: &str) -> bool {
    reusable_list_of(peers.iter().map(|e| e.peer_id.as_str()), me)
}

/// [`reusable_list`] of a list's `peer_id`s alone (the tracker's load bench reads only those).
pub fn reusable_list_of<'a>(ids: impl IntoIterator<Item = &'a str>, me: &str) -> bool {
    ids.into_iter()
        .filter(|&id| id != me && !id.starts_with(SEEDER_ID_PREFIX))
        .count()
        >= SHORT_LIST_NODES
}

/// Whether a peer list kept for reuse, asked `age` ago, stands for a new one under a
/// tracker's peer-list pacing `pacing`: while it is younger than the pacing, and for a
/// starved download's `fresh` ask ([`crate::tracker::Tracker::fresh_peers`]) while it is
/// younger than half the pacing. The pacing grows with the peers the tracker knows, so a
/// starved download's lists do too: at 5,000 peers (2.5 s) one per 1.25 s at most.
/// Simulated, 5,000 paced nodes starting at once made 32,814 lists with this against 51,696
/// with one per [`crate::swarm::planner::refresh::FRESH_LIST_EVERY`] alone, for the same
/// pull times (docs/simulator.md, "A starved download's fresh lists, half the pacing").
/// shoald's client, the simulator and the tracker's load bench follow this one rule.
pub fn reuse_kept_list(age: Duration, pacing: Duration, fresh: bool) -> bool {
    age < if fresh { pacing / 2 } else { pacing }
}

/// Most chunks a blob may have in the protocol (a 64 GiB blob in 64 KiB chunks): a chunk set
/// declaring more is refused before anything is allocated for it (its bitmap is at most
/// 128 KiB).
pub const MAX_CHUNKS: u32 = 1 << 20;

/// Which chunks of a blob a peer holds: a bitmap, bit `i` (LSB first in byte `i / 8`) set when
/// chunk `i` is held and verified. In JSON it is `"all"` or base64 of the bitmap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkSet {
    len: u32,
    bits: Vec<u8>,
}

impl ChunkSet {
    /// No chunk of `len` held.
    pub fn empty(len: u32) -> Self {
        Self {
            len,
            bits: vec![0; (len as usize).div_ceil(8)],
        }
    }

    /// Every chunk of `len` held.
    pub fn full(len: u32) -> Self {
        let mut bits = vec![0xff; (len as usize).div_ceil(8)];
        if let (Some(last), tail @ 1..) = (bits.last_mut(), len % 8) {
            *last = (1u8 << tail) - 1;
        }
        Self { len, bits }
    }

    /// Number of chunks of the blob.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the blob has no chunk (an empty blob).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Marks chunk `i` held; out-of-range indexes are ignored.
    pub fn insert(&mut self, i: u32) {
        if i < self.len {
            self.bits[(i / 8) as usize] |= 1 << (i % 8);
        }
    }

    /// Whether chunk `i` is held.
    pub fn contains(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// How many chunks are held.
    pub fn count(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    /// Every chunk held.
    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    /// Held chunk indexes, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.contains(i))
    }

    /// Adds the chunks `other` holds (a set of another length adds nothing).
    pub fn union_with(&mut self, other: &ChunkSet) {
        if other.len == self.len {
            for (a, b) in self.bits.iter_mut().zip(&other.bits) {
                *a |= b;
            }
        }
    }

    /// Drops the chunks `other` holds (a set of another length drops nothing).
    pub fn difference_with(&mut self, other: &ChunkSet) {
        if other.len == self.len {
            for (a, b) in self.bits.iter_mut().zip(&other.bits) {
                *a &= !b;
            }
        }
    }

    /// Adds 1 to `counts[i]` for each chunk `i` held both here and in `mask` (nothing when
    /// their lengths differ; `counts` has an entry per chunk).
    pub fn count_into(&self, mask: &ChunkSet, counts: &mut [u32]) {
        if mask.len != self.len {
            return;
        }
        for (byte, (a, m)) in self.bits.iter().zip(&mask.bits).enumerate() {
            let mut both = a & m;
            while both != 0 {
                let bit = both.trailing_zeros() as usize;
                if let Some(c) = counts.get_mut(byte * 8 + bit) {
                    *c += 1;
                }
                both &= both - 1;
            }
        }
    }

    /// How many chunks both it and `other` hold (0 when their lengths differ).
    pub fn count_common(&self, other: &ChunkSet) -> u32 {
        if other.len != self.len {
            return 0;
        }
        self.bits
            .iter()
            .zip(&other.bits)
            .map(|(a, b)| (a & b).count_ones())
            .sum()
    }

    /// Marks chunk `i` not held; out-of-range indexes are ignored.
    pub fn remove(&mut self, i: u32) {
        if i < self.len {
            self.bits[(i / 8) as usize] &= !(1 << (i % 8));
        }
    }

    /// The wire form: `"all"` when full, else base64 of the bitmap.
    pub fn encode(&self) -> String {
        if self.is_full() {
            "all".into()
        } else {
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(&self.bits)
        }
    }

    /// Parses the wire form for a blob of `len` chunks (at most [`MAX_CHUNKS`]). Bits past
    /// `len` must be clear.
    pub fn decode(text: &str, len: u32) -> Result<Self, ProtoError> {
        check_len(len)?;
        if text == "all" {
            return Ok(Self::full(len));
        }
        let bits = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|e| ProtoError(format!("chunk set {text:?}: {e}")))?;
        if bits.len() != (len as usize).div_ceil(8) {
            return Err(ProtoError(format!(
                "chunk set of {} bytes for {len} chunks",
                bits.len()
            )));
        }
        let set = Self { len, bits };
        let tail = set.bits.last().copied().unwrap_or(0);
        if len % 8 != 0 && tail >> (len % 8) != 0 {
            return Err(ProtoError(format!(
                "chunk set {text:?} has bits past chunk {len}"
            )));
        }
        Ok(set)
    }
}

/// A malformed protocol message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tracker protocol: {0}")]
pub struct ProtoError(pub String);

/// What one peer holds of one blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobHave {
    pub digest: Digest,
    /// Chunk count of the blob (from its chunk manifest).
    pub chunks: u32,
    /// [`ChunkSet::encode`] of the chunks held and verified.
    pub have: String,
    /// [`ChunkSet::encode`] of the chunks being fetched now (not held yet), when any: other
    /// nodes count them when they pick the rarest chunks, so that nodes starting together do
    /// not all ask the registry side for the same ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetching: Option<String>,
}

impl BlobHave {
    pub fn new(digest: Digest, set: &ChunkSet) -> Self {
        Self {
            digest,
            chunks: set.len(),
            have: set.encode(),
            fetching: None,
        }
    }

    /// With `fetching` as the chunks being fetched (none: no field).
    pub fn with_fetching(mut self, fetching: &ChunkSet) -> Self {
        self.fetching = (fetching.count() > 0).then(|| fetching.encode());
        self
    }

    /// The decoded chunk set.
    pub fn set(&self) -> Result<ChunkSet, ProtoError> {
        ChunkSet::decode(&self.have, self.chunks)
    }

    /// The decoded set of chunks being fetched (empty when absent).
    pub fn fetching_set(&self) -> Result<ChunkSet, ProtoError> {
        decode_fetching(self.fetching.as_deref(), self.chunks)
    }
}

/// Refuses a declared chunk count past [`MAX_CHUNKS`] (network input: checked before the
/// bitmap is allocated).
fn check_len(len: u32) -> Result<(), ProtoError> {
    if len > MAX_CHUNKS {
        return Err(ProtoError(format!(
            "{len} chunks declared, at most {MAX_CHUNKS}"
        )));
    }
    Ok(())
}

fn decode_fetching(text: Option<&str>, chunks: u32) -> Result<ChunkSet, ProtoError> {
    check_len(chunks)?;
    match text {
        None => Ok(ChunkSet::empty(chunks)),
        Some(text) => ChunkSet::decode(text, chunks),
    }
}

/// A peer's upload side as it measured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadStats {
    /// Highest upload rate seen (bytes/s) or the configured limit, whichever is lower; 0 when
    /// not measured yet.
    pub capacity_bytes_per_sec: u64,
    /// Upload rate over the last few seconds (bytes/s).
    pub rate_bytes_per_sec: u64,
    /// Uploads being served now.
    pub active: u32,
    /// Most uploads served at once.
    pub max: u32,
}

/// `POST /v1/announce`: a peer's whole state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    /// Stable, unique node name.
    pub peer_id: String,
    /// Where the peer serves chunks.
    pub addr: SocketAddr,
    pub upload: UploadStats,
    /// Every blob the peer holds chunks of (complete and partial).
    pub blobs: Vec<BlobHave>,
}

/// The tracker's answer to an announce.
impl Announce {
    /// Whether it names a blob `taken` (the last announce a tracker took) does not: a
    /// download that just started. Such an announce is not held back by the tracker's
    /// pacing: the others' lists learn of the pull's first fetches and chunks through it
    /// (docs/simulator.md "Paced from the start").
    pub fn names_new_blob(&self, taken: &Announce) -> bool {
        taken.lacks_any(self.blobs.iter().map(|b| &b.digest))
    }

    /// Whether one of `digests` is a blob this announce does not name ([`names_new_blob`]
    /// of a round's digests alone; the simulator's client decides with it).
    ///
    /// [`names_new_blob`]: Announce::names_new_blob
    pub fn lacks_any<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> bool {
        let known: std::collections::HashSet<&Digest> =
            self.blobs.iter().map(|b| &b.digest).collect();
        digests.into_iter().any(|d| !known.contains(d))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceReply {
    /// Announce again at least this often (ms) to stay listed.
    pub interval_ms: u64,
}

/// `POST /v1/announce/delta`: a peer's state as changes since an announce the tracker
/// acknowledged (`base`), or whole (`base` absent). The tracker applies a delta only on top of
/// exactly `base`; when it does not have that state (it restarted, it missed an announce, the
/// peer expired), it answers [`DeltaReply::full_state_needed`] and changes nothing, and the
/// peer sends its whole state at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaAnnounce {
    /// Stable, unique node name.
    pub peer_id: String,
    /// Where the peer serves chunks (always sent: it replaces the one known).
    pub addr: SocketAddr,
    /// Always sent: it replaces the one known.
    pub upload: UploadStats,
    /// This announce's number, more than `base`; a node counts up from 1 each time it starts.
    pub seq: u64,
    /// The `seq` of the acknowledged announce these changes apply to; absent: `blobs` is the
    /// peer's whole state (as in [`Announce`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
    /// Blobs added or changed since `base` (whole entries), or every blob when whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<BlobHave>,
    /// Blobs listed at `base` and no longer held (only with `base`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<Digest>,
}

impl DeltaAnnounce {
    /// The whole state `now`, numbered `seq`.
    pub fn full(now: &Announce, seq: u64) -> Self {
        Self {
            peer_id: now.peer_id.clone(),
            addr: now.addr,
            upload: now.upload,
            seq,
            base: None,
            blobs: now.blobs.clone(),
            removed: Vec::new(),
        }
    }

    /// What to send, numbered `seq`, for the state `now` when the tracker acknowledged
    /// `acked` (its `seq` and state): the blobs added or changed and those gone; the whole
    /// state when nothing was acknowledged.
    pub fn between(acked: Option<&(u64, Announce)>, now: &Announce, seq: u64) -> Self {
        let Some((base, before)) = acked else {
            return Self::full(now, seq);
        };
        let old: std::collections::HashMap<&Digest, &BlobHave> =
            before.blobs.iter().map(|b| (&b.digest, b)).collect();
        let current: std::collections::HashSet<&Digest> =
            now.blobs.iter().map(|b| &b.digest).collect();
        let blobs = now
            .blobs
            .iter()
            .filter(|b| old.get(&b.digest) != Some(b))
            .cloned()
            .collect();
        let removed = before
            .blobs
            .iter()
            .filter(|b| !current.contains(&b.digest))
            .map(|b| b.digest.clone())
            .collect();
        Self {
            peer_id: now.peer_id.clone(),
            addr: now.addr,
            upload: now.upload,
            seq,
            base: Some(*base),
            blobs,
            removed,
        }
    }
}

/// The tracker's answer to a [`DeltaAnnounce`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaReply {
    /// Announce again at least this often (ms) to stay listed.
    pub interval_ms: u64,
    /// The tracker does not hold the state the delta's `base` names and applied nothing:
    /// send the whole state now.
    #[serde(default)]
    pub full_state_needed: bool,
    /// Send changes to this tracker at most this often (ms; 0: no limit). A busy tracker
    /// paces its nodes: the interval grows with the number of peers it tracks.
    #[serde(default)]
    pub min_interval_ms: u64,
    /// Ask this tracker for the peers of one blob at most this often (ms; 0: no limit).
    #[serde(default)]
    pub peer_list_interval_ms: u64,
}

/// One peer in a [`PeerList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    pub peer_id: String,
    pub addr: SocketAddr,
    /// Chunk count of the blob.
    pub chunks: u32,
    /// [`ChunkSet::encode`] of the chunks it holds.
    pub have: String,
    pub upload: UploadStats,
    /// [`ChunkSet::encode`] of the chunks it is fetching, when any (see [`BlobHave`]). A
    /// peer may be listed for these alone, holding nothing yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetching: Option<String>,
}

impl PeerEntry {
    /// The decoded chunk set.
    pub fn set(&self) -> Result<ChunkSet, ProtoError> {
        ChunkSet::decode(&self.have, self.chunks)
    }

    /// The decoded set of chunks being fetched (empty when absent).
    pub fn fetching_set(&self) -> Result<ChunkSet, ProtoError> {
        decode_fetching(self.fetching.as_deref(), self.chunks)
    }
}

/// `GET /v1/peers/<digest>`: peers with chunks of the blob, best first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerList {
    pub digest: Digest,
    pub peers: Vec<PeerEntry>,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_list_stands_for_the_pacing_and_for_a_starved_download_half_of_it() {
        let ms = Duration::from_millis;
        let pacing = ms(2500);
        assert!(reuse_kept_list(ms(0), pacing, false));
        assert!(reuse_kept_list(ms(2499), pacing, false));
        assert!(!reuse_kept_list(ms(2500), pacing, false));
        assert!(reuse_kept_list(ms(1249), pacing, true));
        assert!(!reuse_kept_list(ms(1250), pacing, true));
        // No pacing (up to 1,000 peers): nothing is reused.
        assert!(!reuse_kept_list(ms(0), Duration::ZERO, false));
        assert!(!reuse_kept_list(ms(0), Duration::ZERO, true));
    }

    #[test]
    fn chunk_set_round_trips() {
        for len in [0u32, 1, 7, 8, 9, 64, 1000] {
            let mut s = ChunkSet::empty(len);
            assert_eq!(ChunkSet::decode(&s.encode(), len).unwrap(), s);
            for i in (0..len).step_by(3) {
                s.insert(i);
            }
            let back = ChunkSet::decode(&s.encode(), len).unwrap();
            assert_eq!(back, s);
            assert_eq!(back.iter().count() as u32, len.div_ceil(3));
            let full = ChunkSet::full(len);
            assert_eq!(full.encode(), "all");
            assert!(ChunkSet::decode("all", len).unwrap().is_full());
        }
    }

    #[test]
    fn chunk_sets_unite_subtract_and_count() {
        let mut a = ChunkSet::empty(20);
        let mut b = ChunkSet::empty(20);
        for i in [0, 3, 9, 19] {
            a.insert(i);
        }
        for i in [3, 4, 19] {
            b.insert(i);
        }
        assert_eq!(a.count_common(&b), 2);
        a.union_with(&b);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![0, 3, 4, 9, 19]);
        assert_eq!(b.count_common(&a), 3);
        let mut c = a.clone();
        c.difference_with(&b);
        assert_eq!(c.iter().collect::<Vec<_>>(), vec![0, 9]);
        let mut counts = vec![0; 20];
        a.count_into(&c, &mut counts);
        b.count_into(&a, &mut counts);
        let counted: Vec<(usize, u32)> = counts
            .into_iter()
            .enumerate()
            .filter(|&(_, n)| n > 0)
            .collect();
        assert_eq!(counted, vec![(0, 1), (3, 1), (4, 1), (9, 1), (19, 1)]);
        c.remove(9);
        c.remove(99);
        assert_eq!(c.iter().collect::<Vec<_>>(), vec![0]);
        // Another length: nothing added, nothing counted.
        let other = ChunkSet::full(21);
        a.union_with(&other);
        a.difference_with(&other);
        assert_eq!(a.count(), 5);
        assert_eq!(other.count_common(&a), 0);
    }

    #[test]
    fn chunk_set_refuses_bad_input() {
        assert!(ChunkSet::decode("!!", 8).is_err());
        // Two bytes for 8 chunks.
        assert!(ChunkSet::decode("AAA", 8).is_err());
        // Bit 3 set for a 3-chunk blob.
        assert!(ChunkSet::decode("CA", 3).is_err());
        assert!(ChunkSet::decode("Bw", 3).unwrap().is_full());
        // Truncated: nothing for a 9-chunk blob.
        assert!(ChunkSet::decode("", 9).is_err());
    }

    /// Found by the property tests (`crate::props::tracker`): a peer list entry declaring
    /// `u32::MAX` chunks with `"all"` (or no `fetching`) made a 512 MiB bitmap, bit by bit.
    #[test]
    fn chunk_counts_past_the_cap_are_refused() {
        for len in [MAX_CHUNKS + 1, u32::MAX] {
            assert!(ChunkSet::decode("all", len).is_err(), "{len}");
            assert!(decode_fetching(None, len).is_err(), "{len}");
        }
        assert_eq!(
            ChunkSet::decode("all", MAX_CHUNKS).unwrap().count(),
            MAX_CHUNKS
        );
        assert_eq!(ChunkSet::full(13).encode(), "all");
        assert_eq!(ChunkSet::decode("/x8", 13).unwrap(), ChunkSet::full(13));
    }

    #[test]
    fn insert_and_contains_ignore_out_of_range() {
        let mut s = ChunkSet::empty(10);
        s.insert(10);
        s.insert(9);
        assert!(s.contains(9) && !s.contains(10));
        assert_eq!(s.count(), 1);
    }

    #[test]
    fn announce_round_trips_and_refuses_unknown_fields() {
        let d = Digest::of(b"x");
        let mut set = ChunkSet::empty(5);
        set.insert(2);
        let a = Announce {
            peer_id: "node-1".into(),
            addr: "10.0.0.1:7070".parse().unwrap(),
            upload: UploadStats {
                capacity_bytes_per_sec: 10,
                rate_bytes_per_sec: 5,
                active: 1,
                max: 8,
            },
            blobs: vec![BlobHave::new(d, &set)],
        };
        let json = serde_json::to_vec(&a).unwrap();
        let back: Announce = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.blobs[0].set().unwrap(), set);
        assert!(serde_json::from_slice::<Announce>(&json[..json.len() - 1]).is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["extra"] = 1.into();
        assert!(serde_json::from_value::<Announce>(v).is_err());
    }

    #[test]
    fn a_delta_holds_what_changed_since_the_acknowledged_state() {
        let (d1, d2, d3) = (Digest::of(b"1"), Digest::of(b"2"), Digest::of(b"3"));
        let mut part = ChunkSet::empty(8);
        part.insert(1);
        let state = |blobs: Vec<BlobHave>| Announce {
            peer_id: "n".into(),
            addr: "10.0.0.1:7070".parse().unwrap(),
            upload: UploadStats::default(),
            blobs,
        };
        let before = state(vec![
            BlobHave::new(d1.clone(), &ChunkSet::full(2)),
            BlobHave::new(d2.clone(), &part),
        ]);
        part.insert(2);
        let now = state(vec![
            BlobHave::new(d2.clone(), &part),
            BlobHave::new(d3.clone(), &ChunkSet::full(1)),
        ]);
        let full = DeltaAnnounce::between(None, &now, 1);
        assert_eq!((full.seq, full.base), (1, None));
        assert_eq!(full.blobs, now.blobs);
        assert!(full.removed.is_empty());
        let d = DeltaAnnounce::between(Some(&(4, before)), &now, 5);
        assert_eq!((d.seq, d.base), (5, Some(4)));
        assert_eq!(d.blobs, now.blobs, "d2 changed, d3 added");
        assert_eq!(d.removed, vec![d1]);
        let same = DeltaAnnounce::between(Some(&(5, now.clone())), &now, 6);
        assert!(same.blobs.is_empty() && same.removed.is_empty());
        // Nothing changed: a few dozen bytes, the fields left out.
        let json = serde_json::to_string(&same).unwrap();
        assert!(
            !json.contains("blobs") && !json.contains("removed"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<DeltaAnnounce>(&json).unwrap(), same);
    }
}
