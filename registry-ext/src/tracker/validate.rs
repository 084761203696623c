//! Checks of what a peer announces (network input): refused whole, before anything changes.

use std::collections::HashMap;
use std::net::SocketAddr;

use shoal_p2p::tracker::proto::{BlobHave, ChunkSet};
use shoal_p2p::Digest;

use super::{MAX_BLOBS_PER_PEER, MAX_CHUNKS_PER_BLOB, MAX_PEER_ID_LEN, SEEDER_ID_PREFIX};
use crate::Error;

pub(super) fn bad<T>(reason: String) -> Result<T, Error> {
    Err(Error::BadRequest(format!("announce: {reason}")))
}

/// Checks an announce's peer id and address.
pub(super) fn validate_peer(id: &str, addr: SocketAddr) -> Result<(), Error> {
    if id.is_empty() || id.len() > MAX_PEER_ID_LEN || id.chars().any(char::is_control) {
        return bad(format!(
            "peer_id {id:?} must be 1..={MAX_PEER_ID_LEN} printable characters"
        ));
    }
    if id.starts_with(SEEDER_ID_PREFIX) {
        return bad(format!(
            "peer_id {id:?}: the prefix {SEEDER_ID_PREFIX:?} is reserved for the seeder"
        ));
    }
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return bad(format!(
            "peer {id}: addr {addr} must name a specific IP and a port other than 0"
        ));
    }
    Ok(())
}

/// What a peer announced of one blob, decoded.
#[derive(Debug)]
pub(super) struct Announced {
    /// The chunks held.
    pub set: ChunkSet,
    /// The chunks being fetched, when any.
    pub fetching: Option<ChunkSet>,
}

/// Checks an announce's blobs and returns them, decoded.
pub(super) fn validate_blobs(
    id: &str,
    list: &[BlobHave],
) -> Result<HashMap<Digest, Announced>, Error> {
    if list.len() > MAX_BLOBS_PER_PEER {
        return bad(format!(
            "peer {id}: {} blobs listed, at most {MAX_BLOBS_PER_PEER}",
            list.len()
        ));
    }
    let mut blobs = HashMap::with_capacity(list.len());
    for b in list {
        if b.chunks > MAX_CHUNKS_PER_BLOB {
            return bad(format!(
                "peer {id}: blob {} has {} chunks, at most {MAX_CHUNKS_PER_BLOB}",
                b.digest, b.chunks
            ));
        }
        let set: ChunkSet = match b.set() {
            Ok(s) => s,
            Err(e) => return bad(format!("peer {id}: blob {}: {e}", b.digest)),
        };
        let fetching = match b.fetching_set() {
            Ok(s) if s.count() > 0 => Some(s),
            Ok(_) => None,
            Err(e) => return bad(format!("peer {id}: blob {} fetching: {e}", b.digest)),
        };
        if blobs
            .insert(b.digest.clone(), Announced { set, fetching })
            .is_some()
        {
            return bad(format!("peer {id}: blob {} listed twice", b.digest));
        }
    }
    Ok(blobs)
}
