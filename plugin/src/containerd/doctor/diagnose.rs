//! The doctor's judgement: [`diagnose`] turns [`Facts`] into a [`Report`], with no I/O.
//!
//! What containerd really does comes first from its socket (ImageFsInfo names CRI's
//! snapshotter on every version, introspection the proxy plugin's exports and capabilities,
//! 1.x's verbose CRI status its image settings); the config file fills in what the socket does
//! not tell (2.x's image settings, the transfer service's unpack configuration), read the way
//! the running version reads it (2.x migrates a version-2 file).

use std::fmt;

use super::facts::{Facts, FileFacts, HostsFile, PluginFact, Probe, StatusConfig};
use crate::containerd::{
    default_hosts_config_path, ContainerdVersion, Schema, DEFAULT_SNAPSHOTTER,
    REMOTE_ANNOTATIONS_EXPORT, SNAPSHOTTER_NAME, SNAPSHOT_PLUGIN_TYPE, TRANSFER_PLUGIN,
};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        })
    }
}

/// One line of the report, with what to change when it is not ok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub level: Level,
    pub text: String,
    pub fix: Vec<String>,
}

/// How CRI pulls reach shoal, if they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Layers stream into shoal's snapshotter (labels reach it).
    Streaming,
    /// Layers come through shoald's registry mirror (first in every hosts.toml).
    Mirror,
    /// Both.
    Both,
    /// Neither: CRI pulls do not use shoal.
    Neither,
}

/// The doctor's findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
    pub verdict: Verdict,
}

impl Report {
    /// 0 when CRI pulls use shoal, 1 when they do not.
    pub fn exit_code(&self) -> i32 {
        match self.verdict {
            Verdict::Neither => 1,
            _ => 0,
        }
    }

    /// The first check at `level` whose text contains `needle` (for tests and callers).
    pub fn find(&self, level: Level, needle: &str) -> Option<&Check> {
        self.checks
            .iter()
            .find(|c| c.level == level && c.text.contains(needle))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(f, "{:<4} {}", c.level.to_string(), c.text)?;
            for line in &c.fix {
                writeln!(f, "       {line}")?;
            }
        }
        Ok(())
    }
}

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
pub fn first_host(text: &str) -> Result<Option<String>, String> {
    let doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("not TOML: {e}"))?;
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

const RESTART: &str = "then restart containerd (`systemctl restart containerd`)";

/// Whether a check's problem stops one pull path.
#[derive(Clone, Copy)]
enum Blocks {
    No,
    /// A FAIL, a warning when the other path carries the pulls.
    Yes,
    /// A FAIL, fine when the other path carries the pulls (the mirror being off).
    Quietly,
}

/// Which pull path a check is about.
#[derive(Clone, Copy)]
enum On {
    All,
    Streaming,
    Mirror,
}

/// The report's lines in order, each with the path it concerns.
#[derive(Default)]
struct Lines(Vec<(On, Blocks, Check)>);

impl Lines {
    fn general(&mut self, c: Check) {
        self.0.push((On::All, Blocks::No, c));
    }

    fn streaming(&mut self, (b, c): (Blocks, Check)) {
        self.0.push((On::Streaming, b, c));
    }

    fn mirror(&mut self, (b, c): (Blocks, Check)) {
        self.0.push((On::Mirror, b, c));
    }
}

