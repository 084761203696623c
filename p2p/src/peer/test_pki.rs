//! Test certificates: a cluster CA and certificates issued by it, written as PEM files for
//! [`crate::tls::TlsFiles`]. Each names `<name>.shoal.test` (not an IP: the transport does not
//! check DNS/IP names) and, unless made role-less on purpose, its role
//! (`shoal://node/<name>` or `shoal://registry-side/<name>`, see [`crate::tls::Identity`]).
//! For tests only: built for this crate's tests and, with the `test-pki` feature, for other
//! crates' tests.

use std::path::Path;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::tls::{Identity, Role, TlsFiles, Transport};

/// A test certificate authority.
pub struct TestCa {
    name: String,
    cert: Certificate,
    key: KeyPair,
}

impl TestCa {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            name: name.to_string(),
            cert,
            key,
        }
    }

    /// Issues a node certificate for `node` and writes `<ca>.ca.pem`, `<node>.pem`,
    /// `<node>.key` into `dir`.
    pub fn node_files(&self, dir: &Path, node: &str) -> TlsFiles {
        self.files(dir, node, Some(Role::Node))
    }

    /// [`Self::node_files`] for a registry-side certificate.
    pub fn registry_side_files(&self, dir: &Path, name: &str) -> TlsFiles {
        self.files(dir, name, Some(Role::RegistrySide))
    }

    /// Issues a certificate for `node` with `role` (none: as the script made them before
    /// roles) and writes `<ca>.ca.pem`, `<node>.pem`, `<node>.key` into `dir`.
    pub fn files(&self, dir: &Path, node: &str, role: Option<Role>) -> TlsFiles {
        let key = KeyPair::generate().expect("node key");
        let mut params =
            CertificateParams::new(vec![format!("{node}.shoal.test")]).expect("node params");
        if let Some(role) = role {
            let uri = Identity::new(role, node).expect("node name").uri();
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().expect("URI SAN")));
        }
        params.distinguished_name.push(DnType::CommonName, node);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("node certificate");
        let files = TlsFiles {
            ca: dir.join(format!("{}.ca.pem", self.name)),
            cert: dir.join(format!("{node}.pem")),
            key: dir.join(format!("{node}.key")),
        };
        std::fs::write(&files.ca, self.cert.pem()).expect("write CA");
        std::fs::write(&files.cert, cert.pem()).expect("write certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// A TLS transport for node `node`, with its files in `dir`.
    pub fn transport(&self, dir: &Path, node: &str) -> Transport {
        Transport::load(Some(&self.node_files(dir, node)), false).expect("TLS transport")
    }

    /// A TLS transport for the registry side called `name`, with its files in `dir`.
    pub fn registry_side_transport(&self, dir: &Path, name: &str) -> Transport {
        Transport::load(Some(&self.registry_side_files(dir, name)), false).expect("TLS transport")
    }
}
