//! `shoald pull`: pull an image through containerd's CRI `ImageService/PullImage`, exactly the
//! call kubelet makes, and show what is happening while it runs.
//!
//! CRI has no progress stream, so while `PullImage` is in flight shoald polls containerd's own
//! gRPC API on the same socket: the content store's ingests (`content.v1 ListStatuses` in the
//! `k8s.io` namespace) are the blobs containerd is downloading right now. Layers that shoal's
//! snapshotter streams itself never show up there (containerd never downloads them), so the
//! report after the pull lists every layer of the image from its manifest either way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetImageRequest, ListStatusesRequest, ReadContentRequest};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Request, Status};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{ImageSpec, ImageStatusRequest, PullImageRequest};

use crate::report::human_bytes;

/// The containerd namespace the CRI plugin keeps its images in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// What can go wrong in `shoald pull`.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The socket could not be connected to.
    #[error("connecting to {path:?}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: containerd_client::tonic::transport::Error,
    },
    /// A CRI or containerd call failed.
    #[error("{call} {image}: {status}")]
    Call {
        call: &'static str,
        image: String,
        #[source]
        status: Status,
    },
    /// The pull did not finish in time.
    #[error("pulling {image}: no answer after {timeout:?}")]
    Timeout { image: String, timeout: Duration },
    /// The image names no target manifest.
    #[error("manifest {image}: image has no target")]
    NoTarget { image: String },
    /// A manifest in containerd's content store is neither a manifest nor an index with
    /// this host's platform.
    #[error("manifest {digest}: neither a manifest nor an index with linux/{arch}")]
    NoPlatform { digest: String, arch: String },
    /// Indexes in containerd's content store nest deeper than the pull follows.
    #[error("manifest {digest}: indexes nested too deep")]
    TooDeep { digest: String },
    /// A manifest in containerd's content store is not JSON.
    #[error("manifest {digest}: {source}")]
    Manifest {
        digest: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One blob containerd is downloading, from `ListStatuses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingest {
    /// The ingest ref, e.g. `layer-sha256:...` or `manifest-sha256:...`.
    pub reference: String,
    /// Bytes written so far.
    pub offset: i64,
    /// Expected size (0 when unknown).
    pub total: i64,
}

/// One layer of the pulled image, from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    pub digest: String,
    pub size: i64,
    pub media_type: String,
}

/// The result of a pull.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    /// `PullImageResponse.image_ref` (containerd answers with the image ID, `sha256:...`).
    pub image_ref: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Image size as CRI reports it (uncompressed layers).
    pub size: u64,
    /// The image's layers for this platform, bottom first (empty if they could not be read).
    pub layers: Vec<LayerInfo>,
    pub elapsed: Duration,
}

/// Connects a tonic channel to the unix socket `path`.
pub async fn connect(path: &Path) -> Result<Channel, CriError> {
    containerd_client::connect(path)
        .await
        .map_err(|source| CriError::Connect {
            path: path.to_owned(),
            source,
        })
}

fn namespaced<T>(message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert(
        "containerd-namespace",
        containerd_client::tonic::metadata::MetadataValue::from_static(CRI_NAMESPACE),
    );
    req
}

/// The blobs containerd is ingesting right now in [`CRI_NAMESPACE`], by ref.
pub async fn list_ingests(channel: Channel) -> Result<Vec<Ingest>, Status> {
    let statuses = ContentClient::new(channel)
        .list_statuses(namespaced(ListStatusesRequest { filters: vec![] }))
        .await?
        .into_inner()
        .statuses;
    Ok(statuses
        .into_iter()
        .map(|s| Ingest {
            reference: s.r#ref,
            offset: s.offset,
            total: s.total,
        })
        .collect())
}

/// Calls CRI `PullImage` for `image` on `address` and waits for it (at most `timeout`),
/// calling `on_progress` about four times a second with the elapsed time and containerd's current
/// ingests while it runs. Then asks CRI `ImageStatus` and reads the layer list from
/// containerd's content store.
pub async fn pull(
    address: &Path,
    image: &str,
    timeout: Duration,
    mut on_progress: impl FnMut(Duration, &[Ingest]),
) -> Result<PullOutcome, CriError> {
    let channel = connect(address).await?;
    let start = Instant::now();
    let mut cri = ImageServiceClient::new(channel.clone());
    let spec = ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    };
    let call = cri.pull_image(PullImageRequest {
        image: Some(spec.clone()),
        auth: None,
        sandbox_config: None,
    });
    tokio::pin!(call);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let response = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = &mut deadline => {
                return Err(CriError::Timeout { image: image.to_owned(), timeout });
            }
            _ = tick.tick() => {
                // Progress is best effort: an older containerd or a denied call shows none.
                let ingests = list_ingests(channel.clone()).await.unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "content ListStatuses");
                    Vec::new()
                });
                on_progress(start.elapsed(), &ingests);
            }
        }
    };
    let image_ref = response
        .map_err(|status| CriError::Call {
            call: "PullImage",
            image: image.to_owned(),
            status,
        })?
        .into_inner()
        .image_ref;
    let elapsed = start.elapsed();
    let status = ImageServiceClient::new(channel.clone())
        .image_status(ImageStatusRequest {
            image: Some(spec),
            verbose: false,
        })
        .await
        .map_err(|status| CriError::Call {
            call: "ImageStatus",
            image: image.to_owned(),
            status,
        })?
        .into_inner()
        .image
        .unwrap_or_default();
    let layers = image_layers(channel, image).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading the image's layers from containerd");
        Vec::new()
    });
    Ok(PullOutcome {
        image_ref,
        repo_tags: status.repo_tags,
        repo_digests: status.repo_digests,
        size: status.size,
        layers,
        elapsed,
    })
}

/// The layers (bottom first) of `image` as stored in containerd's [`CRI_NAMESPACE`]: its
/// target's manifest, or for an index the manifest for this host's platform.
pub async fn image_layers(channel: Channel, image: &str) -> Result<Vec<LayerInfo>, CriError> {
    let call_err = |call: &'static str| {
        let image = image.to_owned();
        move |status| CriError::Call {
            call,
            image,
            status,
        }
    };
    // CRI stores images under their normalized name (docker.io/library/... for short names).
    let target = ImagesClient::new(channel.clone())
        .get(namespaced(GetImageRequest {
            name: image.to_owned(),
        }))
        .await
        .map_err(call_err("images.Get"))?
        .into_inner()
        .image
        .and_then(|i| i.target)
        .ok_or_else(|| CriError::NoTarget {
            image: image.to_owned(),
        })?;
    let mut digest = target.digest;
    for _ in 0..4 {
        let doc: serde_json::Value = {
            let bytes = read_blob(channel.clone(), &digest)
                .await
                .map_err(call_err("content.Read"))?;
            serde_json::from_slice(&bytes).map_err(|source| CriError::Manifest {
                digest: digest.clone(),
                source,
            })?
        };
        if let Some(layers) = doc.get("layers").and_then(|l| l.as_array()) {
            return Ok(layers
                .iter()
                .map(|l| LayerInfo {
                    digest: str_field(l, "digest"),
                    size: l.get("size").and_then(|s| s.as_i64()).unwrap_or(0),
                    media_type: str_field(l, "mediaType"),
                })
                .collect());
        }
        let manifests = doc.get("manifests").and_then(|m| m.as_array());
        let arch = shoal_p2p::registry::Platform::host().architecture;
        let pick = manifests.and_then(|ms| {
            ms.iter().find(|m| {
                let p = &m["platform"];
                p["os"].as_str() == Some("linux") && p["architecture"].as_str() == Some(&arch)
            })
        });
        match pick {
            Some(m) => digest = str_field(m, "digest"),
            None => return Err(CriError::NoPlatform { digest, arch }),
        }
    }
    Err(CriError::TooDeep { digest })
}

fn str_field(v: &serde_json::Value, key: &str) -> String {
    v.get(key)
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_owned()
}

async fn read_blob(channel: Channel, digest: &str) -> Result<Vec<u8>, Status> {
    let mut stream = ContentClient::new(channel)
        .read(namespaced(ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        }))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// Prints progress lines while a pull runs: a line for every ingest that moved since the
/// last call, one when an ingest finished, and an elapsed-time line every second otherwise.
#[derive(Default)]
pub struct ProgressPrinter {
    seen: BTreeMap<String, Ingest>,
    last_line: Option<Duration>,
}

impl ProgressPrinter {
    /// The lines to print for this poll (also used by tests).
    pub fn update(&mut self, elapsed: Duration, ingests: &[Ingest]) -> Vec<String> {
        let mut lines = Vec::new();
        let now: BTreeMap<String, Ingest> = ingests
            .iter()
            .map(|i| (i.reference.clone(), i.clone()))
            .collect();
        for (reference, was) in &self.seen {
            if !now.contains_key(reference) {
                lines.push(format!(
                    "{:>6.1}s  {:<32}  done ({})",
                    elapsed.as_secs_f64(),
                    short_ref(reference),
                    human_bytes(was.total.max(was.offset) as u64)
                ));
            }
        }
        for (reference, i) in &now {
            if self.seen.get(reference) != Some(i) {
                let pct = if i.total > 0 {
                    format!("{:>3}%", i.offset * 100 / i.total)
                } else {
                    "   ?".into()
                };
                lines.push(format!(
                    "{:>6.1}s  {:<32}  {pct}  {} / {}",
                    elapsed.as_secs_f64(),
                    short_ref(reference),
                    human_bytes(i.offset as u64),
                    human_bytes(i.total as u64)
                ));
            }
        }
        let quiet_for = self.last_line.map(|t| elapsed.saturating_sub(t));
        if lines.is_empty() && quiet_for.is_none_or(|q| q >= Duration::from_secs(1)) {
            lines.push(format!(
                "{:>6.1}s  pulling ({} downloads in progress)",
                elapsed.as_secs_f64(),
                now.len()
            ));
        }
        if !lines.is_empty() {
            self.last_line = Some(elapsed);
        }
        self.seen = now;
        lines
    }
}

/// `layer-sha256:0123456789ab…` from a long ingest ref (which may carry a namespace prefix).
fn short_ref(reference: &str) -> String {
    let r = reference.rsplit('/').next().unwrap_or(reference);
    match r.find("sha256:") {
        Some(pos) if r.len() > pos + 7 + 12 => format!("{}…", &r[..pos + 7 + 12]),
        _ => r.to_owned(),
    }
}

/// `shoald pull`: pulls `image` through CRI on `address`, printing progress and then the image
/// and its layers to stdout.
pub async fn pull_command(address: &Path, image: &str, timeout: Duration) -> Result<(), CriError> {
    println!("pulling {image} through CRI at {}", address.display());
    let mut printer = ProgressPrinter::default();
    let outcome = pull(address, image, timeout, |elapsed, ingests| {
        for line in printer.update(elapsed, ingests) {
            println!("{line}");
        }
    })
    .await?;
    println!(
        "pulled {image} in {:.2} s: image {}",
        outcome.elapsed.as_secs_f64(),
        outcome.image_ref
    );
    for tag in &outcome.repo_tags {
        println!("  tag     {tag}");
    }
    for digest in &outcome.repo_digests {
        println!("  digest  {digest}");
    }
    println!("  size    {}", human_bytes(outcome.size));
    for (i, l) in outcome.layers.iter().enumerate() {
        println!(
            "  layer {i:>2}  {}  {:>10}  {}",
            l.digest,
            human_bytes(l.size.max(0) as u64),
            l.media_type
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest(reference: &str, offset: i64, total: i64) -> Ingest {
        Ingest {
            reference: reference.into(),
            offset,
            total,
        }
    }

    #[test]
    fn progress_reports_moves_and_completions() {
        let mut p = ProgressPrinter::default();
        let l1 = format!("layer-sha256:{}", "a".repeat(64));
        let first = p.update(Duration::from_millis(500), &[ingest(&l1, 10, 100)]);
        assert_eq!(first.len(), 1);
        assert!(first[0].contains(" 10%"), "{first:?}");
        assert!(first[0].contains("layer-sha256:aaaaaaaaaaaa…"), "{first:?}");
        // Unchanged and less than a second since the last line: nothing.
        assert!(p
            .update(Duration::from_millis(1000), &[ingest(&l1, 10, 100)])
            .is_empty());
        // Unchanged for a second: the elapsed ticker.
        let tick = p.update(Duration::from_millis(1600), &[ingest(&l1, 10, 100)]);
        assert_eq!(tick.len(), 1);
        assert!(tick[0].contains("1 downloads in progress"), "{tick:?}");
        // Gone from the ingests: done.
        let done = p.update(Duration::from_millis(2100), &[]);
        assert_eq!(done.len(), 1);
        assert!(done[0].contains("done (100 B)"), "{done:?}");
    }

    #[test]
    fn short_refs() {
        assert_eq!(short_ref("manifest-sha256:abc"), "manifest-sha256:abc");
        assert_eq!(
            short_ref(&format!(
                "k8s.io/1/layer-sha256:{}",
                "0123456789abcdef".repeat(4)
            )),
            "layer-sha256:0123456789ab…"
        );
    }
}
