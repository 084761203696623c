//! Cluster identities: which node a certificate belongs to and what role it plays.
//!
//! A cluster certificate names its holder and role in a URI subject alternative name:
//! `shoal://node/NAME` (a node running shoald) or `shoal://registry-side/NAME` (a
//! shoal-registry-ext). A URI SAN is read by webpki itself (`valid_uri_names`), needs no
//! extension of shoal's own, sits beside the DNS and IP SANs that ordinary TLS name checks use,
//! and `openssl x509 -ext subjectAltName` shows it. `scripts/cluster-certs.sh` writes it.
//!
//! A certificate must carry exactly one such name; one without (made by the old
//! `cluster-certs.sh`) is refused at startup and at every handshake.
//!
//! Who may do what (checked by [`require_roles`] on the server and by the verifiers in
//! [`super::verify`] on the client):
//! - only `registry-side` serves as tracker, chunk-manifest service, seeder of last resort and
//!   preheat coordinator;
//! - a node's chunk server and the registry side's tracker, manifest and seeder routes serve
//!   `node` certificates; the tracker also binds an announce's `peer_id` to the name.

use std::fmt;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::IntoResponse;
use rustls::pki_types::CertificateDer;

use crate::tracker::proto::ErrorBody;

/// The URI scheme of shoal's identity names.
const SCHEME: &str = "shoal://";
/// Longest node name accepted (a DNS name's limit).
const MAX_NAME: usize = 253;

/// What a certificate's holder may act as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A node (shoald): fetches chunks, serves them to other nodes, announces itself.
    Node,
    /// The registry side (shoal-registry-ext): tracker, chunk-manifest service, seeder of last
    /// resort, preheat coordinator.
    RegistrySide,
}

impl Role {
    /// The role's name in certificates and messages: `node` or `registry-side`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::RegistrySide => "registry-side",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "node" => Some(Role::Node),
            "registry-side" => Some(Role::RegistrySide),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a cluster certificate belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// What the holder may act as.
    pub role: Role,
    /// The node's name (for a node: its swarm peer id and preheat node name).
    pub name: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)
    }
}

/// Why a certificate names no usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not an X.509 certificate webpki can read.
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(#[source] webpki::Error),
    /// No `shoal://ROLE/NAME` name: a certificate from before roles.
    #[error("the certificate names no shoal role (no subject alternative name shoal://node/NAME or shoal://registry-side/NAME); remake it with scripts/cluster-certs.sh DIR NAME (a node) or scripts/cluster-certs.sh DIR registry-side:NAME (the registry extension)")]
    NoRole,
    /// A `shoal://` name that is not `shoal://node/NAME` or `shoal://registry-side/NAME`.
    #[error("the certificate's name {uri:?} is not shoal://node/NAME or shoal://registry-side/NAME with NAME of letters, digits, '.', '_' and '-'")]
    Malformed { uri: String },
    /// More than one `shoal://` name.
    #[error("the certificate names several shoal identities ({first}, {second}); it must name exactly one")]
    Several { first: Identity, second: Identity },
}

/// Whether `name` is a node name: 1 to 253 of `[A-Za-z0-9._-]`, starting with a letter or
/// digit (what `cluster-certs.sh` accepts).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Identity {
    /// An identity; `None` when `name` is not a valid node name ([`valid_name`]).
    pub fn new(role: Role, name: &str) -> Option<Self> {
        valid_name(name).then(|| Self {
            role,
            name: name.to_owned(),
        })
    }

    /// The URI subject alternative name that carries this identity.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}", self.role, self.name)
    }

    /// Parses one `shoal://ROLE/NAME` URI.
    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed {
            uri: uri.chars().take(300).collect(),
        };
        let rest = uri.strip_prefix(SCHEME).ok_or_else(malformed)?;
        let (role, name) = rest.split_once('/').ok_or_else(malformed)?;
        let role = Role::parse(role).ok_or_else(malformed)?;
        Self::new(role, name).ok_or_else(malformed)
    }

    /// The identity a certificate (DER) names: its one `shoal://` URI SAN. Other URIs are
    /// ignored. The certificate's chain is not checked here.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let parsed = webpki::EndEntityCert::try_from(cert).map_err(IdentityError::Unparsable)?;
        let mut found: Option<Identity> = None;
        for uri in parsed.valid_uri_names() {
            if !uri
                .get(..SCHEME.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME))
            {
                continue;
            }
            let identity = Self::from_uri(uri)?;
            match found {
                Some(first) if first != identity => {
                    return Err(IdentityError::Several {
                        first,
                        second: identity,
                    })
                }
                _ => found = Some(identity),
            }
        }
        found.ok_or(IdentityError::NoRole)
    }
}

