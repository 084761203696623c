//! shoald as a registry mirror for containerd's `hosts.toml` (DESIGN "Mirror path"): any
//! client of containerd (CRI with any snapshotter, `ctr --hosts-dir`, nerdctl) pulls through
//! it, and the layers come through the swarm.
//!
//! - `GET`/`HEAD /v2/<name>/blobs/<digest>` is served from the node's blob source (the swarm,
//!   or the cache in front of the registry), streamed while chunks arrive.
//! - So is a blob `GET` with one `Range` (`bytes=a-b`, `bytes=a-`, `bytes=-n`; containerd
//!   2.1+ sends `bytes=a-` for its parallel fetch and resumed reads): `206` with
//!   `Content-Range`, from the cache, the blob's swarm download (shared with every other
//!   reader of the blob) or, when the source has neither, the registry's range fetched with
//!   the client's credentials ([`BlobSource::fetch_range_as`]); `416` with
//!   `bytes */size` for a range past the end. The access check comes first, as for whole
//!   blobs.
//! - Every other request (manifests, tags, referrers, token endpoints, blob requests with
//!   several or malformed ranges, `If-Range`, `HEAD` with `Range`) is passed to the upstream
//!   registry named by `?ns=` (or `default_upstream`) unchanged: method, path, query
//!   (without `ns`), headers, body; its status, headers and body come back unchanged
//!   (redirects are not followed here: containerd follows them).
//! - Trust: a blob is served from the cache or the swarm only (1) for a registry the operator
//!   configured ([`trust`]; every other registry by `serve_other_registries` only), (2) after
//!   that registry confirmed access for the request's own credentials ([`access`]), and (3)
//!   if the node knows the blob from that registry: it fetched it from there, or is fetching
//!   it from there (a swarm download whose chunk manifest that registry's extension made)
//!   ([`Reader::Client`]). Otherwise the request passes through to the upstream untouched.
//! - Access ([`access`]): before a blob is served, the upstream is asked whether this client
//!   may pull it: a `HEAD` of the blob with the request's own headers (its `Authorization`).
//!   A refusal (401 with the registry's `WWW-Authenticate`, 403, 404) is passed back
//!   unchanged, so containerd does its usual token dance against the registry's realm and
//!   retries, and a client that could not pull the blob from the registry gets nothing from
//!   the swarm. A positive answer is reused for `access_ttl_secs`, per (credentials,
//!   registry, repository, digest). The check also gives the blob's size (`Content-Length`
//!   of `HEAD` answers, and of `GET` answers before the bytes arrive).
//! - Credentials: the request's `Authorization` goes with the fetch
//!   ([`shoal_p2p::source::BlobSource::fetch_as`] for a [`Reader::Client`]), so chunks that
//!   come from the registry are fetched with the credentials of a client of that registry
//!   and repository, not the node's. Sharing one download between clients of one registry
//!   is safe because every client has passed the check for that blob first.
//! - Integrity: the bytes are hashed on the way out; the last piece is held back until the
//!   whole blob matched its digest and size (a range: its length; its bytes were verified by
//!   the source, see [`body`]). A source failing mid-stream, or a blob that does
//!   not match, ends the response with an error (the connection is cut): containerd never
//!   gets a complete corrupt blob, and retries or falls back to the next host.
//! - If shoald is down, containerd falls back to the next host in hosts.toml (the registry):
//!   the mirror can only make pulls cheaper, never break them.

mod access;
mod body;
pub mod hosts;
mod trust;
mod upstream;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use shoal_p2p::metrics::Registry;
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::ClientConfig;
use shoal_p2p::source::{BlobSource, ByteRange, Credentials, Reader};
use shoal_p2p::Digest;

use crate::config::MirrorSection;
pub use access::AccessCache;
use access::{AccessKey, Allowed};
use body::Expected;
pub use trust::Trust;
pub use upstream::Upstream;

