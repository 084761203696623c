//! Unpack throughput benchmark (reported, not asserted).
//!
//!     sudo cargo bench -p shoal-integration --bench unpack
//!
//! Inputs, made in the run: a rootfs-like layer of many small files (a tree of this machine:
//! SHOAL_BENCH_TREE, default `/usr/include`, about 9,000 files) and a layer of a few large
//! files (SHOAL_BENCH_LARGE_MIB MiB in 4 files, default 256, half-compressible), each
//! gzip-compressed and uncompressed.
//! For each input, in the same run and on the same disk, best of SHOAL_BENCH_RUNS (default 3),
//! the tools taking turns, each run into a new directory after a `sync`:
//! - shoal: `unpack_reader` from the blob file (digest + diff ID checked, overlay format);
//! - `tar -xzf` / `tar -xf`, and `unpigz -c | tar -x` when installed;
//! - containerd 1.6's own unpack of the same image: `ctr images pull` with the content already
//!   in its store and the snapshot removed, so only the unpack runs (as root only).
//!
//! Prints MB/s of compressed and of uncompressed bytes, and each tool's speed relative to
//! containerd's (containerd's time / the tool's time: above 1 is faster). SHOAL_BENCH_JSON=FILE
//! also writes the figures as JSON.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shoal_integration::bench::env_or;
use shoal_integration::containerd::{scratch_dir, TestContainerd};
use shoal_integration::image::{Attrs, Compression, Layer, LayerBuilder, OciLayout, PlatformImage};
use shoal_integration::registry::TestRegistry;
use shoal_integration::tools::{have, is_root, run};
use shoal_p2p::registry::Platform;
use shoal_plugin::unpack::{unpack_reader, LayerSpec, UnpackOptions};

struct Input {
    name: String,
    layer: Layer,
    uncompressed: u64,
    blob_path: PathBuf,
}

fn large_files_tar(total_mib: usize) -> Result<Vec<u8>> {
    let mut b = LayerBuilder::new();
    b.dir("data", Attrs::new(0o755))?;
    let per_file = total_mib * (1 << 20) / 4;
    let mut state = 0x243F_6A88_85A3_08D3u64;
    for f in 0..4 {
        // Half random bytes, half runs: compresses about 2:1, like binaries and data files.
        let mut data = vec![0u8; per_file];
        for (i, chunk) in data.chunks_mut(4096).enumerate() {
            if i % 2 == 0 {
                for b in chunk.iter_mut() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *b = state as u8;
                }
            } else {
                chunk.fill((i % 251) as u8);
            }
        }
        b.file(&format!("data/large-{f}.bin"), Attrs::new(0o644), &data)?;
    }
    b.finish()
}

/// Flushes dirty pages, so the next timed run starts without another's write-back.
fn sync() {
    let _ = Command::new("sync").status();
}

fn shell(script: &str) -> Result<Duration> {
    let start = Instant::now();
    run(Command::new("sh").arg("-c").arg(script))?;
    Ok(start.elapsed())
}

