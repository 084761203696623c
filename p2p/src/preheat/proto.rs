//! The preheat protocol between shoal-registry-ext (coordinator) and shoald (worker, CLI):
//! JSON bodies, unknown fields refused. Routes (on the coordinator):
//!
//! - `POST /v1/preheat/register` [`NodeInfo`] -> [`Registered`]: a node (re-)registers.
//! - `POST /v1/preheat/heartbeat` [`Heartbeat`] -> [`HeartbeatReply`]: progress in, the
//!   tasks the node must run out.
//! - `GET /v1/preheat/nodes` -> [`NodeList`].
//! - `POST /v1/preheat/jobs` [`JobSpec`] -> [`JobStatus`] (201); `GET /v1/preheat/jobs` ->
//!   [`JobList`]; `GET /v1/preheat/jobs/{id}` -> [`JobStatus`];
//!   `POST /v1/preheat/jobs/{id}/cancel` -> [`JobStatus`].
//!
//! Errors are [`crate::tracker::proto::ErrorBody`] with a 4xx/5xx status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reference::{ImageReference, ReferenceError};

/// Longest node name, label key or value, job ID accepted.
pub const MAX_NAME: usize = 253;
/// Most images one target may name, and most targets in a job.
pub const MAX_LIST: usize = 1000;

/// A node as it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInfo {
    /// Unique node name (the swarm's node name).
    pub name: String,
    /// Labels the node selectors match.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `uname -r`.
    #[serde(default)]
    pub kernel: String,
    /// containerd's version ("" until containerd answered).
    #[serde(default)]
    pub containerd: String,
    /// shoald's version.
    #[serde(default)]
    pub shoal: String,
}

/// The answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registered {
    /// Heartbeat at least this often (ms).
    pub heartbeat_interval_ms: u64,
}

/// Where a pull task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Not dispatched to the node yet.
    Pending,
    /// Dispatched; the node pulls it.
    Pulling,
    Done,
    Failed,
    Cancelled,
}

impl TaskState {
    /// Done, failed or cancelled.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Pulling => "pulling",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        })
    }
}

/// One task of a node: pull `image` for job `job`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRef {
    pub job: String,
    pub image: String,
}

/// What a node reports about one of its tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskProgress {
    pub job: String,
    pub image: String,
    /// `pulling`, `done` or `failed`.
    pub state: TaskState,
    /// Bytes of the image's layers on the node (see shoald's worker for how it counts).
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes of the image's layers (0 when not known yet).
    #[serde(default)]
    pub bytes_total: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/preheat/heartbeat`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub node: String,
    /// Every task the node runs or finished and has not seen dropped from the reply yet.
    #[serde(default)]
    pub tasks: Vec<TaskProgress>,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatReply {
    /// False when the coordinator does not know the node: register again.
    pub registered: bool,
    /// Heartbeat at least this often (ms).
    pub heartbeat_interval_ms: u64,
    /// The tasks the node must be running. A task not listed is to be stopped (cancelled,
    /// failed by the coordinator) or, when finished, was recorded and can be forgotten.
    #[serde(default)]
    pub tasks: Vec<TaskRef>,
}

/// Which nodes pull which images: the nodes matching every label of `selector` and, when
/// `nodes` is not empty, named in it, pull every image of `images`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub images: Vec<String>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub nodes: Vec<String>,
}

/// `POST /v1/preheat/jobs`: one or more targets (per-node image lists are targets naming one
/// node each). A node's images are the union over the targets that select it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub targets: Vec<Target>,
}

/// A whole job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    /// Every task done.
    Done,
    /// Finished, some task failed.
    Failed,
    Cancelled,
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        })
    }
}

/// One node's pull of one image in a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskStatus {
    pub node: String,
    pub image: String,
    pub state: TaskState,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix ms when dispatched / finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

/// Nodes needing the same images (Hound's node classification); dispatched together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub images: Vec<String>,
    pub nodes: Vec<String>,
}

/// One line of a job's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    /// Unix ms.
    pub at_ms: u64,
    pub message: String,
}

/// `GET /v1/preheat/jobs/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobStatus {
    pub id: String,
    pub spec: JobSpec,
    pub state: JobState,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    pub groups: Vec<Group>,
    pub tasks: Vec<TaskStatus>,
    pub log: Vec<LogLine>,
}

impl JobStatus {
    /// Tasks in `state`.
    pub fn count(&self, state: TaskState) -> usize {
        self.tasks.iter().filter(|t| t.state == state).count()
    }
}

/// A job in [`JobList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSummary {
    pub id: String,
    pub state: JobState,
    pub created_ms: u64,
    pub tasks: usize,
    pub done: usize,
    pub failed: usize,
}

/// `GET /v1/preheat/jobs`, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
}

