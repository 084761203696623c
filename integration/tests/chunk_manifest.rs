//! shoal-registry-ext makes chunk manifests from blobs read from a real `docker-registry`,
//! checking the whole blob against its digest.

use anyhow::Result;
use shoal_integration::registry::TestRegistry;
use shoal_integration::tools::skip_unless;
use shoal_p2p::chunk::MIN_CHUNK_SIZE;
use shoal_p2p::reference::ImageReference;
use shoal_p2p::Digest;
use shoal_registry_ext::{chunk_manifest, Error};

#[tokio::test]
async fn chunk_manifest_of_a_pushed_blob() -> Result<()> {
    if skip_unless(&["docker-registry"], false) {
        return Ok(());
    }
    let registry = TestRegistry::start_anonymous()?;
    let blob: Vec<u8> = (0..MIN_CHUNK_SIZE as usize * 5 / 2)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    let digest = registry.push_blob("chunks/test", &blob).await?;
    let client = registry.plain_http_client()?;
    let image: ImageReference = format!("{}/chunks/test:any", registry.addr()).parse()?;

    let m = chunk_manifest(&client, &image, &digest, MIN_CHUNK_SIZE).await?;
    assert_eq!(m.digest, digest);
    assert_eq!(m.size, blob.len() as u64);
    assert_eq!(m.chunks.len(), 3);
    for (i, chunk) in m.chunks.iter().enumerate() {
        let r = m.chunk_range(i);
        assert_eq!(chunk, &Digest::of(&blob[r.start as usize..r.end as usize]));
    }

    // A blob the registry does not have: the registry's error, not a manifest.
    let missing = Digest::of(b"not pushed");
    let err = chunk_manifest(&client, &image, &missing, MIN_CHUNK_SIZE)
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::P2p(e) if e.is_not_found()), "{err}");
    // A chunk size out of range is refused before any request.
    let err = chunk_manifest(&client, &image, &digest, 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::P2p(shoal_p2p::Error::ChunkManifest(_))),
        "{err}"
    );
    Ok(())
}
