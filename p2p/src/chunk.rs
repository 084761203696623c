//! Chunk manifests: a blob cut into fixed-size chunks, with the sha256 of each, so every chunk
//! can be checked on its own whichever source (peer or registry) sent it. Pure codec: no I/O.
//!
//! JSON form (what the registry extension serves):
//!
//! ```json
//! {"digest":"sha256:…","size":10485760,"chunk_size":4194304,"chunks":["sha256:…","sha256:…","sha256:…"]}
//! ```

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher};

/// The default chunk size: 4 MiB, as in Kraken and Dragonfly.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

/// Chunk sizes outside this range are refused: tiny chunks make huge manifests, huge chunks
/// make the swarm useless.
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;

/// The chunks of one blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkManifest {
    /// The whole blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// Every chunk but the last is exactly this long.
    pub chunk_size: u64,
    /// sha256 of each chunk, in order.
    pub chunks: Vec<Digest>,
}

/// Why a chunk manifest is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ChunkManifestError {
    #[error("chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    ChunkSize { chunk_size: u64 },
    #[error("chunk manifest of {digest}: {got} chunks listed, {want} needed for {size} bytes")]
    ChunkCount {
        digest: Digest,
        size: u64,
        got: usize,
        want: u64,
    },
    #[error("chunk manifest of {expected}: blob read has digest {actual} ({size} bytes)")]
    BlobDigest {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("chunk manifest: {0}")]
    Json(#[source] serde_json::Error),
}

fn check_chunk_size(chunk_size: u64) -> Result<(), ChunkManifestError> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(ChunkManifestError::ChunkSize { chunk_size });
    }
    Ok(())
}

/// Number of chunks of a blob of `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size)
}

impl ChunkManifest {
    /// Byte range of chunk `index` (panics past the last chunk: an index comes from
    /// `0..chunks.len()`).
    pub fn chunk_range(&self, index: usize) -> Range<u64> {
        assert!(index < self.chunks.len(), "chunk {index} past the end");
        let start = index as u64 * self.chunk_size;
        start..(start + self.chunk_size).min(self.size)
    }

    /// Checks the chunk size and that the chunk count fits the blob size.
    pub fn validate(&self) -> Result<(), ChunkManifestError> {
        check_chunk_size(self.chunk_size)?;
        let want = chunk_count(self.size, self.chunk_size);
        if self.chunks.len() as u64 != want {
            return Err(ChunkManifestError::ChunkCount {
                digest: self.digest.clone(),
                size: self.size,
                got: self.chunks.len(),
                want,
            });
        }
        Ok(())
    }

    /// Parses and validates the JSON form.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ChunkManifestError> {
        let m: Self = serde_json::from_slice(bytes).map_err(ChunkManifestError::Json)?;
        m.validate()?;
        Ok(m)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a chunk manifest always serialises")
    }
}

/// Builds a [`ChunkManifest`] from a blob's bytes as they stream past, checking the whole
/// blob against its digest at the end.
pub struct ChunkManifestBuilder {
    chunk_size: u64,
    blob: Hasher,
    chunk: Hasher,
    in_chunk: u64,
    size: u64,
    chunks: Vec<Digest>,
}

