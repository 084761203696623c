//! Super-seeding on the seeder's side (DESIGN "Swarm": the registry side sends each chunk about
//! once per swarm). Nodes ask the seeder only for chunks no other node holds or fetches, but
//! what they know comes from announces that take a second or so to reach them, so nodes that
//! start together may still ask for the same chunk. [`SuperSeed`] answers "not held" for a
//! chunk it began sending less than `defer` ago: the node asking picks another chunk, and by
//! the time the deferral ends the first node's announce says it fetches or holds that chunk,
//! so the others get it from there. While that first send is still going (up to
//! [`IN_FLIGHT_HOLD`] from its start), and for [`AFTER_END`] plus half the send's time once
//! it has ended whole (its last bytes and the first node's have line and announce on their
//! way), it is refused too: a send can take as long as a deferral when many share the
//! seeder's link (16 chunks at once on a 30 Mbit/s link: 4.7 s for 1 MiB, four times that
//! for shoal's default 4 MiB), and sending the chunk again then is what made the seeder send
//! 1.12 times the image on the emulated cluster (with the deferral at 3 s).
//! After that the chunk is served again (the first node may be slow or gone; a node's own
//! overdue rule decides when to come back), and at once when the send failed and no other
//! send of it is going, even within the deferral: its receiver did not get the chunk (it
//! died or went away mid-send), so no node holds it from that send. Held for the rest of the
//! deferral, such a chunk was missing from the whole swarm meanwhile: in the simulator,
//! 1,000 nodes of which 5% die mid-pull finished 9% later than with every node alive, the
//! registry side's last byte 1.8 s after the bound (docs/simulator.md "The busy back-off").
//! A receiver can also die after a whole send, before any node took the chunk from it. So
//! within the deferral, once the hold after a whole send is over, the seeder asks its
//! tracker ([`LostCheck`], `Tracker::lost`) and, from two announce intervals after the
//! hold, serves the chunk again when no peer heard from within the last two intervals has
//! announced it: a live receiver has announced it by then, a dead one has stopped
//! announcing (the tracker drops it only 5 s after its last announce). Without this, in two
//! of three simulated runs of 5,000 nodes of which 5% die, every node waited out the
//! deferral for one such chunk: 1.25x and 1.24x the chunked bound at the median instead of
//! 1.18x (docs/simulator.md "The seeder's lost chunks").
//!
//! The rule is [`RecentSends`], pure (the time is an argument); [`SuperSeed`] is the
//! [`ChunkProvider`] in front of the seed cache that applies it.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_p2p::peer::{ChunkProvider, Held};
use shoal_p2p::Digest;

/// How long a chunk just sent is refused to other nodes: long enough for the others to
/// learn who has it. In a small swarm that is an announce interval (1 s; a node announces a
/// chunk it starts fetching within 50 ms) and a peer refresh; in a large one a node follows
/// at most 16 others' have streams and sees a sample of the holders in its peer lists
/// (paced by the tracker past 1,000 nodes), and a chunk stays rare for longer where some
/// nodes are slow. At 3 s the simulator's 1,000 nodes of three speeds (1 Gbit/s, a half, a
/// quarter) had the seeder send 1.26 times the image (chunks asked again by nodes that knew
/// no holder yet); at 6 s, 1.00 times, with the same pull times (docs/simulator.md).
pub const DEFAULT_DEFER: Duration = Duration::from_secs(6);
/// A send still going holds its chunk for at most this long from its start (or the
/// deferral, if longer): past it the first receiver may have stalled.
pub const IN_FLIGHT_HOLD: Duration = Duration::from_secs(15);
/// How long a chunk sent whole is still refused after its last byte was handed to the
/// connection: the receiver's have line (at once) and announce (within 200 ms) reach the
/// others within a peer refresh. Plus [`AFTER_END_SHARE`] of the send's own time: the last
/// bytes handed over were still in the kernel's buffers (up to TCP_NOTSENT_LOWAT unsent plus
/// what hyper, TLS and the link's queue hold: a third of a 1 MiB chunk or more), and arrive
/// that much later on a slow flow (on the emulated cluster at 30 Mbit/s, with a quarter of
/// the send's time, second copies were still asked for 3-4 s after the seeder's last byte
/// and before the first copy had arrived).
pub const AFTER_END: Duration = Duration::from_secs(1);
/// The share of a send's time added to [`AFTER_END`].
pub const AFTER_END_SHARE: f64 = 0.5;
/// Most chunks remembered (the oldest are forgotten first).
const MAX_REMEMBERED: usize = 1 << 16;

