//! `scripts/k8s-certs.sh` against what the manifests in `deploy/` mount (see
//! k8s_manifests.rs for the manifests themselves).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use shoal_integration::tools::{self, run};

mod k8s_rig;

use k8s_rig::{
    config_file, container, find, render, render_file, repo, str_of, tools_dir, validate,
    volume_for, NAMESPACE, POD_IP,
};

/// `scripts/k8s-certs.sh` makes what the manifests mount: the registry side's Secret (valid
/// for Kubernetes 1.36, the keys the StatefulSet's [tls] names, a registry-side identity)
/// and each node's files (the names shoald's [swarm.tls] names, that node's identity).
#[tokio::test]
async fn k8s_certs_script_makes_what_the_manifests_mount() -> Result<()> {
    use base64::Engine;
    use shoal_p2p::tls::{Identity, Role, TlsFiles, Transport};
    let kubectl = tools_dir().join("bin/kubectl");
    if !kubectl.is_file() {
        tools::skip_because("kubectl missing: run scripts/install-k8s-tools.sh");
        return Ok(());
    }
    if tools::skip_unless(&["openssl"], false) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    run(Command::new("bash")
        .arg(repo().join("scripts/k8s-certs.sh"))
        .arg(&pki)
        .args(["node-a", "node-b"])
        .env("KUBECTL", &kubectl))?;
    let (_, objects) = render(&repo().join("deploy/base"))?;
    let sts = find(&objects, "StatefulSet", "shoal-registry-ext")?;
    let pod = &sts["spec"]["template"]["spec"];
    let main = container(pod, "containers", "shoal-registry-ext")?;
    let config = shoal_registry_ext::Config::load_advertising(
        &config_file(
            &objects,
            pod,
            main,
            "/etc/shoal/config/registry-ext.toml",
            dir.path(),
        )?,
        Some(format!("{POD_IP}:7080").parse()?),
    )?;
    let tls = config.tls.context("[tls]")?;

    let (_, secrets) = render_file(&pki.join("k8s/shoal-registry-ext-tls.yaml"))?;
    let secret = secrets.first().context("no Secret")?;
    validate(&[secret], dir.path())?;
    ensure!(secret["metadata"]["namespace"] == NAMESPACE);
    let (volume, _) = volume_for(pod, main, &tls.cert.to_string_lossy())?;
    ensure!(secret["metadata"]["name"] == volume["secret"]["secretName"]);
    // The Secret's files where the StatefulSet mounts them, loaded as the server would.
    let mounted = dir.path().join("tls");
    std::fs::create_dir_all(&mounted)?;
    let mut files = TlsFiles {
        ca: PathBuf::new(),
        cert: PathBuf::new(),
        key: PathBuf::new(),
    };
    for (path, slot) in [
        (&tls.ca, &mut files.ca),
        (&tls.cert, &mut files.cert),
        (&tls.key, &mut files.key),
    ] {
        let key = path
            .file_name()
            .context("file name")?
            .to_string_lossy()
            .into_owned();
        let data = str_of(&secret["data"][&key]).with_context(|| format!("Secret has no {key}"))?;
        *slot = mounted.join(&key);
        std::fs::write(
            &*slot,
            base64::engine::general_purpose::STANDARD.decode(data)?,
        )?;
    }
    let t = Transport::load(Some(&files), false)?;
    ensure!(t.identity() == Identity::new(Role::RegistrySide, "registry-ext").as_ref());

    // Each node's directory, with the file names of shoald's [swarm.tls].
    let ds = find(&objects, "DaemonSet", "shoald")?;
    let dpod = &ds["spec"]["template"]["spec"];
    let dmain = container(dpod, "containers", "shoald")?;
    let shoald = shoal_plugin::config::Config::load(Some(&config_file(
        &objects,
        dpod,
        dmain,
        "/etc/shoal/config/shoald.toml",
        dir.path(),
    )?))?;
    let swarm_tls = shoald.swarm.tls.context("[swarm.tls]")?;
    for node in ["node-a", "node-b"] {
        let at = pki.join("nodes").join(node);
        let name = |p: &Path| at.join(p.file_name().unwrap_or_default());
        let files = TlsFiles {
            ca: name(&swarm_tls.ca),
            cert: name(&swarm_tls.cert),
            key: name(&swarm_tls.key),
        };
        let t = Transport::load(Some(&files), false).with_context(|| format!("{node}'s files"))?;
        ensure!(
            t.identity() == Identity::new(Role::Node, node).as_ref(),
            "{node}"
        );
    }
    Ok(())
}
