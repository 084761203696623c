//! The HTTP side of the client: requests with auth, retries and timeouts; blob streams.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, RANGE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};

use super::auth::{parse_www_authenticate, CachedToken, Challenge, TokenCache, TokenResponse};
use super::stream::{verify_stream, window_stream, BlobStream};
use super::{
    parse_error_body, ClientConfig, RegistryError, MAX_ERROR_BODY_BYTES, MAX_TOKEN_RESPONSE_BYTES,
};
use crate::digest::Digest;
use crate::reference::ImageReference;
use crate::source::Credentials;

/// OCI registry client. Cloning is cheap: clones share the connection pool and token cache.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    http: reqwest::Client,
    tokens: TokenCache,
    /// Registries that challenged with Basic: later requests send credentials at once.
    basic: Mutex<HashSet<String>>,
    timeout: Duration,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

/// Credentials attached to a request.
#[derive(Clone)]
enum Auth {
    Bearer(String),
    Basic,
}

/// One registry API request.
pub(crate) struct Request<'a> {
    pub image: &'a ImageReference,
    pub method: Method,
    pub url: Url,
    pub accept: Option<&'a str>,
    pub range: Option<String>,
    /// Apply the request timeout to the whole exchange (small bodies); otherwise only to
    /// the wait for headers and, through the client's read timeout, to each body read.
    pub whole_timeout: bool,
    /// A client's own credentials: sent as they are, instead of the node's (no challenge
    /// is answered; a 401 is the client's refusal).
    pub authorization: Option<&'a Credentials>,
}

