//! Preheat end to end on an emulated cluster (see `shoal_integration::cluster`): the
//! registry namespace runs docker-registry and shoal-registry-ext with its preheat
//! coordinator on (mutual-TLS main listener, bearer-token admin listener); four nodes, each
//! its own namespace with containerd 1.6 and shoald (swarm and preheat worker on), two with
//! the label group=a and two with group=b.
//!
//! Asserted, in one cluster:
//! - submits without a token, with a wrong token, or to the main listener without a
//!   cluster certificate are refused;
//! - a job (submitted with `shoald preheat submit --per-node-file --watch`) warming image A
//!   on group a and image B on group b (A and B share their bottom layer) finishes: every
//!   node then has exactly its group's image in containerd's CRI namespace, with layers
//!   equal to a plain containerd's pull; the registry served about one copy of each image;
//! - a node whose shoald is killed mid-job is reported failed with "node down" while the
//!   others finish;
//! - a job naming an image the registry does not have fails with the reason;
//! - a running job cancelled with `shoald preheat cancel` reads cancelled;
//! - after a registry-ext restart, the nodes and the jobs with their logs are still there.
//!
//! Needs root, iproute2, docker-registry, skopeo, containerd, and the workspace's binaries.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use shoal_integration::cluster::preheat::{block_on, wait_job, wait_nodes_up, CliAuth};
use shoal_integration::cluster::{self, random_layers, Cluster, ClusterConfig};
use shoal_p2p::preheat::proto::{JobSpec, JobState, Target, TaskState};

const MBIT: u64 = 200;
const TOKEN: &str = "preheat-test-token-0123456789";

/// Image references CRI lists for `node` (tags, not digests or IDs).
fn images_on(cluster: &Cluster, node: usize) -> Result<BTreeSet<String>> {
    let out = cluster.node(node).cri().ctr(&["images", "ls", "-q"])?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains('@') && !l.starts_with("sha256:"))
        .map(str::to_owned)
        .collect())
}

