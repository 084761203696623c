//! The simulated nodes: what they hold and pull, and what they would announce.

use std::net::SocketAddr;
use std::time::Instant;

use shoal_p2p::tracker::proto::{Announce, BlobHave, ChunkSet, UploadStats};
use shoal_p2p::Digest;

use crate::MIB;

/// One blob of an image.
#[derive(Clone)]
pub struct Layer {
    pub digest: Digest,
    pub chunks: u32,
}

pub fn image(
    rng: &mut fastrand::Rng,
    name: &str,
    bytes: u64,
    chunk: u64,
    layers: usize,
) -> Vec<Layer> {
    // Layer sizes: random shares of the image.
    let weights: Vec<u64> = (0..layers).map(|_| rng.u64(1..=10)).collect();
    let total: u64 = weights.iter().sum();
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| Layer {
            digest: Digest::of(format!("{name}/layer-{i}").as_bytes()),
            chunks: (bytes * w / total).div_ceil(chunk).max(1) as u32,
        })
        .collect()
}

/// The 12 images nodes hold (256 MiB to 2 GiB, 4 to 10 layers, half in 1 MiB chunks and half
/// in 4 MiB chunks) and the new 1 GiB image of 8 layers in 1 MiB chunks they all pull.
pub fn catalog(rng: &mut fastrand::Rng) -> (Vec<Vec<Layer>>, Vec<Layer>) {
    let held = (0..12)
        .map(|i| {
            let bytes = rng.u64(256..=2048) * MIB;
            let chunk = if i % 2 == 0 { MIB } else { 4 * MIB };
            let layers = rng.usize(4..=10);
            image(rng, &format!("image-{i}"), bytes, chunk, layers)
        })
        .collect();
    let rollout = image(rng, "rollout", 1024 * MIB, MIB, 8);
    (held, rollout)
}

/// A layer being pulled: chunks arrive in a random order.
pub struct Pulling {
    pub layer: Layer,
    pub order: Vec<u32>,
    pub done: usize,
    /// `order[..done]` as a set, kept as chunks arrive.
    pub held: ChunkSet,
}

/// A simulated node.
pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    /// The announce entries of the layers held whole, made once (they do not change):
    /// building them at every announce took a quarter of the generator's core.
    held: Vec<BlobHave>,
    pub pull: Vec<Pulling>,
    pub pull_started: Option<Instant>,
    /// Chunks pulled so far.
    pub pulled: usize,
    pub rng: fastrand::Rng,
}

/// 40 MiB/s in 1 MiB chunks.
pub const PULL_CHUNKS_PER_SEC: f64 = 40.0;
pub const PULL_PARALLEL: usize = 3;
pub const IN_FLIGHT: usize = 8;

impl Node {
    pub fn new(id: String, addr: SocketAddr, held: Vec<Layer>, rng: fastrand::Rng) -> Self {
        let mut node = Self {
            id,
            addr,
            held: Vec::new(),
            pull: Vec::new(),
            pull_started: None,
            pulled: 0,
            rng,
        };
        node.hold(held);
        node
    }

    /// `layers` are held whole from now on.
    fn hold(&mut self, layers: impl IntoIterator<Item = Layer>) {
        self.held.extend(
            layers
                .into_iter()
                .map(|l| BlobHave::new(l.digest, &ChunkSet::full(l.chunks))),
        );
        // A layer named twice (an image picked twice) is one blob.
        self.held.sort_by(|a, b| a.digest.hex().cmp(b.digest.hex()));
        self.held.dedup_by(|a, b| a.digest == b.digest);
    }

    /// Advances the pull to `now`: `PULL_CHUNKS_PER_SEC` shared by the first three layers
    /// not done, one chunk each in turn; a finished pull becomes held.
    pub fn advance(&mut self, now: Instant) {
        let Some(start) = self.pull_started else {
            return;
        };
        let due =
            (now.saturating_duration_since(start).as_secs_f64() * PULL_CHUNKS_PER_SEC) as usize;
        while self.pulled < due {
            let mut gave = 0;
            for p in self.pull.iter_mut().filter(|p| p.done < p.order.len()) {
                if gave == PULL_PARALLEL || self.pulled == due {
                    break;
                }
                p.held.insert(p.order[p.done]);
                p.done += 1;
                self.pulled += 1;
                gave += 1;
            }
            if gave == 0 {
                break;
            }
        }
        if self.pull.iter().all(|p| p.done == p.order.len()) {
            let done: Vec<Layer> = self.pull.drain(..).map(|p| p.layer).collect();
            self.hold(done);
            self.pull_started = None;
        }
    }

    pub fn downloading(&self, now: Instant) -> bool {
        self.pull_started.is_some_and(|s| s <= now)
    }

    /// The layers being fetched now.
    pub fn active_layers(&self, now: Instant) -> Vec<Digest> {
        if !self.downloading(now) {
            return Vec::new();
        }
        self.pull
            .iter()
            .filter(|p| p.done < p.order.len())
            .take(PULL_PARALLEL)
            .map(|p| p.layer.digest.clone())
            .collect()
    }

    /// What shoald's `Swarm::announcement` would say now.
    pub fn announcement(&mut self, now: Instant) -> Announce {
        self.advance(now);
        let mut blobs = self.held.clone();
        let active = self.active_layers(now);
        for p in &self.pull {
            let held = &p.held;
            let mut fetching = ChunkSet::empty(p.layer.chunks);
            if active.contains(&p.layer.digest) {
                let end = (p.done + IN_FLIGHT).min(p.order.len());
                for &c in &p.order[p.done..end] {
                    fetching.insert(c);
                }
            }
            if held.count() > 0 || fetching.count() > 0 {
                blobs.push(BlobHave::new(p.layer.digest.clone(), held).with_fetching(&fetching));
            }
        }
        // In digest order, as a map by digest gave them.
        blobs.sort_unstable_by(|a, b| a.digest.hex().cmp(b.digest.hex()));
        let rate = if self.downloading(now) {
            self.rng.u64(0..50 * MIB)
        } else {
            0
        };
        Announce {
            peer_id: self.id.clone(),
            addr: self.addr,
            upload: UploadStats {
                capacity_bytes_per_sec: 100 * MIB,
                rate_bytes_per_sec: rate,
                active: (rate / (10 * MIB)) as u32,
                max: 8,
            },
            blobs,
        }
    }

    pub fn start_pull(&mut self, image: &[Layer], now: Instant) {
        self.pull = image
            .iter()
            .map(|l| {
                let mut order: Vec<u32> = (0..l.chunks).collect();
                self.rng.shuffle(&mut order);
                Pulling {
                    held: ChunkSet::empty(l.chunks),
                    layer: l.clone(),
                    order,
                    done: 0,
                }
            })
            .collect();
        self.pull_started = Some(now);
        self.pulled = 0;
    }
}