fn main() -> Result<()> {
    let tree = PathBuf::from(std::env::var("SHOAL_BENCH_TREE").unwrap_or("/usr/include".into()));
    let large_mib: usize = env_or("SHOAL_BENCH_LARGE_MIB", 256);
    let runs: usize = env_or("SHOAL_BENCH_RUNS", 3);
    let work = tempfile::Builder::new()
        .prefix("shoal-bench-")
        .tempdir_in(scratch_dir())?;
    let out = work.path().join("out");

    eprintln!("building inputs: tree {tree:?}, {large_mib} MiB of large files ...");
    let mut small = LayerBuilder::new();
    small.tree(tree.to_string_lossy().trim_start_matches('/'), &tree)?;
    let tars = [
        ("rootfs", small.finish()?),
        ("large-files", large_files_tar(large_mib)?),
    ];
    let mut inputs = Vec::new();
    for (name, tar) in &tars {
        for compression in [Compression::Gzip, Compression::None] {
            let layer = Layer::new(tar, compression);
            let suffix = if compression == Compression::Gzip {
                ".tar.gz"
            } else {
                ".tar"
            };
            let blob_path = work.path().join(format!("{name}{suffix}"));
            fs::write(&blob_path, &layer.blob)?;
            inputs.push(Input {
                name: format!("{name}{suffix}"),
                layer,
                uncompressed: tar.len() as u64,
                blob_path,
            });
        }
    }
    drop(tars);

    // containerd, when we can run it: one image per input on a local registry.
    let containerd_env = if is_root() && TestContainerd::available() && TestRegistry::available() {
        let registry = TestRegistry::start_anonymous()?;
        let containerd = TestContainerd::start()?;
        let layout = OciLayout::create(&work.path().join("layout"))?;
        let platform = Platform::host();
        for (i, input) in inputs.iter().enumerate() {
            let tag = format!("in{i}");
            layout.add(
                &tag,
                &[PlatformImage {
                    os: platform.os.clone(),
                    architecture: platform.architecture.clone(),
                    layers: vec![input.layer.clone()],
                }],
            )?;
            layout.push(&tag, &registry.addr(), "bench/unpack")?;
        }
        Some((registry, containerd))
    } else {
        eprintln!("containerd baseline skipped: needs root, containerd and docker-registry");
        None
    };

    println!(
        "\n{:<22} {:<26} {:>9} {:>12} {:>16} {:>12}",
        "input", "unpacker", "time", "MB/s (blob)", "MB/s (unpacked)", "vs containerd"
    );
    let mut json = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let gz = input.name.ends_with(".gz");
        let blob = input.blob_path.display().to_string();
        let spec = LayerSpec {
            digest: input.layer.digest.clone(),
            diff_id: Some(input.layer.diff_id.clone()),
            media_type: input.layer.media_type.clone(),
        };
        let flag = if gz { "-xzf" } else { "-xf" };
        let mut tools: Vec<&str> = Vec::new();
        if containerd_env.is_some() {
            tools.push("containerd 1.6 (ctr pull)");
        }
        tools.push("shoal");
        tools.push(if gz { "tar -xzf" } else { "tar -xf" });
        if gz && have("unpigz") {
            tools.push("unpigz | tar -x");
        }
        if let Some((registry, containerd)) = &containerd_env {
            // Fetch the content once; later pulls only unpack.
            let image = format!("{}/bench/unpack:in{i}", registry.addr());
            containerd.ctr(&["images", "pull", "--plain-http", &image])?;
        }
        fs::create_dir_all(&out)?;
        let mut best = vec![Duration::MAX; tools.len()];
        // Round robin, each run into a new directory, the page cache flushed before each:
        // no tool pays for another's write-back or deletions.
        for run in 0..runs {
            for (t, tool) in tools.iter().enumerate() {
                let dir = out.join(format!("{i}-{t}-{run}"));
                let o = dir.display().to_string();
                let elapsed = match *tool {
                    "containerd 1.6 (ctr pull)" => {
                        let (registry, containerd) = containerd_env.as_ref().expect("containerd");
                        let image = format!("{}/bench/unpack:in{i}", registry.addr());
                        containerd.ctr(&["snapshots", "rm", &input.layer.diff_id.to_string()])?;
                        sync();
                        let start = Instant::now();
                        containerd.ctr(&["images", "pull", "--plain-http", &image])?;
                        start.elapsed()
                    }
                    "shoal" => {
                        sync();
                        let start = Instant::now();
                        let file = fs::File::open(&input.blob_path)?;
                        unpack_reader(file, &spec, &dir, &UnpackOptions::default())
                            .with_context(|| format!("shoal unpack of {}", input.name))?;
                        start.elapsed()
                    }
                    "unpigz | tar -x" => {
                        fs::create_dir_all(&dir)?;
                        sync();
                        shell(&format!("unpigz -c {blob} | tar -x -C {o}"))?
                    }
                    _ => {
                        fs::create_dir_all(&dir)?;
                        sync();
                        shell(&format!("tar {flag} {blob} -C {o}"))?
                    }
                };
                best[t] = best[t].min(elapsed);
            }
        }
        fs::remove_dir_all(&out)?;
        let containerd_time = containerd_env.as_ref().map(|_| best[0]);
        for (tool, t) in tools.iter().zip(&best) {
            let secs = t.as_secs_f64();
            let ratio = containerd_time
                .map(|c| format!("{:.2}x", c.as_secs_f64() / secs))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<22} {:<26} {:>8.2}s {:>12.1} {:>16.1} {:>12}",
                input.name,
                tool,
                secs,
                input.layer.blob.len() as f64 / secs / 1e6,
                input.uncompressed as f64 / secs / 1e6,
                ratio
            );
            json.push(serde_json::json!({
                "input": input.name, "unpacker": tool, "seconds": secs,
                "blob_bytes": input.layer.blob.len(), "uncompressed_bytes": input.uncompressed,
            }));
        }
    }
    let json_path = std::env::var("SHOAL_BENCH_JSON").unwrap_or_default();
    if !json_path.is_empty() {
        fs::write(&json_path, serde_json::to_vec_pretty(&json)?)?;
        eprintln!("wrote {json_path}");
    }
    Ok(())
}
