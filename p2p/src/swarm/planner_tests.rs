//! Deterministic tests of the planner: a fixed random seed, a fake clock (an `Instant` moved
//! by hand), no tasks, no sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::planner::*;
use crate::tracker::ChunkSet;

/// A node budget of `per_seeder` requests per seeder and, if `requests` is set, that many
/// peer requests for the node; given back by hand.
struct Budget {
    per_seeder: usize,
    taken: HashMap<SocketAddr, usize>,
    requests: Option<usize>,
    counted: usize,
}

impl Budget {
    fn new(per_seeder: usize) -> Self {
        Self {
            per_seeder,
            taken: HashMap::new(),
            requests: None,
            counted: 0,
        }
    }

    fn release(&mut self, addr: SocketAddr) {
        if let Some(n) = self.taken.get_mut(&addr) {
            *n = n.saturating_sub(1);
        }
    }
}

impl NodeBudget for Budget {
    fn take_seeder(&mut self, addr: SocketAddr) -> bool {
        let n = self.taken.entry(addr).or_default();
        if *n < self.per_seeder {
            *n += 1;
            true
        } else {
            false
        }
    }

    fn request_room(&self, _own: usize) -> bool {
        self.requests.is_none_or(|max| self.counted < max)
    }

    fn count_request(&mut self) {
        self.counted += 1;
    }
}

fn config() -> PlannerConfig {
    PlannerConfig {
        in_flight: 8,
        per_peer_in_flight: 2,
        registry_in_flight: 2,
        max_registry_chunks: 4,
        near_window: 2,
    }
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 7070))
}

fn set(n: u32, chunks: impl IntoIterator<Item = u32>) -> ChunkSet {
    let mut s = ChunkSet::empty(n);
    for i in chunks {
        s.insert(i);
    }
    s
}

fn node(i: u8, n: u32, have: impl IntoIterator<Item = u32>) -> PeerInfo {
    PeerInfo {
        id: format!("node-{i}"),
        addr: addr(i),
        seeder: false,
        have: set(n, have),
        fetching: ChunkSet::empty(n),
        speed: None,
    }
}

fn seeder(n: u32) -> PeerInfo {
    PeerInfo {
        id: "registry-ext@10.0.0.100:7070".into(),
        addr: addr(100),
        seeder: true,
        have: ChunkSet::full(n),
        fetching: ChunkSet::empty(n),
        speed: None,
    }
}

fn planner(n: u32, seed: u64, t0: Instant) -> (Planner, fastrand::Rng) {
    let mut rng = fastrand::Rng::with_seed(seed);
    (Planner::new(config(), n, t0, &mut rng), rng)
}

/// (peer, chunk) of each peer fetch in `actions`.
fn peer_fetches(actions: &[Action]) -> Vec<(String, u32, ReqId)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Peer {
                peer, chunk, req, ..
            } => Some((peer.clone(), *chunk, *req)),
            _ => None,
        })
        .collect()
}

/// The peer fetches of chunk `i` in `actions`.
fn fetches_of(actions: &[Action], i: u32) -> Vec<(String, u32, ReqId)> {
    peer_fetches(actions)
        .into_iter()
        .filter(|f| f.1 == i)
        .collect()
}

