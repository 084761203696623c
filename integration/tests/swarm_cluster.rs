//! The swarm end to end on an emulated cluster (see `shoal_integration::cluster`): a registry
//! namespace (docker-registry + shoal-registry-ext, its egress capped at 200 Mbit/s) and
//! eight nodes, each its own namespace with a 200 Mbit/s link and its own containerd 1.6 and
//! shoald (swarm on, mutual TLS from a test CA). An image of four layers of incompressible
//! data (32 MiB) is pulled by all eight nodes at once, through CRI as kubelet does.
//!
//! Asserted: every node's layers equal the ones containerd's own pull makes, containerd
//! downloaded no layer itself, and the registry served at most 1.2 times the image (layer
//! blobs, config and manifest): the nodes fed each other; of that, shoal-registry-ext (the
//! first seeder) read at most the image once. The numbers are printed.
//!
//! Needs root, iproute2, docker-registry, skopeo, containerd, and the workspace's binaries
//! (`cargo build --workspace` first, as `cargo test --workspace` does).

use std::time::Duration;

use anyhow::{bail, Result};
use shoal_integration::cluster::{self, random_layers, Cluster, ClusterConfig, NodeMode};

const NODES: usize = 8;
const MBIT: u64 = 200;

/// The tests run one at a time: on two cores they would skew each other's numbers.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn eight_nodes_pull_one_image_at_once_through_the_swarm() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let config = ClusterConfig::new(MBIT);
    if !cluster::available() {
        return Ok(());
    }
    let mut cluster = Cluster::start(config)?;
    let image = cluster.push_image("swarm/eight", "v1", random_layers(4, 32 << 20, 1)?)?;
    cluster.cap_registry()?;
    let reference = cluster.reference(&image)?;
    let nodes = cluster.add_nodes(NODES, NodeMode::Swarm)?;

    let before = cluster.registry_served();
    let link_before = cluster.registry_link_sent()?;
    let results = cluster.pull_all(&image.reference, &nodes, Duration::from_secs(900));
    let served = cluster.registry_served().since(&before);
    let link = cluster.registry_link_sent()? - link_before;

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "image: {} layers, {:.1} MiB ({:.1} MiB of layer blobs); {NODES} nodes at {MBIT} Mbit/s",
        image.layers.len(),
        mib(image.bytes),
        mib(image.layer_bytes())
    );
    for (i, r) in nodes.iter().zip(&results) {
        let node = cluster.node(*i);
        eprintln!(
            "  {} {}: {}; {}",
            node.name(),
            node.ip(),
            match r {
                Ok(t) => format!("{:.2} s", t.as_secs_f64()),
                Err(_) => "FAILED".into(),
            },
            node.swarm_summary()
        );
    }
    eprintln!(
        "registry served {:.1} MiB ({} blob GETs, {:.1} MiB of blobs, {:.2} MiB of manifests) = {:.2} x the image; by client: {}",
        mib(served.total()),
        served.blob_gets,
        mib(served.blob_bytes),
        mib(served.manifest_bytes),
        served.total() as f64 / image.bytes as f64,
        served
            .blob_bytes_by_client
            .iter()
            .map(|(ip, b)| format!("{} {:.1} MiB", cluster.who(ip), mib(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!(
        "registry namespace sent {:.1} MiB on its link (registry + registry-ext seeding and tracker)",
        mib(link)
    );
    if let Some(ext) = cluster.registry_ext() {
        if let Ok(m) = cluster::Metrics::scrape(&ext.metrics_addr()) {
            eprintln!("registry-ext metrics:\n{}", m.show("shoal_"));
        }
    }

    cluster::pulls_succeeded(&nodes, &results)?;
    cluster.verify(&image, &reference, &nodes)?;
    // The first seeder: shoal-registry-ext (in the registry's namespace, so its reads come
    // from the registry's own address) read each layer from the registry once, however many
    // nodes pulled; its seed cache served the rest.
    let ext_read = served
        .blob_bytes_by_client
        .get(cluster.registry_ip())
        .copied()
        .unwrap_or(0);
    if ext_read > image.bytes {
        bail!(
            "shoal-registry-ext read {ext_read} bytes of blobs from the registry, more than the \
             image ({} bytes): {served:#?}",
            image.bytes
        );
    }
    let limit = 1.2 * image.bytes as f64;
    if served.total() as f64 > limit {
        bail!(
            "the registry served {} bytes, more than 1.2 x the image ({} bytes): {served:#?}",
            served.total(),
            image.bytes
        );
    }
    cluster.passed();
    Ok(())
}

/// The harness itself, swarm off: nodes in their namespaces pull straight from the registry
/// (two through shoal's snapshotter, one with containerd's own), their layers check out, and
/// the registry's access-log count agrees with what crossed its link.
#[test]
fn namespaced_nodes_pull_from_the_registry_and_its_egress_is_counted() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut config = ClusterConfig::new(MBIT);
    config.registry_ext = false;
    if !cluster::available() {
        return Ok(());
    }
    let mut cluster = Cluster::start(config)?;
    let image = cluster.push_image("harness/direct", "v1", random_layers(3, 6 << 20, 9)?)?;
    cluster.cap_registry()?;
    let reference = cluster.reference(&image)?;
    let mut nodes = cluster.add_nodes(2, NodeMode::Shoal)?;
    nodes.extend(cluster.add_nodes(1, NodeMode::Native)?);

    let before = cluster.registry_served();
    let link_before = cluster.registry_link_sent()?;
    let results = cluster.pull_all(&image.reference, &nodes, Duration::from_secs(300));
    let served = cluster.registry_served().since(&before);
    let link = cluster.registry_link_sent()? - link_before;
    for r in results {
        r?;
    }
    cluster.verify(&image, &reference, &nodes)?;
    eprintln!(
        "3 nodes: registry served {} bytes of blobs ({} GETs), {} of manifests; its link carried {link}; layers are {} bytes",
        served.blob_bytes,
        served.blob_gets,
        served.manifest_bytes,
        image.layer_bytes()
    );
    // Every node fetched every layer once, and the configs (a few hundred bytes each).
    let layers = 3 * image.layer_bytes();
    assert!(
        served.blob_bytes >= layers && served.blob_bytes <= layers + 64 * 1024,
        "{served:#?}"
    );
    assert_eq!(served.blob_bytes_by_client.len(), 3, "{served:#?}");
    // What crossed the wire: the bodies plus headers, TCP/IP overhead (a few percent).
    assert!(
        link >= served.total() && (link as f64) < 1.1 * served.total() as f64,
        "link {link}, served {}",
        served.total()
    );
    cluster.passed();
    Ok(())
}
