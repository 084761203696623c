//! The pure decisions of the health registry: how a report changes a component's
//! [`Record`] ([`transition`]), when something reached periodically is out ([`Outage`]),
//! a running swarm's state from its trackers ([`swarm_state`]), retry delays ([`Backoff`]),
//! and the [`InFlight`] counter. Functions of what was reported and the time, no I/O.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::State;

/// What is known of one component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub state: State,
    /// Why it is not up (the error), when it is not.
    pub reason: Option<String>,
    /// What it does when up (e.g. where layers come from).
    pub detail: Option<String>,
    /// When it entered `state`.
    pub since: Instant,
    /// When shoald tries it again, while it is retried.
    pub retry_at: Option<Instant>,
}

impl Record {
    /// A component not enabled, from `now`.
    pub fn off(now: Instant) -> Self {
        Self {
            state: State::Off,
            reason: None,
            detail: None,
            since: now,
            retry_at: None,
        }
    }
}

/// What a report changes ([`transition`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Same state and reason.
    None,
    /// Same state, another reason (not logged as a change of state).
    Reason,
    /// Another state; `held` is how long the previous one lasted.
    State { from: State, held: Duration },
}

/// The record after `component` reported `state` (with `reason`) at `now`, and what changed.
/// `since` moves only when the state changes.
pub fn transition(
    prev: &Record,
    state: State,
    reason: Option<String>,
    now: Instant,
) -> (Record, Change) {
    let change = if prev.state != state {
        Change::State {
            from: prev.state,
            held: now.saturating_duration_since(prev.since),
        }
    } else if prev.reason != reason {
        Change::Reason
    } else {
        Change::None
    };
    let since = match change {
        Change::State { .. } => now,
        _ => prev.since,
    };
    let record = Record {
        state,
        reason: if state == State::Up || state == State::Off {
            None
        } else {
            reason
        },
        detail: prev.detail.clone(),
        since,
        retry_at: None,
    };
    (record, change)
}

/// Successes and failures of something reached periodically (a tracker, the coordinator).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outage {
    /// When the current run of failures began (`None`: the last attempt worked, or none yet).
    pub failing_since: Option<Instant>,
    /// The last failure's error.
    pub last_error: Option<String>,
    /// The last success.
    pub last_ok: Option<Instant>,
}

impl Outage {
    /// Records a success at `now`.
    pub fn ok(&mut self, now: Instant) {
        self.failing_since = None;
        self.last_error = None;
        self.last_ok = Some(now);
    }

    /// Records a failure at `now`.
    pub fn failed(&mut self, error: String, now: Instant) {
        self.failing_since.get_or_insert(now);
        self.last_error = Some(error);
    }

    /// How long it has been failing at `now` (`None` while it works).
    pub fn out_for(&self, now: Instant) -> Option<Duration> {
        self.failing_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// Whether it has been failing for at least `grace` at `now`.
    pub fn is_out(&self, now: Instant, grace: Duration) -> bool {
        self.out_for(now).is_some_and(|d| d >= grace)
    }
}

/// The state of a *running* swarm from its trackers at `now`: degraded while any tracker has
/// been unreachable for `grace`, naming each such tracker and its last error.
pub fn swarm_state(
    trackers: &BTreeMap<String, Outage>,
    now: Instant,
    grace: Duration,
) -> (State, Option<String>) {
    let out: Vec<String> = trackers
        .iter()
        .filter(|(_, o)| o.is_out(now, grace))
        .map(|(url, o)| {
            format!(
                "tracker {url} unreachable: {}",
                o.last_error.as_deref().unwrap_or("no answer")
            )
        })
        .collect();
    match out.is_empty() {
        true => (State::Up, None),
        false => (State::Degraded, Some(out.join("; "))),
    }
}

/// Delays between attempts to start something again: `first`, doubling, at most `max`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `first` (at least 1 ms), doubles up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        let first = first.max(Duration::from_millis(1));
        Self {
            next: first,
            max: max.max(first),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

impl Default for Backoff {
    /// 2 s, 4 s, ... at most a minute.
    fn default() -> Self {
        Self::new(Duration::from_secs(2), Duration::from_secs(60))
    }
}

/// Requests being served now (a counter; [`InFlight::enter`] counts one until dropped).
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<AtomicUsize>);

/// One request counted by [`InFlight`] until it is dropped.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl InFlight {
    /// Counts one more until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.0.clone())
    }

    /// How many now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
