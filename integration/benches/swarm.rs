//! Many nodes pulling one image at once: through shoal's swarm against containerd's own
//! pulls straight from the registry, on an emulated cluster (`shoal_integration::cluster`).
//! Reported, not asserted. Needs root, iproute2, docker-registry, skopeo, containerd.
//!
//!     cargo build --release --workspace && cargo bench -p shoal-integration --bench swarm
//!
//! Environment:
//! - `SHOAL_BENCH_NODES` (default 16): nodes, each its own network namespace with a link
//!   capped both ways at `SHOAL_BENCH_MBIT` (default 100) Mbit/s, its own containerd 1.6 and
//!   shoald; the registry namespace (docker-registry + shoal-registry-ext) sends at the same
//!   rate B.
//! - `SHOAL_BENCH_IMAGE_MIB` (default 64): the image, four layers of incompressible files.
//! - `SHOAL_BENCH_MODES` (default `swarm,native`): the runs, in order, each on fresh nodes
//!   with empty caches (`swarm`: shoal's snapshotter through the swarm; `native`: containerd's
//!   overlayfs snapshotter and its own downloads; `shoal`: shoal's snapshotter straight from
//!   the registry, no swarm).
//! - `SHOAL_BENCH_VERIFY` (default 1): check every node's layers against a reference pull.
//! - `SHOAL_BENCH_JSON` (default `target/swarm-bench.json`): where the results go as JSON.
//!
//! Every run pulls on all nodes at once (CRI `PullImage` through `shoald pull`, as kubelet)
//! and reports each node's pull time (p50, p95, max, and as a multiple of F/B, F the image's
//! bytes and B one node's bandwidth: the time one node alone needs at best), and what the
//! registry served (from its access log) as a multiple of F. The native run's bound is
//! N*F/B: the registry's link carries every node's copy.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use shoal_integration::bench::{env_or, json_path};
use shoal_integration::cluster::{
    self, percentile, random_layers, Cluster, ClusterConfig, NodeMode,
};

fn mode_name(mode: NodeMode) -> &'static str {
    match mode {
        NodeMode::Swarm => "swarm",
        NodeMode::Shoal => "shoal",
        NodeMode::Native => "native",
        NodeMode::Mirror { .. } => "mirror",
    }
}

struct Run {
    mode: NodeMode,
    times: Vec<Duration>,
    served: cluster::Served,
    link_bytes: u64,
    peer_bytes: f64,
    registry_chunk_bytes: f64,
}

