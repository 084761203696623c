//! What the planner does with the results fed back: chunks arriving, requests ending, and
//! the peers and requests it drops on the way.

use std::time::{Duration, Instant};

use super::index::PeerIdx;
use super::state::Req;
use super::{
    Action, DropReason, Failure, PlanError, Planner, ReqId, BUSY_BACKOFF, DURATIONS_KEPT,
    MAX_PEER_FAILURES, MAX_REGISTRY_FAILURES, MAX_REGISTRY_HASH_FAILURES, SEEDER_BUSY_BACKOFF,
};
use crate::tracker::ChunkSet;

impl Planner {
    /// Request `req` (a single chunk of `len` bytes from a peer) has received `got` bytes so
    /// far. An overdue request whose bytes are arriving fast enough is left alone
    /// ([`Planner::overdue_after`]); one never reported is judged by its age alone.
    pub fn progress(&mut self, req: ReqId, got: u64, len: u64) {
        if let Some(r) = self.reqs.get_mut(&req) {
            r.got = got.min(len);
            r.len = len;
        }
    }

    /// Chunk `index` (`len` bytes) of request `req` arrived at `now`: `verified` against the
    /// manifest (and stored) or not. Returns the requests to cancel and the peers dropped.
    pub fn chunk(
        &mut self,
        now: Instant,
        req: ReqId,
        index: u32,
        len: u64,
        verified: bool,
    ) -> Result<Vec<Action>, PlanError> {
        let mut out = Vec::new();
        let Some(source) = self.reqs.get(&req).map(|r| r.peer) else {
            // Cancelled meanwhile; a verified chunk is still held.
            if verified && index < self.n {
                self.held.insert(index);
                self.last_progress = now;
            }
            return Ok(out);
        };
        if index >= self.n {
            return Ok(out);
        }
        if !verified {
            match source {
                Some(p) => self.drop_peer(p, DropReason::Corrupt, &mut out),
                None => {
                    self.registry_hash_failures += 1;
                    if self.registry_hash_failures >= MAX_REGISTRY_HASH_FAILURES {
                        return Err(PlanError::RegistryMismatch { index });
                    }
                }
            }
            return Ok(out);
        }
        self.last_progress = now;
        self.held.insert(index);
        self.waiting.remove(&index);
        self.refused.remove(&index);
        if source.is_none() {
            self.registry_failures = 0;
        }
        if let Some(r) = self.reqs.get_mut(&req) {
            let took = now.saturating_duration_since(r.last_chunk);
            r.last_chunk = now;
            self.durations.push_back(took);
            if self.durations.len() > DURATIONS_KEPT {
                self.durations.pop_front();
            }
            if let Some(p) = source {
                let peer = &mut self.peers[p as usize];
                // Failures count in a row: a congested link's odd timeout among chunks
                // served does not drop a good peer.
                peer.failures = 0;
                let speed = len as f64 / took.as_secs_f64().max(1e-3);
                let smoothed = match peer.speed {
                    Some(s) => 0.7 * s + 0.3 * speed,
                    None => speed,
                };
                if !peer.dropped {
                    self.speeds.update(p, peer.speed, Some(smoothed));
                }
                peer.speed = Some(smoothed);
                // A slowly decaying maximum, so one burst does not make every other peer "slow".
                self.fastest = (self.fastest * 0.95).max(smoothed);
            }
        }
        // Other single-chunk requests for it are not needed any more.
        let duplicates: Vec<ReqId> = self.chunk_reqs[index as usize]
            .iter()
            .copied()
            .filter(|&id| id != req && self.reqs.get(&id).is_some_and(|r| r.chunks.len() == 1))
            .collect();
        for id in duplicates {
            self.forget(id);
            out.push(Action::Cancel { req: id });
        }
        Ok(out)
    }

    /// Request `req` ended at `now` (after its chunks), with `failure` or not. Returns the
    /// requests to cancel and the peers dropped.
    pub fn ended(
        &mut self,
        now: Instant,
        req: ReqId,
        failure: Option<Failure>,
    ) -> Result<Vec<Action>, PlanError> {
        let mut out = Vec::new();
        let Some(r) = self.forget(req) else {
            return Ok(out);
        };
        let Some(failure) = failure else {
            return Ok(out);
        };
        match r.peer {
            Some(p) => {
                let peer = &mut self.peers[p as usize];
                match failure {
                    Failure::Busy => {
                        let backoff = if peer.seeder {
                            SEEDER_BUSY_BACKOFF
                        } else {
                            BUSY_BACKOFF
                        };
                        peer.busy_until = Some(now + backoff);
                    }
                    Failure::NotHeld if peer.seeder => {
                        // Sent to another node a moment ago: leave it to that node (not to
                        // the registry) until its announce arrives.
                        for i in r.chunks.clone() {
                            self.refused.insert(i, now);
                        }
                    }
                    Failure::NotHeld => {
                        let mut have = ChunkSet::empty(self.n);
                        for i in peer.have.iter().filter(|i| !r.chunks.contains(i)) {
                            have.insert(i);
                        }
                        let had = std::mem::replace(&mut peer.have, have);
                        if !peer.dropped {
                            let before = Some((&had, &peer.fetching));
                            let (seeder, after) = (peer.seeder, peer.listed());
                            self.holders.update(p, seeder, before, after, r.chunks);
                        }
                    }
                    Failure::Transport => {
                        peer.failures += 1;
                        if peer.failures >= MAX_PEER_FAILURES {
                            self.drop_peer(p, DropReason::Failing, &mut out);
                        }
                    }
                }
            }
            None => {
                self.registry_failures += 1;
                let backoff = Duration::from_millis(200 << self.registry_failures.min(5));
                self.registry_backoff_until = Some(now + backoff);
                if self.registry_failures >= MAX_REGISTRY_FAILURES && !self.missing_has_holder() {
                    return Err(PlanError::RegistryFailing {
                        failures: self.registry_failures,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Removes request `id` from the books; returns it.
    fn forget(&mut self, id: ReqId) -> Option<Req> {
        let req = self.reqs.remove(&id)?;
        for i in req.chunks.clone() {
            self.chunk_reqs[i as usize].retain(|r| *r != id);
        }
        match req.peer {
            Some(p) => {
                let peer = &mut self.peers[p as usize];
                peer.in_flight = peer.in_flight.saturating_sub(1);
                peer.reqs.retain(|r| *r != id);
            }
            None => self.registry_in_flight = self.registry_in_flight.saturating_sub(1),
        }
        Some(req)
    }

    /// Drops peer `p` for the blob (out of the indexes), with its requests.
    pub(super) fn drop_peer(&mut self, p: PeerIdx, reason: DropReason, out: &mut Vec<Action>) {
        let peer = &mut self.peers[p as usize];
        if !peer.dropped {
            self.holders
                .update(p, peer.seeder, peer.listed(), None, 0..self.n);
            self.speeds.update(p, peer.speed, None);
            peer.dropped = true;
            out.push(Action::Drop {
                peer: peer.id.to_string(),
                addr: peer.addr,
                reason,
            });
        }
        let mut ids = std::mem::take(&mut peer.reqs);
        ids.sort_unstable();
        for req in ids {
            self.forget(req);
            out.push(Action::Cancel { req });
        }
    }
}
