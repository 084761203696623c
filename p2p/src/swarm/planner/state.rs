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
}
