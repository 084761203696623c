//! The chunk-manifest service: `GET /v1/chunk-manifests/<digest>?registry=HOST&repository=REPO`.
//!
//! - Only blobs of the configured registry are served; another `registry` gets 404 (the node
//!   then uses its registry directly).
//! - Manifests are kept in `DIR/sha256-<hex>.<chunk_size>.json`, written to a temporary file,
//!   fsynced and renamed, so a file under that name is always whole. A file that does not
//!   parse, or describes another blob or chunk size, is ignored and made again.
//! - A missing manifest is made once however many requests ask for it at the same time
//!   (single flight, in a task of its own, so a client hanging up does not cancel it); the
//!   push hook's warm-ups ([`ManifestService::warm`]) share that single flight.
//! - It is made from the seed cache when the blob is there (no registry read); else from the
//!   registry's blob, hashed as it streams and written into the seed cache at the same time,
//!   so the seeder holds the blob afterwards. A blob that does not hash to its digest gives
//!   502 and nothing is kept.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use shoal_p2p::cache::BlobCache;
use shoal_p2p::chunk::{ChunkManifest, ChunkManifestBuilder, ChunkManifestError};
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::RegistryClient;
use shoal_p2p::single_flight::SingleFlight;
use shoal_p2p::Digest;

use crate::metrics::ManifestMetrics;
use crate::Error;

/// Prefix of temporary files in the manifest directory.
const TMP_PREFIX: &str = ".tmp-";
/// Most chunk counts remembered for the seeder's peer entries (then the memo starts over).
const MAX_REMEMBERED: usize = 100_000;

/// Manifests being made, by blob.
type Making = SingleFlight<Digest, Result<Arc<ChunkManifest>, Arc<Error>>>;

/// The chunk-manifest service. Cloning shares it.
#[derive(Clone)]
pub struct ManifestService {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    chunk_size: u64,
    registry_host: String,
    client: RegistryClient,
    seed: BlobCache,
    metrics: ManifestMetrics,
    making: Making,
    chunk_counts: Mutex<HashMap<Digest, u32>>,
    tmp_seq: AtomicU64,
}

