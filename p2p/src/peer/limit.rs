//! The upload side's accounting: the node-wide bandwidth limit ([`TokenBucket`]), the upload
//! slots, and the measured upload rate and capacity ([`UploadMeter`]) that the node announces
//! to the tracker.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::metrics::UploadMetrics;
use crate::tracker::UploadStats;

/// Smallest burst of the token bucket: one read of the chunk server.
const MIN_BURST: u64 = 64 << 10;

/// Locks `m`, carrying on with the data if a holder panicked (the counters stay usable).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A token bucket shared by every upload of one server, so its rate is the node's total.
/// Tokens may go negative: the upload served takes what it needs at once and the next one
/// waits out the debt.
///
/// Uploads are served oldest first ([`TokenBucket::take`]'s `upload`: a number that grows
/// with each upload): of the uploads asking for tokens, the oldest gets them, and a younger
/// one only while no older one asks. An upload whose receiver cannot take more stops asking
/// (its socket is full), so the younger ones get what it leaves: the link is never idle while
/// an upload is ready, and the oldest upload goes at the link's rate when its receiver can
/// take it. When the rate is the link's, a chunk then leaves whole after one chunk time
/// instead of all of them at once after many (docs/simulator.md "Two what-ifs").
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<BucketState>,
    /// Woken when the oldest asking upload changes.
    turn: tokio::sync::Notify,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
    /// The uploads asking for tokens now.
    asking: BTreeSet<u64>,
}

impl TokenBucket {
    /// A full bucket of `bytes_per_sec` (> 0) with a burst of 1/10 s worth (at least 64 KiB).
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = (bytes_per_sec / 10).max(MIN_BURST) as f64;
        Self {
            rate,
            burst,
            state: Mutex::new(BucketState {
                tokens: burst,
                last: Instant::now(),
                asking: BTreeSet::new(),
            }),
            turn: tokio::sync::Notify::new(),
        }
    }

    /// Waits until `n` bytes of upload number `upload` may be sent: until it is the oldest
    /// upload asking and the bucket is out of debt.
    pub(crate) async fn take(&self, n: u64, upload: u64) {
        let _asking = Asking::new(self, upload);
        loop {
            let turn = self.turn.notified();
            tokio::pin!(turn);
            // Registered before the state is read, so no wake-up in between is lost.
            turn.as_mut().enable();
            let wait = {
                let mut s = lock(&self.state);
                let now = Instant::now();
                let refill = now.duration_since(s.last).as_secs_f64() * self.rate;
                s.tokens = (s.tokens + refill).min(self.burst);
                s.last = now;
                if s.asking.first() != Some(&upload) {
                    None
                } else if s.tokens >= 0.0 {
                    s.tokens -= n as f64;
                    return; // `_asking` leaves the set and wakes the next oldest
                } else {
                    Some(Duration::from_secs_f64(-s.tokens / self.rate))
                }
            };
            match wait {
                // The oldest: out of debt after `wait` (or an older one arrived).
                Some(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = turn => {}
                    }
                }
                None => turn.await,
            }
        }
    }
}

/// An upload asking a [`TokenBucket`] for tokens; leaves the set when dropped (served, or the
/// upload went away) and wakes the others, one of which is now the oldest.
struct Asking<'a> {
    bucket: &'a TokenBucket,
    upload: u64,
}

impl<'a> Asking<'a> {
    fn new(bucket: &'a TokenBucket, upload: u64) -> Self {
        let oldest = {
            let mut s = lock(&bucket.state);
            s.asking.insert(upload);
            s.asking.first() == Some(&upload)
        };
        if oldest {
            // It may have overtaken one waiting out the debt.
            bucket.turn.notify_waiters();
        }
        Self { bucket, upload }
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        lock(&self.bucket.state).asking.remove(&self.upload);
        self.bucket.turn.notify_waiters();
    }
}

/// Width of one slot of the rate window.
const SLOT: Duration = Duration::from_millis(100);
/// Slots in one second (the window of the capacity measurement).
const SLOTS_PER_SEC: u64 = 10;
/// Slots in the window of the current rate (3 s).
const RATE_SLOTS: u64 = 30;
/// Ring size: more than [`RATE_SLOTS`] so that no summed slot is overwritten.
const RING: usize = 32;

/// Bytes sent per 100 ms slot over the last few seconds, and the best 1-second sum seen.
#[derive(Debug)]
struct RateWindow {
    start: Instant,
    ring: [u64; RING],
    /// Index (since `start`) of the newest slot written or cleared.
    newest: u64,
    /// Highest byte count of any 1-second window seen.
    peak: u64,
}

