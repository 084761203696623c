//! The chunk server: `GET /v1/blobs/<digest>` with one byte range, and
//! `GET /v1/blobs/<digest>/have`, the blob's have stream (see [`crate::peer`] and
//! [`super::have`]).

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use super::have::{HaveSlots, HAVE_COALESCE, HAVE_CONTENT_TYPE};
use super::limit::{SlotGuard, TokenBucket, UploadMeter};
use super::{ChunkProvider, Held};
use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::metrics::UploadMetrics;
use crate::source::{BadRange, ByteRange};
use crate::tls::{require_roles, Role};
use crate::tracker::proto::ErrorBody;

/// Bytes read from a file and sent per step (and taken from the token bucket at once).
const READ_SIZE: u64 = 64 << 10;

/// How much a chunk server uploads at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadLimits {
    /// Uploads served at once (at least 1); more requests are refused with `503` at once.
    pub max_uploads: usize,
    /// Total upload bandwidth of the server in bytes/s; 0 = unlimited.
    pub bytes_per_sec: u64,
    /// Have streams served at once; more are refused with `503` at once.
    pub max_have_streams: usize,
}

struct Server {
    provider: Arc<dyn ChunkProvider>,
    meter: UploadMeter,
    bucket: Option<Arc<TokenBucket>>,
    /// Numbers uploads in the order they start (the token bucket serves the oldest first).
    uploads: std::sync::atomic::AtomicU64,
    metrics: UploadMetrics,
    have_slots: HaveSlots,
}

/// The chunk server's router: only `GET /v1/blobs/{digest}` and `GET
/// /v1/blobs/{digest}/have`, so it can be merged into another router. Serves from
/// `provider`, at most `limits.max_uploads` chunks at once and `limits.bytes_per_sec` in
/// total, and at most `limits.max_have_streams` have streams, to node certificates only (a
/// registry-side certificate gets `403`: the registry side never fetches chunks). The
/// returned [`UploadMeter`] measures what it sends.
pub fn router(
    provider: Arc<dyn ChunkProvider>,
    limits: UploadLimits,
    metrics: UploadMetrics,
) -> (axum::Router, UploadMeter) {
    let meter = UploadMeter::new(limits.max_uploads, limits.bytes_per_sec, metrics.clone());
    let bucket =
        (limits.bytes_per_sec > 0).then(|| Arc::new(TokenBucket::new(limits.bytes_per_sec)));
    let server = Arc::new(Server {
        provider,
        meter: meter.clone(),
        bucket,
        uploads: std::sync::atomic::AtomicU64::new(0),
        have_slots: HaveSlots::new(limits.max_have_streams, metrics.have_streams.clone()),
        metrics,
    });
    let router = axum::Router::new()
        .route("/v1/blobs/{digest}", get(serve_blob))
        .route("/v1/blobs/{digest}/have", get(serve_have))
        .with_state(server);
    (require_roles(router, &[Role::Node]), meter)
}

/// Why the chunk server refuses a request. [`Refusal::status`] is the one place a refusal
/// becomes an HTTP status (and [`Refusal::result`] the metrics result it counts as).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// The path is not `/v1/blobs/<digest>`.
    #[error("{}", .0.body_text())]
    Path(#[from] PathRejection),
    /// The path's digest is not a digest.
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestParseError),
    #[error("{digest}: a Range header is required")]
    NoRange { digest: Digest },
    #[error("{digest}: one Range header only")]
    SeveralRanges { digest: Digest },
    #[error("{digest}: range is not ASCII")]
    RangeNotAscii { digest: Digest },
    #[error("{digest}: {source}")]
    BadRange {
        digest: Digest,
        #[source]
        source: BadRange,
    },
    /// Every upload slot is taken: the client goes elsewhere (`Retry-After: 1`).
    #[error("all upload slots are busy")]
    Busy,
    #[error("{digest} bytes {start}..{end} not held")]
    NotHeld {
        digest: Digest,
        start: u64,
        end: u64,
    },
    #[error("{digest} bytes {start}..{end}: past the blob's end")]
    PastEnd {
        digest: Digest,
        start: u64,
        end: u64,
    },
    /// Every have-stream slot is taken (`Retry-After: 1`).
    #[error("too many have streams")]
    HaveBusy,
    /// No have stream of a blob the node neither holds nor downloads.
    #[error("{digest} not held")]
    NoHave { digest: Digest },
    /// Opening the held bytes failed (logged; the client only learns it was internal).
    #[error("{digest}: internal error")]
    Internal { digest: Digest },
}

impl Refusal {
    /// The HTTP status of this refusal.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::Path(_)
            | Refusal::Digest(_)
            | Refusal::NoRange { .. }
            | Refusal::SeveralRanges { .. }
            | Refusal::RangeNotAscii { .. }
            | Refusal::BadRange { .. } => StatusCode::BAD_REQUEST,
            Refusal::Busy | Refusal::HaveBusy => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::NotHeld { .. } | Refusal::NoHave { .. } => StatusCode::NOT_FOUND,
            Refusal::PastEnd { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Refusal::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `result` label of the chunk-request metric.
    fn result(&self) -> &'static str {
        match self {
            Refusal::Busy | Refusal::HaveBusy => "busy",
            Refusal::NotHeld { .. } | Refusal::NoHave { .. } => "not_held",
            Refusal::Internal { .. } => "error",
            _ => "bad_request",
        }
    }

