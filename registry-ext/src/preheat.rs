//! Preheat coordinator (DESIGN "Where the ideas come from", Hound's master): warm images
//! onto node groups before a rollout. Protocol types in [`shoal_p2p::preheat::proto`].
//!
//! - Nodes (shoald's worker) register and heartbeat; a node not heard from for `down_after`
//!   is down, and its unfinished tasks fail with the reason "node down". A node is up again
//!   at its next heartbeat (its failed tasks stay failed).
//! - A job names targets (images + a label selector and/or node names). Each selected node
//!   gets the union of the images of the targets selecting it; nodes needing the same images
//!   form a group (Hound's node classification). Every group is dispatched at once; within a
//!   group at most `concurrency` nodes pull at the same time (0: all). A node gets all its
//!   images of a job at once and pulls them in parallel. Selectors pick nodes that are up;
//!   a node named explicitly that is down gets its tasks failed with "node down" at once.
//! - Dispatch rides on heartbeats: the reply lists the tasks the node must be running; a
//!   cancelled task is no longer listed, and the node stops it.
//! - Cancel: tasks not dispatched are dropped (cancelled); dispatched ones are cancelled and
//!   the node abandons its CRI `PullImage` call at its next heartbeat (containerd 1.6 stops
//!   that request's downloads; layers shoal's snapshotter is already unpacking finish into
//!   its store). The job then reads `cancelled`.
//! - State (nodes, jobs with their logs) is kept in a redb file ([`store`]); after a restart
//!   nodes get `down_after` from the restart to heartbeat again before they count as down.

mod routes;
pub mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shoal_p2p::preheat::proto::{
    Group, Heartbeat, HeartbeatReply, JobList, JobSpec, JobState, JobStatus, JobSummary, LogLine,
    NodeInfo, NodeList, NodeStatus, Registered, TaskRef, TaskState, TaskStatus,
};

pub use routes::{admin_router, node_router, Shared};
pub use store::{MemoryStore, RedbStore, Store};

use crate::metrics::{PreheatMetrics, StateLabel};
use crate::Error;

/// Most log lines a job keeps.
const MAX_LOG: usize = 10_000;

/// The coordinator's timing and dispatch settings (from `[preheat]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub heartbeat_interval_ms: u64,
    pub down_after_ms: u64,
    /// Nodes of one group pulling at once; 0 = no limit.
    pub concurrency: usize,
}

/// A node as the coordinator keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub info: NodeInfo,
    pub up: bool,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
}

/// Nodes and jobs, and the store they are kept in.
pub struct Coordinator {
    settings: Settings,
    store: Box<dyn Store>,
    nodes: BTreeMap<String, NodeRecord>,
    jobs: BTreeMap<u64, JobStatus>,
    next_id: u64,
    metrics: PreheatMetrics,
}

impl Coordinator {
    /// Loads the nodes and jobs kept in `store`. Every node gets `down_after` from `now_ms`
    /// to heartbeat before it counts as down.
    pub fn open(settings: Settings, store: Box<dyn Store>, now_ms: u64) -> Result<Self, Error> {
        let (nodes, jobs) = store.load()?;
        let nodes = nodes
            .into_iter()
            .map(|mut n| {
                n.last_seen_ms = n.last_seen_ms.max(now_ms);
                (n.info.name.clone(), n)
            })
            .collect();
        let jobs: BTreeMap<u64, JobStatus> = jobs
            .into_iter()
            .filter_map(|j| j.id.parse().ok().map(|id| (id, j)))
            .collect();
        let next_id = jobs.keys().next_back().map_or(1, |id| id + 1);
        Ok(Self {
            settings,
            store,
            nodes,
            jobs,
            next_id,
            metrics: PreheatMetrics::default(),
        })
    }

    /// Reports into `metrics` from now on.
    pub fn with_metrics(mut self, metrics: PreheatMetrics) -> Self {
        self.metrics = metrics;
        self.count_nodes();
        self
    }

