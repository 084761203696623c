//! The mirror's trust model (docs/security.md "Mirror trust", DESIGN "Security and bad input")
//! against real `docker-registry`s with token auth, in-process over a real blob cache or a real
//! swarm:
//!
//! - a registry the operator did not configure is passed through untouched: no access check
//!   is made for it and nothing comes from the cache or the swarm;
//! - a configured registry that answers 200 to everything (a lying or compromised one) gets
//!   no blob the node holds, or is downloading, from another registry: its requests pass
//!   through to it;
//! - two repositories of one registry sharing a layer, pulled at once through one swarm
//!   download, both get it, and every registry request carries a token for its own registry
//!   and repository; a reader of another registry is not attached to that download, and its
//!   token never goes to the other registry.
//!
//! Needs docker-registry (skips without it).

mod mirror_rig;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use axum::http::{Method, StatusCode};
use mirror_rig::{
    noise, registry_available, start_mirror, swarm_over, token_for, token_registry, Gated, Rig,
    CHUNK,
};
use shoal_p2p::cache::{BlobCache, CachingSource};
use shoal_p2p::Digest;
use shoal_plugin::config::MirrorSection;

/// A registry that says yes to everything: `HEAD` and `GET` answer 200 with `size` bytes of
/// `x` (so the access check sees the size of the blob it is asked for). Counts the `GET`s.
struct Liar {
    addr: String,
    gets: Arc<AtomicU64>,
}

