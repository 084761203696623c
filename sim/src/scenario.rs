//! What a simulation runs: the nodes (caps, start, failure), the image (blob sizes, chunk
//! size), the registry side, the latency, and shoal's own settings (defaults as shoald's and
//! shoal-registry-ext's).

use std::time::Duration;

use crate::SimError;

/// One node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    /// Upload cap (bytes/s).
    pub up: f64,
    /// Download cap (bytes/s).
    pub down: f64,
    /// When its pull starts (s).
    pub start: f64,
    /// When it dies (s), if it does: its transfers break, it stops announcing and answering.
    pub dies: Option<f64>,
}

/// shoald's swarm settings ([`shoal_p2p::swarm::SwarmConfig`]'s defaults) and its chunk
/// server's upload slots (shoald's `max_uploads`, default 8).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSettings {
    pub in_flight: usize,
    pub per_peer_in_flight: usize,
    pub registry_in_flight: usize,
    pub max_registry_range: u64,
    pub per_seeder_in_flight: usize,
    pub near_window: usize,
    pub announce_interval: Duration,
    pub peer_refresh: Duration,
    pub max_uploads: usize,
    /// Layers of one image fetched at once (shoald's `unpack.concurrency`, default 4).
    pub layer_concurrency: usize,
    /// Have streams a download keeps open (`have_peers`, default 16; 0: none, the
    /// tracker's lists are the only view of the peers).
    pub have_peers: usize,
    /// Have streams a node serves at once (`max_have_streams`, default 256).
    pub max_have_streams: usize,
}

impl Default for NodeSettings {
    fn default() -> Self {
        let d = shoal_p2p::swarm::SwarmConfig::new("sim", ([127, 0, 0, 1], 1).into());
        Self {
            in_flight: d.in_flight,
            per_peer_in_flight: d.per_peer_in_flight,
            registry_in_flight: d.registry_in_flight,
            max_registry_range: d.max_registry_range,
            per_seeder_in_flight: d.per_seeder_in_flight,
            near_window: d.near_window,
            announce_interval: d.announce_interval,
            peer_refresh: d.peer_refresh,
            max_uploads: 8,
            layer_concurrency: 4,
            // shoald's defaults of the have streams (docs/simulator.md "Have streams").
            have_peers: 16,
            max_have_streams: 256,
        }
    }
}

/// The registry side: the registry and the registry extension (tracker, first seeder) behind
/// one upload link.
#[derive(Clone, Debug, PartialEq)]
pub struct RegistrySide {
    /// Upload cap of the registry side (bytes/s), shared by the seeder and registry ranges.
    pub up: f64,
    /// The seeder's upload slots (`seed.max_uploads`, default 16).
    pub seeder_max_uploads: usize,
    /// A what-if (the seeder has no queue: 0, busy at once, as shoal's): chunk requests
    /// that wait for one of the seeder's slots, first come first served, their chunk
    /// counted as sent by the super-seeding rule when they arrive; past them, busy.
    pub seeder_queue: usize,
    /// How long the seeder refuses a chunk it just sent (super-seeding).
    pub seeder_defer: Duration,
    /// The tracker's settings (`[tracker]`, defaults 1000 ms, 5000 ms, 30).
    pub announce_interval_ms: u64,
    pub peer_ttl_ms: u64,
    pub max_peers: usize,
}

impl RegistrySide {
    /// Defaults with an upload cap of `up` bytes/s.
    pub fn new(up: f64) -> Self {
        let t = shoal_registry_ext::config::TrackerConfig::default();
        Self {
            up,
            seeder_max_uploads: shoal_registry_ext::config::SeedConfig::default().max_uploads,
            seeder_queue: 0,
            seeder_defer: shoal_registry_ext::super_seed::DEFAULT_DEFER,
            announce_interval_ms: t.announce_interval_ms,
            peer_ttl_ms: t.peer_ttl_ms,
            max_peers: t.max_peers,
        }
    }
}

/// A whole simulation.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub nodes: Vec<NodeSpec>,
    /// The image's layer blobs (bytes each); all pulled by every node.
    pub blobs: Vec<u64>,
    pub chunk_size: u64,
    pub registry: RegistrySide,
    pub settings: NodeSettings,
    /// One-way latency between any two endpoints (s), for chunk requests and tracker calls.
    pub latency: f64,
    /// How links are shared among their flows (equally: the default).
    pub sharing: crate::net::Sharing,
    /// Time a pull spends outside the blob downloads (resolving the image, the chunk
    /// manifest, the tail of the unpack), added to every pull (s).
    pub pull_overhead: f64,
    /// Seed of every random draw (the planners', the tracker's).
    pub seed: u64,
    /// How long shoald has run before the pulls (s): the nodes' start and death times count
    /// from then, and so do the pull times and the registry side's last byte. With 0 (the
    /// default) the announcers start with the pulls, and the tracker's pacing comes on only
    /// once its replies to the first announces carry it; in a cluster shoald runs all along,
    /// and a pull starts paced (docs/simulator.md "Paced from the start").
    pub warmup: f64,
    /// Give up at this simulated time (s).
    pub horizon: f64,
    /// Sample the swarm's state this often (s; none when `None`), into
    /// [`crate::Outcome::samples`].
    pub sample_every: Option<f64>,
}