/// Why the mirror could not answer a request itself (mapped to HTTP in [`MirrorError`]'s
/// `IntoResponse`, the only place).
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// No `?ns=` and no `default_upstream`.
    #[error(
        "request {path:?} names no upstream registry (?ns=) and mirror.default_upstream is not set"
    )]
    NoUpstream { path: String },
    /// `?ns=` is not a registry host.
    #[error("?ns={ns:?} is not a registry host[:port]")]
    BadNamespace { ns: String },
    /// The mirror's HTTP clients cannot be built.
    #[error("cannot build the mirror's HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// The upstream could not be reached.
    #[error("upstream {url}: {source}")]
    Upstream {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The upstream did not answer within `secs`.
    #[error("upstream {url}: no answer in {secs} s")]
    UpstreamTimeout { url: String, secs: u64 },
    /// The upstream's answer cannot be passed on (a header axum refuses).
    #[error("upstream {url}: cannot pass the answer on: {source}")]
    UpstreamAnswer {
        url: String,
        #[source]
        source: axum::http::Error,
    },
    /// The upstream's `HEAD` of a blob the client may pull has no usable size.
    #[error("upstream {url}: HEAD of the blob has no valid Content-Length")]
    UpstreamSize { url: String },
    /// The blob source (cache, swarm, registry) could not start the blob.
    #[error("blob {digest} of {repository}: {source}")]
    Source {
        repository: String,
        digest: Digest,
        #[source]
        source: Box<shoal_p2p::Error>,
    },
    /// The blob source failed after the answer started: the response is cut.
    #[error("blob {digest}: the source failed: {source}")]
    SourceCut {
        digest: Digest,
        #[source]
        source: Box<shoal_p2p::Error>,
    },
    /// The blob source sent more bytes than the answer announced: the response is cut.
    #[error("blob {digest}: {seen} bytes, more than the {len} expected")]
    TooLong { digest: Digest, seen: u64, len: u64 },
    /// The blob source ended short of the answer's length: the response is cut.
    #[error("blob {digest}: the source ended after {seen} of {len} bytes")]
    Short { digest: Digest, seen: u64, len: u64 },
    /// The blob's bytes hash to `actual`: the response is cut before its last piece.
    #[error("blob {digest}: the bytes hash to {actual}")]
    BodyDigest { digest: Digest, actual: Digest },
    /// `shoald hosts`: an existing hosts.toml that is not TOML or not a hosts file.
    #[error("{path:?}: {source}")]
    HostsToml {
        path: PathBuf,
        #[source]
        source: hosts::HostsError,
    },
    /// `shoald hosts`: a hosts.toml that cannot be read or written.
    #[error("{path:?}: {source}")]
    HostsIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl MirrorError {
    /// The HTTP status and OCI error code of the answer: the only place a mirror error
    /// becomes a status. Everything the mirror cannot answer itself is a 502, so that
    /// containerd tries the next host (the registry itself).
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NoUpstream { .. } | Self::BadNamespace { .. } => {
                (StatusCode::BAD_REQUEST, "UNSUPPORTED")
            }
            Self::HttpClient(_)
            | Self::Upstream { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamAnswer { .. }
            | Self::UpstreamSize { .. }
            | Self::Source { .. }
            | Self::SourceCut { .. }
            | Self::TooLong { .. }
            | Self::Short { .. }
            | Self::BodyDigest { .. }
            | Self::HostsToml { .. }
            | Self::HostsIo { .. } => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
        }
    }
}

impl IntoResponse for MirrorError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let body = serde_json::json!({
            "errors": [{"code": code, "message": self.to_string()}]
        });
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// Labels of the mirror's request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// `blob` (served by shoal), `range` (a range served by shoal, or `416`), `refused`
    /// (access check said no), `passthrough` (everything else, blobs of registries not
    /// served and blobs not known from the registry asked included), `error`.
    pub route: &'static str,
}

/// The mirror's Prometheus metrics.
#[derive(Clone, Debug, Default)]
pub struct MirrorMetrics {
    /// Requests, by how they were answered.
    pub requests: Family<RouteLabel, Counter>,
    /// Blob bytes sent to clients from the blob source (swarm or cache), ranges included.
    pub blob_bytes: Counter,
    /// Access checks answered from the cache.
    pub access_cached: Counter,
    /// Access checks asked of the upstream.
    pub access_upstream: Counter,
    /// Blob responses cut (source failed mid-stream, or the bytes did not match).
    pub blobs_cut: Counter,
}

impl MirrorMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shoal_mirror_requests",
            "Mirror requests, by route (blob, range, refused, passthrough, error)",
            self.requests.clone(),
        );
        registry.register(
            "shoal_mirror_blob_sent_bytes",
            "Blob bytes the mirror sent from the swarm or the cache",
            self.blob_bytes.clone(),
        );
        registry.register(
            "shoal_mirror_access_cached",
            "Access checks answered from the cache",
            self.access_cached.clone(),
        );
        registry.register(
            "shoal_mirror_access_upstream",
            "Access checks asked of the upstream registry",
            self.access_upstream.clone(),
        );
        registry.register(
            "shoal_mirror_blobs_cut",
            "Blob responses cut because the source failed or the bytes did not match",
            self.blobs_cut.clone(),
        );
    }

    fn count(&self, route: &'static str) {
        self.requests.get_or_create(&RouteLabel { route }).inc();
    }
}