    /// The answer: the status, `ErrorBody` JSON, and `Retry-After` when busy.
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (
            status,
            axum::Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A refusal, counted in the metrics.
fn refuse(server: &Server, refusal: Refusal) -> Response {
    server.metrics.request(refusal.result());
    refusal.into_response()
}

/// Parses `bytes=<first>-<last>` (one range, both ends given, first <= last) into
/// `first..last + 1` ([`ByteRange::parse`], only its closed form).
pub(crate) fn parse_range(value: &str) -> Result<Range<u64>, BadRange> {
    let bad = |reason| BadRange {
        value: value.chars().take(64).collect(),
        reason,
    };
    match ByteRange::parse(value)? {
        ByteRange::FromTo { first, last } => last
            .checked_add(1)
            .map(|end| first..end)
            .ok_or_else(|| bad("too large")),
        _ => Err(bad("not first-last")),
    }
}

async fn serve_blob(
    State(server): State<Arc<Server>>,
    digest: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    match serve(&server, digest, headers).await {
        Ok(response) => response,
        Err(refusal) => refuse(&server, refusal),
    }
}

async fn serve(
    server: &Arc<Server>,
    digest: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let Path(digest) = digest?;
    let digest: Digest = digest.parse()?;
    let ranges: Vec<_> = headers.get_all(header::RANGE).iter().collect();
    let range = match ranges.as_slice() {
        [] => return Err(Refusal::NoRange { digest }),
        [one] => {
            let value = one.to_str().map_err(|_| Refusal::RangeNotAscii {
                digest: digest.clone(),
            })?;
            parse_range(value).map_err(|source| Refusal::BadRange {
                digest: digest.clone(),
                source,
            })?
        }
        _ => return Err(Refusal::SeveralRanges { digest }),
    };
    let Some(slot) = server.meter.try_acquire() else {
        return Err(Refusal::Busy);
    };
    let provider = server.provider.clone();
    let (d, r) = (digest.clone(), range.clone());
    let opened = tokio::task::spawn_blocking(move || open_or_explain(&*provider, &d, r)).await;
    let held = match opened {
        Ok(Ok(held)) => held,
        Ok(Err(Missing::NotHeld)) => {
            return Err(Refusal::NotHeld {
                digest,
                start: range.start,
                end: range.end,
            })
        }
        Ok(Err(Missing::PastEnd)) => {
            return Err(Refusal::PastEnd {
                digest,
                start: range.start,
                end: range.end,
            })
        }
        Err(e) => {
            tracing::warn!(%digest, "opening a chunk to serve: {e}");
            return Err(Refusal::Internal { digest });
        }
    };
    let len = range.end - range.start;
    let (source, held_len) = match held {
        Held::File { file, offset, len } => (Source::File(Arc::new(file), offset), len),
        Held::Bytes(b) => {
            let held_len = b.len() as u64;
            (Source::Bytes(b), held_len)
        }
    };
    if held_len != len {
        tracing::warn!(%digest, held_len, len, "chunk provider gave the wrong length");
        server.provider.ended(&digest, range, false);
        return Err(Refusal::Internal { digest });
    }
    let upload = Upload {
        source,
        sent: 0,
        len,
        bucket: server.bucket.clone(),
        number: server
            .uploads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        meter: server.meter.clone(),
        metrics: server.metrics.clone(),
        digest: digest.clone(),
        range: range.clone(),
        provider: server.provider.clone(),
        done: false,
        _slot: slot,
    };
    let body = Body::from_stream(futures::stream::unfold(upload, Upload::step));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/*", range.start, range.end - 1)) {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(response)
}

/// `GET /v1/blobs/{digest}/have`: the blob's have stream ([`super::have`]). Its refusals
/// are not counted as chunk requests.
async fn serve_have(
    State(server): State<Arc<Server>>,
    digest: Result<Path<String>, PathRejection>,
) -> Response {
    match have_stream(&server, digest) {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    }
}

fn have_stream(
    server: &Server,
    digest: Result<Path<String>, PathRejection>,
) -> Result<Response, Refusal> {
    let Path(digest) = digest?;
    let digest: Digest = digest.parse()?;
    let Some(feed) = server.provider.have(&digest) else {
        return Err(Refusal::NoHave { digest });
    };
    let Some(slot) = server.have_slots.try_acquire() else {
        return Err(Refusal::HaveBusy);
    };
    let lines = feed.lines(HAVE_COALESCE);
    let body = futures::StreamExt::map(lines, move |line| {
        // The slot is held for as long as the body is.
        let _held = &slot;
        Ok::<_, std::convert::Infallible>(line)
    });
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(HAVE_CONTENT_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Why a range is not served.
enum Missing {
    NotHeld,
    PastEnd,
}

/// Opens `range` of `digest`. When it is not held, asks the provider about empty ranges to
/// tell "past the end of a blob it holds" (`0..0` held but `end..end` not) from "not held".
/// A provider that answers `None` for empty ranges simply gets `404`s.
fn open_or_explain(
    provider: &dyn ChunkProvider,
    digest: &Digest,
    range: Range<u64>,
) -> Result<Held, Missing> {
    if let Some(held) = provider.open(digest, range.clone()) {
        return Ok(held);
    }
    if provider.open(digest, 0..0).is_some()
        && provider.open(digest, range.end..range.end).is_none()
    {
        return Err(Missing::PastEnd);
    }
    Err(Missing::NotHeld)
}

enum Source {
    File(Arc<std::fs::File>, u64),
    Bytes(Bytes),
}

/// One response body in progress; holds its upload slot until dropped.
struct Upload {
    source: Source,
    sent: u64,
    len: u64,
    bucket: Option<Arc<TokenBucket>>,
    /// Its place in the order uploads started.
    number: u64,
    meter: UploadMeter,
    metrics: UploadMetrics,
    digest: Digest,
    /// The range served, and whom to tell when the upload ends ([`ChunkProvider::ended`]).
    range: Range<u64>,
    provider: Arc<dyn ChunkProvider>,
    /// The request was counted (sent whole, or failed).
    done: bool,
    _slot: SlotGuard,
}

impl Upload {
    /// The next piece of the body, paced by the token bucket.
    async fn step(mut self) -> Option<(std::io::Result<Bytes>, Self)> {
        if self.done || self.sent == self.len {
            return None;
        }
        let n = (self.len - self.sent).min(READ_SIZE);
        if let Some(bucket) = &self.bucket {
            bucket.take(n, self.number).await;
        }
        let piece = match &self.source {
            Source::Bytes(b) => {
                let at = self.sent as usize;
                Ok(b.slice(at..at + n as usize))
            }
            Source::File(file, offset) => {
                let file = file.clone();
                let at = offset + self.sent;
                tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; n as usize];
                    file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
        };
        match piece {
            Ok(bytes) => {
                self.sent += n;
                self.meter.sent(n);
                if self.sent == self.len {
                    self.done = true;
                    self.metrics.request("ok");
                    self.provider.ended(&self.digest, self.range.clone(), true);
                }
                Some((Ok(bytes), self))
            }
            Err(e) => {
                tracing::warn!(digest = %self.digest, at = self.sent, "reading a chunk to serve: {e}");
                self.done = true;
                self.metrics.request("error");
                self.provider.ended(&self.digest, self.range.clone(), false);
                Some((Err(e), self))
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            // The client went away before the whole range was sent.
            self.metrics.request("error");
            self.provider.ended(&self.digest, self.range.clone(), false);
        }
    }
}

/// A cache holds complete, verified blobs: any range within a cached blob is served.
impl ChunkProvider for BlobCache {
    fn open(&self, digest: &Digest, range: Range<u64>) -> Option<Held> {
        if range.start > range.end {
            return None;
        }
        let blob = self.get(digest)?;
        if range.end > blob.size {
            return None;
        }
        Some(Held::File {
            file: blob.file,
            offset: range.start,
            len: range.end - range.start,
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::{parse_range, Refusal};
    use crate::Digest;

    #[test]
    fn each_refusal_has_its_status_and_names_the_blob() {
        let digest = Digest::of(b"blob");
        let cases = [
            (Refusal::Busy, StatusCode::SERVICE_UNAVAILABLE, "busy"),
            (
                Refusal::NotHeld {
                    digest: digest.clone(),
                    start: 0,
                    end: 4,
                },
                StatusCode::NOT_FOUND,
                "not_held",
            ),
            (
                Refusal::PastEnd {
                    digest: digest.clone(),
                    start: 8,
                    end: 9,
                },
                StatusCode::RANGE_NOT_SATISFIABLE,
                "bad_request",
            ),
            (
                Refusal::BadRange {
                    digest: digest.clone(),
                    source: parse_range("bytes=5-").unwrap_err(),
                },
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Refusal::Internal {
                    digest: digest.clone(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "error",
            ),
        ];
        for (refusal, status, result) in cases {
            assert_eq!(refusal.status(), status, "{refusal}");
            assert_eq!(refusal.result(), result, "{refusal}");
            if status != StatusCode::SERVICE_UNAVAILABLE {
                assert!(
                    refusal.to_string().contains(&digest.to_string()),
                    "{refusal}"
                );
            }
        }
    }

    #[test]
    fn parses_one_closed_range() {
        assert_eq!(parse_range("bytes=0-0"), Ok(0..1));
        assert_eq!(parse_range("bytes=10-19"), Ok(10..20));
        assert_eq!(parse_range(" bytes=5 - 6 "), Ok(5..7));
    }

    #[test]
    fn refuses_other_ranges() {
        for bad in [
            "",
            "bytes=",
            "bytes=-5",
            "bytes=5-",
            "bytes=6-5",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=+1-2",
            "bytes=0-18446744073709551615",
            "bytes=0-99999999999999999999999",
        ] {
            assert!(parse_range(bad).is_err(), "{bad:?}");
        }
    }
}
