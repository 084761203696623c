//! `scripts/cluster-certs.sh` makes certificates shoal's mutual TLS accepts: two nodes with
//! certificates from it talk (either may serve), and a client without one is refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use shoal_integration::tools;
use shoal_p2p::tls::{TlsFiles, Transport};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster-certs.sh")
}

fn files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    }
}

#[tokio::test]
async fn certificates_from_the_script_work_for_both_roles() -> Result<()> {
    if tools::skip_unless(&["openssl"], false) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let out = Command::new("bash")
        .arg(script())
        .arg(dir.path())
        .args(["node-a", "node-b"])
        .output()
        .context("running cluster-certs.sh")?;
    ensure!(
        out.status.success(),
        "cluster-certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = Transport::load(Some(&files(dir.path(), "node-a")), false)?;
    let b = Transport::load(Some(&files(dir.path(), "node-b")), false)?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        a.serve(listener, router, async {
            let _ = stopped.await;
        })
        .await
    });

    // Dialled by IP, though the certificate names "node-a": the CA is the authority.
    let url = format!("https://{addr}/ping");
    let client = b.http_client(Duration::from_secs(5), Duration::from_secs(5))?;
    let body = client
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    assert_eq!(body, "pong");

    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem"))?)?;
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(ca)
        .danger_accept_invalid_hostnames(true)
        .build()?;
    let refused = anonymous.get(&url).send().await;
    assert!(
        refused.is_err(),
        "a client without a certificate got {refused:?}"
    );

    let _ = stop.send(());
    server.await??;
    Ok(())
}
