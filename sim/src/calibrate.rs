//! The simulator against the emulated cluster: reads the swarm benchmark's JSON
//! (`integration/benches/swarm.rs`, `$CARGO_TARGET_DIR/swarm-bench.json`), simulates the same
//! cluster (N nodes and the registry side capped at B both ways, the image's layers, 1 MiB
//! chunks) and puts the figures side by side.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::percentile;
use crate::report::mbit;
use crate::scenario::Scenario;
use crate::SimError;

/// The emulated cluster's chunk size (`ClusterConfig::new`).
pub const BENCH_CHUNK: u64 = 1 << 20;

/// The payload a `tc tbf` cap of B carries, as a fraction of B: tbf counts every packet's
/// bytes on the wire (`qdisc_pkt_len`, the headers of each GSO segment included), and a
/// full-size TCP segment over a 1500-byte MTU carries 1448 bytes of payload (20 bytes of IP
/// header, 32 of TCP header with timestamps) in 1514 bytes (with the Ethernet header).
/// TLS records (29 bytes per 16 KiB) and HTTP framing are left out (under 0.2%).
pub const TBF_PAYLOAD: f64 = 1448.0 / 1514.0;

/// What a pull in the emulated cluster spends before its first chunk request: the CRI pull,
/// the image manifest, the chunk manifest (docs/swarm-benchmark.md's per-chunk timeline:
/// "from 0 to the first data on the links about 0.5 s").
pub const BENCH_START: f64 = 0.5;

/// What the benchmark wrote (the fields used here).
#[derive(Clone, Debug, Deserialize)]
pub struct Bench {
    /// Where it was read from.
    #[serde(skip)]
    pub path: PathBuf,
    pub nodes: usize,
    pub mbit: u64,
    pub image_bytes: u64,
    pub image_layers: usize,
    pub runs: Vec<BenchRun>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct BenchRun {
    pub mode: String,
    pub groups: Vec<BenchGroup>,
    pub left_registry_bytes: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct BenchGroup {
    pub group: String,
    pub mbit: u64,
    pub times_secs: Vec<f64>,
}

impl Bench {
    /// Reads the benchmark's JSON at `path`.
    pub fn read(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read(path).map_err(|source| SimError::BenchRead {
            path: path.to_owned(),
            source,
        })?;
        let mut bench: Bench =
            serde_json::from_slice(&text).map_err(|source| SimError::BenchParse {
                path: path.to_owned(),
                source,
            })?;
        bench.path = path.to_owned();
        Ok(bench)
    }

    /// Its `swarm` run (all nodes at B).
    pub fn swarm(&self) -> Option<&BenchRun> {
        self.runs.iter().find(|r| r.mode == "swarm")
    }

    /// The simulated twin of the cluster: `nodes` nodes and the registry side at `mbit` (the
    /// payload it carries, [`TBF_PAYLOAD`]), the image as `image_layers` equal layers, 1 MiB
    /// chunks, shoal's defaults.
    pub fn scenario(&self, latency: f64, overhead: f64, seed: u64) -> Scenario {
        let cap = mbit(self.mbit as f64) * TBF_PAYLOAD;
        let layers = self.image_layers.max(1) as u64;
        let mut sc = Scenario::equal(self.nodes, cap, self.image_bytes, BENCH_CHUNK);
        sc.blobs = (0..layers)
            .map(|k| self.image_bytes / layers + u64::from(k < self.image_bytes % layers))
            .collect();
        sc.latency = latency;
        sc.pull_overhead = overhead;
        sc.seed = seed;
        sc
    }
}

/// One line of the comparison.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub nodes: usize,
    pub mbit: u64,
    pub image_bytes: u64,
    pub measured_p50: f64,
    pub measured_max: f64,
    pub measured_registry: f64,
    pub simulated_p50: f64,
    pub simulated_max: f64,
    pub simulated_registry: f64,
}

impl Comparison {
    /// Simulated over measured, p50.
    pub fn p50_ratio(&self) -> f64 {
        self.simulated_p50 / self.measured_p50
    }
    pub fn max_ratio(&self) -> f64 {
        self.simulated_max / self.measured_max
    }
    pub fn registry_ratio(&self) -> f64 {
        self.simulated_registry / self.measured_registry
    }
    /// Within the aims: p50 and max within 15%, registry bytes within 10%.
    pub fn agrees(&self) -> bool {
        (self.p50_ratio() - 1.0).abs() <= 0.15
            && (self.max_ratio() - 1.0).abs() <= 0.15
            && (self.registry_ratio() - 1.0).abs() <= 0.10
    }
}

/// Simulates `bench`'s swarm run (`seeds` seeds, figures averaged) and compares.
pub fn compare(
    bench: &Bench,
    latency: f64,
    overhead: f64,
    seeds: u64,
    have_peers: usize,
) -> Result<Comparison, SimError> {
    let run = bench.swarm().ok_or_else(|| SimError::BenchNoSwarm {
        path: bench.path.clone(),
    })?;
    let mut measured: Vec<f64> = run
        .groups
        .iter()
        .flat_map(|g| g.times_secs.iter().copied())
        .collect();
    measured.sort_by(f64::total_cmp);
    let f = bench.image_bytes as f64;
    let (mut p50, mut max, mut reg) = (0.0, 0.0, 0.0);
    let seeds = seeds.max(1);
    for seed in 1..=seeds {
        let mut sc = bench.scenario(latency, overhead, seed);
        sc.settings.have_peers = have_peers;
        let out = crate::run(&sc)?;
        let t = out.sorted_times();
        p50 += percentile(&t, 50.0);
        max += percentile(&t, 100.0);
        reg += out.registry_bytes();
    }
    let k = seeds as f64;
    Ok(Comparison {
        nodes: bench.nodes,
        mbit: bench.mbit,
        image_bytes: bench.image_bytes,
        measured_p50: percentile(&measured, 50.0),
        measured_max: percentile(&measured, 100.0),
        measured_registry: run.left_registry_bytes as f64 / f,
        simulated_p50: p50 / k,
        simulated_max: max / k,
        simulated_registry: reg / k / f,
    })
}

/// The side-by-side table.
pub fn table(rows: &[Comparison]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>3} {:>5} {:>7} | {:>8} {:>8} {:>7} | {:>8} {:>8} {:>7} | {:>7} {:>7} {:>7} {:>6}",
        "N",
        "Mbit",
        "F MB",
        "meas p50",
        "meas max",
        "reg xF",
        "sim p50",
        "sim max",
        "reg xF",
        "p50 s/m",
        "max s/m",
        "reg s/m",
        "within"
    );
    for c in rows {
        let _ = writeln!(
            s,
            "{:>3} {:>5} {:>7.1} | {:>7.2}s {:>7.2}s {:>7.3} | {:>7.2}s {:>7.2}s {:>7.3} | {:>7.3} {:>7.3} {:>7.3} {:>6}",
            c.nodes,
            c.mbit,
            c.image_bytes as f64 / 1e6,
            c.measured_p50,
            c.measured_max,
            c.measured_registry,
            c.simulated_p50,
            c.simulated_max,
            c.simulated_registry,
            c.p50_ratio(),
            c.max_ratio(),
            c.registry_ratio(),
            if c.agrees() { "yes" } else { "NO" }
        );
    }
    s
}
