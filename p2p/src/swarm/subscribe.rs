//! A download's subscriptions to its peers' have streams ([`crate::peer::have`]): which
//! peers it subscribes to ([`Subscriptions`], pure bookkeeping kept by the executor,
//! [`super::scheduler`]) and the task that reads one stream ([`subscribe`]).
//!
//! - A download keeps a stream open to at most `have_peers` of the nodes (not seeders) its
//!   peer lists named, chosen in the order the lists first named them, skipping dropped
//!   peers and peers that refused or whose stream ended without `done` (not asked again for
//!   [`RETRY_AFTER`]).
//! - Each line is that peer's state: the executor gives it to the planner as that peer's
//!   entry at once; while a peer's stream is open (a line arrived), the trackers' (older)
//!   entries for it are ignored. A stream ending with `done` leaves the peer known as a full
//!   holder (its tracker entries stay ignored); one ending otherwise frees its slot.
//! - Bad input (a malformed or over-long line, a wrong chunk count, no first line within
//!   [`FIRST_LINE_TIMEOUT`]) ends that subscription with a debug log, never the download.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::download::Download;
use super::scheduler::Event;
use super::Swarm;
use crate::peer::PeerError;

/// A peer that refused a stream, or whose stream ended without `done`, is not asked again
/// for this long.
pub(super) const RETRY_AFTER: Duration = Duration::from_secs(5);
/// The first line must arrive this soon after asking (the server sends it at once).
pub(super) const FIRST_LINE_TIMEOUT: Duration = Duration::from_secs(5);

/// One subscription.
struct Sub {
    abort: AbortHandle,
    addr: SocketAddr,
    /// A line arrived: the peer's state comes from the stream now.
    live: bool,
}

/// The subscriptions of one download (see the module documentation).
pub(super) struct Subscriptions {
    limit: usize,
    /// Nodes the peer lists named, in the order first named.
    candidates: Vec<(String, SocketAddr)>,
    named: HashSet<String>,
    open: HashMap<String, Sub>,
    /// When each peer refused (or its stream ended without `done`).
    refused: HashMap<String, Instant>,
    /// Peers whose stream ended with `done`: full holders.
    done: HashSet<String>,
    /// Peers the planner dropped for this blob.
    dropped: HashSet<String>,
}

impl Subscriptions {
    /// At most `limit` streams at once (0: none).
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            candidates: Vec::new(),
            named: HashSet::new(),
            open: HashMap::new(),
            refused: HashMap::new(),
            done: HashSet::new(),
            dropped: HashSet::new(),
        }
    }

    /// A node named by a peer list (seeders are not subscribed to).
    pub(super) fn listed(&mut self, id: &str, addr: SocketAddr) {
        if self.limit == 0 {
            return;
        }
        if self.named.insert(id.to_owned()) {
            self.candidates.push((id.to_owned(), addr));
        } else if let Some(c) = self.candidates.iter_mut().find(|c| c.0 == id) {
            c.1 = addr;
        }
    }

    /// Whether the trackers' entry for `id` is to be ignored: its stream is open (a line
    /// arrived), or it ended with `done`.
    pub(super) fn ignores(&self, id: &str) -> bool {
        self.done.contains(id) || self.open.get(id).is_some_and(|s| s.live)
    }

    /// The peers to subscribe to now, at `now`, to fill the free slots; each must be
    /// [`Subscriptions::started`].
    pub(super) fn due(&mut self, now: Instant) -> Vec<(String, SocketAddr)> {
        self.refused
            .retain(|_, at| now.duration_since(*at) < RETRY_AFTER);
        let mut free = self.limit.saturating_sub(self.open.len());
        let mut out = Vec::new();
        for (id, addr) in &self.candidates {
            if free == 0 {
                break;
            }
            if self.open.contains_key(id)
                || self.done.contains(id)
                || self.dropped.contains(id)
                || self.refused.contains_key(id)
                || out.iter().any(|(o, _)| o == id)
            {
                continue;
            }
            out.push((id.clone(), *addr));
            free -= 1;
        }
        out
    }

    /// The subscription to `id` runs as the task `abort`.
    pub(super) fn started(&mut self, id: String, addr: SocketAddr, abort: AbortHandle) {
        self.open.insert(
            id,
            Sub {
                abort,
                addr,
                live: false,
            },
        );
    }

    /// A line of `id`'s stream arrived: its address if the subscription is still open (else
    /// the line is stale and ignored).
    pub(super) fn line(&mut self, id: &str) -> Option<SocketAddr> {
        let sub = self.open.get_mut(id)?;
        sub.live = true;
        Some(sub.addr)
    }

    /// `id`'s stream ended at `now`, with `done` or not; true if it was open.
    pub(super) fn ended(&mut self, id: &str, done: bool, now: Instant) -> bool {
        let was_open = self.open.remove(id).is_some();
        if done {
            self.done.insert(id.to_owned());
        } else if was_open {
            self.refused.insert(id.to_owned(), now);
        }
        was_open
    }

    /// The planner dropped `id`: its subscription ends (true if it was open).
    pub(super) fn dropped(&mut self, id: &str) -> bool {
        self.dropped.insert(id.to_owned());
        match self.open.remove(id) {
            Some(sub) => {
                sub.abort.abort();
                true
            }
            None => false,
        }
    }

    /// Ends every subscription; returns how many were open.
    pub(super) fn close_all(&mut self) -> usize {
        let n = self.open.len();
        for (_, sub) in self.open.drain() {
            sub.abort.abort();
        }
        n
    }
}

