//! The planner's bookkeeping: what it knows of each peer and each request, and the
//! per-chunk counts it keeps up to date as peer lists arrive.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

use super::Source;
use crate::tracker::ChunkSet;

pub(super) struct Peer {
    pub(super) addr: SocketAddr,
    pub(super) seeder: bool,
    pub(super) have: ChunkSet,
    pub(super) fetching: ChunkSet,
    pub(super) in_flight: usize,
    pub(super) failures: u32,
    pub(super) dropped: bool,
    pub(super) busy_until: Option<Instant>,
    /// Smoothed throughput (bytes/s).
    pub(super) speed: Option<f64>,
}

pub(super) struct Req {
    pub(super) source: Source,
    pub(super) chunks: Range<u32>,
    pub(super) started: Instant,
    /// When its last chunk arrived (per-chunk times of merged ranges).
    pub(super) last_chunk: Instant,
}

/// Per-chunk counts over the peers not dropped.
pub(super) struct Counts {
    pub(super) nodes: Vec<u32>,
    pub(super) seeders: Vec<u32>,
    /// Nodes fetching the chunk without holding it.
    pub(super) fetchers: Vec<u32>,
}

impl Counts {
    pub(super) fn apply(&mut self, peer: &Peer, add: bool) {
        if peer.dropped {
            return;
        }
        let step = |c: &mut u32| *c = if add { *c + 1 } else { c.saturating_sub(1) };
        for i in peer.have.iter() {
            let counts = if peer.seeder {
                &mut self.seeders
            } else {
                &mut self.nodes
            };
            step(&mut counts[i as usize]);
        }
        if !peer.seeder {
            for i in peer.fetching.iter().filter(|&i| !peer.have.contains(i)) {
                step(&mut self.fetchers[i as usize]);
            }
        }
    }
}
