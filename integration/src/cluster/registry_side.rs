//! The registry side of an emulated cluster: `shoal-registry-ext serve` (tracker, chunk
//! manifests, first seeder) as a process in the registry's namespace, and what the
//! `docker-registry` beside it served, read from its access log.

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::pki::TlsPaths;

/// Port of the registry extension (tracker, manifests, seeder) in the registry namespace.
pub const REGISTRY_EXT_PORT: u16 = 7080;
/// Port of its Prometheus metrics.
pub const REGISTRY_EXT_METRICS_PORT: u16 = 9465;
/// Port of its preheat admin listener (bearer token), when preheat is on.
pub const PREHEAT_ADMIN_PORT: u16 = 7082;

/// A binary of this workspace: `$env_var`, or `name` in the target directory of the running
/// executable (`target/PROFILE/deps/TEST` -> `target/PROFILE/NAME`), as
/// [`crate::cri::shoald_binary`] finds shoald.
pub fn workspace_binary(name: &str, env_var: &str) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(env_var) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("{env_var}={} does not exist", bin.display());
        }
        return Ok(bin);
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable has no directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("no target directory")?;
    }
    let bin = dir.join(name);
    if !bin.is_file() {
        bail!(
            "{name} is not at {}: build it first (`cargo build --workspace`, or with \
             `--release` for benchmarks), or set {env_var}",
            bin.display()
        );
    }
    Ok(bin)
}

/// `shoal-registry-ext`: `$SHOAL_REGISTRY_EXT_BIN` or next to the running executable.
pub fn registry_ext_binary() -> Result<PathBuf> {
    workspace_binary("shoal-registry-ext", "SHOAL_REGISTRY_EXT_BIN")
}

/// `shoal-registry-ext serve` in a namespace; killed on drop.
pub struct RegistryExt {
    netns: String,
    dir: PathBuf,
    addr: String,
    child: Option<Child>,
}

