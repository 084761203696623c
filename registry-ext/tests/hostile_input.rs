//! The registry extension's side of the tracker and preheat protocols (DESIGN "Security and
//! bad input"): announces, registrations, heartbeats and job specs as nodes and the CLI send
//! them, mutated ([`mutate`]) or random, go through the same parse and state changes as the
//! HTTP routes; nothing panics, memory stays bounded by the input ([`alloc`]), and bad input
//! is refused with an error while the state keeps answering. The push hook's envelope has its
//! properties next to its parser (`src/notify_props.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use shoal_p2p::preheat::proto::{Heartbeat, JobSpec, NodeInfo, Target, TaskProgress, TaskState};
use shoal_p2p::tracker::{Announce, BlobHave, ChunkSet, DeltaAnnounce, UploadStats};
use shoal_p2p::Digest;
use shoal_registry_ext::config::TrackerConfig;
use shoal_registry_ext::preheat::{Coordinator, MemoryStore, Settings};
use shoal_registry_ext::tracker::Tracker;

#[path = "../../testing/alloc.rs"]
mod alloc;
#[path = "../../testing/mutate.rs"]
mod mutate;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_raw)
}

fn announce() -> impl Strategy<Value = Vec<u8>> {
    let blob = (digest(), 0u32..2000, any::<u64>(), any::<bool>()).prop_map(|(d, len, seed, f)| {
        let mut set = ChunkSet::empty(len);
        for i in 0..len.min(64) {
            if seed >> i & 1 == 1 {
                set.insert(i);
            }
        }
        let b = BlobHave::new(d, &set);
        if f {
            b.with_fetching(&ChunkSet::full(len))
        } else {
            b
        }
    });
    (
        "[a-z]{1,6}-[0-9]{1,3}",
        any::<[u8; 4]>(),
        1u16..,
        proptest::collection::vec(blob, 0..4),
    )
        .prop_map(|(peer_id, ip, port, blobs)| {
            let a = Announce {
                peer_id,
                addr: (ip, port).into(),
                upload: UploadStats::default(),
                blobs,
            };
            serde_json::to_vec(&a).unwrap()
        })
}

/// Deltas of two peers, with bases that may or may not be the last one taken, removing
/// blobs they may or may not hold.
fn delta() -> impl Strategy<Value = Vec<u8>> {
    (
        announce(),
        prop_oneof![Just("a-1"), Just("a-2")],
        1u64..6,
        proptest::option::of(0u64..6),
        proptest::collection::vec(digest(), 0..2),
        any::<bool>(),
    )
        .prop_map(|(whole, id, seq, base, mut removed, remove_listed)| {
            let a: Announce = serde_json::from_slice(&whole).unwrap();
            if remove_listed {
                removed.extend(a.blobs.first().map(|b| b.digest.clone()));
            }
            let d = DeltaAnnounce {
                peer_id: id.into(),
                base,
                removed,
                ..DeltaAnnounce::full(&a, seq)
            };
            serde_json::to_vec(&d).unwrap()
        })
}

fn node_info() -> impl Strategy<Value = Vec<u8>> {
    ("[a-z]{1,6}-[0-9]{1,2}", "[a-z]{1,5}", "[a-z]{1,5}").prop_map(|(name, k, v)| {
        serde_json::to_vec(&NodeInfo {
            name,
            labels: [(k, v)].into(),
            kernel: "6.1".into(),
            containerd: "1.6.20".into(),
            shoal: "0.1.0".into(),
        })
        .unwrap()
    })
}

fn heartbeat() -> impl Strategy<Value = Vec<u8>> {
    ("[a-z]{1,6}-[0-9]{1,2}", "[0-9]{1,3}", 0u64..1 << 40).prop_map(|(node, job, done)| {
        serde_json::to_vec(&Heartbeat {
            node,
            tasks: vec![TaskProgress {
                job,
                image: "r.example/a:1".into(),
                state: TaskState::Pulling,
                bytes_done: done,
                bytes_total: done * 2,
                error: None,
            }],
        })
        .unwrap()
    })
}

fn job_spec() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec("r\\.example/[a-z]{1,5}:[0-9]", 1..3),
        "[a-z]{1,5}",
        "[a-z]{1,5}",
    )
        .prop_map(|(images, k, v)| {
            serde_json::to_vec(&JobSpec {
                targets: vec![Target {
                    images,
                    selector: BTreeMap::from([(k, v)]),
                    nodes: vec![],
                }],
            })
            .unwrap()
        })
}

