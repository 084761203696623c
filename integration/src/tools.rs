//! Finding and running the outside tools the tests drive.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// Whether `name` is an executable on `PATH` (or an existing path).
pub fn have(name: &str) -> bool {
    if name.contains('/') {
        return Path::new(name).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// Whether this process runs as root (mounts, mknod, chown and trusted.* xattrs need it).
pub fn is_root() -> bool {
    effective_uid() == 0
}

fn effective_uid() -> u32 {
    // /proc/self/status is always there on Linux and needs no unsafe code.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .and_then(|uid| uid.parse().ok())
        .unwrap_or(u32::MAX)
}

/// Prints why a test is skipped and returns true when any of `tools` is missing or when root
/// is needed and absent. Use as `if skip_unless(&["ctr"], true) { return; }`. `containerd`
/// and `ctr` mean the containerd under test ([`crate::containerd::flavor`]). Under CI
/// ([`crate::containerd::strict`]) a test never skips: it fails, naming what is missing.
pub fn skip_unless(tools: &[&str], needs_root: bool) -> bool {
    let missing = missing(tools, needs_root);
    match missing {
        None => false,
        Some(why) if crate::containerd::strict() => {
            panic!("cannot run under CI: {why}")
        }
        Some(why) => {
            eprintln!("SKIP: {why}");
            true
        }
    }
}

/// Why a test needing `tools` (and root, if `needs_root`) cannot run here, if it cannot.
fn missing(tools: &[&str], needs_root: bool) -> Option<String> {
    if needs_root && !is_root() {
        return Some("needs root".into());
    }
    for tool in tools {
        if matches!(*tool, "containerd" | "ctr") {
            if let Err(e) = crate::containerd::flavor() {
                return Some(format!("{e:#}"));
            }
        } else if !have(tool) {
            return Some(format!(
                "{tool} not installed (scripts/install-deps.sh installs it)"
            ));
        }
    }
    None
}

/// Runs `cmd`, failing with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out)
}
