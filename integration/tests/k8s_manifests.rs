//! The Kubernetes manifests in `deploy/` (base and every overlay), rendered with
//! `kubectl kustomize` and checked offline, without a cluster:
//!
//! - every object validates against Kubernetes 1.36's schemas, strictly (no unknown fields),
//!   with `kubernetes-validate`; cert-manager's objects (not Kubernetes' own, no schema
//!   there) are checked against what the registry side needs;
//! - nothing in them can drift from the binaries: the containers' arguments are accepted by
//!   shoald's and shoal-registry-ext's own command lines (the `hosts` init container is run
//!   for real), the ConfigMaps' files load with the real configuration loaders, the ports
//!   match the configurations' listeners, the probes' paths are served by the real routers,
//!   every path the binaries use is on a volume (host paths where containerd must see the
//!   same path), the trackers are the StatefulSet's replicas, the certificate files are the
//!   Secret's keys.
//!
//! kubectl and kubernetes-validate come from `scripts/install-k8s-tools.sh` (in
//! `$SHOAL_K8S_TOOLS_DIR`, default `/var/tmp/shoal-k8s-tools`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use shoal_integration::cluster::registry_ext_binary;
use shoal_integration::cri::shoald_binary;
use shoal_integration::tools::{self, run};

mod k8s_rig;

use k8s_rig::{
    array, config_file, container, find, render, repo, str_of, tools_dir, validate, volume_for,
    NAMESPACE, POD_IP,
};

/// The directories `kubectl kustomize` renders: the base and every overlay.
fn kustomizations() -> Result<Vec<PathBuf>> {
    let mut dirs = vec![repo().join("deploy/base")];
    let mut overlays: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/overlays"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    overlays.sort();
    dirs.extend(overlays);
    Ok(dirs)
}

/// The container's arguments as the kubelet passes them: `$(VAR)` from its env (a
/// `status.podIP` field reference is [`POD_IP`]).
fn expanded_args(container: &Value) -> Result<Vec<String>> {
    let mut env = BTreeMap::new();
    for e in array(&container["env"]) {
        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => v.clone(),
            (_, Value::String(f)) if f == "status.podIP" => POD_IP.to_owned(),
            _ => bail!("env {e} is neither a value nor status.podIP"),
        };
        env.insert(str_of(&e["name"])?.to_owned(), value);
    }
    array(&container["args"])
        .iter()
        .map(|a| {
            let mut a = str_of(a)?.to_owned();
            for (k, v) in &env {
                a = a.replace(&format!("$({k})"), v);
            }
            ensure!(!a.contains("$("), "unexpanded variable in {a}");
            Ok(a)
        })
        .collect()
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> Result<&'a str> {
    let i = args
        .iter()
        .position(|a| a == flag)
        .with_context(|| format!("{flag} not in {args:?}"))?;
    args.get(i + 1)
        .map(String::as_str)
        .with_context(|| format!("{flag} has no value"))
}

