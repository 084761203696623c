//! The mirror path end to end on an emulated cluster (see `shoal_integration::cluster`):
//! four nodes, each with its own containerd 1.6 using containerd's own overlayfs snapshotter,
//! and shoald with the swarm and the registry mirror on; each node's CRI `config_path` holds
//! the hosts.toml the harness wrote for the registry, merged by `shoald hosts` (shoald's
//! mirror first, the registry after it).
//!
//! All four pull one image at once: two through CRI (`shoald pull`, as kubelet), one with
//! `ctr images pull --hosts-dir`, one through CRI with `discard_unpacked_layers = true`.
//! Asserted: every node's layers equal those of a plain containerd pull, every node's blobs
//! went through its mirror, the registry served at most 1.3 times the image (the nodes fed
//! each other through the swarm), the discarding node kept no layer blob. Then one node's
//! shoald is killed and it pulls another image: containerd falls back to the registry.
//!
//! A second test runs containerd 2.1 (whatever `SHOAL_CONTAINERD` says) with
//! `concurrent_layer_fetch_buffer` set, so containerd fetches every blob as parallel Range
//! requests: the mirror serves them from the swarm (206), on both CRI pull paths.
//!
//! Needs root, iproute2, docker-registry, skopeo, containerd, and the workspace's binaries
//! (`cargo build --workspace` first, as `cargo test --workspace` does).

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use shoal_integration::cluster::{self, random_layers, Cluster, ClusterConfig, NodeMode};
use shoal_integration::containerd::find_flavor;
use shoal_integration::tools::skip_because;

const MBIT: u64 = 200;
const TIMEOUT: Duration = Duration::from_secs(600);

#[test]
fn nodes_pull_through_their_mirrors_and_the_swarm() -> Result<()> {
    if !cluster::available() {
        return Ok(());
    }
    let mut cluster = Cluster::start(ClusterConfig::new(MBIT))?;
    let image = cluster.push_image("mirror/app", "v1", random_layers(3, 24 << 20, 11)?)?;
    let later = cluster.push_image("mirror/later", "v1", random_layers(1, 2 << 20, 12)?)?;
    cluster.cap_registry()?;
    let reference = cluster.reference(&image)?;
    let plain = NodeMode::Mirror {
        discard_unpacked_layers: false,
    };
    let mut nodes = cluster.add_nodes(3, plain)?;
    nodes.extend(cluster.add_nodes(
        1,
        NodeMode::Mirror {
            discard_unpacked_layers: true,
        },
    )?);

    let before = cluster.registry_served();
    let barrier = std::sync::Barrier::new(nodes.len());
    let results: Vec<Result<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|&i| {
                let (node, barrier, image) = (cluster.node(i), &barrier, &image.reference);
                s.spawn(move || {
                    barrier.wait();
                    if i == 2 {
                        node.ctr_pull(image, TIMEOUT)
                    } else {
                        node.pull(image, TIMEOUT)
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("pull thread panicked")))
            .collect()
    });
    let served = cluster.registry_served().since(&before);

    let mib = |b: f64| b / (1 << 20) as f64;
    eprintln!(
        "image: {} layers, {:.1} MiB; {} nodes at {MBIT} Mbit/s",
        image.layers.len(),
        mib(image.bytes as f64),
        nodes.len()
    );
    for (&i, r) in nodes.iter().zip(&results) {
        let node = cluster.node(i);
        let through_mirror = node
            .metrics()
            .map(|m| m.sum("shoal_mirror_blob_sent_bytes_total", &[]))
            .unwrap_or(0.0);
        eprintln!(
            "  {} ({}): {}; mirror sent {:.1} MiB; {}",
            node.name(),
            if i == 2 { "ctr --hosts-dir" } else { "CRI" },
            match r {
                Ok(t) => format!("{:.2} s", t.as_secs_f64()),
                Err(_) => "FAILED".into(),
            },
            mib(through_mirror),
            node.swarm_summary()
        );
    }
    eprintln!(
        "registry served {:.1} MiB ({} blob GETs) = {:.2} x the image",
        mib(served.total() as f64),
        served.blob_gets,
        served.total() as f64 / image.bytes as f64
    );
    cluster::pulls_succeeded(&nodes, &results)?;
    cluster.verify(&image, &reference, &nodes)?;
    for &i in &nodes {
        let node = cluster.node(i);
        let sent = node
            .metrics()?
            .sum("shoal_mirror_blob_sent_bytes_total", &[]);
        ensure!(
            sent >= image.layer_bytes() as f64,
            "{}: its mirror sent {sent} bytes, less than the layers ({})",
            node.name(),
            image.layer_bytes()
        );
    }
    let limit = 1.3 * image.bytes as f64;
    ensure!(
        served.total() as f64 <= limit,
        "the registry served {} bytes, more than 1.3 x the image ({} bytes): {served:#?}",
        served.total(),
        image.bytes
    );
    // containerd's garbage collector removes the discarded blobs once the pull's lease is
    // gone, in the background: wait for it.
    let discarding = cluster.node(nodes[3]);
    let kept = || -> Vec<String> {
        let content = discarding.cri().content_digests().unwrap_or_default();
        image
            .layers
            .iter()
            .map(|l| l.digest.to_string())
            .filter(|d| content.contains(d))
            .collect()
    };
    Cluster::wait_until(Duration::from_secs(30), || kept().is_empty());
    let kept = kept();
    ensure!(
        kept.is_empty(),
        "discard_unpacked_layers: layers {kept:?} still in the content store"
    );

    // shoald down: containerd falls back to the next host, the registry.
    let node = nodes[1];
    cluster.node(node).kill_shoald()?;
    let took = cluster.node(node).pull(&later.reference, TIMEOUT)?;
    eprintln!(
        "  {} pulled {} with shoald killed in {:.2} s",
        cluster.node(node).name(),
        later.reference,
        took.as_secs_f64()
    );
    cluster.passed();
    Ok(())
}

