//! The kubelet path end to end: a 3-layer image pushed to a real `docker-registry`, pulled with
//! `shoald pull` through containerd 1.6's CRI `ImageService/PullImage` into shoal's proxy
//! snapshotter. This shoald has no configuration for the plain-HTTP test registry, so its
//! remote (streaming) path cannot fetch and every Prepare falls back to an ordinary one:
//! containerd downloads and applies the layers itself through shoal's overlay snapshots (what
//! happens for any registry shoal cannot reach). The image must show up in CRI's namespace,
//! its three chain IDs committed in the shoal snapshotter, and a view on the top one must
//! show the union of the layers.

use std::time::Duration;

use anyhow::Result;
use shoal_integration::containerd::scratch_dir;
use shoal_integration::cri::CriContainerd;
use shoal_integration::image::{
    chain_ids, Attrs, Compression, Layer, LayerBuilder, OciLayout, PlatformImage,
};
use shoal_integration::registry::TestRegistry;
use shoal_integration::tools::skip_unless;
use shoal_p2p::registry::Platform;

fn layers() -> Result<Vec<Layer>> {
    let mut base = LayerBuilder::new();
    base.dir("etc", Attrs::new(0o755))?
        .file("etc/os-release", Attrs::new(0o644), b"ID=shoal\n")?
        .file("etc/motd", Attrs::new(0o644), b"base motd\n")?
        .dir("app", Attrs::new(0o755))?
        .file("app/old", Attrs::new(0o644), b"to be deleted\n")?
        .file("app/run", Attrs::new(0o755), b"#!/bin/sh\necho v1\n")?;
    let mut middle = LayerBuilder::new();
    middle
        .whiteout("app/old")?
        .file("app/run", Attrs::new(0o755), b"#!/bin/sh\necho v2\n")?
        .file("app/config", Attrs::new(0o600).owner(1000, 1000), b"k=v\n")?;
    let mut top = LayerBuilder::new();
    top.whiteout("etc/motd")?
        .dir("data", Attrs::new(0o1777))?
        .file("data/top", Attrs::new(0o644), b"top layer\n")?;
    Ok(vec![
        Layer::new(&base.finish()?, Compression::Gzip),
        Layer::new(&middle.finish()?, Compression::Zstd),
        Layer::new(&top.finish()?, Compression::None),
    ])
}

#[test]
fn shoald_pull_through_cri_into_shoal_snapshotter() -> Result<()> {
    if skip_unless(
        &["docker-registry", "skopeo", "containerd", "ctr", "mount"],
        true,
    ) {
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix("shoal-cri-")
        .tempdir_in(scratch_dir())?;
    let layers = layers()?;
    let layout = OciLayout::create(&work.path().join("layout"))?;
    layout.add(
        "v1",
        &[PlatformImage {
            os: "linux".into(),
            architecture: Platform::host().architecture,
            layers: layers.clone(),
        }],
    )?;
    let registry = TestRegistry::start_anonymous()?;
    layout.push("v1", &registry.addr(), "shoal/cri")?;
    let image = format!("{}/shoal/cri:v1", registry.addr());

    let node = CriContainerd::start(&[registry.addr()])?;
    let out = node.shoald_pull(&image, Duration::from_secs(120))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(stdout.contains(&format!("pulled {image}")), "{stdout}");
    for l in &layers {
        assert!(
            stdout.contains(&l.digest.to_string()),
            "layer {} not reported:\n{stdout}",
            l.digest
        );
    }

    // The progress source shoald pull polls answers (nothing left downloading by now).
    let ingests = tokio::runtime::Runtime::new()?.block_on(async {
        let channel = shoal_plugin::cri::connect(node.containerd().address()).await?;
        anyhow::Ok(shoal_plugin::cri::list_ingests(channel).await?)
    })?;
    assert!(ingests.is_empty(), "{ingests:?}");

    // CRI stored the image in k8s.io.
    let images = node.ctr(&["images", "ls", "-q"])?;
    assert!(
        images.lines().any(|l| l.trim() == image),
        "{image} not in `ctr -n k8s.io images ls`:\n{images}"
    );

    // Every layer committed in the shoal snapshotter under its chain ID, on the right parent.
    let chain = chain_ids(&layers);
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
    // ... and they live in shoald's root.
    let dirs = node.layer_dirs(&chain[2])?;
    assert_eq!(dirs.len(), 3, "{dirs:?}");
    for d in &dirs {
        assert!(
            d.starts_with(node.shoald().root()),
            "{d:?} not under shoald's root"
        );
    }
    assert!(dirs[2].join("data/top").is_file());

    // The union, mounted the way containerd would.
    let target = work.path().join("view");
    let view = node.mount_view(&chain[2], &target)?;
    let p = view.path();
    let read = |rel: &str| std::fs::read_to_string(p.join(rel));
    assert_eq!(read("etc/os-release")?, "ID=shoal\n");
    assert_eq!(read("app/run")?, "#!/bin/sh\necho v2\n");
    assert_eq!(read("app/config")?, "k=v\n");
    assert_eq!(read("data/top")?, "top layer\n");
    assert!(!p.join("app/old").exists(), "whiteout app/old not applied");
    assert!(
        !p.join("etc/motd").exists(),
        "whiteout etc/motd not applied"
    );
    {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(p.join("app/config"))?;
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (1000, 1000, 0o600)
        );
        let md = std::fs::metadata(p.join("data"))?;
        assert_eq!(md.mode() & 0o7777, 0o1777);
    }
    drop(view);
    Ok(())
}
