//! shoald's configuration file (TOML). Each component reads its own section; everything has a
//! default, so an empty file (or none) is a valid configuration.
//!
//! ```toml
//! # Registry access, per registry host ("host[:port]"). Default: HTTPS, anonymous.
//! [registry]
//! request_timeout_secs = 30   # default 30
//! connect_timeout_secs = 10   # default 10
//! retries = 3                 # default 3, for idempotent requests, with backoff
//! [registry.hosts."127.0.0.1:5000"]
//! plain_http = true           # default false; only for registries on loopback in tests
//! username = "puller"         # default: anonymous
//! password = "secret"
//!
//! # The streaming unpacker.
//! [unpack]
//! concurrency = 4             # default 4: layers of one image fetched and unpacked at once
//!
//! # The bounded cache of compressed blobs (layers) this node fetched, least recently used out.
//! [cache]
//! dir = "/var/lib/shoal/blobs" # default; an absolute path
//! max_bytes = 10737418240     # default 10 GiB, at least 1
//!
//! # The swarm: fetch layer chunks from other nodes, serve the chunks this node holds.
//! [swarm]
//! enabled = false             # default false: layers come from the registry (and the cache)
//! node_name = ""              # default: the certificate's node name (else the host name)
//! listen = "0.0.0.0:7070"     # default; the chunk server for peers (mutual TLS)
//! advertise = ""              # "IP[:port]" peers dial; default: listen's IP if set, else the
//!                             # source address towards the first tracker; port from listen
//! trackers = []               # shoal-registry-ext URLs, e.g. ["https://10.0.0.1:7080"];
//!                             # at least one when enabled (chunk manifests come from them too)
//! insecure_plaintext = false  # default false; plain HTTP between nodes, only for tests
//! max_uploads = 8             # default 8: chunks served at once (more get "busy")
//! upload_bytes_per_sec = 0    # default 0 = unlimited: this node's total upload rate
//!                             # (set: uploads paced at it, the oldest served first)
//! peer_refresh_ms = 500       # default 500, or 200 when upload_bytes_per_sec is set;
//!                             # 50-10000: a download asks the trackers for peers this often
//! chunks_in_flight = 8        # default 8: chunk requests in flight on this node, shared
//!                             # by its blobs (each sure of one)
//! chunks_per_peer = 1         # default 1: chunk requests in flight per peer, per blob
//! have_peers = 16             # default 16: have streams a download keeps open to peers
//!                             # (their chunks as they arrive); 0 = off (peer lists only)
//! max_have_streams = 256      # default 256, at least 1: have streams served at once
//!                             # (more get "busy")
//! [swarm.tls]                 # required when enabled, unless insecure_plaintext
//! ca = "/etc/shoal/ca.pem"    # the cluster CA: the only issuer trusted for peers and trackers
//! cert = "/etc/shoal/node.pem"
//! key = "/etc/shoal/node-key.pem"
//!
//! # The registry mirror for containerd's hosts.toml (blobs from the swarm).
//! [mirror]
//! enabled = false             # default false
//! listen = "127.0.0.1:7075"   # default; plain HTTP, meant for loopback
//! default_upstream = ""       # registry host for requests without ?ns= ("" = refuse them)
//! access_ttl_secs = 30        # default 30: how long a positive access check is reused
//! registries = []             # extra registry hosts `shoald hosts` writes files for; blobs
//!                             # of these, [registry.hosts] and default_upstream are served
//!                             # from the cache and swarm
//! serve_other_registries = false # default false: blobs of any other registry (`_default`)
//!                             # pass through untouched; true serves them too
//! hosts_dir = "/etc/containerd/certs.d"  # default for `shoald hosts --dir`
//!
//! # Preheat worker: registers with shoal-registry-ext's coordinator, heartbeats, and pulls
//! # the images of preheat jobs through CRI. Uses [swarm.tls] (or swarm.insecure_plaintext)
//! # and swarm.node_name, whether the swarm is enabled or not.
//! [preheat]
//! coordinator = ""            # default "" = off; e.g. "https://10.0.0.1:7080"
//! containerd = "/run/containerd/containerd.sock" # default; containerd's socket (CRI)
//! labels = {}                 # default none; e.g. { group = "gpu", zone = "a" }
//! pull_timeout_secs = 3600    # default 3600, at least 1: one image's PullImage
//!
//! # Prometheus metrics (plain HTTP GET /metrics).
//! [metrics]
//! listen = "127.0.0.1:9464"   # default; "" turns the endpoint off
//! ```

