//! shoal-registry-ext's configuration file (TOML). Parsed, normalised and validated in one
//! [`Config::load`]; unknown fields are refused. Only `registry_host` (and `[tls]`, unless
//! `insecure_plaintext`) must be set; everything else has a default.
//!
//! ```toml
//! # Where the API (tracker, chunk manifests) and the seeder's chunks are served: HTTPS with
//! # mutual TLS against the cluster CA, or plain HTTP when insecure_plaintext = true.
//! listen = "0.0.0.0:7080"           # default "0.0.0.0:7080"
//! # "IP:port" that peers dial for the seeder's chunks. Default: listen, if its IP is specified;
//! # required when listen's IP is unspecified (0.0.0.0 or [::]).
//! advertise = ""                    # default ""
//! # Plain-HTTP listener for GET /metrics (Prometheus). "" disables it.
//! metrics_listen = "127.0.0.1:9465" # default "127.0.0.1:9465"
//! # Plain HTTP instead of mutual TLS: only for tests, never in a cluster.
//! insecure_plaintext = false        # default false
//! # Required: the registry host, as written in image references ("registry.example:5000"),
//! # whose blobs this extension serves; requests naming another registry get 404.
//! registry_host = "registry.example:5000"
//!
//! # Required unless insecure_plaintext: PEM files of the cluster CA and this server's
//! # certificate (issued by the cluster CA) and key.
//! [tls]
//! ca = "/etc/shoal/ca.pem"
//! cert = "/etc/shoal/registry-ext.pem"
//! key = "/etc/shoal/registry-ext-key.pem"
//!
//! # How to reach the registry (shoal_p2p::registry::ClientConfig).
//! [registry]
//! request_timeout_secs = 30         # default 30
//! connect_timeout_secs = 10         # default 10
//! retries = 3                       # default 3
//! [registry.hosts."registry.example:5000"]
//! plain_http = false                # default false
//! username = "reader"               # default: anonymous
//! password = "secret"
//!
//! # Chunk manifests made by this extension, kept on disk.
//! [manifests]
//! dir = "/var/lib/shoal-registry-ext/manifests" # default; absolute
//! chunk_size = 4194304              # default 4 MiB; within 64 KiB..=64 MiB
//!
//! # The first seeder: blobs read to make manifests are kept here and served to peers.
//! [seed]
//! dir = "/var/lib/shoal-registry-ext/blobs"     # default; absolute
//! max_bytes = 10737418240           # default 10 GiB; at least 1
//! max_uploads = 32                  # default 32; at least 1
//! upload_bytes_per_sec = 0          # default 0 = unlimited
//!
//! # The tracker.
//! [tracker]
//! announce_interval_ms = 1000       # default 1000; told to peers in every announce reply
//! peer_ttl_ms = 5000                # default 5000; more than announce_interval_ms
//! max_peers = 30                    # default 30; longest peer list (1..=1000)
//!
//! # Optional BitTorrent export (needs a binary built with `--features torrent`): a v1
//! # .torrent per seeded blob at GET /v1/torrents/<digest>, seeded by a librqbit session.
//! [torrent]
//! enabled = false                   # default false; true without the feature fails load
//! listen = "0.0.0.0:6881"           # default "0.0.0.0:6881"; BitTorrent TCP listener
//! # "IP:port" BitTorrent clients dial (sent in the Shoal-Torrent-Peer header). Default:
//! # listen, if its IP is specified; else the top-level advertise IP with listen's port.
//! advertise = ""                    # default ""
//! dir = "/var/lib/shoal-registry-ext/torrents"  # default; absolute; .torrent files + data
//! piece_length = 4194304            # default 4 MiB; a power of two in 16 KiB..=16 MiB
//! max_bytes = 10737418240           # default 10 GiB; torrent data kept, oldest out first
//! upload_bytes_per_sec = 0          # default 0 = unlimited (else at most 4294967295)
//!
//! # The push hook: the registry's notifications (see README "Registry side").
//! [notifications]
//! enabled = false                   # default false
//! # Its own plain-HTTP listener (the registry cannot present a client certificate); keep it
//! # on loopback or a network only the registry reaches.
//! listen = "127.0.0.1:7081"         # default "127.0.0.1:7081"
//! # Shared secret: requests must carry "Authorization: Bearer <token>". Required when
//! # enabled; at least 16 characters.
//! token = ""                        # default ""
//! concurrency = 2                   # default 2; warm-ups at once (1..=64)
//! queue = 1024                      # default 1024; warm-ups waiting (more are dropped)
//!
//! # The hot cache: chunks of small, often requested blobs kept in memory for the seeder.
//! [hot_cache]
//! max_bytes = 268435456             # default 256 MiB; 0 disables; else at least chunk_size
//! max_blob_bytes = 16777216         # default 16 MiB; only chunks of blobs this small or less
//!
//! # Preheat coordinator (nodes register and heartbeat; jobs warm images onto node groups).
//! [preheat]
//! enabled = false                   # default false
//! state = "/var/lib/shoal-registry-ext/preheat.redb" # default; absolute: nodes and jobs
//! heartbeat_interval_ms = 1000      # default 1000; told to nodes
//! down_after_ms = 5000              # default 5000; a node silent this long is down
//! concurrency = 0                   # default 0 = no limit: nodes of one group pulling at
//!                                   # once (all groups are dispatched at the same time)
//! admin_listen = ""                 # default "" = none; "IP:port" of the admin API for
//!                                   # bearer tokens (HTTPS with the server certificate, no
//!                                   # client certificate; plain HTTP with insecure_plaintext)
//! tokens = []                       # bearer tokens accepted there (at least 16 characters);
//!                                   # required with admin_listen
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use shoal_p2p::chunk::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::ClientConfig;
use shoal_p2p::tls::TlsFiles;

