//! The preheat routes ([`shoal_p2p::preheat::proto`]) and how they are authenticated:
//!
//! - [`node_router`], on the main listener: mutual TLS against the cluster CA has already
//!   authenticated the client. Registration and heartbeats need a node certificate naming
//!   the node they are for (else `403`); the admin routes are open to any cluster certificate
//!   (a node's or the registry side's: an operator's `shoald preheat` with a cluster
//!   certificate).
//! - [`admin_router`], on `[preheat] admin_listen`: the admin routes only (nodes, jobs,
//!   cancel), each request needing `Authorization: Bearer TOKEN` with a token from
//!   `[preheat] tokens`; anything else gets 401.

use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use shoal_p2p::preheat::proto::{
    Heartbeat, HeartbeatReply, JobList, JobSpec, JobStatus, NodeInfo, NodeList, Registered,
};
use shoal_p2p::tls::{require_roles, Caller, Role};

use super::{now_ms, Coordinator};
use crate::bearer::Presented;
use crate::Error;

/// Largest request body accepted (a heartbeat of many tasks, a job of many targets).
const MAX_BODY: usize = 8 << 20;

/// The coordinator, shared by the handlers.
pub type Shared = Arc<Mutex<Coordinator>>;

fn lock(c: &Shared) -> MutexGuard<'_, Coordinator> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

fn body<T>(b: Result<Json<T>, JsonRejection>, what: &'static str) -> Result<T, Error> {
    b.map(|Json(v)| v)
        .map_err(|source| Error::BadBody { what, source })
}

/// Every route, for the mutual-TLS listener.
pub fn node_router(c: Shared) -> Router {
    let nodes = Router::new()
        .route("/v1/preheat/register", post(register))
        .route("/v1/preheat/heartbeat", post(heartbeat));
    require_roles(nodes, &[Role::Node])
        .merge(require_roles(
            admin_routes(),
            &[Role::Node, Role::RegistrySide],
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(c)
}

/// Refuses a registration or heartbeat for `node` from a certificate naming another node.
fn check_node(caller: &Caller, node: &str, what: &str) -> Result<(), Error> {
    if caller.may_act_as(node) {
        return Ok(());
    }
    let who = caller
        .identity()
        .map(|id| id.to_string())
        .unwrap_or_default();
    Err(Error::Forbidden(format!(
        "{what} for node {node:?} refused: the client certificate is the certificate of {who}"
    )))
}

/// The admin routes behind a bearer token, for the admin listener.
pub fn admin_router(c: Shared, tokens: Vec<String>) -> Router {
    admin_routes()
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(tokens),
            require_token,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(c)
}

fn admin_routes() -> Router<Shared> {
    Router::new()
        .route("/v1/preheat/nodes", get(nodes))
        .route("/v1/preheat/jobs", post(submit).get(jobs))
        .route("/v1/preheat/jobs/{id}", get(job))
        .route("/v1/preheat/jobs/{id}/cancel", post(cancel))
}

async fn require_token(
    State(tokens): State<Arc<Vec<String>>>,
    request: Request,
    next: Next,
) -> Response {
    match crate::bearer::check(request.headers(), &tokens) {
        Presented::Accepted => next.run(request).await,
        Presented::Wrong => {
            Error::Unauthorized("the bearer token is not accepted".into()).into_response()
        }
        Presented::Missing => {
            Error::Unauthorized("Authorization: Bearer TOKEN is required".into()).into_response()
        }
    }
}

async fn register(
    State(c): State<Shared>,
    Extension(caller): Extension<Caller>,
    b: Result<Json<NodeInfo>, JsonRejection>,
) -> Result<Json<Registered>, Error> {
    let info = body(b, "registration")?;
    check_node(&caller, &info.name, "registration")?;
    Ok(Json(lock(&c).register(info, now_ms())?))
}

async fn heartbeat(
    State(c): State<Shared>,
    Extension(caller): Extension<Caller>,
    b: Result<Json<Heartbeat>, JsonRejection>,
) -> Result<Json<HeartbeatReply>, Error> {
    let hb = body(b, "heartbeat")?;
    check_node(&caller, &hb.node, "heartbeat")?;
    Ok(Json(lock(&c).heartbeat(hb, now_ms())?))
}

async fn nodes(State(c): State<Shared>) -> Json<NodeList> {
    Json(lock(&c).nodes())
}

async fn submit(
    State(c): State<Shared>,
    b: Result<Json<JobSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<JobStatus>), Error> {
    let spec = body(b, "job")?;
    Ok((StatusCode::CREATED, Json(lock(&c).submit(spec, now_ms())?)))
}

async fn jobs(State(c): State<Shared>) -> Json<JobList> {
    Json(lock(&c).jobs())
}

async fn job(State(c): State<Shared>, Path(id): Path<String>) -> Result<Json<JobStatus>, Error> {
    lock(&c)
        .job(&id)
        .cloned()
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("preheat job {id:?}")))
}

async fn cancel(State(c): State<Shared>, Path(id): Path<String>) -> Result<Json<JobStatus>, Error> {
    Ok(Json(lock(&c).cancel(&id, now_ms())?))
}
