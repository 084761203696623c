//! `shoal-testimage`: writes a test image as an OCI layout and (optionally) pushes it.
//!
//! Each `--layer` is `COMPRESSION:SOURCE`, COMPRESSION one of gzip, zstd, none, and SOURCE a
//! directory (its tree becomes the layer, under the directory's own path without the leading
//! `/`) or `random:SIZE_MIB:FILES` (that many files of random bytes, SIZE_MIB in all).
//!
//!     shoal-testimage --out /tmp/img --tag demo \
//!         --layer gzip:/usr/share --layer zstd:random:64:4 --push 127.0.0.1:5000/demo

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shoal_integration::image::{Compression, Layer, LayerBuilder, OciLayout, PlatformImage};
use shoal_p2p::registry::Platform;

fn usage() -> ! {
    eprintln!(
        "usage: shoal-testimage --out DIR --tag TAG --layer COMPRESSION:SOURCE... [--push REGISTRY/REPO]"
    );
    std::process::exit(2)
}

fn main() -> Result<()> {
    let mut out = None;
    let mut tag = None;
    let mut layers = Vec::new();
    let mut push = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--out" => out = Some(PathBuf::from(value())),
            "--tag" => tag = Some(value()),
            "--layer" => layers.push(value()),
            "--push" => push = Some(value()),
            _ => usage(),
        }
    }
    let (Some(out), Some(tag)) = (out, tag) else {
        usage()
    };
    if layers.is_empty() {
        usage()
    }
    let mut built = Vec::new();
    for (i, spec) in layers.iter().enumerate() {
        let (compression, source) = spec
            .split_once(':')
            .with_context(|| format!("layer {spec:?}: expected COMPRESSION:SOURCE"))?;
        let compression = match compression {
            "gzip" => Compression::Gzip,
            "zstd" => Compression::Zstd,
            "none" => Compression::None,
            other => bail!("layer {spec:?}: unknown compression {other:?}"),
        };
        let tar = layer_tar(i, source).with_context(|| format!("layer {spec:?}"))?;
        let layer = Layer::new(&tar, compression);
        eprintln!(
            "layer {i}: {} {} bytes ({} uncompressed)",
            layer.digest,
            layer.blob.len(),
            tar.len()
        );
        built.push(layer);
    }
    let platform = Platform::host();
    let layout = OciLayout::create(&out)?;
    let digest = layout.add(
        &tag,
        &[PlatformImage {
            os: platform.os,
            architecture: platform.architecture,
            layers: built,
        }],
    )?;
    eprintln!("{}:{tag} -> {digest}", out.display());
    if let Some(target) = push {
        let (registry, repo) = target
            .split_once('/')
            .with_context(|| format!("--push {target:?}: expected REGISTRY/REPO"))?;
        layout.push(&tag, registry, repo)?;
        eprintln!("pushed {registry}/{repo}:{tag}");
    }
    Ok(())
}

fn layer_tar(index: usize, source: &str) -> Result<Vec<u8>> {
    let mut b = LayerBuilder::new();
    if let Some(random) = source.strip_prefix("random:") {
        let (mib, files) = random
            .split_once(':')
            .context("expected random:SIZE_MIB:FILES")?;
        let mib: usize = mib.parse().context("SIZE_MIB")?;
        let files: usize = files.parse().context("FILES")?;
        if files == 0 {
            bail!("FILES must be at least 1");
        }
        let per_file = mib * (1 << 20) / files;
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ index as u64;
        b.dir("data", shoal_integration::image::Attrs::new(0o755))?;
        for f in 0..files {
            let mut data = vec![0u8; per_file];
            for chunk in data.chunks_mut(8) {
                // xorshift64*: incompressible bytes, reproducible per layer.
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            b.file(
                &format!("data/blob-{index}-{f}.bin"),
                shoal_integration::image::Attrs::new(0o644),
                &data,
            )?;
        }
    } else {
        let path = Path::new(source);
        if !path.is_dir() {
            bail!("{source:?} is not a directory");
        }
        let prefix = source.trim_start_matches('/');
        b.tree(if prefix.is_empty() { "." } else { prefix }, path)?;
    }
    b.finish()
}