impl RegistryExt {
    /// Writes its config under `dir` (TLS from `tls`; chunk manifests and seed data under
    /// `dir`; `seed_extra`, TOML keys, added to `[seed]`), starts it in `netns` on `ip`, and
    /// waits until it accepts connections.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        netns: &str,
        ip: &str,
        registry_host: &str,
        tls: &TlsPaths,
        chunk_size: u64,
        seed_extra: &str,
        preheat_token: Option<&str>,
        dir: &Path,
    ) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let addr = format!("{ip}:{REGISTRY_EXT_PORT}");
        let config = format!(
            "listen = {addr:?}\n\
             advertise = {addr:?}\n\
             metrics_listen = \"{ip}:{REGISTRY_EXT_METRICS_PORT}\"\n\
             registry_host = {registry_host:?}\n\
             [tls]\n{tls}\
             [registry.hosts.{registry_host:?}]\nplain_http = true\n\
             [manifests]\ndir = {manifests:?}\nchunk_size = {chunk_size}\n\
             [seed]\ndir = {seed:?}\n{seed_extra}",
            tls = tls.toml(),
            manifests = dir.join("manifests").display().to_string(),
            seed = dir.join("seed").display().to_string(),
        );
        let config = match preheat_token {
            None => config,
            Some(token) => format!(
                "{config}[preheat]\nenabled = true\nstate = {state:?}\n\
                 heartbeat_interval_ms = 500\ndown_after_ms = 3000\n\
                 admin_listen = \"{ip}:{PREHEAT_ADMIN_PORT}\"\ntokens = [{token:?}]\n",
                state = dir.join("preheat/preheat.redb").display().to_string(),
            ),
        };
        fs::write(dir.join("registry-ext.toml"), config)?;
        let mut me = Self {
            netns: netns.to_string(),
            dir: dir.to_path_buf(),
            addr,
            child: None,
        };
        me.start_again()?;
        Ok(me)
    }

    /// Starts it again (after [`Self::kill`]) on the same config and state.
    pub fn start_again(&mut self) -> Result<()> {
        if let Some(mut old) = self.child.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let bin = registry_ext_binary()?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(&bin)
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("registry-ext.toml"))
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let addr: SocketAddr = self.addr.parse()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "shoal-registry-ext exited ({status}); log {:?}:\n{}",
                        self.log_path(),
                        self.log()
                    );
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "shoal-registry-ext not listening on {} after 30 s; log {:?}:\n{}",
                    self.addr,
                    self.log_path(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills it with SIGKILL, as a crash would (from any thread, while nodes pull).
    pub fn kill(&self) -> Result<()> {
        match &self.child {
            Some(child) => super::sigkill(child.id()),
            None => Ok(()),
        }
    }

    /// Whether it is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `https://IP:7080`, the tracker URL the nodes use.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Where its Prometheus metrics are served (plain HTTP).
    pub fn metrics_addr(&self) -> String {
        let ip = self.addr.rsplit_once(':').map(|(ip, _)| ip).unwrap_or("");
        format!("{ip}:{REGISTRY_EXT_METRICS_PORT}")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("registry-ext.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for RegistryExt {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What `docker-registry` served, from its access log: the `response completed` lines of
/// distribution 2.8 carry the method, URI, client address, user agent and
/// `http.response.written` (bytes of the response body written to the client; for an
/// aborted transfer, what was written before it broke).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Body bytes of blob GETs (layers and configs).
    pub blob_bytes: u64,
    /// Blob GET requests.
    pub blob_gets: u64,
    /// Body bytes of manifest GETs.
    pub manifest_bytes: u64,
    /// Body bytes of other GETs (`/v2/`, tags, ...).
    pub other_bytes: u64,
    /// Blob body bytes by client IP.
    pub blob_bytes_by_client: BTreeMap<String, u64>,
    /// Blob body bytes by user agent product (`containerd`, `shoal`, ...).
    pub blob_bytes_by_agent: BTreeMap<String, u64>,
}

impl Served {
    /// Every body byte of every GET.
    pub fn total(&self) -> u64 {
        self.blob_bytes + self.manifest_bytes + self.other_bytes
    }

    /// Reads a registry log (distribution's text formatter).
    pub fn parse(log: &str) -> Self {
        let mut me = Self::default();
        for line in log.lines() {
            if !line.contains("msg=\"response completed") {
                continue;
            }
            let fields = logfmt(line);
            let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
            if get("http.request.method") != "GET" {
                continue;
            }
            let written: u64 = get("http.response.written").parse().unwrap_or(0);
            let uri = get("http.request.uri");
            if uri.contains("/blobs/sha256:") {
                me.blob_bytes += written;
                me.blob_gets += 1;
                let client = get("http.request.remoteaddr");
                let ip = client
                    .rsplit_once(':')
                    .map(|(ip, _)| ip)
                    .unwrap_or(client)
                    .to_string();
                *me.blob_bytes_by_client.entry(ip).or_default() += written;
                let agent = get("http.request.useragent")
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .to_string();
                *me.blob_bytes_by_agent.entry(agent).or_default() += written;
            } else if uri.contains("/manifests/") {
                me.manifest_bytes += written;
            } else {
                me.other_bytes += written;
            }
        }
        me
    }

    /// What was served between `earlier` and `self` (both cumulative).
    pub fn since(&self, earlier: &Served) -> Served {
        let diff = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            a.iter()
                .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect()
        };
        Served {
            blob_bytes: self.blob_bytes - earlier.blob_bytes,
            blob_gets: self.blob_gets - earlier.blob_gets,
            manifest_bytes: self.manifest_bytes - earlier.manifest_bytes,
            other_bytes: self.other_bytes - earlier.other_bytes,
            blob_bytes_by_client: diff(&self.blob_bytes_by_client, &earlier.blob_bytes_by_client),
            blob_bytes_by_agent: diff(&self.blob_bytes_by_agent, &earlier.blob_bytes_by_agent),
        }
    }
}

/// `key=value key="quoted \"value\""` pairs of a logrus text line.
fn logfmt(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_string();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut end = quoted.len();
            let mut chars = quoted.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = next.trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_the_registry_served() {
        // Lines as docker-registry 2.8.2 (Debian) writes them.
        let log = r#"time="2026-11-24T21:55:48.203696156Z" level=info msg="response completed" go.version=go1.19.8 http.request.host="127.0.0.1:5999" http.request.id=988b http.request.method=GET http.request.remoteaddr="10.231.1.2:34810" http.request.uri="/v2/t/x/blobs/sha256:ff7e" http.request.useragent=containerd/1.6.20~ds1 http.response.contenttype=application/octet-stream http.response.duration=2.7ms http.response.status=200 http.response.written=300000
127.0.0.1 - - [24/Nov/2026:21:55:48 +0000] "GET /v2/t/x/blobs/sha256:ff7e HTTP/1.1" 200 300000 "" "containerd/1.6.20~ds1"
time="2026-11-24T21:55:48.216576768Z" level=info msg="response completed" go.version=go1.19.8 http.request.host="127.0.0.1:5999" http.request.id=f312 http.request.method=GET http.request.remoteaddr="10.231.0.2:34818" http.request.uri="/v2/t/x/blobs/sha256:ff7e" http.request.useragent="shoal/0.1.0" http.response.status=206 http.response.written=1000
time="2026-11-24T21:55:48.225916565Z" level=info msg="response completed" go.version=go1.19.8 http.request.method=HEAD http.request.remoteaddr="10.231.1.2:1" http.request.uri="/v2/t/x/blobs/sha256:ff7e" http.response.status=200 http.response.written=0
time="2026-11-24T21:55:48.3Z" level=info msg="response completed" http.request.method=GET http.request.remoteaddr="10.231.1.2:2" http.request.uri="/v2/t/x/manifests/v1" http.request.useragent="containerd/1.6.20~ds1" http.response.status=200 http.response.written=520
time="2026-11-24T21:55:48.4Z" level=error msg="response completed with error" err.code="blob unknown" http.request.method=GET http.request.remoteaddr="10.231.1.2:3" http.request.uri="/v2/t/x/blobs/sha256:0000" http.response.status=404 http.response.written=157
time="2026-11-24T21:55:48.5Z" level=info msg="response completed" http.request.method=PUT http.request.uri="/v2/t/x/blobs/uploads/1" http.response.written=0
"#;
        let s = Served::parse(log);
        assert_eq!(s.blob_bytes, 301_157);
        assert_eq!(s.blob_gets, 3);
        assert_eq!(s.manifest_bytes, 520);
        assert_eq!(s.total(), 301_677);
        assert_eq!(s.blob_bytes_by_client["10.231.0.2"], 1000);
        assert_eq!(s.blob_bytes_by_client["10.231.1.2"], 300_157);
        assert_eq!(s.blob_bytes_by_agent["shoal"], 1000);
        assert_eq!(s.blob_bytes_by_agent["containerd"], 300_000);
        let none = Served::parse("");
        assert_eq!(s.since(&none), s);
        assert_eq!(s.since(&s).total(), 0);
    }
}
