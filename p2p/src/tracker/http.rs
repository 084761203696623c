//! [`HttpTrackers`]: the node's client of every tracker instance (routes in [`super::proto`]).

use std::collections::HashMap;
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use reqwest::StatusCode;

use super::proto::{Announce, ChunkSet, PeerEntry, PeerList};
use super::{Tracker, TrackerError};
use crate::chunk::ChunkManifest;
use crate::digest::Digest;
use crate::peer::{error_chain, error_text};
use crate::tls::{Expect, TlsError, Transport};

/// Most bytes of a tracker answer read (peer lists and chunk manifests are far smaller: a
/// manifest of a 10 GiB blob in 4 MiB chunks is ~200 KiB).
const MAX_BODY: usize = 16 << 20;

/// The tracker instances, all asked (announces and peer lists) or tried in turn (chunk
/// manifests).
#[derive(Clone, Debug)]
pub struct HttpTrackers {
    urls: Vec<String>,
    http: reqwest::Client,
}

/// One tracker's answer, read whole (bounded).
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    /// What an error answer says: its status and [`super::proto::ErrorBody`], or the start
    /// of the body.
    fn explain(&self) -> String {
        format!("status {}: {}", self.status, error_text(&self.body))
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
        let urls = urls
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        Ok(Self {
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
    /// transport failure, described.
    async fn call(request: reqwest::RequestBuilder) -> Result<Answer, String> {
        let mut response = request.send().await.map_err(|e| error_chain(&e))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(piece) = response.chunk().await.map_err(|e| error_chain(&e))? {
            if body.len() + piece.len() > MAX_BODY {
                return Err(format!(
                    "status {status}: answer longer than {MAX_BODY} bytes"
                ));
            }
            body.extend_from_slice(&piece);
        }
        Ok(Answer { status, body })
    }

    /// Announces to every tracker at once: each tracker's URL with its answer (why it refused
    /// or could not be reached), in the order of [`Self::urls`].
    pub async fn announce_each(&self, announce: &Announce) -> Vec<(&str, Result<(), String>)> {
        let calls = self.urls.iter().map(|url| async move {
            let request = self.http.post(format!("{url}/v1/announce")).json(announce);
            let answer = match Self::call(request).await {
                Ok(a) if a.status.is_success() => Ok(()),
                Ok(a) => Err(a.explain()),
                Err(e) => Err(e),
            };
            (url.as_str(), answer)
        });
        join_all(calls).await
    }

    /// What a round of [`Self::announce_each`] means: one tracker taking the announce is
    /// enough; otherwise every tracker's failure, each prefixed with its URL.
    pub fn announce_outcome(
        announce: &Announce,
        answers: Vec<(&str, Result<(), String>)>,
    ) -> Result<(), TrackerError> {
        let accepted = answers.iter().filter(|(_, r)| r.is_ok()).count();
        let failures: Vec<String> = answers
            .into_iter()
            .filter_map(|(url, r)| r.err().map(|e| format!("{url}: {e}")))
            .collect();
        if accepted > 0 {
            for f in &failures {
                tracing::debug!(peer_id = %announce.peer_id, "announce refused: {f}");
            }
            return Ok(());
        }
        if failures.is_empty() {
            return Err(TrackerError::Unavailable(vec![
                "no tracker configured".into()
            ]));
        }
        Err(TrackerError::Unavailable(failures))
    }

    async fn announce_all(&self, announce: &Announce) -> Result<(), TrackerError> {
        Self::announce_outcome(announce, self.announce_each(announce).await)
    }

    /// One tracker's peer list of `digest`.
    async fn peer_list(
        &self,
        url: &str,
        digest: &Digest,
        self_id: &str,
    ) -> Result<PeerList, String> {
        let request = self
            .http
            .get(format!("{url}/v1/peers/{digest}"))
            .query(&[("peer", self_id)]);
        let answer = Self::call(request)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if answer.status != StatusCode::OK {
            return Err(format!("{url}: peers of {digest}: {}", answer.explain()));
        }
        let list: PeerList = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("{url}: peers of {digest}: malformed answer: {e}"))?;
        if list.digest != *digest {
            return Err(format!(
                "{url}: asked for peers of {digest}, got peers of {}",
                list.digest
            ));
        }
        Ok(list)
    }

    async fn all_peers(
        &self,
        digest: &Digest,
        self_id: &str,
    ) -> Result<Vec<PeerEntry>, TrackerError> {
        let results = join_all(
            self.urls
                .iter()
                .map(|url| self.peer_list(url, digest, self_id)),
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
                failures.push("no tracker configured".into());
            }
            return Err(TrackerError::Unavailable(failures));
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
            return Err(TrackerError::Unavailable(vec![
                "no tracker configured".into()
            ]));
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
            let answer = match Self::call(request).await {
                Ok(a) => a,
                Err(e) => {
                    failures.push(format!("{url}: {e}"));
                    continue;
                }
            };
            match answer.status {
                StatusCode::OK => match check_manifest(&answer.body, digest) {
                    Ok(m) => return Ok(m),
                    Err(reason) => {
                        tracing::warn!(tracker = %url, "chunk manifest of {digest}: {reason}");
                        bad.get_or_insert(TrackerError::BadResponse {
                            url: url.clone(),
                            reason: format!("chunk manifest of {digest}: {reason}"),
                        });
                    }
                },
                StatusCode::NOT_FOUND => not_found.push(format!("{url}: {}", answer.explain())),
                _ => failures.push(format!(
                    "{url}: chunk manifest of {digest}: {}",
                    answer.explain()
                )),
            }
        }
        if let Some(bad) = bad {
            return Err(bad);
        }
        if !not_found.is_empty() {
            not_found.extend(failures);
            return Err(TrackerError::NoManifest {
                digest: digest.clone(),
                reason: not_found.join("; "),
            });
        }
        Err(TrackerError::Unavailable(failures))
    }
}

/// Parses a chunk manifest answer and checks it is valid and of `digest`.
fn check_manifest(body: &[u8], digest: &Digest) -> Result<ChunkManifest, String> {
    // `from_json` validates the chunk size and count.
    let manifest = ChunkManifest::from_json(body).map_err(|e| e.to_string())?;
    if manifest.digest != *digest {
        return Err(format!("answer is the manifest of {}", manifest.digest));
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
        Box::pin(self.all_peers(digest, self_id))
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
