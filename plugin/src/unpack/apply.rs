//! Applying tar members to the staging directory the way containerd 1.6's
//! `archive.applyNaive` + `createTarFile` + `OverlayConvertWhiteout` do, but with every path
//! resolved component by component relative to directory fds (see the module doc of
//! [`crate::unpack`] for the confinement rules).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Timespec, Timestamps,
    XattrFlags,
};
use rustix::io::Errno;
use shoal_p2p::Digest;

use super::header::{
    Header, TarError, TarReader, TYPE_BLOCK, TYPE_CHAR, TYPE_DIR, TYPE_FIFO, TYPE_GLOBAL,
    TYPE_GNU_SPARSE, TYPE_LINK, TYPE_REG, TYPE_SYMLINK,
};
use super::remove::remove_all;
use super::UnpackError;

pub(crate) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Lexically cleaned components of a member name, clamped at the root: Go's
/// `filepath.Clean` followed by containerd's root-relative resolution (`/x` and `../x`
/// both mean `x`). Empty means the root itself.
pub(crate) fn clean(name: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(crate) fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// containerd's `boundTime`: outside [epoch, Go's max UnixNano] becomes the epoch.
fn bound(ns: i128) -> Timespec {
    let ns = if ns < 0 || ns > i64::MAX as i128 {
        0
    } else {
        ns
    };
    Timespec {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_nsec: (ns % 1_000_000_000) as _,
    }
}

fn times(h: &Header) -> Timestamps {
    let atime = h.atime.map_or(h.mtime, |a| a.max(h.mtime));
    Timestamps {
        last_access: bound(atime),
        last_modification: bound(h.mtime),
    }
}

/// Ids as Go's `os.Lchown` passes them: -1 means "leave as is".
fn id(v: i64) -> Result<Option<u32>, Errno> {
    match v {
        -1 => Ok(None),
        0..=0xffff_fffe => Ok(Some(v as u32)),
        _ => Err(Errno::INVAL),
    }
}

fn chown_at(dir: BorrowedFd<'_>, name: &[u8], h: &Header) -> Result<(), Errno> {
    let (u, g) = (id(h.uid)?, id(h.gid)?);
    rfs::chownat(
        dir,
        name,
        u.map(rfs::Uid::from_raw),
        g.map(rfs::Gid::from_raw),
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

/// Result of applying a whole archive.
pub(crate) struct Applied {
    pub entries: u64,
    /// Implicit parent directories made with the default attributes (no parent layer had
    /// them) and not named by a member afterwards, in creation order (parents first).
    pub implicit_dirs: Vec<Vec<u8>>,
}

pub(crate) struct Applier<'a> {
    layer: &'a Digest,
    root: Rc<OwnedFd>,
    parents: Vec<OwnedFd>,
    /// The last parent directory looked up: its cleaned path and an fd on it.
    cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// Directory members, for the final timestamp pass: path components, times.
    dirs: Vec<(Vec<u8>, Timestamps)>,
    /// Implicit parent directories made with default attributes, in creation order.
    implicit: Vec<Vec<u8>>,
    zeros: Vec<u8>,
}

impl<'a> Applier<'a> {
    pub fn new(layer: &'a Digest, root: OwnedFd, parents: Vec<OwnedFd>) -> Self {
        Self {
            layer,
            root: Rc::new(root),
            parents,
            cache: None,
            dirs: Vec::new(),
            implicit: Vec::new(),
            zeros: Vec::new(),
        }
    }

    fn err(&self, h: &Header, op: &'static str, e: impl Into<io::Error>) -> UnpackError {
        UnpackError::Entry {
            layer: self.layer.clone(),
            entry: lossy(&h.name),
            op,
            source: e.into(),
        }
    }

    fn refuse(&self, h: &Header, reason: String) -> UnpackError {
        UnpackError::Refused {
            layer: self.layer.clone(),
            entry: lossy(&h.name),
            reason,
        }
    }

    fn tar_err(&self, e: TarError, current: Option<&Header>) -> UnpackError {
        match e {
            TarError::Io(source) => UnpackError::Read {
                layer: self.layer.clone(),
                entry: current.map(|h| lossy(&h.name)),
                source,
            },
            TarError::Format(reason, name) => UnpackError::Malformed {
                layer: self.layer.clone(),
                entry: name.map(|n| lossy(&n)),
                reason: reason.to_string(),
            },
        }
    }

    /// Applies every member, then the directory timestamps, then reads the stream to its end.
    pub fn run(mut self, tr: &mut TarReader) -> Result<Applied, UnpackError> {
        let mut entries = 0;
        while let Some(h) = tr.next().map_err(|e| self.tar_err(e, None))? {
            entries += 1;
            self.entry(tr, &h)?;
        }
        for (path, ts) in std::mem::take(&mut self.dirs) {
            let comps = clean(&path);
            let Some((base, parent)) = comps.split_last() else {
                continue;
            };
            // A directory replaced later in the layer by a symlink, or moved out of reach,
            // is skipped (containerd would follow the symlink inside the layer).
            let Ok(Some(dir)) = self.lookup(parent, None) else {
                continue;
            };
            match rfs::statat(&*dir, *base, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Symlink => {
                    rfs::utimensat(&*dir, *base, &ts, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
                        UnpackError::Entry {
                            layer: self.layer.clone(),
                            entry: lossy(&path),
                            op: "set directory times",
                            source: e.into(),
                        }
                    })?;
                }
                _ => {}
            }
        }
        tr.input
            .drain()
            .map_err(|e| self.tar_err(TarError::Io(e), None))?;
        Ok(Applied {
            entries,
            implicit_dirs: std::mem::take(&mut self.implicit),
        })
    }

    /// The directory holding `comps` (relative to the root), without following or
    /// creating anything. `Ok(None)` if a component is missing; refuses symlinks.
    /// When `create` is given, missing directories are made like containerd's `mkparent`.
    fn lookup(
        &mut self,
        comps: &[&[u8]],
        create: Option<&Header>,
    ) -> Result<Option<Rc<OwnedFd>>, UnpackError> {
        if comps.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        let key = comps.join(&b"/"[..]);
        if let Some((k, fd)) = &self.cache {
            if *k == key {
                return Ok(Some(fd.clone()));
            }
        }
        let fast = rfs::openat2(
            &*self.root,
            key.as_slice(),
            DIR_FLAGS,
            Mode::empty(),
            ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV,
        );
        let fd = match fast {
            Ok(fd) => Rc::new(fd),
            Err(_) => match self.walk(comps, create)? {
                Some(fd) => fd,
                None => return Ok(None),
            },
        };
        self.cache = Some((key, fd.clone()));
        Ok(Some(fd))
    }

    fn walk(
        &mut self,
        comps: &[&[u8]],
        create: Option<&Header>,
    ) -> Result<Option<Rc<OwnedFd>>, UnpackError> {
        let mut fd = self.root.clone();
        for (i, c) in comps.iter().enumerate() {
            let here = || lossy(&comps[..=i].join(&b"/"[..]));
            match rfs::openat(&*fd, *c, DIR_FLAGS, Mode::empty()) {
                Ok(next) => fd = Rc::new(next),
                Err(Errno::NOENT) => {
                    let Some(h) = create else { return Ok(None) };
                    fd = Rc::new(self.mkparent(&fd, comps, i, h)?);
                }
                Err(e) => {
                    let Some(h) = create else { return Ok(None) };
                    return Err(match rfs::statat(&*fd, *c, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => self
                            .refuse(
                                h,
                                format!(
                                    "parent {:?} is a symlink; writing through symlinks is refused",
                                    here()
                                ),
                            ),
                        Ok(_) => self.err(
                            h,
                            "open parent directory",
                            io::Error::new(
                                io::ErrorKind::NotADirectory,
                                format!("parent {:?} is not a directory", here()),
                            ),
                        ),
                        Err(_) => self.err(h, "open parent directory", e),
                    });
                }
            }
        }
        Ok(Some(fd))
    }

    /// containerd's `mkparent` for one missing component: mkdir 0755, then the mode,
    /// owner, times and xattrs of the same directory in the top-most parent layer that
    /// has it (stopping at a parent layer where it is not a directory).
    fn mkparent(
        &mut self,
        dir: &OwnedFd,
        comps: &[&[u8]],
        i: usize,
        h: &Header,
    ) -> Result<OwnedFd, UnpackError> {
        let c = comps[i];
        let e = |op, err: Errno| self.err(h, op, err);
        let made = match rfs::mkdirat(dir, c, Mode::from_raw_mode(0o755)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(err) => return Err(e("create parent directory", err)),
        };
        let new = rfs::openat(dir, c, DIR_FLAGS, Mode::empty())
            .map_err(|err| e("open parent directory", err))?;
        let rel = comps[..=i].join(&b"/"[..]);
        for p in &self.parents {
            let lower = match rfs::openat2(
                p,
                rel.as_slice(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(l) => l,
                Err(Errno::NOENT) => continue,
                Err(_) => break,
            };
            let st = rfs::fstat(&lower).map_err(|err| e("stat parent layer directory", err))?;
            rfs::fchown(
                &new,
                Some(rfs::Uid::from_raw(st.st_uid)),
                Some(rfs::Gid::from_raw(st.st_gid)),
            )
            .map_err(|err| e("chown parent directory", err))?;
            rfs::fchmod(&new, Mode::from_raw_mode(st.st_mode & 0o7777))
                .map_err(|err| e("chmod parent directory", err))?;
            let ts = Timestamps {
                last_access: Timespec {
                    tv_sec: st.st_atime as i64,
                    tv_nsec: st.st_atime_nsec as _,
                },
                last_modification: Timespec {
                    tv_sec: st.st_mtime as i64,
                    tv_nsec: st.st_mtime_nsec as _,
                },
            };
            rfs::futimens(&new, &ts).map_err(|err| e("set parent directory times", err))?;
            copy_xattrs(&lower, &new).map_err(|err| e("copy parent directory xattrs", err))?;
            return Ok(new);
        }
        rfs::fchmod(&new, Mode::from_raw_mode(0o755))
            .map_err(|err| e("chmod parent directory", err))?;
        if made {
            self.implicit.push(rel);
        }
        Ok(new)
    }

    fn entry(&mut self, tr: &mut TarReader, h: &Header) -> Result<(), UnpackError> {
        let comps = clean(&h.name);
        let Some((&base, parent)) = comps.split_last() else {
            return Ok(()); // resolves to the root: ignored, as containerd does
        };
        if !self.implicit.is_empty() {
            // A member naming an implicit directory gives it its own attributes.
            let name = comps.join(&b"/"[..]);
            self.implicit.retain(|d| *d != name);
        }
        let dir = self.lookup(parent, Some(h))?.expect("created");

        if let Some(orig) = base.strip_prefix(WHITEOUT_PREFIX) {
            if base == WHITEOUT_OPAQUE {
                return rfs::fsetxattr(&*dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .map_err(|e| self.err(h, "mark directory opaque", e));
            }
            if orig.is_empty() || orig == b"." || orig == b".." {
                return Err(self.refuse(h, "invalid whiteout name".into()));
            }
            rfs::mknodat(&*dir, orig, FileType::CharacterDevice, Mode::empty(), 0)
                .map_err(|e| self.err(h, "create whiteout", e))?;
            return chown_at(dir.as_fd(), orig, h).map_err(|e| self.err(h, "chown whiteout", e));
        }

        if h.typeflag == TYPE_GLOBAL {
            // containerd removes what is there, then ignores the member.
            return self.replace(&dir, base, h, false).map(drop);
        }
        match h.typeflag {
            TYPE_REG | TYPE_GNU_SPARSE => return self.regular(tr, &dir, base, h),
            TYPE_DIR => {
                match rfs::mkdirat(&*dir, base, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        if self.replace(&dir, base, h, true)? {
                            rfs::mkdirat(&*dir, base, Mode::from_raw_mode(0o700))
                                .map_err(|e| self.err(h, "mkdir", e))?;
                        }
                    }
                    Err(e) => return Err(self.err(h, "mkdir", e)),
                }
                let mut path = parent.join(&b"/"[..]);
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(base);
                self.dirs.push((path, times(h)));
            }
            TYPE_CHAR | TYPE_BLOCK | TYPE_FIFO => {
                let ft = match h.typeflag {
                    TYPE_CHAR => FileType::CharacterDevice,
                    TYPE_BLOCK => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = rfs::makedev(h.devmajor as u32, h.devminor as u32);
                let mode = Mode::from_raw_mode((h.mode & 0o7777) as u32);
                self.create(&dir, base, h, "mknod", |d| {
                    rfs::mknodat(d, base, ft, mode, dev)
                })?;
            }
            TYPE_SYMLINK => {
                self.create(&dir, base, h, "symlink", |d| {
                    rfs::symlinkat(h.linkname.as_slice(), d, base)
                })?;
            }
            TYPE_LINK => {
                let lcomps = clean(&h.linkname);
                let Some((&lbase, lparent)) = lcomps.split_last() else {
                    return Err(self.refuse(h, "hard link to the layer root".into()));
                };
                let Some(ldir) = self.lookup(lparent, None)? else {
                    return Err(self.refuse(
                        h,
                        format!(
                            "hard link target {:?} is not in this layer",
                            lossy(&h.linkname)
                        ),
                    ));
                };
                let r = self.create(&dir, base, h, "link", |d| {
                    rfs::linkat(&*ldir, lbase, d, base, AtFlags::empty())
                });
                if let Err(UnpackError::Entry { source, .. }) = &r {
                    if source.kind() == io::ErrorKind::NotFound {
                        return Err(self.refuse(
                            h,
                            format!(
                                "hard link target {:?} is not in this layer",
                                lossy(&h.linkname)
                            ),
                        ));
                    }
                }
                r?;
            }
            t => {
                return Err(self.err(
                    h,
                    "create",
                    io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("unhandled tar header type {t}"),
                    ),
                ))
            }
        }
        self.finish_at(&dir, base, h)
    }

    /// Creates with `f`; if something is already there (and it is not a directory kept
    /// for a directory member), removes it like containerd's `os.RemoveAll` and retries.
    fn create(
        &mut self,
        dir: &Rc<OwnedFd>,
        base: &[u8],
        h: &Header,
        op: &'static str,
        f: impl Fn(BorrowedFd<'_>) -> Result<(), Errno>,
    ) -> Result<(), UnpackError> {
        match f(dir.as_fd()) {
            Err(Errno::EXIST) => {
                self.replace(dir, base, h, false)?;
                f(dir.as_fd()).map_err(|e| self.err(h, op, e))
            }
            r => r.map_err(|e| self.err(h, op, e)),
        }
    }

    /// containerd: if the path exists and is not (a directory and a directory member),
    /// remove it. Clears the lookup cache when anything is removed.
    fn replace(
        &mut self,
        dir: &OwnedFd,
        base: &[u8],
        h: &Header,
        keep_dir: bool,
    ) -> Result<bool, UnpackError> {
        match rfs::statat(dir, base, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                if keep_dir && FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Ok(false);
                }
                self.cache = None;
                remove_all(dir.as_fd(), base)
                    .map_err(|e| self.err(h, "remove existing path", e))?;
                Ok(true)
            }
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(self.err(h, "stat existing path", e)),
        }
    }

    fn regular(
        &mut self,
        tr: &mut TarReader,
        dir: &Rc<OwnedFd>,
        base: &[u8],
        h: &Header,
    ) -> Result<(), UnpackError> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(0o600);
        let file = match rfs::openat(&**dir, base, flags, mode) {
            Err(Errno::EXIST) => {
                self.replace(dir, base, h, false)?;
                rfs::openat(&**dir, base, flags, mode)
            }
            r => r,
        }
        .map_err(|e| self.err(h, "create file", e))?;
        let io_err = |this: &Self, e: io::Error| match e.raw_os_error() {
            Some(_) => this.err(h, "write file", e),
            None => UnpackError::Read {
                layer: this.layer.clone(),
                entry: Some(lossy(&h.name)),
                source: e,
            },
        };
        match &h.sparse {
            None => copy_out(tr, &file, u64::MAX).map_err(|e| io_err(self, e))?,
            Some(frags) => {
                if self.zeros.is_empty() {
                    self.zeros = vec![0u8; 64 * 1024];
                }
                let mut pos = 0u64;
                for &(off, len) in frags {
                    write_zeros(&file, &self.zeros, off - pos).map_err(|e| io_err(self, e))?;
                    copy_out(tr, &file, len).map_err(|e| io_err(self, e))?;
                    pos = off + len;
                }
                write_zeros(&file, &self.zeros, h.size as u64 - pos)
                    .map_err(|e| io_err(self, e))?;
            }
        }
        let (u, g) = (id(h.uid), id(h.gid));
        let (u, g) = (
            u.map_err(|e| self.err(h, "chown", e))?,
            g.map_err(|e| self.err(h, "chown", e))?,
        );
        rfs::fchown(&file, u.map(rfs::Uid::from_raw), g.map(rfs::Gid::from_raw))
            .map_err(|e| self.err(h, "chown", e))?;
        for (k, v) in &h.xattrs {
            set_xattr(
                k,
                || rfs::fsetxattr(&file, k.as_slice(), v, XattrFlags::empty()),
                || true,
            )
            .map_err(|e| self.err(h, "setxattr", e))?;
        }
        rfs::fchmod(&file, Mode::from_raw_mode((h.mode & 0o7777) as u32))
            .map_err(|e| self.err(h, "chmod", e))?;
        rfs::futimens(&file, &times(h)).map_err(|e| self.err(h, "set times", e))
    }

    /// containerd's tail of `createTarFile` for non-regular members: lchown, xattrs,
    /// chmod (not for symlinks, nor for hard links to symlinks), times (not following).
    fn finish_at(&self, dir: &OwnedFd, base: &[u8], h: &Header) -> Result<(), UnpackError> {
        chown_at(dir.as_fd(), base, h).map_err(|e| self.err(h, "lchown", e))?;
        if !h.xattrs.is_empty() {
            let path = proc_path(dir, base);
            for (k, v) in &h.xattrs {
                set_xattr(
                    k,
                    || rfs::lsetxattr(path.as_c_str(), k.as_slice(), v, XattrFlags::empty()),
                    || {
                        rfs::statat(dir, base, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
                            matches!(
                                FileType::from_raw_mode(st.st_mode),
                                FileType::RegularFile | FileType::Directory
                            )
                        })
                    },
                )
                .map_err(|e| self.err(h, "setxattr", e))?;
            }
        }
        let chmod = match h.typeflag {
            TYPE_SYMLINK => false,
            TYPE_LINK => rfs::statat(dir, base, AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode) != FileType::Symlink)
                .unwrap_or(false),
            _ => true,
        };
        if chmod {
            rfs::chmodat(
                dir,
                base,
                Mode::from_raw_mode((h.mode & 0o7777) as u32),
                AtFlags::empty(),
            )
            .map_err(|e| self.err(h, "chmod", e))?;
        }
        rfs::utimensat(dir, base, &times(h), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err(h, "set times", e))
    }
}

