//! Delta announces and pacing.

use super::*;
use shoal_p2p::tracker::proto::PeerList;
use std::collections::HashMap;

fn delta(id: &str, seq: u64, base: Option<u64>, blobs: &[(&Digest, ChunkSet)]) -> DeltaAnnounce {
    let a = announce(id, 1, stats(0, 0, 0), blobs);
    DeltaAnnounce {
        seq,
        base,
        ..DeltaAnnounce::full(&a, seq)
    }
}

fn held_by(t: &mut Tracker, d: &Digest, now: Instant) -> Vec<(String, u32)> {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut list: Vec<(String, u32)> = t
        .peers(d, "nobody", 1000, None, now, &mut rng)
        .into_iter()
        .map(|e| {
            let count = e.set().unwrap().count();
            (e.peer_id, count)
        })
        .collect();
    list.sort();
    list
}

#[test]
fn a_delta_changes_adds_and_removes_blobs_on_top_of_its_base() {
    let (d1, d2, d3) = (Digest::of(b"1"), Digest::of(b"2"), Digest::of(b"3"));
    let mut t = Tracker::new(&cfg());
    let now = Instant::now();
    let mut one = ChunkSet::empty(4);
    one.insert(1);
    let r = t
        .announce_delta(
            delta(
                "a",
                1,
                None,
                &[(&d1, one.clone()), (&d2, ChunkSet::full(2))],
            ),
            now,
        )
        .unwrap();
    assert!(!r.full_state_needed);
    assert_eq!(r.interval_ms, 1000);
    // Blob 1 grows, blob 2 goes, blob 3 comes.
    let mut change = delta(
        "a",
        2,
        Some(1),
        &[(&d1, ChunkSet::full(4)), (&d3, ChunkSet::full(1))],
    );
    change.removed = vec![d2.clone()];
    change.upload = stats(7, 0, 0);
    let r = t.announce_delta(change, now).unwrap();
    assert!(!r.full_state_needed);
    assert_eq!(held_by(&mut t, &d1, now), [("a".to_string(), 4)]);
    assert!(held_by(&mut t, &d2, now).is_empty());
    assert_eq!(held_by(&mut t, &d3, now), [("a".to_string(), 1)]);
    let mut rng = fastrand::Rng::with_seed(1);
    assert_eq!(
        t.peers(&d1, "x", 9, None, now, &mut rng)[0].upload,
        stats(7, 0, 0)
    );
    // An empty delta (nothing changed) keeps everything and moves the base on.
    assert!(
        !t.announce_delta(delta("a", 3, Some(2), &[]), now)
            .unwrap()
            .full_state_needed
    );
    assert_eq!(held_by(&mut t, &d1, now), [("a".to_string(), 4)]);
    assert!(
        !t.announce_delta(delta("a", 4, Some(3), &[]), now)
            .unwrap()
            .full_state_needed
    );
}

#[test]
fn a_gap_in_the_sequence_asks_for_the_whole_state_and_changes_nothing() {
    let d = Digest::of(b"blob");
    let mut t = Tracker::new(&cfg());
    let t0 = Instant::now();
    t.announce_delta(delta("a", 1, None, &[(&d, ChunkSet::full(2))]), t0)
        .unwrap();
    // Delta 2 was lost: delta 3 builds on 2, which this tracker never took.
    let t3 = t0 + Duration::from_millis(3000);
    let r = t.announce_delta(delta("a", 3, Some(2), &[]), t3).unwrap();
    assert!(r.full_state_needed);
    // Nothing changed, not even when the peer was last heard from.
    assert_eq!(held_by(&mut t, &d, t3), [("a".to_string(), 2)]);
    assert!(held_by(&mut t, &d, t0 + Duration::from_millis(5000)).is_empty());
    // The whole state puts it back; deltas on top of it apply.
    t.announce_delta(delta("a", 4, None, &[(&d, ChunkSet::empty(2))]), t3)
        .unwrap();
    let r = t
        .announce_delta(delta("a", 5, Some(4), &[(&d, ChunkSet::full(2))]), t3)
        .unwrap();
    assert!(!r.full_state_needed);
    assert_eq!(held_by(&mut t, &d, t3), [("a".to_string(), 2)]);
}

