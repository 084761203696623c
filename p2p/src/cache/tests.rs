use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::*;
use crate::reference::ImageReference;
use crate::source::{BlobSource, RecordingSource};

fn put(cache: &BlobCache, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    let mut w = cache.writer().unwrap();
    for part in data.chunks(4) {
        w.write(part).unwrap();
    }
    w.finish(&d).unwrap();
    d
}

fn read(cache: &BlobCache, d: &Digest) -> Option<Vec<u8>> {
    let mut blob = cache.get(d)?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut blob.file, &mut out).unwrap();
    assert_eq!(out.len() as u64, blob.size);
    Some(out)
}

fn tmp_entries(cache: &BlobCache) -> usize {
    std::fs::read_dir(cache.dir().join(TMP_DIR))
        .unwrap()
        .count()
}

/// File timestamps are coarse (a clock tick); keep uses apart.
fn tick() {
    std::thread::sleep(Duration::from_millis(20));
}

#[test]
fn insert_then_get() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(dir.path().join("blobs"), 1 << 20).unwrap();
    assert!(cache.is_empty());
    let d = put(&cache, b"hello blob cache");
    assert!(cache.contains(&d));
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.bytes(), 16);
    assert_eq!(read(&cache, &d).unwrap(), b"hello blob cache");
    assert!(cache.path_of(&d).is_file());
    assert!(cache.get(&Digest::of(b"other")).is_none());
    // The same blob again: still one copy.
    put(&cache, b"hello blob cache");
    assert_eq!((cache.len(), cache.bytes()), (1, 16));
    assert_eq!(tmp_entries(&cache), 0);
}

#[test]
fn wrong_digest_is_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
    let claimed = Digest::of(b"the real content");
    let mut w = cache.writer().unwrap();
    w.write(b"something else").unwrap();
    let e = w.finish(&claimed).unwrap_err().to_string();
    assert!(e.contains(&claimed.to_string()), "{e}");
    assert!(!cache.contains(&claimed));
    assert!(!cache.path_of(&claimed).exists());
    assert_eq!(tmp_entries(&cache), 0);
    assert_eq!(cache.bytes(), 0);
}

#[test]
fn an_unfinished_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
    let mut w = cache.writer().unwrap();
    w.write(b"half a bl").unwrap();
    assert_eq!(tmp_entries(&cache), 1);
    drop(w);
    assert_eq!(tmp_entries(&cache), 0);
    assert!(cache.is_empty());
    // Truncated content finished under the whole blob's digest is refused.
    let whole = Digest::of(b"half a blob");
    let mut w = cache.writer().unwrap();
    w.write(b"half a bl").unwrap();
    assert!(w.finish(&whole).is_err());
    assert!(!cache.path_of(&whole).exists());
}

#[test]
fn evicts_least_recently_used_to_fit() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(dir.path(), 30).unwrap();
    let a = put(&cache, &[b'a'; 10]);
    let b = put(&cache, &[b'b'; 10]);
    let c = put(&cache, &[b'c'; 10]);
    assert_eq!(cache.bytes(), 30);
    read(&cache, &a).unwrap(); // a is now the most recently used
    let d = put(&cache, &[b'd'; 10]);
    assert!(!cache.contains(&b), "the least recently used goes first");
    assert!(!cache.path_of(&b).exists());
    for kept in [&a, &c, &d] {
        assert!(cache.contains(kept));
    }
    assert_eq!(cache.bytes(), 30);
    // A bigger blob pushes out as many as needed, oldest first.
    let e = put(&cache, &[b'e'; 25]);
    assert!(cache.contains(&e) && !cache.contains(&c) && !cache.contains(&a));
    assert!(!cache.contains(&d));
    assert_eq!(cache.bytes(), 25);
    // A blob larger than the whole cache is not kept, and evicts nothing.
    let mut w = cache.writer().unwrap();
    let err = w.write(&[b'x'; 31]).unwrap_err().to_string();
    assert!(err.contains("30 byte limit"), "{err}");
    drop(w);
    assert!(cache.contains(&e));
    assert_eq!(tmp_entries(&cache), 0);
}

#[test]
fn an_open_blob_survives_its_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(dir.path(), 10).unwrap();
    let a = put(&cache, &[b'a'; 10]);
    let mut open = cache.get(&a).unwrap();
    put(&cache, &[b'b'; 10]);
    assert!(!cache.contains(&a));
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut open.file, &mut out).unwrap();
    assert_eq!(out, [b'a'; 10]);
}