/// What is remembered of a chunk's sends.
#[derive(Clone, Copy, Debug)]
struct Sends {
    /// When the last send began.
    began: Instant,
    /// Sends still going.
    going: u32,
    /// Until when the last send that ended whole holds the chunk.
    held_until: Option<Instant>,
    /// The last send to end failed and none is going: nobody got the chunk from it.
    failed: bool,
    /// When this was last touched (its place in the order).
    touched: Instant,
}

/// The chunks sent lately and the sends still going.
pub struct RecentSends {
    defer: Duration,
    sends: HashMap<(Digest, u64), Sends>,
    /// (touched at, chunk), oldest first; an entry is forgotten once its last touch is
    /// older than the longest hold and no send of it is going.
    order: VecDeque<(Instant, (Digest, u64))>,
}

impl RecentSends {
    /// Refuses chunks for `defer` after each send begins (and see the module documentation).
    pub fn new(defer: Duration) -> Self {
        Self {
            defer,
            sends: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether the chunk of `digest` at `offset` may be sent at `now`: not when a send of it
    /// began less than `defer` ago (unless it failed and none is going, or `lost` says its
    /// receiver is gone), nor while one is going (less than [`IN_FLIGHT_HOLD`] from its
    /// start), nor within [`AFTER_END`] plus [`AFTER_END_SHARE`] of its time after one
    /// ended whole. Within the deferral, once no send is going and the hold after the last
    /// whole send is over, `lost(until)` is asked (`until`: that hold's end) whether any node
    /// still holds the chunk; it is sent again when none does. Call [`RecentSends::sent`]
    /// when it is.
    pub fn may_send(
        &mut self,
        digest: &Digest,
        offset: u64,
        now: Instant,
        lost: impl FnOnce(Instant) -> bool,
    ) -> bool {
        self.expire(now);
        let Some(s) = self.sends.get(&(digest.clone(), offset)) else {
            return true;
        };
        let since = now.saturating_duration_since(s.began);
        if since < self.defer && !s.failed {
            return match s.held_until {
                Some(until) if s.going == 0 && now >= until => lost(until),
                _ => false,
            };
        }
        if s.going > 0 && since < IN_FLIGHT_HOLD.max(self.defer) {
            return false;
        }
        s.held_until.is_none_or(|until| now >= until)
    }

    /// The chunk of `digest` at `offset` is being sent from `now`. Call
    /// [`RecentSends::ended`] when that send ends.
    pub fn sent(&mut self, digest: &Digest, offset: u64, now: Instant) {
        let key = (digest.clone(), offset);
        let s = self.sends.entry(key.clone()).or_insert(Sends {
            began: now,
            going: 0,
            held_until: None,
            failed: false,
            touched: now,
        });
        s.began = now;
        s.failed = false;
        s.going += 1;
        s.touched = now;
        self.touch(now, key);
    }

    /// A send of the chunk of `digest` at `offset` ended at `now`: `whole` (every byte
    /// handed to the connection) or not.
    pub fn ended(&mut self, digest: &Digest, offset: u64, now: Instant, whole: bool) {
        let key = (digest.clone(), offset);
        let Some(s) = self.sends.get_mut(&key) else {
            return;
        };
        s.going = s.going.saturating_sub(1);
        s.failed = !whole && s.going == 0;
        if whole {
            let took = now.saturating_duration_since(s.began);
            s.held_until = Some(now + AFTER_END + took.mul_f64(AFTER_END_SHARE));
        }
        s.touched = now;
        self.touch(now, key);
    }

    fn touch(&mut self, now: Instant, key: (Digest, u64)) {
        self.order.push_back((now, key));
        while self.order.len() > MAX_REMEMBERED {
            if let Some((at, key)) = self.order.pop_front() {
                if self.sends.get(&key).is_some_and(|s| s.touched == at) {
                    self.sends.remove(&key);
                }
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        // Past a hold after an end too: AFTER_END plus a share of a send of at most the
        // in-flight hold.
        let keep = IN_FLIGHT_HOLD.max(self.defer).max(AFTER_END) * 2;
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < keep {
                break;
            }
            if let Some((at, key)) = self.order.pop_front() {
                // Forgotten only at its last touch; one still going is touched again when
                // it ends.
                if self
                    .sends
                    .get(&key)
                    .is_some_and(|s| s.touched == at && s.going == 0)
                {
                    self.sends.remove(&key);
                }
            }
        }
    }

    /// Chunks remembered.
    pub fn len(&self) -> usize {
        self.sends.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }
}

/// A [`ChunkProvider`] that refuses chunks sent lately or being sent (see the module
/// documentation). Empty ranges (the chunk server's probes) pass through.
pub struct SuperSeed {
    inner: Arc<dyn ChunkProvider>,
    recent: Mutex<RecentSends>,
    lost: LostCheck,
}

/// Whether the chunk of a blob at a byte offset, sent whole, is held by no live node any
/// more: `(digest, offset, since, now)`, `since` the end of the hold after that send (see
/// [`RecentSends::may_send`]). The registry extension asks its tracker
/// ([`crate::tracker::Tracker::lost`]).
pub type LostCheck = Box<dyn Fn(&Digest, u64, Instant, Instant) -> bool + Send + Sync>;

impl SuperSeed {
    /// `inner`, with chunks refused for `defer` after each send begins, while it goes on,
    /// and a moment after it ended; but a chunk sent whole is served again within the
    /// deferral when `lost` says no live node holds it (its receiver died before passing it
    /// on).
    pub fn new(inner: Arc<dyn ChunkProvider>, defer: Duration, lost: LostCheck) -> Self {
        Self {
            inner,
            recent: Mutex::new(RecentSends::new(defer)),
            lost,
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentSends> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ChunkProvider for SuperSeed {
    fn open(&self, digest: &Digest, range: Range<u64>) -> Option<Held> {
        if range.is_empty() {
            return self.inner.open(digest, range);
        }
        let now = Instant::now();
        let lost = |since| (self.lost)(digest, range.start, since, now);
        if !self.recent().may_send(digest, range.start, now, lost) {
            return None;
        }
        let held = self.inner.open(digest, range.clone())?;
        self.recent().sent(digest, range.start, now);
        Some(held)
    }

    fn ended(&self, digest: &Digest, range: Range<u64>, whole: bool) {
        if !range.is_empty() {
            self.recent()
                .ended(digest, range.start, Instant::now(), whole);
        }
        self.inner.ended(digest, range, whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No receiver is ever lost.
    fn never(_: Instant) -> bool {
        false
    }

    fn digest(i: u8) -> Digest {
        Digest::of(&[i])
    }

    #[test]
    fn a_chunk_is_refused_for_the_deferral_after_it_is_sent_then_served_again() {
        let t0 = Instant::now();
        let mut r = RecentSends::new(Duration::from_secs(3));
        assert!(r.may_send(&digest(1), 0, t0, never));
        r.sent(&digest(1), 0, t0);
        assert!(!r.may_send(&digest(1), 0, t0 + Duration::from_millis(2999), never));
        // Other chunks and other blobs are not affected.
        assert!(r.may_send(&digest(1), 1 << 20, t0, never));
        assert!(r.may_send(&digest(2), 0, t0, never));
        r.ended(&digest(1), 0, t0 + Duration::from_millis(500), true);
        assert!(r.may_send(&digest(1), 0, t0 + Duration::from_secs(3), never));
    }

    #[test]
    fn a_send_still_going_holds_its_chunk_past_the_deferral_up_to_the_hold() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut r = RecentSends::new(Duration::from_secs(3));
        r.sent(&digest(1), 0, t0);
        assert!(!r.may_send(&digest(1), 0, at(3_000), never));
        assert!(!r.may_send(&digest(1), 0, at(14_999), never));
        // IN_FLIGHT_HOLD (15 s): served again though the first send is still going
        // (stalled).
        assert!(r.may_send(&digest(1), 0, at(15_000), never));
        // The default deferral, 6 s, and the same hold.
        let mut r = RecentSends::new(DEFAULT_DEFER);
        r.sent(&digest(1), 0, t0);
        assert!(!r.may_send(&digest(1), 0, at(5_999), never));
        assert!(!r.may_send(&digest(1), 0, at(14_999), never));
        assert!(r.may_send(&digest(1), 0, at(15_000), never));
        // A short send that ended whole: held for the deferral from its start.
        r.sent(&digest(2), 0, t0);
        r.ended(&digest(2), 0, at(500), true);
        assert!(!r.may_send(&digest(2), 0, at(5_999), never));
        assert!(r.may_send(&digest(2), 0, at(6_000), never));
    }

    #[test]
    fn a_chunk_sent_whole_is_held_a_moment_after_its_end_and_a_failed_send_not() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut r = RecentSends::new(Duration::from_secs(3));
        // A send of 4 s (16 at once on a 30 Mbit/s link) ends whole: refused until 1 s plus
        // half of 4 s after its end.
        r.sent(&digest(1), 0, t0);
        r.ended(&digest(1), 0, at(4_000), true);
        assert!(!r.may_send(&digest(1), 0, at(6_999), never));
        assert!(r.may_send(&digest(1), 0, at(7_000), never));
        // A send that fails after 4 s: served again at once.
        r.sent(&digest(2), 0, t0);
        r.ended(&digest(2), 0, at(4_000), false);
        assert!(r.may_send(&digest(2), 0, at(4_000), never));
        // Within the deferral too (its receiver died or went away): nobody holds it. The
        // next send holds it again.
        r.sent(&digest(4), 0, t0);
        r.ended(&digest(4), 0, at(500), false);
        assert!(r.may_send(&digest(4), 0, at(500), never));
        r.sent(&digest(4), 0, at(600));
        assert!(!r.may_send(&digest(4), 0, at(700), never));
        // Two sends at once: held while either goes.
        r.sent(&digest(3), 0, t0);
        r.sent(&digest(3), 0, at(3_000));
        r.ended(&digest(3), 0, at(6_500), false);
        assert!(!r.may_send(&digest(3), 0, at(7_000), never));
        r.ended(&digest(3), 0, at(7_000), false);
        assert!(r.may_send(&digest(3), 0, at(7_000), never));
    }

    #[test]
    fn within_the_deferral_a_chunk_sent_whole_is_sent_again_when_no_live_node_holds_it() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut r = RecentSends::new(DEFAULT_DEFER);
        r.sent(&digest(1), 0, t0);
        // Not asked while the send goes.
        let ask = |_: Instant| -> bool { panic!("asked while a send goes or holds") };
        assert!(!r.may_send(&digest(1), 0, at(400), ask));
        // Ended whole at 0.5 s: held until 0.5 + 1 + 0.25 s, and not asked meanwhile.
        r.ended(&digest(1), 0, at(500), true);
        assert!(!r.may_send(&digest(1), 0, at(1_749), ask));
        // Past the hold the tracker is asked, with the hold's end.
        let asked = std::cell::Cell::new(None);
        let held = |since| {
            asked.set(Some(since));
            false
        };
        assert!(!r.may_send(&digest(1), 0, at(1_750), held));
        assert_eq!(asked.get(), Some(at(1_750)));
        let gone = |since| {
            asked.set(Some(since));
            true
        };
        assert!(r.may_send(&digest(1), 0, at(3_000), gone));
        assert_eq!(asked.get(), Some(at(1_750)));
        // Sent again: held by that send as before.
        r.sent(&digest(1), 0, at(3_000));
        assert!(!r.may_send(&digest(1), 0, at(3_100), ask));
        // A chunk never sent goes without asking.
        assert!(r.may_send(&digest(2), 0, at(3_100), ask));
    }

    #[test]
    fn a_send_going_longer_than_the_memory_is_not_forgotten() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut r = RecentSends::new(Duration::from_secs(1));
        r.sent(&digest(1), 0, t0);
        // Other chunks come and go for 40 s, longer than the memory (twice the in-flight
        // hold); the first one's entry outlives its place in the order.
        for i in 1..80u64 {
            assert!(r.may_send(&digest(1), i << 20, at(i * 500), never));
            r.sent(&digest(1), i << 20, at(i * 500));
            r.ended(&digest(1), i << 20, at(i * 500 + 100), true);
        }
        assert!(!r.may_send(&digest(1), 0, at(14_999), never));
        // Still going after its hold (15 s): served again, and still remembered, so its end
        // holds it a moment.
        assert!(r.may_send(&digest(1), 0, at(39_999), never));
        // Ended whole after 40 s: held 1 s + 20 s.
        r.ended(&digest(1), 0, at(40_000), true);
        assert!(!r.may_send(&digest(1), 0, at(60_999), never));
        assert!(r.may_send(&digest(1), 0, at(61_000), never));
        // Everything old is forgotten.
        assert!(r.may_send(&digest(1), 0, at(200_000), never));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_later_send_is_not_forgotten_with_the_earlier_one() {
        let t0 = Instant::now();
        let mut r = RecentSends::new(Duration::from_secs(3));
        r.sent(&digest(1), 0, t0);
        r.sent(&digest(1), 0, t0 + Duration::from_secs(2));
        r.ended(&digest(1), 0, t0 + Duration::from_millis(2100), true);
        r.ended(&digest(1), 0, t0 + Duration::from_millis(2200), true);
        assert!(!r.may_send(&digest(1), 0, t0 + Duration::from_secs(4), never));
        assert!(r.may_send(&digest(1), 0, t0 + Duration::from_secs(5), never));
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut r = RecentSends::new(Duration::from_secs(3));
        for i in 0..(MAX_REMEMBERED as u64 + 10) {
            r.sent(&digest(1), i, t0);
        }
        assert_eq!(r.order.len(), MAX_REMEMBERED);
        assert_eq!(r.len(), MAX_REMEMBERED);
        assert!(r.may_send(&digest(1), 0, t0, never));
    }
}