/// Who sent a request, as the server's transport saw it: added to every request's extensions
/// by [`super::Transport::serve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Plaintext transport (tests only): nobody is authenticated, every role check passes.
    Plaintext,
    /// A client certificate from the cluster CA naming this identity.
    Cluster(Identity),
}

impl Caller {
    /// Whether a check of `roles` passes: plaintext, or a certificate with one of them.
    pub fn has_role(&self, roles: &[Role]) -> bool {
        match self {
            Caller::Plaintext => true,
            Caller::Cluster(id) => roles.contains(&id.role),
        }
    }

    /// Whether the caller may act as the node `name`: plaintext, or a certificate naming it.
    pub fn may_act_as(&self, name: &str) -> bool {
        match self {
            Caller::Plaintext => true,
            Caller::Cluster(id) => id.name == name,
        }
    }

    /// The certificate's identity (none over plaintext).
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Caller::Plaintext => None,
            Caller::Cluster(id) => Some(id),
        }
    }
}

/// Wraps `router` so that only callers with one of `roles` reach it: others get `403` with
/// an [`ErrorBody`] naming their certificate's identity and the roles needed. A request
/// without a [`Caller`] (served by something other than [`super::Transport::serve`]) is
/// refused too.
pub fn require_roles<S>(router: axum::Router<S>, roles: &'static [Role]) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.route_layer(axum::middleware::from_fn(
        move |request: Request, next: Next| async move {
            match request.extensions().get::<Caller>() {
                Some(caller) if caller.has_role(roles) => next.run(request).await,
                caller => {
                    let who = match caller.and_then(Caller::identity) {
                        Some(id) => format!("certificate of {id}"),
                        None => "a caller without a cluster identity".to_owned(),
                    };
                    let needed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                    let error = format!(
                        "{} {}: refused to {who}; this route needs a certificate with role {}",
                        request.method(),
                        request.uri().path(),
                        needed.join(" or ")
                    );
                    tracing::info!("{error}");
                    (StatusCode::FORBIDDEN, axum::Json(ErrorBody { error })).into_response()
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_bad_ones_are_refused() {
        for (role, name) in [(Role::Node, "node-1"), (Role::RegistrySide, "reg.ext_2")] {
            let id = Identity::new(role, name).unwrap();
            assert_eq!(Identity::from_uri(&id.uri()).unwrap(), id);
        }
        assert_eq!(
            Identity::new(Role::Node, "a").unwrap().uri(),
            "shoal://node/a"
        );
        for bad in [
            "shoal://node/",
            "shoal://node",
            "shoal://admin/x",
            "shoal://node/a/b",
            "shoal://node/.x",
            "shoal://node/a b",
            "https://node/x",
        ] {
            assert!(
                matches!(
                    Identity::from_uri(bad),
                    Err(IdentityError::Malformed { .. })
                ),
                "{bad}"
            );
        }
        assert!(!valid_name(&"a".repeat(254)));
        assert!(valid_name(&"a".repeat(253)));
    }

    #[test]
    fn callers_and_roles() {
        let node = Caller::Cluster(Identity::new(Role::Node, "n1").unwrap());
        assert!(node.has_role(&[Role::Node]));
        assert!(!node.has_role(&[Role::RegistrySide]));
        assert!(node.may_act_as("n1"));
        assert!(!node.may_act_as("n2"));
        assert!(Caller::Plaintext.has_role(&[Role::RegistrySide]));
        assert!(Caller::Plaintext.may_act_as("anyone"));
    }
}