#[test]
fn reopening_finds_the_blobs_and_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let cache = BlobCache::open(dir.path(), 30).unwrap();
        a = put(&cache, &[b'a'; 10]);
        tick();
        b = put(&cache, &[b'b'; 10]);
        tick();
        read(&cache, &a).unwrap();
        // Leftovers of a crash and files that are not blobs.
        std::fs::write(dir.path().join(TMP_DIR).join("1-0"), b"partial").unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), b"not a blob").unwrap();
    let cache = BlobCache::open(dir.path(), 30).unwrap();
    assert_eq!((cache.len(), cache.bytes()), (2, 20));
    assert_eq!(read(&cache, &b).unwrap(), [b'b'; 10]);
    assert_eq!(tmp_entries(&cache), 0);
    assert!(dir.path().join("notes.txt").exists());
    drop(cache);

    // Reopened with a smaller limit: the least recently used (b was read last above) goes.
    let cache = BlobCache::open(dir.path(), 10).unwrap();
    assert!(cache.contains(&b) && !cache.contains(&a));
    assert_eq!(cache.bytes(), 10);
}

fn image() -> ImageReference {
    "127.0.0.1:5000/a/b:v1".parse().unwrap()
}

async fn collect(s: &CachingSource<RecordingSource>, d: &Digest) -> Result<Vec<u8>, String> {
    let mut stream = s.fetch(&image(), d).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        let chunk: Bytes = item.map_err(|e| e.to_string())?;
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn caching(dir: &Path) -> CachingSource<RecordingSource> {
    CachingSource::new(
        RecordingSource::new(),
        BlobCache::open(dir, 1 << 20).unwrap(),
    )
}

#[tokio::test]
async fn second_fetch_comes_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let src = caching(dir.path());
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let d = src.inner().add(&data);
    assert_eq!(collect(&src, &d).await.unwrap(), data);
    src.flush().await;
    assert!(src.cache().contains(&d));
    assert_eq!(collect(&src, &d).await.unwrap(), data);
    assert_eq!(src.inner().fetches_of(&d), 1);
    // Unknown blobs: the inner source's error, nothing cached.
    let missing = Digest::of(b"missing");
    assert!(collect(&src, &missing).await.unwrap_err().contains("404"));
    src.flush().await;
    assert_eq!(src.cache().len(), 1);
}

#[tokio::test]
async fn corrupt_or_cut_streams_are_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let src = caching(dir.path());
    // Wrong content: passed through (the consumer verifies), never cached.
    let d = Digest::of(b"the real blob");
    src.inner().add_as(d.clone(), b"a corrupt blob");
    assert_eq!(collect(&src, &d).await.unwrap(), b"a corrupt blob");
    src.flush().await;
    assert!(!src.cache().contains(&d));
    collect(&src, &d).await.unwrap();
    assert_eq!(src.inner().fetches_of(&d), 2);

    // Cut mid-stream: the error reaches the consumer, nothing is cached.
    let cut = Digest::of(b"a whole blob");
    src.inner().add_cut(cut.clone(), b"a whole");
    assert!(collect(&src, &cut).await.unwrap_err().contains("cut"));
    // Dropped by the consumer half-way: nothing is cached either.
    let whole = src.inner().add(b"read only in part");
    let mut stream = src.fetch(&image(), &whole).await.unwrap();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    src.flush().await;
    assert!(src.cache().is_empty());
    assert_eq!(tmp_entries(src.cache()), 0);
}

#[tokio::test]
async fn a_blob_corrupted_on_disk_is_refused_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let src = caching(dir.path());
    let d = src.inner().add(b"good bytes");
    collect(&src, &d).await.unwrap();
    src.flush().await;
    std::fs::write(src.cache().path_of(&d), b"bad  bytes").unwrap();
    let e = collect(&src, &d).await.unwrap_err();
    assert!(e.contains("removed"), "{e}");
    assert!(!src.cache().contains(&d));
    // The next fetch goes to the inner source again, and re-caches.
    assert_eq!(collect(&src, &d).await.unwrap(), b"good bytes");
    src.flush().await;
    assert_eq!(src.inner().fetches_of(&d), 2);
    assert!(src.cache().contains(&d));
}

