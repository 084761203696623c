//! The one helper for work that concurrent callers share (DESIGN "Conventions": one helper
//! for each recurring mechanism).
//!
//! - [`InFlight`] is the common part: a keyed map of things in flight, joined or started
//!   under one lock, each entry identified by an [`Entry`] so that only that very entry is
//!   removed (never a newer one started under the same key after it). It suits work that
//!   readers join while it runs and that outlives a plain result (a swarm download streamed
//!   to several readers, an unpacked layer waiting to be claimed).
//! - [`SingleFlight`] is the plain case on top of it: one run per key at a time, in a task
//!   of its own (a caller that goes away cancels nothing, so a cancelled first caller never
//!   leaves the others waiting), its result handed to every caller that joined, and the entry
//!   removed as the run ends, success or failure: nothing is cached here (a failed run is
//!   tried again by the next caller; callers keep successful results where they belong).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::{BoxFuture, FutureExt, Shared};

/// Identifies one entry of an [`InFlight`] map: its key and when it was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<K> {
    key: K,
    id: u64,
}

impl<K> Entry<K> {
    /// The entry's key.
    pub fn key(&self) -> &K {
        &self.key
    }
}

/// What [`InFlight::join_or_start`] found or made.
#[derive(Debug, Clone)]
pub struct Joined<K, V> {
    /// The value in flight under the key.
    pub value: V,
    /// Its entry, for [`InFlight::remove`].
    pub entry: Entry<K>,
    /// Whether this call started it.
    pub started: bool,
}

struct Map<K, V> {
    next_id: u64,
    entries: HashMap<K, (u64, V)>,
}

/// A keyed map of things in flight (see the module documentation). Cloning shares it.
pub struct InFlight<K, V> {
    map: Arc<Mutex<Map<K, V>>>,
}

