//! Streaming layer unpacker: compressed blob in, overlayfs upper directory out, in one pass.
//!
//! While the bytes arrive, one thread hashes the compressed blob (unless its source checks
//! the digest itself: [`unpack_verified`]), detects the compression
//! by its magic bytes as containerd does (gzip `1f 8b 08`, multi-member; zstd
//! `28 b5 2f fd`, multi-frame; anything else is a plain tar) and decompresses; a second
//! thread hashes the uncompressed stream (the diff ID), parses the tar and writes the files.
//! Nothing of the blob is stored. The stream is always read to its end (trailing padding
//! included) before the digests are checked.
//!
//! # Output
//!
//! The layer is written into a hidden staging directory beside `target` (same parent) and
//! renamed to `target` only when everything succeeded and both digests matched; on any
//! failure the staging directory is removed, so a directory at `target` is always a whole,
//! verified layer. The layer root gets mode 0755 and, when a parent layer is given, the
//! owner of the top-most parent's root (as containerd's overlayfs snapshotter does for its
//! `fs` directories); a `./` member is ignored, as containerd ignores members that resolve
//! to the root.
//!
//! Members are applied as containerd 1.6's `archive.Apply` with `OverlayConvertWhiteout`
//! and `WithParents` does (Go `archive/tar` reading rules included): member names are
//! cleaned and clamped at the root (`/x` and `../x` are `x`); an existing path is removed
//! and replaced unless both are directories (then merged); implicit parent directories
//! get 0755 or the attributes (owner, mode, times, xattrs except `trusted.overlay.opaque`)
//! of the same directory in the top-most parent layer that has it; then per member: create,
//! lchown, `SCHILY.xattr.*` xattrs (`trusted.*` never set, ENOTSUP ignored, EPERM ignored for `user.*` on non-regular members),
//! chmod with setuid/setgid/sticky after chown (not for symlinks), atime = max(atime,
//! mtime) and mtime, never following symlinks, bounded to [epoch, 2262] like Go's
//! `boundTime`; directory times again at the end, in member order. `.wh.NAME` becomes a
//! 0:0 character device `NAME` with mode 0 owned by the member's uid/gid (any other
//! `.wh.` prefix included, e.g. `.wh..wh.plnk` gives `.wh.plnk`, as containerd's overlay
//! conversion does), `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.
//! Regular files, GNU sparse files (old GNU `S` and PAX `GNU.sparse` 0.0/0.1/1.0) are
//! written with their expanded content (holes written as zeros, as Go's reader yields
//! them). Hard links share the inode of a member of this layer (a hard link to a symlink
//! links the symlink itself).
//!
//! Known differences from containerd 1.6 (all on archives no image builder produces):
//! writing through a symlinked parent directory is refused instead of followed inside the
//! layer; old-GNU `S` sparse members are written expanded (containerd rejects the type); a
//! hard link's chmod is decided by the link target inside the layer (containerd `lstat`s
//! the link name relative to its own working directory); a directory member later
//! replaced by a symlink does not get its times re-applied through that symlink; a PAX
//! global header does not create its parent directories.
//!
//! # Hostile archives
//!
//! Every path is resolved relative to an fd of the staging directory, component by
//! component: `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` with a
//! component-wise `openat(O_NOFOLLOW | O_DIRECTORY)` fallback; files are created with
//! `*at` calls (`O_NOFOLLOW | O_EXCL`, `AT_SYMLINK_NOFOLLOW`) on the last component and
//! never through a path string the kernel would walk. Consequences: names cannot climb out
//! (they are clamped), a symlink in the layer is never followed when writing (a member
//! below a symlinked directory, e.g. `evil -> /etc` then `evil/passwd`, or `evil -> ..`, is
//! refused with [`UnpackError::Refused`]), a member replacing a symlink replaces the
//! symlink itself, and a hard link must name an existing non-directory of this layer
//! reached without symlinks (otherwise refused). Nothing outside the staging directory is
//! created, modified or removed, and it is removed on refusal.

mod apply;
mod header;
mod input;
mod remove;

