//! Snapshot metadata and overlay logic without root: every scenario runs against the
//! in-memory fake and the redb store.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_plugin::snapshot::meta::{self, Kind};
use shoal_plugin::snapshot::{
    Info, MemStore, MetaStore, OverlaySnapshotter, RedbStore, SnapshotError,
};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs `f` once with each store.
fn each_store(f: impl Fn(&Path, OverlaySnapshotter)) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mem");
    f(
        &root,
        OverlaySnapshotter::with_store(&root, Arc::new(MemStore::new())).unwrap(),
    );
    let root = dir.path().join("redb");
    f(&root, OverlaySnapshotter::open(&root).unwrap());
}

fn id_dir(root: &Path, mount_source_or_option: &str) -> std::path::PathBuf {
    // ".../snapshots/ID/fs" -> ".../snapshots/ID"
    let p = Path::new(mount_source_or_option);
    assert!(p.starts_with(root.join("snapshots")), "{p:?}");
    p.parent().unwrap().to_owned()
}

#[test]
fn prepare_commit_and_mounts() {
    each_store(|root, sn| {
        let m = sn
            .create_blocking(Kind::Active, "a", "", labels(&[("x", "1")]))
            .unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].r#type, "bind");
        assert_eq!(m[0].options, ["rw", "rbind"]);
        let a_dir = id_dir(root, &m[0].source);
        assert!(a_dir.join("fs").is_dir() && a_dir.join("work").is_dir());
        std::fs::write(a_dir.join("fs/file"), vec![7u8; 10_000]).unwrap();

        // Usage of an active snapshot is measured: fs dir + one file.
        let u = sn.usage_blocking("a").unwrap();
        assert_eq!(u.inodes, 2);
        assert!(u.size >= 10_000, "{u:?}");

        sn.commit_blocking("c", "a", labels(&[("y", "2")])).unwrap();
        assert!(matches!(
            sn.stat_blocking("a"),
            Err(SnapshotError::NotFound { .. })
        ));
        let c = sn.stat_blocking("c").unwrap();
        assert_eq!(c.kind, Kind::Committed);
        assert_eq!(
            c.labels,
            labels(&[("y", "2")]),
            "commit labels replace the active's"
        );
        assert_eq!(c.created, c.updated);
        // Committed usage is the one stored at commit, even if the directory changes.
        std::fs::write(a_dir.join("fs/late"), b"x").unwrap();
        assert_eq!(sn.usage_blocking("c").unwrap(), u);
        std::fs::remove_file(a_dir.join("fs/late")).unwrap();

        // Mounts of a committed snapshot: failed precondition.
        assert!(matches!(
            sn.mounts_blocking("c"),
            Err(SnapshotError::FailedPrecondition { .. })
        ));

        // Active on one parent: overlay with upper/work and the parent as lowerdir.
        let m = sn
            .create_blocking(Kind::Active, "b", "c", BTreeMap::new())
            .unwrap();
        assert_eq!(m[0].r#type, "overlay");
        let lower = format!("lowerdir={}", a_dir.join("fs").display());
        assert!(m[0].options.contains(&lower), "{:?}", m[0].options);
        assert!(m[0].options.iter().any(|o| o.starts_with("upperdir=")));
        assert!(m[0].options.iter().any(|o| o.starts_with("workdir=")));
        assert_eq!(sn.mounts_blocking("b").unwrap(), m);
        sn.commit_blocking("c2", "b", BTreeMap::new()).unwrap();

        // View on one parent: read-only bind of the parent, no work dir.
        let v = sn
            .create_blocking(Kind::View, "v1", "c", BTreeMap::new())
            .unwrap();
        assert_eq!(v[0].r#type, "bind");
        assert_eq!(v[0].source, a_dir.join("fs").to_string_lossy());
        assert_eq!(v[0].options, ["ro", "rbind"]);
        // View on two: overlay, lowerdir nearest first, no upper.
        let v = sn
            .create_blocking(Kind::View, "v2", "c2", BTreeMap::new())
            .unwrap();
        assert_eq!(v[0].r#type, "overlay");
        let lowers = v[0]
            .options
            .iter()
            .find(|o| o.starts_with("lowerdir="))
            .unwrap();
        let parts: Vec<&str> = lowers["lowerdir=".len()..].split(':').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], a_dir.join("fs").to_string_lossy());
        assert!(!v[0].options.iter().any(|o| o.starts_with("upperdir=")));
        // View without parent: read-only bind of its own empty dir.
        let v = sn
            .create_blocking(Kind::View, "v3", "", BTreeMap::new())
            .unwrap();
        assert_eq!(v[0].options, ["ro", "rbind"]);
        assert_eq!(
            sn.usage_blocking("v3").unwrap().inodes,
            0,
            "views are not measured"
        );
    });
}

