//! The chunk server: `GET /v1/blobs/<digest>` with one byte range (see [`crate::peer`]).

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

use super::limit::{SlotGuard, TokenBucket, UploadMeter};
use super::{ChunkProvider, Held};
use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::metrics::UploadMetrics;
use crate::source::ByteRange;
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
}

struct Server {
    provider: Arc<dyn ChunkProvider>,
    meter: UploadMeter,
    bucket: Option<Arc<TokenBucket>>,
    metrics: UploadMetrics,
}

/// The chunk server's router: only `GET /v1/blobs/{digest}`, so it can be merged into another
/// router. Serves from `provider`, at most `limits.max_uploads` at once and
/// `limits.bytes_per_sec` in total, to node certificates only (a registry-side certificate
/// gets `403`: the registry side never fetches chunks). The returned [`UploadMeter`] measures
/// what it sends.
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
        metrics,
    });
    let router = axum::Router::new()
        .route("/v1/blobs/{digest}", get(serve_blob))
        .with_state(server);
    (require_roles(router, &[Role::Node]), meter)
}

/// A refusal: status, `ErrorBody` JSON, and the metrics result it counts as.
fn refuse(server: &Server, status: StatusCode, result: &'static str, error: String) -> Response {
    server.metrics.request(result);
    let mut response = (status, axum::Json(ErrorBody { error })).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Parses `bytes=<first>-<last>` (one range, both ends given, first <= last) into
/// `first..last + 1` ([`ByteRange::parse`], only its closed form).
pub(crate) fn parse_range(value: &str) -> Result<Range<u64>, String> {
    match ByteRange::parse(value).map_err(|e| e.to_string())? {
        ByteRange::FromTo { first, last } => last
            .checked_add(1)
            .map(|end| first..end)
            .ok_or_else(|| format!("range {value:?} too large")),
        _ => Err(format!("range {value:?} is not first-last")),
    }
}

async fn serve_blob(
    State(server): State<Arc<Server>>,
    digest: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let digest = match digest {
        Ok(Path(d)) => d,
        Err(e) => {
            return refuse(
                &server,
                StatusCode::BAD_REQUEST,
                "bad_request",
                e.body_text(),
            )
        }
    };
    let digest: Digest = match digest.parse() {
        Ok(d) => d,
        Err(e) => {
            return refuse(
                &server,
                StatusCode::BAD_REQUEST,
                "bad_request",
                e.to_string(),
            )
        }
    };
    let ranges: Vec<_> = headers.get_all(header::RANGE).iter().collect();
    let range = match ranges.as_slice() {
        [] => Err(format!("{digest}: a Range header is required")),
        [one] => one
            .to_str()
            .map_err(|_| "range is not ASCII".to_string())
            .and_then(parse_range)
            .map_err(|e| format!("{digest}: {e}")),
        _ => Err(format!("{digest}: one Range header only")),
    };
    let range = match range {
        Ok(r) => r,
        Err(e) => return refuse(&server, StatusCode::BAD_REQUEST, "bad_request", e),
    };
    let Some(slot) = server.meter.try_acquire() else {
        return refuse(
            &server,
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "all upload slots are busy".into(),
        );
    };
    let provider = server.provider.clone();
    let (d, r) = (digest.clone(), range.clone());
    let opened = tokio::task::spawn_blocking(move || open_or_explain(&*provider, &d, r)).await;
    let held = match opened {
        Ok(Ok(held)) => held,
        Ok(Err(Missing::NotHeld)) => {
            return refuse(
                &server,
                StatusCode::NOT_FOUND,
                "not_held",
                format!("{digest} bytes {}..{} not held", range.start, range.end),
            )
        }
        Ok(Err(Missing::PastEnd)) => {
            return refuse(
                &server,
                StatusCode::RANGE_NOT_SATISFIABLE,
                "bad_request",
                format!(
                    "{digest} bytes {}..{}: past the blob's end",
                    range.start, range.end
                ),
            )
        }
        Err(e) => {
            tracing::warn!(%digest, "opening a chunk to serve: {e}");
            return refuse(
                &server,
                StatusCode::INTERNAL_SERVER_ERROR,
                "error",
                format!("{digest}: internal error"),
            );
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
        return refuse(
            &server,
            StatusCode::INTERNAL_SERVER_ERROR,
            "error",
            format!("{digest}: internal error"),
        );
    }
    let upload = Upload {
        source,
        sent: 0,
        len,
        bucket: server.bucket.clone(),
        meter: server.meter.clone(),
        metrics: server.metrics.clone(),
        digest: digest.clone(),
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
    response
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
    meter: UploadMeter,
    metrics: UploadMetrics,
    digest: Digest,
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
            bucket.take(n).await;
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
                }
                Some((Ok(bytes), self))
            }
            Err(e) => {
                tracing::warn!(digest = %self.digest, at = self.sent, "reading a chunk to serve: {e}");
                self.done = true;
                self.metrics.request("error");
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
    use super::parse_range;

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