use std::ffi::OsStr;
use std::io::{self, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;
use shoal_p2p::source::VerifiedStream;
use shoal_p2p::{Digest, Hasher};

use input::{Chunk, Input, CHUNK};

/// Decompressed chunks in flight between the two threads.
const CHANNEL_DEPTH: usize = 8;
/// Read size on the compressed side.
const READ_BUF: usize = 256 * 1024;
/// Compressed pieces in flight between the async stream and the decompression thread.
const STREAM_DEPTH: usize = 16;

/// The layer being unpacked, as the image manifest and config describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSpec {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar (from the image config), checked when given.
    pub diff_id: Option<Digest>,
    /// Media type from the manifest; informational (compression is detected from the bytes).
    pub media_type: String,
}

/// How to unpack.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Directories of the lower layers, top-most first; implicit parent directories copy
    /// their attributes from here.
    pub parents: Vec<PathBuf>,
}

/// What was unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    /// Tar members read (meta headers such as PAX and GNU long names not counted).
    pub entries: u64,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Implicit parent directories (no member of their own) that got the default
    /// attributes because no parent layer had them, relative to the layer root, parents
    /// first. See [`inherit_parent_attrs`] for fixing them once the parents are known.
    pub implicit_dirs: Vec<PathBuf>,
}

