//! [`OverlaySnapshotter`]: containerd's overlayfs snapshotter semantics (directories,
//! mounts, usage, cleanup) over a [`MetaStore`], and containerd's `Snapshotter` trait on it.
//!
//! The synchronous methods (`*_blocking`) do the work and may block on the file system and
//! the store; the async trait methods run them on tokio's blocking pool.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic;

use super::filter::Filter;
use super::meta::{self, Info, Kind, MetaStore, Snapshot, Usage};
use super::store::RedbStore;
use super::SnapshotError;

/// The label containerd's CRI plugin puts on a layer's Prepare: the chain ID under which
/// the layer's committed snapshot is expected. A [`PrepareInterceptor`] that commits it
/// makes the Prepare answer `AlreadyExists`, and containerd skips the layer's download.
pub const TARGET_REF_LABEL: &str = "containerd.io/snapshot.ref";

/// The seam for remote (streamed) layers: consulted on every Prepare that carries
/// [`TARGET_REF_LABEL`], before anything is created.
#[tonic::async_trait]
pub trait PrepareInterceptor: Send + Sync + 'static {
    /// Returns `true` once the committed snapshot `target` exists on `parent` (typically
    /// made with [`OverlaySnapshotter::commit_unpacked`]); the Prepare of `key` then answers
    /// `AlreadyExists`. Returns `false` to let the Prepare go on as an ordinary one; it must
    /// never make a Prepare fail that would otherwise have worked.
    async fn intercept(
        &self,
        snapshotter: &OverlaySnapshotter,
        key: &str,
        parent: &str,
        target: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool;
}

/// An overlayfs snapshotter rooted at a directory: `ROOT/snapshots/ID/{fs,work}`.
#[derive(Clone)]
pub struct OverlaySnapshotter {
    root: PathBuf,
    store: Arc<dyn MetaStore>,
    /// Pass `index=off` (when the kernel knows the option), as containerd does.
    index_off: bool,
    /// Pass `userxattr` (inside a user namespace), as containerd does.
    userxattr: bool,
    interceptor: Option<Arc<dyn PrepareInterceptor>>,
}

impl std::fmt::Debug for OverlaySnapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlaySnapshotter")
            .field("root", &self.root)
            .field("index_off", &self.index_off)
            .field("userxattr", &self.userxattr)
            .finish_non_exhaustive()
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), SnapshotError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(SnapshotError::io(path))
}

fn mkdir_all(path: &Path, mode: u32) -> Result<(), SnapshotError> {
    fs::DirBuilder::new()
        .mode(mode)
        .recursive(true)
        .create(path)
        .map_err(SnapshotError::io(path))
}

fn remove_dir_all_if_exists(path: &Path) -> Result<(), SnapshotError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SnapshotError::io(path)(e)),
        _ => Ok(()),
    }
}

fn sync_dir(path: &Path) -> Result<(), SnapshotError> {
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(SnapshotError::io(path))
}

/// Whether this process runs in a user namespace other than the initial one.
fn in_user_namespace() -> bool {
    match fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let fields: Vec<&str> = map.split_whitespace().collect();
            fields != ["0", "0", "4294967295"]
        }
        Err(_) => false,
    }
}

/// containerd's `NeedsUserXAttr`: inside a user namespace, unless the root is on tmpfs
/// (kernel 5.11 or newer is assumed, which has `userxattr`).
fn needs_userxattr(root: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    if !in_user_namespace() {
        return false;
    }
    // f_type's width differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let on_tmpfs = matches!(rustix::fs::statfs(root), Ok(s) if s.f_type as i64 == TMPFS_MAGIC);
    !on_tmpfs
}

/// Disk usage of `dir` as containerd's `fs.DiskUsage` counts it: every inode once (hard
/// links included), the directory itself too, size in 512-byte blocks allocated.
pub fn disk_usage(dir: &Path) -> Result<Usage, SnapshotError> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let md = fs::symlink_metadata(&path).map_err(SnapshotError::io(&path))?;
        if seen.insert((md.dev(), md.ino())) {
            usage.inodes += 1;
            usage.size += md.blocks() as i64 * 512;
        }
        if md.is_dir() {
            for entry in fs::read_dir(&path).map_err(SnapshotError::io(&path))? {
                stack.push(entry.map_err(SnapshotError::io(&path))?.path());
            }
        }
    }
    Ok(usage)
}

impl OverlaySnapshotter {
    /// Opens the snapshotter at `root` (created if missing), metadata in
    /// `root/metadata.redb`.
    pub fn open(root: &Path) -> Result<Self, SnapshotError> {
        mkdir_all(root, 0o700)?;
        let store = RedbStore::open(&root.join("metadata.redb"))?;
        Self::with_store(root, Arc::new(store))
    }

