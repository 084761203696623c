//! An emulated cluster on one machine, for the swarm's end-to-end tests and benchmark.
//!
//! - The registry side: a network namespace with Debian's `docker-registry` on `IP:5000` and
//!   `shoal-registry-ext serve` (tracker, chunk manifests, first seeder; TLS from the
//!   cluster CA) on `IP:7080`; what it sends is capped with `tc tbf`.
//! - N nodes ([`Node`]), each its own namespace and veth pair, capped both ways, with a
//!   private containerd (CRI on) and shoald running inside it (`ip netns exec`), pulling as
//!   kubelet does (`shoald pull`, CRI `PullImage`). Each namespace routes through the host
//!   (IPv4 forwarding on while a cluster lives), so nodes reach each other and the registry.
//! - Registry egress: what `docker-registry` served, from its access log ([`Served`]), and
//!   what left the registry namespace on the wire.
//! - Faults: kill a node's shoald or the registry extension (SIGKILL) and start them again; a
//!   corrupt peer ([`BadPeer`]).
//!
//! Everything is torn down on drop (processes, namespaces, links; the daemons' mounts live in
//! their own mount namespaces and go with them). Unless [`Cluster::passed`] was called, the
//! logs of every daemon are copied first to a directory that is kept, and its path printed.

mod badpeer;
mod metrics;
mod node;
pub mod preheat;
mod registry_side;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_p2p::Digest;

pub use badpeer::{badpeer_binary, BadPeer};
pub use metrics::{http_get, Metrics, Sample};
pub use node::{fetch_chunk, Node, NodeMode, METRICS_PORT, MIRROR_LISTEN, PEER_PORT};
pub use registry_side::{
    registry_ext_binary, workspace_binary, RegistryExt, Served, REGISTRY_EXT_PORT,
};
pub use workload::{noise, percentile, random_layers, Image};

use crate::containerd::scratch_dir;
use crate::cri::CriContainerd;
use crate::image::{Layer, OciLayout, PlatformImage};
use crate::netns::{Forwarding, Link, Netns};
use crate::pki::Pki;
use crate::registry::TestRegistry;

/// The tools a cluster needs besides root: tests skip with `skip_unless(TOOLS, true)`.
pub const TOOLS: &[&str] = &[
    "ip",
    "tc",
    "docker-registry",
    "skopeo",
    "containerd",
    "ctr",
    "mount",
];

/// How a cluster is built.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Each node's link, both directions (Mbit/s).
    pub node_mbit: u64,
    /// What the registry namespace sends (Mbit/s).
    pub registry_mbit: u64,
    /// Run `shoal-registry-ext` (tracker, manifests, seeder) beside the registry. Needed by
    /// [`NodeMode::Swarm`] nodes.
    pub registry_ext: bool,
    /// The registry extension's chunk size.
    pub chunk_size: u64,
    /// shoald's `[unpack] concurrency`.
    pub unpack_concurrency: usize,
    /// Appended to every node's shoald config (TOML).
    pub extra_shoald_config: String,
    /// Lines added to every swarm node's `[swarm]` section (TOML keys).
    pub swarm_config: String,
    /// Lines added to the registry extension's `[seed]` section (TOML keys).
    pub seed_config: String,
    /// Nodes started at once by [`Cluster::add_nodes`].
    pub start_parallelism: usize,
    /// The registry extension's preheat coordinator on, its admin listener accepting this
    /// bearer token (see [`preheat`]).
    pub preheat_token: Option<String>,
    /// containerd's `concurrent_layer_fetch_buffer` on every node (2.1+: each blob fetched as
    /// parallel Range requests).
    pub fetch_buffer: Option<u64>,
    /// CRI's `max_concurrent_downloads` on every node (containerd's default, 3, when `None`).
    pub max_concurrent_downloads: Option<u32>,
    /// The nodes' containerd, instead of the process's (`SHOAL_CONTAINERD`).
    pub containerd: Option<crate::containerd::Flavor>,
}

impl ClusterConfig {
    /// `mbit` for the nodes and the registry, the registry extension on, 1 MiB chunks.
    pub fn new(mbit: u64) -> Self {
        Self {
            node_mbit: mbit,
            registry_mbit: mbit,
            registry_ext: true,
            chunk_size: 1 << 20,
            unpack_concurrency: 4,
            extra_shoald_config: String::new(),
            swarm_config: String::new(),
            seed_config: String::new(),
            start_parallelism: 4,
            preheat_token: None,
            fetch_buffer: None,
            max_concurrent_downloads: None,
            containerd: None,
        }
    }
}

