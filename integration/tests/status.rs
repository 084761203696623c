//! Health you can see, end to end, on the real `shoald` binary (DESIGN "Health is visible"):
//!
//! - shoald started with its swarm configured with a cluster CA file that is not a
//!   certificate: it still serves containerd's snapshotter and a CRI pull through it streams
//!   the image's layer (from the registry through the blob cache); `shoald status` exits 1
//!   and says the swarm is degraded and why (the CA file); its JSON says the same;
//!   `/metrics` has `shoal_component_up{component="swarm"} 0`; the log says "degraded".
//! - a healthy shoald: `shoald status` exits 0 and says all components are up; once shoald
//!   is gone, `shoald status` exits 2 naming the address it tried.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_integration::containerd::scratch_dir;
use shoal_integration::cri::{shoald_binary, CriContainerd, Shoald};
use shoal_integration::image::{push_host_image, Attrs, Compression, Layer, LayerBuilder};
use shoal_integration::pki::Pki;
use shoal_integration::registry::TestRegistry;
use shoal_integration::tools::skip_unless;

const TOOLS: &[&str] = &["docker-registry", "skopeo", "containerd", "ctr", "mount"];

/// A port nothing listens on now (bound, then released).
fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `shoald status --address ADDR [args]`.
fn status(address: SocketAddr, args: &[&str]) -> Result<Output> {
    let bin = shoald_binary()?;
    Command::new(&bin)
        .arg("status")
        .arg("--address")
        .arg(address.to_string())
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The body of `GET path` on `address` (HTTP/1.0, read to the end).
fn http_get(address: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers in the answer")?;
    Ok(body.to_owned())
}

/// A one-layer image pushed to `registry`; its reference.
fn push_image(work: &Path, registry: &TestRegistry) -> Result<String> {
    let mut layer = LayerBuilder::new();
    layer
        .dir("etc", Attrs::new(0o755).mtime(1_600_000_000))?
        .file(
            "etc/health",
            Attrs::new(0o644).mtime(1_600_000_060),
            b"pulled without the swarm\n",
        )?;
    let layers = [Layer::new(&layer.finish()?, Compression::Gzip)];
    push_host_image(work, &registry.addr(), "shoal/status", &layers)
}

#[test]
fn a_swarm_with_a_bad_certificate_is_degraded_and_pulls_go_on() -> Result<()> {
    if skip_unless(TOOLS, true) {
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix("shoal-status-")
        .tempdir_in(scratch_dir())?;
    let pki = Pki::create(&work.path().join("pki"))?;
    let mut tls = pki.issue("node-1")?;
    // The "cluster CA" shoald is given is not a certificate.
    tls.ca = work.path().join("not-a-ca.pem");
    std::fs::write(&tls.ca, "this is not a certificate\n")?;
    let registry = TestRegistry::start_anonymous()?;
    let image = push_image(work.path(), &registry)?;
    let metrics = free_port()?;
    let config = format!(
        "[registry.hosts.\"{reg}\"]\nplain_http = true\n\
         [swarm]\nenabled = true\nnode_name = \"node-1\"\nlisten = \"{chunks}\"\n\
         trackers = [\"https://127.0.0.1:1\"]\n\
         [swarm.tls]\n{tls}\
         [metrics]\nlisten = \"{metrics}\"\n",
        reg = registry.addr(),
        chunks = free_port()?,
        tls = tls.toml(),
    );
    let node = CriContainerd::start_with_config(&[registry.addr()], &config)?;

    // Pulls go on without the swarm: the layer streams from the registry through the cache.
    let out = node.shoald_pull(&image, Duration::from_secs(120))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("pulled {image}")), "{stdout}");
    let log = node.shoald().log();
    assert!(log.contains("remote layer committed"), "{log}");

    let out = status(metrics, &[])?;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("DEGRADED"), "{shown}");
    let swarm_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("swarm "))
        .with_context(|| format!("no swarm line: {shown}"))?;
    assert!(swarm_line.contains("degraded"), "{shown}");
    assert!(stdout.contains("why: not started"), "{shown}");
    assert!(
        stdout.contains("not-a-ca.pem"),
        "the reason names the file: {shown}"
    );
    assert!(stdout.contains("next attempt in"), "{shown}");
    for up in ["snapshotter", "remote", "cache"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{up} ")))
            .with_context(|| format!("no {up} line: {shown}"))?;
        assert!(line.contains(" up "), "{up} should be up: {shown}");
    }
    assert!(stdout.contains("mirror       off"), "{shown}");

    let out = status(metrics, &["--json"])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let swarm = json["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "swarm"))
        .with_context(|| format!("no swarm in {json}"))?;
    assert_eq!(swarm["state"], "degraded", "{json}");
    assert!(
        swarm["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not-a-ca.pem"),
        "{json}"
    );

    let body = http_get(metrics, "/metrics")?;
    assert!(
        body.contains("shoal_component_up{component=\"swarm\"} 0"),
        "{body}"
    );
    assert!(
        body.contains("shoal_component_up{component=\"snapshotter\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("shoal_component_degraded_total{component=\"swarm\"} 1"),
        "{body}"
    );

    let log = node.shoald().log();
    assert!(log.contains("swarm degraded: not started"), "{log}");
    Ok(())
}

#[test]
fn a_healthy_shoald_is_up_and_a_stopped_one_unreachable() -> Result<()> {
    if skip_unless(&[], true) {
        return Ok(());
    }
    let metrics = free_port()?;
    let mut shoald = Shoald::start_with_config(&format!("[metrics]\nlisten = \"{metrics}\"\n"))?;
    let out = status(metrics, &[])?;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}\n{}", shoald.log());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("all components up"),
        "{shown}"
    );

    shoald.kill();
    let out = status(metrics, &[])?;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "shoald is not reachable at http://{metrics}/status"
        )),
        "{shown}"
    );
    Ok(())
}
