//! Identities and roles over real mutual TLS on 127.0.0.1: each refusal, and the same request
//! going through with the right certificate.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use tempfile::TempDir;

use super::*;
use crate::digest::Digest;
use crate::peer::test_pki::TestCa;
use crate::peer::{PeerClient, PeerError, PeerFetcher};
use crate::preheat::{ClientAuth, PreheatClient, PreheatClientError};
use crate::tracker::{Announce, Failure, HttpTrackers, Tracker, TrackerError};

const TIMEOUT: Duration = Duration::from_secs(10);

struct Setup {
    _tmp: TempDir,
    dir: std::path::PathBuf,
    ca: TestCa,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    Setup {
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
        ca: TestCa::new("cluster"),
    }
}

/// Serves a router that answers `GET /whoami` with the caller's identity, on `transport`;
/// runs until the test's runtime ends.
async fn whoami_server(transport: Transport) -> SocketAddr {
    let router = axum::Router::new().route(
        "/whoami",
        get(
            |axum::Extension(caller): axum::Extension<Caller>| async move {
                match caller.identity() {
                    Some(id) => id.uri(),
                    None => "plaintext".into(),
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = transport
            .serve(listener, router, std::future::pending())
            .await;
    });
    addr
}

fn announce(peer_id: &str) -> Announce {
    Announce {
        peer_id: peer_id.into(),
        addr: "127.0.0.1:7070".parse().unwrap(),
        upload: Default::default(),
        blobs: vec![],
    }
}

#[test]
fn an_own_certificate_without_a_role_fails_to_load_saying_how_to_remake_it() {
    let s = setup();
    let files = s.ca.files(&s.dir, "old-node", None);
    let e = Transport::load(Some(&files), false).unwrap_err();
    let text = e.to_string();
    assert!(matches!(
        e,
        TlsError::Identity {
            source: IdentityError::NoRole,
            ..
        }
    ));
    assert!(text.contains("old-node.pem"), "{text}");
    assert!(text.contains("scripts/cluster-certs.sh"), "{text}");
    assert!(text.contains("registry-side:NAME"), "{text}");
}

#[test]
fn components_check_their_own_role_at_startup() {
    let s = setup();
    let node = s.ca.transport(&s.dir, "node-1");
    let reg = s.ca.registry_side_transport(&s.dir, "reg");
    assert_eq!(
        node.identity(),
        Some(&Identity::new(Role::Node, "node-1").unwrap())
    );
    node.require_role(Role::Node, "shoald").unwrap();
    reg.require_role(Role::RegistrySide, "shoal-registry-ext")
        .unwrap();
    let e = node
        .require_role(Role::RegistrySide, "shoal-registry-ext")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("scripts/cluster-certs.sh DIR registry-side:node-1"),
        "{e}"
    );
    let e = reg
        .require_role(Role::Node, "shoald")
        .unwrap_err()
        .to_string();
    assert!(e.contains("scripts/cluster-certs.sh DIR reg"), "{e}");
    Transport::Plaintext
        .require_role(Role::Node, "shoald")
        .unwrap();
}

#[tokio::test]
async fn servers_see_the_callers_identity_and_refuse_role_less_clients() {
    let s = setup();
    let addr = whoami_server(s.ca.transport(&s.dir, "server")).await;
    let url = format!("https://{addr}/whoami");
    for (transport, want) in [
        (s.ca.transport(&s.dir, "node-7"), "shoal://node/node-7"),
        (
            s.ca.registry_side_transport(&s.dir, "reg"),
            "shoal://registry-side/reg",
        ),
    ] {
        let body = transport
            .http_client(TIMEOUT, TIMEOUT)
            .unwrap()
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, want);
    }
    // A role-less client certificate cannot be loaded by shoal; present one by hand.
    let old = s.ca.files(&s.dir, "old", None);
    let mut pem = std::fs::read(&old.cert).unwrap();
    pem.extend(std::fs::read(&old.key).unwrap());
    let client = reqwest::Client::builder()
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&old.ca).unwrap()).unwrap(),
        )
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let refused = client.get(&url).send().await;
    assert!(refused.is_err(), "a role-less client got {refused:?}");
}

