//! One node, a CRI pull (what kubelet does) of a multi-layer image from a registry behind a
//! bandwidth cap: through shoal's snapshotter (layers streamed and unpacked while they
//! download) against containerd's own overlayfs snapshotter (download, then apply), in the
//! same run. Reported, not asserted. Needs root.
//!
//!     sudo cargo bench -p shoal-integration --bench cri_pull
//!
//! The registry runs in a network namespace joined by a veth pair whose registry end is
//! capped with `tc tbf` at SHOAL_BENCH_MBIT Mbit/s (default 400). The image (built in the run):
//! a rootfs-like layer (`/usr/include`, gzip), 96 MiB of incompressible files (gzip), Python's
//! standard library (`/usr/lib/python3*`, zstd) and 128 MiB of half-compressible large files
//! (gzip). SHOAL_BENCH_RUNS (default 2) pulls each way, taking turns, each on a fresh
//! containerd and shoald; the best of each is reported, with shoald's peak RSS and the
//! bound F/B (image size over bandwidth). SHOAL_BENCH_CONTAINERDS (default "1.6 2.1") names
//! the containerds compared in the same run (values of SHOAL_CONTAINERD: 1.6, 1.7, 2.1 for
//! 2.1's transfer-service pull path, 2.1-local), each configured by `shoald containerd-config`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use shoal_integration::bench::env_or;
use shoal_integration::containerd::{find_flavor, scratch_dir};
use shoal_integration::cri::{CriContainerd, CriSettings, SNAPSHOTTER};
use shoal_integration::image::{Attrs, Compression, Layer, LayerBuilder, OciLayout, PlatformImage};
use shoal_integration::netns::{self, Link, Netns};
use shoal_integration::registry::TestRegistry;
use shoal_integration::tools::is_root;
use shoal_p2p::registry::Platform;

fn files_layer(mib: usize, files: usize, half_compressible: bool, seed: u64) -> Result<Vec<u8>> {
    let mut b = LayerBuilder::new();
    b.dir("data", Attrs::new(0o755))?;
    let mut state = seed | 1;
    for f in 0..files {
        let mut data = vec![0u8; mib * (1 << 20) / files];
        for (i, chunk) in data.chunks_mut(4096).enumerate() {
            if half_compressible && i % 2 == 1 {
                chunk.fill((i % 251) as u8);
                continue;
            }
            for byte in chunk.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }
        }
        b.file(&format!("data/{seed}-{f}.bin"), Attrs::new(0o644), &data)?;
    }
    b.finish()
}

fn tree_layer(path: &Path) -> Result<Vec<u8>> {
    let mut b = LayerBuilder::new();
    b.tree(path.to_string_lossy().trim_start_matches('/'), path)?;
    b.finish()
}