/// `/proc/self/fd/<dir>/<name>`: a path for the `l*xattr` calls that have no `*at` form;
/// the kernel resolves the directory through the fd and does not follow `name`.
fn proc_path(dir: &OwnedFd, name: &[u8]) -> std::ffi::CString {
    use std::os::fd::AsRawFd;
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    std::ffi::CString::new(p).unwrap_or_default()
}

/// Sets one `SCHILY.xattr.*` record the way containerd 1.6's `createTarFile` does:
/// `trusted.*` names are never set from an archive (containerd refuses them with ENOTSUP and
/// ignores that: a layer must not smuggle in `trusted.overlay.*` attributes that steer
/// overlayfs), ENOTSUP is ignored, and EPERM is ignored for `user.*` on anything but a
/// regular file or directory (the kernel allows `user.*` only there). `is_reg_or_dir` is
/// asked only in that last case.
fn set_xattr(
    key: &[u8],
    set: impl FnOnce() -> Result<(), Errno>,
    is_reg_or_dir: impl FnOnce() -> bool,
) -> Result<(), Errno> {
    if key.starts_with(b"trusted.") {
        return Ok(());
    }
    match set() {
        Err(Errno::NOTSUP) => Ok(()),
        Err(Errno::PERM) if key.starts_with(b"user.") && !is_reg_or_dir() => Ok(()),
        r => r,
    }
}

