//! Have streams (`GET /v1/blobs/{digest}/have`, docs/simulator.md "Have streams"): the
//! subscriber's rules of shoald's executor (`p2p/src/swarm/subscribe.rs`) and the chunk
//! server's side.
//!
//! - Subscriber: a download keeps at most `have_peers` streams open, to the nodes (not
//!   seeders) its peer lists named, in the order first named, skipping dropped peers, peers
//!   whose stream ended with `done` (full holders) and peers that refused or whose stream
//!   ended otherwise (not asked again for [`RETRY_AFTER`]). Opening costs one round trip
//!   (the first line is the state at once). Each line replaces the planner's view of that
//!   peer and the planner plans again; while a line has arrived, the tracker's entries of the
//!   peer are ignored. A stream that ends with `done` leaves the peer a full holder; one that
//!   ends otherwise frees its slot. All close when the download ends.
//! - Server: a node serves at most `max_have_streams` streams at once (beyond: refused, as
//!   `503`); a blob it neither downloads nor holds is refused (`404`); a held blob gets one
//!   `done` line. A download's changes (a chunk held, the chunks in flight) go out as one
//!   line at most every [`COALESCE`] (a change inside the window at its end), reaching each
//!   subscriber one latency later. A download that fails, and a node that dies, end their
//!   streams without `done`.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use shoal_p2p::swarm::planner::PeerInfo;
use shoal_p2p::tracker::proto::ChunkSet;

use super::{Event, Sim};
use crate::adapter;
use crate::SimError;

/// A peer that refused a stream, or whose stream ended without `done`, is not asked again for
/// this long (s).
pub(super) const RETRY_AFTER: f64 = 5.0;
/// At most one line per this long per stream (s).
pub(super) const COALESCE: f64 = 0.010;

/// One download's subscriptions (subscriber side).
#[derive(Default)]
pub(super) struct Subs {
    /// Nodes the peer lists named, in the order first named.
    candidates: Vec<usize>,
    named: HashSet<usize>,
    /// Open subscriptions: whether a line arrived.
    open: HashMap<usize, bool>,
    /// When each peer refused (or its stream ended without `done`).
    refused: HashMap<usize, f64>,
    /// Peers whose stream ended with `done`: full holders.
    done: HashSet<usize>,
    /// Peers the planner dropped for this blob.
    dropped: HashSet<usize>,
}

impl Subs {
    /// Whether the tracker's entries of node `j` are ignored (its stream is live, or ended
    /// with `done`).
    pub(super) fn ignores(&self, j: usize) -> bool {
        self.done.contains(&j) || self.open.get(&j).copied().unwrap_or(false)
    }

    /// Node `j` named by a peer list.
    pub(super) fn listed(&mut self, j: usize) {
        if self.named.insert(j) {
            self.candidates.push(j);
        }
    }
}

/// One download's have stream (server side).
#[derive(Default)]
pub(super) struct Served {
    /// The subscribers (nodes), in the order they subscribed.
    subscribers: Vec<usize>,
    /// When the last line went out (s).
    line_at: f64,
    /// A line is due (a flush is queued).
    pending: bool,
}

/// A line of a have stream: the server's state when it went out.
#[derive(Debug)]
pub(super) struct Line {
    pub(super) from: usize,
    pub(super) blob: usize,
    pub(super) to: Vec<usize>,
    pub(super) state: Rc<(ChunkSet, ChunkSet)>,
    pub(super) done: bool,
}

