//! The push hook against the real `docker-registry` (distribution 2.8): the registry's
//! notifications (config.yml as `registry::notifications_yaml`, docs/registry-side.md's
//! snippet) go to a running shoal-registry-ext; an image pushed with skopeo (an index of two
//! platforms, two layers each) has every layer's chunk manifest made and its blob in the seed
//! cache before anything pulls it, each layer read from the registry once; later manifest
//! requests and seeder chunks need no registry read. Requests without the token get 401, garbage 400.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_integration::cluster::{random_layers, Served};
use shoal_integration::image::{OciLayout, PlatformImage};
use shoal_integration::registry::TestRegistry;
use shoal_integration::tools::skip_unless;
use shoal_p2p::chunk::ChunkManifest;
use shoal_p2p::peer::{PeerClient, PeerFetcher};
use shoal_p2p::tls::Transport;
use shoal_p2p::Digest;
use shoal_registry_ext::manifests::manifest_path;
use shoal_registry_ext::{serve, Config, Listeners};
use tokio::net::TcpListener;

const TOKEN: &str = "push-hook-test-token-0123456789";
const CHUNK: u64 = 64 << 10;

/// GETs of `/v2/.../blobs/<digest>` in the registry's access log, per digest.
fn blob_gets(log: &str, digest: &Digest) -> usize {
    let needle = format!("/blobs/{digest}");
    log.lines()
        .filter(|l| l.contains("msg=\"response completed"))
        .filter(|l| l.contains("http.request.method=GET") && l.contains(&needle))
        .count()
}

async fn metrics(addr: SocketAddr) -> Result<String> {
    Ok(reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?)
}

