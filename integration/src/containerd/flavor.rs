//! Which containerd the tests run against, chosen by `SHOAL_CONTAINERD`:
//!
//! | value | binaries | config schema | CRI pull path |
//! |---|---|---|---|
//! | `1.6` (default) | the system's (`/usr/bin`, Debian 12's package) | 2 | client (local) |
//! | `1.7` | Debian 13's package, unpacked under `SHOAL_CONTAINERD_DIR` | 2 | client (local) |
//! | `2.1` | Debian sid's package, unpacked there | 3 | transfer service |
//! | `2.1-local` | the same 2.1 | 3 | client (`use_local_image_pull`) |
//!
//! `scripts/install-containerd-versions.sh` (called by `scripts/install-deps.sh`) unpacks the
//! newer ones into `SHOAL_CONTAINERD_DIR` (default `/var/tmp/shoal-containerd`), one directory
//! per release (`1.7.24/usr/bin/containerd`); the harness takes the newest of the line.
//! containerd's configuration for a test is shoal's own `shoald containerd-config` output
//! ([`shoal_plugin::containerd::config::apply`]) for that version and path, plus the test's
//! private root, sockets and settings, so every run of the matrix also checks that what shoal
//! tells users to configure works on that containerd.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use shoal_plugin::containerd::config::PullPath;
use shoal_plugin::containerd::ContainerdVersion;

/// The variable that selects the containerd under test.
pub const FLAVOR_VAR: &str = "SHOAL_CONTAINERD";

/// One containerd of the matrix: its binaries, version and CRI pull path.
#[derive(Debug, Clone)]
pub struct Flavor {
    /// What `SHOAL_CONTAINERD` said (`1.6`, `1.7`, `2.1`, `2.1-local`).
    pub name: String,
    /// Directory holding `containerd` and `ctr`.
    pub bin_dir: PathBuf,
    /// What `containerd --version` says.
    pub version: ContainerdVersion,
    /// CRI's pull path (only 2.1+ has a choice).
    pub pull_path: PullPath,
}

impl Flavor {
    /// The `containerd` binary.
    pub fn containerd(&self) -> PathBuf {
        self.bin_dir.join("containerd")
    }

    /// The `ctr` binary of the same release.
    pub fn ctr(&self) -> PathBuf {
        self.bin_dir.join("ctr")
    }

    /// A line for test output: `containerd 2.1.9 (2.1, transfer service)`.
    pub fn describe(&self) -> String {
        let path = if !self.version.cri_pulls_via_transfer() {
            "client pull"
        } else {
            match self.pull_path {
                PullPath::Transfer => "transfer service",
                PullPath::Local => "local pull",
            }
        };
        format!(
            "containerd {} ({}, {path}, {})",
            self.version,
            self.name,
            self.bin_dir.display()
        )
    }
}

/// The containerd under test, found once per process (and announced on stderr, so each
/// run of the matrix names its containerd). An error says what is missing and how to get it.
pub fn flavor() -> Result<&'static Flavor> {
    static FLAVOR: OnceLock<std::result::Result<Flavor, String>> = OnceLock::new();
    FLAVOR
        .get_or_init(|| {
            let name = std::env::var(FLAVOR_VAR).unwrap_or_else(|_| "1.6".into());
            let found = find(&name).map_err(|e| format!("{e:#}"));
            if let Ok(f) = &found {
                eprintln!("containerd under test: {}", f.describe());
            }
            found
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The containerd `name` (a `SHOAL_CONTAINERD` value) names, whatever the process chose: for
/// a benchmark that compares containerds in one run.
pub fn find(name: &str) -> Result<Flavor> {
    let (line, pull_path) = match name {
        "1.6" => ("1.6", PullPath::Local),
        "1.7" => ("1.7", PullPath::Local),
        "2.1" => ("2.1", PullPath::Transfer),
        "2.1-local" => ("2.1", PullPath::Local),
        other => bail!("{FLAVOR_VAR}={other:?}: expected one of 1.6, 1.7, 2.1, 2.1-local"),
    };
    let bin_dir = if line == "1.6" {
        system_bin_dir()?
    } else {
        newest_unpacked(line)?
    };
    let version = version_of(&bin_dir.join("containerd"))?;
    let want: Vec<u32> = line.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    if [version.major, version.minor] != want[..] {
        bail!(
            "{FLAVOR_VAR}={name}: {} is containerd {version}, not {line}",
            bin_dir.display()
        );
    }
    if !bin_dir.join("ctr").is_file() {
        bail!("{FLAVOR_VAR}={name}: no ctr in {}", bin_dir.display());
    }
    Ok(Flavor {
        name: name.to_owned(),
        bin_dir,
        version,
        pull_path,
    })
}

/// Where the system's containerd is (Debian 12's 1.6 package).
fn system_bin_dir() -> Result<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|d| d.join("containerd").is_file()));
    found.context(
        "containerd is not installed (Debian 12's containerd package: scripts/install-deps.sh)",
    )
}

/// `SHOAL_CONTAINERD_DIR/<newest release of line>/usr/bin`.
fn newest_unpacked(line: &str) -> Result<PathBuf> {
    let root = std::env::var_os("SHOAL_CONTAINERD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/shoal-containerd"));
    let prefix = format!("{line}.");
    let mut releases: Vec<(ContainerdVersion, PathBuf)> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let v: ContainerdVersion = name.strip_prefix(&prefix).and(name.parse().ok())?;
            let bin = e.path().join("usr/bin");
            bin.join("containerd").is_file().then_some((v, bin))
        })
        .collect();
    releases.sort();
    match releases.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "containerd {line} is not unpacked under {} (scripts/install-containerd-versions.sh \
             fetches it; scripts/install-deps.sh runs that)",
            root.display()
        ),
    }
}

fn version_of(containerd: &Path) -> Result<ContainerdVersion> {
    let out = Command::new(containerd)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", containerd.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(ContainerdVersion::from_version_output(&text)?)
}