fn main() -> Result<()> {
    let nodes: usize = env_or("SHOAL_BENCH_NODES", 16);
    let mbit: u64 = env_or("SHOAL_BENCH_MBIT", 100);
    let image_mib: usize = env_or("SHOAL_BENCH_IMAGE_MIB", 64);
    let verify: u32 = env_or("SHOAL_BENCH_VERIFY", 1);
    let modes: Vec<NodeMode> = std::env::var("SHOAL_BENCH_MODES")
        .unwrap_or_else(|_| "swarm,native".into())
        .split(',')
        .map(|m| match m.trim() {
            "swarm" => Ok(NodeMode::Swarm),
            "shoal" => Ok(NodeMode::Shoal),
            "native" => Ok(NodeMode::Native),
            other => bail!("SHOAL_BENCH_MODES: unknown mode {other:?} (swarm, shoal, native)"),
        })
        .collect::<Result<_>>()?;
    let mut config = ClusterConfig::new(mbit);
    config.registry_ext = modes.contains(&NodeMode::Swarm);
    if !cluster::available() {
        bail!("needs root, iproute2, docker-registry, skopeo, containerd and the workspace's release binaries: run scripts/install-deps.sh as root and `cargo build --release --workspace`");
    }

    let mut cluster = Cluster::start(config)?;
    let image = cluster.push_image("bench/swarm", "v1", random_layers(4, image_mib << 20, 3)?)?;
    cluster.cap_registry()?;
    let reference = if verify != 0 {
        Some(cluster.reference(&image)?)
    } else {
        None
    };
    let f_over_b = image.bytes as f64 * 8.0 / (mbit as f64 * 1e6);
    eprintln!(
        "image: {} layers, {:.1} MB; {nodes} nodes, B = {mbit} Mbit/s per node and at the registry: F/B = {f_over_b:.2} s",
        image.layers.len(),
        image.bytes as f64 / 1e6
    );

    let mut runs = Vec::new();
    for &mode in &modes {
        let which = cluster.add_nodes(nodes, mode)?;
        let before = cluster.registry_served();
        let link_before = cluster.registry_link_sent()?;
        eprintln!("{}: {nodes} nodes pulling at once...", mode_name(mode));
        let results = cluster.pull_all(&image.reference, &which, Duration::from_secs(3600));
        let served = cluster.registry_served().since(&before);
        let link_bytes = cluster.registry_link_sent()? - link_before;
        let mut times = Vec::new();
        for (i, r) in which.iter().zip(results) {
            times.push(r.with_context(|| format!("{} run, node {i}", mode_name(mode)))?);
        }
        if let Some(reference) = &reference {
            cluster.verify(&image, reference, &which)?;
        }
        let (peer_bytes, registry_chunk_bytes) = if mode == NodeMode::Swarm {
            (
                cluster.metric_sum(
                    &which,
                    "shoal_swarm_received_bytes_total",
                    &[("source", "peer")],
                ),
                cluster.metric_sum(
                    &which,
                    "shoal_swarm_received_bytes_total",
                    &[("source", "registry")],
                ),
            )
        } else {
            (0.0, 0.0)
        };
        eprintln!(
            "{}: max {:.2} s, registry served {:.1} MB",
            mode_name(mode),
            percentile(&times, 100.0).as_secs_f64(),
            served.total() as f64 / 1e6
        );
        runs.push(Run {
            mode,
            times,
            served,
            link_bytes,
            peer_bytes,
            registry_chunk_bytes,
        });
        cluster.remove_nodes();
    }

    println!(
        "\n{nodes} nodes, {mbit} Mbit/s each, image {:.1} MB, F/B = {f_over_b:.2} s",
        image.bytes as f64 / 1e6
    );
    println!(
        "{:<8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>13} {:>9} {:>13}",
        "run", "p50", "p95", "max", "p50/FB", "max/FB", "registry MB", "x image", "reg. link MB"
    );
    let mut out = Vec::new();
    for r in &runs {
        let (p50, p95, max) = (
            percentile(&r.times, 50.0).as_secs_f64(),
            percentile(&r.times, 95.0).as_secs_f64(),
            percentile(&r.times, 100.0).as_secs_f64(),
        );
        println!(
            "{:<8} {:>8.2}s {:>8.2}s {:>8.2}s {:>7.2}x {:>7.2}x {:>13.1} {:>8.2}x {:>13.1}",
            mode_name(r.mode),
            p50,
            p95,
            max,
            p50 / f_over_b,
            max / f_over_b,
            r.served.total() as f64 / 1e6,
            r.served.total() as f64 / image.bytes as f64,
            r.link_bytes as f64 / 1e6,
        );
        out.push(json!({
            "mode": mode_name(r.mode),
            "times_secs": r.times.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
            "p50_secs": p50,
            "p95_secs": p95,
            "max_secs": max,
            "p50_over_f_over_b": p50 / f_over_b,
            "p95_over_f_over_b": p95 / f_over_b,
            "max_over_f_over_b": max / f_over_b,
            "registry_served_bytes": r.served.total(),
            "registry_blob_bytes": r.served.blob_bytes,
            "registry_blob_gets": r.served.blob_gets,
            "registry_served_over_image": r.served.total() as f64 / image.bytes as f64,
            "registry_link_sent_bytes": r.link_bytes,
            "swarm_peer_bytes": r.peer_bytes,
            "swarm_registry_bytes": r.registry_chunk_bytes,
        }));
    }
    if let (Some(s), Some(n)) = (
        runs.iter().find(|r| r.mode == NodeMode::Swarm),
        runs.iter().find(|r| r.mode == NodeMode::Native),
    ) {
        println!(
            "swarm / native: p50 {:.2}, max {:.2}; registry bytes {:.3}",
            percentile(&s.times, 50.0).as_secs_f64() / percentile(&n.times, 50.0).as_secs_f64(),
            percentile(&s.times, 100.0).as_secs_f64() / percentile(&n.times, 100.0).as_secs_f64(),
            s.served.total() as f64 / n.served.total().max(1) as f64
        );
    }
    let report = json!({
        "nodes": nodes,
        "mbit": mbit,
        "image_bytes": image.bytes,
        "image_layers": image.layers.len(),
        "f_over_b_secs": f_over_b,
        "runs": out,
    });
    let path = json_path("swarm-bench.json")?;
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {path:?}"))?;
    println!("results: {}", path.display());
    cluster.passed();
    Ok(())
}
