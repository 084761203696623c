//! The workload of the cluster tests and benchmark: images of incompressible layers, and
//! pull-time statistics.

use std::time::Duration;

use anyhow::Result;
use shoal_p2p::Digest;

use crate::image::{Attrs, Compression, Layer, LayerBuilder};

/// An image pushed to the cluster's registry.
#[derive(Clone, Debug)]
pub struct Image {
    /// `IP:5000/REPO:TAG`.
    pub reference: String,
    pub layers: Vec<Layer>,
    /// Layer blobs + config + manifest, as pushed.
    pub bytes: u64,
}

impl Image {
    /// Bytes of the layer blobs alone.
    pub fn layer_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.blob.len() as u64).sum()
    }

    /// (digest, size) of every layer blob.
    pub fn blobs(&self) -> Vec<(Digest, u64)> {
        self.layers
            .iter()
            .map(|l| (l.digest.clone(), l.blob.len() as u64))
            .collect()
    }
}

/// `count` layers of incompressible files, `total` bytes in all, compressed in turn with
/// gzip, zstd and none (the data does not compress: the blobs are about as large).
/// Deterministic for a given `seed`.
pub fn random_layers(count: usize, total: usize, seed: u64) -> Result<Vec<Layer>> {
    let per_layer = total / count.max(1);
    (0..count)
        .map(|i| {
            let mut b = LayerBuilder::new();
            b.dir("data", Attrs::new(0o755))?;
            let files = 2;
            for f in 0..files {
                let data = noise(
                    per_layer / files,
                    seed.wrapping_mul(1000) + (i * files + f) as u64,
                );
                b.file(
                    &format!("data/layer{i}-file{f}.bin"),
                    Attrs::new(0o644),
                    &data,
                )?;
            }
            let compression = match i % 3 {
                0 => Compression::Gzip,
                1 => Compression::Zstd,
                _ => Compression::None,
            };
            Ok(Layer::new(&b.finish()?, compression))
        })
        .collect()
}

/// `len` pseudo-random bytes (xorshift64): incompressible, different per `seed`, the same
/// for the same `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Percentile `p` (0..=100) of `values` (nearest rank); 0 for none.
pub fn percentile(values: &[Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut v = values.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=20).map(Duration::from_secs).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_secs(10));
        assert_eq!(percentile(&v, 95.0), Duration::from_secs(19));
        assert_eq!(percentile(&v, 100.0), Duration::from_secs(20));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn random_layers_are_deterministic_and_sized() -> Result<()> {
        let a = random_layers(3, 3 << 20, 7)?;
        let b = random_layers(3, 3 << 20, 7)?;
        assert_eq!(a.len(), 3);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.digest, y.digest);
            // Incompressible: each blob is at least its data.
            assert!(x.blob.len() >= 1 << 20, "{}", x.blob.len());
        }
        assert_ne!(a[0].digest, a[1].digest);
        Ok(())
    }
}
