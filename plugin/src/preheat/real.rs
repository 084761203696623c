//! The worker's real seams: CRI `PullImage` ([`CriPuller`]), the node's blobs
//! ([`NodeBlobs`]), and [`start`], which shoald's node calls.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::version_client::VersionClient;
use futures::future::BoxFuture;
use shoal_p2p::cache::BlobCache;
use shoal_p2p::preheat::proto::NodeInfo;
use shoal_p2p::preheat::{ClientAuth, PreheatClient};
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::{Platform, RegistryClient};
use shoal_p2p::swarm::Swarm;
use shoal_p2p::tls::{Role, Transport};
use shoal_p2p::Digest;
use tokio::task::JoinHandle;

use super::{kernel_release, lock, Ingests, LocalBlobs, Puller, Worker};
use crate::config::Config;

/// CRI `PullImage` on containerd's socket (see [`crate::cri::pull`]).
pub struct CriPuller {
    pub address: PathBuf,
    pub timeout: Duration,
}

impl Puller for CriPuller {
    fn pull(
        &self,
        image: String,
        ingests: Ingests,
    ) -> BoxFuture<'static, Result<(), crate::cri::CriError>> {
        let (address, timeout) = (self.address.clone(), self.timeout);
        Box::pin(async move {
            crate::cri::pull(&address, &image, timeout, |_, now| {
                let mut map = lock(&ingests);
                for i in now {
                    // Refs are "layer-sha256:HEX" and the like.
                    if let Some(pos) = i.reference.find("sha256:") {
                        let offset = u64::try_from(i.offset).unwrap_or(0);
                        map.insert(i.reference[pos..].to_string(), offset);
                    }
                }
            })
            .await
            .map(|_| ())
        })
    }

    fn version(&self) -> BoxFuture<'static, Option<String>> {
        let address = self.address.clone();
        Box::pin(async move {
            let channel = crate::cri::connect(&address).await.ok()?;
            let mut version = VersionClient::new(channel);
            let call = version.version(());
            let v = tokio::time::timeout(Duration::from_secs(2), call)
                .await
                .ok()?
                .ok()?;
            Some(v.into_inner().version)
        })
    }
}

/// The node's registry client (image manifests), blob cache and swarm (blobs held).
pub struct NodeBlobs {
    pub client: RegistryClient,
    pub cache: Option<BlobCache>,
    pub swarm: Option<Swarm>,
}

impl LocalBlobs for NodeBlobs {
    fn layers(
        &self,
        image: String,
    ) -> BoxFuture<'static, Result<Vec<(Digest, u64)>, shoal_p2p::Error>> {
        let client = self.client.clone();
        Box::pin(async move {
            let reference: ImageReference = image.parse().map_err(shoal_p2p::Error::Reference)?;
            let resolved = client.resolve(&reference, &Platform::host()).await?;
            Ok(resolved
                .layers
                .into_iter()
                .map(|l| (l.digest, l.size))
                .collect())
        })
    }

    fn held(&self, layers: &[(Digest, u64)]) -> Vec<u64> {
        let announce = self.swarm.as_ref().map(Swarm::announcement);
        layers
            .iter()
            .map(|(digest, size)| {
                if self.cache.as_ref().is_some_and(|c| c.contains(digest)) {
                    return *size;
                }
                let fetched = announce
                    .as_ref()
                    .and_then(|a| a.blobs.iter().find(|b| &b.digest == digest))
                    .and_then(|b| Some((b.set().ok()?.count(), b.chunks)));
                match fetched {
                    Some((have, chunks)) if chunks > 0 => {
                        size.saturating_mul(u64::from(have)) / u64::from(chunks)
                    }
                    _ => 0,
                }
            })
            .collect()
    }
}

/// Starts the worker when `[preheat] coordinator` is set, reporting to `health`; errors (TLS
/// files) are returned for the caller to report: preheat is optional, pulls work without it.
pub async fn start(
    config: &Config,
    node_name: String,
    client: RegistryClient,
    cache: Option<BlobCache>,
    swarm: Option<Swarm>,
    health: crate::health::Health,
) -> Result<Option<JoinHandle<()>>, crate::Error> {
    let p = &config.preheat;
    if p.coordinator.is_empty() {
        return Ok(None);
    }
    let transport = Transport::load(config.swarm.tls.as_ref(), config.swarm.insecure_plaintext)
        .map_err(shoal_p2p::Error::from)?;
    transport
        .require_role(Role::Node, "shoald's preheat worker")
        .map_err(shoal_p2p::Error::from)?;
    // Over TLS the coordinator accepts registrations only under the certificate's name.
    let node_name = match transport.identity() {
        Some(_) => crate::node::node_name(&config.swarm.node_name, &transport)?,
        None => node_name,
    };
    let coordinator = PreheatClient::new(
        &p.coordinator,
        &ClientAuth::Cluster(transport),
        Duration::from_secs(10),
    )?;
    let info = NodeInfo {
        name: node_name,
        labels: p.labels.clone(),
        kernel: kernel_release(),
        containerd: String::new(),
        shoal: env!("CARGO_PKG_VERSION").to_string(),
    };
    tracing::info!(coordinator = %p.coordinator, node = %info.name, labels = ?info.labels, "preheat worker starting");
    let worker = Worker::new(
        info,
        Arc::new(coordinator),
        Arc::new(CriPuller {
            address: p.containerd.clone(),
            timeout: Duration::from_secs(p.pull_timeout_secs),
        }),
        Arc::new(NodeBlobs {
            client,
            cache,
            swarm,
        }),
    )
    .with_health(health, p.coordinator.clone());
    Ok(Some(tokio::spawn(worker.run())))
}
