//! Round-trip tests of the streaming layer unpacker: every member type and attribute,
//! whiteouts, long names, PAX xattrs, sparse files, compressions, digests, truncation and
//! the async stream entry point. Needs root (devices, chown, trusted.* xattrs).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use shoal_p2p::Digest;
use shoal_plugin::unpack::{unpack_reader, unpack_stream, LayerSpec, UnpackError, UnpackOptions};

#[path = "../../testing/skip.rs"]
mod skip;

/// Root is here; else the test skips, saying so (or fails under CI).
fn is_root() -> bool {
    !skip::skip_unless(&[], true)
}

/// A raw ustar header block (no validation: hostile names welcome).
fn raw(name: &[u8], typeflag: u8, size: u64, mode: u32, link: &[u8], mtime: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..name.len()].copy_from_slice(name);
    b[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    b[108..116].copy_from_slice(b"0000000\0");
    b[116..124].copy_from_slice(b"0000000\0");
    b[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    b[136..148].copy_from_slice(format!("{mtime:011o}\0").as_bytes());
    b[156] = typeflag;
    b[157..157 + link.len()].copy_from_slice(link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    set_cksum(&mut b);
    b
}

fn set_cksum(b: &mut [u8; 512]) {
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&c| c as u32).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn pad(out: &mut Vec<u8>) {
    while out.len() % 512 != 0 {
        out.push(0);
    }
}

fn end(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn spec(blob: &[u8]) -> LayerSpec {
    LayerSpec {
        digest: Digest::of(blob),
        diff_id: None,
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn header(
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(mtime);
    h.set_size(size);
    h.set_cksum();
    h
}

fn no_leftovers(dir: &Path) {
    let left: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    rustix::fs::lgetxattr(path, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

fn mtime(p: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

#[test]
fn every_member_type_round_trips() {
    if !is_root() {
        return;
    }
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &header(
            "d/",
            tar::EntryType::Directory,
            0o2750,
            1000,
            1001,
            1_000_000,
            0,
        ),
        &[][..],
    )
    .unwrap();
    b.append(
        &header(
            "d/suid",
            tar::EntryType::Regular,
            0o4755,
            1,
            2,
            1_234_567,
            5,
        ),
        &b"hello"[..],
    )
    .unwrap();
    let mut l = header("d/link", tar::EntryType::Symlink, 0o777, 3, 4, 7_654_321, 0);
    l.set_link_name("suid").unwrap();
    l.set_cksum();
    b.append(&l, &[][..]).unwrap();
    let mut hl = header("d/hard", tar::EntryType::Link, 0o4755, 1, 2, 1_234_567, 0);
    hl.set_link_name("d/suid").unwrap();
    hl.set_cksum();
    b.append(&hl, &[][..]).unwrap();
    let mut c = header("dev/null", tar::EntryType::Char, 0o666, 0, 0, 5, 0);
    c.set_device_major(1).unwrap();
    c.set_device_minor(3).unwrap();
    c.set_cksum();
    b.append(&c, &[][..]).unwrap();
    let mut bl = header("dev/loop9", tar::EntryType::Block, 0o660, 0, 6, 5, 0);
    bl.set_device_major(7).unwrap();
    bl.set_device_minor(9).unwrap();
    bl.set_cksum();
    b.append(&bl, &[][..]).unwrap();
    b.append(
        &header("fifo", tar::EntryType::Fifo, 0o1640, 9, 9, 42, 0),
        &[][..],
    )
    .unwrap();
    b.append(
        &header("sticky/", tar::EntryType::Directory, 0o1777, 0, 0, 99, 0),
        &[][..],
    )
    .unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    b.append(
        &header(
            "sticky/big",
            tar::EntryType::Regular,
            0o600,
            0,
            0,
            100,
            big.len() as u64,
        ),
        &big[..],
    )
    .unwrap();
    let blob = b.into_inner().unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("layer");
    let stats = unpack_reader(&blob[..], &spec(&blob), &target, &UnpackOptions::default()).unwrap();
    assert_eq!(stats.entries, 9);
    assert_eq!(stats.diff_id, Digest::of(&blob));
    assert_eq!(stats.compressed_bytes, blob.len() as u64);
    assert_eq!(stats.uncompressed_bytes, blob.len() as u64);

    let root = fs::metadata(&target).unwrap();
    assert_eq!(root.mode() & 0o7777, 0o755);
    let d = fs::metadata(target.join("d")).unwrap();
    assert_eq!((d.mode() & 0o7777, d.uid(), d.gid()), (0o2750, 1000, 1001));
    assert_eq!(
        mtime(&target.join("d")),
        (1_000_000, 0),
        "directory mtime set after its content"
    );
    assert_eq!(d.atime(), 1_000_000);
    let f = fs::metadata(target.join("d/suid")).unwrap();
    assert_eq!(
        (f.mode() & 0o7777, f.uid(), f.gid(), f.nlink()),
        (0o4755, 1, 2, 2)
    );
    assert_eq!((f.mtime(), f.atime()), (1_234_567, 1_234_567));
    assert_eq!(fs::read(target.join("d/hard")).unwrap(), b"hello");
    assert_eq!(f.ino(), fs::metadata(target.join("d/hard")).unwrap().ino());
    let s = fs::symlink_metadata(target.join("d/link")).unwrap();
    assert!(s.file_type().is_symlink());
    assert_eq!((s.uid(), s.gid(), s.mtime()), (3, 4, 7_654_321));
    assert_eq!(
        fs::read_link(target.join("d/link")).unwrap(),
        PathBuf::from("suid")
    );
    let c = fs::metadata(target.join("dev/null")).unwrap();
    assert!(c.file_type().is_char_device());
    assert_eq!(
        (c.rdev(), c.mode() & 0o7777),
        (rustix::fs::makedev(1, 3), 0o666)
    );
    let bl = fs::metadata(target.join("dev/loop9")).unwrap();
    assert!(bl.file_type().is_block_device());
    assert_eq!(
        (bl.rdev(), bl.gid(), bl.mode() & 0o7777),
        (rustix::fs::makedev(7, 9), 6, 0o660)
    );
    let dev = fs::metadata(target.join("dev")).unwrap();
    assert_eq!(
        dev.mode() & 0o7777,
        0o755,
        "implicit parent without parent layers"
    );
    let fifo = fs::metadata(target.join("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!((fifo.mode() & 0o7777, fifo.uid()), (0o1640, 9));
    assert_eq!(
        fs::metadata(target.join("sticky"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    assert_eq!(fs::read(target.join("sticky/big")).unwrap(), big);
    no_leftovers_except(tmp.path(), "layer");
}

fn no_leftovers_except(dir: &Path, keep: &str) {
    let left: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != keep)
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn whiteouts_opaque_and_replacement() {
    if !is_root() {
        return;
    }
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &header(".wh.gone", tar::EntryType::Regular, 0o644, 7, 8, 1, 0),
        &[][..],
    )
    .unwrap();
    b.append(
        &header("etc/", tar::EntryType::Directory, 0o755, 0, 0, 1, 0),
        &[][..],
    )
    .unwrap();
    b.append(
        &header(
            "etc/.wh..wh..opq",
            tar::EntryType::Regular,
            0o644,
            0,
            0,
            1,
            0,
        ),
        &[][..],
    )
    .unwrap();
    b.append(
        &header(".wh..wh..opq", tar::EntryType::Regular, 0o644, 0, 0, 1, 0),
        &[][..],
    )
    .unwrap();
    // file over a directory (with content) of the same layer, and dir over dir merges
    b.append(
        &header("x/", tar::EntryType::Directory, 0o700, 0, 0, 1, 0),
        &[][..],
    )
    .unwrap();
    b.append(
        &header("x/inner", tar::EntryType::Regular, 0o644, 0, 0, 1, 1),
        &b"i"[..],
    )
    .unwrap();
    b.append(
        &header("x", tar::EntryType::Regular, 0o640, 0, 0, 2, 3),
        &b"new"[..],
    )
    .unwrap();
    b.append(
        &header("y/", tar::EntryType::Directory, 0o700, 0, 0, 1, 0),
        &[][..],
    )
    .unwrap();
    b.append(
        &header("y/keep", tar::EntryType::Regular, 0o644, 0, 0, 1, 1),
        &b"k"[..],
    )
    .unwrap();
    b.append(
        &header("y/", tar::EntryType::Directory, 0o711, 5, 5, 3, 0),
        &[][..],
    )
    .unwrap();
    b.append(
        &header("z", tar::EntryType::Regular, 0o644, 0, 0, 1, 1),
        &b"z"[..],
    )
    .unwrap();
    b.append(
        &header("z/", tar::EntryType::Directory, 0o755, 0, 0, 4, 0),
        &[][..],
    )
    .unwrap();
    let blob = b.into_inner().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("l");
    unpack_reader(&blob[..], &spec(&blob), &target, &UnpackOptions::default()).unwrap();
    let w = fs::symlink_metadata(target.join("gone")).unwrap();
    assert!(w.file_type().is_char_device());
    assert_eq!(
        (w.rdev(), w.mode() & 0o7777, w.uid(), w.gid()),
        (0, 0, 7, 8)
    );
    assert_eq!(
        xattr(&target.join("etc"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        xattr(&target, "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!target.join("etc/.wh..wh..opq").exists());
    assert_eq!(fs::read(target.join("x")).unwrap(), b"new");
    let y = fs::metadata(target.join("y")).unwrap();
    assert_eq!((y.mode() & 0o7777, y.uid(), y.mtime()), (0o711, 5, 3));
    assert!(target.join("y/keep").exists());
    assert!(fs::metadata(target.join("z")).unwrap().is_dir());
}

#[test]
fn implicit_parents_copy_parent_layer_attributes() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    fs::create_dir_all(lower.join("usr/share")).unwrap();
    fs::set_permissions(lower.join("usr/share"), fs::Permissions::from_mode(0o2701)).unwrap();
    std::os::unix::fs::chown(lower.join("usr/share"), Some(5), Some(6)).unwrap();
    rustix::fs::lsetxattr(
        lower.join("usr/share").as_path(),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        lower.join("usr/share").as_path(),
        "user.keep",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 111,
            tv_nsec: 5,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 222,
            tv_nsec: 7,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        lower.join("usr/share").as_path(),
        &ts,
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    let upper = tmp.path().join("upper");
    fs::create_dir_all(upper.join("usr")).unwrap();
    fs::set_permissions(upper.join("usr"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(&upper, Some(33), Some(34)).unwrap();

    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &header(
            "usr/share/doc/f",
            tar::EntryType::Regular,
            0o644,
            0,
            0,
            1,
            1,
        ),
        &b"f"[..],
    )
    .unwrap();
    let blob = b.into_inner().unwrap();
    let target = tmp.path().join("new");
    let opts = UnpackOptions {
        parents: vec![upper.clone(), lower.clone()],
    };
    unpack_reader(&blob[..], &spec(&blob), &target, &opts).unwrap();
    let root = fs::metadata(&target).unwrap();
    assert_eq!(
        (root.uid(), root.gid(), root.mode() & 0o7777),
        (33, 34, 0o755)
    );
    assert_eq!(
        fs::metadata(target.join("usr")).unwrap().mode() & 0o7777,
        0o750,
        "top-most parent wins"
    );
    let share = fs::metadata(target.join("usr/share")).unwrap();
    assert_eq!(
        (share.mode() & 0o7777, share.uid(), share.gid()),
        (0o2701, 5, 6)
    );
    assert_eq!(share.atime(), 111);
    assert_eq!(
        xattr(&target.join("usr/share"), "user.keep").as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(
        xattr(&target.join("usr/share"), "trusted.overlay.opaque"),
        None
    );
    assert_eq!(
        fs::metadata(target.join("usr/share/doc")).unwrap().mode() & 0o7777,
        0o755
    );
}

#[test]
fn long_names_pax_records_and_xattrs() {
    if !is_root() {
        return;
    }
    let long = format!("{}/{}", "a".repeat(120), "b".repeat(150));
    let long_link = "t".repeat(300);
    let mut b = tar::Builder::new(Vec::new());
    // GNU long name ('L') and long link ('K') via the tar crate
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(2);
    b.append_data(&mut h, &long, &b"ln"[..]).unwrap();
    let mut s = tar::Header::new_gnu();
    s.set_entry_type(tar::EntryType::Symlink);
    s.set_mode(0o777);
    b.append_link(&mut s, "sym", &long_link).unwrap();
    // PAX: path, mtime with fraction, atime later than mtime, xattrs
    let pax_name = format!("{}/pax", "p".repeat(200));
    b.append_pax_extensions([
        ("path", pax_name.as_bytes()),
        ("mtime", &b"1700000000.123456789"[..]),
        ("atime", &b"1800000000.5"[..]),
        ("SCHILY.xattr.user.test", &b"value\0bin"[..]),
        ("SCHILY.xattr.trusted.t", &b"T"[..]),
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
        (
            "SCHILY.xattr.security.capability",
            &[
                1u8, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ][..],
        ),
    ])
    .unwrap();
    b.append(
        &header("ignored-name", tar::EntryType::Regular, 0o755, 0, 0, 1, 1),
        &b"p"[..],
    )
    .unwrap();
    let blob = b.into_inner().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("l");
    unpack_reader(&blob[..], &spec(&blob), &target, &UnpackOptions::default()).unwrap();
    assert_eq!(fs::read(target.join(&long)).unwrap(), b"ln");
    assert_eq!(
        fs::read_link(target.join("sym")).unwrap(),
        PathBuf::from(&long_link)
    );
    let p = target.join(&pax_name);
    assert_eq!(fs::read(&p).unwrap(), b"p");
    assert_eq!(mtime(&p), (1_700_000_000, 123_456_789));
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1_800_000_000, 500_000_000));
    assert_eq!(xattr(&p, "user.test").as_deref(), Some(&b"value\0bin"[..]));
    // Like containerd, never a trusted.* xattr from the archive: a layer must not be able to
    // steer overlayfs (trusted.overlay.redirect, .opaque, .origin ...).
    assert_eq!(xattr(&p, "trusted.t"), None);
    assert_eq!(xattr(&p, "trusted.overlay.redirect"), None);
    assert!(xattr(&p, "security.capability").is_some());
    assert!(!target.join("ignored-name").exists());
}

/// Old GNU sparse ('S') member: map in the header, data fragments in the archive.
fn gnu_sparse(name: &[u8], frags: &[(u64, &[u8])], real: u64) -> Vec<u8> {
    let data: Vec<u8> = frags.iter().flat_map(|(_, d)| d.to_vec()).collect();
    let mut b = raw(name, b'S', data.len() as u64, 0o640, b"", 77);
    b[257..263].copy_from_slice(b"ustar ");
    b[263..265].copy_from_slice(b" \0");
    for (i, (off, d)) in frags.iter().enumerate() {
        let at = 386 + i * 24;
        b[at..at + 12].copy_from_slice(format!("{off:011o}\0").as_bytes());
        b[at + 12..at + 24].copy_from_slice(format!("{:011o}\0", d.len()).as_bytes());
    }
    b[483..495].copy_from_slice(format!("{real:011o}\0").as_bytes());
    set_cksum(&mut b);
    let mut out = b.to_vec();
    out.extend_from_slice(&data);
    pad(&mut out);
    out
}

/// PAX GNU.sparse 1.0 member: map at the start of the data.
fn pax_sparse_1_0(name: &str, frags: &[(u64, &[u8])], real: u64) -> Vec<u8> {
    let mut map = format!("{}\n", frags.len());
    for (off, d) in frags {
        map.push_str(&format!("{off}\n{}\n", d.len()));
    }
    let mut data = map.into_bytes();
    pad(&mut data);
    for (_, d) in frags {
        data.extend_from_slice(d);
    }
    let recs = [
        ("GNU.sparse.major", "1".to_string()),
        ("GNU.sparse.minor", "0".to_string()),
        ("GNU.sparse.name", name.to_string()),
        ("GNU.sparse.realsize", real.to_string()),
    ];
    let mut pax = String::new();
    for (k, v) in recs {
        let body = format!(" {k}={v}\n");
        let mut n = body.len() + 1;
        while n != body.len() + n.to_string().len() {
            n = body.len() + n.to_string().len();
        }
        pax.push_str(&format!("{n}{body}"));
    }
    let mut out = raw(b"PaxHeaders/x", b'x', pax.len() as u64, 0o644, b"", 0).to_vec();
    out.extend_from_slice(pax.as_bytes());
    pad(&mut out);
    out.extend_from_slice(&raw(
        b"GNUSparseFile.0/x",
        b'0',
        data.len() as u64,
        0o600,
        b"",
        88,
    ));
    out.extend_from_slice(&data);
    pad(&mut out);
    out
}

#[test]
fn sparse_files_are_written_expanded() {
    if !is_root() {
        return;
    }
    let frags: &[(u64, &[u8])] = &[(0, b"head"), (10_000, b"middle"), (200_000, b"tail")];
    let mut blob = gnu_sparse(b"old", frags, 300_000);
    blob.extend(pax_sparse_1_0("new", frags, 300_000));
    let blob = end(blob);
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("l");
    unpack_reader(&blob[..], &spec(&blob), &target, &UnpackOptions::default()).unwrap();
    let mut want = vec![0u8; 300_000];
    for (off, d) in frags {
        want[*off as usize..*off as usize + d.len()].copy_from_slice(d);
    }
    assert_eq!(fs::read(target.join("old")).unwrap(), want);
    assert_eq!(fs::read(target.join("new")).unwrap(), want);
    assert_eq!(mtime(&target.join("new")).0, 88);
    assert_eq!(
        fs::metadata(target.join("old")).unwrap().mode() & 0o777,
        0o640
    );
}

fn sample_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..50 {
        let data = vec![i as u8; i * 1000];
        b.append(
            &header(
                &format!("dir{}/file{i}", i % 5),
                tar::EntryType::Regular,
                0o644,
                0,
                0,
                1,
                data.len() as u64,
            ),
            &data[..],
        )
        .unwrap();
    }
    let mut t = b.into_inner().unwrap();
    t.extend_from_slice(&[0u8; 4096]); // trailing padding after the end marker
    t
}

fn check_sample(target: &Path) {
    for i in 0..50 {
        assert_eq!(
            fs::read(target.join(format!("dir{}/file{i}", i % 5))).unwrap(),
            vec![i as u8; i * 1000]
        );
    }
}

#[test]
fn gzip_multi_member_zstd_multi_frame_and_plain() {
    if !is_root() {
        return;
    }
    let tarball = sample_tar();
    let (a, b) = tarball.split_at(40_000);
    let mut gz = gzip(a);
    gz.extend(gzip(b));
    let mut zst = zstd::encode_all(a, 3).unwrap();
    zst.extend(zstd::encode_all(b, 1).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    for (name, blob) in [("gz", gz), ("zst", zst), ("plain", tarball.clone())] {
        let target = tmp.path().join(name);
        let mut layer = spec(&blob);
        layer.diff_id = Some(Digest::of(&tarball));
        let stats = unpack_reader(&blob[..], &layer, &target, &UnpackOptions::default()).unwrap();
        assert_eq!(stats.diff_id, Digest::of(&tarball), "{name}");
        assert_eq!(stats.uncompressed_bytes, tarball.len() as u64);
        assert_eq!(stats.compressed_bytes, blob.len() as u64);
        assert_eq!(stats.entries, 50);
        check_sample(&target);
    }
}

#[test]
fn digest_and_diff_id_mismatch_leave_nothing() {
    if !is_root() {
        return;
    }
    let tarball = sample_tar();
    let blob = gzip(&tarball);
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("l");
    let mut wrong = spec(&blob);
    wrong.digest = Digest::of(b"something else");
    let e = unpack_reader(&blob[..], &wrong, &target, &UnpackOptions::default()).unwrap_err();
    assert!(matches!(e, UnpackError::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&wrong.digest.to_string()));
    no_leftovers(tmp.path());
    let mut wrong = spec(&blob);
    wrong.diff_id = Some(Digest::of(&blob));
    let e = unpack_reader(&blob[..], &wrong, &target, &UnpackOptions::default()).unwrap_err();
    assert!(matches!(e, UnpackError::DiffIdMismatch { .. }), "{e}");
    no_leftovers(tmp.path());
}

#[test]
fn truncated_and_malformed_input_leave_nothing() {
    if !is_root() {
        return;
    }
    let tarball = sample_tar();
    let gz = gzip(&tarball);
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("l");
    for blob in [
        gz[..gz.len() / 2].to_vec(),
        tarball[..30_000].to_vec(),
        tarball[..700].to_vec(),
        zstd::encode_all(&tarball[..20_000], 1).unwrap(),
    ] {
        let e =
            unpack_reader(&blob[..], &spec(&blob), &target, &UnpackOptions::default()).unwrap_err();
        println!("{e}");
        no_leftovers(tmp.path());
    }
    // a header with a bad checksum
    let mut bad = raw(b"f", b'0', 0, 0o644, b"", 0);
    bad[0] = b'g';
    let blob = end(bad.to_vec());
    let e = unpack_reader(&blob[..], &spec(&blob), &target, &UnpackOptions::default()).unwrap_err();
    assert!(matches!(e, UnpackError::Malformed { .. }), "{e}");
    no_leftovers(tmp.path());
    // target already exists
    fs::create_dir(&target).unwrap();
    let e = unpack_reader(
        &tarball[..],
        &spec(&tarball),
        &target,
        &UnpackOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, UnpackError::TargetExists { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_in_small_chunks_and_stream_errors() {
    if !is_root() {
        return;
    }
    let tarball = sample_tar();
    let blob = gzip(&tarball);
    let tmp = tempfile::tempdir().unwrap();
    let chunks: Vec<std::io::Result<Bytes>> = blob
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let target = tmp.path().join("ok");
    let stats = unpack_stream(
        futures::stream::iter(chunks),
        &spec(&blob),
        &target,
        &UnpackOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(stats.diff_id, Digest::of(&tarball));
    check_sample(&target);

    let mut chunks: Vec<std::io::Result<Bytes>> = blob[..blob.len() / 2]
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    chunks.push(Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "peer went away",
    )));
    chunks.push(Ok(Bytes::copy_from_slice(&blob[blob.len() / 2..])));
    let target = tmp.path().join("bad");
    let e = unpack_stream(
        futures::stream::iter(chunks),
        &spec(&blob),
        &target,
        &UnpackOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, UnpackError::Read { .. }), "{e}");
    assert!(e.to_string().contains("peer went away"), "{e}");
    no_leftovers_except(tmp.path(), "ok");
}

/// Quick self-check of throughput: `cargo test --release -p shoal-plugin --test
/// unpack_roundtrip -- --ignored --nocapture throughput`. Unpacks a tar of /usr/share
/// (or `$SHOAL_BENCH_DIR`).
#[test]
#[ignore]
fn throughput_self_check() {
    if !is_root() {
        return;
    }
    let src = std::env::var("SHOAL_BENCH_DIR").unwrap_or_else(|_| "/usr/share".into());
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", &src).unwrap();
    let tarball = b.into_inner().unwrap();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&tarball).unwrap();
        e.finish().unwrap()
    };
    for (name, blob) in [("plain", &tarball), ("gzip", &gz)] {
        let target = tmp.path().join(name);
        let t = std::time::Instant::now();
        let stats =
            unpack_reader(&blob[..], &spec(blob), &target, &UnpackOptions::default()).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "{name}: {} entries, {:.0} MB uncompressed in {s:.2}s = {:.0} MB/s",
            stats.entries,
            stats.uncompressed_bytes as f64 / 1e6,
            stats.uncompressed_bytes as f64 / 1e6 / s
        );
    }
}
