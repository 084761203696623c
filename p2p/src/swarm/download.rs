//! One blob being assembled from chunks: the chunk store (a [`PartialFile`] plus the set of
//! verified chunks), the in-order reader stream, what the chunk server may serve of it, and
//! the credentials its readers brought for its registry ranges ([`Grant`]).

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::stream;
use tokio::sync::watch;

use super::SwarmError;
use crate::cache::PartialFile;
use crate::chunk::ChunkManifest;
use crate::digest::Digest;
use crate::peer::have::{HaveFeed, HaveState};
use crate::peer::Held;
use crate::reference::ImageReference;
use crate::registry::{BlobStream, RegistryError};
use crate::source::Reader;
use crate::tracker::ChunkSet;
use crate::Error;

/// Bytes per item of the reader stream (a chunk is cut into pieces this big).
const READ_PIECE: u64 = 1 << 20;
/// Grants kept per download at most (the oldest go first).
const MAX_GRANTS: usize = 64;

/// What one reader of a download brought for its registry ranges: a repository of the
/// download's registry and a reader valid for it there (a client with its own credentials,
/// or the node with its configured ones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) repository: String,
    pub(crate) reader: Reader,
}

/// What a change of a download's chunks in flight asks of the announcer
/// ([`Swarm::run_announcer`](crate::swarm::Swarm::run_announcer)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AnnounceWake {
    /// Nothing the trackers were not told.
    No,
    /// New chunks in flight: the next round, after the gap since the last.
    Soon,
    /// The download's first chunks in flight: the announce names the blob for the first
    /// time, and the others' peer lists learn of this fetcher through it, so it does not
    /// wait out the gap (docs/simulator.md "A pull's first announce without the gap").
    Now,
}

/// A blob download shared by every reader of it.
pub(crate) struct Download {
    image: ImageReference,
    manifest: ChunkManifest,
    /// The readers' grants, newest last (see the module documentation of [`crate::swarm`]);
    /// each registry range uses the newest, with its own repository.
    grants: Mutex<Vec<Grant>>,
    /// The blob file (still valid after it is committed to the cache).
    file: File,
    /// Taken by the scheduler to commit.
    partial: Mutex<Option<PartialFile>>,
    state: Mutex<State>,
    /// Bumped whenever a chunk arrives, the chunks being fetched change, or the download
    /// ends.
    changed: watch::Sender<u64>,
    pub(crate) started: Instant,
}

struct State {
    held: ChunkSet,
    /// Chunks with a request in flight (announced so that other nodes count them).
    fetching: ChunkSet,
    /// `Some(Err(reason))` once the download failed; `Some(Ok)` once committed.
    ended: Option<Result<(), SwarmError>>,
    /// Set once every byte is held and the whole hashed to the blob's digest (before the
    /// blob is synced and committed to the cache).
    verified: bool,
}

impl Download {
    /// The download of `manifest`'s blob from `image`'s registry (its origin); attach its
    /// first reader before it runs.
    pub(crate) fn new(
        image: ImageReference,
        manifest: ChunkManifest,
        partial: PartialFile,
    ) -> std::io::Result<Self> {
        let file = partial.file().try_clone()?;
        let chunks = manifest.chunks.len() as u32;
        Ok(Self {
            image,
            manifest,
            grants: Mutex::new(Vec::new()),
            file,
            partial: Mutex::new(Some(partial)),
            state: Mutex::new(State {
                held: ChunkSet::empty(chunks),
                fetching: ChunkSet::empty(chunks),
                ended: None,
                verified: false,
            }),
            changed: watch::Sender::new(0),
            started: Instant::now(),
        })
    }

    pub(crate) fn digest(&self) -> &Digest {
        &self.manifest.digest
    }

    /// The registry the blob is downloaded from (its manifest came from that registry's
    /// extension, its registry ranges go there).
    pub(crate) fn origin(&self) -> &str {
        &self.image.registry
    }

    /// Adds `reader` of `image` to the download: its grant becomes the newest. A client of
    /// another registry than the download's is refused ([`Error::OtherOrigin`]); the
    /// node, reading another registry's image, lends its own credentials for the download's
    /// first repository.
    pub(crate) fn attach(&self, image: &ImageReference, reader: &Reader) -> Result<(), Error> {
        reader.check_origin(
            &image.registry,
            self.digest(),
            std::iter::once(self.origin()),
        )?;
        let repository = if image.registry == self.origin() {
            &image.repository
        } else {
            &self.image.repository
        };
        let grant = Grant {
            repository: repository.clone(),
            reader: reader.clone(),
        };
        let mut grants = self.grants.lock().expect("lock");
        grants.retain(|g| *g != grant);
        if grants.len() >= MAX_GRANTS {
            grants.remove(0);
        }
        grants.push(grant);
        Ok(())
    }

