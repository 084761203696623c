//! A real Prometheus (Debian's `prometheus`) for the monitoring tests: started on a free port
//! of 127.0.0.1 with its own configuration and data directory (in a temporary directory),
//! scraping the given targets every second and evaluating the given rule files every second;
//! stopped on drop. Queries go through its HTTP API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The tools [`Prometheus`] and the rule tests need.
pub const TOOLS: &[&str] = &["prometheus", "promtool"];

/// One scrape job: its name and `host:port` targets (path `/metrics`).
pub struct Job {
    pub name: String,
    pub targets: Vec<String>,
}

/// A running Prometheus. See the module documentation.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `prometheus.yml` for `jobs` and `rule_files`, scraping and evaluating every second.
pub fn config(jobs: &[Job], rule_files: &[PathBuf]) -> String {
    let mut out = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n",
    );
    if !rule_files.is_empty() {
        out.push_str("rule_files:\n");
        for f in rule_files {
            out.push_str(&format!(
                "  - {}\n",
                serde_json::json!(f.display().to_string())
            ));
        }
    }
    out.push_str("scrape_configs:\n");
    for job in jobs {
        let targets: Vec<Value> = job
            .targets
            .iter()
            .map(|t| Value::from(t.as_str()))
            .collect();
        out.push_str(&format!(
            "  - job_name: {}\n    static_configs:\n      - targets: {}\n",
            Value::from(job.name.as_str()),
            Value::from(targets)
        ));
    }
    out
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` and evaluating `rule_files`, and waits until it is
    /// ready (at most 30 s).
    pub fn start(jobs: &[Job], rule_files: &[PathBuf]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-prometheus-")
            .tempdir_in(crate::containerd::scratch_dir())?;
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config(jobs, rule_files))?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let mut p = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = p.get("/-/ready") {
                return Ok(p);
            }
            if let Some(status) = p.child.try_wait()? {
                bail!("prometheus exited ({status}): {}", p.log());
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready after 30 s: {}", p.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Where its HTTP API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Its configuration directory (configuration, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `GET path`: status and body.
    fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr)?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("HTTP answer without a header end")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, body.to_string()))
    }

    /// `GET /api/v1/...`: its `data`, failing with Prometheus's error otherwise.
    pub fn api(&self, path_and_query: &str) -> Result<Value> {
        let (status, body) = self.get(path_and_query)?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {path_and_query}: {status} {body}"))?;
        if v["status"] != "success" {
            bail!(
                "GET {path_and_query}: {status} {}: {}",
                v["errorType"],
                v["error"]
            );
        }
        Ok(v["data"].clone())
    }

    /// The result of instant query `query` (now): `data.result` (a vector's samples, a
    /// scalar's pair), failing when the query does not evaluate.
    pub fn query(&self, query: &str) -> Result<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(query)))
            .with_context(|| format!("query {query}"))?;
        Ok(data["result"].clone())
    }

    /// Waits until every scrape target has been scraped successfully at least once (at most
    /// `limit`); their `health` by `scrapeUrl` otherwise.
    pub fn wait_targets_up(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let data = self.api("/api/v1/targets?state=active")?;
            let targets = data["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let down: Vec<String> = targets
                .iter()
                .filter(|t| t["health"] != "up")
                .map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"]))
                .collect();
            if !targets.is_empty() && down.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("targets not up after {limit:?}: {down:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Every loaded rule (`/api/v1/rules`): recording and alerting, each with its `name`,
    /// `query`, `health`, `lastError`, `lastEvaluation` (and an alert's `state`).
    pub fn rules(&self) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/rules")?;
        let mut out = Vec::new();
        for group in data["groups"].as_array().cloned().unwrap_or_default() {
            out.extend(group["rules"].as_array().cloned().unwrap_or_default());
        }
        Ok(out)
    }
}

/// `s` percent-encoded for a URL's query (everything but RFC 3986's unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Every query of a Grafana dashboard (the `expr` of every panel's targets, rows' panels
/// included), with its panel's title.
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("").to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((title.clone(), expr.to_owned()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `expr` with Grafana's variables replaced as Grafana would: `$__rate_interval` and
/// `$__interval` by `window`, the others (`$node`, `${node}`) by their values in `vars`.
pub fn substitute(expr: &str, window: &str, vars: &[(&str, &str)]) -> String {
    let mut out = expr
        .replace("$__rate_interval", window)
        .replace("${__rate_interval}", window)
        .replace("$__interval", window);
    for (name, value) in vars {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded_and_variables_replaced() {
        assert_eq!(
            encode("a{b=~\"x\"}[1m] / 2"),
            "a%7Bb%3D~%22x%22%7D%5B1m%5D%20%2F%202"
        );
        let e = substitute(
            "rate(x{instance=~\"$node\"}[$__rate_interval]) + y{i=~\"${node}\"}",
            "1m",
            &[("node", ".*")],
        );
        assert_eq!(e, "rate(x{instance=~\".*\"}[1m]) + y{i=~\".*\"}");
    }

    #[test]
    fn the_config_names_jobs_targets_and_rules() {
        let c = config(
            &[Job {
                name: "shoald".into(),
                targets: vec!["10.0.0.1:9464".into()],
            }],
            &[PathBuf::from("/x/alerts.yaml")],
        );
        assert!(c.contains("rule_files:\n  - \"/x/alerts.yaml\"\n"), "{c}");
        assert!(
            c.contains("  - job_name: \"shoald\"\n    static_configs:\n      - targets: [\"10.0.0.1:9464\"]\n"),
            "{c}"
        );
    }

    #[test]
    fn every_target_of_every_panel_is_found() {
        let d: Value = serde_json::json!({"panels": [
            {"type": "row", "title": "r", "panels": [
                {"title": "in a row", "targets": [{"expr": "a"}]}
            ]},
            {"title": "p", "targets": [{"expr": "b"}, {"expr": "c"}]}
        ]});
        let q = dashboard_queries(&d);
        assert_eq!(
            q,
            vec![
                ("in a row".to_owned(), "a".to_owned()),
                ("p".to_owned(), "b".to_owned()),
                ("p".to_owned(), "c".to_owned())
            ]
        );
    }
}
