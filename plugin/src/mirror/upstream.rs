//! The upstream registries as the mirror sees them: requests passed through unchanged, and
//! the access check (a `HEAD` of the blob with the client's own headers).

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::ClientConfig;
use shoal_p2p::Digest;

use super::access::Allowed;
use super::MirrorError;

/// Headers that belong to one connection, never forwarded either way (RFC 9110 7.6.1), and
/// `Host`, which the HTTP client sets for the upstream.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::HOST,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Clients for the upstream registries.
pub struct Upstream {
    hosts: ClientConfig,
    /// Pass-through: redirects are passed back to the client, not followed.
    forward: reqwest::Client,
    /// Access checks: redirects (to blob storage) followed; `Authorization` is dropped by
    /// the client when a redirect leaves the registry's host.
    check: reqwest::Client,
    timeout: Duration,
}

impl Upstream {
    /// Clients with `registry`'s timeouts and plain-HTTP hosts (its credentials are never
    /// used: each request carries its own).
    pub fn new(registry: &ClientConfig) -> Result<Self, MirrorError> {
        let build = |redirects: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(registry.connect_timeout_secs))
                .read_timeout(Duration::from_secs(registry.request_timeout_secs))
                .redirect(redirects)
                .no_proxy()
                .build()
                .map_err(MirrorError::HttpClient)
        };
        Ok(Self {
            hosts: registry.clone(),
            forward: build(reqwest::redirect::Policy::none())?,
            check: build(reqwest::redirect::Policy::limited(10))?,
            timeout: Duration::from_secs(registry.request_timeout_secs),
        })
    }

    /// `scheme://api-host` of `registry` (`docker.io` is `registry-1.docker.io`).
    fn base(&self, registry: &str) -> String {
        let plain = self.hosts.host(registry).is_some_and(|h| h.plain_http);
        let scheme = if plain { "http" } else { "https" };
        let api = if registry == shoal_p2p::reference::DEFAULT_REGISTRY {
            shoal_p2p::reference::DOCKER_HUB_API_HOST
        } else {
            registry
        };
        format!("{scheme}://{api}")
    }

    /// Sends `req` to `registry` unchanged (but for `?ns=` and hop-by-hop headers) and
    /// returns its answer unchanged, streaming both bodies.
    pub async fn forward(&self, registry: &str, req: Request) -> Result<Response, MirrorError> {
        let (parts, body) = req.into_parts();
        // containerd's `ns` is for the mirror; the rest of the query goes on as it came.
        let query: Vec<&str> = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|kv| !kv.is_empty() && *kv != "ns" && !kv.starts_with("ns="))
            .collect();
        let mut url = format!("{}{}", self.base(registry), parts.uri.path());
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query.join("&"));
        }
        let mut rb = self.forward.request(parts.method.clone(), &url);
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) {
                rb = rb.header(name, value);
            }
        }
        let has_body = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
            || parts.headers.contains_key(header::TRANSFER_ENCODING);
        if has_body {
            rb = rb.body(reqwest::Body::wrap_stream(body.into_data_stream()));
        }
        let resp = tokio::time::timeout(self.timeout, rb.send())
            .await
            .map_err(|_| MirrorError::UpstreamTimeout {
                url: url.clone(),
                secs: self.timeout.as_secs(),
            })?
            .map_err(|source| MirrorError::Upstream {
                url: url.clone(),
                source,
            })?;
        let mut out = Response::builder().status(resp.status());
        for (name, value) in resp.headers() {
            if !hop_by_hop(name) {
                out = out.header(name, value);
            }
        }
        let body = Body::from_stream(resp.bytes_stream().map_err(std::io::Error::other));
        out.body(body)
            .map_err(|source| MirrorError::UpstreamAnswer { url, source })
    }

    /// Whether the client that sent `headers` may pull `digest` from `image`'s repository:
    /// a `HEAD` of the blob upstream with the client's own headers (`Authorization`,
    /// `Accept`, `User-Agent`).
    pub async fn check(
        &self,
        image: &ImageReference,
        digest: &Digest,
        headers: &HeaderMap,
    ) -> Result<Allowed, MirrorError> {
        let url = format!(
            "{}/v2/{}/blobs/{digest}",
            self.base(&image.registry),
            image.repository
        );
        let mut rb = self.check.head(&url).timeout(self.timeout);
        for name in [header::AUTHORIZATION, header::ACCEPT, header::USER_AGENT] {
            if let Some(v) = headers.get(&name) {
                rb = rb.header(name, v);
            }
        }
        let resp = rb.send().await.map_err(|source| MirrorError::Upstream {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        if status.is_success() {
            let size = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| MirrorError::UpstreamSize { url: url.clone() })?;
            return Ok(Allowed::Yes { size });
        }
        // The refusal as the registry gave it, without a body (a HEAD has none).
        let mut headers = HeaderMap::new();
        for (name, value) in resp.headers() {
            if !hop_by_hop(name) && name != header::CONTENT_LENGTH {
                headers.append(name, value.clone());
            }
        }
        let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        Ok(Allowed::No(
            (status, headers, Body::empty()).into_response(),
        ))
    }
}
