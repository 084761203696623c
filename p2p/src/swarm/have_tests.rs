//! Have-stream subscriptions of swarm downloads, against the fakes of [`super::tests`]: a
//! tracker whose peer lists never change, and peers whose have streams the test drives.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::tests::{
    addr, blob, committed, manifest_of, peer_entry, pull, rig, rig_in, Behaviour, FakeHave, CHUNK,
};
use crate::peer::have::HaveUpdate;
use crate::tracker::ChunkSet;

fn set(n: u32, held: impl IntoIterator<Item = u32>) -> ChunkSet {
    let mut s = ChunkSet::empty(n);
    for i in held {
        s.insert(i);
    }
    s
}

/// A blob of 8 chunks whose only peer list ever given names node 2, holding chunk 0 and
/// fetching the others (so they are left to it for the overdue limit, 8 s before any chunk
/// time is known); node 2 gets the rest `after` the start, and only its have stream says so.
fn node_two_done_after(
    rig: &super::tests::Rig,
    seed: u32,
    after: Duration,
) -> (crate::Digest, Vec<u8>) {
    let data = blob(8 * CHUNK as usize, seed);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    let mut entry = peer_entry(2, &data);
    entry.have = set(8, [0]).encode();
    entry.fetching = Some(set(8, 1..8).encode());
    rig.tracker.add_peer(digest.clone(), entry);
    rig.peers.add(addr(2), Behaviour::Good, &data);
    let (tx, rx) = watch::channel(HaveUpdate {
        have: set(8, [0]),
        fetching: set(8, 1..8),
        done: false,
    });
    rig.peers.set_have(addr(2), FakeHave::Lines(rx));
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = tx.send(HaveUpdate {
            have: ChunkSet::full(8),
            fetching: ChunkSet::empty(8),
            done: false,
        });
        // Kept open until the subscriber goes.
        tx.closed().await;
    });
    (digest, data)
}

#[tokio::test]
async fn a_peers_new_chunks_come_through_its_have_stream_without_a_new_peer_list() {
    let rig = rig();
    let (digest, data) = node_two_done_after(&rig, 31, Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(pull(&rig, &digest).await, data);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(rig.registry.range_bytes_of(&digest), 0);
    assert_eq!(rig.peers.served(addr(2)), data.len() as u64);
    let m = &rig.swarm.inner().metrics;
    assert!(m.have_updates.get() >= 2, "{} lines", m.have_updates.get());
    committed(&rig, &digest).await;
    assert_eq!(m.have_streams.get(), 0, "streams left open");
}

#[tokio::test]
async fn peer_lists_that_tell_nothing_the_streams_do_not_are_asked_for_less_often() {
    let rig = rig();
    let (digest, data) = node_two_done_after(&rig, 33, Duration::from_millis(1500));
    let started = Instant::now();
    assert_eq!(pull(&rig, &digest).await, data);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "took {took:?}");
    // Every 50 ms (on the executor's 100 ms tick) that is 15 lists or more; backing off (50
    // ms doubling up to 400 ms once the stream is live) 6.
    let lists = rig.tracker.lists();
    assert!(lists <= 10, "{lists} peer lists in {took:?}");
    assert!(lists >= 2, "{lists} peer lists");
}

#[tokio::test]
async fn a_done_line_leaves_the_peer_a_full_holder() {
    let rig = rig();
    let data = blob(6 * CHUNK as usize, 32);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    let mut entry = peer_entry(3, &data);
    entry.have = ChunkSet::empty(6).encode();
    entry.fetching = Some("all".into());
    rig.tracker.add_peer(digest.clone(), entry);
    rig.peers.add(addr(3), Behaviour::Good, &data);
    let (_tx, rx) = watch::channel(HaveUpdate {
        have: ChunkSet::full(6),
        fetching: ChunkSet::empty(6),
        done: true,
    });
    rig.peers.set_have(addr(3), FakeHave::Lines(rx));
    let started = Instant::now();
    assert_eq!(pull(&rig, &digest).await, data);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(rig.peers.served(addr(3)), data.len() as u64);
    // Its stream ended with done: not asked again, however many peer lists came.
    assert_eq!(rig.peers.have_asks.lock().unwrap()[&addr(3)], 1);
    assert_eq!(rig.swarm.inner().metrics.have_streams.get(), 0);
}

