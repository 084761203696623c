//! The upload side's accounting: the node-wide bandwidth limit ([`TokenBucket`]), the upload
//! slots, and the measured upload rate and capacity ([`UploadMeter`]) that the node announces
//! to the tracker.

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
/// Tokens may go negative: a caller takes what it needs at once and waits out the debt, so
/// callers are served in the order they asked.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
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
            }),
        }
    }

    /// Waits until `n` bytes may be sent.
    pub(crate) async fn take(&self, n: u64) {
        let wait = {
            let mut s = lock(&self.state);
            let now = Instant::now();
            let refill = now.duration_since(s.last).as_secs_f64() * self.rate;
            s.tokens = (s.tokens + refill).min(self.burst);
            s.last = now;
            s.tokens -= n as f64;
            if s.tokens >= 0.0 {
                return;
            }
            Duration::from_secs_f64(-s.tokens / self.rate)
        };
        tokio::time::sleep(wait).await;
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
            bucket.take(64 << 10).await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "{:?}",
            start.elapsed()
        );
    }
}
