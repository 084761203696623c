//! Chunk manifests (`crate::chunk`), as the tracker's manifest service sends them.

use proptest::prelude::*;

use super::{alloc, digest, mutate};
use crate::chunk::{chunk_count, ChunkManifest, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};

/// A valid manifest: a chunk size in range, a size of up to 40 chunks, one digest each.
fn manifest() -> impl Strategy<Value = ChunkManifest> {
    (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE, 0u64..40, digest())
        .prop_flat_map(|(chunk_size, full, d)| {
            let size = (0..=chunk_size).prop_map(move |tail| full * chunk_size + tail);
            (Just(chunk_size), size, Just(d))
        })
        .prop_flat_map(|(chunk_size, size, d)| {
            let n = chunk_count(size, chunk_size) as usize;
            proptest::collection::vec(digest(), n).prop_map(move |chunks| ChunkManifest {
                digest: d.clone(),
                size,
                chunk_size,
                chunks,
            })
        })
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn json_round_trips(m in manifest()) {
        let json = m.to_json();
        prop_assert_eq!(ChunkManifest::from_json(&json).unwrap(), m);
    }

    #[test]
    fn hostile_json_is_refused_or_consistent(
        bytes in mutate::hostile(manifest().prop_map(|m| m.to_json()))
    ) {
        let parsed = alloc::bounded("chunk manifest", bytes.len(), 16, 64 << 10, || {
            ChunkManifest::from_json(&bytes)
        });
        match parsed {
            // Accepted: consistent, and every chunk range lies inside the blob.
            Ok(m) => {
                prop_assert!(m.validate().is_ok());
                let mut end = 0;
                for i in 0..m.chunks.len() {
                    let r = m.chunk_range(i);
                    prop_assert_eq!(r.start, end);
                    prop_assert!(r.start < r.end && r.end <= m.size);
                    end = r.end;
                }
                prop_assert_eq!(end, m.size);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
