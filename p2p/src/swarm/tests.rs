//! Swarm downloads against fakes: [`MemoryTracker`], a scripted [`PeerFetcher`], and a
//! [`RecordingSource`] registry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::TryStreamExt;

use super::*;
use crate::chunk::ChunkManifestBuilder;
use crate::peer::have::HaveUpdate;
use crate::peer::{HaveLines, PeerError};
use crate::source::{Credentials, RecordingSource};
use crate::tracker::{MemoryTracker, PeerEntry};

/// What a real client reports for a peer that refuses connections.
fn refused(peer: SocketAddr, digest: &Digest, range: &Range<u64>) -> PeerError {
    PeerError::Transport {
        peer,
        digest: digest.clone(),
        start: range.start,
        end: range.end,
        source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
    }
}

pub(super) const CHUNK: u64 = 64 << 10;

/// How a fake peer answers.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Behaviour {
    Good,
    /// Flips a byte of every chunk.
    Corrupt,
    /// Answers after this long.
    Slow(Duration),
    /// Connection refused.
    Down,
}

/// A fake peer: how it behaves and the blobs it holds.
type FakePeer = (Behaviour, HashMap<Digest, Vec<u8>>);

/// What a fake peer's have stream does.
pub(super) enum FakeHave {
    /// Sends each value the test sets (the current one first); ends after a `done` one.
    Lines(tokio::sync::watch::Receiver<HaveUpdate>),
    /// Opens, then fails at once.
    Fails,
    /// Opens and never sends a line.
    Silent,
}

/// Peers at fake addresses holding whole blobs in memory.
#[derive(Default)]
pub(super) struct FakePeers {
    peers: Mutex<HashMap<SocketAddr, FakePeer>>,
    /// Have streams, per peer (a peer without one answers "not held").
    haves: Mutex<HashMap<SocketAddr, FakeHave>>,
    /// Have streams asked for, per peer.
    pub(super) have_asks: Mutex<HashMap<SocketAddr, usize>>,
    served: Mutex<HashMap<SocketAddr, u64>>,
    /// Requests in progress and the most seen at once, per peer.
    concurrent: Mutex<HashMap<SocketAddr, (usize, usize)>>,
    /// Requests in progress and the most seen at once, to all peers.
    all: Mutex<(usize, usize)>,
}

impl FakePeers {
    pub(super) fn set_have(&self, addr: SocketAddr, have: FakeHave) {
        self.haves.lock().unwrap().insert(addr, have);
    }

    pub(super) fn add(&self, addr: SocketAddr, behaviour: Behaviour, data: &[u8]) {
        let mut peers = self.peers.lock().unwrap();
        let entry = peers.entry(addr).or_insert((behaviour, HashMap::new()));
        entry.1.insert(Digest::of(data), data.to_vec());
    }

    pub(super) fn served(&self, addr: SocketAddr) -> u64 {
        self.served.lock().unwrap().get(&addr).copied().unwrap_or(0)
    }

    fn most_at_once(&self, addr: SocketAddr) -> usize {
        self.concurrent
            .lock()
            .unwrap()
            .get(&addr)
            .map_or(0, |c| c.1)
    }

    fn most_at_once_to_all(&self) -> usize {
        self.all.lock().unwrap().1
    }

    fn enter(&self, addr: SocketAddr, start: bool) {
        let mut c = self.concurrent.lock().unwrap();
        let mut all = self.all.lock().unwrap();
        for e in [c.entry(addr).or_default(), &mut *all] {
            if start {
                e.0 += 1;
                e.1 = e.1.max(e.0);
            } else {
                e.0 -= 1;
            }
        }
    }
}

