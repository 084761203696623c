//! The swarm under faults, on an emulated cluster (see `shoal_integration::cluster`) of four
//! nodes with 50 Mbit/s links and a registry side sending at 50 Mbit/s, an image of three
//! layers of incompressible data (24 MiB). Each test is its own cluster; they run one at a
//! time (they would starve each other on two cores).
//!
//! - a seeding node's shoald killed (SIGKILL) while it uploads to the others: they complete,
//!   with correct layers, and the killed shoald restarts on its state;
//! - a corrupt peer (`shoal-badpeer`: announces every chunk, serves wrong bytes over real
//!   mutual TLS): every node completes with correct layers, the bad chunks are caught by
//!   their hashes;
//! - the registry extension (tracker, manifests, seeder) killed mid-pull: the pulls complete
//!   (falling back to the registry) with correct layers;
//! - a client with a certificate from another CA, or with none, asking a node's chunk server
//!   for a chunk gets nothing (the TLS handshake is refused) while a cluster client gets the
//!   right bytes and the other nodes' pulls complete.
//!
//! Needs root, iproute2, docker-registry, skopeo, containerd, and the workspace's binaries
//! (`cargo build --workspace` first, as `cargo test --workspace` does).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_integration::cluster::{
    self, fetch_chunk, random_layers, Cluster, ClusterConfig, Image, NodeMode, Reference,
};

const NODES: usize = 4;
const MBIT: u64 = 50;
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Setup {
    cluster: Cluster,
    image: Image,
    reference: Reference,
    nodes: Vec<usize>,
}

/// A cluster of `nodes` swarm nodes with the test image pushed and its reference trees made;
/// `None` (after a SKIP line) when the tools are missing.
fn setup(repo: &str, nodes: usize) -> Result<Option<Setup>> {
    let config = ClusterConfig::new(MBIT);
    if !cluster::available() {
        return Ok(None);
    }
    let mut cluster = Cluster::start(config)?;
    let image = cluster.push_image(repo, "v1", random_layers(3, 24 << 20, 2)?)?;
    cluster.cap_registry()?;
    let reference = cluster.reference(&image)?;
    let nodes = cluster.add_nodes(nodes, NodeMode::Swarm)?;
    Ok(Some(Setup {
        cluster,
        image,
        reference,
        nodes,
    }))
}

/// Fails with every failed pull; prints the times.
fn check_pulls(label: &str, which: &[usize], results: &[Result<Duration>]) -> Result<()> {
    let times: Vec<String> = which
        .iter()
        .zip(results)
        .map(|(i, r)| match r {
            Ok(t) => format!("node-{i} {:.2} s", t.as_secs_f64()),
            Err(_) => format!("node-{i} FAILED"),
        })
        .collect();
    eprintln!("{label}: {}", times.join(", "));
    cluster::pulls_succeeded(which, results)
}

fn report_metrics(cluster: &Cluster, which: &[usize]) {
    for &i in which {
        let node = cluster.node(i);
        eprintln!("  {}: {}", node.name(), node.swarm_summary());
    }
}

#[test]
fn a_seeder_killed_mid_upload_does_not_stop_the_others() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(Setup {
        mut cluster,
        image,
        reference,
        nodes,
    }) = setup("faults/seeder-killed", NODES)?
    else {
        return Ok(());
    };
    let (seeder, others) = (nodes[0], &nodes[1..]);
    check_pulls(
        "seeder",
        &[seeder],
        &cluster.pull_all(&image.reference, &[seeder], PULL_TIMEOUT),
    )?;

    // The others pull; the seeder's shoald dies once it has uploaded a chunk or two.
    let uploaded = |c: &Cluster| c.metric_sum(&[seeder], "shoal_upload_sent_bytes_total", &[]);
    let started = Instant::now();
    let (results, killed_at) = std::thread::scope(|s| {
        let pulls = s.spawn(|| cluster.pull_all(&image.reference, others, PULL_TIMEOUT));
        let seen = Cluster::wait_until(Duration::from_secs(60), || {
            uploaded(&cluster) >= (1 << 20) as f64 || pulls.is_finished()
        });
        let killed_at = (seen && !pulls.is_finished()).then(|| {
            let sent = uploaded(&cluster);
            cluster
                .node(seeder)
                .kill_shoald()
                .map(|()| (started.elapsed(), sent))
        });
        let results = pulls.join().expect("pull thread");
        (results, killed_at)
    });
    let (at, sent) = killed_at.context(
        "the seeder uploaded nothing before the others finished: the test proves nothing",
    )??;
    eprintln!(
        "seeder's shoald killed at {:.2} s, after uploading {:.1} MiB",
        at.as_secs_f64(),
        sent / (1 << 20) as f64
    );
    check_pulls("after the seeder died", others, &results)?;
    report_metrics(&cluster, others);
    cluster.verify(&image, &reference, others)?;

    // The killed shoald comes back on its state, still holding its layers.
    cluster.node_mut(seeder).restart_shoald()?;
    cluster.verify(&image, &reference, &[seeder])?;
    cluster.passed();
    Ok(())
}

