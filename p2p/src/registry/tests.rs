//! HTTP behaviour against a small in-process server (the real-registry tests live in
//! `shoal-integration`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;

use super::*;
use crate::digest::Digest;
use crate::reference::ImageReference;

#[derive(Default)]
struct Seen {
    storage_auth: Mutex<Vec<Option<String>>>,
    flaky: AtomicUsize,
    tokens: AtomicUsize,
    manifest_auth: Mutex<Vec<Option<String>>>,
}

const BLOB: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

async fn start() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        // Redirects to "storage" on another host name (localhost vs 127.0.0.1).
        .route(
            "/v2/redir/blobs/{d}",
            get(move |Path(d): Path<String>| async move {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, format!("http://localhost:{port}/storage/{d}"))],
                )
            }),
        )
        .route(
            "/storage/{d}",
            get(|State(s): State<Arc<Seen>>, h: HeaderMap| async move {
                s.storage_auth.lock().unwrap().push(auth_of(&h));
                BLOB
            }),
        )
        // Ignores Range, always 200 with the whole blob.
        .route("/v2/norange/blobs/{d}", get(|| async { BLOB }))
        // 503 twice, then the blob.
        .route(
            "/v2/flaky/blobs/{d}",
            get(|State(s): State<Arc<Seen>>| async move {
                if s.flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                    StatusCode::SERVICE_UNAVAILABLE.into_response()
                } else {
                    BLOB.into_response()
                }
            }),
        )
        .route(
            "/v2/huge/manifests/{r}",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, media_type::OCI_MANIFEST)],
                    vec![b' '; (MAX_MANIFEST_BYTES + 1) as usize],
                )
            }),
        )
        .route(
            "/v2/old/manifests/{r}",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, media_type::DOCKER_SCHEMA1_SIGNED)],
                    r#"{"schemaVersion":1,"name":"old","fsLayers":[]}"#,
                )
            }),
        )
        .route(
            "/v2/garbage/manifests/{r}",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, media_type::OCI_MANIFEST)],
                    r#"{"schemaVersion":2,"config":{"mediaType":5},"layers":"x"}"#,
                )
            }),
        )
        // Bearer-protected manifest; the token endpoint answers `access_token` only.
        .route(
            "/v2/bearer/manifests/{r}",
            get(move |State(s): State<Arc<Seen>>, h: HeaderMap| async move {
                let a = auth_of(&h);
                s.manifest_auth.lock().unwrap().push(a.clone());
                if a.as_deref() != Some("Bearer tok-1") {
                    return Response::builder()
                        .status(401)
                        .header(
                            header::WWW_AUTHENTICATE,
                            format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="svc",scope="repository:bearer:pull""#),
                        )
                        .body(axum::body::Body::from(
                            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                        ))
                        .unwrap();
                }
                (StatusCode::NOT_FOUND, r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#)
                    .into_response()
            }),
        )
        .route(
            "/token",
            get(|State(s): State<Arc<Seen>>| async move {
                s.tokens.fetch_add(1, Ordering::SeqCst);
                r#"{"access_token":"tok-1","expires_in":300}"#
            }),
        )
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("127.0.0.1:{port}"), seen)
}

fn auth_of(h: &HeaderMap) -> Option<String> {
    h.get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_string())
}

fn client(addr: &str, creds: bool) -> RegistryClient {
    let mut cfg = ClientConfig {
        retries: 3,
        ..ClientConfig::default()
    };
    cfg.hosts.insert(
        addr.to_string(),
        HostConfig {
            plain_http: true,
            username: creds.then(|| "u".to_string()),
            password: creds.then(|| "p".to_string()),
        },
    );
    RegistryClient::new(cfg).unwrap()
}

fn image(addr: &str, repo: &str) -> ImageReference {
    format!("{addr}/{repo}").parse().unwrap()
}

async fn collect(mut s: BlobStream) -> Result<Vec<u8>, crate::Error> {
    let mut out = Vec::new();
    while let Some(item) = s.next().await {
        out.extend_from_slice(&item?);
    }
    Ok(out)
}

#[tokio::test]
async fn redirect_to_other_host_drops_authorization() {
    let (addr, seen) = start().await;
    let c = client(&addr, true);
    // Make the client send Basic credentials up front, as after a Basic challenge.
    c.inner_mark_basic(&image(&addr, "redir").registry);
    let d = Digest::of(BLOB);
    let got = collect(c.blob_verified(&image(&addr, "redir"), &d).await.unwrap())
        .await
        .unwrap();
    assert_eq!(got, BLOB);
    assert_eq!(*seen.storage_auth.lock().unwrap(), vec![None]);
}