#[test]
fn a_restarted_tracker_or_an_expired_peer_asks_for_the_whole_state() {
    let d = Digest::of(b"blob");
    let now = Instant::now();
    let mut before = Tracker::new(&cfg());
    before
        .announce_delta(delta("a", 1, None, &[(&d, ChunkSet::full(2))]), now)
        .unwrap();
    // A new process knows nobody.
    let mut t = Tracker::new(&cfg());
    assert!(
        t.announce_delta(delta("a", 2, Some(1), &[]), now)
            .unwrap()
            .full_state_needed
    );
    assert_eq!(t.peer_count(), 0);
    t.announce_delta(delta("a", 3, None, &[(&d, ChunkSet::full(2))]), now)
        .unwrap();
    assert_eq!(held_by(&mut t, &d, now), [("a".to_string(), 2)]);
    // Silent past the TTL: forgotten, so its next delta has no base here.
    let late = now + Duration::from_millis(6000);
    assert!(
        t.announce_delta(delta("a", 4, Some(3), &[]), late)
            .unwrap()
            .full_state_needed
    );
    assert_eq!(t.peer_count(), 0);
}

#[test]
fn deltas_keep_a_peer_alive() {
    let d = Digest::of(b"blob");
    let mut t = Tracker::new(&cfg());
    let t0 = Instant::now();
    t.announce_delta(delta("a", 1, None, &[(&d, ChunkSet::full(2))]), t0)
        .unwrap();
    for k in 1..=4u64 {
        let at = t0 + Duration::from_millis(4000 * k);
        assert!(
            !t.announce_delta(delta("a", k + 1, Some(k), &[]), at)
                .unwrap()
                .full_state_needed
        );
    }
    let t16 = t0 + Duration::from_millis(16_000);
    assert_eq!(held_by(&mut t, &d, t16), [("a".to_string(), 2)]);
    assert!(held_by(&mut t, &d, t0 + Duration::from_millis(21_000)).is_empty());
    assert!(t.by_blob.is_empty() && t.deadlines.is_empty() && t.by_id.is_empty());
}

#[test]
fn malformed_deltas_are_refused_and_change_nothing() {
    let (d, other) = (Digest::of(b"blob"), Digest::of(b"other"));
    let mut t = Tracker::new(&cfg());
    let now = Instant::now();
    t.announce_delta(delta("a", 1, None, &[(&d, ChunkSet::full(2))]), now)
        .unwrap();
    let mut not_after_base = delta("a", 1, Some(1), &[]);
    not_after_base.seq = 1;
    let mut removed_not_held = delta("a", 2, Some(1), &[]);
    removed_not_held.removed = vec![other.clone()];
    let mut removed_twice = delta("a", 2, Some(1), &[]);
    removed_twice.removed = vec![d.clone(), d.clone()];
    let mut changed_and_removed = delta("a", 2, Some(1), &[(&d, ChunkSet::empty(2))]);
    changed_and_removed.removed = vec![d.clone()];
    let mut whole_with_removals = delta("a", 2, None, &[]);
    whole_with_removals.removed = vec![d.clone()];
    let mut bad_set = delta("a", 2, Some(1), &[(&d, ChunkSet::empty(2))]);
    bad_set.blobs[0].have = "!!".into();
    let mut twice = delta("a", 2, Some(1), &[(&other, ChunkSet::full(1))]);
    twice.blobs.push(twice.blobs[0].clone());
    let mut seeder = delta("a", 2, Some(1), &[]);
    seeder.peer_id = format!("{SEEDER_ID_PREFIX}x");
    let mut unspecified = delta("a", 2, Some(1), &[]);
    unspecified.addr = "0.0.0.0:7070".parse().unwrap();
    for bad in [
        not_after_base,
        removed_not_held,
        removed_twice,
        changed_and_removed,
        whole_with_removals,
        bad_set,
        twice,
        seeder,
        unspecified,
    ] {
        let e = t.announce_delta(bad.clone(), now).unwrap_err();
        assert!(matches!(e, Error::BadRequest(_)), "{bad:?}: {e}");
    }
    assert_eq!(held_by(&mut t, &d, now), [("a".to_string(), 2)]);
    assert!(held_by(&mut t, &other, now).is_empty());
    // The base is still 1.
    assert!(
        !t.announce_delta(delta("a", 2, Some(1), &[]), now)
            .unwrap()
            .full_state_needed
    );
}

