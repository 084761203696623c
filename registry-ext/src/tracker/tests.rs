//! The tracker's rules: peer lists, expiry, and full and delta announces.
use super::*;
use shoal_p2p::tracker::proto::{BlobHave, ChunkSet};
use std::collections::HashSet;

mod delta;

fn cfg() -> TrackerConfig {
    TrackerConfig {
        announce_interval_ms: 1000,
        peer_ttl_ms: 5000,
        max_peers: 30,
    }
}

fn stats(capacity: u64, rate: u64, active: u32) -> UploadStats {
    UploadStats {
        capacity_bytes_per_sec: capacity,
        rate_bytes_per_sec: rate,
        active,
        max: 8,
    }
}

fn announce(id: &str, port: u16, upload: UploadStats, blobs: &[(&Digest, ChunkSet)]) -> Announce {
    Announce {
        peer_id: id.into(),
        addr: SocketAddr::from(([10, 0, 0, 1], port)),
        upload,
        blobs: blobs
            .iter()
            .map(|(d, s)| BlobHave::new((*d).clone(), s))
            .collect(),
    }
}

fn ids(list: &[PeerEntry]) -> Vec<&str> {
    list.iter().map(|e| e.peer_id.as_str()).collect()
}

#[test]
fn spare_capacity_usually_but_not_always_comes_first() {
    let d = Digest::of(b"blob");
    let full = ChunkSet::full(10);
    let mut t = Tracker::new(&cfg());
    let now = Instant::now();
    // Weights 100 : 10 : 10 (in MB/s of spare capacity).
    t.announce(
        announce("fast", 1, stats(100_000_000, 0, 0), &[(&d, full.clone())]),
        now,
    )
    .unwrap();
    t.announce(
        announce(
            "busy",
            2,
            stats(100_000_000, 90_000_000, 0),
            &[(&d, full.clone())],
        ),
        now,
    )
    .unwrap();
    t.announce(
        announce("loaded", 3, stats(20_000_000, 0, 1), &[(&d, full.clone())]),
        now,
    )
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let samples = 10_000;
    let mut fast_first = 0;
    for _ in 0..samples {
        let list = t.peers(&d, "me", 30, None, now, &mut rng);
        assert_eq!(list.len(), 3);
        if list[0].peer_id == "fast" {
            fast_first += 1;
        }
    }
    // Expected share 100/120 = 0.83.
    assert!(fast_first > samples * 3 / 4, "{fast_first}");
    assert!(fast_first < samples * 9 / 10, "{fast_first}");
}

#[test]
fn holding_more_of_the_blob_is_preferred_and_unknown_capacity_gets_the_median() {
    let d = Digest::of(b"blob");
    let mut one = ChunkSet::empty(100);
    one.insert(5);
    let mut t = Tracker::new(&cfg());
    let now = Instant::now();
    t.announce(
        announce("all", 1, stats(0, 0, 0), &[(&d, ChunkSet::full(100))]),
        now,
    )
    .unwrap();
    t.announce(announce("one", 2, stats(0, 0, 0), &[(&d, one)]), now)
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(1);
    let all_first = (0..2000)
        .filter(|_| t.peers(&d, "me", 30, None, now, &mut rng)[0].peer_id == "all")
        .count();
    // Weights 1 : 0.2575 -> about 80%.
    assert!((1400..1800).contains(&all_first), "{all_first}");
    assert_eq!(select::weight(&stats(0, 0, 0), 50.0, 1, 1), 50.0);
    assert_eq!(select::weight(&stats(100, 100, 0), 50.0, 1, 1), 5.0);
}

#[test]
fn holders_of_nothing_and_the_asker_are_left_out_and_lists_are_capped() {
    let d = Digest::of(b"blob");
    let other = Digest::of(b"other");
    let mut t = Tracker::new(&TrackerConfig {
        max_peers: 3,
        ..cfg()
    });
    let now = Instant::now();
    t.announce(
        announce("empty", 1, stats(0, 0, 0), &[(&d, ChunkSet::empty(4))]),
        now,
    )
    .unwrap();
    t.announce(
        announce(
            "elsewhere",
            2,
            stats(0, 0, 0),
            &[(&other, ChunkSet::full(4))],
        ),
        now,
    )
    .unwrap();
    for i in 0..5 {
        let id = format!("holder-{i}");
        t.announce(
            announce(&id, 10 + i, stats(0, 0, 0), &[(&d, ChunkSet::full(4))]),
            now,
        )
        .unwrap();
    }
    let mut rng = fastrand::Rng::with_seed(3);
    let list = t.peers(&d, "holder-0", 30, None, now, &mut rng);
    assert_eq!(list.len(), 3);
    for id in ids(&list) {
        assert!(id.starts_with("holder-") && id != "holder-0", "{id}");
    }
    assert_eq!(t.peers(&d, "x", 2, None, now, &mut rng).len(), 2);
    assert!(t
        .peers(&Digest::of(b"none"), "x", 9, None, now, &mut rng)
        .is_empty());
    assert_eq!(t.peer_count(), 7);
}