use std::path::{Path, PathBuf};

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use shoal_p2p::config_file;
pub use shoal_p2p::config_file::ConfigError;
use shoal_p2p::registry::ClientConfig;
use shoal_p2p::swarm::peer_refresh_for;
use shoal_p2p::tls::TlsFiles;

/// The whole of shoald's configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Registry hosts, credentials and timeouts.
    #[serde(default)]
    pub registry: ClientConfig,
    /// The streaming unpacker.
    #[serde(default)]
    pub unpack: UnpackConfig,
    /// The blob cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The swarm.
    #[serde(default)]
    pub swarm: SwarmSection,
    /// The registry mirror.
    #[serde(default)]
    pub mirror: MirrorSection,
    /// The metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// The preheat worker.
    #[serde(default)]
    pub preheat: PreheatSection,
}

/// `[preheat]`: this node as a preheat worker (see the module documentation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreheatSection {
    /// The coordinator's URL; empty: no worker.
    #[serde(default)]
    pub coordinator: String,
    #[serde(default = "default_containerd")]
    pub containerd: PathBuf,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_pull_timeout")]
    pub pull_timeout_secs: u64,
}

fn default_containerd() -> PathBuf {
    PathBuf::from("/run/containerd/containerd.sock")
}

fn default_pull_timeout() -> u64 {
    3600
}

impl Default for PreheatSection {
    fn default() -> Self {
        Self {
            coordinator: String::new(),
            containerd: default_containerd(),
            labels: Default::default(),
            pull_timeout_secs: default_pull_timeout(),
        }
    }
}

/// `[mirror]`: shoald as a registry mirror in containerd's hosts.toml ([`crate::mirror`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSection {
    /// Serve the mirror. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// Where it listens (plain HTTP). Default `127.0.0.1:7075`.
    #[serde(default = "default_mirror_listen")]
    pub listen: SocketAddr,
    /// Registry host (`host[:port]`) for requests without `?ns=`; empty: such requests are
    /// refused. Default empty.
    #[serde(default)]
    pub default_upstream: String,
    /// Seconds a successful access check (per credentials, repository and blob) is reused.
    /// Default 30, at most 3600.
    #[serde(default = "default_access_ttl_secs")]
    pub access_ttl_secs: u64,
    /// Registry hosts `shoald hosts` writes a hosts.toml for, besides those of
    /// `[registry.hosts]` and `_default`; the mirror serves their blobs from the cache and
    /// the swarm. Default empty.
    #[serde(default)]
    pub registries: Vec<String>,
    /// Serve blobs of every other registry (those containerd sends through `_default`) from
    /// the cache and the swarm too, after the same access and origin checks. Default false:
    /// their requests pass through to the registry untouched.
    #[serde(default)]
    pub serve_other_registries: bool,
    /// containerd's hosts directory, the default of `shoald hosts --dir`. Default
    /// `/etc/containerd/certs.d`.
    #[serde(default = "default_hosts_dir")]
    pub hosts_dir: PathBuf,
}

fn default_mirror_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7075))
}

fn default_access_ttl_secs() -> u64 {
    30
}

fn default_hosts_dir() -> PathBuf {
    PathBuf::from("/etc/containerd/certs.d")
}

impl Default for MirrorSection {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: default_mirror_listen(),
            default_upstream: String::new(),
            access_ttl_secs: default_access_ttl_secs(),
            registries: Vec::new(),
            serve_other_registries: false,
            hosts_dir: default_hosts_dir(),
        }
    }
}

