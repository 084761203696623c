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
//! max_uploads = 16                  # default 16; at least 1
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
//! # The push hook: the registry's notifications (see docs/registry-side.md).
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
use shoal_p2p::chunk::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use shoal_p2p::config_file;
pub use shoal_p2p::config_file::ConfigError;
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::ClientConfig;
use shoal_p2p::tls::TlsFiles;

mod sections;
pub use sections::{
    HotCacheConfig, ManifestsConfig, NotificationsConfig, PreheatConfig, SeedConfig, TorrentConfig,
    TrackerConfig,
};

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

impl Config {
    /// Reads, parses, normalises and validates the configuration at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&config_file::read(path)?, path)
    }

    /// [`Self::load`] with the top-level `advertise` replaced by `advertise` when given
    /// (`serve --advertise`: e.g. a pod's IP, which a configuration file shared by several
    /// replicas cannot name), before anything is derived from it.
    pub fn load_advertising(
        path: &Path,
        advertise: Option<SocketAddr>,
    ) -> Result<Self, ConfigError> {
        Self::parse_advertising(&config_file::read(path)?, path, advertise)
    }

    /// Parses, normalises and validates configuration text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_advertising(text, path, None)
    }

    /// [`Self::parse`] with `advertise` as in [`Self::load_advertising`].
    pub fn parse_advertising(
        text: &str,
        path: &Path,
        advertise: Option<SocketAddr>,
    ) -> Result<Self, ConfigError> {
        let mut raw: RawConfig = config_file::parse_toml(text, path)?;
        if advertise.is_some() {
            raw.advertise = advertise;
        }
        raw.normalise()
            .map_err(|reason| ConfigError::invalid(path, reason))
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
mod tests;
