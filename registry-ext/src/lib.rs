//! shoal-registry-ext: runs beside an unmodified OCI registry (DESIGN "Components").
//!
//! - [`manifests`]: the chunk manifests the swarm checks every chunk against, made from blobs
//!   read from the registry with their digest verified, kept on disk, made once per blob.
//! - [`tracker`]: which peers hold which chunks, and peer lists ordered by measured spare
//!   upload capacity with randomness.
//! - [`server`]: `serve`, one mutual-TLS listener with the tracker, the manifest service and
//!   the first seeder's chunk route (the blobs read for manifests), plus `/metrics`.
//! - `torrent` (cargo feature `torrent`): the optional BitTorrent export, a v1 `.torrent` per
//!   seeded blob at `GET /v1/torrents/{digest}`, seeded by a librqbit session.
//! - [`notify`]: the push hook, where the registry's notifications arrive: chunk manifests
//!   made and the seed cache warmed on push.
//! - [`hot_cache`]: chunks of small, often requested blobs in memory in front of the seeder.
//! - [`super_seed`]: the seeder refuses a chunk it just sent, so the nodes trade it instead.
//! - [`preheat`]: the preheat coordinator (nodes, jobs, dispatch over heartbeats, redb store).
//! - [`config`]: the TOML configuration; [`metrics`]: Prometheus metrics; [`Error`]: the
//!   crate's error and its HTTP mapping.

pub mod bearer;
pub mod config;
mod error;
pub mod hot_cache;
pub mod manifests;
pub mod metrics;
pub mod notify;
pub mod preheat;
pub mod server;
pub mod super_seed;
#[cfg(feature = "torrent")]
pub mod torrent;
pub mod tracker;

use futures::StreamExt;
use shoal_p2p::chunk::{ChunkManifest, ChunkManifestBuilder};
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::RegistryClient;
use shoal_p2p::Digest;

pub use config::Config;
pub use error::Error;
pub use server::{serve, Listeners};

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
