//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1
//! with a free port, storage and logs in a temporary directory, killed on drop.
//!
//! Three auth modes: anonymous, htpasswd (Basic), and token auth against an in-process
//! [`TokenServer`]. `push_blob` / `push_manifest` talk the registry HTTP API directly
//! (monolithic upload: `POST .../blobs/uploads/` then `PUT <location>?digest=`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_p2p::Digest;
use tempfile::TempDir;

use crate::token_server::{TokenServer, ISSUER, SERVICE};

/// The registry binary Debian's `docker-registry` package installs.
pub const REGISTRY_BIN: &str = "docker-registry";

/// How the test registry authenticates.
#[derive(Clone)]
enum Auth {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    Token {
        realm: String,
        username: String,
        password: String,
    },
}

/// The `notifications` section of a registry's config.yml that sends push events to
/// shoal-registry-ext's push hook at `url` (`http://HOST:PORT/v1/registry-events`) with
/// `token` (its `[notifications] token`); pulls are not sent. distribution 2.8 applies
/// `ignore.actions` only when `ignore.mediatypes` is not empty, hence the config media type
/// there (2.8 reports blob pushes as `application/octet-stream`, so it drops nothing). The
/// docs/registry-side.md shows the same (`integration/tests/docs.rs` checks it).
pub fn notifications_yaml(url: &str, token: &str) -> String {
    format!(
        "notifications:\n\
         \x20 endpoints:\n\
         \x20   - name: shoal-registry-ext\n\
         \x20     url: {url}\n\
         \x20     headers:\n\
         \x20       Authorization: [\"Bearer {token}\"]\n\
         \x20     timeout: 5s\n\
         \x20     threshold: 3\n\
         \x20     backoff: 1s\n\
         \x20     ignore:\n\
         \x20       mediatypes: [application/vnd.oci.image.config.v1+json]\n\
         \x20       actions: [pull]\n"
    )
}

/// A running `docker-registry serve` process; killed (and its directory removed) on drop.
pub struct TestRegistry {
    child: Child,
    addr: String,
    dir: TempDir,
    auth: Auth,
    http: reqwest::Client,
}

impl TestRegistry {
    /// Whether `docker-registry` is installed. Tests that need it print
    /// `SKIP: docker-registry not installed` and return when it is not.
    pub fn available() -> bool {
        crate::tools::have(REGISTRY_BIN)
    }

    /// Anonymous pull and push.
    pub fn start_anonymous() -> Result<Self> {
        Self::start(Auth::Anonymous, "")
    }

    /// Anonymous, inside network namespace `netns`, listening on `ip:5000` (an address of
    /// that namespace, reachable from the host through a veth pair; see [`crate::netns`]).
    pub fn start_in_netns(netns: &str, ip: &str) -> Result<Self> {
        Self::start_at(Auth::Anonymous, "", Some((netns, ip)))
    }

    /// Basic auth with one user, from a bcrypt htpasswd file (`htpasswd -Bbn`).
    pub fn start_htpasswd(username: &str, password: &str) -> Result<Self> {
        let auth = Auth::Basic {
            username: username.into(),
            password: password.into(),
        };
        Self::start(auth, "")
    }

    /// Token auth: the registry trusts `tokens`' certificate and sends clients to its realm.
    /// Pushes use tokens from it with the user it was started with.
    pub fn start_token_auth(tokens: &TokenServer, username: &str, password: &str) -> Result<Self> {
        let auth = Auth::Token {
            realm: tokens.realm(),
            username: username.into(),
            password: password.into(),
        };
        let pem = tokens.issuer().cert_pem().to_string();
        Self::start(auth, &pem)
    }

    /// Anonymous, sending its notifications as [`notifications_yaml`] says.
    pub fn start_with_notifications(url: &str, token: &str) -> Result<Self> {
        Self::start_with(Auth::Anonymous, "", None, &notifications_yaml(url, token))
    }

    fn start(auth: Auth, root_cert_pem: &str) -> Result<Self> {
        Self::start_at(auth, root_cert_pem, None)
    }

    fn start_at(auth: Auth, root_cert_pem: &str, netns: Option<(&str, &str)>) -> Result<Self> {
        Self::start_with(auth, root_cert_pem, netns, "")
    }

