//! End to end: an image holding every kind of layer entry is written by the test, pushed with
//! skopeo to a real `docker-registry` on 127.0.0.1, resolved and streamed by shoal's registry
//! client through shoal's unpacker, and every unpacked layer is compared with what containerd
//! 1.6's own overlayfs snapshotter made of the same image (`ctr images pull`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use shoal_integration::compare::assert_same_tree;
use shoal_integration::containerd::{scratch_dir, TestContainerd};
use shoal_integration::image::{
    chain_ids, Attrs, Compression, Layer, LayerBuilder, OciLayout, PlatformImage,
};
use shoal_integration::registry::TestRegistry;
use shoal_integration::tools::skip_unless;
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::Platform;
use shoal_plugin::unpack::{unpack_stream, LayerSpec, UnpackOptions};

/// A base layer with every entry type and attribute the unpacker must carry over.
fn base_layer() -> Result<Vec<u8>> {
    let mut b = LayerBuilder::new();
    let t = |s: u64| 1_600_000_000 + s * 3_600;
    let long_dir = format!("deep/{}", "d".repeat(120));
    let big: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    b.dir("etc", Attrs::new(0o755).mtime(t(1)))?
        .file(
            "etc/passwd",
            Attrs::new(0o644).mtime(t(2)),
            b"root:x:0:0::/root:/bin/sh\n",
        )?
        .file(
            "etc/shadow",
            Attrs::new(0o640).owner(0, 42).mtime(t(3)),
            b"root:*:1::::::\n",
        )?
        .symlink("etc/abs", "/etc/passwd", Attrs::new(0o777).mtime(t(4)))?
        .dir("tmp", Attrs::new(0o1777).mtime(t(5)))?
        .dir("usr", Attrs::new(0o755).mtime(t(6)))?
        .dir("usr/bin", Attrs::new(0o755).mtime(t(7)))?
        .file(
            "usr/bin/dash",
            Attrs::new(0o755).mtime(t(8)),
            b"\x7fELF dash",
        )?
        .symlink("usr/bin/sh", "dash", Attrs::new(0o777).mtime(t(9)))?
        .file("usr/bin/su", Attrs::new(0o4755).mtime(t(10)), b"\x7fELF su")?
        .hardlink(
            "usr/bin/su-link",
            "usr/bin/su",
            Attrs::new(0o4755).mtime(t(10)),
        )?
        .file(
            "usr/bin/wall",
            Attrs::new(0o2755).owner(0, 5).mtime(t(11)),
            b"\x7fELF wall",
        )?
        .symlink("bin", "usr/bin", Attrs::new(0o777).mtime(t(12)))?
        .symlink("dangling", "does/not/exist", Attrs::new(0o777).mtime(t(13)))?
        .dir("dev", Attrs::new(0o755).mtime(t(14)))?
        .device("dev/null", false, 1, 3, Attrs::new(0o666).mtime(t(15)))?
        .device(
            "dev/loop0",
            true,
            7,
            0,
            Attrs::new(0o660).owner(0, 6).mtime(t(16)),
        )?
        .fifo("dev/initctl", Attrs::new(0o600).mtime(t(17)))?
        .file(
            "xattrs",
            Attrs::new(0o644)
                .mtime(t(18))
                .xattr("user.shoal", b"hello")
                .xattr("trusted.shoal", b"t"),
            b"has xattrs",
        )?
        .dir(
            "xdir",
            Attrs::new(0o700).mtime(t(19)).xattr("user.dir", b"1"),
        )?
        .dir("deep", Attrs::new(0o755).mtime(t(20)))?
        .dir(&long_dir, Attrs::new(0o755).mtime(t(21)))?
        .file(
            &format!("{long_dir}/file"),
            Attrs::new(0o644).mtime(t(22)),
            b"long",
        )?
        .symlink("longlink", &"a/".repeat(80), Attrs::new(0o777).mtime(t(23)))?
        // PAX GNU sparse 1.0; containerd 1.6 refuses old-GNU 'S' entries ("unhandled tar
        // header type 83"), so those are covered by the unpacker's own tests only.
        .sparse_file_pax(
            "sparse.img",
            Attrs::new(0o644).mtime(t(24)),
            &[(0, vec![b'a'; 4096]), (1 << 20, vec![b'b'; 4096])],
            2 << 20,
        )?
        .file("big.bin", Attrs::new(0o644).mtime(t(25)), &big)?
        .file("empty", Attrs::new(0o600).mtime(t(26)), b"")?
        .dir("opq", Attrs::new(0o755).mtime(t(27)))?
        .file("opq/a", Attrs::new(0o644).mtime(t(28)), b"a")?
        .file("opq/b", Attrs::new(0o644).mtime(t(28)), b"b")?
        .dir("del", Attrs::new(0o755).mtime(t(29)))?
        .file("del/x", Attrs::new(0o644).mtime(t(30)), b"x")?
        .file("del/y", Attrs::new(0o644).mtime(t(30)), b"y")?
        .file("gone", Attrs::new(0o644).mtime(t(31)), b"gone")?
        .dir("owned", Attrs::new(0o750).owner(1000, 1000).mtime(t(32)))?
        .file(
            "owned/f",
            Attrs::new(0o600).owner(1000, 1000).mtime(t(33)),
            b"mine",
        )?;
    b.finish()
}

