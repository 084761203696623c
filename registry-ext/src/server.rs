//! `shoal-registry-ext serve`: one API listener (mutual TLS against the cluster CA, or
//! plaintext when configured for tests) with the tracker, the chunk-manifest service and the
//! seeder's chunk route; and a plain-HTTP `/metrics` listener.
//!
//! The API listener needs a registry-side certificate of its own (checked at start) and
//! serves node certificates: the tracker, manifest and seeder routes refuse other roles with
//! `403`, and an announce must carry the certificate's node name as `peer_id` (else `403`,
//! counted in `shoal_tracker_announces_refused_total{reason="identity"}`).
//!
//! Routes on the API listener:
//! - `POST /v1/announce` (whole state), `POST /v1/announce/delta` (changes since an
//!   acknowledged announce) and `GET /v1/peers/{digest}?peer=ID[&limit=N]`: the tracker
//!   ([`crate::tracker`], protocol in [`shoal_p2p::tracker::proto`], docs/tracker.md);
//! - `GET /v1/chunk-manifests/{digest}?registry=HOST&repository=REPO`: [`crate::manifests`];
//! - `GET /v1/blobs/{digest}` with a `Range`: the seeder ([`shoal_p2p::peer::router`]),
//!   serving the blobs kept in the seed cache;
//! - with the `torrent` feature and `[torrent] enabled = true`:
//!   `GET /v1/torrents/{digest}?registry=HOST&repository=REPO`, the blob's `.torrent`
//!   (`crate::torrent`).
//!
//! The seeder is listed in peer lists of the blobs it holds as `registry-ext@<advertise>`;
//! with `[hot_cache]` on, it serves through [`crate::hot_cache::HotProvider`].
//!
//! On its own plain-HTTP listener (`[notifications] listen`, when given): the push hook,
//! `POST /v1/registry-events` ([`crate::notify`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use futures::FutureExt;
use shoal_p2p::cache::BlobCache;
use shoal_p2p::metrics::{Registry, UploadMetrics};
use shoal_p2p::peer::{UploadLimits, UploadMeter};
use shoal_p2p::registry::RegistryClient;
use shoal_p2p::tls::{require_roles, Caller, Role, Transport};
use shoal_p2p::tracker::proto::{
    Announce, AnnounceReply, ChunkSet, DeltaAnnounce, DeltaReply, PeerEntry,
};
use shoal_p2p::Digest;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::hot_cache::HotProvider;
use crate::manifests::ManifestService;
use crate::metrics::{
    HotCacheMetrics, ManifestMetrics, NotifyMetrics, ReasonLabel, TrackerMetrics,
};
use crate::notify::Hook;
use crate::tracker::{Tracker, SEEDER_ID_PREFIX};
use crate::Error;

/// Largest announce body accepted.
const MAX_ANNOUNCE_BYTES: usize = 16 << 20;

/// The listeners [`serve`] runs on, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// The API + seeder listener (`listen`).
    pub api: TcpListener,
    /// The `/metrics` listener (`metrics_listen`), if any.
    pub metrics: Option<TcpListener>,
    /// The push hook's listener (`[notifications] listen`); served only when enabled.
    pub notify: Option<TcpListener>,
    /// The preheat admin listener (`[preheat] admin_listen`), if any.
    pub preheat_admin: Option<TcpListener>,
}

/// Shared state of the API handlers.
struct App {
    tracker: Arc<Mutex<Tracker>>,
    tracker_metrics: TrackerMetrics,
    rng: Mutex<fastrand::Rng>,
    manifests: ManifestService,
    seed: BlobCache,
    meter: UploadMeter,
    advertise: SocketAddr,
}

type AppState = State<Arc<App>>;

/// The seeder's question to the tracker (`Tracker::lost`) for chunks of `chunk_size` (every
/// chunk manifest this registry extension makes is cut at it): an offset not at a chunk's
/// start is never lost.
fn lost_check(tracker: Arc<Mutex<Tracker>>, chunk_size: u64) -> crate::super_seed::LostCheck {
    Box::new(move |digest, offset, since, now| {
        if chunk_size == 0 || offset % chunk_size != 0 {
            return false;
        }
        let Ok(chunk) = u32::try_from(offset / chunk_size) else {
            return false;
        };
        lock(&tracker).lost(digest, chunk, since, now)
    })
}