    /// Starts it; `extra_yaml` is appended to its config.yml.
    fn start_with(
        auth: Auth,
        root_cert_pem: &str,
        netns: Option<(&str, &str)>,
        extra_yaml: &str,
    ) -> Result<Self> {
        if !Self::available() {
            bail!("{REGISTRY_BIN} is not installed");
        }
        let dir = tempfile::Builder::new()
            .prefix("shoal-registry-")
            .tempdir()?;
        let auth_yaml = match &auth {
            Auth::Anonymous => String::new(),
            Auth::Basic { username, password } => {
                let htpasswd = dir.path().join("htpasswd");
                write_htpasswd(&htpasswd, username, password)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: shoal-test-basic\n    path: {}\n",
                    htpasswd.display()
                )
            }
            Auth::Token { realm, .. } => {
                let bundle = dir.path().join("token-root.pem");
                std::fs::write(&bundle, root_cert_pem)?;
                format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    bundle.display()
                )
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut last_err = None;
        for _ in 0..5 {
            let addr = match netns {
                // A namespace of the test's own: nothing else listens there.
                Some((_, ip)) => format!("{ip}:5000"),
                None => format!("127.0.0.1:{}", free_port()?),
            };
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: info\n  formatter: text\n\
                     storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                     http:\n  addr: {addr}\n  secret: shoal-test-secret\n\
                     {auth_yaml}{extra_yaml}",
                    data = dir.path().join("data").display(),
                ),
            )?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("registry.log"))?;
            let mut cmd = match netns {
                Some((ns, _)) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, REGISTRY_BIN]);
                    c
                }
                None => Command::new(REGISTRY_BIN),
            };
            let child = cmd
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {REGISTRY_BIN}"))?;
            let mut child = child;
            match wait_ready(
                &mut child,
                &addr,
                &dir.path().join("registry.log"),
                Duration::from_secs(20),
            ) {
                Ok(()) => {
                    return Ok(Self {
                        child,
                        addr,
                        dir,
                        auth,
                        http,
                    })
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("registry did not start")))
    }

    /// A shoal registry client that talks plain HTTP to this registry, anonymously.
    pub fn plain_http_client(&self) -> Result<shoal_p2p::registry::RegistryClient> {
        let mut config = shoal_p2p::registry::ClientConfig::default();
        config.hosts.insert(
            self.addr(),
            shoal_p2p::registry::HostConfig {
                plain_http: true,
                ..Default::default()
            },
        );
        Ok(shoal_p2p::registry::RegistryClient::new(config)?)
    }

    /// `127.0.0.1:PORT`, or `IP:5000` for a registry in a network namespace.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The temporary directory holding config, storage and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's log file (access log lines included).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Attach credentials for pushing to `repo`.
    async fn authed(
        &self,
        rb: reqwest::RequestBuilder,
        repo: &str,
    ) -> Result<reqwest::RequestBuilder> {
        Ok(match &self.auth {
            Auth::Anonymous => rb,
            Auth::Basic { username, password } => rb.basic_auth(username, Some(password)),
            Auth::Token {
                realm,
                username,
                password,
            } => {
                let resp = self
                    .http
                    .get(realm)
                    .query(&[
                        ("service", SERVICE.to_string()),
                        ("scope", format!("repository:{repo}:pull,push")),
                    ])
                    .basic_auth(username, Some(password))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("token server refused push token: {}", resp.status());
                }
                let v: serde_json::Value = resp.json().await?;
                let token = v["token"].as_str().context("no token in answer")?;
                rb.bearer_auth(token)
            }
        })
    }

    /// Upload `bytes` as a blob of `repo`; returns its digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base());
        let resp = self
            .authed(self.http.post(&url), repo)
            .await?
            .header(reqwest::header::CONTENT_LENGTH, 0)
            .send()
            .await?;
        if resp.status() != reqwest::StatusCode::ACCEPTED {
            bail!(
                "POST {url}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .context("upload answer has no Location")?
            .to_string();
        let mut put = reqwest::Url::parse(&self.base())?.join(&location)?;
        put.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let resp = self
            .authed(self.http.put(put.clone()), repo)
            .await?
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await?;
        if resp.status() != reqwest::StatusCode::CREATED {
            bail!(
                "PUT {put}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(digest)
    }

    /// Store `bytes` as manifest `reference` (tag or digest) of `repo`; returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base());
        let resp = self
            .authed(self.http.put(&url), repo)
            .await?
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .body(bytes.to_vec())
            .send()
            .await?;
        if resp.status() != reqwest::StatusCode::CREATED {
            bail!(
                "PUT {url}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(Digest::of(bytes))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `GET /v2/` until it answers (200 or 401) or the process exits.
fn wait_ready(child: &mut Child, addr: &str, log: &Path, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{REGISTRY_BIN} exited with {status}; log:\n{}", log());
        }
        if let Ok(code) = http_status(addr, "/v2/") {
            if code == 200 || code == 401 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{REGISTRY_BIN} on {addr} not ready after {limit:?}; log:\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Status code of a plain `GET path` (HTTP/1.0, no client library, usable outside tokio).
fn http_status(addr: &str, path: &str) -> Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse()?, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")
}

/// `user:bcrypt` line, made with `htpasswd -Bbn` (apache2-utils).
fn write_htpasswd(path: &Path, username: &str, password: &str) -> Result<()> {
    let out = crate::tools::run(
        Command::new("htpasswd")
            .arg("-Bbn")
            .arg(username)
            .arg(password),
    )
    .context("htpasswd (apache2-utils) is needed for the htpasswd test registry")?;
    std::fs::write(path, &out.stdout)?;
    Ok(())
}