/// The whole configuration, normalised and validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// API + seeder listener address.
    pub listen: SocketAddr,
    /// Address peers dial for the seeder's chunks (never unspecified, never port 0).
    pub advertise: SocketAddr,
    /// Plain-HTTP `/metrics` listener; `None` disables it.
    pub metrics_listen: Option<SocketAddr>,
    /// Plain HTTP instead of mutual TLS (tests only).
    pub insecure_plaintext: bool,
    /// The registry host whose blobs this extension serves.
    pub registry_host: String,
    /// TLS files; `None` only with `insecure_plaintext`.
    pub tls: Option<TlsFiles>,
    /// How to reach the registry.
    pub registry: ClientConfig,
    /// The chunk-manifest store.
    pub manifests: ManifestsConfig,
    /// The first seeder.
    pub seed: SeedConfig,
    /// The tracker.
    pub tracker: TrackerConfig,
    /// The optional BitTorrent export.
    pub torrent: TorrentConfig,
    /// The push hook.
    pub notifications: NotificationsConfig,
    /// The seeder's in-memory hot cache.
    pub hot_cache: HotCacheConfig,
    /// The preheat coordinator.
    pub preheat: PreheatConfig,
}

/// `[notifications]`: the listener the registry's notifications are sent to.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Whether the push hook listens. Default false.
    pub enabled: bool,
    /// Plain-HTTP listener for `POST /v1/registry-events`. Default `127.0.0.1:7081`.
    pub listen: SocketAddr,
    /// The shared secret the registry sends as `Authorization: Bearer <token>`. Required
    /// (16 characters or more) when enabled.
    pub token: String,
    /// Warm-ups run at once. Default 2; 1..=64.
    pub concurrency: usize,
    /// Warm-ups waiting to run; events past it are dropped (and counted). Default 1024, at
    /// least 1.
    pub queue: usize,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 7081)),
            token: String::new(),
            concurrency: 2,
            queue: 1024,
        }
    }
}