fn registry_fetches(actions: &[Action]) -> Vec<std::ops::Range<u32>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Registry { chunks, .. } => Some(chunks.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn rarest_first_after_the_window_next_to_the_reader() {
    let t0 = Instant::now();
    let n = 12;
    for seed in 0..20 {
        let (mut p, mut rng) = planner(n, seed, t0);
        // Chunks 0..10 held by five nodes each, 10 and 11 by two: the rare ones.
        let mut list: Vec<PeerInfo> = (1..=3).map(|i| node(i, n, 0..10)).collect();
        list.extend([node(4, n, 0..n), node(5, n, 0..n)]);
        p.peers(list);
        let mut budget = Budget::new(1);
        let fetches = peer_fetches(&p.plan(t0, &mut rng, &mut budget));
        let chunks: Vec<u32> = fetches.iter().map(|f| f.1).collect();
        // The reader's next two chunks first, in order, then the rarest.
        assert_eq!(&chunks[..2], &[0, 1], "seed {seed}: {chunks:?}");
        let mut rare = chunks[2..4].to_vec();
        rare.sort();
        assert_eq!(rare, vec![10, 11], "seed {seed}: {chunks:?}");
        // Only node-4 and node-5 hold them.
        assert!(fetches[2..4]
            .iter()
            .all(|f| f.0 == "node-4" || f.0 == "node-5"));
        assert_eq!(fetches.len(), 8, "in flight per blob");
        // Per peer at most two.
        for i in 1..=5 {
            let id = format!("node-{i}");
            assert!(fetches.iter().filter(|f| f.0 == id).count() <= 2);
        }
    }
}

#[test]
fn nodes_spread_over_equally_rare_chunks() {
    // Different nodes (seeds) start on different chunks of the seeder.
    let t0 = Instant::now();
    let n = 64;
    let mut first = std::collections::HashSet::new();
    for seed in 0..16 {
        let (mut p, mut rng) = planner(n, seed, t0);
        p.peers(vec![seeder(n)]);
        let fetches = peer_fetches(&p.plan(t0, &mut rng, &mut Budget::new(1)));
        assert_eq!(fetches.len(), 1);
        first.insert(fetches[0].1);
    }
    assert!(first.len() >= 10, "{first:?}");
}

#[test]
fn the_seeder_is_asked_only_for_chunks_no_node_holds_or_fetches_and_within_its_budget() {
    let t0 = Instant::now();
    let n = 16;
    let (mut p, mut rng) = planner(n, 7, t0);
    let mut other = node(2, n, 0..8);
    other.fetching = set(n, 8..12);
    p.peers(vec![seeder(n), other]);
    let mut budget = Budget::new(1);
    let actions = p.plan(t0, &mut rng, &mut budget);
    let fetches = peer_fetches(&actions);
    let to_seeder: Vec<u32> = fetches
        .iter()
        .filter(|f| f.0.starts_with("registry-ext@"))
        .map(|f| f.1)
        .collect();
    assert_eq!(to_seeder.len(), 1, "{fetches:?}");
    assert!(to_seeder[0] >= 12, "{to_seeder:?}");
    // The node's two slots are used; nothing else goes to the seeder while they are busy.
    let to_node: Vec<&(String, u32, ReqId)> = fetches.iter().filter(|f| f.0 == "node-2").collect();
    assert_eq!(to_node.len(), 2);
    assert!(to_node.iter().all(|f| f.1 < 8));
    assert!(registry_fetches(&actions).is_empty());
    // With the seeder slot still taken, planning again asks nothing more of it.
    let again = p.plan(t0 + Duration::from_millis(100), &mut rng, &mut budget);
    assert!(peer_fetches(&again).is_empty(), "{again:?}");
    // Its request ends: the next one goes to it, again a chunk nobody holds or fetches.
    let (_, _, req) = fetches
        .iter()
        .find(|f| f.0.starts_with("registry-ext@"))
        .unwrap()
        .clone();
    p.chunk(
        t0 + Duration::from_millis(200),
        req,
        to_seeder[0],
        1000,
        true,
    )
    .unwrap();
    p.ended(t0 + Duration::from_millis(200), req, None).unwrap();
    budget.release(addr(100));
    let next = peer_fetches(&p.plan(t0 + Duration::from_millis(200), &mut rng, &mut budget));
    assert_eq!(next.len(), 1, "{next:?}");
    assert!(next[0].0.starts_with("registry-ext@") && next[0].1 >= 12 && next[0].1 != to_seeder[0]);
}

#[test]
fn a_chunk_another_node_fetches_waits_for_it_then_goes_to_the_seeder() {
    let t0 = Instant::now();
    let n = 2;
    let (mut p, mut rng) = planner(n, 1, t0);
    let mut other = node(2, n, []);
    other.fetching = ChunkSet::full(n);
    p.peers(vec![seeder(n), other]);
    let mut budget = Budget::new(2);
    assert!(p.plan(t0, &mut rng, &mut budget).is_empty());
    let limit = p.overdue_after();
    assert!(p
        .plan(t0 + limit - Duration::from_millis(1), &mut rng, &mut budget)
        .is_empty());
    let late = peer_fetches(&p.plan(t0 + limit, &mut rng, &mut budget));
    assert_eq!(late.len(), 2, "{late:?}");
    assert!(late.iter().all(|f| f.0.starts_with("registry-ext@")));
}

/// Delivers chunk `i` of request `req` after `ms` milliseconds from `t`.
fn deliver(p: &mut Planner, t: Instant, req: ReqId, i: u32, ms: u64) -> Vec<Action> {
    let at = t + Duration::from_millis(ms);
    let mut out = p.chunk(at, req, i, 1 << 20, true).unwrap();
    out.extend(p.ended(at, req, None).unwrap());
    out
}

/// Four chunks asked of two nodes at `t0` (as many as their slots, so no new chunk takes a
/// freed one); three arrive in 100 ms (a median of 100 ms: overdue after 1 s, the floor).
/// Returns the planner, its random source and budget, and the fourth request (peer, chunk,
/// id), still in flight.
fn one_request_left(t0: Instant) -> (Planner, fastrand::Rng, Budget, (String, u32, ReqId)) {
    let n = 4;
    let (mut p, mut rng) = planner(n, 3, t0);
    p.peers(vec![node(2, n, 0..n), node(3, n, 0..n)]);
    let mut budget = Budget::new(1);
    let first = peer_fetches(&p.plan(t0, &mut rng, &mut budget));
    assert_eq!(first.len(), 4);
    for f in &first[..3] {
        deliver(&mut p, t0, f.2, f.1, 100);
    }
    assert_eq!(p.overdue_after(), Duration::from_secs(1));
    let left = first[3].clone();
    (p, rng, budget, left)
}

#[test]
fn an_overdue_chunk_is_asked_of_another_node_and_the_late_copy_cancelled() {
    let t0 = Instant::now();
    let (mut p, mut rng, mut budget, (slow_peer, slow_chunk, slow_req)) = one_request_left(t0);
    // Not yet overdue at 1 s.
    let at = t0 + Duration::from_millis(1000);
    let actions = p.plan(at, &mut rng, &mut budget);
    assert!(fetches_of(&actions, slow_chunk).is_empty());
    // Overdue after: asked of the other node.
    let at = t0 + Duration::from_millis(1001);
    let actions = p.plan(at, &mut rng, &mut budget);
    let again = fetches_of(&actions, slow_chunk);
    assert_eq!(again.len(), 1, "{actions:?}");
    assert_ne!(again[0].0, slow_peer);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Peer { chunk, overdue: true, .. } if *chunk == slow_chunk)));
    // The new copy arrives first: the slow request is cancelled.
    let out = p
        .chunk(
            at + Duration::from_millis(50),
            again[0].2,
            slow_chunk,
            1 << 20,
            true,
        )
        .unwrap();
    assert!(out.contains(&Action::Cancel { req: slow_req }), "{out:?}");
}