impl PeerFetcher for FakePeers {
    fn fetch<'a>(
        &'a self,
        peer: SocketAddr,
        digest: &'a Digest,
        range: Range<u64>,
        _progress: &'a AtomicU64,
    ) -> BoxFuture<'a, Result<Bytes, PeerError>> {
        Box::pin(async move {
            let found = {
                let peers = self.peers.lock().unwrap();
                peers
                    .get(&peer)
                    .map(|(b, blobs)| (*b, blobs.get(digest).cloned()))
            };
            let Some((behaviour, data)) = found else {
                return Err(refused(peer, digest, &range));
            };
            let not_held = || PeerError::NotHeld {
                peer,
                digest: digest.clone(),
                start: range.start,
                end: range.end,
            };
            let data = data.ok_or_else(not_held)?;
            let mut bytes = data
                .get(range.start as usize..range.end as usize)
                .ok_or_else(not_held)?
                .to_vec();
            match behaviour {
                Behaviour::Good => {}
                Behaviour::Corrupt => bytes[0] ^= 0xff,
                Behaviour::Slow(d) => {
                    self.enter(peer, true);
                    tokio::time::sleep(d).await;
                    self.enter(peer, false);
                }
                Behaviour::Down => return Err(refused(peer, digest, &range)),
            }
            *self.served.lock().unwrap().entry(peer).or_default() += bytes.len() as u64;
            Ok(Bytes::from(bytes))
        })
    }

    fn have_stream<'a>(
        &'a self,
        peer: SocketAddr,
        digest: &'a Digest,
        _chunks: u32,
    ) -> BoxFuture<'a, Result<HaveLines, PeerError>> {
        Box::pin(async move {
            *self.have_asks.lock().unwrap().entry(peer).or_default() += 1;
            let lines: HaveLines = match self.haves.lock().unwrap().get(&peer) {
                None => {
                    return Err(PeerError::NoHave {
                        peer,
                        digest: digest.clone(),
                    })
                }
                Some(FakeHave::Fails) => {
                    Box::pin(futures::stream::iter([Err(PeerError::BadResponse {
                        peer,
                        reason: "a malformed line".into(),
                    })]))
                }
                Some(FakeHave::Silent) => Box::pin(futures::stream::pending()),
                Some(FakeHave::Lines(rx)) => {
                    let start = (rx.clone(), true, false);
                    Box::pin(futures::stream::unfold(
                        start,
                        |(mut rx, first, ended)| async move {
                            if ended || (!first && rx.changed().await.is_err()) {
                                return None;
                            }
                            let update = rx.borrow_and_update().clone();
                            let done = update.done;
                            Some((Ok(update), (rx, false, done)))
                        },
                    ))
                }
            };
            Ok(lines)
        })
    }
}