impl ManifestService {
    /// Opens (creating) the manifest directory `dir` and removes temporary files an earlier
    /// run left. Blocking (small file-system calls).
    pub fn open(
        dir: &Path,
        chunk_size: u64,
        registry_host: &str,
        client: RegistryClient,
        seed: BlobCache,
        metrics: ManifestMetrics,
    ) -> Result<Self, Error> {
        let io = |source| Error::Io {
            what: "manifest directory",
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        ChunkManifestBuilder::new(chunk_size)?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                chunk_size,
                registry_host: registry_host.to_string(),
                client,
                seed,
                metrics,
                making: SingleFlight::new(),
                chunk_counts: Mutex::new(HashMap::new()),
                tmp_seq: AtomicU64::new(0),
            }),
        })
    }

    /// Where the manifest of `digest` is kept.
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        manifest_path(&self.inner.dir, digest, self.inner.chunk_size)
    }

    /// Answers one request: the manifest's JSON. Checks the parameters (400), the registry
    /// (404), then serves from disk or makes the manifest. Counts the request by result.
    pub async fn request(
        &self,
        digest: &str,
        registry: Option<&str>,
        repository: Option<&str>,
    ) -> Result<Vec<u8>, Error> {
        let result = self.answer(digest, registry, repository).await;
        let label = match &result {
            Ok((_, label)) => label,
            Err(e) => e.result_label(),
        };
        self.inner.metrics.request(label);
        result.map(|(json, _)| json)
    }

    /// Counts a request refused before it reached [`ManifestService::request`].
    pub fn refused(&self, e: Error) -> Error {
        self.inner.metrics.request(e.result_label());
        e
    }

    async fn answer(
        &self,
        digest: &str,
        registry: Option<&str>,
        repository: Option<&str>,
    ) -> Result<(Vec<u8>, &'static str), Error> {
        let digest: Digest = digest.parse().map_err(Error::BadDigest)?;
        let image = self.image(registry, repository)?;
        if let Some(m) =
            read_disk(self.path_of(&digest), digest.clone(), self.inner.chunk_size).await
        {
            self.remember(&m);
            self.inner.metrics.asked(&m.digest, m.size, Instant::now());
            return Ok((m.to_json(), "cached"));
        }
        let m = self.made(image, digest, false).await?;
        self.inner.metrics.asked(&m.digest, m.size, Instant::now());
        Ok((m.to_json(), "made"))
    }

    /// The image reference a request's `registry` and `repository` parameters name: 400 when
    /// one is missing or malformed, 404 when `registry` is not the one this extension serves.
    pub fn image(
        &self,
        registry: Option<&str>,
        repository: Option<&str>,
    ) -> Result<ImageReference, Error> {
        let registry = registry
            .ok_or_else(|| Error::BadRequest("query parameter registry is missing".into()))?;
        if registry != self.inner.registry_host {
            return Err(Error::WrongRegistry {
                asked: registry.to_string(),
                served: self.inner.registry_host.clone(),
            });
        }
        let repository = repository
            .ok_or_else(|| Error::BadRequest("query parameter repository is missing".into()))?;
        image_reference(&self.inner.registry_host, repository)
    }

    /// Makes sure the seed cache holds blob `digest` of `image`: when it does not, the blob
    /// is read from the registry (its digest checked, its manifest made again on the way)
    /// through the same single flight as manifest requests.
    pub async fn seeded(&self, image: &ImageReference, digest: &Digest) -> Result<(), Error> {
        // Twice: a flight already under way may have been one that did not need the blob.
        for _ in 0..2 {
            if self.inner.seed.contains(digest) {
                return Ok(());
            }
            self.made(image.clone(), digest.clone(), true).await?;
        }
        if self.inner.seed.contains(digest) {
            return Ok(());
        }
        Err(Error::NotSeeded {
            digest: digest.clone(),
            dir: self.inner.seed.dir().to_path_buf(),
        })
    }

    /// Warms blob `digest` of `repository` (the push hook): makes its chunk manifest unless it
    /// is on disk, and makes sure the seed cache holds the blob (reading it from the registry
    /// once if not). Returns whether anything had to be done.
    pub async fn warm(&self, repository: &str, digest: &Digest) -> Result<bool, Error> {
        let image = image_reference(&self.inner.registry_host, repository)?;
        if self.inner.seed.contains(digest) {
            if let Some(m) =
                read_disk(self.path_of(digest), digest.clone(), self.inner.chunk_size).await
            {
                self.remember(&m);
                return Ok(false);
            }
        }
        self.made(image, digest.clone(), true).await?;
        Ok(true)
    }

    /// The registry client the manifests are made with.
    pub fn client(&self) -> &RegistryClient {
        &self.inner.client
    }

    /// The registry host this service serves.
    pub fn registry_host(&self) -> &str {
        &self.inner.registry_host
    }

    /// The manifest of `digest`, made once for all concurrent callers; with `seed`, the blob
    /// is read into the seed cache even when the manifest is on disk already.
    async fn made(
        &self,
        image: ImageReference,
        digest: Digest,
        seed: bool,
    ) -> Result<Arc<ChunkManifest>, Error> {
        let inner = self.inner.clone();
        let d = digest.clone();
        let work = async move {
            make(&inner, &image, &d, seed)
                .await
                .map(Arc::new)
                .map_err(Arc::new)
        };
        self.inner
            .making
            .run(digest, work)
            .await?
            .map_err(Error::Shared)
    }

    /// The chunk count of `digest` from its manifest, if one was made (memory, then disk).
    pub async fn chunk_count(&self, digest: &Digest) -> Option<u32> {
        if let Some(&n) = self.counts().get(digest) {
            return Some(n);
        }
        let m = read_disk(self.path_of(digest), digest.clone(), self.inner.chunk_size).await?;
        self.remember(&m);
        u32::try_from(m.chunks.len()).ok()
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, u32>> {
        self.inner
            .chunk_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, m: &ChunkManifest) {
        remember(&self.inner, m);
    }
}

fn remember(inner: &Inner, m: &ChunkManifest) {
    let Ok(n) = u32::try_from(m.chunks.len()) else {
        return;
    };
    let mut counts = inner.chunk_counts.lock().unwrap_or_else(|p| p.into_inner());
    if counts.len() >= MAX_REMEMBERED {
        counts.clear();
    }
    counts.insert(m.digest.clone(), n);
}

/// Removes a finished (or failed, or panicked) computation from the single-flight map.
/// `DIR/sha256-<hex>.<chunk_size>.json`.
pub fn manifest_path(dir: &Path, digest: &Digest, chunk_size: u64) -> PathBuf {
    dir.join(format!("sha256-{}.{chunk_size}.json", digest.hex()))
}