/// The token is a secret: never printed.
impl std::fmt::Debug for NotificationsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationsConfig")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("token", &if self.token.is_empty() { "" } else { "<set>" })
            .field("concurrency", &self.concurrency)
            .field("queue", &self.queue)
            .finish()
    }
}

/// `[hot_cache]`: chunks of small blobs kept in memory in front of the seed cache.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HotCacheConfig {
    /// Most bytes held. Default 256 MiB; 0 disables the cache; else at least
    /// `manifests.chunk_size`.
    pub max_bytes: u64,
    /// Only chunks of blobs of at most this many bytes are kept. Default 16 MiB.
    pub max_blob_bytes: u64,
}

impl Default for HotCacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            max_blob_bytes: 16 << 20,
        }
    }
}

/// `[preheat]`: the preheat coordinator (see [`crate::preheat`]).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PreheatConfig {
    /// Serve the preheat routes. Default false.
    pub enabled: bool,
    /// The redb file of nodes and jobs (created). Absolute. Default
    /// `/var/lib/shoal-registry-ext/preheat.redb`.
    pub state: PathBuf,
    /// Heartbeat interval told to nodes (ms). Default 1000, at least 1.
    pub heartbeat_interval_ms: u64,
    /// A node not heard from for this long (ms) is down. Default 5000; more than
    /// `heartbeat_interval_ms`.
    pub down_after_ms: u64,
    /// Nodes of one group pulling at once; 0 = no limit. Default 0.
    pub concurrency: usize,
    /// `IP:port` of the token-authenticated admin listener; `None` (`""`) = none.
    #[serde(deserialize_with = "optional_addr")]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer tokens accepted on the admin listener.
    pub tokens: Vec<String>,
}

impl Default for PreheatConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            state: PathBuf::from("/var/lib/shoal-registry-ext/preheat.redb"),
            heartbeat_interval_ms: 1000,
            down_after_ms: 5000,
            concurrency: 0,
            admin_listen: None,
            tokens: Vec::new(),
        }
    }
}

/// `[manifests]`: where chunk manifests are kept and how blobs are cut.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ManifestsConfig {
    /// Directory of the manifest files (created if missing). Absolute. Default
    /// `/var/lib/shoal-registry-ext/manifests`.
    pub dir: PathBuf,
    /// Chunk size in bytes. Default 4 MiB; within `MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`.
    pub chunk_size: u64,
}

impl Default for ManifestsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/shoal-registry-ext/manifests"),
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// `[seed]`: the blob cache the seeder serves from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SeedConfig {
    /// Directory of the kept blobs (created if missing). Absolute. Default
    /// `/var/lib/shoal-registry-ext/blobs`.
    pub dir: PathBuf,
    /// Most bytes kept; least recently used out first. Default 10 GiB, at least 1.
    pub max_bytes: u64,
    /// Chunk uploads served at once. Default 32, at least 1.
    pub max_uploads: usize,
    /// Upload rate limit in bytes/s. Default 0 = unlimited.
    pub upload_bytes_per_sec: u64,
}

impl Default for SeedConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/shoal-registry-ext/blobs"),
            max_bytes: 10 << 30,
            max_uploads: 32,
            upload_bytes_per_sec: 0,
        }
    }
}

/// `[tracker]`: announce timing and peer lists.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// Interval (ms) peers are told to announce at. Default 1000, at least 1.
    pub announce_interval_ms: u64,
    /// A peer not heard from for this long (ms) is dropped. Default 5000; more than
    /// `announce_interval_ms`.
    pub peer_ttl_ms: u64,
    /// Longest peer list returned. Default 30; 1..=1000.
    pub max_peers: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            announce_interval_ms: 1000,
            peer_ttl_ms: 5000,
            max_peers: 30,
        }
    }
}

