//! containerd with its CRI plugin on, and shoald registered as its `shoal` proxy snapshotter:
//! the kubelet path (`ImageService/PullImage`) end to end, driven by `shoald pull`.
//!
//! The tests run the real `shoald` binary. Cargo sets `CARGO_BIN_EXE_shoald` only for
//! shoal-plugin's own tests, so [`shoald_binary`] finds it in the target directory next to
//! the running test (`target/debug/deps/TEST` -> `target/debug/shoald`). `cargo test
//! --workspace` builds it (shoal-plugin's tests need it); with `cargo test -p
//! shoal-integration` alone, run `cargo build -p shoal-plugin --bin shoald` first, or point
//! `SHOALD_BIN` at a binary.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::containerd::{scratch_dir, ContainerdConfig, CriConfig, TestContainerd};
use crate::tools::run;

/// The containerd namespace CRI keeps its images and snapshots in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The name shoald is registered under (`[proxy_plugins.shoal]`).
pub const SNAPSHOTTER: &str = "shoal";

/// The `shoald` binary the tests run: `$SHOALD_BIN`, or `shoald` in the target directory of
/// the running test executable.
pub fn shoald_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SHOALD_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("SHOALD_BIN={} does not exist", bin.display());
        }
        return Ok(bin);
    }
    let exe = std::env::current_exe()?;
    // target/debug/deps/cri_pull-HASH -> target/debug/shoald
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target directory")?;
    let bin = dir.join("shoald");
    if !bin.is_file() {
        bail!(
            "the shoald binary is not at {}: build it first with \
             `cargo build -p shoal-plugin --bin shoald` (`cargo test --workspace` builds it), \
             or set SHOALD_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// CRI settings a test may change ([`CriContainerd::start_in_netns_with`]).
#[derive(Debug, Clone, Default)]
pub struct CriSettings {
    /// This containerd instead of the process's ([`crate::containerd::flavor`]).
    pub flavor: Option<crate::containerd::Flavor>,
    /// CRI's `discard_unpacked_layers` (on containerd 2.1 it moves CRI to the local path).
    pub discard_unpacked_layers: bool,
    /// `concurrent_layer_fetch_buffer` (containerd 2.1+: blobs as parallel Range requests).
    pub fetch_buffer: Option<u64>,
    /// CRI's `max_concurrent_downloads` (containerd's default, 3, when `None`).
    pub max_concurrent_downloads: Option<u32>,
}

/// `shoald snapshotter` on a temporary root and socket, killed on drop.
pub struct Shoald {
    dir: TempDir,
    child: Child,
    socket: PathBuf,
    netns: Option<String>,
}

impl Shoald {
    /// Starts `shoald snapshotter` and waits until it reports ready over the sd_notify
    /// protocol (a `$NOTIFY_SOCKET` datagram socket in its temp dir, as systemd would).
    pub fn start() -> Result<Self> {
        Self::start_with_config("")
    }

    /// [`Self::start`] with `config` (shoald's TOML) as its `--config` file.
    pub fn start_with_config(config: &str) -> Result<Self> {
        Self::start_in_netns(config, None)
    }

    /// [`Self::start_with_config`], inside network namespace `netns` when given (`ip netns
    /// exec`): its swarm and registry traffic then goes through that namespace's links.
    pub fn start_in_netns(config: &str, netns: Option<&str>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-shoald-")
            .tempdir_in(scratch_dir())?;
        // Each shoald gets its own blob cache unless the test chose one.
        let config = if config.contains("[cache]") {
            config.to_owned()
        } else {
            format!(
                "{config}\n[cache]\ndir = {:?}\n",
                dir.path().join("blobs").display().to_string()
            )
        };
        // No metrics endpoint unless the test asks for one: its default port (127.0.0.1:9464)
        // is one per network namespace, and tests run several shoalds side by side.
        let config = if config.contains("[metrics]") {
            config
        } else {
            format!("{config}\n[metrics]\nlisten = \"\"\n")
        };
        fs::write(dir.path().join("shoald.toml"), config)?;
        let (child, notify) = Self::spawn(dir.path(), netns)?;
        let socket = dir.path().join("run/shoald.sock");
        let mut me = Self {
            dir,
            child,
            socket,
            netns: netns.map(str::to_owned),
        };
        me.wait_ready(&notify)?;
        Ok(me)
    }

    /// Kills shoald with SIGKILL (as a crash would) and starts it again on the same root,
    /// socket and config.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.start_again()
    }

    /// Kills shoald with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts shoald again on the same root, socket, config and namespace (after [`Self::kill`]).
    pub fn start_again(&mut self) -> Result<()> {
        let (child, notify) = Self::spawn(self.dir.path(), self.netns.as_deref())?;
        self.child = child;
        self.wait_ready(&notify)
    }

    /// Whether the shoald process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process ID of the current shoald.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn spawn(dir: &Path, netns: Option<&str>) -> Result<(Child, UnixDatagram)> {
        let bin = shoald_binary()?;
        let socket = dir.join("run/shoald.sock");
        let notify_path = dir.join("notify.sock");
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("shoald.log"))?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = cmd
            .arg("--config")
            .arg(dir.join("shoald.toml"))
            .arg("snapshotter")
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--address")
            .arg(&socket)
            .env("NOTIFY_SOCKET", &notify_path)
            // A log file, not a terminal: no colour codes in it.
            .env("NO_COLOR", "1")
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok((child, notify))
    }

    fn wait_ready(&mut self, notify: &UnixDatagram) -> Result<()> {
        notify.set_read_timeout(Some(Duration::from_millis(200)))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 1024];
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("shoald exited ({status}): {}", self.log());
            }
            match notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]);
                    if msg.lines().any(|l| l == "READY=1") {
                        if !self.socket.exists() {
                            bail!("shoald sent READY=1 before binding {:?}", self.socket);
                        }
                        return Ok(());
                    }
                }
                // Interrupted: a signal (a child's exit, say) arrived during the wait.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            if Instant::now() > deadline {
                bail!("shoald sent no READY=1 within 30s: {}", self.log());
            }
        }
    }

    /// The snapshots gRPC socket containerd connects to.
    /// The shoald process's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmHWM in /proc/PID/status")?
            .parse()?;
        Ok(kib * 1024)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The blob cache directory shoald gets when the test's config names none.
    pub fn default_cache_dir(&self) -> PathBuf {
        self.dir.path().join("blobs")
    }

    /// The snapshotter's state directory (`--root`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// shoald's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("shoald.log")
    }

    /// shoald's configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("shoald.toml")
    }

    /// shoald's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("shoald.log")).unwrap_or_default()
    }
}