#[test]
fn an_overdue_request_whose_bytes_are_arriving_is_left_alone_until_they_stall() {
    let t0 = Instant::now();
    let (mut p, mut rng, mut budget, (_, slow_chunk, slow_req)) = one_request_left(t0);
    // Overdue after 1 s. 95% of the chunk is in after 1.001 s: the rest is due in 53 ms,
    // sooner than a new request's 100 ms.
    let len = 1 << 20;
    p.progress(slow_req, len * 95 / 100, len);
    let actions = p.plan(t0 + Duration::from_millis(1001), &mut rng, &mut budget);
    assert!(fetches_of(&actions, slow_chunk).is_empty());
    // The bytes stop at 95%: by 3 s the rest would take 158 ms at the rate so far.
    let actions = p.plan(t0 + Duration::from_millis(3000), &mut rng, &mut budget);
    assert!(!fetches_of(&actions, slow_chunk).is_empty());
}

#[test]
fn a_request_with_every_byte_in_is_not_asked_again_while_it_is_verified() {
    let t0 = Instant::now();
    let (mut p, mut rng, mut budget, (_, slow_chunk, slow_req)) = one_request_left(t0);
    p.progress(slow_req, 1 << 20, 1 << 20);
    let actions = p.plan(t0 + Duration::from_secs(30), &mut rng, &mut budget);
    assert!(fetches_of(&actions, slow_chunk).is_empty());
    assert!(registry_fetches(&actions).is_empty(), "{actions:?}");
}

