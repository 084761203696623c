//! The prediction scenarios (equal caps, a heterogeneous mix, a rolling start, nodes dying)
//! and the table of their pull times against the bounds.

use std::fmt::Write as _;

use crate::engine::{percentile, Outcome, Sample};
use crate::scenario::Scenario;

/// Bytes/s of `mbit` Mbit/s.
pub fn mbit(mbit: f64) -> f64 {
    mbit * 1e6 / 8.0
}

/// The kinds of prediction runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Every node and the registry side at the same cap, all starting at once.
    Equal,
    /// A third of the nodes at the cap, a third at half, a third at a quarter; the registry
    /// side at the cap.
    Hetero,
    /// Nodes start uniformly over 30 s (a rolling deploy); each pull timed from its start.
    Rolling,
    /// 5% of the nodes die at a random moment between 20% and 60% of F/u.
    Dying,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "equal" => Kind::Equal,
            "hetero" => Kind::Hetero,
            "rolling" => Kind::Rolling,
            "dying" => Kind::Dying,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Equal => "equal",
            Kind::Hetero => "hetero",
            Kind::Rolling => "rolling",
            Kind::Dying => "dying",
        }
    }
}

/// The scenario of `kind` for `n` nodes pulling one blob of `bytes` in `chunk` chunks at a
/// cap of `cap` bytes/s.
pub fn scenario(kind: Kind, n: usize, bytes: u64, chunk: u64, cap: f64, seed: u64) -> Scenario {
    let mut sc = Scenario::equal(n, cap, bytes, chunk);
    sc.seed = seed;
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    match kind {
        Kind::Equal => {}
        Kind::Hetero => {
            for (i, node) in sc.nodes.iter_mut().enumerate() {
                let c = cap / [1.0, 2.0, 4.0][i % 3];
                node.up = c;
                node.down = c;
            }
        }
        Kind::Rolling => {
            for node in &mut sc.nodes {
                node.start = rng.f64() * 30.0;
            }
        }
        Kind::Dying => {
            let f_over_u = bytes as f64 / cap;
            let dying = (n as f64 * 0.05).round() as usize;
            let mut order: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut order);
            for &i in &order[..dying] {
                sc.nodes[i].dies = Some(f_over_u * (0.2 + 0.4 * rng.f64()));
            }
        }
    }
    sc
}

/// One run's figures (as `predict --json` writes them, and `plot` reads them).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Row {
    #[serde(rename = "run")]
    pub label: String,
    pub nodes: usize,
    pub image_bytes: u64,
    #[serde(rename = "chunk_bytes")]
    pub chunk: u64,
    /// The pull times of the nodes that finished, ascending.
    #[serde(rename = "times_secs")]
    pub times: Vec<f64>,
    #[serde(rename = "fluid_bound_secs")]
    pub fluid: f64,
    #[serde(rename = "chunked_bound_secs")]
    pub chunked: f64,
    pub registry_over_image: f64,
    pub died: usize,
    pub failed: usize,
    pub wall_secs: f64,
    pub events: u64,
    /// shoald's `have_peers` in the run.
    #[serde(default)]
    pub have_peers: usize,
}

impl Row {
    /// The figures of `outcome`, a run of `sc`.
    pub fn new(label: &str, sc: &Scenario, outcome: &Outcome, wall_secs: f64) -> Self {
        Self {
            label: label.into(),
            nodes: sc.nodes.len(),
            image_bytes: sc.image_bytes(),
            chunk: sc.chunk_size,
            times: outcome.sorted_times(),
            fluid: sc.fluid_bound(),
            chunked: sc.chunked_bound(),
            registry_over_image: outcome.registry_bytes() / sc.image_bytes() as f64,
            died: outcome.died,
            failed: outcome.failed,
            wall_secs,
            events: outcome.events,
            have_peers: sc.settings.have_peers,
        }
    }

    /// The figures in JSON, with the percentiles spelled out for readers.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a row is plain data");
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("p50_secs".into(), self.p(50.0).into());
            m.insert("p99_secs".into(), self.p(99.0).into());
            m.insert("max_secs".into(), self.p(100.0).into());
            m.insert("finished".into(), self.finished().into());
        }
        v
    }

    pub fn p(&self, p: f64) -> f64 {
        percentile(&self.times, p)
    }

    /// Nodes that finished.
    pub fn finished(&self) -> usize {
        self.times.len()
    }
}

/// The table header and one line per row.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<10} {:>6} {:>8} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7} {:>6} {:>7}",
        "run",
        "N",
        "F MB",
        "MiB",
        "p50 s",
        "p99 s",
        "max s",
        "fluid s",
        "chunk s",
        "p50/chk",
        "p99/chk",
        "max/chk",
        "reg xF",
        "done",
        "wall s"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<10} {:>6} {:>8.1} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.3}x {:>8.3}x {:>8.3}x {:>7.2} {:>6} {:>7.1}",
            r.label,
            r.nodes,
            r.image_bytes as f64 / 1e6,
            r.chunk >> 20,
            r.p(50.0),
            r.p(99.0),
            r.p(100.0),
            r.fluid,
            r.chunked,
            r.p(50.0) / r.chunked,
            r.p(99.0) / r.chunked,
            r.p(100.0) / r.chunked,
            r.registry_over_image,
            r.finished(),
            r.wall_secs,
        );
    }
    s
}

/// The swarm's state over time (see [`Sample`]).
pub fn samples(samples: &[Sample]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>7} {:>7} {:>6} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>7}",
        "t s",
        "pulling",
        "held",
        "up use",
        "down use",
        "reg use",
        "idle up",
        "reqs",
        "flowing",
        "ups/upl"
    );
    for x in samples {
        let _ = writeln!(
            s,
            "{:>7.2} {:>7} {:>6.3} {:>7.3} {:>7.3} {:>7.3} {:>6} {:>6.2} {:>6.2} {:>7.2}",
            x.at,
            x.pulling,
            x.held,
            x.upload_use,
            x.download_use,
            x.registry_use,
            x.idle_uploaders,
            x.requests,
            x.flowing,
            x.uploads_per_uploader
        );
    }
    s
}
