//! The optional BitTorrent export (cargo feature `torrent`, `[torrent] enabled = true`), FID's
//! "get torrent" interface: `GET /v1/torrents/{digest}?registry=HOST&repository=REPO` on the
//! API listener (so behind the same mutual TLS as every other route) answers a BitTorrent v1
//! `.torrent` of that blob, which a librqbit session in this process seeds.
//!
//! - A `.torrent` is made on the first request for its blob, once however many requests ask at
//!   the same time (single flight, in a task of its own): the blob is put in the seed cache
//!   first when it is not there (the manifest service's single flight: read from the registry
//!   with its digest checked), hard-linked to `DIR/data/sha256-<hex>` (copied when the link
//!   fails, e.g. across file systems), hashed by librqbit into a single-file torrent named
//!   `sha256-<hex>` with `piece_length` and no announce URL, added to the session, checked
//!   complete, and kept as `DIR/torrents/sha256-<hex>.torrent` (temporary file + rename).
//! - The data is a link of its own so that the seed cache evicting the blob does not break the
//!   torrent; torrent data is bounded by `max_bytes` on its own (least recently requested
//!   out first: the torrent leaves the session, its files are removed).
//! - On start the torrents kept in `DIR` are served at once and added to the session again in
//!   the background (librqbit checks their data first); one whose data is missing, does not
//!   parse or fails the check is removed.
//! - The session is trackerless and local: TCP only on `listen`, no DHT, no trackers, no local
//!   service discovery, no UPnP, no persistence. A client is told the seeder's address in the
//!   `Shoal-Torrent-Peer` response header and must be given it as a peer (librqbit:
//!   `AddTorrentOptions::initial_peers`; other clients: "add peer", or a magnet link with
//!   `x.pe=IP:port`).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use librqbit::api::TorrentIdOrHash;
use librqbit::dht::Id20;
use librqbit::limits::LimitsConfig;
use librqbit::spawn_utils::BlockingSpawner;
use librqbit::{
    AddTorrent, AddTorrentOptions, ListenerMode, ListenerOptions, Session, SessionOptions,
};
use shoal_p2p::cache::BlobCache;
use shoal_p2p::single_flight::SingleFlight;
use shoal_p2p::Digest;

use crate::config::TorrentConfig;
use crate::manifests::ManifestService;
use crate::metrics::TorrentMetrics;
use crate::Error;

mod kept;
mod metainfo;
mod route;

use kept::Kept;
use metainfo::parse;
pub use metainfo::torrent_file;
pub(crate) use route::router;
pub use route::PEER_HEADER;

/// Prefix of temporary files in the torrent directories.
const TMP_PREFIX: &str = ".tmp-";

/// Torrents being made, by blob.
type Making = SingleFlight<Digest, Result<Bytes, Arc<Error>>>;

/// The BitTorrent export. Cloning shares it.
#[derive(Clone)]
pub struct TorrentService {
    inner: Arc<Inner>,
}

struct Inner {
    session: Arc<Session>,
    torrents_dir: PathBuf,
    data_dir: PathBuf,
    piece_length: u32,
    max_bytes: u64,
    advertise: SocketAddr,
    manifests: ManifestService,
    seed: BlobCache,
    metrics: TorrentMetrics,
    spawner: BlockingSpawner,
    making: Making,
    kept: Mutex<Kept>,
    tmp_seq: AtomicU64,
}

/// `sha256-<hex>`: the torrent's name, its data file's and (with `.torrent`) its file's.
pub fn torrent_name(digest: &Digest) -> String {
    format!("sha256-{}", digest.hex())
}

