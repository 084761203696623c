//! The node's bounded on-disk cache of compressed blobs (DESIGN "Swarm": each node keeps the
//! blobs it fetched, least recently used out first, so it can seed them).
//!
//! - One file per blob, `DIR/sha256-<hex>`. A blob is written to `DIR/tmp/` while it is hashed
//!   and renamed to its digest name only after the hash matched, under the index lock: a file
//!   under a digest name is always the whole, verified blob (it is fsynced before the rename).
//! - The total size is kept at most `max_bytes` by removing the least recently used blobs
//!   after each insert; a blob larger than `max_bytes` is not kept. Writers in flight are not
//!   counted until they commit, so the directory can briefly hold more.
//! - Use is recorded in memory and in each file's mtime (set on every [`BlobCache::get`]), so
//!   [`BlobCache::open`] rebuilds the index and the LRU order from the directory after a
//!   restart; `DIR/tmp/` (unfinished writes of an earlier run) is emptied.
//! - Eviction unlinks files; a reader that already has one open keeps reading it (Linux
//!   keeps an unlinked file's data until its last descriptor closes), so eviction never
//!   breaks a blob being served. [`BlobCache::get`] opens the file under the index lock.
//! - Each blob records the registries it was fetched from ([`CachedBlob::origins`], kept in
//!   `DIR/origins/`): the mirror serves a client only blobs known from the registry it asked.
//! - All methods are blocking (small file-system calls); call them from blocking threads.
//!
//! [`CachingSource`] puts a cache in front of another [`crate::source::BlobSource`];
//! [`PartialFile`] assembles a blob out of order (the swarm's chunks) and commits it.

mod caching;
mod origins;
mod partial;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub use caching::CachingSource;
pub use partial::PartialFile;

use crate::digest::{Digest, Hasher};
use crate::Error;

/// Name prefix of a cached blob's file (followed by the digest's hex).
const FILE_PREFIX: &str = "sha256-";
/// Subdirectory of unfinished writes.
const TMP_DIR: &str = "tmp";

/// A bounded, LRU, on-disk blob cache (see the module documentation). Cloning shares it.
#[derive(Clone)]
pub struct BlobCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    tmp_seq: AtomicU64,
}

/// The index: every committed blob, its size and when it was last used.
#[derive(Default)]
struct State {
    entries: HashMap<Digest, Entry>,
    /// `Entry::used` -> digest, oldest first.
    order: BTreeMap<u64, Digest>,
    total: u64,
    clock: u64,
}

struct Entry {
    size: u64,
    used: u64,
    /// The registries the blob was fetched from, sorted.
    origins: Vec<String>,
}

impl State {
    fn insert(&mut self, digest: Digest, size: u64, origins: Vec<String>) {
        self.remove(&digest);
        self.clock += 1;
        self.order.insert(self.clock, digest.clone());
        self.entries.insert(
            digest,
            Entry {
                size,
                used: self.clock,
                origins,
            },
        );
        self.total += size;
    }

    fn touch(&mut self, digest: &Digest) {
        if let Some(e) = self.entries.get_mut(digest) {
            self.order.remove(&e.used);
            self.clock += 1;
            e.used = self.clock;
            self.order.insert(self.clock, digest.clone());
        }
    }

    fn remove(&mut self, digest: &Digest) -> Option<Entry> {
        let e = self.entries.remove(digest)?;
        self.order.remove(&e.used);
        self.total -= e.size;
        Some(e)
    }
}

/// A cached blob, opened for reading.
#[derive(Debug)]
pub struct CachedBlob {
    pub file: File,
    pub size: u64,
    pub path: PathBuf,
    /// The registries the node fetched the blob from (see [`crate::source::Reader`]).
    pub origins: Vec<String>,
}

fn cache_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Cache {
        path: path.to_path_buf(),
        source,
    }
}

