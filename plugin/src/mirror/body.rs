//! A blob's bytes on their way to the client: counted, hashed when the whole blob is sent,
//! and the last piece held back until they checked out: the right length, and for a whole
//! blob its digest (a range's bytes were verified by the source: the cache's blob when it
//! was committed, a swarm download's chunks against the chunk manifest). Anything wrong ends
//! the stream with an error, which cuts the connection (the response has a Content-Length):
//! the client never gets a complete response with wrong bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use shoal_p2p::registry::BlobStream;
use shoal_p2p::{Digest, Hasher};

use super::{MirrorError, MirrorMetrics};

/// What the stream must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// The whole blob: `size` bytes that hash to its digest.
    Whole { size: u64 },
    /// A range of it: `len` bytes.
    Part { len: u64 },
}

/// `stream` (blob `digest`, or a range of it) as a response body; see the module
/// documentation.
pub fn checked(
    stream: BlobStream,
    digest: Digest,
    expected: Expected,
    metrics: MirrorMetrics,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let (len, hasher) = match expected {
        Expected::Whole { size } => (size, Some(Hasher::new())),
        Expected::Part { len } => (len, None),
    };
    Checked {
        inner: stream,
        running: true,
        hasher,
        held: None,
        digest,
        len,
        seen: 0,
        metrics,
    }
}

struct Checked {
    inner: BlobStream,
    /// False once the stream ended (or failed).
    running: bool,
    /// Hashes the whole blob.
    hasher: Option<Hasher>,
    /// The latest piece, sent once the next one arrives or the bytes checked out.
    held: Option<Bytes>,
    digest: Digest,
    len: u64,
    seen: u64,
    metrics: MirrorMetrics,
}

impl Checked {
    fn fail(&mut self, reason: MirrorError) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.running = false;
        self.held = None;
        self.metrics.blobs_cut.inc();
        tracing::warn!(blob = %self.digest, "mirror: cutting the response: {reason}");
        Poll::Ready(Some(Err(std::io::Error::other(reason))))
    }

    fn send(&mut self, piece: Bytes) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.metrics.blob_bytes.inc_by(piece.len() as u64);
        Poll::Ready(Some(Ok(piece)))
    }
}

