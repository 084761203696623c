//! The coordinator against [`MemoryStore`] (and one [`RedbStore`] reload): grouping,
//! dispatch with a concurrency limit, progress, down detection, cancel, reload.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use shoal_p2p::preheat::proto::{
    Heartbeat, JobSpec, JobState, NodeInfo, SpecError, Target, TaskProgress, TaskRef, TaskState,
};

use super::*;
use crate::metrics::PreheatMetrics;

const A: &str = "r.example/app-a:1";
const B: &str = "r.example/app-b:1";

fn settings(concurrency: usize) -> Settings {
    Settings {
        heartbeat_interval_ms: 1000,
        down_after_ms: 5000,
        concurrency,
    }
}

fn info(name: &str, group: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        labels: [("group".to_string(), group.to_string())].into(),
        kernel: "6.1".into(),
        containerd: "1.6.20".into(),
        shoal: "0.1.0".into(),
    }
}

fn target(images: &[&str], group: &str) -> Target {
    Target {
        images: images.iter().map(|s| s.to_string()).collect(),
        selector: [("group".to_string(), group.to_string())].into(),
        nodes: vec![],
    }
}

/// Four nodes: n0, n1 in group a; n2, n3 in group b.
fn coordinator(store: &MemoryStore, concurrency: usize) -> Coordinator {
    let mut c = Coordinator::open(settings(concurrency), Box::new(store.clone()), 0).unwrap();
    for (n, g) in [("n0", "a"), ("n1", "a"), ("n2", "b"), ("n3", "b")] {
        c.register(info(n, g), 0).unwrap();
    }
    c
}

fn beat(c: &mut Coordinator, node: &str, tasks: Vec<TaskProgress>, now: u64) -> Vec<TaskRef> {
    let reply = c
        .heartbeat(
            Heartbeat {
                node: node.into(),
                tasks,
            },
            now,
        )
        .unwrap();
    assert!(reply.registered);
    reply.tasks
}

fn progress(job: &str, image: &str, state: TaskState, error: Option<&str>) -> TaskProgress {
    TaskProgress {
        job: job.into(),
        image: image.into(),
        state,
        bytes_done: 10,
        bytes_total: 10,
        error: error.map(str::to_owned),
    }
}

fn two_groups() -> JobSpec {
    JobSpec {
        targets: vec![target(&[A], "a"), target(&[B], "b")],
    }
}

#[test]
fn nodes_are_grouped_by_the_images_they_need_and_all_groups_start_at_once() {
    let store = MemoryStore::default();
    let mut c = coordinator(&store, 0);
    let mut spec = two_groups();
    // n1 is also named with B: it needs A and B, a group of its own.
    spec.targets.push(Target {
        images: vec![B.into()],
        selector: BTreeMap::new(),
        nodes: vec!["n1".into()],
    });
    let job = c.submit(spec, 10).unwrap();
    assert_eq!(job.state, JobState::Running);
    let groups: Vec<(Vec<String>, Vec<String>)> = job
        .groups
        .iter()
        .map(|g| (g.images.clone(), g.nodes.clone()))
        .collect();
    assert_eq!(
        groups,
        vec![
            (vec![A.to_string()], vec!["n0".to_string()]),
            (vec![A.to_string(), B.to_string()], vec!["n1".to_string()]),
            (
                vec![B.to_string()],
                vec!["n2".to_string(), "n3".to_string()]
            ),
        ]
    );
    assert_eq!(job.tasks.len(), 5);
    assert_eq!(job.count(TaskState::Pending), 5);
    // Every node is dispatched at its first heartbeat, with all its images at once.
    assert_eq!(beat(&mut c, "n1", vec![], 20).len(), 2);
    assert_eq!(beat(&mut c, "n2", vec![], 20).len(), 1);
    assert_eq!(beat(&mut c, "n0", vec![], 20).len(), 1);
    assert_eq!(beat(&mut c, "n3", vec![], 20).len(), 1);
    assert_eq!(c.job("1").unwrap().count(TaskState::Pulling), 5);
}

