//! The chunk client: fetches one byte range of a blob from a peer's chunk server.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use reqwest::header;
use reqwest::StatusCode;

use super::have::{HaveDecoder, HAVE_CONTENT_TYPE};
use super::{HaveLines, PeerError, PeerFetcher};
use crate::digest::Digest;
use crate::tls::{Expect, TlsError, Transport};
use crate::tracker::proto::ErrorBody;

/// Most bytes of an error answer read to explain it.
const MAX_ERROR_BODY: usize = 4096;
/// Most bytes reserved up front for a body (a chunk is at most 64 MiB).
const MAX_PREALLOC: u64 = crate::chunk::MAX_CHUNK_SIZE;
/// How long a have stream may stay open (it ends with its download long before).
const HAVE_STREAM_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// Fetches chunks from peers' chunk servers over the swarm [`Transport`]: from nodes (any
/// certificate with a role) or from the registry side's seeder (a registry-side certificate
/// only, [`PeerFetcher::fetch_from_seeder`]).
#[derive(Clone, Debug)]
pub struct PeerClient {
    http: reqwest::Client,
    seeder_http: reqwest::Client,
    scheme: &'static str,
}

/// The `error` of an [`ErrorBody`] answer, or the start of the body as text.
pub(crate) fn error_text(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => b.error,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

/// The explanation in an error answer's body: up to [`MAX_ERROR_BODY`] bytes of it, through
/// [`error_text`].
async fn error_body(response: &mut reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    error_text(&body)
}

impl PeerClient {
    /// A client presenting this node's certificate (or plaintext, if `transport` is), giving
    /// up on a connection after `connect_timeout` and on a whole request after
    /// `request_timeout`.
    pub fn new(
        transport: &Transport,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            http: transport.http_client(connect_timeout, request_timeout)?,
            seeder_http: transport.http_client_for(
                Expect::RegistrySide,
                connect_timeout,
                request_timeout,
            )?,
            scheme: transport.scheme(),
        })
    }

    async fn fetch_range(
        &self,
        http: &reqwest::Client,
        peer: SocketAddr,
        digest: &Digest,
        range: Range<u64>,
        progress: &AtomicU64,
    ) -> Result<Bytes, PeerError> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let len = range.end - range.start;
        let last = range.end - 1;
        let url = format!("{}://{peer}/v1/blobs/{digest}", self.scheme);
        let transport = |e: reqwest::Error| PeerError::Transport {
            peer,
            digest: digest.clone(),
            start: range.start,
            end: range.end,
            source: Box::new(e),
        };
        let bad = |reason: String| PeerError::BadResponse {
            peer,
            reason: format!("{digest} bytes {}..{}: {reason}", range.start, range.end),
        };
        let mut response = http
            .get(&url)
            .header(header::RANGE, format!("bytes={}-{last}", range.start))
            .send()
            .await
            .map_err(transport)?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::SERVICE_UNAVAILABLE => return Err(PeerError::Busy { peer }),
            StatusCode::NOT_FOUND => {
                return Err(PeerError::NotHeld {
                    peer,
                    digest: digest.clone(),
                    start: range.start,
                    end: range.end,
                })
            }
            status => {
                let text = error_body(&mut response).await;
                return Err(bad(format!("status {status}: {text}")));
            }
        }
        let content_range = response
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad("206 without a Content-Range".into()))?;
        let want = format!("bytes {}-{last}/", range.start);
        if !content_range.starts_with(&want) {
            return Err(bad(format!("Content-Range {content_range:?}")));
        }
        if let Some(length) = response.content_length() {
            if length != len {
                return Err(bad(format!("Content-Length {length}, {len} asked")));
            }
        }
        let mut body = BytesMut::with_capacity(len.min(MAX_PREALLOC) as usize);
        while let Some(piece) = response.chunk().await.map_err(transport)? {
            if body.len() as u64 + piece.len() as u64 > len {
                return Err(bad(format!("more than the {len} bytes asked")));
            }
            body.extend_from_slice(&piece);
            progress.store(body.len() as u64, Ordering::Relaxed);
        }
        if body.len() as u64 != len {
            return Err(bad(format!("{} bytes, {len} asked", body.len())));
        }
        Ok(body.freeze())
    }

    async fn open_have_stream(
        &self,
        peer: SocketAddr,
        digest: &Digest,
        chunks: u32,
    ) -> Result<HaveLines, PeerError> {
        let url = format!("{}://{peer}/v1/blobs/{digest}/have", self.scheme);
        let transport = |e: reqwest::Error| PeerError::Transport {
            peer,
            digest: digest.clone(),
            start: 0,
            end: 0,
            source: Box::new(e),
        };
        let bad = |reason: String| PeerError::BadResponse {
            peer,
            reason: format!("{digest} have stream: {reason}"),
        };
        let mut response = self
            .http
            .get(&url)
            .timeout(HAVE_STREAM_LIMIT)
            .send()
            .await
            .map_err(transport)?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => return Err(PeerError::Busy { peer }),
            StatusCode::NOT_FOUND => {
                return Err(PeerError::NoHave {
                    peer,
                    digest: digest.clone(),
                })
            }
            status => {
                let text = error_body(&mut response).await;
                return Err(bad(format!("status {status}: {text}")));
            }
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with(HAVE_CONTENT_TYPE) {
            return Err(bad(format!("content type {content_type:?}")));
        }
        let digest = digest.clone();
        let start = (response, HaveDecoder::new(chunks), false);
        let lines = futures::stream::unfold(start, move |(mut response, mut decoder, ended)| {
            let digest = digest.clone();
            async move {
                if ended {
                    return None;
                }
                let bad = |reason: String| PeerError::BadResponse {
                    peer,
                    reason: format!("{digest} have stream: {reason}"),
                };
                loop {
                    let failed = match decoder.next_line() {
                        Ok(Some(update)) => return Some((Ok(update), (response, decoder, false))),
                        Ok(None) => match response.chunk().await {
                            Ok(Some(piece)) => {
                                decoder.push(&piece);
                                continue;
                            }
                            Ok(None) if decoder.pending() == 0 => return None,
                            Ok(None) => bad("ends inside a line".into()),
                            Err(e) => PeerError::Transport {
                                peer,
                                digest: digest.clone(),
                                start: 0,
                                end: 0,
                                source: Box::new(e),
                            },
                        },
                        Err(e) => bad(e.to_string()),
                    };
                    return Some((Err(failed), (response, decoder, true)));
                }
            }
        });
        Ok(Box::pin(lines))
    }
}

impl PeerFetcher for PeerClient {
    fn fetch<'a>(
        &'a self,
        peer: SocketAddr,
        digest: &'a Digest,
        range: Range<u64>,
        progress: &'a AtomicU64,
    ) -> BoxFuture<'a, Result<Bytes, PeerError>> {
        Box::pin(self.fetch_range(&self.http, peer, digest, range, progress))
    }

    fn fetch_from_seeder<'a>(
        &'a self,
        peer: SocketAddr,
        digest: &'a Digest,
        range: Range<u64>,
        progress: &'a AtomicU64,
    ) -> BoxFuture<'a, Result<Bytes, PeerError>> {
        Box::pin(self.fetch_range(&self.seeder_http, peer, digest, range, progress))
    }

    fn have_stream<'a>(
        &'a self,
        peer: SocketAddr,
        digest: &'a Digest,
        chunks: u32,
    ) -> BoxFuture<'a, Result<HaveLines, PeerError>> {
        Box::pin(self.open_have_stream(peer, digest, chunks))
    }
}