#[tokio::test]
async fn range_answered_with_200_is_cut() {
    let (addr, _) = start().await;
    let c = client(&addr, false);
    let d = Digest::of(BLOB);
    let img = image(&addr, "norange");
    let got = collect(c.blob(&img, &d, Some(10..15)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(got, &BLOB[10..15]);
    let short = collect(c.blob(&img, &d, Some(30..40)).await.unwrap()).await;
    assert!(
        matches!(
            short,
            Err(crate::Error::Registry(RegistryError::Range { .. }))
        ),
        "{short:?}"
    );
    assert!(matches!(
        c.blob(&img, &d, Some(5..5)).await,
        Err(crate::Error::Registry(RegistryError::Range { .. }))
    ));
}

#[tokio::test]
async fn retries_5xx() {
    let (addr, seen) = start().await;
    let c = client(&addr, false);
    let got = collect(
        c.blob(&image(&addr, "flaky"), &Digest::of(BLOB), None)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(got, BLOB);
    assert_eq!(seen.flaky.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn bad_manifests_are_clear_errors() {
    let (addr, _) = start().await;
    let c = client(&addr, false);
    let p = Platform::host();
    let e = c.resolve(&image(&addr, "huge:x"), &p).await.unwrap_err();
    assert!(
        matches!(e, crate::Error::Registry(RegistryError::TooLarge { .. })),
        "{e}"
    );
    let e = c.resolve(&image(&addr, "old:x"), &p).await.unwrap_err();
    assert!(
        matches!(
            e,
            crate::Error::Registry(RegistryError::UnsupportedMediaType { .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("schema1"), "{e}");
    let e = c.resolve(&image(&addr, "garbage:x"), &p).await.unwrap_err();
    // Not the JSON of an image manifest: the decoder's error is kept as the typed cause.
    assert!(
        matches!(
            e,
            crate::Error::Registry(RegistryError::ManifestJson {
                what: "image manifest",
                ..
            })
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("bad image manifest: invalid type"),
        "{e}"
    );
    // Pinned digest that the served bytes do not have.
    let pinned = format!("{addr}/old@{}", Digest::of(b"other"));
    let e = c.resolve(&pinned.parse().unwrap(), &p).await.unwrap_err();
    assert!(
        matches!(
            e,
            crate::Error::Registry(RegistryError::DigestMismatch { .. })
        ),
        "{e}"
    );
}

#[tokio::test]
async fn bearer_token_fetched_once_and_reused() {
    let (addr, seen) = start().await;
    let c = client(&addr, false);
    let img = image(&addr, "bearer:x");
    for _ in 0..3 {
        let e = c.resolve(&img, &Platform::host()).await.unwrap_err();
        assert_eq!(e.oci_code(), Some("MANIFEST_UNKNOWN"), "{e}");
    }
    assert_eq!(seen.tokens.load(Ordering::SeqCst), 1);
    // First request anonymous, then every request with the token.
    let auths = seen.manifest_auth.lock().unwrap().clone();
    assert_eq!(auths[0], None);
    assert!(
        auths[1..]
            .iter()
            .all(|a| a.as_deref() == Some("Bearer tok-1")),
        "{auths:?}"
    );
    assert_eq!(auths.len(), 4);
}

#[test]
fn config_parses_and_redacts() {
    let cfg: ClientConfig = toml::from_str(
        r#"
        retries = 5
        [hosts."127.0.0.1:5000"]
        plain_http = true
        username = "me"
        password = "hunter2"
        "#,
    )
    .unwrap();
    assert_eq!(cfg.retries, 5);
    assert_eq!(cfg.request_timeout_secs, 30);
    assert_eq!(cfg.connect_timeout_secs, 10);
    let h = cfg.host("127.0.0.1:5000").unwrap();
    assert!(h.plain_http);
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains("hunter2") && !dbg.contains("\"me\""), "{dbg}");
    let c = RegistryClient::new(cfg).unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));

    let bad: ClientConfig = toml::from_str("[hosts.\"bad host\"]\n").unwrap();
    assert!(RegistryClient::new(bad).is_err());
    let half: ClientConfig = toml::from_str("[hosts.\"h:1\"]\nusername = \"x\"\n").unwrap();
    assert!(RegistryClient::new(half).is_err());
    assert!(toml::from_str::<ClientConfig>("unknown = 1").is_err());
    let d = ClientConfig::default();
    assert_eq!(
        (d.request_timeout_secs, d.connect_timeout_secs, d.retries),
        (30, 10, 3)
    );
}
