//! A corrupt peer in its own namespace: `shoal-badpeer` (this crate's binary) announces that
//! it holds every chunk of the blobs it is given and serves wrong bytes for each, over mutual
//! TLS with a real cluster certificate.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::node::PEER_PORT;
use super::registry_side::workspace_binary;
use crate::netns::{Link, Netns};
use crate::pki::TlsPaths;
use shoal_p2p::Digest;

/// `shoal-badpeer`: `$SHOAL_BADPEER_BIN` or next to the running executable.
pub fn badpeer_binary() -> Result<PathBuf> {
    workspace_binary("shoal-badpeer", "SHOAL_BADPEER_BIN")
}

/// The running bad peer; killed and its namespace removed on drop.
pub struct BadPeer {
    child: Child,
    log: PathBuf,
    link: Link,
    _ns: Netns,
}

impl BadPeer {
    /// Starts it in a new namespace (link capped at `mbit` both ways, routed through the
    /// host), announcing `blobs` (digest, size) cut in `chunk_size` chunks to `tracker`, and
    /// waits until the tracker accepted its first announce. `tls` makes its certificate for
    /// its address.
    pub fn start(
        tracker: &str,
        blobs: &[(Digest, u64)],
        chunk_size: u64,
        mbit: u64,
        dir: &Path,
        tls: impl FnOnce(&str) -> Result<TlsPaths>,
    ) -> Result<Self> {
        let bin = badpeer_binary()?;
        let ns = Netns::create("shoal-bad")?;
        let link = Link::to_host(&ns)?;
        link.route_via_host()?;
        link.cap_ns_egress(mbit)?;
        link.cap_host_egress(mbit)?;
        let certs = tls(&link.ns_ip)?;
        fs::create_dir_all(dir)?;
        let log = dir.join(format!("badpeer-{}.log", link.ns_ip));
        let out = fs::File::create(&log)?;
        let mut cmd = ns.command(bin.to_str().context("binary path is not UTF-8")?);
        cmd.args(["--listen", &format!("0.0.0.0:{PEER_PORT}")])
            .args(["--advertise", &format!("{}:{PEER_PORT}", link.ns_ip)])
            .args(["--tracker", tracker])
            .arg("--ca")
            .arg(&certs.ca)
            .arg("--cert")
            .arg(&certs.cert)
            .arg("--key")
            .arg(&certs.key)
            .args(["--chunk-size", &chunk_size.to_string()])
            .args(["--peer-id", &format!("badpeer-{}", link.ns_ip)]);
        for (digest, size) in blobs {
            cmd.args(["--blob", &format!("{digest}:{size}")]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut me = Self {
            child,
            log,
            link,
            _ns: ns,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !me.log_text().contains("announced to") {
            if let Some(status) = me.child.try_wait()? {
                bail!("shoal-badpeer exited ({status}):\n{}", me.log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "shoal-badpeer could not announce within 20 s:\n{}",
                    me.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(me)
    }

    /// Its address.
    pub fn ip(&self) -> &str {
        &self.link.ns_ip
    }

    /// How many chunk requests it answered with garbage.
    pub fn served(&self) -> usize {
        self.log_text().matches("served garbage").count()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for BadPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
