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

use std::time::Duration;

/// The longest interval, as a multiple of the configured one.
pub const MAX_BACKOFF: u32 = 8;
/// A peer list naming fewer nodes than this (seeders and the asking node not counted) is
/// short: the trackers knew few of the blob's nodes when they made it (a rollout just
/// started, or a tracker restarted), and the trackers' client does not reuse it under their
/// pacing ([`crate::tracker::HttpTrackers`]): the next refresh asks again.
pub const SHORT_LIST_NODES: usize = 8;

/// The interval between one download's peer lists (see the module documentation).
#[derive(Clone, Debug)]
pub struct PeerRefresh {
    base: Duration,
    every: Duration,
}

impl PeerRefresh {
    /// Every `base` (shoald's `peer_refresh`) to begin with.
    pub fn new(base: Duration) -> Self {
        Self { base, every: base }
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
}
