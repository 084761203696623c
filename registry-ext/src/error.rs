//! The crate's error type, and its mapping to an HTTP status and
//! [`ErrorBody`](shoal_p2p::tracker::proto::ErrorBody) (the only place that mapping is made).

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use shoal_p2p::chunk::ChunkManifestError;
use shoal_p2p::registry::RegistryError;
use shoal_p2p::tls::TlsError;
use shoal_p2p::tracker::proto::ErrorBody;
use shoal_p2p::Digest;

use crate::config::ConfigError;

/// Everything that can go wrong in shoal-registry-ext.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// TLS material cannot be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),

    /// Talking to the registry failed (or the seed cache, which reports as the client does).
    #[error(transparent)]
    Registry(#[from] RegistryError),

    /// A chunk manifest cannot be made or used.
    #[error(transparent)]
    ChunkManifest(#[from] ChunkManifestError),

    /// The registry sent a blob whose bytes do not hash to its digest.
    #[error("registry {registry}, repository {repository}: blob {expected} read from the registry has digest {actual} ({size} bytes); nothing kept")]
    BlobDigest {
        registry: String,
        repository: String,
        expected: Digest,
        actual: Digest,
        size: u64,
    },

    /// A chunk manifest was asked for a registry this extension does not serve.
    #[error("this shoal-registry-ext serves registry {served}, not {asked}")]
    WrongRegistry { asked: String, served: String },

    /// A malformed request (query, path, body).
    #[error("bad request: {0}")]
    BadRequest(String),

    /// A request without acceptable credentials (preheat admin listener).
    #[error("unauthorized: {0}")]
    Unauthorized(String),

    /// The client's certificate may not do this (another node's name, the wrong role).
    #[error("forbidden: {0}")]
    Forbidden(String),

    /// What a request names does not exist (a preheat job).
    #[error("not found: {0}")]
    NotFound(String),

    /// The preheat store (redb) failed.
    #[error("preheat store {path:?}: {reason}")]
    Store { path: PathBuf, reason: String },

    /// A file-system operation failed.
    #[error("{what} {path:?}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A listener failed.
    #[error("{what}: {source}")]
    Listen {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// The BitTorrent export (librqbit) failed to make or seed a torrent.
    #[error("BitTorrent export, {what}: {reason}")]
    Torrent { what: String, reason: String },

    /// A background task failed unexpectedly (panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),

    /// A computation shared by several requests (single flight) ended without a result.
    #[error("a manifest or torrent shared by several requests: {0}")]
    Abandoned(#[from] shoal_p2p::single_flight::Abandoned),

    /// The same error, shared by every request that waited for one computation.
    #[error(transparent)]
    Shared(Arc<Error>),
}

impl Error {
    /// The HTTP status an API answer carries for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Shared(inner) => inner.status(),
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::WrongRegistry { .. } => StatusCode::NOT_FOUND,
            Error::Registry(e) if e.is_not_found() => StatusCode::NOT_FOUND,
            Error::Registry(RegistryError::InvalidConfig { .. } | RegistryError::Cache { .. }) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Error::Registry(_) | Error::BlobDigest { .. } => StatusCode::BAD_GATEWAY,
            Error::ChunkManifest(ChunkManifestError::BlobDigest { .. }) => StatusCode::BAD_GATEWAY,
            Error::Config(_)
            | Error::Tls(_)
            | Error::ChunkManifest(_)
            | Error::Io { .. }
            | Error::Store { .. }
            | Error::Listen { .. }
            | Error::Torrent { .. }
            | Error::Abandoned(_)
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// `manifest` request result label for this error.
    pub(crate) fn result_label(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::NOT_FOUND if self.is_wrong_registry() => "wrong_registry",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::BAD_GATEWAY => "registry_error",
            _ => "error",
        }
    }

    fn is_wrong_registry(&self) -> bool {
        match self {
            Error::Shared(inner) => inner.is_wrong_registry(),
            e => matches!(e, Error::WrongRegistry { .. }),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(%status, "{self}");
        } else {
            tracing::debug!(%status, "{self}");
        }
        let body = ErrorBody {
            error: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let shared = Error::Shared(Arc::new(Error::BadRequest("x".into())));
        assert_eq!(shared.status(), StatusCode::BAD_REQUEST);
        assert_eq!(shared.to_string(), "bad request: x");
        let wrong = Error::WrongRegistry {
            asked: "a.example".into(),
            served: "b.example".into(),
        };
        assert_eq!(wrong.status(), StatusCode::NOT_FOUND);
        assert_eq!(wrong.result_label(), "wrong_registry");
        let d = Digest::of(b"x");
        let mismatch = Error::BlobDigest {
            registry: "r".into(),
            repository: "a".into(),
            expected: d.clone(),
            actual: d,
            size: 1,
        };
        assert_eq!(mismatch.status(), StatusCode::BAD_GATEWAY);
        let not_found = Error::Registry(RegistryError::Http {
            method: "GET".into(),
            url: "u".into(),
            repository: "a".into(),
            status: 404,
            errors: vec![],
        });
        assert_eq!(not_found.status(), StatusCode::NOT_FOUND);
        let denied = Error::Registry(RegistryError::Unauthorized {
            registry: "r".into(),
            repository: "a".into(),
            reason: "no".into(),
        });
        assert_eq!(denied.status(), StatusCode::BAD_GATEWAY);
    }
}
