//! The requests of the executor ([`super`]): carrying out the planner's actions, a request
//! reaching its source (busy, not held, the seeder's refusal, or a flow), its chunks
//! arriving, and its end.

use shoal_p2p::swarm::planner::{Action, Failure, ReqId};

use super::{Event, Sim, Src, Tag, Task};
use crate::adapter;
use crate::net::FlowId;
use crate::SimError;

impl Sim<'_> {
    pub(super) fn execute(
        &mut self,
        i: usize,
        blob: usize,
        actions: Vec<Action>,
    ) -> Result<(), SimError> {
        let rtt = 2.0 * self.sc.latency;
        for action in actions {
            match action {
                Action::Peer {
                    req,
                    peer,
                    seeder,
                    chunk,
                    overdue,
                    ..
                } => {
                    if overdue {
                        self.out.overdue += 1;
                    }
                    let src = match adapter::endpoint_of(&peer) {
                        Some(j) => Src::Node(j),
                        None if seeder => Src::Seeder,
                        None => return Err(SimError::UnknownPeer(peer)),
                    };
                    self.nodes[i].downloads[blob].tasks.insert(
                        req,
                        Task {
                            src,
                            chunks: chunk..chunk + 1,
                            flow: None,
                            seeded: false,
                        },
                    );
                    self.at(self.now + rtt, Event::Arrive(i, blob, req));
                }
                Action::Registry {
                    req,
                    chunks,
                    overdue,
                } => {
                    if overdue {
                        self.out.overdue += 1;
                    }
                    self.nodes[i].downloads[blob].tasks.insert(
                        req,
                        Task {
                            src: Src::Registry,
                            chunks,
                            flow: None,
                            seeded: false,
                        },
                    );
                    self.at(self.now + rtt, Event::Arrive(i, blob, req));
                }
                Action::Cancel { req } => self.cancel(i, blob, req),
                Action::Drop { peer, .. } => {
                    if let Some(j) = adapter::endpoint_of(&peer) {
                        self.have_dropped(i, blob, j);
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops request `req` of node `i` (its flow stops, its seeder slot is given back).
    pub(super) fn cancel(&mut self, i: usize, blob: usize, req: ReqId) {
        let Some(task) = self.nodes[i].downloads[blob].tasks.remove(&req) else {
            return;
        };
        self.release(i, blob, &task);
    }

    pub(super) fn release(&mut self, i: usize, blob: usize, task: &Task) {
        if let Some(flow) = task.flow {
            let moved = self.net.end(self.now, flow);
            self.tags[flow] = None;
            self.count_bytes(task.src, moved);
        }
        if task.seeded {
            // Cut short (cancelled, or its node stopped): the seeder's send ends unfinished.
            let offset = task.chunks.start as u64 * self.sc.chunk_size;
            let now = self.instant(self.now);
            self.seeder.ended(blob, offset, now, false);
        }
        if !matches!(task.src, Src::Registry) {
            let n = &mut self.nodes[i].peer_requests;
            *n = n.saturating_sub(1);
        }
        match task.src {
            Src::Seeder => {
                let slots = &mut self.nodes[i].seeder_slots;
                *slots = slots.saturating_sub(1);
                if task.flow.is_some() {
                    self.seeder_uploads -= 1;
                    self.seeder_next();
                }
            }
            Src::Node(_) | Src::Registry => {}
        }
    }

    pub(super) fn count_bytes(&mut self, src: Src, moved: f64) {
        if !matches!(src, Src::Node(_)) && moved > 0.0 {
            self.out.registry_last = self.now;
        }
        match src {
            Src::Node(_) => self.out.peer_bytes += moved,
            Src::Seeder => self.out.seeder_bytes += moved,
            Src::Registry => self.out.range_bytes += moved,
        }
    }

    pub(super) fn chunk_bytes(&self, blob: usize, chunk: u32) -> u64 {
        let size = self.sc.blobs[blob];
        let start = chunk as u64 * self.sc.chunk_size;
        (size - start).min(self.sc.chunk_size)
    }

    /// Request `req` of node `i` reaches its source.
    pub(super) fn arrive(&mut self, i: usize, blob: usize, req: ReqId) -> Result<(), SimError> {
        if !self.nodes[i].alive {
            return Ok(());
        }
        let Some(task) = self.nodes[i].downloads[blob].tasks.get(&req) else {
            return Ok(()); // cancelled meanwhile
        };
        let (src, chunk) = (task.src, task.chunks.start);
        let failure = match src {
            Src::Node(j) => {
                let source = &self.nodes[j];
                let holds = source.downloads[blob]
                    .have
                    .as_ref()
                    .is_some_and(|h| h.contains(chunk));
                if !source.alive {
                    Some(Failure::Transport)
                } else if self.net.uploads(j) >= self.sc.settings.max_uploads {
                    Some(Failure::Busy)
                } else if !holds {
                    Some(Failure::NotHeld)
                } else {
                    None
                }
            }
            Src::Seeder => {
                let offset = chunk as u64 * self.sc.chunk_size;
                let now = self.instant(self.now);
                let full = self.seeder_uploads >= self.sc.registry.seeder_max_uploads;
                // Sent again within its deferral: no live node holds it.
                let mut lost = false;
                if full {
                    self.seeder_forget_gone();
                }
                if full && self.seeder_waiting.len() >= self.sc.registry.seeder_queue {
                    self.out.seeder_busy += 1;
                    Some(Failure::Busy)
                } else if !self.seeder.serve(blob, offset, now, |since| {
                    lost = self.tracker.lost(blob, chunk, since, now);
                    lost
                }) {
                    Some(Failure::NotHeld)
                } else {
                    if lost {
                        self.out.seeder_lost += 1;
                    }
                    // Taken: the super-seeding rule counts it as being sent until its flow
                    // ends (`flow_done`) or is cut short (`release`).
                    if let Some(task) = self.nodes[i].downloads[blob].tasks.get_mut(&req) {
                        task.seeded = true;
                    }
                    if full {
                        // It waits for a slot.
                        self.seeder_waiting.push_back((i, blob, req));
                        self.out.seeder_waited += 1;
                        return Ok(());
                    }
                    None
                }
            }
            Src::Registry => None,
        };
        if let Some(failure) = failure {
            match failure {
                Failure::Busy => self.out.busy += 1,
                Failure::NotHeld => self.out.not_held += 1,
                Failure::Transport => self.out.transport += 1,
            }
            return self.end_request(i, blob, req, Some(failure));
        }
        if src == Src::Seeder {
            self.seeder_uploads += 1;
        }
        self.start_flow(i, blob, req, chunk);
        Ok(())
    }

    /// Whether request `req` of node `i` still waits for a seeder slot (not cancelled, its
    /// node alive).
    fn seeder_waits(&self, i: usize, blob: usize, req: ReqId) -> bool {
        self.nodes[i].alive
            && self.nodes[i].downloads[blob]
                .tasks
                .get(&req)
                .is_some_and(|t| t.src == Src::Seeder && t.flow.is_none())
    }

    /// Forgets the waiting requests that were cancelled or whose node died.
    fn seeder_forget_gone(&mut self) {
        let mut waiting = std::mem::take(&mut self.seeder_waiting);
        waiting.retain(|&(i, blob, req)| self.seeder_waits(i, blob, req));
        self.seeder_waiting = waiting;
    }

    /// Starts the flows of the requests waiting at the seeder while it has free slots
    /// (skipping the ones cancelled or whose node died meanwhile).
    fn seeder_next(&mut self) {
        while self.seeder_uploads < self.sc.registry.seeder_max_uploads {
            let Some((j, blob, req)) = self.seeder_waiting.pop_front() else {
                return;
            };
            if !self.seeder_waits(j, blob, req) {
                continue;
            }
            let chunk = self.nodes[j].downloads[blob].tasks[&req].chunks.start;
            self.seeder_uploads += 1;
            self.start_flow(j, blob, req, chunk);
        }
    }

    pub(super) fn start_flow(&mut self, i: usize, blob: usize, req: ReqId, chunk: u32) {
        let bytes = self.chunk_bytes(blob, chunk);
        let Some(task) = self.nodes[i].downloads[blob].tasks.get_mut(&req) else {
            return;
        };
        let from = match task.src {
            Src::Node(j) => j,
            Src::Seeder | Src::Registry => self.reg,
        };
        let flow = self.net.start(self.now, from, i, bytes);
        task.flow = Some(flow);
        if self.tags.len() <= flow {
            self.tags.resize(flow + 1, None);
        }
        self.tags[flow] = Some(Tag {
            node: i,
            blob,
            req,
            chunk,
        });
        if from == self.reg {
            self.seeder_peak = self.seeder_peak.max(self.net.upload_rate(from));
        } else {
            let rate = self.net.upload_rate(from);
            let peak = &mut self.nodes[from].upload_peak;
            *peak = peak.max(rate);
        }
    }

    /// Request `req` of node `i` ends (its chunks delivered, or with `failure`).
    pub(super) fn end_request(
        &mut self,
        i: usize,
        blob: usize,
        req: ReqId,
        failure: Option<Failure>,
    ) -> Result<(), SimError> {
        let Some(task) = self.nodes[i].downloads[blob].tasks.remove(&req) else {
            return Ok(());
        };
        self.release(i, blob, &task);
        let now = self.instant(self.now);
        let Some(planner) = self.nodes[i].downloads[blob].planner.as_mut() else {
            return Ok(());
        };
        match planner.ended(now, req, failure) {
            Ok(actions) => self.execute(i, blob, actions)?,
            Err(_) => {
                self.fail(i);
                return Ok(());
            }
        }
        self.plan(i, blob)
    }

    pub(super) fn flow_done(&mut self, flow: FlowId) -> Result<(), SimError> {
        let Some(tag) = self.tags.get(flow).copied().flatten() else {
            self.net.end(self.now, flow);
            return Ok(());
        };
        let Tag {
            node: i,
            blob,
            req,
            chunk,
        } = tag;
        self.tags[flow] = None;
        let moved = self.net.end(self.now, flow);
        let src = {
            let Some(task) = self.nodes[i].downloads[blob].tasks.get_mut(&req) else {
                return Ok(());
            };
            task.flow = None;
            task.seeded = false;
            task.src
        };
        self.count_bytes(src, moved);
        if src == Src::Seeder {
            self.seeder_uploads -= 1;
            let (offset, now) = (chunk as u64 * self.sc.chunk_size, self.instant(self.now));
            self.seeder.ended(blob, offset, now, true);
            self.seeder_next();
        }
        let len = self.chunk_bytes(blob, chunk);
        let now = self.instant(self.now);
        let node = &mut self.nodes[i];
        let d = &mut node.downloads[blob];
        let Some(planner) = d.planner.as_mut() else {
            return Ok(());
        };
        let result = planner.chunk(now, req, chunk, len, true);
        // The executor keeps the measured speed of the peer for other blobs.
        if let Src::Node(j) = src {
            if let Some((addr, speed)) = planner.peer_speed(&adapter::node_id(j)) {
                node.speeds.insert(addr, speed);
            }
        }
        if let Some(h) = d.have.as_mut() {
            h.insert(chunk);
        }
        self.have_changed(i, blob);
        let Ok(actions) = result else {
            self.fail(i);
            return Ok(());
        };
        self.notify(i);
        self.execute(i, blob, actions)?;
        // The rest of a registry range follows; a peer request ends with its chunk.
        let next = self.nodes[i].downloads[blob]
            .tasks
            .get(&req)
            .map(|t| t.chunks.end)
            .filter(|&end| chunk + 1 < end);
        match next {
            Some(_) => self.start_flow(i, blob, req, chunk + 1),
            None => {
                self.end_request(i, blob, req, None)?;
            }
        }
        self.check_done(i, blob);
        Ok(())
    }
}
