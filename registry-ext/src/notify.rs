//! The push hook: `POST /v1/registry-events` on its own listener, where the registry's
//! notifications (distribution's `notifications.endpoints`) are sent.
//!
//! - The registry cannot present a client certificate, so this listener is plain HTTP (keep it
//!   on loopback or a network only the registry reaches) and every request must carry
//!   `Authorization: Bearer <notifications.token>`; anything else gets `401` before its body
//!   is read.
//! - A body that is not an event envelope (`{"events": [...]}`, distribution's
//!   `application/vnd.docker.distribution.events.v1+json`) gets `400`. A good envelope gets
//!   `202` at once, whatever its events hold: the registry retries a failed request forever
//!   and holds back later events meanwhile, so one odd event must not block the queue.
//! - Work happens in the background, at most `notifications.concurrency` warm-ups at once,
//!   `notifications.queue` waiting (more are dropped and counted):
//!   - a pushed image manifest is fetched from the registry and each of its layers warmed;
//!   - a pushed index (or manifest list) is fetched and each of its manifests handled so;
//!   - a pushed blob (a layer media type, or `application/octet-stream`, which is what
//!     distribution 2.8 reports for every blob upload) is warmed itself;
//!   - warming a blob = [`ManifestService::warm`]: chunk manifest made and kept, blob in the
//!     seed cache, sharing the single flight of on-demand manifest requests.
//!
//!   Other actions (`pull`, `mount`, `delete`) and media types (configs, ...) are ignored. A
//!   failed warm-up is logged and counted, never fatal: the manifest is still made on demand.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::media_type as mt;
use shoal_p2p::Digest;
use tokio::sync::{mpsc, Semaphore};

use crate::manifests::{image_reference, ManifestService};
use crate::metrics::NotifyMetrics;
use crate::Error;

/// The route the registry posts to.
pub const EVENTS_PATH: &str = "/v1/registry-events";
/// Largest envelope accepted (distribution sends a few events at a time).
const MAX_BODY_BYTES: usize = 4 << 20;

/// The media type distribution reports for blob uploads (it does not know what a blob is).
const OCTET_STREAM: &str = "application/octet-stream";

/// One unit of background work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// Warm one blob of a repository.
    Blob { repository: String, digest: Digest },
    /// Fetch an image manifest or index and queue what it refers to.
    Manifest { repository: String, digest: Digest },
}

/// The envelope as sent (only the fields used; the rest is ignored).
#[derive(Deserialize)]
struct Envelope {
    events: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Event {
    action: String,
    target: Target,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    #[serde(default)]
    media_type: String,
    digest: String,
    repository: String,
}

fn is_manifest_type(m: &str) -> bool {
    [
        mt::OCI_MANIFEST,
        mt::DOCKER_MANIFEST,
        mt::OCI_INDEX,
        mt::DOCKER_MANIFEST_LIST,
    ]
    .contains(&m)
}

/// Layer media types (OCI and Docker, any compression, non-distributable included: the
/// registry holds whatever was pushed to it).
fn is_layer_type(m: &str) -> bool {
    m.starts_with("application/vnd.oci.image.layer.")
        || m.starts_with("application/vnd.docker.image.rootfs.")
}

fn action_label(action: &str) -> &'static str {
    match action {
        "push" => "push",
        "pull" => "pull",
        "mount" => "mount",
        "delete" => "delete",
        _ => "other",
    }
}

/// What one event asks for: a job, or why there is none (`ignored`, `invalid`).
fn job_of(event: &serde_json::Value) -> (&'static str, Result<Job, &'static str>) {
    let Ok(event) = Event::deserialize(event) else {
        return ("other", Err("invalid"));
    };
    let action = action_label(&event.action);
    if action != "push" {
        return (action, Err("ignored"));
    }
    let t = event.target;
    let Ok(digest) = t.digest.parse::<Digest>() else {
        return (action, Err("invalid"));
    };
    let repository = t.repository;
    let media_type = t.media_type.split(';').next().unwrap_or("").trim();
    let job = if is_manifest_type(media_type) {
        Job::Manifest { repository, digest }
    } else if is_layer_type(media_type) || media_type == OCTET_STREAM {
        Job::Blob { repository, digest }
    } else {
        return (action, Err("ignored"));
    };
    (action, Ok(job))
}

