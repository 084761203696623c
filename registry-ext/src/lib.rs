//! shoal-registry-ext: runs beside an unmodified OCI registry. It makes the chunk manifests
//! the swarm checks every chunk against, from blobs it reads from the registry with their
//! digest verified.

use futures::StreamExt;
use shoal_p2p::chunk::{ChunkManifest, ChunkManifestBuilder, ChunkManifestError};
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::{RegistryClient, RegistryError};
use shoal_p2p::Digest;

/// The crate's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    ChunkManifest(#[from] ChunkManifestError),
}

/// Reads blob `digest` of `image`'s repository from the registry and makes its chunk manifest;
/// fails if the bytes do not hash to `digest`.
pub async fn chunk_manifest(
    client: &RegistryClient,
    image: &ImageReference,
    digest: &Digest,
    chunk_size: u64,
) -> Result<ChunkManifest, Error> {
    let mut builder = ChunkManifestBuilder::new(chunk_size)?;
    let mut stream = client.blob(image, digest, None).await?;
    while let Some(bytes) = stream.next().await {
        builder.update(&bytes?);
    }
    Ok(builder.finish(digest)?)
}