/// containerd 2.1 with `concurrent_layer_fetch_buffer` (1 MiB) asks the mirror for every
/// blob as parallel `Range: bytes=N-` requests; the mirror answers them from the swarm (206),
/// so the nodes still feed each other and the registry serves about one copy. Both CRI pull
/// paths: the transfer service and the local pull.
#[test]
fn containerd_2_1_parallel_range_fetches_go_through_the_swarm() -> Result<()> {
    if !cluster::available() {
        return Ok(());
    }
    for name in ["2.1", "2.1-local"] {
        let flavor = match find_flavor(name) {
            Ok(f) => f,
            Err(e) => {
                skip_because(&format!("{e:#}"));
                return Ok(());
            }
        };
        eprintln!("== {}", flavor.describe());
        let mut cluster = Cluster::start(ClusterConfig {
            fetch_buffer: Some(1 << 20),
            containerd: Some(flavor),
            ..ClusterConfig::new(MBIT)
        })?;
        let image = cluster.push_image("range/app", "v1", random_layers(3, 16 << 20, 21)?)?;
        cluster.cap_registry()?;
        let reference = cluster.reference(&image)?;
        let nodes = cluster.add_nodes(
            2,
            NodeMode::Mirror {
                discard_unpacked_layers: false,
            },
        )?;
        let before = cluster.registry_served();
        let results: Vec<Result<Duration>> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|&i| {
                    let (node, image) = (cluster.node(i), &image.reference);
                    s.spawn(move || node.pull(image, TIMEOUT))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| bail!("pull thread panicked")))
                .collect()
        });
        let served = cluster.registry_served().since(&before);
        cluster::pulls_succeeded(&nodes, &results)?;
        cluster.verify(&image, &reference, &nodes)?;
        for &i in &nodes {
            let node = cluster.node(i);
            let m = node.metrics()?;
            let ranges = m.sum("shoal_mirror_requests_total", &[("route", "range")]);
            let sent = m.sum("shoal_mirror_blob_sent_bytes_total", &[]);
            eprintln!(
                "  {}: {ranges} range requests answered, mirror sent {sent} bytes; {}",
                node.name(),
                node.swarm_summary()
            );
            ensure!(
                ranges >= image.layers.len() as f64,
                "{}: the mirror answered {ranges} range requests ({name}):\n{}",
                node.name(),
                m.show("shoal_mirror")
            );
            ensure!(
                sent >= image.layer_bytes() as f64,
                "{}: its mirror sent {sent} bytes, less than the layers ({})",
                node.name(),
                image.layer_bytes()
            );
        }
        eprintln!(
            "  registry served {} bytes = {:.2} x the image",
            served.total(),
            served.total() as f64 / image.bytes as f64
        );
        ensure!(
            served.total() as f64 <= 1.3 * image.bytes as f64,
            "the registry served {} bytes, more than 1.3 x the image ({} bytes): {served:#?}",
            served.total(),
            image.bytes
        );
        cluster.passed();
    }
    Ok(())
}
