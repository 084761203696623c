//! The shipped containerd configuration (`config.toml.example`) and systemd unit
//! (`systemd/shoald.service`) say what shoald needs, and agree with each other.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn containerd_config() -> toml::Table {
    let text = std::fs::read_to_string(repo_file("config.toml.example")).unwrap();
    text.parse().expect("config.toml.example is TOML")
}

fn get<'a>(table: &'a toml::Table, path: &[&str]) -> &'a toml::Value {
    let (last, parents) = path.split_last().unwrap();
    let mut t = table;
    for key in parents {
        t = t
            .get(*key)
            .and_then(|v| v.as_table())
            .unwrap_or_else(|| panic!("no table {key:?} on the way to {path:?}"));
    }
    t.get(*last)
        .unwrap_or_else(|| panic!("no key {path:?} in config.toml.example"))
}

const CRI: &str = "io.containerd.grpc.v1.cri";

#[test]
fn containerd_config_registers_shoal() {
    let c = containerd_config();
    assert_eq!(get(&c, &["version"]).as_integer(), Some(2));
    assert_eq!(
        get(&c, &["proxy_plugins", "shoal", "type"]).as_str(),
        Some("snapshot")
    );
    assert_eq!(
        get(&c, &["proxy_plugins", "shoal", "address"]).as_str(),
        Some("/run/shoal/shoald.sock")
    );
    assert_eq!(
        get(&c, &["plugins", CRI, "containerd", "snapshotter"]).as_str(),
        Some("shoal")
    );
    assert_eq!(
        get(
            &c,
            &["plugins", CRI, "containerd", "disable_snapshot_annotations"]
        )
        .as_bool(),
        Some(false)
    );
    assert_eq!(
        get(&c, &["plugins", CRI, "registry", "config_path"]).as_str(),
        Some("/etc/containerd/certs.d")
    );
    // containerd refuses config_path together with the deprecated mirrors.
    let registry = get(&c, &["plugins", CRI, "registry"]).as_table().unwrap();
    assert!(!registry.contains_key("mirrors"));
}

/// The mirror of shoald.toml.example is where config.toml.example's hosts.toml example points,
/// and `shoald hosts` writes into the `config_path` containerd reads.
#[test]
fn mirror_example_agrees_with_containerds_config() {
    let text = std::fs::read_to_string(repo_file("shoald.toml.example")).unwrap();
    let example =
        shoal_plugin::config::Config::parse(&text, Path::new("shoald.toml.example")).unwrap();
    let mirror = &example.mirror;
    assert!(
        mirror.listen.ip().is_loopback(),
        "the mirror must stay on loopback"
    );
    let c = containerd_config();
    assert_eq!(
        get(&c, &["plugins", CRI, "registry", "config_path"]).as_str(),
        mirror.hosts_dir.to_str(),
        "shoald hosts must write where containerd reads"
    );
    let containerd_text = std::fs::read_to_string(repo_file("config.toml.example")).unwrap();
    let entry = format!(
        "[host.\"{}\"]",
        shoal_plugin::mirror::hosts::mirror_url(&example)
    );
    assert!(
        containerd_text.contains(&entry),
        "config.toml.example's hosts.toml example must name {entry}"
    );
    // The example's hosts.toml, as `shoald hosts --print` makes it, is what containerd reads.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shoald"))
        .arg("--config")
        .arg(repo_file("shoald.toml.example"))
        .args(["hosts", "--print", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("_default/hosts.toml"), "{printed}");
    assert!(printed.contains(&entry), "{printed}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

/// `KEY=value` lines of the unit (all sections), in order.
fn unit_entries() -> Vec<(String, String)> {
    std::fs::read_to_string(repo_file("systemd/shoald.service"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn unit_value(entries: &[(String, String)], key: &str) -> String {
    entries
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn unit_starts_shoald_before_containerd_on_the_configured_socket() {
    let e = unit_entries();
    assert_eq!(unit_value(&e, "Type"), "notify");
    assert_eq!(unit_value(&e, "Restart"), "on-failure");
    assert!(unit_value(&e, "Before").contains("containerd.service"));
    assert!(unit_value(&e, "WantedBy").contains("containerd.service"));
    let exec = unit_value(&e, "ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args[0], "/usr/local/bin/shoald");
    assert_eq!(args[1], "snapshotter");
    let address = args
        .iter()
        .position(|a| *a == "--address")
        .map(|i| args[i + 1])
        .expect("--address");
    let c = containerd_config();
    assert_eq!(
        Some(address),
        get(&c, &["proxy_plugins", "shoal", "address"]).as_str(),
        "shoald must listen where containerd's proxy_plugins.shoal connects"
    );
    let root = args
        .iter()
        .position(|a| *a == "--root")
        .map(|i| args[i + 1])
        .expect("--root");
    assert!(root.starts_with("/var/lib/shoal"));
    // The default blob cache must be writable under ProtectSystem=strict.
    let cache = shoal_plugin::config::Config::default().cache.dir;
    assert!(
        unit_value(&e, "ReadWritePaths")
            .split_whitespace()
            .any(|p| cache.starts_with(p)),
        "{cache:?} is not in ReadWritePaths"
    );
    let caps = unit_value(&e, "CapabilityBoundingSet");
    for cap in [
        "CAP_SYS_ADMIN",
        "CAP_MKNOD",
        "CAP_CHOWN",
        "CAP_FOWNER",
        "CAP_DAC_OVERRIDE",
        "CAP_SETFCAP",
    ] {
        assert!(caps.contains(cap), "missing {cap}");
    }
    // These would break unpacking real images.
    assert!(!e.iter().any(|(k, v)| k == "RestrictSUIDSGID" && v == "yes"));
    assert!(!e.iter().any(|(k, v)| k == "PrivateDevices" && v == "yes"));
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: systemd-analyze not installed");
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("shoald.service");
    let text = std::fs::read_to_string(repo_file("systemd/shoald.service")).unwrap();
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/shoald", env!("CARGO_BIN_EXE_shoald")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // Unknown keys and bad values are only warnings: fail on any about our unit.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("shoald.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify warnings: {ours:#?}"
    );
}
