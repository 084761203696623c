//! The hot cache against the seeder's backing store (reported, not asserted):
//!
//! ```sh
//! cargo bench -p shoal-registry-ext --bench hot_cache
//! # SHOAL_BENCH_REQUESTS=20000 SHOAL_BENCH_ZIPF=1.0 SHOAL_BENCH_HOT_MIB=64 SHOAL_BENCH_DIR=/var/tmp
//! ```
//!
//! A real seed cache (`BlobCache`, files on disk under `SHOAL_BENCH_DIR`) holds 120 small
//! blobs (256 KiB to 8 MiB) and 3 large ones (48 MiB), cut in 1 MiB chunks. A trace of chunk
//! requests picks a blob by Zipf popularity (exponent `SHOAL_BENCH_ZIPF`, ranks shuffled so
//! large blobs are not all on top) and a chunk of it uniformly. The same trace is replayed
//! through the seeder's provider as the chunk server uses it, without and with the hot cache
//! (`max_bytes` = `SHOAL_BENCH_HOT_MIB`, `max_blob_bytes` = 16 MiB), in the same run, twice
//! each, alternating: it counts the backing store's reads (ranges handed out as files, each
//! read once whole) and bytes, and times each request from `open` to its last byte in hand.
//!
//! Nothing is dropped from the page cache: the blobs were just written, so most disk reads
//! of the baseline are page-cache copies; the saving in reads and bytes is what the backing
//! store sees, the latency gain is a lower bound of what a cold or remote store would show.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_p2p::cache::BlobCache;
use shoal_p2p::peer::{ChunkProvider, Held};
use shoal_p2p::Digest;
use shoal_registry_ext::hot_cache::HotProvider;
use shoal_registry_ext::metrics::HotCacheMetrics;

const CHUNK: u64 = 1 << 20;
const MAX_BLOB_BYTES: u64 = 16 << 20;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed cache as the backing store, counting the reads it hands out.
struct Counting {
    inner: BlobCache,
    reads: AtomicU64,
    bytes: AtomicU64,
}

impl ChunkProvider for Counting {
    fn open(&self, digest: &Digest, range: Range<u64>) -> Option<Held> {
        let held = self.inner.open(digest, range)?;
        if let Held::File { len, .. } = &held {
            if *len > 0 {
                self.reads.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(*len, Ordering::Relaxed);
            }
        }
        Some(held)
    }
}

/// Takes the held bytes in hand, as the chunk server sends them.
fn consume(held: Held) -> u64 {
    match held {
        Held::Bytes(b) => {
            std::hint::black_box(&b);
            b.len() as u64
        }
        Held::File { file, offset, len } => {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, offset)
                .expect("reading a chunk");
            std::hint::black_box(&buf);
            len
        }
    }
}

struct Blob {
    digest: Digest,
    size: u64,
}

fn write_blobs(cache: &BlobCache, rng: &mut fastrand::Rng) -> Vec<Blob> {
    let mut sizes: Vec<u64> = (0..120).map(|_| rng.u64((256 << 10)..=(8 << 20))).collect();
    sizes.extend([48 << 20; 3]);
    sizes
        .into_iter()
        .map(|size| {
            let mut data = vec![0u8; size as usize];
            rng.fill(&mut data);
            let digest = Digest::of(&data);
            let mut w = cache.writer().expect("seed cache writer");
            w.write(&data).unwrap();
            w.finish(&digest).unwrap();
            Blob { digest, size }
        })
        .collect()
}

/// Request trace: (blob index, chunk range).
fn trace(blobs: &[Blob], n: usize, s: f64, rng: &mut fastrand::Rng) -> Vec<(usize, Range<u64>)> {
    let mut rank: Vec<usize> = (0..blobs.len()).collect();
    rng.shuffle(&mut rank);
    let weights: Vec<f64> = (1..=blobs.len())
        .map(|k| 1.0 / (k as f64).powf(s))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(weights.len());
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cdf.push(acc);
    }
    (0..n)
        .map(|_| {
            let u = rng.f64();
            let k = cdf.partition_point(|&c| c < u).min(blobs.len() - 1);
            let b = rank[k];
            let chunks = blobs[b].size.div_ceil(CHUNK);
            let i = rng.u64(0..chunks);
            let end = ((i + 1) * CHUNK).min(blobs[b].size);
            (b, i * CHUNK..end)
        })
        .collect()
}

struct Outcome {
    reads: u64,
    bytes: u64,
    hit_ratio: Option<f64>,
    p50: Duration,
    p99: Duration,
    total: Duration,
}