fn seeded(seed_dir: &Path, digest: &Digest) -> bool {
    seed_dir.join(format!("sha256-{}", digest.hex())).is_file()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_image_is_warmed_before_any_pull() -> Result<()> {
    if skip_unless(&["docker-registry", "skopeo"], false) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    // The hook's listener first: the registry's config names it.
    let hook = TcpListener::bind("127.0.0.1:0").await?;
    let hook_addr = hook.local_addr()?;
    let hook_url = format!("http://{hook_addr}/v1/registry-events");
    let registry = TestRegistry::start_with_notifications(&hook_url, TOKEN)?;
    let host = registry.addr();

    let api = TcpListener::bind("127.0.0.1:0").await?;
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await?;
    let (api_addr, metrics_addr) = (api.local_addr()?, metrics_listener.local_addr()?);
    let (manifests_dir, seed_dir) = (dir.path().join("manifests"), dir.path().join("seed"));
    let text = format!(
        "listen = \"{api_addr}\"\nmetrics_listen = \"{metrics_addr}\"\n\
         insecure_plaintext = true\nregistry_host = \"{host}\"\n\
         [registry.hosts.\"{host}\"]\nplain_http = true\n\
         [manifests]\ndir = {manifests_dir:?}\nchunk_size = {CHUNK}\n\
         [seed]\ndir = {seed_dir:?}\n\
         [notifications]\nenabled = true\nlisten = \"{hook_addr}\"\ntoken = \"{TOKEN}\"\n"
    );
    let config = Config::parse(&text, Path::new("push-hook.toml"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        config,
        Listeners {
            api,
            metrics: Some(metrics_listener),
            notify: Some(hook),
            preheat_admin: None,
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let result = check(&registry, hook_addr, api_addr, metrics_addr, dir.path()).await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    result.with_context(|| format!("registry log:\n{}", registry.log()))
}

async fn check(
    registry: &TestRegistry,
    hook_addr: SocketAddr,
    api_addr: SocketAddr,
    metrics_addr: SocketAddr,
    dir: &Path,
) -> Result<()> {
    let host = registry.addr();
    let http = reqwest::Client::new();
    let events = format!("http://{hook_addr}/v1/registry-events");
    let envelope = r#"{"events":[]}"#;

    // Refusals: no token, a wrong one (401); garbage with the right one (400); an envelope
    // of events it has nothing to do for (202).
    let no_token = http.post(&events).body(envelope).send().await?;
    assert_eq!(no_token.status(), 401);
    let wrong = http
        .post(&events)
        .bearer_auth("push-hook-test-token-0123456788")
        .body(envelope)
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    for garbage in ["not json", "{\"evnts\": []}", "[1,2]", ""] {
        let r = http
            .post(&events)
            .bearer_auth(TOKEN)
            .body(garbage)
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{garbage:?}");
    }
    // Too large (over 4 MiB), even if well formed: 400 (or, if the server's close after the
    // answer overtakes the upload, a broken connection; never 202).
    // On a client of its own: a connection the server closed mid-upload must not be reused
    // by the requests below (a broken pipe on a pooled connection, seen once under load).
    let huge = format!("{{\"events\":[{}0]}}", "0,".repeat(3 << 20));
    if let Ok(r) = reqwest::Client::new()
        .post(&events)
        .bearer_auth(TOKEN)
        .body(huge)
        .send()
        .await
    {
        assert_eq!(r.status(), 400);
    }
    let odd = r#"{"events":[{"action":"pull","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","repository":"x/y"}},{"action":"push"},42]}"#;
    let r = http
        .post(&events)
        .bearer_auth(TOKEN)
        .body(odd)
        .send()
        .await?;
    assert_eq!(r.status(), 202);

    // Push an index of two platforms, two layers each, with skopeo.
    let layout = OciLayout::create(&dir.join("layout"))?;
    let platforms: Vec<PlatformImage> = ["amd64", "arm64"]
        .iter()
        .enumerate()
        .map(|(i, arch)| {
            Ok(PlatformImage {
                os: "linux".into(),
                architecture: arch.to_string(),
                layers: random_layers(2, 600 << 10, 40 + i as u64)?,
            })
        })
        .collect::<Result<_>>()?;
    let layers: BTreeSet<Digest> = platforms
        .iter()
        .flat_map(|p| p.layers.iter().map(|l| l.digest.clone()))
        .collect();
    assert_eq!(layers.len(), 4);
    layout.add("v1", &platforms)?;
    layout.push("v1", &host, "hook/app")?;

    // Wait (no pull) until every layer has its chunk manifest on disk and is seeded.
    let (manifests_dir, seed_dir) = (dir.join("manifests"), dir.join("seed"));
    let ready =
        |d: &Digest| manifest_path(&manifests_dir, d, CHUNK).is_file() && seeded(&seed_dir, d);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !layers.iter().all(ready) {
        if Instant::now() > deadline {
            bail!(
                "layers not warmed 60 s after the push: {:?}\nmetrics:\n{}",
                layers.iter().filter(|d| !ready(d)).collect::<Vec<_>>(),
                metrics(metrics_addr).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics(metrics_addr).await?;
    eprintln!("after the push:\n{}", grep(&text, "shoal_notify_"));
    // 4 layers and 2 configs (blob pushes), 2 manifests and the index.
    assert!(
        text.contains("shoal_notify_events_total{action=\"push\",result=\"queued\"} 9"),
        "{text}"
    );
    assert!(text.contains("shoal_notify_refused_total{reason=\"unauthorized\"} 2"));
    assert!(text.contains("shoal_notify_refused_total{reason=\"bad_request\"} 5"));
    // The one the test sent: the registry sends no pulls (skopeo's HEADs, the warm-up's GETs).
    assert!(text.contains("shoal_notify_events_total{action=\"pull\",result=\"ignored\"} 1"));
    assert!(text.contains("shoal_notify_events_total{action=\"other\",result=\"invalid\"} 2"));
    assert!(
        !text.contains("shoal_notify_warmups_total{result=\"error\"}"),
        "{text}"
    );
    // Each layer was read from the registry once, by the warm-up.
    let log = registry.log();
    for d in &layers {
        assert_eq!(blob_gets(&log, d), 1, "GETs of layer {d}");
    }

    // Requests after the push: manifests from disk, chunks from the seeder; no registry read.
    let before = Served::parse(&registry.log());
    let client = PeerClient::new(
        &Transport::Plaintext,
        Duration::from_secs(5),
        Duration::from_secs(10),
    )?;
    for d in &layers {
        let url =
            format!("http://{api_addr}/v1/chunk-manifests/{d}?registry={host}&repository=hook/app");
        let resp = http.get(&url).send().await?.error_for_status()?;
        let m = ChunkManifest::from_json(&resp.bytes().await?)?;
        assert!(m.chunks.len() >= 2, "{} chunks", m.chunks.len());
        for i in 0..m.chunks.len() {
            let progress = std::sync::atomic::AtomicU64::default();
            let chunk = client
                .fetch(api_addr, d, m.chunk_range(i), &progress)
                .await?;
            assert_eq!(Digest::of(&chunk), m.chunks[i]);
        }
    }
    let after = Served::parse(&registry.log()).since(&before);
    assert_eq!(
        after.blob_gets, 0,
        "registry blob reads after the warm-up: {after:#?}"
    );
    let text = metrics(metrics_addr).await?;
    assert!(
        text.contains("shoal_manifest_requests_total{result=\"cached\"} 4"),
        "{text}"
    );
    assert!(!text.contains("result=\"made\""), "{text}");
    Ok(())
}

fn grep(text: &str, prefix: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .collect::<Vec<_>>()
        .join("\n")
}