/// Runs shoal-registry-ext on `listeners` until `shutdown` completes: opens the seed cache
/// and the manifest directory, loads TLS, then serves. Fails at once on unusable TLS files,
/// directories or registry settings.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let transport = Transport::load(config.tls.as_ref(), config.insecure_plaintext)?;
    transport.require_role(Role::RegistrySide, "shoal-registry-ext")?;
    let client = RegistryClient::new(config.registry.clone())?;
    let seed_cfg = config.seed.clone();
    let seed =
        tokio::task::spawn_blocking(move || BlobCache::open(&seed_cfg.dir, seed_cfg.max_bytes))
            .await
            .map_err(|source| Error::Task {
                what: "opening the seed cache",
                source,
            })??;

    let mut registry = Registry::default();
    let tracker_metrics = TrackerMetrics::default();
    tracker_metrics.register(&mut registry);
    let manifest_metrics = ManifestMetrics::default();
    manifest_metrics.register(&mut registry);
    let upload_metrics = UploadMetrics::default();
    upload_metrics.register(&mut registry);
    let hot_metrics = HotCacheMetrics::default();
    hot_metrics.register(&mut registry);
    let notify_metrics = NotifyMetrics::default();
    notify_metrics.register(&mut registry);

    let manifests = {
        let (dir, chunk_size) = (config.manifests.dir.clone(), config.manifests.chunk_size);
        let (host, client, seed) = (config.registry_host.clone(), client, seed.clone());
        tokio::task::spawn_blocking(move || {
            ManifestService::open(&dir, chunk_size, &host, client, seed, manifest_metrics)
        })
        .await
        .map_err(|source| Error::Task {
            what: "opening the manifest directory",
            source,
        })??
    };

    let provider: Arc<dyn shoal_p2p::peer::ChunkProvider> = match config.hot_cache.max_bytes {
        0 => Arc::new(seed.clone()),
        max_bytes => Arc::new(HotProvider::new(
            Arc::new(seed.clone()),
            max_bytes,
            config.hot_cache.max_blob_bytes,
            hot_metrics,
        )),
    };
    let tracker = Arc::new(Mutex::new(Tracker::new(&config.tracker)));
    // Each chunk about once per swarm: a chunk just sent is left to the node that has it,
    // unless the tracker knows no live holder of it once that node should have announced it.
    let provider: Arc<dyn shoal_p2p::peer::ChunkProvider> =
        Arc::new(crate::super_seed::SuperSeed::new(
            provider,
            crate::super_seed::DEFAULT_DEFER,
            lost_check(tracker.clone(), config.manifests.chunk_size),
        ));
    let n = &config.notifications;
    let hook = (n.enabled && listeners.notify.is_some()).then(|| {
        Hook::start(
            n.token.clone(),
            n.concurrency,
            n.queue,
            manifests.clone(),
            notify_metrics,
        )
    });
    let (seeder, meter) = shoal_p2p::peer::router(
        provider,
        UploadLimits {
            max_uploads: config.seed.max_uploads,
            // The seeder has no have streams (its provider answers `404`).
            max_have_streams: shoal_p2p::peer::have::DEFAULT_MAX_HAVE_STREAMS,
            bytes_per_sec: config.seed.upload_bytes_per_sec,
        },
        upload_metrics,
    );
    let app = Arc::new(App {
        tracker,
        tracker_metrics,
        rng: Mutex::new(fastrand::Rng::new()),
        manifests,
        seed,
        meter,
        advertise: config.advertise,
    });
    #[cfg(feature = "torrent")]
    let torrents = if config.torrent.enabled {
        let metrics = crate::metrics::TorrentMetrics::default();
        metrics.register(&mut registry);
        let (manifests, seed) = (app.manifests.clone(), app.seed.clone());
        Some(
            crate::torrent::TorrentService::start(&config.torrent, manifests, seed, metrics)
                .await?,
        )
    } else {
        None
    };
    let mut api = api_router(app.clone()).merge(seeder);
    #[cfg(feature = "torrent")]
    if let Some(t) = &torrents {
        api = api.merge(crate::torrent::router(t.clone()));
    }
    let preheat = match config.preheat.enabled {
        true => {
            let metrics = crate::metrics::PreheatMetrics::default();
            metrics.register(&mut registry);
            Some(open_preheat(&config, metrics).await?)
        }
        false => None,
    };
    if let Some(p) = &preheat {
        api = api.merge(crate::preheat::node_router(p.clone()));
    }
    let metrics = shoal_p2p::metrics::router(Arc::new(registry));

    let shutdown = shutdown.boxed().shared();
    let api_addr = local_addr(&listeners.api)?;
    tracing::info!(listen = %api_addr, advertise = %config.advertise,
        scheme = transport.scheme(), registry = %config.registry_host, "serving");
    let admin_transport = transport.clone();
    let api_server = {
        let shutdown = shutdown.clone();
        async move {
            transport
                .serve(listeners.api, api, shutdown)
                .await
                .map_err(|source| Error::Listen {
                    what: format!("API listener {api_addr}"),
                    source,
                })
        }
    };
    let metrics_server = {
        let shutdown = shutdown.clone();
        async move {
            let Some(listener) = listeners.metrics else {
                return Ok(());
            };
            let addr = local_addr(&listener)?;
            Transport::Plaintext
                .serve(listener, metrics, shutdown)
                .await
                .map_err(|source| Error::Listen {
                    what: format!("metrics listener {addr}"),
                    source,
                })
        }
    };
    let torrent_task = {
        let shutdown = shutdown.clone();
        async move {
            #[cfg(feature = "torrent")]
            if let Some(t) = torrents {
                t.run(shutdown).await;
                return Ok::<_, Error>(());
            }
            shutdown.await;
            Ok(())
        }
    };
    let notify_server = {
        let shutdown = shutdown.clone();
        async move {
            let (Some(listener), Some(hook)) = (listeners.notify, hook) else {
                return Ok(());
            };
            let addr = local_addr(&listener)?;
            tracing::info!(listen = %addr, "push hook: serving {}", crate::notify::EVENTS_PATH);
            Transport::Plaintext
                .serve(listener, hook.router(), shutdown)
                .await
                .map_err(|source| Error::Listen {
                    what: format!("notifications listener {addr}"),
                    source,
                })
        }
    };
    let admin_server = {
        let shutdown = shutdown.clone();
        let transport = admin_transport;
        let admin = preheat
            .clone()
            .map(|p| crate::preheat::admin_router(p, config.preheat.tokens.clone()));
        async move {
            let (Some(listener), Some(router)) = (listeners.preheat_admin, admin) else {
                return Ok(());
            };
            let addr = local_addr(&listener)?;
            tracing::info!(listen = %addr, scheme = transport.scheme(), "preheat admin API (bearer tokens)");
            transport
                .serve_without_client_certs(listener, router, shutdown)
                .await
                .map_err(|source| Error::Listen {
                    what: format!("preheat admin listener {addr}"),
                    source,
                })
        }
    };
    let down_detection = {
        let shutdown = shutdown.clone();
        let every = Duration::from_millis((config.preheat.heartbeat_interval_ms / 2).max(10));
        async move {
            let Some(p) = preheat else { return Ok(()) };
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.clone() => return Ok(()),
                }
                let result = lock(&p).tick(crate::preheat::now_ms());
                if let Err(e) = result {
                    tracing::error!("preheat: {e}");
                }
            }
        }
    };
    let expiry = expire_periodically(app, Duration::from_millis(config.tracker.peer_ttl_ms / 2));
    let expiry = async move {
        tokio::select! {
            _ = expiry => {}
            _ = shutdown => {}
        }
        Ok(())
    };
    tokio::try_join!(
        api_server,
        metrics_server,
        notify_server,
        admin_server,
        down_detection,
        expiry,
        torrent_task
    )?;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the preheat store and coordinator.
