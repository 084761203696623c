//! Super-seeding on the seeder's side (DESIGN "Swarm": the registry side sends each chunk about
//! once per swarm). Nodes ask the seeder only for chunks no other node holds or fetches, but
//! what they know comes from announces that take a second or so to reach them, so nodes that
//! start together may still ask for the same chunk. [`SuperSeed`] answers "not held" for a
//! chunk it began sending less than `defer` ago: the node asking picks another chunk, and by
//! the time the deferral ends the first node's announce says it fetches or holds that chunk,
//! so the others get it from there. After `defer` the chunk is served again (the first node
//! may be slow or gone; a node's own overdue rule decides when to come back).
//!
//! The rule is [`RecentSends`], pure (the time is an argument); [`SuperSeed`] is the
//! [`ChunkProvider`] in front of the seed cache that applies it.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_p2p::peer::{ChunkProvider, Held};
use shoal_p2p::Digest;

/// How long a chunk just sent is refused to other nodes: an announce interval (1 s; a node
/// announces a chunk it starts fetching within 50 ms), a peer refresh (0.2 s) and slack.
pub const DEFAULT_DEFER: Duration = Duration::from_secs(3);
/// Most sends remembered (the oldest are forgotten first).
const MAX_REMEMBERED: usize = 1 << 16;

/// The chunks sent in the last `defer`.
pub struct RecentSends {
    defer: Duration,
    sent: HashMap<(Digest, u64), Instant>,
    /// (sent at, chunk), oldest first.
    order: VecDeque<(Instant, (Digest, u64))>,
}

impl RecentSends {
    /// Remembers sends for `defer`.
    pub fn new(defer: Duration) -> Self {
        Self {
            defer,
            sent: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether the chunk of `digest` at `offset` may be sent at `now`: not when it was sent
    /// less than `defer` ago. Call [`RecentSends::sent`] when it is.
    pub fn may_send(&mut self, digest: &Digest, offset: u64, now: Instant) -> bool {
        self.expire(now);
        !self.sent.contains_key(&(digest.clone(), offset))
    }

    /// The chunk of `digest` at `offset` is being sent at `now`.
    pub fn sent(&mut self, digest: &Digest, offset: u64, now: Instant) {
        let key = (digest.clone(), offset);
        self.sent.insert(key.clone(), now);
        self.order.push_back((now, key));
        while self.order.len() > MAX_REMEMBERED {
            if let Some((at, key)) = self.order.pop_front() {
                self.forget(at, &key);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.defer {
                break;
            }
            if let Some((at, key)) = self.order.pop_front() {
                self.forget(at, &key);
            }
        }
    }

    /// Forgets `key`'s send at `at` (not a later one of the same chunk).
    fn forget(&mut self, at: Instant, key: &(Digest, u64)) {
        if self.sent.get(key) == Some(&at) {
            self.sent.remove(key);
        }
    }
}

/// A [`ChunkProvider`] that refuses chunks sent less than `defer` ago (see the module
/// documentation). Empty ranges (the chunk server's probes) pass through.
pub struct SuperSeed {
    inner: Arc<dyn ChunkProvider>,
    recent: Mutex<RecentSends>,
}

impl SuperSeed {
    /// `inner`, with chunks refused for `defer` after each send.
    pub fn new(inner: Arc<dyn ChunkProvider>, defer: Duration) -> Self {
        Self {
            inner,
            recent: Mutex::new(RecentSends::new(defer)),
        }
    }
}

impl ChunkProvider for SuperSeed {
    fn open(&self, digest: &Digest, range: Range<u64>) -> Option<Held> {
        if range.is_empty() {
            return self.inner.open(digest, range);
        }
        let now = Instant::now();
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if !recent.may_send(digest, range.start, now) {
                return None;
            }
        }
        let held = self.inner.open(digest, range.clone())?;
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.sent(digest, range.start, now);
        Some(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u8) -> Digest {
        Digest::of(&[i])
    }

    #[test]
    fn a_chunk_is_refused_for_the_deferral_after_it_is_sent_then_served_again() {
        let t0 = Instant::now();
        let mut r = RecentSends::new(Duration::from_secs(3));
        assert!(r.may_send(&digest(1), 0, t0));
        r.sent(&digest(1), 0, t0);
        assert!(!r.may_send(&digest(1), 0, t0 + Duration::from_millis(2999)));
        // Other chunks and other blobs are not affected.
        assert!(r.may_send(&digest(1), 1 << 20, t0));
        assert!(r.may_send(&digest(2), 0, t0));
        assert!(r.may_send(&digest(1), 0, t0 + Duration::from_secs(3)));
    }

    #[test]
    fn a_later_send_is_not_forgotten_with_the_earlier_one() {
        let t0 = Instant::now();
        let mut r = RecentSends::new(Duration::from_secs(3));
        r.sent(&digest(1), 0, t0);
        r.sent(&digest(1), 0, t0 + Duration::from_secs(2));
        assert!(!r.may_send(&digest(1), 0, t0 + Duration::from_secs(4)));
        assert!(r.may_send(&digest(1), 0, t0 + Duration::from_secs(5)));
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut r = RecentSends::new(Duration::from_secs(3));
        for i in 0..(MAX_REMEMBERED as u64 + 10) {
            r.sent(&digest(1), i, t0);
        }
        assert_eq!(r.order.len(), MAX_REMEMBERED);
        assert_eq!(r.sent.len(), MAX_REMEMBERED);
        assert!(r.may_send(&digest(1), 0, t0));
    }
}
