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
