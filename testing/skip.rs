//! When a test may skip, and how it says so: the one helper for the tests of `shoal-plugin`
//! and `shoal-registry-ext` (they cannot use `shoal-integration`'s `skip_unless`, which
//! depends on them). Each test file includes it with
//! `#[path = "../../testing/skip.rs"] mod skip;`.
//!
//! DESIGN ("Conventions"): a test that needs root or an outside tool skips only when it truly
//! cannot run here and says so; under CI (`CI=true`, or `SHOAL_TEST_STRICT=1`, which
//! `scripts/test.sh` sets) it fails instead, naming what is missing.
#![allow(dead_code)] // each test binary uses part of it

use std::io::Write;

/// Whether a test that cannot run must fail instead of skipping: under CI (`CI`) or
/// `scripts/test.sh` (`SHOAL_TEST_STRICT`), set to anything but empty, `0` or `false`.
pub fn strict() -> bool {
    let set = |v: &str| std::env::var(v).is_ok_and(|x| !x.is_empty() && x != "0" && x != "false");
    set("CI") || set("SHOAL_TEST_STRICT")
}

/// Whether this process runs as root (mounts, mknod, chown, trusted.* xattrs need it).
pub fn is_root() -> bool {
    // /proc/self/status is always there on Linux and needs no unsafe code.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .is_some_and(|uid| uid == "0")
}

/// Whether `name` is an executable file on `PATH` (or, with a `/`, an existing file).
pub fn have(name: &str) -> bool {
    if name.contains('/') {
        return std::path::Path::new(name).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// The test cannot run here because of `why`: under [`strict`] this panics ("cannot run
/// under CI: ..."); otherwise it prints `SKIP: <test>: <why>` where `cargo test` shows it
/// even for a passing test (straight to stderr, past the output capture) and returns, so
/// the caller returns too.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if strict() {
        panic!("cannot run under CI (CI / SHOAL_TEST_STRICT set): {test}: {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIP: {test}: {why}");
}

/// Skips (see [`skip`]) and returns true when any of `tools` is not on `PATH` or when
/// `needs_root` and this is not root. Use as `if skip_unless(&["go"], true) { return; }`.
pub fn skip_unless(tools: &[&str], needs_root: bool) -> bool {
    let why = if needs_root && !is_root() {
        Some("needs root".to_owned())
    } else {
        tools
            .iter()
            .find(|t| !have(t))
            .map(|t| format!("{t} not installed (scripts/install-deps.sh installs it)"))
    };
    match why {
        Some(why) => {
            skip(&why);
            true
        }
        None => false,
    }
}