impl Drop for Shoald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private containerd with the CRI plugin on, pulling through a private shoald.
pub struct CriContainerd {
    // Dropped in this order: containerd (and its mounts) before the snapshotter.
    containerd: TestContainerd,
    shoald: Shoald,
    hosts: TempDir,
}

impl CriContainerd {
    /// Starts shoald, then containerd with CRI's snapshotter set to it
    /// (`disable_snapshot_annotations = false`), and CRI's registry hosts in a
    /// `config_path` directory where every registry in `plain_http` ("127.0.0.1:PORT") is
    /// reached over plain HTTP.
    pub fn start(plain_http: &[String]) -> Result<Self> {
        Self::start_with_config(plain_http, "")
    }

    /// [`Self::start`] with shoald running on the configuration `shoald_config` (TOML).
    pub fn start_with_config(plain_http: &[String], shoald_config: &str) -> Result<Self> {
        Self::start_inner(plain_http, shoald_config, SNAPSHOTTER)
    }

    /// The baseline: the same containerd, CRI pulling with containerd's own overlayfs
    /// snapshotter (shoald runs, registered, but CRI does not use it).
    pub fn start_native(plain_http: &[String]) -> Result<Self> {
        Self::start_inner(plain_http, "", "overlayfs")
    }

    fn start_inner(plain_http: &[String], shoald_config: &str, snapshotter: &str) -> Result<Self> {
        Self::start_in_netns(None, plain_http, shoald_config, snapshotter)
    }

