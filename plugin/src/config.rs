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
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use shoal_p2p::registry::ClientConfig;

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
    /// Reads, parses and validates the configuration at `path` (defaults when `None`).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
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
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.unpack.concurrency, 4);
        assert!(c.registry.hosts.is_empty());
        assert_eq!(c.cache.dir, Path::new("/var/lib/shoal/blobs"));
        assert_eq!(c.cache.max_bytes, 10 << 30);
    }

    #[test]
    fn reads_registry_hosts_and_unpack() {
        let c = Config::parse(
            "[registry.hosts.\"127.0.0.1:5000\"]\nplain_http = true\n[unpack]\nconcurrency = 2\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(c.registry.hosts["127.0.0.1:5000"].plain_http);
        assert_eq!(c.unpack.concurrency, 2);
    }

    #[test]
    fn the_shipped_example_parses_to_the_defaults() {
        let c = Config::parse(
            include_str!("../../shoald.toml.example"),
            Path::new("shoald.toml.example"),
        )
        .unwrap();
        let d = Config::default();
        assert_eq!(c.unpack.concurrency, d.unpack.concurrency);
        assert_eq!(c.cache.dir, d.cache.dir);
        assert_eq!(c.cache.max_bytes, d.cache.max_bytes);
        assert_eq!(c.registry.retries, d.registry.retries);
        assert_eq!(
            c.registry.request_timeout_secs,
            d.registry.request_timeout_secs
        );
        assert_eq!(
            c.registry.connect_timeout_secs,
            d.registry.connect_timeout_secs
        );
    }

    #[test]
    fn rejects_unknown_fields_and_zero_concurrency() {
        let e = Config::parse("[unpak]\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("x.toml"), "{e}");
        let e = Config::parse("[unpack]\nconcurrency = 0\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
    }

    #[test]
    fn reads_and_checks_the_cache_section() {
        let c = Config::parse(
            "[cache]\ndir = \"/srv/blobs\"\nmax_bytes = 1048576\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.cache.dir, Path::new("/srv/blobs"));
        assert_eq!(c.cache.max_bytes, 1 << 20);
        let e = Config::parse("[cache]\ndir = \"blobs\"\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = Config::parse("[cache]\nmax_bytes = 0\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("cache.max_bytes"), "{e}");
        let e = Config::parse("[cache]\nmax_bytes = -1\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("x.toml"), "{e}");
    }
}
