//! `GET /v1/torrents/{digest}?registry=HOST&repository=REPO`: the `.torrent` of a blob, with
//! the seeder's BitTorrent address in the `Shoal-Torrent-Peer` header.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{torrent_name, TorrentService};
use crate::Error;

/// The response header naming the `IP:port` BitTorrent clients dial for the seeder.
pub const PEER_HEADER: &str = "shoal-torrent-peer";

/// The torrent route, to merge into the API router.
pub(crate) fn router(service: TorrentService) -> Router {
    Router::new()
        .route("/v1/torrents/{digest}", get(torrent))
        .with_state(service)
}

async fn torrent(
    State(service): State<TorrentService>,
    Path(digest): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, Error> {
    let query = query
        .map(|Query(q)| q)
        .map_err(|e| service.refused(Error::BadQuery(e)))?;
    let bytes = service
        .request(
            &digest,
            query.get("registry").map(String::as_str),
            query.get("repository").map(String::as_str),
        )
        .await?;
    // `request` checked the digest.
    let name = digest.parse().map(|d| torrent_name(&d)).unwrap_or_default();
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-bittorrent".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.torrent\""),
            ),
            (
                header::HeaderName::from_static(PEER_HEADER),
                service.advertise().to_string(),
            ),
        ],
        bytes,
    )
        .into_response())
}
