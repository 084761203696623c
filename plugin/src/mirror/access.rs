//! The access check's memory: which (credentials, registry, repository, blob) the upstream
//! said may be pulled, and the blob's size, for a short time. Only positive answers are kept;
//! a refusal is asked again next time (the client may have fetched a token meanwhile).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::response::Response;
use shoal_p2p::reference::ImageReference;
use shoal_p2p::source::Credentials;
use shoal_p2p::Digest;

/// Entries kept at most; past it, expired ones go, then everything (the next requests ask
/// the upstream again).
const MAX_ENTRIES: usize = 16 << 10;

/// What the upstream said about one blob for one client.
pub enum Allowed {
    /// It may pull it; the blob has `size` bytes.
    Yes { size: u64 },
    /// It may not (or the blob does not exist): the upstream's answer, to pass back.
    No(Response),
}

/// One access decision's key. The credentials are kept only as their hash.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct AccessKey {
    credentials: Option<Digest>,
    registry: String,
    repository: String,
    digest: Digest,
}

impl AccessKey {
    pub fn new(credentials: Option<&Credentials>, image: &ImageReference, digest: &Digest) -> Self {
        Self {
            credentials: credentials.map(|c| Digest::of(c.authorization().as_bytes())),
            registry: image.registry.clone(),
            repository: image.repository.clone(),
            digest: digest.clone(),
        }
    }
}

/// Positive access decisions with their expiry.
pub struct AccessCache {
    ttl: Duration,
    entries: Mutex<HashMap<AccessKey, (Instant, u64)>>,
}

impl AccessCache {
    /// Decisions are reused for `ttl` (zero: never).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The blob's size if `key` was allowed less than the TTL ago.
    pub fn get(&self, key: &AccessKey) -> Option<u64> {
        let mut entries = self.entries.lock().expect("lock");
        match entries.get(key) {
            Some(&(until, size)) if Instant::now() < until => Some(size),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers that `key` was allowed, for a blob of `size` bytes.
    pub fn insert(&self, key: AccessKey, size: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("lock");
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (now + self.ttl, size));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(repo: &str) -> ImageReference {
        format!("10.0.0.1:5000/{repo}:v1").parse().unwrap()
    }

    #[test]
    fn decisions_are_per_credentials_repository_and_blob_and_expire() {
        let cache = AccessCache::new(Duration::from_millis(200));
        let d = Digest::of(b"layer");
        let alice = Credentials::new("Bearer alice");
        let bob = Credentials::new("Bearer bob");
        let k = AccessKey::new(Some(&alice), &image("a"), &d);
        cache.insert(k.clone(), 42);
        assert_eq!(cache.get(&k), Some(42));
        assert_eq!(
            cache.get(&AccessKey::new(Some(&bob), &image("a"), &d)),
            None
        );
        assert_eq!(cache.get(&AccessKey::new(None, &image("a"), &d)), None);
        assert_eq!(
            cache.get(&AccessKey::new(Some(&alice), &image("b"), &d)),
            None
        );
        let other = Digest::of(b"other");
        assert_eq!(
            cache.get(&AccessKey::new(Some(&alice), &image("a"), &other)),
            None
        );
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(cache.get(&k), None);
        // The key never holds the credentials themselves.
        assert!(!format!("{k:?}").contains("alice"));
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let cache = AccessCache::new(Duration::ZERO);
        let k = AccessKey::new(None, &image("a"), &Digest::of(b"x"));
        cache.insert(k.clone(), 1);
        assert_eq!(cache.get(&k), None);
    }
}
