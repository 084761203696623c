//! The remote (streaming) path of the CRI pull: a [`PrepareInterceptor`] that fetches a
//! layer from its registry, unpacks it while it arrives and commits it as the snapshot
//! containerd asked for, so that the Prepare answers `ALREADY_EXISTS` and containerd never
//! downloads the blob.
//!
//! Layer blobs come from the [`BlobSource`] [`crate::node::Node`] built: the swarm, or the
//! node's blob cache in front of the registry (`[cache]` in the config). Either way a blob
//! fetched once is read from disk the next time, and is kept for the swarm to seed.
//!
//! # What containerd 1.6 does, and what shoal answers
//!
//! containerd's unpacker (`unpacker.go`) calls `Prepare(key, parent)` one layer at a time
//! with the label `containerd.io/snapshot.ref` = the layer's chain ID, and CRI adds the
//! `containerd.io/snapshot/cri.*` labels ([`LAYER_DIGEST_LABEL`], [`IMAGE_REF_LABEL`],
//! [`MANIFEST_DIGEST_LABEL`], [`IMAGE_LAYERS_LABEL`]: the digests of this layer and those
//! above it, comma-separated, cut short to fit a label). On `ALREADY_EXISTS` containerd's
//! metadata layer (`metadata/snapshot.go`, `createSnapshot`) looks for a *committed* backend
//! snapshot whose `containerd.io/snapshot.ref` label is the chain ID and whose parent is the
//! backend parent it passed; the snapshot's name is free. shoal commits under
//! [`commit_name`] (target and parent, so one name per place in a chain) with the Prepare's
//! labels, on exactly the parent it was given.
//!
//! # Prefetch
//!
//! On a layer's Prepare, every layer above it in the manifest (the `cri.image-layers`
//! label marks a CRI pull that wants this; the list itself comes from the manifest, which
//! is resolved anyway and is never cut short) is started too: fetched and unpacked at most
//! `unpack.concurrency` at a time, each into a staging directory `ROOT/remote/DIGEST-N`
//! (not yet a snapshot: its parent's name is not known yet). Each later Prepare finds its
//! layer done or in progress, waits for it, and renames it into the new snapshot's upper
//! directory. A pull therefore takes about the slowest layer, not the sum.
//!
//! Implicit parent directories (no tar member of their own) take their attributes from the
//! parent layers in containerd; a prefetched layer is unpacked without parents, so the
//! unpacker records the implicit directories it made with default attributes
//! ([`crate::unpack::UnpackStats::implicit_dirs`]) and they get the parents' owner, mode,
//! atime and xattrs at commit ([`crate::unpack::inherit_parent_attrs`]).
//!
//! # Failure
//!
//! Any failure (labels malformed, registry unreachable, credentials refused, digest or
//! diff ID mismatch, hostile tar, chain ID not matching the manifest's diff IDs) is logged
//! once as a warning naming the layer, and the Prepare goes on as an ordinary one: containerd
//! then downloads and applies the layer itself. Nothing half-made stays: the unpacker
//! removes its staging on failure, `commit_unpacked` removes its active snapshot, unclaimed
//! staged layers are removed after [`STAGED_TTL`], and at startup the staging directory and
//! any active snapshot `commit_unpacked` left (a crash) are removed.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_snapshots::tonic;
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::{Platform, RegistryClient, ResolvedImage};
use shoal_p2p::single_flight::{InFlight, Joined};
use shoal_p2p::source::BlobSource;
use shoal_p2p::Digest;
use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::pulls::PullMetrics;
use crate::snapshot::{Kind, OverlaySnapshotter, PrepareInterceptor, SnapshotError};
use crate::unpack::{inherit_parent_attrs, unpack_verified, LayerSpec, UnpackOptions};
use crate::Error;

/// CRI label: digest of the layer being prepared.
pub const LAYER_DIGEST_LABEL: &str = "containerd.io/snapshot/cri.layer-digest";
/// CRI label: the image reference being pulled.
pub const IMAGE_REF_LABEL: &str = "containerd.io/snapshot/cri.image-ref";
/// CRI label: digest of the image's (platform) manifest.
pub const MANIFEST_DIGEST_LABEL: &str = "containerd.io/snapshot/cri.manifest-digest";
/// CRI label: comma-separated digests of this layer and the ones above it.
pub const IMAGE_LAYERS_LABEL: &str = "containerd.io/snapshot/cri.image-layers";
/// Prefix of the keys of `commit_unpacked`'s temporary active snapshots.
const UNPACK_KEY_PREFIX: &str = "shoal-unpack/";
/// How long an unpacked layer nobody asked for is kept before it is removed.
pub const STAGED_TTL: Duration = Duration::from_secs(600);
/// Resolved manifests kept (per manifest digest).
const MANIFEST_CACHE: usize = 64;