/// Deletes, opaque directories, and a file whose parent directory has no entry of its own.
fn middle_layer() -> Result<Vec<u8>> {
    let mut b = LayerBuilder::new();
    let t = |s: u64| 1_700_000_000 + s * 60;
    b.whiteout("gone")?
        .dir("opq", Attrs::new(0o755).mtime(t(1)))?
        .opaque("opq")?
        .file("opq/c", Attrs::new(0o644).mtime(t(2)), b"c")?
        .dir("del", Attrs::new(0o755).mtime(t(3)))?
        .whiteout("del/x")?
        // No entry for etc/: containerd takes its attributes from the layer below.
        .file(
            "etc/passwd",
            Attrs::new(0o644).mtime(t(4)),
            b"root:x:0:0::/root:/bin/bash\n",
        )?
        .file("newfile", Attrs::new(0o640).owner(7, 7).mtime(t(5)), b"new")?
        .hardlink("newfile-link", "newfile", Attrs::new(0o640).mtime(t(5)))?
        .dir("dev", Attrs::new(0o755).mtime(t(6)))?;
    b.finish()
}

/// A plain tar on top: a whole directory deleted, a file where a symlink was.
fn top_layer() -> Result<Vec<u8>> {
    let mut b = LayerBuilder::new();
    let t = |s: u64| 1_750_000_000 + s;
    b.whiteout("del")?
        .dir("usr", Attrs::new(0o755).mtime(t(1)))?
        .dir("usr/bin", Attrs::new(0o755).mtime(t(2)))?
        .whiteout("usr/bin/wall")?
        .whiteout("bin")?
        .file("bin", Attrs::new(0o755).mtime(t(3)), b"bin is a file now")?
        .file("top", Attrs::new(0o644).mtime(t(4)), b"top")?;
    b.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpacked_layers_match_containerd_overlayfs() -> Result<()> {
    if skip_unless(&["docker-registry", "skopeo", "containerd", "ctr"], true) {
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix("shoal-e2e-")
        .tempdir_in(scratch_dir())?;
    let amd = vec![
        Layer::new(&base_layer()?, Compression::Gzip),
        Layer::new(&middle_layer()?, Compression::Zstd),
        Layer::new(&top_layer()?, Compression::None),
    ];
    let mut arm_tar = LayerBuilder::new();
    arm_tar.file("arch", Attrs::new(0o644), b"arm64")?;
    let arm = vec![Layer::new(&arm_tar.finish()?, Compression::Gzip)];
    let host = Platform::host();
    let other_arch = if host.architecture == "arm64" {
        "amd64"
    } else {
        "arm64"
    };

    let layout = OciLayout::create(&work.path().join("layout"))?;
    layout.add(
        "v1",
        &[
            PlatformImage {
                os: "linux".into(),
                architecture: host.architecture.clone(),
                layers: amd.clone(),
            },
            PlatformImage {
                os: "linux".into(),
                architecture: other_arch.into(),
                layers: arm.clone(),
            },
        ],
    )?;
    let registry = TestRegistry::start_anonymous()?;
    layout.push("v1", &registry.addr(), "shoal/e2e")?;

    // shoal: resolve the index to this platform, stream each layer through the unpacker.
    let client = registry.plain_http_client()?;
    let reference: ImageReference = format!("{}/shoal/e2e:v1", registry.addr()).parse()?;
    let resolved = client.resolve(&reference, &host).await?;
    assert_eq!(resolved.layers.len(), amd.len());
    for (got, want) in resolved.layers.iter().zip(&amd) {
        assert_eq!(got.digest, want.digest);
        assert_eq!(got.media_type, want.media_type);
        assert_eq!(got.diff_id.as_ref(), Some(&want.diff_id));
    }
    let other = client
        .resolve(
            &reference,
            &Platform {
                os: "linux".into(),
                architecture: other_arch.into(),
                variant: None,
            },
        )
        .await?;
    assert_eq!(other.layers.len(), 1);
    assert_eq!(other.layers[0].digest, arm[0].digest);

    let mut shoal_dirs: Vec<PathBuf> = Vec::new();
    for (i, layer) in resolved.layers.iter().enumerate() {
        let target = work.path().join(format!("shoal-{i}"));
        let stream = client
            .blob(&reference, &layer.digest, None)
            .await?
            .map_err(std::io::Error::other);
        let spec = LayerSpec {
            digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
            media_type: layer.media_type.clone(),
        };
        let options = UnpackOptions {
            parents: shoal_dirs.iter().rev().cloned().collect(),
        };
        let stats = unpack_stream(stream, &spec, &target, &options)
            .await
            .with_context(|| format!("unpacking layer {i}"))?;
        assert_eq!(stats.compressed_bytes, amd[i].blob.len() as u64);
        assert_eq!(stats.diff_id, amd[i].diff_id);
        shoal_dirs.push(target);
    }

    // containerd: the same image through its own pull and overlayfs snapshotter.
    let containerd = TestContainerd::start()?;
    containerd.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--platform",
        &format!("linux/{}", host.architecture),
        &format!("{}/shoal/e2e:v1", registry.addr()),
    ])?;
    let chain = chain_ids(&amd);
    let native_dirs = containerd.layer_dirs("overlayfs", chain.last().unwrap())?;
    assert_eq!(native_dirs.len(), shoal_dirs.len());
    // etc/ in layer 1 is an implicit parent: its mtime is the time of writing.
    let implicit: [&[&Path]; 3] = [&[], &[Path::new("etc")], &[]];
    for (i, (native, ours)) in native_dirs.iter().zip(&shoal_dirs).enumerate() {
        assert_same_tree(native, ours, implicit[i]).with_context(|| format!("layer {i}"))?;
    }
    Ok(())
}
