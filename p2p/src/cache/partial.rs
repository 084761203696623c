//! [`PartialFile`]: a blob assembled out of order in the cache's `tmp/` (the swarm writes
//! each verified chunk at its offset), hashed in order as its prefix fills, and committed
//! under its digest only when every byte is there and the whole hashes to the digest.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;

use super::{cache_err, BlobCache};
use crate::digest::{Digest, Hasher};
use crate::Error;

/// Bytes hashed per read while the in-order hash catches up.
const HASH_READ: usize = 1 << 20;

/// A blob being assembled in the cache's `tmp/`. Dropped uncommitted, it leaves nothing.
pub struct PartialFile {
    cache: BlobCache,
    file: File,
    tmp: PathBuf,
    size: u64,
    /// The sha256 of bytes `0..hashed.1`.
    hashed: Mutex<(Hasher, u64)>,
    committed: bool,
}

impl BlobCache {
    /// A new, empty blob of `size` bytes to fill with [`PartialFile::write_at`]. Fails when
    /// the blob is larger than the whole cache.
    pub fn partial(&self, size: u64) -> Result<PartialFile, Error> {
        let tmp = self.tmp_path();
        if size > self.inner.max_bytes {
            return Err(cache_err(&tmp)(std::io::Error::other(format!(
                "blob of {size} bytes larger than the cache's {} byte limit",
                self.inner.max_bytes
            ))));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(cache_err(&tmp))?;
        let partial = PartialFile {
            cache: self.clone(),
            file,
            tmp,
            size,
            hashed: Mutex::new((Hasher::new(), 0)),
            committed: false,
        };
        partial
            .file
            .set_len(size)
            .map_err(cache_err(&partial.tmp))?;
        Ok(partial)
    }
}

impl PartialFile {
    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file, for reading ranges already written (`read_at`, or `try_clone` to hand out).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Writes `data` at `offset` (blocking). The range must lie within the blob.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        if offset + data.len() as u64 > self.size {
            return Err(cache_err(&self.tmp)(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "write of {} bytes at {offset} past the blob's {} bytes",
                    data.len(),
                    self.size
                ),
            )));
        }
        self.file
            .write_all_at(data, offset)
            .map_err(cache_err(&self.tmp))
    }

    /// Extends the in-order hash over bytes `..upto`, which the caller has written (blocking;
    /// reads them back, normally from the page cache). Returns how far the hash now reaches.
    pub fn hash_upto(&self, upto: u64) -> Result<u64, Error> {
        self.hash_upto_with(upto, 0, &[])
    }

    /// [`Self::hash_upto`] where bytes `offset..offset + data.len()` are `data`, just written
    /// by the caller: those are hashed from `data` instead of read back.
    pub fn hash_upto_with(&self, upto: u64, offset: u64, data: &[u8]) -> Result<u64, Error> {
        let upto = upto.min(self.size);
        let mut hashed = self.hashed.lock().expect("lock");
        let mut buf = Vec::new();
        while hashed.1 < upto {
            let at = hashed.1;
            let in_data = at
                .checked_sub(offset)
                .filter(|&skip| skip < data.len() as u64);
            if let Some(skip) = in_data {
                let n = ((upto - at) as usize).min(data.len() - skip as usize);
                hashed.0.update(&data[skip as usize..skip as usize + n]);
                hashed.1 += n as u64;
                continue;
            }
            // Read up to `data` (if it lies ahead), at most HASH_READ at once.
            let stop = if offset > at { upto.min(offset) } else { upto };
            let n = ((stop - at) as usize).min(HASH_READ);
            buf.resize(HASH_READ, 0);
            self.file
                .read_exact_at(&mut buf[..n], at)
                .map_err(cache_err(&self.tmp))?;
            hashed.0.update(&buf[..n]);
            hashed.1 += n as u64;
        }
        Ok(hashed.1)
    }

    /// Hashes whatever is left and checks that the whole hashes to `expected` (blocking).
    pub fn check(&self, expected: &Digest) -> Result<(), Error> {
        self.hash_upto(self.size)?;
        let actual = self.hashed.lock().expect("lock").0.clone().finish();
        if actual != *expected {
            return Err(Error::CacheDigest {
                path: self.tmp.clone(),
                expected: expected.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Hashes whatever is left, then keeps the blob under `expected`, known from registry
    /// `origin`, if the whole hashes to it ([`Self::check`]); otherwise removes it and fails.
    /// Open descriptors of the file stay valid.
    pub fn commit(mut self, expected: &Digest, origin: &str) -> Result<(), Error> {
        self.check(expected)?;
        self.file.sync_all().map_err(cache_err(&self.tmp))?;
        self.committed = true;
        self.cache
            .commit_tmp(&self.tmp, expected, self.size, Some(origin))
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_writes_commit_when_the_whole_matches() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let digest = Digest::of(&data);
        let p = cache.partial(data.len() as u64).unwrap();
        p.write_at(200_000, &data[200_000..]).unwrap();
        p.write_at(0, &data[..100_000]).unwrap();
        assert_eq!(p.hash_upto(100_000).unwrap(), 100_000);
        p.write_at(100_000, &data[100_000..200_000]).unwrap();
        assert!(p.write_at(299_999, b"xx").is_err());
        assert_eq!(p.hash_upto(200_000).unwrap(), 200_000);
        p.commit(&digest, "registry.example").unwrap();
        assert!(cache.contains(&digest));
        assert_eq!(cache.origins(&digest), ["registry.example"]);
        let got = std::fs::read(cache.path_of(&digest)).unwrap();
        assert_eq!(got, data);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn hashing_from_the_written_bytes_matches_reading_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 16 << 20).unwrap();
        let data: Vec<u8> = (0..(3 * HASH_READ as u32 + 1234))
            .map(|i| (i * 31 + i / 7) as u8)
            .collect();
        let digest = Digest::of(&data);
        let len = data.len() as u64;
        let cut = [0u64, 1000, HASH_READ as u64 + 5, 2 * HASH_READ as u64, len];
        // Pieces written out of order, each hashed (as far as the prefix goes) from the
        // bytes just written; a piece ahead of the hash is read back later.
        let p = cache.partial(len).unwrap();
        for i in [1usize, 3, 0, 2] {
            let (a, b) = (cut[i], cut[i + 1]);
            let piece = &data[a as usize..b as usize];
            p.write_at(a, piece).unwrap();
            let upto = if i == 2 {
                len
            } else if i == 0 {
                cut[2]
            } else {
                0
            };
            p.hash_upto_with(upto, a, piece).unwrap();
        }
        p.commit(&digest, "r.example").unwrap();
        assert_eq!(std::fs::read(cache.path_of(&digest)).unwrap(), data);

        // A wrong byte in a piece hashed from memory is refused at the check and the commit.
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 16 << 20).unwrap();
        let p = cache.partial(len).unwrap();
        p.write_at(0, &data).unwrap();
        let mut wrong = data[cut[1] as usize..cut[2] as usize].to_vec();
        wrong[7] ^= 1;
        p.write_at(cut[1], &wrong).unwrap();
        p.hash_upto_with(len, cut[1], &wrong).unwrap();
        let e = p.check(&digest).unwrap_err();
        assert!(matches!(e, Error::CacheDigest { .. }), "{e}");
        let e = p.commit(&digest, "r.example").unwrap_err();
        assert!(matches!(e, Error::CacheDigest { .. }), "{e}");
        assert!(!cache.contains(&digest));
    }

    #[test]
    fn a_wrong_whole_or_an_abandoned_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
        let p = cache.partial(4).unwrap();
        p.write_at(0, b"abcd").unwrap();
        let e = p.commit(&Digest::of(b"abce"), "r.example").unwrap_err();
        assert!(e.to_string().contains("sha256"), "{e}");
        drop(cache.partial(10).unwrap());
        assert!(cache.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert!(cache.partial(2 << 20).is_err());
    }
}
