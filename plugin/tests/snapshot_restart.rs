//! The real `shoald snapshotter` over gRPC: state survives `kill -9` (even in the middle of
//! a stream of Prepare/Commit), Cleanup removes orphan directories, SIGTERM stops it
//! cleanly. No root needed: nothing is mounted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::transport::{Channel, Endpoint, Uri};
use containerd_snapshots::tonic::Code;

type Client = SnapshotsClient<Channel>;

struct Daemon {
    child: Child,
    sock: PathBuf,
}

impl Daemon {
    fn start(root: &Path, sock: &Path) -> Daemon {
        // Its own blob cache, next to the root (not the default /var/lib/shoal/blobs).
        let config = root.with_extension("toml");
        let cache = root.with_extension("blobs");
        std::fs::write(
            &config,
            format!("[cache]\ndir = {:?}\n", cache.display().to_string()),
        )
        .expect("write shoald.toml");
        let child = Command::new(env!("CARGO_BIN_EXE_shoald"))
            .arg("--config")
            .arg(&config)
            .args(["snapshotter", "--root"])
            .arg(root)
            .arg("--address")
            .arg(sock)
            .spawn()
            .expect("start shoald");
        Daemon {
            child,
            sock: sock.to_owned(),
        }
    }

    async fn client(&mut self) -> Client {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("shoald exited early: {status}");
            }
            let sock = self.sock.clone();
            let channel = Endpoint::try_from("http://[::]:50051")
                .unwrap()
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    tokio::net::UnixStream::connect(sock.clone())
                }))
                .await;
            if let Ok(channel) = channel {
                return SnapshotsClient::new(channel);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("shoald did not listen on {:?}", self.sock);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SN: &str = "shoal";

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn prepare(c: &mut Client, key: &str, parent: &str) -> Result<Vec<Mount>, Code> {
    c.prepare(PrepareSnapshotRequest {
        snapshotter: SN.into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().mounts)
    .map_err(|s| s.code())
}

async fn view(c: &mut Client, key: &str, parent: &str) -> Result<Vec<Mount>, Code> {
    c.view(ViewSnapshotRequest {
        snapshotter: SN.into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().mounts)
    .map_err(|s| s.code())
}

async fn commit(c: &mut Client, name: &str, key: &str, l: &[(&str, &str)]) -> Result<(), Code> {
    c.commit(CommitSnapshotRequest {
        snapshotter: SN.into(),
        name: name.into(),
        key: key.into(),
        labels: labels(l),
    })
    .await
    .map(drop)
    .map_err(|s| s.code())
}

async fn stat(c: &mut Client, key: &str) -> Result<Info, Code> {
    c.stat(StatSnapshotRequest {
        snapshotter: SN.into(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().info.unwrap())
    .map_err(|s| s.code())
}

async fn remove(c: &mut Client, key: &str) -> Result<(), Code> {
    c.remove(RemoveSnapshotRequest {
        snapshotter: SN.into(),
        key: key.into(),
    })
    .await
    .map(drop)
    .map_err(|s| s.code())
}

async fn usage(c: &mut Client, key: &str) -> (i64, i64) {
    let u = c
        .usage(UsageRequest {
            snapshotter: SN.into(),
            key: key.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (u.size, u.inodes)
}

async fn list(c: &mut Client, filters: &[&str]) -> Vec<Info> {
    let mut stream = c
        .list(ListSnapshotsRequest {
            snapshotter: SN.into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        out.extend(batch.info);
    }
    out
}

/// Every directory a mount refers to.
fn mount_paths(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in mounts {
        if m.r#type == "bind" {
            out.push(PathBuf::from(&m.source));
        }
        for o in &m.options {
            for prefix in ["upperdir=", "workdir="] {
                if let Some(p) = o.strip_prefix(prefix) {
                    out.push(PathBuf::from(p));
                }
            }
            if let Some(l) = o.strip_prefix("lowerdir=") {
                out.extend(l.split(':').map(PathBuf::from));
            }
        }
    }
    out
}

/// Metadata never points at a missing directory.
async fn assert_all_dirs_exist(c: &mut Client) {
    for info in list(c, &[]).await {
        let mounts = if info.kind == Kind::Committed as i32 {
            let key = format!("check/{}", info.name);
            let m = view(c, &key, &info.name).await.unwrap();
            remove(c, &key).await.unwrap();
            m
        } else {
            c.mounts(MountsRequest {
                snapshotter: SN.into(),
                key: info.name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .mounts
        };
        for p in mount_paths(&mounts) {
            assert!(p.is_dir(), "{}: {p:?} missing", info.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_kill_9_and_cleanup_removes_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("state");
    let sock = dir.path().join("run/snapshotter.sock");

    let mut d = Daemon::start(&root, &sock);
    let mut c = d.client().await;
    let m = prepare(&mut c, "base-a", "").await.unwrap();
    let base_fs = PathBuf::from(&m[0].source);
    std::fs::write(base_fs.join("file"), vec![1u8; 20_000]).unwrap();
    commit(&mut c, "base", "base-a", &[("gen", "1")])
        .await
        .unwrap();
    let base_usage = usage(&mut c, "base").await;
    assert_eq!(base_usage.1, 2);
    prepare(&mut c, "child-a", "base").await.unwrap();
    commit(&mut c, "child", "child-a", &[]).await.unwrap();
    view(&mut c, "view", "child").await.unwrap();
    prepare(&mut c, "active", "child").await.unwrap();

    // A stream of Prepare+Commit, killed -9 somewhere in the middle.
    let acked = Arc::new(AtomicUsize::new(0));
    let worker = {
        let acked = acked.clone();
        let mut c = c.clone();
        tokio::spawn(async move {
            for i in 0..100_000 {
                if prepare(&mut c, &format!("k{i}"), "child").await.is_err() {
                    return;
                }
                if commit(&mut c, &format!("c{i}"), &format!("k{i}"), &[("i", "x")])
                    .await
                    .is_err()
                {
                    return;
                }
                acked.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    d.child.kill().unwrap(); // SIGKILL
    d.child.wait().unwrap();
    worker.await.unwrap();
    let acked = acked.load(Ordering::SeqCst);
    assert!(acked > 0, "no commit finished before the kill");
    println!("{acked} Prepare+Commit pairs acknowledged before kill -9");
    drop(c);

    // Restart on the same root (the stale socket file is replaced).
    let mut d = Daemon::start(&root, &sock);
    let mut c = d.client().await;
    let base = stat(&mut c, "base").await.unwrap();
    assert_eq!(base.kind, Kind::Committed as i32);
    assert_eq!(base.labels, labels(&[("gen", "1")]));
    assert_eq!(usage(&mut c, "base").await, base_usage);
    assert_eq!(stat(&mut c, "child").await.unwrap().parent, "base");
    assert_eq!(stat(&mut c, "view").await.unwrap().kind, Kind::View as i32);
    assert_eq!(
        stat(&mut c, "active").await.unwrap().kind,
        Kind::Active as i32
    );
    assert!(base_fs.join("file").is_file());

    let infos = list(&mut c, &[]).await;
    let names: std::collections::HashSet<String> = infos.into_iter().map(|i| i.name).collect();
    for i in 0..acked + 2 {
        let (k, cm) = (format!("k{i}"), format!("c{i}"));
        assert!(
            !(names.contains(&k) && names.contains(&cm)),
            "{k} and {cm} both exist: half a commit"
        );
        if i < acked {
            assert!(names.contains(&cm), "acknowledged commit {cm} lost");
            assert_eq!(
                stat(&mut c, &cm).await.unwrap().labels,
                labels(&[("i", "x")])
            );
        }
    }
    assert_all_dirs_exist(&mut c).await;
    assert_eq!(
        list(&mut c, &["kind==committed,labels.i==x"]).await.len(),
        names
            .iter()
            .filter(|n| n.starts_with('c') && n.as_str() != "child")
            .count()
    );

    // Parents stay protected; unknown keys are NotFound.
    assert_eq!(remove(&mut c, "base").await, Err(Code::FailedPrecondition));
    assert_eq!(remove(&mut c, "nope").await, Err(Code::NotFound));
    assert_eq!(
        prepare(&mut c, "active", "").await,
        Err(Code::AlreadyExists)
    );

    // Cleanup removes orphans (one planted, plus whatever the kill left) and nothing else.
    let snapshots = root.join("snapshots");
    std::fs::create_dir_all(snapshots.join("424242/fs")).unwrap();
    c.cleanup(CleanupRequest {
        snapshotter: SN.into(),
    })
    .await
    .unwrap();
    assert!(!snapshots.join("424242").exists());
    let dirs = std::fs::read_dir(&snapshots).unwrap().count();
    let snapshots_now = list(&mut c, &[]).await.len();
    assert_eq!(
        dirs, snapshots_now,
        "one directory per snapshot after Cleanup"
    );
    assert_all_dirs_exist(&mut c).await;
    assert!(base_fs.join("file").is_file());

    // SIGTERM: clean exit, socket removed.
    drop(c);
    let status = Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = d.child.wait().unwrap();
    assert!(exit.success(), "shoald after SIGTERM: {exit}");
    assert!(!sock.exists(), "socket file left behind");
}
