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
    /// shoal-p2p failed: the registry (or the seed cache, which reports as the client does),
    /// TLS material, the configuration file, a chunk manifest.
    #[error(transparent)]
    P2p(#[from] shoal_p2p::Error),

    /// The registry sent a blob whose bytes do not hash to its digest.
    #[error("registry {registry}, repository {repository}: blob {expected} read from the registry has digest {actual} ({size} bytes); nothing kept")]
    BlobDigest {
        registry: String,
        repository: String,
        expected: Digest,
        actual: Digest,
        size: u64,
    },

    /// Blob `digest` was read from the registry but is not in the seed cache `dir` afterwards
    /// (the log says why it was not kept).
    #[error("blob {digest} was read from the registry but could not be kept in the seed cache {dir:?} (see the log)")]
    NotSeeded { digest: Digest, dir: PathBuf },

    /// A chunk manifest was asked for a registry this extension does not serve.
    #[error("this shoal-registry-ext serves registry {served}, not {asked}")]
    WrongRegistry { asked: String, served: String },

    /// A malformed request (query, path, body): what is wrong with it.
    #[error("bad request: {0}")]
    BadRequest(String),

    /// A request body that is not the JSON the route takes (`what`: which body).
    #[error("bad request: {what}: {}", .source.body_text())]
    BadBody {
        what: &'static str,
        #[source]
        source: axum::extract::rejection::JsonRejection,
    },

    /// A query string that does not parse.
    #[error("bad request: query: {}", .0.body_text())]
    BadQuery(#[source] axum::extract::rejection::QueryRejection),

    /// A manifest (or index) named by a registry notification that is not JSON of a
    /// manifest.
    #[error("bad request: manifest of repository {repository} ({media_type}): {source}")]
    BadManifest {
        repository: String,
        media_type: String,
        #[source]
        source: serde_json::Error,
    },

    /// A preheat registration or job that is malformed.
    #[error("bad request: {0}")]
    PreheatSpec(#[from] shoal_p2p::preheat::proto::SpecError),

    /// A request body cannot be read (longer than `limit`, or cut).
    #[error("bad request: reading the body (at most {limit} bytes): {source}")]
    Body {
        limit: usize,
        #[source]
        source: axum::Error,
    },

    /// A notification body that is not a registry event envelope.
    #[error("bad request: not a registry event envelope ({{\"events\": [...]}}): {0}")]
    Envelope(#[source] serde_json::Error),

    /// A request's digest is not a digest.
    #[error("bad request: {0}")]
    BadDigest(#[source] shoal_p2p::digest::DigestParseError),

    /// A request without acceptable credentials (preheat admin listener).
    #[error("unauthorized: {0}")]
    Unauthorized(String),

    /// The client's certificate may not do this (another node's name, the wrong role).
    #[error("forbidden: {0}")]
    Forbidden(String),

    /// What a request names does not exist (a preheat job).
    #[error("not found: {0}")]
    NotFound(String),

    /// The preheat store (redb) failed at step `what`.
    #[error("preheat store {path:?}: {what}: {source}")]
    Store {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: Box<redb::Error>,
    },

    /// A record could not be encoded as JSON (`what`: the preheat store's node or job).
    #[error("encoding {what} as JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

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

    /// The BitTorrent export (librqbit) failed to make or seed a torrent (`what`: the step,
    /// naming the blob or file).
    #[cfg(feature = "torrent")]
    #[error("BitTorrent export, {what}: {source:#}")]
    Torrent {
        what: String,
        #[source]
        source: anyhow::Error,
    },

    /// A `.torrent` (kept, or just made) is not what the export makes for blob `digest`.
    #[cfg(feature = "torrent")]
    #[error("BitTorrent export, reading the .torrent of {digest}: not a single-file torrent named {name}")]
    TorrentShape { digest: Digest, name: String },

    /// librqbit's check of blob `digest`'s data `data` found bad pieces: the seeder would
    /// download, so the torrent is dropped.
    #[cfg(feature = "torrent")]
    #[error("BitTorrent export, seeding blob {digest}: its data {data:?} fails the piece check ({good} of {total} bytes good)")]
    TorrentData {
        digest: Digest,
        data: PathBuf,
        good: u64,
        total: u64,
    },

    /// The torrent session did not add blob `digest`'s torrent (it answered with a listing
    /// only).
    #[cfg(feature = "torrent")]
    #[error("BitTorrent export, seeding blob {digest}: the session did not add it")]
    TorrentNotAdded { digest: Digest },

    /// Blob `digest` left the seed cache before the export linked it.
    #[cfg(feature = "torrent")]
    #[error("blob {digest} left the seed cache before it was linked")]
    Evicted { digest: Digest },

    /// A path the export passes to librqbit is not UTF-8.
    #[cfg(feature = "torrent")]
    #[error("{path:?} is not UTF-8")]
    NotUtf8 { path: PathBuf },

    /// A configuration field [`crate::Config::load`] sets is missing: the configuration was
    /// not loaded through it.
    #[error("{field} is not set: the config was not loaded")]
    NotLoaded { field: &'static str },

    /// A blocking or background task (`what`) panicked or was cancelled.
    #[error("internal error: {what}: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },

    /// The thread hashing a blob for its chunk manifest stopped before the blob's end.
    #[error("internal error: the hashing thread stopped early")]
    HashingStopped,

    /// A computation shared by several requests (single flight) ended without a result.
    #[error("a manifest or torrent shared by several requests: {0}")]
    Abandoned(#[from] shoal_p2p::single_flight::Abandoned),

    /// The same error, shared by every request that waited for one computation.
    #[error(transparent)]
    Shared(Arc<Error>),
}

impl From<RegistryError> for Error {
    fn from(e: RegistryError) -> Self {
        Error::P2p(e.into())
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::P2p(e.into())
    }
}

impl From<TlsError> for Error {
    fn from(e: TlsError) -> Self {
        Error::P2p(e.into())
    }
}

impl From<ChunkManifestError> for Error {
    fn from(e: ChunkManifestError) -> Self {
        Error::P2p(e.into())
    }
}

impl Error {
    /// The HTTP status an API answer carries for this error: the only place an error
    /// becomes a status.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Shared(inner) => inner.status(),
            Error::BadRequest(_)
            | Error::BadDigest(_)
            | Error::Body { .. }
            | Error::Envelope(_)
            | Error::PreheatSpec(_)
            | Error::BadBody { .. }
            | Error::BadQuery(_)
            | Error::BadManifest { .. } => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::WrongRegistry { .. } => StatusCode::NOT_FOUND,
            Error::P2p(e) => p2p_status(e),
            Error::BlobDigest { .. } => StatusCode::BAD_GATEWAY,
            Error::NotSeeded { .. }
            | Error::Io { .. }
            | Error::Store { .. }
            | Error::Json { .. }
            | Error::Listen { .. }
            | Error::NotLoaded { .. }
            | Error::Task { .. }
            | Error::HashingStopped
            | Error::Abandoned(_) => StatusCode::INTERNAL_SERVER_ERROR,
            #[cfg(feature = "torrent")]
            Error::Torrent { .. }
            | Error::TorrentShape { .. }
            | Error::TorrentData { .. }
            | Error::TorrentNotAdded { .. }
            | Error::Evicted { .. }
            | Error::NotUtf8 { .. } => StatusCode::INTERNAL_SERVER_ERROR,
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

/// The status of a shoal-p2p error: the registry's "not found" is ours, its other failures
/// (and a blob that does not hash to its digest) are a bad gateway, the rest is ours.
fn p2p_status(e: &shoal_p2p::Error) -> StatusCode {
    use shoal_p2p::Error as P;
    match e {
        P::Registry(r) if r.is_not_found() => StatusCode::NOT_FOUND,
        P::Registry(RegistryError::InvalidConfig { .. } | RegistryError::HttpClient { .. }) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        P::Registry(_) => StatusCode::BAD_GATEWAY,
        P::ChunkManifest(ChunkManifestError::BlobDigest { .. }) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
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
        let not_found = Error::from(RegistryError::Http {
            method: "GET".into(),
            url: "u".into(),
            repository: "a".into(),
            status: 404,
            errors: vec![],
        });
        assert_eq!(not_found.status(), StatusCode::NOT_FOUND);
        let denied = Error::from(RegistryError::Unauthorized {
            registry: "r".into(),
            repository: "a".into(),
            reason: "no".into(),
        });
        assert_eq!(denied.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn p2p_categories_map_to_their_status() {
        use shoal_p2p::swarm::planner::PlanError;
        let d = Digest::of(b"x");
        let swarm = Error::P2p(shoal_p2p::Error::Swarm {
            digest: d.clone(),
            source: shoal_p2p::swarm::SwarmError::Plan(PlanError::RegistryMismatch { index: 3 }),
        });
        assert_eq!(swarm.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(swarm.to_string().contains(&d.to_string()), "{swarm}");
        let corrupt = Error::from(ChunkManifestError::BlobDigest {
            expected: d.clone(),
            actual: Digest::of(b"y"),
            size: 1,
        });
        assert_eq!(corrupt.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(corrupt.result_label(), "registry_error");
        let json = Error::from(ChunkManifestError::Json(
            serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err(),
        ));
        assert_eq!(json.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            std::error::Error::source(&json).is_some(),
            "the JSON error is kept as the cause"
        );
    }
}