/// Reads peer `peer`'s (at `addr`) have stream of `download`'s blob, sending each line as an
/// [`Event::Have`], then [`Event::HaveEnded`].
pub(super) async fn subscribe(
    swarm: Swarm,
    download: Arc<Download>,
    peer: String,
    addr: SocketAddr,
    tx: mpsc::UnboundedSender<Event>,
) {
    let digest = download.digest();
    let chunks = download.manifest().chunks.len() as u32;
    let peers = &swarm.inner().peers;
    let opened = tokio::time::timeout(FIRST_LINE_TIMEOUT, async {
        let mut lines = peers.have_stream(addr, digest, chunks).await?;
        let first = lines.next().await;
        Ok::<_, PeerError>((lines, first))
    })
    .await;
    let (mut lines, mut next) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => {
            tracing::debug!(blob = %digest, %peer, "have stream not opened: {e}");
            let _ = tx.send(Event::HaveEnded { peer, done: false });
            return;
        }
        Err(_) => {
            tracing::debug!(blob = %digest, %peer, "have stream sent no line in {FIRST_LINE_TIMEOUT:?}");
            let _ = tx.send(Event::HaveEnded { peer, done: false });
            return;
        }
    };
    let done = loop {
        match next {
            Some(Ok(update)) => {
                let done = update.done;
                let event = Event::Have {
                    peer: peer.clone(),
                    update,
                };
                if tx.send(event).is_err() || done {
                    break done;
                }
            }
            Some(Err(e)) => {
                tracing::debug!(blob = %digest, %peer, "have stream ended: {e}");
                break false;
            }
            None => {
                tracing::debug!(blob = %digest, %peer, "have stream ended without done");
                break false;
            }
        }
        next = lines.next().await;
    };
    let _ = tx.send(Event::HaveEnded { peer, done });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        format!("10.0.0.{i}:7070").parse().unwrap()
    }

    fn abort() -> AbortHandle {
        // A task that never runs to completion here; only its handle is kept.
        tokio::spawn(std::future::pending::<()>()).abort_handle()
    }

    #[tokio::test]
    async fn subscribes_in_list_order_up_to_the_limit_and_retries_later() {
        let now = Instant::now();
        let mut s = Subscriptions::new(2);
        for i in [3, 2, 4, 3] {
            s.listed(&format!("n{i}"), addr(i));
        }
        let first = s.due(now);
        assert_eq!(first, vec![("n3".into(), addr(3)), ("n2".into(), addr(2))]);
        for (id, a) in first {
            s.started(id, a, abort());
        }
        assert!(s.due(now).is_empty());
        // Opening is not yet live: the tracker's entries still count.
        assert!(!s.ignores("n3"));
        assert_eq!(s.line("n3"), Some(addr(3)));
        assert!(s.ignores("n3"));
        // n2 refuses: its slot goes to n4; n2 is asked again only after RETRY_AFTER.
        assert!(s.ended("n2", false, now));
        assert_eq!(s.due(now), vec![("n4".into(), addr(4))]);
        s.started("n4".into(), addr(4), abort());
        // n3 ends done: a full holder, never asked again, its entries ignored.
        assert!(s.ended("n3", true, now));
        assert!(s.ignores("n3"));
        assert!(s.due(now).is_empty());
        assert_eq!(s.due(now + RETRY_AFTER), vec![("n2".into(), addr(2))]);
        // A dropped peer's subscription ends and it is not asked again.
        assert!(s.dropped("n4"));
        assert_eq!(s.line("n4"), None);
        assert_eq!(s.close_all(), 0);
        assert!(s.due(now + RETRY_AFTER).iter().all(|(id, _)| id != "n4"));
        // Off: nothing.
        let mut off = Subscriptions::new(0);
        off.listed("n1", addr(1));
        assert!(off.due(now).is_empty());
    }
}