#[test]
fn errors_match_containerd() {
    each_store(|_, sn| {
        let none = BTreeMap::new;
        sn.create_blocking(Kind::Active, "a", "", none()).unwrap();
        // Same key twice, prepare or view.
        assert!(matches!(
            sn.create_blocking(Kind::Active, "a", "", none()),
            Err(SnapshotError::AlreadyExists { .. })
        ));
        assert!(matches!(
            sn.create_blocking(Kind::View, "a", "", none()),
            Err(SnapshotError::AlreadyExists { .. })
        ));
        // Missing parent; parent not committed.
        assert!(matches!(
            sn.create_blocking(Kind::Active, "b", "nope", none()),
            Err(SnapshotError::NotFound { .. })
        ));
        assert!(matches!(
            sn.create_blocking(Kind::Active, "b", "a", none()),
            Err(SnapshotError::InvalidArgument(_))
        ));
        // Commit: missing key, existing name, view.
        assert!(matches!(
            sn.commit_blocking("c", "nope", none()),
            Err(SnapshotError::NotFound { .. })
        ));
        sn.create_blocking(Kind::View, "v", "", none()).unwrap();
        assert!(matches!(
            sn.commit_blocking("c", "v", none()),
            Err(SnapshotError::FailedPrecondition { .. })
        ));
        assert!(matches!(
            sn.commit_blocking("v", "a", none()),
            Err(SnapshotError::AlreadyExists { .. })
        ));
        // Failed operations changed nothing.
        assert_eq!(sn.stat_blocking("a").unwrap().kind, Kind::Active);
        assert!(matches!(
            sn.stat_blocking("b"),
            Err(SnapshotError::NotFound { .. })
        ));
        // Unknown snapshot everywhere.
        assert!(matches!(
            sn.remove_blocking("nope"),
            Err(SnapshotError::NotFound { .. })
        ));
        assert!(matches!(
            sn.usage_blocking("nope"),
            Err(SnapshotError::NotFound { .. })
        ));
        assert!(matches!(
            sn.mounts_blocking("nope"),
            Err(SnapshotError::NotFound { .. })
        ));
        // gRPC codes, mapped in one place.
        use containerd_snapshots::tonic::{Code, Status};
        let code = |e: SnapshotError| Status::from(e).code();
        assert_eq!(code(sn.stat_blocking("nope").unwrap_err()), Code::NotFound);
        assert_eq!(
            code(
                sn.create_blocking(Kind::Active, "a", "", none())
                    .unwrap_err()
            ),
            Code::AlreadyExists
        );
        assert_eq!(
            code(sn.commit_blocking("c", "v", none()).unwrap_err()),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(sn.list_blocking(&["kind=x"]).unwrap_err()),
            Code::InvalidArgument
        );
    });
}

