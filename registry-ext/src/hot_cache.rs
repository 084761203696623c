//! The hot cache (R-cache): chunks of small, often requested blobs kept in memory in front of
//! the seeder's disk reads, so the seed cache (the backing store) is not read on every request.
//!
//! - [`HotProvider`] wraps any [`ChunkProvider`] (the seed cache): a range the inner provider
//!   serves from a file of at most `max_blob_bytes` bytes (a "small" blob; the seed cache's
//!   files are whole blobs) is read once into memory and kept, up to `max_bytes` in total,
//!   when the policy admits it (a miss it would not keep is served from the file, costing
//!   what it costs without the cache); anything else passes through untouched. Chunks are immutable (content-addressed, served
//!   only from verified blobs), so nothing is ever invalidated.
//! - [`Policy`], the eviction policy: **LFU with aging and frequency-based admission** (a
//!   small cousin of TinyLFU). Every request bumps a frequency counter kept for resident and
//!   recently seen non-resident chunks; when room is needed the resident chunk with the
//!   lowest frequency goes first, the least recently used among equals; a chunk is admitted
//!   only if it is asked for at least as often as every chunk it would push out. All counts
//!   are halved every few accesses (aging), so yesterday's hot chunks make way for today's.
//!   Why this and not LRU: the seeder sees bursts of one-off requests (a big pull touching
//!   every chunk once) between requests of a few hot small blobs; LRU lets such a burst flush
//!   the hot set, LFU keeps it, and aging plus the recency tie-break keep LFU from holding on
//!   to stale favourites or starving newcomers. Why not full W-TinyLFU: its count-min sketch
//!   and window segment buy little at the few thousand entries a chunk cache holds; an exact
//!   bounded history is simpler to reason about and to test.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use shoal_p2p::peer::{ChunkProvider, Held};
use shoal_p2p::Digest;

use crate::metrics::HotCacheMetrics;

/// One cached range of one blob.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey {
    pub digest: Digest,
    pub start: u64,
    pub end: u64,
}

/// A resident chunk.
struct Resident {
    data: Bytes,
    /// Its key in `order`: (frequency, last access tick).
    freq: u32,
    tick: u64,
}

/// The eviction policy and the bytes it holds (not thread-safe; [`HotProvider`] locks it).
pub struct Policy {
    max_bytes: u64,
    bytes: u64,
    tick: u64,
    /// Accesses since the last aging.
    since_aging: u64,
    /// Access counts of resident and recently seen chunks (bounded, see `history_cap`).
    freq: HashMap<ChunkKey, u32>,
    resident: HashMap<ChunkKey, Resident>,
    /// Resident chunks, first out first: lowest frequency, then least recently used.
    order: BTreeSet<(u32, u64, ChunkKey)>,
}

/// Fewest accesses between two agings.
const MIN_AGING_PERIOD: u64 = 1024;
/// Fewest non-resident keys remembered.
const MIN_HISTORY: usize = 4096;

impl Policy {
    /// An empty cache of at most `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            bytes: 0,
            tick: 0,
            since_aging: 0,
            freq: HashMap::new(),
            resident: HashMap::new(),
            order: BTreeSet::new(),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Chunks held.
    pub fn len(&self) -> usize {
        self.resident.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.resident.is_empty()
    }