/// Why a layer could not be unpacked. Every variant names the layer; nothing is left at
/// the target when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {layer}: target {} already exists", path.display())]
    TargetExists { layer: Digest, path: PathBuf },
    #[error("layer {layer}: {op} {}: {source}", path.display())]
    Target {
        layer: Digest,
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: reading the blob{}: {source}", entry.as_ref().map(|e| format!(" (at entry {e:?})")).unwrap_or_default())]
    Read {
        layer: Digest,
        entry: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: malformed tar{}: {reason}", entry.as_ref().map(|e| format!(" at entry {e:?}")).unwrap_or_default())]
    Malformed {
        layer: Digest,
        entry: Option<String>,
        reason: String,
    },
    #[error("layer {layer}: entry {entry:?} refused: {reason}")]
    Refused {
        layer: Digest,
        entry: String,
        reason: String,
    },
    #[error("layer {layer}: entry {entry:?}: {op}: {source}")]
    Entry {
        layer: Digest,
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: blob digest mismatch: got {actual}")]
    DigestMismatch { layer: Digest, actual: Digest },
    #[error("layer {layer}: diff ID mismatch: expected {expected}, got {actual}")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    /// The unpack worker stopped without its outcome (`what` happened).
    #[error("layer {layer}: unpack worker failed: {what}")]
    Worker { layer: Digest, what: &'static str },
    /// The unpack task panicked or was cancelled.
    #[error("layer {layer}: unpack worker failed: {source}")]
    WorkerTask {
        layer: Digest,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl UnpackError {
    /// The layer the error is about.
    pub fn layer(&self) -> &Digest {
        match self {
            UnpackError::TargetExists { layer, .. }
            | UnpackError::Target { layer, .. }
            | UnpackError::Read { layer, .. }
            | UnpackError::Malformed { layer, .. }
            | UnpackError::Refused { layer, .. }
            | UnpackError::Entry { layer, .. }
            | UnpackError::DigestMismatch { layer, .. }
            | UnpackError::DiffIdMismatch { layer, .. }
            | UnpackError::Worker { layer, .. }
            | UnpackError::WorkerTask { layer, .. } => layer,
        }
    }
}

/// Who checks the compressed blob against [`LayerSpec::digest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobCheck {
    /// The unpacker hashes it.
    Hash,
    /// Its source ([`VerifiedStream`]): the stream's last item is an error unless the bytes
    /// matched, and the stream is read to its end before the layer is committed.
    Source,
}

/// Unpacks a layer blob arriving as an async byte stream into `target` (which must not
/// exist). The blocking work runs on `spawn_blocking` threads; the stream is pulled here
/// and handed over through a bounded channel, so a slow disk slows the download.
pub async fn unpack_stream<S>(
    stream: S,
    layer: &LayerSpec,
    target: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError>
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
{
    unpack_stream_checked(stream, layer, target, opts, BlobCheck::Hash).await
}

/// [`unpack_stream`] of a blob its source checks against `layer.digest` (a
/// [`VerifiedStream`], e.g. a swarm download that hashed the blob for its own commit): the
/// compressed bytes are not hashed again. The stream is still read to its end, so a blob
/// that did not match (the stream's last item is then an error) fails the unpack and leaves
/// nothing at `target`; the diff ID is checked as always.
pub async fn unpack_verified(
    stream: VerifiedStream,
    layer: &LayerSpec,
    target: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let stream = stream.into_stream().map_err(io::Error::other);
    unpack_stream_checked(stream, layer, target, opts, BlobCheck::Source).await
}

async fn unpack_stream_checked<S>(
    mut stream: S,
    layer: &LayerSpec,
    target: &Path,
    opts: &UnpackOptions,
    check: BlobCheck,
) -> Result<UnpackStats, UnpackError>
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(STREAM_DEPTH);
    let (l, t, o) = (layer.clone(), target.to_path_buf(), opts.clone());
    let task = tokio::task::spawn_blocking(move || {
        let reader = StreamReader {
            rx,
            cur: Bytes::new(),
        };
        unpack_reader_checked(reader, &l, &t, &o, check)
    });
    while let Some(item) = stream.next().await {
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            break; // the unpacker stopped (it reports why), or the stream failed
        }
    }
    drop(tx);
    task.await.map_err(|source| UnpackError::WorkerTask {
        layer: layer.digest.clone(),
        source,
    })?
}

/// Gives the implicit directories `implicit` of the unpacked layer `layer` (see
/// [`UnpackStats::implicit_dirs`]) the owner, mode, atime and xattrs of the same directory in
/// the top-most of `parents` (lower layer directories, top-most first) that has it, as they
/// would have got had `parents` been given to the unpack. For layers unpacked before their
/// parent layers were known.
pub fn inherit_parent_attrs(
    layer: &Path,
    implicit: &[PathBuf],
    parents: &[PathBuf],
) -> io::Result<()> {
    if implicit.is_empty() || parents.is_empty() {
        return Ok(());
    }
    let open = |p: &Path| {
        rfs::open(
            p,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let root =
        open(layer).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", layer.display())))?;
    let parents: Vec<OwnedFd> = parents.iter().filter_map(|p| open(p).ok()).collect();
    let rels: Vec<&[u8]> = implicit.iter().map(|p| p.as_os_str().as_bytes()).collect();
    apply::inherit_parent_attrs(&root, &rels, &parents).map_err(|(rel, op, e)| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{op} {:?}: {e}", String::from_utf8_lossy(&rel)),
        )
    })
}

/// `Read` over the pieces of the async stream.
struct StreamReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// Unpacks a layer blob read from `reader` into `target` (which must not exist), blocking.
/// Decompression runs on a second (scoped) thread.
pub fn unpack_reader<R: Read + Send>(
    reader: R,
    layer: &LayerSpec,
    target: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    unpack_reader_checked(reader, layer, target, opts, BlobCheck::Hash)
}

fn unpack_reader_checked<R: Read + Send>(
    reader: R,
    layer: &LayerSpec,
    target: &Path,
    opts: &UnpackOptions,
    check: BlobCheck,
) -> Result<UnpackStats, UnpackError> {
    let staging = Staging::create(layer, target)?;
    let result = run(reader, layer, &staging, opts, check);
    match result {
        Ok(stats) => match staging.commit() {
            Ok(()) => Ok(stats),
            Err(e) => {
                staging.remove();
                Err(e)
            }
        },
        Err(e) => {
            staging.remove();
            Err(e)
        }
    }
}

fn run<R: Read + Send>(
    reader: R,
    layer: &LayerSpec,
    staging: &Staging,
    opts: &UnpackOptions,
    check: BlobCheck,
) -> Result<UnpackStats, UnpackError> {
    let d = &layer.digest;
    let root = staging.open_root()?;
    let parents: Vec<OwnedFd> = opts
        .parents
        .iter()
        .filter_map(|p| {
            rfs::open(
                p,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()
        })
        .collect();
    if let Some(top) = parents.first() {
        if let Ok(st) = rfs::fstat(top) {
            rfs::fchown(
                &root,
                Some(rfs::Uid::from_raw(st.st_uid)),
                Some(rfs::Gid::from_raw(st.st_gid)),
            )
            .map_err(|e| staging.err("chown", e.into()))?;
        }
    }
    let (tx, rx) = sync_channel(CHANNEL_DEPTH);
    let (recycle_tx, recycle_rx) = sync_channel(CHANNEL_DEPTH + 2);
    let (produced, applied) = std::thread::scope(|s| {
        let hash = check == BlobCheck::Hash;
        let producer = s.spawn(move || produce(reader, hash, tx, recycle_rx));
        let mut tr = header::TarReader::new(Input::new(rx, recycle_tx));
        let applied = apply::Applier::new(d, root, parents)
            .run(&mut tr)
            .map(|a| (a, tr.input.finish()));
        drop(tr); // lets the producer stop if the applier gave up early
        (producer.join(), applied)
    });
    let produced = match produced {
        Ok(p) => p,
        Err(_) => {
            return Err(UnpackError::Worker {
                layer: d.clone(),
                what: "decompression thread panicked",
            })
        }
    };
    let applied = match (produced, applied) {
        (Err(Produce::Io(source)), _) => {
            return Err(UnpackError::Read {
                layer: d.clone(),
                entry: None,
                source,
            })
        }
        (_, Err(e)) => return Err(e),
        (Err(Produce::ConsumerGone), Ok(_)) => {
            return Err(UnpackError::Worker {
                layer: d.clone(),
                what: "extraction stopped before the end of the stream",
            })
        }
        (Ok(p), Ok(a)) => (p, a),
    };
    let (p, (a, (diff_id, uncompressed_bytes))) = applied;
    // `None`: the source checked it (a mismatch ended the stream with an error, above).
    if let Some(actual) = p.digest {
        if actual != layer.digest {
            return Err(UnpackError::DigestMismatch {
                layer: d.clone(),
                actual,
            });
        }
    }
    if let Some(expected) = &layer.diff_id {
        if *expected != diff_id {
            return Err(UnpackError::DiffIdMismatch {
                layer: d.clone(),
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    Ok(UnpackStats {
        compressed_bytes: p.compressed_bytes,
        uncompressed_bytes,
        entries: a.entries,
        diff_id,
        implicit_dirs: a
            .implicit_dirs
            .into_iter()
            .map(|d| PathBuf::from(OsStr::from_bytes(&d)))
            .collect(),
    })
}

/// The hidden directory a layer is extracted into before it is renamed to its target.
struct Staging {
    layer: Digest,
    parent: OwnedFd,
    parent_path: PathBuf,
    name: Vec<u8>,
    target_name: Vec<u8>,
    target: PathBuf,
}

impl Staging {
    fn create(layer: &LayerSpec, target: &Path) -> Result<Self, UnpackError> {
        let d = &layer.digest;
        let err = |op, source| UnpackError::Target {
            layer: d.clone(),
            path: target.to_path_buf(),
            op,
            source,
        };
        let target_name = match target.file_name() {
            Some(n) => n.as_bytes().to_vec(),
            None => {
                return Err(err(
                    "use as target",
                    io::Error::new(io::ErrorKind::InvalidInput, "target has no file name"),
                ))
            }
        };
        let parent_path = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let parent = rfs::open(
            &parent_path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err("open parent of", e.into()))?;
        match rfs::statat(
            &parent,
            target_name.as_slice(),
            rfs::AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(_) => {
                return Err(UnpackError::TargetExists {
                    layer: d.clone(),
                    path: target.to_path_buf(),
                })
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(err("stat", e.into())),
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut name = b".".to_vec();
        name.extend_from_slice(&target_name);
        name.extend_from_slice(
            format!(
                ".unpacking-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            )
            .as_bytes(),
        );
        rfs::mkdirat(&parent, name.as_slice(), Mode::from_raw_mode(0o700))
            .map_err(|e| err("create staging for", e.into()))?;
        Ok(Self {
            layer: d.clone(),
            parent,
            parent_path,
            name,
            target_name,
            target: target.to_path_buf(),
        })
    }

    fn path(&self) -> PathBuf {
        self.parent_path.join(OsStr::from_bytes(&self.name))
    }

    fn err(&self, op: &'static str, source: io::Error) -> UnpackError {
        UnpackError::Target {
            layer: self.layer.clone(),
            path: self.path(),
            op,
            source,
        }
    }

    fn open_root(&self) -> Result<OwnedFd, UnpackError> {
        let fd = rfs::openat(
            &self.parent,
            self.name.as_slice(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err("open", e.into()))?;
        rfs::fchmod(&fd, Mode::from_raw_mode(0o755)).map_err(|e| self.err("chmod", e.into()))?;
        Ok(fd)
    }

    fn commit(&self) -> Result<(), UnpackError> {
        apply::commit(&self.parent, &self.name, &self.target_name).map_err(|e| match e {
            Errno::EXIST | Errno::NOTEMPTY => UnpackError::TargetExists {
                layer: self.layer.clone(),
                path: self.target.clone(),
            },
            e => self.err("rename to target", e.into()),
        })
    }

    fn remove(&self) {
        if let Err(e) = remove::remove_all(std::os::fd::AsFd::as_fd(&self.parent), &self.name) {
            tracing::warn!(layer = %self.layer, path = %self.path().display(), error = %e, "could not remove staging directory");
        }
    }
}

/// What the decompression side measured.
struct Produced {
    /// The compressed blob's digest, when it was hashed ([`BlobCheck::Hash`]).
    digest: Option<Digest>,
    compressed_bytes: u64,
}

enum Produce {
    Io(io::Error),
    ConsumerGone,
}

impl From<io::Error> for Produce {
    fn from(e: io::Error) -> Self {
        Produce::Io(e)
    }
}

/// Counts and hashes (unless `hasher` is `None`) the compressed bytes as the decoder pulls
/// them.
struct Hashing<R> {
    inner: R,
    hasher: Option<Hasher>,
    n: u64,
    /// Bytes read ahead to detect the compression, served first.
    peek: Vec<u8>,
    peek_pos: usize,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.peek_pos < self.peek.len() {
            let n = buf.len().min(self.peek.len() - self.peek_pos);
            buf[..n].copy_from_slice(&self.peek[self.peek_pos..self.peek_pos + n]);
            self.peek_pos += n;
            return Ok(n);
        }
        let n = loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(&buf[..n]);
        }
        self.n += n as u64;
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
    None,
}

/// containerd's `DetectCompression`.
fn detect(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b, 0x08]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// The decompression thread: hash (when `hash`), detect, decompress, hand over; then read
/// the compressed stream to its end.
fn produce<R: Read>(
    reader: R,
    hash: bool,
    tx: SyncSender<io::Result<Chunk>>,
    recycle: Receiver<Vec<u8>>,
) -> Result<Produced, Produce> {
    let mut src = Hashing {
        inner: reader,
        hasher: hash.then(Hasher::new),
        n: 0,
        peek: Vec::new(),
        peek_pos: 0,
    };
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        let n = src.read(&mut magic[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    src.peek = magic[..got].to_vec();
    let result = (|| -> Result<(), Produce> {
        let mut buffered = BufReader::with_capacity(READ_BUF, &mut src);
        match detect(&magic[..got]) {
            Compression::Gzip => pump(
                flate2::bufread::MultiGzDecoder::new(&mut buffered),
                &tx,
                &recycle,
            )?,
            Compression::Zstd => pump(
                zstd::stream::read::Decoder::with_buffer(&mut buffered)?,
                &tx,
                &recycle,
            )?,
            Compression::None => pump(&mut buffered, &tx, &recycle)?,
        };
        io::copy(&mut buffered, &mut io::sink())?;
        Ok(())
    })();
    match result {
        Ok(()) => {}
        Err(Produce::Io(e)) => {
            // Tell the extractor why the data stops (it reports the read error).
            let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(Produce::Io(e));
        }
        Err(e) => return Err(e),
    };
    Ok(Produced {
        digest: src.hasher.map(Hasher::finish),
        compressed_bytes: src.n,
    })
}

fn pump<D: Read>(
    mut d: D,
    tx: &SyncSender<io::Result<Chunk>>,
    recycle: &Receiver<Vec<u8>>,
) -> Result<(), Produce> {
    loop {
        let mut buf = recycle.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
        let mut len = 0;
        while len < buf.len() {
            match d.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Produce::Io(e)),
            }
        }
        if len == 0 {
            return Ok(());
        }
        tx.send(Ok(Chunk { buf, len }))
            .map_err(|_| Produce::ConsumerGone)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compression_like_containerd() {
        assert_eq!(detect(&[0x1f, 0x8b, 0x08, 0]), Compression::Gzip);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(detect(&[0x1f, 0x8b]), Compression::None);
        assert_eq!(detect(b"ustar"), Compression::None);
    }
}
