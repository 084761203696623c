//! containerd's own snapshotter test suite (`../shared/conformance/run.sh`) against the
//! built `shoald snapshotter`: every case must pass. Needs root (the suite mounts).

use std::path::Path;
use std::process::Command;

const RUN_SH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/conformance/run.sh"
);

#[test]
fn containerd_snapshotter_suite_passes() {
    if !rustix::process::geteuid().is_root() {
        println!("SKIP: containerd's snapshotter suite needs root (it mounts snapshots)");
        return;
    }
    if !Path::new(RUN_SH).is_file() {
        println!("SKIP: {RUN_SH} is missing");
        return;
    }
    let cmd = format!(
        "{} snapshotter --root {{root}} --address {{address}}",
        env!("CARGO_BIN_EXE_shoald")
    );
    // shoald's blob cache in a temp dir, not the default /var/lib/shoal/blobs.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shoald.toml");
    let cache = dir.path().join("blobs").display().to_string();
    std::fs::write(&config, format!("[cache]\ndir = {cache:?}\n")).unwrap();
    let out = Command::new(RUN_SH)
        .arg(&cmd)
        .env("SHOALD_CONFIG", &config)
        .output()
        .expect("run run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("conformance: "))
        .unwrap_or_else(|| panic!("no summary line from run.sh (exit {})", out.status));
    assert!(out.status.success(), "run.sh: {} ({summary})", out.status);
    let passed: u32 = summary
        .trim_start_matches("conformance: ")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= 20 && summary.ends_with(" 0 failed"),
        "expected every case to pass: {summary}"
    );
}
