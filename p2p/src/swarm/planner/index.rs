//! The planner's indexes over its peers, kept up to date as peers change so that no decision
//! scans every peer: per chunk, which peers (not dropped) hold it and which nodes fetch it;
//! and the measured speeds, ordered, for "is any peer slow".

use std::cmp::Ordering;
use std::collections::BTreeSet;

use crate::tracker::ChunkSet;

/// A peer's place in the planner's slab (assigned in the order peers are first heard of).
pub(super) type PeerIdx = u32;

/// A set of peers per chunk: a bitmap over slab indexes (grown as far as its highest member),
/// and its size.
pub(super) struct PerChunk {
    bits: Vec<Vec<u64>>,
    count: Vec<u32>,
}

impl PerChunk {
    fn new(chunks: u32) -> Self {
        Self {
            bits: vec![Vec::new(); chunks as usize],
            count: vec![0; chunks as usize],
        }
    }

    /// How many peers chunk `i` has.
    pub(super) fn count(&self, i: u32) -> u32 {
        self.count[i as usize]
    }

    /// The peers of chunk `i`, by ascending slab index.
    pub(super) fn iter(&self, i: u32) -> impl Iterator<Item = PeerIdx> + '_ {
        self.bits[i as usize]
            .iter()
            .enumerate()
            .flat_map(|(k, &word)| SetBits {
                word,
                base: (k * 64) as PeerIdx,
            })
    }

    fn set(&mut self, i: u32, p: PeerIdx, on: bool) {
        let words = &mut self.bits[i as usize];
        let (k, bit) = ((p / 64) as usize, 1u64 << (p % 64));
        if on {
            if words.len() <= k {
                words.resize(k + 1, 0);
            }
            if words[k] & bit == 0 {
                words[k] |= bit;
                self.count[i as usize] += 1;
            }
        } else if words.get(k).is_some_and(|w| w & bit != 0) {
            words[k] &= !bit;
            self.count[i as usize] -= 1;
        }
    }
}

/// A small set of peers per chunk: a sorted list of slab indexes (for the fetchers: a node
/// fetches a few chunks at a time, so a chunk has few, and a bitmap would grow as far as the
/// highest slab index that ever fetched it).
pub(super) struct Sparse(Vec<Vec<PeerIdx>>);

impl Sparse {
    fn new(chunks: u32) -> Self {
        Self(vec![Vec::new(); chunks as usize])
    }

    /// How many peers chunk `i` has.
    pub(super) fn count(&self, i: u32) -> u32 {
        self.0[i as usize].len() as u32
    }

    /// The peers of chunk `i`, by ascending slab index.
    pub(super) fn iter(&self, i: u32) -> impl Iterator<Item = PeerIdx> + '_ {
        self.0[i as usize].iter().copied()
    }

    fn set(&mut self, i: u32, p: PeerIdx, on: bool) {
        let list = &mut self.0[i as usize];
        match (list.binary_search(&p), on) {
            (Err(k), true) => list.insert(k, p),
            (Ok(k), false) => {
                list.remove(k);
                if list.is_empty() {
                    *list = Vec::new();
                }
            }
            _ => {}
        }
    }
}

/// The set bits of one word, ascending.
struct SetBits {
    word: u64,
    base: PeerIdx,
}

impl Iterator for SetBits {
    type Item = PeerIdx;

    fn next(&mut self) -> Option<PeerIdx> {
        if self.word == 0 {
            return None;
        }
        let b = self.word.trailing_zeros();
        self.word &= self.word - 1;
        Some(self.base + b)
    }
}

/// What one peer contributes to the index: its held and fetching chunks, or nothing (a
/// dropped peer, or one not yet listed).
pub(super) type Listed<'a> = Option<(&'a ChunkSet, &'a ChunkSet)>;

/// Per chunk, the peers not dropped holding it (nodes and seeders apart) and the nodes
/// fetching it without holding it.
pub(super) struct Holders {
    pub(super) nodes: PerChunk,
    pub(super) seeders: PerChunk,
    pub(super) fetchers: Sparse,
}

impl Holders {
    pub(super) fn new(chunks: u32) -> Self {
        Self {
            nodes: PerChunk::new(chunks),
            seeders: PerChunk::new(chunks),
            fetchers: Sparse::new(chunks),
        }
    }

    /// Peer `p` (a seeder or not) went from `old` to `new`, differing at most in `chunks`.
    pub(super) fn update(
        &mut self,
        p: PeerIdx,
        seeder: bool,
        old: Listed,
        new: Listed,
        chunks: impl Iterator<Item = u32>,
    ) {
        let member = |s: Listed, i: u32| match s {
            None => (false, false),
            Some((have, fetching)) => {
                let held = have.contains(i);
                (held, !seeder && !held && fetching.contains(i))
            }
        };
        for i in chunks {
            let (held0, fetch0) = member(old, i);
            let (held1, fetch1) = member(new, i);
            if held0 != held1 {
                let holders = if seeder {
                    &mut self.seeders
                } else {
                    &mut self.nodes
                };
                holders.set(i, p, held1);
            }
            if fetch0 != fetch1 {
                self.fetchers.set(i, p, fetch1);
            }
        }
    }
}

/// A measured speed, ordered (NaN is never stored).
#[derive(Clone, Copy, PartialEq)]
struct Speed(f64);

impl Eq for Speed {}