/// `[torrent]`: the optional BitTorrent export (cargo feature `torrent`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TorrentConfig {
    /// Serve `.torrent` files and seed them. Default false. `true` in a binary built without
    /// the `torrent` feature makes [`Config::load`] fail.
    pub enabled: bool,
    /// The seeding session's BitTorrent (TCP) listen address. Default `0.0.0.0:6881`.
    pub listen: SocketAddr,
    /// `IP:port` BitTorrent clients dial. Default (`None` here, `""` in the file): `listen`
    /// if its IP is specified, else the top-level `advertise` IP with `listen`'s port; set by
    /// `load`, so after it this is always `Some` when `enabled`.
    #[serde(deserialize_with = "optional_addr")]
    pub advertise: Option<SocketAddr>,
    /// Directory of the `.torrent` files and the seeded data (hard links to, or copies of,
    /// the seed cache's blobs). Absolute. Default `/var/lib/shoal-registry-ext/torrents`.
    pub dir: PathBuf,
    /// Piece length in bytes. Default 4 MiB; a power of two in 16 KiB..=16 MiB.
    pub piece_length: u32,
    /// Most bytes of torrent data kept; least recently requested out first. Default 10 GiB,
    /// at least 1.
    pub max_bytes: u64,
    /// Upload rate limit of the seeding session in bytes/s. Default 0 = unlimited.
    pub upload_bytes_per_sec: u32,
}

impl Default for TorrentConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 6881)),
            advertise: None,
            dir: PathBuf::from("/var/lib/shoal-registry-ext/torrents"),
            piece_length: 4 << 20,
            max_bytes: 10 << 30,
            upload_bytes_per_sec: 0,
        }
    }
}

/// The file as written: top-level fields before normalisation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default, deserialize_with = "optional_addr")]
    advertise: Option<SocketAddr>,
    #[serde(default = "default_metrics_listen", deserialize_with = "optional_addr")]
    metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    insecure_plaintext: bool,
    #[serde(default)]
    registry_host: String,
    #[serde(default)]
    tls: Option<TlsFiles>,
    #[serde(default)]
    registry: ClientConfig,
    #[serde(default)]
    manifests: ManifestsConfig,
    #[serde(default)]
    seed: SeedConfig,
    #[serde(default)]
    tracker: TrackerConfig,
    #[serde(default)]
    torrent: TorrentConfig,
    #[serde(default)]
    notifications: NotificationsConfig,
    #[serde(default)]
    hot_cache: HotCacheConfig,
    #[serde(default)]
    preheat: PreheatConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7080))
}

fn default_metrics_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9465)))
}

/// `""` is "not set"; anything else must be `IP:port`.
fn optional_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{s:?} is not IP:port: {e}")))
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config {path:?}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config {path:?}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl Config {
    /// Reads, parses, normalises and validates the configuration at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses, normalises and validates configuration text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        raw.normalise().map_err(|reason| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }
}