impl<K, V> Clone for InFlight<K, V> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Default for InFlight<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> InFlight<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self {
            map: Arc::new(Mutex::new(Map {
                next_id: 0,
                entries: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Map<K, V>> {
        // The map stays consistent whatever panicked while it was held.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value in flight under `key`, joined; or, if there is none, the one `start` makes
    /// (given its entry), put there. `start` runs under the map's lock: it must not block
    /// or use this map (spawning a task is fine).
    pub fn join_or_start(&self, key: &K, start: impl FnOnce(&Entry<K>) -> V) -> Joined<K, V> {
        let mut map = self.lock();
        if let Some((id, value)) = map.entries.get(key) {
            return Joined {
                value: value.clone(),
                entry: Entry {
                    key: key.clone(),
                    id: *id,
                },
                started: false,
            };
        }
        let id = map.next_id;
        map.next_id += 1;
        let entry = Entry {
            key: key.clone(),
            id,
        };
        let value = start(&entry);
        map.entries.insert(key.clone(), (id, value.clone()));
        Joined {
            value,
            entry,
            started: true,
        }
    }

    /// The value in flight under `key`, if any.
    pub fn get(&self, key: &K) -> Option<V> {
        self.lock().entries.get(key).map(|(_, v)| v.clone())
    }

    /// Every value in flight.
    pub fn values(&self) -> Vec<V> {
        self.lock()
            .entries
            .values()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes `entry` if it is still the one under its key (a later one is left alone).
    /// Returns whether it was removed.
    pub fn remove(&self, entry: &Entry<K>) -> bool {
        let mut map = self.lock();
        match map.entries.get(&entry.key) {
            Some((id, _)) if *id == entry.id => {
                map.entries.remove(&entry.key);
                true
            }
            _ => false,
        }
    }

    /// A guard that removes `entry` when dropped (at the end of the work, or if it panics).
    pub fn remove_on_drop(&self, entry: Entry<K>) -> RemoveOnDrop<K, V> {
        RemoveOnDrop {
            flights: self.clone(),
            entry,
        }
    }
}

/// Removes its entry from an [`InFlight`] map when dropped.
pub struct RemoveOnDrop<K: Eq + Hash + Clone, V: Clone> {
    flights: InFlight<K, V>,
    entry: Entry<K>,
}

impl<K: Eq + Hash + Clone, V: Clone> Drop for RemoveOnDrop<K, V> {
    fn drop(&mut self) {
        self.flights.remove(&self.entry);
    }
}

/// A shared run ended without a result: its task panicked, or the runtime is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared run ended without a result (it panicked or its runtime shut down)")]
pub struct Abandoned;

type Run<T> = Shared<BoxFuture<'static, Result<T, Abandoned>>>;

/// One run per key at a time, shared by every caller (see the module documentation).
/// Cloning shares it.
pub struct SingleFlight<K, T> {
    runs: InFlight<K, Run<T>>,
}

impl<K, T> Clone for SingleFlight<K, T> {
    fn clone(&self) -> Self {
        Self {
            runs: self.runs.clone(),
        }
    }
}

impl<K, T> Default for SingleFlight<K, T>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, T> SingleFlight<K, T>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// No runs.
    pub fn new() -> Self {
        Self {
            runs: InFlight::new(),
        }
    }

    /// The result of the run under `key`: joined if one is running, else `work` started in
    /// a task of its own (so dropping this future cancels nothing). Must be called within a
    /// tokio runtime. A `T` that is an error is shared like any result (make it cheap to
    /// clone, e.g. `Result<Arc<M>, Arc<E>>`) and not kept after the run.
    pub async fn run<F>(&self, key: K, work: F) -> Result<T, Abandoned>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let joined = self.runs.join_or_start(&key, |entry| {
            let done = self.runs.remove_on_drop(entry.clone());
            let task = tokio::spawn(async move {
                // Removed as the run ends, before its result reaches anyone.
                let _done = done;
                work.await
            });
            async move { task.await.map_err(|_| Abandoned) }
                .boxed()
                .shared()
        });
        joined.value.await
    }

    /// Whether a run under `key` is going on.
    pub fn is_running(&self, key: &K) -> bool {
        self.runs.get(key).is_some()
    }

    /// How many runs are going on.
    pub fn running(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights: SingleFlight<&str, u32> = SingleFlight::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let (go, wait) = oneshot::channel::<()>();
        let first = {
            let (flights, runs) = (flights.clone(), runs.clone());
            tokio::spawn(async move {
                flights
                    .run("k", async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        wait.await.expect("sender kept");
                        7
                    })
                    .await
            })
        };
        // Wait until the first run is in the map, then join it from several callers.
        while !flights.is_running(&"k") {
            tokio::task::yield_now().await;
        }
        let mut others = Vec::new();
        for _ in 0..5 {
            let (flights, runs) = (flights.clone(), runs.clone());
            others.push(tokio::spawn(async move {
                flights
                    .run("k", async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        99
                    })
                    .await
            }));
        }
        tokio::task::yield_now().await;
        go.send(()).expect("run waits");
        assert_eq!(first.await.expect("task"), Ok(7));
        for o in others {
            assert_eq!(o.await.expect("task"), Ok(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(
            flights.running(),
            0,
            "the entry is removed when the run ends"
        );
    }

    #[tokio::test]
    async fn other_keys_run_on_their_own() {
        let flights: SingleFlight<u8, u8> = SingleFlight::new();
        let (a, b) = tokio::join!(flights.run(1, async { 1 }), flights.run(2, async { 2 }));
        assert_eq!((a, b), (Ok(1), Ok(2)));
    }

    #[tokio::test]
    async fn a_failed_run_is_not_cached() {
        let flights: SingleFlight<&str, Result<u32, Arc<String>>> = SingleFlight::new();
        let failed = flights
            .run("k", async { Err(Arc::new("boom".to_string())) })
            .await;
        assert_eq!(failed, Ok(Err(Arc::new("boom".to_string()))));
        assert!(!flights.is_running(&"k"));
        let again = flights.run("k", async { Ok(3) }).await;
        assert_eq!(again, Ok(Ok(3)), "the next caller runs it again");
    }

    #[tokio::test]
    async fn a_cancelled_leader_does_not_wedge_followers() {
        let flights: SingleFlight<&str, u32> = SingleFlight::new();
        let (go, wait) = oneshot::channel::<()>();
        let leader = {
            let flights = flights.clone();
            tokio::spawn(async move {
                flights
                    .run("k", async move {
                        wait.await.expect("sender kept");
                        5
                    })
                    .await
            })
        };
        while !flights.is_running(&"k") {
            tokio::task::yield_now().await;
        }
        let follower = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("k", async { 0 }).await })
        };
        tokio::task::yield_now().await;
        leader.abort();
        assert!(leader.await.expect_err("aborted").is_cancelled());
        go.send(()).expect("the run goes on without its leader");
        let got = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("the follower is not wedged")
            .expect("task");
        assert_eq!(got, Ok(5));
        assert_eq!(flights.running(), 0);
    }

    #[tokio::test]
    async fn a_panicking_run_is_abandoned_and_removed() {
        let flights: SingleFlight<&str, u32> = SingleFlight::new();
        let got = flights.run("k", async { panic!("in the run") }).await;
        assert_eq!(got, Err(Abandoned));
        assert_eq!(flights.running(), 0);
        assert_eq!(flights.run("k", async { 1 }).await, Ok(1));
    }

    #[test]
    fn in_flight_joins_and_removes_only_its_own_entry() {
        let flights: InFlight<&str, Arc<u32>> = InFlight::new();
        let first = flights.join_or_start(&"k", |_| Arc::new(1));
        assert!(first.started);
        let joined = flights.join_or_start(&"k", |_| unreachable!("joined, not started"));
        assert!(!joined.started);
        assert_eq!(joined.entry, first.entry);
        assert!(Arc::ptr_eq(&joined.value, &first.value));
        assert!(flights.remove(&first.entry));
        let second = flights.join_or_start(&"k", |_| Arc::new(2));
        assert!(second.started);
        assert!(
            !flights.remove(&first.entry),
            "an old entry does not remove a newer one"
        );
        assert_eq!(flights.get(&"k").as_deref(), Some(&2));
        assert_eq!(flights.values().len(), 1);
        drop(flights.remove_on_drop(second.entry));
        assert!(flights.is_empty());
    }
}
