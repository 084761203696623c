//! Preheat on an emulated cluster: nodes whose shoald runs the preheat worker (labels per
//! node, containerd's socket linked for it), the coordinator's URLs, the `shoald preheat`
//! command line run from the host, and a blocking [`PreheatClient`].

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_p2p::preheat::proto::{JobState, JobStatus, NodeList};
use shoal_p2p::preheat::{ClientAuth, PreheatClient};

use super::registry_side::PREHEAT_ADMIN_PORT;
use super::{Cluster, NodeMode, REGISTRY_EXT_PORT};
use crate::cri::shoald_binary;

/// How the command line authenticates.
pub enum CliAuth<'a> {
    /// The cluster certificate (an operator's, issued by the cluster CA): main listener.
    Certificate,
    /// A bearer token: admin listener.
    Token(&'a str),
}

impl Cluster {
    /// Starts `count` swarm nodes running the preheat worker with `labels`.
    pub fn add_preheat_nodes(
        &mut self,
        count: usize,
        labels: &[(&str, &str)],
    ) -> Result<Vec<usize>> {
        if self.config.preheat_token.is_none() {
            bail!("preheat nodes need ClusterConfig::preheat_token (the coordinator on)");
        }
        let coordinator = self.preheat_url();
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k:?} = {v:?}"))
            .collect();
        let labels = labels.join(", ");
        let sockets = self.dir.path.join("sockets");
        self.add_nodes_with(count, NodeMode::Swarm, &|name| {
            let link = sockets.join(format!("{name}.sock"));
            let config = format!(
                "\n[preheat]\ncoordinator = {coordinator:?}\ncontainerd = {:?}\nlabels = {{ {labels} }}\n",
                link.display().to_string()
            );
            (config, Some(link))
        })
    }

    /// The coordinator's main listener (mutual TLS).
    pub fn preheat_url(&self) -> String {
        format!("https://{}:{REGISTRY_EXT_PORT}", self.reg_link.ns_ip)
    }

    /// The coordinator's admin listener (bearer tokens, server certificate only).
    pub fn preheat_admin_url(&self) -> String {
        format!("https://{}:{PREHEAT_ADMIN_PORT}", self.reg_link.ns_ip)
    }

    /// A shoald config for an operator on the host: the cluster certificate "operator".
    fn operator_config(&self) -> Result<PathBuf> {
        let path = self.dir.path.join("operator.toml");
        if !path.exists() {
            let tls = self.pki.issue("operator")?;
            std::fs::write(
                &path,
                format!("[metrics]\nlisten = \"\"\n[swarm.tls]\n{}", tls.toml()),
            )?;
        }
        Ok(path)
    }

    /// Runs `shoald ARGS` (e.g. `preheat submit ...`, `nodes`) on the host against the
    /// coordinator, authenticated by `auth`. Returns its output, whatever its exit status.
    pub fn preheat_cli(&self, args: &[&str], auth: CliAuth<'_>) -> Result<Output> {
        let mut cmd = Command::new(shoald_binary()?);
        cmd.arg("--config").arg(self.operator_config()?);
        cmd.args(args);
        match auth {
            CliAuth::Certificate => cmd.env("SHOAL_COORDINATOR", self.preheat_url()),
            CliAuth::Token(t) => cmd
                .env("SHOAL_COORDINATOR", self.preheat_admin_url())
                .env("SHOAL_PREHEAT_TOKEN", t),
        };
        cmd.env_remove("SHOALD_CONFIG");
        cmd.output().context("running shoald")
    }

    /// A client of the coordinator: the operator's certificate, or a token.
    pub fn preheat_client(&self, token: Option<&str>) -> Result<PreheatClient> {
        let timeout = Duration::from_secs(30);
        Ok(match token {
            None => {
                let tls = self.pki.issue("operator-client")?;
                let transport = shoal_p2p::tls::Transport::load(Some(&tls.files()), false)?;
                PreheatClient::new(
                    &self.preheat_url(),
                    &ClientAuth::Cluster(transport),
                    timeout,
                )?
            }
            Some(t) => PreheatClient::new(
                &self.preheat_admin_url(),
                &ClientAuth::Token {
                    token: t.to_owned(),
                    ca: Some(self.pki.ca().to_path_buf()),
                },
                timeout,
            )?,
        })
    }
}

/// Runs `f` on a fresh current-thread runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

/// Waits until `client` lists `count` nodes up (and with their containerd version).
pub fn wait_nodes_up(client: &PreheatClient, count: usize, limit: Duration) -> Result<NodeList> {
    let deadline = Instant::now() + limit;
    loop {
        let nodes = block_on(client.nodes())??;
        let up = nodes
            .nodes
            .iter()
            .filter(|n| n.up && !n.info.containerd.is_empty())
            .count();
        if up >= count {
            return Ok(nodes);
        }
        if Instant::now() > deadline {
            bail!("{up} of {count} preheat nodes up after {limit:?}: {nodes:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls job `id` until it is no longer running (or `limit` passes).
pub fn wait_job(client: &PreheatClient, id: &str, limit: Duration) -> Result<JobStatus> {
    let deadline = Instant::now() + limit;
    loop {
        let job = block_on(client.job(id))??;
        if job.state != JobState::Running {
            return Ok(job);
        }
        if Instant::now() > deadline {
            bail!("job {id} still running after {limit:?}: {job:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
