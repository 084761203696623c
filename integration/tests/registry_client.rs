//! The registry client against a real registry (Debian's docker-registry, distribution 2.8):
//! resolve (tag, digest, index + platform, Docker schema2), blob size/range/verified, error
//! bodies, and the three auth modes (anonymous, htpasswd Basic, token).

use std::ops::Range;

use anyhow::Result;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use shoal_integration::cluster::noise;
use shoal_integration::registry::TestRegistry;
use shoal_integration::token_server::TokenServer;
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::{
    media_type as mt, BlobStream, ClientConfig, HostConfig, Platform, RegistryClient, RegistryError,
};
use shoal_p2p::Digest;

fn skip() -> bool {
    shoal_integration::tools::skip_unless(&["docker-registry"], false)
}

fn client(addr: &str, creds: Option<(&str, &str)>) -> RegistryClient {
    let mut cfg = ClientConfig {
        retries: 1,
        ..ClientConfig::default()
    };
    cfg.hosts.insert(
        addr.to_string(),
        HostConfig {
            plain_http: true,
            username: creds.map(|c| c.0.to_string()),
            password: creds.map(|c| c.1.to_string()),
        },
    );
    RegistryClient::new(cfg).unwrap()
}

fn reference(addr: &str, rest: &str) -> ImageReference {
    format!("{addr}/{rest}").parse().unwrap()
}

async fn collect(mut s: BlobStream) -> Result<Vec<u8>, shoal_p2p::Error> {
    let mut out = Vec::new();
    while let Some(item) = s.next().await {
        out.extend_from_slice(&item?);
    }
    Ok(out)
}

struct Pushed {
    layers: Vec<Vec<u8>>,
    layer_digests: Vec<Digest>,
    diff_ids: Vec<Digest>,
    amd64_manifest: Digest,
    arm64_manifest: Digest,
    amd64_config: Digest,
    index: Digest,
    docker_manifest: Digest,
}

