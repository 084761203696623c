//! The sections of [`super::Config`] other than the top-level fields: each with its
//! documented defaults (the module docs of [`super`] show them as TOML).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use shoal_p2p::chunk::DEFAULT_CHUNK_SIZE;

use super::optional_addr;

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
    /// Chunk uploads served at once. Default 16, at least 1.
    pub max_uploads: usize,
    /// Upload rate limit in bytes/s. Default 0 = unlimited. Set, uploads are paced at it and
    /// served oldest first (the chunk server's token bucket).
    pub upload_bytes_per_sec: u64,
}

impl Default for SeedConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/shoal-registry-ext/blobs"),
            max_bytes: 10 << 30,
            max_uploads: 16,
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