impl RegistryClient {
    /// A client for `cfg` (validated here).
    pub fn new(cfg: ClientConfig) -> Result<Self, crate::Error> {
        cfg.validate()?;
        let timeout = Duration::from_secs(cfg.request_timeout_secs);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs))
            .read_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(10))
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| RegistryError::HttpClient { source })?;
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                http,
                tokens: TokenCache::default(),
                basic: Mutex::new(HashSet::new()),
                timeout,
            }),
        })
    }

    /// The configuration the client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// `scheme://host/v2/<repository>`.
    pub(crate) fn repo_url(&self, image: &ImageReference) -> String {
        let plain = self
            .inner
            .cfg
            .host(&image.registry)
            .is_some_and(|h| h.plain_http);
        let scheme = if plain { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", image.api_host(), image.repository)
    }

    pub(crate) fn url(&self, image: &ImageReference, tail: &str) -> Result<Url, RegistryError> {
        let s = format!("{}/{tail}", self.repo_url(image));
        Url::parse(&s).map_err(|source| RegistryError::Url {
            url: s.clone(),
            source,
        })
    }

    fn blob_url(&self, image: &ImageReference, digest: &Digest) -> Result<Url, RegistryError> {
        self.url(image, &format!("blobs/{digest}"))
    }

    /// Size of a blob, from a `HEAD` request.
    pub async fn blob_size(
        &self,
        image: &ImageReference,
        digest: &Digest,
    ) -> Result<u64, crate::Error> {
        Ok(self.blob_size_at(image, digest).await?)
    }

    async fn blob_size_at(
        &self,
        image: &ImageReference,
        digest: &Digest,
    ) -> Result<u64, RegistryError> {
        let url = self.blob_url(image, digest)?;
        let resp = self
            .execute(&Request {
                image,
                method: Method::HEAD,
                url: url.clone(),
                accept: None,
                range: None,
                whole_timeout: true,
                authorization: None,
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, "HEAD", &url, image).await);
        }
        header_u64(resp.headers(), CONTENT_LENGTH).ok_or_else(|| RegistryError::BadResponse {
            url: url.to_string(),
            reason: "HEAD answer has no valid Content-Length".into(),
        })
    }

    /// A blob's bytes, or those in `range` (`Range: bytes=start-(end-1)`), unverified, as
    /// they arrive. Redirects to storage are followed. A registry that answers a range
    /// request with the whole blob (200) gets the window cut out of it; a body shorter than
    /// the range ends the stream with an error.
    pub async fn blob(
        &self,
        image: &ImageReference,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobStream, crate::Error> {
        self.blob_as(image, digest, range, None).await
    }

    /// [`Self::blob`] with a client's own `credentials` (when given) instead of the node's:
    /// they are sent as they are, and a 401 is [`RegistryError::Unauthorized`].
    pub async fn blob_as(
        &self,
        image: &ImageReference,
        digest: &Digest,
        range: Option<Range<u64>>,
        credentials: Option<&Credentials>,
    ) -> Result<BlobStream, crate::Error> {
        Ok(self.blob_at(image, digest, range, credentials).await?)
    }

    async fn blob_at(
        &self,
        image: &ImageReference,
        digest: &Digest,
        range: Option<Range<u64>>,
        credentials: Option<&Credentials>,
    ) -> Result<BlobStream, RegistryError> {
        let url = self.blob_url(image, digest)?;
        let range_err = |r: &Range<u64>, reason: String| RegistryError::Range {
            repository: image.repository.clone(),
            digest: digest.clone(),
            start: r.start,
            end: r.end,
            reason,
        };
        if let Some(r) = &range {
            if r.start >= r.end {
                return Err(range_err(r, "empty range".into()));
            }
        }
        let resp = self
            .execute(&Request {
                image,
                method: Method::GET,
                url: url.clone(),
                accept: None,
                range: range
                    .as_ref()
                    .map(|r| format!("bytes={}-{}", r.start, r.end - 1)),
                whole_timeout: false,
                authorization: credentials,
            })
            .await?;
        let status = resp.status();
        let Some(r) = range else {
            if status == StatusCode::OK {
                return Ok(body_stream(resp, url.to_string()));
            }
            return Err(unexpected(resp, "GET", &url, image).await);
        };
        let len = r.end - r.start;
        let short = {
            let (repo, d, r) = (image.repository.clone(), digest.clone(), r.clone());
            Box::new(move |got: u64| RegistryError::Range {
                repository: repo.clone(),
                digest: d.clone(),
                start: r.start,
                end: r.end,
                reason: format!("body ended after {got} of {} bytes", r.end - r.start),
            })
        };
        match status {
            StatusCode::PARTIAL_CONTENT => {
                if let Some(start) = content_range_start(resp.headers()) {
                    if start != r.start {
                        return Err(range_err(
                            &r,
                            format!("registry sent a range starting at {start}"),
                        ));
                    }
                }
                Ok(window_stream(
                    body_stream(resp, url.to_string()),
                    0,
                    len,
                    short,
                ))
            }
            StatusCode::OK => {
                tracing::debug!(%url, start = r.start, end = r.end,
                    "registry ignored the Range header; cutting the range out of the whole blob");
                Ok(window_stream(
                    body_stream(resp, url.to_string()),
                    r.start,
                    len,
                    short,
                ))
            }
            StatusCode::RANGE_NOT_SATISFIABLE => Err(range_err(
                &r,
                "range not satisfiable (beyond the end of the blob)".into(),
            )),
            _ => Err(unexpected(resp, "GET", &url, image).await),
        }
    }

    /// The whole blob, hashed while it streams: if it does not match `digest`, the last
    /// item is `Err(RegistryError::DigestMismatch)`. Bytes are passed on as they arrive.
    pub async fn blob_verified(
        &self,
        image: &ImageReference,
        digest: &Digest,
    ) -> Result<BlobStream, crate::Error> {
        let stream = self.blob(image, digest, None).await?;
        Ok(verify_stream(
            stream,
            digest.clone(),
            image.repository.clone(),
        ))
    }

    /// A small blob (config), whole, capped at `limit` bytes and verified.
    pub(crate) async fn small_blob(
        &self,
        image: &ImageReference,
        digest: &Digest,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let url = self.blob_url(image, digest)?;
        let resp = self
            .execute(&Request {
                image,
                method: Method::GET,
                url: url.clone(),
                accept: None,
                range: None,
                whole_timeout: true,
                authorization: None,
            })
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(unexpected(resp, "GET", &url, image).await);
        }
        let body = read_capped(resp, limit, &url).await?;
        let actual = Digest::of(&body);
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                repository: image.repository.clone(),
                expected: digest.clone(),
                actual,
                bytes: body.len() as u64,
            });
        }
        Ok(body)
    }

    /// Send `req`, answering one authentication challenge if the registry asks for one.
    pub(crate) async fn execute(&self, req: &Request<'_>) -> Result<Response, RegistryError> {
        let registry = req.image.registry.as_str();
        if let Some(credentials) = req.authorization {
            let resp = self
                .send_retrying(&req.url, req.whole_timeout, || {
                    self.build(req, None, None)
                        .header(AUTHORIZATION, credentials.authorization())
                })
                .await?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                return Err(RegistryError::Unauthorized {
                    registry: registry.to_string(),
                    repository: req.image.repository.clone(),
                    reason: "the registry refused the requesting client's credentials".into(),
                });
            }
            return Ok(resp);
        }
        let scope = format!("repository:{}:pull", req.image.repository);
        let creds = self.inner.cfg.host(registry).and_then(|h| h.credentials());
        let mut auth = if let Some(t) = self.inner.tokens.peek(registry, &scope) {
            Some(Auth::Bearer(t))
        } else if creds.is_some() && self.is_basic(registry) {
            Some(Auth::Basic)
        } else {
            None
        };
        let unauthorized = |reason: String| RegistryError::Unauthorized {
            registry: registry.to_string(),
            repository: req.image.repository.clone(),
            reason,
        };
        let mut answered = false;
        loop {
            let resp = self
                .send_retrying(&req.url, req.whole_timeout, || {
                    self.build(req, auth.as_ref(), creds)
                })
                .await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_www_authenticate)
                .collect();
            let body = read_error_body(resp).await;
            let said = if body.is_empty() {
                String::new()
            } else {
                let parts: Vec<String> = body.iter().map(|e| e.to_string()).collect();
                format!(" (registry said: {})", parts.join("; "))
            };
            if answered {
                let why = match &auth {
                    Some(Auth::Basic) => "the registry refused the configured credentials",
                    Some(Auth::Bearer(_)) => {
                        "the registry refused the token from its token service"
                    }
                    None => "the registry asked for authentication again",
                };
                return Err(unauthorized(format!("{why}{said}")));
            }
            answered = true;
            if let Some(ch) = challenges.iter().find(|c| c.scheme == "bearer") {
                let rejected = match &auth {
                    Some(Auth::Bearer(t)) => Some(t.clone()),
                    _ => None,
                };
                let token = self
                    .bearer_token(req.image, ch, &scope, rejected.as_deref())
                    .await?;
                auth = Some(Auth::Bearer(token));
            } else if challenges.iter().any(|c| c.scheme == "basic") {
                match (creds, &auth) {
                    (None, _) => {
                        return Err(unauthorized(format!(
                            "the registry requires Basic authentication and no credentials are configured for this host{said}"
                        )))
                    }
                    (Some(_), Some(Auth::Basic)) => {
                        return Err(unauthorized(format!(
                            "the registry refused the configured credentials{said}"
                        )))
                    }
                    (Some(_), _) => {
                        self.inner
                            .basic
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(registry.to_string());
                        auth = Some(Auth::Basic);
                    }
                }
            } else {
                return Err(unauthorized(format!(
                    "HTTP 401 without a supported WWW-Authenticate challenge{said}"
                )));
            }
        }
    }

    /// Tests: behave as if `registry` had already challenged with Basic.
    #[cfg(test)]
    pub(crate) fn inner_mark_basic(&self, registry: &str) {
        self.inner
            .basic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(registry.to_string());
    }

    fn is_basic(&self, registry: &str) -> bool {
        self.inner
            .basic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(registry)
    }

    fn build(
        &self,
        req: &Request<'_>,
        auth: Option<&Auth>,
        creds: Option<(&str, &str)>,
    ) -> RequestBuilder {
        let mut rb = self.inner.http.request(req.method.clone(), req.url.clone());
        if let Some(a) = req.accept {
            rb = rb.header(ACCEPT, a);
        }
        if let Some(r) = &req.range {
            rb = rb.header(RANGE, r);
        }
        if req.whole_timeout {
            rb = rb.timeout(self.inner.timeout);
        }
        match (auth, creds) {
            (Some(Auth::Bearer(t)), _) => rb.bearer_auth(t),
            (Some(Auth::Basic), Some((u, p))) => rb.basic_auth(u, Some(p)),
            _ => rb,
        }
    }

    /// Send, retrying connect errors, 5xx and 429 with backoff (all our requests are
    /// idempotent GET/HEAD).
    async fn send_retrying(
        &self,
        url: &Url,
        whole_timeout: bool,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let retries = self.inner.cfg.retries;
        let mut attempt = 0u32;
        loop {
            let fut = build().send();
            let res = if whole_timeout {
                fut.await
            } else {
                match tokio::time::timeout(self.inner.timeout, fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(RegistryError::Timeout {
                            url: url.to_string(),
                            secs: self.inner.timeout.as_secs(),
                        })
                    }
                }
            };
            let delay = match &res {
                Err(e) if e.is_connect() && attempt < retries => backoff(attempt),
                Ok(r)
                    if (r.status().is_server_error()
                        || r.status() == StatusCode::TOO_MANY_REQUESTS)
                        && attempt < retries =>
                {
                    retry_after(r.headers()).unwrap_or_else(|| backoff(attempt))
                }
                _ => {
                    return res.map_err(|e| {
                        if e.is_timeout() {
                            RegistryError::Timeout {
                                url: url.to_string(),
                                secs: self.inner.timeout.as_secs(),
                            }
                        } else {
                            RegistryError::transport(url.as_str(), e)
                        }
                    })
                }
            };
            tracing::debug!(%url, attempt, ?delay, status = ?res.as_ref().ok().map(|r| r.status()),
                "registry request failed; retrying");
            drop(res);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// A token for (registry, scope): the cached one unless it is stale or is `rejected`.
    async fn bearer_token(
        &self,
        image: &ImageReference,
        ch: &Challenge,
        scope: &str,
        rejected: Option<&str>,
    ) -> Result<String, RegistryError> {
        let slot = self.inner.tokens.slot(&image.registry, scope);
        let mut guard = slot.lock().await;
        if let Some(t) = guard.as_ref() {
            if t.fresh() && Some(t.token.as_str()) != rejected {
                return Ok(t.token.clone());
            }
        }
        *guard = None;
        let (token, lifetime) = self.fetch_token(image, ch, scope).await?;
        *guard = Some(CachedToken::new(token.clone(), lifetime));
        Ok(token)
    }

    async fn fetch_token(
        &self,
        image: &ImageReference,
        ch: &Challenge,
        scope: &str,
    ) -> Result<(String, Duration), RegistryError> {
        let realm = ch.param("realm").unwrap_or_default();
        let token_err = |reason: String| RegistryError::Token {
            registry: image.registry.clone(),
            realm: realm.to_string(),
            scope: scope.to_string(),
            reason,
        };
        if realm.is_empty() {
            return Err(token_err("the Bearer challenge names no realm".into()));
        }
        let mut url = Url::parse(realm).map_err(|source| RegistryError::TokenRealm {
            registry: image.registry.clone(),
            realm: realm.to_string(),
            scope: scope.to_string(),
            source,
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(token_err("realm is not an http(s) URL".into()));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = ch.param("service") {
                q.append_pair("service", service);
            }
            q.append_pair("scope", scope);
        }
        let host = self.inner.cfg.host(&image.registry);
        // Credentials go to a plain-http realm only when the registry itself is plain http.
        let creds = host
            .and_then(|h| h.credentials())
            .filter(|_| url.scheme() == "https" || host.is_some_and(|h| h.plain_http));
        let timeout = self.inner.timeout;
        let resp = self
            .send_retrying(&url, true, || {
                let rb = self.inner.http.get(url.clone()).timeout(timeout);
                match creds {
                    Some((u, p)) => rb.basic_auth(u, Some(p)),
                    None => rb,
                }
            })
            .await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(RegistryError::Unauthorized {
                registry: image.registry.clone(),
                repository: image.repository.clone(),
                reason: if creds.is_some() {
                    format!("the token service refused the configured credentials (HTTP {status})")
                } else {
                    format!("the token service refused anonymous access (HTTP {status}); configure credentials for this host")
                },
            });
        }
        if !status.is_success() {
            let errs = read_error_body(resp).await;
            let parts: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            return Err(token_err(format!("HTTP {status} {}", parts.join("; "))));
        }
        let body = read_capped(resp, MAX_TOKEN_RESPONSE_BYTES, &url).await?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|source| RegistryError::TokenJson {
                registry: image.registry.clone(),
                realm: realm.to_string(),
                scope: scope.to_string(),
                source,
            })?;
        parsed.into_token().map_err(|r| token_err(r.into()))
    }
}

