//! Health you can see (DESIGN "Health is visible"): one registry of shoald's components
//! (snapshotter, remote path, swarm, mirror, preheat worker, blob cache), each with its
//! [`State`], the reason it is not up and since when. Components report into it; one place
//! renders it, for `shoald status` (`GET /status`, [`report`]) and for `/metrics`
//! ([`http`]), and every change of state is logged once (and told to systemd as `STATUS=`).
//!
//! - [`State::Up`]: working. [`State::Degraded`]: not (fully) working while shoald retries it
//!   or works around it, pulls going on without it (a swarm that could not start and is
//!   retried with backoff, a tracker unreachable for [`GRACE`], the preheat coordinator's
//!   heartbeats failing for [`GRACE`]). [`State::Down`]: not working and not retried (a blob
//!   cache that cannot be opened, a mirror whose configuration is refused, the snapshotter
//!   before its socket serves). [`State::Off`]: not enabled in the configuration.
//! - The decisions are pure functions of what was reported and the time ([`transition`],
//!   [`Outage`], [`swarm_state`], [`Backoff`]), tested without I/O; [`Health`] holds the
//!   state and does the logging.
//! - Seams that report: [`watch::WatchedTrackers`] (every announce, per tracker; the peers
//!   the trackers list), [`watch::LiveSource`] (pulls in flight; switched to the swarm when
//!   it starts late).

pub mod cli;
pub mod http;
pub mod report;
mod state;
#[cfg(test)]
mod tests;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shoal_p2p::cache::BlobCache;

pub use http::HealthMetrics;
pub use state::{
    swarm_state, transition, Backoff, Change, InFlight, InFlightGuard, Outage, Record,
};

/// How long a tracker or the preheat coordinator may fail before its component is degraded
/// (a few missed announces or heartbeats are not an outage).
pub const GRACE: Duration = Duration::from_secs(10);
/// Peers listed by a tracker are shown for this long after they were last listed.
pub const PEER_TTL: Duration = Duration::from_secs(60);

/// One of shoald's components.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// The containerd proxy snapshotter's socket.
    Snapshotter,
    /// The CRI remote (streaming) path behind the snapshotter.
    Remote,
    /// This node's swarm peer (chunk server, announcer, trackers).
    Swarm,
    /// The registry mirror for hosts.toml.
    Mirror,
    /// The preheat worker (heartbeats to the coordinator).
    Preheat,
    /// The blob cache.
    Cache,
}

impl Component {
    /// Every component, in the order status lists them.
    pub const ALL: [Component; 6] = [
        Component::Snapshotter,
        Component::Remote,
        Component::Swarm,
        Component::Mirror,
        Component::Preheat,
        Component::Cache,
    ];

    /// The name in status and in the `component` label.
    pub fn name(self) -> &'static str {
        match self {
            Component::Snapshotter => "snapshotter",
            Component::Remote => "remote",
            Component::Swarm => "swarm",
            Component::Mirror => "mirror",
            Component::Preheat => "preheat",
            Component::Cache => "cache",
        }
    }
}

/// A component's state (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Up,
    Degraded,
    Down,
    Off,
}

impl State {
    /// Every state, for the `state` label.
    pub const ALL: [State; 4] = [State::Up, State::Degraded, State::Down, State::Off];