/// The push hook: the router and its background workers.
pub struct Hook {
    token: String,
    queue: mpsc::Sender<Job>,
    manifests: ManifestService,
    metrics: NotifyMetrics,
}

impl Hook {
    /// Starts the workers (at most `concurrency` warm-ups at once, `queue` waiting) and
    /// returns the hook; its router is [`Hook::router`].
    pub fn start(
        token: String,
        concurrency: usize,
        queue: usize,
        manifests: ManifestService,
        metrics: NotifyMetrics,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let hook = Arc::new(Self {
            token,
            queue: tx,
            manifests,
            metrics,
        });
        tokio::spawn(dispatch(Arc::downgrade(&hook), rx, concurrency.max(1)));
        hook
    }

    /// `POST /v1/registry-events`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(EVENTS_PATH, post(events))
            .with_state(self.clone())
    }

    /// Whether `headers` carry the token ([`crate::bearer::check`]).
    fn authorised(&self, headers: &HeaderMap) -> bool {
        crate::bearer::check(headers, std::slice::from_ref(&self.token))
            == crate::bearer::Presented::Accepted
    }

    /// Queues `job`, or drops it when the queue is full.
    fn enqueue(&self, job: Job) -> &'static str {
        match self.queue.try_send(job) {
            Ok(()) => "queued",
            Err(mpsc::error::TrySendError::Full(job)) => {
                tracing::warn!(
                    ?job,
                    "push hook: warm-up queue full; dropped (the manifest will be made on demand)"
                );
                "dropped"
            }
            Err(mpsc::error::TrySendError::Closed(_)) => "dropped",
        }
    }

    /// Runs one job; a manifest job queues the jobs of what it refers to.
    async fn run(&self, job: Job) {
        let started = Instant::now();
        let result = match &job {
            Job::Blob { repository, digest } => self
                .manifests
                .warm(repository, digest)
                .await
                .map(|did| {
                    if did {
                        tracing::info!(%repository, blob = %digest, secs = started.elapsed().as_secs_f64(), "push hook: blob warmed");
                    }
                }),
            Job::Manifest { repository, digest } => self.expand(repository, digest).await,
        };
        self.metrics
            .warmup_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                self.metrics.warmups.get_or_create(&ok()).inc();
            }
            Err(e) => {
                tracing::warn!(
                    ?job,
                    "push hook: warm-up failed (the manifest will be made on demand): {e}"
                );
                self.metrics.warmups.get_or_create(&failed()).inc();
            }
        }
    }

    /// Fetches manifest `digest` of `repository` and queues its layers (or, for an index,
    /// its manifests).
    async fn expand(&self, repository: &str, digest: &Digest) -> Result<(), Error> {
        let repo = image_reference(self.manifests.registry_host(), repository)?;
        let image = ImageReference {
            digest: Some(digest.clone()),
            tag: None,
            ..repo
        };
        let raw = self.manifests.client().manifest(&image).await?;
        for job in jobs_of_manifest(repository, &raw.media_type, &raw.bytes)? {
            let _ = self.enqueue(job);
        }
        Ok(())
    }
}

fn ok() -> crate::metrics::ResultLabel {
    crate::metrics::ResultLabel { result: "ok" }
}

fn failed() -> crate::metrics::ResultLabel {
    crate::metrics::ResultLabel { result: "error" }
}

