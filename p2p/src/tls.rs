//! The swarm's transport: TLS with mutual authentication against a cluster CA (DESIGN
//! "Security"), or plaintext when a test setting asks for it explicitly.
//!
//! - Both ends present a certificate issued by the cluster CA, and both ends check the other's
//!   chain against that CA only (never the system roots). A client without a certificate from
//!   the CA fails the handshake: its request never reaches a handler.
//! - Peers are addressed by IP and node certificates need not name their node: the cluster CA
//!   is the authority, so the server-name check is skipped while the chain, validity period and
//!   signatures are checked as usual.
//! - [`Transport::serve`] runs an axum router on a listener, over TLS or plaintext, until a
//!   shutdown future completes; [`Transport::http_client`] builds the matching HTTP client.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
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
    #[error("reading {what} {path:?}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path:?} holds no PEM {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
    #[error("no TLS files configured and plaintext not explicitly allowed")]
    NotConfigured,
}

/// TLS configured for both directions, built once from [`TlsFiles`].
pub struct TlsMaterial {
    server: Arc<rustls::ServerConfig>,
    /// The same server certificate, no client certificate asked for (token-authenticated
    /// admin listeners).
    server_only: Arc<rustls::ServerConfig>,
    client: rustls::ClientConfig,
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
    let read_err = |reason: String| TlsError::Read {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(e.to_string()))?;
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
        e => TlsError::Read {
            what: "private key",
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })
}

impl TlsMaterial {
    /// Reads the CA, certificate and key and builds both TLS configurations.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let setup = |e: rustls::Error| TlsError::Setup(e.to_string());
        let mut roots = RootCertStore::empty();
        for ca in read_certs("cluster CA certificate", &files.ca)? {
            roots
                .add(ca)
                .map_err(|e| TlsError::Setup(format!("CA {:?}: {e}", files.ca)))?;
        }
        let roots = Arc::new(roots);
        let chain = read_certs("certificate", &files.cert)?;
        let key = read_key(&files.key)?;

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::Setup(e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(setup)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::Setup(format!("certificate {:?}: {e}", files.cert)))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut server_only = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(setup)?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::Setup(format!("certificate {:?}: {e}", files.cert)))?;
        server_only.alpn_protocols = vec![b"http/1.1".to_vec()];

        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(setup)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterCaVerifier(server_verifier)))
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Setup(format!("certificate {:?}: {e}", files.cert)))?;
        Ok(Self {
            server: Arc::new(server),
            server_only: Arc::new(server_only),
            client,
        })
    }
}

/// Checks a server's chain against the cluster CA like webpki does, but accepts a certificate
/// whatever names it carries: peers are dialled by IP, and any node of the cluster CA may
/// serve chunks.
#[derive(Debug)]
struct ClusterCaVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ClusterCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
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

    /// An HTTP client for swarm requests: it presents this node's certificate and trusts only
    /// the cluster CA (TLS), or speaks plain HTTP. Proxies from the environment are ignored.
    pub fn http_client(
        &self,
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
                .use_preconfigured_tls(material.client.clone())
                .https_only(true),
            Self::Plaintext => builder,
        };
        builder.build().map_err(|e| TlsError::Setup(e.to_string()))
    }

    /// Serves `router` on `listener` until `shutdown` completes (then stops accepting; open
    /// connections finish their current request). Over TLS, a client without a certificate
    /// from the cluster CA fails the handshake and is dropped.
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
        serve_with(acceptor, listener, router, shutdown).await
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
        serve_with(acceptor, listener, router, shutdown).await
    }
}

/// Serves `router` on `listener`, through `acceptor` when TLS, until `shutdown`.
async fn serve_with(
    acceptor: Option<tokio_rustls::TlsAcceptor>,
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
        let router = router.clone();
        let acceptor = acceptor.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let service = hyper_util::service::TowerToHyperService::new(router);
            let builder = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::info!("TLS handshake with {remote} refused: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::info!("TLS handshake with {remote} timed out");
                                return;
                            }
                        };
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                    drive(conn, &mut stop).await;
                }
                None => {
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                    drive(conn, &mut stop).await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    Ok(())
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