    /// A snapshotter at `root` with its metadata in `store` (e.g. a [`super::MemStore`]).
    pub fn with_store(root: &Path, store: Arc<dyn MetaStore>) -> Result<Self, SnapshotError> {
        mkdir_all(root, 0o700)?;
        let snapshots = root.join("snapshots");
        match mkdir(&snapshots, 0o700) {
            Err(SnapshotError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
        Ok(OverlaySnapshotter {
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
            userxattr: needs_userxattr(root),
            root: root.to_owned(),
            store,
            interceptor: None,
        })
    }

    /// Consults `interceptor` on Prepares that carry [`TARGET_REF_LABEL`].
    pub fn with_interceptor(mut self, interceptor: Arc<dyn PrepareInterceptor>) -> Self {
        self.interceptor = Some(interceptor);
        self
    }

    /// The snapshotter's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(id.to_string())
    }

    /// `ROOT/snapshots/ID/fs`: a snapshot's own layer (overlay upperdir).
    pub fn upper_path(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    fn work_path(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("work")
    }

    /// Creates an active (`Prepare`) or view (`View`) snapshot and returns its mounts.
    pub fn create_blocking(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let snapshot = meta::write(&*self.store, |tx| {
            let s = meta::create(tx, kind, key, parent, labels, SystemTime::now())?;
            // The directory exists before the metadata that names it commits.
            self.make_dirs(&s)?;
            Ok(s)
        })?;
        tracing::debug!(key, parent, id = snapshot.id, ?kind, "snapshot created");
        Ok(self.mounts_of(&snapshot))
    }

    /// Makes `snapshots/ID/{fs,work}` under a temporary name, then renames it into place
    /// and syncs `snapshots/`. Runs inside the write transaction, so no other create or
    /// cleanup runs at the same time.
    fn make_dirs(&self, s: &Snapshot) -> Result<(), SnapshotError> {
        let dir = self.snapshot_dir(s.id);
        // A fresh ID was never committed, so a directory by that name is an orphan of a
        // Prepare that crashed before its metadata committed.
        remove_dir_all_if_exists(&dir)?;
        let tmp = self.snapshots_dir().join(format!("new-{}", s.id));
        remove_dir_all_if_exists(&tmp)?;
        mkdir(&tmp, 0o700)?;
        let made = (|| {
            let fs_dir = tmp.join("fs");
            mkdir(&fs_dir, 0o755)?;
            if s.kind == Kind::Active {
                mkdir(&tmp.join("work"), 0o711)?;
            }
            if let Some(&pid) = s.parent_ids.first() {
                let parent_fs = self.upper_path(pid);
                let md = fs::metadata(&parent_fs).map_err(SnapshotError::io(&parent_fs))?;
                std::os::unix::fs::lchown(&fs_dir, Some(md.uid()), Some(md.gid()))
                    .map_err(SnapshotError::io(&fs_dir))?;
            }
            fs::rename(&tmp, &dir).map_err(SnapshotError::io(&dir))?;
            sync_dir(&self.snapshots_dir())
        })();
        if made.is_err() {
            let _ = remove_dir_all_if_exists(&tmp);
            let _ = remove_dir_all_if_exists(&dir);
        }
        made
    }

    /// Mounts of the active or view snapshot `key`.
    pub fn mounts_blocking(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let s = meta::read(&*self.store, |tx| meta::active(tx, key))?;
        Ok(self.mounts_of(&s))
    }

    /// containerd's overlay mounts: a bind mount (read-only for a view) with no parent; a
    /// read-only bind of the parent for a view on one parent; otherwise overlay with
    /// `lowerdir` (nearest parent first) and, for an active snapshot, `upperdir`/`workdir`.
    fn mounts_of(&self, s: &Snapshot) -> Vec<Mount> {
        let path = |id: u64| self.upper_path(id).to_string_lossy().into_owned();
        let bind = |source: String, ro: bool| Mount {
            r#type: "bind".into(),
            source,
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
            ..Default::default()
        };
        if s.parent_ids.is_empty() {
            return vec![bind(path(s.id), s.kind == Kind::View)];
        }
        if s.kind != Kind::Active && s.parent_ids.len() == 1 {
            return vec![bind(path(s.parent_ids[0]), true)];
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_owned());
        }
        if self.userxattr {
            options.push("userxattr".to_owned());
        }
        if s.kind == Kind::Active {
            options.push(format!(
                "workdir={}",
                self.work_path(s.id).to_string_lossy()
            ));
            options.push(format!("upperdir={}", path(s.id)));
        }
        let lower: Vec<String> = s.parent_ids.iter().map(|&id| path(id)).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            options,
            ..Default::default()
        }]
    }

    /// Commits the active snapshot `key` as `name`, measuring its usage first.
    pub fn commit_blocking(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        for _ in 0..5 {
            let Some(record) = meta::read(&*self.store, |tx| tx.get(key))? else {
                break; // let the transaction report the right error
            };
            let usage = if record.kind == Kind::Active {
                disk_usage(&self.upper_path(record.id))?
            } else {
                Usage::default()
            };
            let done = meta::write(&*self.store, |tx| {
                meta::commit(
                    tx,
                    key,
                    name,
                    labels.clone(),
                    usage,
                    record.id,
                    SystemTime::now(),
                )
            })?;
            if done {
                tracing::debug!(key, name, id = record.id, ?usage, "snapshot committed");
                return Ok(());
            }
        }
        meta::write(&*self.store, |tx| {
            meta::commit(
                tx,
                key,
                name,
                labels,
                Usage::default(),
                0,
                SystemTime::now(),
            )
        })?;
        Err(SnapshotError::Unsettled {
            key: key.to_owned(),
        })
    }

    /// Removes `key` (refused while it has children); its directory goes after the
    /// metadata transaction has committed, and a failure to remove it leaves an orphan
    /// for [`Self::cleanup_blocking`].
    pub fn remove_blocking(&self, key: &str) -> Result<(), SnapshotError> {
        let id = meta::write(&*self.store, |tx| meta::remove(tx, key))?;
        let dir = self.snapshot_dir(id);
        if let Err(e) = remove_dir_all_if_exists(&dir) {
            tracing::warn!(key, error = %e, "snapshot removed, its directory stays until Cleanup");
        }
        tracing::debug!(key, id, "snapshot removed");
        Ok(())
    }

    /// Info of `key`.
    pub fn stat_blocking(&self, key: &str) -> Result<Info, SnapshotError> {
        meta::read(&*self.store, |tx| meta::stat(tx, key)).map(|(info, _, _)| info)
    }

    /// Updates labels of `info.name` (see [`meta::update`] for `fieldpaths`).
    pub fn update_blocking(
        &self,
        info: &Info,
        fieldpaths: &[String],
    ) -> Result<Info, SnapshotError> {
        meta::write(&*self.store, |tx| {
            meta::update(tx, info, fieldpaths, SystemTime::now())
        })
    }

    /// Usage of `key`: measured now for an active snapshot, as stored at Commit otherwise.
    pub fn usage_blocking(&self, key: &str) -> Result<Usage, SnapshotError> {
        let (info, id, usage) = meta::read(&*self.store, |tx| meta::stat(tx, key))?;
        if info.kind == Kind::Active {
            return disk_usage(&self.upper_path(id));
        }
        Ok(usage)
    }

    /// Every snapshot matching the containerd `filters` (any of them; none: all).
    pub fn list_blocking<S: AsRef<str>>(&self, filters: &[S]) -> Result<Vec<Info>, SnapshotError> {
        let filter = Filter::parse_all(filters)?;
        meta::read(&*self.store, |tx| meta::list(tx, &filter))
    }

    /// Removes every directory under `snapshots/` that no snapshot's metadata names
    /// (left by Remove failures, crashes, or interrupted Prepares). Returns what it removed.
    pub fn cleanup_blocking(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        let snapshots = self.snapshots_dir();
        // Inside a write transaction no Prepare runs, so every directory not named by the
        // metadata is an orphan; move them aside there, delete them after.
        let doomed = meta::write(&*self.store, |tx| {
            let keep: HashSet<String> = meta::ids(tx)?.iter().map(u64::to_string).collect();
            let mut doomed = Vec::new();
            for entry in fs::read_dir(&snapshots).map_err(SnapshotError::io(&snapshots))? {
                let entry = entry.map_err(SnapshotError::io(&snapshots))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                if name.starts_with("removing-") {
                    doomed.push(entry.path());
                    continue;
                }
                let aside = snapshots.join(format!("removing-{name}"));
                fs::rename(entry.path(), &aside).map_err(SnapshotError::io(entry.path()))?;
                doomed.push(aside);
            }
            Ok(doomed)
        })?;
        for dir in &doomed {
            remove_dir_all_if_exists(dir)?;
        }
        if !doomed.is_empty() {
            tracing::info!(
                count = doomed.len(),
                "cleanup removed orphan snapshot directories"
            );
        }
        Ok(doomed)
    }

    /// The layer directories (`fs`) of snapshot `name` and its ancestors, nearest first:
    /// the `lowerdir` of a snapshot prepared on `name` (empty for no parent).
    pub fn chain_dirs_blocking(&self, name: &str) -> Result<Vec<PathBuf>, SnapshotError> {
        let ids = meta::read(&*self.store, |tx| meta::parent_ids(tx, name))?;
        Ok(ids.into_iter().map(|id| self.upper_path(id)).collect())
    }

    /// Makes the committed snapshot `name` on `parent` from `fill`, which writes the layer
    /// into the directory it is given (an active snapshot's upperdir, so overlay whiteouts
    /// apply). Nothing is left behind when `fill` or the commit fails. Blocking.
    pub fn commit_unpacked(
        &self,
        name: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        fill: impl FnOnce(&Path) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let key = format!("shoal-unpack/{name}/{nanos}");
        self.create_blocking(Kind::Active, &key, parent, BTreeMap::new())?;
        let id = meta::read(&*self.store, |tx| meta::active(tx, &key))?.id;
        let result =
            fill(&self.upper_path(id)).and_then(|()| self.commit_blocking(name, &key, labels));
        if result.is_err() {
            if let Err(e) = self.remove_blocking(&key) {
                tracing::warn!(key, error = %e, "could not remove a failed unpack");
            }
        }
        result
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&OverlaySnapshotter) -> Result<T, SnapshotError> + Send + 'static,
    ) -> Result<T, SnapshotError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(SnapshotError::Task)?
    }
}

