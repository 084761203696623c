//! The registry client's error type and the OCI distribution error body
//! (`{"errors":[{"code":..,"message":..,"detail":..}]}`).

use std::fmt;

use crate::digest::Digest;

/// Everything that can go wrong talking to a registry. Every variant names what it was
/// about (URL, registry, repository, digest); none ever carries a credential.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The client configuration is unusable.
    #[error("invalid registry client configuration: {reason}")]
    InvalidConfig { reason: String },

    /// The HTTP client cannot be built (TLS backend, system configuration).
    #[error("invalid registry client configuration: cannot build the HTTP client: {}", crate::error::Chain(.source))]
    HttpClient {
        #[source]
        source: reqwest::Error,
    },

    /// A request URL cannot be made (a registry host or repository that is no URL part).
    #[error("cannot build URL {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: url::ParseError,
    },

    /// The registry answered with an unexpected status; `errors` is its OCI error body.
    #[error("{method} {url} (repository {repository}) answered HTTP {status}{}", fmt_errors(.errors))]
    Http {
        method: String,
        url: String,
        repository: String,
        status: u16,
        errors: Vec<OciError>,
    },

    /// Credentials were missing or refused.
    #[error("unauthorized at registry {registry} for repository {repository}: {reason}")]
    Unauthorized {
        registry: String,
        repository: String,
        reason: String,
    },

    /// The token endpoint (realm) failed or answered something unusable.
    #[error("token request to {realm} for registry {registry} (scope {scope}) failed: {reason}")]
    Token {
        registry: String,
        realm: String,
        scope: String,
        reason: String,
    },

    /// The token service's realm (from the registry's Bearer challenge) is not a URL.
    #[error("token request to {realm} for registry {registry} (scope {scope}) failed: realm is not a URL: {source}")]
    TokenRealm {
        registry: String,
        realm: String,
        scope: String,
        #[source]
        source: url::ParseError,
    },

    /// The token service answered something that is not a token JSON object.
    #[error("token request to {realm} for registry {registry} (scope {scope}) failed: answer is not a token JSON object: {source}")]
    TokenJson {
        registry: String,
        realm: String,
        scope: String,
        #[source]
        source: serde_json::Error,
    },

    /// Content did not hash to the digest it was asked for.
    #[error("digest mismatch in repository {repository}: expected {expected}, got {actual} ({bytes} bytes)")]
    DigestMismatch {
        repository: String,
        expected: Digest,
        actual: Digest,
        bytes: u64,
    },

    /// Connecting, sending or receiving failed (timeouts included).
    #[error("transport error for {url}: {kind}: {source}")]
    Transport {
        url: String,
        kind: TransportKind,
        #[source]
        source: reqwest::Error,
    },

    /// No answer (headers, or the next bytes of a body) within the configured time.
    #[error("{url} did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },

    /// A manifest or index that cannot be used.
    #[error("invalid manifest {reference} in repository {repository}: {reason}")]
    InvalidManifest {
        repository: String,
        reference: String,
        reason: String,
    },

    /// A manifest or index that is not the JSON its media type says (`what`: "image index",
    /// "image manifest", "JSON object").
    #[error("invalid manifest {reference} in repository {repository}: bad {what}: {source}")]
    ManifestJson {
        repository: String,
        reference: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// A digest in a manifest (`what`: "config digest", "layer digest") is not a digest.
    #[error("invalid manifest {reference} in repository {repository}: {what}: {source}")]
    ManifestDigest {
        repository: String,
        reference: String,
        what: &'static str,
        #[source]
        source: crate::digest::DigestParseError,
    },

    /// A media type the client does not handle (e.g. Docker schema1).
    #[error("unsupported media type {media_type:?} for {reference} in repository {repository}: {reason}")]
    UnsupportedMediaType {
        repository: String,
        reference: String,
        media_type: String,
        reason: String,
    },

    /// The index has no manifest for the wanted platform.
    #[error("no manifest for platform {wanted} in {reference} (repository {repository}); available: [{}]", .available.join(", "))]
    NoMatchingPlatform {
        repository: String,
        reference: String,
        wanted: String,
        available: Vec<String>,
    },

    /// The image config blob is not a valid image configuration.
    #[error("invalid image config {digest} in repository {repository}: {source}")]
    InvalidConfigBlob {
        repository: String,
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },

    /// A response body was larger than the client accepts for its kind.
    #[error("response from {url} is larger than the {limit} byte limit")]
    TooLarge { url: String, limit: u64 },

    /// A byte range that cannot be asked for, or an answer that does not fit it.
    #[error("bad range {start}..{end} for blob {digest} in repository {repository}: {reason}")]
    Range {
        repository: String,
        digest: Digest,
        start: u64,
        end: u64,
        reason: String,
    },

    /// The registry's answer is malformed (missing header, bad JSON, ...).
    #[error("bad response from {url}: {reason}")]
    BadResponse { url: String, reason: String },
}

