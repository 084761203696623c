//! `shoald doctor` against real containerds started by the harness (their own root, state,
//! sockets, `--config`), with a real `shoald snapshotter` registered as their `shoal` proxy
//! snapshotter:
//!
//! - containerd 1.6 (the system's) with the old version-2 example config: CRI streams
//!   through shoal, exit 0;
//! - containerd 2.1 with the same file: containerd's migration drops CRI's `snapshotter`
//!   and `disable_snapshot_annotations`, so CRI uses overlayfs: exit 1, saying why; then the
//!   fix as a user applies it (`containerd config migrate`, `shoald containerd-config`,
//!   restart): exit 0, on the transfer path, and a CRI pull then streams through shoal;
//! - containerd 2.1 with a schema-3 config for the transfer path written by hand: exit 0;
//! - a socket nobody serves, and a malformed config file: exit 2 with a clear message.
//!
//! These scenarios name their containerd (1.6, 2.1) whatever `SHOAL_CONTAINERD` says; under
//! CI a missing one fails the test, naming it.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result};
use shoal_integration::containerd::{
    find_flavor, scratch_dir, ContainerdConfig, Flavor, TestContainerd,
};
use shoal_integration::cri::{shoald_binary, Shoald};
use shoal_integration::image::{push_host_image, Attrs, Compression, Layer, LayerBuilder};
use shoal_integration::registry::TestRegistry;
use shoal_integration::tools::{run, skip_because, skip_unless};

/// `config.toml.example` as it was before containerd 2.x support (the containerd 1.6
/// example; the file is being regenerated per schema version).
const OLD_EXAMPLE: &str = r#"# containerd 1.6 configuration that registers shoal. Copy to /etc/containerd/config.toml (or
# merge these sections into yours) and restart containerd after shoald.service is running.
# Only the keys shoal needs are shown; everything else keeps containerd's defaults.

# Config schema version 2: the one containerd 1.5-1.7 read, with plugin sections named by
# their full plugin ID ("io.containerd.grpc.v1.cri").
version = 2

# shoald serves containerd's snapshots gRPC API on a unix socket; containerd talks to it as
# an out-of-process ("proxy") plugin. The table name is the snapshotter's name inside
# containerd: `ctr --snapshotter shoal`, and `snapshotter = "shoal"` below.
[proxy_plugins.shoal]
  # A snapshotter, as opposed to a content store proxy ("content").
  type = "snapshot"
  # Where shoald listens: `shoald snapshotter --address` (systemd/shoald.service).
  address = "/run/shoal/shoald.sock"

# The CRI plugin (what kubelet and `shoald pull` talk to).
[plugins."io.containerd.grpc.v1.cri".containerd]
  # Make images pulled through CRI unpack into shoal's snapshots instead of overlayfs.
  snapshotter = "shoal"
  # Keep passing the image and layer annotations (containerd.io/snapshot/cri.layer-digest,
  # cri.image-ref, cri.manifest-digest, cri.image-layers) to the snapshotter as labels on
  # Prepare: shoald needs them to fetch and unpack layers itself. false is containerd's
  # default in 1.6; it is written here so nobody turns it on by accident.
  disable_snapshot_annotations = false

# Where CRI reads per-registry host configuration (mirrors, plain HTTP, CAs):
# /etc/containerd/certs.d/<registry host>/hosts.toml. shoald's mirror path is an entry there
# (`shoald hosts` writes it, first, for every configured registry and _default), e.g. in
# /etc/containerd/certs.d/docker.io/hosts.toml:
#   server = "https://registry-1.docker.io"
#   [host."http://127.0.0.1:7075"]
#     capabilities = ["pull", "resolve"]
# With config_path set, the deprecated `registry.mirrors` tables must not be used.
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
"#;

/// Root, the outside tools, and containerd `name` (a `SHOAL_CONTAINERD` value); `None`
/// (with a SKIP line) when something is missing outside CI, a failure under CI.
fn containerd(name: &str) -> Option<Flavor> {
    if skip_unless(&["docker-registry", "skopeo", "mount"], true) {
        return None;
    }
    find_flavor(name)
        .map_err(|e| skip_because(&format!("{e:#}")))
        .ok()
}

/// shoald, and containerd `flavor` on `body(shoald_socket, hosts_dir)`.
fn start(
    flavor: &Flavor,
    shoald_config: &str,
    hosts: &Path,
    body: impl Fn(&Path, &Path) -> String,
) -> Result<(Shoald, TestContainerd)> {
    let shoald = Shoald::start_with_config(shoald_config)?;
    let containerd = TestContainerd::start_with(ContainerdConfig {
        flavor: Some(flavor.clone()),
        body: Some(body(shoald.socket(), hosts)),
        ..ContainerdConfig::default()
    })?;
    Ok((shoald, containerd))
}