pub(super) fn blob(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

pub(super) fn manifest_of(data: &[u8]) -> ChunkManifest {
    let mut b = ChunkManifestBuilder::new(CHUNK).unwrap();
    b.update(data);
    b.finish(&Digest::of(data)).unwrap()
}

pub(super) fn addr(i: u8) -> SocketAddr {
    format!("10.0.0.{i}:7070").parse().unwrap()
}

pub(super) fn peer_entry(i: u8, data: &[u8]) -> PeerEntry {
    let m = manifest_of(data);
    let set = ChunkSet::full(m.chunks.len() as u32);
    PeerEntry {
        peer_id: format!("peer-{i}"),
        addr: addr(i),
        chunks: set.len(),
        have: set.encode(),
        upload: UploadStats::default(),
        fetching: None,
    }
}

pub(super) struct Rig {
    pub(super) swarm: Swarm,
    pub(super) tracker: Arc<MemoryTracker>,
    pub(super) peers: Arc<FakePeers>,
    pub(super) registry: Arc<RecordingSource>,
    pub(super) image: ImageReference,
    _dir: tempfile::TempDir,
}

pub(super) fn rig_in(dir: tempfile::TempDir, config: impl FnOnce(&mut SwarmConfig)) -> Rig {
    let tracker = Arc::new(MemoryTracker::new());
    let peers = Arc::new(FakePeers::default());
    let registry = Arc::new(RecordingSource::new());
    let cache = BlobCache::open(dir.path(), 1 << 30).unwrap();
    let mut cfg = SwarmConfig::new("me", addr(1));
    cfg.peer_refresh = Duration::from_millis(50);
    config(&mut cfg);
    let swarm = Swarm::new(
        cfg,
        tracker.clone(),
        peers.clone(),
        registry.clone(),
        cache,
        SwarmMetrics::default(),
    );
    Rig {
        swarm,
        tracker,
        peers,
        registry,
        image: "10.0.0.100:5000/app/web:v1".parse().unwrap(),
        _dir: dir,
    }
}

pub(super) fn rig() -> Rig {
    rig_in(tempfile::tempdir().unwrap(), |_| {})
}

pub(super) async fn pull(rig: &Rig, digest: &Digest) -> Vec<u8> {
    let stream = rig.swarm.fetch(&rig.image, digest).await.unwrap();
    let parts: Vec<Bytes> = stream.try_collect().await.unwrap();
    parts.concat()
}

/// Waits until the download of `digest` has been committed to the cache.
pub(super) async fn committed(rig: &Rig, digest: &Digest) {
    for _ in 0..200 {
        if rig.swarm.cache().contains(digest) && rig.swarm.active_downloads().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{digest} never committed");
}

pub(super) fn received(rig: &Rig, source: &'static str) -> u64 {
    let label = crate::metrics::SourceLabel { source };
    rig.swarm.inner().metrics.bytes.get_or_create(&label).get()
}

#[tokio::test]
async fn a_blob_held_by_peers_comes_from_them_in_order_and_is_cached() {
    let rig = rig();
    let data = blob(20 * CHUNK as usize + 1234, 1);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    for i in [2, 3, 4] {
        rig.peers.add(addr(i), Behaviour::Good, &data);
        rig.tracker.add_peer(digest.clone(), peer_entry(i, &data));
    }
    assert_eq!(pull(&rig, &digest).await, data);
    committed(&rig, &digest).await;
    assert_eq!(rig.registry.range_bytes_of(&digest), 0);
    assert_eq!(rig.registry.fetches_of(&digest), 0);
    assert_eq!(received(&rig, "peer"), data.len() as u64);
    // Spread over the peers, not all from one.
    let used = [2, 3, 4]
        .iter()
        .filter(|&&i| rig.peers.served(addr(i)) > 0)
        .count();
    assert!(used >= 2, "only {used} peer(s) used");
    // Seeds it now, whole.
    let ann = rig.swarm.announcement();
    assert_eq!(ann.blobs.len(), 1);
    assert_eq!(ann.blobs[0].have, "all");
    let held = rig.swarm.open(&digest, 10..CHUNK + 10).unwrap();
    assert!(matches!(held, Held::File { len, .. } if len == CHUNK));
    // A second fetch is served from the cache.
    assert_eq!(pull(&rig, &digest).await, data);
    assert_eq!(rig.registry.fetches_of(&digest), 0);
}

#[tokio::test]
async fn chunks_no_peer_holds_come_from_the_registry_in_merged_ranges() {
    let rig = rig();
    let data = blob(40 * CHUNK as usize, 2);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    assert_eq!(pull(&rig, &digest).await, data);
    committed(&rig, &digest).await;
    assert_eq!(rig.registry.range_bytes_of(&digest), data.len() as u64);
    let calls = rig.registry.range_calls().len();
    assert!(calls <= 8, "{calls} range requests for 40 chunks");
    assert_eq!(received(&rig, "registry"), data.len() as u64);
}

#[tokio::test]
async fn a_peer_sending_bad_chunks_is_dropped_and_the_blob_is_still_right() {
    let rig = rig();
    let data = blob(16 * CHUNK as usize, 3);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    rig.peers.add(addr(6), Behaviour::Corrupt, &data);
    rig.tracker.add_peer(digest.clone(), peer_entry(6, &data));
    rig.peers.add(addr(7), Behaviour::Good, &data);
    rig.tracker.add_peer(digest.clone(), peer_entry(7, &data));
    assert_eq!(pull(&rig, &digest).await, data);
    committed(&rig, &digest).await;
    let m = &rig.swarm.inner().metrics;
    assert_eq!(m.peers_dropped.get(), 1);
    // At most the requests in flight when the first bad chunk came back.
    assert!(rig.peers.served(addr(6)) <= 2 * CHUNK);
}

#[tokio::test]
async fn without_trackers_the_blob_comes_whole_from_the_registry_and_is_cached() {
    let rig = rig();
    let data = blob(5 * CHUNK as usize, 4);
    let digest = rig.registry.add(&data);
    rig.tracker.set_down(true);
    assert_eq!(pull(&rig, &digest).await, data);
    assert_eq!(rig.registry.fetches_of(&digest), 1);
    assert_eq!(rig.swarm.inner().metrics.registry_fallbacks.get(), 1);
    for _ in 0..200 {
        if rig.swarm.cache().contains(&digest) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rig.swarm.cache().contains(&digest));
}

#[tokio::test]
async fn a_slow_peer_is_overtaken() {
    let rig = rig();
    let data = blob(12 * CHUNK as usize, 5);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    rig.peers
        .add(addr(8), Behaviour::Slow(Duration::from_secs(30)), &data);
    rig.tracker.add_peer(digest.clone(), peer_entry(8, &data));
    rig.peers.add(addr(9), Behaviour::Good, &data);
    rig.tracker.add_peer(digest.clone(), peer_entry(9, &data));
    let started = std::time::Instant::now();
    assert_eq!(pull(&rig, &digest).await, data);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(rig.peers.served(addr(8)), 0);
}

#[tokio::test]
async fn a_dead_peer_is_dropped_and_the_registry_fills_in() {
    let rig = rig();
    let data = blob(8 * CHUNK as usize, 6);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    rig.peers.add(addr(10), Behaviour::Down, &data);
    rig.tracker.add_peer(digest.clone(), peer_entry(10, &data));
    assert_eq!(pull(&rig, &digest).await, data);
    assert_eq!(rig.registry.range_bytes_of(&digest), data.len() as u64);
}

#[tokio::test]
async fn concurrent_fetches_of_one_blob_share_one_download() {
    let rig = rig();
    let data = blob(10 * CHUNK as usize, 7);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    let (a, b, c) = tokio::join!(
        pull(&rig, &digest),
        pull(&rig, &digest),
        pull(&rig, &digest)
    );
    assert!(a == data && b == data && c == data);
    assert_eq!(rig.registry.range_bytes_of(&digest), data.len() as u64);
}

#[tokio::test]
async fn a_manifest_for_another_blob_is_not_used() {
    let rig = rig();
    let data = blob(3 * CHUNK as usize, 8);
    let digest = rig.registry.add(&data);
    let mut wrong = manifest_of(&blob(3 * CHUNK as usize, 9));
    wrong.digest = digest.clone();
    rig.tracker.add_manifest(wrong);
    // Chunks of the wrong manifest fail their hash from the registry: the download fails and
    // the reader gets an error (shoald then falls back to containerd).
    let stream = rig.swarm.fetch(&rig.image, &digest).await.unwrap();
    let got: Result<Vec<Bytes>, _> = stream.try_collect().await;
    let e = got.unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    assert!(!rig.swarm.cache().contains(&digest));
}

#[tokio::test]
async fn a_restarted_node_announces_what_it_cached() {
    let rig = rig();
    let data = blob(4 * CHUNK as usize, 10);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    pull(&rig, &digest).await;
    committed(&rig, &digest).await;
    let Rig { _dir: dir, .. } = rig;
    let again = rig_in(dir, |_| {});
    let ann = again.swarm.announcement();
    assert_eq!(ann.blobs.len(), 1);
    assert_eq!(ann.blobs[0].digest, digest);
    assert_eq!(ann.blobs[0].chunks, 4);
    assert_eq!(ann.blobs[0].have, "all");
}

#[tokio::test]
async fn chunks_are_announced_while_the_blob_downloads() {
    let rig = rig_in(tempfile::tempdir().unwrap(), |c| {
        c.announce_interval = Duration::from_millis(300);
    });
    let data = blob(30 * CHUNK as usize, 11);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    rig.peers
        .add(addr(12), Behaviour::Slow(Duration::from_millis(40)), &data);
    rig.tracker.add_peer(digest.clone(), peer_entry(12, &data));
    let announcer = tokio::spawn(rig.swarm.clone().run_announcer());
    assert_eq!(pull(&rig, &digest).await, data);
    committed(&rig, &digest).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    announcer.abort();
    let announces = rig.tracker.announces();
    let partial = announces.iter().any(|a| {
        a.blobs
            .iter()
            .any(|b| b.digest == digest && b.have != "all" && b.set().unwrap().count() > 0)
    });
    assert!(partial, "no announce of a partly held blob");
    let last = announces.last().unwrap();
    assert_eq!(last.peer_id, "me");
    assert_eq!(last.blobs[0].have, "all");
}

#[tokio::test]
async fn a_downloads_first_chunks_in_flight_are_announced_without_waiting_out_the_gap() {
    // A long interval: past the gap, only a wake-up brings the next round.
    let rig = rig_in(tempfile::tempdir().unwrap(), |c| {
        c.announce_interval = Duration::from_secs(10);
    });
    let data = blob(8 * CHUNK as usize, 14);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    rig.peers
        .add(addr(12), Behaviour::Slow(Duration::from_millis(100)), &data);
    rig.tracker.add_peer(digest.clone(), peer_entry(12, &data));
    let announcer = tokio::spawn(rig.swarm.clone().run_announcer());
    // The idle round, then a pull starting within the gap after it.
    while rig.tracker.announces().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let idle = std::time::Instant::now();
    let pulling = tokio::spawn({
        let (swarm, image, digest) = (rig.swarm.clone(), rig.image.clone(), digest.clone());
        async move {
            let stream = swarm.fetch(&image, &digest).await.unwrap();
            stream.try_collect::<Vec<Bytes>>().await.unwrap().concat()
        }
    });
    let names = |a: &Announce| a.blobs.iter().any(|b| b.digest == digest);
    while !rig.tracker.announces().iter().any(names) {
        assert!(
            idle.elapsed() < Duration::from_secs(5),
            "the blob never announced"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let after = idle.elapsed();
    // Waiting out the gap would be at least ANNOUNCE_GAP (200 ms) after the idle round.
    assert!(
        after < ANNOUNCE_GAP * 3 / 4,
        "the download's first announce came {after:?} after the idle round"
    );
    let first = rig.tracker.announces().into_iter().find(names).unwrap();
    let blob = first.blobs.iter().find(|b| b.digest == digest).unwrap();
    assert_eq!(
        blob.set().unwrap().count(),
        0,
        "announced before any chunk arrived"
    );
    assert!(blob.fetching_set().unwrap().count() > 0);
    assert_eq!(pulling.await.unwrap(), data);
    announcer.abort();
}

#[tokio::test]
async fn a_node_asks_a_registry_side_seeder_for_one_chunk_at_a_time() {
    let rig = rig();
    let a = blob(6 * CHUNK as usize, 12);
    let b = blob(6 * CHUNK as usize, 13);
    let (da, db) = (rig.registry.add(&a), rig.registry.add(&b));
    for data in [&a, &b] {
        rig.tracker.add_manifest(manifest_of(data));
        rig.peers
            .add(addr(20), Behaviour::Slow(Duration::from_millis(20)), data);
    }
    for (digest, data) in [(&da, &a), (&db, &b)] {
        let mut seeder = peer_entry(20, data);
        seeder.peer_id = format!("{}{}", crate::tracker::SEEDER_ID_PREFIX, addr(20));
        rig.tracker.add_peer(digest.clone(), seeder);
    }
    let (got_a, got_b) = tokio::join!(pull(&rig, &da), pull(&rig, &db));
    assert!(got_a == a && got_b == b);
    assert_eq!(rig.peers.most_at_once(addr(20)), 1);
    assert_eq!(
        rig.registry.range_bytes_of(&da) + rig.registry.range_bytes_of(&db),
        0
    );
}

#[tokio::test]
async fn a_nodes_blobs_share_its_chunk_requests() {
    // Four blobs at once, four nodes holding each, room for four requests per node: per-blob
    // limits would have sixteen in flight at the start.
    let rig = rig_in(tempfile::tempdir().unwrap(), |c| c.in_flight = 4);
    let blobs: Vec<Vec<u8>> = (0..4).map(|k| blob(12 * CHUNK as usize, 40 + k)).collect();
    let mut digests = Vec::new();
    for data in &blobs {
        let digest = rig.registry.add(data);
        rig.tracker.add_manifest(manifest_of(data));
        for i in 20..24 {
            rig.peers
                .add(addr(i), Behaviour::Slow(Duration::from_millis(20)), data);
            rig.tracker.add_peer(digest.clone(), peer_entry(i, data));
        }
        digests.push(digest);
    }
    let got = futures::future::join_all(digests.iter().map(|d| pull(&rig, d))).await;
    assert!(got == blobs);
    // At most the limit, plus one for each blob the others crowded out.
    let most = rig.peers.most_at_once_to_all();
    assert!((4..=7).contains(&most), "{most} requests at once");
    assert!(digests.iter().all(|d| rig.registry.range_bytes_of(d) == 0));
    // Once the downloads have ended (their last requests cancelled), every request is given
    // back.
    for d in &digests {
        committed(&rig, d).await;
    }
    assert_eq!(rig.swarm.inner().peer_requests.load(Ordering::Relaxed), 0);
}

#[test]
fn a_blob_crowded_out_of_the_nodes_requests_still_has_one() {
    // Under the limit: room for anyone.
    assert!(request_room(8, 7, 7));
    // At the limit (or past it): only a blob with no request of its own may go on.
    assert!(!request_room(8, 8, 1));
    assert!(request_room(8, 8, 0));
    assert!(request_room(8, 10, 0) && !request_room(8, 10, 3));
}

#[tokio::test]
async fn a_chunk_another_node_fetches_is_left_to_it_but_not_for_ever() {
    let rig = rig();
    let data = blob(4 * CHUNK as usize, 14);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    rig.peers.add(addr(21), Behaviour::Good, &data);
    let mut seeder = peer_entry(21, &data);
    seeder.peer_id = format!("{}{}", crate::tracker::SEEDER_ID_PREFIX, addr(21));
    rig.tracker.add_peer(digest.clone(), seeder);
    // A node that says it fetches every chunk and never gets any.
    let mut stuck = peer_entry(22, &data);
    stuck.have = ChunkSet::empty(4).encode();
    stuck.fetching = Some("all".into());
    rig.tracker.add_peer(digest.clone(), stuck);
    let started = std::time::Instant::now();
    assert_eq!(pull(&rig, &digest).await, data);
    // It waited for the other node (the overdue limit before any chunk time is known), then
    // went to the seeder anyway.
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rig.peers.served(addr(21)), data.len() as u64);
    assert_eq!(rig.registry.range_bytes_of(&digest), 0);
}

#[tokio::test]
async fn a_clients_credentials_reach_the_registry_for_its_blob() {
    let rig = rig();
    let creds = Credentials::new("Bearer client-token");
    let client = Reader::Client(Some(creds.clone()));
    // Chunks no peer holds: the download's registry ranges carry the client's credentials.
    let data = blob(6 * CHUNK as usize, 9);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    let stream = rig
        .swarm
        .fetch_as(&rig.image, &digest, &client)
        .await
        .unwrap();
    let parts: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(parts.concat(), data);
    committed(&rig, &digest).await;
    let seen = rig.registry.credentials_seen();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|c| c.as_ref() == Some(&creds)), "{seen:?}");
    // Without a manifest the whole blob comes through the fallback, with them too.
    let other = blob(3 * CHUNK as usize, 10);
    let other_digest = rig.registry.add(&other);
    rig.tracker.set_down(true);
    let stream = rig
        .swarm
        .fetch_as(&rig.image, &other_digest, &client)
        .await
        .unwrap();
    let parts: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(parts.concat(), other);
    assert_eq!(rig.registry.fetches_of(&other_digest), 1);
    assert_eq!(rig.registry.credentials_seen().last(), Some(&Some(creds)));
    // And never in a log line.
    assert_eq!(
        format!("{:?}", Credentials::new("Bearer x")),
        "Credentials(<redacted>)"
    );
}

async fn pull_range(rig: &Rig, digest: &Digest, range: Range<u64>) -> Vec<u8> {
    let stream = rig
        .swarm
        .fetch_range(&rig.image, digest, range)
        .await
        .unwrap();
    let parts: Vec<Bytes> = stream.try_collect().await.unwrap();
    parts.concat()
}

#[tokio::test]
async fn ranges_share_the_blobs_download_and_then_come_from_the_cache() {
    let rig = rig();
    let data = blob(12 * CHUNK as usize + 777, 11);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    rig.peers
        .add(addr(2), Behaviour::Slow(Duration::from_millis(20)), &data);
    rig.tracker.add_peer(digest.clone(), peer_entry(2, &data));
    let size = data.len() as u64;
    // Parallel ranges across chunk boundaries, as containerd's parallel fetch sends them.
    let ranges: Vec<Range<u64>> = (0..5)
        .map(|i| i * size / 5..((i + 1) * size / 5))
        .chain([CHUNK - 3..CHUNK + 3, size - 1..size])
        .collect();
    let parts =
        futures::future::join_all(ranges.iter().map(|r| pull_range(&rig, &digest, r.clone())))
            .await;
    for (r, got) in ranges.iter().zip(&parts) {
        assert!(*got == data[r.start as usize..r.end as usize], "{r:?}");
    }
    committed(&rig, &digest).await;
    // One download: every chunk came once, none from the registry.
    assert_eq!(received(&rig, "peer"), size);
    assert_eq!(rig.registry.range_bytes_of(&digest), 0);
    // Now from the cache; past the end is an error.
    assert_eq!(pull_range(&rig, &digest, 5..9).await, data[5..9]);
    assert!(rig
        .swarm
        .fetch_range(&rig.image, &digest, 5..size + 1)
        .await
        .is_err());
    assert_eq!(received(&rig, "peer"), size);
}

#[tokio::test]
async fn a_range_of_a_failing_download_ends_with_its_error() {
    let rig = rig();
    let data = blob(6 * CHUNK as usize, 12);
    let digest = Digest::of(&data);
    // The registry serves wrong bytes for the last chunks and no peer holds any.
    let mut corrupt = data.clone();
    corrupt[5 * CHUNK as usize + 1] ^= 0xff;
    rig.registry.add_as(digest.clone(), &corrupt);
    rig.tracker.add_manifest(manifest_of(&data));
    let stream = rig
        .swarm
        .fetch_range(&rig.image, &digest, 10..6 * CHUNK)
        .await
        .unwrap();
    let items: Vec<Result<Bytes, crate::Error>> = futures::StreamExt::collect(stream).await;
    let got: Vec<u8> = items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .flat_map(|b| b.to_vec())
        .collect();
    assert!(
        matches!(items.last(), Some(Err(_))),
        "the range ended without the error"
    );
    assert!(got.len() < 6 * CHUNK as usize - 10);
    assert!(data[10..].starts_with(&got), "wrong bytes before the cut");
    assert!(rig
        .swarm
        .fetch_range(&rig.image, &digest, 0..6 * CHUNK + 1)
        .await
        .is_err());
}
