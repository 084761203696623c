//! `scripts/cluster-certs.sh` makes certificates shoal's mutual TLS accepts: two nodes with
//! certificates from it talk (either may serve), and a client without one is refused; each
//! certificate names its node (DNS and `shoal://ROLE/NAME` URI SANs) and its role, and the
//! registry-side one is accepted where nodes are not (as tracker).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use shoal_integration::tools;
use shoal_p2p::tls::{Expect, Identity, Role, TlsFiles, Transport};

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
        .args(["node-a", "node-b", "registry-side:reg-ext"])
        .output()
        .context("running cluster-certs.sh")?;
    ensure!(
        out.status.success(),
        "cluster-certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = Transport::load(Some(&files(dir.path(), "node-a")), false)?;
    let b = Transport::load(Some(&files(dir.path(), "node-b")), false)?;
    let reg = Transport::load(Some(&files(dir.path(), "reg-ext")), false)?;
    for (transport, role, name) in [
        (&a, Role::Node, "node-a"),
        (&b, Role::Node, "node-b"),
        (&reg, Role::RegistrySide, "reg-ext"),
    ] {
        assert_eq!(transport.identity(), Identity::new(role, name).as_ref());
        let sans = subject_alt_names(&dir.path().join(format!("{name}.pem")))?;
        let want = format!("DNS:{name}, URI:shoal://{role}/{name}");
        ensure!(sans.contains(&want), "{name}: SANs {sans:?}, want {want:?}");
    }

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

    // Only the registry-side certificate is accepted as tracker (or manifest service,
    // seeder, coordinator).
    let as_tracker = b.http_client_for(
        Expect::RegistrySide,
        Duration::from_secs(5),
        Duration::from_secs(5),
    )?;
    let refused = as_tracker.get(&url).send().await;
    let text = format!("{:?}", refused.err());
    ensure!(
        text.contains("registry-side"),
        "node-a accepted as tracker: {text}"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let reg_url = format!("https://{}/ping", listener.local_addr()?);
    let router = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
    tokio::spawn(async move { reg.serve(listener, router, std::future::pending()).await });
    let body = as_tracker.get(&reg_url).send().await?.text().await?;
    assert_eq!(body, "pong");

    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// `openssl x509 -ext subjectAltName` of a certificate file.
fn subject_alt_names(cert: &Path) -> Result<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(cert)
        .output()?;
    ensure!(out.status.success(), "openssl x509 {cert:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn bad_names_are_refused_and_the_old_call_makes_node_certificates() -> Result<()> {
    if tools::skip_unless(&["openssl"], false) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    for bad in ["a/b", "registry-side:", ".hidden", "admin:x"] {
        let out = Command::new("bash")
            .arg(script())
            .arg(dir.path())
            .arg(bad)
            .output()?;
        ensure!(!out.status.success(), "{bad:?} was accepted");
        ensure!(String::from_utf8_lossy(&out.stderr).contains("bad name"));
    }
    // The call the docs showed before roles: a bare registry-ext is a node, with a note.
    let out = Command::new("bash")
        .arg(script())
        .arg(dir.path())
        .args(["node-1", "registry-ext"])
        .output()?;
    ensure!(out.status.success());
    ensure!(String::from_utf8_lossy(&out.stderr).contains("use registry-side:registry-ext"));
    let reg = Transport::load(Some(&files(dir.path(), "registry-ext")), false)?;
    let e = reg
        .require_role(Role::RegistrySide, "shoal-registry-ext")
        .unwrap_err();
    ensure!(e.to_string().contains("registry-side:registry-ext"), "{e}");
    Ok(())
}
