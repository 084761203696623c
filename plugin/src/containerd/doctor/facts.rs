//! What `shoald doctor` knows about a node: [`Facts`], plain data gathered by
//! [`super::gather`] and judged by [`super::diagnose`]. The parsers here (containerd's config
//! file, CRI's verbose status) are pure, so the tests build facts from text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Value};

use super::DoctorError;
use crate::containerd::{ContainerdVersion, CRI_IMAGES_PLUGIN_V3, CRI_PLUGIN_V2, TRANSFER_PLUGIN};

/// Everything the doctor learnt, from containerd's socket, its config file and shoald's config.
#[derive(Debug, Clone)]
pub struct Facts {
    /// containerd's socket (`--containerd-address`).
    pub address: PathBuf,
    /// containerd's Version API.
    pub version: ContainerdVersion,
    /// Every plugin containerd knows (introspection `Plugins`).
    pub plugins: Vec<PluginFact>,
    /// CRI's answers on the same socket.
    pub cri: CriFacts,
    /// Whether shoald's snapshotter socket (the proxy plugin's `address` export) answers a
    /// snapshots call; `None` when there is no address to try.
    pub shoal_socket: Option<Probe>,
    /// containerd's config file (`--containerd-config`).
    pub file: FileFacts,
    /// shoald's own configuration.
    pub shoald: ShoaldFacts,
    /// For every registry namespace of shoald's config (`_default` last), the hosts.toml
    /// containerd would read under CRI's `config_path`.
    pub hosts: Vec<HostsFile>,
}

/// The answer of a reachability check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The endpoint answered.
    Answers,
    /// It did not: why.
    Fails(String),
}

/// One containerd plugin, from introspection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginFact {
    /// e.g. `io.containerd.snapshotter.v1`.
    pub kind: String,
    /// e.g. `shoal`.
    pub id: String,
    pub exports: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    /// Why it did not load; `None` when it did.
    pub init_error: Option<String>,
}

/// What CRI answers on containerd's socket.
#[derive(Debug, Clone, Default)]
pub struct CriFacts {
    /// Why CRI's calls failed (plugin disabled or broken); `None` when it answered.
    pub unavailable: Option<String>,
    /// `ImageService/ImageFsInfo`: the first image filesystem's mountpoint, the root of CRI's
    /// snapshotter.
    pub image_fs_mountpoint: Option<String>,
    /// `RuntimeService/Status` (verbose) `info["config"]`, read.
    pub status_config: Option<StatusConfig>,
}

/// The fields of CRI's verbose status config shoal cares about. containerd 1.x puts CRI's whole
/// effective config there; 2.x only the runtime part (the image fields are then `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusConfig {
    pub containerd_root_dir: Option<String>,
    pub snapshotter: Option<String>,
    pub disable_snapshot_annotations: Option<bool>,
    pub discard_unpacked_layers: Option<bool>,
    pub config_path: Option<String>,
}

impl StatusConfig {
    /// Reads `info["config"]`'s JSON; `None` if it is not JSON.
    pub fn parse(json: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        let s = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
        let b = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_bool);
        let c = v.get("containerd");
        Some(Self {
            containerd_root_dir: s(v.get("containerdRootDir")),
            snapshotter: s(c.and_then(|c| c.get("snapshotter"))),
            disable_snapshot_annotations: b(c.and_then(|c| c.get("disableSnapshotAnnotations"))),
            discard_unpacked_layers: b(c.and_then(|c| c.get("discardUnpackedLayers"))),
            config_path: s(v.get("registry").and_then(|r| r.get("configPath"))),
        })
    }
}

/// containerd's config file.
#[derive(Debug, Clone)]
pub struct FileFacts {
    pub path: PathBuf,
    /// `None` when the file does not exist (containerd then runs on its defaults).
    pub content: Option<ContainerdFile>,
}

/// The settings of containerd's config file that decide what CRI does with shoal, as written
/// (`None`: not in the file). Which of them apply depends on containerd's version: see
/// [`super::diagnose`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerdFile {
    /// `version = N` (`None`: schema 1).
    pub version: Option<i64>,
    /// `imports = [...]`: files the doctor does not read.
    pub imports: Vec<String>,
    /// Schema 2's CRI plugin (`plugins."io.containerd.grpc.v1.cri"`, its `containerd` and
    /// `registry` tables).
    pub cri_v2: ImageSettingsFile,
    /// Whether schema 2's `plugins."io.containerd.grpc.v1.cri".containerd` has `runtimes`:
    /// containerd 2.x migrates its `snapshotter`, `disable_snapshot_annotations` and
    /// `discard_unpacked_layers` only then.
    pub cri_v2_has_runtimes: bool,
    /// Schema 3's `plugins."io.containerd.cri.v1.images"`.
    pub images_v3: ImageSettingsFile,
    /// `[proxy_plugins.shoal]`.
    pub proxy: Option<ProxyPluginFile>,
    /// `plugins."io.containerd.transfer.v1.local"`.
    pub transfer: TransferFile,
}