    /// Starts shoald and containerd inside network namespace `netns` when given (both with
    /// `ip netns exec`), CRI pulling with `snapshotter` ([`SNAPSHOTTER`] for shoal,
    /// `"overlayfs"` for containerd's own); otherwise as [`Self::start_with_config`].
    pub fn start_in_netns(
        netns: Option<&str>,
        plain_http: &[String],
        shoald_config: &str,
        snapshotter: &str,
    ) -> Result<Self> {
        Self::start_in_netns_with(
            netns,
            plain_http,
            shoald_config,
            snapshotter,
            CriSettings::default(),
        )
    }

    /// [`Self::start_in_netns`] with CRI settings of the test's own.
    pub fn start_in_netns_with(
        netns: Option<&str>,
        plain_http: &[String],
        shoald_config: &str,
        snapshotter: &str,
        settings: CriSettings,
    ) -> Result<Self> {
        let shoald = Shoald::start_in_netns(shoald_config, netns)?;
        let hosts = tempfile::Builder::new()
            .prefix("shoal-certs.d-")
            .tempdir_in(scratch_dir())?;
        for registry in plain_http {
            let dir = hosts.path().join(registry);
            fs::create_dir_all(&dir)?;
            fs::write(
                dir.join("hosts.toml"),
                format!(
                    "server = \"http://{registry}\"\n\
                     [host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                ),
            )?;
        }
        let cri = CriConfig {
            shoald_socket: shoald.socket().to_path_buf(),
            snapshotter: snapshotter.to_owned(),
            discard_unpacked_layers: settings.discard_unpacked_layers,
            hosts_dir: hosts.path().to_path_buf(),
            cni_dir: hosts.path().join("cni"),
            fetch_buffer: settings.fetch_buffer,
            max_concurrent_downloads: settings.max_concurrent_downloads,
        };
        let containerd = TestContainerd::start_in_netns(
            ContainerdConfig {
                cri: Some(cri),
                flavor: settings.flavor,
                body: None,
            },
            netns,
        )?;
        let me = Self {
            containerd,
            shoald,
            hosts,
        };
        me.check_cri_loaded()?;
        Ok(me)
    }

    /// Fails unless containerd reports the CRI plugin loaded (`ctr plugins ls`: `ok`).
    pub fn check_cri_loaded(&self) -> Result<()> {
        let plugins = self.ctr(&["plugins", "ls"])?;
        let cri = plugins.lines().find(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() >= 4 && w[0] == "io.containerd.grpc.v1" && w[1] == "cri"
        });
        match cri {
            Some(line) if line.split_whitespace().last() == Some("ok") => Ok(()),
            other => bail!(
                "containerd's CRI plugin is not running ({other:?}):\n{}",
                self.containerd.log()
            ),
        }
    }

    /// CRI's registry hosts directory (`config_path`; `ctr --hosts-dir`).
    pub fn hosts_dir(&self) -> &Path {
        self.hosts.path()
    }

    pub fn containerd(&self) -> &TestContainerd {
        &self.containerd
    }

    pub fn shoald(&self) -> &Shoald {
        &self.shoald
    }

    /// The snapshotter process, to kill and start again.
    pub fn shoald_mut(&mut self) -> &mut Shoald {
        &mut self.shoald
    }

    /// Kills shoald (SIGKILL) and starts it again on the same state ([`Shoald::restart`]).
    pub fn restart_shoald(&mut self) -> Result<()> {
        self.shoald.restart()
    }