#[test]
fn whole_state_announces_of_older_nodes_work_beside_deltas() {
    let d = Digest::of(b"blob");
    let mut t = Tracker::new(&cfg());
    let now = Instant::now();
    // An older node: whole states on the older route, every time.
    t.announce(
        announce("old", 1, stats(0, 0, 0), &[(&d, ChunkSet::full(2))]),
        now,
    )
    .unwrap();
    t.announce_delta(delta("new", 1, None, &[(&d, ChunkSet::empty(2))]), now)
        .unwrap();
    let mut one = ChunkSet::empty(2);
    one.insert(0);
    t.announce_delta(delta("new", 2, Some(1), &[(&d, one)]), now)
        .unwrap();
    t.announce(
        announce("old", 1, stats(0, 0, 0), &[(&d, ChunkSet::full(2))]),
        now,
    )
    .unwrap();
    assert_eq!(
        held_by(&mut t, &d, now),
        [("new".to_string(), 1), ("old".to_string(), 2)]
    );
    // A node downgraded (or upgraded) between rounds: a whole state on the older route
    // carries no sequence number, so a delta after it asks for the whole state.
    t.announce(
        announce("new", 1, stats(0, 0, 0), &[(&d, ChunkSet::full(2))]),
        now,
    )
    .unwrap();
    assert!(
        t.announce_delta(delta("new", 3, Some(2), &[]), now)
            .unwrap()
            .full_state_needed
    );
    assert_eq!(
        held_by(&mut t, &d, now),
        [("new".to_string(), 2), ("old".to_string(), 2)]
    );
}

#[test]
fn holders_move_between_lists_as_their_chunks_arrive() {
    let d = Digest::of(b"blob");
    let mut t = Tracker::new(&cfg());
    let now = Instant::now();
    let mut fetching = ChunkSet::empty(4);
    fetching.insert(3);
    let fetch_only = |id: &str, seq, base| {
        let mut a = delta(id, seq, base, &[]);
        a.blobs = vec![BlobHave::new(d.clone(), &ChunkSet::empty(4)).with_fetching(&fetching)];
        a
    };
    for id in ["a", "b", "c"] {
        t.announce_delta(fetch_only(id, 1, None), now).unwrap();
    }
    let mut rng = fastrand::Rng::with_seed(3);
    let listed = |t: &mut Tracker, rng: &mut fastrand::Rng| -> Vec<(String, u32)> {
        t.peers(&d, "x", 30, None, now, rng)
            .into_iter()
            .map(|e| (e.peer_id.clone(), e.set().unwrap().count()))
            .collect()
    };
    assert_eq!(listed(&mut t, &mut rng).len(), 3);
    // b gets a chunk: listed first now, as a holder.
    let mut one = ChunkSet::empty(4);
    one.insert(0);
    t.announce_delta(delta("b", 2, Some(1), &[(&d, one)]), now)
        .unwrap();
    let l = listed(&mut t, &mut rng);
    assert_eq!(l[0], ("b".to_string(), 1));
    assert_eq!(l.len(), 3);
    // a stops fetching (still listed as holding nothing: not listed), c drops the blob.
    t.announce_delta(delta("a", 2, Some(1), &[(&d, ChunkSet::empty(4))]), now)
        .unwrap();
    let mut gone = delta("c", 2, Some(1), &[]);
    gone.removed = vec![d.clone()];
    t.announce_delta(gone, now).unwrap();
    assert_eq!(listed(&mut t, &mut rng), [("b".to_string(), 1)]);
    let mut gone = delta("b", 3, Some(2), &[]);
    gone.removed = vec![d.clone()];
    t.announce_delta(gone, now).unwrap();
    assert!(t.by_blob.is_empty());
    assert_eq!(t.peer_count(), 3);
}