/// CRI's image settings as one table of the file writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSettingsFile {
    pub snapshotter: Option<String>,
    pub disable_snapshot_annotations: Option<bool>,
    pub discard_unpacked_layers: Option<bool>,
    pub use_local_image_pull: Option<bool>,
    pub max_concurrent_downloads: Option<i64>,
    pub image_pull_with_sync_fs: Option<bool>,
    /// Whether the `registry` table is there at all (2.x's migration replaces it whole).
    pub has_registry: bool,
    pub config_path: Option<String>,
    /// The deprecated registry tables that are set and not empty (`mirrors`, `configs`,
    /// `auths`): each forces 2.1+ CRI onto the local pull path.
    pub legacy_registry: Vec<&'static str>,
}

/// `[proxy_plugins.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyPluginFile {
    pub kind: Option<String>,
    pub address: Option<String>,
    pub exports: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
}

/// The transfer service's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferFile {
    /// `unpack_config` entries; `None` when absent (containerd then unpacks into overlayfs
    /// only), `Some(empty)` when written empty (no unpacking at all).
    pub unpack_config: Option<Vec<UnpackEntry>>,
    pub max_concurrent_unpacks: Option<i64>,
}

/// One `[[plugins."io.containerd.transfer.v1.local".unpack_config]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackEntry {
    pub platform: Option<String>,
    pub snapshotter: Option<String>,
}

/// shoald's configuration, the parts the doctor checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShoaldFacts {
    /// `[mirror] enabled`.
    pub mirror_enabled: bool,
    /// The mirror's URL as a hosts.toml host key (`http://127.0.0.1:7075`).
    pub mirror_url: String,
    /// Whether the mirror's listener accepts connections (`None`: not tried, mirror off).
    pub mirror_listening: Option<Probe>,
    /// `[mirror] hosts_dir`, where `shoald hosts` writes.
    pub hosts_dir: PathBuf,
}

/// The hosts.toml containerd reads for one registry namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsFile {
    /// The registry (`docker.io`, `registry.example.com:5000`) or `_default`.
    pub namespace: String,
    /// The directory containerd picks: `<root>/<namespace>`, else `<root>/_default`, in the
    /// order of `config_path`'s roots; `None` when none exists.
    pub dir: Option<PathBuf>,
    /// `<dir>/hosts.toml`'s text; `None` when there is no such file.
    pub text: Option<String>,
}

impl ContainerdFile {
    /// Reads the settings from a config file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, DoctorError> {
        let doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            DoctorError::ConfigSyntax {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().replace('\n', "; "),
            }
        })?;
        let r = Reader {
            path,
            root: doc.as_item(),
        };
        let cri = ["plugins", CRI_PLUGIN_V2];
        let images = ["plugins", CRI_IMAGES_PLUGIN_V3];
        let transfer = ["plugins", TRANSFER_PLUGIN];
        let cri_v2 = ImageSettingsFile {
            snapshotter: r.string(&[&cri[..], &["containerd", "snapshotter"]].concat())?,
            disable_snapshot_annotations: r
                .boolean(&[&cri[..], &["containerd", "disable_snapshot_annotations"]].concat())?,
            discard_unpacked_layers: r
                .boolean(&[&cri[..], &["containerd", "discard_unpacked_layers"]].concat())?,
            use_local_image_pull: None,
            max_concurrent_downloads: r
                .integer(&[&cri[..], &["max_concurrent_downloads"]].concat())?,
            image_pull_with_sync_fs: r
                .boolean(&[&cri[..], &["image_pull_with_sync_fs"]].concat())?,
            ..r.registry(&[&cri[..], &["registry"]].concat())?
        };
        let images_v3 = ImageSettingsFile {
            snapshotter: r.string(&[&images[..], &["snapshotter"]].concat())?,
            disable_snapshot_annotations: r
                .boolean(&[&images[..], &["disable_snapshot_annotations"]].concat())?,
            discard_unpacked_layers: r
                .boolean(&[&images[..], &["discard_unpacked_layers"]].concat())?,
            use_local_image_pull: r.boolean(&[&images[..], &["use_local_image_pull"]].concat())?,
            max_concurrent_downloads: r
                .integer(&[&images[..], &["max_concurrent_downloads"]].concat())?,
            image_pull_with_sync_fs: r
                .boolean(&[&images[..], &["image_pull_with_sync_fs"]].concat())?,
            ..r.registry(&[&images[..], &["registry"]].concat())?
        };
        let proxy_path = ["proxy_plugins", crate::containerd::SNAPSHOTTER_NAME];
        let proxy = match r.get(&proxy_path) {
            None => None,
            Some(_) => Some(ProxyPluginFile {
                kind: r.string(&[&proxy_path[..], &["type"]].concat())?,
                address: r.string(&[&proxy_path[..], &["address"]].concat())?,
                exports: r.string_map(&[&proxy_path[..], &["exports"]].concat())?,
                capabilities: r
                    .strings(&[&proxy_path[..], &["capabilities"]].concat())?
                    .unwrap_or_default(),
            }),
        };
        Ok(Self {
            version: r.integer(&["version"])?,
            imports: r.strings(&["imports"])?.unwrap_or_default(),
            cri_v2,
            cri_v2_has_runtimes: r
                .get(&[&cri[..], &["containerd", "runtimes"]].concat())
                .is_some(),
            images_v3,
            proxy,
            transfer: TransferFile {
                unpack_config: r.unpack_config(&[&transfer[..], &["unpack_config"]].concat())?,
                max_concurrent_unpacks: r
                    .integer(&[&transfer[..], &["max_concurrent_unpacks"]].concat())?,
            },
        })
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Typed lookups in a parsed file; a value of the wrong type is an error naming its key.
struct Reader<'a> {
    path: &'a Path,
    root: &'a Item,
}

