//! Removing a tree (a replaced path, or a failed staging directory) relative to a
//! directory fd, never following symlinks, with a bounded number of open fds.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode};
use rustix::io::Errno;

use super::apply::{errno_io, DIR_FLAGS};

/// Removes `name` under `dir` and everything below it without following symlinks and with
/// a bounded number of open fds, however deep the tree.
pub(crate) fn remove_all(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(errno_io(e)),
    }
    struct Level {
        name: Vec<u8>,
        pending: Vec<Vec<u8>>,
    }
    fn scan(fd: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
        let mut subdirs = Vec::new();
        for ent in rfs::Dir::read_from(fd)? {
            let ent = ent?;
            let n = ent.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            if ent.file_type() == FileType::Directory {
                subdirs.push(n.to_vec());
                continue;
            }
            match rfs::unlinkat(fd, n, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => subdirs.push(n.to_vec()),
                Err(e) => return Err(errno_io(e)),
            }
        }
        Ok(subdirs)
    }
    let mut fd = rfs::openat(dir, name, DIR_FLAGS, Mode::empty())?;
    let mut stack = vec![Level {
        name: name.to_vec(),
        pending: scan(&fd)?,
    }];
    loop {
        let level = stack.last_mut().expect("non-empty stack");
        if let Some(sub) = level.pending.pop() {
            match rfs::openat(&fd, sub.as_slice(), DIR_FLAGS, Mode::empty()) {
                Ok(child) => {
                    fd = child;
                    let pending = scan(&fd)?;
                    stack.push(Level { name: sub, pending });
                }
                Err(Errno::NOENT) => {}
                Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                    rfs::unlinkat(&fd, sub.as_slice(), AtFlags::empty())?
                }
                Err(e) => return Err(errno_io(e)),
            }
            continue;
        }
        let done = stack.pop().expect("non-empty stack");
        if stack.is_empty() {
            drop(fd);
            rfs::unlinkat(dir, done.name.as_slice(), AtFlags::REMOVEDIR)?;
            return Ok(());
        }
        fd = rfs::openat(&fd, "..", DIR_FLAGS, Mode::empty())?;
        rfs::unlinkat(&fd, done.name.as_slice(), AtFlags::REMOVEDIR)?;
    }
}
