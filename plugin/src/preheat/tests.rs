//! The worker against a scripted coordinator, a fake puller and fake blobs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use shoal_p2p::preheat::proto::Registered;
use tokio::sync::Notify;

use super::*;

#[derive(Default)]
struct FakeCoordinator {
    registrations: Mutex<Vec<NodeInfo>>,
    heartbeats: Mutex<Vec<Heartbeat>>,
    tasks: Mutex<Vec<TaskRef>>,
    known: AtomicBool,
    /// Heartbeats fail while set.
    down: AtomicBool,
}

impl Coordinator for FakeCoordinator {
    fn register(&self, info: NodeInfo) -> BoxFuture<'_, Result<Registered, PreheatClientError>> {
        lock(&self.registrations).push(info);
        self.known.store(true, Ordering::SeqCst);
        Box::pin(async {
            Ok(Registered {
                heartbeat_interval_ms: 10,
            })
        })
    }

    fn heartbeat(
        &self,
        hb: Heartbeat,
    ) -> BoxFuture<'_, Result<HeartbeatReply, PreheatClientError>> {
        lock(&self.heartbeats).push(hb);
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(PreheatClientError::Status {
                    url: "https://coordinator:7080/v1/heartbeat".into(),
                    status: 503,
                    message: "connection refused".into(),
                })
            });
        }
        let registered = self.known.load(Ordering::SeqCst);
        let tasks = if registered {
            lock(&self.tasks).clone()
        } else {
            vec![]
        };
        Box::pin(async move {
            Ok(HeartbeatReply {
                registered,
                heartbeat_interval_ms: 10,
                tasks,
            })
        })
    }
}

/// Pulls finish when released; "bad" images fail. Counts pulls running and dropped.
#[derive(Default)]
struct FakePuller {
    release: Arc<Notify>,
    running: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    version: Mutex<Option<String>>,
}

struct Guard(Arc<AtomicUsize>, Arc<AtomicUsize>, bool);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        if !self.2 {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Puller for FakePuller {
    fn pull(&self, image: String, ingests: Ingests) -> BoxFuture<'static, Result<(), CriError>> {
        let (release, running, dropped) = (
            self.release.clone(),
            self.running.clone(),
            self.dropped.clone(),
        );
        Box::pin(async move {
            running.fetch_add(1, Ordering::SeqCst);
            let mut guard = Guard(running, dropped, false);
            lock(&ingests).insert(digest(2).to_string(), 7);
            release.notified().await;
            guard.2 = true;
            if image.contains("bad") {
                Err(CriError::Timeout {
                    image,
                    timeout: Duration::from_secs(1),
                })
            } else {
                Ok(())
            }
        })
    }

    fn version(&self) -> BoxFuture<'static, Option<String>> {
        let v = lock(&self.version).clone();
        Box::pin(async move { v })
    }
}

fn digest(i: u8) -> Digest {
    Digest::of(&[i])
}

/// Two layers of 100 bytes: the first held half, the second not at all (containerd's
/// ingest says 7).
struct FakeBlobs;

impl LocalBlobs for FakeBlobs {
    fn layers(
        &self,
        _image: String,
    ) -> BoxFuture<'static, Result<Vec<(Digest, u64)>, shoal_p2p::Error>> {
        Box::pin(async { Ok(vec![(digest(1), 100), (digest(2), 100)]) })
    }

    fn held(&self, layers: &[(Digest, u64)]) -> Vec<u64> {
        let held: HashMap<Digest, u64> = [(digest(1), 50)].into();
        layers
            .iter()
            .map(|(d, _)| held.get(d).copied().unwrap_or(0))
            .collect()
    }
}

fn task(job: &str, image: &str) -> TaskRef {
    TaskRef {
        job: job.into(),
        image: image.into(),
    }
}

fn worker(c: &Arc<FakeCoordinator>, p: &Arc<FakePuller>) -> Worker {
    let info = NodeInfo {
        name: "node-0".into(),
        labels: [("group".to_string(), "a".to_string())].into(),
        kernel: kernel_release(),
        containerd: String::new(),
        shoal: "0.1.0".into(),
    };
    Worker::new(info, c.clone(), p.clone(), Arc::new(FakeBlobs))
}