impl<'a> Reader<'a> {
    fn get(&self, keys: &[&str]) -> Option<&'a Item> {
        keys.iter().try_fold(self.root, |item, k| item.get(k))
    }

    fn wrong(&self, keys: &[&str], expected: &'static str) -> DoctorError {
        DoctorError::ConfigValue {
            path: self.path.to_owned(),
            key: dotted(keys),
            expected,
        }
    }

    fn value<T>(
        &self,
        keys: &[&str],
        expected: &'static str,
        read: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<T>, DoctorError> {
        match self.get(keys) {
            None => Ok(None),
            Some(item) => item
                .as_value()
                .and_then(read)
                .map(Some)
                .ok_or_else(|| self.wrong(keys, expected)),
        }
    }

    fn string(&self, keys: &[&str]) -> Result<Option<String>, DoctorError> {
        self.value(keys, "a string", |v| v.as_str().map(str::to_owned))
    }

    fn boolean(&self, keys: &[&str]) -> Result<Option<bool>, DoctorError> {
        self.value(keys, "true or false", Value::as_bool)
    }

    fn integer(&self, keys: &[&str]) -> Result<Option<i64>, DoctorError> {
        self.value(keys, "an integer", Value::as_integer)
    }

    fn strings(&self, keys: &[&str]) -> Result<Option<Vec<String>>, DoctorError> {
        self.value(keys, "an array of strings", |v| {
            v.as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
    }

    fn string_map(&self, keys: &[&str]) -> Result<BTreeMap<String, String>, DoctorError> {
        let Some(item) = self.get(keys) else {
            return Ok(BTreeMap::new());
        };
        let table = item
            .as_table_like()
            .ok_or_else(|| self.wrong(keys, "a table of strings"))?;
        table
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.to_owned(), s.to_owned()))
                    .ok_or_else(|| self.wrong(&[keys, &[k]].concat(), "a string"))
            })
            .collect()
    }

    /// A `registry` table: `config_path` and which deprecated tables are set.
    fn registry(&self, keys: &[&str]) -> Result<ImageSettingsFile, DoctorError> {
        let mut out = ImageSettingsFile {
            has_registry: self.get(keys).is_some(),
            config_path: self.string(&[keys, &["config_path"]].concat())?,
            ..Default::default()
        };
        for name in ["mirrors", "configs", "auths"] {
            let set = self
                .get(&[keys, &[name]].concat())
                .and_then(Item::as_table_like)
                .is_some_and(|t| !t.is_empty());
            if set {
                out.legacy_registry.push(name);
            }
        }
        Ok(out)
    }

    /// `unpack_config`: an array of tables, written `[[...]]` or inline.
    fn unpack_config(&self, keys: &[&str]) -> Result<Option<Vec<UnpackEntry>>, DoctorError> {
        let Some(item) = self.get(keys) else {
            return Ok(None);
        };
        let tables: Vec<&dyn toml_edit::TableLike> = match item {
            Item::ArrayOfTables(a) => a.iter().map(|t| t as &dyn toml_edit::TableLike).collect(),
            Item::Value(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_inline_table()
                        .map(|t| t as &dyn toml_edit::TableLike)
                        .ok_or_else(|| self.wrong(keys, "an array of tables"))
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(self.wrong(keys, "an array of tables")),
        };
        tables
            .into_iter()
            .map(|t| {
                let field = |name: &str| -> Result<Option<String>, DoctorError> {
                    match t.get(name) {
                        None => Ok(None),
                        Some(v) => v
                            .as_str()
                            .map(|s| Some(s.to_owned()))
                            .ok_or_else(|| self.wrong(&[keys, &[name]].concat(), "a string")),
                    }
                };
                Ok(UnpackEntry {
                    platform: field("platform")?,
                    snapshotter: field("snapshotter")?,
                })
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

/// `plugins."io.containerd.cri.v1.images".snapshotter` as TOML spells it.
pub fn dotted(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| {
            if k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                (*k).to_owned()
            } else {
                format!("{k:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_schema_3_file() {
        let text = r#"
version = 3
imports = ["/etc/containerd/conf.d/*.toml"]
[proxy_plugins.shoal]
  type = "snapshot"
  address = "/run/shoal/shoald.sock"
  capabilities = ["rebase"]
  [proxy_plugins.shoal.exports]
    enable_remote_snapshot_annotations = "true"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "shoal"
  use_local_image_pull = false
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "/etc/containerd/certs.d"
    [plugins."io.containerd.cri.v1.images".registry.mirrors."docker.io"]
      endpoint = ["https://x"]
[plugins."io.containerd.transfer.v1.local"]
  max_concurrent_unpacks = 4
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "shoal"
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "overlayfs"
"#;
        let f = ContainerdFile::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(f.version, Some(3));
        assert_eq!(f.imports, ["/etc/containerd/conf.d/*.toml"]);
        let p = f.proxy.unwrap();
        assert_eq!(p.address.as_deref(), Some("/run/shoal/shoald.sock"));
        assert_eq!(p.capabilities, ["rebase"]);
        assert_eq!(p.exports["enable_remote_snapshot_annotations"], "true");
        assert_eq!(f.images_v3.snapshotter.as_deref(), Some("shoal"));
        assert_eq!(f.images_v3.use_local_image_pull, Some(false));
        assert_eq!(
            f.images_v3.config_path.as_deref(),
            Some("/etc/containerd/certs.d")
        );
        assert_eq!(f.images_v3.legacy_registry, ["mirrors"]);
        assert_eq!(f.cri_v2, ImageSettingsFile::default());
        let unpack = f.transfer.unpack_config.unwrap();
        assert_eq!(unpack.len(), 2);
        assert_eq!(unpack[0].snapshotter.as_deref(), Some("shoal"));
        assert_eq!(f.transfer.max_concurrent_unpacks, Some(4));
    }

    #[test]
    fn reads_inline_unpack_config_and_schema_2() {
        let text = "version = 2\n\
            [plugins.\"io.containerd.transfer.v1.local\"]\n\
            unpack_config = [{ platform = \"linux/amd64\", snapshotter = \"shoal\" }]\n\
            [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
            snapshotter = \"shoal\"\n\
            disable_snapshot_annotations = false\n\
            [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
            runtime_type = \"io.containerd.runc.v2\"\n";
        let f = ContainerdFile::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(f.transfer.unpack_config.unwrap().len(), 1);
        assert_eq!(f.cri_v2.snapshotter.as_deref(), Some("shoal"));
        assert_eq!(f.cri_v2.disable_snapshot_annotations, Some(false));
        assert!(f.cri_v2_has_runtimes);
        assert!(f.proxy.is_none());
    }

    #[test]
    fn malformed_files_are_clear_errors() {
        let e = ContainerdFile::parse("version = 2\n[plugins\nx = 1\n", Path::new("/etc/c.toml"))
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, DoctorError::ConfigSyntax { line: 2, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("/etc/c.toml") && msg.contains("line 2"),
            "{msg}"
        );
        let e = ContainerdFile::parse(
            "[plugins.\"io.containerd.cri.v1.images\"]\nsnapshotter = 5\n",
            Path::new("c.toml"),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("plugins.\"io.containerd.cri.v1.images\".snapshotter"),
            "{e}"
        );
    }

    #[test]
    fn reads_cri_status_config() {
        let json = r#"{"containerd":{"snapshotter":"shoal","disableSnapshotAnnotations":false,
            "discardUnpackedLayers":true},"registry":{"configPath":"/etc/containerd/certs.d"},
            "containerdRootDir":"/var/lib/containerd"}"#;
        let s = StatusConfig::parse(json).unwrap();
        assert_eq!(s.snapshotter.as_deref(), Some("shoal"));
        assert_eq!(s.disable_snapshot_annotations, Some(false));
        assert_eq!(s.discard_unpacked_layers, Some(true));
        assert_eq!(s.config_path.as_deref(), Some("/etc/containerd/certs.d"));
        assert_eq!(
            s.containerd_root_dir.as_deref(),
            Some("/var/lib/containerd")
        );
        // 2.x: the runtime part only.
        let s = StatusConfig::parse(r#"{"containerdRootDir":"/r","cni":{}}"#).unwrap();
        assert_eq!(s.snapshotter, None);
        assert!(StatusConfig::parse("not json").is_none());
    }
}
