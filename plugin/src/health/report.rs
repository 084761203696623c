//! What `shoald status` shows: [`StatusReport`], built from the health registry at one
//! instant, served as JSON on `GET /status` and rendered for a person by [`render`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shoal_p2p::cache::BlobCache;

use super::{Component, Outage, Record, SeenPeer, State, GRACE};
use crate::report::human_bytes;

/// The health registry's contents, borrowed for [`StatusReport::build`].
pub struct Snapshot<'a> {
    pub components: &'a BTreeMap<Component, Record>,
    pub swarm_running: bool,
    pub trackers: &'a BTreeMap<String, Outage>,
    pub peers: &'a BTreeMap<String, SeenPeer>,
    pub node_name: Option<&'a str>,
    pub cache: Option<&'a BlobCache>,
    pub remote_in_flight: usize,
    pub mirror_in_flight: usize,
    pub uptime: Duration,
}

/// `GET /status`: shoald's health (the JSON `shoald status --json` prints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// shoald's version.
    pub version: String,
    /// `up` when every enabled component is up, else `degraded`.
    pub state: State,
    pub uptime_secs: u64,
    /// Every component, in a fixed order.
    pub components: Vec<ComponentStatus>,
    /// The swarm's node name, trackers and peers (when the swarm is enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<SwarmStatus>,
    /// The blob cache's use (when it is open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStatus>,
    pub pulls_in_flight: PullsInFlight,
}

/// One component in [`StatusReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub state: State,
    /// Why it is not up (the error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Seconds in this state.
    pub since_secs: u64,
    /// Seconds until shoald tries it again, while it is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_secs: Option<u64>,
}

/// The swarm in [`StatusReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmStatus {
    /// Whether the swarm runs (false while it is retried).
    pub running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub trackers: Vec<TrackerStatus>,
    /// Peers the trackers listed in the last minute.
    pub peers: Vec<PeerStatus>,
}

/// One tracker: reachable at the last announce or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerStatus {
    pub url: String,
    /// `None` before the first announce.
    pub reachable: Option<bool>,
    /// Seconds it has been failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A peer a tracker listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub id: String,
    pub addr: String,
    /// Seconds since a tracker last listed it.
    pub seen_secs: u64,
}

/// The blob cache's use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatus {
    pub dir: String,
    pub bytes: u64,
    pub blobs: u64,
    pub max_bytes: u64,
}

/// Fetches running now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullsInFlight {
    /// Layers the snapshotter's remote path is fetching.
    pub snapshotter: u64,
    /// Blobs or ranges the mirror is serving from the blob source.
    pub mirror: u64,
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

impl StatusReport {
    /// The report of `s` at `now`.
    pub fn build(s: &Snapshot<'_>, now: Instant) -> Self {
        let components: Vec<ComponentStatus> = Component::ALL
            .iter()
            .map(|&c| {
                let r = s
                    .components
                    .get(&c)
                    .cloned()
                    .unwrap_or_else(|| Record::off(now));
                ComponentStatus {
                    name: c.name().into(),
                    state: r.state,
                    reason: r.reason,
                    detail: r.detail,
                    since_secs: secs(now.saturating_duration_since(r.since)),
                    retry_in_secs: r.retry_at.map(|t| secs(t.saturating_duration_since(now))),
                }
            })
            .collect();
        let state = match components.iter().all(|c| c.state.is_ok()) {
            true => State::Up,
            false => State::Degraded,
        };
        let swarm_enabled = s
            .components
            .get(&Component::Swarm)
            .is_some_and(|r| r.state != State::Off);
        let swarm = swarm_enabled.then(|| SwarmStatus {
            running: s.swarm_running,
            node: s.node_name.map(str::to_owned),
            trackers: s
                .trackers
                .iter()
                .map(|(url, o)| TrackerStatus {
                    url: url.clone(),
                    reachable: match (o.failing_since, o.last_ok) {
                        (Some(_), _) => Some(false),
                        (None, Some(_)) => Some(true),
                        (None, None) => None,
                    },
                    failing_secs: o.out_for(now).map(secs),
                    error: o.last_error.clone(),
                })
                .collect(),
            peers: s
                .peers
                .iter()
                .map(|(id, p)| PeerStatus {
                    id: id.clone(),
                    addr: p.addr.to_string(),
                    seen_secs: secs(now.saturating_duration_since(p.seen)),
                })
                .collect(),
        });
        let cache = s.cache.map(|c| CacheStatus {
            dir: c.dir().display().to_string(),
            bytes: c.bytes(),
            blobs: c.len() as u64,
            max_bytes: c.max_bytes(),
        });
        Self {
            version: env!("CARGO_PKG_VERSION").into(),
            state,
            uptime_secs: secs(s.uptime),
            components,
            swarm,
            cache,
            pulls_in_flight: PullsInFlight {
                snapshotter: s.remote_in_flight as u64,
                mirror: s.mirror_in_flight as u64,
            },
        }
    }

