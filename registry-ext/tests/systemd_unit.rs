//! `systemd/shoal-registry-ext.service`: runs `serve` with the documented config path, can
//! write where the default config keeps its data, and passes `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../testing/skip.rs"]
mod skip;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn unit_text() -> String {
    std::fs::read_to_string(repo_file("systemd/shoal-registry-ext.service")).unwrap()
}

/// Values of `key` in the unit, joined by spaces.
fn unit_value(key: &str) -> String {
    unit_text()
        .lines()
        .map(str::trim)
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn unit_serves_with_the_config_and_may_write_the_default_dirs() {
    let exec = unit_value("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(
        args,
        [
            "/usr/local/bin/shoal-registry-ext",
            "serve",
            "--config",
            "/etc/shoal/registry-ext.toml"
        ]
    );
    // The example's data dirs (torrent.dir too, used with the `torrent` feature, and the
    // preheat state file) are the defaults; all must be writable under ProtectSystem.
    let example = std::fs::read_to_string(repo_file("registry-ext.toml.example")).unwrap();
    let config = shoal_registry_ext::config::Config::parse(&example, Path::new("example"))
        .expect("the example parses");
    let writable = unit_value("ReadWritePaths");
    for dir in [
        &config.manifests.dir,
        &config.seed.dir,
        &config.torrent.dir,
        &config.preheat.state,
    ] {
        assert!(
            writable.split_whitespace().any(|p| dir.starts_with(p)),
            "{dir:?} is not in ReadWritePaths {writable:?}"
        );
    }
    assert_eq!(unit_value("Restart"), "on-failure");
    assert_eq!(unit_value("CapabilityBoundingSet"), "");
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    if skip::skip_unless(&["systemd-analyze"], false) {
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("shoal-registry-ext.service");
    let text = unit_text().replace(
        "/usr/local/bin/shoal-registry-ext",
        env!("CARGO_BIN_EXE_shoal-registry-ext"),
    );
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("shoal-registry-ext.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify warnings: {ours:#?}"
    );
}
