//! Unpacking a whole image from its registry: every layer streamed from the registry through
//! the unpacker into its own directory, several layers at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::{RegistryClient, ResolvedImage};
use shoal_p2p::Digest;
use tokio::sync::Semaphore;

use crate::unpack::{unpack_stream, LayerSpec, UnpackOptions, UnpackStats};
use crate::Error;

/// What happened to one layer.
#[derive(Debug)]
pub struct LayerReport {
    /// Position in the manifest, 0 for the bottom layer.
    pub index: usize,
    pub digest: Digest,
    pub media_type: String,
    /// Where the layer was unpacked (overlayfs format).
    pub dir: PathBuf,
    pub stats: UnpackStats,
    /// From the first request to the registry to the rename of the finished directory.
    pub elapsed: Duration,
}

impl LayerReport {
    /// Compressed bytes per second over the layer's whole fetch and unpack.
    pub fn throughput(&self) -> f64 {
        self.stats.compressed_bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The directory of layer `index` of the image under `dest`.
pub fn layer_dir(dest: &Path, index: usize, digest: &Digest) -> PathBuf {
    dest.join(format!("{index:03}-{}", &digest.hex()[..12]))
}

/// Streams every layer of `image` from the registry and unpacks it into its own directory
/// under `dest` ([`layer_dir`]), at most `concurrency` layers at a time. `on_done` is called
/// as each layer finishes. Each layer's compressed digest and diff ID are verified.
pub async fn unpack_image(
    client: &RegistryClient,
    image: &ResolvedImage,
    dest: &Path,
    concurrency: usize,
    mut on_done: impl FnMut(&LayerReport),
) -> Result<Vec<LayerReport>, Error> {
    std::fs::create_dir_all(dest).map_err(|source| Error::Io {
        path: dest.to_path_buf(),
        source,
    })?;
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let dirs: Vec<PathBuf> = image
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| layer_dir(dest, i, &l.digest))
        .collect();
    for (index, layer) in image.layers.iter().enumerate() {
        let client = client.clone();
        let reference: ImageReference = image.reference.clone();
        let spec = LayerSpec {
            digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
            media_type: layer.media_type.clone(),
        };
        let target = dirs[index].clone();
        // Lower layers, top-most first: where implicit parent directories take their
        // attributes from, as containerd does.
        let options = UnpackOptions {
            parents: dirs[..index].iter().rev().cloned().collect(),
        };
        let limit = limit.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore never closed");
            let start = Instant::now();
            let stream = client
                .blob(&reference, &spec.digest, None)
                .await?
                .map_err(std::io::Error::other);
            let stats = unpack_stream(stream, &spec, &target, &options).await?;
            Ok::<_, Error>(LayerReport {
                index,
                digest: spec.digest,
                media_type: spec.media_type,
                dir: target,
                stats,
                elapsed: start.elapsed(),
            })
        });
    }
    let mut reports = Vec::with_capacity(image.layers.len());
    while let Some(joined) = tasks.join_next().await {
        let report = joined.map_err(|source| Error::Task {
            what: "unpacking a layer",
            source,
        })??;
        on_done(&report);
        reports.push(report);
    }
    reports.sort_by_key(|r| r.index);
    Ok(reports)
}