fn coordinator() -> Coordinator {
    let settings = Settings {
        heartbeat_interval_ms: 1000,
        down_after_ms: 5000,
        concurrency: 2,
    };
    Coordinator::open(settings, Box::new(MemoryStore::default()), 1).unwrap()
}

proptest! {
    #![proptest_config(mutate::config())]

    /// Announces into one tracker (as `POST /v1/announce` does), then peer lists from it.
    #[test]
    fn hostile_announces(
        bodies in proptest::collection::vec(mutate::hostile(announce()), 1..4),
        asked in digest(),
    ) {
        let mut tracker = Tracker::new(&TrackerConfig::default());
        let start = Instant::now();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut known = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let now = start + Duration::from_millis(i as u64);
            alloc::bounded("announce", body.len(), 64, 256 << 10, || {
                let Ok(a) = serde_json::from_slice::<Announce>(body) else { return };
                known.extend(a.blobs.iter().map(|b| b.digest.clone()));
                if let Err(e) = tracker.announce(a, now) {
                    assert!(!e.to_string().is_empty());
                }
            });
        }
        known.push(asked);
        let input: usize = bodies.iter().map(Vec::len).sum();
        for d in &known {
            let list = alloc::bounded("peer list", input, 64, 256 << 10, || {
                tracker.peers(d, "asker", 30, None, start, &mut rng)
            });
            for e in list {
                prop_assert!(e.set().is_ok() && e.fetching_set().is_ok());
            }
        }
    }

    /// Whole states and deltas into one tracker (as `POST /v1/announce/delta` does), then
    /// peer lists from it.
    #[test]
    fn hostile_delta_announces(
        bodies in proptest::collection::vec(mutate::hostile(delta()), 1..6),
        asked in digest(),
    ) {
        let mut tracker = Tracker::new(&TrackerConfig::default());
        let start = Instant::now();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut known = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let now = start + Duration::from_millis(i as u64);
            alloc::bounded("delta announce", body.len(), 64, 256 << 10, || {
                let Ok(d) = serde_json::from_slice::<DeltaAnnounce>(body) else { return };
                known.extend(d.blobs.iter().map(|b| b.digest.clone()));
                if let Err(e) = tracker.announce_delta(d, now) {
                    assert!(!e.to_string().is_empty());
                }
            });
        }
        known.push(asked);
        let input: usize = bodies.iter().map(Vec::len).sum();
        for d in &known {
            let list = alloc::bounded("peer list", input, 64, 256 << 10, || {
                tracker.peers(d, "asker", 30, None, start, &mut rng)
            });
            let ids: std::collections::HashSet<&str> =
                list.iter().map(|e| e.peer_id.as_str()).collect();
            prop_assert!(ids.len() == list.len() && list.len() <= 2, "each peer at most once");
            for e in list {
                prop_assert!(e.set().is_ok() && e.fetching_set().is_ok());
            }
        }
    }

    /// Registrations, heartbeats and job specs into one coordinator (as the preheat routes
    /// hand them over), then its answers.
    #[test]
    fn hostile_preheat_requests(
        infos in proptest::collection::vec(mutate::hostile(node_info()), 1..3),
        beats in proptest::collection::vec(mutate::hostile(heartbeat()), 1..3),
        specs in proptest::collection::vec(mutate::hostile(job_spec()), 1..3),
    ) {
        let mut c = coordinator();
        let mut now = 10;
        for body in &infos {
            now += 1;
            alloc::bounded("registration", body.len(), 64, 256 << 10, || {
                if let Ok(info) = serde_json::from_slice::<NodeInfo>(body) {
                    let _ = c.register(info, now);
                }
            });
        }
        for body in &specs {
            now += 1;
            alloc::bounded("job spec", body.len(), 64, 256 << 10, || {
                if let Ok(spec) = serde_json::from_slice::<JobSpec>(body) {
                    let _ = c.submit(spec, now);
                }
            });
        }
        for body in &beats {
            now += 1;
            alloc::bounded("heartbeat", body.len(), 64, 256 << 10, || {
                if let Ok(hb) = serde_json::from_slice::<Heartbeat>(body) {
                    let _ = c.heartbeat(hb, now);
                }
            });
        }
        let _ = c.tick(now + 60_000);
        let _ = c.jobs();
        let _ = c.nodes();
    }
}