/// The mirror's shared state.
pub struct Mirror {
    blobs: Arc<dyn BlobSource>,
    upstream: Upstream,
    access: AccessCache,
    trust: Trust,
    default_upstream: String,
    metrics: MirrorMetrics,
}

impl Mirror {
    /// A mirror serving blobs from `blobs`, reaching registries as `registry` says (plain
    /// HTTP hosts, timeouts; never its credentials: those of each request are used). It
    /// serves blobs of the registries of `registry`'s hosts and `section` ([`Trust`]).
    pub fn new(
        section: &MirrorSection,
        registry: &ClientConfig,
        blobs: Arc<dyn BlobSource>,
        metrics: MirrorMetrics,
    ) -> Result<Self, MirrorError> {
        Ok(Self {
            blobs,
            upstream: Upstream::new(registry)?,
            access: AccessCache::new(std::time::Duration::from_secs(section.access_ttl_secs)),
            trust: Trust::new(section, registry),
            default_upstream: section.default_upstream.clone(),
            metrics,
        })
    }

    /// The HTTP routes (everything goes through one handler).
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(handle).with_state(self)
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// The registry host a request is for: `?ns=`, else `default_upstream`.
    fn registry_of(&self, query: Option<&str>, path: &str) -> Result<String, MirrorError> {
        let ns = query.and_then(namespace_of);
        match ns {
            Some(ns) if shoal_p2p::reference::valid_host(&ns) => Ok(ns),
            Some(ns) => Err(MirrorError::BadNamespace { ns }),
            None if !self.default_upstream.is_empty() => Ok(self.default_upstream.clone()),
            None => Err(MirrorError::NoUpstream {
                path: path.to_owned(),
            }),
        }
    }
}

/// The `ns` parameter of a query string, decoded (containerd escapes `:` as `%3A`).
fn namespace_of(query: &str) -> Option<String> {
    let url = reqwest::Url::parse(&format!("http://mirror/?{query}")).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.into_owned())
}

/// `/v2/<name>/blobs/<digest>` → (name, digest).
fn blob_path(path: &str) -> Option<(&str, Digest)> {
    let rest = path.strip_prefix("/v2/")?;
    let (name, digest) = rest.rsplit_once("/blobs/")?;
    if name.is_empty() || digest.contains('/') {
        return None;
    }
    Some((name, digest.parse().ok()?))
}

async fn handle(State(mirror): State<Arc<Mirror>>, req: Request) -> Response {
    match answer(&mirror, req).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!("mirror: {e}");
            mirror.metrics.count("error");
            e.into_response()
        }
    }
}

/// What a blob request asks for: the whole blob (`GET`, `HEAD`), or one range of it
/// (`GET` with one `Range` header, [`ByteRange`], and no `If-Range`). `None`: anything else,
/// passed upstream (several or malformed ranges, `If-Range`, `HEAD` with a range).
fn blob_request(method: &Method, headers: &HeaderMap) -> Option<Option<ByteRange>> {
    let mut ranges = headers.get_all(header::RANGE).iter();
    match (method, ranges.next(), ranges.next()) {
        (&Method::GET | &Method::HEAD, None, _) => Some(None),
        (&Method::GET, Some(range), None) if !headers.contains_key(header::IF_RANGE) => {
            let parsed = range.to_str().ok().map(ByteRange::parse);
            match parsed {
                Some(Ok(range)) => Some(Some(range)),
                Some(Err(e)) => {
                    tracing::debug!("mirror: {e}; passed upstream");
                    None
                }
                None => None,
            }
        }
        _ => None,
    }
}

async fn answer(mirror: &Mirror, req: Request) -> Result<Response, MirrorError> {
    let path = req.uri().path().to_owned();
    let registry = mirror.registry_of(req.uri().query(), &path)?;
    let blob =
        blob_path(&path).and_then(|blob| Some((blob, blob_request(req.method(), req.headers())?)));
    let served = match blob {
        Some(((name, digest), range)) if mirror.trust.serves(&registry) => {
            let image = ImageReference {
                registry: registry.clone(),
                repository: name.to_owned(),
                tag: None,
                digest: None,
            };
            let head = req.method() == Method::HEAD;
            serve_blob(mirror, &image, digest, head, range, req.headers()).await?
        }
        Some(_) => {
            tracing::debug!(%registry, "mirror: not a registry served from the cache and the swarm; passed upstream");
            None
        }
        None => None,
    };
    if let Some(resp) = served {
        return Ok(resp);
    }
    mirror.metrics.count("passthrough");
    mirror.upstream.forward(&registry, req).await
}

