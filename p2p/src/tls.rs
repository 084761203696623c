//! The swarm's transport: TLS with mutual authentication against a cluster CA (DESIGN
//! "Security"), or plaintext when a test setting asks for it explicitly.
//!
//! - Both ends present a certificate issued by the cluster CA, and both ends check the other's
//!   chain against that CA only (never the system roots). A client without a certificate from
//!   the CA fails the handshake: its request never reaches a handler.
//! - Peers are addressed by IP, so the DNS/IP server-name check is skipped while the chain,
//!   validity period and signatures are checked as usual.
//! - Every certificate names its holder and role ([`identity`]: `shoal://node/NAME` or
//!   `shoal://registry-side/NAME`). [`TlsMaterial::load`] refuses an own certificate without
//!   one; a handshake with a peer whose certificate has none fails, logged; a client of the
//!   registry side ([`Expect::RegistrySide`]) accepts only a registry-side server; a server
//!   hands the client's identity to its handlers as a [`Caller`], and [`require_roles`] limits
//!   routes to roles.
//! - [`Transport::serve`] runs an axum router on a listener, over TLS or plaintext, until a
//!   shutdown future completes; [`Transport::http_client`] builds the matching HTTP client.

mod identity;
#[cfg(test)]
mod tests;
mod verify;

pub use identity::{require_roles, valid_name, Caller, Identity, IdentityError, Role};
pub use verify::{Expect, IdentityRefusal};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::Deserialize;
use tokio::net::TcpListener;

/// How long a client may take to finish the TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Paths of the cluster CA certificate and of this node's certificate and key (PEM).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA's certificate: the only issuer trusted for peers, trackers and clients.
    pub ca: PathBuf,
    /// This node's certificate (chain), issued by the cluster CA.
    pub cert: PathBuf,
    /// This node's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path:?}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} {path:?} holds no PEM {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    /// rustls refused part of the configuration (`what`, read from `path`).
    #[error("TLS setup: {what}{}: {source}", .path.as_ref().map(|p| format!(" {p:?}")).unwrap_or_default())]
    Rustls {
        what: &'static str,
        path: Option<PathBuf>,
        #[source]
        source: rustls::Error,
    },
    /// The certificate verifier (of clients or of servers) cannot be built from the CA.
    #[error("TLS setup: {what} verifier for CA {ca:?}: {source}")]
    Verifier {
        what: &'static str,
        ca: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The HTTP client over this transport cannot be built.
    #[error("TLS setup: HTTP client: {}", crate::error::Chain(.source))]
    HttpClient {
        #[source]
        source: reqwest::Error,
    },
    /// This component's own certificate names no usable identity (e.g. made before roles).
    #[error("certificate {path:?}: {source}")]
    Identity {
        path: PathBuf,
        #[source]
        source: IdentityError,
    },
    /// This component's own certificate has the other role.
    #[error("certificate {path:?} is the certificate of {found}, but {component} needs a {needed} certificate: make one with {remake}")]
    WrongRole {
        path: PathBuf,
        found: Identity,
        needed: Role,
        component: &'static str,
        remake: String,
    },
    #[error("no TLS files configured and plaintext not explicitly allowed")]
    NotConfigured,
}

/// TLS configured for both directions, built once from [`TlsFiles`].
pub struct TlsMaterial {
    server: Arc<rustls::ServerConfig>,
    /// The same server certificate, no client certificate asked for (token-authenticated
    /// admin listeners).
    server_only: Arc<rustls::ServerConfig>,
    /// Client of any cluster member with a role (chunk servers of nodes).
    client: rustls::ClientConfig,
    /// Client of the registry side only (trackers, manifests, seeder, coordinator).
    registry_client: rustls::ClientConfig,
    /// What this component's own certificate names.
    identity: Identity,
    /// Where that certificate was read from (for messages).
    cert_path: PathBuf,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial { .. }")
    }
}

/// The transport of swarm traffic (peers, trackers, chunk manifests). Cloning shares it.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Mutual TLS against the cluster CA.
    Tls(Arc<TlsMaterial>),
    /// Plain HTTP: only when configured explicitly, for tests.
    Plaintext,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "private key",
            path: path.to_path_buf(),
            expected: "PRIVATE KEY",
        },
        source => TlsError::Read {
            what: "private key",
            path: path.to_path_buf(),
            source,
        },
    })
}

