//! The dashboard and the alert rules of `deploy/monitoring/` (docs/monitoring.md) against a
//! real Prometheus (Debian's `prometheus` and `promtool`):
//!
//! - `promtool check rules` on `alerts.yaml`, and `promtool test rules` on
//!   `alerts-test.yaml` (each alert fires on the series that should make it fire, and not on
//!   the healthy ones beside them); the dashboard is JSON with queries in every panel.
//! - An emulated cluster (`shoal_integration::cluster`: docker-registry with
//!   shoal-registry-ext, two nodes pulling through shoal's snapshotter and one through
//!   shoald's registry mirror, swarm on) scraped every second by a Prometheus started on
//!   127.0.0.1 with `alerts.yaml` loaded, while all three pull one image at once. Then every
//!   query of every dashboard panel (Grafana's `$__rate_interval` and `$node` replaced as
//!   Grafana would with "All" selected) returns data through Prometheus's HTTP API, every
//!   recording and alerting rule evaluated without error, and on this healthy pull no alert
//!   is pending or firing and shoal read at most 1.5x the distinct pulled bytes from the
//!   registry (the ShoalRegistryBytesPerPullHigh threshold).
//!
//! Needs prometheus and promtool (scripts/install-deps.sh); the cluster test also root,
//! iproute2, docker-registry, skopeo, containerd and the workspace's binaries.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use shoal_integration::cluster::{self, random_layers, Cluster, ClusterConfig, NodeMode};
use shoal_integration::prometheus::{self, dashboard_queries, substitute, Job, Prometheus};
use shoal_integration::tools::{run, skip_unless};

const MBIT: u64 = 200;

/// `deploy/monitoring/` of this checkout.
fn monitoring_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