#[test]
fn the_seeder_is_always_listed_first_however_busy() {
    let d = Digest::of(b"blob");
    let mut t = Tracker::new(&cfg());
    let now = Instant::now();
    // 40 idle holders of the whole blob, each far more attractive than a busy seeder.
    for i in 0..40 {
        t.announce(
            announce(
                &format!("node-{i}"),
                1000 + i,
                stats(100, 0, 0),
                &[(&d, ChunkSet::full(3))],
            ),
            now,
        )
        .unwrap();
    }
    let seeder = PeerEntry {
        peer_id: format!("{SEEDER_ID_PREFIX}10.0.0.9:7080"),
        addr: "10.0.0.9:7080".parse().unwrap(),
        chunks: 3,
        have: ChunkSet::full(3).encode(),
        upload: stats(100, 100, 16),
        fetching: None,
    };
    let mut rng = fastrand::Rng::with_seed(5);
    for _ in 0..200 {
        let list = t.peers(&d, "me", 30, Some(seeder.clone()), now, &mut rng);
        // It takes one of the 30 places.
        assert_eq!(list.len(), 30);
        assert_eq!(list[0].peer_id, seeder.peer_id);
        assert!(list[1..].iter().all(|p| p.peer_id.starts_with("node-")));
    }
    // A list of one is the seeder alone; the seeder asking is not listed to itself.
    let one = t.peers(&d, "me", 1, Some(seeder.clone()), now, &mut rng);
    assert_eq!(ids(&one), vec![seeder.peer_id.as_str()]);
    let own = t.peers(&d, &seeder.peer_id, 30, Some(seeder.clone()), now, &mut rng);
    assert_eq!(own.len(), 30);
    assert!(own.iter().all(|p| p.peer_id.starts_with("node-")));
    // A seeder entry for an empty blob is not listed.
    let empty = PeerEntry {
        chunks: 0,
        have: ChunkSet::full(0).encode(),
        ..seeder
    };
    let list = t.peers(&d, "me", 30, Some(empty), now, &mut rng);
    assert_eq!(list.len(), 30);
    assert!(list.iter().all(|p| p.peer_id.starts_with("node-")));
}

#[test]
fn peers_fetching_but_holding_nothing_are_listed_last() {
    let d = Digest::of(b"blob");
    let now = Instant::now();
    let mut t = Tracker::new(&TrackerConfig::default());
    let mut holds = ChunkSet::empty(4);
    holds.insert(0);
    let mut fetching = ChunkSet::empty(4);
    fetching.insert(2);
    let announce = |id: &str, ip: u8, set: &ChunkSet, f: &ChunkSet| Announce {
        peer_id: id.into(),
        addr: format!("10.0.0.{ip}:7070").parse().unwrap(),
        upload: stats(100, 0, 0),
        blobs: vec![BlobHave::new(d.clone(), set).with_fetching(f)],
    };
    t.announce(announce("holder", 1, &holds, &ChunkSet::empty(4)), now)
        .unwrap();
    t.announce(announce("fetcher", 2, &ChunkSet::empty(4), &fetching), now)
        .unwrap();
    t.announce(
        announce("idle", 3, &ChunkSet::empty(4), &ChunkSet::empty(4)),
        now,
    )
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(1);
    for _ in 0..20 {
        let list = t.peers(&d, "me", 30, None, now, &mut rng);
        let ids: Vec<&str> = list.iter().map(|e| e.peer_id.as_str()).collect();
        assert_eq!(ids, ["holder", "fetcher"]);
        assert_eq!(list[1].fetching_set().unwrap(), fetching);
        assert!(list[0].fetching.is_none());
    }
    let mut bad = announce("bad", 4, &holds, &ChunkSet::empty(4));
    bad.blobs[0].fetching = Some("!!".into());
    assert!(t.announce(bad, now).is_err());
}