    /// Whether `key` is held (does not count as an access).
    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.resident.contains_key(key)
    }

    /// One request of `key`: counts it and returns the bytes if held.
    pub fn get(&mut self, key: &ChunkKey) -> Option<Bytes> {
        self.tick += 1;
        let f = self.freq.entry(key.clone()).or_insert(0);
        *f = f.saturating_add(1);
        let f = *f;
        let tick = self.tick;
        let found = self.resident.get_mut(key).map(|r| {
            self.order.remove(&(r.freq, r.tick, key.clone()));
            r.freq = f;
            r.tick = tick;
            self.order.insert((f, tick, key.clone()));
            r.data.clone()
        });
        self.since_aging += 1;
        if self.since_aging >= self.aging_period() || self.freq.len() > self.history_cap() {
            self.age();
        }
        found
    }

    /// Whether a chunk of `len` bytes for `key` would be admitted now ([`Policy::insert`]
    /// decides the same way), so a miss is read into memory only when it will be kept.
    pub fn admits(&self, key: &ChunkKey, len: u64) -> bool {
        self.victims(key, len).is_some()
    }

    /// The chunks `key` (of `len` bytes) would push out, least often requested first; `None`
    /// when it is not admitted (too large, already held, or only chunks asked for more often
    /// than it could make room). Removes nothing, so a refused admission changes nothing.
    fn victims(&self, key: &ChunkKey, len: u64) -> Option<Vec<ChunkKey>> {
        if len > self.max_bytes || self.resident.contains_key(key) {
            return None;
        }
        let f = self.freq.get(key).copied().unwrap_or(0);
        let mut room = self.max_bytes - self.bytes;
        let mut victims = Vec::new();
        for (vf, _, vk) in &self.order {
            if room >= len {
                break;
            }
            if *vf > f {
                return None;
            }
            room += self.resident[vk].data.len() as u64;
            victims.push(vk.clone());
        }
        (room >= len).then_some(victims)
    }

    /// Offers `data` for `key` after a miss ([`Policy::get`] counted the request). Admitted if
    /// it fits once chunks asked for no more often than it are pushed out; returns whether it
    /// was, and counts pushed-out chunks in `evicted`.
    pub fn insert(&mut self, key: ChunkKey, data: Bytes, evicted: &mut u64) -> bool {
        let len = data.len() as u64;
        let Some(victims) = self.victims(&key, len) else {
            return false;
        };
        let f = self.freq.get(&key).copied().unwrap_or(0);
        for v in victims {
            self.remove(&v);
            *evicted += 1;
        }
        self.bytes += len;
        self.order.insert((f, self.tick, key.clone()));
        self.resident.insert(
            key,
            Resident {
                data,
                freq: f,
                tick: self.tick,
            },
        );
        true
    }

    fn remove(&mut self, key: &ChunkKey) {
        if let Some(r) = self.resident.remove(key) {
            self.order.remove(&(r.freq, r.tick, key.clone()));
            self.bytes -= r.data.len() as u64;
        }
    }

    fn aging_period(&self) -> u64 {
        MIN_AGING_PERIOD.max(8 * self.resident.len() as u64)
    }

    fn history_cap(&self) -> usize {
        MIN_HISTORY.max(4 * self.resident.len())
    }

    /// Halves every count (until the history fits its bound); non-resident keys counted 0 are
    /// forgotten.
    fn age(&mut self) {
        self.since_aging = 0;
        loop {
            let resident = &self.resident;
            self.freq.retain(|k, f| {
                *f /= 2;
                *f > 0 || resident.contains_key(k)
            });
            if self.freq.len() <= self.history_cap() {
                break;
            }
        }
        self.order.clear();
        for (k, r) in self.resident.iter_mut() {
            r.freq = self.freq.get(k).copied().unwrap_or(0);
            self.order.insert((r.freq, r.tick, k.clone()));
        }
    }
}

/// A [`ChunkProvider`] with the hot cache in front of `inner`.
pub struct HotProvider {
    inner: Arc<dyn ChunkProvider>,
    max_blob_bytes: u64,
    policy: Mutex<Policy>,
    metrics: HotCacheMetrics,
}

impl HotProvider {
    /// Keeps chunks of blobs of at most `max_blob_bytes`, `max_bytes` in all.
    pub fn new(
        inner: Arc<dyn ChunkProvider>,
        max_bytes: u64,
        max_blob_bytes: u64,
        metrics: HotCacheMetrics,
    ) -> Self {
        Self {
            inner,
            max_blob_bytes,
            policy: Mutex::new(Policy::new(max_bytes)),
            metrics,
        }
    }

    fn policy(&self) -> std::sync::MutexGuard<'_, Policy> {
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, policy: &Policy) {
        self.metrics
            .bytes
            .set(i64::try_from(policy.bytes()).unwrap_or(i64::MAX));
        self.metrics
            .entries
            .set(i64::try_from(policy.len()).unwrap_or(i64::MAX));
    }
}