/// A node in [`NodeList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeStatus {
    pub info: NodeInfo,
    /// Heard from within the coordinator's `down_after`.
    pub up: bool,
    /// Unix ms of the last registration / heartbeat.
    pub registered_ms: u64,
    pub last_seen_ms: u64,
}

/// `GET /v1/preheat/nodes`, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeList {
    pub nodes: Vec<NodeStatus>,
}

/// Why a node registration ([`NodeInfo`]) or a job ([`JobSpec`]) is refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A name (`what`: node name, label key) is empty or longer than [`MAX_NAME`].
    #[error("{what} {name:?} must be 1..={MAX_NAME} characters")]
    NameLength { what: &'static str, name: String },
    /// A name has whitespace or control characters.
    #[error("{what} {name:?} has whitespace or control characters")]
    NameCharacters { what: &'static str, name: String },
    /// Label `key`'s value is longer than [`MAX_NAME`] or has control characters.
    #[error("label {key}: value {value:?} is too long or has control characters")]
    LabelValue { key: String, value: String },
    /// A job without targets.
    #[error("a job needs at least one target")]
    NoTarget,
    /// A job with more than [`MAX_LIST`] targets.
    #[error("more than {MAX_LIST} targets")]
    TooManyTargets,
    /// Target `target` has no image or more than [`MAX_LIST`].
    #[error("target {target}: 1..={MAX_LIST} images needed")]
    ImageCount { target: usize },
    /// Target `target` selects no node: no labels and no node names.
    #[error("target {target}: a selector (labels) or node names are needed")]
    NoSelection { target: usize },
    /// Target `target` names `image`, which is not an image reference.
    #[error("target {target}: image {image:?}: {source}")]
    Image {
        target: usize,
        image: String,
        #[source]
        source: ReferenceError,
    },
    /// Target `target` names a malformed node name or label key.
    #[error("target {target}: {source}")]
    Target {
        target: usize,
        #[source]
        source: Box<SpecError>,
    },
}

/// Checks a node name, label key or value: 1..=[`MAX_NAME`] printable characters, no
/// whitespace.
pub fn check_name(what: &'static str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(SpecError::NameLength {
            what,
            name: name.to_owned(),
        });
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SpecError::NameCharacters {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

impl NodeInfo {
    /// Fails on a malformed name or labels.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name("node name", &self.name)?;
        for (k, v) in &self.labels {
            check_name("label key", k)?;
            if v.len() > MAX_NAME || v.chars().any(char::is_control) {
                return Err(SpecError::LabelValue {
                    key: k.clone(),
                    value: v.clone(),
                });
            }
        }
        Ok(())
    }
}

impl JobSpec {
    /// Fails on an empty job, a target without images or without any selection, or an image
    /// that is not a reference.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.targets.is_empty() {
            return Err(SpecError::NoTarget);
        }
        if self.targets.len() > MAX_LIST {
            return Err(SpecError::TooManyTargets);
        }
        for (i, t) in self.targets.iter().enumerate() {
            if t.images.is_empty() || t.images.len() > MAX_LIST {
                return Err(SpecError::ImageCount { target: i });
            }
            if t.selector.is_empty() && t.nodes.is_empty() {
                return Err(SpecError::NoSelection { target: i });
            }
            for image in &t.images {
                image
                    .parse::<ImageReference>()
                    .map_err(|source| SpecError::Image {
                        target: i,
                        image: image.clone(),
                        source,
                    })?;
            }
            let in_target = |source| SpecError::Target {
                target: i,
                source: Box::new(source),
            };
            for n in &t.nodes {
                check_name("node name", n).map_err(in_target)?;
            }
            for k in t.selector.keys() {
                check_name("label key", k).map_err(in_target)?;
            }
        }
        Ok(())
    }
}

