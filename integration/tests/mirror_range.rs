//! shoald's registry mirror answering blob `Range` requests (containerd 2.1+'s parallel
//! fetch, resumed reads) against a real `docker-registry` (token auth where access matters),
//! in-process over a real blob cache or a real swarm (an in-memory tracker holding the
//! blob's chunk manifest; chunks from the registry by HTTP Range with the client's token):
//!
//! - ranges of a cached blob in every form, byte for byte, without reaching the registry;
//!   `416` past the end; refused clients get the registry's answer and no byte; several,
//!   malformed and conditional ranges, and `HEAD` with a range, pass upstream unchanged;
//! - parallel ranges as containerd sends them (`bytes=N-`, read `piece` bytes, hang up)
//!   share one swarm download and reassemble to the blob's digest;
//! - a range is served while its download is in progress, as its chunks arrive;
//! - a swarm chunk source sending wrong bytes, or a source failing mid-range, cuts the
//!   response.
//!
//! Everything here is plain HTTP against the mirror: a containerd-driven test only has to
//! point containerd's hosts.toml at a mirror built the same way.
//!
//! Needs docker-registry (skips without it).

mod mirror_rig;

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use mirror_rig::{
    header, noise, registry_available, swarm_over, token_for, token_registry, Gated, CHUNK,
};
use shoal_integration::registry::TestRegistry;
use shoal_p2p::cache::{BlobCache, CachingSource};
use shoal_p2p::source::{BlobSource, RecordingSource};
use shoal_p2p::Digest;
use shoal_plugin::config::MirrorSection;

/// The mirror for one registry.
struct Rig {
    rig: mirror_rig::Rig,
    registry: String,
}

impl std::ops::Deref for Rig {
    type Target = mirror_rig::Rig;

    fn deref(&self) -> &mirror_rig::Rig {
        &self.rig
    }
}

/// The mirror over `blobs` for `reg` (a configured registry), with no credentials of its own.
async fn start_mirror(reg: &TestRegistry, blobs: Arc<dyn BlobSource>) -> Result<Rig> {
    let hosts = [reg.addr()];
    let rig = mirror_rig::start_mirror(&hosts, MirrorSection::default(), blobs).await?;
    Ok(Rig {
        rig,
        registry: reg.addr(),
    })
}

impl Rig {
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        self.rig
            .request(method, &self.registry, path, token, headers)
    }

    /// `GET path` with `Range: range`: status, headers, the whole body.
    async fn range(
        &self,
        path: &str,
        token: Option<&str>,
        range: &str,
    ) -> Result<(u16, reqwest::header::HeaderMap, Vec<u8>)> {
        let resp = self
            .request(reqwest::Method::GET, path, token, &[("range", range)])
            .send()
            .await?;
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        Ok((status, headers, resp.bytes().await?.to_vec()))
    }
}

/// Checks a `206` answer to be exactly `bytes` of `blob`.
fn check_part(
    what: &str,
    (status, headers, body): &(u16, reqwest::header::HeaderMap, Vec<u8>),
    blob: &[u8],
    bytes: Range<u64>,
) -> Result<()> {
    let size = blob.len();
    let want = format!("bytes {}-{}/{size}", bytes.start, bytes.end - 1);
    ensure!(*status == 206, "{what}: status {status}");
    ensure!(
        header(headers, "content-range") == want,
        "{what}: {headers:?}"
    );
    let len = (bytes.end - bytes.start).to_string();
    ensure!(
        header(headers, "content-length") == len,
        "{what}: {headers:?}"
    );
    ensure!(
        body.as_slice() == &blob[bytes.start as usize..bytes.end as usize],
        "{what}: wrong bytes ({} bytes)",
        body.len()
    );
    Ok(())
}

