//! `shoald preheat submit|status|cancel|jobs` and `shoald nodes`: the coordinator's admin API
//! from the command line, authenticated with the cluster certificate of shoald's config
//! (`[swarm.tls]`, mutual TLS, the coordinator's main listener) or with a bearer token (the
//! coordinator's admin listener).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_p2p::preheat::proto::{JobSpec, JobState, JobStatus, NodeList, Target, TaskState};
use shoal_p2p::preheat::{ClientAuth, PreheatClient};
use shoal_p2p::tls::Transport;

use crate::config::Config;
use crate::report::human_bytes;
use crate::Error;

/// How to reach the coordinator (flags; the config fills what is not given).
#[derive(Debug, Clone, Default)]
pub struct Connect {
    /// Base URL; default `[preheat] coordinator`.
    pub coordinator: Option<String>,
    /// Bearer token for the admin listener; without it, the cluster certificate.
    pub token: Option<String>,
    /// CA to check the admin listener's certificate with; default `[swarm.tls] ca`.
    pub ca: Option<PathBuf>,
}

/// The client `connect` describes.
pub fn client(connect: &Connect, config: &Config) -> Result<PreheatClient, Error> {
    let url = connect
        .coordinator
        .clone()
        .unwrap_or_else(|| config.preheat.coordinator.clone());
    if url.is_empty() {
        return Err(Error::PreheatInput(
            "no coordinator: pass --coordinator URL or set [preheat] coordinator".into(),
        ));
    }
    let auth = match &connect.token {
        Some(token) => ClientAuth::Token {
            token: token.clone(),
            ca: connect
                .ca
                .clone()
                .or_else(|| config.swarm.tls.as_ref().map(|t| t.ca.clone())),
        },
        None => ClientAuth::Cluster(
            Transport::load(config.swarm.tls.as_ref(), config.swarm.insecure_plaintext)
                .map_err(Error::PreheatCredentials)?,
        ),
    };
    Ok(PreheatClient::new(&url, &auth, Duration::from_secs(30))?)
}

/// The job of the command line: one target of `images` on the nodes matching `selector`
/// (`KEY=VALUE`) and named in `nodes`, plus the per-node lists of `per_node_file`.
pub fn job_spec(
    images: &[String],
    selector: &[String],
    nodes: &[String],
    per_node_file: Option<&Path>,
) -> Result<JobSpec, Error> {
    let mut targets = Vec::new();
    if !images.is_empty() {
        let mut labels = BTreeMap::new();
        for s in selector {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| Error::PreheatInput(format!("--selector {s:?} is not KEY=VALUE")))?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        targets.push(Target {
            images: images.to_vec(),
            selector: labels,
            nodes: nodes.to_vec(),
        });
    } else if !selector.is_empty() || !nodes.is_empty() {
        return Err(Error::PreheatInput(
            "--selector and --node need at least one --image".into(),
        ));
    }
    if let Some(path) = per_node_file {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        targets.extend(
            parse_per_node(&text).map_err(|e| Error::PreheatInput(format!("{path:?}: {e}")))?,
        );
    }
    let spec = JobSpec { targets };
    spec.validate().map_err(Error::PreheatSpec)?;
    Ok(spec)
}

/// Per-node image lists: one line per node, `NODE IMAGE [IMAGE...]`; blank lines and lines
/// starting with `#` are skipped.
pub fn parse_per_node(text: &str) -> Result<Vec<Target>, String> {
    let mut targets = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let node = words.next().unwrap_or_default();
        let images: Vec<String> = words.map(str::to_owned).collect();
        if images.is_empty() {
            return Err(format!("line {}: NODE IMAGE [IMAGE...] expected", n + 1));
        }
        targets.push(Target {
            images,
            selector: BTreeMap::new(),
            nodes: vec![node.to_owned()],
        });
    }
    Ok(targets)
}

/// A job as a table: one line per node and image.
pub fn render_job(job: &JobStatus) -> String {
    let mut out = format!(
        "job {}: {} — {} tasks: {} done, {} pulling, {} pending, {} failed, {} cancelled; {} groups\n",
        job.id,
        job.state,
        job.tasks.len(),
        job.count(TaskState::Done),
        job.count(TaskState::Pulling),
        job.count(TaskState::Pending),
        job.count(TaskState::Failed),
        job.count(TaskState::Cancelled),
        job.groups.len()
    );
    out.push_str(&format!(
        "  {:<20} {:<10} {:>21}  {:<40} {}\n",
        "NODE", "STATE", "BYTES", "IMAGE", "ERROR"
    ));
    for t in &job.tasks {
        let bytes = if t.bytes_total > 0 {
            format!(
                "{}/{}",
                human_bytes(t.bytes_done),
                human_bytes(t.bytes_total)
            )
        } else {
            String::from("-")
        };
        out.push_str(&format!(
            "  {:<20} {:<10} {:>21}  {:<40} {}\n",
            t.node,
            t.state.to_string(),
            bytes,
            t.image,
            t.error.as_deref().unwrap_or("")
        ));
    }
    out
}

/// The job's log, one line each.
pub fn render_log(job: &JobStatus) -> String {
    let start = job.created_ms;
    job.log
        .iter()
        .map(|l| {
            format!(
                "  +{:>7.1}s {}\n",
                l.at_ms.saturating_sub(start) as f64 / 1e3,
                l.message
            )
        })
        .collect()
}

/// Nodes as a table.
pub fn render_nodes(list: &NodeList, now_ms: u64) -> String {
    let mut out = format!(
        "{:<20} {:<5} {:>9}  {:<12} {:<10} {:<8} {}\n",
        "NODE", "UP", "SEEN", "KERNEL", "CONTAINERD", "SHOAL", "LABELS"
    );
    for n in &list.nodes {
        let labels: Vec<String> = n
            .info
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!(
            "{:<20} {:<5} {:>8.1}s  {:<12} {:<10} {:<8} {}\n",
            n.info.name,
            if n.up { "up" } else { "down" },
            now_ms.saturating_sub(n.last_seen_ms) as f64 / 1e3,
            n.info.kernel,
            n.info.containerd,
            n.info.shoal,
            labels.join(",")
        ));
    }
    out
}

/// Polls job `id` every `every` until it is no longer running, printing its table whenever
/// it changed; returns its last state.
pub async fn watch(client: &PreheatClient, id: &str, every: Duration) -> Result<JobStatus, Error> {
    let mut last = String::new();
    loop {
        let job = client.job(id).await?;
        let table = render_job(&job);
        if table != last {
            println!("{table}");
            last = table;
        }
        if job.state != JobState::Running {
            return Ok(job);
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_node_files_and_flags_make_targets() {
        let t = parse_per_node(
            "# comment\n\nnode-0 r.example/a:1 r.example/b:1\nnode-1 r.example/b:1\n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].nodes, vec!["node-0".to_string()]);
        assert_eq!(t[0].images.len(), 2);
        assert!(parse_per_node("node-0\n").unwrap_err().contains("line 1"));
        let spec = job_spec(&["r.example/a:1".into()], &["group=a".into()], &[], None).unwrap();
        assert_eq!(spec.targets[0].selector["group"], "a");
        assert!(job_spec(&["r.example/a:1".into()], &["nokv".into()], &[], None).is_err());
        assert!(job_spec(&[], &["group=a".into()], &[], None).is_err());
        assert!(job_spec(&[], &[], &[], None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nodes.txt");
        std::fs::write(&file, "node-0 r.example/a:1\n").unwrap();
        let spec = job_spec(&[], &[], &[], Some(&file)).unwrap();
        assert_eq!(spec.targets.len(), 1);
    }
}