#[test]
fn a_peer_list_of_a_crowded_blob_is_drawn_from_a_sample_and_stays_weighted() {
    let d = Digest::of(b"blob");
    let mut t = Tracker::new(&cfg());
    let now = Instant::now();
    // 2,000 slow holders and 20 fast ones (100x the spare capacity).
    for i in 0..2020u32 {
        let capacity = if i < 20 { 100_000_000 } else { 1_000_000 };
        let mut a = delta(&format!("n{i}"), 1, None, &[(&d, ChunkSet::full(8))]);
        a.upload = stats(capacity, 0, 0);
        t.announce_delta(a, now).unwrap();
    }
    let mut rng = fastrand::Rng::with_seed(8);
    let mut fast = 0;
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let list = t.peers(&d, "n5", 30, None, now, &mut rng);
        assert_eq!(list.len(), 30);
        assert!(list.iter().all(|e| e.peer_id != "n5"));
        let ids: HashSet<&str> = list.iter().map(|e| e.peer_id.as_str()).collect();
        assert_eq!(ids.len(), 30, "no peer twice");
        fast += list[..5]
            .iter()
            .filter(|e| e.upload.capacity_bytes_per_sec == 100_000_000)
            .count();
        seen.extend(list.into_iter().map(|e| e.peer_id));
    }
    // A sample of 121 holds about 1.2 fast holders; weighted 100:1 they come first.
    assert!(fast > 150, "{fast}");
    // Lists spread over the swarm rather than repeating the same peers.
    assert!(seen.len() > 1500, "{}", seen.len());
}

#[test]
fn pacing_grows_with_the_peers_tracked() {
    let mut t = Tracker::new(&cfg());
    let now = Instant::now();
    // Up to a step: no pacing (nodes go at their own 200 ms / 500 ms).
    assert_eq!(t.pacing(), (0, 0));
    let add = |t: &mut Tracker, from: usize, to: usize| {
        for i in from..to {
            t.announce_delta(delta(&format!("n{i}"), 1, None, &[]), now)
                .unwrap();
        }
    };
    add(&mut t, 0, 1000);
    assert_eq!(t.pacing(), (0, 0));
    let r = t.announce_delta(delta("n1000", 1, None, &[]), now).unwrap();
    assert_eq!((r.min_interval_ms, r.peer_list_interval_ms), (400, 1000));
    add(&mut t, 1001, 5000);
    // Announces no slower than the announce interval; peer lists at most every 5 s.
    assert_eq!(t.pacing(), (1000, 2500));
    add(&mut t, 5000, 12_000);
    assert_eq!(t.pacing(), (1000, MAX_PEER_LIST_MS));
    // A whole-state reply carries it too, and asking for the whole state as well.
    let r = t.announce_delta(delta("n0", 9, Some(8), &[]), now).unwrap();
    assert!(r.full_state_needed);
    assert_eq!((r.min_interval_ms, r.peer_list_interval_ms), (1000, 5000));
}

/// Every holder list entry points at a peer whose blob says it is there, with its count, in
/// the list its sets call for; each live peer knows exactly the blobs of its last announce
/// taken (`acked`), and every one it holds or fetches chunks of is listed once; nothing else
/// is.
fn check_index(t: &Tracker, acked: &HashMap<String, (u64, Announce)>) {
    let mut listed = 0;
    for (digest, holders) in &t.by_blob {
        assert!(!holders.holding.is_empty() || !holders.fetching.is_empty());
        for (list, kind) in [
            (&holders.holding, Listed::Holding as fn(u32) -> Listed),
            (&holders.fetching, Listed::Fetching as fn(u32) -> Listed),
        ] {
            for (i, h) in list.iter().enumerate() {
                let peer = t.slots[h.slot as usize].as_ref().expect("a live slot");
                assert_eq!(peer.blobs[digest], Some(kind(i as u32)));
                assert_eq!(h.count, h.set.count());
                assert_eq!(h.list_kind().map(|k| k(0)), Some(kind(0)));
                listed += 1;
            }
        }
    }
    let mut should = 0;
    for peer in t.slots.iter().flatten() {
        assert_eq!(t.by_id[&peer.id] as usize, {
            t.slots
                .iter()
                .position(|s| s.as_ref().is_some_and(|p| p.id == peer.id))
                .unwrap()
        });
        let (_, state) = &acked[&peer.id];
        assert_eq!(peer.blobs.len(), state.blobs.len());
        for b in &state.blobs {
            let wanted = b.set().unwrap().count() > 0 || b.fetching_set().unwrap().count() > 0;
            assert_eq!(peer.blobs[&b.digest].is_some(), wanted, "{}", b.digest);
            should += usize::from(wanted);
        }
    }
    assert_eq!(listed, should);
    assert_eq!(t.by_id.len(), t.slots.iter().flatten().count());
    assert_eq!(t.deadlines.len(), t.by_id.len());
}