impl RawConfig {
    fn normalise(self) -> Result<Config, String> {
        let advertise = match self.advertise {
            Some(a) => a,
            None if self.listen.ip().is_unspecified() => {
                return Err(format!(
                    "advertise is required when listen ({}) has an unspecified IP: set the \
                     IP:port peers dial for the seeder's chunks",
                    self.listen
                ))
            }
            None => self.listen,
        };
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err(format!(
                "advertise {advertise} must name a specific IP and a port other than 0"
            ));
        }
        check_registry_host(&self.registry_host)?;
        match (&self.tls, self.insecure_plaintext) {
            (None, false) => {
                return Err(
                    "[tls] (ca, cert, key) is required unless insecure_plaintext = true".into(),
                )
            }
            (Some(_), true) => {
                return Err("insecure_plaintext = true and [tls] are both set: choose one".into())
            }
            _ => {}
        }
        self.registry
            .validate()
            .map_err(|e| format!("[registry]: {e}"))?;
        let m = &self.manifests;
        if !m.dir.is_absolute() {
            return Err(format!("manifests.dir {:?} must be absolute", m.dir));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&m.chunk_size) {
            return Err(format!(
                "manifests.chunk_size {} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                m.chunk_size
            ));
        }
        let s = &self.seed;
        if !s.dir.is_absolute() {
            return Err(format!("seed.dir {:?} must be absolute", s.dir));
        }
        if s.dir == m.dir {
            return Err("seed.dir and manifests.dir must differ".into());
        }
        if s.max_bytes == 0 {
            return Err("seed.max_bytes must be at least 1".into());
        }
        if s.max_uploads == 0 {
            return Err("seed.max_uploads must be at least 1".into());
        }
        let t = &self.tracker;
        if t.announce_interval_ms == 0 {
            return Err("tracker.announce_interval_ms must be at least 1".into());
        }
        if t.peer_ttl_ms <= t.announce_interval_ms {
            return Err(format!(
                "tracker.peer_ttl_ms ({}) must be more than tracker.announce_interval_ms ({}), \
                 or peers expire between announces",
                t.peer_ttl_ms, t.announce_interval_ms
            ));
        }
        if !(1..=1000).contains(&t.max_peers) {
            return Err(format!(
                "tracker.max_peers {} is outside 1..=1000",
                t.max_peers
            ));
        }
        let torrent = normalise_torrent(self.torrent, advertise, &[&m.dir, &s.dir])?;
        let n = &self.notifications;
        if n.enabled {
            if n.token.chars().count() < 16 {
                return Err(
                    "notifications.token is required when notifications.enabled = true: \
                     a shared secret of at least 16 characters, sent by the registry as \
                     \"Authorization: Bearer <token>\""
                        .into(),
                );
            }
            if n.token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(
                    "notifications.token must not contain spaces or control characters".into(),
                );
            }
            if n.listen.port() == 0 {
                return Err("notifications.listen needs a port other than 0".into());
            }
            if n.listen == self.listen || Some(n.listen) == self.metrics_listen {
                return Err(format!(
                    "notifications.listen {} is already used by listen or metrics_listen",
                    n.listen
                ));
            }
        }
        if !(1..=64).contains(&n.concurrency) {
            return Err(format!(
                "notifications.concurrency {} is outside 1..=64",
                n.concurrency
            ));
        }
        if n.queue == 0 {
            return Err("notifications.queue must be at least 1".into());
        }
        let h = &self.hot_cache;
        if h.max_bytes != 0 && h.max_bytes < m.chunk_size {
            return Err(format!(
                "hot_cache.max_bytes {} is less than one chunk (manifests.chunk_size {}): \
                 0 disables the cache",
                h.max_bytes, m.chunk_size
            ));
        }
        let p = &self.preheat;
        if p.enabled {
            if !p.state.is_absolute() {
                return Err(format!("preheat.state {:?} must be absolute", p.state));
            }
            if p.heartbeat_interval_ms == 0 || p.down_after_ms <= p.heartbeat_interval_ms {
                return Err(format!(
                    "preheat.heartbeat_interval_ms ({}) must be at least 1 and less than \
                     preheat.down_after_ms ({})",
                    p.heartbeat_interval_ms, p.down_after_ms
                ));
            }
            if p.admin_listen.is_some() && p.tokens.is_empty() {
                return Err(
                    "preheat.admin_listen needs at least one token in preheat.tokens".into(),
                );
            }
            if p.tokens
                .iter()
                .any(|t| t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(
                    "preheat.tokens: every token needs at least 16 characters, no whitespace"
                        .into(),
                );
            }
        }
        Ok(Config {
            listen: self.listen,
            advertise,
            metrics_listen: self.metrics_listen,
            insecure_plaintext: self.insecure_plaintext,
            registry_host: self.registry_host,
            tls: self.tls,
            registry: self.registry,
            manifests: self.manifests,
            seed: self.seed,
            tracker: self.tracker,
            torrent,
            notifications: self.notifications,
            hot_cache: self.hot_cache,
            preheat: self.preheat,
        })
    }
}

