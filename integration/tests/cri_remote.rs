//! The remote (streaming) path end to end: images pushed to a real `docker-registry`, pulled
//! through containerd 1.6's CRI (`shoald pull`) into shoal's snapshotter, which fetches and
//! unpacks every layer itself on Prepare so containerd never downloads a layer blob.
//!
//! - a multi-layer image (gzip + zstd + plain, whiteouts, opaque directory, an implicit
//!   parent directory) is usable, containerd's content store holds no layer blob, and each
//!   committed layer directory equals what containerd's own overlayfs snapshotter makes of
//!   the same image;
//! - shoald unable to reach the registry (its config says HTTPS, the registry speaks HTTP):
//!   containerd's own path pulls the image, nothing half-made stays in shoal;
//! - a hostile layer (a file written through a symlink to /etc): shoal refuses it,
//!   containerd's own apply decides, nothing half-made stays in shoal;
//! - shoald killed (SIGKILL) during a pull and restarted: the next pull succeeds and
//!   nothing leaks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_integration::compare::assert_same_tree;
use shoal_integration::containerd::scratch_dir;
use shoal_integration::cri::CriContainerd;
use shoal_integration::image::{
    chain_ids, push_host_image, Attrs, Compression, Layer, LayerBuilder,
};
use shoal_integration::registry::TestRegistry;
use shoal_integration::tamper::TamperProxy;
use shoal_integration::tools::skip_unless;
use shoal_p2p::Digest;

const TOOLS: &[&str] = &["docker-registry", "skopeo", "containerd", "ctr", "mount"];

fn layers() -> Result<Vec<Layer>> {
    let t = |s: u64| 1_600_000_000 + s * 60;
    let big: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut base = LayerBuilder::new();
    base.dir("etc", Attrs::new(0o755).mtime(t(1)))?
        .file(
            "etc/os-release",
            Attrs::new(0o644).mtime(t(2)),
            b"ID=shoal\n",
        )?
        .file("etc/motd", Attrs::new(0o644).mtime(t(3)), b"base motd\n")?
        .dir("app", Attrs::new(0o755).mtime(t(4)))?
        .file("app/old", Attrs::new(0o644).mtime(t(5)), b"to be deleted\n")?
        .file(
            "app/run",
            Attrs::new(0o755).mtime(t(6)),
            b"#!/bin/sh\necho v1\n",
        )?
        .dir(
            "owned",
            Attrs::new(0o750)
                .owner(1000, 1000)
                .mtime(t(7))
                .xattr("user.dir", b"1"),
        )?
        .file(
            "owned/f",
            Attrs::new(0o600).owner(1000, 1000).mtime(t(8)),
            b"mine",
        )?
        .dir("opq", Attrs::new(0o755).mtime(t(9)))?
        .file("opq/a", Attrs::new(0o644).mtime(t(10)), b"a")?
        .file("big.bin", Attrs::new(0o644).mtime(t(11)), &big)?;
    let mut middle = LayerBuilder::new();
    middle
        .whiteout("app/old")?
        .file(
            "app/run",
            Attrs::new(0o755).mtime(t(20)),
            b"#!/bin/sh\necho v2\n",
        )?
        .file(
            "app/config",
            Attrs::new(0o600).owner(1000, 1000).mtime(t(21)),
            b"k=v\n",
        )?
        // app/, owned/ and owned/sub/ have no entry here: implicit parents (app/ and owned/
        // take their attributes from the base).
        .file("owned/sub/new", Attrs::new(0o644).mtime(t(22)), b"new")?
        .dir("opq", Attrs::new(0o755).mtime(t(23)))?
        .opaque("opq")?
        .file("opq/b", Attrs::new(0o644).mtime(t(24)), b"b")?;
    let mut top = LayerBuilder::new();
    top.whiteout("etc/motd")?
        .dir("data", Attrs::new(0o1777).mtime(t(30)))?
        .file("data/top", Attrs::new(0o644).mtime(t(31)), b"top layer\n")?;
    Ok(vec![
        Layer::new(&base.finish()?, Compression::Gzip),
        Layer::new(&middle.finish()?, Compression::Zstd),
        Layer::new(&top.finish()?, Compression::None),
    ])
}

/// shoald's config for a plain-HTTP registry at `addr`.
fn plain_http_config(addr: &str) -> String {
    format!("[registry.hosts.\"{addr}\"]\nplain_http = true\n[unpack]\nconcurrency = 3\n")
}

/// Layer blobs containerd's content store (k8s.io) holds, of `layers`.
fn layer_blobs_in_content_store(node: &CriContainerd, layers: &[Layer]) -> Result<Vec<Digest>> {
    let content = node.content_digests()?;
    Ok(layers
        .iter()
        .filter(|l| content.contains(&l.digest.to_string()))
        .map(|l| l.digest.clone())
        .collect())
}