/// The image reference of `repository` on `registry_host`, or 400.
pub(crate) fn image_reference(
    registry_host: &str,
    repository: &str,
) -> Result<ImageReference, Error> {
    let bad = || {
        Error::BadRequest(format!(
            "query parameter repository {repository:?} is not a repository name"
        ))
    };
    if repository.is_empty() || repository.contains([':', '@']) || repository.starts_with('/') {
        return Err(bad());
    }
    let image: ImageReference = format!("{registry_host}/{repository}")
        .parse()
        .map_err(|_| bad())?;
    if image.registry != registry_host {
        return Err(bad());
    }
    Ok(image)
}

/// The manifest kept at `path`, if it is there, parses, and describes `digest` cut at
/// `chunk_size`; anything else is ignored (and will be made again).
async fn read_disk(path: PathBuf, digest: Digest, chunk_size: u64) -> Option<ChunkManifest> {
    tokio::task::spawn_blocking(move || read_disk_blocking(&path, &digest, chunk_size))
        .await
        .ok()
        .flatten()
}

fn read_disk_blocking(path: &Path, digest: &Digest, chunk_size: u64) -> Option<ChunkManifest> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "reading a chunk manifest; making it again");
            return None;
        }
    };
    match ChunkManifest::from_json(&bytes) {
        Ok(m) if &m.digest == digest && m.chunk_size == chunk_size => Some(m),
        Ok(m) => {
            tracing::warn!(path = %path.display(), found = %m.digest, chunk_size = m.chunk_size,
                "chunk manifest file describes another blob or chunk size; making it again");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "corrupt chunk manifest file; making it again");
            None
        }
    }
}

/// Writes `m` under its name: temporary file, fsync, rename, then fsync of the directory.
pub fn write_disk_blocking(dir: &Path, seq: u64, m: &ChunkManifest) -> Result<(), Error> {
    let path = manifest_path(dir, &m.digest, m.chunk_size);
    let tmp = dir.join(format!("{TMP_PREFIX}{}-{seq}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&m.to_json())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io {
            what: "writing chunk manifest",
            path,
            source,
        }
    })
}

/// Makes the manifest of `digest` (see the module documentation) and keeps it on disk.
async fn make(
    inner: &Arc<Inner>,
    image: &ImageReference,
    digest: &Digest,
    seed: bool,
) -> Result<ChunkManifest, Error> {
    let path = manifest_path(&inner.dir, digest, inner.chunk_size);
    // A computation that finished just before this one started may have written it.
    if !seed || inner.seed.contains(digest) {
        if let Some(m) = read_disk(path, digest.clone(), inner.chunk_size).await {
            remember(inner, &m);
            return Ok(m);
        }
    }
    let started = Instant::now();
    let m = match from_seed(inner, digest).await {
        Some(m) => m,
        None => from_registry(inner, image, digest).await?,
    };
    inner
        .metrics
        .seconds
        .observe(started.elapsed().as_secs_f64());
    let dir = inner.dir.clone();
    let seq = inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
    let copy = m.clone();
    match tokio::task::spawn_blocking(move || write_disk_blocking(&dir, seq, &copy)).await {
        Ok(Ok(())) => {}
        // The manifest is right; it will be made again next time.
        Ok(Err(e)) => tracing::warn!("{e}"),
        Err(e) => tracing::warn!("writing a chunk manifest: {e}"),
    }
    remember(inner, &m);
    tracing::info!(blob = %digest, repository = %image.repository, size = m.size,
        chunks = m.chunks.len(), secs = started.elapsed().as_secs_f64(), "chunk manifest made");
    Ok(m)
}

/// The manifest made from the seed cache's copy of the blob, if it holds one that hashes
/// right (a copy that does not is removed).
async fn from_seed(inner: &Arc<Inner>, digest: &Digest) -> Option<ChunkManifest> {
    let seed = inner.seed.clone();
    let chunk_size = inner.chunk_size;
    let d = digest.clone();
    let made = tokio::task::spawn_blocking(move || {
        let mut blob = seed.get(&d)?;
        let mut builder = ChunkManifestBuilder::new(chunk_size).ok()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match blob.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => builder.update(&buf[..n]),
                Err(e) => {
                    tracing::warn!(path = %blob.path.display(), error = %e, "reading a seeded blob");
                    return None;
                }
            }
        }
        match builder.finish(&d) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(blob = %d, error = %e, "seeded blob is corrupt; removed");
                seed.remove(&d);
                None
            }
        }
    });
    made.await.ok().flatten()
}