/// Checks `[torrent]` and fills in its `advertise` (see [`TorrentConfig::advertise`]).
fn normalise_torrent(
    mut t: TorrentConfig,
    advertise: SocketAddr,
    other_dirs: &[&PathBuf],
) -> Result<TorrentConfig, String> {
    if !t.enabled {
        return Ok(t);
    }
    if !cfg!(feature = "torrent") {
        return Err(
            "torrent.enabled = true, but this shoal-registry-ext was built without the \
                    `torrent` feature: rebuild with `cargo build --features torrent`, or set \
                    torrent.enabled = false"
                .into(),
        );
    }
    if !t.dir.is_absolute() {
        return Err(format!("torrent.dir {:?} must be absolute", t.dir));
    }
    if other_dirs.contains(&&t.dir) {
        return Err("torrent.dir must differ from manifests.dir and seed.dir".into());
    }
    if !t.piece_length.is_power_of_two() || !(16 << 10..=16 << 20).contains(&t.piece_length) {
        return Err(format!(
            "torrent.piece_length {} is not a power of two in 16384..=16777216",
            t.piece_length
        ));
    }
    if t.max_bytes == 0 {
        return Err("torrent.max_bytes must be at least 1".into());
    }
    let a = t.advertise.unwrap_or(if t.listen.ip().is_unspecified() {
        SocketAddr::new(advertise.ip(), t.listen.port())
    } else {
        t.listen
    });
    if a.ip().is_unspecified() || a.port() == 0 {
        return Err(format!(
            "torrent.advertise {a} must name a specific IP and a port other than 0 (set it \
             when torrent.listen's port is 0)"
        ));
    }
    t.advertise = Some(a);
    Ok(t)
}

