//! The planner's bookkeeping: what it knows of each peer and each request.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::index::PeerIdx;
use super::ReqId;
use crate::tracker::ChunkSet;

pub(super) struct Peer {
    pub(super) id: Arc<str>,
    pub(super) addr: SocketAddr,
    pub(super) seeder: bool,
    pub(super) have: ChunkSet,
    pub(super) fetching: ChunkSet,
    pub(super) in_flight: usize,
    /// Its requests in flight, ascending.
    pub(super) reqs: Vec<ReqId>,
    pub(super) failures: u32,
    pub(super) dropped: bool,
    pub(super) busy_until: Option<Instant>,
    /// Smoothed throughput (bytes/s).
    pub(super) speed: Option<f64>,
}

impl Peer {
    /// What it contributes to the holder index.
    pub(super) fn listed(&self) -> Option<(&ChunkSet, &ChunkSet)> {
        (!self.dropped).then_some((&self.have, &self.fetching))
    }
}

pub(super) struct Req {
    /// Its peer (`None`: the registry).
    pub(super) peer: Option<PeerIdx>,
    pub(super) chunks: Range<u32>,
    pub(super) started: Instant,
    /// When its last chunk arrived (per-chunk times of merged ranges).
    pub(super) last_chunk: Instant,
    /// Bytes received so far of the `len` asked, as the executor last reported them
    /// ([`super::Planner::progress`]; 0 of 0 when it never did).
    pub(super) got: u64,
    pub(super) len: u64,
}

impl Req {
    /// Whether its bytes are arriving (some of them reported, [`super::Planner::progress`])
    /// and, at the rate they came in over `elapsed`, the rest is due within `fresh` (what a
    /// new request takes: the median chunk time): then asking another peer too would only
    /// share the links with it. Every byte in (being verified) counts as coming.
    pub(super) fn coming_within(
        &self,
        elapsed: std::time::Duration,
        fresh: Option<std::time::Duration>,
    ) -> bool {
        let Some(fresh) = fresh else {
            return false;
        };
        if self.len == 0 || self.got == 0 {
            return false;
        }
        if self.got >= self.len {
            return true;
        }
        let left = elapsed.mul_f64((self.len - self.got) as f64 / self.got as f64);
        left <= fresh
    }
}
