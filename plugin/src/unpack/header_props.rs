//! Property tests of the tar header reader (DESIGN "Security and bad input": layers come from
//! the network): archives written by the `tar` crate read back the same (names, long names,
//! PAX records, owners, modes, times, sizes, link targets, xattrs); mutated archives and
//! noise never panic, hold at most a bound proportional to the input or a fixed cap (1 MiB
//! PAX / long-name headers, a 512 Ki-entry GNU sparse map), and end in an error or the end.

use std::sync::mpsc;

use proptest::prelude::*;

use super::{TarError, TarReader, BLOCK, TYPE_DIR, TYPE_REG, TYPE_SYMLINK};
use crate::unpack::input::{Chunk, Input};

#[path = "../../../testing/alloc.rs"]
mod alloc;
#[path = "../../../testing/mutate.rs"]
mod mutate;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// The reader's fixed caps: one PAX or GNU long-name header (1 MiB), a GNU 1.0 sparse map
/// (512 Ki (offset, length) pairs of 16 bytes), with room for the records they hold.
const FIXED: usize = (1 << 20) * 3 + (512 << 10) * 16 + (256 << 10);

/// A reader over `bytes`, handed over in pieces of `piece` bytes (as the decompression
/// thread hands them).
fn reader(bytes: &[u8], piece: usize) -> TarReader {
    let (tx, rx) = mpsc::channel();
    for p in bytes.chunks(piece.max(1)) {
        tx.send(Ok(Chunk {
            buf: p.to_vec(),
            len: p.len(),
        }))
        .unwrap();
    }
    drop(tx);
    let (recycle, _) = mpsc::sync_channel(4);
    TarReader::new(Input::new(rx, recycle))
}

/// What a member reads back as.
#[derive(Debug, PartialEq)]
struct Member {
    name: Vec<u8>,
    typeflag: u8,
    linkname: Vec<u8>,
    mode: i64,
    uid: i64,
    gid: i64,
    mtime_secs: i128,
    data: Vec<u8>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Every member of `bytes` (data read), or the error that ended the archive. Each step
/// consumes at least one block, so this ends.
fn read_all(bytes: &[u8], piece: usize) -> Result<Vec<Member>, TarError> {
    let mut r = reader(bytes, piece);
    let mut out = Vec::new();
    while let Some(h) = r.next()? {
        let mut data = Vec::new();
        while r.remaining() > 0 {
            let s = r.data(64 << 10)?;
            if data.len() < 1 << 16 {
                data.extend_from_slice(s);
            }
        }
        out.push(Member {
            name: h.name,
            typeflag: h.typeflag,
            linkname: h.linkname,
            mode: h.mode,
            uid: h.uid,
            gid: h.gid,
            mtime_secs: h.mtime / 1_000_000_000,
            data,
            xattrs: h.xattrs,
        });
        assert!(
            out.len() <= bytes.len() / BLOCK + 1,
            "more members than blocks"
        );
    }
    Ok(out)
}

/// A name of 1..4 components, sometimes long enough for GNU long names or PAX paths.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::collection::vec("[a-zA-Z0-9_.-]{1,12}", 1..4),
        1 => proptest::collection::vec("[a-z]{30,60}", 3..6),
    ]
    .prop_map(|c| c.join("/"))
    .prop_filter("not . or ..", |n| {
        n.split('/').all(|c| c != "." && c != "..")
    })
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    data: Vec<u8>,
    link: String,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        name(),
        prop_oneof![Just(TYPE_REG), Just(TYPE_DIR), Just(TYPE_SYMLINK)],
        0u32..0o7777,
        (prop_oneof![0u64..70000, 0u64..0o7777777], 0u64..70000),
        0u64..0o77777777777,
        proptest::collection::vec(any::<u8>(), 0..1500),
        name(),
        proptest::collection::vec(
            (
                "[a-z]{1,8}\\.[a-z]{1,8}",
                proptest::collection::vec(any::<u8>(), 0..20),
            ),
            0..3,
        ),
    )
        .prop_map(
            |(name, kind, mode, (uid, gid), mtime, data, link, mut xattrs)| {
                xattrs.sort();
                xattrs.dedup_by(|a, b| a.0 == b.0);
                Entry {
                    name,
                    kind,
                    mode,
                    uid,
                    gid,
                    mtime,
                    data,
                    link,
                    xattrs,
                }
            },
        )
}

