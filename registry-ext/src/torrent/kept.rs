//! The torrents kept on disk: their sizes and last use, for the `max_bytes` bound.

use std::collections::HashMap;
use std::path::Path;

use librqbit::dht::Id20;
use shoal_p2p::Digest;

/// Kept torrents, least recently requested first out.
#[derive(Default)]
pub(super) struct Kept {
    entries: HashMap<Digest, Entry>,
    bytes: u64,
    tick: u64,
}

struct Entry {
    bytes: u64,
    used: u64,
    info_hash: Id20,
}

impl Kept {
    /// Records torrent `digest` (`bytes` of data) as just used.
    pub(super) fn insert(&mut self, digest: Digest, bytes: u64, info_hash: Id20) {
        self.tick += 1;
        let entry = Entry {
            bytes,
            used: self.tick,
            info_hash,
        };
        if let Some(old) = self.entries.insert(digest, entry) {
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
    }

    /// Marks `digest` used; false if it is not kept.
    pub(super) fn touch(&mut self, digest: &Digest) -> bool {
        self.tick += 1;
        match self.entries.get_mut(digest) {
            Some(e) => {
                e.used = self.tick;
                true
            }
            None => false,
        }
    }

    /// Whether `digest` is kept.
    pub(super) fn contains(&self, digest: &Digest) -> bool {
        self.entries.contains_key(digest)
    }

    /// Forgets `digest`.
    pub(super) fn remove(&mut self, digest: &Digest) {
        if let Some(e) = self.entries.remove(digest) {
            self.bytes -= e.bytes;
        }
    }

    /// Forgets the least recently used torrents other than `keep` until at most `max` bytes
    /// are kept, and returns them (to be dropped from the session and the disk).
    pub(super) fn over(&mut self, max: u64, keep: &Digest) -> Vec<(Digest, Id20)> {
        let mut out = Vec::new();
        while self.bytes > max {
            let oldest = self
                .entries
                .iter()
                .filter(|(d, _)| *d != keep)
                .min_by_key(|(_, e)| e.used)
                .map(|(d, _)| d.clone());
            let Some(d) = oldest else { break };
            let e = self.entries.remove(&d).expect("just found");
            self.bytes -= e.bytes;
            out.push((d, e.info_hash));
        }
        out
    }

    /// Bytes of data kept.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Torrents kept.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The `.torrent` files in `dir` (`sha256-<hex>.torrent`), oldest modified first. Blocking.
pub(super) fn list(dir: &Path) -> Vec<(Digest, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(hex) = name
            .strip_prefix("sha256-")
            .and_then(|n| n.strip_suffix(".torrent"))
        else {
            continue;
        };
        let Ok(digest) = format!("sha256:{hex}").parse::<Digest>() else {
            continue;
        };
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        match std::fs::read(entry.path()) {
            Ok(bytes) => found.push((modified, digest, bytes)),
            Err(e) => {
                tracing::warn!(path = %entry.path().display(), error = %e, "reading a kept .torrent")
            }
        }
    }
    found.sort_by_key(|(m, _, _)| *m);
    found.into_iter().map(|(_, d, b)| (d, b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_out_first_never_the_new_one() {
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let h = |n: u8| Id20::new([n; 20]);
        let mut kept = Kept::default();
        kept.insert(a.clone(), 10, h(1));
        kept.insert(b.clone(), 10, h(2));
        assert!(kept.touch(&a));
        assert!(!kept.touch(&c));
        assert!(kept.contains(&a) && !kept.contains(&c));
        kept.insert(c.clone(), 10, h(3));
        assert_eq!(kept.bytes(), 30);
        assert!(kept.over(30, &c).is_empty());
        // b is the least recently used.
        assert_eq!(kept.over(25, &c), vec![(b.clone(), h(2))]);
        assert_eq!((kept.len(), kept.bytes()), (2, 20));
        // Even alone over the limit, the one just made stays.
        assert_eq!(kept.over(5, &c), vec![(a.clone(), h(1))]);
        assert_eq!((kept.len(), kept.bytes()), (1, 10));
        // Inserting again replaces, not adds.
        kept.insert(c.clone(), 12, h(3));
        assert_eq!(kept.bytes(), 12);
        kept.remove(&c);
        assert_eq!((kept.len(), kept.bytes()), (0, 0));
    }
}