impl TlsMaterial {
    /// Reads the CA, certificate and key and builds both TLS configurations.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let setup = |source| TlsError::Rustls {
            what: "protocol versions",
            path: None,
            source,
        };
        let certificate = |source| TlsError::Rustls {
            what: "certificate",
            path: Some(files.cert.clone()),
            source,
        };
        let mut roots = RootCertStore::empty();
        for ca in read_certs("cluster CA certificate", &files.ca)? {
            roots.add(ca).map_err(|source| TlsError::Rustls {
                what: "CA",
                path: Some(files.ca.clone()),
                source,
            })?;
        }
        let roots = Arc::new(roots);
        let chain = read_certs("certificate", &files.cert)?;
        let identity = Identity::from_cert(&chain[0]).map_err(|source| TlsError::Identity {
            path: files.cert.clone(),
            source,
        })?;
        let key = read_key(&files.key)?;

        let client_verifier = Arc::new(verify::ClusterClientVerifier(
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|source| TlsError::Verifier {
                    what: "client",
                    ca: files.ca.clone(),
                    source,
                })?,
        ));
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(setup)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(certificate)?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut server_only = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(setup)?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(certificate)?;
        server_only.alpn_protocols = vec![b"http/1.1".to_vec()];

        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|source| TlsError::Verifier {
                what: "server",
                ca: files.ca.clone(),
                source,
            })?;
        let client_for = |expect: Expect| {
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(setup)?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verify::ClusterServerVerifier {
                    inner: server_verifier.clone(),
                    expect,
                }))
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(certificate)
        };
        Ok(Self {
            server: Arc::new(server),
            server_only: Arc::new(server_only),
            client: client_for(Expect::AnyRole)?,
            registry_client: client_for(Expect::RegistrySide)?,
            identity,
            cert_path: files.cert.clone(),
        })
    }

    /// What this component's own certificate names.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

impl Transport {
    /// TLS from `files`; plaintext only when `files` is `None` and `insecure_plaintext` is set.
    /// When both are given, TLS wins.
    pub fn load(files: Option<&TlsFiles>, insecure_plaintext: bool) -> Result<Self, TlsError> {
        match (files, insecure_plaintext) {
            (Some(files), _) => Ok(Self::Tls(Arc::new(TlsMaterial::load(files)?))),
            (None, true) => Ok(Self::Plaintext),
            (None, false) => Err(TlsError::NotConfigured),
        }
    }

