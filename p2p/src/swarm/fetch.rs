//! The executor's I/O for one request: a chunk from a peer, or a range of chunks from the
//! registry; each chunk is checked against the manifest and stored, then reported to the
//! executor ([`super::scheduler`]) as an [`Event`].

use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::download::Download;
use super::error::RequestError;
use super::planner::{Failure, ReqId};
use super::scheduler::{Ended, Event};
use super::{Swarm, SwarmError};
use crate::digest::Digest;
use crate::peer::PeerError;
use crate::reference::ImageReference;
use crate::Error;

/// One chunk request to a peer.
pub(super) struct PeerRequest {
    pub(super) req: ReqId,
    /// The chunk.
    pub(super) index: u32,
    pub(super) addr: std::net::SocketAddr,
    /// A registry side's seeder, whose certificate must then be registry-side.
    pub(super) seeder: bool,
    /// The bytes received so far (the scheduler reads it for the planner's overdue rule).
    pub(super) progress: Arc<AtomicU64>,
}

/// Fetches the chunk of `request` from its peer.
pub(super) async fn from_peer(
    swarm: Swarm,
    download: Arc<Download>,
    request: PeerRequest,
    tx: mpsc::UnboundedSender<Event>,
) {
    let PeerRequest {
        req,
        index,
        addr,
        seeder,
        progress,
    } = request;
    let range = download.manifest().chunk_range(index as usize);
    let peers = &swarm.inner().peers;
    let fetched = match seeder {
        true => {
            peers
                .fetch_from_seeder(addr, download.digest(), range, &progress)
                .await
        }
        false => peers.fetch(addr, download.digest(), range, &progress).await,
    };
    let ended = match fetched {
        Ok(bytes) => match verify_and_store(&swarm, "peer", &download, index, bytes).await {
            Ok((len, verified)) => {
                let _ = tx.send(Event::Chunk {
                    req,
                    index,
                    len,
                    verified,
                });
                Ended::Ok
            }
            Err(e) => Ended::Store(e),
        },
        Err(e @ PeerError::Busy { .. }) => Ended::Failed(Failure::Busy, e.into()),
        Err(e @ PeerError::NotHeld { .. }) => Ended::Failed(Failure::NotHeld, e.into()),
        Err(e) => Ended::Failed(Failure::Transport, e.into()),
    };
    let _ = tx.send(Event::End { req, ended });
}

/// Fetches `chunks` as one range from the registry as request `req`, storing each chunk as
/// soon as its bytes are in.
pub(super) async fn from_registry(
    swarm: Swarm,
    download: Arc<Download>,
    req: ReqId,
    chunks: Range<u32>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let ended = registry_range(&swarm, &download, req, chunks, &tx).await;
    let _ = tx.send(Event::End { req, ended });
}

/// Checks `bytes` against chunk `index`'s hash and, if it matches and is not held yet, stores
/// it (counting it in the metrics when it is new). Returns its length and whether it
/// matched; `Err` when the store failed.
async fn verify_and_store(
    swarm: &Swarm,
    source: &'static str,
    download: &Arc<Download>,
    index: u32,
    bytes: Bytes,
) -> Result<(u64, bool), Error> {
    let download = download.clone();
    let metrics = swarm.inner().metrics.clone();
    let len = bytes.len() as u64;
    let digest = download.digest().clone();
    tokio::task::spawn_blocking(move || {
        let expected = &download.manifest().chunks[index as usize];
        if Digest::of(&bytes) != *expected {
            return Ok((len, false));
        }
        let new = download.store(index, &bytes)?;
        if new {
            metrics.received(source, len);
        }
        Ok((len, true))
    })
    .await
    .map_err(|e| Error::Swarm {
        digest,
        source: SwarmError::Task {
            chunk: Some(index),
            source: Arc::new(e),
        },
    })?
}

async fn registry_range(
    swarm: &Swarm,
    download: &Arc<Download>,
    req: ReqId,
    chunks: Range<u32>,
    tx: &mpsc::UnboundedSender<Event>,
) -> Ended {
    let manifest = download.manifest();
    let range = manifest.chunk_range(chunks.start as usize).start
        ..manifest.chunk_range(chunks.end as usize - 1).end;
    // The newest reader's grant: its own repository of the download's registry, with
    // credentials valid there. A refused grant is dropped; the next range uses an older one.
    let Some(grant) = download.grant() else {
        return Ended::Failed(Failure::Transport, RequestError::NoGrant);
    };
    let image = ImageReference {
        registry: download.origin().to_owned(),
        repository: grant.repository.clone(),
        tag: None,
        digest: None,
    };
    let fetched =
        swarm
            .inner()
            .registry
            .fetch_range_as(&image, download.digest(), range, &grant.reader);
    let mut stream = match fetched.await {
        Ok(s) => s,
        Err(e) => {
            if e.is_unauthorized() || matches!(e.status(), Some(401 | 403)) {
                download.revoke(&grant);
            }
            return Ended::Failed(Failure::Transport, e.into());
        }
    };
    let mut index = chunks.start;
    let mut buf = BytesMut::new();
    while index < chunks.end {
        let want = {
            let r = manifest.chunk_range(index as usize);
            (r.end - r.start) as usize
        };
        if buf.len() >= want {
            let bytes = buf.split_to(want).freeze();
            match verify_and_store(swarm, "registry", download, index, bytes).await {
                Ok((len, verified)) => {
                    let _ = tx.send(Event::Chunk {
                        req,
                        index,
                        len,
                        verified,
                    });
                    if !verified {
                        return Ended::Ok;
                    }
                }
                Err(e) => return Ended::Store(e),
            }
            index += 1;
            continue;
        }
        match stream.next().await {
            Some(Ok(bytes)) => buf.extend_from_slice(&bytes),
            Some(Err(e)) => return Ended::Failed(Failure::Transport, e.into()),
            None => {
                let missing = want - buf.len();
                return Ended::Failed(Failure::Transport, RequestError::Short { missing });
            }
        }
    }
    Ended::Ok
}
