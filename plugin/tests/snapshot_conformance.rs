//! containerd's own snapshotter test suite (`conformance/run.sh`, in this repository) against
//! the built `shoald snapshotter`: every case must pass. Needs root (the suite mounts), `go`
//! and containerd 1.6's sources (`scripts/install-deps.sh`); under CI it fails without them.

use std::path::Path;
use std::process::Command;

#[path = "../../testing/skip.rs"]
mod skip;

const RUN_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conformance/run.sh");
/// The suite's Go sources (Debian's golang-github-containerd-containerd-dev).
const TESTSUITE: &str =
    "/usr/share/gocode/src/github.com/containerd/containerd/snapshots/testsuite";

#[test]
fn containerd_snapshotter_suite_passes() {
    // Part of the repository: missing means a broken checkout, never a skip.
    assert!(Path::new(RUN_SH).is_file(), "{RUN_SH} is missing");
    if skip::skip_unless(&["go"], true) {
        return;
    }
    if !Path::new(TESTSUITE).is_dir() {
        skip::skip(&format!(
            "{TESTSUITE} missing: golang-github-containerd-containerd-dev not installed \
             (scripts/install-deps.sh installs it)"
        ));
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