impl Scenario {
    /// Shares links as `sharing` says, and takes shoald's peer refresh for it: under
    /// [`Sharing::OldestFirst`] every node paces its uploads (shoald's
    /// `upload_bytes_per_sec` set), so the refresh is shoald's for paced uploads
    /// ([`peer_refresh_for`]).
    ///
    /// [`Sharing::OldestFirst`]: crate::net::Sharing::OldestFirst
    /// [`peer_refresh_for`]: shoal_p2p::swarm::peer_refresh_for
    pub fn set_sharing(&mut self, sharing: crate::net::Sharing) {
        self.sharing = sharing;
        self.settings.peer_refresh =
            shoal_p2p::swarm::peer_refresh_for(sharing == crate::net::Sharing::OldestFirst);
    }

    /// `n` nodes with equal caps `cap` (bytes/s both ways), all starting at 0, pulling one
    /// blob of `bytes` in `chunk_size` chunks from a registry side capped at `cap` too.
    pub fn equal(n: usize, cap: f64, bytes: u64, chunk_size: u64) -> Self {
        Self {
            nodes: vec![
                NodeSpec {
                    up: cap,
                    down: cap,
                    start: 0.0,
                    dies: None,
                };
                n
            ],
            blobs: vec![bytes],
            chunk_size,
            registry: RegistrySide::new(cap),
            settings: NodeSettings::default(),
            latency: 0.001,
            sharing: crate::net::Sharing::Equal,
            pull_overhead: 0.0,
            seed: 1,
            warmup: 0.0,
            horizon: 3600.0,
            sample_every: None,
        }
    }

    /// Refuses what cannot be simulated.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |what: String| Err(SimError::Scenario(what));
        if self.nodes.is_empty() {
            return bad("no nodes".into());
        }
        if !(self.warmup.is_finite() && self.warmup >= 0.0) {
            return bad(format!("warmup {} s: must be 0 or more", self.warmup));
        }
        if self.blobs.is_empty() || self.blobs.contains(&0) {
            return bad("the image needs at least one blob, none empty".into());
        }
        if self.chunk_size == 0 {
            return bad("chunk size 0".into());
        }
        let caps = self.nodes.iter().flat_map(|n| [n.up, n.down]);
        if caps
            .chain([self.registry.up])
            .any(|c| !(c > 0.0 && c.is_finite()))
        {
            return bad("every cap must be a positive number of bytes/s".into());
        }
        if !(self.latency >= 0.0 && self.latency.is_finite()) {
            return bad(format!("latency {}", self.latency));
        }
        if self
            .nodes
            .iter()
            .any(|n| !(n.start >= 0.0 && n.start.is_finite()))
        {
            return bad("start times must be 0 or more".into());
        }
        Ok(())
    }

    /// The image's bytes (F).
    pub fn image_bytes(&self) -> u64 {
        self.blobs.iter().sum()
    }

    /// Chunks of a blob of `bytes`.
    pub fn chunks_of(&self, bytes: u64) -> u32 {
        bytes.div_ceil(self.chunk_size.max(1)) as u32
    }

    /// The fluid bound of the pulls of the nodes that start at 0 and do not die:
    /// max(F/u_s, F/d, N·F/(u_s + Σu_i)) with d the slowest download.
    pub fn fluid_bound(&self) -> f64 {
        let f = self.image_bytes() as f64;
        let n = self.nodes.len() as f64;
        let up_sum: f64 = self.nodes.iter().map(|s| s.up).sum();
        let d = self
            .nodes
            .iter()
            .map(|s| s.down)
            .fold(f64::INFINITY, f64::min);
        (f / self.registry.up)
            .max(f / d)
            .max(n * f / (self.registry.up + up_sum))
    }

    /// The chunked bound: (F/u)·(1 + ⌊log2 N⌋/M), u the slowest cap (node or registry
    /// side), M the chunks of the image.
    pub fn chunked_bound(&self) -> f64 {
        let f = self.image_bytes() as f64;
        let u = self
            .nodes
            .iter()
            .map(|s| s.up.min(s.down))
            .fold(self.registry.up, f64::min);
        let m: u32 = self.blobs.iter().map(|&b| self.chunks_of(b)).sum();
        let log = (self.nodes.len().max(1) as f64).log2().floor();
        (f / u) * (1.0 + log / m.max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;

    #[test]
    fn the_bounds_of_equal_caps() {
        // 100 MB at 10 MB/s: F/u = 10 s; N = 8 nodes + the seeder share N·F over 9 caps.
        let sc = Scenario::equal(8, 10.0 * MB, 100_000_000, 4_000_000);
        assert!((sc.fluid_bound() - 10.0).abs() < 1e-9);
        // 25 chunks, floor(log2 8) = 3: 10 s · (1 + 3/25).
        assert!((sc.chunked_bound() - 11.2).abs() < 1e-9);
    }

    #[test]
    fn the_fluid_bound_is_set_by_the_total_upload_when_the_nodes_upload_little() {
        let mut sc = Scenario::equal(10, 10.0 * MB, 100_000_000, 4_000_000);
        for n in &mut sc.nodes {
            n.up = 1.0 * MB;
        }
        // 10 · 100 MB over 10 + 10 MB/s = 50 s.
        assert!((sc.fluid_bound() - 50.0).abs() < 1e-9);
    }

    #[test]
    fn what_cannot_be_simulated_is_refused() {
        let mut sc = Scenario::equal(2, 10.0 * MB, 1000, 100);
        sc.nodes[1].up = 0.0;
        assert!(matches!(sc.validate(), Err(SimError::Scenario(_))));
        let mut sc = Scenario::equal(2, 10.0 * MB, 1000, 0);
        assert!(sc.validate().is_err());
        sc.chunk_size = 100;
        assert!(sc.validate().is_ok());
    }
}
