//! The tracker's own work at 5,000 nodes, in process (reported, not asserted): what the
//! server does under its lock for each delta announce and each peer list, without HTTP.
//!
//! ```sh
//! cargo bench -p shoal-registry-ext --bench tracker_state   # ~1 minute
//! # SHOAL_BENCH_NODES=5000
//! ```
//!
//! The nodes are those of the `tracker_load` bench (`tracker_load/node.rs`: each holds 3 of
//! 12 images, and all pull one new 1 GiB image in 1 MiB chunks, starting within 5 s), driven
//! by a virtual clock in 200 ms steps for 13 s: each step a fifth of the nodes announce
//! their changes (deltas, as at the tracker's pacing of 5,000 nodes) and 1,280 peer lists
//! (6,400 a second) are asked for a layer a random node is fetching. Measured from 3 s on:
//! - the microseconds per delta announce (`Tracker::announce_delta`);
//! - per peer list as the server answers it (`Tracker::peers_json`, the body's bytes, its
//!   entries kept as JSON until they change);
//! - and the baseline on the same state: the list built as entries and serialised whole
//!   (`Tracker::peers` and `serde_json`), as the server did before. Each list is timed one
//!   way, picked at random, then made the other way with the same randomness, untimed, and
//!   the two are checked to be the same list.
//!
//! The figures are CPU time on one thread of a shared machine: compare builds by running
//! them in turn, and the two list figures within one run by their ratio.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_p2p::tracker::proto::{Announce, DeltaAnnounce, PeerList};
use shoal_registry_ext::config::TrackerConfig;
use shoal_registry_ext::tracker::Tracker;

#[path = "tracker_load/node.rs"]
mod node;
use node::Node;

pub(crate) const MIB: u64 = 1 << 20;
const STEP: Duration = Duration::from_millis(200);
const STEPS: u64 = 65;
const MEASURE_FROM_STEP: u64 = 15;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("SHOAL_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    assert!((1..=20_000).contains(&n), "bounded: 1 to 20,000 nodes");
    let mut rng = fastrand::Rng::with_seed(7);
    let (images, rollout) = node::catalog(&mut rng);
    let t0 = Instant::now();
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| {
            let mut node = Node::new(
                format!("node-{i:05}"),
                SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7443)),
                (0..3)
                    .flat_map(|_| images[rng.usize(..images.len())].clone())
                    .collect(),
                fastrand::Rng::with_seed(i as u64),
            );
            node.start_pull(&rollout, t0 + Duration::from_millis(rng.u64(0..5000)));
            node
        })
        .collect();
    let mut tracker = Tracker::new(&TrackerConfig::default());
    let mut acked: HashMap<String, (u64, Announce)> = HashMap::new();
    let mut pick = fastrand::Rng::with_seed(9);
    let (mut announce, mut json, mut entries) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut announces, mut lists, mut bytes) = (0u64, 0u64, 0usize);
    let (mut json_lists, mut entry_lists) = (0u64, 0u64);
    for step in 0..STEPS {
        let now = t0 + STEP * step as u32;
        let measuring = step >= MEASURE_FROM_STEP;
        for (i, node) in nodes.iter_mut().enumerate() {
            if (i as u64 + step) % 5 != 0 {
                continue;
            }
            let state = node.announcement(now);
            let seq = acked.get(&node.id).map_or(1, |(s, _)| s + 1);
            let delta = DeltaAnnounce::between(acked.get(&node.id), &state, seq);
            let start = Instant::now();
            let reply = tracker.announce_delta(delta, now).expect("a valid delta");
            if measuring {
                announce += start.elapsed();
                announces += 1;
            }
            let seq = if reply.full_state_needed {
                let whole = DeltaAnnounce::full(&state, seq + 1);
                tracker.announce_delta(whole, now).expect("a valid state");
                seq + 1
            } else {
                seq
            };
            acked.insert(node.id.clone(), (seq, state));
        }
        for _ in 0..n * 1280 / 5000 {
            let node = &nodes[pick.usize(..n)];
            let Some(digest) = pick.choice(node.active_layers(now)) else {
                continue;
            };
            let seed = pick.u64(..);
            // As the server answers it, or (the baseline) built and serialised whole.
            let list = |t: &mut Tracker, as_json: bool| {
                let rng = &mut fastrand::Rng::with_seed(seed);
                if as_json {
                    return t.peers_json(&digest, &node.id, 30, None, now, rng);
                }
                let peers = t.peers(&digest, &node.id, 30, None, now, rng);
                serde_json::to_vec(&PeerList {
                    digest: digest.clone(),
                    peers,
                })
                .expect("a peer list serialises")
            };
            // One of the two ways, timed, on a list nothing touched yet this step; then the
            // other, untimed, to check they agree.
            let timed_json = pick.bool();
            let start = Instant::now();
            let first = list(&mut tracker, timed_json);
            let took = start.elapsed();
            let size = first.len();
            let second = list(&mut tracker, !timed_json);
            let first: PeerList = serde_json::from_slice(&first).expect("a peer list");
            let second: PeerList = serde_json::from_slice(&second).expect("a peer list");
            assert_eq!(first, second, "the two ways give the same list");
            if measuring {
                if timed_json {
                    json += took;
                    json_lists += 1;
                } else {
                    entries += took;
                    entry_lists += 1;
                }
                bytes += size;
                lists += 1;
            }
        }
    }
    let us = |d: Duration, k: u64| d.as_secs_f64() * 1e6 / k.max(1) as f64;
    println!(
        "tracker state, {n} nodes, in process: {announces} delta announces at {:.2} us; \
         {lists} peer lists ({} bytes each) at {:.2} us as JSON kept per entry, \
         {:.2} us built and serialised whole (baseline): {:.2}x",
        us(announce, announces),
        bytes / lists.max(1) as usize,
        us(json, json_lists),
        us(entries, entry_lists),
        us(json, json_lists) / us(entries, entry_lists),
    );
}