#[test]
fn parents_are_protected_and_directories_go_with_remove() {
    each_store(|root, sn| {
        let none = BTreeMap::new;
        let m = sn.create_blocking(Kind::Active, "a", "", none()).unwrap();
        let a_dir = id_dir(root, &m[0].source);
        sn.commit_blocking("base", "a", none()).unwrap();
        sn.create_blocking(Kind::Active, "b", "base", none())
            .unwrap();
        sn.commit_blocking("mid", "b", none()).unwrap();
        sn.create_blocking(Kind::View, "v", "mid", none()).unwrap();

        for parent in ["base", "mid"] {
            assert!(matches!(
                sn.remove_blocking(parent),
                Err(SnapshotError::FailedPrecondition { .. })
            ));
        }
        sn.remove_blocking("v").unwrap();
        assert!(matches!(
            sn.remove_blocking("base"),
            Err(SnapshotError::FailedPrecondition { .. })
        ));
        sn.remove_blocking("mid").unwrap();
        assert!(a_dir.is_dir());
        sn.remove_blocking("base").unwrap();
        assert!(!a_dir.exists(), "the directory goes with Remove");
        assert!(sn.list_blocking::<&str>(&[]).unwrap().is_empty());
        let left: Vec<_> = std::fs::read_dir(root.join("snapshots")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");

        // A key can be reused after Remove, and a committed name after its removal.
        sn.create_blocking(Kind::Active, "a", "", none()).unwrap();
        sn.commit_blocking("base", "a", none()).unwrap();
    });
}

#[test]
fn labels_update_like_containerd() {
    each_store(|_, sn| {
        sn.create_blocking(
            Kind::Active,
            "a",
            "",
            labels(&[("l1", "v1"), ("empty", "")]),
        )
        .unwrap();
        let st = sn.stat_blocking("a").unwrap();
        assert_eq!(
            st.labels,
            labels(&[("l1", "v1")]),
            "empty values are not stored"
        );
        std::thread::sleep(Duration::from_millis(2));

        // No field paths: all labels replaced; parent and kind are not mutable.
        let mut req = Info {
            parent: "doesnotexist".into(),
            kind: Kind::Committed,
            labels: labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3")]),
            ..st.clone()
        };
        let before = SystemTime::now();
        let up = sn.update_blocking(&req, &[]).unwrap();
        assert_eq!(up.labels, req.labels);
        assert_eq!(up.parent, "");
        assert_eq!(up.kind, Kind::Active);
        assert_eq!(up.created, st.created);
        assert!(up.updated >= before);

        // labels.KEY: set, or delete when absent from the request.
        req.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        let up = sn
            .update_blocking(&req, &["labels.l1".into(), "labels.l2".into()])
            .unwrap();
        assert_eq!(up.labels, labels(&[("l1", "updated"), ("l3", "v3")]));

        // labels: replace all.
        req.labels = labels(&[("l4", "v4")]);
        let up = sn.update_blocking(&req, &["labels".into()]).unwrap();
        assert_eq!(up.labels, labels(&[("l4", "v4")]));
        assert_eq!(sn.stat_blocking("a").unwrap().labels, up.labels);

        // Immutable fields: invalid argument, nothing changed.
        assert!(matches!(
            sn.update_blocking(&req, &["parent".into()]),
            Err(SnapshotError::InvalidArgument(_))
        ));
        req.name = "nope".into();
        assert!(matches!(
            sn.update_blocking(&req, &[]),
            Err(SnapshotError::NotFound { .. })
        ));
    });
}

#[test]
fn list_filters() {
    each_store(|_, sn| {
        let gc = ("containerd.io/gc.root", "check-walk");
        sn.create_blocking(Kind::Active, "p-a", "", labels(&[gc]))
            .unwrap();
        sn.commit_blocking("p", "p-a", labels(&[gc])).unwrap();
        sn.create_blocking(Kind::Active, "a-wl", "p", labels(&[gc, ("l", "1")]))
            .unwrap();
        sn.create_blocking(Kind::View, "v-wl", "p", labels(&[gc]))
            .unwrap();
        sn.create_blocking(Kind::Active, "a-np", "", BTreeMap::new())
            .unwrap();

        let names = |filters: &[&str]| -> Vec<String> {
            sn.list_blocking(filters)
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect()
        };
        assert_eq!(names(&[]), ["a-np", "a-wl", "p", "v-wl"]);
        assert_eq!(
            names(&["labels.\"containerd.io/gc.root\"==check-walk"]),
            ["a-wl", "p", "v-wl"]
        );
        assert_eq!(
            names(&["kind==active,labels.\"containerd.io/gc.root\"==check-walk"]),
            ["a-wl"]
        );
        assert_eq!(names(&["kind==view"]), ["v-wl"]);
        assert_eq!(names(&["kind==committed"]), ["p"]);
        assert_eq!(names(&["name==p", "name==a-np"]), ["a-np", "p"]);
        assert_eq!(names(&["name==a-wl,labels.l"]), ["a-wl"]);
        assert_eq!(names(&["parent==p"]), ["a-wl", "v-wl"]);
        assert_eq!(
            names(&["parent!=\"\",labels.\"containerd.io/gc.root\"==check-walk"]),
            ["a-wl", "v-wl"]
        );
        assert_eq!(names(&["labels.l"]), ["a-wl"]);
        assert!(names(&["labels.l==2"]).is_empty());
        assert_eq!(names(&["name~=^a-"]), ["a-np", "a-wl"]);
        assert!(matches!(
            sn.list_blocking(&["name=="]),
            Err(SnapshotError::Filter { .. })
        ));
    });
}

#[test]
fn cleanup_removes_only_orphans() {
    each_store(|root, sn| {
        let none = BTreeMap::new;
        let m = sn.create_blocking(Kind::Active, "a", "", none()).unwrap();
        let live = id_dir(root, &m[0].source);
        let snapshots = root.join("snapshots");
        for orphan in ["999/fs", "new-1000/fs", "removing-7"] {
            std::fs::create_dir_all(snapshots.join(orphan)).unwrap();
        }
        std::fs::write(snapshots.join("999/fs/f"), b"x").unwrap();
        let removed = sn.cleanup_blocking().unwrap();
        assert_eq!(removed.len(), 3, "{removed:?}");
        let left: Vec<_> = std::fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left, std::slice::from_ref(&live));
        assert!(live.join("fs").is_dir() && live.join("work").is_dir());
        assert!(sn.cleanup_blocking().unwrap().is_empty());
    });
}