#[test]
fn concurrency_limits_nodes_per_group_and_progress_finishes_the_job() {
    let store = MemoryStore::default();
    let mut c = coordinator(&store, 1);
    c.submit(two_groups(), 10).unwrap();
    assert_eq!(beat(&mut c, "n0", vec![], 20).len(), 1);
    // n1 is in n0's group: it waits; n2 is in the other group: it starts.
    assert!(beat(&mut c, "n1", vec![], 20).is_empty());
    assert_eq!(beat(&mut c, "n2", vec![], 20).len(), 1);
    // Bytes reported while pulling are kept.
    let mut p = progress("1", A, TaskState::Pulling, None);
    p.bytes_done = 4;
    beat(&mut c, "n0", vec![p], 30);
    let t = &c.job("1").unwrap().tasks[0];
    assert_eq!(
        (t.node.as_str(), t.bytes_done, t.state),
        ("n0", 4, TaskState::Pulling)
    );
    // n0 done: no task for it any more, and n1 may start.
    assert!(beat(
        &mut c,
        "n0",
        vec![progress("1", A, TaskState::Done, None)],
        40
    )
    .is_empty());
    assert_eq!(beat(&mut c, "n1", vec![], 50).len(), 1);
    beat(
        &mut c,
        "n1",
        vec![progress("1", A, TaskState::Done, None)],
        60,
    );
    beat(
        &mut c,
        "n2",
        vec![progress("1", B, TaskState::Failed, Some("not found"))],
        60,
    );
    assert_eq!(beat(&mut c, "n3", vec![], 70).len(), 1);
    let job = c.job("1").unwrap();
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.tasks[2].error.as_deref(), Some("not found"));
    beat(
        &mut c,
        "n3",
        vec![progress("1", B, TaskState::Done, None)],
        80,
    );
    let job = c.job("1").unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.finished_ms, Some(80));
    assert!(job.log.iter().any(|l| l
        .message
        .contains("n2: r.example/app-b:1 failed: not found")));
    assert!(job
        .log
        .last()
        .unwrap()
        .message
        .starts_with("finished: 3 done, 1 failed"));
    // Late reports for finished tasks change nothing.
    beat(
        &mut c,
        "n3",
        vec![progress("1", B, TaskState::Failed, Some("late"))],
        90,
    );
    assert_eq!(c.job("1").unwrap().tasks[3].state, TaskState::Done);
}

#[test]
fn a_silent_node_is_down_its_tasks_fail_and_the_others_finish() {
    let store = MemoryStore::default();
    let mut c = coordinator(&store, 0);
    c.submit(two_groups(), 0).unwrap();
    for n in ["n0", "n1", "n2", "n3"] {
        beat(&mut c, n, vec![], 1000);
    }
    // n3 goes silent; the others keep beating.
    for now in [3000, 5000] {
        for n in ["n0", "n1", "n2"] {
            beat(&mut c, n, vec![], now);
        }
        c.tick(now).unwrap();
    }
    assert!(c.nodes().nodes.iter().all(|n| n.up));
    c.tick(6001).unwrap();
    let n3 = c
        .nodes()
        .nodes
        .into_iter()
        .find(|n| n.info.name == "n3")
        .unwrap();
    assert!(!n3.up);
    let job = c.job("1").unwrap();
    let t = job.tasks.iter().find(|t| t.node == "n3").unwrap();
    assert_eq!(
        (t.state, t.error.as_deref()),
        (TaskState::Failed, Some("node down"))
    );
    assert_eq!(job.state, JobState::Running);
    for (n, image) in [("n0", A), ("n1", A), ("n2", B)] {
        beat(
            &mut c,
            n,
            vec![progress("1", image, TaskState::Done, None)],
            6500,
        );
    }
    let job = c.job("1").unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.count(TaskState::Done), 3);
    // n3 comes back: up again, its task stays failed and is not handed out.
    assert!(beat(
        &mut c,
        "n3",
        vec![progress("1", B, TaskState::Pulling, None)],
        7000
    )
    .is_empty());
    assert!(c.nodes().nodes.iter().all(|n| n.up));
    // A selector skips down nodes; a named down node fails at once.
    c.tick(20_000).unwrap();
    beat(&mut c, "n0", vec![], 20_000);
    let job = c.submit(two_groups(), 20_000).unwrap();
    assert_eq!(job.tasks.len(), 1);
    let named = JobSpec {
        targets: vec![Target {
            images: vec![A.into()],
            selector: BTreeMap::new(),
            nodes: vec!["n1".into()],
        }],
    };
    let job = c.submit(named, 20_000).unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.tasks[0].error.as_deref(), Some("node down"));
}

#[test]
fn cancel_drops_pending_and_stops_running_tasks() {
    let store = MemoryStore::default();
    let mut c = coordinator(&store, 1);
    c.submit(two_groups(), 0).unwrap();
    assert_eq!(beat(&mut c, "n0", vec![], 10).len(), 1);
    let job = c.cancel("1", 20).unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.count(TaskState::Cancelled), 4);
    // n0 is told to stop (its task is no longer listed); n1 never starts.
    assert!(beat(
        &mut c,
        "n0",
        vec![progress("1", A, TaskState::Pulling, None)],
        30
    )
    .is_empty());
    assert!(beat(&mut c, "n1", vec![], 30).is_empty());
    // Cancelling again, or a finished job, changes nothing; unknown jobs are 404.
    assert_eq!(c.cancel("1", 40).unwrap().finished_ms, Some(20));
    assert!(matches!(c.cancel("7", 40), Err(Error::NotFound(_))));
    assert!(matches!(c.cancel("x", 40), Err(Error::NotFound(_))));
}

