//! OCI distribution client: resolve an image reference to its manifest and config, and stream
//! blobs (whole, verified, or by byte range). The registry is one more chunk source for the
//! swarm.
//!
//! - Anonymous first; a `401` is answered per its `WWW-Authenticate` challenge (Basic with
//!   configured credentials, or a Bearer token from the realm, cached per registry and scope).
//! - Plain HTTP only for hosts configured with `plain_http = true`.
//! - Idempotent requests are retried with backoff on connect errors, 5xx and 429.
//! - Redirects (to blob storage) are followed; reqwest drops `Authorization` when a redirect
//!   leaves the registry's scheme/host/port.
//! - Manifests and configs are capped at [`MAX_MANIFEST_BYTES`]; nothing malformed panics.

mod auth;
mod client;
mod error;
mod platform;
#[cfg(test)]
mod props;
mod resolve;
mod stream;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

pub use auth::{parse_www_authenticate, Challenge};
pub use client::RegistryClient;
pub use error::{parse_error_body, OciError, RegistryError, TransportKind};
pub use platform::{Platform, PlatformParseError};
pub use resolve::{LayerInfo, RawManifest, ResolvedImage};
pub use stream::{verify_stream, BlobStream};

/// Largest manifest, index or image config accepted.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest token endpoint answer accepted.
pub const MAX_TOKEN_RESPONSE_BYTES: u64 = 1 << 20;
/// Largest error body read (the rest is ignored).
pub const MAX_ERROR_BODY_BYTES: u64 = 64 << 10;

/// Media types the client asks for and understands.
pub mod media_type {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
}

/// Registry client settings (the `[registry]` section of a component's TOML config).
#[derive(Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Per-registry settings keyed by `host[:port]` as written in image references
    /// (`docker.io`, `127.0.0.1:5000`). Default: empty (every registry HTTPS, anonymous).
    pub hosts: BTreeMap<String, HostConfig>,
    /// Limit for a whole request (manifests, configs, tokens, HEAD), and for waiting for a
    /// blob's response headers or for its next bytes. Default: 30.
    pub request_timeout_secs: u64,
    /// Limit for establishing a connection (TCP + TLS). Default: 10.
    pub connect_timeout_secs: u64,
    /// Extra attempts for idempotent requests after a connect error, a 5xx or a 429, with
    /// exponential backoff (200 ms doubling, at most 5 s; `Retry-After` honoured up to 10 s).
    /// Default: 3.
    pub retries: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            hosts: BTreeMap::new(),
            request_timeout_secs: 30,
            connect_timeout_secs: 10,
            retries: 3,
        }
    }
}

impl ClientConfig {
    /// Check the values; [`RegistryClient::new`] calls this.
    pub fn validate(&self) -> Result<(), RegistryError> {
        let bad = |reason: String| Err(RegistryError::InvalidConfig { reason });
        if self.request_timeout_secs == 0 {
            return bad("request_timeout_secs must be at least 1".into());
        }
        if self.connect_timeout_secs == 0 {
            return bad("connect_timeout_secs must be at least 1".into());
        }
        if self.retries > 10 {
            return bad(format!("retries = {} is more than 10", self.retries));
        }
        for (host, h) in &self.hosts {
            if !crate::reference::valid_host(host) {
                return bad(format!("hosts key {host:?} is not a registry host[:port]"));
            }
            if h.username.is_some() != h.password.is_some() {
                return bad(format!(
                    "host {host}: username and password must be set together"
                ));
            }
        }
        Ok(())
    }

    /// The settings for `registry` (as in an image reference).
    pub fn host(&self, registry: &str) -> Option<&HostConfig> {
        self.hosts.get(registry).or_else(|| {
            (registry == crate::reference::DEFAULT_REGISTRY)
                .then(|| self.hosts.get(crate::reference::DOCKER_HUB_API_HOST))
                .flatten()
        })
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("hosts", &self.hosts)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("retries", &self.retries)
            .finish()
    }
}

/// Settings for one registry host.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// Talk plain HTTP instead of HTTPS (test registries on 127.0.0.1). Default: false.
    pub plain_http: bool,
    /// User for Basic auth and for the token realm. Default: none (anonymous).
    pub username: Option<String>,
    /// Password or access token for `username`. Default: none. Never logged or printed.
    pub password: Option<String>,
}

impl HostConfig {
    pub(crate) fn credentials(&self) -> Option<(&str, &str)> {
        Some((self.username.as_deref()?, self.password.as_deref()?))
    }
}

impl fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |o: &Option<String>| if o.is_some() { "<redacted>" } else { "<none>" };
        f.debug_struct("HostConfig")
            .field("plain_http", &self.plain_http)
            .field("username", &format_args!("{}", redact(&self.username)))
            .field("password", &format_args!("{}", redact(&self.password)))
            .finish()
    }
}
