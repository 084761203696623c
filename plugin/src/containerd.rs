//! What differs between the containerd versions shoal supports (1.6, 1.7, 2.x): the version
//! itself, the config schema it reads, where its CRI image settings live, and which CRI pull
//! path it takes. `shoald containerd-config` writes containerd's configuration from these
//! facts and `shoald doctor` checks a running containerd against them, so both agree.
//!
//! The facts come from containerd's sources (tags v1.6.20, v1.7.24, v2.1.9, v2.2.0):
//! - config schema 2 (1.5-1.7) names the CRI plugin `io.containerd.grpc.v1.cri` and keeps the
//!   image settings in its `containerd` table; schema 3 (2.0+) has a plugin of its own,
//!   `io.containerd.cri.v1.images`. containerd 2.x migrates a version-2 file when it loads it.
//! - 2.1+ CRI pulls through the transfer service (`io.containerd.transfer.v1.local`) unless
//!   `use_local_image_pull = true` or a setting the transfer service cannot honour forces the
//!   local path (`internal/cri/config/config.go`, `CheckLocalImagePullConfigs`).
//! - 2.2+ can unpack layers in parallel for a proxy snapshotter with capability `rebase`.

pub mod config;
pub mod doctor;

use std::fmt;
use std::str::FromStr;

/// A containerd release: major.minor.patch, parsed from what `containerd --version` or the
/// Version API print (`v2.1.9`, `1.6.20~ds1`, `2.1.9+ds1-5`, `1.7.24-0ubuntu1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerdVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// A version string that is not a containerd version shoal knows how to read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a containerd version (expected e.g. 1.6.20 or v2.1.9)")]
pub struct VersionError {
    pub text: String,
}

impl ContainerdVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Finds the version in `containerd --version`'s line
    /// (`containerd github.com/containerd/containerd/v2 2.1.9+ds1-5 ...`): the first word
    /// that parses as one.
    pub fn from_version_output(line: &str) -> Result<Self, VersionError> {
        line.split_whitespace()
            .find_map(|w| w.parse().ok())
            .ok_or_else(|| VersionError {
                text: line.trim().to_owned(),
            })
    }

    /// The config schema version this containerd writes and expects: 2 before 2.0, 3 from it.
    pub fn schema(self) -> Schema {
        if self.major >= 2 {
            Schema::V3
        } else {
            Schema::V2
        }
    }

    /// Whether CRI pulls go through the transfer service unless told otherwise (2.1+).
    pub fn cri_pulls_via_transfer(self) -> bool {
        self >= Self::new(2, 1, 0)
    }

    /// Whether the unpacker may prepare layers with an empty parent and rebase them at Commit
    /// for a snapshotter with capability `rebase` (2.2+).
    pub fn can_rebase(self) -> bool {
        self >= Self::new(2, 2, 0)
    }

    /// Whether the unpacker calls Stat before Prepare (1.6 only); from 1.7 a Prepare of a
    /// chain that exists must answer ALREADY_EXISTS itself.
    pub fn stats_before_prepare(self) -> bool {
        self < Self::new(1, 7, 0)
    }

    /// Whether shoal supports this release line (1.6 and later).
    pub fn supported(self) -> bool {
        self >= Self::new(1, 6, 0)
    }
}

impl FromStr for ContainerdVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VersionError { text: s.to_owned() };
        let t = s.strip_prefix('v').unwrap_or(s);
        // Cut Debian and build suffixes: 1.6.20~ds1-1, 2.1.9+ds1-5, 1.7.24-0ubuntu1, 2.2.0-rc.1.
        let core = t.split(['~', '+', '-']).next().unwrap_or_default();
        let mut parts = core.split('.');
        let mut next = || -> Result<u32, VersionError> {
            let p = parts.next().ok_or_else(err)?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            p.parse().map_err(|_| err())
        };
        let v = Self::new(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(v)
    }
}

impl fmt::Display for ContainerdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// containerd's config schema (`version = N` at the top of config.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// containerd 1.5-1.7 (2.x reads it too, migrating it at load).
    V2,
    /// containerd 2.x.
    V3,
}