impl Target {
    /// Whether the node `name` with `labels` is selected.
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.nodes.is_empty() || self.nodes.iter().any(|n| n == name))
            && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
        let json = serde_json::to_vec(v).unwrap();
        let back: T = serde_json::from_slice(&json).unwrap();
        assert_eq!(&back, v);
    }

    fn spec() -> JobSpec {
        JobSpec {
            targets: vec![
                Target {
                    images: vec!["r.example/a:1".into()],
                    selector: [("group".to_string(), "a".to_string())].into(),
                    nodes: vec![],
                },
                Target {
                    images: vec![
                        "r.example/b:1".into(),
                        "r.example/c@sha256:".to_string() + &"0".repeat(64),
                    ],
                    selector: BTreeMap::new(),
                    nodes: vec!["node-1".into()],
                },
            ],
        }
    }

    #[test]
    fn messages_round_trip() {
        let info = NodeInfo {
            name: "node-0".into(),
            labels: [("group".to_string(), "a".to_string())].into(),
            kernel: "6.1.0".into(),
            containerd: "1.6.20".into(),
            shoal: "0.1.0".into(),
        };
        roundtrip(&info);
        roundtrip(&Heartbeat {
            node: "node-0".into(),
            tasks: vec![TaskProgress {
                job: "1".into(),
                image: "r.example/a:1".into(),
                state: TaskState::Failed,
                bytes_done: 3,
                bytes_total: 9,
                error: Some("no".into()),
            }],
        });
        roundtrip(&HeartbeatReply {
            registered: true,
            heartbeat_interval_ms: 1000,
            tasks: vec![TaskRef {
                job: "1".into(),
                image: "x.example/y:z".into(),
            }],
        });
        let status = JobStatus {
            id: "1".into(),
            spec: spec(),
            state: JobState::Running,
            created_ms: 5,
            finished_ms: None,
            groups: vec![Group {
                images: vec!["r.example/a:1".into()],
                nodes: vec!["node-0".into()],
            }],
            tasks: vec![TaskStatus {
                node: "node-0".into(),
                image: "r.example/a:1".into(),
                state: TaskState::Pulling,
                bytes_done: 1,
                bytes_total: 2,
                error: None,
                started_ms: Some(6),
                finished_ms: None,
            }],
            log: vec![LogLine {
                at_ms: 5,
                message: "submitted".into(),
            }],
        };
        roundtrip(&status);
        assert_eq!(status.count(TaskState::Pulling), 1);
        roundtrip(&NodeList {
            nodes: vec![NodeStatus {
                info,
                up: false,
                registered_ms: 1,
                last_seen_ms: 2,
            }],
        });
        let json = serde_json::to_string(&TaskState::Cancelled).unwrap();
        assert_eq!(json, "\"cancelled\"");
    }

    #[test]
    fn malformed_input_is_refused() {
        for bad in [
            "",
            "{",
            "{\"node\":\"n\",\"tasks\":[{\"job\":\"1\",\"image\":\"i\",\"state\":\"exploded\"}]}",
            "{\"node\":\"n\",\"bogus\":1}",
            "{\"tasks\":[]}",
            "[]",
        ] {
            assert!(serde_json::from_str::<Heartbeat>(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<JobSpec>("{\"targets\":[{\"images\":\"x\"}]}").is_err());
    }

    #[test]
    fn specs_and_names_are_validated() {
        spec().validate().unwrap();
        let mut s = spec();
        s.targets[0].selector.clear();
        let e = s.validate().unwrap_err();
        assert!(matches!(e, SpecError::NoSelection { target: 0 }), "{e:?}");
        assert!(e.to_string().contains("selector"), "{e}");
        let mut s = spec();
        s.targets[0].images = vec!["Not A Reference!".into()];
        let e = s.validate().unwrap_err();
        assert!(
            matches!(&e, SpecError::Image { target: 0, image, .. } if image == "Not A Reference!"),
            "{e:?}"
        );
        let cause = std::error::Error::source(&e).and_then(|c| c.downcast_ref::<ReferenceError>());
        assert!(cause.is_some(), "{e:?}");
        assert!(matches!(
            JobSpec::default().validate(),
            Err(SpecError::NoTarget)
        ));
        let mut s = spec();
        s.targets[1].images.clear();
        assert!(matches!(
            s.validate(),
            Err(SpecError::ImageCount { target: 1 })
        ));
        let mut s = spec();
        s.targets[0].nodes = vec!["a b".into()];
        let e = s.validate().unwrap_err();
        assert!(
            matches!(&e, SpecError::Target { target: 0, source } if matches!(**source, SpecError::NameCharacters { .. })),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "target 0: node name \"a b\" has whitespace or control characters"
        );
        assert!(check_name("node", "").is_err());
        assert!(check_name("node", "a b").is_err());
        assert!(check_name("node", &"x".repeat(300)).is_err());
        let mut info = NodeInfo {
            name: "n".into(),
            labels: BTreeMap::new(),
            kernel: String::new(),
            containerd: String::new(),
            shoal: String::new(),
        };
        info.validate().unwrap();
        info.labels.insert("k".into(), "v\n".into());
        assert!(matches!(info.validate(), Err(SpecError::LabelValue { .. })));
    }

    #[test]
    fn targets_select_by_labels_and_names() {
        let s = spec();
        let a: BTreeMap<String, String> = [("group".to_string(), "a".to_string())].into();
        assert!(s.targets[0].selects("node-0", &a));
        assert!(!s.targets[0].selects("node-0", &BTreeMap::new()));
        assert!(s.targets[1].selects("node-1", &BTreeMap::new()));
        assert!(!s.targets[1].selects("node-2", &a));
    }
}