/// `[swarm]`: this node as a swarm peer (see the module documentation for every field).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmSection {
    #[serde(default)]
    pub enabled: bool,
    /// Default: the node name of `[swarm.tls]`'s certificate (which it must equal when set),
    /// or without TLS the host name.
    #[serde(default)]
    pub node_name: String,
    #[serde(default = "default_swarm_listen")]
    pub listen: SocketAddr,
    /// `IP` or `IP:port`; empty: derived (see [`crate::node`]).
    #[serde(default)]
    pub advertise: String,
    #[serde(default)]
    pub trackers: Vec<String>,
    #[serde(default)]
    pub insecure_plaintext: bool,
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    #[serde(default = "default_max_uploads")]
    pub max_uploads: usize,
    #[serde(default)]
    pub upload_bytes_per_sec: u64,
    /// Unset: [`SwarmSection::peer_refresh`]'s default.
    #[serde(default)]
    pub peer_refresh_ms: Option<u64>,
    #[serde(default = "default_chunks_in_flight")]
    pub chunks_in_flight: usize,
    #[serde(default = "default_chunks_per_peer")]
    pub chunks_per_peer: usize,
    #[serde(default = "default_have_peers")]
    pub have_peers: usize,
    #[serde(default = "default_max_have_streams")]
    pub max_have_streams: usize,
}

/// The accepted range of `peer_refresh_ms`.
const PEER_REFRESH_MS: std::ops::RangeInclusive<u64> = 50..=10_000;

impl SwarmSection {
    /// How often a download asks the trackers for peers: `peer_refresh_ms` if set, else
    /// shoal's default for paced uploads (`upload_bytes_per_sec` set) or unpaced ones
    /// ([`peer_refresh_for`]).
    pub fn peer_refresh(&self) -> Duration {
        match self.peer_refresh_ms {
            Some(ms) => Duration::from_millis(ms),
            None => peer_refresh_for(self.upload_bytes_per_sec > 0),
        }
    }
}

fn default_swarm_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7070))
}

fn default_max_uploads() -> usize {
    8
}

fn default_chunks_in_flight() -> usize {
    8
}

fn default_chunks_per_peer() -> usize {
    1
}

fn default_have_peers() -> usize {
    shoal_p2p::swarm::DEFAULT_HAVE_PEERS
}

fn default_max_have_streams() -> usize {
    shoal_p2p::peer::have::DEFAULT_MAX_HAVE_STREAMS
}

impl Default for SwarmSection {
    fn default() -> Self {
        Self {
            enabled: false,
            node_name: String::new(),
            listen: default_swarm_listen(),
            advertise: String::new(),
            trackers: Vec::new(),
            insecure_plaintext: false,
            tls: None,
            max_uploads: default_max_uploads(),
            upload_bytes_per_sec: 0,
            peer_refresh_ms: None,
            chunks_in_flight: default_chunks_in_flight(),
            chunks_per_peer: default_chunks_per_peer(),
            have_peers: default_have_peers(),
            max_have_streams: default_max_have_streams(),
        }
    }
}

/// `[metrics]`: where Prometheus scrapes shoald.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `IP:port`, or empty for no endpoint. Default `127.0.0.1:9464`.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9464".into()
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

/// `[unpack]`: how images are unpacked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnpackConfig {
    /// Layers of one image fetched and unpacked at the same time. Default 4, at least 1.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_concurrency() -> usize {
    4
}

impl Default for UnpackConfig {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
        }
    }
}

/// `[cache]`: the node's bounded on-disk cache of the compressed blobs it fetched
/// ([`shoal_p2p::cache::BlobCache`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Directory of the cached blobs (created if missing). Absolute. Default
    /// `/var/lib/shoal/blobs`.
    #[serde(default = "default_cache_dir")]
    pub dir: PathBuf,
    /// Most bytes the cached blobs may take; the least recently used are removed first.
    /// Default 10 GiB, at least 1.
    #[serde(default = "default_cache_max_bytes")]
    pub max_bytes: u64,
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from("/var/lib/shoal/blobs")
}

fn default_cache_max_bytes() -> u64 {
    10 << 30
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            dir: default_cache_dir(),
            max_bytes: default_cache_max_bytes(),
        }
    }
}

