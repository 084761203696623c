//! How a peer list is drawn: a uniform sample of a blob's holders, then a weighted random
//! order of the sample. Pure.

use shoal_p2p::tracker::proto::UploadStats;

/// Upload capacity assumed when no candidate has measured one (bytes/s).
const DEFAULT_CAPACITY: f64 = 100.0 * 1024.0 * 1024.0;

/// What the order weighs of a candidate.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    pub upload: UploadStats,
    /// Chunks of the blob it holds.
    pub held: u32,
    /// Chunks of the blob.
    pub chunks: u32,
}

/// `want` distinct positions of `0..len` picked uniformly at random (Floyd's algorithm), or
/// every position when `len <= want`.
pub(super) fn sample(len: usize, want: usize, rng: &mut fastrand::Rng) -> Vec<usize> {
    if len <= want {
        return (0..len).collect();
    }
    // `want` is a few times a peer list's length: a linear search beats hashing.
    let mut out = Vec::with_capacity(want);
    for j in len - want..len {
        let t = rng.usize(..=j);
        out.push(if out.contains(&t) { j } else { t });
    }
    out
}

/// The weight of a candidate: spare upload capacity (`default_capacity` when it measured
/// none; never below 5% of capacity) over `1 + active uploads`, times `0.25..=1` by the share
/// of the blob it holds.
pub(super) fn weight(upload: &UploadStats, default_capacity: f64, held: u32, chunks: u32) -> f64 {
    let capacity = if upload.capacity_bytes_per_sec > 0 {
        upload.capacity_bytes_per_sec as f64
    } else {
        default_capacity
    };
    let spare = (capacity - upload.rate_bytes_per_sec as f64)
        .max(capacity * 0.05)
        .max(1.0);
    let share = if chunks == 0 {
        1.0
    } else {
        f64::from(held.min(chunks)) / f64::from(chunks)
    };
    spare / (1.0 + f64::from(upload.active)) * (0.25 + 0.75 * share)
}

/// The first `keep` of a weighted random order of `candidates` (Efraimidis–Spirakis, with
/// keys `ln(u) / w` to stay in range); a candidate without a measured capacity counts the
/// median of the others.
pub(super) fn order<T>(
    candidates: Vec<(T, Candidate)>,
    keep: usize,
    rng: &mut fastrand::Rng,
) -> Vec<T> {
    let mut known: Vec<u64> = candidates
        .iter()
        .map(|(_, c)| c.upload.capacity_bytes_per_sec)
        .filter(|&c| c > 0)
        .collect();
    known.sort_unstable();
    let default_capacity = match known.get(known.len() / 2) {
        Some(&median) => median as f64,
        None => DEFAULT_CAPACITY,
    };
    let mut keyed: Vec<(f64, T)> = candidates
        .into_iter()
        .map(|(item, c)| {
            let w = weight(&c.upload, default_capacity, c.held, c.chunks);
            // u in (0, 1]: ln(u) <= 0, and a larger weight pulls the key towards 0.
            let u = 1.0 - rng.f64();
            (u.ln() / w, item)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.truncate(keep);
    keyed.into_iter().map(|(_, item)| item).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_distinct_in_range_and_whole_when_small() {
        let mut rng = fastrand::Rng::with_seed(4);
        assert_eq!(sample(5, 9, &mut rng), vec![0, 1, 2, 3, 4]);
        let mut hits = vec![0u32; 1000];
        for _ in 0..200 {
            let s = sample(1000, 50, &mut rng);
            assert_eq!(s.len(), 50);
            let distinct: std::collections::HashSet<_> = s.iter().collect();
            assert_eq!(distinct.len(), 50);
            for i in s {
                hits[i] += 1;
            }
        }
        // 10,000 picks over 1,000 positions: each about 10, none far off.
        assert!(hits.iter().all(|&h| h < 35), "{hits:?}");
        assert!(hits.iter().filter(|&&h| h == 0).count() < 20);
    }
}
