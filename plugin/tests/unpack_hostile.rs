//! Hostile layers: every way out of the target directory is refused or confined, a
//! sentinel directory beside the target stays byte-for-byte and mtime-for-mtime unchanged,
//! and a refused layer leaves neither target nor staging behind. Headers are written by
//! hand so names the `tar` crate would refuse can be used. Needs root.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use shoal_p2p::Digest;
use shoal_plugin::unpack::{unpack_reader, LayerSpec, UnpackError, UnpackOptions};

#[path = "../../testing/skip.rs"]
mod skip;

/// Root is here; else the test skips, saying so (or fails under CI).
fn is_root() -> bool {
    !skip::skip_unless(&[], true)
}

/// One member: name, type, link name, data.
struct M<'a>(&'a str, u8, &'a str, &'a [u8]);

fn tarball(members: &[M<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for M(name, t, link, data) in members {
        let mut b = [0u8; 512];
        b[..name.len()].copy_from_slice(name.as_bytes());
        let mode = if *t == b'5' { 0o755 } else { 0o644 };
        b[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
        b[108..116].copy_from_slice(b"0000000\0");
        b[116..124].copy_from_slice(b"0000000\0");
        b[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        b[136..148].copy_from_slice(b"00000000001\0");
        b[156] = *t;
        b[157..157 + link.len()].copy_from_slice(link.as_bytes());
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&c| c as u32).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&b);
        out.extend_from_slice(data);
        while out.len() % 512 != 0 {
            out.push(0);
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Everything under `dir` (not following symlinks): type, mode, owner, size, mtime, content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let content = if m.is_file() {
            format!("{:?}", fs::read(&p).unwrap())
        } else if m.file_type().is_symlink() {
            format!("-> {:?}", fs::read_link(&p).unwrap())
        } else {
            String::new()
        };
        out.insert(
            p.clone(),
            format!(
                "{:o} {}:{} {} {}.{} {}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                content
            ),
        );
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
    }
    out
}

struct World {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    sentinel: PathBuf,
    layers: PathBuf,
    target: PathBuf,
}

/// `base/sentinel/{passwd, sub/file}` beside `base/layers/target`.
fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let sentinel = base.join("sentinel");
    fs::create_dir_all(sentinel.join("sub")).unwrap();
    fs::write(sentinel.join("passwd"), b"root:x:0:0").unwrap();
    fs::write(sentinel.join("sub/file"), b"keep").unwrap();
    let layers = base.join("layers");
    fs::create_dir(&layers).unwrap();
    let target = layers.join("target");
    World {
        _tmp: tmp,
        base,
        sentinel,
        layers,
        target,
    }
}

fn spec(blob: &[u8]) -> LayerSpec {
    LayerSpec {
        digest: Digest::of(blob),
        diff_id: None,
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
    }
}

/// Unpacks; checks the sentinel and the base directory's other contents are unchanged.
fn unpack(w: &World, members: &[M<'_>]) -> Result<(), UnpackError> {
    let before = snapshot(&w.sentinel);
    let base_before: Vec<_> = fs::read_dir(&w.base)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let blob = tarball(members);
    let r = unpack_reader(
        &blob[..],
        &spec(&blob),
        &w.target,
        &UnpackOptions::default(),
    )
    .map(drop);
    assert_eq!(snapshot(&w.sentinel), before, "sentinel changed");
    let base_after: Vec<_> = fs::read_dir(&w.base)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        base_before, base_after,
        "something appeared beside the layers"
    );
    let layers: Vec<_> = fs::read_dir(&w.layers)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    match &r {
        Ok(()) => assert_eq!(layers, vec![std::ffi::OsString::from("target")]),
        Err(e) => {
            assert!(layers.is_empty(), "left behind after {e}: {layers:?}");
            println!("refused as expected: {e}");
        }
    }
    r
}

fn refused(r: Result<(), UnpackError>, entry: &str) {
    match r {
        Err(e @ UnpackError::Refused { .. }) => {
            let s = e.to_string();
            assert!(
                s.contains(&format!("{entry:?}")),
                "{s} does not name {entry}"
            );
            assert!(s.contains("sha256:"), "{s} does not name the layer");
        }
        other => panic!("expected a refusal naming {entry}, got {other:?}"),
    }
}

#[test]
fn dotdot_names_are_confined() {
    if !is_root() {
        return;
    }
    let w = world();
    unpack(
        &w,
        &[
            M("../sentinel/passwd", b'0', "", b"pwned"),
            M("a/../../../../sentinel/sub/file", b'0', "", b"pwned"),
            M("../../x", b'0', "", b"x"),
        ],
    )
    .unwrap();
    assert_eq!(
        fs::read(w.target.join("sentinel/passwd")).unwrap(),
        b"pwned"
    );
    assert_eq!(
        fs::read(w.target.join("sentinel/sub/file")).unwrap(),
        b"pwned"
    );
    assert_eq!(fs::read(w.target.join("x")).unwrap(), b"x");
}

#[test]
fn absolute_names_are_confined() {
    if !is_root() {
        return;
    }
    let w = world();
    let abs = format!("{}/passwd", w.sentinel.display());
    unpack(
        &w,
        &[M(&abs, b'0', "", b"pwned"), M("/etc/x", b'0', "", b"x")],
    )
    .unwrap();
    let inside = w.target.join(abs.trim_start_matches('/'));
    assert_eq!(fs::read(inside).unwrap(), b"pwned");
    assert_eq!(fs::read(w.target.join("etc/x")).unwrap(), b"x");
}

#[test]
fn writing_through_a_symlink_out_is_refused() {
    if !is_root() {
        return;
    }
    let w = world();
    let abs = w.sentinel.display().to_string();
    refused(
        unpack(
            &w,
            &[
                M("evil", b'2', &abs, b""),
                M("evil/passwd", b'0', "", b"pwned"),
            ],
        ),
        "evil/passwd",
    );
    refused(
        unpack(
            &w,
            &[
                M("evil", b'2', "../..", b""),
                M("evil/sentinel/passwd", b'0', "", b"pwned"),
            ],
        ),
        "evil/sentinel/passwd",
    );
    refused(
        unpack(
            &w,
            &[
                M("d/", b'5', "", b""),
                M("d/evil", b'2', "/", b""),
                M("d/evil/x/y", b'5', "", b""),
            ],
        ),
        "d/evil/x/y",
    );
    // a hard link whose parent is the symlink
    refused(
        unpack(
            &w,
            &[M("evil", b'2', &abs, b""), M("h", b'1', "evil/passwd", b"")],
        ),
        "h",
    );
}

#[test]
fn symlinked_parent_inside_the_layer_is_refused() {
    if !is_root() {
        return;
    }
    let w = world();
    refused(
        unpack(
            &w,
            &[
                M("real/", b'5', "", b""),
                M("alias", b'2', "real", b""),
                M("alias/f", b'0', "", b"f"),
            ],
        ),
        "alias/f",
    );
}

#[test]
fn hard_links_to_outside_or_absent_targets_are_refused() {
    if !is_root() {
        return;
    }
    let w = world();
    let abs = format!("{}/passwd", w.sentinel.display());
    refused(unpack(&w, &[M("h", b'1', &abs, b"")]), "h");
    refused(unpack(&w, &[M("h", b'1', "../sentinel/passwd", b"")]), "h");
    refused(unpack(&w, &[M("h", b'1', "/etc/passwd", b"")]), "h");
    refused(unpack(&w, &[M("h", b'1', "missing", b"")]), "h");
    refused(unpack(&w, &[M("h", b'1', "..", b"")]), "h");
}

#[test]
fn hard_link_to_a_symlink_out_links_the_symlink_itself() {
    if !is_root() {
        return;
    }
    let w = world();
    let abs = format!("{}/passwd", w.sentinel.display());
    // then write to the hard link's name: replaces the link, never the sentinel
    unpack(
        &w,
        &[
            M("s", b'2', &abs, b""),
            M("h", b'1', "s", b""),
            M("s", b'0', "", b"replaced"),
        ],
    )
    .unwrap();
    let h = fs::symlink_metadata(w.target.join("h")).unwrap();
    assert!(h.file_type().is_symlink());
    assert_eq!(
        fs::read_link(w.target.join("h")).unwrap(),
        PathBuf::from(&abs)
    );
    assert_eq!(fs::read(w.target.join("s")).unwrap(), b"replaced");
    fs::remove_dir_all(&w.target).unwrap();
    // and writing below the hard-linked symlink is refused
    let dir = w.sentinel.display().to_string();
    refused(
        unpack(
            &w,
            &[
                M("s", b'2', &dir, b""),
                M("h", b'1', "s", b""),
                M("h/passwd", b'0', "", b"x"),
            ],
        ),
        "h/passwd",
    );
}

#[test]
fn replacing_a_symlink_replaces_the_symlink() {
    if !is_root() {
        return;
    }
    let w = world();
    let abs = format!("{}/passwd", w.sentinel.display());
    let dir = w.sentinel.display().to_string();
    unpack(
        &w,
        &[
            M("f", b'2', &abs, b""),
            M("f", b'0', "", b"new content"),
            M("d", b'2', &dir, b""),
            M("d/", b'5', "", b""),
            M("d/file", b'0', "", b"in"),
            M("n", b'2', &abs, b""),
            M("n", b'6', "", b""),
            M("l", b'2', &abs, b""),
            M("l", b'2', "elsewhere", b""),
        ],
    )
    .unwrap();
    assert_eq!(fs::read(w.target.join("f")).unwrap(), b"new content");
    assert!(fs::symlink_metadata(w.target.join("d")).unwrap().is_dir());
    assert_eq!(fs::read(w.target.join("d/file")).unwrap(), b"in");
    assert_eq!(
        fs::read_link(w.target.join("l")).unwrap(),
        PathBuf::from("elsewhere")
    );
}

#[test]
fn whiteouts_cannot_escape() {
    if !is_root() {
        return;
    }
    let w = world();
    refused(unpack(&w, &[M("d/.wh...", b'0', "", b"")]), "d/.wh...");
    refused(unpack(&w, &[M(".wh..", b'0', "", b"")]), ".wh..");
    let abs = w.sentinel.display().to_string();
    refused(
        unpack(
            &w,
            &[
                M("evil", b'2', &abs, b""),
                M("evil/.wh.passwd", b'0', "", b""),
            ],
        ),
        "evil/.wh.passwd",
    );
    refused(
        unpack(
            &w,
            &[
                M("evil", b'2', &abs, b""),
                M("evil/.wh..wh..opq", b'0', "", b""),
            ],
        ),
        "evil/.wh..wh..opq",
    );
}

#[test]
fn malformed_archives_fail_cleanly() {
    if !is_root() {
        return;
    }
    let w = world();
    // header claims more data than the stream has
    let mut blob = tarball(&[M("f", b'0', "", &[7u8; 3000])]);
    blob.truncate(1500);
    let before = snapshot(&w.sentinel);
    let e = unpack_reader(
        &blob[..],
        &spec(&blob),
        &w.target,
        &UnpackOptions::default(),
    )
    .unwrap_err();
    println!("{e}");
    assert!(e.to_string().contains("sha256:"));
    assert_eq!(snapshot(&w.sentinel), before);
    assert!(fs::read_dir(&w.layers).unwrap().next().is_none());
    // garbage
    let blob = vec![0x55u8; 4096];
    let e = unpack_reader(
        &blob[..],
        &spec(&blob),
        &w.target,
        &UnpackOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, UnpackError::Malformed { .. }), "{e}");
    assert!(fs::read_dir(&w.layers).unwrap().next().is_none());
    // unknown member type
    let e = unpack(&w, &[M("x", b'Z', "", b"")]).unwrap_err();
    assert!(e.to_string().contains("\"x\""), "{e}");
}