#[test]
fn the_holder_index_stays_consistent_through_random_deltas_and_expiry() {
    let digests: Vec<Digest> = (0..5u8).map(|i| Digest::of(&[i])).collect();
    let mut t = Tracker::new(&cfg());
    let mut rng = fastrand::Rng::with_seed(21);
    let t0 = Instant::now();
    // What each peer's tracker copy should be, and its last seq.
    let mut acked: HashMap<String, (u64, Announce)> = HashMap::new();
    for step in 0..3000u64 {
        let now = t0 + Duration::from_millis(step * 7);
        let id = format!("p{}", rng.u32(0..40));
        let picked: Vec<&Digest> = digests.iter().filter(|_| rng.bool()).collect();
        let blobs: Vec<(&Digest, ChunkSet)> = picked
            .into_iter()
            .map(|d| {
                let mut set = ChunkSet::empty(8);
                for c in 0..8 {
                    if rng.u8(0..4) == 0 {
                        set.insert(c);
                    }
                }
                (d, set)
            })
            .collect();
        // Upload stats and address change now and then (a cached list entry must follow).
        let port = 1 + u16::from(rng.u8(0..8) == 0);
        let mut state = announce(&id, port, stats(rng.u64(0..3), 0, 0), &blobs);
        for b in &mut state.blobs {
            if rng.bool() {
                let mut f = ChunkSet::empty(8);
                f.insert(rng.u32(0..8));
                *b = b.clone().with_fetching(&f);
            }
        }
        let seq = acked.get(&id).map_or(1, |(s, _)| s + 1);
        let msg = DeltaAnnounce::between(acked.get(&id), &state, seq);
        let reply = t.announce_delta(msg, now).unwrap();
        if reply.full_state_needed {
            t.announce_delta(DeltaAnnounce::full(&state, seq + 1), now)
                .unwrap();
            acked.insert(id.clone(), (seq + 1, state.clone()));
        } else {
            acked.insert(id.clone(), (seq, state.clone()));
        }
        // The JSON answer is the same list as the entries, whatever changed since an entry
        // was last listed.
        let d = &digests[rng.usize(..digests.len())];
        let asker = format!("p{}", rng.u32(0..40));
        let seed = rng.u64(..);
        let entries = t.peers(
            d,
            &asker,
            30,
            None,
            now,
            &mut fastrand::Rng::with_seed(seed),
        );
        let json = t.peers_json(
            d,
            &asker,
            30,
            None,
            now,
            &mut fastrand::Rng::with_seed(seed),
        );
        let parsed: PeerList = serde_json::from_slice(&json).unwrap();
        assert_eq!(parsed.digest, *d);
        assert_eq!(parsed.peers, entries);
        if step % 50 == 0 {
            let mut r = fastrand::Rng::with_seed(step);
            for d in &digests {
                let list = t.peers(d, "p0", 30, None, now, &mut r);
                let ids: HashSet<&str> = list.iter().map(|e| e.peer_id.as_str()).collect();
                assert_eq!(ids.len(), list.len());
                // The tracker lists exactly the latest state of each peer.
                for e in &list {
                    let (_, a) = &acked[&e.peer_id];
                    let b = a.blobs.iter().find(|b| b.digest == *d).unwrap();
                    assert_eq!(e.set().unwrap(), b.set().unwrap());
                    assert_eq!(e.fetching_set().unwrap(), b.fetching_set().unwrap());
                }
            }
        }
        check_index(&t, &acked);
    }
    // All silent: everything expires and the index empties.
    t.expire(t0 + Duration::from_secs(3600));
    check_index(&t, &acked);
    assert!(t.by_blob.is_empty() && t.by_id.is_empty());
}