#[test]
fn a_corrupt_peer_is_caught_and_every_node_completes() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(Setup {
        mut cluster,
        image,
        reference,
        nodes,
    }) = setup("faults/corrupt-peer", NODES)?
    else {
        return Ok(());
    };
    let bad = cluster.add_bad_peer(&image.blobs())?;
    let results = cluster.pull_all(&image.reference, &nodes, PULL_TIMEOUT);
    check_pulls("with a corrupt peer", &nodes, &results)?;
    report_metrics(&cluster, &nodes);
    cluster.verify(&image, &reference, &nodes)?;

    let served = cluster.bad_peer(bad).served();
    let hash_failures = cluster.metric_sum(
        &nodes,
        "shoal_swarm_chunk_failures_total",
        &[("reason", "hash")],
    );
    let dropped = cluster.metric_sum(&nodes, "shoal_swarm_peers_dropped_total", &[]);
    eprintln!(
        "the corrupt peer served {served} bad chunks; the nodes counted {hash_failures} hash \
         failures and dropped it {dropped} times"
    );
    if served == 0 {
        bail!(
            "no node asked the corrupt peer for a chunk (log {:?}): the test proves nothing",
            cluster.bad_peer(bad).log_path()
        );
    }
    if hash_failures < 1.0 && dropped < 1.0 {
        bail!("the corrupt peer served {served} bad chunks, but no node counted a hash failure or dropped it");
    }
    cluster.passed();
    Ok(())
}

#[test]
fn pulls_complete_when_the_registry_extension_dies_mid_pull() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(Setup {
        mut cluster,
        image,
        reference,
        nodes,
    }) = setup("faults/ext-killed", NODES)?
    else {
        return Ok(());
    };
    let received = |c: &Cluster| c.metric_sum(&nodes, "shoal_swarm_received_bytes_total", &[]);
    let started = Instant::now();
    let (results, killed_at) = std::thread::scope(|s| {
        let pulls = s.spawn(|| cluster.pull_all(&image.reference, &nodes, PULL_TIMEOUT));
        let seen = Cluster::wait_until(Duration::from_secs(60), || {
            received(&cluster) >= (1 << 20) as f64 || pulls.is_finished()
        });
        let killed_at = (seen && !pulls.is_finished()).then(|| {
            let got = received(&cluster);
            cluster
                .kill_registry_ext()
                .map(|()| (started.elapsed(), got))
        });
        (pulls.join().expect("pull thread"), killed_at)
    });
    let (at, got) = killed_at
        .context("the nodes received nothing through the swarm before they finished: the test proves nothing")??;
    eprintln!(
        "registry extension killed at {:.2} s, the nodes having received {:.1} MiB",
        at.as_secs_f64(),
        got / (1 << 20) as f64
    );
    check_pulls("after the registry extension died", &nodes, &results)?;
    report_metrics(&cluster, &nodes);
    cluster.verify(&image, &reference, &nodes)?;
    cluster.passed();
    Ok(())
}

#[test]
fn a_node_serves_chunks_only_to_holders_of_a_cluster_certificate() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(Setup {
        mut cluster,
        image,
        reference,
        nodes,
    }) = setup("faults/foreign-ca", 3)?
    else {
        return Ok(());
    };
    let (holder, others) = (nodes[0], &nodes[1..]);
    check_pulls(
        "holder",
        &[holder],
        &cluster.pull_all(&image.reference, &[holder], PULL_TIMEOUT),
    )?;
    let peer = cluster.node(holder).peer_addr();
    let layer = &image.layers[0];
    let (first, last) = (0u64, 65_535u64);

    // A member of the cluster gets the bytes (the server is there and holds them). The node
    // commits a blob to its cache just after its pull: wait for it.
    let member = cluster.pki().issue("tester")?;
    let mut answer = None;
    Cluster::wait_until(Duration::from_secs(20), || {
        answer = Some(fetch_chunk(
            &peer,
            &layer.digest,
            first,
            last,
            Some(&member),
        ));
        matches!(answer, Some(Ok((206, _))))
    });
    match answer.context("no answer")? {
        Ok((206, body)) => assert_eq!(
            body,
            layer.blob[first as usize..=last as usize],
            "the node served wrong bytes"
        ),
        other => bail!("a cluster member could not fetch a chunk from {peer}: {other:?}"),
    }

    let foreign = cluster.pki().foreign("intruder")?;
    for (who, tls) in [
        ("foreign-CA client", Some(&foreign)),
        ("client without a certificate", None),
    ] {
        match fetch_chunk(&peer, &layer.digest, first, last, tls) {
            Ok((status, body)) => bail!(
                "the {who} got an answer from {peer}: {status}, {} bytes",
                body.len()
            ),
            Err(e) => eprintln!("{who} refused, as it must be: {e:#}"),
        }
    }
    // The refusals happened in the handshake, on the node's side. The client has its alert
    // before the node writes its log line: give the line a moment.
    let log_path = cluster.node(holder).cri().shoald().log_path();
    let host = &cluster.node(holder).link().host_ip;
    let needle = format!("TLS handshake with {host}:");
    let mut refusals = 0;
    Cluster::wait_until(Duration::from_secs(10), || {
        refusals = std::fs::read_to_string(&log_path)
            .map(|log| log.lines().filter(|l| l.contains(&needle)).count())
            .unwrap_or(0);
        refusals >= 2
    });
    if refusals < 2 {
        bail!("the node logged {refusals} refused TLS handshakes from {host}, expected 2");
    }

    let results = cluster.pull_all(&image.reference, others, PULL_TIMEOUT);
    check_pulls("the others", others, &results)?;
    report_metrics(&cluster, others);
    cluster.verify(&image, &reference, &nodes)?;
    cluster.passed();
    Ok(())
}