#[tokio::test]
async fn ranges_of_a_cached_blob_come_byte_for_byte_from_the_cache() -> Result<()> {
    if !registry_available() {
        return Ok(());
    }
    let (tokens, reg) = token_registry().await?;
    let layer = noise((3 << 20) + 5, 1);
    let digest = reg.push_blob("private/app", &layer).await?;
    reg.push_blob("other/x", b"something else").await?;
    let gated = Gated::new(&[reg.addr()])?;
    let dir = tempfile::tempdir()?;
    let cache = Arc::new(CachingSource::new(
        gated.clone(),
        BlobCache::open(dir.path(), 1 << 30)?,
    ));
    let rig = start_mirror(&reg, cache.clone()).await?;
    let blob = format!("/v2/private/app/blobs/{digest}");
    let token = token_for(&tokens, "private/app")?;
    let body = rig
        .request(reqwest::Method::GET, &blob, Some(&token), &[])
        .send()
        .await?
        .bytes()
        .await?;
    ensure!(body.as_ref() == layer.as_slice(), "whole blob");
    cache.flush().await;
    ensure!(cache.cache().contains(&digest), "not cached");
    let (sent, passed) = (rig.metrics.blob_bytes.get(), rig.route("passthrough"));

    let size = layer.len() as u64;
    let forms = [
        ("bytes=0-0".to_string(), 0..1),
        ("bytes=100-1048675".into(), 100..1_048_676),
        ("bytes=1048576-".into(), 1_048_576..size),
        ("bytes=0-".into(), 0..size),
        ("bytes=-1000".into(), size - 1000..size),
        (format!("bytes=-{}", size + 5), 0..size),
        (format!("bytes=5-{}", u64::MAX), 5..size),
        (format!("bytes={}-{}", size - 1, size - 1), size - 1..size),
    ];
    let mut served = 0;
    for (range, bytes) in &forms {
        let answer = rig.range(&blob, Some(&token), range).await?;
        check_part(range, &answer, &layer, bytes.clone())?;
        served += bytes.end - bytes.start;
    }
    ensure!(rig.route("range") == forms.len() as u64);
    ensure!(rig.metrics.blob_bytes.get() == sent + served);
    ensure!(
        gated.whole.load(Ordering::SeqCst) == 1 && gated.range_bytes.load(Ordering::SeqCst) == 0,
        "a range of a cached blob reached the registry"
    );

    // Past the end: 416 with the size, no byte.
    for range in [
        format!("bytes={size}-"),
        format!("bytes={}-{}", size + 10, size + 20),
        "bytes=-0".into(),
    ] {
        let (status, headers, body) = rig.range(&blob, Some(&token), &range).await?;
        ensure!(status == 416 && body.is_empty(), "{range}: {status}");
        ensure!(header(&headers, "content-range") == format!("bytes */{size}"));
    }

    // Refused clients: the registry's answer, no byte, whatever the range.
    let other = token_for(&tokens, "other/x")?;
    let ranges = rig.route("range");
    for token in [None, Some(other.as_str())] {
        for range in [
            "bytes=0-99",
            "bytes=1000-",
            "bytes=-10",
            &format!("bytes={size}-"),
        ] {
            let (status, headers, body) = rig.range(&blob, token, range).await?;
            ensure!(status == 401 || status == 403, "{range}: {status}");
            ensure!(body.len() < 4096 && !headers.contains_key("content-range"));
        }
    }
    ensure!(rig.route("range") == ranges, "a refused range was served");
    ensure!(rig.metrics.blob_bytes.get() == sent + served);

    // Anything unusual passes upstream unchanged: the registry's answer.
    for (method, headers) in [
        (reqwest::Method::GET, vec![("range", "bytes=0-1,4-5")]),
        (reqwest::Method::GET, vec![("range", "bytes=5-2")]),
        (reqwest::Method::GET, vec![("range", "lines=1-2")]),
        (
            reqwest::Method::GET,
            vec![("range", "bytes=0-9"), ("if-range", "\"some-etag\"")],
        ),
        (reqwest::Method::HEAD, vec![("range", "bytes=0-9")]),
    ] {
        let resp = rig.request(method.clone(), &blob, Some(&token), &headers);
        let resp = resp.send().await?;
        let status = resp.status().as_u16();
        ensure!(status < 500, "{method} {headers:?}: {status}");
    }
    ensure!(rig.route("passthrough") == passed + 5);
    ensure!(rig.metrics.blob_bytes.get() == sent + served);
    Ok(())
}