impl Config {
    /// Reads, parses and validates the configuration at `path` (defaults when `None`).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        Self::parse(&config_file::read(path)?, path)
    }

    /// Parses and validates configuration text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = config_file::parse_toml(text, path)?;
        let invalid = |reason: String| ConfigError::invalid(path, reason);
        if config.unpack.concurrency == 0 {
            return Err(invalid("unpack.concurrency must be at least 1".into()));
        }
        if !config.cache.dir.is_absolute() {
            return Err(invalid(format!(
                "cache.dir {:?} must be an absolute path",
                config.cache.dir
            )));
        }
        if config.cache.max_bytes == 0 {
            return Err(invalid("cache.max_bytes must be at least 1".into()));
        }
        if !config.metrics.listen.is_empty() && config.metrics.listen.parse::<SocketAddr>().is_err()
        {
            return Err(invalid(format!(
                "metrics.listen {:?} is not IP:port (or empty)",
                config.metrics.listen
            )));
        }
        let mirror = &config.mirror;
        if mirror.access_ttl_secs > 3600 {
            return Err(invalid(format!(
                "mirror.access_ttl_secs = {} is more than 3600",
                mirror.access_ttl_secs
            )));
        }
        for host in mirror
            .registries
            .iter()
            .chain(std::iter::once(&mirror.default_upstream).filter(|h| !h.is_empty()))
        {
            if !shoal_p2p::reference::valid_host(host) {
                return Err(invalid(format!(
                    "mirror: {host:?} is not a registry host[:port]"
                )));
            }
        }
        let p = &config.preheat;
        if !p.coordinator.is_empty() {
            let scheme = if config.swarm.tls.is_some() {
                "https://"
            } else if config.swarm.insecure_plaintext {
                "http://"
            } else {
                return Err(invalid(
                    "preheat.coordinator needs swarm.tls (the cluster certificate) unless \
                     swarm.insecure_plaintext = true"
                        .into(),
                ));
            };
            if !p.coordinator.starts_with(scheme) {
                return Err(invalid(format!(
                    "preheat.coordinator {:?} must start with {scheme}",
                    p.coordinator
                )));
            }
            if !p.containerd.is_absolute() || p.pull_timeout_secs == 0 {
                return Err(invalid(
                    "preheat.containerd must be absolute and preheat.pull_timeout_secs at least 1"
                        .into(),
                ));
            }
            let info = shoal_p2p::preheat::proto::NodeInfo {
                name: "x".into(),
                labels: p.labels.clone(),
                kernel: String::new(),
                containerd: String::new(),
                shoal: String::new(),
            };
            info.validate()
                .map_err(|e| invalid(format!("preheat.labels: {e}")))?;
        }
        let swarm = &config.swarm;
        if swarm.enabled {
            if swarm.trackers.is_empty() {
                return Err(invalid(
                    "swarm.trackers: at least one tracker URL is needed when the swarm is enabled"
                        .into(),
                ));
            }
            let scheme = if swarm.tls.is_some() {
                "https://"
            } else if swarm.insecure_plaintext {
                "http://"
            } else {
                return Err(invalid(
                    "swarm.tls (ca, cert, key) is required unless swarm.insecure_plaintext = true"
                        .into(),
                ));
            };
            for url in &swarm.trackers {
                if !url.starts_with(scheme) {
                    return Err(invalid(format!(
                        "swarm.trackers: {url:?} must start with {scheme}"
                    )));
                }
            }
            if swarm.max_uploads == 0
                || swarm.chunks_in_flight == 0
                || swarm.chunks_per_peer == 0
                || swarm.max_have_streams == 0
            {
                return Err(invalid(
                    "swarm.max_uploads, chunks_in_flight, chunks_per_peer and max_have_streams \
                     must be at least 1"
                        .into(),
                ));
            }
            if let Some(ms) = swarm.peer_refresh_ms {
                if !PEER_REFRESH_MS.contains(&ms) {
                    return Err(invalid(format!(
                        "swarm.peer_refresh_ms {ms} is outside {}-{}",
                        PEER_REFRESH_MS.start(),
                        PEER_REFRESH_MS.end()
                    )));
                }
            }
            if !swarm.advertise.is_empty()
                && swarm.advertise.parse::<SocketAddr>().is_err()
                && swarm.advertise.parse::<std::net::IpAddr>().is_err()
            {
                return Err(invalid(format!(
                    "swarm.advertise {:?} is not IP or IP:port",
                    swarm.advertise
                )));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
