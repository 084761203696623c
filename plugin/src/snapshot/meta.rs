//! Snapshot metadata and its rules, the same as containerd's `snapshots/storage`: kinds,
//! parent chains, parent protection, commit, labels and their update field paths.
//!
//! The rules are plain functions over a transaction ([`MetaRead`] / [`MetaTxn`]); where the
//! records live is behind the [`MetaStore`] trait ([`super::RedbStore`] on disk,
//! [`super::MemStore`] in memory). Every mutation runs in one store transaction that
//! commits only if the whole closure succeeds.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::filter::Filter;
use super::SnapshotError;

/// The kind of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only view on its parent; cannot be committed.
    View,
    /// Read-write snapshot being prepared; may be committed.
    Active,
    /// Immutable; may be a parent.
    Committed,
}

impl Kind {
    /// The name containerd's filters use (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// Disk usage of a snapshot's own directory (not its parents').
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes allocated (512-byte blocks, hard links counted once), as containerd counts.
    pub size: i64,
    /// Distinct inodes, the directory itself included.
    pub inodes: i64,
}

/// One stored snapshot, keyed by its name (containerd's key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Names the snapshot's directory `snapshots/ID`; kept across Commit.
    pub id: u64,
    pub kind: Kind,
    /// The parent's name, empty for none.
    pub parent: String,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Computed at Commit; zero for active and view snapshots.
    pub usage: Usage,
}

/// What Stat, Update and List return.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    pub name: String,
    pub kind: Kind,
    pub parent: String,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

impl Info {
    fn new(name: &str, r: &Record) -> Self {
        Info {
            name: name.to_owned(),
            kind: r.kind,
            parent: r.parent.clone(),
            labels: r.labels.clone(),
            created: r.created,
            updated: r.updated,
        }
    }
}

/// An active or view snapshot as needed to build its mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: u64,
    pub kind: Kind,
    /// Parent IDs, nearest first (the overlay's `lowerdir` order).
    pub parent_ids: Vec<u64>,
}

/// Reads inside a transaction.
pub trait MetaRead {
    /// The record stored under `key`.
    fn get(&self, key: &str) -> Result<Option<Record>, SnapshotError>;
    /// Every record, in key order.
    fn all(&self) -> Result<Vec<(String, Record)>, SnapshotError>;
    /// Whether any snapshot has the snapshot with this ID as its parent.
    fn has_children(&self, id: u64) -> Result<bool, SnapshotError>;
}

/// Writes inside a transaction.
pub trait MetaTxn: MetaRead {
    fn put(&mut self, key: &str, record: &Record) -> Result<(), SnapshotError>;
    fn delete(&mut self, key: &str) -> Result<(), SnapshotError>;
    /// Records that `child` has `parent` as its parent.
    fn link_child(&mut self, parent: u64, child: u64) -> Result<(), SnapshotError>;
    fn unlink_child(&mut self, parent: u64, child: u64) -> Result<(), SnapshotError>;
    /// A new ID, never handed out before (IDs of committed transactions are never reused).
    fn next_id(&mut self) -> Result<u64, SnapshotError>;
}

