//! [`CachingSource`]: a [`BlobSource`] that serves blobs from a [`BlobCache`] when it has
//! them, and otherwise fetches them from another source while copying them into the cache.
//! A blob it copies is known from the registry it was fetched for; a client of the mirror
//! ([`Reader::Client`]) gets a cached blob only if it is known from the registry it asked
//! ([`Error::OtherOrigin`] otherwise).

use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::Stream;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::{BlobCache, CachedBlob};
use crate::digest::{Digest, Hasher};
use crate::reference::ImageReference;
use crate::registry::{BlobStream, RegistryError};
use crate::source::{BlobSource, Reader, VerifiedStream};
use crate::Error;

/// Bytes read from a cached file per stream item.
const READ_CHUNK: usize = 256 << 10;
/// Chunks the tee may queue for the cache writer; when it is this far behind, the blob is
/// not cached (the stream is never slowed down for the cache).
const TEE_QUEUE: usize = 1024;

/// A [`BlobSource`] in front of `inner` (which fetches from the registry of the image it is
/// given) with a [`BlobCache`]:
///
/// - a cached blob is streamed from its file (hashed again on the way: a blob found corrupt
///   on disk ends its stream with an error and is removed from the cache);
/// - otherwise the blob is fetched from `inner` and its bytes are passed on unchanged while
///   a blocking task writes them to the cache, which keeps them only if the stream ended
///   and they hash to the digest. A slow or failing cache write is logged and abandoned;
///   it never slows down or fails the stream.
pub struct CachingSource<S> {
    inner: S,
    cache: BlobCache,
    /// Cache writes in flight.
    writes: Arc<watch::Sender<usize>>,
}

impl<S> CachingSource<S> {
    pub fn new(inner: S, cache: BlobCache) -> Self {
        Self {
            inner,
            cache,
            writes: Arc::new(watch::Sender::new(0)),
        }
    }

    pub fn cache(&self) -> &BlobCache {
        &self.cache
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Blob `digest` opened from the cache (a use), if it is there and `reader` may have it
    /// for `image`'s registry.
    async fn cached(
        &self,
        image: &ImageReference,
        digest: &Digest,
        reader: &Reader,
    ) -> Result<Option<CachedBlob>, Error> {
        let (cache, d) = (self.cache.clone(), digest.clone());
        let blob = tokio::task::spawn_blocking(move || cache.get(&d))
            .await
            .ok()
            .flatten();
        let Some(blob) = blob else { return Ok(None) };
        let origins = blob.origins.iter().map(String::as_str);
        reader.check_origin(&image.registry, digest, origins)?;
        Ok(Some(blob))
    }

    /// The whole cached blob `digest` for `reader` ([`Self::cached`]), read from its file and
    /// hashed as it is read ([`serve_cached`]); `None` when the cache does not hold it.
    async fn cached_whole(
        &self,
        image: &ImageReference,
        digest: &Digest,
        reader: &Reader,
    ) -> Result<Option<BlobStream>, Error> {
        let Some(blob) = self.cached(image, digest, reader).await? else {
            return Ok(None);
        };
        tracing::debug!(%digest, bytes = blob.size, "blob served from the cache");
        let whole = 0..blob.size;
        Ok(Some(serve_cached(
            self.cache.clone(),
            digest.clone(),
            blob,
            whole,
        )))
    }

    /// Waits until every cache write started so far has committed or given up.
    pub async fn flush(&self) {
        let mut rx = self.writes.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// `stream` passed through, copied into the cache under `digest`, known from registry
    /// `origin`.
    fn tee(&self, stream: BlobStream, digest: Digest, origin: String) -> BlobStream {
        let (tx, mut rx) = mpsc::channel::<Bytes>(TEE_QUEUE);
        let complete = Arc::new(AtomicBool::new(false));
        let in_flight = InFlight::new(self.writes.clone());
        let (cache, done, blob) = (self.cache.clone(), complete.clone(), digest.clone());
        tokio::task::spawn_blocking(move || {
            let _in_flight = in_flight;
            let mut writer = match cache.writer() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(%blob, error = %e, "blob cache: cannot start a write");
                    return;
                }
            };
            while let Some(chunk) = rx.blocking_recv() {
                if let Some(Err(e)) = writer.as_mut().map(|w| w.write(&chunk)) {
                    tracing::warn!(%blob, error = %e, "blob cache: write failed; not caching");
                    writer = None;
                    break;
                }
            }
            drop(rx);
            let Some(writer) = writer else { return };
            // The digest decides, not how the stream ended: a consumer may stop polling after
            // the last byte without waiting for the end of the stream (the unpacker does once
            // the tar is done), and a cut or corrupt stream never hashes to the digest.
            let complete = done.load(Ordering::Acquire);
            let bytes = writer.bytes_written();
            match writer.finish_from(&blob, &origin) {
                Ok(()) => tracing::debug!(%blob, bytes, "blob cached"),
                Err(e) if complete => tracing::warn!(%blob, error = %e, "blob not cached"),
                Err(e) => tracing::debug!(%blob, error = %e, "blob stream cut short; not cached"),
            }
        });
        Box::pin(Tee {
            inner: stream,
            tx: Some(tx),
            complete,
            digest,
        })
    }
}