fn main() -> Result<()> {
    if !is_root() || !netns::available() || !TestRegistry::available() {
        bail!("needs root, iproute2 (ip, tc), docker-registry, containerd: run scripts/install-deps.sh as root");
    }
    let mbit: u64 = env_or("SHOAL_BENCH_MBIT", 400);
    let runs: usize = env_or("SHOAL_BENCH_RUNS", 2);
    let containerds: String = env_or("SHOAL_BENCH_CONTAINERDS", "1.6 2.1".to_owned());
    let flavors = containerds
        .split_whitespace()
        .map(find_flavor)
        .collect::<Result<Vec<_>>>()?;
    let work = tempfile::Builder::new()
        .prefix("shoal-bench-cri-")
        .tempdir_in(scratch_dir())?;

    let python = std::fs::read_dir("/usr/lib")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("python3"))
                && p.is_dir()
        });
    let mut layers = vec![
        Layer::new(&tree_layer(Path::new("/usr/include"))?, Compression::Gzip),
        Layer::new(&files_layer(96, 4, false, 1)?, Compression::Gzip),
    ];
    if let Some(python) = python {
        layers.push(Layer::new(&tree_layer(&python)?, Compression::Zstd));
    }
    layers.push(Layer::new(
        &files_layer(128, 2, true, 2)?,
        Compression::Gzip,
    ));
    let size: u64 = layers.iter().map(|l| l.blob.len() as u64).sum();

    let ns = Netns::create("shoal-reg")?;
    let link = Link::to_host(&ns)?;
    let registry = TestRegistry::start_in_netns(ns.name(), &link.ns_ip)?;
    let layout = OciLayout::create(&work.path().join("layout"))?;
    let platform = Platform::host();
    layout.add(
        "bench",
        &[PlatformImage {
            os: platform.os,
            architecture: platform.architecture,
            layers: layers.clone(),
        }],
    )?;
    layout.push("bench", &registry.addr(), "bench/cri")?;
    link.cap_ns_egress(mbit)?;
    let image = format!("{}/bench/cri:bench", registry.addr());
    let hosts = [registry.addr()];
    let shoald_config = format!(
        "[registry.hosts.\"{}\"]\nplain_http = true\n",
        registry.addr()
    );

    let bound = size as f64 * 8.0 / (mbit as f64 * 1e6);
    eprintln!(
        "image: {} layers, {:.1} MB compressed; registry capped at {mbit} Mbit/s: F/B = {bound:.1} s",
        layers.len(),
        size as f64 / 1e6
    );
    let mut rows = Vec::new();
    for flavor in &flavors {
        eprintln!("== {}", flavor.describe());
        let (native, shoal, rss) = pulls(
            runs,
            &hosts,
            &shoald_config,
            &image,
            &layers,
            CriSettings {
                flavor: Some(flavor.clone()),
                ..CriSettings::default()
            },
        )?;
        rows.push((flavor, native, shoal, rss));
    }
    println!(
        "\n{:<44} {:>9} {:>9}",
        "CRI pull (best of runs)", "time", "vs F/B"
    );
    for (flavor, native, shoal, rss) in &rows {
        let c = format!("containerd {} ({})", flavor.version, flavor.name);
        for (how, t) in [("overlayfs (native)", native), ("shoal", shoal)] {
            println!(
                "{:<44} {:>8.2}s {:>8.2}x",
                format!("{c}, {how}"),
                t.as_secs_f64(),
                t.as_secs_f64() / bound
            );
        }
        println!(
            "{c}: shoal / native: {:.2}; shoald peak RSS: {:.1} MiB",
            shoal.as_secs_f64() / native.as_secs_f64(),
            *rss as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// `runs` pulls each way on fresh nodes of one containerd, taking turns: the best native
/// time, the best shoal time, shoald's peak RSS.
fn pulls(
    runs: usize,
    hosts: &[String],
    shoald_config: &str,
    image: &str,
    layers: &[Layer],
    settings: CriSettings,
) -> Result<(Duration, Duration, u64)> {
    let mut native = Duration::MAX;
    let mut shoal = Duration::MAX;
    let mut rss = 0u64;
    for run in 0..runs {
        for through_shoal in [run % 2 == 1, run % 2 == 0] {
            let (config, snapshotter) = match through_shoal {
                true => (shoald_config, SNAPSHOTTER),
                false => ("", "overlayfs"),
            };
            let node = CriContainerd::start_in_netns_with(
                None,
                hosts,
                config,
                snapshotter,
                settings.clone(),
            )?;
            let start = Instant::now();
            node.shoald_pull(image, Duration::from_secs(1800))?;
            let t = start.elapsed();
            if through_shoal {
                // Every layer must have come through shoal, or the figure means nothing.
                let content = node.content_digests()?;
                if let Some(l) = layers
                    .iter()
                    .find(|l| content.contains(&l.digest.to_string()))
                {
                    bail!(
                        "layer {} went through containerd, not shoal:\n{}\n--- containerd:\n{}",
                        l.digest,
                        node.shoald().log(),
                        node.containerd().log()
                    );
                }
                rss = rss.max(node.shoald().peak_rss()?);
                shoal = shoal.min(t);
            } else {
                native = native.min(t);
            }
            eprintln!(
                "run {run}: {} {:.2} s",
                if through_shoal { "shoal" } else { "native" },
                t.as_secs_f64()
            );
        }
    }
    Ok((native, shoal, rss))
}
