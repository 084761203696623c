//! [`HttpTrackers`]: the node's client of every tracker instance (routes in [`super::proto`]).
//!
//! Announces are deltas ([`DeltaAnnounce`]) against what each tracker acknowledged last: the
//! whole state first, after any failure, and whenever the tracker asks for it; then only the
//! blobs that changed. A tracker that does not know the delta route (`404`/`405`: it predates
//! it) gets whole-state announces on the older route, and is asked again every
//! [`LEGACY_RECHECK`].
//!
//! A delta tracker paces its nodes ([`DeltaReply::min_interval_ms`] and
//! [`DeltaReply::peer_list_interval_ms`], growing with the peers it tracks): a round sooner
//! than its announce interval skips that tracker (the changes go with the next delta), and a
//! peer list of a blob asked again sooner than its peer-list interval is the one it gave last
//! (sooner than half of it, for a starved download: [`super::proto::reuse_kept_list`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{join_all, BoxFuture};
use reqwest::StatusCode;

use super::error::message;
use super::proto::{Announce, ChunkSet, DeltaAnnounce, DeltaReply, PeerEntry, PeerList};
use super::{Failure, Request, Tracker, TrackerError};
use crate::chunk::ChunkManifest;
use crate::digest::Digest;
use crate::tls::{Expect, TlsError, Transport};

/// Most bytes of a tracker answer read (peer lists and chunk manifests are far smaller: a
/// manifest of a 10 GiB blob in 4 MiB chunks is ~200 KiB).
pub(super) const MAX_BODY: usize = 16 << 20;

/// How long a tracker without the delta route gets whole-state announces before it is tried
/// again (it may have been upgraded).
pub const LEGACY_RECHECK: Duration = Duration::from_secs(600);

/// What the node knows of one tracker's copy of its state.
#[derive(Debug, Default)]
struct DeltaState {
    /// The last `seq` sent.
    seq: u64,
    /// The last announce the tracker took, with its `seq`.
    acked: Option<(u64, Announce)>,
    /// The tracker has no delta route: whole-state announces until then.
    legacy_until: Option<Instant>,
    /// No announce to this tracker before then (its pacing), unless it needs a whole state.
    next_announce: Option<Instant>,
    /// Reuse a peer list of a blob this long (its pacing).
    peer_list_interval: Duration,
    /// The last peer list of each blob from this tracker, with when it was asked.
    lists: HashMap<Digest, (Instant, PeerList)>,
}

/// The tracker instances, all asked (announces and peer lists) or tried in turn (chunk
/// manifests).
#[derive(Clone, Debug)]
pub struct HttpTrackers {
    urls: Vec<String>,
    http: reqwest::Client,
    /// Per tracker, in the order of `urls`.
    deltas: Arc<Vec<Mutex<DeltaState>>>,
}

/// One tracker's answer, read whole (bounded).
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    /// An error answer as a failure: its status and what its [`super::proto::ErrorBody`]
    /// says (or the start of the body).
    fn refused(&self) -> Failure {
        Failure::Status {
            status: self.status,
            message: message(&self.body),
        }
    }
}

/// Tracker `url` failed `request` for `failure`.
fn failed(url: &str, request: Request, failure: Failure) -> TrackerError {
    TrackerError::Request {
        url: url.to_owned(),
        request,
        failure,
    }
}

impl DeltaState {
    /// The tracker took announce `seq` (state `announce`, sent at `sent`) and answered
    /// `reply`. The pacing counts from when it was sent, so that the announcer's own 200 ms
    /// after a round is never a hair too short.
    fn took(&mut self, seq: u64, announce: &Announce, sent: Instant, reply: &DeltaReply) {
        self.acked = Some((seq, announce.clone()));
        let now = Instant::now();
        self.next_announce = Some(sent + Duration::from_millis(reply.min_interval_ms));
        self.peer_list_interval = Duration::from_millis(reply.peer_list_interval_ms);
        let keep = self.peer_list_interval;
        self.lists
            .retain(|_, (at, _)| now.duration_since(*at) < keep);
    }

    /// The last peer list of `digest`, if the pacing says to use it again for a `fresh` ask
    /// or not ([`super::proto::reuse_kept_list`]).
    fn recent_list(&self, digest: &Digest, fresh: bool) -> Option<PeerList> {
        let (at, list) = self.lists.get(digest)?;
        super::proto::reuse_kept_list(at.elapsed(), self.peer_list_interval, fresh)
            .then(|| list.clone())
    }
}

