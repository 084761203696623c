//! The I/O around [`apply`](super::apply): reading containerd's config.toml (a missing file
//! is an empty one), writing it atomically, and asking `containerd --version`.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::ContainerdConfigError;
use crate::containerd::ContainerdVersion;

/// The mode of a config file written where none was.
const NEW_FILE_MODE: u32 = 0o644;

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ContainerdConfigError {
    let path = path.to_owned();
    move |source| ContainerdConfigError::Io { op, path, source }
}

/// The file's text, or `None` when it does not exist.
pub fn read(path: &Path) -> Result<Option<String>, ContainerdConfigError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", path)(e)),
    }
}

/// Replaces `path` with `text` atomically: a temporary file in the same directory, with the
/// old file's mode (and owner, where allowed), synced, then renamed over it. A symbolic link
/// is followed: its target is replaced. The directory is made when missing. On error the old
/// file is untouched and the temporary file removed.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), ContainerdConfigError> {
    let target = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == ErrorKind::NotFound => path.to_owned(),
        Err(e) => return Err(io("resolving", path)(e)),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(io("creating directory", &dir))?;
    let old = match fs::metadata(&target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(io("reading metadata of", &target)(e)),
    };
    let mode = old
        .as_ref()
        .map_or(NEW_FILE_MODE, |m| m.permissions().mode() & 0o7777);
    let name = target
        .file_name()
        .map_or_else(|| "config.toml".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.shoal-tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        // The umask may have taken bits away.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io("setting the mode of", &tmp))?;
        if let Some(m) = &old {
            // Best effort: only root may give a file away, and a file written by its owner
            // already has the right one.
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.write_all(text.as_bytes()).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, &target).map_err(io("renaming into place", &target))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // Best effort: the rename is durable once the directory is synced.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The version of the containerd binary `bin` (a path, or a name looked up on PATH), from
/// `bin --version`.
pub fn detect_version(bin: &Path) -> Result<ContainerdVersion, ContainerdConfigError> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|source| ContainerdConfigError::VersionCommand {
            bin: bin.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(ContainerdConfigError::VersionCommandFailed {
            bin: bin.to_owned(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    ContainerdVersion::from_version_output(&stdout).map_err(|source| {
        ContainerdConfigError::VersionOutput {
            bin: bin.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_keeping_the_mode_and_makes_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/containerd/config.toml");
        assert_eq!(read(&path).unwrap(), None);
        write_atomic(&path, "version = 3\n").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some("version = 3\n"));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&path, "version = 2\n").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read(&path).unwrap().as_deref(), Some("version = 2\n"));
        let left: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec!["config.toml"], "no temporary file left");
    }

    #[test]
    fn a_symlink_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.toml");
        let link = dir.path().join("config.toml");
        fs::write(&real, "").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, "version = 3\n").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&real).unwrap(), "version = 3\n");
    }

    #[test]
    fn version_detection_errors_say_to_pass_the_version() {
        let e = detect_version(Path::new("/nonexistent/containerd")).unwrap_err();
        assert!(e.to_string().contains("--containerd-version"), "{e}");
        // `false --version` fails (coreutils' false ignores --version? it exits 1 anyway).
        let e = detect_version(Path::new("false")).unwrap_err();
        assert!(e.to_string().contains("--containerd-version"), "{e}");
        // `true --version` succeeds (or prints coreutils' version): no containerd version.
        let e = detect_version(Path::new("true"));
        assert!(e.is_err());
    }
}