/// The archive the `tar` crate writes for `entries` (GNU headers, long names as GNU `L`
/// members, xattrs as PAX `SCHILY.xattr.*` records).
fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.xattrs.is_empty() {
            let recs: Vec<(String, &[u8])> = e
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.user.{k}"), v.as_slice()))
                .collect();
            b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        let data: &[u8] = match e.kind {
            TYPE_REG => {
                h.set_entry_type(tar::EntryType::Regular);
                &e.data
            }
            TYPE_DIR => {
                h.set_entry_type(tar::EntryType::Directory);
                &[]
            }
            _ => {
                h.set_entry_type(tar::EntryType::Symlink);
                &[]
            }
        };
        h.set_size(data.len() as u64);
        if e.kind == TYPE_SYMLINK {
            b.append_link(&mut h, &e.name, &e.link).unwrap();
        } else {
            b.append_data(&mut h, &e.name, data).unwrap();
        }
    }
    b.into_inner().unwrap()
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn archives_read_back(entries in proptest::collection::vec(entry(), 0..5), piece in 1usize..3000) {
        let bytes = archive(&entries);
        let got = read_all(&bytes, piece).unwrap();
        prop_assert_eq!(got.len(), entries.len());
        for (g, e) in got.iter().zip(&entries) {
            prop_assert_eq!(&g.name, e.name.as_bytes());
            prop_assert_eq!(g.typeflag, e.kind);
            prop_assert_eq!(g.mode, i64::from(e.mode));
            prop_assert_eq!((g.uid, g.gid), (e.uid as i64, e.gid as i64));
            prop_assert_eq!(g.mtime_secs, i128::from(e.mtime));
            if e.kind == TYPE_SYMLINK {
                prop_assert_eq!(&g.linkname, e.link.as_bytes());
            }
            if e.kind == TYPE_REG {
                prop_assert_eq!(&g.data, &e.data);
            }
            let xattrs: Vec<(Vec<u8>, Vec<u8>)> = e
                .xattrs
                .iter()
                .map(|(k, v)| (format!("user.{k}").into_bytes(), v.clone()))
                .collect();
            prop_assert_eq!(&g.xattrs, &xattrs);
        }
    }

    #[test]
    fn hostile_archives(
        bytes in mutate::hostile(proptest::collection::vec(entry(), 1..4).prop_map(|e| archive(&e))),
        piece in 1usize..3000,
    ) {
        let got = alloc::bounded("tar", bytes.len(), 8, FIXED, || read_all(&bytes, piece));
        if let Err(TarError::Format(reason, _)) = got {
            prop_assert!(!reason.is_empty());
        }
    }

    /// Single header blocks with every field random but a valid checksum, so that parsing
    /// goes past the checksum check: numeric fields, formats, type flags, sparse maps.
    #[test]
    fn hostile_header_blocks(
        mut blk in proptest::collection::vec(any::<u8>(), BLOCK),
        magic in prop_oneof![Just(&b"ustar\0"[..]), Just(&b"ustar "[..]), Just(&b"\0\0\0\0\0\0"[..])],
        typeflag in prop_oneof![Just(b'0'), Just(b'x'), Just(b'g'), Just(b'L'), Just(b'K'), Just(b'S'), any::<u8>()],
        octal in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        blk[257..263].copy_from_slice(magic);
        if magic == b"ustar " {
            blk[263..265].copy_from_slice(b" \0");
        }
        blk[156] = typeflag;
        if octal {
            // Plausible numeric fields (mode, uid, gid, size, mtime), small sizes.
            for (at, len) in [(100, 8), (108, 8), (116, 8), (124, 12), (136, 12)] {
                let v = format!("{:0w$o}\0", blk[at] as u32 % 8, w = len - 1);
                blk[at..at + len].copy_from_slice(v.as_bytes());
            }
        }
        blk[148..156].fill(b' ');
        let sum: u32 = blk.iter().map(|&b| u32::from(b)).sum();
        blk[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut bytes = blk;
        bytes.extend_from_slice(&tail);
        let got = alloc::bounded("tar header", bytes.len(), 8, FIXED, || read_all(&bytes, 512));
        if let Err(TarError::Format(reason, _)) = got {
            prop_assert!(!reason.is_empty());
        }
    }
}