/// Nothing half-made in shoald's root: no staged layer, and no snapshot directory or
/// temporary active snapshot of an unfinished remote commit.
fn assert_nothing_half_made(node: &CriContainerd) -> Result<()> {
    let root = node.shoald().root();
    let staged: Vec<PathBuf> = std::fs::read_dir(root.join("remote"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    assert!(staged.is_empty(), "staged layers left: {staged:?}");
    let leftovers: Vec<PathBuf> = std::fs::read_dir(root.join("snapshots"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("new-") || n.starts_with("removing-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}

fn assert_committed(node: &CriContainerd, chain: &[String]) -> Result<()> {
    let snapshots = node.snapshots()?;
    for (i, id) in chain.iter().enumerate() {
        let parent = if i == 0 { "" } else { chain[i - 1].as_str() };
        assert!(
            snapshots
                .iter()
                .any(|(k, p, kind)| k == id && p == parent && kind == "Committed"),
            "chain ID {id} (parent {parent:?}) not committed in shoal: {snapshots:#?}"
        );
    }
    Ok(())
}

fn check_union(node: &CriContainerd, work: &Path, top: &str) -> Result<()> {
    let target = work.join("view");
    let view = node.mount_view(top, &target)?;
    let p = view.path();
    let read = |rel: &str| std::fs::read_to_string(p.join(rel));
    assert_eq!(read("etc/os-release")?, "ID=shoal\n");
    assert_eq!(read("app/run")?, "#!/bin/sh\necho v2\n");
    assert_eq!(read("app/config")?, "k=v\n");
    assert_eq!(read("data/top")?, "top layer\n");
    assert_eq!(read("owned/sub/new")?, "new");
    assert!(!p.join("app/old").exists(), "whiteout app/old not applied");
    assert!(
        !p.join("etc/motd").exists(),
        "whiteout etc/motd not applied"
    );
    assert!(!p.join("opq/a").exists(), "opaque opq/ not applied");
    assert_eq!(read("opq/b")?, "b");
    Ok(())
}

#[test]
fn cri_pull_streams_every_layer_and_matches_containerd() -> Result<()> {
    if skip_unless(TOOLS, true) {
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix("shoal-cri-remote-")
        .tempdir_in(scratch_dir())?;
    let layers = layers()?;
    let registry = TestRegistry::start_anonymous()?;
    let image = push_host_image(work.path(), &registry.addr(), "shoal/remote", &layers)?;

    let node =
        CriContainerd::start_with_config(&[registry.addr()], &plain_http_config(&registry.addr()))?;
    let out = node.shoald_pull(&image, Duration::from_secs(120))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("pulled {image}")), "{stdout}");

    // containerd downloaded no layer: shoal streamed them all.
    let blobs = layer_blobs_in_content_store(&node, &layers)?;
    assert!(
        blobs.is_empty(),
        "containerd downloaded layers {blobs:?}\n--- shoald log:\n{}",
        node.shoald().log()
    );
    let log = node.shoald().log();
    assert_eq!(
        log.matches("remote layer committed").count(),
        layers.len(),
        "{log}"
    );
    assert!(!log.contains("WARN"), "{log}");

    let chain = chain_ids(&layers);
    assert_committed(&node, &chain)?;
    let ours = node.layer_dirs(chain.last().unwrap())?;
    assert_eq!(ours.len(), layers.len());
    for d in &ours {
        assert!(d.starts_with(node.shoald().root()), "{d:?}");
    }
    check_union(&node, work.path(), chain.last().unwrap())?;
    assert_nothing_half_made(&node)?;

    // The same image through containerd's own pull and overlayfs snapshotter.
    node.containerd().ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "overlayfs",
        &image,
    ])?;
    let native = node
        .containerd()
        .layer_dirs("overlayfs", chain.last().unwrap())?;
    assert_eq!(native.len(), ours.len());
    // Implicit parent directories: their mtime is the time of writing.
    let implicit: [&[&Path]; 3] = [
        &[],
        &[Path::new("app"), Path::new("owned"), Path::new("owned/sub")],
        &[Path::new("etc")],
    ];
    for (i, (n, o)) in native.iter().zip(&ours).enumerate() {
        assert_same_tree(n, o, implicit[i]).with_context(|| format!("layer {i}"))?;
    }
    Ok(())
}

/// How many blob GETs the registry served for `layer`.
fn blob_gets(registry: &TestRegistry, layer: &Layer) -> usize {
    let needle = format!("/blobs/{}", layer.digest);
    registry
        .log()
        .lines()
        .filter(|l| l.contains("\"GET ") && l.contains(&needle))
        .count()
}

#[test]
fn a_second_pull_comes_from_the_blob_cache() -> Result<()> {
    if skip_unless(TOOLS, true) {
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix("shoal-cri-remote-")
        .tempdir_in(scratch_dir())?;
    let layers = layers()?;
    let registry = TestRegistry::start_anonymous()?;
    let image = push_host_image(work.path(), &registry.addr(), "shoal/cache", &layers)?;
    let node =
        CriContainerd::start_with_config(&[registry.addr()], &plain_http_config(&registry.addr()))?;
    node.shoald_pull(&image, Duration::from_secs(120))?;
    let first: Vec<usize> = layers.iter().map(|l| blob_gets(&registry, l)).collect();
    assert!(
        first.iter().all(|&n| n >= 1),
        "{first:?}\n{}",
        registry.log()
    );

    // shoald commits a blob to its cache just after the stream ends (hashed, fsynced,
    // renamed): wait until all are there.
    let cached = |l: &Layer| {
        node.shoald()
            .default_cache_dir()
            .join(format!("sha256-{}", l.digest.hex()))
            .is_file()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !layers.iter().all(cached) {
        assert!(
            std::time::Instant::now() < deadline,
            "layers not cached: {:?}\n{}",
            layers
                .iter()
                .filter(|l| !cached(l))
                .map(|l| &l.digest)
                .collect::<Vec<_>>(),
            node.shoald().log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Image and snapshots gone (as after kubelet's image GC), the blobs still in the cache.
    // CRI names the image three ways (tag, repo digest, image ID): remove them all.
    let names = node.ctr(&["images", "ls", "-q"])?;
    let mut rm = vec!["images", "rm", "--sync"];
    rm.extend(names.split_whitespace());
    node.ctr(&rm)?;
    let chain = chain_ids(&layers);
    let left: Vec<_> = node
        .snapshots()?
        .into_iter()
        .filter(|(name, _, _)| chain.iter().any(|c| name.contains(c.as_str())))
        .collect();
    assert!(left.is_empty(), "snapshots left after image rm: {left:?}");

    node.shoald_pull(&image, Duration::from_secs(120))?;
    let second: Vec<usize> = layers.iter().map(|l| blob_gets(&registry, l)).collect();
    assert_eq!(first, second, "the registry served layers again");
    let log = node.shoald().log();
    assert_eq!(
        log.matches("remote layer committed").count(),
        2 * layers.len(),
        "{log}"
    );
    assert_committed(&node, &chain)?;
    check_union(&node, work.path(), chain.last().unwrap())?;
    assert!(layer_blobs_in_content_store(&node, &layers)?.is_empty());
    Ok(())
}

#[test]
fn unreachable_registry_falls_back_to_containerd() -> Result<()> {
    if skip_unless(TOOLS, true) {
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix("shoal-cri-remote-")
        .tempdir_in(scratch_dir())?;
    let layers = layers()?;
    let registry = TestRegistry::start_anonymous()?;
    let image = push_host_image(work.path(), &registry.addr(), "shoal/fallback", &layers)?;

    // shoald talks HTTPS to a plain-HTTP registry: every request fails; containerd (plain
    // HTTP through its hosts.toml) must pull anyway.
    let config = "[registry]\nretries = 0\nconnect_timeout_secs = 2\nrequest_timeout_secs = 5\n";
    let node = CriContainerd::start_with_config(&[registry.addr()], config)?;
    node.shoald_pull(&image, Duration::from_secs(120))?;
    let log = node.shoald().log();
    assert!(
        log.contains("remote layer failed") && log.contains(&layers[0].digest.to_string()),
        "{log}"
    );
    assert!(!log.contains("remote layer committed"), "{log}");
    // containerd downloaded them itself.
    assert_eq!(
        layer_blobs_in_content_store(&node, &layers)?.len(),
        layers.len()
    );
    let chain = chain_ids(&layers);
    assert_committed(&node, &chain)?;
    check_union(&node, work.path(), chain.last().unwrap())?;
    assert_nothing_half_made(&node)?;
    Ok(())
}

#[test]
fn corrupted_blob_falls_back_to_containerd() -> Result<()> {
    if skip_unless(TOOLS, true) {
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix("shoal-cri-remote-")
        .tempdir_in(scratch_dir())?;
    // One plain-tar layer: a byte flipped in the middle lands in file data, so the tar still
    // parses and only the digest check can catch it.
    let mut big = LayerBuilder::new();
    big.file("data/blob", Attrs::new(0o644), &vec![b'x'; 1 << 20])?;
    let layers = vec![Layer::new(&big.finish()?, Compression::None)];
    let registry = TestRegistry::start_anonymous()?;
    push_host_image(work.path(), &registry.addr(), "shoal/tamper", &layers)?;
    // Both shoald and containerd pull through the proxy; only shoald's bytes are corrupted.
    let proxy = TamperProxy::start(&registry.addr(), "shoal/")?;
    let image = format!("{}/shoal/tamper:v1", proxy.addr());
    let node =
        CriContainerd::start_with_config(&[proxy.addr()], &plain_http_config(&proxy.addr()))?;
    node.shoald_pull(&image, Duration::from_secs(120))?;
    assert!(proxy.corrupted() >= 1, "shoald never fetched the blob");
    let log = node.shoald().log();
    assert!(
        log.contains("remote layer failed")
            && log.contains(&layers[0].digest.to_string())
            && log.contains("digest"),
        "{log}"
    );
    assert!(!log.contains("remote layer committed"), "{log}");
    // containerd downloaded the genuine blob and applied it.
    assert_eq!(layer_blobs_in_content_store(&node, &layers)?.len(), 1);
    let chain = chain_ids(&layers);
    assert_committed(&node, &chain)?;
    let view = node.mount_view(chain.last().unwrap(), &work.path().join("view"))?;
    assert_eq!(
        std::fs::read(view.path().join("data/blob"))?,
        vec![b'x'; 1 << 20]
    );
    drop(view);
    assert_nothing_half_made(&node)?;
    Ok(())
}

#[test]
fn hostile_layer_is_refused_and_containerd_decides() -> Result<()> {
    if skip_unless(TOOLS, true) {
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix("shoal-cri-remote-")
        .tempdir_in(scratch_dir())?;
    let mut evil = LayerBuilder::new();
    evil.symlink("evil", "/etc", Attrs::new(0o777))?.file(
        "evil/passwd",
        Attrs::new(0o644),
        b"pwned::0:0::/:/bin/sh\n",
    )?;
    let mut fine = LayerBuilder::new();
    fine.file("fine", Attrs::new(0o644), b"fine\n")?;
    let layers = vec![
        Layer::new(&evil.finish()?, Compression::Gzip),
        Layer::new(&fine.finish()?, Compression::Gzip),
    ];
    let registry = TestRegistry::start_anonymous()?;
    let image = push_host_image(work.path(), &registry.addr(), "shoal/hostile", &layers)?;
    let passwd_before = std::fs::read("/etc/passwd")?;

    let node =
        CriContainerd::start_with_config(&[registry.addr()], &plain_http_config(&registry.addr()))?;
    let pulled = node.shoald_pull(&image, Duration::from_secs(120));
    let log = node.shoald().log();
    assert!(
        log.contains("remote layer failed")
            && log.contains(&layers[0].digest.to_string())
            && log.contains("refused"),
        "{log}"
    );
    assert_eq!(std::fs::read("/etc/passwd")?, passwd_before, "host touched");
    match pulled {
        Ok(_) => {
            // containerd applied the layer itself (following the symlink inside the layer);
            // shoal still streamed the harmless one above it.
            let chain = chain_ids(&layers);
            assert_committed(&node, &chain)?;
            assert_eq!(
                layer_blobs_in_content_store(&node, &layers)?,
                vec![layers[0].digest.clone(), layers[1].digest.clone()],
                "containerd fetches every layer from the first it applies itself"
            );
            assert_nothing_half_made(&node)?;
        }
        Err(e) => println!("containerd refused the layer too: {e:#}"),
    }
    Ok(())
}

#[test]
fn shoald_killed_during_a_pull_recovers() -> Result<()> {
    if skip_unless(TOOLS, true) {
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix("shoal-cri-remote-")
        .tempdir_in(scratch_dir())?;
    let layers = layers()?;
    let registry = TestRegistry::start_anonymous()?;
    let image = push_host_image(work.path(), &registry.addr(), "shoal/restart", &layers)?;
    let mut node =
        CriContainerd::start_with_config(&[registry.addr()], &plain_http_config(&registry.addr()))?;

    // Start a pull, kill shoald as soon as it has committed a layer, start it again.
    let bin = shoal_integration::cri::shoald_binary()?;
    let mut pull = std::process::Command::new(bin)
        .args(["pull", &image, "--timeout", "60", "--cri-address"])
        .arg(node.containerd().address())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !node.shoald().log().contains("remote layer committed")
        && std::time::Instant::now() < deadline
        && pull.try_wait()?.is_none()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    node.restart_shoald()?;
    let _ = pull.wait();

    // containerd's gRPC connection to the proxy snapshotter reconnects with a backoff.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match node.shoald_pull(&image, Duration::from_secs(120)) {
            Ok(_) => break,
            Err(e) if attempt < 10 && format!("{e:#}").contains("Unavailable") => {
                std::thread::sleep(Duration::from_secs(2))
            }
            Err(e) => return Err(e),
        }
    }
    let chain = chain_ids(&layers);
    assert_committed(&node, &chain)?;
    check_union(&node, work.path(), chain.last().unwrap())?;
    assert_nothing_half_made(&node)?;
    // No temporary active snapshot of an interrupted commit survives the restart.
    let log = node.shoald().log();
    println!("{log}");
    Ok(())
}