async fn open_preheat(
    config: &Config,
    metrics: crate::metrics::PreheatMetrics,
) -> Result<crate::preheat::Shared, Error> {
    let p = config.preheat.clone();
    let settings = crate::preheat::Settings {
        heartbeat_interval_ms: p.heartbeat_interval_ms,
        down_after_ms: p.down_after_ms,
        concurrency: p.concurrency,
    };
    tokio::task::spawn_blocking(move || {
        let store = crate::preheat::RedbStore::open(&p.state)?;
        let c =
            crate::preheat::Coordinator::open(settings, Box::new(store), crate::preheat::now_ms())?
                .with_metrics(metrics);
        Ok(Arc::new(Mutex::new(c)))
    })
    .await
    .map_err(|source| Error::Task {
        what: "opening the preheat store",
        source,
    })?
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, Error> {
    listener.local_addr().map_err(|source| Error::Listen {
        what: "listener address".into(),
        source,
    })
}

/// Drops expired peers now and then, so the peers gauge is right without traffic.
async fn expire_periodically(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        let mut tracker = lock(&app.tracker);
        tracker.expire(Instant::now());
        app.tracker_metrics.peers.set(gauge(tracker.peer_count()));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The tracker and chunk-manifest routes, for node certificates.
fn api_router(app: Arc<App>) -> Router {
    let router = Router::new()
        .route(
            "/v1/announce",
            post(announce).layer(DefaultBodyLimit::max(MAX_ANNOUNCE_BYTES)),
        )
        .route(
            "/v1/announce/delta",
            post(announce_delta).layer(DefaultBodyLimit::max(MAX_ANNOUNCE_BYTES)),
        )
        .route("/v1/peers/{digest}", get(peers))
        .route("/v1/chunk-manifests/{digest}", get(chunk_manifest))
        .with_state(app);
    require_roles(router, &[Role::Node])
}

/// `GET /metrics`.
type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn params(q: Params) -> Result<HashMap<String, String>, Error> {
    q.map(|Query(q)| q).map_err(Error::BadQuery)
}

/// Refuses (403, counted) an announce whose `peer_id` is not the caller's node name.
fn check_identity(app: &App, caller: &Caller, peer_id: &str) -> Result<(), Error> {
    if caller.may_act_as(peer_id) {
        return Ok(());
    }
    app.tracker_metrics
        .announces_refused
        .get_or_create(&ReasonLabel { reason: "identity" })
        .inc();
    let who = caller
        .identity()
        .map(|id| id.to_string())
        .unwrap_or_default();
    Err(Error::Forbidden(format!(
        "announce as peer_id {peer_id:?} refused: the client certificate is the certificate of {who}; a node announces (and withdraws) only under its own name"
    )))
}

async fn announce(
    State(app): AppState,
    Extension(caller): Extension<Caller>,
    body: Result<Json<Announce>, JsonRejection>,
) -> Result<Json<AnnounceReply>, Error> {
    let Json(announce) = body.map_err(|source| Error::BadBody {
        what: "announce body",
        source,
    })?;
    check_identity(&app, &caller, &announce.peer_id)?;
    let mut tracker = lock(&app.tracker);
    let reply = tracker.announce(announce, Instant::now())?;
    app.tracker_metrics.announces.inc();
    app.tracker_metrics.peers.set(gauge(tracker.peer_count()));
    Ok(Json(reply))
}

async fn announce_delta(
    State(app): AppState,
    Extension(caller): Extension<Caller>,
    body: Result<Json<DeltaAnnounce>, JsonRejection>,
) -> Result<Json<DeltaReply>, Error> {
    let Json(delta) = body.map_err(|source| Error::BadBody {
        what: "announce body",
        source,
    })?;
    check_identity(&app, &caller, &delta.peer_id)?;
    let mut tracker = lock(&app.tracker);
    let reply = tracker.announce_delta(delta, Instant::now())?;
    if reply.full_state_needed {
        app.tracker_metrics.full_state_requests.inc();
    } else {
        app.tracker_metrics.announces.inc();
    }
    app.tracker_metrics.peers.set(gauge(tracker.peer_count()));
    Ok(Json(reply))
}

async fn peers(
    State(app): AppState,
    Path(digest): Path<String>,
    query: Params,
) -> Result<Response, Error> {
    let query = params(query)?;
    let digest: Digest = digest.parse().map_err(Error::BadDigest)?;
    let asking = query
        .get("peer")
        .ok_or_else(|| Error::BadRequest("query parameter peer is missing".into()))?;
    let limit = match query.get("limit") {
        None => usize::MAX,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(Error::BadRequest(format!(
                    "query parameter limit {l:?} is not a number of at least 1"
                )))
            }
        },
    };
    let seeder = seeder_entry(&app, &digest).await;
    let list = {
        let mut rng = lock(&app.rng);
        let mut tracker = lock(&app.tracker);
        let list = tracker.peers_json(&digest, asking, limit, seeder, Instant::now(), &mut rng);
        app.tracker_metrics.peers.set(gauge(tracker.peer_count()));
        list
    };
    app.tracker_metrics.peer_lists.inc();
    // A `PeerList` in JSON.
    Ok(([(header::CONTENT_TYPE, "application/json")], list).into_response())
}

/// This extension as a peer of `digest`, when the seed cache holds the blob and its
/// manifest (for the chunk count) is known.
async fn seeder_entry(app: &App, digest: &Digest) -> Option<PeerEntry> {
    if !app.seed.contains(digest) {
        return None;
    }
    let chunks = app.manifests.chunk_count(digest).await?;
    Some(PeerEntry {
        peer_id: format!("{SEEDER_ID_PREFIX}{}", app.advertise),
        addr: app.advertise,
        chunks,
        have: ChunkSet::full(chunks).encode(),
        upload: app.meter.stats(),
        fetching: None,
    })
}

async fn chunk_manifest(
    State(app): AppState,
    Path(digest): Path<String>,
    query: Params,
) -> Result<Response, Error> {
    let query = params(query).map_err(|e| app.manifests.refused(e))?;
    let json = app
        .manifests
        .request(
            &digest,
            query.get("registry").map(String::as_str),
            query.get("repository").map(String::as_str),
        )
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}