/// containerd's `copyUpXAttrs`: all but `trusted.overlay.opaque`, create-only, ignoring
/// unsupported / missing / existing ones.
fn copy_xattrs(from: &OwnedFd, to: &OwnedFd) -> Result<(), Errno> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rfs::flistxattr(from, &mut names[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(Errno::NOTSUP) | Err(Errno::NODATA) => return Ok(()),
            Err(e) => return Err(e),
        }
    };
    let mut value = vec![0u8; 4096];
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name == OPAQUE_XATTR.as_bytes() {
            continue;
        }
        let cname = match CStr::from_bytes_with_nul(&[name, b"\0"].concat()) {
            Ok(c) => c.to_owned(),
            Err(_) => continue,
        };
        let len = loop {
            match rfs::fgetxattr(from, cname.as_c_str(), &mut value[..]) {
                Ok(len) => break Some(len),
                Err(Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(Errno::NODATA) | Err(Errno::NOTSUP) => break None,
                Err(e) => return Err(e),
            }
        };
        let Some(len) = len else { continue };
        match rfs::fsetxattr(to, cname.as_c_str(), &value[..len], XattrFlags::CREATE) {
            Ok(()) | Err(Errno::NOTSUP) | Err(Errno::NODATA) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_all(fd: &OwnedFd, mut b: &[u8]) -> io::Result<()> {
    while !b.is_empty() {
        match rustix::io::write(fd, b) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => b = &b[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(errno_io(e)),
        }
    }
    Ok(())
}

/// Copies up to `n` bytes of the current member's data (all of it for `u64::MAX`).
fn copy_out(tr: &mut TarReader, fd: &OwnedFd, mut n: u64) -> io::Result<()> {
    if n == u64::MAX {
        n = tr.remaining();
    }
    while n > 0 {
        let s = tr.data(n.min(1 << 30) as usize)?;
        if s.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        n -= s.len() as u64;
        write_all(fd, s)?;
    }
    Ok(())
}

fn write_zeros(fd: &OwnedFd, zeros: &[u8], mut n: u64) -> io::Result<()> {
    while n > 0 {
        let k = n.min(zeros.len() as u64) as usize;
        write_all(fd, &zeros[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Moves the finished staging directory to `target`, never replacing anything.
pub(crate) fn commit(dir: &OwnedFd, staging: &[u8], target: &[u8]) -> Result<(), Errno> {
    rfs::renameat_with(dir, staging, dir, target, RenameFlags::NOREPLACE)
}

/// Gives the implicit directories `implicit` (relative paths, parents first) of the layer at
/// `layer` the attributes containerd's `mkparent` would have taken from the parent layers
/// `parents` (top-most first): owner, mode, atime and xattrs of the same directory in the
/// top-most parent that has it (none if that one is not a directory). The mtime stays: in
/// containerd it is bumped by the directory's children anyway. Used for layers unpacked
/// before their parents were known. Nothing is followed outside `layer`.
pub(crate) fn inherit_parent_attrs(
    layer: &OwnedFd,
    implicit: &[&[u8]],
    parents: &[OwnedFd],
) -> Result<(), (Vec<u8>, &'static str, Errno)> {
    for rel in implicit {
        let err = |op: &'static str| move |e: Errno| (rel.to_vec(), op, e);
        let dir = match rfs::openat2(
            layer,
            *rel,
            DIR_FLAGS,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(d) => d,
            Err(_) => continue, // replaced or removed later in the layer
        };
        for p in parents {
            let lower = match rfs::openat2(
                p,
                *rel,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(l) => l,
                Err(Errno::NOENT) => continue,
                Err(_) => break,
            };
            let st = rfs::fstat(&lower).map_err(err("stat parent layer directory"))?;
            rfs::fchown(
                &dir,
                Some(rfs::Uid::from_raw(st.st_uid)),
                Some(rfs::Gid::from_raw(st.st_gid)),
            )
            .map_err(err("chown implicit directory"))?;
            rfs::fchmod(&dir, Mode::from_raw_mode(st.st_mode & 0o7777))
                .map_err(err("chmod implicit directory"))?;
            let ts = Timestamps {
                last_access: Timespec {
                    tv_sec: st.st_atime as i64,
                    tv_nsec: st.st_atime_nsec as _,
                },
                last_modification: Timespec {
                    tv_sec: 0,
                    tv_nsec: rfs::UTIME_OMIT,
                },
            };
            rfs::futimens(&dir, &ts).map_err(err("set implicit directory times"))?;
            copy_xattrs(&lower, &dir).map_err(err("copy parent directory xattrs"))?;
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn clean_clamps_at_root() {
        let c = |s: &str| {
            clean(s.as_bytes())
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("/")
        };
        assert_eq!(c("./a/b/"), "a/b");
        assert_eq!(c("/etc/passwd"), "etc/passwd");
        assert_eq!(c("../../x"), "x");
        assert_eq!(c("a/../../b"), "b");
        assert_eq!(c("a/./b//c/.."), "a/b");
        assert_eq!(c("./"), "");
        assert_eq!(c(".."), "");
    }
}