#[test]
fn an_overdue_request_at_half_its_bytes_is_asked_again() {
    let t0 = Instant::now();
    let (mut p, mut rng, mut budget, (slow_peer, slow_chunk, slow_req)) = one_request_left(t0);
    // Half in after 1.001 s: the rest would take another second, a new request 100 ms.
    p.progress(slow_req, 1 << 19, 1 << 20);
    let actions = p.plan(t0 + Duration::from_millis(1001), &mut rng, &mut budget);
    let again = fetches_of(&actions, slow_chunk);
    assert_eq!(again.len(), 1, "{actions:?}");
    assert_ne!(again[0].0, slow_peer);
}

#[test]
fn an_overdue_chunk_nobody_else_holds_goes_to_the_registry_at_four_times_the_limit() {
    let t0 = Instant::now();
    let n = 1;
    let (mut p, mut rng) = planner(n, 3, t0);
    p.peers(vec![node(2, n, 0..n)]);
    let mut budget = Budget::new(1);
    assert_eq!(peer_fetches(&p.plan(t0, &mut rng, &mut budget)).len(), 1);
    let limit = p.overdue_after();
    assert!(p.plan(t0 + limit * 4, &mut rng, &mut budget).is_empty());
    let actions = p.plan(
        t0 + limit * 4 + Duration::from_millis(1),
        &mut rng,
        &mut budget,
    );
    assert_eq!(registry_fetches(&actions), vec![0..1]);
}

#[test]
fn a_peer_sending_a_corrupt_chunk_is_dropped_with_its_requests() {
    let t0 = Instant::now();
    let n = 6;
    let (mut p, mut rng) = planner(n, 5, t0);
    p.peers(vec![node(2, n, 0..n), node(3, n, 0..n)]);
    let mut budget = Budget::new(1);
    let fetches = peer_fetches(&p.plan(t0, &mut rng, &mut budget));
    let bad: Vec<_> = fetches
        .iter()
        .filter(|f| f.0 == "node-2")
        .cloned()
        .collect();
    assert_eq!(bad.len(), 2);
    let out = p.chunk(t0, bad[0].2, bad[0].1, 1 << 20, false).unwrap();
    assert!(out.contains(&Action::Drop {
        peer: "node-2".into(),
        addr: addr(2),
        reason: DropReason::Corrupt
    }));
    assert!(out.contains(&Action::Cancel { req: bad[1].2 }));
    // From now on only node-3 is asked, even after a new peer list naming node-2.
    p.peers(vec![node(2, n, 0..n), node(3, n, 0..n)]);
    for f in fetches.iter().filter(|f| f.0 == "node-3") {
        deliver(&mut p, t0, f.2, f.1, 10);
    }
    let next = peer_fetches(&p.plan(t0 + Duration::from_millis(20), &mut rng, &mut budget));
    assert!(!next.is_empty());
    assert!(next.iter().all(|f| f.0 == "node-3"), "{next:?}");
}

#[test]
fn chunks_nobody_holds_come_from_the_registry_merged() {
    let t0 = Instant::now();
    let n = 10;
    let (mut p, mut rng) = planner(n, 9, t0);
    // A node holds 4 and 5; nobody else holds anything.
    p.peers(vec![node(2, n, [4, 5])]);
    let mut budget = Budget::new(1);
    let actions = p.plan(t0, &mut rng, &mut budget);
    let mut peer: Vec<u32> = peer_fetches(&actions).iter().map(|f| f.1).collect();
    peer.sort();
    assert_eq!(peer, vec![4, 5]);
    // Ranges of at most 4 chunks, two at once.
    assert_eq!(registry_fetches(&actions), vec![0..4, 6..10]);
}

