//! Which registries the node knows each cached blob from (DESIGN "Security and bad input":
//! the mirror serves a client only bytes known from the registry it asked). One file per
//! blob, `DIR/origins/sha256-<hex>`, a registry host per line, written when the blob is
//! committed from a registry (atomically: a temporary file renamed); a blob without one
//! (written before origins were kept, or by a writer that named no registry) is known from
//! no registry, so the mirror never serves it.

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::reference::valid_host;

/// Subdirectory of the cache directory holding the origins files.
pub(super) const ORIGIN_DIR: &str = "origins";

fn path_of(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join(ORIGIN_DIR)
        .join(format!("{}{}", super::FILE_PREFIX, digest.hex()))
}

/// The registries blob `digest` is known from (none if its file is missing or unreadable;
/// lines that are not registry hosts are ignored).
pub(super) fn load(dir: &Path, digest: &Digest) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path_of(dir, digest)) else {
        return Vec::new();
    };
    let mut origins: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| valid_host(l))
        .map(str::to_owned)
        .collect();
    origins.sort();
    origins.dedup();
    origins
}

/// Keeps `origins` as blob `digest`'s (best effort: logged; without the file the blob is
/// known from no registry after a restart, which only means the mirror passes it through).
pub(super) fn save(dir: &Path, digest: &Digest, origins: &[String]) {
    let path = path_of(dir, digest);
    let tmp = path.with_extension("tmp");
    let written = std::fs::create_dir_all(dir.join(ORIGIN_DIR))
        .and_then(|()| std::fs::write(&tmp, origins.join("\n") + "\n"))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(path = %path.display(), "keeping a blob's origin registries: {e}");
    }
}

/// Forgets blob `digest`'s origins.
pub(super) fn remove(dir: &Path, digest: &Digest) {
    let _ = std::fs::remove_file(path_of(dir, digest));
}

/// Removes the origins files of blobs for which `cached` is false (and unfinished writes).
pub(super) fn prune(dir: &Path, cached: impl Fn(&Digest) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir.join(ORIGIN_DIR)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let digest = name
            .to_str()
            .and_then(|n| n.strip_prefix(super::FILE_PREFIX))
            .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok());
        if !digest.is_some_and(|d| cached(&d)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