fn dashboard() -> Result<Value> {
    let path = monitoring_dir().join("grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

#[test]
fn the_rules_pass_promtool_and_the_dashboard_has_queries() -> Result<()> {
    if skip_unless(&["promtool"], false) {
        return Ok(());
    }
    let dir = monitoring_dir();
    let out = run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(dir.join("alerts.yaml")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.contains("SUCCESS"), "promtool check rules: {text}");
    // promtool resolves rule_files relative to the test file.
    run(Command::new("promtool")
        .arg("test")
        .arg("rules")
        .arg(dir.join("alerts-test.yaml")))?;

    let queries = dashboard_queries(&dashboard()?);
    ensure!(
        queries.len() >= 20,
        "only {} dashboard queries",
        queries.len()
    );
    for (title, expr) in &queries {
        ensure!(
            !expr.trim().is_empty(),
            "panel {title:?} has an empty query"
        );
    }
    Ok(())
}

/// Whether sample `s` of a query result (`{"metric": .., "value": [t, "v"]}`) is a number.
fn is_number(s: &Value) -> bool {
    s["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .is_some_and(|v| !v.is_nan())
}

/// The single value of query `q` (a sum), failing without exactly one sample.
fn value(prom: &Prometheus, q: &str) -> Result<f64> {
    let r = prom.query(q)?;
    let samples = r.as_array().context("not a vector")?;
    ensure!(samples.len() == 1, "{q}: {r}");
    samples[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{q}: {r}"))
}

#[test]
fn every_dashboard_query_has_data_during_a_cluster_pull() -> Result<()> {
    if !cluster::available() || skip_unless(prometheus::TOOLS, true) {
        return Ok(());
    }
    let dashboard = dashboard()?;
    let mut cluster = Cluster::start(ClusterConfig::new(MBIT))?;
    let image = cluster.push_image("monitoring/app", "v1", random_layers(3, 12 << 20, 31)?)?;
    let mut nodes = cluster.add_nodes(2, NodeMode::Swarm)?;
    nodes.extend(cluster.add_nodes(
        1,
        NodeMode::Mirror {
            discard_unpacked_layers: false,
        },
    )?);
    let ext = cluster
        .registry_ext()
        .context("the cluster runs no shoal-registry-ext")?;
    let jobs = [
        Job {
            name: "shoald".into(),
            targets: nodes
                .iter()
                .map(|&i| format!("{}:{}", cluster.node(i).ip(), cluster::METRICS_PORT))
                .collect(),
        },
        Job {
            name: "shoal-registry-ext".into(),
            targets: vec![ext.metrics_addr()],
        },
    ];
    let prom = Prometheus::start(&jobs, &[monitoring_dir().join("alerts.yaml")])?;
    let started = Instant::now();
    prom.wait_targets_up(Duration::from_secs(30))?;

    let results = cluster.pull_all(&image.reference, &nodes, Duration::from_secs(300));
    cluster::pulls_succeeded(&nodes, &results)?;
    // A few scrapes and rule evaluations after the pull.
    std::thread::sleep(Duration::from_secs(4));

    // Every query of every panel returns data: the window of $__rate_interval covers the
    // whole run (Grafana's own would be the graph's step).
    let window = format!("{}s", started.elapsed().as_secs() + 30);
    let mut empty = Vec::new();
    let queries = dashboard_queries(&dashboard);
    for (title, expr) in &queries {
        let q = substitute(expr, &window, &[("node", ".*")]);
        let result = prom.query(&q).with_context(|| format!("panel {title:?}"))?;
        let samples = result.as_array().cloned().unwrap_or_default();
        if !samples.iter().any(is_number) {
            empty.push(format!("{title:?}: {q} = {result}"));
        }
    }
    if !empty.is_empty() {
        bail!(
            "{} of {} dashboard queries return no data:\n{}",
            empty.len(),
            queries.len(),
            empty.join("\n")
        );
    }
    eprintln!("{} dashboard queries, each with data", queries.len());

    // What the pull did, as the dashboard shows it.
    let layers = image.layers.len() as f64;
    let ok = value(&prom, "sum(shoal_pull_blobs_total{result=\"ok\"})")?;
    ensure!(
        ok >= 3.0 * layers,
        "{ok} blob fetches ended ok, for 3 nodes x {layers} layers"
    );
    let fallbacks = value(&prom, "sum(shoal_pull_fallbacks_total)")?;
    ensure!(
        fallbacks == 0.0,
        "{fallbacks} fallbacks to containerd on a healthy pull"
    );
    let delivered = value(
        &prom,
        "sum(shoal_pull_blob_bytes_total{path=\"snapshotter\"})",
    )?;
    ensure!(
        delivered >= 2.0 * image.layer_bytes() as f64,
        "the snapshotter path was given {delivered} bytes, for 2 nodes x {} bytes",
        image.layer_bytes()
    );
    let ratio = value(
        &prom,
        &substitute(
            "(sum(increase(shoal_registry_received_bytes_total[$__rate_interval])) + \
             sum(increase(shoal_manifest_registry_read_bytes_total[$__rate_interval]))) / \
             sum(increase(shoal_manifest_distinct_blob_bytes_total[$__rate_interval]))",
            &window,
            &[],
        ),
    )?;
    eprintln!("registry bytes per distinct pulled byte: {ratio:.2}");
    ensure!(
        ratio > 0.5 && ratio <= 1.5,
        "registry bytes per distinct pulled byte {ratio} on a healthy swarm pull"
    );

    // Every rule evaluated, without error; on this healthy pull no alert is pending.
    let rules = prom.rules()?;
    ensure!(
        rules.len() >= 10,
        "only {} rules loaded: {rules:?}",
        rules.len()
    );
    for rule in &rules {
        let name = &rule["name"];
        ensure!(
            rule["health"] == "ok",
            "rule {name}: {} {}",
            rule["health"],
            rule["lastError"]
        );
        let query = rule["query"].as_str().context("a rule without a query")?;
        prom.query(query).with_context(|| format!("rule {name}"))?;
        if rule["type"] == "alerting" {
            ensure!(
                rule["state"] == "inactive",
                "alert {name} is {} on a healthy pull: {}",
                rule["state"],
                rule["alerts"]
            );
        }
    }
    cluster.passed();
    Ok(())
}
