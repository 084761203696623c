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
//! - `SHOAL_BENCH_MODES` (default `swarm,hetero,mirror,native`): the runs, in order, each on
//!   fresh nodes with empty caches (`swarm`: shoal's snapshotter through the swarm; `hetero`:
//!   the same with half the nodes (the fast group) at B and half (the slow group) at B/4;
//!   `mirror`: containerd's overlayfs snapshotter pulling through shoald's registry mirror
//!   (hosts.toml) and the swarm; `native`: containerd's overlayfs snapshotter and its own
//!   downloads; `shoal`: shoal's snapshotter straight from the registry, no swarm).
//! - `SHOAL_BENCH_VERIFY` (default 1): check every node's layers against a reference pull.
//! - `SHOAL_BENCH_JSON` (default `target/swarm-bench.json`): where the results go as JSON.
//! - `SHOAL_BENCH_HAVE_PEERS` (default: shoald's, 16): `swarm.have_peers` of every node (0
//!   turns have streams off: peers' chunks are learnt from the trackers' peer lists only).
//! - `SHOAL_BENCH_SWARM` (default none): more `[swarm]` keys of every node, `;`-separated
//!   (e.g. `max_uploads = 16; chunks_per_peer = 2`, shoald's defaults before they were
//!   measured again with have streams).
//! - `SHOAL_BENCH_SEED` (default none): more `[seed]` keys of the registry extension,
//!   `;`-separated (e.g. `upload_bytes_per_sec = 3562500`: the seeder's uploads paced at
//!   that rate and served oldest first; with `SHOAL_BENCH_SWARM="upload_bytes_per_sec = ..."`
//!   the nodes' too).
//! - `SHOAL_BENCH_CRI_DOWNLOADS` (default: containerd's, 3): CRI's `max_concurrent_downloads`
//!   on every node, the layers containerd fetches at once (the `mirror` and `native` runs;
//!   shoal's snapshotter fetches every layer itself).
//! - `SHOAL_BENCH_PERF` (default none): a directory; each run's pull is profiled there with
//!   `perf record -F 299 --call-graph fp` of the nodes' shoalds (`MODE.perf.data`; read it
//!   with `perf report -i DIR/MODE.perf.data --sort dso,sym`); `SHOAL_BENCH_PERF_CALL_GRAPH`
//!   (default `fp`) is perf's `--call-graph` (`dwarf` unwinds release builds, which have no
//!   frame pointers, at the cost of a larger file).
//! - `SHOAL_BENCH_KEEP_LOGS` (default 0): 1 keeps every daemon's log and metrics after each
//!   run (the directory is printed); with `SHOAL_LOG=info,shoal_p2p::swarm=debug` shoald logs
//!   each chunk's arrival (`chunk arrived`: chunk, from whom, ms since the download began).
//!
//! Every run pulls on all nodes at once (CRI `PullImage` through `shoald pull`, as kubelet)
//! and reports each node's pull time per group (p50, p95, max, and as a multiple of F/B, F
//! the image's bytes and B the group's bandwidth: the time one node alone needs at best;
//! `hetero` reports its fast and slow groups separately, each against its own B), what the
//! registry served (from its access log), and all the bytes that left the registry
//! namespace as data (access log less the registry extension's own reads inside the
//! namespace, plus its seeder), as multiples of F; and the CPU time (user + system, from
//! `/proc/PID/stat`) all the nodes' shoalds used during the pull, per MB the swarm received
//! (`shoald_cpu_ms_per_received_mb`; the pulls of one run all overlap, so idle time counts
//! little), with the load average when the pull began.
//! The native run's bound is N*F/B: the registry's link carries every node's copy.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use shoal_integration::bench::{cpu_seconds, env_or, json_path, load_average};
use shoal_integration::cluster::{
    self, percentile, random_layers, Cluster, ClusterConfig, NodeMode,
};

/// One benchmark run (`SHOAL_BENCH_MODES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Swarm,
    Hetero,
    Mirror,
    Shoal,
    Native,
}

impl Mode {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "swarm" => Mode::Swarm,
            "hetero" => Mode::Hetero,
            "mirror" => Mode::Mirror,
            "shoal" => Mode::Shoal,
            "native" => Mode::Native,
            other => bail!(
                "SHOAL_BENCH_MODES: unknown mode {other:?} (swarm, hetero, mirror, shoal, native)"
            ),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Swarm => "swarm",
            Mode::Hetero => "hetero",
            Mode::Mirror => "mirror",
            Mode::Shoal => "shoal",
            Mode::Native => "native",
        }
    }

    fn node_mode(self) -> NodeMode {
        match self {
            Mode::Swarm | Mode::Hetero => NodeMode::Swarm,
            Mode::Mirror => NodeMode::Mirror {
                discard_unpacked_layers: false,
            },
            Mode::Shoal => NodeMode::Shoal,
            Mode::Native => NodeMode::Native,
        }
    }
}

