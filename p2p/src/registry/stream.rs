//! Blob byte streams: digest verification while streaming, and cutting a window out of a
//! body (for registries that answer a range request with the whole blob).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;

use super::RegistryError;
use crate::digest::{Digest, Hasher};
use crate::Error;

/// A stream of blob bytes as they arrive (from the registry, the cache or the swarm).
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>;

/// Pass `inner`'s bytes through unchanged while hashing them; when it ends, yield one last
/// `Err(DigestMismatch)` if the bytes do not hash to `expected`. Nothing is buffered.
pub fn verify_stream(inner: BlobStream, expected: Digest, repository: String) -> BlobStream {
    Box::pin(Verifying {
        inner,
        hasher: Some(Hasher::new()),
        expected,
        repository,
        bytes: 0,
    })
}

struct Verifying {
    inner: BlobStream,
    /// `None` once the stream has ended (or failed).
    hasher: Option<Hasher>,
    expected: Digest,
    repository: String,
    bytes: u64,
}

impl Stream for Verifying {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.hasher.is_none() {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(h) = this.hasher.as_mut() {
                    h.update(&chunk);
                }
                this.bytes += chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.hasher = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let actual = this.hasher.take().map(Hasher::finish);
                match actual {
                    Some(actual) if actual != this.expected => {
                        Poll::Ready(Some(Err(RegistryError::DigestMismatch {
                            repository: this.repository.clone(),
                            expected: this.expected.clone(),
                            actual,
                            bytes: this.bytes,
                        }
                        .into())))
                    }
                    _ => Poll::Ready(None),
                }
            }
        }
    }
}

/// Skip the first `skip` bytes of `inner`, then yield exactly `take` bytes; if `inner`
/// ends early, the last item is `short(bytes_delivered)`.
pub(crate) fn window_stream(
    inner: BlobStream,
    skip: u64,
    take: u64,
    short: Box<dyn Fn(u64) -> RegistryError + Send>,
) -> BlobStream {
    Box::pin(Window {
        inner,
        skip,
        remaining: take,
        delivered: 0,
        short,
        done: false,
    })
}

struct Window {
    inner: BlobStream,
    skip: u64,
    remaining: u64,
    delivered: u64,
    short: Box<dyn Fn(u64) -> RegistryError + Send>,
    done: bool,
}

impl Stream for Window {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.remaining == 0 {
                // Do not wait for (or download) the rest of an over-long body.
                this.done = true;
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(Some(Err((this.short)(this.delivered).into())));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(mut chunk))) => {
                    let len = chunk.len() as u64;
                    if this.skip >= len {
                        this.skip -= len;
                        continue;
                    }
                    if this.skip > 0 {
                        chunk = chunk.slice(this.skip as usize..);
                        this.skip = 0;
                    }
                    if chunk.len() as u64 > this.remaining {
                        chunk.truncate(this.remaining as usize);
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    this.remaining -= chunk.len() as u64;
                    this.delivered += chunk.len() as u64;
                    return Poll::Ready(Some(Ok(chunk)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{stream, StreamExt};

    fn chunks(parts: &[&'static [u8]]) -> BlobStream {
        let items: Vec<Result<Bytes, Error>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(stream::iter(items))
    }

    #[tokio::test]
    async fn verified_stream_passes_good_bytes() {
        let d = Digest::of(b"hello world");
        let s = verify_stream(chunks(&[b"hello ", b"world"]), d, "r".into());
        let items: Vec<_> = s.collect().await;
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i.is_ok()));
    }

    #[tokio::test]
    async fn verified_stream_reports_mismatch_last() {
        let d = Digest::of(b"hello world");
        let s = verify_stream(chunks(&[b"hello ", b"there"]), d.clone(), "repo/x".into());
        let items: Vec<_> = s.collect().await;
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap().as_ref(), b"hello ");
        assert_eq!(items[1].as_ref().unwrap().as_ref(), b"there");
        match &items[2] {
            Err(Error::Registry(RegistryError::DigestMismatch {
                repository,
                expected,
                actual,
                bytes,
            })) => {
                assert_eq!(repository, "repo/x");
                assert_eq!(expected, &d);
                assert_eq!(actual, &Digest::of(b"hello there"));
                assert_eq!(*bytes, 11);
                let msg = items[2].as_ref().unwrap_err().to_string();
                assert!(
                    msg.contains(&d.to_string()) && msg.contains("repo/x"),
                    "{msg}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        // A short body is a mismatch too.
        let s = verify_stream(chunks(&[b"hello"]), d, "r".into());
        let items: Vec<_> = s.collect().await;
        assert!(matches!(
            items.last(),
            Some(Err(Error::Registry(RegistryError::DigestMismatch { .. })))
        ));
    }

    fn short_err() -> Box<dyn Fn(u64) -> RegistryError + Send> {
        Box::new(|n| RegistryError::BadResponse {
            url: "u".into(),
            reason: format!("short after {n}"),
        })
    }

    async fn window(parts: &[&'static [u8]], skip: u64, take: u64) -> Result<Vec<u8>, String> {
        let mut s = window_stream(chunks(parts), skip, take, short_err());
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            out.extend_from_slice(&item.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn window_cuts_ranges_across_chunks() {
        let parts: &[&'static [u8]] = &[b"0123", b"4567", b"89"];
        assert_eq!(window(parts, 0, 10).await.unwrap(), b"0123456789");
        assert_eq!(window(parts, 3, 4).await.unwrap(), b"3456");
        assert_eq!(window(parts, 4, 4).await.unwrap(), b"4567");
        assert_eq!(window(parts, 9, 1).await.unwrap(), b"9");
        assert!(window(parts, 8, 5)
            .await
            .unwrap_err()
            .contains("short after 2"));
    }
}
