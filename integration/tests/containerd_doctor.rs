//! `shoald doctor` against real containerds, each started by the test in a temporary
//! directory (its own root, state, sockets, `--config`), with a real `shoald snapshotter`
//! registered as its `shoal` proxy snapshotter:
//!
//! - containerd 1.6 (the system's) with the old version-2 example config: CRI streams
//!   through shoal, exit 0;
//! - containerd 2.1.9 (`/var/tmp/shoal-containerd/2.1.9/usr/bin/containerd`, or
//!   `SHOAL_CONTAINERD_2_1`) with the same file: containerd's migration drops CRI's
//!   `snapshotter` and `disable_snapshot_annotations`, so CRI uses overlayfs, exit 1;
//! - containerd 2.1.9 with a schema-3 config for the transfer path (shoal's
//!   `enable_remote_snapshot_annotations` export, shoal and overlayfs in `unpack_config`):
//!   exit 0;
//! - a socket nobody serves, and a malformed config file: exit 2 with a clear message.
//!
//! The harness's `TestContainerd` runs only the `containerd` on `PATH` with a config it
//! writes itself, so this test starts containerd on its own. Under `CI=true` a missing
//! containerd binary is a failure naming it; elsewhere the scenario is skipped, saying why.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_integration::containerd::scratch_dir;
use shoal_integration::cri::{shoald_binary, Shoald};
use shoal_integration::tools::{have, is_root};
use tempfile::TempDir;

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

/// Where the version-matrix containerd 2.1.9 is unpacked.
const CONTAINERD_2_1: &str = "/var/tmp/shoal-containerd/2.1.9/usr/bin/containerd";

/// Whether the tests run in CI, where nothing may be skipped.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `Some(())` when the scenario can run; otherwise fails under CI, or prints why it is
/// skipped and returns `None`.
fn require(missing: Option<String>) -> Option<()> {
    match missing {
        None => Some(()),
        Some(what) if in_ci() => panic!("containerd_doctor needs {what} (CI=true: no skipping)"),
        Some(what) => {
            eprintln!("SKIP: {what}");
            None
        }
    }
}

fn containerd_1_6() -> Option<PathBuf> {
    let missing = if !is_root() {
        Some("root (containerd mounts overlayfs)".to_owned())
    } else if !have("containerd") {
        Some("containerd 1.6 on PATH (Debian 12's containerd package)".to_owned())
    } else {
        None
    };
    require(missing).map(|()| PathBuf::from("containerd"))
}

fn containerd_2_1() -> Option<PathBuf> {
    let bin = std::env::var_os("SHOAL_CONTAINERD_2_1")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CONTAINERD_2_1));
    let missing = if !is_root() {
        Some("root (containerd mounts overlayfs)".to_owned())
    } else if !bin.is_file() {
        Some(format!(
            "containerd 2.1.9 at {} (unpacked from Debian's package; or set SHOAL_CONTAINERD_2_1)",
            bin.display()
        ))
    } else {
        None
    };
    require(missing).map(|()| bin)
}

/// A containerd of the test's own: a temp dir with its root, state, sockets and config.
struct PrivateContainerd {
    dir: TempDir,
    child: Child,
    address: PathBuf,
    config: PathBuf,
    hosts: PathBuf,
}