impl<S: BlobSource> BlobSource for CachingSource<S> {
    /// A cached blob is served without the registry (to a client, only if known from
    /// `image`'s registry); otherwise `inner` fetches it for `reader`.
    fn fetch_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        Box::pin(async move {
            if let Some(stream) = self.cached_whole(image, digest, reader).await? {
                return Ok(stream);
            }
            let stream = self.inner.fetch_as(image, digest, reader).await?;
            Ok(self.tee(stream, digest.clone(), image.registry.clone()))
        })
    }

    /// A cached blob is checked as it is read (see [`serve_cached`]); otherwise `inner`'s
    /// checked stream is passed on (and copied into the cache).
    fn fetch_verified_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<VerifiedStream, Error>> {
        Box::pin(async move {
            if let Some(stream) = self.cached_whole(image, digest, reader).await? {
                return Ok(VerifiedStream::checked(stream));
            }
            let stream = self.inner.fetch_verified_as(image, digest, reader).await?;
            let (digest, origin) = (digest.clone(), image.registry.clone());
            Ok(stream.wrap(|s| self.tee(s, digest, origin)))
        })
    }

    /// A range of a cached blob is read from its file (the blob was verified when it was
    /// committed); other ranges are passed to `inner` (a part of a blob is never cached).
    fn fetch_range_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        range: Range<u64>,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        Box::pin(async move {
            let Some(blob) = self.cached(image, digest, reader).await? else {
                let fetch = self.inner.fetch_range_as(image, digest, range, reader);
                return fetch.await;
            };
            if range.start > range.end || range.end > blob.size {
                return Err(RegistryError::Range {
                    repository: image.repository.clone(),
                    digest: digest.clone(),
                    start: range.start,
                    end: range.end,
                    reason: format!("past the cached blob's {} bytes", blob.size),
                }
                .into());
            }
            Ok(serve_cached(
                self.cache.clone(),
                digest.clone(),
                blob,
                range,
            ))
        })
    }
}

/// Counts one cache write in flight while it lives.
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn new(writes: Arc<watch::Sender<usize>>) -> Self {
        writes.send_modify(|n| *n += 1);
        Self(writes)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Passes `inner` through, offering each chunk to the cache writer without waiting.
struct Tee {
    inner: BlobStream,
    /// `None` once the cache copy is abandoned or the stream ended.
    tx: Option<mpsc::Sender<Bytes>>,
    /// Set when `inner` ended cleanly with every chunk queued.
    complete: Arc<AtomicBool>,
    digest: Digest,
}

impl Stream for Tee {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = std::task::ready!(this.inner.as_mut().poll_next(cx));
        match &item {
            Some(Ok(chunk)) => {
                if let Some(tx) = &this.tx {
                    if let Err(e) = tx.try_send(chunk.clone()) {
                        if matches!(e, mpsc::error::TrySendError::Full(_)) {
                            tracing::debug!(blob = %this.digest,
                                "blob cache write fell behind; not caching");
                        }
                        this.tx = None;
                    }
                }
            }
            Some(Err(_)) => this.tx = None,
            None => {
                if this.tx.take().is_some() {
                    this.complete.store(true, Ordering::Release);
                }
            }
        }
        Poll::Ready(item)
    }
}

/// State of a cached blob being streamed.
struct Serving {
    file: tokio::fs::File,
    path: std::path::PathBuf,
    cache: BlobCache,
    digest: Digest,
    /// Hashes the bytes when the whole blob is served.
    hasher: Option<Hasher>,
    /// Where the next read starts, and where the range ends.
    at: u64,
    end: u64,
    done: bool,
}

impl Serving {
    /// The cached blob turned out corrupt (it hashes to `actual`, or ends at byte
    /// `ends_at`): removed from the cache.
    async fn corrupt(&mut self, actual: Option<Digest>, ends_at: Option<u64>) -> Error {
        self.done = true;
        let (cache, d) = (self.cache.clone(), self.digest.clone());
        let _ = tokio::task::spawn_blocking(move || cache.remove(&d)).await;
        Error::CacheCorrupt {
            path: self.path.clone(),
            digest: self.digest.clone(),
            actual,
            ends_at,
        }
    }
}

/// The bytes `range` (within the blob) of the cached `blob` as a stream. The whole blob is
/// hashed again on the way and checked against `digest` at the end; a part of it is served
/// as it is (it was verified when committed). A blob found corrupt or short is removed from
/// the cache and its stream ends with an error.
fn serve_cached(
    cache: BlobCache,
    digest: Digest,
    mut blob: CachedBlob,
    range: Range<u64>,
) -> BlobStream {
    let whole = range == (0..blob.size);
    let seeked = blob.file.seek(SeekFrom::Start(range.start));
    let state = Serving {
        file: tokio::fs::File::from_std(blob.file),
        path: blob.path,
        cache,
        digest,
        hasher: whole.then(Hasher::new),
        at: range.start,
        end: range.end,
        done: false,
    };
    if let Err(e) = seeked {
        let err = Error::Cache {
            path: state.path.clone(),
            source: e,
        };
        return Box::pin(futures::stream::once(async move { Err(err) }));
    }
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if st.at == st.end {
            st.done = true;
            let actual = st.hasher.take()?.finish();
            if actual == st.digest {
                return None;
            }
            let err = st.corrupt(Some(actual), None).await;
            return Some((Err(err), st));
        }
        let want = (st.end - st.at).min(READ_CHUNK as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        let item = match st.file.read(&mut buf).await {
            Ok(0) => {
                let at = st.at;
                Err(st.corrupt(None, Some(at)).await)
            }
            Ok(n) => {
                buf.truncate(n);
                st.at += n as u64;
                if let Some(h) = st.hasher.as_mut() {
                    h.update(&buf);
                }
                Ok(buf.freeze())
            }
            Err(e) => {
                st.done = true;
                Err(Error::Cache {
                    path: st.path.clone(),
                    source: e,
                })
            }
        };
        Some((item, st))
    }))
}
