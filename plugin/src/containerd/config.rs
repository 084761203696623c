//! `shoald containerd-config`: containerd's configuration written for shoal.
//!
//! [`apply`] is the policy, a pure function from the file's text to the new text: it keeps
//! everything the file says (other tables, keys, comments, order) and adds or sets only what
//! shoal needs, for the file's schema and the containerd version that will read it:
//!
//! - every version: `[proxy_plugins.shoal]` (`type = "snapshot"`, `address` = shoald's
//!   socket), CRI's `snapshotter = "shoal"`, and CRI's registry `config_path` when it is absent
//!   and the version has no default (before 2.2), so `shoald hosts` files are read;
//! - CRI pulling with the client (1.6, 1.7, 2.0, and 2.1+ with [`PullPath::Local`]):
//!   `disable_snapshot_annotations = false` so the `cri.*` labels reach shoal on Prepare,
//!   plus `use_local_image_pull = true` on 2.1+;
//! - CRI pulling through the transfer service (2.1+, [`PullPath::Transfer`]): the proxy
//!   plugin's `exports.enable_remote_snapshot_annotations = "true"`, shoal (and overlayfs,
//!   since a list replaces containerd's default one) in the transfer service's
//!   `unpack_config`, and `disable_snapshot_annotations = true` (false would send containerd
//!   down the local path without the labels the transfer path passes).
//!
//! A setting that contradicts shoal is changed and a note says what and why; the `rebase`
//! capability (2.2's parallel unpack with empty parents, which shoal does not support) is
//! removed. Running it on its own output changes nothing.
//!
//! [`file`] holds the I/O around it: reading the file, writing it atomically, asking
//! `containerd --version`.

mod edit;
mod error;
pub mod file;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

use super::{
    default_hosts_config_path, ContainerdVersion, Schema, REMOTE_ANNOTATIONS_EXPORT,
    TRANSFER_PLUGIN,
};
use edit::Set;
pub use error::ContainerdConfigError;

/// shoal's snapshotter name inside containerd (`[proxy_plugins.shoal]`).
pub const SNAPSHOTTER: &str = "shoal";
/// containerd's default snapshotter, kept in a transfer `unpack_config` list.
pub const OVERLAYFS: &str = "overlayfs";
/// The hosts directory written as CRI's `config_path` when containerd has no default.
pub const HOSTS_DIR: &str = "/etc/containerd/certs.d";
/// The proxy plugin capability for 2.2's parallel unpack, which shoal does not support.
pub const REBASE: &str = "rebase";

/// The CRI pull path wanted on containerd 2.1+ (before 2.1 CRI always pulls locally).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPath {
    /// Through the transfer service (containerd's default from 2.1).
    Transfer,
    /// With the client's pull code (`use_local_image_pull = true`).
    Local,
}

/// What to write the configuration for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The containerd that will read the file.
    pub version: ContainerdVersion,
    /// shoald's snapshotter socket (`shoald snapshotter --address`).
    pub shoald_socket: PathBuf,
    /// The CRI pull path on 2.1+.
    pub pull_path: PullPath,
    /// The platform of the transfer service's unpack entries, e.g. `linux/amd64`
    /// ([`host_platform`]).
    pub platform: String,
}

/// The result of [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The new file.
    pub text: String,
    /// Whether `text` differs from the file given.
    pub changed: bool,
    /// What was replaced or removed, or is worth knowing, and why; in plain words.
    pub notes: Vec<String>,
}

/// This machine's platform as containerd writes it in `unpack_config` (`linux/amd64`).
pub fn host_platform() -> String {
    shoal_p2p::registry::Platform::host().to_string()
}

