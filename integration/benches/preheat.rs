//! Preheat makespan: one preheat job warming two images onto two node groups (through the
//! coordinator, each node pulling via CRI through shoal's swarm) against pulling the same
//! images node by node with plain containerd (overlayfs snapshotter, its own downloads), in
//! the same run on the same emulated cluster (`shoal_integration::cluster`). Reported, not
//! asserted. Needs root, iproute2, docker-registry, skopeo, containerd.
//!
//!     cargo build --release --workspace && cargo bench -p shoal-integration --bench preheat
//!
//! (or, small and without a release build: `cargo build --workspace && cargo test -p
//! shoal-integration --bench preheat`, which runs it on the debug binaries).
//!
//! Environment:
//! - `SHOAL_BENCH_NODES` (default 8, even): nodes; half get label group=a and image A, half
//!   group=b and image B. Each node's link is capped both ways at `SHOAL_BENCH_MBIT`
//!   (default 100) Mbit/s, and so is what the registry namespace sends.
//! - `SHOAL_BENCH_IMAGE_MIB` (default 64): each image, four layers of incompressible files;
//!   A and B share their bottom layer.
//! - `SHOAL_BENCH_JSON` (default `target/preheat-bench.json`): the results as JSON.
//!
//! Makespan of the preheat job: from the submit to the job's end (every node has its image),
//! as the coordinator logged it and as measured here. Baseline: fresh nodes with plain
//! containerd, one node at a time, each pulling its group's image (CRI `PullImage` through
//! `shoald pull`); its makespan is the sum.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use shoal_integration::bench::{env_or, json_path};
use shoal_integration::cluster::preheat::{block_on, wait_job, wait_nodes_up};
use shoal_integration::cluster::{self, random_layers, Cluster, ClusterConfig, NodeMode};
use shoal_p2p::preheat::proto::{JobSpec, JobState, Target};

const TOKEN: &str = "preheat-bench-token-0123456789";

fn main() -> Result<()> {
    let nodes: usize = env_or("SHOAL_BENCH_NODES", 8);
    let mbit: u64 = env_or("SHOAL_BENCH_MBIT", 100);
    let image_mib: usize = env_or("SHOAL_BENCH_IMAGE_MIB", 64);
    if nodes < 2 || nodes % 2 != 0 {
        bail!("SHOAL_BENCH_NODES must be even and at least 2");
    }
    let mut config = ClusterConfig::new(mbit);
    config.preheat_token = Some(TOKEN.into());
    if !cluster::available() {
        bail!("needs root, iproute2, docker-registry, skopeo, containerd and the workspace's binaries: run scripts/install-deps.sh as root and build the workspace");
    }
    let mut cluster = Cluster::start(config)?;
    let layers_a = random_layers(4, image_mib << 20, 21)?;
    let mut layers_b = random_layers(4, image_mib << 20, 22)?;
    layers_b[0] = layers_a[0].clone();
    let a = cluster.push_image("bench/preheat-a", "v1", layers_a)?;
    let b = cluster.push_image("bench/preheat-b", "v1", layers_b)?;
    cluster.cap_registry()?;
    let half = nodes / 2;
    eprintln!(
        "images: A {:.1} MB, B {:.1} MB (sharing one layer); {nodes} nodes in 2 groups, {mbit} Mbit/s",
        a.bytes as f64 / 1e6,
        b.bytes as f64 / 1e6
    );

    // The preheat job.
    let mut group_a = cluster.add_preheat_nodes(half, &[("group", "a")])?;
    let group_b = cluster.add_preheat_nodes(half, &[("group", "b")])?;
    let admin = cluster.preheat_client(Some(TOKEN))?;
    wait_nodes_up(&admin, nodes, Duration::from_secs(120))?;
    let target = |image: &str, group: &str| Target {
        images: vec![image.to_owned()],
        selector: [("group".to_string(), group.to_string())].into(),
        nodes: vec![],
    };
    let spec = JobSpec {
        targets: vec![target(&a.reference, "a"), target(&b.reference, "b")],
    };
    let before = cluster.registry_served();
    let start = Instant::now();
    let job = block_on(admin.submit(&spec))??;
    let done = wait_job(&admin, &job.id, Duration::from_secs(3600))?;
    let preheat_secs = start.elapsed().as_secs_f64();
    let preheat_served = cluster.registry_served().since(&before);
    ensure!(done.state == JobState::Done, "preheat job: {done:#?}");
    let logged_secs =
        done.finished_ms.unwrap_or(done.created_ms) as f64 / 1e3 - done.created_ms as f64 / 1e3;
    eprintln!("preheat: {preheat_secs:.2} s (coordinator: {logged_secs:.2} s)");
    group_a.extend(group_b);
    cluster.remove_nodes();

    // The baseline: plain containerd, node by node.
    let native = cluster.add_nodes(nodes, NodeMode::Native)?;
    let before = cluster.registry_served();
    let start = Instant::now();
    let mut each = Vec::new();
    for (k, &i) in native.iter().enumerate() {
        let image = if k < half { &a.reference } else { &b.reference };
        each.push(cluster.node(i).pull(image, Duration::from_secs(3600))?);
    }
    let native_secs = start.elapsed().as_secs_f64();
    let native_served = cluster.registry_served().since(&before);
    eprintln!("node by node: {native_secs:.2} s");

    println!("\n{nodes} nodes in 2 groups, {mbit} Mbit/s each, images {image_mib} MiB");
    println!("{:<26} {:>10} {:>14}", "run", "makespan", "registry MB");
    println!(
        "{:<26} {:>9.2}s {:>14.1}",
        "preheat job (swarm)",
        preheat_secs,
        preheat_served.total() as f64 / 1e6
    );
    println!(
        "{:<26} {:>9.2}s {:>14.1}",
        "node by node (containerd)",
        native_secs,
        native_served.total() as f64 / 1e6
    );
    println!(
        "preheat / node by node: {:.3} (makespan), {:.3} (registry bytes)",
        preheat_secs / native_secs,
        preheat_served.total() as f64 / native_served.total().max(1) as f64
    );
    let report = json!({
        "nodes": nodes,
        "mbit": mbit,
        "image_a_bytes": a.bytes,
        "image_b_bytes": b.bytes,
        "preheat_makespan_secs": preheat_secs,
        "preheat_coordinator_secs": logged_secs,
        "preheat_registry_bytes": preheat_served.total(),
        "node_by_node_makespan_secs": native_secs,
        "node_by_node_each_secs": each.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
        "node_by_node_registry_bytes": native_served.total(),
        "ratio": preheat_secs / native_secs,
    });
    let path = json_path("preheat-bench.json")?;
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {path:?}"))?;
    println!("results: {}", path.display());
    cluster.passed();
    Ok(())
}