impl HttpTrackers {
    /// Clients of the trackers at `urls` (base URLs such as `https://10.0.0.1:7080`; a
    /// trailing slash is dropped) over `transport`. Over TLS only a registry-side
    /// certificate is accepted as tracker and chunk-manifest service.
    pub fn new(
        urls: Vec<String>,
        transport: &Transport,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, TlsError> {
        let urls: Vec<String> = urls
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        Ok(Self {
            deltas: Arc::new(urls.iter().map(|_| Mutex::default()).collect()),
            urls,
            http: transport.http_client_for(
                Expect::RegistrySide,
                connect_timeout,
                request_timeout,
            )?,
        })
    }

    /// The trackers' base URLs (without trailing slash).
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Sends `request` and reads the answer (at most [`MAX_BODY`] bytes); `Err` is a
    /// transport failure or an answer too long.
    async fn call(request: reqwest::RequestBuilder) -> Result<Answer, Failure> {
        let mut response = request.send().await.map_err(Failure::transport)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(piece) = response.chunk().await.map_err(Failure::transport)? {
            if body.len() + piece.len() > MAX_BODY {
                return Err(Failure::TooLong {
                    status,
                    limit: MAX_BODY,
                });
            }
            body.extend_from_slice(&piece);
        }
        Ok(Answer { status, body })
    }

    /// Announces to every tracker at once (a delta where the tracker takes them): each
    /// tracker's URL with its answer (why it refused or could not be reached: a
    /// [`TrackerError::Request`]), in the order of [`Self::urls`].
    pub async fn announce_each(
        &self,
        announce: &Announce,
    ) -> Vec<(&str, Result<(), TrackerError>)> {
        let calls = self.urls.iter().enumerate().map(|(i, url)| async move {
            (url.as_str(), self.announce_to(i, url, announce).await)
        });
        join_all(calls).await
    }

    fn delta_state(&self, i: usize) -> std::sync::MutexGuard<'_, DeltaState> {
        self.deltas[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One tracker's announce round: a delta (and the whole state if the tracker asks for
    /// it), or a whole-state announce on the older route for a tracker without deltas.
    async fn announce_to(
        &self,
        i: usize,
        url: &str,
        announce: &Announce,
    ) -> Result<(), TrackerError> {
        let delta = {
            let mut state = self.delta_state(i);
            let now = Instant::now();
            let paced = state.next_announce.is_some_and(|t| now < t);
            if let (Some((_, taken)), true) = (&state.acked, paced) {
                // Paced: the changes go with the next delta; but a blob the tracker was not
                // told of (a download that just started) goes at once.
                if !announce.names_new_blob(taken) {
                    return Ok(());
                }
            }
            match state.legacy_until {
                Some(until) if now < until => None,
                _ => {
                    state.seq += 1;
                    Some(DeltaAnnounce::between(
                        state.acked.as_ref(),
                        announce,
                        state.seq,
                    ))
                }
            }
        };
        let Some(delta) = delta else {
            return self.announce_whole(url, announce).await;
        };
        let sent = Instant::now();
        match self.send_delta(url, &delta).await {
            Ok(Some(reply)) if !reply.full_state_needed => {
                self.delta_state(i).took(delta.seq, announce, sent, &reply);
                return Ok(());
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::info!(tracker = %url, "tracker without delta announces: sending whole states");
                {
                    let mut state = self.delta_state(i);
                    state.legacy_until = Some(Instant::now() + LEGACY_RECHECK);
                    state.acked = None;
                }
                return self.announce_whole(url, announce).await;
            }
            Err(e) => {
                self.delta_state(i).acked = None;
                return Err(e);
            }
        }
        // The tracker lost track (it restarted, a delta was lost, this node expired).
        let full = {
            let mut state = self.delta_state(i);
            state.seq += 1;
            state.acked = None;
            DeltaAnnounce::full(announce, state.seq)
        };
        match self.send_delta(url, &full).await? {
            Some(reply) if !reply.full_state_needed => {
                self.delta_state(i).took(full.seq, announce, sent, &reply);
                Ok(())
            }
            _ => Err(failed(
                url,
                delta_request(&full),
                Failure::WholeStateRefused,
            )),
        }
    }

    /// `POST /v1/announce/delta`: the reply, or `None` when the tracker has no such route.
    async fn send_delta(
        &self,
        url: &str,
        delta: &DeltaAnnounce,
    ) -> Result<Option<DeltaReply>, TrackerError> {
        let request = self
            .http
            .post(format!("{url}/v1/announce/delta"))
            .json(delta);
        let fail = |failure| failed(url, delta_request(delta), failure);
        let answer = Self::call(request).await.map_err(fail)?;
        match answer.status {
            s if s.is_success() => serde_json::from_slice(&answer.body)
                .map(Some)
                .map_err(|e| fail(Failure::Decode(e))),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Ok(None),
            _ => Err(fail(answer.refused())),
        }
    }

    /// `POST /v1/announce`: the whole state.
    async fn announce_whole(&self, url: &str, announce: &Announce) -> Result<(), TrackerError> {
        let request = self.http.post(format!("{url}/v1/announce")).json(announce);
        match Self::call(request).await {
            Ok(a) if a.status.is_success() => Ok(()),
            Ok(a) => Err(failed(url, Request::Announce, a.refused())),
            Err(e) => Err(failed(url, Request::Announce, e)),
        }
    }

    /// What a round of [`Self::announce_each`] means: one tracker taking the announce is
    /// enough; otherwise [`TrackerError::Unavailable`] with every tracker's failure.
    pub fn announce_outcome(
        announce: &Announce,
        answers: Vec<(&str, Result<(), TrackerError>)>,
    ) -> Result<(), TrackerError> {
        let accepted = answers.iter().filter(|(_, r)| r.is_ok()).count();
        let failures: Vec<TrackerError> =
            answers.into_iter().filter_map(|(_, r)| r.err()).collect();
        if accepted > 0 {
            for f in &failures {
                tracing::debug!(peer_id = %announce.peer_id, "announce refused: {f}");
            }
            return Ok(());
        }
        if failures.is_empty() {
            return Err(TrackerError::NoTracker);
        }
        Err(TrackerError::Unavailable { failures })
    }

    async fn announce_all(&self, announce: &Announce) -> Result<(), TrackerError> {
        Self::announce_outcome(announce, self.announce_each(announce).await)
    }

    /// One tracker's peer list of `digest`: the last one while its pacing says to use it
    /// again, for a starved download's `fresh` ask or not.
    async fn peer_list(
        &self,
        i: usize,
        url: &str,
        digest: &Digest,
        self_id: &str,
        fresh: bool,
    ) -> Result<PeerList, TrackerError> {
        if let Some(list) = self.delta_state(i).recent_list(digest, fresh) {
            return Ok(list);
        }
        // Paced from when it was asked, as the scheduler's refreshes are.
        let asked = Instant::now();
        let list = self.ask_peer_list(url, digest, self_id).await?;
        let mut state = self.delta_state(i);
        // A short list is not kept (it costs the tracker little; the next refresh asks again).
        if !state.peer_list_interval.is_zero() && super::proto::reusable_list(&list.peers, self_id)
        {
            state.lists.insert(digest.clone(), (asked, list.clone()));
        }
        Ok(list)
    }

    async fn ask_peer_list(
        &self,
        url: &str,
        digest: &Digest,
        self_id: &str,
    ) -> Result<PeerList, TrackerError> {
        let request = self
            .http
            .get(format!("{url}/v1/peers/{digest}"))
            .query(&[("peer", self_id)]);
        let fail = |failure| {
            failed(
                url,
                Request::Peers {
                    digest: digest.clone(),
                },
                failure,
            )
        };
        let answer = Self::call(request).await.map_err(fail)?;
        if answer.status != StatusCode::OK {
            return Err(fail(answer.refused()));
        }
        let list: PeerList =
            serde_json::from_slice(&answer.body).map_err(|e| fail(Failure::Decode(e)))?;
        if list.digest != *digest {
            return Err(fail(Failure::OtherBlob { got: list.digest }));
        }
        Ok(list)
    }

    /// Every tracker's peer list of `digest`, merged; `fresh`: for a starved download
    /// ([`Tracker::fresh_peers`]).
    async fn all_peers(
        &self,
        digest: &Digest,
        self_id: &str,
        fresh: bool,
    ) -> Result<Vec<PeerEntry>, TrackerError> {
        let results = join_all(
            self.urls
                .iter()
                .enumerate()
                .map(|(i, url)| self.peer_list(i, url, digest, self_id, fresh)),
        )
        .await;
        let mut lists = Vec::new();
        let mut failures = Vec::new();
        for r in results {
            match r {
                Ok(list) => lists.push(list.peers),
                Err(e) => failures.push(e),
            }
        }
        if lists.is_empty() {
            if failures.is_empty() {
                return Err(TrackerError::NoTracker);
            }
            return Err(TrackerError::Unavailable { failures });
        }
        for f in &failures {
            tracing::debug!("peer list: {f}");
        }
        Ok(merge_peer_lists(digest, lists, self_id))
    }

    async fn find_manifest(
        &self,
        registry: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<ChunkManifest, TrackerError> {
        let n = self.urls.len();
        if n == 0 {
            return Err(TrackerError::NoTracker);
        }
        let first = fastrand::usize(..n);
        let mut bad: Option<TrackerError> = None;
        let mut not_found = Vec::new();
        let mut failures = Vec::new();
        for k in 0..n {
            let url = &self.urls[(first + k) % n];
            let request = self
                .http
                .get(format!("{url}/v1/chunk-manifests/{digest}"))
                .query(&[("registry", registry), ("repository", repository)]);
            let fail = |failure| {
                failed(
                    url,
                    Request::ChunkManifest {
                        digest: digest.clone(),
                    },
                    failure,
                )
            };
            let answer = match Self::call(request).await {
                Ok(a) => a,
                Err(e) => {
                    failures.push(fail(e));
                    continue;
                }
            };
            match answer.status {
                StatusCode::OK => match check_manifest(&answer.body, digest) {
                    Ok(m) => return Ok(m),
                    Err(failure) => {
                        let e = fail(failure);
                        tracing::warn!("{e}");
                        bad.get_or_insert(e);
                    }
                },
                StatusCode::NOT_FOUND => not_found.push(fail(answer.refused())),
                _ => failures.push(fail(answer.refused())),
            }
        }
        if let Some(bad) = bad {
            return Err(bad);
        }
        if !not_found.is_empty() {
            not_found.extend(failures);
            return Err(TrackerError::NoManifest {
                digest: digest.clone(),
                answers: not_found,
            });
        }
        Err(TrackerError::Unavailable { failures })
    }
}

/// The request that sends `delta`.
fn delta_request(delta: &DeltaAnnounce) -> Request {
    Request::DeltaAnnounce {
        seq: delta.seq,
        whole: delta.base.is_none(),
    }
}

/// Parses a chunk manifest answer and checks it is valid and of `digest`.
fn check_manifest(body: &[u8], digest: &Digest) -> Result<ChunkManifest, Failure> {
    // `from_json` validates the chunk size and count.
    let manifest = ChunkManifest::from_json(body).map_err(Failure::Manifest)?;
    if manifest.digest != *digest {
        return Err(Failure::OtherBlob {
            got: manifest.digest,
        });
    }
    Ok(manifest)
}

/// Merges the trackers' peer lists of `digest`: one entry per peer, its chunk sets united
/// (when the chunk counts agree; otherwise the first one seen is kept), ordered by the best
/// position it had in any list (ties: the order first seen), without `self_id`. Entries whose
/// chunk set is malformed are skipped.
pub(crate) fn merge_peer_lists(
    digest: &Digest,
    lists: Vec<Vec<PeerEntry>>,
    self_id: &str,
) -> Vec<PeerEntry> {
    struct Merged {
        position: usize,
        seen: usize,
        entry: PeerEntry,
        set: ChunkSet,
    }
    let mut merged: HashMap<String, Merged> = HashMap::new();
    let mut seen = 0;
    for list in lists {
        for (position, entry) in list.into_iter().enumerate() {
            if entry.peer_id == self_id {
                continue;
            }
            let set = match entry.set() {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(peer = %entry.peer_id, "peer list of {digest}: skipped: {e}");
                    continue;
                }
            };
            match merged.get_mut(&entry.peer_id) {
                Some(m) => {
                    m.position = m.position.min(position);
                    if m.set.len() == set.len() {
                        for i in set.iter() {
                            m.set.insert(i);
                        }
                    } else {
                        tracing::debug!(
                            peer = %entry.peer_id,
                            "peer list of {digest}: {} chunks here, {} elsewhere; kept the first",
                            set.len(),
                            m.set.len()
                        );
                    }
                }
                None => {
                    seen += 1;
                    merged.insert(
                        entry.peer_id.clone(),
                        Merged {
                            position,
                            seen,
                            entry,
                            set,
                        },
                    );
                }
            }
        }
    }
    let mut out: Vec<Merged> = merged.into_values().collect();
    out.sort_by_key(|m| (m.position, m.seen));
    out.into_iter()
        .map(|m| PeerEntry {
            have: m.set.encode(),
            ..m.entry
        })
        .collect()
}

impl Tracker for HttpTrackers {
    fn announce<'a>(&'a self, announce: &'a Announce) -> BoxFuture<'a, Result<(), TrackerError>> {
        Box::pin(self.announce_all(announce))
    }

    fn peers<'a>(
        &'a self,
        digest: &'a Digest,
        self_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PeerEntry>, TrackerError>> {
        Box::pin(self.all_peers(digest, self_id, false))
    }

    fn fresh_peers<'a>(
        &'a self,
        digest: &'a Digest,
        self_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PeerEntry>, TrackerError>> {
        Box::pin(self.all_peers(digest, self_id, true))
    }

    fn chunk_manifest<'a>(
        &'a self,
        registry: &'a str,
        repository: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<ChunkManifest, TrackerError>> {
        Box::pin(self.find_manifest(registry, repository, digest))
    }
}
