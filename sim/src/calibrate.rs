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
    /// The run and group compared (`swarm`, or a group of the `hetero` run).
    pub what: String,
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

/// How the twin is simulated.
#[derive(Clone, Copy, Debug)]
pub struct Twin {
    /// One-way latency (s).
    pub latency: f64,
    /// Time a pull spends outside the blob downloads (s; [`BENCH_START`]).
    pub overhead: f64,
    /// Seeds simulated, figures averaged.
    pub seeds: u64,
    /// shoald's `have_peers`.
    pub have_peers: usize,
    /// How links are shared (the simulator's equal shares, or a what-if).
    pub sharing: crate::net::Sharing,
}

/// Simulates each of `bench`'s runs the simulator can twin (`swarm`: all nodes at B;
/// `hetero`: each group at its own cap, the registry side at B) and compares them: one row
/// for the swarm run, one per group of the hetero run. Runs of other modes (the mirror
/// path, the native baseline) are left out. Fails when there is none.
pub fn compare_all(bench: &Bench, twin: &Twin) -> Result<Vec<Comparison>, SimError> {
    let mut rows = Vec::new();
    for run in bench
        .runs
        .iter()
        .filter(|r| r.mode == "swarm" || r.mode == "hetero")
    {
        rows.extend(compare_run(bench, run, twin)?);
    }
    if rows.is_empty() {
        return Err(SimError::BenchNoSwarm {
            path: bench.path.clone(),
        });
    }
    Ok(rows)
}

/// One run of `bench` simulated: its groups' nodes at their caps (the payload of each
/// group's `tbf` cap), in the order of the groups; a row for the whole run when it has one
/// group, else one per group (each group's nodes' times, the whole run's registry bytes).
fn compare_run(bench: &Bench, run: &BenchRun, twin: &Twin) -> Result<Vec<Comparison>, SimError> {
    let f = bench.image_bytes as f64;
    let seeds = twin.seeds.max(1);
    // Each group's nodes: their indices in the scenario.
    let mut groups = Vec::new();
    let mut caps = Vec::new();
    for g in &run.groups {
        let start = caps.len();
        caps.extend(std::iter::repeat_n(
            mbit(g.mbit as f64) * TBF_PAYLOAD,
            g.times_secs.len(),
        ));
        groups.push((g, start..caps.len()));
    }
    if caps.is_empty() {
        return Err(SimError::BenchNoSwarm {
            path: bench.path.clone(),
        });
    }
    // Per group: the simulated times of each seed, and the registry bytes.
    let mut sim: Vec<(f64, f64)> = vec![(0.0, 0.0); groups.len()];
    let mut reg = 0.0;
    for seed in 1..=seeds {
        let mut sc = bench.scenario(twin.latency, twin.overhead, seed);
        sc.set_sharing(twin.sharing);
        sc.nodes = caps
            .iter()
            .map(|&c| crate::scenario::NodeSpec {
                up: c,
                down: c,
                start: 0.0,
                dies: None,
            })
            .collect();
        sc.settings.have_peers = twin.have_peers;
        let out = crate::run(&sc)?;
        reg += out.registry_bytes();
        for (k, (_, idx)) in groups.iter().enumerate() {
            let mut t: Vec<f64> = out.pulls[idx.clone()].iter().flatten().copied().collect();
            t.sort_by(f64::total_cmp);
            sim[k].0 += percentile(&t, 50.0);
            sim[k].1 += percentile(&t, 100.0);
        }
    }
    let k = seeds as f64;
    // A run of one group is named by its mode (`swarm`), the groups of others by theirs.
    let one = groups.len() == 1;
    Ok(groups
        .iter()
        .zip(&sim)
        .map(|((g, _), &(p50, max))| {
            let mut measured = g.times_secs.clone();
            measured.sort_by(f64::total_cmp);
            Comparison {
                what: if one {
                    run.mode.clone()
                } else {
                    g.group.clone()
                },
                nodes: caps.len(),
                mbit: g.mbit,
                image_bytes: bench.image_bytes,
                measured_p50: percentile(&measured, 50.0),
                measured_max: percentile(&measured, 100.0),
                measured_registry: run.left_registry_bytes as f64 / f,
                simulated_p50: p50 / k,
                simulated_max: max / k,
                simulated_registry: reg / k / f,
            }
        })
        .collect())
}