/// `BIN ARGS --help` exits 0: clap accepted every argument before `--help`.
fn cli_accepts(bin: &Path, args: &[String]) -> Result<()> {
    let out = Command::new(bin)
        .args(args)
        .arg("--help")
        .env_remove("SHOALD_CONFIG")
        .output()?;
    ensure!(
        out.status.success(),
        "{} {args:?}: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `path` is on a host path volume mounted at the same path on the host (containerd, on
/// the host, uses it too).
fn on_same_host_path(pod: &Value, container: &Value, path: &str) -> Result<()> {
    let (volume, rest) = volume_for(pod, container, path)?;
    let host = str_of(&volume["hostPath"]["path"])
        .with_context(|| format!("{path}: volume {} is not a host path", volume["name"]))?;
    let on_host = match rest.is_empty() {
        true => host.to_owned(),
        false => format!("{host}/{rest}"),
    };
    ensure!(on_host == path, "{path} is {on_host} on the host");
    Ok(())
}

fn port_of(container: &Value, name: &str) -> Result<u16> {
    array(&container["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .map(|p| p as u16)
        .with_context(|| format!("no port {name} on {}", container["name"]))
}

/// A probe's port, by number or by the container port's name.
fn probe_port(container: &Value, port: &Value) -> Result<u16> {
    match port {
        Value::Number(n) => Ok(n.as_u64().context("port")? as u16),
        Value::String(name) => port_of(container, name),
        _ => bail!("probe port {port}"),
    }
}

/// Serves `router` on 127.0.0.1 and says whether `GET path` answers 200.
async fn serves(router: axum::Router, path: &str) -> Result<bool> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let status = reqwest::get(format!("http://{addr}{path}")).await?.status();
    server.abort();
    Ok(status == reqwest::StatusCode::OK)
}

/// The probes of `container` ask for paths `router` serves, on `port`.
async fn probes_served(container: &Value, port: u16, router: &axum::Router) -> Result<()> {
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let p = &container[probe];
        if p.is_null() {
            continue;
        }
        if !p["tcpSocket"].is_null() {
            probe_port(container, &p["tcpSocket"]["port"])?;
            continue;
        }
        let get = &p["httpGet"];
        ensure!(!get.is_null(), "{probe}: neither httpGet nor tcpSocket");
        let want = probe_port(container, &get["port"])?;
        ensure!(
            want == port,
            "{probe} on port {want}, the listener is {port}"
        );
        let path = str_of(&get["path"])?;
        ensure!(
            serves(router.clone(), path).await?,
            "{probe}: {path} is not served by the listener"
        );
    }
    Ok(())
}

/// The NetworkPolicy selecting `app` admits traffic to `port` (and to no port that is not
/// one of `ports`).
fn policy_covers(objects: &[Value], app: &str, ports: &[u16]) -> Result<()> {
    let policy = objects
        .iter()
        .find(|o| {
            o["kind"] == "NetworkPolicy"
                && o["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == app
        })
        .with_context(|| format!("no NetworkPolicy for {app}"))?;
    let mut admitted: Vec<u16> = array(&policy["spec"]["ingress"])
        .iter()
        .flat_map(|rule| array(&rule["ports"]))
        .filter_map(|p| p["port"].as_u64().map(|p| p as u16))
        .collect();
    admitted.sort();
    let mut want = ports.to_vec();
    want.sort();
    ensure!(
        admitted == want,
        "NetworkPolicy for {app} admits ports {admitted:?}, the listeners are {want:?}"
    );
    Ok(())
}

async fn check_shoald(objects: &[Value], dir: &Path) -> Result<()> {
    let shoald = shoald_binary()?;
    let ds = find(objects, "DaemonSet", "shoald")?;
    let pod = &ds["spec"]["template"]["spec"];
    ensure!(
        pod["hostNetwork"] == true,
        "containerd dials the mirror on the host's 127.0.0.1"
    );
    let main = container(pod, "containers", "shoald")?;
    let args = expanded_args(main)?;
    ensure!(
        args.first().map(String::as_str) == Some("snapshotter"),
        "{args:?}"
    );
    cli_accepts(&shoald, &args)?;
    let config_path = flag(&args, "--config")?;
    let file = config_file(objects, pod, main, config_path, dir)?;
    let config = shoal_plugin::config::Config::load(Some(&file))
        .with_context(|| format!("shoald's ConfigMap file {config_path}"))?;
    // containerd on the host dials the socket and mounts the snapshots: same paths there.
    for path in [flag(&args, "--address")?, flag(&args, "--root")?] {
        on_same_host_path(pod, main, path)?;
    }
    on_same_host_path(pod, main, &config.cache.dir.to_string_lossy())?;
    let hosts_dir = config.mirror.hosts_dir.to_string_lossy().into_owned();
    on_same_host_path(pod, main, &hosts_dir)?;
    ensure!(config.mirror.enabled, "the mirror path is on by default");
    ensure!(
        config.mirror.listen.ip().is_loopback(),
        "the mirror listens on loopback"
    );
    let tls = config.swarm.tls.as_ref().context("[swarm.tls]")?;
    for f in [&tls.ca, &tls.cert, &tls.key] {
        let (volume, _) = volume_for(pod, main, &f.to_string_lossy())?;
        ensure!(
            !volume["hostPath"].is_null(),
            "{}: not on the host",
            f.display()
        );
    }
    // Ports: the chunk server and the metrics/status listener.
    ensure!(
        port_of(main, "chunks")? == config.swarm.listen.port(),
        "chunk port"
    );
    let metrics: SocketAddr = config.metrics.listen.parse()?;
    ensure!(port_of(main, "metrics")? == metrics.port(), "metrics port");
    policy_covers(
        objects,
        "shoald",
        &[config.swarm.listen.port(), metrics.port()],
    )?;
    let router = shoal_plugin::health::http::router(
        Arc::new(shoal_p2p::metrics::Registry::default()),
        shoal_plugin::health::Health::new(),
    );
    probes_served(main, metrics.port(), &router).await?;

    // The hosts init container, run for real into a directory of the test's.
    let init = container(pod, "initContainers", "hosts")?;
    let init_args = expanded_args(init)?;
    ensure!(flag(&init_args, "--dir")? == hosts_dir, "{init_args:?}");
    ensure!(
        flag(&init_args, "--config")? == config_path,
        "{init_args:?}"
    );
    let written = dir.join("certs.d");
    let mut real = init_args.clone();
    let at = real.iter().position(|a| a == "--dir").context("--dir")? + 1;
    real[at] = written.to_string_lossy().into_owned();
    let at = real
        .iter()
        .position(|a| a == "--config")
        .context("--config")?
        + 1;
    real[at] = file.to_string_lossy().into_owned();
    run(Command::new(&shoald)
        .args(&real)
        .env_remove("SHOALD_CONFIG"))?;
    for registry in config
        .mirror
        .registries
        .iter()
        .map(String::as_str)
        .chain(["_default"])
    {
        let hosts = std::fs::read_to_string(written.join(registry).join("hosts.toml"))
            .with_context(|| format!("shoald hosts wrote no hosts.toml for {registry}"))?;
        let entry = format!("[host.\"http://{}\"]", config.mirror.listen);
        ensure!(hosts.contains(&entry), "{registry}: {hosts}");
    }

    // Trackers: one per registry-side replica, on its API port.
    let sts = find(objects, "StatefulSet", "shoal-registry-ext")?;
    let replicas = sts["spec"]["replicas"].as_u64().context("replicas")?;
    let service = str_of(&sts["spec"]["serviceName"])?;
    let api = port_of(
        container(
            &sts["spec"]["template"]["spec"],
            "containers",
            "shoal-registry-ext",
        )?,
        "api",
    )?;
    let want: Vec<String> = (0..replicas)
        .map(|i| {
            format!("https://shoal-registry-ext-{i}.{service}.{NAMESPACE}.svc.cluster.local:{api}")
        })
        .collect();
    ensure!(
        config.swarm.trackers == want,
        "swarm.trackers {:?}, the StatefulSet's replicas are {want:?}",
        config.swarm.trackers
    );
    ensure!(find(objects, "Service", service)?["spec"]["clusterIP"] == "None");
    Ok(())
}

async fn check_registry_ext(objects: &[Value], dir: &Path) -> Result<String> {
    let bin = registry_ext_binary()?;
    let sts = find(objects, "StatefulSet", "shoal-registry-ext")?;
    let pod = &sts["spec"]["template"]["spec"];
    ensure!(pod["securityContext"]["runAsNonRoot"] == true, "non-root");
    let main = container(pod, "containers", "shoal-registry-ext")?;
    let args = expanded_args(main)?;
    ensure!(
        args.first().map(String::as_str) == Some("serve"),
        "{args:?}"
    );
    cli_accepts(&bin, &args)?;
    let advertise: SocketAddr = flag(&args, "--advertise")?.parse()?;
    let config_path = flag(&args, "--config")?;
    let file = config_file(objects, pod, main, config_path, dir)?;
    let config = shoal_registry_ext::Config::load_advertising(&file, Some(advertise))
        .with_context(|| format!("shoal-registry-ext's ConfigMap file {config_path}"))?;
    ensure!(config.advertise == advertise && advertise.port() == config.listen.port());
    ensure!(port_of(main, "api")? == config.listen.port(), "api port");
    let metrics = config.metrics_listen.context("metrics_listen")?;
    ensure!(port_of(main, "metrics")? == metrics.port(), "metrics port");
    policy_covers(
        objects,
        "shoal-registry-ext",
        &[config.listen.port(), metrics.port()],
    )?;
    let router = shoal_p2p::metrics::router(Arc::new(shoal_p2p::metrics::Registry::default()));
    probes_served(main, metrics.port(), &router).await?;
    // State on the replica's volume, certificates from one Secret's keys.
    let claims: Vec<&str> = array(&sts["spec"]["volumeClaimTemplates"])
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    for d in [&config.manifests.dir, &config.seed.dir] {
        let path = d.to_string_lossy();
        let mount = array(&main["volumeMounts"])
            .iter()
            .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("\0")))
            .max_by_key(|m| m["mountPath"].as_str().unwrap_or_default().len())
            .with_context(|| format!("{path} on no volume"))?;
        ensure!(
            claims.contains(&str_of(&mount["name"])?),
            "{path} is not on the replica's volume claim"
        );
    }
    let tls = config.tls.as_ref().context("[tls]")?;
    let mut secret = None;
    for f in [&tls.ca, &tls.cert, &tls.key] {
        let (volume, key) = volume_for(pod, main, &f.to_string_lossy())?;
        ensure!(
            matches!(key.as_str(), "ca.crt" | "tls.crt" | "tls.key"),
            "{}: {key} is not a key of a TLS Secret",
            f.display()
        );
        secret = Some(str_of(&volume["secret"]["secretName"])?.to_owned());
    }
    let pdb = find(objects, "PodDisruptionBudget", "shoal-registry-ext")?;
    ensure!(
        pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"],
        "the PodDisruptionBudget selects the registry side"
    );
    secret.context("no TLS secret")
}

/// cert-manager's objects (no Kubernetes schema): the Certificate names the registry-side
/// role, goes to the Secret the StatefulSet mounts, and is signed by the overlay's Issuer.
fn check_cert_manager(objects: &[&Value], secret: &str) -> Result<()> {
    let issuers: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "Issuer")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    for cert in objects.iter().filter(|o| o["kind"] == "Certificate") {
        ensure!(str_of(&cert["apiVersion"])? == "cert-manager.io/v1");
        ensure!(cert["spec"]["secretName"] == secret, "{cert}");
        let uri = format!(
            "shoal://{}/{}",
            shoal_p2p::tls::Role::RegistrySide,
            "registry-ext"
        );
        ensure!(
            array(&cert["spec"]["uris"]) == [Value::from(uri.clone())],
            "want {uri}"
        );
        let issuer = str_of(&cert["spec"]["issuerRef"]["name"])?;
        ensure!(
            issuers.contains(&issuer),
            "issuer {issuer} not in {issuers:?}"
        );
        let usages = array(&cert["spec"]["usages"]);
        for u in ["server auth", "client auth"] {
            ensure!(usages.contains(&Value::from(u)), "usage {u}");
        }
    }
    ensure!(
        objects.iter().any(|o| o["kind"] == "Certificate"),
        "no Certificate"
    );
    Ok(())
}