fn replay(
    seed: &BlobCache,
    blobs: &[Blob],
    trace: &[(usize, Range<u64>)],
    hot_bytes: u64,
) -> Outcome {
    let counting = Arc::new(Counting {
        inner: seed.clone(),
        reads: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    let metrics = HotCacheMetrics::default();
    let provider: Arc<dyn ChunkProvider> = match hot_bytes {
        0 => counting.clone(),
        n => Arc::new(HotProvider::new(
            counting.clone(),
            n,
            MAX_BLOB_BYTES,
            metrics.clone(),
        )),
    };
    let mut times = Vec::with_capacity(trace.len());
    let started = Instant::now();
    for (b, range) in trace {
        let t = Instant::now();
        let held = provider
            .open(&blobs[*b].digest, range.clone())
            .expect("chunk held");
        let got = consume(held);
        times.push(t.elapsed());
        assert_eq!(got, range.end - range.start);
    }
    let total = started.elapsed();
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let (hits, misses) = (metrics.hits.get(), metrics.misses.get());
    Outcome {
        reads: counting.reads.load(Ordering::Relaxed),
        bytes: counting.bytes.load(Ordering::Relaxed),
        hit_ratio: (hot_bytes > 0 && hits + misses > 0)
            .then(|| hits as f64 / (hits + misses) as f64),
        p50: pct(0.50),
        p99: pct(0.99),
        total,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours means "not this one".
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && a != "hot_cache")
    {
        return;
    }
    let requests: usize = env("SHOAL_BENCH_REQUESTS", 20_000);
    let s: f64 = env("SHOAL_BENCH_ZIPF", 1.0);
    let hot_mib: u64 = env("SHOAL_BENCH_HOT_MIB", 64);
    let base: String = env("SHOAL_BENCH_DIR", "/var/tmp".to_string());
    let dir = tempfile::Builder::new()
        .prefix("shoal-hotcache-bench-")
        .tempdir_in(&base)
        .expect("bench directory");
    let seed = BlobCache::open(dir.path(), 1 << 40).expect("seed cache");
    let mut rng = fastrand::Rng::with_seed(7);
    let t = Instant::now();
    let blobs = write_blobs(&seed, &mut rng);
    let stored: u64 = blobs.iter().map(|b| b.size).sum();
    let small: u64 = blobs
        .iter()
        .filter(|b| b.size <= MAX_BLOB_BYTES)
        .map(|b| b.size)
        .sum();
    let trace = trace(&blobs, requests, s, &mut rng);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "seed cache {}: {} blobs, {:.0} MiB ({:.0} MiB in blobs <= {} MiB), written in {:.1} s; \
         {requests} chunk requests (1 MiB chunks), Zipf s = {s}; hot cache {hot_mib} MiB",
        dir.path().display(),
        blobs.len(),
        mib(stored),
        mib(small),
        MAX_BLOB_BYTES >> 20,
        t.elapsed().as_secs_f64()
    );
    let requested: u64 = trace.iter().map(|(_, r)| r.end - r.start).sum();
    println!("requested: {:.0} MiB in all", mib(requested));
    println!(
        "| run | backing-store reads | bytes read | hit ratio | p50 | p99 | total |\n|---|---|---|---|---|---|---|"
    );
    let mut results: Vec<(&str, Outcome)> = Vec::new();
    for round in 0..2 {
        for (name, hot) in [("no hot cache", 0), ("hot cache", hot_mib << 20)] {
            let o = replay(&seed, &blobs, &trace, hot);
            println!(
                "| {name} (round {}) | {} | {:.0} MiB | {} | {:.0} µs | {:.0} µs | {:.2} s |",
                round + 1,
                o.reads,
                mib(o.bytes),
                o.hit_ratio
                    .map(|h| format!("{:.1} %", 100.0 * h))
                    .unwrap_or_else(|| "-".into()),
                o.p50.as_secs_f64() * 1e6,
                o.p99.as_secs_f64() * 1e6,
                o.total.as_secs_f64()
            );
            results.push((name, o));
        }
    }
    let best = |name: &str| {
        results
            .iter()
            .filter(|(n, _)| *n == name)
            .min_by_key(|(_, o)| o.total)
            .map(|(_, o)| o)
            .expect("a run")
    };
    let (without, with) = (best("no hot cache"), best("hot cache"));
    println!(
        "hot / none (best of 2 each): reads {:.3}, bytes {:.3}, p50 {:.2}, p99 {:.2}, total time {:.2}",
        with.reads as f64 / without.reads as f64,
        with.bytes as f64 / without.bytes as f64,
        with.p50.as_secs_f64() / without.p50.as_secs_f64(),
        with.p99.as_secs_f64() / without.p99.as_secs_f64(),
        with.total.as_secs_f64() / without.total.as_secs_f64()
    );
}
