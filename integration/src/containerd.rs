//! A private containerd 1.6 started by a test: its own root, state and socket in a temporary
//! directory, killed (and its mounts undone) on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::tools::{have, run};

/// The namespace the tests use.
pub const NAMESPACE: &str = "shoal-test";

/// How [`TestContainerd::start_with`] configures containerd.
#[derive(Debug, Clone, Default)]
pub struct ContainerdConfig {
    /// Load the CRI plugin (`io.containerd.grpc.v1.cri`); without it, it is disabled.
    pub cri: bool,
    /// Appended to the generated config (TOML, version 2).
    pub extra: String,
}

pub struct TestContainerd {
    dir: TempDir,
    child: Child,
    address: PathBuf,
}

impl TestContainerd {
    /// Whether containerd and ctr are installed.
    pub fn available() -> bool {
        have("containerd") && have("ctr")
    }

    /// Starts containerd with the CRI plugin disabled, and `extra` appended to its config
    /// (TOML, version 2).
    pub fn start(extra: &str) -> Result<Self> {
        Self::start_with(ContainerdConfig {
            cri: false,
            extra: extra.to_owned(),
        })
    }

    /// Starts containerd as `config` says.
    pub fn start_with(config: ContainerdConfig) -> Result<Self> {
        Self::start_in_netns(config, None)
    }

    /// [`Self::start_with`], inside network namespace `netns` when given (`ip netns exec`):
    /// its registry traffic then goes through that namespace's links. Its socket is a path,
    /// so `ctr` and CRI clients reach it from anywhere.
    pub fn start_in_netns(config: ContainerdConfig, netns: Option<&str>) -> Result<Self> {
        let ContainerdConfig { cri, extra } = config;
        let disabled = if cri {
            r#"["io.containerd.internal.v1.opt"]"#
        } else {
            r#"["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt"]"#
        };
        let dir = tempfile::Builder::new()
            .prefix("shoal-containerd-")
            .tempdir_in(scratch_dir())?;
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let address = dir.path().join("containerd.sock");
        let config = format!(
            "version = 2\n\
             root = {root:?}\n\
             state = {state:?}\n\
             disabled_plugins = {disabled}\n\
             [grpc]\n  address = {address:?}\n\
             [ttrpc]\n  address = {ttrpc:?}\n\
             [debug]\n  address = \"\"\n  level = {level:?}\n\
             {extra}\n",
            ttrpc = dir.path().join("containerd.sock.ttrpc"),
            // SHOAL_CONTAINERD_LOG=debug for containerd's debug log in failing tests.
            level = std::env::var("SHOAL_CONTAINERD_LOG").unwrap_or_else(|_| "info".into()),
        );
        let config_path = dir.path().join("config.toml");
        fs::write(&config_path, config)?;
        let log = fs::File::create(dir.path().join("containerd.log"))?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "containerd"]);
                c
            }
            None => Command::new("containerd"),
        };
        let child = cmd
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let mut me = Self {
            dir,
            child,
            address,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("containerd exited ({status}): {}", self.log());
            }
            if self.address.exists() && self.ctr(&["version"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("containerd not ready after 30s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// containerd's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// The containerd root directory (`root` in its config).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    /// Runs `ctr` against this containerd in [`NAMESPACE`], returning its stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        self.ctr_in(NAMESPACE, args)
    }

    /// Runs `ctr` against this containerd in `namespace`, returning its stdout.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Result<String> {
        let out = run(Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .args(["--namespace", namespace])
            .args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The snapshot directories (`.../snapshots/N/fs`) of the committed chain that ends in
    /// `top_chain_id` in [`NAMESPACE`], bottom layer first ([`Self::layer_dirs_in`]).
    pub fn layer_dirs(&self, snapshotter: &str, top_chain_id: &str) -> Result<Vec<PathBuf>> {
        self.layer_dirs_in(NAMESPACE, snapshotter, top_chain_id)
    }

    /// The snapshot directories of the committed chain that ends in `top_chain_id` in
    /// `namespace`, bottom layer first, read from the mounts of a view on it.
    pub fn layer_dirs_in(
        &self,
        namespace: &str,
        snapshotter: &str,
        top_chain_id: &str,
    ) -> Result<Vec<PathBuf>> {
        let key = format!("shoal-layer-dirs-{}", std::process::id());
        // `view --target` prints the mounts in the same call: containerd's garbage collector
        // may remove an unreferenced view at any moment after it is made.
        let mounts = self.ctr_in(
            namespace,
            &[
                "snapshots",
                "--snapshotter",
                snapshotter,
                "view",
                "--target",
                "/nonexistent",
                &key,
                top_chain_id,
            ],
        )?;
        let _ = self.ctr_in(
            namespace,
            &["snapshots", "--snapshotter", snapshotter, "rm", &key],
        );
        parse_view_mounts(&mounts)
    }
}

/// Parses `ctr snapshots mounts` output of a view: a bind mount of one directory, or an
/// overlay whose `lowerdir` lists the layers top first. Returns them bottom first.
pub fn parse_view_mounts(out: &str) -> Result<Vec<PathBuf>> {
    let line = out.trim();
    if let Some(opts) = line.split_whitespace().find_map(|w| {
        w.split(',')
            .find_map(|o| o.strip_prefix("lowerdir="))
            .map(str::to_owned)
    }) {
        let mut dirs: Vec<PathBuf> = opts.split(':').map(PathBuf::from).collect();
        dirs.reverse();
        return Ok(dirs);
    }
    // mount -t bind SOURCE TARGET -o ...
    let words: Vec<&str> = line.split_whitespace().collect();
    if let Some(pos) = words.iter().position(|w| *w == "bind") {
        if let Some(src) = words.get(pos + 1) {
            return Ok(vec![PathBuf::from(src)]);
        }
    }
    bail!("cannot read layer directories from {line:?}")
}

/// Where tests put large temporary trees: on a real disk filesystem (overlayfs upper dirs and
/// trusted.* xattrs do not work on tmpfs in every setup). `SHOAL_TEST_SCRATCH` overrides it.
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::var_os("SHOAL_TEST_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let _ = fs::create_dir_all(&dir);
    dir
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Undo any mount containerd left under its root, deepest first, so the temp dir can go.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overlay_view_mounts() {
        let out = "mount -t overlay overlay /x -o index=off,lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs:/r/snapshots/1/fs\n";
        assert_eq!(
            parse_view_mounts(out).unwrap(),
            [
                "/r/snapshots/1/fs",
                "/r/snapshots/2/fs",
                "/r/snapshots/3/fs"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn parses_bind_view_mounts() {
        let out = "mount -t bind /r/snapshots/1/fs /x -o ro,rbind\n";
        assert_eq!(
            parse_view_mounts(out).unwrap(),
            vec![PathBuf::from("/r/snapshots/1/fs")]
        );
    }
}