/// `os/arch[/variant]` reduced to what decides a match: lower case, Go's arch names, and
/// arm64's default variant v8 dropped (containerd normalises it the same way).
fn platform_key(p: &str) -> String {
    let p = p.trim().to_ascii_lowercase();
    let mut parts: Vec<&str> = p.split('/').collect();
    if let Some(arch) = parts.get_mut(1) {
        *arch = match *arch {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
    }
    if parts.len() == 3 && parts[1] == "arm64" && parts[2] == "v8" {
        parts.pop();
    }
    parts.join("/")
}

/// `existing` (containerd's config.toml; empty or comments only is fine) with what shoal
/// needs for `opts.version`. Pure: see the module's documentation.
pub fn apply(existing: &str, opts: &Options) -> Result<Applied, ContainerdConfigError> {
    let version = opts.version;
    if !version.supported() {
        return Err(ContainerdConfigError::UnsupportedContainerd { version });
    }
    let mut doc: DocumentMut = existing
        .parse()
        .map_err(|source| parse_error(existing, source))?;
    let schema = version.schema();
    check_schema(&mut doc, schema, version)?;
    let mut notes = Vec::new();
    let root = doc.as_table_mut();

    register_proxy_plugin(root, opts, &mut notes)?;
    let path = pull_path(root, schema, opts, &mut notes)?;
    cri_images(root, schema, path, &mut notes)?;
    registry_config_path(root, schema, version, &mut notes)?;
    if path == Some(PullPath::Transfer) {
        transfer_unpack(root, &opts.platform, &mut notes)?;
    }

    let text = doc.to_string();
    Ok(Applied {
        changed: text != existing,
        text,
        notes,
    })
}

fn parse_error(text: &str, source: toml_edit::TomlError) -> ContainerdConfigError {
    let at = source.span().map_or(0, |s| s.start.min(text.len()));
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    ContainerdConfigError::Parse {
        line,
        column,
        source,
    }
}

/// Checks the file's `version` against the containerd's schema; an empty file gets one.
fn check_schema(
    doc: &mut DocumentMut,
    want: Schema,
    version: ContainerdVersion,
) -> Result<(), ContainerdConfigError> {
    let hint = if version.schema() == Schema::V3 {
        "migrate it with `containerd config migrate > NEW` first"
    } else {
        "rewrite it as version = 2 (containerd 1.5+ `containerd config default` shows that form)"
    };
    let found = match doc.get("version") {
        None if doc.as_table().is_empty() => None,
        None => return Err(ContainerdConfigError::Schema1 { found: None, hint }),
        Some(item) => {
            let n = item
                .as_integer()
                .ok_or_else(|| ContainerdConfigError::WrongType {
                    key: "version".into(),
                    expected: "an integer",
                    found: item.type_name(),
                })?;
            match Schema::from_number(n) {
                Some(s) => Some(s),
                None if n <= 1 => {
                    return Err(ContainerdConfigError::Schema1 {
                        found: Some(n),
                        hint,
                    })
                }
                None => return Err(ContainerdConfigError::UnknownSchema { found: n }),
            }
        }
    };
    match (found, want) {
        (Some(have), want) if have == want => Ok(()),
        (Some(Schema::V2), _) => Err(ContainerdConfigError::NeedsMigration { version }),
        (Some(_), _) => Err(ContainerdConfigError::SchemaTooNew { version }),
        (None, want) => {
            // A comment-only file keeps its comments first, above `version`.
            let header = doc.trailing().as_str().unwrap_or_default().to_owned();
            doc.set_trailing("");
            doc.insert("version", toml_edit::value(want.number()));
            let comment = match want {
                Schema::V2 => SCHEMA2_COMMENT,
                Schema::V3 => SCHEMA3_COMMENT,
            };
            let mut prefix = header.trim_end().to_owned();
            if !prefix.is_empty() {
                prefix.push_str("\n\n");
            }
            for line in comment.lines() {
                prefix.push_str("# ");
                prefix.push_str(line);
                prefix.push('\n');
            }
            if let Some(mut key) = doc.key_mut("version") {
                key.leaf_decor_mut().set_prefix(prefix);
            }
            Ok(())
        }
    }
}

const SCHEMA2_COMMENT: &str =
    "Config schema 2, the one containerd 1.5-1.7 reads: plugin sections are named by their\n\
full plugin ID (\"io.containerd.grpc.v1.cri\").";
const SCHEMA3_COMMENT: &str =
    "Config schema 3, the one containerd 2.x reads: CRI's image settings are a plugin of their\n\
own (\"io.containerd.cri.v1.images\"). containerd 2.x still loads version 2 files, migrating\n\
them at every start; shoald containerd-config writes version 3 only.";

/// Writes a note when `set` replaced a value.
fn note_replaced(notes: &mut Vec<String>, set: Set, what: impl FnOnce(String) -> String) {
    if let Set::Replaced(old) = set {
        notes.push(what(old));
    }
}

/// `[proxy_plugins.shoal]`: type, address; the `rebase` capability removed.
fn register_proxy_plugin(
    root: &mut Table,
    opts: &Options,
    notes: &mut Vec<String>,
) -> Result<(), ContainerdConfigError> {
    let mut p = edit::table(
        root,
        &["proxy_plugins", SNAPSHOTTER],
        "shoald serves containerd's snapshots API on a unix socket; containerd talks to it as an\n\
         out-of-process (\"proxy\") plugin. The table's name is the snapshotter's name in\n\
         containerd: `ctr --snapshotter shoal`, and `snapshotter = \"shoal\"` below.",
    )?;
    let set = p.ensure(
        "type",
        "snapshot",
        "A snapshotter (not a content store, \"content\").",
    )?;
    note_replaced(notes, set, |old| {
        format!(
            "[{}] type was {old}: set to \"snapshot\", shoald is a snapshotter",
            p.path
        )
    });
    let address = opts.shoald_socket.to_string_lossy().into_owned();
    let set = p.ensure(
        "address",
        address.as_str(),
        "Where shoald listens: `shoald snapshotter --address` (systemd/shoald.service).",
    )?;
    note_replaced(notes, set, |old| {
        format!(
            "[{}] address was {old}: set to {address:?}, where shoald listens",
            p.path
        )
    });
    if p.remove_from_array("capabilities", REBASE)? {
        notes.push(format!(
            "removed capability \"{REBASE}\" from [{}]: with it containerd 2.2+ unpacks layers in \
             parallel, preparing each without its parent, which shoal does not support",
            p.path
        ));
    }
    Ok(())
}

/// The CRI image settings that send containerd 2.1+ down the local pull path (other than
/// `use_local_image_pull` and `disable_snapshot_annotations`, which shoal sets), as
/// `CheckLocalImagePullConfigs` in `internal/cri/config/config.go` lists them.
fn forces_local_pull(cri: &dyn TableLike, registry: Option<&dyn TableLike>) -> Option<String> {
    let get = |k: &str| cri.get(k).and_then(Item::as_value);
    if get("discard_unpacked_layers").and_then(Value::as_bool) == Some(true) {
        return Some("discard_unpacked_layers = true".into());
    }
    if let Some(v) = get("max_concurrent_downloads") {
        if v.as_integer() != Some(3) {
            return Some(format!(
                "max_concurrent_downloads = {} (the transfer path's own setting is \
                 [plugins.\"{TRANSFER_PLUGIN}\"] max_concurrent_downloads)",
                v.clone().decorated("", "")
            ));
        }
    }
    if get("image_pull_with_sync_fs").and_then(Value::as_bool) == Some(true) {
        return Some("image_pull_with_sync_fs = true".into());
    }
    LEGACY_REGISTRY
        .into_iter()
        .find(|k| non_empty(registry, k))
        .map(|k| format!("registry.{k} (deprecated: hosts.toml files replace it)"))
}

/// CRI's registry settings from before `config_path` (deprecated).
const LEGACY_REGISTRY: [&str; 3] = ["mirrors", "configs", "auths"];

/// Whether `table` has a non-empty table at `key`.
fn non_empty(table: Option<&dyn TableLike>, key: &str) -> bool {
    table
        .and_then(|t| t.get(key))
        .and_then(Item::as_table_like)
        .is_some_and(|t| !t.is_empty())
}

/// The CRI pull path containerd will take with the file as shoal leaves it: `None` before
/// 2.1 (the client pulls, as with `Local`); otherwise the one asked for, unless a setting
/// shoal does not own forces the local path (then a note says which).
fn pull_path(
    root: &Table,
    schema: Schema,
    opts: &Options,
    notes: &mut Vec<String>,
) -> Result<Option<PullPath>, ContainerdConfigError> {
    if !opts.version.cri_pulls_via_transfer() {
        return Ok(None);
    }
    if opts.pull_path == PullPath::Local {
        return Ok(Some(PullPath::Local));
    }
    let registry = edit::find(root, schema.cri_registry_table())?;
    let forced = edit::find(root, schema.cri_images_table())?
        .and_then(|cri| forces_local_pull(cri, registry));
    let Some(setting) = forced else {
        return Ok(Some(PullPath::Transfer));
    };
    notes.push(format!(
        "{setting} in [{}] makes containerd {} pull through the local path, not the transfer \
         service: writing the local-path settings instead (remove it and run this again for \
         the transfer path)",
        edit::dotted(schema.cri_images_table()),
        opts.version
    ));
    Ok(Some(PullPath::Local))
}

/// CRI's image settings: shoal's snapshotter, and the annotations for the pull path.
fn cri_images(
    root: &mut Table,
    schema: Schema,
    path: Option<PullPath>,
    notes: &mut Vec<String>,
) -> Result<(), ContainerdConfigError> {
    let comment = match schema {
        Schema::V2 => {
            "The CRI plugin (what kubelet, crictl and `shoald pull` talk to): its image settings."
        }
        Schema::V3 => "CRI's image service (what kubelet, crictl and `shoald pull` pull through).",
    };
    let mut cri = edit::table(root, schema.cri_images_table(), comment)?;
    let set = cri.ensure(
        "snapshotter",
        SNAPSHOTTER,
        "Unpack the images CRI pulls into shoal's snapshots instead of overlayfs (shoal behaves\n\
         as overlayfs for whatever it cannot speed up).",
    )?;
    note_replaced(notes, set, |old| {
        format!(
            "[{}] snapshotter was {old}: set to \"{SNAPSHOTTER}\" so the images CRI pulls \
             unpack through shoal (images already pulled stay in the old snapshotter; pull \
             them again to use shoal)",
            cri.path
        )
    });
    let annotations_false =
        "Pass the image and layer annotations (containerd.io/snapshot/cri.layer-digest,\n\
         cri.image-ref, cri.manifest-digest, cri.image-layers) to the snapshotter as labels on\n\
         Prepare: shoald needs them to fetch and unpack layers itself. containerd's default is\n\
         true (not passed).";
    match path {
        None | Some(PullPath::Local) => {
            let set = cri.ensure("disable_snapshot_annotations", false, annotations_false)?;
            note_replaced(notes, set, |old| {
                format!(
                    "[{}] disable_snapshot_annotations was {old}: set to false, shoal needs \
                     the image and layer annotations as labels on Prepare",
                    cri.path
                )
            });
        }
        Some(PullPath::Transfer) => {
            let set = cri.ensure(
                "disable_snapshot_annotations",
                true,
                "Must stay true on the transfer path: false sends CRI's pulls down the local path\n\
                 (as use_local_image_pull = true would). The labels reach shoal through\n\
                 [proxy_plugins.shoal.exports] instead.",
            )?;
            note_replaced(notes, set, |old| {
                format!(
                    "[{}] disable_snapshot_annotations was {old}: set to true, since on \
                     containerd 2.1+ false sends CRI's pulls down the local path, where the \
                     transfer-path settings do not apply (pass --local-pull to pull that way)",
                    cri.path
                )
            });
            if cri.value("use_local_image_pull")?.is_some() {
                let set = cri.ensure("use_local_image_pull", false, "")?;
                note_replaced(notes, set, |old| {
                    format!(
                        "[{}] use_local_image_pull was {old}: set to false for the transfer \
                         path (pass --local-pull to keep the local path)",
                        cri.path
                    )
                });
            }
        }
    }
    if path == Some(PullPath::Local) {
        let set = cri.ensure(
            "use_local_image_pull",
            true,
            "Pull with containerd's client code (the local path) instead of the transfer service,\n\
             so that disable_snapshot_annotations = false above passes the labels.",
        )?;
        note_replaced(notes, set, |old| {
            format!(
                "[{}] use_local_image_pull was {old}: set to true for the local path",
                cri.path
            )
        });
    }
    Ok(())
}

/// CRI's registry `config_path`, where `shoald hosts` writes, when the file names none and
/// containerd has no default.
fn registry_config_path(
    root: &mut Table,
    schema: Schema,
    version: ContainerdVersion,
    notes: &mut Vec<String>,
) -> Result<(), ContainerdConfigError> {
    let path = schema.cri_registry_table();
    let registry = edit::find(root, path)?;
    if registry.is_some_and(|r| r.contains_key("config_path")) {
        return Ok(());
    }
    if let Some(legacy) = LEGACY_REGISTRY.into_iter().find(|k| non_empty(registry, k)) {
        notes.push(format!(
            "config_path not set: [{}] has the deprecated `{legacy}`, which containerd does not \
             combine with config_path; until they move to hosts.toml files under {HOSTS_DIR} \
             (and config_path is set), CRI does not use shoald's registry mirror",
            edit::dotted(path)
        ));
        return Ok(());
    }
    if default_hosts_config_path(version).is_some() {
        return Ok(());
    }
    let mut registry = edit::table(
        root,
        path,
        "Where CRI reads per-registry host configuration (mirrors, plain HTTP, CAs):\n\
         <config_path>/<registry host>/hosts.toml. shoald's registry mirror is an entry there,\n\
         first (`shoald hosts` writes it for every configured registry and _default).",
    )?;
    registry.ensure(
        "config_path",
        HOSTS_DIR,
        "containerd before 2.2 has no default: without it CRI reads no hosts.toml at all.",
    )?;
    Ok(())
}

/// The transfer path (2.1+): the labels exported to the unpacker, and shoal (with overlayfs)
/// in the transfer service's unpack configurations.
fn transfer_unpack(
    root: &mut Table,
    platform: &str,
    notes: &mut Vec<String>,
) -> Result<(), ContainerdConfigError> {
    let mut exports = edit::table(
        root,
        &["proxy_plugins", SNAPSHOTTER, "exports"],
        "Read by containerd, not by shoald: on the transfer path, the unpacker passes the image\n\
         and layer annotations (cri.layer-digest, cri.image-ref, cri.manifest-digest,\n\
         cri.image-layers) as labels on Prepare only to a snapshotter exporting this.",
    )?;
    let set = exports.ensure(
        REMOTE_ANNOTATIONS_EXPORT,
        "true",
        "Pass the cri.* labels on Prepare (the transfer path's disable_snapshot_annotations = false).",
    )?;
    note_replaced(notes, set, |old| {
        format!(
            "[{}] {REMOTE_ANNOTATIONS_EXPORT} was {old}: set to \"true\", shoal needs the \
             image and layer annotations as labels on Prepare",
            exports.path
        )
    });
    let had_list = edit::find(root, &["plugins", TRANSFER_PLUGIN])?
        .is_some_and(|t| t.contains_key("unpack_config"));
    let mut transfer = edit::table(
        root,
        &["plugins", TRANSFER_PLUGIN],
        "The transfer service (CRI pulls through it from containerd 2.1).",
    )?;
    let list_path = format!("{}.unpack_config", transfer.path);
    let mut list = transfer.tables_array("unpack_config")?;
    let ours = platform_key(platform);
    let listed = |list: &edit::Tables<'_>, snapshotter: &str| {
        list.strings("platform")
            .into_iter()
            .zip(list.strings("snapshotter"))
            .any(|(p, s)| {
                s.as_deref() == Some(snapshotter) && p.is_some_and(|p| platform_key(&p) == ours)
            })
    };
    if !listed(&list, OVERLAYFS) {
        list.push(
            &[
                ("platform", platform),
                ("snapshotter", OVERLAYFS),
                ("differ", WALKING),
            ],
            "The transfer service unpacks a pulled image only for a (platform, snapshotter) listed\n\
             here, and a list replaces containerd's default one (overlayfs, for this platform):\n\
             overlayfs stays listed for everything not pulled into shoal.",
        );
        if had_list {
            notes.push(format!(
                "added {OVERLAYFS} for {platform} to {list_path}: a list there replaces \
                 containerd's default one, and without it images pulled for {OVERLAYFS} through \
                 the transfer service would not be unpacked"
            ));
        }
    }
    if !listed(&list, SNAPSHOTTER) {
        list.push(
            &[
                ("platform", platform),
                ("snapshotter", SNAPSHOTTER),
                ("differ", WALKING),
            ],
            "CRI's pulls into shoal (`snapshotter = \"shoal\"`) on the transfer path.",
        );
    }
    Ok(())
}

/// containerd's default differ on Linux, as in its default unpack configuration.
const WALKING: &str = "walking";