/// Nodes of one run with the same link cap.
struct Group {
    name: String,
    mbit: u64,
    nodes: Vec<usize>,
    times: Vec<Duration>,
}

struct Run {
    mode: Mode,
    groups: Vec<Group>,
    served: cluster::Served,
    /// Of `served`, what went to the registry extension inside the registry namespace.
    served_inside: u64,
    seeder_bytes: u64,
    link_bytes: u64,
    peer_bytes: f64,
    registry_chunk_bytes: f64,
    /// CPU time (user + system) the nodes' shoalds used from the start of the pull to its
    /// end, all nodes together.
    shoald_cpu_secs: f64,
    /// The load average when the pull began.
    load_before: String,
}

impl Run {
    /// Bytes that left the registry namespace as data: docker-registry's (access log, less
    /// what the registry extension read inside the namespace) and the seeder's.
    fn left_registry(&self) -> u64 {
        self.served.total() - self.served_inside + self.seeder_bytes
    }

    /// shoald's CPU per MB the swarm received (from peers and the registry), in ms.
    fn cpu_ms_per_mb(&self) -> f64 {
        let mb = (self.peer_bytes + self.registry_chunk_bytes) / 1e6;
        if mb > 0.0 {
            self.shoald_cpu_secs * 1e3 / mb
        } else {
            0.0
        }
    }

    fn all_times(&self) -> Vec<Duration> {
        self.groups.iter().flat_map(|g| g.times.clone()).collect()
    }
}

/// `perf record` (with call graphs) of some processes (all their threads, new ones included), until stopped.
struct Perf {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Perf {
    fn record(out: &std::path::Path, pids: &[u32]) -> Result<Self> {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {dir:?}"))?;
        }
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let call_graph =
            std::env::var("SHOAL_BENCH_PERF_CALL_GRAPH").unwrap_or_else(|_| "fp".into());
        let child = std::process::Command::new("perf")
            .args([
                "record",
                "-q",
                "-F",
                "299",
                "--call-graph",
                &call_graph,
                "-o",
            ])
            .arg(out)
            .args(["-p", &pids.join(",")])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("SHOAL_BENCH_PERF: running perf (linux-perf)")?;
        // perf attaches to every thread before it samples.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self {
            child,
            out: out.to_path_buf(),
        })
    }

    /// Stops the recording (SIGINT, as ^C) and waits until perf has written its file.
    fn stop(mut self) -> Result<std::path::PathBuf> {
        let status = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("could not stop perf ({status})");
        }
        self.child.wait()?;
        Ok(self.out)
    }
}