    /// `up`, `degraded`, `down`, `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Degraded => "degraded",
            State::Down => "down",
            State::Off => "off",
        }
    }

    /// Whether this state is all right for an enabled (or disabled) component.
    pub fn is_ok(self) -> bool {
        matches!(self, State::Up | State::Off)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A peer a tracker listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenPeer {
    pub addr: SocketAddr,
    pub seen: Instant,
}

/// Everything behind [`Health`]'s lock.
#[derive(Debug)]
struct Inner {
    components: BTreeMap<Component, Record>,
    /// Set while the swarm runs: its state is then derived from `trackers`.
    swarm_running: bool,
    trackers: BTreeMap<String, Outage>,
    peers: BTreeMap<String, SeenPeer>,
    node_name: Option<String>,
    cache: Option<BlobCache>,
}

/// The health registry (see the module documentation). Cloning shares it.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<Mutex<Inner>>,
    metrics: HealthMetrics,
    started: Instant,
    /// Layers the snapshotter's remote path is fetching now.
    pub remote_in_flight: InFlight,
    /// Blobs (or ranges) the mirror is serving from the blob source now.
    pub mirror_in_flight: InFlight,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Every component off until it reports.
    pub fn new() -> Self {
        let now = Instant::now();
        let metrics = HealthMetrics::default();
        let components = Component::ALL
            .iter()
            .map(|&c| {
                metrics.show(c, State::Off);
                (c, Record::off(now))
            })
            .collect();
        Self {
            inner: Arc::new(Mutex::new(Inner {
                components,
                swarm_running: false,
                trackers: BTreeMap::new(),
                peers: BTreeMap::new(),
                node_name: None,
                cache: None,
            })),
            metrics,
            started: now,
            remote_in_flight: InFlight::default(),
            mirror_in_flight: InFlight::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The metrics this registry keeps (register them once in the process's registry).
    pub fn metrics(&self) -> &HealthMetrics {
        &self.metrics
    }

    /// `component` is up.
    pub fn up(&self, component: Component) {
        self.set(component, State::Up, None);
    }

    /// `component` reports `state`, with `reason` when it is not up. A change of state is
    /// logged (and counted, and told to systemd).
    pub fn set(&self, component: Component, state: State, reason: Option<String>) {
        self.set_at(component, state, reason, Instant::now());
    }

    /// [`Self::set`] at `now`.
    pub fn set_at(&self, component: Component, state: State, reason: Option<String>, now: Instant) {
        let mut inner = self.lock();
        let change = Self::apply(&mut inner, &self.metrics, component, state, reason, now);
        if matches!(change, Change::State { .. }) {
            let summary = summary(&inner.components);
            drop(inner);
            // Shown by `systemctl status shoald`; without systemd this does nothing.
            let _ = crate::sd_notify::notify(&format!("STATUS={summary}"));
        }
    }

    fn apply(
        inner: &mut Inner,
        metrics: &HealthMetrics,
        component: Component,
        state: State,
        reason: Option<String>,
        now: Instant,
    ) -> Change {
        let prev = inner
            .components
            .entry(component)
            .or_insert_with(|| Record::off(now));
        let (next, change) = transition(prev, state, reason, now);
        *prev = next;
        let name = component.name();
        let reason = prev.reason.as_deref().unwrap_or("");
        match change {
            Change::State { from, held } => {
                metrics.show(component, state);
                let held = held.as_secs();
                match state {
                    State::Up if from == State::Off => {
                        tracing::info!(component = name, "{name} up")
                    }
                    State::Up => {
                        tracing::info!(component = name, "{name} up again after {held} s {from}")
                    }
                    State::Degraded => {
                        metrics.count_degraded(component);
                        tracing::warn!(component = name, "{name} degraded: {reason}")
                    }
                    State::Down => {
                        metrics.count_degraded(component);
                        tracing::error!(component = name, "{name} down: {reason}")
                    }
                    State::Off => tracing::info!(component = name, "{name} off"),
                }
            }
            Change::Reason => tracing::debug!(component = name, "{name} still {state}: {reason}"),
            Change::None => {}
        }
        change
    }

    /// Sets what `component` does (shown next to its state).
    pub fn set_detail(&self, component: Component, detail: impl Into<String>) {
        let mut inner = self.lock();
        let now = Instant::now();
        let record = inner
            .components
            .entry(component)
            .or_insert_with(|| Record::off(now));
        record.detail = Some(detail.into());
    }

    /// `component` could not start (`reason`) and is tried again at `retry_at`: degraded.
    pub fn retrying(&self, component: Component, reason: String, retry_at: Instant) {
        self.set(component, State::Degraded, Some(reason));
        if let Some(r) = self.lock().components.get_mut(&component) {
            r.retry_at = Some(retry_at);
        }
    }

    /// The swarm runs now (its state then follows its trackers) on node `node_name`.
    pub fn swarm_running(&self, node_name: &str, trackers: &[String]) {
        {
            let mut inner = self.lock();
            inner.swarm_running = true;
            inner.node_name = Some(node_name.to_owned());
            for url in trackers {
                inner.trackers.entry(url.clone()).or_default();
            }
        }
        self.refresh_at(Instant::now());
    }

    /// The running swarm stopped (its chunk server failed): down, for `reason`.
    pub fn swarm_stopped(&self, reason: String) {
        self.lock().swarm_running = false;
        self.set(Component::Swarm, State::Down, Some(reason));
    }

    /// The blob cache, for its use in status and metrics.
    pub fn set_cache(&self, cache: BlobCache) {
        self.lock().cache = Some(cache);
    }

    /// One tracker's announce went through (`Ok`) or not, at `now`.
    pub fn tracker_result(&self, url: &str, result: Result<(), String>, now: Instant) {
        {
            let mut inner = self.lock();
            let outage = inner.trackers.entry(url.to_owned()).or_default();
            match result {
                Ok(()) => outage.ok(now),
                Err(e) => outage.failed(e, now),
            }
        }
        self.refresh_at(now);
    }

    /// Peers a tracker listed at `now`.
    pub fn peers_listed<'a>(
        &self,
        peers: impl IntoIterator<Item = (&'a str, SocketAddr)>,
        now: Instant,
    ) {
        let mut inner = self.lock();
        for (id, addr) in peers {
            inner
                .peers
                .insert(id.to_owned(), SeenPeer { addr, seen: now });
        }
        inner
            .peers
            .retain(|_, p| now.saturating_duration_since(p.seen) < PEER_TTL);
    }

    /// Re-derives the time-dependent states (a running swarm's, from its trackers) at `now`.
    pub fn refresh_at(&self, now: Instant) {
        let mut inner = self.lock();
        if !inner.swarm_running {
            return;
        }
        let (state, reason) = swarm_state(&inner.trackers, now, GRACE);
        let change = Self::apply(
            &mut inner,
            &self.metrics,
            Component::Swarm,
            state,
            reason,
            now,
        );
        if matches!(change, Change::State { .. }) {
            let summary = summary(&inner.components);
            drop(inner);
            let _ = crate::sd_notify::notify(&format!("STATUS={summary}"));
        }
    }

    /// One line: every component not up, or that all are (systemd's `STATUS=`).
    pub fn summary(&self) -> String {
        summary(&self.lock().components)
    }

    /// The record of `component`.
    pub fn get(&self, component: Component) -> Record {
        let now = Instant::now();
        self.lock()
            .components
            .get(&component)
            .cloned()
            .unwrap_or_else(|| Record::off(now))
    }

    /// Everything status shows, at `now`.
    pub fn report_at(&self, now: Instant) -> report::StatusReport {
        self.refresh_at(now);
        let inner = self.lock();
        report::StatusReport::build(
            &report::Snapshot {
                components: &inner.components,
                swarm_running: inner.swarm_running,
                trackers: &inner.trackers,
                peers: &inner.peers,
                node_name: inner.node_name.as_deref(),
                cache: inner.cache.as_ref(),
                remote_in_flight: self.remote_in_flight.get(),
                mirror_in_flight: self.mirror_in_flight.get(),
                uptime: now.saturating_duration_since(self.started),
            },
            now,
        )
    }
}

/// One line for systemd's `STATUS=`: every component not up, or that all are.
fn summary(components: &BTreeMap<Component, Record>) -> String {
    let bad: Vec<String> = components
        .iter()
        .filter(|(_, r)| !r.state.is_ok())
        .map(|(c, r)| format!("{} {}", c.name(), r.state))
        .collect();
    match bad.is_empty() {
        true => "all components up".into(),
        false => format!("degraded: {}", bad.join(", ")),
    }
}
