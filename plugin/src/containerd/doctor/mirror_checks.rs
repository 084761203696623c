//! The mirror path's checks: shoald's mirror on, answering, and first in the hosts.toml
//! containerd reads for every registry of shoald's config and `_default`.

use super::diagnose::{Blocks, Lines};
use super::facts::{Facts, HostsFile, Probe};
use super::report::{Check, Level};
use super::settings::first_host;

fn ok(text: String) -> Check {
    Check {
        level: Level::Ok,
        text,
        fix: vec![],
    }
}

fn bad(level: Level, text: String, fix: Vec<String>) -> Check {
    Check { level, text, fix }
}

/// Adds the mirror path's checks to `lines`; true when the mirror carries CRI's pulls.
/// `table` is CRI's image settings table, `and_restart` how to apply a containerd change.
pub(super) fn mirror_checks(
    facts: &Facts,
    config_path: &str,
    table: &str,
    and_restart: &str,
    lines: &mut Lines,
) -> bool {
    let sh = &facts.shoald;
    let hosts_dir = sh.hosts_dir.display().to_string();
    let first_root = config_path.split(':').next().unwrap_or_default().to_owned();
    let run_hosts = if first_root.is_empty() || first_root == hosts_dir {
        "run `shoald hosts`".to_owned()
    } else {
        format!("run `shoald hosts --dir {first_root}`")
    };
    let mut mirror_ok = true;
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
                        table
                    ),
                    vec![
                        format!("set config_path = \"{hosts_dir}\" there"),
                        format!("{and_restart}, then run `shoald hosts`"),
                    ],
                ),
            ));
        } else {
            for h in &facts.hosts {
                let (good, check) = hosts_check(h, &sh.mirror_url, config_path, &run_hosts);
                mirror_ok &= good;
                lines.mirror((if good { Blocks::No } else { Blocks::Yes }, check));
            }
        }
    }
    mirror_ok
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
        Err(e) => fail(format!("{ns}: {} is not TOML: {e}", file.display())),
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