    /// `"https"` or `"http"`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Tls(_) => "https",
            Self::Plaintext => "http",
        }
    }

    /// This component's identity (none over plaintext).
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Self::Tls(material) => Some(material.identity()),
            Self::Plaintext => None,
        }
    }

    /// Checks that this component's own certificate has `role` (plaintext passes), for
    /// `component` (e.g. "shoald's swarm"), so that a wrong certificate fails at startup.
    pub fn require_role(&self, role: Role, component: &'static str) -> Result<(), TlsError> {
        let Self::Tls(material) = self else {
            return Ok(());
        };
        let found = &material.identity;
        if found.role == role {
            return Ok(());
        }
        let remake = match role {
            Role::Node => format!("scripts/cluster-certs.sh DIR {}", found.name),
            Role::RegistrySide => {
                format!("scripts/cluster-certs.sh DIR registry-side:{}", found.name)
            }
        };
        Err(TlsError::WrongRole {
            path: material.cert_path.clone(),
            found: found.clone(),
            needed: role,
            component,
            remake,
        })
    }

    /// An HTTP client for requests to nodes' chunk servers: it presents this node's
    /// certificate and trusts only the cluster CA and servers whose certificate names a role
    /// (TLS), or speaks plain HTTP. Proxies from the environment are ignored.
    pub fn http_client(
        &self,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<reqwest::Client, TlsError> {
        self.http_client_for(Expect::AnyRole, connect_timeout, request_timeout)
    }

    /// [`Self::http_client`], accepting only servers that meet `expect`: use
    /// [`Expect::RegistrySide`] for trackers, chunk manifests, the seeder and the preheat
    /// coordinator.
    pub fn http_client_for(
        &self,
        expect: Expect,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<reqwest::Client, TlsError> {
        let builder = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")));
        let builder = match self {
            Self::Tls(material) => builder
                .use_preconfigured_tls(match expect {
                    Expect::AnyRole => material.client.clone(),
                    Expect::RegistrySide => material.registry_client.clone(),
                })
                .https_only(true),
            Self::Plaintext => builder,
        };
        builder
            .build()
            .map_err(|source| TlsError::HttpClient { source })
    }

    /// Serves `router` on `listener` until `shutdown` completes (then stops accepting; open
    /// connections finish their current request). Over TLS, a client without a certificate
    /// from the cluster CA naming a role fails the handshake and is dropped; every request
    /// carries its [`Caller`] (also [`Caller::Plaintext`] over plaintext) in its extensions.
    pub async fn serve(
        &self,
        listener: TcpListener,
        router: axum::Router,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let acceptor = match self {
            Self::Tls(material) => Some(tokio_rustls::TlsAcceptor::from(material.server.clone())),
            Self::Plaintext => None,
        };
        serve_with(acceptor, true, listener, router, shutdown).await
    }

    /// [`Self::serve`], but over TLS no client certificate is asked for: the server
    /// certificate only. For listeners whose requests authenticate otherwise (a bearer token).
    pub async fn serve_without_client_certs(
        &self,
        listener: TcpListener,
        router: axum::Router,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let acceptor = match self {
            Self::Tls(material) => Some(tokio_rustls::TlsAcceptor::from(
                material.server_only.clone(),
            )),
            Self::Plaintext => None,
        };
        serve_with(acceptor, false, listener, router, shutdown).await
    }
}

/// Unsent bytes a connection's socket holds before it stops taking more (TCP_NOTSENT_LOWAT).
/// The chunk server's uploads take the token bucket's turns oldest first (`peer::limit`,
/// with `upload_bytes_per_sec`); an upload whose receiver is slow must stop asking soon,
/// not after filling a send buffer of megabytes, so that the next one gets the link. Bytes
/// in flight are not limited by this.
const UNSENT_LIMIT: u32 = 128 << 10;

/// Serves `router` on `listener`, through `acceptor` when TLS, until `shutdown`. With
/// `callers`, each request gets the client's [`Caller`] in its extensions.
async fn serve_with(
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    callers: bool,
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        if let Err(e) = crate::sys::limit_unsent(&tcp, UNSENT_LIMIT) {
            tracing::debug!("TCP_NOTSENT_LOWAT on a connection from {remote}: {e}");
        }
        let router = router.clone();
        let acceptor = acceptor.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let builder = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) if is_identity_refusal(&e) => {
                                tracing::warn!("TLS handshake with {remote} refused: {e}");
                                return;
                            }
                            Ok(Err(e)) => {
                                tracing::info!("TLS handshake with {remote} refused: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::info!("TLS handshake with {remote} timed out");
                                return;
                            }
                        };
                    let caller = match tls.get_ref().1.peer_certificates() {
                        Some([cert, ..]) => Identity::from_cert(cert).map(Caller::Cluster),
                        _ => Err(IdentityError::NoRole),
                    };
                    let router = match (callers, caller) {
                        (false, _) => router,
                        (true, Ok(caller)) => router.layer(axum::Extension(caller)),
                        (true, Err(e)) => {
                            // The verifier already checked this; never serve without it.
                            tracing::warn!("TLS client {remote} refused: {e}");
                            return;
                        }
                    };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                    drive(conn, &mut stop).await;
                }
                None => {
                    let router = match callers {
                        true => router.layer(axum::Extension(Caller::Plaintext)),
                        false => router,
                    };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                    drive(conn, &mut stop).await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    Ok(())
}

/// Whether a failed handshake was refused over the peer's identity ([`IdentityRefusal`]).
fn is_identity_refusal(error: &std::io::Error) -> bool {
    let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return false;
    };
    other.0.downcast_ref::<IdentityRefusal>().is_some()
}

/// Runs one HTTP/1 connection until it ends, or shuts it down gracefully once `stop` is set.
async fn drive<I, S>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    let stopped = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection: {e}");
            }
            false
        }
        _ = stop.changed() => true,
    };
    if stopped {
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}
