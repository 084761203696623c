//! The `.torrent` files: made by librqbit from a blob's bytes, and read back.

use std::path::Path;

use bytes::Bytes;
use librqbit::dht::Id20;
use librqbit::spawn_utils::BlockingSpawner;
use librqbit::CreateTorrentOptions;
use shoal_p2p::Digest;

use super::{torrent_err, torrent_name};
use crate::Error;

/// The `.torrent` of blob `digest` whose bytes are the file `data`: BitTorrent v1, a single
/// file named `sha256-<hex>`, pieces of `piece_length`, no announce URL, the digest as its
/// comment. Made by librqbit (which reads and hashes the file).
pub async fn torrent_file(
    data: &Path,
    digest: &Digest,
    piece_length: u32,
    spawner: &BlockingSpawner,
) -> Result<Bytes, Error> {
    let name = torrent_name(digest);
    let made = librqbit::create_torrent(
        data,
        CreateTorrentOptions {
            name: Some(&name),
            trackers: Vec::new(),
            piece_length: Some(piece_length),
        },
        spawner,
    )
    .await
    .map_err(torrent_err(format!("hashing {}", data.display())))?;
    let mut meta = made.meta;
    // Trackerless: no announce URL, not even an empty tier.
    meta.announce_list.clear();
    meta.comment = Some(digest.to_string().into_bytes().into());
    meta.created_by = Some(librqbit::client_name_and_version().as_bytes().into());
    librqbit::CreateTorrentResult {
        meta,
        output_folder: made.output_folder,
    }
    .as_bytes()
    .map_err(torrent_err("encoding a .torrent"))
}

/// The info hash and data length of `.torrent` `bytes`, if it is a single-file torrent named
/// after `digest`.
pub(super) fn parse(digest: &Digest, bytes: &[u8]) -> Result<(Id20, u64), Error> {
    let meta = librqbit::torrent_from_bytes(bytes).map_err(|source| Error::Torrent {
        what: format!("reading the .torrent of {digest}"),
        source: source.into(),
    })?;
    let info = &meta.info.data;
    let name = info.name.as_ref().map(|n| n.as_ref().to_vec());
    match info.length {
        Some(length) if name.as_deref() == Some(torrent_name(digest).as_bytes()) => {
            Ok((meta.info_hash, length))
        }
        _ => Err(Error::TorrentShape {
            digest: digest.clone(),
            name: torrent_name(digest),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_torrent_describes_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let piece = 16 << 10;
        // Two whole pieces and a short one.
        let data: Vec<u8> = (0..(2 * piece + 1000)).map(|i| (i % 253) as u8).collect();
        let digest = Digest::of(&data);
        let path = dir.path().join(torrent_name(&digest));
        std::fs::write(&path, &data).unwrap();
        let bytes = torrent_file(&path, &digest, piece as u32, &BlockingSpawner::new(1))
            .await
            .unwrap();
        let meta = librqbit::torrent_from_bytes(&bytes).unwrap();
        let info = &meta.info.data;
        assert_eq!(
            info.name.as_ref().map(|n| n.as_ref().to_vec()),
            Some(format!("sha256-{}", digest.hex()).into_bytes())
        );
        assert_eq!(info.length, Some(data.len() as u64));
        assert!(info.files.is_none(), "a single-file torrent");
        assert_eq!(info.piece_length, piece as u32);
        assert_eq!(info.pieces.as_ref().len(), 3 * 20);
        // The pieces are SHA-1s of the blob's bytes, the last one short.
        let sha1 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, b)
                .as_ref()
                .to_vec()
        };
        assert_eq!(&info.pieces.as_ref()[..20], &sha1(&data[..piece])[..]);
        assert_eq!(&info.pieces.as_ref()[40..], &sha1(&data[2 * piece..])[..]);
        assert!(meta.announce.is_none());
        assert_eq!(meta.iter_announce().count(), 0, "trackerless");
        assert_eq!(
            meta.comment.as_ref().map(|c| c.as_ref().to_vec()),
            Some(digest.to_string().into_bytes())
        );
        // The bytes name the info hash librqbit computes from them.
        let again = torrent_file(&path, &digest, piece as u32, &BlockingSpawner::new(1))
            .await
            .unwrap();
        assert_eq!(
            librqbit::torrent_from_bytes(&again).unwrap().info_hash,
            meta.info_hash
        );
    }
}