/// Whether a cluster can be built here: root and the outside tools ([`TOOLS`]). Prints why
/// not (as a test's SKIP line) and returns false. The workspace's own binaries (`shoald`,
/// `shoal-registry-ext`, `shoal-badpeer`) are not a reason to skip: a cluster fails to start,
/// saying how to build them, when one is missing.
pub fn available() -> bool {
    !crate::tools::skip_unless(TOOLS, true)
}

static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);

/// The cluster's own directory: removed on drop unless it must be kept.
struct ClusterDir {
    path: PathBuf,
    keep: AtomicBool,
}

impl Drop for ClusterDir {
    fn drop(&mut self) {
        if !self.keep.load(Ordering::Relaxed) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A registry side and its nodes. See the module documentation.
pub struct Cluster {
    // Dropped in this order: nodes, bad peers, registry extension, registry, the registry
    // namespace, forwarding, and last the directory.
    nodes: Vec<Node>,
    bad_peers: Vec<BadPeer>,
    registry_ext: Option<RegistryExt>,
    registry: TestRegistry,
    reg_link: Link,
    reg_ns: Netns,
    _forwarding: Forwarding,
    pki: Pki,
    config: ClusterConfig,
    next_node: usize,
    passed: bool,
    dir: ClusterDir,
}

impl Cluster {
    /// Starts the registry side. No node yet: see [`Self::add_nodes`].
    pub fn start(config: ClusterConfig) -> Result<Self> {
        let dir = scratch_dir().join(format!(
            "shoal-cluster-{}-{}",
            std::process::id(),
            NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let dir = ClusterDir {
            path: dir,
            keep: AtomicBool::new(false),
        };
        let forwarding = Forwarding::enable()?;
        let pki = Pki::create(&dir.path.join("pki"))?;
        let reg_ns = Netns::create("shoal-reg")?;
        let reg_link = Link::to_host(&reg_ns)?;
        reg_link.route_via_host()?;
        let registry = TestRegistry::start_in_netns(reg_ns.name(), &reg_link.ns_ip)?;
        let registry_ext = if config.registry_ext {
            let ip: std::net::IpAddr = reg_link.ns_ip.parse()?;
            let tls = pki.issue_registry_side("registry-ext", &[ip])?;
            Some(
                RegistryExt::start(
                    reg_ns.name(),
                    &reg_link.ns_ip,
                    &registry.addr(),
                    &tls,
                    config.chunk_size,
                    &config.seed_config,
                    config.preheat_token.as_deref(),
                    &dir.path.join("registry-ext"),
                )
                .with_context(|| {
                    format!(
                        "starting shoal-registry-ext (files in {:?}, kept)",
                        dir.path.join("registry-ext")
                    )
                })
                .inspect_err(|_| dir.keep.store(true, Ordering::Relaxed))?,
            )
        } else {
            None
        };
        Ok(Self {
            nodes: Vec::new(),
            bad_peers: Vec::new(),
            registry_ext,
            registry,
            reg_link,
            reg_ns,
            _forwarding: forwarding,
            pki,
            config,
            next_node: 0,
            passed: false,
            dir,
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The cluster's directory (PKI, registry extension state, logs).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    pub fn registry(&self) -> &TestRegistry {
        &self.registry
    }

    /// `IP:5000`, the registry host of image references.
    pub fn registry_addr(&self) -> String {
        self.registry.addr()
    }

    /// The registry namespace's address.
    pub fn registry_ip(&self) -> &str {
        &self.reg_link.ns_ip
    }

    pub fn registry_netns(&self) -> &Netns {
        &self.reg_ns
    }

    pub fn registry_ext(&self) -> Option<&RegistryExt> {
        self.registry_ext.as_ref()
    }

    /// Caps what the registry namespace sends at the configured rate (call after pushing:
    /// pushes go the other way, but are quicker uncapped anyway).
    pub fn cap_registry(&self) -> Result<()> {
        self.reg_link.cap_ns_egress(self.config.registry_mbit)
    }

    /// Writes `layers` as an image, pushes it as `REGISTRY/repo:tag` with skopeo.
    pub fn push_image(&self, repo: &str, tag: &str, layers: Vec<Layer>) -> Result<Image> {
        let layout_dir = self
            .dir
            .path
            .join(format!("layout-{}", repo.replace('/', "-")));
        let layout = OciLayout::create(&layout_dir)?;
        let platform = shoal_p2p::registry::Platform::host();
        layout.add(
            tag,
            &[PlatformImage {
                os: platform.os,
                architecture: platform.architecture,
                layers: layers.clone(),
            }],
        )?;
        layout.push(tag, &self.registry.addr(), repo)?;
        let mut bytes = 0;
        for entry in std::fs::read_dir(layout.dir().join("blobs/sha256"))? {
            bytes += entry?.metadata()?.len();
        }
        // The layout's blobs are in the registry now; no need to keep them twice.
        let _ = std::fs::remove_dir_all(&layout_dir);
        Ok(Image {
            reference: format!("{}/{repo}:{tag}", self.registry.addr()),
            layers,
            bytes,
        })
    }

    /// Starts `count` nodes of `mode` (a few at a time); returns their indexes.
    pub fn add_nodes(&mut self, count: usize, mode: NodeMode) -> Result<Vec<usize>> {
        self.add_nodes_with(count, mode, &|_| (String::new(), None))
    }

    /// [`Self::add_nodes`] with the nodes' links capped at `mbit` instead of
    /// [`ClusterConfig::node_mbit`] (heterogeneous clusters).
    pub fn add_nodes_at(&mut self, count: usize, mode: NodeMode, mbit: u64) -> Result<Vec<usize>> {
        self.start_nodes(count, mode, mbit, &|_| (String::new(), None))
    }

    /// Blob bytes of `served` that went to clients inside the registry namespace (the
    /// registry extension reading blobs to make chunk manifests and to seed): they never
    /// crossed its link.
    pub fn served_inside_registry_ns(&self, served: &Served) -> u64 {
        let ns_ip = self.reg_link.ns_ip.as_str();
        served
            .blob_bytes_by_client
            .iter()
            .filter(|(ip, _)| ip.as_str() == ns_ip || ip.starts_with("127.") || *ip == "[::1]")
            .map(|(_, bytes)| bytes)
            .sum()
    }

    /// Bytes the registry extension's seeder has sent to nodes so far (its
    /// `shoal_upload_sent_bytes_total`; 0 without the extension or its metrics).
    pub fn seeder_sent(&self) -> u64 {
        self.registry_ext
            .as_ref()
            .and_then(|ext| Metrics::scrape(&ext.metrics_addr()).ok())
            .map_or(0, |m| m.sum("shoal_upload_sent_bytes_total", &[]) as u64)
    }

    /// [`Self::add_nodes`], each node's shoald config getting `per_node(name).0` appended,
    /// and its containerd socket linked at `per_node(name).1` when given (shoald starts
    /// before containerd, so a config can only name the socket by a link made afterwards).
    pub fn add_nodes_with(
        &mut self,
        count: usize,
        mode: NodeMode,
        per_node: &dyn Fn(&str) -> (String, Option<PathBuf>),
    ) -> Result<Vec<usize>> {
        self.start_nodes(count, mode, self.config.node_mbit, per_node)
    }

    fn start_nodes(
        &mut self,
        count: usize,
        mode: NodeMode,
        mbit: u64,
        per_node: &dyn Fn(&str) -> (String, Option<PathBuf>),
    ) -> Result<Vec<usize>> {
        let tracker = self.registry_ext.as_ref().map(RegistryExt::url);
        if mode.uses_swarm() && tracker.is_none() {
            bail!("swarm nodes need the registry extension (ClusterConfig::registry_ext)");
        }
        let registry = self.registry.addr();
        let first = self.nodes.len();
        let mut remaining = count;
        while remaining > 0 {
            let batch = remaining.min(self.config.start_parallelism.max(1));
            let setups: Vec<node::NodeSetup<'_>> = (0..batch)
                .map(|k| {
                    let name = format!("node-{}", self.next_node + k);
                    let (node_config, containerd_link) = per_node(&name);
                    node::NodeSetup {
                        name,
                        node_config,
                        containerd_link,
                        mode,
                        mbit,
                        registry: &registry,
                        tracker: tracker.clone(),
                        unpack_concurrency: self.config.unpack_concurrency,
                        extra_shoald_config: &self.config.extra_shoald_config,
                        swarm_config: &self.config.swarm_config,
                        fetch_buffer: self.config.fetch_buffer,
                        max_concurrent_downloads: self.config.max_concurrent_downloads,
                        containerd: self.config.containerd.clone(),
                    }
                })
                .collect();
            let pki = &self.pki;
            let started: Vec<Result<Node>> = std::thread::scope(|s| {
                let handles: Vec<_> = setups
                    .iter()
                    .map(|setup| {
                        s.spawn(move || {
                            Node::start(setup, |ip| pki.issue_for(&setup.name, &[ip.parse()?]))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("node start panicked")))
                    })
                    .collect()
            });
            self.next_node += batch;
            remaining -= batch;
            let mut first_err = None;
            for n in started {
                match n {
                    Ok(n) => self.nodes.push(n),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        Ok((first..self.nodes.len()).collect())
    }

    /// Stops and removes every node (the registry side stays), for a fresh set of nodes.
    pub fn remove_nodes(&mut self) {
        self.nodes.clear();
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    /// Nodes `which` pull `image` all at once (released together by a barrier); each
    /// result is that node's pull time.
    pub fn pull_all(
        &self,
        image: &str,
        which: &[usize],
        timeout: Duration,
    ) -> Vec<Result<Duration>> {
        let barrier = Barrier::new(which.len());
        std::thread::scope(|s| {
            let handles: Vec<_> = which
                .iter()
                .map(|&i| {
                    let node = &self.nodes[i];
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        node.pull(image, timeout)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("pull thread panicked")))
                })
                .collect()
        })
    }

    /// The reference layer trees of `image`: pulled by a plain containerd (overlayfs
    /// snapshotter, its own downloads) on the host, outside every node. Counts as registry
    /// egress: take [`Self::registry_served`] after it.
    pub fn reference(&self, image: &Image) -> Result<Reference> {
        let cri = CriContainerd::start_native(&[self.registry.addr()])?;
        cri.shoald_pull(&image.reference, Duration::from_secs(600))?;
        let chain = crate::image::chain_ids(&image.layers);
        let top = chain.last().context("an image without layers")?;
        let dirs = cri
            .containerd()
            .layer_dirs_in(crate::cri::CRI_NAMESPACE, "overlayfs", top)?;
        Ok(Reference { _cri: cri, dirs })
    }

    /// Checks every node in `which` against `reference` ([`Node::verify`]); all failures
    /// in one error.
    pub fn verify(&self, image: &Image, reference: &Reference, which: &[usize]) -> Result<()> {
        let failures: Vec<String> = which
            .iter()
            .filter_map(|&i| {
                self.nodes[i]
                    .verify(&image.layers, &reference.dirs)
                    .err()
                    .map(|e| format!("{e:#}"))
            })
            .collect();
        if !failures.is_empty() {
            bail!(
                "{} of {} nodes have wrong layers:\n{}",
                failures.len(),
                which.len(),
                failures.join("\n")
            );
        }
        Ok(())
    }

    /// What `docker-registry` has served so far (from its access log).
    pub fn registry_served(&self) -> Served {
        Served::parse(&self.registry.log())
    }

    /// Bytes that left the registry namespace on its link so far (registry, registry
    /// extension's tracker, manifests and seeding, TCP/IP headers).
    pub fn registry_link_sent(&self) -> Result<u64> {
        self.reg_link.ns_sent_bytes()
    }

    /// The name of the cluster member at `ip` (node name, `registry-ext`, `badpeer`,
    /// `host`), for reports.
    pub fn who(&self, ip: &str) -> String {
        if ip == self.reg_link.ns_ip {
            return "registry-ext".into();
        }
        if let Some(n) = self.nodes.iter().find(|n| n.ip() == ip) {
            return n.name().to_string();
        }
        if self.bad_peers.iter().any(|b| b.ip() == ip) {
            return "badpeer".into();
        }
        if ip == self.reg_link.host_ip {
            return "host".into();
        }
        ip.to_string()
    }

    /// Kills the registry extension (SIGKILL), from any thread, while nodes pull.
    pub fn kill_registry_ext(&self) -> Result<()> {
        self.registry_ext
            .as_ref()
            .context("no registry extension in this cluster")?
            .kill()
    }

    /// Starts the registry extension again after [`Self::kill_registry_ext`].
    pub fn start_registry_ext(&mut self) -> Result<()> {
        self.registry_ext
            .as_mut()
            .context("no registry extension in this cluster")?
            .start_again()
    }

    /// Starts a corrupt peer announcing every chunk of `blobs`; returns its index.
    pub fn add_bad_peer(&mut self, blobs: &[(Digest, u64)]) -> Result<usize> {
        let tracker = self
            .registry_ext
            .as_ref()
            .context("a bad peer needs the tracker")?
            .url();
        let pki = &self.pki;
        let n = self.bad_peers.len();
        let peer = BadPeer::start(
            &tracker,
            blobs,
            self.config.chunk_size,
            self.config.node_mbit,
            &self.dir.path.join("badpeers"),
            // Named as it announces (`badpeer-IP`): the tracker binds announces to the name.
            |ip| pki.issue_for(&format!("badpeer-{ip}"), &[ip.parse()?]),
        )?;
        self.bad_peers.push(peer);
        Ok(n)
    }

    pub fn bad_peer(&self, i: usize) -> &BadPeer {
        &self.bad_peers[i]
    }

    /// Sum of metric `name` (with `labels`) over nodes `which`; nodes whose metrics cannot be
    /// read (shoald killed) count 0.
    pub fn metric_sum(&self, which: &[usize], name: &str, labels: &[(&str, &str)]) -> f64 {
        which
            .iter()
            .filter_map(|&i| self.nodes[i].metrics().ok())
            .map(|m| m.sum(name, labels))
            .sum()
    }

    /// Waits until `cond` holds (polled every 50 ms) or `limit` passes; returns whether it
    /// held.
    pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if cond() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Marks the run as passed: the cluster's directory and logs go on drop.
    pub fn passed(&mut self) {
        self.passed = true;
    }

    /// Copies every daemon's log into `DIR/logs` and keeps the directory; returns its path.
    pub fn save_logs(&self) -> PathBuf {
        let logs = self.dir.path.join("logs");
        let _ = std::fs::create_dir_all(&logs);
        let mut files = vec![("registry.log".to_string(), self.registry.log_path())];
        for node in &self.nodes {
            files.extend(node.log_files());
        }
        for (name, path) in files {
            let _ = std::fs::copy(&path, logs.join(name));
        }
        // Metrics of whatever still answers.
        for node in &self.nodes {
            if let Ok(text) = http_get(&format!("{}:{METRICS_PORT}", node.ip()), "/metrics") {
                let _ = std::fs::write(logs.join(format!("{}-metrics.txt", node.name())), text);
            }
        }
        if let Some(ext) = &self.registry_ext {
            if let Ok(text) = http_get(&ext.metrics_addr(), "/metrics") {
                let _ = std::fs::write(logs.join("registry-ext-metrics.txt"), text);
            }
        }
        // The registry extension's and bad peers' logs already live in the directory.
        self.dir.keep.store(true, Ordering::Relaxed);
        logs
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.passed {
            let logs = self.save_logs();
            // The seeder's copies of the blobs are not evidence, just bulk.
            let _ = std::fs::remove_dir_all(self.dir.path.join("registry-ext/seed"));
            eprintln!(
                "cluster: not marked passed; logs of every daemon kept in {} \
                 (registry extension: {}, bad peers: {})",
                logs.display(),
                self.dir.path.join("registry-ext").display(),
                self.dir.path.join("badpeers").display()
            );
        }
    }
}

/// Reference layer trees ([`Cluster::reference`]); they live as long as this.
pub struct Reference {
    _cri: CriContainerd,
    pub dirs: Vec<PathBuf>,
}

/// Fails with every failed pull of `results` (one per node of `which`, as
/// [`Cluster::pull_all`] returns them), naming the node.
pub fn pulls_succeeded(which: &[usize], results: &[Result<Duration>]) -> Result<()> {
    let failures: Vec<String> = which
        .iter()
        .zip(results)
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("node {i}: {e:#}")))
        .collect();
    if !failures.is_empty() {
        bail!(
            "{} pulls failed:\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
    Ok(())
}

/// Sends SIGKILL to process `pid` (procps' `kill`).
pub fn sigkill(pid: u32) -> Result<()> {
    crate::tools::run(std::process::Command::new("kill").args(["-KILL", &pid.to_string()]))?;
    Ok(())
}