    /// The grant for the next registry range: the newest (`None` when every one was
    /// refused).
    pub(crate) fn grant(&self) -> Option<Grant> {
        self.grants.lock().expect("lock").last().cloned()
    }

    /// Forgets `grant` (the registry refused it: an expired token, say); the next range uses
    /// the one before it.
    pub(crate) fn revoke(&self, grant: &Grant) {
        self.grants.lock().expect("lock").retain(|g| g != grant);
    }

    pub(crate) fn manifest(&self) -> &ChunkManifest {
        &self.manifest
    }

    /// The chunks held and verified so far.
    pub(crate) fn held(&self) -> ChunkSet {
        self.state.lock().expect("lock").held.clone()
    }

    /// The chunks being fetched now.
    pub(crate) fn fetching(&self) -> ChunkSet {
        self.state.lock().expect("lock").fetching.clone()
    }

    /// Records the chunks being fetched now, and says what that asks of the announcer.
    pub(crate) fn set_fetching(&self, fetching: ChunkSet) -> AnnounceWake {
        let mut state = self.state.lock().expect("lock");
        if state.fetching == fetching {
            return AnnounceWake::No;
        }
        let grew = fetching.iter().any(|i| !state.fetching.contains(i));
        // The announce names a download once it holds or fetches a chunk.
        let first = state.held.count() == 0 && state.fetching.count() == 0;
        state.fetching = fetching;
        drop(state);
        // For the have streams.
        self.changed.send_modify(|v| *v += 1);
        match (grew, first) {
            (false, _) => AnnounceWake::No,
            (true, false) => AnnounceWake::Soon,
            (true, true) => AnnounceWake::Now,
        }
    }

    /// The state the download's have streams report.
    pub(crate) fn have_state(&self) -> HaveState {
        let state = self.state.lock().expect("lock");
        match &state.ended {
            Some(Ok(())) => HaveState::Done,
            Some(Err(_)) => HaveState::Ended,
            None => HaveState::Progress {
                have: state.held.clone(),
                fetching: state.fetching.clone(),
            },
        }
    }

    /// The have feed of this download (for the chunk server).
    pub(crate) fn have_feed(self: &Arc<Self>) -> HaveFeed {
        let download = self.clone();
        HaveFeed::live(
            self.manifest.chunks.len() as u32,
            self.changed.subscribe(),
            Box::new(move || download.have_state()),
        )
    }

    /// Writes verified chunk `index` (blocking) and marks it held; false (nothing written)
    /// when it was already held.
    pub(crate) fn store(&self, index: u32, data: &[u8]) -> Result<bool, Error> {
        let offset = self.manifest.chunk_range(index as usize).start;
        if self.state.lock().expect("lock").held.contains(index) {
            return Ok(false);
        }
        {
            let partial = self.partial.lock().expect("lock");
            let Some(partial) = partial.as_ref() else {
                return Ok(false); // already committed or failed: a late duplicate
            };
            partial.write_at(offset, data)?;
        }
        let prefix_end = {
            let mut state = self.state.lock().expect("lock");
            if state.held.contains(index) {
                return Ok(false); // a duplicate stored the same bytes meanwhile
            }
            state.held.insert(index);
            let first_missing = (0..state.held.len())
                .find(|&i| !state.held.contains(i))
                .unwrap_or(state.held.len());
            if first_missing as usize == self.manifest.chunks.len() {
                self.manifest.size
            } else {
                self.manifest.chunk_range(first_missing as usize).start
            }
        };
        self.changed.send_modify(|v| *v += 1);
        // Hash the in-order prefix as it grows, so the final check costs little; this chunk's
        // bytes from `data` rather than read back.
        let partial = self.partial.lock().expect("lock");
        if let Some(partial) = partial.as_ref() {
            partial.hash_upto_with(prefix_end, offset, data)?;
        }
        Ok(true)
    }

    /// Checks the whole blob against its digest and commits it to the cache (blocking).
    /// Readers waiting for the check ([`Self::reader`]) learn it passed before the blob is
    /// synced to disk.
    pub(crate) fn commit(&self) -> Result<(), SwarmError> {
        let partial = self.partial.lock().expect("lock").take();
        let result = match partial {
            Some(p) => p.check(self.digest()).and_then(|()| {
                self.state.lock().expect("lock").verified = true;
                self.changed.send_modify(|v| *v += 1);
                p.commit(self.digest(), self.origin())
            }),
            None => Ok(()),
        }
        .map_err(|e| SwarmError::Commit(Arc::new(e)));
        self.end(result.clone());
        result
    }