/// The body as a stream of chunks, transport errors mapped.
fn body_stream(resp: Response, url: String) -> BlobStream {
    Box::pin(
        resp.bytes_stream()
            .map(move |r| r.map_err(|e| RegistryError::transport(&url, e).into())),
    )
}

/// Read the whole body, refusing more than `limit` bytes.
pub(crate) async fn read_capped(
    mut resp: Response,
    limit: u64,
    url: &Url,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = || RegistryError::TooLarge {
        url: url.to_string(),
        limit,
    };
    if header_u64(resp.headers(), CONTENT_LENGTH).is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| RegistryError::transport(url.as_str(), e))?
    {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The OCI errors in a failed answer's body (at most [`MAX_ERROR_BODY_BYTES`] read).
async fn read_error_body(mut resp: Response) -> Vec<super::OciError> {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_ERROR_BODY_BYTES as usize - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= MAX_ERROR_BODY_BYTES as usize {
            break;
        }
    }
    parse_error_body(&buf)
}

/// [`RegistryError::Http`] for a failed answer.
pub(crate) async fn status_error(
    resp: Response,
    method: &str,
    url: &Url,
    image: &ImageReference,
) -> RegistryError {
    let status = resp.status().as_u16();
    RegistryError::Http {
        method: method.to_string(),
        url: url.to_string(),
        repository: image.repository.clone(),
        status,
        errors: read_error_body(resp).await,
    }
}

/// An error for an answer with a status the caller did not expect (success ones included).
pub(crate) async fn unexpected(
    resp: Response,
    method: &str,
    url: &Url,
    image: &ImageReference,
) -> RegistryError {
    if resp.status().is_success() {
        RegistryError::BadResponse {
            url: url.to_string(),
            reason: format!("unexpected status {}", resp.status()),
        }
    } else {
        status_error(resp, method, url, image).await
    }
}

fn header_u64(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Start offset of `Content-Range: bytes a-b/total`.
fn content_range_start(h: &HeaderMap) -> Option<u64> {
    let v = h.get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5))
}

/// `Retry-After` in seconds (HTTP dates are ignored), capped at 10 s.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let secs: u64 = h.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(10)))
}
