//! A private containerd started by a test: its own root, state and socket in a temporary
//! directory, killed (and its mounts undone) on drop. Which containerd (1.6, 1.7, 2.1 on
//! either CRI pull path) is [`flavor`]'s choice, from `SHOAL_CONTAINERD`.

mod flavor;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_plugin::containerd::config::{apply, Options};
use shoal_plugin::containerd::{Schema, TRANSFER_PLUGIN};
use tempfile::TempDir;
use toml_edit::{value, DocumentMut, Item, Table};

pub use crate::tools::strict;
pub use flavor::{find as find_flavor, flavor, Flavor, FLAVOR_VAR};

use crate::tools::run;

/// The namespace the tests use.
pub const NAMESPACE: &str = "shoal-test";

/// How [`TestContainerd::start_with`] configures containerd.
#[derive(Debug, Clone, Default)]
pub struct ContainerdConfig {
    /// Load the CRI plugin, configured as this says; without it, CRI is disabled.
    pub cri: Option<CriConfig>,
    /// This containerd instead of the process's [`flavor`].
    pub flavor: Option<Flavor>,
    /// A whole configuration of the test's own (e.g. a user's config.toml) instead of the
    /// generated one: the harness only puts its private root, state and sockets into it.
    /// `{shoald_socket}`-style placeholders are the test's business.
    pub body: Option<String>,
}

/// containerd's CRI plugin for a test: shoald registered as `shoal` the way
/// `shoald containerd-config` writes it for this containerd, and the test's own settings.
#[derive(Debug, Clone)]
pub struct CriConfig {
    /// shoald's snapshotter socket (`[proxy_plugins.shoal] address`).
    pub shoald_socket: PathBuf,
    /// The snapshotter CRI pulls with: `shoal`, or `overlayfs` for containerd's own.
    pub snapshotter: String,
    /// CRI's `discard_unpacked_layers` (on 2.1 it moves CRI to the local pull path).
    pub discard_unpacked_layers: bool,
    /// CRI's registry `config_path` (hosts.toml files).
    pub hosts_dir: PathBuf,
    /// CNI's (unused) binary and configuration directories live under here.
    pub cni_dir: PathBuf,
    /// `concurrent_layer_fetch_buffer` (2.1+: blobs fetched as parallel Range requests), set
    /// for CRI's local path and the transfer service alike.
    pub fetch_buffer: Option<u64>,
    /// CRI's `max_concurrent_downloads` (layers containerd fetches at once; its default is
    /// 3, and on 2.1+ any other value moves CRI to the local pull path).
    pub max_concurrent_downloads: Option<u32>,
}

pub struct TestContainerd {
    dir: TempDir,
    child: Child,
    address: PathBuf,
    flavor: Flavor,
    netns: Option<String>,
}

impl TestContainerd {
    /// Whether the containerd under test ([`flavor`]) is installed.
    pub fn available() -> bool {
        flavor().is_ok()
    }

    /// Starts containerd with the CRI plugin disabled.
    pub fn start() -> Result<Self> {
        Self::start_with(ContainerdConfig::default())
    }

    /// Starts containerd as `config` says.
    pub fn start_with(config: ContainerdConfig) -> Result<Self> {
        Self::start_in_netns(config, None)
    }

    /// [`Self::start_with`], inside network namespace `netns` when given (`ip netns exec`):
    /// its registry traffic then goes through that namespace's links. Its socket is a path,
    /// so `ctr` and CRI clients reach it from anywhere.
    pub fn start_in_netns(config: ContainerdConfig, netns: Option<&str>) -> Result<Self> {
        let flavor = match config.flavor {
            Some(f) => f,
            None => flavor()?.clone(),
        };
        let dir = tempfile::Builder::new()
            .prefix("shoal-containerd-")
            .tempdir_in(scratch_dir())?;
        let address = dir.path().join("containerd.sock");
        let config = match &config.body {
            Some(body) => private_paths(body, dir.path(), false)?,
            None => config_text(&flavor, dir.path(), config.cri.as_ref())?,
        };
        fs::write(dir.path().join("config.toml"), config)?;
        let child = spawn(&flavor, dir.path(), netns)?;
        let mut me = Self {
            dir,
            child,
            address,
            flavor,
            netns: netns.map(str::to_owned),
        };
        me.wait_ready()?;
        Ok(me)
    }