fn to_api_kind(kind: Kind) -> containerd_snapshots::Kind {
    match kind {
        Kind::View => containerd_snapshots::Kind::View,
        Kind::Active => containerd_snapshots::Kind::Active,
        Kind::Committed => containerd_snapshots::Kind::Committed,
    }
}

fn to_api_info(info: Info) -> containerd_snapshots::Info {
    containerd_snapshots::Info {
        kind: to_api_kind(info.kind),
        name: info.name,
        parent: info.parent,
        labels: info.labels.into_iter().collect(),
        created_at: info.created,
        updated_at: info.updated,
    }
}

fn from_api_info(info: containerd_snapshots::Info) -> Info {
    let kind = match info.kind {
        containerd_snapshots::Kind::View => Kind::View,
        containerd_snapshots::Kind::Committed => Kind::Committed,
        _ => Kind::Active,
    };
    Info {
        name: info.name,
        kind,
        parent: info.parent,
        labels: info.labels.into_iter().collect(),
        created: info.created_at,
        updated: info.updated_at,
    }
}

#[tonic::async_trait]
impl containerd_snapshots::Snapshotter for OverlaySnapshotter {
    type Error = SnapshotError;

    async fn stat(&self, key: String) -> Result<containerd_snapshots::Info, SnapshotError> {
        self.blocking(move |s| s.stat_blocking(&key))
            .await
            .map(to_api_info)
    }