#[tokio::test]
async fn a_node_certificate_is_refused_as_tracker_and_manifest_service() {
    let s = setup();
    let node = s.ca.transport(&s.dir, "node-1");
    let fake = whoami_server(s.ca.transport(&s.dir, "node-2")).await;
    let real = whoami_server(s.ca.registry_side_transport(&s.dir, "reg")).await;
    let trackers = |addr: SocketAddr| {
        HttpTrackers::new(vec![format!("https://{addr}")], &node, TIMEOUT, TIMEOUT).unwrap()
    };
    let digest = Digest::of(b"blob");
    let refused = |e: TrackerError| {
        let text = e.to_string();
        assert!(
            text.contains("node \"node-2\"") && text.contains("registry-side"),
            "{text}"
        );
        // Typed: a TLS failure, refused over the tracker's identity.
        let TrackerError::Unavailable { failures } = &e else {
            panic!("{e:?}");
        };
        let failure = failures[0].failure();
        assert!(matches!(failure, Some(Failure::Tls(_))), "{failure:?}");
        let refusal = failure.and_then(Failure::identity_refusal);
        assert!(
            matches!(refusal, Some(IdentityRefusal::NotRegistrySide { found }) if found.name == "node-2"),
            "{refusal:?}"
        );
    };
    let t = trackers(fake);
    refused(t.announce(&announce("node-1")).await.unwrap_err());
    refused(t.peers(&digest, "node-1").await.unwrap_err());
    refused(t.chunk_manifest("r", "a", &digest).await.unwrap_err());
    // The registry side's certificate passes the handshake (this server has no such route).
    let e = trackers(real)
        .announce(&announce("node-1"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("404"), "{e}");
}

#[tokio::test]
async fn a_node_certificate_is_refused_as_preheat_coordinator() {
    let s = setup();
    let auth = ClientAuth::Cluster(s.ca.transport(&s.dir, "node-1"));
    let fake = whoami_server(s.ca.transport(&s.dir, "node-2")).await;
    let real = whoami_server(s.ca.registry_side_transport(&s.dir, "reg")).await;
    let client =
        |addr: SocketAddr| PreheatClient::new(&format!("https://{addr}"), &auth, TIMEOUT).unwrap();
    match client(fake).nodes().await {
        Err(e @ PreheatClientError::Transport { .. }) => {
            let reason = e.to_string();
            assert!(reason.contains("registry-side"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client(real).nodes().await.unwrap_err().status(), Some(404));
}

#[tokio::test]
async fn only_a_registry_side_certificate_is_fetched_from_as_seeder() {
    let s = setup();
    let client = PeerClient::new(&s.ca.transport(&s.dir, "node-1"), TIMEOUT, TIMEOUT).unwrap();
    let digest = Digest::of(b"blob");
    let node = whoami_server(s.ca.transport(&s.dir, "node-2")).await;
    let reg = whoami_server(s.ca.registry_side_transport(&s.dir, "reg")).await;
    let got = AtomicU64::default();
    match client.fetch_from_seeder(node, &digest, 0..10, &got).await {
        Err(e @ PeerError::Transport { .. }) => {
            let reason = e.to_string();
            assert!(reason.contains("registry-side"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // Past the handshake: this server has no chunk route (404 = not held).
    for addr in [reg, node] {
        let fetched = match addr == reg {
            true => client.fetch_from_seeder(addr, &digest, 0..10, &got).await,
            false => client.fetch(addr, &digest, 0..10, &got).await,
        };
        assert!(
            matches!(fetched, Err(PeerError::NotHeld { .. })),
            "{fetched:?}"
        );
    }
}

#[tokio::test]
async fn a_role_less_server_is_refused_by_every_client() {
    let s = setup();
    // The server's own certificate would fail `Transport::load`; serve it with rustls directly.
    let old = s.ca.files(&s.dir, "old", None);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            read_certs("certificate", &old.cert).unwrap(),
            read_key(&old.key).unwrap(),
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route("/{*any}", get(|| async { "served" }));
    tokio::spawn(serve_with(
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        false,
        listener,
        router,
        std::future::pending(),
    ));
    let client = PeerClient::new(&s.ca.transport(&s.dir, "node-1"), TIMEOUT, TIMEOUT).unwrap();
    match client
        .fetch(addr, &Digest::of(b"x"), 0..10, &AtomicU64::default())
        .await
    {
        Err(e @ PeerError::Transport { .. }) => {
            let reason = e.to_string();
            assert!(reason.contains("names no shoal role"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_registry_side_certificate_is_not_served_chunks_by_a_node() {
    let s = setup();
    let cache = crate::cache::BlobCache::open(s.dir.join("cache"), 1 << 20).unwrap();
    let (router, _) = crate::peer::router(
        Arc::new(cache),
        crate::peer::UploadLimits {
            max_uploads: 1,
            bytes_per_sec: 0,
            max_have_streams: 1,
        },
        crate::metrics::UploadMetrics::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = s.ca.transport(&s.dir, "node-2");
    tokio::spawn(async move { server.serve(listener, router, std::future::pending()).await });
    let digest = Digest::of(b"x");
    let reg = PeerClient::new(
        &s.ca.registry_side_transport(&s.dir, "reg"),
        TIMEOUT,
        TIMEOUT,
    )
    .unwrap();
    match reg.fetch(addr, &digest, 0..10, &AtomicU64::default()).await {
        Err(PeerError::BadResponse { reason, .. }) => {
            assert!(
                reason.contains("403") && reason.contains("role node"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    let node = PeerClient::new(&s.ca.transport(&s.dir, "node-1"), TIMEOUT, TIMEOUT).unwrap();
    let fetched = node
        .fetch(addr, &digest, 0..10, &AtomicU64::default())
        .await;
    assert!(
        matches!(fetched, Err(PeerError::NotHeld { .. })),
        "{fetched:?}"
    );
}
