//! What the benchmarks (`integration/benches/*.rs`) share: their `SHOAL_BENCH_*` settings and
//! where they write their results.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// The environment variable `name` parsed as `T`, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where a bench writes its JSON results: `SHOAL_BENCH_JSON`, else `file_name` in the target
/// directory (`target/FILE` next to `target/release/deps/BENCH-HASH`).
pub fn json_path(file_name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SHOAL_BENCH_JSON") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .context("the bench executable has no target directory")?;
    Ok(target.join(file_name))
}

/// CPU time (user + system) process `pid` has used so far, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The fields after the command name, which may hold spaces, in parentheses.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) (utime, stime), 12 and 13 after the state.
    let ticks = |i: usize, name: &str| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("{path}: no {name}"))
    };
    Ok((ticks(11, "utime")? + ticks(12, "stime")?) / clock_ticks())
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 when that fails, as on every
/// Linux ABI this runs on).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The load average (1, 5 and 15 minutes) from `/proc/loadavg`, to note how busy the machine
/// was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
