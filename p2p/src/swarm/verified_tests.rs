//! Checked whole-blob fetches ([`BlobSource::fetch_verified_as`]): a blob downloaded through
//! the swarm is hashed once, by its download, and its checked stream ends only once that
//! hash matched the blob's digest; any wrong byte ends it with an error instead.

use bytes::Bytes;
use futures::StreamExt;

use super::tests::{addr, blob, committed, manifest_of, peer_entry, rig, Behaviour, CHUNK};
use super::*;

/// Every item of a checked fetch of `digest`.
async fn checked_items(
    swarm: &Swarm,
    image: &ImageReference,
    digest: &Digest,
) -> Vec<Result<Bytes, Error>> {
    let stream = swarm.fetch_verified(image, digest).await.unwrap();
    stream.into_stream().collect().await
}

fn bytes_of(items: &[Result<Bytes, Error>]) -> Vec<u8> {
    items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .flat_map(|b| b.to_vec())
        .collect()
}

#[tokio::test]
async fn a_checked_fetch_through_the_swarm_ends_once_the_blob_matched() {
    let rig = rig();
    let data = blob(9 * CHUNK as usize + 77, 31);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    for i in [2, 3] {
        rig.peers.add(addr(i), Behaviour::Good, &data);
        rig.tracker.add_peer(digest.clone(), peer_entry(i, &data));
    }
    let items = checked_items(&rig.swarm, &rig.image, &digest).await;
    assert!(
        items.iter().all(Result::is_ok),
        "{:?}",
        items.iter().find(|i| i.is_err())
    );
    assert_eq!(bytes_of(&items), data);
    committed(&rig, &digest).await;
    // From the peers, not hashed on the way from a registry.
    assert_eq!(rig.registry.fetches_of(&digest), 0);
    assert_eq!(rig.registry.range_bytes_of(&digest), 0);
    // Then from the cache, checked as it is read.
    let items = checked_items(&rig.swarm, &rig.image, &digest).await;
    assert!(items.iter().all(Result::is_ok));
    assert_eq!(bytes_of(&items), data);
}

#[tokio::test]
async fn a_blob_whose_chunks_match_but_whole_does_not_ends_its_checked_fetch_with_an_error() {
    let rig = rig();
    let data = blob(5 * CHUNK as usize + 3, 32);
    let digest = Digest::of(&data);
    // A chunk manifest that lies about the blob: its chunks are those of other bytes, which
    // the registry serves (every chunk matches the manifest), but the whole does not hash to
    // the blob's digest.
    let mut other = data.clone();
    other[2 * CHUNK as usize + 10] ^= 1;
    let mut lying = manifest_of(&other);
    lying.digest = digest.clone();
    rig.tracker.add_manifest(lying);
    rig.registry.add_as(digest.clone(), &other);

    let items = checked_items(&rig.swarm, &rig.image, &digest).await;
    let last = items.last().expect("items");
    let e = last
        .as_ref()
        .expect_err("the checked fetch ended without an error");
    assert!(matches!(e, Error::Swarm { .. }), "{e}");
    assert!(e.to_string().contains("sha256"), "{e}");
    // Every chunk had arrived (the wrong byte is in the whole, not in a chunk).
    assert_eq!(bytes_of(&items), other);
    assert!(!rig.swarm.cache().contains(&digest));
}

#[tokio::test]
async fn a_checked_fetch_of_a_failing_download_ends_with_its_error() {
    let rig = rig();
    let data = blob(4 * CHUNK as usize, 33);
    let digest = Digest::of(&data);
    // A wrong byte in a chunk: it fails its hash against the chunk manifest, every time.
    let mut corrupt = data.clone();
    corrupt[3 * CHUNK as usize + 5] ^= 0x80;
    rig.registry.add_as(digest.clone(), &corrupt);
    rig.tracker.add_manifest(manifest_of(&data));
    let items = checked_items(&rig.swarm, &rig.image, &digest).await;
    assert!(
        matches!(items.last(), Some(Err(_))),
        "ended without an error"
    );
    let got = bytes_of(&items);
    assert!(got.len() <= 3 * CHUNK as usize, "{} bytes", got.len());
    assert!(data.starts_with(&got));
    assert!(!rig.swarm.cache().contains(&digest));
}
