//! One emulated node: a network namespace joined to the host by a capped veth pair, with a
//! private containerd (CRI on) and shoald both running inside it.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::metrics::Metrics;
use crate::compare::assert_same_tree;
use crate::cri::{shoald_binary, CriContainerd, CriSettings, CRI_NAMESPACE, SNAPSHOTTER};
use crate::image::{chain_ids, Layer};
use crate::netns::{Link, Netns};
use crate::pki::TlsPaths;
use shoal_p2p::Digest;

/// Port of a node's peer chunk server.
pub const PEER_PORT: u16 = 7070;
/// Port of a node's Prometheus metrics (on its namespace address).
pub const METRICS_PORT: u16 = 9464;

/// How a node pulls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeMode {
    /// shoal's snapshotter with the swarm on (`[swarm] enabled = true`).
    Swarm,
    /// shoal's snapshotter straight from the registry (no `[swarm]` section).
    Shoal,
    /// containerd's own overlayfs snapshotter, its downloads through shoald's registry mirror
    /// (swarm on, `[mirror] enabled = true`, hosts.toml written by `shoald hosts`); with
    /// CRI's `discard_unpacked_layers = true` when asked.
    Mirror { discard_unpacked_layers: bool },
    /// containerd's own overlayfs snapshotter and downloads: the baseline.
    Native,
}

impl NodeMode {
    /// Whether shoald runs the swarm (and needs the tracker).
    pub fn uses_swarm(self) -> bool {
        matches!(self, Self::Swarm | Self::Mirror { .. })
    }

    /// Whether containerd's CRI unpacks with its own overlayfs snapshotter.
    pub fn containerd_unpacks(self) -> bool {
        matches!(self, Self::Native | Self::Mirror { .. })
    }
}

/// Where a mirror node's shoald serves the registry mirror (its namespace's loopback).
pub const MIRROR_LISTEN: &str = "127.0.0.1:7075";

/// What a node needs to know about the cluster to start.
pub(crate) struct NodeSetup<'a> {
    pub name: String,
    pub mode: NodeMode,
    pub mbit: u64,
    pub registry: &'a str,
    pub tracker: Option<String>,
    pub unpack_concurrency: usize,
    pub extra_shoald_config: &'a str,
    /// Added to a swarm node's `[swarm]` section.
    pub swarm_config: &'a str,
    /// Appended to this node's shoald config.
    pub node_config: String,
    /// Where to link containerd's socket once it runs.
    pub containerd_link: Option<PathBuf>,
    /// containerd's `concurrent_layer_fetch_buffer`.
    pub fetch_buffer: Option<u64>,
    /// CRI's `max_concurrent_downloads`.
    pub max_concurrent_downloads: Option<u32>,
    /// This node's containerd, instead of the process's.
    pub containerd: Option<crate::containerd::Flavor>,
}

/// A running node; everything (processes, namespace, link) goes on drop.
pub struct Node {
    // Dropped in this order: daemons, then the link, then the namespace.
    cri: CriContainerd,
    link: Link,
    ns: Netns,
    name: String,
    mode: NodeMode,
    tls: Option<TlsPaths>,
}