    /// Sets the node gauges.
    fn count_nodes(&self) {
        let up = self.nodes.values().filter(|n| n.up).count();
        for (state, n) in [("up", up), ("down", self.nodes.len() - up)] {
            self.metrics
                .nodes
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts a job that just finished and its tasks.
    fn count_finished(&self, job: &JobStatus) {
        PreheatMetrics::count(&self.metrics.jobs, &job.state.to_string(), 1);
        for state in [TaskState::Done, TaskState::Failed, TaskState::Cancelled] {
            let n = job.count(state) as u64;
            PreheatMetrics::count(&self.metrics.tasks, &state.to_string(), n);
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A node registers (again): its info replaces what was known; it is up.
    pub fn register(&mut self, info: NodeInfo, now_ms: u64) -> Result<Registered, Error> {
        info.validate().map_err(Error::PreheatSpec)?;
        let record = NodeRecord {
            info,
            up: true,
            registered_ms: now_ms,
            last_seen_ms: now_ms,
        };
        self.store.put_node(&record)?;
        tracing::info!(node = %record.info.name, labels = ?record.info.labels, "preheat node registered");
        self.nodes.insert(record.info.name.clone(), record);
        self.count_nodes();
        Ok(Registered {
            heartbeat_interval_ms: self.settings.heartbeat_interval_ms,
        })
    }

    /// A heartbeat: records the node's progress, dispatches what it may start, and answers
    /// with every task it must be running.
    pub fn heartbeat(&mut self, hb: Heartbeat, now_ms: u64) -> Result<HeartbeatReply, Error> {
        let interval = self.settings.heartbeat_interval_ms;
        let Some(node) = self.nodes.get_mut(&hb.node) else {
            return Ok(HeartbeatReply {
                registered: false,
                heartbeat_interval_ms: interval,
                tasks: Vec::new(),
            });
        };
        node.last_seen_ms = now_ms;
        self.metrics.heartbeats.inc();
        if !node.up {
            node.up = true;
            tracing::info!(node = %hb.node, "preheat node up again");
            self.store.put_node(node)?;
            self.count_nodes();
        }
        let mut dirty = BTreeSet::new();
        for p in &hb.tasks {
            let Some((id, job)) = self.job_mut(&p.job) else {
                continue;
            };
            let Some(task) = job
                .tasks
                .iter_mut()
                .find(|t| t.node == hb.node && t.image == p.image)
            else {
                continue;
            };
            if task.state != TaskState::Pulling {
                continue;
            }
            task.bytes_done = p.bytes_done;
            task.bytes_total = p.bytes_total;
            let message = match p.state {
                TaskState::Done => format!("{}: {} done", hb.node, p.image),
                TaskState::Failed => {
                    let reason = p.error.clone().unwrap_or_else(|| "no reason given".into());
                    task.error = Some(reason.clone());
                    format!("{}: {} failed: {reason}", hb.node, p.image)
                }
                _ => continue,
            };
            task.state = p.state;
            task.finished_ms = Some(now_ms);
            log(job, now_ms, message);
            dirty.insert(id);
        }
        self.dispatch(&hb.node, now_ms, &mut dirty);
        self.finish_and_save(dirty, now_ms)?;
        let tasks = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .flat_map(|j| {
                j.tasks
                    .iter()
                    .filter(|t| t.node == hb.node && t.state == TaskState::Pulling)
                    .map(|t| TaskRef {
                        job: j.id.clone(),
                        image: t.image.clone(),
                    })
            })
            .collect();
        Ok(HeartbeatReply {
            registered: true,
            heartbeat_interval_ms: interval,
            tasks,
        })
    }

    /// Starts `node`'s pending tasks in every running job whose group has room.
    fn dispatch(&mut self, node: &str, now_ms: u64, dirty: &mut BTreeSet<u64>) {
        let limit = self.settings.concurrency;
        for (id, job) in self.jobs.iter_mut() {
            if job.state != JobState::Running
                || !job
                    .tasks
                    .iter()
                    .any(|t| t.node == node && t.state == TaskState::Pending)
            {
                continue;
            }
            let Some(group) = job
                .groups
                .iter()
                .find(|g| g.nodes.iter().any(|n| n == node))
            else {
                continue;
            };
            let active: BTreeSet<&str> = job
                .tasks
                .iter()
                .filter(|t| t.state == TaskState::Pulling && group.nodes.contains(&t.node))
                .map(|t| t.node.as_str())
                .collect();
            if limit != 0 && !active.contains(node) && active.len() >= limit {
                continue;
            }
            let mut started = 0;
            for t in job.tasks.iter_mut() {
                if t.node == node && t.state == TaskState::Pending {
                    t.state = TaskState::Pulling;
                    t.started_ms = Some(now_ms);
                    started += 1;
                }
            }
            log(job, now_ms, format!("{node}: pulling {started} images"));
            dirty.insert(*id);
        }
    }

    /// Marks nodes not heard from for `down_after` down and fails their unfinished tasks.
    pub fn tick(&mut self, now_ms: u64) -> Result<(), Error> {
        let down_after = self.settings.down_after_ms;
        let mut gone = Vec::new();
        for node in self.nodes.values_mut() {
            if node.up && now_ms.saturating_sub(node.last_seen_ms) > down_after {
                node.up = false;
                tracing::warn!(node = %node.info.name, "preheat node down: no heartbeat for {down_after} ms");
                self.store.put_node(node)?;
                gone.push(node.info.name.clone());
            }
        }
        if !gone.is_empty() {
            self.count_nodes();
        }
        let mut dirty = BTreeSet::new();
        for name in &gone {
            for (id, job) in self.jobs.iter_mut() {
                if job.state != JobState::Running {
                    continue;
                }
                let mut failed = 0;
                for t in job.tasks.iter_mut() {
                    if &t.node == name && !t.state.is_final() {
                        t.state = TaskState::Failed;
                        t.error = Some("node down".into());
                        t.finished_ms = Some(now_ms);
                        failed += 1;
                    }
                }
                if failed > 0 {
                    log(
                        job,
                        now_ms,
                        format!("{name}: node down (no heartbeat for {down_after} ms): {failed} tasks failed"),
                    );
                    dirty.insert(*id);
                }
            }
        }
        self.finish_and_save(dirty, now_ms)
    }

    /// A new job: validated, nodes selected and grouped, tasks pending until dispatched.
    pub fn submit(&mut self, spec: JobSpec, now_ms: u64) -> Result<JobStatus, Error> {
        spec.validate().map_err(Error::PreheatSpec)?;
        for t in &spec.targets {
            if let Some(unknown) = t.nodes.iter().find(|n| !self.nodes.contains_key(*n)) {
                return Err(Error::BadRequest(format!(
                    "node {unknown:?} is not registered"
                )));
            }
        }
        let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for t in &spec.targets {
            for (name, node) in &self.nodes {
                // A selector alone picks nodes that are up; named nodes are taken as named.
                if t.selects(name, &node.info.labels) && (node.up || !t.nodes.is_empty()) {
                    wanted
                        .entry(name.clone())
                        .or_default()
                        .extend(t.images.iter().cloned());
                }
            }
        }
        if wanted.is_empty() {
            return Err(Error::BadRequest(
                "the job selects no node that is up".into(),
            ));
        }
        let mut groups: BTreeMap<&BTreeSet<String>, Vec<String>> = BTreeMap::new();
        for (name, images) in &wanted {
            groups.entry(images).or_default().push(name.clone());
        }
        let groups: Vec<Group> = groups
            .into_iter()
            .map(|(images, nodes)| Group {
                images: images.iter().cloned().collect(),
                nodes,
            })
            .collect();
        let mut tasks = Vec::new();
        for (name, images) in &wanted {
            let up = self.nodes.get(name).is_some_and(|n| n.up);
            for image in images {
                tasks.push(TaskStatus {
                    node: name.clone(),
                    image: image.clone(),
                    state: if up {
                        TaskState::Pending
                    } else {
                        TaskState::Failed
                    },
                    bytes_done: 0,
                    bytes_total: 0,
                    error: (!up).then(|| "node down".to_string()),
                    started_ms: None,
                    finished_ms: (!up).then_some(now_ms),
                });
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut job = JobStatus {
            id: id.to_string(),
            spec,
            state: JobState::Running,
            created_ms: now_ms,
            finished_ms: None,
            log: Vec::new(),
            tasks,
            groups,
        };
        let summary = format!(
            "submitted: {} tasks on {} nodes in {} groups{}",
            job.tasks.len(),
            wanted.len(),
            job.groups.len(),
            match self.settings.concurrency {
                0 => String::new(),
                n => format!(", at most {n} nodes of a group at once"),
            }
        );
        log(&mut job, now_ms, summary);
        for t in job.tasks.iter().filter(|t| t.state == TaskState::Failed) {
            let line = format!("{}: {} failed: node down", t.node, t.image);
            job.log.push(LogLine {
                at_ms: now_ms,
                message: line,
            });
        }
        tracing::info!(
            job = id,
            tasks = job.tasks.len(),
            groups = job.groups.len(),
            "preheat job submitted"
        );
        PreheatMetrics::count(&self.metrics.jobs, "submitted", 1);
        self.jobs.insert(id, job);
        self.finish_and_save(BTreeSet::from([id]), now_ms)?;
        Ok(self.jobs[&id].clone())
    }

    /// Cancels job `id` (a finished job is left as it is).
    pub fn cancel(&mut self, id: &str, now_ms: u64) -> Result<JobStatus, Error> {
        let (key, job) = self
            .job_mut(id)
            .ok_or_else(|| Error::NotFound(format!("preheat job {id:?}")))?;
        if job.state == JobState::Running {
            let mut n = 0;
            for t in job.tasks.iter_mut().filter(|t| !t.state.is_final()) {
                t.state = TaskState::Cancelled;
                t.finished_ms = Some(now_ms);
                n += 1;
            }
            job.state = JobState::Cancelled;
            job.finished_ms = Some(now_ms);
            log(
                job,
                now_ms,
                format!("cancelled: {n} unfinished tasks cancelled"),
            );
            let job = job.clone();
            self.store.put_job(&job)?;
            self.count_finished(&job);
            tracing::info!(job = key, "preheat job cancelled");
        }
        Ok(self.jobs[&key].clone())
    }

    fn job_mut(&mut self, id: &str) -> Option<(u64, &mut JobStatus)> {
        let key: u64 = id.parse().ok()?;
        self.jobs.get_mut(&key).map(|j| (key, j))
    }

    pub fn job(&self, id: &str) -> Option<&JobStatus> {
        self.jobs.get(&id.parse().ok()?)
    }

    pub fn jobs(&self) -> JobList {
        JobList {
            jobs: self
                .jobs
                .values()
                .map(|j| JobSummary {
                    id: j.id.clone(),
                    state: j.state,
                    created_ms: j.created_ms,
                    tasks: j.tasks.len(),
                    done: j.count(TaskState::Done),
                    failed: j.count(TaskState::Failed),
                })
                .collect(),
        }
    }

    pub fn nodes(&self) -> NodeList {
        NodeList {
            nodes: self
                .nodes
                .values()
                .map(|n| NodeStatus {
                    info: n.info.clone(),
                    up: n.up,
                    registered_ms: n.registered_ms,
                    last_seen_ms: n.last_seen_ms,
                })
                .collect(),
        }
    }

    /// Finishes the jobs of `dirty` whose tasks are all final, and saves them.
    fn finish_and_save(&mut self, dirty: BTreeSet<u64>, now_ms: u64) -> Result<(), Error> {
        for id in dirty {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if job.state == JobState::Running && job.tasks.iter().all(|t| t.state.is_final()) {
                let failed = job.count(TaskState::Failed);
                job.state = if failed == 0 {
                    JobState::Done
                } else {
                    JobState::Failed
                };
                job.finished_ms = Some(now_ms);
                let line = format!(
                    "finished: {} done, {failed} failed in {:.1} s",
                    job.count(TaskState::Done),
                    now_ms.saturating_sub(job.created_ms) as f64 / 1e3
                );
                log(job, now_ms, line);
                tracing::info!(job = id, state = %job.state, "preheat job finished");
                let job = job.clone();
                self.count_finished(&job);
                self.store.put_job(&job)?;
                continue;
            }
            self.store.put_job(job)?;
        }
        Ok(())
    }
}

/// Appends to a job's log (bounded: past [`MAX_LOG`] lines, only the end is noted).
fn log(job: &mut JobStatus, at_ms: u64, message: String) {
    if job.log.len() >= MAX_LOG {
        return;
    }
    let message = if job.log.len() + 1 == MAX_LOG {
        "log full: later lines dropped".to_string()
    } else {
        message
    };
    job.log.push(LogLine { at_ms, message });
}

/// Wall-clock unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