fn main() -> Result<()> {
    let nodes: usize = env_or("SHOAL_BENCH_NODES", 16);
    let mbit: u64 = env_or("SHOAL_BENCH_MBIT", 100);
    let image_mib: usize = env_or("SHOAL_BENCH_IMAGE_MIB", 64);
    let verify: u32 = env_or("SHOAL_BENCH_VERIFY", 1);
    let keep_logs: u32 = env_or("SHOAL_BENCH_KEEP_LOGS", 0);
    let perf_dir = std::env::var_os("SHOAL_BENCH_PERF").map(std::path::PathBuf::from);
    let modes: Vec<Mode> = std::env::var("SHOAL_BENCH_MODES")
        .unwrap_or_else(|_| "swarm,hetero,mirror,native".into())
        .split(',')
        .map(|m| Mode::parse(m.trim()))
        .collect::<Result<_>>()?;
    let mut config = ClusterConfig::new(mbit);
    let have_peers = match std::env::var("SHOAL_BENCH_HAVE_PEERS") {
        Ok(v) => {
            let n: usize = v
                .parse()
                .context("SHOAL_BENCH_HAVE_PEERS: a number of peers")?;
            config.swarm_config = format!("have_peers = {n}\n");
            Some(n)
        }
        Err(_) => None,
    };
    let swarm_extra = extra_keys("SHOAL_BENCH_SWARM", &mut config.swarm_config);
    config.max_concurrent_downloads = match std::env::var("SHOAL_BENCH_CRI_DOWNLOADS") {
        Ok(v) => Some(
            v.parse()
                .context("SHOAL_BENCH_CRI_DOWNLOADS: a number of layers")?,
        ),
        Err(_) => None,
    };
    let seed_extra = extra_keys("SHOAL_BENCH_SEED", &mut config.seed_config);
    config.registry_ext = modes.iter().any(|m| m.node_mode().uses_swarm());
    if !cluster::available() {
        bail!("needs root, iproute2, docker-registry, skopeo, containerd and the workspace's release binaries: run scripts/install-deps.sh as root and `cargo build --release --workspace`");
    }

    let config_downloads = config.max_concurrent_downloads;
    let mut cluster = Cluster::start(config)?;
    let image = cluster.push_image("bench/swarm", "v1", random_layers(4, image_mib << 20, 3)?)?;
    cluster.cap_registry()?;
    let reference = if verify != 0 {
        Some(cluster.reference(&image)?)
    } else {
        None
    };
    let f_over = |mbit: u64| image.bytes as f64 * 8.0 / (mbit as f64 * 1e6);
    let f_over_b = f_over(mbit);
    eprintln!(
        "image: {} layers, {:.1} MB; {nodes} nodes, B = {mbit} Mbit/s per node and at the registry: F/B = {f_over_b:.2} s",
        image.layers.len(),
        image.bytes as f64 / 1e6
    );

    let mut runs = Vec::new();
    for &mode in &modes {
        let node_mode = mode.node_mode();
        let mut groups = Vec::new();
        if mode == Mode::Hetero {
            let slow = nodes / 2;
            let slow_mbit = (mbit / 4).max(1);
            let fast = cluster.add_nodes(nodes - slow, node_mode)?;
            let slow = cluster.add_nodes_at(slow, node_mode, slow_mbit)?;
            for (name, mbit, nodes) in [
                ("hetero fast", mbit, fast),
                ("hetero slow", slow_mbit, slow),
            ] {
                groups.push(Group {
                    name: name.into(),
                    mbit,
                    nodes,
                    times: Vec::new(),
                });
            }
        } else {
            groups.push(Group {
                name: mode.name().into(),
                mbit,
                nodes: cluster.add_nodes(nodes, node_mode)?,
                times: Vec::new(),
            });
        }
        let which: Vec<usize> = groups.iter().flat_map(|g| g.nodes.clone()).collect();
        let before = cluster.registry_served();
        let seeder_before = cluster.seeder_sent();
        let link_before = cluster.registry_link_sent()?;
        let shoald_cpu = |cluster: &Cluster| -> Result<f64> {
            which
                .iter()
                .map(|&i| cpu_seconds(cluster.node(i).shoald_pid()))
                .sum()
        };
        let load_before = load_average();
        let cpu_before = shoald_cpu(&cluster)?;
        let perf = match &perf_dir {
            Some(dir) => {
                let pids: Vec<u32> = which
                    .iter()
                    .map(|&i| cluster.node(i).shoald_pid())
                    .collect();
                Some(Perf::record(
                    &dir.join(format!("{}.perf.data", mode.name())),
                    &pids,
                )?)
            }
            None => None,
        };
        eprintln!("{}: {} nodes pulling at once...", mode.name(), which.len());
        let results = cluster.pull_all(&image.reference, &which, Duration::from_secs(3600));
        let shoald_cpu_secs = shoald_cpu(&cluster)? - cpu_before;
        if let Some(perf) = perf {
            eprintln!(
                "{}: perf profile in {}",
                mode.name(),
                perf.stop()?.display()
            );
        }
        let served = cluster.registry_served().since(&before);
        let seeder_bytes = cluster.seeder_sent().saturating_sub(seeder_before);
        let link_bytes = cluster.registry_link_sent()? - link_before;
        let mut results = which.iter().zip(results);
        for group in &mut groups {
            for (i, r) in results.by_ref().take(group.nodes.len()) {
                let time = r.with_context(|| format!("{} run, node {i}", mode.name()))?;
                group.times.push(time);
            }
        }
        if let Some(reference) = &reference {
            cluster.verify(&image, reference, &which)?;
        }
        let (peer_bytes, registry_chunk_bytes) = if node_mode.uses_swarm() {
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
        let run = Run {
            mode,
            groups,
            served_inside: cluster.served_inside_registry_ns(&served),
            served,
            seeder_bytes,
            link_bytes,
            peer_bytes,
            registry_chunk_bytes,
            shoald_cpu_secs,
            load_before,
        };
        eprintln!(
            "{}: max {:.2} s, registry served {:.1} MB, left the registry namespace {:.1} MB; \
             shoald CPU {:.1} s ({:.2} ms per MB received); load average before {}",
            mode.name(),
            percentile(&run.all_times(), 100.0).as_secs_f64(),
            run.served.total() as f64 / 1e6,
            run.left_registry() as f64 / 1e6,
            run.shoald_cpu_secs,
            run.cpu_ms_per_mb(),
            run.load_before,
        );
        runs.push(run);
        if keep_logs != 0 {
            eprintln!("{}: logs in {}", mode.name(), cluster.save_logs().display());
        }
        cluster.remove_nodes();
    }

    println!(
        "\n{nodes} nodes, {mbit} Mbit/s each (hetero: half at {} Mbit/s), image {:.1} MB, F/B = {f_over_b:.2} s",
        (mbit / 4).max(1),
        image.bytes as f64 / 1e6
    );
    println!(
        "{:<12} {:>5} {:>9} {:>9} {:>9} {:>8} {:>8} {:>12} {:>10} {:>12} {:>13}",
        "run",
        "Mbit",
        "p50",
        "p95",
        "max",
        "p50/FB",
        "max/FB",
        "registry MB",
        "seeder MB",
        "left reg. xF",
        "reg. link MB"
    );
    let mut out = Vec::new();
    for r in &runs {
        let mut groups = Vec::new();
        for g in &r.groups {
            let (p50, p95, max) = (
                percentile(&g.times, 50.0).as_secs_f64(),
                percentile(&g.times, 95.0).as_secs_f64(),
                percentile(&g.times, 100.0).as_secs_f64(),
            );
            let bound = f_over(g.mbit);
            println!(
                "{:<12} {:>5} {:>8.2}s {:>8.2}s {:>8.2}s {:>7.2}x {:>7.2}x {:>12.1} {:>10.1} {:>11.2}x {:>13.1}",
                g.name,
                g.mbit,
                p50,
                p95,
                max,
                p50 / bound,
                max / bound,
                r.served.total() as f64 / 1e6,
                r.seeder_bytes as f64 / 1e6,
                r.left_registry() as f64 / image.bytes as f64,
                r.link_bytes as f64 / 1e6,
            );
            groups.push(json!({
                "group": g.name,
                "mbit": g.mbit,
                "f_over_b_secs": bound,
                "times_secs": g.times.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
                "p50_secs": p50,
                "p95_secs": p95,
                "max_secs": max,
                "p50_over_f_over_b": p50 / bound,
                "p95_over_f_over_b": p95 / bound,
                "max_over_f_over_b": max / bound,
            }));
        }
        out.push(json!({
            "mode": r.mode.name(),
            "groups": groups,
            "registry_served_bytes": r.served.total(),
            "registry_blob_bytes": r.served.blob_bytes,
            "registry_blob_gets": r.served.blob_gets,
            "registry_served_over_image": r.served.total() as f64 / image.bytes as f64,
            "registry_served_inside_namespace_bytes": r.served_inside,
            "seeder_sent_bytes": r.seeder_bytes,
            "left_registry_bytes": r.left_registry(),
            "left_registry_over_image": r.left_registry() as f64 / image.bytes as f64,
            "registry_link_sent_bytes": r.link_bytes,
            "swarm_peer_bytes": r.peer_bytes,
            "swarm_registry_bytes": r.registry_chunk_bytes,
            "shoald_cpu_secs": r.shoald_cpu_secs,
            "shoald_cpu_ms_per_received_mb": r.cpu_ms_per_mb(),
            "load_average_before": r.load_before,
        }));
    }
    let native = runs.iter().find(|r| r.mode == Mode::Native);
    for r in runs.iter().filter(|r| r.mode != Mode::Native) {
        let Some(n) = native else { break };
        let (times, native_times) = (r.all_times(), n.all_times());
        println!(
            "{} / native: p50 {:.2}, max {:.2}; bytes that left the registry namespace {:.3}",
            r.mode.name(),
            percentile(&times, 50.0).as_secs_f64() / percentile(&native_times, 50.0).as_secs_f64(),
            percentile(&times, 100.0).as_secs_f64()
                / percentile(&native_times, 100.0).as_secs_f64(),
            r.left_registry() as f64 / n.left_registry().max(1) as f64
        );
    }
    let report = json!({
        "nodes": nodes,
        "mbit": mbit,
        "have_peers": have_peers,
        "cri_max_concurrent_downloads": config_downloads,
        "swarm_config": swarm_extra,
        "seed_config": seed_extra,
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

/// The `;`-separated TOML keys of environment variable `var` (none when unset), appended to
/// `section` one per line; returns the variable's value as given (for the JSON).
fn extra_keys(var: &str, section: &mut String) -> String {
    let value = std::env::var(var).unwrap_or_default();
    for line in value.split(';').map(str::trim).filter(|l| !l.is_empty()) {
        section.push_str(line);
        section.push('\n');
    }
    value
}