#[tokio::test]
async fn bad_or_silent_streams_never_fail_the_download() {
    let rig = rig();
    let data = blob(6 * CHUNK as usize, 33);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    for (i, have) in [(4, FakeHave::Fails), (5, FakeHave::Silent)] {
        rig.peers
            .add(addr(i), Behaviour::Slow(Duration::from_millis(100)), &data);
        rig.tracker.add_peer(digest.clone(), peer_entry(i, &data));
        rig.peers.set_have(addr(i), have);
    }
    assert_eq!(pull(&rig, &digest).await, data);
    committed(&rig, &digest).await;
    assert_eq!(rig.registry.range_bytes_of(&digest), 0);
    let m = &rig.swarm.inner().metrics;
    assert_eq!(m.have_updates.get(), 0);
    assert_eq!(m.have_streams.get(), 0, "streams left open");
    // The failed one was not asked again at once (peer lists came every 50 ms).
    assert_eq!(rig.peers.have_asks.lock().unwrap()[&addr(4)], 1);
}

#[tokio::test]
async fn without_have_peers_no_stream_is_opened() {
    let rig = rig_in(tempfile::tempdir().unwrap(), |c| c.have_peers = 0);
    let data = blob(4 * CHUNK as usize, 34);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    rig.peers.add(addr(6), Behaviour::Good, &data);
    rig.tracker.add_peer(digest.clone(), peer_entry(6, &data));
    rig.peers.set_have(addr(6), FakeHave::Silent);
    assert_eq!(pull(&rig, &digest).await, data);
    assert!(rig.peers.have_asks.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_node_streams_its_download_then_one_done_line_for_the_cached_blob() {
    use futures::StreamExt;

    use crate::peer::have::{HaveDecoder, HaveLine, HAVE_COALESCE};
    use crate::peer::ChunkProvider;

    let rig = rig();
    let data = blob(5 * CHUNK as usize, 35);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    // Neither held nor downloading: no stream.
    assert!(rig.swarm.have(&digest).is_none());
    rig.peers
        .add(addr(7), Behaviour::Slow(Duration::from_millis(50)), &data);
    rig.tracker.add_peer(digest.clone(), peer_entry(7, &data));
    let reading = {
        let rig_swarm = rig.swarm.clone();
        let image = rig.image.clone();
        let digest = digest.clone();
        tokio::spawn(async move {
            let stream = crate::source::BlobSource::fetch(&rig_swarm, &image, &digest)
                .await
                .unwrap();
            futures::TryStreamExt::try_collect::<Vec<bytes::Bytes>>(stream)
                .await
                .unwrap()
                .concat()
        })
    };
    // While it downloads: its state as it changes, ending with done once committed.
    let feed = loop {
        if let Some(feed) = rig.swarm.have(&digest) {
            break feed;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let lines: Vec<bytes::Bytes> = feed.lines(HAVE_COALESCE).collect().await;
    let mut decoder = HaveDecoder::new(5);
    let mut updates = Vec::new();
    for line in &lines {
        decoder.push(line);
        while let Some(update) = decoder.next_line().unwrap() {
            updates.push(update);
        }
    }
    assert!(updates.len() >= 2, "{updates:?}");
    assert!(!updates[0].done);
    assert!(updates.last().unwrap().done);
    // Held chunks only grow along the way.
    for pair in updates.windows(2) {
        assert!(pair[0].have.iter().all(|i| pair[1].have.contains(i)));
    }
    assert_eq!(reading.await.unwrap(), data);
    committed(&rig, &digest).await;
    // Cached, manifest known: one done line.
    let lines: Vec<bytes::Bytes> = rig
        .swarm
        .have(&digest)
        .unwrap()
        .lines(HAVE_COALESCE)
        .collect()
        .await;
    assert_eq!(lines, vec![HaveLine::done(5).encode()]);
}