    /// Runs `ctr` against this containerd in [`CRI_NAMESPACE`], returning its stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        self.containerd.ctr_in(CRI_NAMESPACE, args)
    }

    /// Digests of the blobs in containerd's content store ([`CRI_NAMESPACE`]).
    pub fn content_digests(&self) -> Result<Vec<String>> {
        let table = self.ctr(&["content", "ls"])?;
        Ok(table
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|d| d.starts_with("sha256:"))
            .map(str::to_owned)
            .collect())
    }

    /// Runs `shoald pull IMAGE` against this containerd's CRI (the real binary), returning
    /// its output; fails with its output and both daemons' logs when it fails.
    pub fn shoald_pull(&self, image: &str, timeout: Duration) -> Result<Output> {
        let out = Command::new(shoald_binary()?)
            .arg("pull")
            .arg(image)
            .arg("--cri-address")
            .arg(self.containerd.address())
            .arg("--timeout")
            .arg(timeout.as_secs().max(1).to_string())
            .output()
            .context("running shoald pull")?;
        if !out.status.success() {
            bail!(
                "shoald pull {image} failed ({}):\n{}{}\n--- containerd log:\n{}\n--- shoald log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.containerd.log(),
                self.shoald.log()
            );
        }
        Ok(out)
    }

    /// `(name, parent, kind)` of every snapshot in the shoal snapshotter ([`CRI_NAMESPACE`]).
    pub fn snapshots(&self) -> Result<Vec<(String, String, String)>> {
        let out = self.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w.as_slice() {
                    [key, kind] => Some((key.to_string(), String::new(), kind.to_string())),
                    [key, parent, kind] => {
                        Some((key.to_string(), parent.to_string(), kind.to_string()))
                    }
                    _ => None,
                }
            })
            .collect())
    }

    /// Creates a view on `chain_id` and returns the mount command `ctr` prints for it at
    /// `target`, in the same call: containerd's garbage collector (run after every pull)
    /// removes unreferenced snapshots such as this view at any moment, so it is labelled a
    /// GC root at once; its mounts name only the committed (image-referenced) snapshots.
    fn view(&self, key: &str, chain_id: &str, target: &str) -> Result<String> {
        let cmd = self.ctr(&[
            "snapshots",
            "--snapshotter",
            SNAPSHOTTER,
            "view",
            "--target",
            target,
            key,
            chain_id,
        ])?;
        let _ = self.ctr(&[
            "snapshots",
            "--snapshotter",
            SNAPSHOTTER,
            "label",
            key,
            "containerd.io/gc.root=shoal-test",
        ]);
        Ok(cmd)
    }

    fn remove(&self, key: &str) {
        let _ = self.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "rm", key]);
    }

    /// Makes a view on the committed snapshot `chain_id` and mounts it at `target` exactly as
    /// `ctr snapshots view --target` prints; unmounted and removed when the guard drops.
    pub fn mount_view(&self, chain_id: &str, target: &Path) -> Result<MountedView<'_>> {
        let key = format!("shoal-cri-view-{}", std::process::id());
        fs::create_dir_all(target)?;
        let target_str = target.to_str().context("mount target is not UTF-8")?;
        let cmd = self.view(&key, chain_id, target_str);
        let mut view = MountedView {
            node: self,
            key,
            target: target.to_owned(),
            mounted: false,
        };
        let cmd = cmd?;
        let words: Vec<&str> = cmd.split_whitespace().collect();
        if words.first() != Some(&"mount") {
            bail!("unexpected `ctr snapshots view --target` output {cmd:?}");
        }
        run(Command::new("mount").args(&words[1..]))?;
        view.mounted = true;
        Ok(view)
    }

    /// The snapshot directories of the committed chain ending in `chain_id`, bottom first.
    pub fn layer_dirs(&self, chain_id: &str) -> Result<Vec<PathBuf>> {
        self.containerd
            .layer_dirs_in(CRI_NAMESPACE, SNAPSHOTTER, chain_id)
    }
}

/// A mounted view made by [`CriContainerd::mount_view`].
pub struct MountedView<'a> {
    node: &'a CriContainerd,
    key: String,
    target: PathBuf,
    mounted: bool,
}

impl MountedView<'_> {
    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for MountedView<'_> {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.target).status();
        }
        self.node.remove(&self.key);
    }
}