    /// `shoald status`'s exit status: 0 when every enabled component is up, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self.components.iter().all(|c| c.state.is_ok()) {
            true => 0,
            false => 1,
        }
    }
}

/// `12 s`, `3 min 4 s`, `2 h 5 min`.
pub fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The report for a person, `address` being where it came from.
pub fn render(r: &StatusReport, address: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shoald {} at {address}: {} (up {})",
        r.version,
        match r.state {
            State::Up => "all components up",
            _ => "DEGRADED",
        },
        human_secs(r.uptime_secs)
    );
    for c in &r.components {
        let mut line = format!("  {:<12} {:<9}", c.name, c.state.as_str());
        if c.state != State::Off {
            let _ = write!(line, " for {}", human_secs(c.since_secs));
        }
        if let Some(d) = &c.detail {
            let _ = write!(line, ": {d}");
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if let Some(reason) = &c.reason {
            let _ = writeln!(out, "               why: {reason}");
        }
        if let Some(n) = c.retry_in_secs {
            let _ = writeln!(out, "               next attempt in {}", human_secs(n));
        }
    }
    if let Some(s) = &r.swarm {
        let node = s
            .node
            .as_deref()
            .map(|n| format!(" (node {n})"))
            .unwrap_or_default();
        let _ = writeln!(out, "swarm{node}:");
        if s.trackers.is_empty() && !s.running {
            let _ = writeln!(out, "  trackers: not contacted (the swarm is not running)");
        }
        for t in &s.trackers {
            let state = match (t.reachable, t.failing_secs) {
                (None, _) => "not contacted yet".to_string(),
                (Some(true), _) => "reachable".to_string(),
                (Some(false), Some(f)) => format!(
                    "UNREACHABLE for {}{}",
                    human_secs(f),
                    if f < GRACE.as_secs() {
                        " (not yet degraded)"
                    } else {
                        ""
                    }
                ),
                (Some(false), None) => "UNREACHABLE".to_string(),
            };
            let _ = writeln!(out, "  tracker {}: {state}", t.url);
            if let Some(e) = &t.error {
                let _ = writeln!(out, "    {e}");
            }
        }
        let _ = writeln!(out, "  peers listed in the last minute: {}", s.peers.len());
        for p in &s.peers {
            let _ = writeln!(
                out,
                "    {} {} ({} ago)",
                p.id,
                p.addr,
                human_secs(p.seen_secs)
            );
        }
    }
    if let Some(c) = &r.cache {
        let _ = writeln!(
            out,
            "blob cache {}: {} of {} in {} blobs",
            c.dir,
            human_bytes(c.bytes),
            human_bytes(c.max_bytes),
            c.blobs
        );
    }
    let _ = writeln!(
        out,
        "pulls in flight: {} layers (snapshotter), {} blobs (mirror)",
        r.pulls_in_flight.snapshotter, r.pulls_in_flight.mirror
    );
    out
}
