//! [`MemoryTracker`]: an in-memory [`Tracker`] for tests of the swarm.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use futures::future::BoxFuture;

use super::proto::{Announce, PeerEntry};
use super::{Tracker, TrackerError};
use crate::chunk::ChunkManifest;
use crate::digest::Digest;

/// An in-memory tracker: it records announces, lists the peers they describe (plus static
/// entries), serves the chunk manifests it was given, and can be made unreachable.
#[derive(Default, Debug)]
pub struct MemoryTracker {
    state: Mutex<State>,
}

#[derive(Default, Debug)]
struct State {
    manifests: HashMap<Digest, ChunkManifest>,
    down: bool,
    /// Static entries, by blob, in the order added.
    static_peers: Vec<(Digest, PeerEntry)>,
    announces: Vec<Announce>,
    /// Peer lists asked for.
    lists: usize,
}

fn down() -> TrackerError {
    TrackerError::Down {
        tracker: "memory".into(),
    }
}

impl MemoryTracker {
    /// A tracker knowing nothing, up.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves `m` as the chunk manifest of `m.digest` (for any registry and repository).
    pub fn add_manifest(&self, m: ChunkManifest) {
        self.lock().manifests.insert(m.digest.clone(), m);
    }

    /// While `down`, every call fails with [`TrackerError::Down`] (and announces are
    /// not recorded).
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Lists `e` among the peers of blob `digest` (after the announced peers, unless a peer
    /// with the same id announced it).
    pub fn add_peer(&self, digest: Digest, e: PeerEntry) {
        self.lock().static_peers.push((digest, e));
    }

    /// Peer lists asked for (while up or down).
    pub fn lists(&self) -> usize {
        self.lock().lists
    }

    /// Every announce received while up, in order.
    pub fn announces(&self) -> Vec<Announce> {
        self.lock().announces.clone()
    }

    /// The peers of `digest` holding or fetching at least one chunk, without `self_id`: from each peer's
    /// latest announce (peers in the order they first announced), then the static entries.
    fn list(&self, digest: &Digest, self_id: &str) -> Result<Vec<PeerEntry>, TrackerError> {
        let state = self.lock();
        if state.down {
            return Err(down());
        }
        let mut order: Vec<&str> = Vec::new();
        let mut latest: HashMap<&str, &Announce> = HashMap::new();
        for a in &state.announces {
            if latest.insert(a.peer_id.as_str(), a).is_none() {
                order.push(a.peer_id.as_str());
            }
        }
        let announced = order.iter().filter_map(|id| {
            let a = latest.get(id)?;
            let blob = a.blobs.iter().find(|b| b.digest == *digest)?;
            Some(PeerEntry {
                peer_id: a.peer_id.clone(),
                addr: a.addr,
                chunks: blob.chunks,
                have: blob.have.clone(),
                upload: a.upload,
                fetching: blob.fetching.clone(),
            })
        });
        let listed = state
            .static_peers
            .iter()
            .filter(|(d, _)| d == digest)
            .map(|(_, e)| e.clone());
        let mut out: Vec<PeerEntry> = Vec::new();
        for e in announced.chain(listed) {
            let holds = e.set().map(|s| s.count() > 0).unwrap_or(false)
                || e.fetching_set().map(|s| s.count() > 0).unwrap_or(false);
            if holds && e.peer_id != self_id && !out.iter().any(|o| o.peer_id == e.peer_id) {
                out.push(e);
            }
        }
        Ok(out)
    }
}

impl Tracker for MemoryTracker {
    fn announce<'a>(&'a self, announce: &'a Announce) -> BoxFuture<'a, Result<(), TrackerError>> {
        Box::pin(async move {
            let mut state = self.lock();
            if state.down {
                return Err(down());
            }
            state.announces.push(announce.clone());
            Ok(())
        })
    }

    fn peers<'a>(
        &'a self,
        digest: &'a Digest,
        self_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PeerEntry>, TrackerError>> {
        Box::pin(async move {
            self.lock().lists += 1;
            self.list(digest, self_id)
        })
    }

