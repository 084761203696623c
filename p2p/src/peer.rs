//! The peer protocol: every node (and the registry extension's seeder) serves the chunks it
//! holds; other nodes fetch them by byte range.
//!
//! Wire (HTTP/1.1 over mutual TLS, see [`crate::tls`]; chunk servers serve node certificates,
//! and a seeder is fetched from only when its certificate is registry-side):
//! `GET /v1/blobs/<digest>` with `Range: bytes=<first>-<last>` (one range, required) answers
//! - `206` with exactly those bytes when every byte of the range is held and verified;
//! - `404` when the node does not hold the whole range;
//! - `503` with `Retry-After: 1` when all upload slots are busy (the client goes elsewhere);
//! - `400`/`416` for a missing or malformed range.
//!
//! Error bodies are [`crate::tracker::proto::ErrorBody`] JSON.
//!
//! `GET /v1/blobs/<digest>/have` (same listener, same certificates) is a node's have stream
//! of a blob it downloads or holds: its state at once, then each change ([`have`]); `404`
//! for a blob it neither holds nor downloads, `503` past `max_have_streams` streams.
//!
//! The server side is [`router`] (serving from a [`ChunkProvider`], e.g. the
//! [`crate::cache::BlobCache`]), limited by [`UploadLimits`] and measured by [`UploadMeter`];
//! the client side is [`PeerClient`], a [`PeerFetcher`].
//!
//! A `416` answers a range past the end of a blob the node holds. The server tells it apart
//! from "not held" by asking the provider about empty ranges: a provider that knows the blob
//! answers `0..0` and `n..n` with `Some` for every `n` up to the blob's size.

mod client;
pub mod have;
#[cfg(test)]
mod have_tests;
mod limit;
mod server;
#[cfg(any(test, feature = "test-pki"))]
pub mod test_pki;
#[cfg(test)]
mod tests;

pub(crate) use client::error_text;
pub use client::PeerClient;
pub use limit::UploadMeter;
#[cfg(test)]
pub(crate) use server::parse_range;
pub use server::{router, UploadLimits};

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::digest::Digest;

/// Bytes a node holds of a blob, ready to send.
pub enum Held {
    /// `len` bytes of `file` from `offset` (a cached or partial blob file).
    File {
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
    /// Bytes in memory.
    Bytes(Bytes),
}

/// What a chunk server serves from: the node's blob cache, its downloads in progress, or both.
pub trait ChunkProvider: Send + Sync {
    /// The bytes `range` of blob `digest` if every one of them is held and verified, else
    /// `None`. Blocking (small file-system calls): called from a blocking thread.
    fn open(&self, digest: &Digest, range: Range<u64>) -> Option<Held>;

    /// An upload of `range` of blob `digest` that [`Self::open`] opened has ended: with every
    /// byte handed to the connection (`whole`) or not (the client went away, or reading
    /// failed). Not blocking. By default nothing.
    fn ended(&self, digest: &Digest, range: Range<u64>, whole: bool) {
        let _ = (digest, range, whole);
    }

    /// The have stream's feed of blob `digest` ([`have`]): `None` when the provider neither
    /// holds it (with a known chunk count) nor downloads it. Not blocking. By default
    /// `None` (a plain cache does not know chunk counts).
    fn have(&self, digest: &Digest) -> Option<have::HaveFeed> {
        let _ = digest;
        None
    }
}

/// A peer's have stream of one blob, decoded ([`PeerFetcher::have_stream`]); it ends after
/// a `done` line or when the peer ends it, and with an error on bad input.
pub type HaveLines = BoxStream<'static, Result<have::HaveUpdate, PeerError>>;

/// Why a chunk could not be fetched from a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {peer}: busy")]
    Busy { peer: SocketAddr },
    #[error("peer {peer}: does not hold {digest} bytes {start}..{end}")]
    NotHeld {
        peer: SocketAddr,
        digest: Digest,
        start: u64,
        end: u64,
    },
    /// The peer has no have stream of `digest` (it neither holds nor downloads it).
    #[error("peer {peer}: no have stream of {digest}")]
    NoHave { peer: SocketAddr, digest: Digest },
    /// Connecting, TLS, sending or receiving failed for `digest` bytes `start..end`.
    #[error("peer {peer}: {digest} bytes {start}..{end}: {}", crate::error::Chain(&**.source))]
    Transport {
        peer: SocketAddr,
        digest: Digest,
        start: u64,
        end: u64,
        /// The HTTP client's error (a fake's I/O error in tests).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("peer {peer}: bad response: {reason}")]
    BadResponse { peer: SocketAddr, reason: String },
}

/// Fetches byte ranges of blobs from peers.
pub trait PeerFetcher: Send + Sync {
    /// Exactly the bytes `range` of blob `digest` from the peer at `peer` (unverified: the
    /// caller checks them against the chunk manifest). `progress` holds the bytes received so
    /// far while they arrive (the scheduler's overdue rule reads it).
    fn fetch<'a>(
        &'a self,
        peer: SocketAddr,
        digest: &'a Digest,
        range: Range<u64>,
        progress: &'a AtomicU64,
    ) -> BoxFuture<'a, Result<Bytes, PeerError>>;

    /// [`Self::fetch`] from a registry side's seeder (a peer listed as
    /// [`crate::tracker::SEEDER_ID_PREFIX`]): over TLS the server must hold a registry-side
    /// certificate. By default the same as `fetch`.
    fn fetch_from_seeder<'a>(
        &'a self,
        peer: SocketAddr,
        digest: &'a Digest,
        range: Range<u64>,
        progress: &'a AtomicU64,
    ) -> BoxFuture<'a, Result<Bytes, PeerError>> {
        self.fetch(peer, digest, range, progress)
    }

    /// Opens the have stream of blob `digest` (of `chunks` chunks) at the node at `peer`.
    /// By default refused (a fetcher without have streams).
    fn have_stream<'a>(
        &'a self,
        peer: SocketAddr,
        digest: &'a Digest,
        chunks: u32,
    ) -> BoxFuture<'a, Result<HaveLines, PeerError>> {
        let _ = (digest, chunks);
        Box::pin(async move {
            Err(PeerError::BadResponse {
                peer,
                reason: "no have streams".into(),
            })
        })
    }
}