impl ChunkProvider for HotProvider {
    fn open(&self, digest: &Digest, range: Range<u64>) -> Option<Held> {
        if range.start >= range.end {
            // Empty ranges are the server's probes (see shoal_p2p::peer): not chunks.
            return self.inner.open(digest, range);
        }
        let key = ChunkKey {
            digest: digest.clone(),
            start: range.start,
            end: range.end,
        };
        {
            // A chunk held in memory (counted as a request of a small blob's chunk).
            let mut policy = self.policy();
            if policy.contains(&key) {
                if let Some(data) = policy.get(&key) {
                    self.metrics.hits.inc();
                    return Some(Held::Bytes(data));
                }
            }
        }
        let held = self.inner.open(digest, range)?;
        let Held::File { file, offset, len } = held else {
            return Some(held);
        };
        let small = file
            .metadata()
            .is_ok_and(|m| m.len() <= self.max_blob_bytes);
        if !small {
            self.metrics.bypassed.inc();
            return Some(Held::File { file, offset, len });
        }
        self.metrics.misses.inc();
        let admitted = {
            let mut policy = self.policy();
            policy.get(&key);
            policy.admits(&key, len)
        };
        if !admitted {
            // Not kept: served from the file, as without the cache.
            return Some(Held::File { file, offset, len });
        }
        let mut buf = vec![0u8; len as usize];
        if file.read_exact_at(&mut buf, offset).is_err() {
            // The server reads the file itself and reports what goes wrong.
            return Some(Held::File { file, offset, len });
        }
        let data = Bytes::from(buf);
        let mut policy = self.policy();
        let mut evicted = 0;
        policy.insert(key, data.clone(), &mut evicted);
        self.metrics.evictions.inc_by(evicted);
        self.publish(&policy);
        Some(Held::Bytes(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> ChunkKey {
        ChunkKey {
            digest: Digest::of(b"blob"),
            start: n * 100,
            end: n * 100 + 100,
        }
    }

    fn data() -> Bytes {
        Bytes::from(vec![7u8; 100])
    }

    /// A request: a hit, or a miss followed by the offer of the bytes (as the provider does).
    fn request(p: &mut Policy, n: u64) -> bool {
        if p.get(&key(n)).is_some() {
            return true;
        }
        p.insert(key(n), data(), &mut 0);
        false
    }

    /// A seed cache (the real on-disk `BlobCache`) holding a 300-byte and a 3000-byte blob.
    fn seed(dir: &std::path::Path) -> (shoal_p2p::cache::BlobCache, Vec<u8>, Vec<u8>) {
        let cache = shoal_p2p::cache::BlobCache::open(dir, 1 << 20).unwrap();
        let small: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        let large: Vec<u8> = (0..3000u32).map(|i| (i % 239) as u8).collect();
        for b in [&small, &large] {
            let mut w = cache.writer().unwrap();
            w.write(b).unwrap();
            w.finish(&Digest::of(b)).unwrap();
        }
        (cache, small, large)
    }

    fn bytes_of(held: Held) -> Vec<u8> {
        match held {
            Held::Bytes(b) => b.to_vec(),
            Held::File { file, offset, len } => {
                let mut buf = vec![0; len as usize];
                file.read_exact_at(&mut buf, offset).unwrap();
                buf
            }
        }
    }

    #[test]
    fn small_blobs_are_served_from_memory_after_the_first_read() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, small, large) = seed(dir.path());
        let metrics = HotCacheMetrics::default();
        let hot = HotProvider::new(Arc::new(cache.clone()), 1000, 1000, metrics.clone());
        let (ds, dl) = (Digest::of(&small), Digest::of(&large));
        // First read: from disk (a miss), kept.
        let first = hot.open(&ds, 100..200).unwrap();
        assert_eq!(bytes_of(first), &small[100..200]);
        assert_eq!((metrics.hits.get(), metrics.misses.get()), (0, 1));
        assert_eq!((metrics.bytes.get(), metrics.entries.get()), (100, 1));
        // The blob leaves the disk: the kept chunk is still served (from memory), others not.
        assert!(cache.remove(&ds));
        let again = hot.open(&ds, 100..200).expect("served from memory");
        assert!(matches!(again, Held::Bytes(_)));
        assert_eq!(bytes_of(again), &small[100..200]);
        assert_eq!(metrics.hits.get(), 1);
        assert!(hot.open(&ds, 0..100).is_none());
        // A large blob passes through as a file, never kept; empty probes pass through.
        let l = hot.open(&dl, 0..500).unwrap();
        assert!(matches!(l, Held::File { .. }));
        assert_eq!(bytes_of(l), &large[..500]);
        assert_eq!(metrics.bypassed.get(), 1);
        assert!(hot.open(&dl, 3000..3000).is_some());
        assert!(hot.open(&dl, 3001..3001).is_none());
        assert_eq!((metrics.hits.get(), metrics.misses.get()), (1, 1));
        assert_eq!(metrics.entries.get(), 1);
    }

    #[test]
    fn a_miss_that_would_not_be_kept_is_served_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, small, _) = seed(dir.path());
        let metrics = HotCacheMetrics::default();
        // Room for one 100-byte chunk.
        let hot = HotProvider::new(Arc::new(cache), 100, 1000, metrics.clone());
        let ds = Digest::of(&small);
        for _ in 0..3 {
            assert_eq!(bytes_of(hot.open(&ds, 0..100).unwrap()), &small[..100]);
        }
        assert_eq!((metrics.hits.get(), metrics.misses.get()), (2, 1));
        // Asked for once, another chunk would push out one asked for three times: not kept,
        // so not read into memory either.
        let once = hot.open(&ds, 100..200).unwrap();
        assert!(matches!(once, Held::File { .. }));
        assert_eq!(bytes_of(once), &small[100..200]);
        assert_eq!(metrics.misses.get(), 2);
        assert_eq!((metrics.entries.get(), metrics.evictions.get()), (1, 0));
        assert!(matches!(hot.open(&ds, 0..100).unwrap(), Held::Bytes(_)));
    }

    #[test]
    fn bytes_stay_within_the_bound() {
        let mut p = Policy::new(350);
        for n in 0..20 {
            request(&mut p, n);
            assert!(p.bytes() <= 350);
        }
        assert_eq!(p.len(), 3);
        assert!(!p.insert(key(99), Bytes::from(vec![0u8; 351]), &mut 0));
    }

    #[test]
    fn least_recently_used_goes_first_among_equals() {
        let mut p = Policy::new(300);
        for n in [1, 2, 3] {
            request(&mut p, n);
        }
        // 1, 2, 3 each asked once; 4 (asked once) pushes out 1, the least recently used.
        let mut evicted = 0;
        assert!(p.get(&key(4)).is_none());
        assert!(p.insert(key(4), data(), &mut evicted));
        assert_eq!(evicted, 1);
        assert!(!p.contains(&key(1)));
        assert!(p.contains(&key(2)) && p.contains(&key(3)) && p.contains(&key(4)));
    }

    #[test]
    fn a_hot_chunk_survives_a_scan_of_one_off_requests() {
        let mut p = Policy::new(300);
        for _ in 0..5 {
            request(&mut p, 1);
        }
        for n in 100..200 {
            request(&mut p, n);
        }
        assert!(
            p.contains(&key(1)),
            "the hot chunk was pushed out by the scan"
        );
        assert!(request(&mut p, 1));
    }

    #[test]
    fn a_chunk_asked_for_again_is_admitted_over_colder_ones() {
        let mut p = Policy::new(200);
        for _ in 0..3 {
            request(&mut p, 1);
            request(&mut p, 2);
        }
        // 3 asked once: refused (1 and 2 are asked more often).
        assert!(!request(&mut p, 3));
        assert!(!p.contains(&key(3)));
        // Asked often enough, it is remembered while not resident and gets in.
        for _ in 0..3 {
            request(&mut p, 3);
        }
        assert!(p.contains(&key(3)));
        assert!(request(&mut p, 3));
    }

    #[test]
    fn aging_lets_new_favourites_replace_old_ones() {
        let mut p = Policy::new(100);
        for _ in 0..50 {
            request(&mut p, 1);
        }
        assert!(p.contains(&key(1)));
        // 2 becomes popular and 1 is no longer asked for: after a few agings 2 takes its place.
        let mut admitted_after = None;
        for i in 0..20 * MIN_AGING_PERIOD {
            request(&mut p, 2);
            if p.contains(&key(2)) {
                admitted_after = Some(i);
                break;
            }
        }
        assert!(
            admitted_after.is_some(),
            "the old favourite was never replaced"
        );
        assert!(!p.contains(&key(1)));
    }

    #[test]
    fn the_history_of_non_resident_chunks_is_bounded() {
        let mut p = Policy::new(100);
        for n in 0..(4 * MIN_HISTORY as u64) {
            request(&mut p, n);
        }
        assert!(p.freq.len() <= MIN_HISTORY, "{}", p.freq.len());
        assert!(p.bytes() <= 100);
    }
}
