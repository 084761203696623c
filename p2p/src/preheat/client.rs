//! [`PreheatClient`]: the coordinator's preheat routes ([`super::proto`]) for shoald's worker
//! and the `shoald preheat` command line.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::proto::{
    Heartbeat, HeartbeatReply, JobList, JobSpec, JobStatus, NodeInfo, NodeList, Registered,
};
use crate::peer::error_text;
use crate::tls::{Expect, Transport};

/// Most bytes of an answer read (a job of 1000 nodes x 10 images is well under this).
const MAX_BODY: usize = 64 << 20;

/// How the client authenticates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// The cluster certificate (mutual TLS), or plaintext when the transport is plaintext:
    /// the coordinator's main listener, whose certificate must be registry-side.
    Cluster(Transport),
    /// `Authorization: Bearer TOKEN`: the coordinator's admin listener. Over HTTPS the
    /// server certificate is checked against `ca` (the cluster CA) or, without it, the
    /// system roots.
    Token { token: String, ca: Option<PathBuf> },
}

/// Why a preheat request failed.
#[derive(Debug, thiserror::Error)]
pub enum PreheatClientError {
    /// The client's TLS (cluster transport) cannot be set up.
    #[error("preheat client setup: {0}")]
    Tls(#[source] crate::tls::TlsError),
    /// The CA file of token authentication cannot be read.
    #[error("preheat client setup: reading CA {path:?}: {source}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CA file of token authentication holds no usable certificate, or the HTTP client
    /// cannot be built.
    #[error("preheat client setup: {}{}", .path.as_ref().map(|p| format!("CA {p:?}: ")).unwrap_or_default(), crate::error::Chain(.source))]
    Client {
        path: Option<PathBuf>,
        #[source]
        source: reqwest::Error,
    },
    /// Sending the request or reading the answer failed.
    #[error("{url}: {}", crate::error::Chain(.source))]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The answer is longer than the client reads.
    #[error("{url}: answer longer than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url}: status {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: malformed answer: {source}")]
    Malformed {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

impl PreheatClientError {
    /// The HTTP status of a refused request.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one coordinator.
#[derive(Debug, Clone)]
pub struct PreheatClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl PreheatClient {
    /// A client of the coordinator at `base` (`https://IP:PORT`, trailing slash dropped).
    pub fn new(
        base: &str,
        auth: &ClientAuth,
        timeout: Duration,
    ) -> Result<Self, PreheatClientError> {
        let base = base.trim_end_matches('/').to_string();
        let (http, token) = match auth {
            ClientAuth::Cluster(transport) => (
                transport
                    .http_client_for(
                        Expect::RegistrySide,
                        timeout.min(Duration::from_secs(5)),
                        timeout,
                    )
                    .map_err(PreheatClientError::Tls)?,
                None,
            ),
            ClientAuth::Token { token, ca } => {
                let mut builder = reqwest::Client::builder()
                    .connect_timeout(timeout.min(Duration::from_secs(5)))
                    .timeout(timeout)
                    .no_proxy()
                    .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")));
                if let Some(ca) = ca {
                    let pem = std::fs::read(ca).map_err(|source| PreheatClientError::ReadCa {
                        path: ca.clone(),
                        source,
                    })?;
                    let cert = reqwest::Certificate::from_pem(&pem).map_err(|source| {
                        PreheatClientError::Client {
                            path: Some(ca.clone()),
                            source,
                        }
                    })?;
                    builder = builder
                        .tls_built_in_root_certs(false)
                        .add_root_certificate(cert);
                }
                let http = builder
                    .build()
                    .map_err(|source| PreheatClientError::Client { path: None, source })?;
                (http, Some(token.clone()))
            }
        };
        Ok(Self { base, http, token })
    }

    /// The coordinator's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: String,
    ) -> Result<T, PreheatClientError> {
        let request = match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        let transport = |source: reqwest::Error| PreheatClientError::Transport {
            url: url.clone(),
            source,
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(piece) = response.chunk().await.map_err(transport)? {
            if body.len() + piece.len() > MAX_BODY {
                return Err(PreheatClientError::TooLarge {
                    url: url.clone(),
                    limit: MAX_BODY,
                });
            }
            body.extend_from_slice(&piece);
        }
        if !status.is_success() {
            return Err(PreheatClientError::Status {
                url,
                status: status.as_u16(),
                message: error_text(&body),
            });
        }
        serde_json::from_slice(&body)
            .map_err(|source| PreheatClientError::Malformed { url, source })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, PreheatClientError> {
        let url = format!("{}{path}", self.base);
        self.call(self.http.post(&url).json(body), url).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, PreheatClientError> {
        let url = format!("{}{path}", self.base);
        self.call(self.http.get(&url), url).await
    }

    pub async fn register(&self, info: &NodeInfo) -> Result<Registered, PreheatClientError> {
        self.post("/v1/preheat/register", info).await
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatReply, PreheatClientError> {
        self.post("/v1/preheat/heartbeat", hb).await
    }

    pub async fn nodes(&self) -> Result<NodeList, PreheatClientError> {
        self.get("/v1/preheat/nodes").await
    }

    pub async fn submit(&self, spec: &JobSpec) -> Result<JobStatus, PreheatClientError> {
        self.post("/v1/preheat/jobs", spec).await
    }

    pub async fn jobs(&self) -> Result<JobList, PreheatClientError> {
        self.get("/v1/preheat/jobs").await
    }

    pub async fn job(&self, id: &str) -> Result<JobStatus, PreheatClientError> {
        self.get(&format!("/v1/preheat/jobs/{}", path_segment(id)))
            .await
    }

    pub async fn cancel(&self, id: &str) -> Result<JobStatus, PreheatClientError> {
        self.post(
            &format!("/v1/preheat/jobs/{}/cancel", path_segment(id)),
            &(),
        )
        .await
    }
}

/// `id` with everything but `[A-Za-z0-9._-]` percent-encoded.
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_encoded_as_one_path_segment() {
        assert_eq!(path_segment("12"), "12");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }
}
