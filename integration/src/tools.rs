//! Finding and running the outside tools the tests drive.

use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

// The one skip helper of the workspace's tests (shared with shoal-plugin's and
// shoal-registry-ext's tests, which cannot depend on this crate).
#[path = "../../testing/skip.rs"]
mod skip;

pub use skip::{have, is_root, skip as skip_because, strict};

/// Prints why a test is skipped and returns true when any of `tools` is missing or when root
/// is needed and absent. Use as `if skip_unless(&["ctr"], true) { return; }`. `containerd`
/// and `ctr` mean the containerd under test ([`crate::containerd::flavor`]). Under CI
/// ([`strict`]) a test never skips: it fails, naming what is missing.
pub fn skip_unless(tools: &[&str], needs_root: bool) -> bool {
    match missing(tools, needs_root) {
        None => false,
        Some(why) => {
            skip_because(&why);
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
