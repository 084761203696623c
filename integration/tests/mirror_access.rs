//! shoald's registry mirror against a real `docker-registry` with token auth (private
//! repositories) and the test token server: the mirror runs in-process over the node's blob
//! source (the cache in front of the registry client), configured with no credentials at all.
//!
//! - A client with a token for the repository gets the blob (GET and HEAD, size and digest
//!   headers): the bytes came from shoal's source, fetched with the client's own token.
//! - A client without credentials, or with a token for another repository, gets the
//!   registry's refusal (401 with `WWW-Authenticate`, or 403) and no byte, even once the
//!   blob sits in the node's cache.
//! - Manifests and the `/v2/` ping pass through unchanged; a request without `?ns=` is
//!   refused when no default upstream is set.
//!
//! Needs docker-registry (skips without it).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use shoal_integration::cluster::random_layers;
use shoal_integration::containerd::TestContainerd;
use shoal_integration::registry::TestRegistry;
use shoal_integration::token_server::TokenServer;
use shoal_p2p::cache::{BlobCache, CachingSource};
use shoal_p2p::registry::{ClientConfig, HostConfig, RegistryClient};
use shoal_p2p::source::BlobSource;
use shoal_p2p::source::RecordingSource;
use shoal_p2p::Digest;
use shoal_plugin::config::MirrorSection;
use shoal_plugin::mirror::{Mirror, MirrorMetrics};

mod mirror_rig;

use mirror_rig::{noise, token_for};