/// `n` requests as containerd's parallel fetch sends them: `bytes=N-`, each read for `piece`
/// bytes and then hung up on; the pieces in order.
async fn containerd_style(
    rig: &Rig,
    path: &str,
    token: &str,
    size: u64,
    piece: u64,
) -> Result<Vec<u8>> {
    let offsets: Vec<u64> = (0..size.div_ceil(piece)).map(|i| i * piece).collect();
    let pieces = futures::future::join_all(offsets.iter().map(|&offset| async move {
        let range = format!("bytes={offset}-");
        let mut resp = rig
            .request(
                reqwest::Method::GET,
                path,
                Some(token),
                &[("range", &range)],
            )
            .send()
            .await?;
        ensure!(resp.status() == 206, "{range}: {}", resp.status());
        let want = header(resp.headers(), "content-length").parse::<u64>()?;
        ensure!(want == size - offset, "{range}: Content-Length {want}");
        let mut got = Vec::new();
        while (got.len() as u64) < piece.min(want) {
            let Some(chunk) = resp.chunk().await? else {
                break;
            };
            got.extend_from_slice(&chunk);
        }
        got.truncate(piece as usize);
        Ok::<_, anyhow::Error>(got)
    }))
    .await;
    let mut whole = Vec::new();
    for p in pieces {
        whole.extend(p?);
    }
    Ok(whole)
}

#[tokio::test]
async fn parallel_ranges_share_one_swarm_download_and_reassemble_the_blob() -> Result<()> {
    if !registry_available() {
        return Ok(());
    }
    let (tokens, reg) = token_registry().await?;
    let layer = noise(20 * CHUNK as usize + 1234, 2);
    let digest = reg.push_blob("private/app", &layer).await?;
    let gated = Gated::new(&[reg.addr()])?;
    let dir = tempfile::tempdir()?;
    let swarm = swarm_over(gated.clone(), &layer, dir.path())?;
    let rig = start_mirror(&reg, Arc::new(swarm.clone())).await?;
    let blob = format!("/v2/private/app/blobs/{digest}");
    let token = token_for(&tokens, "private/app")?;
    let size = layer.len() as u64;
    let whole = containerd_style(&rig, &blob, &token, size, 100_000).await?;
    ensure!(
        Digest::of(&whole) == digest,
        "reassembled {} bytes, wrong digest",
        whole.len()
    );
    for _ in 0..200 {
        if swarm.cache().contains(&digest) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        swarm.cache().contains(&digest),
        "the download was not committed"
    );
    // One download: every byte came from the registry once, with the client's token.
    ensure!(gated.range_bytes.load(Ordering::SeqCst) == size);
    ensure!(gated.whole.load(Ordering::SeqCst) == 0);
    // Again, now from the cache, in closed ranges.
    let parts = futures::future::join_all((0..4).map(|i| {
        let bytes = i * size / 4..(i + 1) * size / 4;
        let range = format!("bytes={}-{}", bytes.start, bytes.end - 1);
        let (rig, blob, token) = (&rig, &blob, &token);
        async move { (bytes, rig.range(blob, Some(token), &range).await) }
    }))
    .await;
    for (bytes, answer) in parts {
        check_part("closed range", &answer?, &layer, bytes)?;
    }
    ensure!(gated.range_bytes.load(Ordering::SeqCst) == size);
    Ok(())
}