fn torrent_err(what: impl Into<String>) -> impl FnOnce(anyhow::Error) -> Error {
    let what = what.into();
    move |source| Error::Torrent { what, source }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl TorrentService {
    /// Opens `config.dir` (creating `torrents/` and `data/`, removing temporary files an
    /// earlier run left), starts the seeding session on `config.listen`, and adds the torrents
    /// kept there back to it. `config` must have been through [`crate::Config::load`].
    pub async fn start(
        config: &TorrentConfig,
        manifests: ManifestService,
        seed: BlobCache,
        metrics: TorrentMetrics,
    ) -> Result<Self, Error> {
        let torrents_dir = config.dir.join("torrents");
        let data_dir = config.dir.join("data");
        for dir in [&torrents_dir, &data_dir] {
            let d = dir.clone();
            tokio::task::spawn_blocking(move || prepare_dir(&d))
                .await
                .map_err(|source| Error::Task {
                    what: "opening the torrent directories",
                    source,
                })??;
        }
        let advertise = config.advertise.ok_or_else(|| Error::NotLoaded {
            field: "torrent.advertise",
        })?;
        let options = SessionOptions {
            dht: None,
            disable_trackers: true,
            disable_local_service_discovery: true,
            fastresume: false,
            persistence: None,
            listen: Some(ListenerOptions {
                mode: ListenerMode::TcpOnly,
                listen_addr: config.listen,
                enable_upnp_port_forwarding: false,
                ipv4_only: config.listen.is_ipv4(),
                ..Default::default()
            }),
            ratelimits: LimitsConfig {
                upload_bps: NonZeroU32::new(config.upload_bytes_per_sec),
                download_bps: None,
            },
            ipv4_only: config.listen.is_ipv4(),
            client_name_and_version: Some(format!(
                "shoal-registry-ext {} ({})",
                env!("CARGO_PKG_VERSION"),
                librqbit::client_name_and_version()
            )),
            ..Default::default()
        };
        let session = Session::new_with_opts(data_dir.clone(), options)
            .await
            .map_err(torrent_err(format!(
                "starting the BitTorrent session on {}",
                config.listen
            )))?;
        tracing::info!(listen = ?session.listen_addr(), %advertise, dir = %config.dir.display(),
            "BitTorrent export: seeding session started");
        let service = Self {
            inner: Arc::new(Inner {
                session,
                torrents_dir,
                data_dir,
                piece_length: config.piece_length,
                max_bytes: config.max_bytes,
                advertise,
                manifests,
                seed,
                metrics,
                spawner: BlockingSpawner::new(2),
                making: SingleFlight::new(),
                kept: Mutex::new(Kept::default()),
                tmp_seq: AtomicU64::new(0),
            }),
        };
        service.add_kept().await;
        Ok(service)
    }

    /// The address BitTorrent clients dial for the seeder (`torrent.advertise`).
    pub fn advertise(&self) -> SocketAddr {
        self.inner.advertise
    }

    /// The address the seeding session listens on (with the real port when `listen` had 0).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.inner.session.listen_addr()
    }

    /// Answers one request: the `.torrent` of blob `digest` of `repository` on `registry`,
    /// from disk or made now. Counts the request by result.
    pub async fn request(
        &self,
        digest: &str,
        registry: Option<&str>,
        repository: Option<&str>,
    ) -> Result<Bytes, Error> {
        let result = self.answer(digest, registry, repository).await;
        let label = match &result {
            Ok((_, label)) => label,
            Err(e) => e.result_label(),
        };
        self.inner.metrics.request(label);
        result.map(|(bytes, _)| bytes)
    }

    /// Counts a request refused before it reached [`TorrentService::request`].
    pub fn refused(&self, e: Error) -> Error {
        self.inner.metrics.request(e.result_label());
        e
    }

    async fn answer(
        &self,
        digest: &str,
        registry: Option<&str>,
        repository: Option<&str>,
    ) -> Result<(Bytes, &'static str), Error> {
        let digest: Digest = digest.parse().map_err(Error::BadDigest)?;
        let image = self.inner.manifests.image(registry, repository)?;
        if self.kept().touch(&digest) {
            let path = self.torrent_path(&digest);
            match tokio::fs::read(&path).await {
                Ok(bytes) => return Ok((bytes.into(), "cached")),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e,
                        "reading a kept .torrent; making it again");
                    self.kept().remove(&digest);
                }
            }
        }
        let inner = self.inner.clone();
        let d = digest.clone();
        let work = async move { make(&inner, &image, &d).await.map_err(Arc::new) };
        let made = self.inner.making.run(digest, work).await?;
        let bytes = made.map_err(Error::Shared)?;
        Ok((bytes, "made"))
    }

    fn torrent_path(&self, digest: &Digest) -> PathBuf {
        torrent_path(&self.inner.torrents_dir, digest)
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        lock(&self.inner.kept)
    }

    /// Takes the torrents kept on disk back: served at once, seeded again once librqbit has
    /// checked their data, in the background so that a large `DIR` does not hold up the
    /// start. Those that cannot be are removed.
    async fn add_kept(&self) {
        let dir = self.inner.torrents_dir.clone();
        let found = tokio::task::spawn_blocking(move || kept::list(&dir))
            .await
            .unwrap_or_default();
        let mut to_add = Vec::new();
        for (digest, bytes) in found {
            let data = self.inner.data_dir.join(torrent_name(&digest));
            let parsed = match parse(&digest, &bytes) {
                Ok(p) if tokio::fs::try_exists(&data).await.unwrap_or(false) => Ok(p),
                Ok(_) => Err(format!("its data {} is missing", data.display())),
                Err(e) => Err(e.to_string()),
            };
            match parsed {
                Ok((info_hash, size)) => {
                    self.kept().insert(digest.clone(), size, info_hash);
                    to_add.push((digest, Bytes::from(bytes)));
                }
                Err(e) => {
                    tracing::warn!(blob = %digest, "dropping a kept torrent: {e}");
                    remove_files(&self.inner, &digest).await;
                }
            }
        }
        update_gauges(&self.inner, &self.kept());
        let inner = self.inner.clone();
        tokio::spawn(async move {
            for (digest, bytes) in to_add {
                if !lock(&inner.kept).contains(&digest) {
                    continue; // dropped by the max_bytes bound meanwhile
                }
                if let Err(e) = add(&inner, &digest, bytes).await {
                    tracing::warn!(blob = %digest, "dropping a kept torrent: {e}");
                    lock(&inner.kept).remove(&digest);
                    remove_files(&inner, &digest).await;
                    update_gauges(&inner, &lock(&inner.kept));
                }
            }
        });
    }

    /// Updates the session's metrics every second until `shutdown`, then stops the session.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut uploaded = 0;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut shutdown => break,
            }
            let stats = self.inner.session.stats_snapshot();
            let now = stats.counters.uploaded_bytes;
            let m = &self.inner.metrics;
            m.uploaded_bytes.inc_by(now.saturating_sub(uploaded));
            uploaded = now.max(uploaded);
            m.peers.set(i64::from(stats.peers.live));
        }
        self.inner.session.stop().await;
        tracing::info!("BitTorrent export: seeding session stopped");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn gauge(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

fn update_gauges(inner: &Inner, kept: &Kept) {
    inner.metrics.kept_bytes.set(gauge(kept.bytes()));
    inner.metrics.seeding.set(gauge(kept.len()));
}

/// Removes a finished (or failed, or panicked) computation from the single-flight map.
/// `DIR/torrents/sha256-<hex>.torrent`.
fn torrent_path(torrents_dir: &Path, digest: &Digest) -> PathBuf {
    torrents_dir.join(format!("{}.torrent", torrent_name(digest)))
}

/// Creates `dir` and removes temporary files an earlier run left in it.
fn prepare_dir(dir: &Path) -> Result<(), Error> {
    let io = io_err("torrent directory", dir);
    std::fs::create_dir_all(dir).map_err(io)?;
    for entry in std::fs::read_dir(dir).map_err(io_err("torrent directory", dir))? {
        let entry = entry.map_err(io_err("torrent directory", dir))?;
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Makes, seeds and keeps the torrent of `digest` (see the module documentation).
async fn make(
    inner: &Arc<Inner>,
    image: &shoal_p2p::reference::ImageReference,
    digest: &Digest,
) -> Result<Bytes, Error> {
    let started = Instant::now();
    inner.manifests.seeded(image, digest).await?;
    let name = torrent_name(digest);
    let data = inner.data_dir.join(&name);
    let (seed, d, tmp) = (
        inner.seed.clone(),
        digest.clone(),
        tmp_path(inner, &inner.data_dir),
    );
    let target = data.clone();
    tokio::task::spawn_blocking(move || link_or_copy(&seed, &d, &tmp, &target))
        .await
        .map_err(|source| Error::Task {
            what: "linking torrent data",
            source,
        })??;
    let bytes = torrent_file(&data, digest, inner.piece_length, &inner.spawner).await?;
    let (info_hash, size) = add(inner, digest, bytes.clone()).await?;
    let path = torrent_path(&inner.torrents_dir, digest);
    let tmp = tmp_path(inner, &inner.torrents_dir);
    let file = bytes.clone();
    let p = path.clone();
    tokio::task::spawn_blocking(move || write_file(&tmp, &p, &file))
        .await
        .map_err(|source| Error::Task {
            what: "writing a .torrent",
            source,
        })??;
    inner.metrics.made.inc();
    inner
        .metrics
        .seconds
        .observe(started.elapsed().as_secs_f64());
    let evict = {
        let mut kept = lock(&inner.kept);
        kept.insert(digest.clone(), size, info_hash);
        let evict = kept.over(inner.max_bytes, digest);
        update_gauges(inner, &kept);
        evict
    };
    for (old, hash) in evict {
        if inner.making.is_running(&old) {
            continue; // being made again: that computation keeps it
        }
        inner.metrics.evicted.inc();
        tracing::info!(blob = %old, "torrent dropped to stay within torrent.max_bytes");
        if let Err(e) = inner
            .session
            .delete(TorrentIdOrHash::Hash(hash), false)
            .await
        {
            tracing::warn!(blob = %old, "removing a torrent from the session: {e:#}");
        }
        remove_files(inner, &old).await;
    }
    tracing::info!(blob = %digest, info_hash = %info_hash.as_string(), size,
        secs = started.elapsed().as_secs_f64(), "torrent made and seeding");
    Ok(bytes)
}

/// Adds `.torrent` `bytes` of `digest` to the session over its data in `DIR/data`, waits for
/// librqbit's check of that data and makes sure it is whole: the seeder must never download.
/// Returns the info hash and the data's length.
async fn add(inner: &Arc<Inner>, digest: &Digest, bytes: Bytes) -> Result<(Id20, u64), Error> {
    let what = || format!("seeding blob {digest}");
    parse(digest, &bytes)?;
    let data = inner.data_dir.join(torrent_name(digest));
    let output_folder = inner
        .data_dir
        .to_str()
        .ok_or_else(|| Error::NotUtf8 {
            path: inner.data_dir.clone(),
        })?
        .to_string();
    let handle = inner
        .session
        .add_torrent(
            AddTorrent::from_bytes(bytes.clone()),
            Some(AddTorrentOptions {
                overwrite: true,
                output_folder: Some(output_folder),
                disable_trackers: true,
                ..Default::default()
            }),
        )
        .await
        .map_err(torrent_err(what()))?
        .into_handle()
        .ok_or_else(|| Error::TorrentNotAdded {
            digest: digest.clone(),
        })?;
    handle
        .wait_until_initialized()
        .await
        .map_err(torrent_err(what()))?;
    let stats = handle.stats();
    if !stats.finished || stats.progress_bytes != stats.total_bytes {
        let _ = inner
            .session
            .delete(TorrentIdOrHash::Hash(handle.info_hash()), false)
            .await;
        return Err(Error::TorrentData {
            digest: digest.clone(),
            data,
            good: stats.progress_bytes,
            total: stats.total_bytes,
        });
    }
    Ok((handle.info_hash(), stats.total_bytes))
}

fn tmp_path(inner: &Inner, dir: &Path) -> PathBuf {
    let seq = inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TMP_PREFIX}{}-{seq}", std::process::id()))
}

/// Puts the seed cache's blob `digest` at `target`: a hard link, or a copy of the open file
/// when linking fails (another file system, or the blob was evicted after it was opened).
fn link_or_copy(seed: &BlobCache, digest: &Digest, tmp: &Path, target: &Path) -> Result<(), Error> {
    let mut blob = seed.get(digest).ok_or_else(|| Error::Evicted {
        digest: digest.clone(),
    })?;
    let result = (|| {
        if let Err(e) = std::fs::hard_link(&blob.path, tmp) {
            tracing::debug!(blob = %digest, error = %e, "cannot hard-link the seeded blob; copying");
            let mut out = std::fs::File::create(tmp)?;
            std::io::copy(&mut blob.file, &mut out)?;
            out.sync_all()?;
        }
        std::fs::rename(tmp, target)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(tmp);
        Error::Io {
            what: "linking torrent data",
            path: target.to_path_buf(),
            source,
        }
    })
}

/// Writes `bytes` at `path`: temporary file, fsync, rename.
fn write_file(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let result = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(tmp, path)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(tmp);
        Error::Io {
            what: "writing a .torrent",
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Removes the `.torrent` and the data of `digest`.
async fn remove_files(inner: &Inner, digest: &Digest) {
    for path in [
        torrent_path(&inner.torrents_dir, digest),
        inner.data_dir.join(torrent_name(digest)),
    ] {
        if let Err(e) = tokio::fs::remove_file(&path).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "removing torrent files");
            }
        }
    }
}