#[test]
fn peers_expire_after_the_ttl_unless_they_announce_again() {
    let d = Digest::of(b"blob");
    let mut t = Tracker::new(&cfg());
    let t0 = Instant::now();
    let mut rng = fastrand::Rng::with_seed(9);
    let full = ChunkSet::full(2);
    t.announce(announce("a", 1, stats(0, 0, 0), &[(&d, full.clone())]), t0)
        .unwrap();
    t.announce(announce("b", 2, stats(0, 0, 0), &[(&d, full.clone())]), t0)
        .unwrap();
    let t4 = t0 + Duration::from_millis(4000);
    t.announce(announce("b", 2, stats(0, 0, 0), &[(&d, full.clone())]), t4)
        .unwrap();
    assert_eq!(t.peers(&d, "x", 9, None, t4, &mut rng).len(), 2);
    let t5 = t0 + Duration::from_millis(5000);
    assert_eq!(ids(&t.peers(&d, "x", 9, None, t5, &mut rng)), ["b"]);
    assert_eq!(t.peer_count(), 1);
    let t9 = t0 + Duration::from_millis(9000);
    assert!(t.peers(&d, "x", 9, None, t9, &mut rng).is_empty());
    assert_eq!(t.peer_count(), 0);
    assert!(t.by_blob.is_empty() && t.deadlines.is_empty());
}

#[test]
fn a_chunk_is_lost_once_no_peer_heard_from_lately_holds_it() {
    let d = Digest::of(b"blob");
    let other = Digest::of(b"other");
    let mut t = Tracker::new(&cfg());
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut one = ChunkSet::empty(4);
    one.insert(1);
    let mut fetching = ChunkSet::empty(4);
    fetching.insert(2);
    t.announce(
        Announce {
            blobs: vec![BlobHave::new(d.clone(), &ChunkSet::empty(4)).with_fetching(&fetching)],
            ..announce("b", 2, stats(0, 0, 0), &[])
        },
        t0,
    )
    .unwrap();
    t.announce(
        announce("a", 1, stats(0, 0, 0), &[(&d, one.clone())]),
        at(1_000),
    )
    .unwrap();
    // Not before two announce intervals (2 s) after `since`: its receiver may not have
    // announced it yet.
    assert!(!t.lost(&d, 0, t0, at(1_999)));
    assert!(t.lost(&d, 0, t0, at(2_000)));
    // Chunk 1 is held by a peer heard from within two intervals; a chunk only fetched is not
    // held; a blob nobody announced is lost.
    assert!(!t.lost(&d, 1, t0, at(2_000)));
    assert!(!t.lost(&d, 1, t0, at(2_999)));
    assert!(t.lost(&d, 2, t0, at(2_000)));
    assert!(t.lost(&other, 1, t0, at(2_000)));
    // Its holder silent for two intervals: lost, though the TTL (5 s) keeps the peer.
    assert!(t.lost(&d, 1, t0, at(3_000)));
    assert_eq!(t.peer_count(), 2);
    // It announces again: held, until it is silent for two intervals again.
    t.announce(
        announce("a", 1, stats(0, 0, 0), &[(&d, one.clone())]),
        at(3_500),
    )
    .unwrap();
    assert!(!t.lost(&d, 1, t0, at(5_499)));
    assert!(t.lost(&d, 1, t0, at(5_500)));
}

#[test]
fn an_announce_replaces_the_peers_state() {
    let d1 = Digest::of(b"one");
    let d2 = Digest::of(b"two");
    let mut t = Tracker::new(&cfg());
    let now = Instant::now();
    let mut rng = fastrand::Rng::with_seed(2);
    let reply = t
        .announce(
            announce("a", 1, stats(0, 0, 0), &[(&d1, ChunkSet::full(2))]),
            now,
        )
        .unwrap();
    assert_eq!(reply.interval_ms, 1000);
    let mut half = ChunkSet::empty(4);
    half.insert(0);
    half.insert(1);
    t.announce(
        announce("a", 2, stats(5, 1, 2), &[(&d2, half.clone())]),
        now,
    )
    .unwrap();
    assert!(t.peers(&d1, "x", 9, None, now, &mut rng).is_empty());
    let list = t.peers(&d2, "x", 9, None, now, &mut rng);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].addr.port(), 2);
    assert_eq!(list[0].upload, stats(5, 1, 2));
    assert_eq!(list[0].set().unwrap(), half);
    assert_eq!(t.peer_count(), 1);
}