#[tokio::test]
async fn manifests_validate_and_match_the_binaries() -> Result<()> {
    let kubectl = tools_dir().join("bin/kubectl");
    let validate_bin = tools_dir().join("venv/bin/kubernetes-validate");
    for tool in [&kubectl, &validate_bin] {
        if !tool.is_file() {
            tools::skip_because(&format!(
                "{} missing: run scripts/install-k8s-tools.sh (install-deps.sh does)",
                tool.display()
            ));
            return Ok(());
        }
    }
    let dir = tempfile::tempdir()?;
    for kustomization in kustomizations()? {
        let name = kustomization
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let (_, objects) = render(&kustomization)?;
        let (cert_manager, core): (Vec<&Value>, Vec<&Value>) = objects.iter().partition(|o| {
            str_of(&o["apiVersion"]).is_ok_and(|v| v.starts_with("cert-manager.io/"))
        });
        validate(&core, dir.path()).with_context(|| format!("deploy {name}"))?;
        ensure!(
            objects
                .iter()
                .all(|o| o["metadata"]["namespace"] == NAMESPACE
                    || matches!(o["kind"].as_str(), Some("Namespace" | "RuntimeClass"))),
            "{name}: an object outside namespace {NAMESPACE}"
        );
        check_shoald(&objects, dir.path())
            .await
            .with_context(|| format!("deploy {name}: shoald"))?;
        let secret = check_registry_ext(&objects, dir.path())
            .await
            .with_context(|| format!("deploy {name}: shoal-registry-ext"))?;
        if name == "cert-manager" {
            check_cert_manager(&cert_manager, &secret)?;
        } else {
            ensure!(cert_manager.is_empty(), "{name}: cert-manager objects");
        }
        if name == "snapshotter" {
            let ds = find(&objects, "DaemonSet", "shoald")?;
            let class = str_of(&ds["spec"]["template"]["spec"]["runtimeClassName"])?;
            let rc = find(&objects, "RuntimeClass", class)?;
            ensure!(rc["handler"] == class, "RuntimeClass {class}'s handler");
            ensure!(ds["spec"]["updateStrategy"]["type"] == "OnDelete");
        }
        eprintln!("deploy/{name}: {} objects checked", objects.len());
    }

    // The schema check can fail: a field Kubernetes does not know is refused.
    let (_, objects) = render(&repo().join("deploy/base"))?;
    let mut bad = find(&objects, "DaemonSet", "shoald")?.clone();
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = Value::from("typo");
    let err = validate(&[&bad], dir.path()).expect_err("an unknown field must fail");
    ensure!(err.to_string().contains("livenesProbe"), "{err:#}");
    Ok(())
}
