//! Compares two unpacked layer trees entry by entry: type, mode (with setuid/setgid/sticky),
//! owner, mtime, size, content, symlink target, device numbers, xattrs (so overlay whiteouts
//! and opaque markers too) and hard-link structure.
//!
//! Some mtimes are the time of writing, for containerd as for shoal, and are not compared:
//! the tree root's (each snapshotter makes it), overlay whiteouts' (0:0 character devices,
//! made without times), and those of directories the caller names (implicit parent
//! directories, made for a member whose directory has no entry of its own).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

/// What the comparison records of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// (seconds, nanoseconds); `None` for the root.
    pub mtime: Option<(i64, i64)>,
    pub size: u64,
    pub rdev: u64,
    /// sha256 of a regular file's content.
    pub content: Option<String>,
    pub link_target: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// For entries with several hard links: the first path (in sorted order) of the inode.
    pub hardlink_group: Option<PathBuf>,
}

/// One difference between the trees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub path: PathBuf,
    pub what: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}: {}", self.path.display(), self.what)
    }
}

/// Reads every entry of the tree under `root`, keyed by path relative to it ("" is the root).
pub fn scan(root: &Path) -> Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).with_context(|| format!("lstat {path:?}"))?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "directory"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char device"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let content = if ft.is_file() {
            Some(hash_file(&path)?)
        } else {
            None
        };
        let hardlink_group = if !ft.is_dir() && meta.nlink() > 1 {
            Some(
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_insert_with(|| rel.clone())
                    .clone(),
            )
        } else {
            None
        };
        let mut xattrs = BTreeMap::new();
        for name in xattr::list(&path).with_context(|| format!("listxattr {path:?}"))? {
            let name = name.to_string_lossy().into_owned();
            let value = xattr::get(&path, &name)?.unwrap_or_default();
            xattrs.insert(name, value);
        }
        out.insert(
            rel.clone(),
            Entry {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: (!rel.as_os_str().is_empty()).then(|| (meta.mtime(), meta.mtime_nsec())),
                size: if ft.is_dir() { 0 } else { meta.size() },
                rdev: meta.rdev(),
                content,
                link_target: ft.is_symlink().then(|| fs::read_link(&path)).transpose()?,
                xattrs,
                hardlink_group,
            },
        );
        if ft.is_dir() {
            let mut children: Vec<PathBuf> = fs::read_dir(&path)?
                .map(|e| e.map(|e| rel.join(e.file_name())))
                .collect::<std::io::Result<_>>()?;
            // Reverse so the stack pops them in sorted order, which fixes hard-link groups.
            children.sort();
            children.reverse();
            stack.extend(children);
        }
    }
    // Hard-link groups are named by the smallest path of the inode, whatever the walk order.
    let mut smallest: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for (path, entry) in &out {
        if let Some(group) = &entry.hardlink_group {
            let e = smallest
                .entry(group.clone())
                .or_insert_with(|| path.clone());
            if path < e {
                *e = path.clone();
            }
        }
    }
    for entry in out.values_mut() {
        if let Some(group) = entry.hardlink_group.as_mut() {
            *group = smallest[group].clone();
        }
    }
    Ok(out)
}

fn hash_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("open {path:?}"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Every difference between the trees under `expected` and `actual`; the mtimes of
/// `ignore_mtime` (paths relative to the roots) are not compared.
pub fn compare_trees(
    expected: &Path,
    actual: &Path,
    ignore_mtime: &[&Path],
) -> Result<Vec<Difference>> {
    let want = scan(expected)?;
    let got = scan(actual)?;
    let mut diffs = Vec::new();
    for (path, w) in &want {
        match got.get(path) {
            None => diffs.push(Difference {
                path: path.clone(),
                what: format!("missing ({})", w.kind),
            }),
            Some(g) => {
                let skip_mtime =
                    ignore_mtime.contains(&path.as_path()) || (is_whiteout(w) && is_whiteout(g));
                for what in entry_differences(w, g, skip_mtime) {
                    diffs.push(Difference {
                        path: path.clone(),
                        what,
                    });
                }
            }
        }
    }
    for (path, g) in &got {
        if !want.contains_key(path) {
            diffs.push(Difference {
                path: path.clone(),
                what: format!("unexpected ({})", g.kind),
            });
        }
    }
    Ok(diffs)
}

fn is_whiteout(e: &Entry) -> bool {
    e.kind == "char device" && e.rdev == 0
}

fn entry_differences(w: &Entry, g: &Entry, skip_mtime: bool) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! field {
        ($name:ident) => {
            if w.$name != g.$name {
                out.push(format!(
                    concat!(stringify!($name), ": expected {:?}, got {:?}"),
                    w.$name, g.$name
                ));
            }
        };
    }
    field!(kind);
    field!(mode);
    field!(uid);
    field!(gid);
    if !skip_mtime {
        field!(mtime);
    }
    field!(size);
    field!(rdev);
    field!(content);
    field!(link_target);
    field!(hardlink_group);
    if w.xattrs != g.xattrs {
        out.push(format!(
            "xattrs: expected {:?}, got {:?}",
            printable(&w.xattrs),
            printable(&g.xattrs)
        ));
    }
    out
}

fn printable(x: &BTreeMap<String, Vec<u8>>) -> BTreeMap<&str, String> {
    x.iter()
        .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

/// Fails with a readable list when the trees differ (see [`compare_trees`]).
pub fn assert_same_tree(expected: &Path, actual: &Path, ignore_mtime: &[&Path]) -> Result<()> {
    let diffs = compare_trees(expected, actual, ignore_mtime)?;
    if !diffs.is_empty() {
        let list: Vec<String> = diffs.iter().take(50).map(|d| d.to_string()).collect();
        anyhow::bail!(
            "{} differences between {expected:?} (expected) and {actual:?}:\n  {}",
            diffs.len(),
            list.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn equal_trees_have_no_differences_and_changes_are_found() -> Result<()> {
        let make = |root: &Path| -> Result<()> {
            fs::create_dir(root.join("d"))?;
            fs::write(root.join("d/f"), b"hello")?;
            fs::hard_link(root.join("d/f"), root.join("h"))?;
            symlink("d/f", root.join("s"))?;
            Ok(())
        };
        let a = tempfile::tempdir()?;
        let b = tempfile::tempdir()?;
        make(a.path())?;
        make(b.path())?;
        // Same mtimes on both sides.
        for p in ["d/f", "d"] {
            let t = fs::metadata(a.path().join(p))?.modified()?;
            fs::File::options()
                .write(true)
                .open(b.path().join(p))
                .or_else(|_| fs::File::open(b.path().join(p)))?
                .set_modified(t)?;
        }
        // The symlinks were made at different moments and std cannot set a symlink's times.
        let diffs = compare_trees(a.path(), b.path(), &[])?;
        let unexpected: Vec<_> = diffs
            .iter()
            .filter(|d| !(d.path == Path::new("s") && d.what.starts_with("mtime")))
            .collect();
        assert!(unexpected.is_empty(), "{unexpected:?}");

        fs::set_permissions(b.path().join("d/f"), fs::Permissions::from_mode(0o4755))?;
        fs::write(b.path().join("extra"), b"x")?;
        let diffs = compare_trees(a.path(), b.path(), &[])?;
        assert!(diffs
            .iter()
            .any(|d| d.path == Path::new("d/f") && d.what.starts_with("mode")));
        assert!(diffs
            .iter()
            .any(|d| d.path == Path::new("extra") && d.what.starts_with("unexpected")));
        Ok(())
    }
}