async fn start_liar(size: u64) -> Result<Liar> {
    let gets = Arc::new(AtomicU64::new(0));
    let counted = gets.clone();
    let app = axum::Router::new().fallback(move |method: Method| {
        let counted = counted.clone();
        async move {
            if method == Method::GET {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            (StatusCode::OK, vec![b'x'; size as usize])
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Liar { addr, gets })
}

/// `GET` (with `range`, if any) of `path` on `registry` through the mirror: status and body
/// (an error reading the body counts as no body).
async fn get(
    rig: &Rig,
    registry: &str,
    path: &str,
    token: Option<&str>,
    range: Option<&str>,
) -> Result<(u16, Vec<u8>)> {
    let headers: Vec<(&str, &str)> = range.iter().map(|r| ("range", *r)).collect();
    let resp = rig
        .request(Method::GET, registry, path, token, &headers)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((
        status,
        resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
    ))
}

/// Whether `body` is a piece of `blob` (its first 32 bytes are somewhere in it).
fn leaked(body: &[u8], blob: &[u8]) -> bool {
    body.len() >= 32 && blob.windows(32).any(|w| w == &body[..32])
}

/// Waits until `digest` is in `cache`.
async fn wait_cached(cache: &BlobCache, digest: &Digest) -> Result<()> {
    for _ in 0..200 {
        if cache.contains(digest) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{digest} was never cached")
}

/// The mirror for `hosts` over a blob cache in front of `gated`, with blob `data` of
/// `private/app` on the first host pulled through it with `token` and cached.
struct Cached {
    rig: Rig,
    cache: Arc<CachingSource<Arc<Gated>>>,
    _dir: tempfile::TempDir,
}

async fn cached_through_mirror(
    hosts: &[String],
    gated: Arc<Gated>,
    data: &[u8],
    token: &str,
) -> Result<Cached> {
    let dir = tempfile::tempdir()?;
    let cache = Arc::new(CachingSource::new(
        gated,
        BlobCache::open(dir.path(), 1 << 30)?,
    ));
    let rig = start_mirror(hosts, MirrorSection::default(), cache.clone()).await?;
    let digest = Digest::of(data);
    let path = format!("/v2/private/app/blobs/{digest}");
    let (status, body) = get(&rig, &hosts[0], &path, Some(token), None).await?;
    ensure!(status == 200 && body == data, "from the registry: {status}");
    cache.flush().await;
    ensure!(cache.cache().contains(&digest), "not cached");
    Ok(Cached {
        rig,
        cache,
        _dir: dir,
    })
}

#[tokio::test]
async fn an_unconfigured_registry_is_passed_through_and_gets_nothing_from_the_cache() -> Result<()>
{
    if !registry_available() {
        return Ok(());
    }
    let (tokens, reg) = token_registry().await?;
    let layer = noise(1 << 20, 11);
    let digest = reg.push_blob("private/app", &layer).await?;
    let hosts = [reg.addr()];
    let gated = Gated::new(&hosts)?;
    let path = format!("/v2/private/app/blobs/{digest}");
    let token = token_for(&tokens, "private/app")?;
    let Cached { rig, .. } = cached_through_mirror(&hosts, gated.clone(), &layer, &token).await?;

    let checks = rig.metrics.access_upstream.get();
    let (sent, passed) = (rig.metrics.blob_bytes.get(), rig.route("passthrough"));
    let unlisted = "unlisted.registry.invalid:5000";
    for (method, range) in [
        (Method::GET, None),
        (Method::GET, Some("bytes=0-")),
        (Method::GET, Some("bytes=10-99")),
        (Method::HEAD, None),
    ] {
        let headers: Vec<(&str, &str)> = range.iter().map(|r| ("range", *r)).collect();
        let resp = rig
            .request(method.clone(), unlisted, &path, Some(&token), &headers)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        ensure!(
            !leaked(&body, &layer),
            "{method} {range:?} for {unlisted}: layer bytes ({status})"
        );
        ensure!(
            status != 200 && status != 206,
            "{method} {range:?}: {status}"
        );
    }
    ensure!(rig.metrics.blob_bytes.get() == sent, "blob bytes went out");
    ensure!(
        rig.metrics.access_upstream.get() == checks,
        "an access check was made for a registry nobody configured"
    );
    ensure!(
        rig.route("passthrough") == passed + 4,
        "not passed through: {} of 4",
        rig.route("passthrough") - passed
    );
    ensure!(gated.whole.load(Ordering::SeqCst) == 1);
    Ok(())
}

#[tokio::test]
async fn a_lying_registry_gets_no_blob_that_came_from_another_registry() -> Result<()> {
    if !registry_available() {
        return Ok(());
    }
    let (tokens, reg) = token_registry().await?;
    let cached = noise((1 << 20) + 7, 12);
    let cached_digest = reg.push_blob("private/app", &cached).await?;
    let token = token_for(&tokens, "private/app")?;
    let liar = start_liar(cached.len() as u64).await?;
    let hosts = [reg.addr(), liar.addr.clone()];

    // From the cache: the blob came from the private registry; the liar gets its own bytes.
    let cached_rig = cached_through_mirror(&hosts, Gated::new(&hosts)?, &cached, &token).await?;
    let (rig, path) = (
        &cached_rig.rig,
        format!("/v2/private/app/blobs/{cached_digest}"),
    );
    ensure!(cached_rig.cache.cache().origins(&cached_digest) == [reg.addr()]);
    let sent = rig.metrics.blob_bytes.get();
    for range in [
        None,
        Some("bytes=0-"),
        Some("bytes=100-1000"),
        Some("bytes=-64"),
    ] {
        let (status, body) = get(rig, &liar.addr, &path, None, range).await?;
        ensure!(
            !leaked(&body, &cached),
            "range {range:?}: the liar got the private blob's bytes ({status})"
        );
    }
    ensure!(
        rig.metrics.blob_bytes.get() == sent,
        "blob bytes went to the liar"
    );
    ensure!(
        liar.gets.load(Ordering::SeqCst) == 4,
        "the liar's requests were not passed to it: {}",
        liar.gets.load(Ordering::SeqCst)
    );

    // From a swarm download in progress for the private registry: the liar is not attached.
    let layer = noise(12 * CHUNK as usize + 5, 13);
    let digest = reg.push_blob("private/app", &layer).await?;
    let gated = Gated::new(&hosts)?;
    gated.hold_from.store(4 * CHUNK, Ordering::SeqCst);
    let dir = tempfile::tempdir()?;
    let swarm = swarm_over(gated.clone(), &layer, dir.path())?;
    let rig = start_mirror(&hosts, MirrorSection::default(), Arc::new(swarm.clone())).await?;
    let path = format!("/v2/private/app/blobs/{digest}");
    let mut reader = rig
        .request(Method::GET, &reg.addr(), &path, Some(&token), &[])
        .send()
        .await?;
    ensure!(reader.status() == 200, "{}", reader.status());
    let first = reader.chunk().await?.context("no first piece")?;
    ensure!(layer.starts_with(&first));
    let gets = liar.gets.load(Ordering::SeqCst);
    let lied = get(&rig, &liar.addr, &path, None, None);
    let lied_range = get(&rig, &liar.addr, &path, None, Some("bytes=0-"));
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gated.released.send_replace(true);
    };
    let (lied, lied_range, ()) = tokio::join!(lied, lied_range, release);
    for (what, (status, body)) in [("whole", lied?), ("range", lied_range?)] {
        ensure!(
            !leaked(&body, &layer),
            "{what}: the liar got the downloading blob's bytes ({status})"
        );
    }
    ensure!(
        liar.gets.load(Ordering::SeqCst) == gets + 2,
        "not passed through"
    );
    let mut rest = first.to_vec();
    while let Some(piece) = reader.chunk().await? {
        rest.extend_from_slice(&piece);
    }
    ensure!(
        rest == layer,
        "the private registry's reader got {} bytes",
        rest.len()
    );
    Ok(())
}

#[tokio::test]
async fn readers_of_two_repositories_and_two_registries_each_use_their_own_token() -> Result<()> {
    if !registry_available() {
        return Ok(());
    }
    let (tokens_a, reg_a) = token_registry().await?;
    let (tokens_b, reg_b) = token_registry().await?;
    let layer = noise(16 * CHUNK as usize + 3, 14);
    let mut digest = Digest::of(b"");
    for repo in ["team/one", "team/two"] {
        digest = reg_a.push_blob(repo, &layer).await?;
    }
    reg_b.push_blob("other/app", &layer).await?;
    // Which registry and repository each token is for.
    let mut issued = HashMap::new();
    let mut readers = Vec::new();
    for (tokens, reg, repo) in [
        (&tokens_a, &reg_a, "team/one"),
        (&tokens_a, &reg_a, "team/two"),
        (&tokens_b, &reg_b, "other/app"),
    ] {
        let token = token_for(tokens, repo)?;
        issued.insert(format!("Bearer {token}"), (reg.addr(), repo.to_owned()));
        readers.push((reg.addr(), repo, token));
    }
    let hosts = [reg_a.addr(), reg_b.addr()];
    let gated = Gated::new(&hosts)?;
    gated.hold_from.store(4 * CHUNK, Ordering::SeqCst);
    let dir = tempfile::tempdir()?;
    let swarm = swarm_over(gated.clone(), &layer, dir.path())?;
    let rig = start_mirror(&hosts, MirrorSection::default(), Arc::new(swarm.clone())).await?;

    // All three start while the download is held after its first chunks.
    let mut responses = Vec::new();
    for (registry, repo, token) in &readers {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = rig
            .request(Method::GET, registry, &path, Some(token), &[])
            .send()
            .await?;
        ensure!(resp.status() == 200, "{registry}/{repo}: {}", resp.status());
        responses.push(((registry, repo), resp));
    }
    gated.released.send_replace(true);
    for ((registry, repo), resp) in responses {
        let body = resp.bytes().await;
        ensure!(
            body.as_ref().is_ok_and(|b| b.as_ref() == layer.as_slice()),
            "{registry}/{repo}: {:?}",
            body.map(|b| b.len())
        );
    }
    wait_cached(swarm.cache(), &digest).await?;

    // Every registry request shoald made carried a token for its own registry and repository.
    let sent = gated.sent();
    ensure!(!sent.is_empty(), "no registry request");
    for (registry, repository, authorization) in &sent {
        let grant = authorization.as_ref().and_then(|a| issued.get(a));
        ensure!(
            grant == Some(&(registry.clone(), repository.clone())),
            "a request to {registry}/{repository} carried a token for {grant:?}"
        );
    }
    ensure!(
        sent.iter().any(|(_, repo, _)| repo == "team/two"),
        "the second reader's token was never used"
    );
    // Neither registry refused a blob request (its access log), and each served some.
    for reg in [&reg_a, &reg_b] {
        let log = reg.log();
        let blobs = |status: &str| {
            let hits = log.lines().filter(|l| l.contains("/blobs/sha256:"));
            hits.filter(|l| l.contains(status)).count()
        };
        ensure!(
            blobs("\" 401 ") == 0,
            "{} refused blob requests:\n{log}",
            reg.addr()
        );
        ensure!(blobs("\" 20") > 0, "{} served no blob:\n{log}", reg.addr());
    }
    Ok(())
}