impl Stream for Checked {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if !this.running {
                // Ended: the held piece (if any) was checked.
                return match this.held.take() {
                    Some(piece) => this.send(piece),
                    None => Poll::Ready(None),
                };
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(source))) => {
                    let digest = this.digest.clone();
                    let source = Box::new(source);
                    return this.fail(MirrorError::SourceCut { digest, source });
                }
                Poll::Ready(Some(Ok(piece))) => {
                    if piece.is_empty() {
                        continue;
                    }
                    this.seen += piece.len() as u64;
                    if this.seen > this.len {
                        let (digest, seen, len) = (this.digest.clone(), this.seen, this.len);
                        return this.fail(MirrorError::TooLong { digest, seen, len });
                    }
                    if let Some(h) = this.hasher.as_mut() {
                        h.update(&piece);
                    }
                    if let Some(previous) = this.held.replace(piece) {
                        return this.send(previous);
                    }
                }
                Poll::Ready(None) => {
                    this.running = false;
                    if this.seen != this.len {
                        let (digest, seen, len) = (this.digest.clone(), this.seen, this.len);
                        return this.fail(MirrorError::Short { digest, seen, len });
                    }
                    if let Some(actual) = this.hasher.take().map(Hasher::finish) {
                        if actual != this.digest {
                            let digest = this.digest.clone();
                            return this.fail(MirrorError::BodyDigest { digest, actual });
                        }
                    }
                    // Loop: sends the held piece, then ends.
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn source(pieces: Vec<Result<&'static [u8], &'static str>>) -> BlobStream {
        Box::pin(futures::stream::iter(pieces.into_iter().map(|p| {
            p.map(Bytes::from_static).map_err(|reason| {
                shoal_p2p::registry::RegistryError::BadResponse {
                    url: "fake".into(),
                    reason: reason.into(),
                }
                .into()
            })
        })))
    }

    async fn run_as(
        pieces: Vec<Result<&'static [u8], &'static str>>,
        digest: Digest,
        size: u64,
        whole: bool,
    ) -> (Vec<u8>, bool, MirrorMetrics) {
        let metrics = MirrorMetrics::default();
        let expected = if whole {
            Expected::Whole { size }
        } else {
            Expected::Part { len: size }
        };
        let mut s = Box::pin(checked(source(pieces), digest, expected, metrics.clone()));
        let mut out = Vec::new();
        let mut failed = false;
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        (out, failed, metrics)
    }

    async fn run(
        pieces: Vec<Result<&'static [u8], &'static str>>,
        digest: Digest,
        size: u64,
    ) -> (Vec<u8>, bool, MirrorMetrics) {
        run_as(pieces, digest, size, true).await
    }

    #[tokio::test]
    async fn a_good_blob_passes_whole() {
        let d = Digest::of(b"hello world");
        let (out, failed, m) = run(vec![Ok(b"hello "), Ok(b""), Ok(b"world")], d, 11).await;
        assert!(!failed);
        assert_eq!(out, b"hello world");
        assert_eq!(m.blob_bytes.get(), 11);
        assert_eq!(m.blobs_cut.get(), 0);
    }

    #[tokio::test]
    async fn wrong_bytes_never_complete_the_blob() {
        let d = Digest::of(b"hello world");
        let (out, failed, m) = run(vec![Ok(b"hello "), Ok(b"there")], d.clone(), 11).await;
        assert!(failed);
        assert_eq!(out, b"hello ", "the last piece must be held back");
        assert_eq!(m.blobs_cut.get(), 1);
        let (_, failed, _) = run(vec![Ok(b"hello")], d.clone(), 11).await;
        assert!(failed, "short");
        let (_, failed, _) = run(vec![Ok(b"hello world!")], d.clone(), 11).await;
        assert!(failed, "long");
        let (out, failed, _) = run(vec![Ok(b"hello "), Err("cut")], d, 11).await;
        assert!(failed);
        assert!(out.len() < 11);
    }

    #[tokio::test]
    async fn a_range_is_checked_for_its_length_only() {
        let d = Digest::of(b"hello world");
        let (out, failed, m) = run_as(vec![Ok(b"llo "), Ok(b"wo")], d.clone(), 6, false).await;
        assert!(!failed);
        assert_eq!(out, b"llo wo");
        assert_eq!(m.blob_bytes.get(), 6);
        let (out, failed, m) = run_as(vec![Ok(b"llo "), Ok(b"w")], d.clone(), 6, false).await;
        assert!(failed, "short");
        assert_eq!(out, b"llo ", "the last piece must be held back");
        assert_eq!(m.blobs_cut.get(), 1);
        let (_, failed, _) = run_as(vec![Ok(b"llo "), Ok(b"wor")], d.clone(), 6, false).await;
        assert!(failed, "long");
        let (out, failed, _) = run_as(vec![Ok(b"llo "), Err("cut")], d, 6, false).await;
        assert!(failed);
        assert_eq!(out, b"");
    }

    #[tokio::test]
    async fn a_cut_carries_the_typed_cause_and_names_the_blob() {
        let d = Digest::of(b"hello world");
        let pieces = vec![Ok(b"hello ".as_slice()), Err("connection cut")];
        let mut s = Box::pin(checked(
            source(pieces),
            d.clone(),
            Expected::Whole { size: 11 },
            MirrorMetrics::default(),
        ));
        let mut cut = None;
        while let Some(item) = s.next().await {
            if let Err(e) = item {
                cut = Some(e);
                break;
            }
        }
        let cut = cut.expect("the stream is cut");
        match cut.get_ref().and_then(|e| e.downcast_ref::<MirrorError>()) {
            Some(MirrorError::SourceCut { digest, source })
                if matches!(**source, shoal_p2p::Error::Registry(_)) =>
            {
                assert_eq!(digest, &d)
            }
            other => panic!("{other:?}"),
        }
        let text = cut.to_string();
        assert!(
            text.contains(&format!("blob {d}: the source failed: "))
                && text.contains("connection cut"),
            "{text}"
        );
    }
}