#[test]
fn registry_failures_back_off_and_fail_the_download_when_nobody_else_holds_the_rest() {
    let t0 = Instant::now();
    let n = 1;
    let (mut p, mut rng) = planner(n, 9, t0);
    let mut budget = Budget::new(1);
    let mut at = t0;
    for k in 1..=MAX_REGISTRY_FAILURES {
        let actions = p.plan(at, &mut rng, &mut budget);
        let req = match actions.as_slice() {
            [Action::Registry { req, .. }] => *req,
            other => panic!("{other:?}"),
        };
        // Backing off: nothing before the back-off ends.
        let result = p.ended(at, req, Some(Failure::Transport));
        if k == MAX_REGISTRY_FAILURES {
            assert_eq!(result, Err(PlanError::RegistryFailing { failures: k }));
            return;
        }
        assert!(p.plan(at, &mut rng, &mut budget).is_empty());
        at += Duration::from_secs(10);
    }
}

#[test]
fn a_slow_peer_gets_one_request_at_a_time_and_fast_peers_the_rest() {
    let t0 = Instant::now();
    let n = 16;
    let (mut p, mut rng) = planner(n, 11, t0);
    let mut slow = node(2, n, 0..n);
    slow.speed = Some(1e6);
    let mut fast = node(3, n, 0..n);
    fast.speed = Some(10e6);
    let mut fast2 = node(4, n, 0..n);
    fast2.speed = Some(10e6);
    p.peers(vec![slow, fast, fast2]);
    let fetches = peer_fetches(&p.plan(t0, &mut rng, &mut Budget::new(1)));
    assert_eq!(fetches.iter().filter(|f| f.0 == "node-2").count(), 1);
    assert_eq!(fetches.iter().filter(|f| f.0 == "node-3").count(), 2);
    assert_eq!(fetches.iter().filter(|f| f.0 == "node-4").count(), 2);
    // The reader's next chunk goes to a fast one.
    let next = fetches.iter().find(|f| f.1 == 0).unwrap();
    assert_ne!(next.0, "node-2");
}

#[test]
fn a_busy_peer_is_left_alone_and_not_held_chunks_are_not_asked_again() {
    let t0 = Instant::now();
    let n = 4;
    let (mut p, mut rng) = planner(n, 2, t0);
    p.peers(vec![node(2, n, 0..n)]);
    let mut budget = Budget::new(1);
    let fetches = peer_fetches(&p.plan(t0, &mut rng, &mut budget));
    assert_eq!(fetches.len(), 2);
    p.ended(t0, fetches[0].2, Some(Failure::Busy)).unwrap();
    p.ended(t0, fetches[1].2, Some(Failure::NotHeld)).unwrap();
    assert!(peer_fetches(&p.plan(t0 + BUSY_BACKOFF / 2, &mut rng, &mut budget)).is_empty());
    let after = peer_fetches(&p.plan(t0 + BUSY_BACKOFF, &mut rng, &mut budget));
    assert!(!after.iter().any(|f| f.1 == fetches[1].1), "{after:?}");
    assert!(after.iter().any(|f| f.1 == fetches[0].1), "{after:?}");
}

#[test]
fn a_busy_seeder_is_left_alone_longer_than_a_busy_node() {
    let t0 = Instant::now();
    let n = 4;
    let (mut p, mut rng) = planner(n, 2, t0);
    p.peers(vec![seeder(n)]);
    let mut budget = Budget::new(1);
    let first = peer_fetches(&p.plan(t0, &mut rng, &mut budget));
    assert_eq!(first.len(), 1, "{first:?}");
    p.ended(t0, first[0].2, Some(Failure::Busy)).unwrap();
    budget.release(addr(100));
    assert!(BUSY_BACKOFF < SEEDER_BUSY_BACKOFF);
    let soon = p.plan(t0 + BUSY_BACKOFF, &mut rng, &mut budget);
    assert!(peer_fetches(&soon).is_empty(), "{soon:?}");
    let before = t0 + SEEDER_BUSY_BACKOFF - Duration::from_millis(1);
    let still = p.plan(before, &mut rng, &mut budget);
    assert!(peer_fetches(&still).is_empty(), "{still:?}");
    let after = peer_fetches(&p.plan(t0 + SEEDER_BUSY_BACKOFF, &mut rng, &mut budget));
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].0, first[0].0);
}