/// The snapshot name a remote layer is committed under: one per (chain ID, parent).
pub fn commit_name(target: &str, parent: &str) -> String {
    format!("shoal-remote/{target}/{parent}")
}

/// Chain IDs of a list of diff IDs (OCI image spec: `sha256(prev + " " + diff)`).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// A layer unpacked into a staging directory, waiting for its Prepare.
#[derive(Debug)]
struct Staged {
    dir: PathBuf,
    implicit_dirs: Vec<PathBuf>,
}

/// One layer being fetched (or done), shared by whoever waits for it.
struct Fetch {
    /// `None` while running; then `Ok` (staged) or why it failed.
    done: watch::Receiver<Option<Result<(), Arc<Error>>>>,
    /// The finished layer until a Prepare claims it.
    staged: Mutex<Option<Staged>>,
}

/// The remote-layer interceptor (see the module documentation).
pub struct RemoteLayers {
    client: RegistryClient,
    /// Where layer blobs come from: the blob cache in front of the registry.
    blobs: Arc<dyn BlobSource>,
    staging: PathBuf,
    limit: Arc<Semaphore>,
    manifests: Mutex<HashMap<Digest, Arc<ResolvedImage>>>,
    /// Layers being fetched, or fetched and not yet claimed.
    fetches: InFlight<Digest, Arc<Fetch>>,
    seq: AtomicU64,
    /// Where a layer given back to containerd is counted (`shoal_pull_fallbacks_total`).
    pulls: PullMetrics,
}

impl std::fmt::Debug for RemoteLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLayers")
            .field("staging", &self.staging)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn remove_dir_all_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The parsed CRI labels of one Prepare.
struct Request {
    layer: Digest,
    image: ImageReference,
    manifest: Digest,
    prefetch: bool,
}

fn label<'a>(labels: &'a BTreeMap<String, String>, name: &'static str) -> Result<&'a str, Error> {
    labels
        .get(name)
        .map(String::as_str)
        .ok_or(Error::MissingLabel { label: name })
}

impl Request {
    fn parse(labels: &BTreeMap<String, String>) -> Result<Self, Error> {
        let digest = |label: &'static str| move |source| Error::LabelDigest { label, source };
        let layer = label(labels, LAYER_DIGEST_LABEL)?
            .parse()
            .map_err(digest(LAYER_DIGEST_LABEL))?;
        let image =
            label(labels, IMAGE_REF_LABEL)?
                .parse()
                .map_err(|source| Error::LabelReference {
                    label: IMAGE_REF_LABEL,
                    source,
                })?;
        let manifest = label(labels, MANIFEST_DIGEST_LABEL)?
            .parse()
            .map_err(digest(MANIFEST_DIGEST_LABEL))?;
        Ok(Request {
            layer,
            image,
            manifest,
            prefetch: labels.contains_key(IMAGE_LAYERS_LABEL),
        })
    }
}

impl RemoteLayers {
    /// The interceptor for `snapshotter`, with registry access and concurrency from `config`,
    /// fetching layer blobs from `blobs` (the swarm or the cache, see [`crate::node`]). Removes what an earlier run left: its staging directory
    /// (`ROOT/remote`) and the temporary active snapshots of interrupted commits. Blocking.
    pub fn new(
        config: &Config,
        snapshotter: &OverlaySnapshotter,
        blobs: Arc<dyn BlobSource>,
    ) -> Result<Self, Error> {
        let client = RegistryClient::new(config.registry.clone())?;
        let staging = snapshotter.root().join("remote");
        remove_dir_all_if_exists(&staging).map_err(io_err(&staging))?;
        std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        for info in snapshotter.list_blocking::<&str>(&[])? {
            if info.kind == Kind::Active && info.name.starts_with(UNPACK_KEY_PREFIX) {
                tracing::info!(key = info.name, "removing an interrupted remote layer");
                snapshotter.remove_blocking(&info.name)?;
            }
        }
        Ok(Self {
            client,
            blobs,
            staging,
            limit: Arc::new(Semaphore::new(config.unpack.concurrency.max(1))),
            manifests: Mutex::new(HashMap::new()),
            fetches: InFlight::new(),
            seq: AtomicU64::new(0),
            pulls: PullMetrics::default(),
        })
    }