#[tokio::test]
async fn a_range_is_served_while_its_download_is_in_progress() -> Result<()> {
    if !registry_available() {
        return Ok(());
    }
    let (tokens, reg) = token_registry().await?;
    let layer = noise(10 * CHUNK as usize + 99, 3);
    let digest = reg.push_blob("private/app", &layer).await?;
    let gated = Gated::new(&[reg.addr()])?;
    gated.hold_from.store(4 * CHUNK, Ordering::SeqCst);
    let dir = tempfile::tempdir()?;
    let swarm = swarm_over(gated.clone(), &layer, dir.path())?;
    let rig = start_mirror(&reg, Arc::new(swarm.clone())).await?;
    let blob = format!("/v2/private/app/blobs/{digest}");
    let token = token_for(&tokens, "private/app")?;
    let early = CHUNK - 3..3 * CHUNK + 5;
    let range = format!("bytes={}-{}", early.start, early.end - 1);
    let answer = rig.range(&blob, Some(&token), &range).await?;
    check_part("early range", &answer, &layer, early)?;
    ensure!(
        !swarm.cache().contains(&digest),
        "the download should still be held"
    );
    // A range in held chunks waits for them.
    let late = rig.range(&blob, Some(&token), "bytes=-100");
    tokio::pin!(late);
    ensure!(
        tokio::time::timeout(Duration::from_millis(500), &mut late)
            .await
            .is_err(),
        "a range of chunks not yet fetched was answered"
    );
    gated.released.send_replace(true);
    let size = layer.len() as u64;
    check_part("late range", &late.await?, &layer, size - 100..size)?;
    ensure!(gated.range_bytes.load(Ordering::SeqCst) <= size);
    Ok(())
}

#[tokio::test]
async fn a_corrupt_or_failing_source_cuts_a_range() -> Result<()> {
    if !registry_available() {
        return Ok(());
    }
    let reg = TestRegistry::start_anonymous()?;
    let layer = noise(8 * CHUNK as usize, 4);
    let digest = reg.push_blob("pub/app", &layer).await?;
    let blob = format!("/v2/pub/app/blobs/{digest}");

    // The swarm's only chunk source sends a wrong byte in chunk 6: the chunk fails its hash
    // and is never sent; the response is cut after the good chunks.
    let gated = Gated::new(&[reg.addr()])?;
    gated.corrupt_at.store(6 * CHUNK + 7, Ordering::SeqCst);
    let dir = tempfile::tempdir()?;
    let swarm = swarm_over(gated, &layer, dir.path())?;
    let rig = start_mirror(&reg, Arc::new(swarm)).await?;
    let mut resp = rig
        .request(
            reqwest::Method::GET,
            &blob,
            None,
            &[("range", "bytes=100-")],
        )
        .send()
        .await?;
    ensure!(resp.status() == 206, "{}", resp.status());
    let mut got = Vec::new();
    let cut = loop {
        match resp.chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    ensure!(cut, "a complete body of {} bytes", got.len());
    ensure!(layer[100..].starts_with(&got), "wrong bytes before the cut");
    ensure!(got.len() as u64 <= 6 * CHUNK - 100);
    ensure!(rig.metrics.blobs_cut.get() == 1);

    // A source failing mid-range: no complete answer (the connection may even be cut
    // before the client read the head, as every piece was ready at once).
    let source = Arc::new(RecordingSource::new());
    source.add_cut(digest.clone(), &layer[..3 * CHUNK as usize]);
    let rig = start_mirror(&reg, source).await?;
    let range = [("range", "bytes=10-400000")];
    let sent = rig
        .request(reqwest::Method::GET, &blob, None, &range)
        .send()
        .await;
    if let Ok(resp) = sent {
        ensure!(resp.status() == 206, "{}", resp.status());
        let body = resp.bytes().await;
        ensure!(
            body.is_err(),
            "a complete body ({:?} bytes)",
            body.map(|b| b.len())
        );
    }
    ensure!(rig.metrics.blobs_cut.get() == 1);
    Ok(())
}