/// The old example with shoald's socket and the test's hosts directory in place of the
/// node's.
fn old_example(shoald_socket: &Path, hosts: &Path) -> String {
    OLD_EXAMPLE
        .replace(
            "address = \"/run/shoal/shoald.sock\"",
            &format!("address = {shoald_socket:?}"),
        )
        .replace(
            "config_path = \"/etc/containerd/certs.d\"",
            &format!("config_path = {hosts:?}"),
        )
}

/// A schema-3 config for containerd 2.1+'s transfer path, written by hand.
fn transfer_config(shoald_socket: &Path, hosts: &Path) -> String {
    let platform = shoal_plugin::containerd::config::host_platform();
    format!(
        "version = 3\n\
         [proxy_plugins.shoal]\n  type = \"snapshot\"\n  address = {shoald_socket:?}\n\
         [proxy_plugins.shoal.exports]\n  enable_remote_snapshot_annotations = \"true\"\n\
         [plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"shoal\"\n\
         [plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = {hosts:?}\n\
         [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n\
         \x20 platform = \"{platform}\"\n  snapshotter = \"shoal\"\n\
         [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n\
         \x20 platform = \"{platform}\"\n  snapshotter = \"overlayfs\"\n"
    )
}

/// Runs `shoald doctor` (shoald's config: `shoald_config`) and returns its output.
fn doctor(shoald_config: Option<&Path>, address: &Path, config: &Path) -> Result<Output> {
    let mut cmd = Command::new(shoald_binary()?);
    if let Some(c) = shoald_config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd
        .arg("doctor")
        .arg("--containerd-address")
        .arg(address)
        .arg("--containerd-config")
        .arg(config)
        .env("NO_COLOR", "1")
        .output()?;
    eprintln!(
        "$ shoald doctor --containerd-address {} --containerd-config {}\n{}{}(exit {:?})",
        address.display(),
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    Ok(out)
}

/// Runs the doctor on `shoald` and `containerd`, checks its exit status and that its output
/// has every line of `expected` and nothing but check lines, and that it wrote nothing.
fn check(
    shoald: &Shoald,
    containerd: &TestContainerd,
    hosts: &Path,
    exit: i32,
    expected: &[&str],
) -> Result<String> {
    let out = doctor(
        Some(&shoald.config_path()),
        containerd.address(),
        &containerd.config_path(),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = format!(
        "{stdout}{}\ncontainerd's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        containerd.log()
    );
    assert_eq!(out.status.code(), Some(exit), "{report}");
    for line in expected {
        assert!(stdout.contains(line), "no {line:?} in:\n{report}");
    }
    for line in stdout.lines() {
        assert!(
            ["ok   ", "warn ", "FAIL ", "       "]
                .iter()
                .any(|p| line.starts_with(p)),
            "{line:?} in:\n{report}"
        );
    }
    assert!(hosts.read_dir()?.next().is_none(), "doctor wrote");
    Ok(stdout)
}

/// A temporary hosts directory (CRI's `config_path`).
fn hosts_dir() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("shoal-doctor-certs.d-")
        .tempdir_in(scratch_dir())?)
}

#[test]
fn containerd_1_6_with_the_old_example_uses_shoal() -> Result<()> {
    let Some(flavor) = containerd("1.6") else {
        return Ok(());
    };
    let hosts = hosts_dir()?;
    let (shoald, containerd) = start(&flavor, "", hosts.path(), old_example)?;
    check(
        &shoald,
        &containerd,
        hosts.path(),
        0,
        &[
            "ok   containerd 1.6.",
            "ok   shoal is registered as a proxy snapshotter and loaded",
            "ok   shoald's snapshotter socket answers",
            "ok   CRI's snapshotter is shoal (image filesystem ",
            "ok   the cri.* labels reach shoal (disable_snapshot_annotations = false)",
            "ok   CRI pulls use shoal: layers stream into its snapshotter",
        ],
    )?;
    Ok(())
}