impl ChunkManifestBuilder {
    /// Fails for a chunk size outside [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
    pub fn new(chunk_size: u64) -> Result<Self, ChunkManifestError> {
        check_chunk_size(chunk_size)?;
        Ok(Self {
            chunk_size,
            blob: Hasher::new(),
            chunk: Hasher::new(),
            in_chunk: 0,
            size: 0,
            chunks: Vec::new(),
        })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.blob.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = (self.chunk_size - self.in_chunk) as usize;
            let take = room.min(data.len());
            self.chunk.update(&data[..take]);
            self.in_chunk += take as u64;
            data = &data[take..];
            if self.in_chunk == self.chunk_size {
                let done = std::mem::take(&mut self.chunk);
                self.chunks.push(done.finish());
                self.in_chunk = 0;
            }
        }
    }

    /// The manifest, if the bytes seen hash to `expected`.
    pub fn finish(mut self, expected: &Digest) -> Result<ChunkManifest, ChunkManifestError> {
        if self.in_chunk > 0 {
            self.chunks.push(self.chunk.finish());
        }
        let actual = self.blob.finish();
        if &actual != expected {
            return Err(ChunkManifestError::BlobDigest {
                expected: expected.clone(),
                actual,
                size: self.size,
            });
        }
        let m = ChunkManifest {
            digest: actual,
            size: self.size,
            chunk_size: self.chunk_size,
            chunks: self.chunks,
        };
        m.validate()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn builds_the_same_manifest_whatever_the_write_sizes() {
        let chunk = MIN_CHUNK_SIZE;
        let data = blob(chunk as usize * 3 + 17);
        let digest = Digest::of(&data);
        let mut one = ChunkManifestBuilder::new(chunk).unwrap();
        one.update(&data);
        let one = one.finish(&digest).unwrap();
        let mut many = ChunkManifestBuilder::new(chunk).unwrap();
        for piece in data.chunks(7919) {
            many.update(piece);
        }
        assert_eq!(many.finish(&digest).unwrap(), one);
        assert_eq!(one.chunks.len(), 4);
        assert_eq!(one.chunk_range(3), chunk * 3..chunk * 3 + 17);
        for (i, d) in one.chunks.iter().enumerate() {
            let r = one.chunk_range(i);
            assert_eq!(&Digest::of(&data[r.start as usize..r.end as usize]), d);
        }
    }

    #[test]
    fn exact_multiple_and_empty_blobs() {
        let chunk = MIN_CHUNK_SIZE;
        let data = blob(chunk as usize * 2);
        let mut b = ChunkManifestBuilder::new(chunk).unwrap();
        b.update(&data);
        assert_eq!(b.finish(&Digest::of(&data)).unwrap().chunks.len(), 2);
        let b = ChunkManifestBuilder::new(chunk).unwrap();
        let empty = b.finish(&Digest::of(b"")).unwrap();
        assert!(empty.chunks.is_empty());
    }

    #[test]
    fn silly_chunk_sizes_are_refused() {
        for size in [0, 1, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1] {
            assert!(ChunkManifestBuilder::new(size).is_err(), "{size}");
        }
    }

    #[test]
    fn wrong_blob_digest_is_refused() {
        let mut b = ChunkManifestBuilder::new(MIN_CHUNK_SIZE).unwrap();
        b.update(b"abc");
        let err = b.finish(&Digest::of(b"abd")).unwrap_err();
        assert!(
            matches!(err, ChunkManifestError::BlobDigest { .. }),
            "{err}"
        );
    }

    #[test]
    fn json_round_trip_and_bad_input() {
        let data = blob(200_000);
        let mut b = ChunkManifestBuilder::new(MIN_CHUNK_SIZE).unwrap();
        b.update(&data);
        let m = b.finish(&Digest::of(&data)).unwrap();
        assert_eq!(ChunkManifest::from_json(&m.to_json()).unwrap(), m);

        // Truncated input, wrong chunk count, silly chunk size, unknown field.
        let json = m.to_json();
        for cut in [0, 1, json.len() / 2, json.len() - 1] {
            assert!(ChunkManifest::from_json(&json[..cut]).is_err());
        }
        let mut fewer = m.clone();
        fewer.chunks.pop();
        assert!(matches!(
            ChunkManifest::from_json(&fewer.to_json()),
            Err(ChunkManifestError::ChunkCount { .. })
        ));
        let mut tiny = m.clone();
        tiny.chunk_size = 1;
        assert!(matches!(
            ChunkManifest::from_json(&tiny.to_json()),
            Err(ChunkManifestError::ChunkSize { .. })
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(ChunkManifest::from_json(&serde_json::to_vec(&v).unwrap()).is_err());
    }
}
