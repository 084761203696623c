//! Cluster identities and roles at the registry side (docs/security.md, issue 13): the
//! extension starts only with a registry-side certificate, its tracker binds announces to the
//! client certificate's node name, and its node routes refuse other roles.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use shoal_p2p::peer::test_pki::TestCa;
use shoal_p2p::preheat::proto::{Heartbeat, NodeInfo};
use shoal_p2p::preheat::{ClientAuth, PreheatClient};
use shoal_p2p::tls::{IdentityError, TlsError, TlsFiles, Transport};
use shoal_p2p::tracker::proto::{
    Announce, BlobHave, ChunkSet, DeltaAnnounce, DeltaReply, ErrorBody, UploadStats,
};
use shoal_p2p::Digest;
use shoal_registry_ext::{serve, Config, Error, Listeners};
use tokio::net::TcpListener;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A running shoal-registry-ext over TLS with `tls`, preheat on (state in `dir`).
struct Server {
    api: SocketAddr,
    metrics: SocketAddr,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

async fn start(dir: &Path, tls: &TlsFiles) -> Server {
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api_addr, metrics_addr) = (api.local_addr().unwrap(), metrics.local_addr().unwrap());
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadvertise = \"{api_addr}\"\nmetrics_listen = \"{metrics_addr}\"\n\
         registry_host = \"127.0.0.1:9\"\n\
         [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\
         [manifests]\ndir = {:?}\n[seed]\ndir = {:?}\n\
         [preheat]\nenabled = true\nstate = {:?}\n",
        tls.ca,
        tls.cert,
        tls.key,
        dir.join("manifests"),
        dir.join("blobs"),
        dir.join("preheat.redb"),
    );
    let config = Config::parse(&text, Path::new("test.toml")).unwrap();
    let listeners = Listeners {
        api,
        metrics: Some(metrics),
        notify: None,
        preheat_admin: None,
    };
    Server {
        api: api_addr,
        metrics: metrics_addr,
        task: tokio::spawn(serve(config, listeners, std::future::pending())),
    }
}

fn announce(peer_id: &str, holds: bool) -> Announce {
    let digest = Digest::of(b"layer");
    Announce {
        peer_id: peer_id.into(),
        addr: "127.0.0.1:7070".parse().unwrap(),
        upload: UploadStats::default(),
        blobs: match holds {
            true => vec![BlobHave::new(digest, &ChunkSet::full(2))],
            false => vec![],
        },
    }
}

/// How `server` ended; a server still running after a few seconds (it accepted the
/// certificate) fails the test instead of hanging it.
async fn ended(server: Server) -> Result<(), Error> {
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("shoal-registry-ext started with a certificate it must refuse")
        .unwrap()
}

fn client(transport: &Transport) -> reqwest::Client {
    transport.http_client(TIMEOUT, TIMEOUT).unwrap()
}