/// The acceptance of the containerd-config/doctor pair on containerd 2.1: the old example
/// is not enough (exit 1, and why); after the fix the doctor names, it is (exit 0), and a
/// CRI pull really streams through shoal.
#[test]
fn containerd_2_1_with_the_old_example_then_containerd_config() -> Result<()> {
    let Some(flavor) = containerd("2.1") else {
        return Ok(());
    };
    let work = tempfile::Builder::new()
        .prefix("shoal-doctor-")
        .tempdir_in(scratch_dir())?;
    let registry = TestRegistry::start_anonymous()?;
    let image = push_image(work.path(), &registry)?;
    let hosts = hosts_dir()?;
    let shoald_config = format!(
        "[registry.hosts.{:?}]\nplain_http = true\n",
        registry.addr()
    );
    let (shoald, mut containerd) = start(&flavor, &shoald_config, hosts.path(), old_example)?;
    check(
        &shoald,
        &containerd,
        hosts.path(),
        1,
        &[
            "ok   containerd 2.1.",
            "is a version 2 file: containerd 2.1.",
            "drops snapshotter = \"shoal\", disable_snapshot_annotations = false",
            "config migrate",
            "FAIL CRI's snapshotter is overlayfs, not shoal",
            "shoald containerd-config --file",
            "ok   CRI pull path: transfer service",
            "FAIL CRI pulls do not use shoal",
        ],
    )?;

    // What the doctor says to do: migrate the file, run shoald containerd-config, restart.
    let file = containerd.config_path();
    let migrated = run(Command::new(flavor.containerd())
        .arg("--config")
        .arg(&file)
        .args(["config", "migrate"]))?;
    fs::write(&file, &migrated.stdout)?;
    let out = run(Command::new(shoald_binary()?)
        .arg("containerd-config")
        .arg("--file")
        .arg(&file)
        .arg("--address")
        .arg(shoald.socket())
        .arg("--containerd")
        .arg(flavor.containerd()))?;
    eprintln!(
        "$ shoald containerd-config\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    containerd.restart()?;
    check(
        &shoald,
        &containerd,
        hosts.path(),
        0,
        &[
            "config version 3 as containerd 2.1.",
            "ok   CRI's snapshotter is shoal (image filesystem ",
            "ok   CRI pull path: transfer service",
            "ok   the cri.* labels reach shoal on the transfer path",
            "ok   CRI pulls use shoal: layers stream into its snapshotter",
        ],
    )?;

    // And it is so: a CRI pull streams every layer through shoal.
    let dir = hosts.path().join(registry.addr());
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("hosts.toml"),
        format!("server = \"http://{0}\"\n[host.\"http://{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", registry.addr()),
    )?;
    run(Command::new(shoald_binary()?)
        .arg("pull")
        .arg(&image)
        .arg("--cri-address")
        .arg(containerd.address())
        .args(["--timeout", "120"]))
    .with_context(|| format!("{}\n{}", shoald.log(), containerd.log()))?;
    let log = shoald.log();
    assert_eq!(log.matches("remote layer committed").count(), 2, "{log}");
    Ok(())
}

/// A two-layer image in `registry`; returns its reference.
fn push_image(work: &Path, registry: &TestRegistry) -> Result<String> {
    let mut base = LayerBuilder::new();
    base.dir("etc", Attrs::new(0o755))?
        .file("etc/os-release", Attrs::new(0o644), b"ID=shoal\n")?;
    let mut top = LayerBuilder::new();
    top.dir("app", Attrs::new(0o755))?.file(
        "app/run",
        Attrs::new(0o755),
        b"#!/bin/sh\necho doctor\n",
    )?;
    let layers = [
        Layer::new(&base.finish()?, Compression::Gzip),
        Layer::new(&top.finish()?, Compression::Zstd),
    ];
    push_host_image(work, &registry.addr(), "shoal/doctor", &layers)
}

#[test]
fn containerd_2_1_transfer_path_by_hand_uses_shoal() -> Result<()> {
    let Some(flavor) = containerd("2.1") else {
        return Ok(());
    };
    let hosts = hosts_dir()?;
    let (shoald, containerd) = start(&flavor, "", hosts.path(), transfer_config)?;
    check(
        &shoald,
        &containerd,
        hosts.path(),
        0,
        &[
            "ok   containerd 2.1.",
            "config version 3 as containerd 2.1.",
            "ok   CRI's snapshotter is shoal (image filesystem ",
            "ok   CRI pull path: transfer service",
            "ok   the cri.* labels reach shoal on the transfer path",
            "ok   CRI pulls use shoal: layers stream into its snapshotter",
        ],
    )?;
    Ok(())
}

#[test]
fn unreachable_socket_and_malformed_config_cannot_tell() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("nobody.sock");
    let config = dir.path().join("config.toml");
    fs::write(&config, "version = 2\n")?;
    let out = doctor(None, &socket, &config)?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach containerd at") && stderr.contains("nobody.sock"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    // A malformed file: the doctor cannot tell either, and says where.
    fs::write(
        &config,
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"\n",
    )?;
    let out = doctor(None, &socket, &config)?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config.toml") && stderr.contains("line 2"),
        "{stderr}"
    );
    Ok(())
}