/// The jobs a manifest (or index) refers to: its layers, or its manifests.
pub fn jobs_of_manifest(
    repository: &str,
    media_type: &str,
    bytes: &[u8],
) -> Result<Vec<Job>, Error> {
    #[derive(Deserialize)]
    struct Descriptor {
        digest: String,
        #[serde(default, rename = "mediaType")]
        media_type: String,
        /// Layers stored elsewhere (foreign layers): not in this registry.
        #[serde(default)]
        urls: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        layers: Vec<Descriptor>,
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    let bad = |reason: String| {
        Error::BadRequest(format!(
            "manifest of repository {repository} ({media_type}): {reason}"
        ))
    };
    let doc: Doc = serde_json::from_slice(bytes).map_err(|source| Error::BadManifest {
        repository: repository.to_owned(),
        media_type: media_type.to_owned(),
        source,
    })?;
    let index = media_type == mt::OCI_INDEX || media_type == mt::DOCKER_MANIFEST_LIST;
    let mut jobs = Vec::new();
    let list = if index { doc.manifests } else { doc.layers };
    for d in list {
        let digest: Digest = d.digest.parse().map_err(|e| bad(format!("{e}")))?;
        let repository = repository.to_string();
        if index {
            // Platform manifests (or nested indexes); other artifacts are not images.
            if d.media_type.is_empty() || is_manifest_type(&d.media_type) {
                jobs.push(Job::Manifest { repository, digest });
            }
        } else if d.urls.is_empty() {
            jobs.push(Job::Blob { repository, digest });
        }
    }
    Ok(jobs)
}

/// Takes jobs off the queue and runs them, at most `concurrency` at once, while the hook
/// lives.
async fn dispatch(hook: std::sync::Weak<Hook>, mut rx: mpsc::Receiver<Job>, concurrency: usize) {
    let slots = Arc::new(Semaphore::new(concurrency));
    while let Some(job) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(hook) = hook.upgrade() else { return };
        tokio::spawn(async move {
            hook.run(job).await;
            drop(slot);
        });
    }
}

/// A refusal, as `ErrorBody` JSON with [`Error::status`], counted as `reason`.
fn refuse(hook: &Hook, reason: &'static str, error: Error) -> Response {
    hook.metrics
        .refused
        .get_or_create(&crate::metrics::ReasonLabel { reason })
        .inc();
    let status = error.status();
    let mut r = error.into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"shoal-registry-ext\""),
        );
    }
    r
}

async fn events(State(hook): State<Arc<Hook>>, headers: HeaderMap, body: Body) -> Response {
    if !hook.authorised(&headers) {
        return refuse(
            &hook,
            "unauthorized",
            Error::Unauthorized(
                "notifications need \"Authorization: Bearer <notifications.token>\"".into(),
            ),
        );
    }
    // Read only once the token checks out.
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(source) => {
            return refuse(
                &hook,
                "bad_request",
                Error::Body {
                    limit: MAX_BODY_BYTES,
                    source,
                },
            )
        }
    };
    let envelope: Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(source) => return refuse(&hook, "bad_request", Error::Envelope(source)),
    };
    for event in &envelope.events {
        let (action, job) = job_of(event);
        let result = match job {
            Ok(job) => {
                tracing::debug!(?job, "push hook: event");
                hook.enqueue(job)
            }
            Err(why) => why,
        };
        hook.metrics.event(action, result);
    }
    StatusCode::ACCEPTED.into_response()
}