struct Rig {
    url: String,
    registry: String,
    metrics: MirrorMetrics,
    cache: Arc<CachingSource<RegistryClient>>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start_mirror(reg: &TestRegistry, default_upstream: &str) -> Result<Rig> {
    start_mirror_with(reg, default_upstream, None).await
}

/// The mirror over the cache in front of the registry client, or over `source` when given.
async fn start_mirror_with(
    reg: &TestRegistry,
    default_upstream: &str,
    source: Option<Arc<dyn BlobSource>>,
) -> Result<Rig> {
    let mut config = ClientConfig::default();
    config.hosts.insert(
        reg.addr(),
        HostConfig {
            plain_http: true,
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir()?;
    let blob_cache = BlobCache::open(dir.path(), 1 << 30)?;
    let cache = Arc::new(CachingSource::new(
        RegistryClient::new(config.clone())?,
        blob_cache,
    ));
    let metrics = MirrorMetrics::default();
    let section = MirrorSection {
        enabled: true,
        default_upstream: default_upstream.into(),
        ..Default::default()
    };
    let blobs: Arc<dyn BlobSource> = match source {
        Some(s) => s,
        None => cache.clone(),
    };
    let mirror = Arc::new(Mirror::new(&section, &config, blobs, metrics.clone())?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(mirror.serve(listener, std::future::pending()));
    Ok(Rig {
        url,
        registry: reg.addr(),
        metrics,
        cache,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        _dir: dir,
    })
}

impl Rig {
    async fn get(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> Result<(u16, reqwest::header::HeaderMap, Vec<u8>)> {
        let mut rb = self
            .http
            .request(method, format!("{}{path}?ns={}", self.url, self.registry));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Ok((status, headers, resp.bytes().await?.to_vec()))
    }
}

#[tokio::test]
async fn private_blobs_go_only_to_clients_the_registry_lets_pull_them() -> Result<()> {
    if shoal_integration::tools::skip_unless(&["docker-registry"], false) {
        return Ok(());
    }
    let tokens = TokenServer::start("bob", "pw").await?;
    let reg = TestRegistry::start_token_auth(&tokens, "bob", "pw")?;
    let layer = noise(3 << 20, 1);
    let digest: Digest = reg.push_blob("private/app", &layer).await?;
    reg.push_blob("other/x", b"something else").await?;
    let rig = start_mirror(&reg, "").await?;
    let blob = format!("/v2/private/app/blobs/{digest}");
    let app_token = token_for(&tokens, "private/app")?;
    let other_token = token_for(&tokens, "other/x")?;

    // No credentials: the registry's challenge, passed back; nothing served.
    let (status, headers, body) = rig.get(reqwest::Method::GET, &blob, None).await?;
    ensure!(status == 401, "anonymous GET: {status}");
    let challenge = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ensure!(
        challenge.contains(&tokens.realm()) && challenge.contains("private/app"),
        "challenge {challenge:?}"
    );
    ensure!(!body.windows(64).any(|w| w == &layer[..64]));

    // The repository's token: the blob, fetched with that token (the node has none).
    let (status, headers, body) = rig
        .get(reqwest::Method::GET, &blob, Some(&app_token))
        .await?;
    ensure!(status == 200, "GET with the token: {status}");
    ensure!(
        body == layer,
        "wrong bytes ({} of {})",
        body.len(),
        layer.len()
    );
    ensure!(headers["docker-content-digest"] == digest.to_string().as_str());
    ensure!(rig.metrics.blob_bytes.get() == layer.len() as u64);
    let (status, headers, body) = rig
        .get(reqwest::Method::HEAD, &blob, Some(&app_token))
        .await?;
    ensure!(status == 200 && body.is_empty(), "HEAD: {status}");
    ensure!(headers["content-length"] == layer.len().to_string().as_str());
    ensure!(
        rig.metrics.access_cached.get() >= 1,
        "the second check was not cached"
    );
    rig.cache.flush().await;
    ensure!(rig.cache.cache().contains(&digest), "not cached");

    // Now the node holds it; still nothing for clients the registry would refuse, and their
    // requests never reach the blob source (swarm or cache).
    let sent = rig.metrics.blob_bytes.get();
    let route = |route: &'static str| {
        rig.metrics
            .requests
            .get_or_create(&shoal_plugin::mirror::RouteLabel { route })
            .get()
    };
    let (served_before, refused_before) = (route("blob"), route("refused"));
    for (who, token) in [
        ("anonymous", None),
        ("other repo's token", Some(other_token.as_str())),
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let (status, _, body) = rig.get(method.clone(), &blob, token).await?;
            ensure!(
                status == 401 || status == 403,
                "{who} {method}: {status}, {} bytes",
                body.len()
            );
            ensure!(body.len() < 4096, "{who} {method}: {} bytes", body.len());
        }
    }
    ensure!(
        rig.metrics.blob_bytes.get() == sent,
        "bytes went to a refused client"
    );
    ensure!(
        route("blob") == served_before,
        "a refused request reached the blob source"
    );
    ensure!(route("refused") == refused_before + 4);

    // Everything else passes through unchanged.
    let (status, headers, _) = rig.get(reqwest::Method::GET, "/v2/", None).await?;
    ensure!(status == 401 && headers.contains_key("www-authenticate"));
    let (status, _, body) = rig
        .get(
            reqwest::Method::GET,
            "/v2/private/app/tags/list",
            Some(&app_token),
        )
        .await?;
    ensure!(status == 404 || status == 200, "tags: {status}");
    ensure!(!body.is_empty());
    // No ?ns= and no default upstream: refused.
    let resp = rig.http.get(format!("{}{blob}", rig.url)).send().await?;
    ensure!(resp.status() == 400, "{}", resp.status());
    Ok(())
}

#[tokio::test]
async fn public_blobs_and_manifests_through_the_default_upstream() -> Result<()> {
    if shoal_integration::tools::skip_unless(&["docker-registry"], false) {
        return Ok(());
    }
    let reg = TestRegistry::start_anonymous()?;
    let layer = noise(1 << 20, 2);
    let digest = reg.push_blob("pub/app", &layer).await?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": layer.len()},
        "layers": [],
    }))?;
    let manifest_digest = reg
        .push_manifest(
            "pub/app",
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
        .await?;
    let rig = start_mirror(&reg, &reg.addr()).await?;
    // Without ?ns=: the default upstream.
    let resp = rig
        .http
        .get(format!("{}/v2/pub/app/manifests/v1", rig.url))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await?;
    ensure!(resp.status() == 200, "{}", resp.status());
    ensure!(resp.headers()["docker-content-digest"] == manifest_digest.to_string().as_str());
    ensure!(resp.bytes().await?.as_ref() == manifest.as_slice());
    let (status, _, body) = rig
        .get(
            reqwest::Method::GET,
            &format!("/v2/pub/app/blobs/{digest}"),
            None,
        )
        .await?;
    ensure!(status == 200 && body == layer, "{status}");
    // A blob the registry does not have: its 404, passed back.
    let missing = Digest::of(b"missing");
    let (status, _, _) = rig
        .get(
            reqwest::Method::GET,
            &format!("/v2/pub/app/blobs/{missing}"),
            None,
        )
        .await?;
    ensure!(status == 404, "{status}");
    Ok(())
}

/// A source that fails mid-blob or serves wrong bytes: the client never gets a complete,
/// successful body.
#[tokio::test]
async fn a_failing_or_corrupt_source_cuts_the_response() -> Result<()> {
    if shoal_integration::tools::skip_unless(&["docker-registry"], false) {
        return Ok(());
    }
    let reg = TestRegistry::start_anonymous()?;
    let good = noise(2 << 20, 3);
    let cut = noise(2 << 20, 4);
    let good_digest = reg.push_blob("pub/app", &good).await?;
    let cut_digest = reg.push_blob("pub/app", &cut).await?;
    let source = Arc::new(RecordingSource::new());
    let mut corrupt = good.clone();
    corrupt[good.len() - 1] ^= 0xff;
    source.add_as(good_digest.clone(), &corrupt);
    source.add_cut(cut_digest.clone(), &cut[..1 << 20]);
    let rig = start_mirror_with(&reg, "", Some(source)).await?;
    for digest in [&good_digest, &cut_digest] {
        let resp = rig
            .http
            .get(format!(
                "{}/v2/pub/app/blobs/{digest}?ns={}",
                rig.url, rig.registry
            ))
            .send()
            .await?;
        ensure!(resp.status() == 200, "{}", resp.status());
        let body = resp.bytes().await;
        ensure!(
            body.is_err(),
            "{digest}: a complete body ({:?} bytes)",
            body.map(|b| b.len())
        );
    }
    ensure!(rig.metrics.blobs_cut.get() == 2);
    Ok(())
}

/// containerd itself (`ctr images pull --hosts-dir`, hosts.toml from `shoald hosts`' merge)
/// pulls a private image through the mirror with the user's credentials, and gets nothing
/// without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_a_private_image_through_the_mirror_only_with_credentials() -> Result<()> {
    if shoal_integration::tools::skip_unless(&["docker-registry", "containerd", "ctr"], true) {
        return Ok(());
    }
    let tokens = TokenServer::start("bob", "pw").await?;
    let reg = TestRegistry::start_token_auth(&tokens, "bob", "pw")?;
    let repo = "private/app";
    let layers = random_layers(2, 4 << 20, 5)?;
    for l in &layers {
        reg.push_blob(repo, &l.blob).await?;
    }
    let platform = shoal_p2p::registry::Platform::host();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
    }))?;
    let config_digest = reg.push_blob(repo, &config).await?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.blob.len(),
        })).collect::<Vec<_>>(),
    }))?;
    reg.push_manifest(
        repo,
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    )
    .await?;
    let rig = start_mirror(&reg, "").await?;
    let hosts = tempfile::tempdir()?;
    let dir = hosts.path().join(reg.addr());
    std::fs::create_dir_all(&dir)?;
    let existing = format!(
        "server = \"http://{0}\"\n[host.\"http://{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        reg.addr()
    );
    let text = shoal_plugin::mirror::hosts::merge(Some(&existing), None, &rig.url)
        .map_err(anyhow::Error::msg)?;
    std::fs::write(dir.join("hosts.toml"), text)?;
    let containerd = TestContainerd::start()?;
    let image = format!("{}/{repo}:v1", reg.addr());
    let hosts_dir = hosts.path().display().to_string();
    let ctr = |user: Option<&str>| {
        let mut args = vec!["images", "pull", "--hosts-dir", hosts_dir.as_str()];
        if let Some(u) = user {
            args.extend(["--user", u]);
        }
        args.push(&image);
        containerd.ctr(&args)
    };
    let anonymous = tokio::task::block_in_place(|| ctr(None));
    ensure!(
        anonymous.is_err(),
        "an anonymous pull of a private image worked"
    );
    ensure!(
        rig.metrics.blob_bytes.get() == 0,
        "blob bytes went to an anonymous client"
    );
    tokio::task::block_in_place(|| ctr(Some("bob:pw"))).context("pull with credentials")?;
    let layer_bytes: u64 = layers.iter().map(|l| l.blob.len() as u64).sum();
    ensure!(
        rig.metrics.blob_bytes.get() >= layer_bytes,
        "the mirror sent {} bytes, the layers are {layer_bytes}",
        rig.metrics.blob_bytes.get()
    );
    Ok(())
}