async fn collect_range(
    s: &CachingSource<RecordingSource>,
    d: &Digest,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, String> {
    let stream = s.fetch_range(&image(), d, range).await;
    let parts: Vec<Bytes> = futures::TryStreamExt::try_collect(stream.map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    Ok(parts.concat())
}

#[tokio::test]
async fn ranges_of_a_cached_blob_come_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = caching(dir.path());
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let d = src.inner().add(&data);
    // Not cached: the inner source's range.
    assert_eq!(collect_range(&src, &d, 5..10).await.unwrap(), data[5..10]);
    assert_eq!(src.inner().range_calls().len(), 1);
    collect(&src, &d).await.unwrap();
    src.flush().await;
    let size = data.len() as u64;
    for r in [
        0..1,
        3..300_000,
        262_144..524_289,
        size - 1..size,
        0..size,
        9..9,
    ] {
        let got = collect_range(&src, &d, r.clone()).await.unwrap();
        assert!(got == data[r.start as usize..r.end as usize], "{r:?}");
    }
    assert_eq!(
        src.inner().range_calls().len(),
        1,
        "ranges went to the inner source"
    );
    let e = collect_range(&src, &d, 10..size + 1).await.unwrap_err();
    assert!(e.contains("past"), "{e}");
    // A whole-blob range is hashed: a corrupt file is caught and dropped.
    let mut bad = data.clone();
    bad[600_000] ^= 1;
    std::fs::write(src.cache().path_of(&d), &bad).unwrap();
    assert_eq!(collect_range(&src, &d, 0..10).await.unwrap(), data[..10]);
    let e = collect_range(&src, &d, 0..size).await.unwrap_err();
    assert!(e.contains("removed"), "{e}");
    assert!(!src.cache().contains(&d));
}

#[test]
fn a_blob_knows_the_registries_it_came_from_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
    let put = |data: &[u8], origin: Option<&str>| {
        let mut w = cache.writer().unwrap();
        w.write(data).unwrap();
        match origin {
            Some(o) => w.finish_from(&Digest::of(data), o).unwrap(),
            None => w.finish(&Digest::of(data)).unwrap(),
        }
    };
    let (a, b) = (Digest::of(b"from two"), Digest::of(b"from none"));
    put(b"from two", Some("r1.example:5000"));
    put(b"from two", Some("r0.example"));
    put(b"from two", Some("r1.example:5000"));
    put(b"from none", None);
    let both = ["r0.example", "r1.example:5000"];
    assert_eq!(cache.origins(&a), both);
    assert_eq!(cache.get(&a).unwrap().origins, both);
    assert!(cache.origins(&b).is_empty());
    drop(cache);
    let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(cache.get(&a).unwrap().origins, both);
    assert!(cache.get(&b).unwrap().origins.is_empty());
    // Removed or evicted, its origins go with it; a stray origins file is pruned.
    assert!(cache.remove(&a));
    assert!(cache.origins(&a).is_empty());
    let origins = dir.path().join("origins");
    assert_eq!(std::fs::read_dir(&origins).unwrap().count(), 0);
    std::fs::write(origins.join(format!("sha256-{}", a.hex())), "r0.example\n").unwrap();
    drop(cache);
    let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
    assert!(cache.origins(&a).is_empty());
    assert_eq!(std::fs::read_dir(&origins).unwrap().count(), 0);
}

async fn collect_checked(
    s: &CachingSource<RecordingSource>,
    d: &Digest,
) -> Result<Vec<u8>, String> {
    let stream = s
        .fetch_verified(&image(), d)
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = stream.into_stream();
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        let chunk: Bytes = item.map_err(|e| e.to_string())?;
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[tokio::test]
async fn checked_fetches_end_with_an_error_unless_the_blob_matches() {
    let dir = tempfile::tempdir().unwrap();
    let src = caching(dir.path());
    // From the inner source (hashed on the way): wrong bytes end with the mismatch.
    let d = Digest::of(b"the real blob");
    src.inner().add_as(d.clone(), b"a corrupt blob");
    let e = collect_checked(&src, &d).await.unwrap_err();
    assert!(e.contains("sha256"), "{e}");
    src.flush().await;
    assert!(!src.cache().contains(&d));
    // Right bytes pass and are cached; from the cache they are checked as they are read.
    let good = src.inner().add(b"good bytes");
    assert_eq!(collect_checked(&src, &good).await.unwrap(), b"good bytes");
    src.flush().await;
    assert!(src.cache().contains(&good));
    assert_eq!(collect_checked(&src, &good).await.unwrap(), b"good bytes");
    assert_eq!(src.inner().fetches_of(&good), 1);
    std::fs::write(src.cache().path_of(&good), b"bad  bytes").unwrap();
    let e = collect_checked(&src, &good).await.unwrap_err();
    assert!(e.contains("removed"), "{e}");
    assert!(!src.cache().contains(&good));
}