/// Serves blob `digest` (or `range` of it) to a client the upstream lets pull it; `None`
/// when the node does not know the blob from that registry (the request goes upstream).
async fn serve_blob(
    mirror: &Mirror,
    image: &ImageReference,
    digest: Digest,
    head: bool,
    range: Option<ByteRange>,
    headers: &HeaderMap,
) -> Result<Option<Response>, MirrorError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(Credentials::new);
    let key = AccessKey::new(authorization.as_ref(), image, &digest);
    let size = match mirror.access.get(&key) {
        Some(size) => {
            mirror.metrics.access_cached.inc();
            size
        }
        None => {
            mirror.metrics.access_upstream.inc();
            match mirror.upstream.check(image, &digest, headers).await? {
                Allowed::Yes { size } => {
                    mirror.access.insert(key, size);
                    size
                }
                Allowed::No(refusal) => {
                    tracing::info!(repository = %image.repository, blob = %digest,
                        status = %refusal.status(), "mirror: upstream refused access; passed back");
                    mirror.metrics.count("refused");
                    return Ok(Some(refusal));
                }
            }
        }
    };
    let mut resp_headers = HeaderMap::new();
    resp_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        resp_headers.insert("docker-content-digest", v);
    }
    let (status, bytes) = match range.map(|r| r.resolve(size)) {
        None => (StatusCode::OK, 0..size),
        Some(Some(bytes)) => {
            let content_range = format!("bytes {}-{}/{size}", bytes.start, bytes.end - 1);
            if let Ok(v) = HeaderValue::from_str(&content_range) {
                resp_headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, bytes)
        }
        Some(None) => {
            mirror.metrics.count("range");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp_headers.insert(header::CONTENT_RANGE, v);
            }
            let status = StatusCode::RANGE_NOT_SATISFIABLE;
            return Ok(Some((status, resp_headers, Body::empty()).into_response()));
        }
    };
    let len = bytes.end - bytes.start;
    resp_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let route = if range.is_some() { "range" } else { "blob" };
    if head {
        mirror.metrics.count(route);
        return Ok(Some((status, resp_headers, Body::empty()).into_response()));
    }
    // A range that is the whole blob is fetched and checked as the whole blob.
    let reader = Reader::Client(authorization);
    let (fetched, expected) = if len == size {
        let fetched = mirror.blobs.fetch_as(image, &digest, &reader);
        (fetched.await, Expected::Whole { size })
    } else {
        let fetched = mirror.blobs.fetch_range_as(image, &digest, bytes, &reader);
        (fetched.await, Expected::Part { len })
    };
    let stream = match fetched {
        Ok(stream) => stream,
        Err(shoal_p2p::Error::OtherOrigin { .. }) => {
            tracing::info!(registry = %image.registry, blob = %digest,
                "mirror: blob known only from other registries; passed upstream");
            return Ok(None);
        }
        Err(source) => {
            return Err(MirrorError::Source {
                repository: image.repository.clone(),
                digest,
                source: Box::new(source),
            })
        }
    };
    mirror.metrics.count(route);
    let body = body::checked(stream, digest, expected, mirror.metrics.clone());
    Ok(Some(
        (status, resp_headers, Body::from_stream(body)).into_response(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer's status and its OCI error body's code and message.
    fn answer(e: MirrorError) -> (StatusCode, String, String) {
        let response = e.into_response();
        let status = response.status();
        let body = futures::executor::block_on(axum::body::to_bytes(response.into_body(), 1 << 16))
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
        let error = &json["errors"][0];
        (
            status,
            error["code"].as_str().unwrap_or_default().to_owned(),
            error["message"].as_str().unwrap_or_default().to_owned(),
        )
    }

    #[test]
    fn a_swarm_failure_is_a_bad_gateway_naming_the_blob_and_the_cause() {
        use shoal_p2p::swarm::planner::PlanError;
        use shoal_p2p::swarm::SwarmError;
        let digest = Digest::of(b"layer");
        let failure = shoal_p2p::Error::Swarm {
            digest: digest.clone(),
            source: SwarmError::Plan(PlanError::RegistryFailing { failures: 4 }),
        };
        let e = MirrorError::Source {
            repository: "team/app".into(),
            digest: digest.clone(),
            source: Box::new(failure),
        };
        // The typed cause is kept: the swarm's reason is there to match on, not only text.
        let MirrorError::Source { source, .. } = &e else {
            unreachable!()
        };
        assert!(
            matches!(
                **source,
                shoal_p2p::Error::Swarm {
                    source: SwarmError::Plan(PlanError::RegistryFailing { failures: 4 }),
                    ..
                }
            ),
            "{source:?}"
        );
        assert!(std::error::Error::source(&e).is_some());
        // 502: containerd tries the next host (the registry itself).
        let (status, code, message) = answer(e);
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(code, "UNAVAILABLE");
        assert!(
            message.contains(&format!("blob {digest} of team/app")),
            "{message}"
        );
        assert!(
            message.contains(&format!("swarm fetch of blob {digest}")),
            "{message}"
        );
        assert!(
            message.contains("registry failing (4 times in a row)"),
            "{message}"
        );
    }

    #[test]
    fn a_refused_registry_or_a_bad_namespace_maps_to_its_status() {
        let digest = Digest::of(b"layer");
        let refused = MirrorError::Source {
            repository: "team/app".into(),
            digest: digest.clone(),
            source: Box::new(
                shoal_p2p::registry::RegistryError::Unauthorized {
                    registry: "r.example".into(),
                    repository: "team/app".into(),
                    reason: "HTTP 401".into(),
                }
                .into(),
            ),
        };
        let (status, _, message) = answer(refused);
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(
            message.contains("unauthorized at registry r.example"),
            "{message}"
        );
        let bad = MirrorError::BadNamespace { ns: "a b".into() };
        let (status, code, _) = answer(bad);
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "UNSUPPORTED")
        );
    }

    #[test]
    fn blob_paths_and_namespaces_are_recognised() {
        let d = Digest::of(b"x");
        let path = format!("/v2/team/app/blobs/{d}");
        let (name, digest) = blob_path(&path).unwrap();
        assert_eq!((name, digest), ("team/app", d.clone()));
        assert!(blob_path(&format!("/v2/blobs/{d}")).is_none());
        assert!(blob_path("/v2/app/blobs/sha256:nothex").is_none());
        assert!(blob_path(&format!("/v2/app/manifests/{d}")).is_none());
        assert!(blob_path("/v2/app/blobs/uploads/").is_none());
        assert_eq!(
            namespace_of("ns=10.0.0.1%3A5000").as_deref(),
            Some("10.0.0.1:5000")
        );
        assert_eq!(
            namespace_of("n=1&ns=docker.io&x=2").as_deref(),
            Some("docker.io")
        );
        assert_eq!(namespace_of("x=1"), None);
    }

    #[test]
    fn blob_requests_with_one_plain_range_are_served_the_rest_passed() {
        let ask = |method: Method, headers: &[(header::HeaderName, &[u8])]| {
            let mut h = HeaderMap::new();
            for (name, value) in headers {
                h.append(name.clone(), HeaderValue::from_bytes(value).unwrap());
            }
            blob_request(&method, &h)
        };
        let range = |v: &'static str| (header::RANGE, v.as_bytes());
        assert_eq!(ask(Method::GET, &[]), Some(None));
        assert_eq!(ask(Method::HEAD, &[]), Some(None));
        assert_eq!(ask(Method::PUT, &[]), None);
        assert_eq!(
            ask(Method::GET, &[range("bytes=5-")]),
            Some(Some(ByteRange::From { first: 5 }))
        );
        assert_eq!(
            ask(Method::GET, &[range("bytes=-5")]),
            Some(Some(ByteRange::Suffix { len: 5 }))
        );
        for passed in [
            vec![range("bytes=0-1,4-5")],
            vec![range("bytes=5-2")],
            vec![range("bytes=")],
            vec![range("")],
            vec![range("pages=1-2")],
            vec![range("bytes=0-99999999999999999999999")],
            vec![(header::RANGE, b"bytes=\xff-1".as_slice())],
            vec![range("bytes=0-1"), range("bytes=2-3")],
            vec![
                range("bytes=0-1"),
                (header::IF_RANGE, b"\"etag\"".as_slice()),
            ],
        ] {
            assert_eq!(ask(Method::GET, &passed), None, "{passed:?}");
        }
        assert_eq!(ask(Method::HEAD, &[range("bytes=0-1")]), None);
    }
}