#[test]
fn bad_jobs_and_unknown_nodes_are_refused() {
    let store = MemoryStore::default();
    let mut c = coordinator(&store, 0);
    let empty = c.submit(JobSpec::default(), 0).unwrap_err();
    assert!(
        matches!(empty, Error::PreheatSpec(SpecError::NoTarget)),
        "{empty:?}"
    );
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        empty.to_string(),
        "bad request: a job needs at least one target"
    );
    let none = JobSpec {
        targets: vec![target(&[A], "nope")],
    };
    let e = c.submit(none, 0).unwrap_err().to_string();
    assert!(e.contains("selects no node"), "{e}");
    let unknown = JobSpec {
        targets: vec![Target {
            images: vec![A.into()],
            selector: BTreeMap::new(),
            nodes: vec!["ghost".into()],
        }],
    };
    assert!(c
        .submit(unknown, 0)
        .unwrap_err()
        .to_string()
        .contains("ghost"));
    let reply = c
        .heartbeat(
            Heartbeat {
                node: "ghost".into(),
                tasks: vec![],
            },
            0,
        )
        .unwrap();
    assert!(!reply.registered);
    let mut bad = info("bad name", "a");
    assert!(c.register(bad.clone(), 0).is_err());
    bad.name = String::new();
    assert!(c.register(bad, 0).is_err());
}

#[test]
fn nodes_and_jobs_survive_a_restart_with_a_grace_period() {
    let store = MemoryStore::default();
    let mut c = coordinator(&store, 0);
    c.submit(two_groups(), 0).unwrap();
    beat(&mut c, "n0", vec![], 10);
    beat(
        &mut c,
        "n0",
        vec![progress("1", A, TaskState::Done, None)],
        20,
    );
    drop(c);
    // Restarted long after: nodes are listed and get down_after from now.
    let mut c = Coordinator::open(settings(0), Box::new(store.clone()), 100_000).unwrap();
    assert_eq!(c.nodes().nodes.len(), 4);
    c.tick(100_000).unwrap();
    assert!(c.nodes().nodes.iter().all(|n| n.up));
    let job = c.job("1").unwrap();
    assert_eq!(job.tasks[0].state, TaskState::Done);
    assert!(job
        .log
        .iter()
        .any(|l| l.message.contains("n0: r.example/app-a:1 done")));
    // The job goes on; new IDs follow the kept ones.
    assert_eq!(beat(&mut c, "n1", vec![], 100_010).len(), 1);
    assert_eq!(c.submit(two_groups(), 100_020).unwrap().id, "2");
}

#[test]
fn the_redb_store_keeps_nodes_and_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/preheat.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        let mut c = Coordinator::open(settings(0), Box::new(store), 0).unwrap();
        c.register(info("n0", "a"), 0).unwrap();
        c.submit(
            JobSpec {
                targets: vec![target(&[A], "a")],
            },
            1,
        )
        .unwrap();
        beat(&mut c, "n0", vec![], 2);
        beat(
            &mut c,
            "n0",
            vec![progress("1", A, TaskState::Done, None)],
            3,
        );
    }
    let store = RedbStore::open(&path).unwrap();
    let c = Coordinator::open(settings(0), Box::new(store), 10).unwrap();
    assert_eq!(c.nodes().nodes[0].info, info("n0", "a"));
    let job = c.job("1").unwrap();
    assert_eq!(job.state, JobState::Done);
    assert!(job.log.len() >= 3, "{:?}", job.log);
    assert_eq!(c.jobs().jobs[0].done, 1);
}

#[test]
fn metrics_count_nodes_jobs_and_tasks() {
    let mut registry = shoal_p2p::metrics::Registry::default();
    let metrics = PreheatMetrics::default();
    metrics.register(&mut registry);
    let store = MemoryStore::default();
    let mut c = coordinator(&store, 0).with_metrics(metrics);
    c.submit(two_groups(), 0).unwrap();
    for (n, image) in [("n0", A), ("n1", A), ("n2", B)] {
        beat(&mut c, n, vec![], 10);
        beat(
            &mut c,
            n,
            vec![progress("1", image, TaskState::Done, None)],
            20,
        );
    }
    c.tick(10_000).unwrap();
    let text = shoal_p2p::metrics::render(&registry);
    for needle in [
        "shoal_preheat_nodes{state=\"up\"} 0",
        "shoal_preheat_nodes{state=\"down\"} 4",
        "shoal_preheat_heartbeats_total 6",
        "shoal_preheat_jobs_total{state=\"submitted\"} 1",
        "shoal_preheat_jobs_total{state=\"failed\"} 1",
        "shoal_preheat_tasks_total{state=\"done\"} 3",
        "shoal_preheat_tasks_total{state=\"failed\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
}