/// The CRI plugin's ID in schema 2.
pub const CRI_PLUGIN_V2: &str = "io.containerd.grpc.v1.cri";
/// The CRI image plugin's ID in schema 3.
pub const CRI_IMAGES_PLUGIN_V3: &str = "io.containerd.cri.v1.images";
/// The transfer service's plugin ID (2.x; CRI pulls through it from 2.1).
pub const TRANSFER_PLUGIN: &str = "io.containerd.transfer.v1.local";
/// The proxy plugin export that makes the transfer service pass the `cri.*` labels.
pub const REMOTE_ANNOTATIONS_EXPORT: &str = "enable_remote_snapshot_annotations";
/// The name shoald is registered under as a proxy snapshotter (`[proxy_plugins.shoal]`,
/// `snapshotter = "shoal"`).
pub const SNAPSHOTTER_NAME: &str = "shoal";
/// The plugin type of snapshotters, proxy ones included, as introspection lists it.
pub const SNAPSHOT_PLUGIN_TYPE: &str = "io.containerd.snapshotter.v1";
/// containerd's own snapshotter on Linux: CRI's and the transfer service's default.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

impl Schema {
    /// The number in the file.
    pub fn number(self) -> i64 {
        match self {
            Schema::V2 => 2,
            Schema::V3 => 3,
        }
    }

    /// Reads `version = N`; a file without one is schema 1, which shoal does not write.
    pub fn from_number(n: i64) -> Option<Self> {
        match n {
            2 => Some(Schema::V2),
            3 => Some(Schema::V3),
            _ => None,
        }
    }

    /// The table path (under the root) of CRI's image settings: `snapshotter`,
    /// `disable_snapshot_annotations`, `discard_unpacked_layers`, `use_local_image_pull`.
    pub fn cri_images_table(self) -> &'static [&'static str] {
        match self {
            Schema::V2 => &["plugins", CRI_PLUGIN_V2, "containerd"],
            Schema::V3 => &["plugins", CRI_IMAGES_PLUGIN_V3],
        }
    }

    /// The table path of CRI's registry settings (`config_path`).
    pub fn cri_registry_table(self) -> &'static [&'static str] {
        match self {
            Schema::V2 => &["plugins", CRI_PLUGIN_V2, "registry"],
            Schema::V3 => &["plugins", CRI_IMAGES_PLUGIN_V3, "registry"],
        }
    }
}

/// The CRI registry `config_path` containerd uses when the config names none: none before
/// 2.2 (hosts.toml files are then not read by CRI), both certs.d directories from 2.2.
pub fn default_hosts_config_path(version: ContainerdVersion) -> Option<&'static str> {
    (version >= ContainerdVersion::new(2, 2, 0))
        .then_some("/etc/containerd/certs.d:/etc/docker/certs.d")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_versions_containerd_prints() {
        let v = |s: &str| s.parse::<ContainerdVersion>().unwrap();
        assert_eq!(v("1.6.20~ds1"), ContainerdVersion::new(1, 6, 20));
        assert_eq!(v("v2.1.9"), ContainerdVersion::new(2, 1, 9));
        assert_eq!(v("2.1.9+ds1-5"), ContainerdVersion::new(2, 1, 9));
        assert_eq!(v("1.7.24-0ubuntu1"), ContainerdVersion::new(1, 7, 24));
        assert_eq!(v("v2.2.0-rc.1"), ContainerdVersion::new(2, 2, 0));
        for bad in [
            "", "v", "2", "2.1", "2.1.x", "2.1.9.1", "a.b.c", "-1.2.3", "2..1",
        ] {
            assert!(bad.parse::<ContainerdVersion>().is_err(), "{bad:?}");
        }
        let line = "containerd github.com/containerd/containerd/v2 2.1.9+ds1-5 2.1.9+ds1-5";
        assert_eq!(
            ContainerdVersion::from_version_output(line).unwrap(),
            ContainerdVersion::new(2, 1, 9)
        );
        assert_eq!(
            ContainerdVersion::from_version_output(
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1"
            )
            .unwrap(),
            ContainerdVersion::new(1, 6, 20)
        );
        assert!(ContainerdVersion::from_version_output("containerd: not found").is_err());
    }

    #[test]
    fn facts_per_version() {
        let (v16, v17, v20, v21, v22) = (
            ContainerdVersion::new(1, 6, 20),
            ContainerdVersion::new(1, 7, 24),
            ContainerdVersion::new(2, 0, 0),
            ContainerdVersion::new(2, 1, 9),
            ContainerdVersion::new(2, 2, 0),
        );
        assert_eq!(v17.schema(), Schema::V2);
        assert_eq!(v20.schema(), Schema::V3);
        assert!(!v20.cri_pulls_via_transfer() && v21.cri_pulls_via_transfer());
        assert!(v16.stats_before_prepare() && !v17.stats_before_prepare());
        assert!(!v21.can_rebase() && v22.can_rebase());
        assert!(!ContainerdVersion::new(1, 5, 9).supported() && v16.supported());
        assert_eq!(default_hosts_config_path(v21), None);
        assert!(default_hosts_config_path(v22).is_some());
    }
}