#[test]
fn preheat_two_groups_kill_a_node_bad_image_cancel_and_restart() -> Result<()> {
    let mut config = ClusterConfig::new(MBIT);
    config.preheat_token = Some(TOKEN.into());
    if !cluster::available() {
        return Ok(());
    }
    let mut cluster = Cluster::start(config)?;
    let layers_a = random_layers(3, 24 << 20, 11)?;
    let mut layers_b = random_layers(3, 24 << 20, 12)?;
    layers_b[0] = layers_a[0].clone();
    let shared = layers_a[0].blob.len() as u64;
    let a = cluster.push_image("preheat/a", "v1", layers_a)?;
    let b = cluster.push_image("preheat/b", "v1", layers_b)?;
    let big = cluster.push_image("preheat/big", "v1", random_layers(4, 96 << 20, 13)?)?;
    let late = cluster.push_image("preheat/late", "v1", random_layers(4, 96 << 20, 14)?)?;
    cluster.cap_registry()?;
    let ref_a = cluster.reference(&a)?;
    let ref_b = cluster.reference(&b)?;
    let mut nodes = cluster.add_preheat_nodes(2, &[("group", "a")])?;
    nodes.extend(cluster.add_preheat_nodes(2, &[("group", "b")])?);
    let admin = cluster.preheat_client(Some(TOKEN))?;
    let listed = wait_nodes_up(&admin, 4, Duration::from_secs(60))?;
    eprintln!(
        "nodes:\n{}",
        String::from_utf8_lossy(
            &cluster
                .preheat_cli(&["nodes"], CliAuth::Token(TOKEN))?
                .stdout
        )
    );
    ensure!(listed
        .nodes
        .iter()
        .all(|n| !n.info.kernel.is_empty() && n.info.shoal == env!("CARGO_PKG_VERSION")));

    // Unauthenticated submits are refused.
    let spec = JobSpec {
        targets: vec![Target {
            images: vec![a.reference.clone()],
            selector: [("group".to_string(), "a".to_string())].into(),
            nodes: vec![],
        }],
    };
    let wrong = cluster.preheat_client(Some("wrong-token-0123456789abcdef"))?;
    let e = block_on(wrong.submit(&spec))?.unwrap_err();
    ensure!(e.status() == Some(401), "wrong token: {e}");
    let bare = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
            cluster.pki().ca(),
        )?)?)
        .tls_built_in_root_certs(false)
        .build()?;
    let url = format!("{}/v1/preheat/jobs", cluster.preheat_admin_url());
    let status = block_on(bare.post(&url).json(&spec).send())??.status();
    ensure!(status == 401, "no token: {status}");
    let main = format!("{}/v1/preheat/jobs", cluster.preheat_url());
    ensure!(
        block_on(bare.post(&main).json(&spec).send())?.is_err(),
        "the main listener took a request without a client certificate"
    );
    let out = cluster.preheat_cli(
        &["preheat", "jobs"],
        CliAuth::Token("wrong-token-0123456789abcdef"),
    )?;
    ensure!(
        !out.status.success(),
        "the CLI with a wrong token succeeded"
    );
    ensure!(
        block_on(admin.jobs())??.jobs.is_empty(),
        "a refused submit made a job"
    );

    // Two groups, two images, one job, through the command line.
    let per_node = cluster.dir().join("per-node.txt");
    let mut lines = String::new();
    for &i in &nodes {
        let image = if i < 2 { &a.reference } else { &b.reference };
        lines.push_str(&format!("{} {image}\n", cluster.node(i).name()));
    }
    std::fs::write(&per_node, lines)?;
    let before = cluster.registry_served();
    let out = cluster.preheat_cli(
        &[
            "preheat",
            "submit",
            "--per-node-file",
            per_node.to_str().context("path")?,
            "--watch",
        ],
        CliAuth::Certificate,
    )?;
    let served = cluster.registry_served().since(&before);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "preheat submit --watch failed");
    let job = block_on(admin.job("1"))??;
    ensure!(
        job.state == JobState::Done && job.groups.len() == 2,
        "{job:#?}"
    );
    for &i in &nodes {
        let want = if i < 2 { &a.reference } else { &b.reference };
        let have = images_on(&cluster, i)?;
        ensure!(
            have == BTreeSet::from([want.clone()]),
            "{}: images {have:?}, want {want}",
            cluster.node(i).name()
        );
    }
    cluster.verify(&a, &ref_a, &nodes[..2])?;
    cluster.verify(&b, &ref_b, &nodes[2..])?;
    let one_copy = a.bytes + b.bytes - shared;
    eprintln!(
        "registry served {} bytes for the job; one copy of each image is {one_copy}",
        served.total()
    );
    ensure!(
        (served.total() as f64) <= 1.3 * one_copy as f64,
        "the registry served {} bytes, more than 1.3 x {one_copy}: {served:#?}",
        served.total()
    );

    // A node killed mid-job is reported failed; the others finish.
    let spec = JobSpec {
        targets: vec![Target {
            images: vec![big.reference.clone()],
            selector: Default::default(),
            nodes: nodes
                .iter()
                .map(|&i| cluster.node(i).name().to_string())
                .collect(),
        }],
    };
    let job = block_on(admin.submit(&spec))??;
    let victim = nodes[3];
    let victim_name = cluster.node(victim).name().to_string();
    let started = cluster::Cluster::wait_until(Duration::from_secs(120), || {
        block_on(admin.job(&job.id))
            .ok()
            .and_then(|r| r.ok())
            .is_some_and(|j| {
                j.tasks.iter().any(|t| {
                    t.node == victim_name && t.state == TaskState::Pulling && t.bytes_done > 0
                })
            })
    });
    ensure!(started, "{victim_name} never started pulling");
    cluster.node(victim).kill_shoald()?;
    let done = wait_job(&admin, &job.id, Duration::from_secs(600))?;
    let out = cluster.preheat_cli(
        &["preheat", "status", &job.id, "--log"],
        CliAuth::Token(TOKEN),
    )?;
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    ensure!(!out.status.success(), "status of a failed job exits 0");
    for t in &done.tasks {
        if t.node == victim_name {
            ensure!(
                t.state == TaskState::Failed && t.error.as_deref() == Some("node down"),
                "{t:?}"
            );
        } else {
            ensure!(t.state == TaskState::Done, "{t:?}");
        }
    }
    ensure!(done.state == JobState::Failed);

    // A bad image reference fails with the reason.
    let missing = format!("{}/preheat/missing:v1", cluster.registry_addr());
    let spec = JobSpec {
        targets: vec![Target {
            images: vec![missing],
            selector: [("group".to_string(), "a".to_string())].into(),
            nodes: vec![],
        }],
    };
    let job = block_on(admin.submit(&spec))??;
    let done = wait_job(&admin, &job.id, Duration::from_secs(120))?;
    ensure!(
        done.state == JobState::Failed && done.tasks.len() == 2,
        "{done:#?}"
    );
    for t in &done.tasks {
        let reason = t.error.as_deref().unwrap_or("");
        ensure!(
            reason.contains("not found"),
            "{}: reason {reason:?}",
            t.node
        );
    }

    // A running job cancelled from the command line: its unfinished tasks are cancelled
    // and the nodes stop pulling.
    let spec = JobSpec {
        targets: vec![Target {
            images: vec![late.reference.clone()],
            selector: [("group".to_string(), "a".to_string())].into(),
            nodes: vec![],
        }],
    };
    let job = block_on(admin.submit(&spec))??;
    let pulling = Cluster::wait_until(Duration::from_secs(60), || {
        block_on(admin.job(&job.id))
            .ok()
            .and_then(|r| r.ok())
            .is_some_and(|j| j.count(TaskState::Pulling) > 0)
    });
    ensure!(pulling, "job {} never started", job.id);
    let out = cluster.preheat_cli(&["preheat", "cancel", &job.id], CliAuth::Certificate)?;
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    ensure!(
        out.status.success(),
        "preheat cancel failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cancelled = block_on(admin.job(&job.id))??;
    ensure!(cancelled.state == JobState::Cancelled, "{cancelled:#?}");
    ensure!(cancelled.count(TaskState::Cancelled) > 0, "{cancelled:#?}");
    ensure!(
        cancelled
            .tasks
            .iter()
            .all(|t| matches!(t.state, TaskState::Cancelled | TaskState::Done)),
        "{cancelled:#?}"
    );
    // Heartbeats after the cancel change nothing.
    std::thread::sleep(Duration::from_secs(2));
    ensure!(block_on(admin.job(&job.id))??.tasks == cancelled.tasks);

    // State survives a restart of the coordinator.
    cluster.kill_registry_ext()?;
    cluster.start_registry_ext()?;
    let nodes_after = block_on(admin.nodes())??;
    ensure!(nodes_after.nodes.len() == 4, "{nodes_after:#?}");
    let jobs = block_on(admin.jobs())??;
    ensure!(jobs.jobs.len() == 4, "{jobs:#?}");
    let first = block_on(admin.job("1"))??;
    ensure!(first.state == JobState::Done);
    if !first.log.iter().any(|l| l.message.starts_with("finished:")) {
        bail!("job 1's log lost: {:#?}", first.log);
    }
    // The surviving nodes heartbeat again; the killed one goes down.
    wait_nodes_up(&admin, 3, Duration::from_secs(30))?;
    cluster.passed();
    Ok(())
}