    fn chunk_manifest<'a>(
        &'a self,
        _registry: &'a str,
        _repository: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<ChunkManifest, TrackerError>> {
        Box::pin(async move {
            let state = self.lock();
            if state.down {
                return Err(down());
            }
            state
                .manifests
                .get(digest)
                .cloned()
                .ok_or_else(|| TrackerError::NoManifest {
                    digest: digest.clone(),
                    answers: Vec::new(),
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::proto::{BlobHave, ChunkSet, UploadStats};

    fn announce(id: &str, port: u16, blobs: Vec<BlobHave>) -> Announce {
        Announce {
            peer_id: id.into(),
            addr: ([127, 0, 0, 1], port).into(),
            upload: UploadStats::default(),
            blobs,
        }
    }

    fn set(len: u32, held: &[u32]) -> ChunkSet {
        let mut s = ChunkSet::empty(len);
        for &i in held {
            s.insert(i);
        }
        s
    }

    #[tokio::test]
    async fn lists_latest_announces_and_static_peers_without_self() {
        let t = MemoryTracker::new();
        let d = Digest::of(b"blob");
        let other = Digest::of(b"other");
        let a1 = announce("a", 1, vec![BlobHave::new(d.clone(), &set(4, &[0]))]);
        t.announce(&a1).await.unwrap();
        t.announce(&announce(
            "b",
            2,
            vec![BlobHave::new(d.clone(), &set(4, &[]))],
        ))
        .await
        .unwrap();
        t.announce(&announce(
            "me",
            3,
            vec![BlobHave::new(d.clone(), &set(4, &[1]))],
        ))
        .await
        .unwrap();
        t.announce(&announce(
            "c",
            4,
            vec![BlobHave::new(other.clone(), &set(2, &[1]))],
        ))
        .await
        .unwrap();
        // a's latest announce holds more.
        t.announce(&announce(
            "a",
            1,
            vec![BlobHave::new(d.clone(), &set(4, &[0, 3]))],
        ))
        .await
        .unwrap();
        t.add_peer(
            d.clone(),
            PeerEntry {
                peer_id: "seed".into(),
                addr: ([127, 0, 0, 1], 9).into(),
                chunks: 4,
                have: "all".into(),
                upload: UploadStats::default(),
                fetching: None,
            },
        );
        let peers = t.peers(&d, "me").await.unwrap();
        let ids: Vec<&str> = peers.iter().map(|p| p.peer_id.as_str()).collect();
        assert_eq!(ids, ["a", "seed"]);
        assert_eq!(peers[0].set().unwrap(), set(4, &[0, 3]));
        assert_eq!(t.peers(&other, "me").await.unwrap()[0].peer_id, "c");
        assert_eq!(t.announces().len(), 5);
        assert_eq!(t.announces()[0], a1);
    }

    #[tokio::test]
    async fn serves_manifests_and_can_be_down() {
        let t = MemoryTracker::new();
        let data = vec![7u8; 100_000];
        let mut b = crate::chunk::ChunkManifestBuilder::new(64 << 10).unwrap();
        b.update(&data);
        let m = b.finish(&Digest::of(&data)).unwrap();
        let missing = Digest::of(b"missing");
        assert!(matches!(
            t.chunk_manifest("r", "repo", &m.digest).await,
            Err(TrackerError::NoManifest { .. })
        ));
        t.add_manifest(m.clone());
        assert_eq!(t.chunk_manifest("r", "repo", &m.digest).await.unwrap(), m);
        assert!(matches!(
            t.chunk_manifest("r", "repo", &missing).await,
            Err(TrackerError::NoManifest { .. })
        ));

        t.set_down(true);
        let a = announce("a", 1, vec![]);
        assert!(matches!(
            t.announce(&a).await,
            Err(TrackerError::Down { .. })
        ));
        assert!(matches!(
            t.peers(&m.digest, "x").await,
            Err(TrackerError::Down { .. })
        ));
        assert!(matches!(
            t.chunk_manifest("r", "repo", &m.digest).await,
            Err(TrackerError::Down { .. })
        ));
        assert!(t.announces().is_empty());
        t.set_down(false);
        t.announce(&a).await.unwrap();
        assert_eq!(t.announces(), vec![a]);
    }
}