    /// Counts the layers given back to containerd in `pulls` (the node's, see
    /// [`crate::node::Node::pulls`]).
    pub fn with_metrics(mut self, pulls: PullMetrics) -> Self {
        self.pulls = pulls;
        self
    }

    /// The manifest `image@manifest`, resolved once per manifest digest.
    async fn resolve(
        &self,
        image: &ImageReference,
        manifest: &Digest,
    ) -> Result<Arc<ResolvedImage>, Error> {
        if let Some(r) = self.manifests.lock().expect("lock").get(manifest) {
            return Ok(r.clone());
        }
        let pinned = image.with_digest(manifest.clone());
        let resolved = Arc::new(self.client.resolve(&pinned, &Platform::host()).await?);
        if resolved.manifest_digest != *manifest {
            return Err(Error::ManifestMismatch {
                image: pinned.to_string(),
                resolved: resolved.manifest_digest.clone(),
                manifest: manifest.clone(),
            });
        }
        let mut cache = self.manifests.lock().expect("lock");
        if cache.len() >= MANIFEST_CACHE {
            cache.clear();
        }
        cache.insert(manifest.clone(), resolved.clone());
        Ok(resolved)
    }

    /// The fetch of layer `index` of `image`: the one in progress (or done, unclaimed), or
    /// a new one started now.
    fn start(&self, image: &ResolvedImage, index: usize) -> Joined<Digest, Arc<Fetch>> {
        let layer = &image.layers[index];
        let mut done = None;
        let joined = self.fetches.join_or_start(&layer.digest, |_| {
            let (tx, rx) = watch::channel(None);
            done = Some(tx);
            Arc::new(Fetch {
                done: rx,
                staged: Mutex::new(None),
            })
        });
        let Some(tx) = done else {
            return joined;
        };

        let spec = LayerSpec {
            digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
            media_type: layer.media_type.clone(),
        };
        let dir = self.staging.join(format!(
            "{}-{}",
            layer.digest.hex(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let (blobs, reference) = (self.blobs.clone(), image.reference.clone());
        let (limit, fetches) = (self.limit.clone(), self.fetches.clone());
        let (me, entry) = (joined.value.clone(), joined.entry.clone());
        tokio::spawn(async move {
            let unpacked = async {
                let _permit = limit.acquire_owned().await.expect("never closed");
                let start = Instant::now();
                // Checked by its source (hashed once: by a swarm download for its commit, by
                // the cache as it reads, else on the way from the registry).
                let stream = blobs.fetch_verified(&reference, &spec.digest).await?;
                let stats = unpack_verified(stream, &spec, &dir, &UnpackOptions::default()).await?;
                tracing::debug!(
                    layer = %spec.digest,
                    bytes = stats.compressed_bytes,
                    ms = start.elapsed().as_millis() as u64,
                    "remote layer unpacked"
                );
                Ok::<_, Error>(stats)
            }
            .await;
            let forget = || fetches.remove(&entry);
            match unpacked {
                Ok(stats) => {
                    *me.staged.lock().expect("lock") = Some(Staged {
                        dir,
                        implicit_dirs: stats.implicit_dirs,
                    });
                    let _ = tx.send(Some(Ok(())));
                }
                Err(e) => {
                    tracing::debug!(layer = %spec.digest, error = %e, "remote layer fetch failed");
                    forget();
                    let _ = tx.send(Some(Err(Arc::new(e))));
                    return;
                }
            }
            // Nobody asked for it (the pull failed or went another way): remove it later.
            tokio::time::sleep(STAGED_TTL).await;
            let unclaimed = me.staged.lock().expect("lock").take();
            if let Some(s) = unclaimed {
                forget();
                tracing::info!(layer = %spec.digest, "removing an unclaimed remote layer");
                let _ = tokio::task::spawn_blocking(move || remove_dir_all_if_exists(&s.dir)).await;
            }
        });
        joined
    }

    /// Waits for layer `index` of `image` and takes its staged directory (fetching it again
    /// if another Prepare took it first).
    async fn claim(&self, image: &ResolvedImage, index: usize) -> Result<Staged, Error> {
        let digest = &image.layers[index].digest;
        for _ in 0..2 {
            let Joined {
                value: fetch,
                entry,
                ..
            } = self.start(image, index);
            let mut rx = fetch.done.clone();
            let outcome = rx
                .wait_for(Option::is_some)
                .await
                .map(|v| v.clone())
                .map_err(|_| Error::FetchVanished {
                    layer: digest.clone(),
                })?;
            if let Some(Err(source)) = outcome {
                return Err(Error::RemoteFetch {
                    layer: digest.clone(),
                    source,
                });
            }
            self.fetches.remove(&entry);
            let staged = fetch.staged.lock().expect("lock").take();
            if let Some(staged) = staged {
                return Ok(staged);
            }
        }
        Err(Error::LayerTaken {
            layer: digest.clone(),
        })
    }

    /// The remote path for one Prepare: `Ok` once `commit_name(target, parent)` is committed.
    async fn prepare(
        &self,
        snapshotter: &OverlaySnapshotter,
        parent: &str,
        target: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let req = Request::parse(labels)?;
        let name = commit_name(target, parent);
        if self.committed(snapshotter, &name, parent).await? {
            return Ok(());
        }
        let image = self.resolve(&req.image, &req.manifest).await?;
        let index = image
            .layers
            .iter()
            .position(|l| l.digest == req.layer)
            .ok_or_else(|| Error::NotALayer {
                layer: req.layer.clone(),
                manifest: req.manifest.clone(),
            })?;
        let diff_ids: Vec<Digest> = image.layers[..=index]
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Option<_>>()
            .ok_or_else(|| Error::NoDiffId {
                layer: req.layer.clone(),
            })?;
        let chain = chain_ids(&diff_ids).pop().expect("at least one layer");
        if chain.to_string() != target {
            return Err(Error::ChainMismatch {
                layer: req.layer.clone(),
                chain,
                target: target.to_owned(),
            });
        }
        self.start(&image, index);
        if req.prefetch {
            for above in index + 1..image.layers.len() {
                self.start(&image, above);
            }
        }
        let staged = self.claim(&image, index).await?;
        let (sn, parent, labels) = (snapshotter.clone(), parent.to_owned(), labels.clone());
        let committed = tokio::task::spawn_blocking(move || {
            let parents = sn.chain_dirs_blocking(&parent)?;
            let dir = staged.dir.clone();
            let result = sn.commit_unpacked(&name, &parent, labels, |upper| {
                let io = |p: &Path| SnapshotError::io(p.to_path_buf());
                inherit_parent_attrs(&dir, &staged.implicit_dirs, &parents).map_err(io(&dir))?;
                // The layer root as containerd makes it: the parent's owner (already on
                // `upper`), mode 0755 (from the unpacker).
                let md = std::fs::metadata(upper).map_err(io(upper))?;
                std::os::unix::fs::lchown(&dir, Some(md.uid()), Some(md.gid()))
                    .map_err(io(&dir))?;
                // `upper` is empty: the rename replaces it.
                std::fs::rename(&dir, upper).map_err(io(upper))
            });
            let _ = remove_dir_all_if_exists(&staged.dir);
            match result {
                // The same layer on the same parent, committed by a concurrent Prepare.
                Err(SnapshotError::AlreadyExists { .. })
                    if sn
                        .stat_blocking(&name)
                        .is_ok_and(|i| i.kind == Kind::Committed && i.parent == parent) =>
                {
                    Ok(())
                }
                other => other,
            }
        })
        .await
        .map_err(|source| Error::Task {
            what: "committing a remote layer",
            source,
        })?;
        Ok(committed?)
    }

    /// Whether `name` is already committed on `parent` (an earlier Prepare of this layer).
    async fn committed(
        &self,
        snapshotter: &OverlaySnapshotter,
        name: &str,
        parent: &str,
    ) -> Result<bool, Error> {
        let (sn, name) = (snapshotter.clone(), name.to_owned());
        let info = tokio::task::spawn_blocking(move || sn.stat_blocking(&name))
            .await
            .map_err(|source| Error::Task {
                what: "looking up a snapshot",
                source,
            })?;
        match info {
            Ok(i) => Ok(i.kind == Kind::Committed && i.parent == parent),
            Err(SnapshotError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[tonic::async_trait]
impl PrepareInterceptor for RemoteLayers {
    async fn intercept(
        &self,
        snapshotter: &OverlaySnapshotter,
        key: &str,
        parent: &str,
        target: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let Some(layer) = labels.get(LAYER_DIGEST_LABEL) else {
            return false; // not a CRI pull: an ordinary Prepare
        };
        let start = Instant::now();
        match self.prepare(snapshotter, parent, target, labels).await {
            Ok(()) => {
                tracing::info!(
                    layer = %layer,
                    target,
                    ms = start.elapsed().as_millis() as u64,
                    "remote layer committed"
                );
                true
            }
            Err(e) => {
                tracing::warn!(
                    layer = %layer,
                    key,
                    error = %e,
                    "remote layer failed; containerd downloads and applies it itself"
                );
                self.pulls.fallback("snapshotter");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn commit_names_differ_per_parent() {
        assert_ne!(commit_name("sha256:x", "p1"), commit_name("sha256:x", "p2"));
        assert_ne!(commit_name("sha256:x", ""), commit_name("sha256:y", ""));
    }

    #[test]
    fn request_labels_are_parsed_and_checked() {
        let d = Digest::of(b"x").to_string();
        let ok = labels(&[
            (LAYER_DIGEST_LABEL, &d),
            (IMAGE_REF_LABEL, "127.0.0.1:5000/a/b:v1"),
            (MANIFEST_DIGEST_LABEL, &d),
            (IMAGE_LAYERS_LABEL, &d),
        ]);
        let r = Request::parse(&ok).unwrap();
        assert!(r.prefetch);
        assert_eq!(r.image.repository, "a/b");

        let mut missing = ok.clone();
        missing.remove(MANIFEST_DIGEST_LABEL);
        let e = Request::parse(&missing).err().unwrap().to_string();
        assert!(e.contains(MANIFEST_DIGEST_LABEL), "{e}");

        let mut bad = ok.clone();
        bad.insert(LAYER_DIGEST_LABEL.into(), "sha256:nothex".into());
        let e = Request::parse(&bad).err().unwrap().to_string();
        assert!(e.contains(LAYER_DIGEST_LABEL), "{e}");

        let mut bad = ok;
        bad.insert(IMAGE_REF_LABEL.into(), "UPPER/Case::".into());
        assert!(Request::parse(&bad).is_err());
    }

    #[tokio::test]
    async fn a_cache_that_cannot_open_does_not_stop_the_remote_path() {
        let dir = tempfile::tempdir().unwrap();
        let sn = OverlaySnapshotter::with_store(
            dir.path(),
            Arc::new(crate::snapshot::MemStore::default()),
        )
        .unwrap();
        // The cache directory would have to live under a regular file.
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let mut config = Config::default();
        config.cache.dir = dir.path().join("file/blobs");
        config.metrics.listen = String::new();
        let client = RegistryClient::new(config.registry.clone()).unwrap();
        let node = crate::node::Node::start(&config, client).await;
        assert!(RemoteLayers::new(&config, &sn, node.blobs.clone()).is_ok());
    }

    #[tokio::test]
    async fn unreachable_registry_falls_back_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sn = OverlaySnapshotter::with_store(
            dir.path(),
            Arc::new(crate::snapshot::MemStore::default()),
        )
        .unwrap();
        let mut config = Config::default();
        config.cache.dir = dir.path().join("blobs");
        config.registry.retries = 0;
        config.registry.connect_timeout_secs = 1;
        config.registry.request_timeout_secs = 1;
        config
            .registry
            .hosts
            .insert("127.0.0.1:1".into(), Default::default());
        config
            .registry
            .hosts
            .get_mut("127.0.0.1:1")
            .unwrap()
            .plain_http = true;
        let client = RegistryClient::new(config.registry.clone()).unwrap();
        let pulls = PullMetrics::default();
        let remote = RemoteLayers::new(&config, &sn, Arc::new(client))
            .unwrap()
            .with_metrics(pulls.clone());
        let d = Digest::of(b"x").to_string();
        let l = labels(&[
            (crate::snapshot::TARGET_REF_LABEL, &d),
            (LAYER_DIGEST_LABEL, &d),
            (IMAGE_REF_LABEL, "127.0.0.1:1/a/b:v1"),
            (MANIFEST_DIGEST_LABEL, &d),
            (IMAGE_LAYERS_LABEL, &d),
        ]);
        assert!(!remote.intercept(&sn, "k", "", &d, &l).await);
        // Given back to containerd: counted as one fallback of the remote path.
        let path = crate::pulls::PathLabel {
            path: "snapshotter",
        };
        assert_eq!(pulls.fallbacks.get_or_create(&path).get(), 1);
        // Without the CRI labels: not consulted at all.
        assert!(!remote.intercept(&sn, "k", "", &d, &BTreeMap::new()).await);
        assert!(sn.list_blocking::<&str>(&[]).unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("remote"))
                .unwrap()
                .count(),
            0
        );
    }
}