/// The side-by-side table.
pub fn table(rows: &[Comparison]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<12} {:>3} {:>5} {:>7} | {:>8} {:>8} {:>7} | {:>8} {:>8} {:>7} | {:>7} {:>7} {:>7} {:>6}",
        "run",
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
            "{:<12} {:>3} {:>5} {:>7.1} | {:>7.2}s {:>7.2}s {:>7.3} | {:>7.2}s {:>7.2}s {:>7.3} | {:>7.3} {:>7.3} {:>7.3} {:>6}",
            c.what,
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

#[cfg(test)]
mod tests {
    use super::*;

    const TWIN: Twin = Twin {
        latency: 0.0005,
        overhead: BENCH_START,
        seeds: 1,
        have_peers: 16,
        sharing: crate::net::Sharing::Equal,
    };

    fn group(name: &str, mbit: u64, times: &[f64]) -> BenchGroup {
        BenchGroup {
            group: name.into(),
            mbit,
            times_secs: times.to_vec(),
        }
    }

    fn bench(runs: Vec<BenchRun>) -> Bench {
        Bench {
            path: "bench.json".into(),
            nodes: 8,
            mbit: 80,
            image_bytes: 32 << 20,
            image_layers: 2,
            runs,
        }
    }

    #[test]
    fn the_hetero_run_is_compared_group_by_group_at_each_groups_cap() {
        let b = bench(vec![
            BenchRun {
                mode: "mirror".into(),
                groups: vec![group("mirror", 80, &[1.0; 8])],
                left_registry_bytes: 32 << 20,
            },
            BenchRun {
                mode: "hetero".into(),
                groups: vec![
                    group("hetero fast", 80, &[2.0, 3.0, 2.5, 2.0]),
                    group("hetero slow", 20, &[5.0, 7.0, 6.0, 5.5]),
                ],
                left_registry_bytes: 36 << 20,
            },
        ]);
        let rows = compare_all(&b, &TWIN).unwrap();
        let what: Vec<&str> = rows.iter().map(|r| r.what.as_str()).collect();
        assert_eq!(what, ["hetero fast", "hetero slow"]);
        let (fast, slow) = (&rows[0], &rows[1]);
        assert_eq!((fast.mbit, slow.mbit), (80, 20));
        assert_eq!((fast.measured_p50, fast.measured_max), (2.0, 3.0));
        assert_eq!((slow.measured_p50, slow.measured_max), (5.5, 7.0));
        assert_eq!(fast.measured_registry, 36.0 / 32.0);
        // Each group at its own cap: the slow nodes take at least F over their payload rate,
        // the fast ones much less.
        let f = (32u64 << 20) as f64;
        assert!(
            slow.simulated_p50 >= f / (mbit(20.0) * TBF_PAYLOAD),
            "{rows:?}"
        );
        assert!(fast.simulated_p50 < 0.75 * slow.simulated_p50, "{rows:?}");
        assert_eq!(fast.simulated_registry, slow.simulated_registry);
    }

    #[test]
    fn a_bench_without_a_swarm_or_hetero_run_is_refused() {
        let b = bench(vec![BenchRun {
            mode: "native".into(),
            groups: vec![group("native", 80, &[1.0; 8])],
            left_registry_bytes: 32 << 23,
        }]);
        assert!(matches!(
            compare_all(&b, &TWIN),
            Err(SimError::BenchNoSwarm { .. })
        ));
    }
}