/// Judges the facts.
pub fn diagnose(facts: &Facts) -> Report {
    let v = facts.version;
    let file_path = facts.file.path.display().to_string();
    let content = facts.file.content.as_ref();
    let file_s = file_settings(v, &facts.file);
    let status = facts.cri.status_config.as_ref();
    let plugin = facts
        .plugins
        .iter()
        .find(|p| p.kind == SNAPSHOT_PLUGIN_TYPE && p.id == SNAPSHOTTER_NAME);
    // In report order; checks on one path get their level once both paths are known.
    let mut lines = Lines::default();
    let ok = |text: String| Check {
        level: Level::Ok,
        text,
        fix: vec![],
    };
    let bad = |level: Level, text: String, fix: Vec<String>| Check { level, text, fix };
    let containerd_config = format!(
        "run `shoald containerd-config` and merge its output (the settings for containerd {v}) into {file_path}"
    );
    let and_restart = format!("{containerd_config}, {RESTART}");

    // containerd itself.
    if v.supported() {
        let path = if v.cri_pulls_via_transfer() {
            "CRI pulls through the transfer service unless a setting forces the local path"
        } else {
            "CRI pulls and unpacks itself"
        };
        lines.general(ok(format!(
            "containerd {v} on {} (config schema {}; {path})",
            facts.address.display(),
            v.schema().number()
        )));
    } else {
        lines.general(bad(
            Level::Fail,
            format!("containerd {v} is older than 1.6, which shoal does not support"),
            vec!["upgrade containerd to 1.7 or 2.x".into()],
        ));
    }

    // The config file: which one, how this version reads it.
    match content {
        None => lines.general(bad(
            Level::Warn,
            format!("{file_path} does not exist: assuming containerd runs on its defaults"),
            vec![format!(
                "if containerd was started with another --config, pass it as --containerd-config; otherwise {containerd_config}"
            )],
        )),
        Some(c) => {
            if !c.imports.is_empty() {
                lines.general(bad(
                    Level::Warn,
                    format!(
                        "{file_path} imports {}: the doctor does not read imported files, so settings there are not checked (what containerd's socket reports still is)",
                        c.imports.join(", ")
                    ),
                    vec!["keep shoal's settings in the main file, or check the imported ones by hand".into()],
                ));
            }
            match (v.schema(), c.version) {
                (Schema::V3, Some(2)) => {
                    let dropped = if file_s.dropped_by_migration.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", and drops {} from [plugins.\"io.containerd.grpc.v1.cri\".containerd] (2.x moves those only when that table also has runtimes)",
                            file_s.dropped_by_migration.join(", ")
                        )
                    };
                    lines.general(bad(
                        Level::Warn,
                        format!("{file_path} is a version 2 file: containerd {v} migrates it at every start{dropped}"),
                        vec!["write a version 3 file".into(), and_restart.clone()],
                    ));
                }
                (Schema::V2, Some(3)) => lines.general(bad(
                    Level::Warn,
                    format!("{file_path} is a version 3 file, which containerd {v} does not read: it is not the file containerd loaded"),
                    vec![and_restart.clone()],
                )),
                (_, None) | (_, Some(..=1)) => lines.general(bad(
                    Level::Warn,
                    format!("{file_path} is a version 1 file: the doctor reads versions 2 and 3 only, so its settings are taken as containerd's defaults"),
                    vec![and_restart.clone()],
                )),
                _ => lines.general(ok(format!(
                    "{file_path}: config version {} as containerd {v} expects",
                    v.schema().number()
                ))),
            }
        }
    }

    // shoald's proxy snapshotter.
    let caps: Vec<String> = match plugin {
        Some(p) => p.capabilities.clone(),
        None => content
            .and_then(|c| c.proxy.as_ref())
            .map(|p| p.capabilities.clone())
            .unwrap_or_default(),
    };
    let plugin_ok = match plugin {
        None => {
            let in_file = content.is_some_and(|c| c.proxy.is_some());
            let why = if in_file {
                format!("{file_path} has [proxy_plugins.{SNAPSHOTTER_NAME}], so containerd was started before it was added or with another file")
            } else {
                format!("{file_path} has no [proxy_plugins.{SNAPSHOTTER_NAME}]")
            };
            lines.streaming((
                Blocks::Yes,
                bad(
                    Level::Fail,
                    format!("shoal is not registered as a proxy snapshotter in containerd: {why}"),
                    vec![and_restart.clone()],
                ),
            ));
            false
        }
        Some(p) => match &p.init_error {
            Some(e) => {
                lines.streaming((
                    Blocks::Yes,
                    bad(
                        Level::Fail,
                        format!("containerd's proxy snapshotter {SNAPSHOTTER_NAME} failed to load: {e}"),
                        vec![format!("check [proxy_plugins.{SNAPSHOTTER_NAME}] in {file_path} (type = \"snapshot\", address = shoald's socket), start shoald, {RESTART}")],
                    ),
                ));
                false
            }
            None => {
                lines.streaming((
                    Blocks::No,
                    ok(format!(
                        "shoal is registered as a proxy snapshotter and loaded (address {})",
                        p.exports.get("address").map_or("?", String::as_str)
                    )),
                ));
                true
            }
        },
    };
    let socket_ok = match &facts.shoal_socket {
        Some(Probe::Answers) => {
            lines.streaming((Blocks::No, ok("shoald's snapshotter socket answers".into())));
            true
        }
        Some(Probe::Fails(why)) => {
            lines.streaming((
                Blocks::Yes,
                bad(
                    Level::Fail,
                    format!("shoald's snapshotter socket does not answer: {why}"),
                    vec!["start shoald (`systemctl start shoald`); its --address must be the proxy plugin's address".into()],
                ),
            ));
            false
        }
        None => false,
    };

    // CRI: is it there, which snapshotter does it really use.
    let cri_ok = match &facts.cri.unavailable {
        Some(why) => {
            let failed: Vec<String> = facts
                .plugins
                .iter()
                .filter(|p| p.init_error.is_some())
                .filter(|p| {
                    p.kind.starts_with("io.containerd.cri.")
                        || (p.kind == "io.containerd.grpc.v1" && p.id == "cri")
                        || format!("{}.{}", p.kind, p.id) == TRANSFER_PLUGIN
                })
                .map(|p| {
                    format!(
                        "{}.{} failed to load: {}",
                        p.kind,
                        p.id,
                        p.init_error.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            let mut fix = failed;
            fix.push(format!(
                "make sure the CRI plugin is not in disabled_plugins of {file_path}, {RESTART}"
            ));
            lines.general(bad(
                Level::Fail,
                format!(
                    "containerd's CRI does not answer on {}: {why}",
                    facts.address.display()
                ),
                fix,
            ));
            false
        }
        None => true,
    };
    let running = facts
        .cri
        .image_fs_mountpoint
        .as_deref()
        .and_then(|m| snapshotter_of_mountpoint(m, &facts.plugins))
        .or_else(|| status.and_then(|s| s.snapshotter.clone()));
    let cri_snapshotter = running
        .clone()
        .unwrap_or_else(|| file_s.snapshotter.clone());
    // 1.x tells its image settings; 2.x's come from the file.
    let annotations_disabled = status
        .and_then(|s| s.disable_snapshot_annotations)
        .unwrap_or(file_s.disable_snapshot_annotations);
    let discard = status
        .and_then(|s| s.discard_unpacked_layers)
        .unwrap_or(file_s.discard_unpacked_layers);
    let config_path = effective_config_path(v, &facts.file, status);

    // Is the file what containerd loaded?
    let mut differs = Vec::new();
    if let Some(r) = &running {
        if *r != file_s.snapshotter {
            differs.push(format!(
                "CRI's snapshotter is {r}, the file makes it {}",
                file_s.snapshotter
            ));
        }
    }
    if let Some(s) = status {
        if s.disable_snapshot_annotations
            .is_some_and(|d| d != file_s.disable_snapshot_annotations)
        {
            differs.push(format!(
                "disable_snapshot_annotations is {annotations_disabled}, the file makes it {}",
                file_s.disable_snapshot_annotations
            ));
        }
        if s.discard_unpacked_layers
            .is_some_and(|d| d != file_s.discard_unpacked_layers)
        {
            differs.push(format!(
                "discard_unpacked_layers is {discard}, the file makes it {}",
                file_s.discard_unpacked_layers
            ));
        }
        if s.config_path
            .as_ref()
            .is_some_and(|p| *p != file_s.config_path)
        {
            differs.push(format!(
                "config_path is {config_path:?}, the file makes it {:?}",
                file_s.config_path
            ));
        }
    }
    if plugin.is_some() != content.is_some_and(|c| c.proxy.is_some()) {
        differs.push(format!(
            "[proxy_plugins.{SNAPSHOTTER_NAME}] is {} containerd, {} the file",
            if plugin.is_some() { "in" } else { "not in" },
            if plugin.is_some() { "not in" } else { "in" },
        ));
    }
    if !differs.is_empty() && cri_ok {
        lines.general(bad(
            Level::Warn,
            format!(
                "{file_path} is not what containerd loaded: {}",
                differs.join("; ")
            ),
            vec![
                format!("restart containerd to load {file_path}, or pass the file it was started with as --containerd-config"),
                "below, what containerd reports wins; the rest comes from the file".into(),
            ],
        ));
    }

    let is_shoal = cri_snapshotter == SNAPSHOTTER_NAME;
    let where_seen = match &facts.cri.image_fs_mountpoint {
        Some(m) => format!("image filesystem {m}"),
        None if running.is_some() => "CRI's status".to_owned(),
        None => format!("from {file_path}"),
    };
    if cri_ok {
        if is_shoal {
            lines.streaming((
                Blocks::No,
                ok(format!(
                    "CRI's snapshotter is {SNAPSHOTTER_NAME} ({where_seen})"
                )),
            ));
        } else {
            let mut fix = Vec::new();
            if file_s.snapshotter == SNAPSHOTTER_NAME {
                fix.push(format!(
                    "{file_path} says snapshotter = \"{SNAPSHOTTER_NAME}\": {RESTART} to load it"
                ));
            } else if file_s
                .dropped_by_migration
                .iter()
                .any(|d| d.starts_with("snapshotter"))
            {
                fix.push(format!(
                    "containerd {v} ignores the version 2 file's snapshotter: write a version 3 file"
                ));
                fix.push(and_restart.clone());
            } else {
                fix.push(format!(
                    "set snapshotter = \"{SNAPSHOTTER_NAME}\" in [{}]",
                    file_s.table
                ));
                fix.push(and_restart.clone());
            }
            lines.streaming((
                Blocks::Yes,
                bad(
                    Level::Fail,
                    format!("CRI's snapshotter is {cri_snapshotter}, not {SNAPSHOTTER_NAME} ({where_seen}): CRI pulls do not stream through shoal"),
                    fix,
                ),
            ));
        }
    }

    // The pull path and whether the labels reach shoal on it.
    let running_s = ImageSettings {
        disable_snapshot_annotations: annotations_disabled,
        discard_unpacked_layers: discard,
        ..file_s.clone()
    };
    let path = pull_path(v, &running_s);
    let transfer = facts
        .file
        .content
        .as_ref()
        .map(|c| c.transfer.clone())
        .unwrap_or_default();
    let source = if status
        .and_then(|s| s.disable_snapshot_annotations)
        .is_some()
    {
        "CRI's status".to_owned()
    } else {
        file_path.clone()
    };
    let labels_ok = match &path {
        PullPath::Local(why) => {
            lines.general(ok(format!("CRI pull path: local ({why})")));
            if annotations_disabled {
                lines.streaming((
                    Blocks::Yes,
                    bad(
                        Level::Fail,
                        format!("the cri.* labels do not reach shoal: disable_snapshot_annotations is true ({source}), so shoal gets no layer digests and behaves like overlayfs (no streaming)"),
                        vec![
                            format!("set disable_snapshot_annotations = false in [{}]", file_s.table),
                            and_restart.clone(),
                        ],
                    ),
                ));
                false
            } else {
                lines.streaming((
                    Blocks::No,
                    ok(
                        "the cri.* labels reach shoal (disable_snapshot_annotations = false)"
                            .into(),
                    ),
                ));
                true
            }
        }
        PullPath::Transfer => {
            lines.general(ok(
                "CRI pull path: transfer service (no setting forces the local path)".into(),
            ));
            let export = match plugin {
                Some(p) => p.exports.get(REMOTE_ANNOTATIONS_EXPORT).cloned(),
                None => content
                    .and_then(|c| c.proxy.as_ref())
                    .and_then(|p| p.exports.get(REMOTE_ANNOTATIONS_EXPORT).cloned()),
            };
            let export_ok = export.as_deref() == Some("true");
            if !export_ok {
                lines.streaming((
                    Blocks::Yes,
                    bad(
                        Level::Fail,
                        format!("the cri.* labels do not reach shoal on the transfer path: shoal does not export {REMOTE_ANNOTATIONS_EXPORT} = \"true\", so it behaves like overlayfs (no streaming)"),
                        vec![
                            format!("add [proxy_plugins.{SNAPSHOTTER_NAME}.exports] {REMOTE_ANNOTATIONS_EXPORT} = \"true\""),
                            and_restart.clone(),
                        ],
                    ),
                ));
            }
            let entries = transfer.unpack_config.clone();
            let has_shoal = match &entries {
                None => false,
                Some(e) => e
                    .iter()
                    .any(|u| u.snapshotter.as_deref() == Some(SNAPSHOTTER_NAME)),
            };
            if !has_shoal {
                let why = match &entries {
                    None => "has no unpack_config, so it unpacks into overlayfs only".to_owned(),
                    Some(e) if e.is_empty() => {
                        "has an empty unpack_config, so it unpacks nothing".to_owned()
                    }
                    Some(_) => format!("has no unpack_config entry for {SNAPSHOTTER_NAME}"),
                };
                let hurts = if is_shoal {
                    "CRI pulls with snapshotter shoal are not unpacked at all (containerd logs \"Unpack configuration not supported, skipping\")"
                } else {
                    "pulls into shoal would not be unpacked"
                };
                lines.streaming((
                    Blocks::Yes,
                    bad(
                        Level::Fail,
                        format!("the transfer service ({file_path}, [plugins.\"{TRANSFER_PLUGIN}\"]) {why}: {hurts}"),
                        vec![
                            format!("add [[plugins.\"{TRANSFER_PLUGIN}\".unpack_config]] entries for snapshotter = \"{SNAPSHOTTER_NAME}\" and \"{DEFAULT_SNAPSHOTTER}\" (platform = this node's, e.g. \"linux/amd64\")"),
                            and_restart.clone(),
                        ],
                    ),
                ));
            }
            if export_ok && has_shoal {
                lines.streaming((
                    Blocks::No,
                    ok(format!("the cri.* labels reach shoal on the transfer path ({REMOTE_ANNOTATIONS_EXPORT} = \"true\", shoal in unpack_config)")),
                ));
            }
            export_ok && has_shoal
        }
    };

    // Settings that change what shoal does.
    let parallel_unpacks = transfer.max_concurrent_unpacks.unwrap_or(1);
    let rebase_active = v.can_rebase() && path == PullPath::Transfer && parallel_unpacks > 1;
    let has_rebase = caps.iter().any(|c| c == "rebase");
    let remove_rebase = format!(
        "remove \"rebase\" from [proxy_plugins.{SNAPSHOTTER_NAME}] capabilities, {RESTART}"
    );
    if has_rebase && rebase_active {
        lines.streaming((
            Blocks::Yes,
            bad(
                Level::Fail,
                format!("shoal declares capability rebase and containerd {v} unpacks in parallel (max_concurrent_unpacks = {parallel_unpacks}): layers are prepared with an empty parent and get their parent at Commit, which shoal does not support (its ALREADY_EXISTS answer cannot match containerd's lookup)"),
                vec![remove_rebase],
            ),
        ));
    } else if has_rebase {
        let why = if !v.can_rebase() {
            format!("containerd {v} does not rebase")
        } else if path != PullPath::Transfer {
            "CRI pulls on the local path".to_owned()
        } else {
            "max_concurrent_unpacks is 1".to_owned()
        };
        lines.general(bad(
            Level::Warn,
            format!("shoal declares capability rebase, unused now ({why}), but shoal does not support rebasing: with containerd 2.2+, the transfer path and max_concurrent_unpacks > 1 pulls would break"),
            vec![remove_rebase],
        ));
    } else if v.can_rebase() {
        lines.general(ok(
            "shoal has no rebase capability: containerd unpacks its layers one on another".into(),
        ));
    }
    if discard {
        lines.general(ok("discard_unpacked_layers = true: containerd drops layer blobs after unpacking; shoal's snapshots and blob cache do not depend on them".into()));
    }

    // The mirror path.
    let sh = &facts.shoald;
    let hosts_dir = sh.hosts_dir.display().to_string();
    let first_root = config_path.split(':').next().unwrap_or_default().to_owned();
    let run_hosts = if first_root.is_empty() || first_root == hosts_dir {
        "run `shoald hosts`".to_owned()
    } else {
        format!("run `shoald hosts --dir {first_root}`")
    };
    let mut mirror_ok = cri_ok;
    if !sh.mirror_enabled {
        mirror_ok = false;
        lines.mirror((
            Blocks::Quietly,
            bad(
                Level::Fail,
                "shoald's registry mirror is off ([mirror] enabled = false in shoald's config)"
                    .into(),
                vec![format!(
                    "set [mirror] enabled = true in shoald's config, restart shoald, {run_hosts}"
                )],
            ),
        ));
    } else {
        match &sh.mirror_listening {
            Some(Probe::Fails(why)) => {
                mirror_ok = false;
                lines.mirror((
                    Blocks::Yes,
                    bad(
                        Level::Fail,
                        format!(
                            "shoald's mirror does not answer on {}: {why}; containerd skips it",
                            sh.mirror_url
                        ),
                        vec!["start shoald (`systemctl start shoald`)".into()],
                    ),
                ));
            }
            Some(Probe::Answers) => lines.mirror((
                Blocks::No,
                ok(format!("shoald's mirror answers on {}", sh.mirror_url)),
            )),
            None => {}
        }
        if config_path.is_empty() {
            mirror_ok = false;
            lines.mirror((
                Blocks::Yes,
                bad(
                    Level::Fail,
                    format!(
                        "CRI reads no hosts.toml: config_path is not set in [{}.registry]",
                        file_s.table
                    ),
                    vec![
                        format!("set config_path = \"{hosts_dir}\" there"),
                        format!("{and_restart}, then run `shoald hosts`"),
                    ],
                ),
            ));
        } else {
            for h in &facts.hosts {
                let (good, check) = hosts_check(h, &sh.mirror_url, &config_path, &run_hosts);
                mirror_ok &= good;
                lines.mirror((if good { Blocks::No } else { Blocks::Yes }, check));
            }
        }
    }

    let streaming_ok =
        cri_ok && is_shoal && plugin_ok && socket_ok && labels_ok && !(has_rebase && rebase_active);
    let verdict = match (streaming_ok, mirror_ok) {
        (true, true) => Verdict::Both,
        (true, false) => Verdict::Streaming,
        (false, true) => Verdict::Mirror,
        (false, false) => Verdict::Neither,
    };
    // A problem on one path is a warning when the other path carries the pulls.
    let mut checks: Vec<Check> = lines
        .0
        .into_iter()
        .map(|(on, blocks, mut c)| {
            let other_ok = match on {
                On::All => false,
                On::Streaming => mirror_ok,
                On::Mirror => streaming_ok,
            };
            if other_ok && c.level == Level::Fail {
                match blocks {
                    Blocks::No => {}
                    Blocks::Yes => c.level = Level::Warn,
                    Blocks::Quietly => {
                        c.level = Level::Ok;
                        c.fix.clear();
                    }
                }
            }
            c
        })
        .collect();
    checks.push(match verdict {
        Verdict::Streaming | Verdict::Both => ok(format!(
            "CRI pulls use shoal: layers stream into its snapshotter{}",
            if verdict == Verdict::Both { " (and the mirror is first in hosts.toml)" } else { "" }
        )),
        Verdict::Mirror => ok(format!(
            "CRI pulls use shoal: layers come through shoald's mirror (CRI's snapshotter is {cri_snapshotter})"
        )),
        Verdict::Neither => bad(
            Level::Fail,
            "CRI pulls do not use shoal".into(),
            vec!["fix the FAIL lines above: the snapshotter path or the mirror path is enough".into()],
        ),
    });
    Report { checks, verdict }
}

/// Whether shoald's mirror is first in the hosts.toml containerd reads for `h`.
fn hosts_check(
    h: &HostsFile,
    mirror_url: &str,
    config_path: &str,
    run_hosts: &str,
) -> (bool, Check) {
    let fail = |text: String| {
        (
            false,
            Check {
                level: Level::Fail,
                text,
                fix: vec![run_hosts.to_owned()],
            },
        )
    };
    let ns = &h.namespace;
    let Some(dir) = &h.dir else {
        return fail(format!(
            "{ns}: no hosts.toml under config_path {config_path:?}: containerd goes to the registry, not the mirror"
        ));
    };
    let file = dir.join("hosts.toml");
    let Some(text) = &h.text else {
        return fail(format!(
            "{ns}: {} has no hosts.toml: containerd goes to the registry, not the mirror",
            dir.display()
        ));
    };
    let via = match dir.file_name().and_then(|n| n.to_str()) {
        Some(n) if n != ns => format!(" (through {n})"),
        _ => String::new(),
    };
    let norm = |s: &str| s.trim_end_matches('/').to_owned();
    match first_host(text) {
        Err(e) => fail(format!("{ns}: {} is {e}", file.display())),
        Ok(Some(first)) if norm(&first) == norm(mirror_url) => (
            true,
            Check {
                level: Level::Ok,
                text: format!("{ns}: shoald's mirror is first in {}{via}", file.display()),
                fix: vec![],
            },
        ),
        Ok(Some(first)) => fail(format!(
            "{ns}: {} tries {first} first, not shoald's mirror {mirror_url}{via}",
            file.display()
        )),
        Ok(None) => fail(format!(
            "{ns}: {} lists no host: containerd goes to the registry{via}",
            file.display()
        )),
    }
}