    /// Stops containerd (SIGKILL), undoes its mounts and starts it again on its config file
    /// as it is now (a test may have changed it, as a user would before a restart).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.child = spawn(&self.flavor, self.dir.path(), self.netns.as_deref())?;
        self.wait_ready()
    }

    fn stop(&mut self) {
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

    /// The containerd this is ([`flavor`], or the one its config named).
    pub fn flavor(&self) -> &Flavor {
        &self.flavor
    }

    /// containerd's config file (written by [`config_text`]).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Runs `ctr` against this containerd in [`NAMESPACE`], returning its stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        self.ctr_in(NAMESPACE, args)
    }

    /// Runs `ctr` against this containerd in `namespace`, returning its stdout.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Result<String> {
        let out = run(Command::new(self.flavor.ctr())
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

/// Starts `flavor`'s containerd on `dir/config.toml`, logging to `dir/containerd.log`
/// (appended: a restart keeps the earlier log), inside `netns` when given.
fn spawn(flavor: &Flavor, dir: &Path, netns: Option<&str>) -> Result<Child> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))?;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(flavor.containerd());
            c
        }
        None => Command::new(flavor.containerd()),
    };
    cmd.arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", flavor.describe()))
}

/// `config` (containerd's TOML) with the test's private root, state and sockets under `dir`,
/// and the plugins a test never needs disabled (CRI too, with `no_cri`).
fn private_paths(config: &str, dir: &Path, no_cri: bool) -> Result<String> {
    let mut doc: DocumentMut = config.parse().context("containerd's config for a test")?;
    // NRI would make every containerd of a test share /var/run/nri/nri.sock; opt is unused.
    let mut disabled = vec!["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri"];
    if no_cri {
        disabled.extend([
            "io.containerd.grpc.v1.cri",
            "io.containerd.cri.v1.images",
            "io.containerd.cri.v1.runtime",
        ]);
    }
    let path = |p: PathBuf| value(p.to_string_lossy().into_owned());
    doc["root"] = path(dir.join("root"));
    doc["state"] = path(dir.join("state"));
    doc["disabled_plugins"] = value(toml_edit::Array::from_iter(disabled));
    table_at(&mut doc, &["grpc"])["address"] = path(dir.join("containerd.sock"));
    table_at(&mut doc, &["ttrpc"])["address"] = path(dir.join("containerd.sock.ttrpc"));
    let debug = table_at(&mut doc, &["debug"]);
    debug["address"] = value("");
    // SHOAL_CONTAINERD_LOG=debug for containerd's debug log in failing tests.
    debug["level"] = value(std::env::var("SHOAL_CONTAINERD_LOG").unwrap_or_else(|_| "info".into()));
    Ok(doc.to_string())
}

