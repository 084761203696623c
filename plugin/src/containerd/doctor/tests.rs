//! [`diagnose`] on facts built from config text, one scenario per containerd setup.

use std::path::{Path, PathBuf};

use super::*;
use crate::containerd::ContainerdVersion;

const FILE: &str = "/etc/containerd/config.toml";
const ROOT: &str = "/var/lib/containerd";
const SOCK: &str = "/run/shoal/shoald.sock";

/// The sections of the 1.6 example (`config.toml.example` before schema 3 support).
const OLD_EXAMPLE: &str = r#"
version = 2
[proxy_plugins.shoal]
  type = "snapshot"
  address = "/run/shoal/shoald.sock"
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "shoal"
  disable_snapshot_annotations = false
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
"#;

/// Schema 3 for the 2.1+ transfer path.
const TRANSFER: &str = r#"
version = 3
[proxy_plugins.shoal]
  type = "snapshot"
  address = "/run/shoal/shoald.sock"
  [proxy_plugins.shoal.exports]
    enable_remote_snapshot_annotations = "true"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "shoal"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "/etc/containerd/certs.d"
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/amd64"
  snapshotter = "shoal"
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/amd64"
  snapshotter = "overlayfs"
"#;

fn plugin(kind: &str, id: &str, exports: &[(&str, &str)]) -> PluginFact {
    PluginFact {
        kind: kind.into(),
        id: id.into(),
        exports: exports
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

/// What containerd's introspection lists for a file: overlayfs, and shoal with the file's
/// exports and capabilities (as containerd loads them, `address` added).
fn plugins_for(file: &ContainerdFile) -> Vec<PluginFact> {
    let mut out = vec![plugin(
        "io.containerd.snapshotter.v1",
        "overlayfs",
        &[(
            "root",
            &format!("{ROOT}/io.containerd.snapshotter.v1.overlayfs"),
        )],
    )];
    if let Some(p) = &file.proxy {
        let mut shoal = plugin(
            "io.containerd.snapshotter.v1",
            "shoal",
            &[("address", SOCK)],
        );
        shoal.exports.extend(p.exports.clone());
        shoal.capabilities = p.capabilities.clone();
        out.push(shoal);
    }
    out
}

fn mountpoint(snapshotter: &str) -> String {
    format!("{ROOT}/io.containerd.snapshotter.v1.{snapshotter}")
}

/// Facts for containerd `version` that loaded exactly `text`: CRI's snapshotter (and on 1.x
/// its status) as containerd would derive them from the file.
fn facts(version: &str, text: &str) -> Facts {
    let version: ContainerdVersion = version.parse().unwrap();
    let content = ContainerdFile::parse(text, Path::new(FILE)).unwrap();
    let file = FileFacts {
        path: PathBuf::from(FILE),
        content: Some(content.clone()),
    };
    let s = file_settings(version, &file);
    let status_config = StatusConfig {
        containerd_root_dir: Some(ROOT.into()),
        ..Default::default()
    };
    let status_config = if version.major < 2 {
        StatusConfig {
            snapshotter: Some(s.snapshotter.clone()),
            disable_snapshot_annotations: Some(s.disable_snapshot_annotations),
            discard_unpacked_layers: Some(s.discard_unpacked_layers),
            config_path: Some(s.config_path.clone()),
            ..status_config
        }
    } else {
        status_config
    };
    Facts {
        address: PathBuf::from("/run/containerd/containerd.sock"),
        version,
        plugins: plugins_for(&content),
        cri: CriFacts {
            unavailable: None,
            image_fs_mountpoint: Some(mountpoint(&s.snapshotter)),
            status_config: Some(status_config),
        },
        shoal_socket: Some(Probe::Answers),
        file,
        shoald: ShoaldFacts {
            mirror_enabled: false,
            mirror_url: "http://127.0.0.1:7075".into(),
            mirror_listening: None,
            hosts_dir: PathBuf::from("/etc/containerd/certs.d"),
        },
        hosts: vec![],
    }
}

#[track_caller]
fn expect(report: &Report, level: Level, needle: &str) -> Check {
    report
        .find(level, needle)
        .unwrap_or_else(|| panic!("no {level} line with {needle:?} in:\n{report}"))
        .clone()
}

#[test]
fn containerd_1_6_and_1_7_with_the_old_example_stream() {
    for v in ["1.6.20", "1.7.24"] {
        let r = diagnose(&facts(v, OLD_EXAMPLE));
        assert_eq!(r.verdict, Verdict::Streaming, "{r}");
        assert_eq!(r.exit_code(), 0);
        assert!(!r.checks.iter().any(|c| c.level != Level::Ok), "{r}");
        expect(&r, Level::Ok, "CRI's snapshotter is shoal");
        expect(&r, Level::Ok, "CRI pull path: local");
        expect(&r, Level::Ok, "labels reach shoal");
        // The mirror being off is fine when the snapshotter path works.
        expect(&r, Level::Ok, "mirror is off");
    }
}

#[test]
fn containerd_2_1_with_the_old_example_does_not_use_shoal() {
    let f = facts("2.1.9", OLD_EXAMPLE);
    // containerd 2.x's migration dropped snapshotter and disable_snapshot_annotations.
    assert_eq!(
        f.cri.image_fs_mountpoint.as_deref(),
        Some(mountpoint("overlayfs").as_str())
    );
    let r = diagnose(&f);
    assert_eq!(r.verdict, Verdict::Neither, "{r}");
    assert_eq!(r.exit_code(), 1);
    let w = expect(&r, Level::Warn, "is a version 2 file");
    assert!(w.text.contains("snapshotter = \"shoal\""), "{r}");
    assert!(w.fix.join(" ").contains("shoald containerd-config"), "{r}");
    let c = expect(&r, Level::Fail, "CRI's snapshotter is overlayfs, not shoal");
    assert!(c.fix.join(" ").contains("shoald containerd-config"), "{r}");
    // Annotations are disabled again (2.x's default), so CRI takes the transfer path, where
    // shoal has neither the export nor an unpack_config entry.
    expect(&r, Level::Ok, "CRI pull path: transfer service");
    expect(&r, Level::Fail, "do not reach shoal on the transfer path");
    expect(&r, Level::Fail, "has no unpack_config");
    expect(&r, Level::Fail, "CRI pulls do not use shoal");
}

#[test]
fn containerd_2_1_transfer_path_with_exports_and_unpack_config_streams() {
    let r = diagnose(&facts("2.1.9", TRANSFER));
    assert_eq!(r.verdict, Verdict::Streaming, "{r}");
    assert!(!r.checks.iter().any(|c| c.level != Level::Ok), "{r}");
    expect(&r, Level::Ok, "CRI pull path: transfer service");
    expect(&r, Level::Ok, "labels reach shoal on the transfer path");
}

#[test]
fn containerd_2_1_transfer_path_without_the_export_gets_no_labels() {
    let text = TRANSFER.replace("enable_remote_snapshot_annotations = \"true\"", "");
    let r = diagnose(&facts("2.1.9", &text));
    assert_eq!(r.exit_code(), 1, "{r}");
    let c = expect(
        &r,
        Level::Fail,
        "labels do not reach shoal on the transfer path",
    );
    assert!(c.text.contains("behaves like overlayfs"), "{r}");
    assert!(
        c.fix
            .join(" ")
            .contains("enable_remote_snapshot_annotations = \"true\""),
        "{r}"
    );
    // The snapshotter itself is right.
    expect(&r, Level::Ok, "CRI's snapshotter is shoal");
}

#[test]
fn containerd_2_1_transfer_path_without_shoal_in_unpack_config_does_not_unpack() {
    let text = TRANSFER.replace(
        "platform = \"linux/amd64\"\n  snapshotter = \"shoal\"",
        "platform = \"linux/amd64\"\n  snapshotter = \"native\"",
    );
    let r = diagnose(&facts("2.1.9", &text));
    assert_eq!(r.exit_code(), 1, "{r}");
    let c = expect(&r, Level::Fail, "has no unpack_config entry for shoal");
    assert!(c.text.contains("Unpack configuration not supported"), "{r}");
    assert!(c.fix.join(" ").contains("unpack_config"), "{r}");
}

#[test]
fn containerd_2_1_local_path_streams_with_annotations() {
    // use_local_image_pull, or disable_snapshot_annotations = false alone, forces the local
    // path; there the annotations are what counts, not the export.
    for extra in [
        "use_local_image_pull = true\n  disable_snapshot_annotations = false",
        "disable_snapshot_annotations = false",
    ] {
        let text = format!(
            "version = 3\n[proxy_plugins.shoal]\n  type = \"snapshot\"\n  address = \"{SOCK}\"\n\
             [plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"shoal\"\n  {extra}\n"
        );
        let r = diagnose(&facts("2.1.9", &text));
        assert_eq!(r.verdict, Verdict::Streaming, "{r}");
        expect(&r, Level::Ok, "CRI pull path: local");
        expect(
            &r,
            Level::Ok,
            "labels reach shoal (disable_snapshot_annotations = false)",
        );
    }
    // Local path with annotations disabled: no labels.
    let text = format!(
        "version = 3\n[proxy_plugins.shoal]\n  type = \"snapshot\"\n  address = \"{SOCK}\"\n\
         [plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"shoal\"\n  use_local_image_pull = true\n"
    );
    let r = diagnose(&facts("2.1.9", &text));
    assert_eq!(r.exit_code(), 1, "{r}");
    let c = expect(&r, Level::Fail, "disable_snapshot_annotations is true");
    assert!(
        c.fix
            .join(" ")
            .contains("plugins.\"io.containerd.cri.v1.images\""),
        "{r}"
    );
}

#[test]
fn containerd_2_2_with_rebase_and_parallel_unpacks_fails() {
    let text = TRANSFER.replace(
        "  address = \"/run/shoal/shoald.sock\"\n",
        "  address = \"/run/shoal/shoald.sock\"\n  capabilities = [\"rebase\"]\n",
    );
    let parallel = format!(
        "{text}\n[plugins.\"io.containerd.transfer.v1.local\"]\n  max_concurrent_unpacks = 4\n"
    );
    // The table is defined after its array entries: TOML allows that.
    let r = diagnose(&facts("2.2.0", &parallel));
    assert_eq!(r.exit_code(), 1, "{r}");
    let c = expect(&r, Level::Fail, "declares capability rebase");
    assert!(c.text.contains("empty parent"), "{r}");
    assert!(c.fix.join(" ").contains("remove \"rebase\""), "{r}");
    // Sequential unpacks: only a warning, pulls stream.
    let r = diagnose(&facts("2.2.0", &text));
    assert_eq!(r.verdict, Verdict::Streaming, "{r}");
    let w = expect(&r, Level::Warn, "declares capability rebase, unused now");
    assert!(w.text.contains("max_concurrent_unpacks is 1"), "{r}");
    // 2.1 never rebases.
    let r = diagnose(&facts("2.1.9", &parallel));
    assert_eq!(r.verdict, Verdict::Streaming, "{r}");
    expect(&r, Level::Warn, "does not rebase");
    // 2.2 without the capability: fine.
    let r = diagnose(&facts("2.2.0", TRANSFER));
    expect(&r, Level::Ok, "no rebase capability");
}

/// containerd 1.6 on its own overlayfs snapshotter, CRI reading hosts.toml, shoald's mirror
/// on: the mirror path alone.
fn mirror_facts(hosts: Vec<HostsFile>) -> Facts {
    let text = OLD_EXAMPLE.replace("snapshotter = \"shoal\"", "snapshotter = \"overlayfs\"");
    let mut f = facts("1.6.20", &text);
    f.shoald.mirror_enabled = true;
    f.shoald.mirror_listening = Some(Probe::Answers);
    f.hosts = hosts;
    f
}

fn hosts(ns: &str, dir: Option<&str>, text: Option<&str>) -> HostsFile {
    HostsFile {
        namespace: ns.into(),
        dir: dir.map(PathBuf::from),
        text: text.map(str::to_owned),
    }
}

const MIRROR_FIRST: &str = "server = \"https://registry-1.docker.io\"\n\
    [host.\"http://127.0.0.1:7075\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
    [host.\"https://registry-1.docker.io\"]\n  capabilities = [\"pull\", \"resolve\"]\n";

#[test]
fn mirror_first_in_every_hosts_toml_is_enough() {
    let r = diagnose(&mirror_facts(vec![
        hosts(
            "docker.io",
            Some("/etc/containerd/certs.d/docker.io"),
            Some(MIRROR_FIRST),
        ),
        hosts(
            "_default",
            Some("/etc/containerd/certs.d/_default"),
            Some(MIRROR_FIRST),
        ),
    ]));
    assert_eq!(r.verdict, Verdict::Mirror, "{r}");
    assert_eq!(r.exit_code(), 0);
    expect(&r, Level::Ok, "docker.io: shoald's mirror is first");
    // The snapshotter path is not used: a warning, not a failure.
    expect(&r, Level::Warn, "CRI's snapshotter is overlayfs, not shoal");
    expect(&r, Level::Ok, "layers come through shoald's mirror");
    // A registry without a directory of its own goes through _default.
    let r = diagnose(&mirror_facts(vec![hosts(
        "registry.example.com",
        Some("/etc/containerd/certs.d/_default"),
        Some(MIRROR_FIRST),
    )]));
    expect(&r, Level::Ok, "(through _default)");
}

#[test]
fn mirror_not_first_or_hosts_toml_missing_fails() {
    let other_first = "server = \"https://registry-1.docker.io\"\n\
        [host.\"https://mirror.example.com\"]\n  capabilities = [\"pull\"]\n\
        [host.\"http://127.0.0.1:7075\"]\n  capabilities = [\"pull\", \"resolve\"]\n";
    let r = diagnose(&mirror_facts(vec![
        hosts(
            "docker.io",
            Some("/etc/containerd/certs.d/docker.io"),
            Some(other_first),
        ),
        hosts("_default", None, None),
    ]));
    assert_eq!(r.verdict, Verdict::Neither, "{r}");
    let c = expect(&r, Level::Fail, "tries https://mirror.example.com first");
    assert!(c.fix.join(" ").contains("shoald hosts"), "{r}");
    expect(&r, Level::Fail, "_default: no hosts.toml under config_path");
    // A directory without the file.
    let r = diagnose(&mirror_facts(vec![hosts(
        "_default",
        Some("/etc/containerd/certs.d/_default"),
        None,
    )]));
    expect(&r, Level::Fail, "has no hosts.toml");
    // A server-only file: containerd goes to the registry.
    let r = diagnose(&mirror_facts(vec![hosts(
        "_default",
        Some("/d/_default"),
        Some("server = \"https://r\"\n"),
    )]));
    expect(&r, Level::Fail, "tries https://r first");
    // The mirror not listening.
    let mut f = mirror_facts(vec![hosts(
        "_default",
        Some("/d/_default"),
        Some(MIRROR_FIRST),
    )]);
    f.shoald.mirror_listening = Some(Probe::Fails("connection refused".into()));
    let r = diagnose(&f);
    assert_eq!(r.exit_code(), 1, "{r}");
    expect(&r, Level::Fail, "mirror does not answer");
    // No config_path on 1.6: CRI reads no hosts.toml.
    let text = OLD_EXAMPLE
        .replace("snapshotter = \"shoal\"", "snapshotter = \"overlayfs\"")
        .replace("config_path = \"/etc/containerd/certs.d\"", "");
    let mut f = facts("1.6.20", &text);
    f.shoald.mirror_enabled = true;
    let r = diagnose(&f);
    expect(&r, Level::Fail, "CRI reads no hosts.toml");
}

#[test]
fn shoal_plugin_that_failed_to_load_fails() {
    let mut f = facts("1.7.24", OLD_EXAMPLE);
    let shoal = f.plugins.iter_mut().find(|p| p.id == "shoal").unwrap();
    shoal.init_error = Some("dial unix /run/shoal/shoald.sock: connect: no such file".into());
    f.shoal_socket = Some(Probe::Fails("connection refused".into()));
    let r = diagnose(&f);
    assert_eq!(r.exit_code(), 1, "{r}");
    let c = expect(
        &r,
        Level::Fail,
        "proxy snapshotter shoal failed to load: dial unix",
    );
    assert!(c.fix.join(" ").contains("start shoald"), "{r}");
    expect(&r, Level::Fail, "snapshotter socket does not answer");
    // Not registered at all.
    let mut f = facts("1.7.24", OLD_EXAMPLE);
    f.plugins.retain(|p| p.id != "shoal");
    let r = diagnose(&f);
    expect(
        &r,
        Level::Fail,
        "shoal is not registered as a proxy snapshotter",
    );
    // The file has it, containerd does not: the file is not what containerd loaded.
    expect(&r, Level::Warn, "is not what containerd loaded");
}

#[test]
fn image_fs_info_disagreeing_with_the_file_says_the_file_was_not_loaded() {
    let mut f = facts("2.1.9", TRANSFER);
    f.cri.image_fs_mountpoint = Some(mountpoint("overlayfs"));
    let r = diagnose(&f);
    assert_eq!(r.exit_code(), 1, "{r}");
    let w = expect(&r, Level::Warn, "is not what containerd loaded");
    assert!(
        w.text
            .contains("CRI's snapshotter is overlayfs, the file makes it shoal"),
        "{r}"
    );
    let c = expect(&r, Level::Fail, "CRI's snapshotter is overlayfs, not shoal");
    assert!(c.fix.join(" ").contains("restart containerd"), "{r}");
    // 1.x: CRI's status tells the annotations too.
    let mut f = facts("1.6.20", OLD_EXAMPLE);
    f.cri
        .status_config
        .as_mut()
        .unwrap()
        .disable_snapshot_annotations = Some(true);
    let r = diagnose(&f);
    expect(
        &r,
        Level::Warn,
        "disable_snapshot_annotations is true, the file makes it false",
    );
    expect(&r, Level::Fail, "labels do not reach shoal");
}

#[test]
fn cri_unavailable_and_missing_file() {
    let mut f = facts("2.1.9", TRANSFER);
    f.cri = CriFacts {
        unavailable: Some("Unimplemented: unknown service runtime.v1.RuntimeService".into()),
        ..Default::default()
    };
    let r = diagnose(&f);
    assert_eq!(r.exit_code(), 1, "{r}");
    expect(&r, Level::Fail, "CRI does not answer");
    let mut f = facts("2.1.9", TRANSFER);
    f.file.content = None;
    let r = diagnose(&f);
    expect(&r, Level::Warn, "does not exist");
}

#[test]
fn mountpoints_name_snapshotters() {
    let plugins = vec![
        plugin(
            "io.containerd.snapshotter.v1",
            "shoal",
            &[("root", "/var/lib/shoal")],
        ),
        plugin("io.containerd.snapshotter.v1", "overlayfs", &[]),
    ];
    assert_eq!(
        snapshotter_of_mountpoint("/var/lib/shoal/", &plugins).as_deref(),
        Some("shoal")
    );
    assert_eq!(
        snapshotter_of_mountpoint(&mountpoint("overlayfs"), &plugins).as_deref(),
        Some("overlayfs")
    );
    assert_eq!(snapshotter_of_mountpoint("/elsewhere", &plugins), None);
}

#[test]
fn first_host_is_in_file_order() {
    assert_eq!(
        first_host(MIRROR_FIRST).unwrap().as_deref(),
        Some("http://127.0.0.1:7075")
    );
    assert_eq!(
        first_host("server = \"https://r\"").unwrap().as_deref(),
        Some("https://r")
    );
    assert_eq!(first_host("").unwrap(), None);
    assert!(first_host("[host").is_err());
}

#[test]
fn report_lines_are_prefixed_and_fixes_indented() {
    let r = diagnose(&facts("2.1.9", OLD_EXAMPLE));
    let text = r.to_string();
    for line in text.lines() {
        assert!(
            line.starts_with("ok   ")
                || line.starts_with("warn ")
                || line.starts_with("FAIL ")
                || line.starts_with("       "),
            "{line:?}"
        );
    }
    assert!(text.contains("\n       "), "{text}");
}
