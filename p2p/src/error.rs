//! [`Error`]: the one error type of shoal-p2p's API. Each variant is a category (the
//! registry, the blob cache, the swarm, a tracker, a peer, TLS, configuration, ...) carrying
//! what it was about (digest, path, peer, URL) and the typed cause; the detailed causes of a
//! domain are its own enums ([`RegistryError`], [`SwarmError`], [`PeerError`], ...), carried as
//! variant payloads.
//!
//! The boundaries map an [`Error`] to a status in one place each: the chunk server
//! (`peer::server`), shoald's mirror and snapshotter, the registry extension's API.

use std::fmt;
use std::path::PathBuf;

use crate::chunk::ChunkManifestError;
use crate::config_file::ConfigError;
use crate::digest::Digest;
use crate::peer::PeerError;
use crate::preheat::PreheatClientError;
use crate::reference::ReferenceError;
use crate::registry::RegistryError;
use crate::swarm::SwarmError;
use crate::tls::{IdentityError, TlsError};
use crate::tracker::TrackerError;

/// Everything that can go wrong in shoal-p2p.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry (the source of every blob) refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),

    /// The swarm could not deliver blob `digest` (every source failed), or reading it back
    /// failed.
    #[error("swarm fetch of blob {digest}: {source}")]
    Swarm {
        digest: Digest,
        #[source]
        source: SwarmError,
    },

    /// The on-disk blob cache ([`crate::cache::BlobCache`]) failed at `path`.
    #[error("blob cache {path:?}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// What the cache kept under `path` does not hash to `expected`: not kept.
    #[error("blob cache {path:?}: content is {actual}, not {expected}; not kept")]
    CacheDigest {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },

    /// Cached blob `digest` at `path` turned out corrupt while served (it hashes to
    /// `actual`, or ends at byte `ends_at`): removed from the cache.
    #[error("blob cache {path:?}: cached blob {digest}: {}; removed", match (.actual, .ends_at) { (Some(a), _) => format!("hashes to {a}"), (None, Some(at)) => format!("ends at byte {at}"), (None, None) => "corrupt".to_string() })]
    CacheCorrupt {
        path: PathBuf,
        digest: Digest,
        actual: Option<Digest>,
        ends_at: Option<u64>,
    },

    /// The node holds blob `digest` (cached or downloading) only from other registries than
    /// `registry`, and the reader may use only bytes known from `registry`
    /// ([`crate::source::Reader::Client`]): shoald's mirror passes such requests upstream.
    #[error("blob {digest} is held only from other registries than {registry}; not served for it")]
    OtherOrigin { registry: String, digest: Digest },

    /// A tracker (or the chunk-manifest service) refused or failed.
    #[error(transparent)]
    Tracker(#[from] TrackerError),

    /// A peer's chunk server refused or failed.
    #[error(transparent)]
    Peer(#[from] PeerError),

    /// A chunk manifest is unusable.
    #[error(transparent)]
    ChunkManifest(#[from] ChunkManifestError),

    /// TLS material cannot be loaded or used.
    #[error(transparent)]
    Tls(#[from] TlsError),

    /// A certificate names no usable shoal identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),

    /// A configuration file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A string is not an image reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),

    /// A request to the preheat coordinator failed.
    #[error(transparent)]
    Preheat(#[from] PreheatClientError),
}

impl Error {
    /// The registry's error, if it is one.
    pub fn registry(&self) -> Option<&RegistryError> {
        match self {
            Error::Registry(e) => Some(e),
            _ => None,
        }
    }

    /// The registry's HTTP status, for [`RegistryError::Http`].
    pub fn status(&self) -> Option<u16> {
        self.registry().and_then(RegistryError::status)
    }

    /// The first OCI error code the registry sent (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, ...).
    pub fn oci_code(&self) -> Option<&str> {
        self.registry().and_then(RegistryError::oci_code)
    }

    /// True for "does not exist" answers of the registry (HTTP 404 or a `*_UNKNOWN` code).
    pub fn is_not_found(&self) -> bool {
        self.registry().is_some_and(RegistryError::is_not_found)
    }

    /// True when the registry refused the credentials.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Error::Registry(RegistryError::Unauthorized { .. }))
    }
}

/// `error` and its sources, joined with `: ` (a source whose text the message already holds
/// is skipped): for causes whose own message is terse (reqwest's "error sending request").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// Displays an error with its sources ([`error_chain`]), for `#[error(...)]` messages of
/// variants whose typed cause says little on its own.
pub(crate) struct Chain<'a>(pub(crate) &'a dyn std::error::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&error_chain(self.0))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::swarm::planner::PlanError;

    #[test]
    fn a_swarm_failure_names_the_blob_and_keeps_the_typed_cause() {
        let digest = Digest::of(b"blob");
        let e = Error::Swarm {
            digest: digest.clone(),
            source: SwarmError::Plan(PlanError::Stalled {
                secs: 30,
                held: 2,
                total: 5,
            }),
        };
        let text = e.to_string();
        assert!(
            text.contains(&format!("swarm fetch of blob {digest}")),
            "{text}"
        );
        assert!(
            text.contains("no chunk arrived for 30s (2 of 5 held)"),
            "{text}"
        );
        let cause = e.source().and_then(|s| s.downcast_ref::<SwarmError>());
        assert!(
            matches!(cause, Some(SwarmError::Plan(PlanError::Stalled { .. }))),
            "{cause:?}"
        );
        assert!(!e.is_not_found() && !e.is_unauthorized() && e.status().is_none());
    }

    #[test]
    fn the_registry_category_answers_for_its_errors() {
        let e: Error = RegistryError::Http {
            method: "GET".into(),
            url: "http://r/v2/a/blobs/x".into(),
            repository: "a".into(),
            status: 404,
            errors: vec![],
        }
        .into();
        assert!(e.is_not_found());
        assert_eq!(e.status(), Some(404));
        let e: Error = RegistryError::Unauthorized {
            registry: "r".into(),
            repository: "a".into(),
            reason: "no".into(),
        }
        .into();
        assert!(e.is_unauthorized());
    }

    #[test]
    fn the_chain_shows_what_a_terse_cause_hides() {
        let inner = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let outer = PeerError::Transport {
            peer: "127.0.0.1:1".parse().unwrap(),
            digest: Digest::of(b"x"),
            start: 0,
            end: 10,
            source: Box::new(std::io::Error::other(inner)),
        };
        let text = outer.to_string();
        assert!(text.starts_with("peer 127.0.0.1:1: sha256:"), "{text}");
        assert!(text.contains("bytes 0..10: connection refused"), "{text}");
    }
}