impl PartialOrd for Speed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Speed {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The measured speeds of the peers not dropped, ordered, so the slowest is at hand.
#[derive(Default)]
pub(super) struct Speeds(BTreeSet<(Speed, PeerIdx)>);

impl Speeds {
    /// Peer `p`'s speed went from `old` to `new` (`None`: unmeasured or dropped).
    pub(super) fn update(&mut self, p: PeerIdx, old: Option<f64>, new: Option<f64>) {
        if let Some(s) = old.filter(|s| !s.is_nan()) {
            self.0.remove(&(Speed(s), p));
        }
        if let Some(s) = new.filter(|s| !s.is_nan()) {
            self.0.insert((Speed(s), p));
        }
    }

    /// The slowest speed measured.
    pub(super) fn min(&self) -> Option<f64> {
        self.0.first().map(|(s, _)| s.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: u32, chunks: &[u32]) -> ChunkSet {
        let mut s = ChunkSet::empty(n);
        for &i in chunks {
            s.insert(i);
        }
        s
    }

    #[test]
    fn holders_follow_updates_and_iterate_by_slab_index() {
        let n = 4;
        let mut h = Holders::new(n);
        let none = ChunkSet::empty(n);
        let (a, b) = (set(n, &[0, 1]), set(n, &[1, 2]));
        h.update(130, false, None, Some((&a, &b)), 0..n);
        h.update(3, false, None, Some((&b, &none)), 0..n);
        h.update(70, true, None, Some((&a, &none)), 0..n);
        assert_eq!(h.nodes.iter(1).collect::<Vec<_>>(), [3, 130]);
        assert_eq!(h.nodes.count(1), 2);
        assert_eq!(h.seeders.iter(0).collect::<Vec<_>>(), [70]);
        // Fetching a chunk it holds does not count.
        assert_eq!(h.fetchers.iter(2).collect::<Vec<_>>(), [130]);
        assert_eq!(h.fetchers.count(1), 0);
        // Peer 130 now holds 2 and fetches 3; then it is dropped.
        let (a2, b2) = (set(n, &[0, 1, 2]), set(n, &[3]));
        h.update(130, false, Some((&a, &b)), Some((&a2, &b2)), 0..n);
        assert_eq!(h.nodes.iter(2).collect::<Vec<_>>(), [3, 130]);
        assert_eq!(h.fetchers.count(2), 0);
        assert_eq!(h.fetchers.iter(3).collect::<Vec<_>>(), [130]);
        h.update(130, false, Some((&a2, &b2)), None, 0..n);
        assert_eq!(h.nodes.iter(1).collect::<Vec<_>>(), [3]);
        assert_eq!(h.nodes.count(0), 0);
        assert_eq!(h.fetchers.count(3), 0);
    }

    fn listed(s: &Option<(ChunkSet, ChunkSet)>) -> Listed<'_> {
        s.as_ref().map(|(a, b)| (a, b))
    }

    #[test]
    fn holders_match_a_scan_of_the_peers_after_random_updates() {
        let (n, peers) = (70, 150);
        let mut rng = fastrand::Rng::with_seed(5);
        let random = |rng: &mut fastrand::Rng| {
            let mut s = ChunkSet::empty(n);
            for i in 0..n {
                if rng.u8(..) < 60 {
                    s.insert(i);
                }
            }
            s
        };
        let mut h = Holders::new(n);
        // Per peer: seeder or not, and its sets (None: dropped or not listed).
        let mut state: Vec<(bool, Option<(ChunkSet, ChunkSet)>)> =
            (0..peers).map(|p| (p % 40 == 0, None)).collect();
        for _ in 0..2000 {
            let p = rng.u32(..peers);
            let (seeder, old) = &mut state[p as usize];
            let new = (rng.u8(..) > 20).then(|| (random(&mut rng), random(&mut rng)));
            h.update(p, *seeder, listed(old), listed(&new), 0..n);
            *old = new;
        }
        for i in 0..n {
            let scan = |f: &dyn Fn(bool, &ChunkSet, &ChunkSet) -> bool| -> Vec<PeerIdx> {
                (0..peers)
                    .filter(|&p| match &state[p as usize] {
                        (seeder, Some((have, fetching))) => f(*seeder, have, fetching),
                        _ => false,
                    })
                    .collect()
            };
            let nodes = scan(&|s, h, _| !s && h.contains(i));
            let seeders = scan(&|s, h, _| s && h.contains(i));
            let fetchers = scan(&|s, h, f| !s && !h.contains(i) && f.contains(i));
            assert_eq!(h.nodes.iter(i).collect::<Vec<_>>(), nodes);
            assert_eq!(h.nodes.count(i) as usize, nodes.len());
            assert_eq!(h.seeders.iter(i).collect::<Vec<_>>(), seeders);
            assert_eq!(h.seeders.count(i) as usize, seeders.len());
            assert_eq!(h.fetchers.iter(i).collect::<Vec<_>>(), fetchers);
            assert_eq!(h.fetchers.count(i) as usize, fetchers.len());
        }
    }

    #[test]
    fn speeds_keep_the_slowest() {
        let mut s = Speeds::default();
        s.update(0, None, Some(5.0));
        s.update(1, None, Some(2.0));
        s.update(2, None, Some(f64::NAN));
        assert_eq!(s.min(), Some(2.0));
        s.update(1, Some(2.0), Some(9.0));
        assert_eq!(s.min(), Some(5.0));
        s.update(0, Some(5.0), None);
        s.update(2, Some(f64::NAN), None);
        assert_eq!(s.min(), Some(9.0));
    }
}