#[test]
fn nothing_for_two_minutes_fails_the_download() {
    let t0 = Instant::now();
    let (p, _) = planner(3, 1, t0);
    assert!(p.check(t0 + STALL_LIMIT).is_ok());
    assert!(matches!(
        p.check(t0 + STALL_LIMIT + Duration::from_millis(1)),
        Err(PlanError::Stalled {
            held: 0,
            total: 3,
            ..
        })
    ));
}

#[test]
fn chunks_a_busy_node_holds_wait_for_it_rather_than_go_to_the_seeder() {
    let t0 = Instant::now();
    let n = 6;
    let (mut p, mut rng) = planner(n, 4, t0);
    p.peers(vec![seeder(n), node(2, n, 0..n)]);
    let mut budget = Budget::new(4);
    let fetches = peer_fetches(&p.plan(t0, &mut rng, &mut budget));
    // The node's two slots; nothing for the seeder, however free.
    assert_eq!(fetches.len(), 2, "{fetches:?}");
    assert!(fetches.iter().all(|f| f.0 == "node-2"));
    let later = p.plan(t0 + Duration::from_millis(500), &mut rng, &mut budget);
    assert!(later.is_empty(), "{later:?}");
}

/// A planner of a one-chunk blob whose seeder refused the chunk ("not held") at `t0`; the
/// seeder's budget given back.
fn refused_by_the_seeder(t0: Instant) -> (Planner, fastrand::Rng, Budget) {
    let n = 1;
    let (mut p, mut rng) = planner(n, 4, t0);
    p.peers(vec![seeder(n)]);
    let mut budget = Budget::new(1);
    let first = peer_fetches(&p.plan(t0, &mut rng, &mut budget));
    assert_eq!(first.len(), 1);
    p.ended(t0, first[0].2, Some(Failure::NotHeld)).unwrap();
    budget.release(addr(100));
    (p, rng, budget)
}

#[test]
fn a_chunk_the_seeder_refuses_goes_to_nobody_else_for_a_while_then_to_it_again() {
    let t0 = Instant::now();
    let (mut p, mut rng, mut budget) = refused_by_the_seeder(t0);
    // Not the registry, not the seeder again at once.
    let soon = t0 + SEEDER_REFUSAL_WAIT - Duration::from_millis(1);
    assert!(p.plan(soon, &mut rng, &mut budget).is_empty());
    let later = peer_fetches(&p.plan(t0 + SEEDER_REFUSAL_WAIT, &mut rng, &mut budget));
    assert_eq!(later.len(), 1);
    assert!(later[0].0.starts_with("registry-ext@"));
}

#[test]
fn a_chunk_the_seeder_refused_goes_at_once_to_a_node_that_holds_it() {
    let t0 = Instant::now();
    let (mut p, mut rng, mut budget) = refused_by_the_seeder(t0);
    // The node the seeder sent it to says it holds it: no need to wait for the refusal.
    let soon = t0 + Duration::from_millis(50);
    p.peers(vec![seeder(1), node(2, 1, [0])]);
    let fetches = peer_fetches(&p.plan(soon, &mut rng, &mut budget));
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    assert_eq!(fetches[0].0, "node-2");
}

#[test]
fn a_chunk_only_slow_nodes_hold_waits_for_a_fast_node_fetching_it() {
    let t0 = Instant::now();
    let n = 2;
    let (mut p, mut rng) = planner(n, 5, t0);
    let mut slow = node(2, n, [0]);
    slow.speed = Some(1e5);
    let mut fast = node(3, n, []);
    fast.speed = Some(10e6);
    fast.fetching = set(n, [0]);
    p.peers(vec![slow, fast]);
    let mut budget = Budget::new(1);
    // Not from the slow node while the fast one fetches it.
    assert!(peer_fetches(&p.plan(t0, &mut rng, &mut budget)).is_empty());
    let limit = p.overdue_after();
    let before = t0 + limit - Duration::from_millis(1);
    assert!(peer_fetches(&p.plan(before, &mut rng, &mut budget)).is_empty());
    // The fast node did not get it in time: the slow node after all.
    let late = peer_fetches(&p.plan(t0 + limit, &mut rng, &mut budget));
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!((late[0].0.as_str(), late[0].1), ("node-2", 0));
}