#[cfg(test)]
#[path = "notify_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn digest() -> Digest {
        Digest::of(b"x")
    }

    fn event(action: &str, media_type: &str, digest: &str) -> serde_json::Value {
        json!({
            "id": "1", "timestamp": "2026-11-25T00:00:00Z", "action": action,
            "target": {"mediaType": media_type, "size": 10, "digest": digest, "length": 10,
                       "repository": "a/b", "url": "http://r/v2/a/b/blobs/x", "tag": "v1"},
            "request": {"id": "r", "addr": "1.2.3.4:5", "host": "r:5000", "method": "PUT",
                        "useragent": "skopeo"},
            "actor": {}, "source": {"addr": "r:5000", "instanceID": "i"}
        })
    }

    fn hook(token: &str, dir: &std::path::Path) -> Arc<Hook> {
        let client = shoal_p2p::registry::RegistryClient::new(Default::default()).unwrap();
        let seed = shoal_p2p::cache::BlobCache::open(dir.join("seed"), 1 << 20).unwrap();
        let manifests = ManifestService::open(
            &dir.join("manifests"),
            shoal_p2p::chunk::MIN_CHUNK_SIZE,
            "r.example",
            client,
            seed,
            Default::default(),
        )
        .unwrap();
        Hook::start(token.into(), 1, 1, manifests, NotifyMetrics::default())
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn only_the_token_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let token = "0123456789abcdef0123";
        let h = hook(token, dir.path());
        assert!(h.authorised(&with_auth(&format!("Bearer {token}"))));
        assert!(h.authorised(&with_auth(&format!("bearer {token}"))));
        assert!(!h.authorised(&HeaderMap::new()));
        for bad in [
            "Bearer 0123456789abcdef0124",
            "Bearer 0123456789abcdef012",
            "Bearer 0123456789abcdef01234",
            "Bearer ",
            "Basic MDEyMzQ1Njc4OWFiY2RlZjAxMjM=",
            token,
        ] {
            assert!(!h.authorised(&with_auth(bad)), "{bad}");
        }
        // A hook without a token (never configured so) refuses everything.
        let open = hook("", dir.path());
        assert!(!open.authorised(&with_auth("Bearer ")));
        assert!(!open.authorised(&with_auth("Bearer")));
    }

    #[test]
    fn events_become_jobs() {
        let d = digest().to_string();
        let blob = Job::Blob {
            repository: "a/b".into(),
            digest: digest(),
        };
        let manifest = Job::Manifest {
            repository: "a/b".into(),
            digest: digest(),
        };
        assert_eq!(
            job_of(&event("push", OCTET_STREAM, &d)),
            ("push", Ok(blob.clone()))
        );
        assert_eq!(
            job_of(&event("push", mt::OCI_LAYER_GZIP, &d)),
            ("push", Ok(blob))
        );
        for m in [mt::OCI_MANIFEST, mt::DOCKER_MANIFEST_LIST, mt::OCI_INDEX] {
            assert_eq!(
                job_of(&event("push", m, &d)),
                ("push", Ok(manifest.clone()))
            );
        }
        assert_eq!(
            job_of(&event("push", mt::OCI_CONFIG, &d)),
            ("push", Err("ignored"))
        );
        assert_eq!(
            job_of(&event("pull", mt::OCI_MANIFEST, &d)),
            ("pull", Err("ignored"))
        );
        assert_eq!(
            job_of(&event("frobnicate", mt::OCI_MANIFEST, &d)),
            ("other", Err("ignored"))
        );
        assert_eq!(
            job_of(&event("push", OCTET_STREAM, "sha256:nothex")),
            ("push", Err("invalid"))
        );
        assert_eq!(
            job_of(&json!({"action": "push"})),
            ("other", Err("invalid"))
        );
        assert_eq!(job_of(&json!(17)), ("other", Err("invalid")));
    }

    #[test]
    fn manifests_and_indexes_give_their_blobs_and_manifests() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let m = json!({
            "schemaVersion": 2, "mediaType": mt::OCI_MANIFEST,
            "config": {"mediaType": mt::OCI_CONFIG, "digest": Digest::of(b"c").to_string(), "size": 1},
            "layers": [
                {"mediaType": mt::OCI_LAYER_GZIP, "digest": a.to_string(), "size": 1},
                {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                 "digest": b.to_string(), "size": 1, "urls": ["https://elsewhere/x"]}
            ]
        });
        let jobs = jobs_of_manifest("r", mt::OCI_MANIFEST, m.to_string().as_bytes()).unwrap();
        assert_eq!(
            jobs,
            vec![Job::Blob {
                repository: "r".into(),
                digest: a.clone()
            }]
        );
        let i = json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": mt::OCI_MANIFEST, "digest": a.to_string(), "size": 1},
                {"mediaType": "application/vnd.in-toto+json", "digest": b.to_string(), "size": 1}
            ]
        });
        let jobs = jobs_of_manifest("r", mt::OCI_INDEX, i.to_string().as_bytes()).unwrap();
        assert_eq!(
            jobs,
            vec![Job::Manifest {
                repository: "r".into(),
                digest: a
            }]
        );
        match jobs_of_manifest("r", mt::OCI_MANIFEST, b"nope") {
            Err(e @ Error::BadManifest { .. }) => {
                assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
                let cause = std::error::Error::source(&e)
                    .and_then(|c| c.downcast_ref::<serde_json::Error>());
                assert!(cause.is_some_and(|c| c.is_syntax()), "{e:?}");
                assert!(
                    e.to_string().starts_with(&format!(
                        "bad request: manifest of repository r ({}): expected",
                        mt::OCI_MANIFEST
                    )),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        let bad = json!({"layers": [{"digest": "sha256:zz"}]}).to_string();
        assert!(jobs_of_manifest("r", mt::OCI_MANIFEST, bad.as_bytes()).is_err());
    }
}
