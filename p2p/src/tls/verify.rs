//! The certificate verifiers of shoal's mutual TLS: webpki's chain checks against the cluster
//! CA, plus the identity checks of [`super::identity`].
//!
//! - [`ClusterServerVerifier`] (clients): the server's chain as webpki checks it, whatever
//!   names it carries (peers are dialled by IP), then its identity: a role must be named and,
//!   for a client of the registry side (tracker, chunk manifests, seeder, coordinator), it must
//!   be `registry-side`.
//! - [`ClusterClientVerifier`] (servers): the client's chain as webpki checks it, then a role
//!   must be named; which role a route needs is checked per route ([`super::require_roles`]).
//!
//! An identity refusal is a `CertificateError::Other` carrying an [`IdentityRefusal`], so the
//! handshake error says why, and it is logged here.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{Error, SignatureScheme};

use super::identity::{Identity, IdentityError, Role};

/// What a client expects of the server it dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Any cluster identity with a role: a node's chunk server.
    AnyRole,
    /// The registry side: tracker, chunk-manifest service, seeder, preheat coordinator.
    RegistrySide,
}

/// Why a handshake was refused over the peer's identity (inside the rustls error, whose
/// message shows it with `Debug`: that is the same text as `Display`).
#[derive(thiserror::Error)]
pub enum IdentityRefusal {
    /// The certificate names no usable identity.
    #[error("{side} certificate refused: {source}")]
    Unusable {
        side: &'static str,
        #[source]
        source: IdentityError,
    },
    /// The server's identity has the wrong role for what the client dials it for.
    #[error("server certificate of {found} refused: only a registry-side certificate may act as tracker, chunk-manifest service, seeder or preheat coordinator")]
    NotRegistrySide { found: Identity },
}

impl std::fmt::Debug for IdentityRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn refuse(refusal: IdentityRefusal) -> Error {
    tracing::warn!("TLS handshake: {refusal}");
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refusal))))
}

/// Checks a server's chain against the cluster CA like webpki does, but accepts a certificate
/// whatever DNS/IP names it carries, then checks its identity against [`Expect`].
#[derive(Debug)]
pub(super) struct ClusterServerVerifier {
    pub(super) inner: Arc<WebPkiServerVerifier>,
    pub(super) expect: Expect,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(other) => return Err(other),
        }
        let identity = Identity::from_cert(end_entity).map_err(|source| {
            refuse(IdentityRefusal::Unusable {
                side: "server",
                source,
            })
        })?;
        if self.expect == Expect::RegistrySide && identity.role != Role::RegistrySide {
            return Err(refuse(IdentityRefusal::NotRegistrySide { found: identity }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Checks a client's chain as webpki does (mandatory client certificate), then that it names
/// an identity with a role.
#[derive(Debug)]
pub(super) struct ClusterClientVerifier(pub(super) Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)?;
        Identity::from_cert(end_entity).map_err(|source| {
            refuse(IdentityRefusal::Unusable {
                side: "client",
                source,
            })
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