impl Sim<'_> {
    /// Opens subscriptions of node `i`'s download of `blob` up to `have_peers`.
    pub(super) fn subscribe_more(&mut self, i: usize, blob: usize) {
        let limit = self.sc.settings.have_peers;
        let now = self.now;
        let d = &mut self.nodes[i].downloads[blob];
        if limit == 0 || d.planner.is_none() {
            return;
        }
        let s = &mut d.subs;
        s.refused.retain(|_, at| now - *at < RETRY_AFTER);
        let mut free = limit.saturating_sub(s.open.len());
        let mut asked = Vec::new();
        for &j in &s.candidates {
            if free == 0 {
                break;
            }
            if s.open.contains_key(&j)
                || s.done.contains(&j)
                || s.dropped.contains(&j)
                || s.refused.contains_key(&j)
            {
                continue;
            }
            asked.push(j);
            free -= 1;
        }
        for &j in &asked {
            s.open.insert(j, false);
        }
        self.out.have_opened += asked.len() as u64;
        for j in asked {
            self.at(self.now + self.sc.latency, Event::HaveAsk(i, blob, j));
        }
    }

    /// Node `i`'s request for `j`'s stream of `blob` reaches `j`.
    pub(super) fn have_ask(&mut self, i: usize, blob: usize, j: usize) {
        let asking = &self.nodes[i].downloads[blob];
        if !self.nodes[i].alive || !asking.subs.open.contains_key(&j) {
            return; // closed meanwhile
        }
        let lat = self.sc.latency;
        let server = &self.nodes[j];
        let d = &server.downloads[blob];
        if !server.alive {
            self.at(self.now + lat, Event::HaveEnd(i, blob, j));
        } else if d.done {
            let n = self.chunks[blob];
            let state = Rc::new((ChunkSet::full(n), ChunkSet::empty(n)));
            let line = Line {
                from: j,
                blob,
                to: vec![i],
                state,
                done: true,
            };
            self.at(self.now + lat, Event::HaveLine(Box::new(line)));
        } else if d.planner.is_none() || server.served_streams >= self.sc.settings.max_have_streams
        {
            // No such download (404), or too many streams (503).
            self.out.have_refused += 1;
            self.at(self.now + lat, Event::HaveEnd(i, blob, j));
        } else {
            let state = Rc::new(self.have_state(j, blob));
            self.nodes[j].served_streams += 1;
            self.nodes[j].downloads[blob].served.subscribers.push(i);
            let line = Line {
                from: j,
                blob,
                to: vec![i],
                state,
                done: false,
            };
            self.at(self.now + lat, Event::HaveLine(Box::new(line)));
        }
    }

    /// What node `j`'s download of `blob` holds and fetches now.
    fn have_state(&self, j: usize, blob: usize) -> (ChunkSet, ChunkSet) {
        let n = self.chunks[blob];
        let d = &self.nodes[j].downloads[blob];
        (
            d.have.clone().unwrap_or_else(|| ChunkSet::empty(n)),
            d.fetching.clone().unwrap_or_else(|| ChunkSet::empty(n)),
        )
    }

    /// Node `j`'s download of `blob` changed (a chunk held, the chunks in flight, done): a
    /// line goes out at the end of this moment, or at the end of the coalescing window.
    pub(super) fn have_changed(&mut self, j: usize, blob: usize) {
        let s = &mut self.nodes[j].downloads[blob].served;
        if s.subscribers.is_empty() || s.pending {
            return;
        }
        s.pending = true;
        let at = self.now.max(s.line_at + COALESCE);
        self.at(at, Event::HaveFlush(j, blob));
    }

    /// The coalesced line of node `j`'s download of `blob` goes out.
    pub(super) fn have_flush(&mut self, j: usize, blob: usize) {
        let done = self.nodes[j].downloads[blob].done;
        let alive = self.nodes[j].alive;
        let state = Rc::new(self.have_state(j, blob));
        let s = &mut self.nodes[j].downloads[blob].served;
        s.pending = false;
        if s.subscribers.is_empty() || !alive {
            return;
        }
        s.line_at = self.now;
        let to = if done {
            std::mem::take(&mut s.subscribers)
        } else {
            s.subscribers.clone()
        };
        if done {
            self.nodes[j].served_streams -= to.len();
        }
        self.out.have_lines += to.len() as u64;
        let line = Line {
            from: j,
            blob,
            to,
            state,
            done,
        };
        self.at(self.now + self.sc.latency, Event::HaveLine(Box::new(line)));
    }

    /// A line reaches its subscribers.
    pub(super) fn have_line(&mut self, line: Line) -> Result<(), SimError> {
        let j = line.from;
        let blob = line.blob;
        let addr = adapter::node_addr(j);
        for &i in &line.to {
            let node = &mut self.nodes[i];
            if !node.alive {
                continue;
            }
            let speed = node.speeds.get(&addr).copied();
            let d = &mut node.downloads[blob];
            let Some(planner) = d.planner.as_mut() else {
                continue;
            };
            let Some(live) = d.subs.open.get_mut(&j) else {
                continue; // closed meanwhile: a stale line
            };
            *live = true;
            if line.done {
                d.subs.open.remove(&j);
                d.subs.done.insert(j);
                if let Some(r) = d.refresh.as_mut() {
                    r.stream_ended();
                }
            }
            let (have, fetching) = &*line.state;
            planner.peers(vec![PeerInfo {
                id: adapter::node_id(j),
                addr,
                seeder: false,
                have: have.clone(),
                fetching: fetching.clone(),
                speed,
            }]);
            // The executor plans again after a line. With every request slot taken (the
            // blob's or the node's) that plan can only ask overdue chunks again, which the
            // next tick (at most 100 ms later) and the next chunk do as well; it is skipped
            // here, as the lines are most of the simulator's events.
            let limit = self.sc.settings.in_flight;
            let own = planner.requests();
            if own < limit
                && shoal_p2p::swarm::request_room(limit, self.nodes[i].peer_requests, own)
            {
                self.plan(i, blob)?;
            }
            if line.done {
                self.subscribe_more(i, blob);
            }
        }
        Ok(())
    }

    /// Node `j`'s stream of `blob` to node `i` ended without `done` (refused, failed, or the
    /// server died).
    pub(super) fn have_end(&mut self, i: usize, blob: usize, j: usize) {
        let d = &mut self.nodes[i].downloads[blob];
        if d.subs.open.remove(&j).is_some() {
            d.subs.refused.insert(j, self.now);
            if let Some(r) = d.refresh.as_mut() {
                r.stream_ended();
            }
            self.subscribe_more(i, blob);
        }
    }

    /// The planner of node `i`'s download of `blob` dropped node `j`: its subscription ends.
    pub(super) fn have_dropped(&mut self, i: usize, blob: usize, j: usize) {
        let s = &mut self.nodes[i].downloads[blob].subs;
        s.dropped.insert(j);
        if s.open.remove(&j).is_some() {
            self.unsubscribe(i, blob, j);
            self.subscribe_more(i, blob);
        }
    }

    /// Node `i`'s download of `blob` ended: its subscriptions close.
    pub(super) fn have_close_all(&mut self, i: usize, blob: usize) {
        let open: Vec<usize> = self.nodes[i].downloads[blob]
            .subs
            .open
            .drain()
            .map(|(j, _)| j)
            .collect();
        for j in open {
            self.unsubscribe(i, blob, j);
        }
    }

    /// The server `j` forgets subscriber `i` of `blob`.
    fn unsubscribe(&mut self, i: usize, blob: usize, j: usize) {
        let s = &mut self.nodes[j].downloads[blob].served;
        if let Some(k) = s.subscribers.iter().position(|&x| x == i) {
            s.subscribers.remove(k);
            self.nodes[j].served_streams -= 1;
        }
    }

    /// Node `j`'s download of `blob` ended without the blob (it failed, or the node died):
    /// its streams end without `done`.
    pub(super) fn have_abort(&mut self, j: usize, blob: usize) {
        let s = &mut self.nodes[j].downloads[blob].served;
        let to = std::mem::take(&mut s.subscribers);
        self.nodes[j].served_streams -= to.len();
        for i in to {
            self.at(self.now + self.sc.latency, Event::HaveEnd(i, blob, j));
        }
    }
}