async fn settle(p: &FakePuller, running: usize) {
    for _ in 0..200 {
        if p.running.load(Ordering::SeqCst) == running {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "{} pulls running, {running} expected",
        p.running.load(Ordering::SeqCst)
    );
}

fn last_heartbeat(c: &FakeCoordinator) -> Heartbeat {
    lock(&c.heartbeats).last().cloned().unwrap()
}

#[tokio::test]
async fn runs_every_listed_task_at_once_reports_progress_and_forgets_acknowledged_ones() {
    let c = Arc::new(FakeCoordinator::default());
    let p = Arc::new(FakePuller::default());
    let mut w = worker(&c, &p);
    *lock(&c.tasks) = vec![task("1", "r.example/a:1"), task("1", "r.example/bad:1")];
    w.round().await.unwrap();
    assert_eq!(lock(&c.registrations).len(), 1);
    settle(&p, 2).await;
    w.round().await.unwrap();
    let hb = last_heartbeat(&c);
    assert_eq!(hb.tasks.len(), 2);
    for t in &hb.tasks {
        assert_eq!(t.state, TaskState::Pulling);
        // 50 held of the first layer, 7 ingested of the second.
        assert_eq!((t.bytes_done, t.bytes_total), (57, 200), "{t:?}");
    }
    p.release.notify_waiters();
    settle(&p, 0).await;
    w.round().await.unwrap();
    let hb = last_heartbeat(&c);
    let states: Vec<(TaskState, Option<String>, u64)> = hb
        .tasks
        .iter()
        .map(|t| (t.state, t.error.clone(), t.bytes_done))
        .collect();
    assert_eq!(
        states,
        vec![
            (TaskState::Done, None, 200),
            (
                TaskState::Failed,
                Some("pulling r.example/bad:1: no answer after 1s".into()),
                57
            )
        ]
    );
    // The coordinator recorded both: no longer listed, forgotten; nothing was cancelled.
    lock(&c.tasks).clear();
    w.round().await.unwrap();
    assert_eq!(w.task_count(), 0);
    w.round().await.unwrap();
    assert!(last_heartbeat(&c).tasks.is_empty());
    assert_eq!(p.dropped.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_task_no_longer_listed_is_stopped() {
    let c = Arc::new(FakeCoordinator::default());
    let p = Arc::new(FakePuller::default());
    let mut w = worker(&c, &p);
    *lock(&c.tasks) = vec![task("1", "r.example/a:1"), task("2", "r.example/b:1")];
    w.round().await.unwrap();
    settle(&p, 2).await;
    *lock(&c.tasks) = vec![task("2", "r.example/b:1")];
    w.round().await.unwrap();
    settle(&p, 1).await;
    assert_eq!(p.dropped.load(Ordering::SeqCst), 1);
    assert_eq!(w.task_count(), 1);
    // The same task listed again (the node restarted, a lost reply) is not started twice.
    w.round().await.unwrap();
    settle(&p, 1).await;
}

#[tokio::test]
async fn registers_again_when_unknown_or_when_containerd_answers() {
    let c = Arc::new(FakeCoordinator::default());
    let p = Arc::new(FakePuller::default());
    let mut w = worker(&c, &p);
    w.round().await.unwrap();
    w.round().await.unwrap();
    assert_eq!(lock(&c.registrations).len(), 1);
    assert_eq!(lock(&c.registrations)[0].containerd, "");
    *lock(&p.version) = Some("1.6.20".into());
    w.round().await.unwrap();
    assert_eq!(lock(&c.registrations).len(), 2);
    assert_eq!(lock(&c.registrations)[1].containerd, "1.6.20");
    // The coordinator lost the node (a new state file): it registers again.
    c.known.store(false, Ordering::SeqCst);
    w.round().await.unwrap();
    w.round().await.unwrap();
    assert_eq!(lock(&c.registrations).len(), 3);
}

#[tokio::test]
async fn heartbeats_failing_for_a_while_make_the_worker_degraded() {
    use crate::health::{Component, Health, State};
    let c = Arc::new(FakeCoordinator::default());
    let p = Arc::new(FakePuller::default());
    let health = Health::new();
    let mut w = worker(&c, &p).with_health(health.clone(), "https://coordinator:7080".into());
    w.grace = Duration::from_millis(300);
    let run = tokio::spawn(w.run());
    let state = || health.get(Component::Preheat).state;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(state(), State::Up);
    c.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        state(),
        State::Up,
        "a few missed heartbeats are not an outage"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let record = health.get(Component::Preheat);
    assert_eq!(record.state, State::Degraded);
    let reason = record.reason.unwrap();
    assert!(
        reason.contains("heartbeats to https://coordinator:7080 failing: ")
            && reason.contains("status 503: connection refused"),
        "{reason}"
    );
    c.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state(), State::Up, "up again when heartbeats go through");
    run.abort();
}