impl BlobCache {
    /// Opens (creating) the cache in `dir`, holding at most `max_bytes`: indexes the blobs
    /// already there (oldest mtime = least recently used), removes unfinished writes, and
    /// evicts down to `max_bytes` if the limit shrank. Files that are not cached blobs are
    /// left alone and not counted.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, Error> {
        let dir = dir.into();
        let tmp = dir.join(TMP_DIR);
        match std::fs::remove_dir_all(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(cache_err(&tmp)(e)),
            _ => {}
        }
        std::fs::create_dir_all(&tmp).map_err(cache_err(&tmp))?;
        let mut found: Vec<(SystemTime, Digest, u64)> = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(cache_err(&dir))? {
            let entry = entry.map_err(cache_err(&dir))?;
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|n| n.strip_prefix(FILE_PREFIX))
                .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
            else {
                if name != TMP_DIR && name != origins::ORIGIN_DIR {
                    tracing::debug!(path = %entry.path().display(), "not a cached blob; ignored");
                }
                continue;
            };
            let md = entry.metadata().map_err(cache_err(&entry.path()))?;
            if md.is_file() {
                let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((mtime, digest, md.len()));
            }
        }
        found.sort();
        let mut state = State::default();
        for (_, digest, size) in found {
            let known = origins::load(&dir, &digest);
            state.insert(digest, size, known);
        }
        let cache = Self {
            inner: Arc::new(Inner {
                dir,
                max_bytes,
                state: Mutex::new(State::default()),
                tmp_seq: AtomicU64::new(0),
            }),
        };
        cache.evict(&mut state, None);
        origins::prune(&cache.inner.dir, |d| state.entries.contains_key(d));
        tracing::info!(
            dir = %cache.inner.dir.display(),
            blobs = state.entries.len(),
            bytes = state.total,
            max_bytes,
            "blob cache opened"
        );
        *cache.inner.state.lock().expect("lock") = state;
        Ok(cache)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The size limit.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// Where blob `digest` is (or would be) kept.
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.inner
            .dir
            .join(format!("{FILE_PREFIX}{}", digest.hex()))
    }

    /// Number of cached blobs.
    pub fn len(&self) -> usize {
        self.inner.state.lock().expect("lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total size of the cached blobs.
    pub fn bytes(&self) -> u64 {
        self.inner.state.lock().expect("lock").total
    }

    /// Whether `digest` is cached (does not count as a use).
    pub fn contains(&self, digest: &Digest) -> bool {
        let state = self.inner.state.lock().expect("lock");
        state.entries.contains_key(digest)
    }

    /// The registries blob `digest` is known from (empty when it is not cached).
    pub fn origins(&self, digest: &Digest) -> Vec<String> {
        let state = self.inner.state.lock().expect("lock");
        let entry = state.entries.get(digest);
        entry.map(|e| e.origins.clone()).unwrap_or_default()
    }

    /// Blob `digest`, opened for reading, marked as just used; `None` if not cached (or
    /// its file vanished or cannot be opened, which drops it from the index).
    pub fn get(&self, digest: &Digest) -> Option<CachedBlob> {
        let mut state = self.inner.state.lock().expect("lock");
        let entry = state.entries.get(digest)?;
        let (size, origins) = (entry.size, entry.origins.clone());
        let path = self.path_of(digest);
        match File::open(&path) {
            Ok(file) => {
                state.touch(digest);
                // Persist the use for the LRU order after a restart; best effort.
                let _ = file.set_modified(SystemTime::now());
                Some(CachedBlob {
                    file,
                    size,
                    path,
                    origins,
                })
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cached blob unreadable; dropped");
                self.drop_entry(&mut state, digest);
                None
            }
        }
    }

    /// Removes blob `digest` (e.g. found corrupt); true if it was cached.
    pub fn remove(&self, digest: &Digest) -> bool {
        let mut state = self.inner.state.lock().expect("lock");
        self.drop_entry(&mut state, digest).is_some()
    }

    /// Drops blob `digest` from the index and removes its files; its size if it was cached.
    fn drop_entry(&self, state: &mut State, digest: &Digest) -> Option<u64> {
        let size = state.remove(digest)?.size;
        let path = self.path_of(digest);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "removing a cached blob");
            }
        }
        origins::remove(&self.inner.dir, digest);
        Some(size)
    }

    /// A writer for a new blob: write its bytes, then [`CacheWriter::finish`] with the
    /// digest they must hash to. Dropped unfinished, it leaves nothing.
    pub fn writer(&self) -> Result<CacheWriter, Error> {
        let tmp = self.tmp_path();
        let file = File::create(&tmp).map_err(cache_err(&tmp))?;
        Ok(CacheWriter {
            cache: self.clone(),
            file: Some(BufWriter::with_capacity(256 << 10, file)),
            tmp,
            hasher: Hasher::new(),
            bytes: 0,
        })
    }

    /// A fresh file name under `DIR/tmp/`.
    fn tmp_path(&self) -> PathBuf {
        let seq = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.inner
            .dir
            .join(TMP_DIR)
            .join(format!("{}-{seq}", std::process::id()))
    }

    /// Renames the synced, verified file `tmp` (`size` bytes of blob `expected`, fetched
    /// from registry `origin` if given) to its digest name under the index lock, then evicts
    /// to fit. A blob already cached is just marked used (and known from `origin` too) and
    /// `tmp` removed.
    fn commit_tmp(
        &self,
        tmp: &Path,
        expected: &Digest,
        size: u64,
        origin: Option<&str>,
    ) -> Result<(), Error> {
        let mut state = self.inner.state.lock().expect("lock");
        if let Some(entry) = state.entries.get_mut(expected) {
            let _ = std::fs::remove_file(tmp);
            if let Some(origin) = origin.filter(|o| !entry.origins.iter().any(|k| k == o)) {
                entry.origins.push(origin.to_owned());
                entry.origins.sort();
                origins::save(&self.inner.dir, expected, &entry.origins);
            }
            state.touch(expected);
            return Ok(());
        }
        let path = self.path_of(expected);
        let known: Vec<String> = origin.into_iter().map(str::to_owned).collect();
        // The origins first: a blob is never known from a registry it was not fetched from,
        // and a crash between the two leaves an origins file that `open` prunes.
        origins::remove(&self.inner.dir, expected);
        if !known.is_empty() {
            origins::save(&self.inner.dir, expected, &known);
        }
        if let Err(e) = std::fs::rename(tmp, &path) {
            let _ = std::fs::remove_file(tmp);
            origins::remove(&self.inner.dir, expected);
            return Err(cache_err(&path)(e));
        }
        state.insert(expected.clone(), size, known);
        self.evict(&mut state, Some(expected));
        Ok(())
    }

    /// Removes least recently used blobs (never `keep`) until the total fits the limit.
    fn evict(&self, state: &mut State, keep: Option<&Digest>) {
        while state.total > self.inner.max_bytes {
            let victim = state.order.values().find(|d| Some(*d) != keep).cloned();
            let Some(victim) = victim else { break };
            let size = self.drop_entry(state, &victim).unwrap_or(0);
            tracing::debug!(blob = %victim, bytes = size, "evicted from the blob cache");
        }
    }
}