    /// Ends the download: readers get every chunk held, then this result.
    pub(crate) fn end(&self, result: Result<(), SwarmError>) {
        let mut state = self.state.lock().expect("lock");
        if state.ended.is_none() {
            state.ended = Some(result);
        }
        drop(state);
        if !matches!(self.state.lock().expect("lock").ended, Some(Ok(()))) {
            // A failed download's file is removed; readers keep their descriptor.
            self.partial.lock().expect("lock").take();
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Waits until the whole blob hashed to its digest; the download's error if it failed
    /// first (or did not match).
    async fn checked(&self, rx: &mut watch::Receiver<u64>) -> Result<(), Error> {
        loop {
            let ended = {
                let state = self.state.lock().expect("lock");
                if state.verified {
                    return Ok(());
                }
                state.ended.clone()
            };
            let source = match ended {
                Some(Err(e)) => e,
                // Committed without a check: only when the file was already gone.
                Some(Ok(())) => SwarmError::Abandoned,
                None if rx.changed().await.is_ok() => continue,
                None => SwarmError::Abandoned,
            };
            return Err(Error::Swarm {
                digest: self.digest().clone(),
                source,
            });
        }
    }

    /// The bytes `range` if every chunk covering it is held.
    pub(crate) fn open(&self, range: Range<u64>) -> Option<Held> {
        if range.start >= range.end || range.end > self.manifest.size {
            return None;
        }
        let chunk_size = self.manifest.chunk_size;
        let first = (range.start / chunk_size) as u32;
        let last = ((range.end - 1) / chunk_size) as u32;
        {
            let state = self.state.lock().expect("lock");
            if !(first..=last).all(|i| state.held.contains(i)) {
                return None;
            }
        }
        let file = self.file.try_clone().ok()?;
        Some(Held::File {
            file,
            offset: range.start,
            len: range.end - range.start,
        })
    }

    /// The bytes `range` of the blob (all of it: `0..size`), in order, as chunks arrive.
    /// Each piece is read back from the file once its chunk is held (verified against the
    /// chunk manifest). If the download fails, the stream ends with the error after the
    /// pieces that did arrive; a range past the blob's end is an error at once.
    ///
    /// With `checked` (the whole blob only), the stream ends after its last piece only once
    /// the whole blob hashed to its digest ([`Self::commit`]); if it did not, or the
    /// download failed before, its last item is the error: a [`VerifiedStream`] of the
    /// download's own check.
    ///
    /// [`VerifiedStream`]: crate::source::VerifiedStream
    pub(crate) fn reader(
        self: &Arc<Self>,
        range: Range<u64>,
        checked: bool,
    ) -> Result<BlobStream, Error> {
        debug_assert!(!checked || range == (0..self.manifest.size));
        if range.start > range.end || range.end > self.manifest.size {
            return Err(RegistryError::Range {
                repository: self.image.repository.clone(),
                digest: self.digest().clone(),
                start: range.start,
                end: range.end,
                reason: format!("past the blob's {} bytes", self.manifest.size),
            }
            .into());
        }
        let rx = self.changed.subscribe();
        let end = range.end;
        let start = (self.clone(), rx, range.start);
        Ok(Box::pin(stream::unfold(
            start,
            move |(download, mut rx, offset)| async move {
                if offset >= end {
                    if !checked || offset > end {
                        return None;
                    }
                    // The whole blob was read: wait for the download's digest check.
                    let failed = download.checked(&mut rx).await.err();
                    // `end + 1`: ended either way.
                    return failed.map(|e| (Err(e), (download, rx, end + 1)));
                }
                let index = (offset / download.manifest.chunk_size) as u32;
                loop {
                    let (held, ended) = {
                        let state = download.state.lock().expect("lock");
                        (state.held.contains(index), state.ended.clone())
                    };
                    if held {
                        break;
                    }
                    if let Some(Err(source)) = ended {
                        let err = Error::Swarm {
                            digest: download.digest().clone(),
                            source,
                        };
                        return Some((Err(err), (download, rx, end)));
                    }
                    if rx.changed().await.is_err() {
                        let err = Error::Swarm {
                            digest: download.digest().clone(),
                            source: SwarmError::Abandoned,
                        };
                        return Some((Err(err), (download, rx, end)));
                    }
                }
                let chunk_end = download.manifest.chunk_range(index as usize).end;
                let len = (chunk_end.min(end) - offset).min(READ_PIECE);
                let reading = download.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = BytesMut::zeroed(len as usize);
                    reading
                        .file
                        .read_exact_at(&mut buf, offset)
                        .map(|()| buf.freeze())
                })
                .await;
                let read = match read {
                    Ok(r) => r.map_err(|e| SwarmError::Read {
                        offset,
                        source: Arc::new(e),
                    }),
                    Err(e) => Err(SwarmError::Read {
                        offset,
                        source: Arc::new(std::io::Error::other(e)),
                    }),
                };
                let item: Result<Bytes, Error> = read.map_err(|source| Error::Swarm {
                    digest: download.digest().clone(),
                    source,
                });
                let next = if item.is_ok() { offset + len } else { end };
                Some((item, (download, rx, next)))
            },
        )))
    }
}