impl PrivateContainerd {
    /// Starts `bin` with `body(shoald_socket, hosts_dir)` plus the test's root, state and
    /// sockets, and waits until its socket answers.
    fn start(
        bin: &Path,
        shoald_socket: &Path,
        body: impl Fn(&Path, &Path) -> String,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-doctor-containerd-")
            .tempdir_in(scratch_dir())?;
        let hosts = dir.path().join("certs.d");
        fs::create_dir_all(&hosts)?;
        let address = dir.path().join("containerd.sock");
        // Top-level keys first (before any table of the body), private sockets last. The
        // opt plugin writes to /opt and NRI listens on a fixed socket: both off.
        let config = format!(
            "root = {root:?}\nstate = {state:?}\n\
             disabled_plugins = [\"io.containerd.internal.v1.opt\", \"io.containerd.nri.v1.nri\"]\n\
             {body}\n\
             [grpc]\n  address = {address:?}\n\
             [ttrpc]\n  address = {ttrpc:?}\n\
             [debug]\n  address = \"\"\n",
            root = dir.path().join("root"),
            state = dir.path().join("state"),
            body = body(shoald_socket, &hosts),
            ttrpc = dir.path().join("containerd.sock.ttrpc"),
        );
        let config_path = dir.path().join("config.toml");
        fs::write(&config_path, config)?;
        let log = fs::File::create(dir.path().join("containerd.log"))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut me = Self {
            dir,
            child,
            address,
            config: config_path,
            hosts,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while UnixStream::connect(&me.address).is_err() {
            if let Some(status) = me.child.try_wait()? {
                bail!("{} exited ({status}): {}", bin.display(), me.log());
            }
            if Instant::now() > deadline {
                bail!("{} not ready after 60 s: {}", bin.display(), me.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(me)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Undo any mount containerd left under its directory, deepest first.
        if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
            let root = self.dir.path().to_string_lossy().into_owned();
            let mut targets: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|t| t.starts_with(&root))
                .collect();
            targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
            for t in targets {
                let _ = Command::new("umount").arg("-l").arg(t).status();
            }
        }
    }
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
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!(
        "version = 3\n\
         [proxy_plugins.shoal]\n  type = \"snapshot\"\n  address = {shoald_socket:?}\n\
         [proxy_plugins.shoal.exports]\n  enable_remote_snapshot_annotations = \"true\"\n\
         [plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"shoal\"\n\
         [plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = {hosts:?}\n\
         [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n\
         \x20 platform = \"linux/{arch}\"\n  snapshotter = \"shoal\"\n\
         [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n\
         \x20 platform = \"linux/{arch}\"\n  snapshotter = \"overlayfs\"\n"
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

/// Starts shoald and containerd `bin` on `body`, runs the doctor, checks its exit status and
/// that its output has every line of `expected`.
fn scenario(
    bin: &Path,
    body: impl Fn(&Path, &Path) -> String,
    exit: i32,
    expected: &[&str],
) -> Result<String> {
    let shoald = Shoald::start()?;
    let containerd = PrivateContainerd::start(bin, shoald.socket(), body)?;
    let out = doctor(
        Some(&shoald.config_path()),
        &containerd.address,
        &containerd.config,
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
    assert!(
        containerd.hosts.read_dir()?.next().is_none(),
        "doctor wrote"
    );
    Ok(stdout)
}

#[test]
fn containerd_1_6_with_the_old_example_uses_shoal() -> Result<()> {
    let Some(bin) = containerd_1_6() else {
        return Ok(());
    };
    scenario(
        &bin,
        old_example,
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

#[test]
fn containerd_2_1_with_the_old_example_does_not_use_shoal() -> Result<()> {
    let Some(bin) = containerd_2_1() else {
        return Ok(());
    };
    scenario(
        &bin,
        old_example,
        1,
        &[
            "ok   containerd 2.1.9",
            "is a version 2 file: containerd 2.1.9 migrates it",
            "drops snapshotter = \"shoal\", disable_snapshot_annotations = false",
            "FAIL CRI's snapshotter is overlayfs, not shoal",
            "shoald containerd-config",
            "ok   CRI pull path: transfer service",
            "FAIL CRI pulls do not use shoal",
        ],
    )?;
    Ok(())
}

#[test]
fn containerd_2_1_transfer_path_by_hand_uses_shoal() -> Result<()> {
    let Some(bin) = containerd_2_1() else {
        return Ok(());
    };
    scenario(
        &bin,
        transfer_config,
        0,
        &[
            "ok   containerd 2.1.9",
            "config version 3 as containerd 2.1.9 expects",
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
    if shoald_binary().is_err() && !in_ci() {
        eprintln!("SKIP: {}", shoald_binary().unwrap_err());
        return Ok(());
    }
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
