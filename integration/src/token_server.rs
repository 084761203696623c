//! A minimal Docker token server (the `realm` of `auth: token` in distribution's config), run
//! in-process for tests.
//!
//! `GET /token?service=S&scope=repository:NAME:pull[,push]` with Basic credentials answers
//! `{"token": JWT, "access_token": JWT, "expires_in": N}`. The JWT is ES256-signed; its header
//! carries `x5c` = [the self-signed signing certificate], which is also written as the
//! registry's `rootcertbundle`, so distribution 2.8 verifies it. The right user is granted
//! the actions asked for (pull, push); an anonymous caller gets a token with no access (as
//! Docker Hub does for private repositories); wrong credentials get 401. Issued tokens are
//! counted so tests can assert reuse.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The `service` (JWT audience) the test registry is configured with.
pub const SERVICE: &str = "shoal-test-registry";
/// The JWT issuer the test registry trusts.
pub const ISSUER: &str = "shoal-test-token-issuer";

/// Who may get tokens, and how they are signed.
pub struct TokenIssuer {
    username: String,
    password: String,
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    cert_pem: String,
    rng: SystemRandom,
    /// Lifetime written into `expires_in` and `exp`, seconds.
    expires_in: u64,
    issued: AtomicU64,
    refused: AtomicU64,
}

impl TokenIssuer {
    /// A fresh P-256 key and self-signed certificate; `username`/`password` is the one user.
    pub fn new(username: &str, password: &str, expires_in: u64) -> Result<Self> {
        let key_pair = rcgen::KeyPair::generate().context("generating the token signing key")?;
        let mut params = rcgen::CertificateParams::new(vec!["shoal-test-token-signer".into()])
            .context("certificate parameters")?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params
            .self_signed(&key_pair)
            .context("self-signing the token certificate")?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &rng,
        )
        .map_err(|e| anyhow::anyhow!("loading the signing key into ring: {e}"))?;
        Ok(Self {
            username: username.to_string(),
            password: password.to_string(),
            key,
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            rng,
            expires_in,
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// The signing certificate as PEM (the registry's `rootcertbundle`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A signed JWT for `subject` granting `access` (type, name, actions).
    pub fn sign(&self, subject: &str, access: &[(String, String, Vec<String>)]) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [STANDARD.encode(&self.cert_der)],
        });
        let access: Vec<_> = access
            .iter()
            .map(|(t, n, a)| serde_json::json!({"type": t, "name": n, "actions": a}))
            .collect();
        let n = self.issued.load(Ordering::Relaxed);
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + self.expires_in,
            "nbf": now.saturating_sub(5),
            "iat": now,
            "jti": format!("shoal-{now}-{n}-{}", std::process::id()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }
}

/// A running token server; stops when dropped.
pub struct TokenServer {
    addr: SocketAddr,
    issuer: Arc<TokenIssuer>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TokenServer {
    /// Start on 127.0.0.1 with a free port (needs a tokio runtime). Tokens live 300 s.
    pub async fn start(username: &str, password: &str) -> Result<Self> {
        Self::start_with_lifetime(username, password, 300).await
    }

    /// As [`TokenServer::start`], with tokens that live `expires_in` seconds.
    pub async fn start_with_lifetime(
        username: &str,
        password: &str,
        expires_in: u64,
    ) -> Result<Self> {
        let issuer = Arc::new(TokenIssuer::new(username, password, expires_in)?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let served = issuer.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = serve(listener, served, shutdown).await {
                eprintln!("token server stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            issuer,
            shutdown: Some(tx),
        })
    }

    /// `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many tokens were issued (anonymous ones included).
    pub fn issued(&self) -> u64 {
        self.issuer.issued.load(Ordering::Relaxed)
    }

    /// How many requests were refused (wrong credentials).
    pub fn refused(&self) -> u64 {
        self.issuer.refused.load(Ordering::Relaxed)
    }

    /// Write the signing certificate where the registry's `rootcertbundle` points.
    pub fn write_root_cert(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.issuer.cert_pem())
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn issuer(&self) -> &TokenIssuer {
        &self.issuer
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serve the token endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    issuer: Arc<TokenIssuer>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route("/token", get(token)).with_state(issuer);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn token(
    State(issuer): State<Arc<TokenIssuer>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let params: HashMap<&str, Vec<&str>> = query.iter().fold(HashMap::new(), |mut m, (k, v)| {
        m.entry(k.as_str()).or_default().push(v.as_str());
        m
    });
    if let Some(services) = params.get("service") {
        if services.iter().any(|s| *s != SERVICE) {
            return (StatusCode::BAD_REQUEST, "unknown service").into_response();
        }
    }
    let subject = match basic_credentials(&headers) {
        None => None,
        Some((u, p)) if u == issuer.username && p == issuer.password => Some(u),
        Some(_) => {
            issuer.refused.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"shoal-test-token\"")],
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
            )
                .into_response();
        }
    };
    let mut access = Vec::new();
    if subject.is_some() {
        for scope in params.get("scope").into_iter().flatten() {
            for one in scope.split(' ') {
                // repository:NAME:ACTIONS (NAME has no ':' for repositories)
                let Some((typ, rest)) = one.split_once(':') else {
                    continue;
                };
                let Some((name, actions)) = rest.rsplit_once(':') else {
                    continue;
                };
                if typ != "repository" || name.is_empty() {
                    continue;
                }
                let granted: Vec<String> = actions
                    .split(',')
                    .filter(|a| matches!(*a, "pull" | "push"))
                    .map(str::to_string)
                    .collect();
                access.push((typ.to_string(), name.to_string(), granted));
            }
        }
    }
    let subject = subject.unwrap_or_default();
    match issuer.sign(&subject, &access) {
        Ok(jwt) => {
            issuer.issued.fetch_add(1, Ordering::Relaxed);
            axum::Json(serde_json::json!({
                "token": jwt,
                "access_token": jwt,
                "expires_in": issuer.expires_in,
            }))
            .into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}