/// containerd's configuration for a test: its private root, state and sockets (in `dir`),
/// the plugins it does not need disabled, and with CRI, shoal registered exactly as
/// `shoald containerd-config` writes it for this containerd, then the test's own settings.
fn config_text(flavor: &Flavor, dir: &Path, cri: Option<&CriConfig>) -> Result<String> {
    let schema = flavor.version.schema();
    let base = private_paths(
        &format!("version = {}\n", schema.number()),
        dir,
        cri.is_none(),
    )?;
    let Some(cri) = cri else {
        return Ok(base);
    };
    let applied = apply(
        &base,
        &Options {
            version: flavor.version,
            shoald_socket: cri.shoald_socket.clone(),
            pull_path: flavor.pull_path,
            platform: shoal_plugin::containerd::config::host_platform(),
        },
    )
    .with_context(|| format!("shoald containerd-config for {}", flavor.describe()))?;
    let mut doc: DocumentMut = applied.text.parse().context("containerd-config's output")?;
    let images = table_at(&mut doc, schema.cri_images_table());
    images["snapshotter"] = value(cri.snapshotter.as_str());
    if cri.discard_unpacked_layers {
        images["discard_unpacked_layers"] = value(true);
    }
    if let Some(buffer) = cri.fetch_buffer {
        images["concurrent_layer_fetch_buffer"] = value(buffer as i64);
        if schema == Schema::V3 {
            table_at(&mut doc, &["plugins", TRANSFER_PLUGIN])["concurrent_layer_fetch_buffer"] =
                value(buffer as i64);
        }
    }
    if let Some(n) = cri.max_concurrent_downloads {
        // Schema 2 keeps it in CRI's own table, schema 3 with the image settings.
        let table: &[&str] = match schema {
            Schema::V2 => &["plugins", "io.containerd.grpc.v1.cri"],
            Schema::V3 => schema.cri_images_table(),
        };
        table_at(&mut doc, table)["max_concurrent_downloads"] = value(i64::from(n));
    }
    let hosts = cri.hosts_dir.to_string_lossy().into_owned();
    table_at(&mut doc, schema.cri_registry_table())["config_path"] = value(hosts);
    let (bin, conf) = (cri.cni_dir.join("bin"), cri.cni_dir.join("net.d"));
    let (bin, conf) = (bin.to_string_lossy(), conf.to_string_lossy());
    match schema {
        Schema::V2 => {
            let cni = table_at(&mut doc, &["plugins", "io.containerd.grpc.v1.cri", "cni"]);
            cni["bin_dir"] = value(bin.as_ref());
            cni["conf_dir"] = value(conf.as_ref());
        }
        Schema::V3 => {
            let cni = table_at(
                &mut doc,
                &["plugins", "io.containerd.cri.v1.runtime", "cni"],
            );
            cni["bin_dirs"] = value(toml_edit::Array::from_iter([bin.as_ref()]));
            cni["conf_dir"] = value(conf.as_ref());
        }
    }
    Ok(doc.to_string())
}

/// The table at `path` under the document's root, made (implicit parents) when missing.
fn table_at<'a>(doc: &'a mut DocumentMut, path: &[&str]) -> &'a mut Table {
    let mut t = doc.as_table_mut();
    for key in path {
        let item = t.entry(key).or_insert_with(|| {
            let mut new = Table::new();
            new.set_implicit(true);
            Item::Table(new)
        });
        t = item
            .as_table_mut()
            .unwrap_or_else(|| panic!("{key} is not a table in containerd's test config"));
    }
    t
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
        self.stop();
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

    /// `max_concurrent_downloads` lands where each containerd reads it: schema 2 in CRI's
    /// own table (not its `containerd` table with the snapshotter), schema 3 with the image
    /// settings; read back as `shoald doctor` reads a config file.
    #[test]
    fn max_concurrent_downloads_is_written_where_containerd_reads_it() {
        use shoal_plugin::containerd::config::PullPath;
        use shoal_plugin::containerd::doctor::ContainerdFile;
        use shoal_plugin::containerd::ContainerdVersion;
        let dir = tempfile::tempdir().unwrap();
        for (version, pull_path) in [
            (ContainerdVersion::new(1, 6, 20), PullPath::Local),
            (ContainerdVersion::new(1, 7, 24), PullPath::Local),
            (ContainerdVersion::new(2, 1, 9), PullPath::Local),
        ] {
            let flavor = Flavor {
                name: version.to_string(),
                bin_dir: PathBuf::from("/nonexistent"),
                version,
                pull_path,
            };
            let read = |downloads: Option<u32>| {
                let cri = CriConfig {
                    shoald_socket: dir.path().join("shoald.sock"),
                    snapshotter: "overlayfs".into(),
                    discard_unpacked_layers: false,
                    hosts_dir: dir.path().join("certs.d"),
                    cni_dir: dir.path().join("cni"),
                    fetch_buffer: None,
                    max_concurrent_downloads: downloads,
                };
                let text = config_text(&flavor, dir.path(), Some(&cri)).unwrap();
                let file = ContainerdFile::parse(&text, Path::new("config.toml")).unwrap();
                match version.schema() {
                    Schema::V2 => file.cri_v2.max_concurrent_downloads,
                    Schema::V3 => file.images_v3.max_concurrent_downloads,
                }
            };
            assert_eq!(read(Some(4)), Some(4), "containerd {version}");
            assert_eq!(read(None), None, "containerd {version}");
        }
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
