//! The doctor's judgement: [`diagnose`] turns [`Facts`] into a [`Report`], with no I/O.
//!
//! What containerd really does comes first from its socket (ImageFsInfo names CRI's
//! snapshotter on every version, introspection the proxy plugin's exports and capabilities,
//! 1.x's verbose CRI status its image settings); the config file fills in what the socket does
//! not tell (2.x's image settings, the transfer service's unpack configuration), read the way
//! the running version reads it (2.x migrates a version-2 file).

use super::facts::{Facts, Probe};
use super::report::{Check, Level, Report, Verdict};
use super::settings::{
    effective_config_path, file_settings, pull_path, snapshotter_of_mountpoint, ImageSettings,
    PullPath,
};
use crate::containerd::{
    Schema, DEFAULT_SNAPSHOTTER, REMOTE_ANNOTATIONS_EXPORT, SNAPSHOTTER_NAME, SNAPSHOT_PLUGIN_TYPE,
    TRANSFER_PLUGIN,
};

const RESTART: &str = "then restart containerd (`systemctl restart containerd`)";

/// Whether a check's problem stops one pull path.
#[derive(Clone, Copy)]
pub(super) enum Blocks {
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
pub(super) struct Lines(Vec<(On, Blocks, Check)>);

impl Lines {
    fn general(&mut self, c: Check) {
        self.0.push((On::All, Blocks::No, c));
    }

    fn streaming(&mut self, (b, c): (Blocks, Check)) {
        self.0.push((On::Streaming, b, c));
    }

    pub(super) fn mirror(&mut self, (b, c): (Blocks, Check)) {
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
        "run `shoald containerd-config --file {file_path}` (it adds the settings containerd {v} needs, keeping the rest of the file)"
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
                        vec![
                            format!("migrate it to version 3 first: `containerd --config {file_path} config migrate > {file_path}.v3`, check it, move it to {file_path}"),
                            and_restart.clone(),
                        ],
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
    let mirror_ok = cri_ok
        && super::mirror_checks::mirror_checks(
            facts,
            &config_path,
            &file_s.table,
            &and_restart,
            &mut lines,
        );

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