#[test]
fn orphan_directory_of_a_crashed_prepare_does_not_block_its_id() {
    // A Prepare that crashed after renaming its directory into place but before its
    // metadata committed leaves `snapshots/<next id>`; the next Prepare takes it over.
    each_store(|root, sn| {
        std::fs::create_dir_all(root.join("snapshots/1/fs/stale")).unwrap();
        std::fs::create_dir_all(root.join("snapshots/new-1/fs")).unwrap();
        let m = sn
            .create_blocking(Kind::Active, "a", "", BTreeMap::new())
            .unwrap();
        assert_eq!(m[0].source, root.join("snapshots/1/fs").to_string_lossy());
        assert!(!root.join("snapshots/1/fs/stale").exists());
        assert!(!root.join("snapshots/new-1").exists());
    });
}

#[test]
fn failed_directory_creation_leaves_no_metadata() {
    // The parent's directory vanished: the child's Prepare fails and records nothing.
    each_store(|root, sn| {
        let m = sn
            .create_blocking(Kind::Active, "a", "", BTreeMap::new())
            .unwrap();
        sn.commit_blocking("p", "a", BTreeMap::new()).unwrap();
        std::fs::remove_dir_all(id_dir(root, &m[0].source)).unwrap();
        assert!(matches!(
            sn.create_blocking(Kind::Active, "b", "p", BTreeMap::new()),
            Err(SnapshotError::Io { .. })
        ));
        assert!(matches!(
            sn.stat_blocking("b"),
            Err(SnapshotError::NotFound { .. })
        ));
        let dirs: Vec<_> = std::fs::read_dir(root.join("snapshots")).unwrap().collect();
        assert!(dirs.is_empty(), "{dirs:?}");
    });
}

#[test]
fn commit_unpacked_makes_a_committed_layer_or_nothing() {
    each_store(|root, sn| {
        let target = "default/1/sha256:abc";
        sn.commit_unpacked(target, "", labels(&[("k", "v")]), |dir| {
            std::fs::write(dir.join("hello"), b"hi").map_err(|source| SnapshotError::Io {
                path: dir.join("hello"),
                source,
            })
        })
        .unwrap();
        let st = sn.stat_blocking(target).unwrap();
        assert_eq!(
            (st.kind, st.labels),
            (Kind::Committed, labels(&[("k", "v")]))
        );
        assert_eq!(sn.list_blocking::<&str>(&[]).unwrap().len(), 1);

        let err = sn.commit_unpacked("other", target, BTreeMap::new(), |_| {
            Err(SnapshotError::InvalidArgument("bad layer".into()))
        });
        assert!(err.is_err());
        assert_eq!(
            sn.list_blocking::<&str>(&[]).unwrap().len(),
            1,
            "nothing left behind"
        );
        assert_eq!(
            std::fs::read_dir(root.join("snapshots")).unwrap().count(),
            1
        );
    });
}

#[test]
fn redb_store_survives_reopen_and_rolls_back_failed_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        meta::write(&store, |tx| {
            meta::create(
                tx,
                Kind::Active,
                "a",
                "",
                labels(&[("x", "1")]),
                SystemTime::now(),
            )
        })
        .unwrap();
        // A transaction whose closure fails leaves nothing, not even its ID.
        let err = meta::write(&store, |tx| {
            meta::create(
                tx,
                Kind::Active,
                "b",
                "",
                BTreeMap::new(),
                SystemTime::now(),
            )?;
            Err::<(), _>(SnapshotError::InvalidArgument("abort".into()))
        });
        assert!(err.is_err());
    }
    let store = RedbStore::open(&path).unwrap();
    let (info, id, _) = meta::read(&store, |tx| meta::stat(tx, "a")).unwrap();
    assert_eq!((info.kind, id), (Kind::Active, 1));
    assert!(meta::read(&store, |tx| tx.get("b")).unwrap().is_none());
    let s = meta::write(&store, |tx| {
        meta::create(tx, Kind::View, "c", "", BTreeMap::new(), SystemTime::now())
    })
    .unwrap();
    assert_eq!(
        s.id, 2,
        "IDs continue after reopen; the aborted one is reused"
    );
    // The store is usable through the trait object too.
    let dynstore: &dyn MetaStore = &store;
    assert_eq!(meta::read(dynstore, |tx| meta::ids(tx)).unwrap(), [1, 2]);
}
