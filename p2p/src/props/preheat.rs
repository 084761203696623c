//! The preheat protocol (`crate::preheat::proto`), as the coordinator receives it from nodes
//! and the CLI, and as workers get its replies.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{alloc, mutate, text};
use crate::preheat::proto::*;

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(text(12), text(12), 0..4)
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(text(24), 0..4)
}

fn task_state() -> impl Strategy<Value = TaskState> {
    prop_oneof![
        Just(TaskState::Pending),
        Just(TaskState::Pulling),
        Just(TaskState::Done),
        Just(TaskState::Failed),
        Just(TaskState::Cancelled),
    ]
}

fn node_info() -> impl Strategy<Value = NodeInfo> {
    (text(20), labels(), text(10), text(10), text(10)).prop_map(
        |(name, labels, kernel, containerd, shoal)| NodeInfo {
            name,
            labels,
            kernel,
            containerd,
            shoal,
        },
    )
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    let task = (
        text(8),
        text(24),
        task_state(),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(text(20)),
    )
        .prop_map(
            |(job, image, state, bytes_done, bytes_total, error)| TaskProgress {
                job,
                image,
                state,
                bytes_done,
                bytes_total,
                error,
            },
        );
    (text(20), proptest::collection::vec(task, 0..4))
        .prop_map(|(node, tasks)| Heartbeat { node, tasks })
}

fn reply() -> impl Strategy<Value = HeartbeatReply> {
    let task = (text(8), text(24)).prop_map(|(job, image)| TaskRef { job, image });
    (
        any::<bool>(),
        any::<u64>(),
        proptest::collection::vec(task, 0..4),
    )
        .prop_map(
            |(registered, heartbeat_interval_ms, tasks)| HeartbeatReply {
                registered,
                heartbeat_interval_ms,
                tasks,
            },
        )
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    // Images mostly valid references, so that mutations reach past the reference check.
    let image = prop_oneof![
        3 => "[a-z]{1,8}\\.example(:[0-9]{1,4})?/[a-z0-9]{1,8}(/[a-z0-9]{1,8})?:[a-z0-9]{1,6}",
        1 => text(24),
    ];
    let target = (proptest::collection::vec(image, 0..3), labels(), strings()).prop_map(
        |(images, selector, nodes)| Target {
            images,
            selector,
            nodes,
        },
    );
    proptest::collection::vec(target, 0..3).prop_map(|targets| JobSpec { targets })
}

fn job_status() -> impl Strategy<Value = JobStatus> {
    let state = prop_oneof![
        Just(JobState::Running),
        Just(JobState::Done),
        Just(JobState::Failed),
        Just(JobState::Cancelled),
    ];
    let task = (
        text(10),
        text(20),
        task_state(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(node, image, state, started_ms)| TaskStatus {
            node,
            image,
            state,
            bytes_done: 1,
            bytes_total: 2,
            error: None,
            started_ms,
            finished_ms: None,
        });
    let group = (strings(), strings()).prop_map(|(images, nodes)| Group { images, nodes });
    let line = (any::<u64>(), text(30)).prop_map(|(at_ms, message)| LogLine { at_ms, message });
    (
        text(8),
        job_spec(),
        state,
        any::<u64>(),
        proptest::collection::vec(group, 0..3),
        proptest::collection::vec(task, 0..3),
        proptest::collection::vec(line, 0..3),
    )
        .prop_map(
            |(id, spec, state, created_ms, groups, tasks, log)| JobStatus {
                id,
                spec,
                state,
                created_ms,
                finished_ms: None,
                groups,
                tasks,
                log,
            },
        )
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let json = serde_json::to_vec(v).unwrap();
    assert_eq!(&serde_json::from_slice::<T>(&json).unwrap(), v);
}

fn json<T: Serialize>(v: T) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

/// Parses hostile bytes as `T`, bounded by their length.
fn parse<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Option<T> {
    alloc::bounded(what, bytes.len(), 16, 64 << 10, || {
        serde_json::from_slice::<T>(bytes)
    })
    .ok()
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn messages_round_trip(
        info in node_info(),
        hb in heartbeat(),
        r in reply(),
        status in job_status(),
    ) {
        round_trip(&info);
        round_trip(&hb);
        round_trip(&r);
        round_trip(&status);
        round_trip(&Registered { heartbeat_interval_ms: r.heartbeat_interval_ms });
    }

    /// What the coordinator parses and validates: registrations, heartbeats, job specs.
    #[test]
    fn hostile_requests(
        info in mutate::hostile(node_info().prop_map(json)),
        hb in mutate::hostile(heartbeat().prop_map(json)),
        spec in mutate::hostile(job_spec().prop_map(json)),
    ) {
        if let Some(info) = parse::<NodeInfo>("node info", &info) {
            if info.validate().is_ok() {
                prop_assert!(check_name("node name", &info.name).is_ok());
            }
        }
        let _ = parse::<Heartbeat>("heartbeat", &hb);
        if let Some(spec) = parse::<JobSpec>("job spec", &spec) {
            if spec.validate().is_ok() {
                prop_assert!(!spec.targets.is_empty());
                for t in &spec.targets {
                    prop_assert!(!t.images.is_empty());
                    let _ = t.selects("node", &BTreeMap::new());
                }
            }
        }
    }

    /// What workers and the CLI parse: heartbeat replies, job status and lists.
    #[test]
    fn hostile_replies(
        r in mutate::hostile(reply().prop_map(json)),
        status in mutate::hostile(job_status().prop_map(json)),
        noise in mutate::noise(256),
    ) {
        let _ = parse::<HeartbeatReply>("heartbeat reply", &r);
        if let Some(s) = parse::<JobStatus>("job status", &status) {
            let _ = s.count(TaskState::Done);
        }
        let _ = parse::<Registered>("registered", &noise);
        let _ = parse::<JobList>("job list", &noise);
        let _ = parse::<NodeList>("node list", &noise);
    }
}
