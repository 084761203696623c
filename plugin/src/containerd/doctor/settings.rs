//! CRI's settings as the running containerd version reads them: the file migrated and
//! defaulted, the pull path it implies, and the small readers of what containerd answers
//! (an image filesystem's snapshotter, a hosts.toml's first host). All pure.

use super::facts::{FileFacts, PluginFact, StatusConfig};
use crate::containerd::{
    default_hosts_config_path, ContainerdVersion, Schema, DEFAULT_SNAPSHOTTER, SNAPSHOT_PLUGIN_TYPE,
};

/// CRI's pull path on a containerd version with given settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullPath {
    /// CRI pulls and unpacks itself (containerd's client pull); why.
    Local(String),
    /// Through the transfer service (2.1+).
    Transfer,
}

/// CRI's image settings as containerd reads them from the file (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSettings {
    /// The table to change them in, as TOML names it.
    pub table: String,
    pub snapshotter: String,
    pub disable_snapshot_annotations: bool,
    pub discard_unpacked_layers: bool,
    pub use_local_image_pull: bool,
    pub max_concurrent_downloads: i64,
    pub image_pull_with_sync_fs: bool,
    /// CRI's registry `config_path` (roots separated by `:`); empty: no hosts.toml read.
    pub config_path: String,
    pub legacy_registry: Vec<&'static str>,
    /// Settings of a version-2 file that containerd 2.x's migration drops
    /// (`snapshotter = "shoal"`, ...).
    pub dropped_by_migration: Vec<String>,
}

/// CRI's image settings for `version` from the file, migrated and defaulted as that version
/// does (see `plugins/cri/images/plugin.go`'s `configMigration` in 2.x: the `containerd`
/// table's keys move only when it also has `runtimes`).
pub fn file_settings(version: ContainerdVersion, file: &FileFacts) -> ImageSettings {
    let schema = version.schema();
    let table = super::facts::dotted(schema.cri_images_table());
    let empty = Default::default();
    let content = file.content.as_ref().unwrap_or(&empty);
    let mut dropped = Vec::new();
    let s = match (schema, content.version) {
        (Schema::V2, Some(2)) => content.cri_v2.clone(),
        (Schema::V2, _) => Default::default(),
        (Schema::V3, Some(3)) => content.images_v3.clone(),
        (Schema::V3, _) => {
            let (old, mut s) = (&content.cri_v2, content.images_v3.clone());
            if old.has_registry {
                s.has_registry = true;
                s.config_path.clone_from(&old.config_path);
                s.legacy_registry.clone_from(&old.legacy_registry);
            }
            s.max_concurrent_downloads =
                old.max_concurrent_downloads.or(s.max_concurrent_downloads);
            s.image_pull_with_sync_fs = old.image_pull_with_sync_fs.or(s.image_pull_with_sync_fs);
            if content.cri_v2_has_runtimes {
                s.snapshotter = old.snapshotter.clone().or(s.snapshotter);
                s.disable_snapshot_annotations = old
                    .disable_snapshot_annotations
                    .or(s.disable_snapshot_annotations);
                s.discard_unpacked_layers =
                    old.discard_unpacked_layers.or(s.discard_unpacked_layers);
            } else {
                if let Some(v) = &old.snapshotter {
                    dropped.push(format!("snapshotter = {v:?}"));
                }
                if let Some(v) = old.disable_snapshot_annotations {
                    dropped.push(format!("disable_snapshot_annotations = {v}"));
                }
                if let Some(v) = old.discard_unpacked_layers {
                    dropped.push(format!("discard_unpacked_layers = {v}"));
                }
            }
            s
        }
    };
    ImageSettings {
        table,
        snapshotter: s.snapshotter.unwrap_or_else(|| DEFAULT_SNAPSHOTTER.into()),
        // true by default on Linux in every version shoal supports.
        disable_snapshot_annotations: s.disable_snapshot_annotations.unwrap_or(true),
        discard_unpacked_layers: s.discard_unpacked_layers.unwrap_or(false),
        use_local_image_pull: s.use_local_image_pull.unwrap_or(false),
        max_concurrent_downloads: s.max_concurrent_downloads.unwrap_or(3),
        image_pull_with_sync_fs: s.image_pull_with_sync_fs.unwrap_or(false),
        config_path: s
            .config_path
            .or_else(|| default_hosts_config_path(version).map(str::to_owned))
            .unwrap_or_default(),
        legacy_registry: s.legacy_registry,
        dropped_by_migration: dropped,
    }
}

/// CRI's `config_path` as containerd uses it: from CRI's status on 1.x, else from the file.
pub fn effective_config_path(
    version: ContainerdVersion,
    file: &FileFacts,
    status: Option<&StatusConfig>,
) -> String {
    status
        .and_then(|s| s.config_path.clone())
        .unwrap_or_else(|| file_settings(version, file).config_path)
}

/// Which pull path CRI takes (`CheckLocalImagePullConfigs` in 2.1+).
pub fn pull_path(version: ContainerdVersion, s: &ImageSettings) -> PullPath {
    if !version.cri_pulls_via_transfer() {
        return PullPath::Local(format!("containerd {version} always pulls in CRI itself"));
    }
    let forced = if s.use_local_image_pull {
        Some("use_local_image_pull = true".to_owned())
    } else if !s.disable_snapshot_annotations {
        Some("disable_snapshot_annotations = false forces it".to_owned())
    } else if s.discard_unpacked_layers {
        Some("discard_unpacked_layers = true forces it".to_owned())
    } else if let Some(t) = s.legacy_registry.first() {
        Some(format!("the deprecated registry.{t} forces it"))
    } else if s.max_concurrent_downloads != 3 {
        Some(format!(
            "max_concurrent_downloads = {} (not 3) forces it",
            s.max_concurrent_downloads
        ))
    } else if s.image_pull_with_sync_fs {
        Some("image_pull_with_sync_fs = true forces it".to_owned())
    } else {
        None
    };
    forced.map_or(PullPath::Transfer, PullPath::Local)
}

/// The snapshotter whose root is `mountpoint`: one exporting it as `root`, else the name in
/// containerd's `<root>/io.containerd.snapshotter.v1.<name>` layout.
pub fn snapshotter_of_mountpoint(mountpoint: &str, plugins: &[PluginFact]) -> Option<String> {
    let trimmed = mountpoint.trim_end_matches('/');
    plugins
        .iter()
        .find(|p| {
            p.kind == SNAPSHOT_PLUGIN_TYPE
                && p.exports.get("root").map(|r| r.trim_end_matches('/')) == Some(trimmed)
        })
        .map(|p| p.id.clone())
        .or_else(|| {
            let base = trimmed.rsplit('/').next()?;
            base.strip_prefix(&format!("{SNAPSHOT_PLUGIN_TYPE}."))
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
        })
}

/// The host containerd tries first in a hosts.toml: the first `[host."..."]`, else `server`.
pub fn first_host(text: &str) -> Result<Option<String>, toml_edit::TomlError> {
    let doc: toml_edit::DocumentMut = text.parse()?;
    if let Some(hosts) = doc.get("host").and_then(|h| h.as_table_like()) {
        if let Some((k, _)) = hosts.iter().next() {
            return Ok(Some(k.to_owned()));
        }
    }
    Ok(doc
        .get("server")
        .and_then(|s| s.as_str())
        .map(str::to_owned))
}