impl RateWindow {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            ring: [0; RING],
            newest: 0,
            peak: 0,
        }
    }

    fn slot_of(&self, now: Instant) -> u64 {
        (now.duration_since(self.start).as_nanos() / SLOT.as_nanos()) as u64
    }

    /// Sum of the `n` (<= [`RATE_SLOTS`]) slots ending at `end`, inclusive.
    fn sum(&self, end: u64, n: u64) -> u64 {
        (end.saturating_sub(n - 1)..=end)
            .map(|i| self.ring[(i % RING as u64) as usize])
            .sum()
    }

    /// Moves the window to slot `now`: the newest slot is complete, so the 1-second window
    /// ending there counts for the peak (later windows without traffic cannot beat it), and
    /// the slots up to `now` are cleared.
    fn advance(&mut self, now: u64) {
        if now <= self.newest {
            return;
        }
        self.peak = self.peak.max(self.sum(self.newest, SLOTS_PER_SEC));
        let first = (self.newest + 1).max(now.saturating_sub(RING as u64 - 1));
        for i in first..=now {
            self.ring[(i % RING as u64) as usize] = 0;
        }
        self.newest = now;
    }

    fn record(&mut self, n: u64) {
        let now = self.slot_of(Instant::now());
        self.advance(now);
        let slot = &mut self.ring[(now % RING as u64) as usize];
        *slot = slot.saturating_add(n);
    }

    /// (bytes/s over the last ~3 s, highest bytes/s over 1 s seen).
    fn rates(&mut self) -> (u64, u64) {
        let at = Instant::now();
        let now = self.slot_of(at);
        self.advance(now);
        // The second ending now counts as well, partial slot included.
        self.peak = self.peak.max(self.sum(now, SLOTS_PER_SEC));
        let elapsed = at.duration_since(self.start).as_secs_f64();
        let window_start = now.saturating_sub(RATE_SLOTS - 1) as f64 * SLOT.as_secs_f64();
        let window = (elapsed - window_start).max(SLOT.as_secs_f64());
        let rate = self.sum(now, RATE_SLOTS) as f64 / window;
        (rate as u64, self.peak)
    }
}

/// The upload side of a chunk server, shared with its router: slots in use, bytes sent, and
/// the node's measured upload rate and capacity. Cloning shares it.
#[derive(Clone, Debug)]
pub struct UploadMeter {
    inner: Arc<MeterInner>,
}

#[derive(Debug)]
struct MeterInner {
    max: usize,
    limit: u64,
    active: AtomicUsize,
    window: Mutex<RateWindow>,
    metrics: UploadMetrics,
}

impl UploadMeter {
    /// A meter of `max` slots (at least 1) for a server limited to `limit` bytes/s (0 =
    /// unlimited).
    pub(crate) fn new(max: usize, limit: u64, metrics: UploadMetrics) -> Self {
        Self {
            inner: Arc::new(MeterInner {
                max: max.max(1),
                limit,
                active: AtomicUsize::new(0),
                window: Mutex::new(RateWindow::new()),
                metrics,
            }),
        }
    }

    /// The upload side as announced to the tracker: the rate over the last ~3 s, the highest
    /// 1-second rate seen (capped by the configured limit; the limit itself before anything
    /// was measured), and the slots in use out of the maximum.
    pub fn stats(&self) -> UploadStats {
        let (rate, peak) = lock(&self.inner.window).rates();
        let limit = self.inner.limit;
        let capacity = match (peak, limit) {
            (0, limit) => limit,
            (peak, 0) => peak,
            (peak, limit) => peak.min(limit),
        };
        UploadStats {
            capacity_bytes_per_sec: capacity,
            rate_bytes_per_sec: rate,
            active: u32::try_from(self.inner.active.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
            max: u32::try_from(self.inner.max).unwrap_or(u32::MAX),
        }
    }

    /// Takes an upload slot, or `None` when all are in use (never waits).
    pub(crate) fn try_acquire(&self) -> Option<SlotGuard> {
        let taken = self
            .inner
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.inner.max).then_some(n + 1)
            });
        taken.ok().map(|_| {
            self.inner.metrics.active.inc();
            SlotGuard {
                meter: self.clone(),
            }
        })
    }

    /// Counts `n` bytes sent.
    pub(crate) fn sent(&self, n: u64) {
        self.inner.metrics.bytes.inc_by(n);
        lock(&self.inner.window).record(n);
    }
}

/// One upload slot, given back when dropped (the body was sent or the client went away).
#[derive(Debug)]
pub(crate) struct SlotGuard {
    meter: UploadMeter,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.meter.inner.active.fetch_sub(1, Ordering::AcqRel);
        self.meter.inner.metrics.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_refused_past_the_maximum_and_given_back() {
        let metrics = UploadMetrics::default();
        let meter = UploadMeter::new(2, 0, metrics.clone());
        let a = meter.try_acquire().unwrap();
        let _b = meter.try_acquire().unwrap();
        assert!(meter.try_acquire().is_none());
        assert_eq!(meter.stats().active, 2);
        assert_eq!(metrics.active.get(), 2);
        drop(a);
        assert!(meter.try_acquire().is_some());
        assert_eq!(meter.stats().max, 2);
    }

