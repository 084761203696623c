//! [`TrackerError`]: why a request to the trackers (or the chunk-manifest service) failed,
//! naming the tracker and the [`Request`], with the typed cause ([`Failure`]).

use std::fmt;

use reqwest::StatusCode;

use crate::chunk::ChunkManifestError;
use crate::digest::Digest;
use crate::error::Chain;
use crate::tls::IdentityRefusal;

/// Why a tracker request failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// Tracker `url` failed `request`, for `failure`.
    #[error("tracker {url}: {request}: {failure}")]
    Request {
        url: String,
        request: Request,
        #[source]
        failure: Failure,
    },
    /// No tracker is configured.
    #[error("no tracker configured")]
    NoTracker,
    /// Tracker `tracker` is down ([`super::MemoryTracker::set_down`]).
    #[error("tracker {tracker}: down")]
    Down { tracker: String },
    /// Every tracker failed: each one's error ([`TrackerError::Request`]), in the order of the
    /// trackers. There is no one cause, so [`std::error::Error::source`] is `None`: the causes
    /// are the failures' sources.
    #[error("no tracker answered: {}", Joined(.failures))]
    Unavailable { failures: Vec<TrackerError> },
    /// The trackers answered but do not know blob `digest` (no chunk manifest can be made):
    /// each tracker's answer (a `404` [`Failure::Status`], or why it could not be asked).
    #[error("chunk manifest of {digest} not available{}", Listed(.answers))]
    NoManifest {
        digest: Digest,
        answers: Vec<TrackerError>,
    },
}

/// A request to a tracker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `POST /v1/announce`: the node's whole state, to a tracker without delta announces.
    Announce,
    /// `POST /v1/announce/delta` with sequence number `seq`: the whole state (`whole`) or the
    /// changes since the last one the tracker took.
    DeltaAnnounce { seq: u64, whole: bool },
    /// `GET /v1/peers/{digest}`: the peers holding chunks of `digest`.
    Peers { digest: Digest },
    /// `GET /v1/chunk-manifests/{digest}`: the chunk manifest of blob `digest`.
    ChunkManifest { digest: Digest },
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Announce => f.write_str("announce"),
            Request::DeltaAnnounce { seq, whole: true } => {
                write!(f, "delta announce (seq {seq}, whole state)")
            }
            Request::DeltaAnnounce { seq, whole: false } => write!(f, "delta announce (seq {seq})"),
            Request::Peers { digest } => write!(f, "peers of {digest}"),
            Request::ChunkManifest { digest } => write!(f, "chunk manifest of {digest}"),
        }
    }
}

/// Why one request to one tracker failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The request could not be sent or its answer not read (connection refused, timeout,
    /// connection reset, ...).
    #[error("{}", Chain(.0))]
    Transport(#[source] reqwest::Error),
    /// The TLS handshake failed: the tracker's certificate was refused (not signed by the
    /// cluster CA, or not a registry-side one: [`Failure::identity_refusal`]), or the tracker
    /// refused this node's.
    #[error("TLS handshake: {}", TlsText(.0))]
    Tls(#[source] rustls::Error),
    /// The answer was longer than `limit` bytes (it had status `status`).
    #[error("status {status}: answer longer than {limit} bytes")]
    TooLong { status: StatusCode, limit: usize },
    /// The tracker answered `status` with `message` (its error body's `error`, or the start of
    /// the body; at most [`MAX_MESSAGE`] bytes of it).
    #[error("status {status}: {message}")]
    Status { status: StatusCode, message: String },
    /// The answer is not the JSON asked for.
    #[error("malformed answer: {0}")]
    Decode(#[source] serde_json::Error),
    /// The answer is not a valid chunk manifest.
    #[error("unusable answer: {0}")]
    Manifest(#[source] ChunkManifestError),
    /// The answer is about another blob, `got`.
    #[error("the answer is about blob {got}")]
    OtherBlob { got: Digest },
    /// The tracker asked for the whole state again in answer to the whole state.
    #[error("the tracker asked for the whole state again in answer to it")]
    WholeStateRefused,
}

/// Most bytes of a tracker's error message kept in [`Failure::Status`].
pub const MAX_MESSAGE: usize = 512;

impl Failure {
    /// A failure to send a request or read its answer: [`Failure::Tls`] when a TLS error is
    /// among its causes, [`Failure::Transport`] otherwise.
    pub(crate) fn transport(error: reqwest::Error) -> Self {
        match tls_cause(&error) {
            Some(tls) => Failure::Tls(tls.clone()),
            None => Failure::Transport(error),
        }
    }

    /// Why the tracker's certificate was refused over its identity (a node's certificate,
    /// or one naming no shoal role), for a [`Failure::Tls`] that is such a refusal.
    pub fn identity_refusal(&self) -> Option<&IdentityRefusal> {
        match self {
            Failure::Tls(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                other,
            ))) => other.0.downcast_ref(),
            _ => None,
        }
    }
}

impl TrackerError {
    /// The per-tracker failure, for [`TrackerError::Request`].
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            TrackerError::Request { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

/// The first TLS error among `error`'s causes. hyper wraps it in `io::Error`s, whose `source`
/// skips what they wrap: they are looked into.
fn tls_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// The tracker's error message in an error answer: the `error` of its
/// [`super::proto::ErrorBody`], or the body as text; at most [`MAX_MESSAGE`] bytes of it.
pub(crate) fn message(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<super::proto::ErrorBody>(body) {
        Ok(b) => b.error,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(MAX_MESSAGE + 4)]).into_owned(),
    };
    if text.len() <= MAX_MESSAGE {
        return text;
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// A TLS error; a certificate refused for a reason of its own (shoal's
/// [`IdentityRefusal`]) shows that reason as it is, not wrapped in rustls's `Debug` text.
struct TlsText<'a>(&'a rustls::Error);

impl fmt::Display for TlsText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                write!(f, "invalid peer certificate: {}", other.0)
            }
            e => write!(f, "{e}"),
        }
    }
}

/// Errors joined with `; `.
struct Joined<'a>(&'a [TrackerError]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// `: ` and the errors joined with `; `, or nothing when there are none.
struct Listed<'a>(&'a [TrackerError]);

impl fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => Ok(()),
            errors => write!(f, ": {}", Joined(errors)),
        }
    }
}