#[test]
fn a_chunk_late_at_a_slow_node_is_asked_of_a_fast_holder_after_the_median_chunk_time() {
    let t0 = Instant::now();
    let n = 4;
    let (mut p, mut rng) = planner(n, 7, t0);
    let mut slow = node(2, n, [0]);
    slow.speed = Some(1e5);
    let mut fast = node(3, n, 1..n);
    fast.speed = Some(10e6);
    p.peers(vec![slow.clone(), fast.clone()]);
    let mut budget = Budget::new(1);
    let first = peer_fetches(&p.plan(t0, &mut rng, &mut budget));
    let at_slow = first.iter().find(|f| f.0 == "node-2").cloned().unwrap();
    assert_eq!(at_slow.1, 0);
    // Three chunks from the fast node in 100 ms each: a median of 100 ms.
    let mut t = t0;
    let mut pending: Vec<_> = first.into_iter().filter(|f| f.0 == "node-3").collect();
    let mut done = 0;
    while done < 3 {
        let f = pending.remove(0);
        t += Duration::from_millis(100);
        deliver(&mut p, t - Duration::from_millis(100), f.2, f.1, 100);
        done += 1;
        pending.extend(
            peer_fetches(&p.plan(t, &mut rng, &mut budget))
                .into_iter()
                .filter(|f| f.0 == "node-3"),
        );
    }
    for f in pending {
        deliver(&mut p, t, f.2, f.1, 0);
    }
    // Now the fast node holds chunk 0 too.
    fast.have = ChunkSet::full(n);
    p.peers(vec![slow, fast]);
    assert!(p.overdue_after() >= Duration::from_secs(1));
    let at = t0 + Duration::from_millis(450);
    let actions = p.plan(at, &mut rng, &mut budget);
    assert!(
        actions.iter().any(|a| matches!(a,
            Action::Peer { chunk: 0, overdue: true, peer, .. } if peer == "node-3")),
        "{actions:?}"
    );
}

#[test]
fn transport_failures_drop_a_peer_only_in_a_row() {
    let t0 = Instant::now();
    let n = 8;
    let (mut p, mut rng) = planner(n, 9, t0);
    p.peers(vec![node(2, n, 0..n)]);
    let mut budget = Budget::new(1);
    let mut t = t0;
    let mut fail = |p: &mut Planner, rng: &mut fastrand::Rng, t: Instant| {
        let f = peer_fetches(&p.plan(t, rng, &mut budget));
        let out = p.ended(t, f[0].2, Some(Failure::Transport)).unwrap();
        for g in &f[1..] {
            p.ended(t, g.2, None).unwrap();
        }
        out
    };
    for _ in 0..2 {
        t += Duration::from_millis(10);
        assert!(fail(&mut p, &mut rng, t).is_empty());
    }
    // A chunk from it between the failures: the count starts again.
    t += Duration::from_millis(10);
    let f = peer_fetches(&p.plan(t, &mut rng, &mut Budget::new(1)));
    deliver(&mut p, t, f[0].2, f[0].1, 50);
    for g in &f[1..] {
        p.ended(t, g.2, None).unwrap();
    }
    for _ in 0..2 {
        t += Duration::from_millis(100);
        assert!(fail(&mut p, &mut rng, t).is_empty());
    }
    t += Duration::from_millis(100);
    let out = fail(&mut p, &mut rng, t);
    assert!(
        out.iter().any(|a| matches!(
            a,
            Action::Drop {
                reason: DropReason::Failing,
                ..
            }
        )),
        "{out:?}"
    );
}