/// The host must be one image references can name: `host[:port]` that a reference parser
/// reads as a registry (it has a `.` or `:`, or is `localhost`).
fn check_registry_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err(
            "registry_host is required: the registry host (as in image references, e.g. \
             \"registry.example:5000\") whose blobs this extension serves"
                .into(),
        );
    }
    let parsed: Result<ImageReference, _> = format!("{host}/probe").parse();
    match parsed {
        Ok(r) if r.registry == host => Ok(()),
        _ => Err(format!(
            "registry_host {host:?} is not a registry host as written in image references \
             (host[:port] with a '.' or ':', or localhost)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "registry_host = \"127.0.0.1:5000\"\nlisten = \"127.0.0.1:7080\"\n\
                           insecure_plaintext = true\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("x.toml"))
    }

    #[test]
    fn minimal_config_gets_the_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.advertise, "127.0.0.1:7080".parse().unwrap());
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9465".parse().unwrap()));
        assert_eq!(c.manifests, ManifestsConfig::default());
        assert_eq!(c.seed, SeedConfig::default());
        assert_eq!(c.tracker, TrackerConfig::default());
        assert_eq!(c.torrent, TorrentConfig::default());
        assert_eq!(c.notifications, NotificationsConfig::default());
        assert!(!c.notifications.enabled);
        assert_eq!(c.hot_cache, HotCacheConfig::default());
        assert_eq!(c.preheat, PreheatConfig::default());
        assert_eq!(c.manifests.chunk_size, 4 << 20);
        assert!(c.tls.is_none());
    }

    #[test]
    fn the_shipped_example_parses() {
        let c = Config::parse(
            include_str!("../../registry-ext.toml.example"),
            Path::new("registry-ext.toml.example"),
        )
        .unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.advertise, "10.0.0.10:7080".parse().unwrap());
        assert_eq!(c.metrics_listen, default_metrics_listen());
        assert_eq!(c.registry_host, "registry.example:5000");
        assert!(c.tls.is_some() && !c.insecure_plaintext);
        assert_eq!(c.manifests, ManifestsConfig::default());
        assert_eq!(c.seed, SeedConfig::default());
        assert_eq!(c.tracker, TrackerConfig::default());
        assert_eq!(c.torrent, TorrentConfig::default());
        assert_eq!(c.registry.retries, ClientConfig::default().retries);
        assert_eq!(c.preheat, PreheatConfig::default());
        assert_eq!(c.hot_cache, HotCacheConfig::default());
        assert_eq!(c.notifications, NotificationsConfig::default());
    }

    #[test]
    fn torrent_section() {
        let enabled = format!("{MINIMAL}[torrent]\nenabled = true\n");
        if !cfg!(feature = "torrent") {
            let e = parse(&enabled).unwrap_err();
            assert!(
                e.to_string().contains("without the `torrent` feature"),
                "{e}"
            );
            // Disabled, the section is accepted as written (and not checked further).
            parse(&format!(
                "{MINIMAL}[torrent]\nenabled = false\npiece_length = 3\n"
            ))
            .unwrap();
            return;
        }
        let c = parse(&enabled).unwrap();
        // listen 0.0.0.0:6881 takes the top-level advertise IP.
        assert_eq!(c.torrent.advertise, Some("127.0.0.1:6881".parse().unwrap()));
        let c = parse(&format!(
            "{enabled}listen = \"127.0.0.2:7000\"\npiece_length = 16384\ndir = \"/t\"\n"
        ))
        .unwrap();
        assert_eq!(c.torrent.advertise, Some("127.0.0.2:7000".parse().unwrap()));
        assert_eq!(c.torrent.piece_length, 16384);
        for (extra, needle) in [
            ("piece_length = 3000000\n", "piece_length"),
            ("piece_length = 8192\n", "piece_length"),
            ("dir = \"rel\"\n", "absolute"),
            ("dir = \"/var/lib/shoal-registry-ext/blobs\"\n", "differ"),
            ("max_bytes = 0\n", "max_bytes"),
            ("listen = \"127.0.0.1:0\"\n", "torrent.advertise"),
            ("bogus = 1\n", "bogus"),
        ] {
            let e = parse(&format!("{enabled}{extra}")).unwrap_err();
            assert!(e.to_string().contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn advertise_is_required_with_an_unspecified_listen_ip() {
        let e = parse("registry_host = \"r.example\"\ninsecure_plaintext = true\n").unwrap_err();
        assert!(e.to_string().contains("advertise is required"), "{e}");
        let c = parse(
            "registry_host = \"r.example\"\ninsecure_plaintext = true\n\
             advertise = \"10.1.2.3:7080\"\nmetrics_listen = \"\"\n",
        )
        .unwrap();
        assert_eq!(c.advertise, "10.1.2.3:7080".parse().unwrap());
        assert_eq!(c.metrics_listen, None);
        for bad in ["0.0.0.0:7080", "10.1.2.3:0", "nonsense"] {
            let text = format!(
                "registry_host = \"r.example\"\ninsecure_plaintext = true\nadvertise = \"{bad}\"\n"
            );
            assert!(parse(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn registry_host_and_tls_are_checked() {
        let e = parse("listen = \"127.0.0.1:1\"\ninsecure_plaintext = true\n").unwrap_err();
        assert!(e.to_string().contains("registry_host is required"), "{e}");
        for bad in ["nodots", "a/b", "sp ace.example", "r.example:99999x"] {
            let text = format!(
                "listen = \"127.0.0.1:1\"\ninsecure_plaintext = true\nregistry_host = \"{bad}\"\n"
            );
            assert!(parse(&text).is_err(), "{bad}");
        }
        let e = parse("listen = \"127.0.0.1:1\"\nregistry_host = \"r.example\"\n").unwrap_err();
        assert!(e.to_string().contains("[tls]"), "{e}");
        let both = format!("{MINIMAL}[tls]\nca = \"/a\"\ncert = \"/b\"\nkey = \"/c\"\n");
        assert!(parse(&both).unwrap_err().to_string().contains("choose one"));
    }

    #[test]
    fn sections_are_validated() {
        for (section, needle) in [
            ("[manifests]\nchunk_size = 1\n", "chunk_size"),
            ("[manifests]\ndir = \"rel\"\n", "absolute"),
            ("[seed]\ndir = \"rel\"\n", "absolute"),
            ("[seed]\nmax_bytes = 0\n", "seed.max_bytes"),
            ("[seed]\nmax_uploads = 0\n", "seed.max_uploads"),
            ("[tracker]\npeer_ttl_ms = 1000\n", "peer_ttl_ms"),
            (
                "[tracker]\nannounce_interval_ms = 0\n",
                "announce_interval_ms",
            ),
            ("[tracker]\nmax_peers = 0\n", "max_peers"),
            ("[preheat]\nenabled = true\nstate = \"rel\"\n", "absolute"),
            (
                "[preheat]\nenabled = true\ndown_after_ms = 1000\n",
                "down_after_ms",
            ),
            (
                "[preheat]\nenabled = true\nadmin_listen = \"127.0.0.1:1\"\n",
                "token",
            ),
            ("[preheat]\nenabled = true\ntokens = [\"short\"]\n", "16"),
            ("[registry]\nretries = 99\n", "[registry]"),
            ("[notifications]\nenabled = true\n", "notifications.token"),
            (
                "[notifications]\nenabled = true\ntoken = \"short\"\n",
                "notifications.token",
            ),
            (
                "[notifications]\nenabled = true\ntoken = \"0123456789abcdef 0\"\n",
                "spaces",
            ),
            (
                "[notifications]\nenabled = true\ntoken = \"0123456789abcdef\"\n\
                 listen = \"127.0.0.1:7080\"\n",
                "already used",
            ),
            ("[notifications]\nconcurrency = 0\n", "concurrency"),
            ("[notifications]\nqueue = 0\n", "queue"),
            ("[hot_cache]\nmax_bytes = 1000\n", "hot_cache.max_bytes"),
            ("[seed]\nbogus = 1\n", "bogus"),
            ("bogus = 1\n", "bogus"),
        ] {
            let e = parse(&format!("{MINIMAL}{section}")).unwrap_err();
            assert!(e.to_string().contains(needle), "{section}: {e}");
        }
        let c = parse(&format!(
            "{MINIMAL}[seed]\nmax_uploads = 4\nupload_bytes_per_sec = 1000\n\
             [tracker]\nmax_peers = 5\n[manifests]\nchunk_size = 65536\n"
        ))
        .unwrap();
        assert_eq!(c.seed.max_uploads, 4);
        assert_eq!(c.seed.upload_bytes_per_sec, 1000);
        assert_eq!(c.tracker.max_peers, 5);
        assert_eq!(c.manifests.chunk_size, 65536);
        let c = parse(&format!(
            "{MINIMAL}[hot_cache]\nmax_bytes = 0\n[notifications]\nenabled = true\n\
             token = \"0123456789abcdef\"\nlisten = \"127.0.0.1:9999\"\n"
        ))
        .unwrap();
        assert_eq!(c.hot_cache.max_bytes, 0);
        assert_eq!(c.notifications.listen, "127.0.0.1:9999".parse().unwrap());
        let shown = format!("{:?}", c.notifications);
        assert!(
            !shown.contains("0123456789abcdef"),
            "the token is printed: {shown}"
        );
        let c = parse(&format!(
            "{MINIMAL}[preheat]\nenabled = true\nconcurrency = 2\n\
             admin_listen = \"127.0.0.1:7081\"\ntokens = [\"0123456789abcdef\"]\n"
        ))
        .unwrap();
        assert!(c.preheat.enabled);
        assert_eq!(c.preheat.concurrency, 2);
        assert_eq!(
            c.preheat.admin_listen,
            Some("127.0.0.1:7081".parse().unwrap())
        );
    }
}
