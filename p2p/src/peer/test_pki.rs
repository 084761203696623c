//! Test certificates: a cluster CA and node certificates issued by it, written as PEM files
//! for [`crate::tls::TlsFiles`]. Node certificates name `<node>.shoal.test`, not an IP: the
//! transport does not check names. For tests only: built for this crate's tests and, with the
//! `test-pki` feature, for other crates' tests.

use std::path::Path;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::tls::{TlsFiles, Transport};

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

    /// Issues a certificate for `node` and writes `<ca>.ca.pem`, `<node>.pem`, `<node>.key`
    /// into `dir`.
    pub fn node_files(&self, dir: &Path, node: &str) -> TlsFiles {
        let key = KeyPair::generate().expect("node key");
        let mut params =
            CertificateParams::new(vec![format!("{node}.shoal.test")]).expect("node params");
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

    /// A TLS transport for `node`, with its files in `dir`.
    pub fn transport(&self, dir: &Path, node: &str) -> Transport {
        Transport::load(Some(&self.node_files(dir, node)), false).expect("TLS transport")
    }
}