#[tokio::test]
async fn a_node_or_role_less_certificate_does_not_start_the_registry_side() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cluster");
    let node = ca.node_files(dir.path(), "registry-ext");
    match ended(start(dir.path(), &node).await).await {
        Err(Error::P2p(shoal_p2p::Error::Tls(e @ TlsError::WrongRole { .. }))) => {
            let text = e.to_string();
            assert!(
                text.contains("scripts/cluster-certs.sh DIR registry-side:registry-ext"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    let old = ca.files(dir.path(), "old", None);
    match ended(start(dir.path(), &old).await).await {
        Err(Error::P2p(shoal_p2p::Error::Tls(
            e @ TlsError::Identity {
                source: IdentityError::NoRole,
                ..
            },
        ))) => assert!(e.to_string().contains("scripts/cluster-certs.sh"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_announce_under_another_nodes_name_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cluster");
    let server = start(
        dir.path(),
        &ca.registry_side_files(dir.path(), "registry-ext"),
    )
    .await;
    let node1 = client(&ca.transport(dir.path(), "node-1"));
    let url = format!("https://{}/v1/announce", server.api);

    // As itself: accepted.
    let ok = node1
        .post(&url)
        .json(&announce("node-1", true))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // As node-2, holding or withdrawing everything: refused.
    for holds in [true, false] {
        let refused = node1
            .post(&url)
            .json(&announce("node-2", holds))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403);
        let body: ErrorBody = refused.json().await.unwrap();
        assert!(
            body.error.contains("\"node-2\"") && body.error.contains("node \"node-1\""),
            "{}",
            body.error
        );
    }
    // The delta route binds the same way: a whole state or a delta under node-2 is refused,
    // under its own name it is taken.
    let delta_url = format!("https://{}/v1/announce/delta", server.api);
    for base in [None, Some(1)] {
        let delta = DeltaAnnounce {
            base,
            ..DeltaAnnounce::full(&announce("node-2", true), 2)
        };
        let refused = node1.post(&delta_url).json(&delta).send().await.unwrap();
        assert_eq!(refused.status(), 403);
        let body: ErrorBody = refused.json().await.unwrap();
        assert!(body.error.contains("\"node-2\""), "{}", body.error);
    }
    let own = DeltaAnnounce::full(&announce("node-1", true), 1);
    let taken = node1.post(&delta_url).json(&own).send().await.unwrap();
    assert_eq!(taken.status(), 200);
    let reply: DeltaReply = taken.json().await.unwrap();
    assert!(!reply.full_state_needed);
    // Only node-1 is listed.
    let list: shoal_p2p::tracker::PeerList = node1
        .get(format!(
            "https://{}/v1/peers/{}?peer=x",
            server.api,
            Digest::of(b"layer")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list.peers.iter().map(|p| p.peer_id.as_str()).collect();
    assert_eq!(ids, ["node-1"]);

    let text = reqwest::get(format!("http://{}/metrics", server.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "shoal_tracker_announces_refused_total{reason=\"identity\"} 4",
        "shoal_tracker_announces_total 2",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }

    // Preheat: registration and heartbeats only under the certificate's own name.
    let auth = ClientAuth::Cluster(ca.transport(dir.path(), "node-1"));
    let preheat = PreheatClient::new(&format!("https://{}", server.api), &auth, TIMEOUT).unwrap();
    let info = |name: &str| NodeInfo {
        name: name.into(),
        labels: Default::default(),
        kernel: String::new(),
        containerd: String::new(),
        shoal: String::new(),
    };
    let hb = |node: &str| Heartbeat {
        node: node.into(),
        tasks: vec![],
    };
    preheat.register(&info("node-1")).await.unwrap();
    preheat.heartbeat(&hb("node-1")).await.unwrap();
    let e = preheat.register(&info("node-2")).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let e = preheat.heartbeat(&hb("node-2")).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    server.task.abort();
}

#[tokio::test]
async fn the_node_routes_refuse_a_registry_side_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cluster");
    let server = start(
        dir.path(),
        &ca.registry_side_files(dir.path(), "registry-ext"),
    )
    .await;
    let other = client(&ca.registry_side_transport(dir.path(), "registry-ext-2"));
    let d = Digest::of(b"layer");
    let base = format!("https://{}", server.api);
    let requests = [
        other
            .post(format!("{base}/v1/announce"))
            .json(&announce("registry-ext-2", true)),
        other.get(format!("{base}/v1/peers/{d}?peer=x")),
        other.get(format!(
            "{base}/v1/chunk-manifests/{d}?registry=127.0.0.1:9&repository=a"
        )),
        other
            .get(format!("{base}/v1/blobs/{d}"))
            .header("range", "bytes=0-9"),
        other
            .post(format!("{base}/v1/preheat/heartbeat"))
            .json(&Heartbeat {
                node: "registry-ext-2".into(),
                tasks: vec![],
            }),
    ];
    for request in requests {
        let resp = request.send().await.unwrap();
        let url = resp.url().clone();
        assert_eq!(resp.status(), 403, "{url}");
        let body: ErrorBody = resp.json().await.unwrap();
        assert!(
            body.error.contains("registry-side") && body.error.contains("role node"),
            "{url}: {}",
            body.error
        );
    }
    // The preheat admin routes stay open to any cluster certificate.
    let nodes = other
        .get(format!("{base}/v1/preheat/nodes"))
        .send()
        .await
        .unwrap();
    assert_eq!(nodes.status(), 200);
    server.task.abort();
}