impl std::fmt::Debug for BlobCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobCache")
            .field("dir", &self.inner.dir)
            .field("max_bytes", &self.inner.max_bytes)
            .finish_non_exhaustive()
    }
}

/// A blob being written into a [`BlobCache`], hashed as it goes.
pub struct CacheWriter {
    cache: BlobCache,
    /// `None` once committed.
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    hasher: Hasher,
    bytes: u64,
}

impl CacheWriter {
    /// Appends `data`. Fails (and the blob will not be kept) on an I/O error or when the
    /// blob grows past the cache's whole size limit.
    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        let max = self.cache.inner.max_bytes;
        if self.bytes + data.len() as u64 > max {
            return Err(cache_err(&self.tmp)(std::io::Error::other(format!(
                "blob larger than the cache's {max} byte limit; not kept"
            ))));
        }
        let file = self.file.as_mut().expect("not committed");
        file.write_all(data).map_err(cache_err(&self.tmp))?;
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Keeps the blob under `expected` if the bytes hash to it (then evicts to fit the
    /// limit); otherwise removes it and fails. A blob already cached is just marked used.
    /// The blob is known from no registry ([`Self::finish_from`]).
    pub fn finish(self, expected: &Digest) -> Result<(), Error> {
        self.finish_as(expected, None)
    }

    /// [`Self::finish`] for a blob fetched from registry `origin` (a blob already cached is
    /// then known from it too).
    pub fn finish_from(self, expected: &Digest, origin: &str) -> Result<(), Error> {
        self.finish_as(expected, Some(origin))
    }

    fn finish_as(mut self, expected: &Digest, origin: Option<&str>) -> Result<(), Error> {
        let actual = self.hasher.clone().finish();
        if actual != *expected {
            return Err(Error::CacheDigest {
                path: self.tmp.clone(),
                expected: expected.clone(),
                actual,
            });
        }
        let file = self.file.take().expect("not committed");
        let synced = file
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all());
        if let Err(e) = synced {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(cache_err(&self.tmp)(e));
        }
        self.cache
            .commit_tmp(&self.tmp, expected, self.bytes, origin)
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests;