/// Layers, two configs, two OCI manifests, an OCI index (`multi`), one Docker schema2
/// manifest (`docker`).
async fn push_image(reg: &TestRegistry, repo: &str) -> Result<Pushed> {
    let layers = vec![noise(300_000, 1), noise(1234, 2)];
    let mut layer_digests = Vec::new();
    for l in &layers {
        layer_digests.push(reg.push_blob(repo, l).await?);
    }
    let diff_ids = vec![Digest::of(b"uncompressed 1"), Digest::of(b"uncompressed 2")];
    let config = |arch: &str, variant: Option<&str>| {
        let mut c = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(v) = variant {
            c["variant"] = json!(v);
        }
        serde_json::to_vec(&c).unwrap()
    };
    let amd64_config_bytes = config("amd64", None);
    let arm64_config_bytes = config("arm64", Some("v8"));
    let amd64_config = reg.push_blob(repo, &amd64_config_bytes).await?;
    let arm64_config = reg.push_blob(repo, &arm64_config_bytes).await?;
    let manifest = |mtype: &str, ctype: &str, ltype: &str, cfg: &Digest, cfg_len: usize| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": mtype,
            "config": {"mediaType": ctype, "digest": cfg, "size": cfg_len},
            "layers": layers.iter().zip(&layer_digests).map(|(l, d)| json!({
                "mediaType": ltype, "digest": d, "size": l.len(),
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    };
    let amd64 = manifest(
        mt::OCI_MANIFEST,
        mt::OCI_CONFIG,
        mt::OCI_LAYER_GZIP,
        &amd64_config,
        amd64_config_bytes.len(),
    );
    let arm64 = manifest(
        mt::OCI_MANIFEST,
        mt::OCI_CONFIG,
        mt::OCI_LAYER_GZIP,
        &arm64_config,
        arm64_config_bytes.len(),
    );
    let amd64_manifest = reg
        .push_manifest(repo, "amd64", mt::OCI_MANIFEST, &amd64)
        .await?;
    let arm64_manifest = reg
        .push_manifest(repo, "arm64", mt::OCI_MANIFEST, &arm64)
        .await?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": mt::OCI_INDEX,
        "manifests": [
            {"mediaType": mt::OCI_MANIFEST, "digest": amd64_manifest, "size": amd64.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": mt::OCI_MANIFEST, "digest": arm64_manifest, "size": arm64.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ],
    }))?;
    let index = reg
        .push_manifest(repo, "multi", mt::OCI_INDEX, &index)
        .await?;
    let docker = manifest(
        mt::DOCKER_MANIFEST,
        mt::DOCKER_CONFIG,
        mt::DOCKER_LAYER_GZIP,
        &amd64_config,
        amd64_config_bytes.len(),
    );
    let docker_manifest = reg
        .push_manifest(repo, "docker", mt::DOCKER_MANIFEST, &docker)
        .await?;
    Ok(Pushed {
        layers,
        layer_digests,
        diff_ids,
        amd64_manifest,
        arm64_manifest,
        amd64_config,
        index,
        docker_manifest,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_and_blobs_against_real_registry() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let reg = TestRegistry::start_anonymous()?;
    let addr = reg.addr();
    let repo = "shoal/client-test";
    let p = push_image(&reg, repo).await?;
    let c = client(&addr, None);
    let amd64: Platform = "linux/amd64".parse()?;

    // By tag through the index, platform picked.
    let r = c
        .resolve(&reference(&addr, &format!("{repo}:multi")), &amd64)
        .await?;
    assert_eq!(r.manifest_digest, p.amd64_manifest);
    assert_eq!(r.index_digest.as_ref(), Some(&p.index));
    assert_eq!(r.manifest_media_type, mt::OCI_MANIFEST);
    assert_eq!(r.config_digest, p.amd64_config);
    assert_eq!(r.config.architecture().to_string(), "amd64");
    assert_eq!(r.layers.len(), 2);
    for (i, l) in r.layers.iter().enumerate() {
        assert_eq!(l.digest, p.layer_digests[i]);
        assert_eq!(l.size, p.layers[i].len() as u64);
        assert_eq!(l.media_type, mt::OCI_LAYER_GZIP);
        assert_eq!(l.diff_id.as_ref(), Some(&p.diff_ids[i]));
    }
    let arm = c
        .resolve(
            &reference(&addr, &format!("{repo}:multi")),
            &"linux/arm64".parse()?,
        )
        .await?;
    assert_eq!(arm.manifest_digest, p.arm64_manifest);
    let err = c
        .resolve(
            &reference(&addr, &format!("{repo}:multi")),
            &"linux/s390x".parse()?,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.registry(),
            Some(RegistryError::NoMatchingPlatform { .. })
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("linux/amd64") && msg.contains("linux/arm64/v8"),
        "{msg}"
    );

    // By digest: the index, and a manifest directly.
    let by_index = c
        .resolve(&reference(&addr, &format!("{repo}@{}", p.index)), &amd64)
        .await?;
    assert_eq!(by_index.manifest_digest, p.amd64_manifest);
    let by_digest = c
        .resolve(
            &reference(&addr, &format!("{repo}@{}", p.arm64_manifest)),
            &amd64,
        )
        .await?;
    assert_eq!(by_digest.manifest_digest, p.arm64_manifest);
    assert_eq!(by_digest.index_digest, None);
    let tagged_and_pinned = c
        .resolve(
            &reference(&addr, &format!("{repo}:amd64@{}", p.amd64_manifest)),
            &amd64,
        )
        .await?;
    assert_eq!(tagged_and_pinned.manifest_digest, p.amd64_manifest);

    // Docker schema2: same oci-spec types, Docker media types kept.
    let d = c
        .resolve(&reference(&addr, &format!("{repo}:docker")), &amd64)
        .await?;
    assert_eq!(d.manifest_digest, p.docker_manifest);
    assert_eq!(d.manifest_media_type, mt::DOCKER_MANIFEST);
    assert_eq!(d.layers[0].media_type, mt::DOCKER_LAYER_GZIP);
    assert_eq!(
        d.manifest.config().media_type().to_string(),
        mt::DOCKER_CONFIG
    );
    assert_eq!(d.layers[1].diff_id.as_ref(), Some(&p.diff_ids[1]));

    // Unknown tag: the registry's error code is surfaced.
    let err = c
        .resolve(&reference(&addr, &format!("{repo}:nope")), &amd64)
        .await
        .unwrap_err();
    assert_eq!(err.oci_code(), Some("MANIFEST_UNKNOWN"), "{err}");
    assert!(err.to_string().contains("MANIFEST_UNKNOWN"), "{err}");
    assert!(err.is_not_found());

    // Blobs: size, ranges, verified whole.
    let image = reference(&addr, repo);
    let big = &p.layers[0];
    let big_d = &p.layer_digests[0];
    assert_eq!(c.blob_size(&image, big_d).await?, big.len() as u64);
    let ranges: [Range<u64>; 4] = [0..1, 0..300_000, 1000..200_123, 299_999..300_000];
    for range in ranges {
        let got = collect(c.blob(&image, big_d, Some(range.clone())).await?).await?;
        assert_eq!(
            got,
            &big[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    let beyond = c.blob(&image, big_d, Some(300_000..300_010)).await;
    assert!(beyond.is_err(), "range past the end accepted");
    let whole = collect(c.blob_verified(&image, big_d).await?).await?;
    assert_eq!(&whole, big);
    let small = collect(c.blob_verified(&image, &p.layer_digests[1]).await?).await?;
    assert_eq!(small, p.layers[1]);

    // Unknown blob.
    let missing = Digest::of(b"not pushed");
    let err = match c.blob_verified(&image, &missing).await {
        Ok(_) => panic!("unknown blob streamed"),
        Err(e) => e,
    };
    assert_eq!(err.status(), Some(404), "{err}");
    assert_eq!(err.oci_code(), Some("BLOB_UNKNOWN"), "{err}");
    let err = c.blob_size(&image, &missing).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");

    // The registry's log accounts the requests (used later for byte accounting).
    assert!(
        reg.log().contains("/v2/shoal/client-test/blobs/"),
        "log has no access lines"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_basic_auth() -> Result<()> {
    if skip() || shoal_integration::tools::skip_unless(&["htpasswd"], false) {
        return Ok(());
    }
    let reg = TestRegistry::start_htpasswd("alice", "s3cret-pw")?;
    let addr = reg.addr();
    let repo = "private/app";
    let p = push_image(&reg, repo).await?;
    let image = reference(&addr, &format!("{repo}:multi"));
    let amd64: Platform = "linux/amd64".parse()?;

    let err = client(&addr, None)
        .resolve(&image, &amd64)
        .await
        .unwrap_err();
    assert!(err.is_unauthorized(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&addr) && msg.contains(repo), "{msg}");

    let good = client(&addr, Some(("alice", "s3cret-pw")));
    let r = good.resolve(&image, &amd64).await?;
    assert_eq!(r.manifest_digest, p.amd64_manifest);
    let bytes = collect(good.blob_verified(&image, &p.layer_digests[1]).await?).await?;
    assert_eq!(bytes, p.layers[1]);
    let part = collect(good.blob(&image, &p.layer_digests[0], Some(10..20)).await?).await?;
    assert_eq!(part, &p.layers[0][10..20]);

    let bad = client(&addr, Some(("alice", "wrong-pw")));
    let err = bad.resolve(&image, &amd64).await.unwrap_err();
    assert!(err.is_unauthorized(), "{err}");
    assert!(!err.to_string().contains("wrong-pw"), "{err}");
    assert!(!format!("{err:?}").contains("wrong-pw"), "{err:?}");
    assert!(!format!("{:?}", bad.config()).contains("wrong-pw"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_with_reuse() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let tokens = TokenServer::start("bob", "t0ken-pw").await?;
    let reg = TestRegistry::start_token_auth(&tokens, "bob", "t0ken-pw")?;
    let addr = reg.addr();
    let repo = "team/svc";
    let p = push_image(&reg, repo).await?;
    let image = reference(&addr, &format!("{repo}:multi"));
    let amd64: Platform = "linux/amd64".parse()?;

    let before = tokens.issued();
    let good = client(&addr, Some(("bob", "t0ken-pw")));
    let r = good.resolve(&image, &amd64).await?;
    assert_eq!(r.manifest_digest, p.amd64_manifest);
    for (i, d) in p.layer_digests.iter().enumerate() {
        assert_eq!(good.blob_size(&image, d).await?, p.layers[i].len() as u64);
        let bytes = collect(good.blob_verified(&image, d).await?).await?;
        assert_eq!(bytes, p.layers[i]);
    }
    let clone = good.clone();
    let again = clone
        .resolve(&reference(&addr, &format!("{repo}:docker")), &amd64)
        .await?;
    assert_eq!(again.manifest_digest, p.docker_manifest);
    // One token for repository:team/svc:pull, reused by ~10 requests.
    assert_eq!(tokens.issued() - before, 1, "token not reused");

    let bad = client(&addr, Some(("bob", "nope")));
    let refused_before = tokens.refused();
    let err = bad.resolve(&image, &amd64).await.unwrap_err();
    assert!(err.is_unauthorized(), "{err}");
    assert!(!err.to_string().contains("nope"), "{err}");
    assert_eq!(tokens.refused() - refused_before, 1);

    // Anonymous: the token server hands out a token without access; the registry refuses it.
    let err = client(&addr, None)
        .resolve(&image, &amd64)
        .await
        .unwrap_err();
    assert!(err.is_unauthorized(), "{err}");
    Ok(())
}

/// The registry cannot be made to serve wrong bytes, so a small in-process server does.
#[tokio::test]
async fn verified_blob_detects_wrong_bytes() -> Result<()> {
    use axum::routing::get;
    let good = Bytes::from(noise(100_000, 7));
    let digest = Digest::of(&good);
    let mut evil = good.to_vec();
    evil[50_000] ^= 1;
    let app = axum::Router::new().route(
        "/v2/{*rest}",
        get(move || {
            let evil = evil.clone();
            async move { evil }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let c = client(&addr, None);
    let image = reference(&addr, "x/y");
    let mut s = c.blob_verified(&image, &digest).await?;
    let mut got = 0usize;
    let mut last = None;
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => got += b.len(),
            Err(e) => {
                last = Some(e);
                assert!(s.next().await.is_none(), "items after the error");
                break;
            }
        }
    }
    assert_eq!(got, 100_000, "bytes are streamed before the verdict");
    match last {
        Some(shoal_p2p::Error::Registry(RegistryError::DigestMismatch {
            expected,
            actual,
            repository,
            ..
        })) => {
            assert_eq!(expected, digest);
            assert_ne!(actual, digest);
            assert_eq!(repository, "x/y");
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    Ok(())
}