/// The registry client with a client's own credentials (what the swarm's registry ranges and
/// the cache's fallback use for the mirror): sent as they are, no token dance with the
/// node's (absent) credentials; a refused token is an error, not a retry.
#[tokio::test]
async fn the_registry_client_fetches_with_a_clients_credentials_as_they_are() -> Result<()> {
    if shoal_integration::tools::skip_unless(&["docker-registry"], false) {
        return Ok(());
    }
    let tokens = TokenServer::start("bob", "pw").await?;
    let reg = TestRegistry::start_token_auth(&tokens, "bob", "pw")?;
    let layer = noise(1 << 20, 6);
    let digest = reg.push_blob("private/app", &layer).await?;
    let client = reg.plain_http_client()?;
    let image: shoal_p2p::reference::ImageReference =
        format!("{}/private/app:v1", reg.addr()).parse()?;
    let issued = tokens.issued();
    let good = shoal_p2p::source::Credentials::new(format!(
        "Bearer {}",
        token_for(&tokens, "private/app")?
    ));
    let good = shoal_p2p::source::Reader::Client(Some(good));
    let body = client
        .fetch_range_as(&image, &digest, 10..1000, &good)
        .await?;
    let bytes: Vec<bytes::Bytes> = futures::TryStreamExt::try_collect(body).await?;
    ensure!(bytes.concat() == layer[10..1000]);
    let other =
        shoal_p2p::source::Credentials::new(format!("Bearer {}", token_for(&tokens, "other/x")?));
    let other = shoal_p2p::source::Reader::Client(Some(other));
    let refused = client.fetch_as(&image, &digest, &other).await;
    ensure!(
        refused
            .as_ref()
            .is_err_and(shoal_p2p::Error::is_unauthorized),
        "{:?}",
        refused.err()
    );
    ensure!(
        tokens.issued() == issued,
        "the client asked the token server itself"
    );
    // Without a client's credentials the node's (none here) are used: anonymous, refused.
    ensure!(client.fetch(&image, &digest).await.is_err());
    Ok(())
}