#[test]
fn peers_are_asked_only_within_the_node_budget_and_the_registry_still_gets_its_chunks() {
    let t0 = Instant::now();
    let n = 12;
    let (mut p, mut rng) = planner(n, 5, t0);
    // Four nodes hold chunks 0..8, nobody holds 8..12.
    p.peers((1..=4).map(|i| node(i, n, 0..8)).collect());
    let mut budget = Budget::new(1);
    budget.requests = Some(3);
    let actions = p.plan(t0, &mut rng, &mut budget);
    // Three peer requests (the node's room), not the blob's eight.
    assert_eq!(peer_fetches(&actions).len(), 3, "{actions:?}");
    assert_eq!(budget.counted, 3);
    // The registry's chunks do not wait on the peers' room.
    assert_eq!(registry_fetches(&actions), vec![8..12]);
    // No room, nothing more from peers; the room given back, the next ones go.
    let at = t0 + Duration::from_millis(100);
    assert!(peer_fetches(&p.plan(at, &mut rng, &mut budget)).is_empty());
    budget.counted = 1;
    assert_eq!(peer_fetches(&p.plan(at, &mut rng, &mut budget)).len(), 2);
    assert_eq!(budget.counted, 3);
}

#[test]
fn an_overdue_chunk_is_asked_again_without_node_room_and_counted() {
    let t0 = Instant::now();
    let (mut p, mut rng, mut budget, (slow_peer, slow_chunk, _)) = one_request_left(t0);
    // The node's other blobs took every request: only the overdue copy goes, counted.
    budget.requests = Some(0);
    let counted = budget.counted;
    let actions = p.plan(t0 + Duration::from_millis(1001), &mut rng, &mut budget);
    let again = fetches_of(&actions, slow_chunk);
    assert_eq!(again.len(), 1, "{actions:?}");
    assert_ne!(again[0].0, slow_peer);
    assert_eq!(peer_fetches(&actions).len(), 1);
    assert_eq!(budget.counted, counted + 1);
}

#[test]
fn a_download_is_starved_when_its_plan_leaves_request_room_for_lack_of_a_free_holder() {
    let t0 = Instant::now();
    let n = 12;
    let (mut p, mut rng) = planner(n, 3, t0);
    assert!(!p.starved(), "nothing planned yet");
    // One node holds every chunk: its two slots (`per_peer_in_flight`) leave 6 of the 8.
    p.peers(vec![node(2, n, 0..n)]);
    let mut budget = Budget::new(1);
    let mut fetches = peer_fetches(&p.plan(t0, &mut rng, &mut budget));
    assert_eq!(fetches.len(), 2, "{fetches:?}");
    // Its first quarter: what a download lacks then is mostly what nobody holds yet.
    assert!(!p.starved(), "under a quarter of the blob held");
    while p.held().count() * STARVED_FROM < n {
        let mut next = Vec::new();
        for (_, i, req) in &fetches {
            next.extend(peer_fetches(&p.chunk(t0, *req, *i, 1 << 20, true).unwrap()));
            next.extend(peer_fetches(&p.ended(t0, *req, None).unwrap()));
        }
        next.extend(peer_fetches(&p.plan(t0, &mut rng, &mut budget)));
        assert!(!next.is_empty(), "the holder's slots are free again");
        fetches = next;
    }
    assert_eq!(fetches.len(), 2, "{fetches:?}");
    assert!(p.starved(), "6 requests of room and no free holder");
    // A peer list naming three more holders fills the room: no longer starved.
    p.peers(vec![
        node(2, n, 0..n),
        node(3, n, 0..n),
        node(4, n, 0..n),
        node(5, n, 0..n),
    ]);
    let more = peer_fetches(&p.plan(t0, &mut rng, &mut budget));
    assert_eq!(more.len(), 6, "{more:?}");
    assert!(!p.starved());
    // A busy answer leaves the room unused again.
    p.ended(t0, more[0].2, Some(Failure::Busy)).unwrap();
    let after = p.plan(t0, &mut rng, &mut budget);
    assert!(peer_fetches(&after).is_empty(), "{after:?}");
    assert!(p.starved());
    // Room the node's budget does not give (its other blobs hold its requests) is not
    // starving this download.
    budget.requests = Some(budget.counted);
    p.plan(t0, &mut rng, &mut budget);
    assert!(!p.starved(), "the node has no request to spare");
}
