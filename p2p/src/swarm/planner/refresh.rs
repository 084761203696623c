//! How often a download asks the trackers for its blob's peers (pure; shoald's executor and
//! the simulator keep one each).
//!
//! A peer list tells a download two things: peers it did not know, and the chunks of peers it
//! has no have stream from. Once every node a list names is followed by a stream (its lines
//! are newer than the trackers' entries) and the list names nobody new, it told nothing, and
//! the next one is asked for twice as late, up to [`MAX_BACKOFF`] times the configured
//! `peer_refresh`; a list that tells something, or a stream ending, brings the interval back.
//! The lists are the largest answers the registry side sends besides chunks, on the link its
//! seeder sends on: on the emulated cluster (16 nodes, 4 layers, streams to every peer) they
//! were about 8% of what that link carried.
//!
//! A download that is starved ([`super::Planner::starved`]) asks for a fresh list, not the
//! one the trackers' client keeps under their pacing, at most once per [`FRESH_LIST_EVERY`]
//! whatever its refresh ([`PeerRefresh::fresh`]); the client makes one only once the list it
//! keeps is half the pacing old ([`crate::tracker::proto::reuse_kept_list`]).

use std::time::{Duration, Instant};

/// The longest interval, as a multiple of the configured one.
pub const MAX_BACKOFF: u32 = 8;
/// A peer list naming fewer nodes than this (seeders and the asking node not counted) is
/// short: the trackers knew few of the blob's nodes when they made it (a rollout just
/// started, or a tracker restarted), and the trackers' client does not reuse it under their
/// pacing ([`crate::tracker::HttpTrackers`]): the next refresh asks again.
pub const SHORT_LIST_NODES: usize = 8;
/// The least time between two fresh peer lists of one download
/// ([`crate::tracker::Tracker::fresh_peers`]): the default refresh
/// ([`crate::swarm::DEFAULT_PEER_REFRESH`]), so that a node with a faster one (a paced node's
/// [`crate::swarm::PACED_PEER_REFRESH`]) asks no more fresh lists than one with the default.
/// Simulated, 5,000 paced nodes starting at once asked 2.3 times the lists of unpaced ones
/// when a starved download's every refresh was fresh, and 1.42 times with this (84,338 and
/// 51,696 lists against 36,473) for the same pull times (docs/simulator.md, "A starved
/// download's fresh lists, one per 500 ms"); the trackers' client now also waits for the
/// kept list to be half the pacing old ([`crate::tracker::proto::reuse_kept_list`]: 32,814).
pub const FRESH_LIST_EVERY: Duration = crate::swarm::DEFAULT_PEER_REFRESH;
/// Slack for a clock's rounding when comparing with [`FRESH_LIST_EVERY`]: a download
/// refreshing exactly every [`FRESH_LIST_EVERY`] gets a fresh list at each refresh.
const FRESH_SLACK: Duration = Duration::from_millis(1);

/// The interval between one download's peer lists (see the module documentation).
#[derive(Clone, Debug)]
pub struct PeerRefresh {
    base: Duration,
    every: Duration,
    last_fresh: Option<Instant>,
}

impl PeerRefresh {
    /// Every `base` (shoald's `peer_refresh`) to begin with.
    pub fn new(base: Duration) -> Self {
        Self {
            base,
            every: base,
            last_fresh: None,
        }
    }

    /// Whether the refresh made at `now` asks for a fresh list: the download is `starved`
    /// and its last fresh list, if any, was asked [`FRESH_LIST_EVERY`] or more before.
    pub fn fresh(&mut self, starved: bool, now: Instant) -> bool {
        let due = self
            .last_fresh
            .is_none_or(|at| now.saturating_duration_since(at) + FRESH_SLACK >= FRESH_LIST_EVERY);
        if starved && due {
            self.last_fresh = Some(now);
        }
        starved && due
    }

    /// How long after the last list to ask again.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// A list arrived: `news` when it named a peer not known before or a node whose state no
    /// have stream gives.
    pub fn listed(&mut self, news: bool) {
        self.every = if news {
            self.base
        } else {
            (self.every * 2).min(self.base * MAX_BACKOFF)
        };
    }

    /// A have stream ended: that peer's state comes from the lists again.
    pub fn stream_ended(&mut self) {
        self.every = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_that_tell_nothing_back_off_to_the_cap_and_news_or_a_stream_ending_resets() {
        let base = Duration::from_millis(500);
        let mut r = PeerRefresh::new(base);
        assert_eq!(r.every(), base);
        let mut seen = Vec::new();
        for _ in 0..5 {
            r.listed(false);
            seen.push(r.every().as_millis());
        }
        assert_eq!(seen, [1000, 2000, 4000, 4000, 4000]);
        r.listed(true);
        assert_eq!(r.every(), base);
        r.listed(false);
        r.stream_ended();
        assert_eq!(r.every(), base);
    }

    #[test]
    fn a_starved_download_asks_a_fresh_list_at_most_once_per_fresh_list_every() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A paced node's 200 ms refresh: fresh at 0, 600, 1200 (not 200 or 400).
        let mut r = PeerRefresh::new(Duration::from_millis(200));
        let asked: Vec<bool> = (0..=6).map(|k| r.fresh(true, at(k * 200))).collect();
        assert_eq!(asked, [true, false, false, true, false, false, true]);
        // Not starved: never fresh, and it does not count as one.
        let mut r = PeerRefresh::new(Duration::from_millis(200));
        assert!(!r.fresh(false, at(0)));
        assert!(r.fresh(true, at(200)));
        // The default 500 ms refresh is fresh at every refresh, even a clock's rounding early.
        let mut r = PeerRefresh::new(FRESH_LIST_EVERY);
        assert!(r.fresh(true, at(0)));
        assert!(r.fresh(true, t0 + Duration::from_nanos(499_999_999)));
        assert!(r.fresh(true, t0 + Duration::from_nanos(999_999_998)));
    }
}