    #[test]
    fn stats_before_any_upload() {
        let unlimited = UploadMeter::new(4, 0, UploadMetrics::default()).stats();
        assert_eq!(unlimited.capacity_bytes_per_sec, 0);
        assert_eq!(unlimited.rate_bytes_per_sec, 0);
        let limited = UploadMeter::new(4, 1000, UploadMetrics::default()).stats();
        assert_eq!(limited.capacity_bytes_per_sec, 1000);
    }

    #[test]
    fn rate_window_sums_recent_slots_and_keeps_the_peak() {
        let mut w = RateWindow::new();
        w.advance(5);
        w.ring[5] = 1000;
        w.advance(6);
        w.ring[6] = 500;
        w.advance(20);
        assert_eq!(w.peak, 1500);
        // Far later: the rate window forgot the old slots, the peak stays.
        w.advance(200);
        assert_eq!(w.sum(200, RATE_SLOTS), 0);
        assert_eq!(w.peak, 1500);
    }

    #[test]
    fn capacity_is_capped_by_the_limit() {
        let meter = UploadMeter::new(1, 100, UploadMetrics::default());
        meter.sent(1 << 20);
        let s = meter.stats();
        assert_eq!(s.capacity_bytes_per_sec, 100);
        assert!(s.rate_bytes_per_sec > 0);
    }

    #[tokio::test]
    async fn token_bucket_paces_past_its_burst() {
        // 1 MiB/s with a 104 KiB burst: 400 KiB more than the burst takes ~0.3 s.
        let bucket = TokenBucket::new(1 << 20);
        let start = Instant::now();
        for _ in 0..8 {
            bucket.take(64 << 10, 0).await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "{:?}",
            start.elapsed()
        );
    }

    /// Bytes upload `number` takes from `bucket` in 64 KiB steps until `until`, sleeping
    /// `pause` after each step (a receiver that cannot take more).
    async fn drain(bucket: Arc<TokenBucket>, number: u64, until: Instant, pause: Duration) -> u64 {
        let mut got = 0;
        while Instant::now() < until {
            bucket.take(64 << 10, number).await;
            got += 64 << 10;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_oldest_upload_asking_gets_the_tokens() {
        // 4 MiB/s: in 0.5 s, about 1.4 MiB past the debt between an older and a younger
        // upload that both always ask. The older gets nearly all of it.
        let bucket = Arc::new(TokenBucket::new(4 << 20));
        // The burst spent (spare tokens go to whoever asks: nothing older is waiting).
        bucket.take(1 << 20, 0).await;
        let until = Instant::now() + Duration::from_millis(500);
        let young = tokio::spawn(drain(bucket.clone(), 8, until, Duration::ZERO));
        let old = tokio::spawn(drain(bucket.clone(), 7, until, Duration::ZERO));
        let (old, young) = (old.await.unwrap(), young.await.unwrap());
        assert!(old >= 4 * young, "older {old} B, younger {young} B");
        assert!(old + young <= 2 << 20, "paced: {} B", old + young);
        assert!(lock(&bucket.state).asking.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_oldest_cannot_take_goes_to_the_younger() {
        // The older upload's receiver takes 64 KiB per 50 ms (1.25 MiB/s of 4 MiB/s): the
        // younger gets the rest, and the two together keep the rate.
        let bucket = Arc::new(TokenBucket::new(4 << 20));
        let until = Instant::now() + Duration::from_millis(600);
        let old = tokio::spawn(drain(bucket.clone(), 1, until, Duration::from_millis(50)));
        let young = tokio::spawn(drain(bucket.clone(), 2, until, Duration::ZERO));
        let (old, young) = (old.await.unwrap(), young.await.unwrap());
        assert!(young >= old, "older {old} B, younger {young} B");
        // 0.6 s at 4 MiB/s plus the burst: about 2.8 MiB in all; well over what the older
        // alone took.
        assert!(old + young >= 2 << 20, "{} B", old + young);
    }

    #[tokio::test]
    async fn an_upload_that_goes_away_while_asking_leaves_no_trace() {
        let bucket = Arc::new(TokenBucket::new(1 << 20));
        // Into debt, so the next asker waits.
        bucket.take(1 << 20, 1).await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), bucket.take(64, 2)).await;
        assert!(waiting.is_err(), "in debt: it waits");
        assert!(lock(&bucket.state).asking.is_empty());
    }
}