/// What the registry reader sends the hashing thread.
enum Piece {
    Data(Bytes),
    End,
}

/// The manifest made from the registry's blob, hashed on a blocking thread while the same
/// bytes are written into the seed cache (kept only if the whole blob hashes right).
async fn from_registry(
    inner: &Arc<Inner>,
    image: &ImageReference,
    digest: &Digest,
) -> Result<ChunkManifest, Error> {
    let mut stream = inner.client.blob(image, digest, None).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(16);
    let seed = inner.seed.clone();
    let chunk_size = inner.chunk_size;
    let d = digest.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let mut builder = ChunkManifestBuilder::new(chunk_size)?;
        let mut writer = seed
            .writer()
            .map_err(|e| tracing::warn!(blob = %d, error = %e, "cannot seed this blob"))
            .ok();
        loop {
            match rx.blocking_recv() {
                Some(Piece::Data(bytes)) => {
                    builder.update(&bytes);
                    if let Some(w) = writer.as_mut() {
                        if let Err(e) = w.write(&bytes) {
                            tracing::warn!(blob = %d, error = %e, "cannot seed this blob");
                            writer = None;
                        }
                    }
                }
                Some(Piece::End) => break,
                None => return Ok(None),
            }
        }
        let m = builder.finish(&d)?;
        if let Some(w) = writer {
            if let Err(e) = w.finish(&d) {
                tracing::warn!(blob = %d, error = %e, "cannot seed this blob");
            }
        }
        Ok::<_, ChunkManifestError>(Some(m))
    });
    let mut failed = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => {
                inner.metrics.registry_read_bytes.inc_by(bytes.len() as u64);
                if tx.send(Piece::Data(bytes)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failed {
        drop(tx);
        let _ = worker.await;
        return Err(e.into());
    }
    let _ = tx.send(Piece::End).await;
    drop(tx);
    match worker.await {
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err(Error::HashingStopped),
        Ok(Err(ChunkManifestError::BlobDigest {
            expected,
            actual,
            size,
        })) => Err(Error::BlobDigest {
            registry: image.registry.clone(),
            repository: image.repository.clone(),
            expected,
            actual,
            size,
        }),
        Ok(Err(e)) => Err(e.into()),
        Err(source) => Err(Error::Task {
            what: "hashing a blob",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(data: &[u8]) -> ChunkManifest {
        let mut b = ChunkManifestBuilder::new(shoal_p2p::chunk::MIN_CHUNK_SIZE).unwrap();
        b.update(data);
        b.finish(&Digest::of(data)).unwrap()
    }

    #[test]
    fn manifest_files_round_trip_and_bad_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = shoal_p2p::chunk::MIN_CHUNK_SIZE;
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let m = manifest(&data);
        write_disk_blocking(dir.path(), 0, &m).unwrap();
        let path = manifest_path(dir.path(), &m.digest, chunk);
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("sha256-{}.{chunk}.json", m.digest.hex())
        );
        assert_eq!(read_disk_blocking(&path, &m.digest, chunk), Some(m.clone()));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Another chunk size or digest: not this manifest.
        assert_eq!(read_disk_blocking(&path, &m.digest, chunk * 2), None);
        assert_eq!(read_disk_blocking(&path, &Digest::of(b"x"), chunk), None);
        // Corrupt or truncated: ignored.
        let json = m.to_json();
        std::fs::write(&path, &json[..json.len() / 2]).unwrap();
        assert_eq!(read_disk_blocking(&path, &m.digest, chunk), None);
        std::fs::write(&path, b"not json").unwrap();
        assert_eq!(read_disk_blocking(&path, &m.digest, chunk), None);
        // Missing: ignored; written again: read again.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read_disk_blocking(&path, &m.digest, chunk), None);
        write_disk_blocking(dir.path(), 1, &m).unwrap();
        assert_eq!(read_disk_blocking(&path, &m.digest, chunk), Some(m));
    }

    #[test]
    fn repositories_are_checked() {
        let host = "registry.example:5000";
        assert_eq!(image_reference(host, "a/b").unwrap().repository, "a/b");
        for bad in ["", "a:b", "a@b", "/a", "A/B", "a//b", "../x"] {
            assert!(image_reference(host, bad).is_err(), "{bad}");
        }
    }
}