#[test]
fn malformed_announces_are_refused_and_change_nothing() {
    let d = Digest::of(b"blob");
    let mut t = Tracker::new(&cfg());
    let now = Instant::now();
    let good = announce("a", 1, stats(0, 0, 0), &[(&d, ChunkSet::full(2))]);
    t.announce(good.clone(), now).unwrap();
    let mut bits_past_end = good.clone();
    bits_past_end.blobs[0].have = "CA".into();
    bits_past_end.blobs[0].chunks = 3;
    let mut wrong_len = good.clone();
    wrong_len.blobs[0].have = "AAA".into();
    wrong_len.blobs[0].chunks = 8;
    let mut not_base64 = good.clone();
    not_base64.blobs[0].have = "!!".into();
    let mut twice = good.clone();
    twice.blobs.push(twice.blobs[0].clone());
    let mut huge = good.clone();
    huge.blobs[0].chunks = MAX_CHUNKS_PER_BLOB + 1;
    let mut no_id = good.clone();
    no_id.peer_id.clear();
    let mut seeder_id = good.clone();
    seeder_id.peer_id = format!("{SEEDER_ID_PREFIX}x");
    let mut unspecified = good.clone();
    unspecified.addr = "0.0.0.0:7070".parse().unwrap();
    for bad in [
        bits_past_end,
        wrong_len,
        not_base64,
        twice,
        huge,
        no_id,
        seeder_id,
        unspecified,
    ] {
        let e = t.announce(bad, now).unwrap_err();
        assert!(matches!(e, Error::BadRequest(_)), "{e}");
    }
    let mut rng = fastrand::Rng::with_seed(0);
    let list = t.peers(&d, "x", 9, None, now, &mut rng);
    assert_eq!(ids(&list), ["a"]);
    assert_eq!(list[0].addr.port(), 1);
}

#[test]
fn a_peer_list_names_a_holder_of_every_chunk_a_third_of_its_sample_holds() {
    let d = Digest::of(b"blob");
    let mut t = Tracker::new(&cfg());
    let now = Instant::now();
    let holding = |chunks: std::ops::Range<u32>| {
        let mut set = ChunkSet::empty(8);
        chunks.for_each(|i| set.insert(i));
        set
    };
    // 20 idle nodes that just joined and hold only chunk 0; 12 busy ones holding chunks
    // 0-6 (a busy holder weighs about 1/70 of an idle one: the weighted order alone lists
    // one about every other time); one busy node alone in holding chunk 7.
    for i in 0..20 {
        let id = format!("new-{i}");
        t.announce(
            announce(
                &id,
                100 + i,
                stats(100_000_000, 0, 0),
                &[(&d, holding(0..1))],
            ),
            now,
        )
        .unwrap();
    }
    let busy = stats(100_000_000, 100_000_000, 8);
    for i in 0..12 {
        let id = format!("most-{i}");
        t.announce(announce(&id, 10 + i, busy, &[(&d, holding(0..7))]), now)
            .unwrap();
    }
    t.announce(announce("rare", 2, busy, &[(&d, holding(7..8))]), now)
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    let count = |list: &[PeerEntry], prefix: &str| {
        ids(list).iter().filter(|id| id.starts_with(prefix)).count()
    };
    let mut rare = 0;
    for _ in 0..100 {
        // 20 places; every holder sampled, 32 of them drawn and weighed. A holder of chunks
        // 1-6 (12 of 33 hold them) is listed; chunk 7 (1 of 33) is left to rarity.
        let list = t.peers(&d, "other", 20, None, now, &mut rng);
        assert_eq!(list.len(), 20);
        assert!(count(&list, "most-") >= 1, "{:?}", ids(&list));
        rare += count(&list, "rare");
        // 10 places: never longer.
        assert_eq!(t.peers(&d, "other", 10, None, now, &mut rng).len(), 10);
    }
    // By the weighted order alone: about one list in 20.
    assert!(rare < 15, "the rare holder listed {rare} times in 100");
    // An asker holding chunks 0-6 itself needs none of those holders: they are listed by
    // the weighted order alone.
    t.announce(
        announce("me", 1, stats(100_000_000, 0, 0), &[(&d, holding(0..7))]),
        now,
    )
    .unwrap();
    let without = (0..100)
        .filter(|_| count(&t.peers(&d, "me", 20, None, now, &mut rng), "most-") == 0)
        .count();
    assert!(
        (25..=75).contains(&without),
        "{without} of 100 lists without a holder of chunks 1-6"
    );
}