/// Where snapshot metadata lives. `write` commits iff `f` returns `Ok` (it may be called
/// once only); `read` sees a consistent snapshot of committed state.
pub trait MetaStore: Send + Sync + 'static {
    fn read(
        &self,
        f: &mut dyn FnMut(&dyn MetaRead) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError>;
    fn write(
        &self,
        f: &mut dyn FnMut(&mut dyn MetaTxn) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError>;
}

/// Runs `f` in a read transaction of `store` and returns its value.
pub fn read<T>(
    store: &dyn MetaStore,
    f: impl FnOnce(&dyn MetaRead) -> Result<T, SnapshotError>,
) -> Result<T, SnapshotError> {
    let mut f = Some(f);
    let mut out = None;
    store.read(&mut |tx| {
        let f = f.take().ok_or_else(|| SnapshotError::Transaction {
            what: "read closure called twice",
        })?;
        out = Some(f(tx)?);
        Ok(())
    })?;
    out.ok_or_else(|| SnapshotError::Transaction {
        what: "read closure not called",
    })
}

/// Runs `f` in a write transaction of `store`, committed iff `f` succeeds.
pub fn write<T>(
    store: &dyn MetaStore,
    f: impl FnOnce(&mut dyn MetaTxn) -> Result<T, SnapshotError>,
) -> Result<T, SnapshotError> {
    let mut f = Some(f);
    let mut out = None;
    store.write(&mut |tx| {
        let f = f.take().ok_or_else(|| SnapshotError::Transaction {
            what: "write closure called twice",
        })?;
        out = Some(f(tx)?);
        Ok(())
    })?;
    out.ok_or_else(|| SnapshotError::Transaction {
        what: "write closure not called",
    })
}

/// containerd stores no label with an empty value: setting one to "" deletes it.
fn without_empty(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.retain(|_, v| !v.is_empty());
    labels
}

fn not_found(key: &str) -> SnapshotError {
    SnapshotError::NotFound {
        key: key.to_owned(),
    }
}

fn must_get(tx: &(impl MetaRead + ?Sized), key: &str) -> Result<Record, SnapshotError> {
    tx.get(key)?.ok_or_else(|| not_found(key))
}

/// IDs of `parent` and its ancestors, nearest first.
/// IDs of `parent` and its ancestors, nearest first (empty for no parent).
pub fn parent_ids(tx: &(impl MetaRead + ?Sized), parent: &str) -> Result<Vec<u64>, SnapshotError> {
    let mut ids = Vec::new();
    let mut name = parent.to_owned();
    while !name.is_empty() {
        let r = must_get(tx, &name)?;
        ids.push(r.id);
        if ids.len() > 100_000 {
            return Err(SnapshotError::FailedPrecondition {
                key: parent.to_owned(),
                reason: "parent chain loops".into(),
            });
        }
        name = r.parent;
    }
    Ok(ids)
}

/// Creates an active or view snapshot `key` on `parent` (empty for none).
pub fn create(
    tx: &mut dyn MetaTxn,
    kind: Kind,
    key: &str,
    parent: &str,
    labels: BTreeMap<String, String>,
    now: SystemTime,
) -> Result<Snapshot, SnapshotError> {
    if kind == Kind::Committed {
        return Err(SnapshotError::InvalidArgument(format!(
            "snapshot {key:?}: only active or view snapshots can be created"
        )));
    }
    if key.is_empty() {
        return Err(SnapshotError::InvalidArgument(
            "snapshot key must not be empty".into(),
        ));
    }
    let parent_record = if parent.is_empty() {
        None
    } else {
        let p = must_get(&*tx, parent)?;
        if p.kind != Kind::Committed {
            return Err(SnapshotError::InvalidArgument(format!(
                "parent {parent:?} of snapshot {key:?} is not a committed snapshot"
            )));
        }
        Some(p)
    };
    if tx.get(key)?.is_some() {
        return Err(SnapshotError::AlreadyExists {
            key: key.to_owned(),
        });
    }
    let id = tx.next_id()?;
    tx.put(
        key,
        &Record {
            id,
            kind,
            parent: parent.to_owned(),
            labels: without_empty(labels),
            created: now,
            updated: now,
            usage: Usage::default(),
        },
    )?;
    let parent_ids = match parent_record {
        Some(p) => {
            tx.link_child(p.id, id)?;
            parent_ids(&*tx, parent)?
        }
        None => Vec::new(),
    };
    Ok(Snapshot {
        id,
        kind,
        parent_ids,
    })
}

/// The active or view snapshot `key`, for its mounts.
pub fn active(tx: &(impl MetaRead + ?Sized), key: &str) -> Result<Snapshot, SnapshotError> {
    let r = must_get(tx, key)?;
    if r.kind == Kind::Committed {
        return Err(SnapshotError::FailedPrecondition {
            key: key.to_owned(),
            reason: "not an active or view snapshot".into(),
        });
    }
    Ok(Snapshot {
        id: r.id,
        kind: r.kind,
        parent_ids: parent_ids(tx, &r.parent)?,
    })
}

/// Info, ID and stored usage of `key`.
pub fn stat(tx: &(impl MetaRead + ?Sized), key: &str) -> Result<(Info, u64, Usage), SnapshotError> {
    let r = must_get(tx, key)?;
    Ok((Info::new(key, &r), r.id, r.usage))
}

/// Commits the active snapshot `key` as `name` with `labels` and its measured `usage`.
/// `expected_id` is the ID whose directory was measured: if `key` now names another
/// snapshot (removed and prepared again meanwhile), nothing changes and `Ok(false)` says
/// to measure again.
pub fn commit(
    tx: &mut dyn MetaTxn,
    key: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    usage: Usage,
    expected_id: u64,
    now: SystemTime,
) -> Result<bool, SnapshotError> {
    if name.is_empty() {
        return Err(SnapshotError::InvalidArgument(
            "snapshot name must not be empty".into(),
        ));
    }
    if tx.get(name)?.is_some() {
        return Err(SnapshotError::AlreadyExists {
            key: name.to_owned(),
        });
    }
    let active = must_get(&*tx, key)?;
    if active.kind != Kind::Active {
        return Err(SnapshotError::FailedPrecondition {
            key: key.to_owned(),
            reason: "not an active snapshot".into(),
        });
    }
    if active.id != expected_id {
        return Ok(false);
    }
    tx.delete(key)?;
    tx.put(
        name,
        &Record {
            id: active.id,
            kind: Kind::Committed,
            parent: active.parent,
            labels: without_empty(labels),
            created: now,
            updated: now,
            usage,
        },
    )?;
    // The parent link is by ID, which a commit keeps: nothing to relink.
    Ok(true)
}

/// Removes `key`, refusing while other snapshots have it as their parent. Returns the ID
/// of the removed snapshot, whose directory may go once the transaction has committed.
pub fn remove(tx: &mut dyn MetaTxn, key: &str) -> Result<u64, SnapshotError> {
    let r = must_get(&*tx, key)?;
    if tx.has_children(r.id)? {
        return Err(SnapshotError::FailedPrecondition {
            key: key.to_owned(),
            reason: "cannot remove a snapshot with children".into(),
        });
    }
    if !r.parent.is_empty() {
        let p = must_get(&*tx, &r.parent)?;
        tx.unlink_child(p.id, r.id)?;
    }
    tx.delete(key)?;
    Ok(r.id)
}

/// Updates the mutable fields of `info.name`: with no `fieldpaths` all labels are replaced;
/// `labels` replaces all labels, `labels.KEY` sets (or, absent from `info`, deletes) one;
/// any other path is an invalid argument.
pub fn update(
    tx: &mut dyn MetaTxn,
    info: &Info,
    fieldpaths: &[String],
    now: SystemTime,
) -> Result<Info, SnapshotError> {
    let mut r = must_get(&*tx, &info.name)?;
    if fieldpaths.is_empty() {
        r.labels = info.labels.clone();
    }
    for path in fieldpaths {
        if let Some(label) = path.strip_prefix("labels.") {
            match info.labels.get(label) {
                Some(v) => r.labels.insert(label.to_owned(), v.clone()),
                None => r.labels.remove(label),
            };
        } else if path == "labels" {
            r.labels = info.labels.clone();
        } else {
            return Err(SnapshotError::InvalidArgument(format!(
                "cannot update field {path:?} of snapshot {:?}",
                info.name
            )));
        }
    }
    r.labels.retain(|_, v| !v.is_empty());
    r.updated = now;
    tx.put(&info.name, &r)?;
    Ok(Info::new(&info.name, &r))
}

/// Every snapshot matching `filter`.
pub fn list(tx: &(impl MetaRead + ?Sized), filter: &Filter) -> Result<Vec<Info>, SnapshotError> {
    Ok(tx
        .all()?
        .iter()
        .map(|(name, r)| Info::new(name, r))
        .filter(|info| filter.matches(&|path| field(info, path)))
        .collect())
}

/// The value of a filter field path on `info`, as containerd's snapshot adaptor has it.
fn field(info: &Info, path: &[String]) -> Option<String> {
    match path.first().map(String::as_str)? {
        "kind" => Some(info.kind.as_str().to_owned()),
        "name" => Some(info.name.clone()),
        "parent" => Some(info.parent.clone()),
        "labels" => info.labels.get(&path[1..].join(".")).cloned(),
        _ => None,
    }
}

/// IDs of every stored snapshot (their directories are the ones to keep).
pub fn ids(tx: &(impl MetaRead + ?Sized)) -> Result<Vec<u64>, SnapshotError> {
    Ok(tx.all()?.into_iter().map(|(_, r)| r.id).collect())
}