    async fn update(
        &self,
        info: containerd_snapshots::Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<containerd_snapshots::Info, SnapshotError> {
        let info = from_api_info(info);
        let fieldpaths = fieldpaths.unwrap_or_default();
        self.blocking(move |s| s.update_blocking(&info, &fieldpaths))
            .await
            .map(to_api_info)
    }

    async fn usage(&self, key: String) -> Result<containerd_snapshots::Usage, SnapshotError> {
        let u = self.blocking(move |s| s.usage_blocking(&key)).await?;
        Ok(containerd_snapshots::Usage {
            inodes: u.inodes,
            size: u.size,
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, SnapshotError> {
        self.blocking(move |s| s.mounts_blocking(&key)).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let labels: BTreeMap<String, String> = labels.into_iter().collect();
        if let (Some(interceptor), Some(target)) = (&self.interceptor, labels.get(TARGET_REF_LABEL))
        {
            if interceptor
                .intercept(self, &key, &parent, target, &labels)
                .await
            {
                return Err(SnapshotError::AlreadyExists {
                    key: target.clone(),
                });
            }
        }
        self.blocking(move |s| s.create_blocking(Kind::Active, &key, &parent, labels))
            .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let labels = labels.into_iter().collect();
        self.blocking(move |s| s.create_blocking(Kind::View, &key, &parent, labels))
            .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let labels = labels.into_iter().collect();
        self.blocking(move |s| s.commit_blocking(&name, &key, labels))
            .await
    }

    async fn remove(&self, key: String) -> Result<(), SnapshotError> {
        self.blocking(move |s| s.remove_blocking(&key)).await
    }

    async fn clear(&self) -> Result<(), SnapshotError> {
        self.blocking(|s| s.cleanup_blocking()).await.map(drop)
    }

    type InfoStream = futures::stream::Iter<
        std::vec::IntoIter<Result<containerd_snapshots::Info, SnapshotError>>,
    >;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, SnapshotError> {
        let infos = self.blocking(move |s| s.list_blocking(&filters)).await?;
        let items: Vec<_> = infos.into_iter().map(|i| Ok(to_api_info(i))).collect();
        Ok(futures::stream::iter(items))
    }
}