impl Node {
    /// Makes the namespace and link (capped both ways at `setup.mbit`, routed through the
    /// host), then starts shoald and containerd in it. `tls` makes the certificate for the
    /// node's address (swarm nodes only).
    pub(crate) fn start(
        setup: &NodeSetup<'_>,
        tls: impl FnOnce(&str) -> Result<TlsPaths>,
    ) -> Result<Self> {
        let ns = Netns::create("shoal-node")?;
        let link = Link::to_host(&ns)?;
        link.route_via_host()?;
        link.cap_ns_egress(setup.mbit)?;
        link.cap_host_egress(setup.mbit)?;
        let ip = link.ns_ip.clone();
        let registry = setup.registry;
        let mut config = format!(
            "[registry.hosts.{registry:?}]\nplain_http = true\n\
             [unpack]\nconcurrency = {}\n",
            setup.unpack_concurrency
        );
        let mut paths = None;
        if setup.mode.uses_swarm() {
            let tracker = setup
                .tracker
                .as_deref()
                .context("a swarm node needs the registry extension (tracker)")?;
            let certs = tls(&ip)?;
            config.push_str(&format!(
                "[metrics]\nlisten = \"{ip}:{METRICS_PORT}\"\n\
                 [swarm]\nenabled = true\nnode_name = {name:?}\n\
                 listen = \"0.0.0.0:{PEER_PORT}\"\nadvertise = \"{ip}:{PEER_PORT}\"\n\
                 trackers = [{tracker:?}]\n{swarm}\n\
                 [swarm.tls]\n{tls}",
                name = setup.name,
                swarm = setup.swarm_config,
                tls = certs.toml(),
            ));
            paths = Some(certs);
            if let NodeMode::Mirror { .. } = setup.mode {
                config.push_str(&format!(
                    "[mirror]\nenabled = true\nlisten = {MIRROR_LISTEN:?}\n"
                ));
            }
        } else if setup.mode == NodeMode::Shoal {
            config.push_str(&format!("[metrics]\nlisten = \"{ip}:{METRICS_PORT}\"\n"));
        }
        config.push_str(setup.extra_shoald_config);
        config.push_str(&setup.node_config);
        let snapshotter = if setup.mode.containerd_unpacks() {
            "overlayfs"
        } else {
            SNAPSHOTTER
        };
        let settings = CriSettings {
            discard_unpacked_layers: matches!(
                setup.mode,
                NodeMode::Mirror {
                    discard_unpacked_layers: true
                }
            ),
            fetch_buffer: setup.fetch_buffer,
            max_concurrent_downloads: setup.max_concurrent_downloads,
            flavor: setup.containerd.clone(),
        };
        let cri = CriContainerd::start_in_netns_with(
            Some(ns.name()),
            &[registry.to_string()],
            &config,
            snapshotter,
            settings,
        )
        .with_context(|| format!("starting node {} ({ip})", setup.name))?;
        if let NodeMode::Mirror { .. } = setup.mode {
            // The one-command setup: shoald's entry first in the registry's hosts.toml.
            let out = Command::new(shoald_binary()?)
                .arg("--config")
                .arg(cri.shoald().config_path())
                .arg("hosts")
                .arg("--dir")
                .arg(cri.hosts_dir())
                .output()
                .context("running shoald hosts")?;
            if !out.status.success() {
                bail!(
                    "shoald hosts failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        if let Some(link) = &setup.containerd_link {
            if let Some(dir) = link.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let _ = std::fs::remove_file(link);
            std::os::unix::fs::symlink(cri.containerd().address(), link)
                .with_context(|| format!("linking containerd's socket at {link:?}"))?;
        }
        Ok(Self {
            cri,
            link,
            ns,
            name: setup.name.clone(),
            mode: setup.mode,
            tls: paths,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mode(&self) -> NodeMode {
        self.mode
    }

    /// The node's address (its end of the veth pair).
    pub fn ip(&self) -> &str {
        &self.link.ns_ip
    }

    /// `IP:7070`, where its chunk server listens (swarm nodes).
    pub fn peer_addr(&self) -> String {
        format!("{}:{PEER_PORT}", self.link.ns_ip)
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The node's certificate (swarm nodes).
    pub fn tls(&self) -> Option<&TlsPaths> {
        self.tls.as_ref()
    }

    pub fn cri(&self) -> &CriContainerd {
        &self.cri
    }

    /// `shoald pull IMAGE` through the node's containerd (CRI `PullImage`, as kubelet);
    /// returns how long it took.
    pub fn pull(&self, image: &str, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        self.cri
            .shoald_pull(image, timeout)
            .with_context(|| format!("{} ({}) pulling {image}", self.name, self.ip()))?;
        Ok(start.elapsed())
    }

    /// `ctr images pull --hosts-dir` of `image` inside the node's namespace (ctr fetches
    /// itself, through the hosts.toml of CRI's `config_path`), into [`CRI_NAMESPACE`] with
    /// containerd's overlayfs snapshotter; returns how long it took.
    pub fn ctr_pull(&self, image: &str, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let containerd = self.cri.containerd();
        let out = Command::new("timeout")
            .arg(timeout.as_secs().max(1).to_string())
            .args(["ip", "netns", "exec", self.ns.name()])
            .arg(containerd.flavor().ctr())
            .arg("--address")
            .arg(containerd.address())
            .args(["-n", CRI_NAMESPACE, "images", "pull", "--hosts-dir"])
            .arg(self.cri.hosts_dir())
            .arg(image)
            .output()
            .context("running ctr images pull")?;
        if !out.status.success() {
            bail!(
                "{}: ctr images pull {image} failed ({}):\n{}{}\n--- shoald log:\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.cri.shoald().log()
            );
        }
        Ok(start.elapsed())
    }

    /// The process ID of the node's shoald.
    pub fn shoald_pid(&self) -> u32 {
        self.cri.shoald().pid()
    }

    /// Kills the node's shoald with SIGKILL (from any thread, while others pull).
    pub fn kill_shoald(&self) -> Result<()> {
        super::sigkill(self.cri.shoald().pid())
    }

    /// Starts the node's shoald again (after [`Self::kill_shoald`]) on the same state,
    /// config and namespace, and waits until containerd is connected to it again (its gRPC
    /// connection to a proxy snapshotter reconnects with a backoff).
    pub fn restart_shoald(&mut self) -> Result<()> {
        let shoald = self.cri.shoald_mut();
        shoald.kill();
        shoald.start_again()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.cri.snapshots() {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "{}: containerd did not reconnect to the restarted shoald in 60 s",
                        self.name
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// Whether the node's shoald is running.
    pub fn shoald_running(&mut self) -> bool {
        self.cri.shoald_mut().is_running()
    }

    /// shoald's metrics (swarm nodes).
    pub fn metrics(&self) -> Result<Metrics> {
        Metrics::scrape(&format!("{}:{METRICS_PORT}", self.ip()))
            .with_context(|| format!("metrics of {}", self.name))
    }

    /// One line on what the node's swarm did: bytes from peers and from the registry,
    /// uploaded, chunk failures by reason, peers dropped, blobs fetched whole from the
    /// registry.
    pub fn swarm_summary(&self) -> String {
        let m = match self.metrics() {
            Ok(m) => m,
            Err(e) => return format!("no metrics: {e:#}"),
        };
        let mib = |v: f64| v / (1 << 20) as f64;
        format!(
            "from peers {:.1} MiB, from the registry {:.1} MiB, uploaded {:.1} MiB; chunk failures [{}]; peers dropped {}; registry fallbacks {}",
            mib(m.sum("shoal_swarm_received_bytes_total", &[("source", "peer")])),
            mib(m.sum("shoal_swarm_received_bytes_total", &[("source", "registry")])),
            mib(m.sum("shoal_upload_sent_bytes_total", &[])),
            m.by_label("shoal_swarm_chunk_failures_total"),
            m.sum("shoal_swarm_peers_dropped_total", &[]),
            m.sum("shoal_swarm_registry_fallbacks_total", &[]),
        )
    }

    /// The committed layer directories of the image made of `layers`, bottom first.
    pub fn layer_dirs(&self, layers: &[Layer]) -> Result<Vec<PathBuf>> {
        let chain = chain_ids(layers);
        let top = chain.last().context("an image without layers")?;
        if self.mode.containerd_unpacks() {
            self.cri
                .containerd()
                .layer_dirs_in(CRI_NAMESPACE, "overlayfs", top)
        } else {
            self.cri.layer_dirs(top)
        }
    }

    /// Fails unless every layer of the image made of `layers` is on the node and equal to
    /// `reference` (one directory per layer, bottom first), and, for shoal nodes, containerd
    /// downloaded none of the layer blobs itself.
    pub fn verify(&self, layers: &[Layer], reference: &[PathBuf]) -> Result<()> {
        let dirs = self.layer_dirs(layers)?;
        if dirs.len() != reference.len() {
            bail!(
                "{}: {} layer directories, {} expected: {dirs:?}",
                self.name,
                dirs.len(),
                reference.len()
            );
        }
        for (i, (want, got)) in reference.iter().zip(&dirs).enumerate() {
            assert_same_tree(want, got, &[])
                .with_context(|| format!("{}: layer {i} ({})", self.name, layers[i].digest))?;
        }
        if !self.mode.containerd_unpacks() {
            let content = self.cri.content_digests()?;
            let through_containerd: Vec<String> = layers
                .iter()
                .map(|l| l.digest.to_string())
                .filter(|d| content.contains(d))
                .collect();
            if !through_containerd.is_empty() {
                bail!(
                    "{}: containerd downloaded layers {through_containerd:?} itself (shoal \
                     fell back); shoald log {:?}",
                    self.name,
                    self.cri.shoald().log_path()
                );
            }
        }
        Ok(())
    }

    /// Log files of the node's daemons, as (label, path).
    pub fn log_files(&self) -> Vec<(String, PathBuf)> {
        vec![
            (
                format!("{}-shoald.log", self.name),
                self.cri.shoald().log_path(),
            ),
            (
                format!("{}-shoald.toml", self.name),
                self.cri.shoald().config_path(),
            ),
            (
                format!("{}-containerd.log", self.name),
                self.cri.containerd().log_path(),
            ),
        ]
    }
}

/// `GET https://PEER/v1/blobs/DIGEST` with `Range: bytes=FIRST-LAST` from the host, as a
/// swarm client would: with `tls` (a client certificate and the CA it trusts), or with
/// none (no client certificate; the server's is not checked). Returns the status and body.
pub fn fetch_chunk(
    peer: &str,
    digest: &Digest,
    first: u64,
    last: u64,
    tls: Option<&TlsPaths>,
) -> Result<(u16, Vec<u8>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let timeout = Duration::from_secs(10);
        let client = match tls {
            Some(tls) => shoal_p2p::tls::Transport::load(Some(&tls.files()), false)?
                .http_client(timeout, timeout)?,
            None => reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .timeout(timeout)
                .no_proxy()
                .build()?,
        };
        let resp = client
            .get(format!("https://{peer}/v1/blobs/{digest}"))
            .header(reqwest::header::RANGE, format!("bytes={first}-{last}"))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?.to_vec();
        Ok((status, body))
    })
}