/// What kind of transport failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Timeout,
    Connect,
    Body,
    Redirect,
    Other,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Timeout => "timed out",
            TransportKind::Connect => "connection failed",
            TransportKind::Body => "reading the body failed",
            TransportKind::Redirect => "redirect failed",
            TransportKind::Other => "request failed",
        })
    }
}

impl TransportKind {
    pub(crate) fn of(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            TransportKind::Timeout
        } else if e.is_connect() {
            TransportKind::Connect
        } else if e.is_redirect() {
            TransportKind::Redirect
        } else if e.is_body() || e.is_decode() {
            TransportKind::Body
        } else {
            TransportKind::Other
        }
    }
}

impl RegistryError {
    pub(crate) fn transport(url: &str, source: reqwest::Error) -> Self {
        // reqwest's message repeats the URL; strip it to keep the message short.
        let source = source.without_url();
        RegistryError::Transport {
            url: url.to_string(),
            kind: TransportKind::of(&source),
            source,
        }
    }

    /// The HTTP status, for [`RegistryError::Http`].
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The first OCI error code the registry sent (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, ...).
    pub fn oci_code(&self) -> Option<&str> {
        match self {
            RegistryError::Http { errors, .. } => errors.first().map(|e| e.code.as_str()),
            _ => None,
        }
    }

    /// True for "does not exist" answers (HTTP 404 or a `*_UNKNOWN` code).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
            || self
                .oci_code()
                .is_some_and(|c| matches!(c, "MANIFEST_UNKNOWN" | "BLOB_UNKNOWN" | "NAME_UNKNOWN"))
    }
}

/// One entry of an OCI distribution error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciError {
    pub code: String,
    pub message: String,
    /// `detail`, re-serialised as compact JSON (it may be any JSON value), capped in size.
    pub detail: Option<String>,
}

impl fmt::Display for OciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

fn fmt_errors(errors: &[OciError]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    format!(": {}", parts.join("; "))
}

const MAX_DETAIL_CHARS: usize = 256;
const MAX_ERRORS: usize = 8;

/// Parse an OCI error body; anything that is not one gives an empty list (or, for a
/// short non-JSON body, one entry carrying the text), never an error.
pub fn parse_error_body(body: &[u8]) -> Vec<OciError> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        detail: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => b
            .errors
            .into_iter()
            .take(MAX_ERRORS)
            .map(|e| OciError {
                code: clip(&e.code, 64),
                message: clip(&e.message, MAX_DETAIL_CHARS),
                detail: e
                    .detail
                    .filter(|d| !d.is_null())
                    .map(|d| clip(&d.to_string(), MAX_DETAIL_CHARS)),
            })
            .collect(),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() || text.starts_with('<') {
                Vec::new()
            } else {
                vec![OciError {
                    code: String::new(),
                    message: clip(text, MAX_DETAIL_CHARS),
                    detail: None,
                }]
            }
        }
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push_str("...");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oci_error_body() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}},{"code":"X","message":""}]}"#;
        let errs = parse_error_body(body);
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].code, "MANIFEST_UNKNOWN");
        assert_eq!(errs[0].message, "manifest unknown");
        assert_eq!(errs[0].detail.as_deref(), Some(r#"{"Tag":"nope"}"#));
        assert_eq!(errs[1].to_string(), "X");
        let e = RegistryError::Http {
            method: "GET".into(),
            url: "http://r/v2/a/manifests/nope".into(),
            repository: "a".into(),
            status: 404,
            errors: errs,
        };
        let msg = e.to_string();
        assert!(msg.contains("MANIFEST_UNKNOWN: manifest unknown"), "{msg}");
        assert!(msg.contains("404"), "{msg}");
        assert_eq!(e.oci_code(), Some("MANIFEST_UNKNOWN"));
        assert!(e.is_not_found());
    }

    #[test]
    fn tolerates_garbage_error_bodies() {
        assert!(parse_error_body(b"").is_empty());
        assert!(parse_error_body(b"<html>502</html>").is_empty());
        assert!(parse_error_body(br#"{"errors":"nope"}"#).len() == 1);
        assert!(parse_error_body(br#"{"other":1}"#).is_empty());
        let plain = parse_error_body(b"upstream timeout");
        assert_eq!(plain[0].message, "upstream timeout");
        let long = "x".repeat(10_000);
        let e = parse_error_body(long.as_bytes());
        assert!(e[0].message.len() < 300);
        let many = format!(
            r#"{{"errors":[{}]}}"#,
            vec![r#"{"code":"A","message":"m"}"#; 100].join(",")
        );
        assert_eq!(parse_error_body(many.as_bytes()).len(), MAX_ERRORS);
    }
}
