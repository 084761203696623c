//! A test cluster's PKI: a cluster CA written to a directory, node certificates it signs (for
//! the swarm's mutual TLS, see `shoal_p2p::tls`), and certificates of a *different* CA, which
//! every node must refuse.
//!
//! Every certificate is good for both TLS server and client authentication (a node serves
//! chunks and fetches them with the same identity) and names the node (DNS), when given its
//! IP addresses, and its role as `shoal://node/NAME` or `shoal://registry-side/NAME`
//! (`shoal_p2p::tls::Identity`), unless made role-less on purpose ([`Pki::issue_roleless`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use shoal_p2p::tls::{Identity, Role};

/// PEM files of one identity: the CA it trusts, its certificate and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsPaths {
    /// The `[swarm.tls]` / `[tls]` TOML table body (`ca = ...`, `cert = ...`, `key = ...`).
    pub fn toml(&self) -> String {
        format!(
            "ca = {:?}\ncert = {:?}\nkey = {:?}\n",
            self.ca.display().to_string(),
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }

    /// As `shoal_p2p::tls::TlsFiles`.
    pub fn files(&self) -> shoal_p2p::tls::TlsFiles {
        shoal_p2p::tls::TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// One certificate authority and its key.
struct Authority {
    cert: Certificate,
    key: KeyPair,
    path: PathBuf,
}

impl Authority {
    fn create(name: &str, path: PathBuf) -> Result<Self> {
        let key = KeyPair::generate().context("generating a CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        std::fs::write(&path, cert.pem()).with_context(|| format!("writing {path:?}"))?;
        Ok(Self { cert, key, path })
    }

    /// A leaf certificate for `name` (and `ips`) with `role` signed by this CA: (certificate
    /// PEM, key PEM).
    fn sign(&self, name: &str, ips: &[IpAddr], role: Option<Role>) -> Result<(String, String)> {
        let key = KeyPair::generate().context("generating a node key")?;
        let mut params = CertificateParams::new(vec![name.to_string()])
            .with_context(|| format!("certificate name {name:?}"))?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        if let Some(role) = role {
            let uri = Identity::new(role, name)
                .with_context(|| format!("{name:?} is not a node name"))?
                .uri();
            params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        }
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .with_context(|| format!("signing the certificate of {name}"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The cluster CA (and, made on first use, a foreign one) with its files under a directory.
pub struct Pki {
    dir: PathBuf,
    cluster: Authority,
    foreign: std::sync::OnceLock<Authority>,
}

impl Pki {
    /// Makes a new cluster CA and writes its certificate to `dir/ca.pem` (`dir` is created).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let cluster = Authority::create("shoal test cluster CA", dir.join("ca.pem"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cluster,
            foreign: std::sync::OnceLock::new(),
        })
    }

    /// The cluster CA certificate (PEM file).
    pub fn ca(&self) -> &Path {
        &self.cluster.path
    }

    /// A node certificate and key for `name` signed by the cluster CA.
    pub fn issue(&self, name: &str) -> Result<TlsPaths> {
        self.issue_for(name, &[])
    }

    /// [`Self::issue`], naming `ips` too (IP subject alternative names), so that ordinary TLS
    /// clients dialling the node by IP accept it.
    pub fn issue_for(&self, name: &str, ips: &[IpAddr]) -> Result<TlsPaths> {
        self.issue_as(name, ips, Some(Role::Node))
    }

    /// A registry-side certificate (shoal-registry-ext) for `name` and `ips`.
    pub fn issue_registry_side(&self, name: &str, ips: &[IpAddr]) -> Result<TlsPaths> {
        self.issue_as(name, ips, Some(Role::RegistrySide))
    }

    /// A certificate of the cluster CA naming no role, as `cluster-certs.sh` made them
    /// before roles: shoal refuses it.
    pub fn issue_roleless(&self, name: &str) -> Result<TlsPaths> {
        self.issue_as(name, &[], None)
    }

    fn issue_as(&self, name: &str, ips: &[IpAddr], role: Option<Role>) -> Result<TlsPaths> {
        let (cert, key) = self.cluster.sign(name, ips, role)?;
        self.write(name, &cert, &key, self.cluster.path.clone())
    }

    /// A certificate and key for `name` from a different CA, which the cluster never
    /// trusts. `ca` is the *cluster* CA: a client built from these paths checks the node it
    /// dials as any cluster member would, and presents a certificate no node may accept.
    /// The foreign CA's own certificate is `foreign-ca.pem` in the directory.
    pub fn foreign(&self, name: &str) -> Result<TlsPaths> {
        let authority = match self.foreign.get() {
            Some(a) => a,
            None => {
                let made =
                    Authority::create("not the cluster CA", self.dir.join("foreign-ca.pem"))?;
                let _ = self.foreign.set(made);
                self.foreign.get().expect("just set")
            }
        };
        let (cert, key) = authority.sign(name, &[], Some(Role::Node))?;
        self.write(
            &format!("foreign-{name}"),
            &cert,
            &key,
            self.cluster.path.clone(),
        )
    }

    fn write(&self, stem: &str, cert: &str, key: &str, ca: PathBuf) -> Result<TlsPaths> {
        let paths = TlsPaths {
            ca,
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}-key.pem")),
        };
        std::fs::write(&paths.cert, cert)?;
        std::fs::write(&paths.key, key)?;
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_node_and_foreign_certificates_that_rustls_loads() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let pki = Pki::create(dir.path())?;
        let node = pki.issue_for("node-1", &["10.231.0.2".parse()?])?;
        assert_eq!(node.ca, pki.ca());
        let foreign = pki.foreign("intruder")?;
        assert_eq!(foreign.ca, pki.ca());
        assert_ne!(
            std::fs::read(&node.cert)?,
            std::fs::read(&foreign.cert)?,
            "two different certificates"
        );
        assert!(dir.path().join("foreign-ca.pem").is_file());
        // Both load as swarm TLS material (the chain is checked at handshake time).
        shoal_p2p::tls::TlsMaterial::load(&node.files())?;
        shoal_p2p::tls::TlsMaterial::load(&foreign.files())?;
        assert!(node.toml().contains("cert = "));
        Ok(())
    }

    #[tokio::test]
    async fn the_cluster_ca_is_required_by_the_swarm_transport() -> Result<()> {
        use shoal_p2p::tls::Transport;
        let dir = tempfile::tempdir()?;
        let pki = Pki::create(dir.path())?;
        let server = Transport::load(Some(&pki.issue("server")?.files()), false)?;
        let roleless = pki.issue_roleless("old")?;
        let e = Transport::load(Some(&roleless.files()), false).unwrap_err();
        assert!(e.to_string().contains("scripts/cluster-certs.sh"), "{e}");
        let reg = pki.issue_registry_side("reg", &[])?;
        let reg = Transport::load(Some(&reg.files()), false)?;
        assert_eq!(reg.identity().map(|i| i.role), Some(Role::RegistrySide));
        let good = Transport::load(Some(&pki.issue("client")?.files()), false)?;
        let bad = Transport::load(Some(&pki.foreign("client")?.files()), false)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            server
                .serve(listener, router, async {
                    let _ = stopped.await;
                })
                .await
        });
        let timeout = std::time::Duration::from_secs(5);
        let url = format!("https://{addr}/");
        let body = good
            .http_client(timeout, timeout)?
            .get(&url)
            .send()
            .await?
            .text()
            .await?;
        assert_eq!(body, "hello");
        let refused = bad.http_client(timeout, timeout)?.get(&url).send().await;
        assert!(refused.is_err(), "a foreign certificate was accepted");
        let _ = stop.send(());
        serving.await??;
        Ok(())
    }
}
