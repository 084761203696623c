//! `shoal-badpeer`: a corrupt swarm peer for the fault tests. It announces to the trackers
//! that it holds every chunk of the blobs it is given, and answers every chunk request
//! (`GET /v1/blobs/<digest>` with one `Range`) with the right number of wrong bytes, over
//! mutual TLS with a real cluster certificate: only the chunk hashes can tell.
//!
//!     shoal-badpeer --listen 0.0.0.0:7070 --advertise 10.231.5.2:7070 \
//!         --tracker https://10.231.0.2:7080 --ca ca.pem --cert bad.pem --key bad-key.pem \
//!         --chunk-size 1048576 --blob sha256:...:SIZE [--blob ...] [--peer-id badpeer]
//!
//! It prints one line per request served (`served garbage <digest> <first>-<last>`) and per
//! failed announce, so a test can tell whether it was asked at all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use shoal_p2p::tls::{TlsFiles, Transport};
use shoal_p2p::tracker::proto::{Announce, BlobHave, ChunkSet, UploadStats};
use shoal_p2p::Digest;

fn usage() -> ! {
    eprintln!(
        "usage: shoal-badpeer --listen ADDR --advertise ADDR --tracker URL... --ca PEM --cert PEM \
         --key PEM --chunk-size N --blob DIGEST:SIZE... [--peer-id ID]"
    );
    std::process::exit(2)
}

struct Blob {
    digest: Digest,
    size: u64,
}

struct Args {
    listen: SocketAddr,
    advertise: SocketAddr,
    trackers: Vec<String>,
    tls: TlsFiles,
    chunk_size: u64,
    blobs: Vec<Blob>,
    peer_id: String,
}

fn parse_args() -> Result<Args> {
    let (mut listen, mut advertise, mut ca, mut cert, mut key, mut chunk_size) =
        (None, None, None, None, None, None);
    let mut trackers = Vec::new();
    let mut blobs = Vec::new();
    let mut peer_id = "badpeer".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = Some(value().parse()?),
            "--advertise" => advertise = Some(value().parse()?),
            "--tracker" => trackers.push(value().trim_end_matches('/').to_string()),
            "--ca" => ca = Some(value().into()),
            "--cert" => cert = Some(value().into()),
            "--key" => key = Some(value().into()),
            "--chunk-size" => chunk_size = Some(value().parse()?),
            "--peer-id" => peer_id = value(),
            "--blob" => {
                let v = value();
                let (digest, size) = v.rsplit_once(':').context("--blob DIGEST:SIZE")?;
                blobs.push(Blob {
                    digest: digest
                        .parse()
                        .with_context(|| format!("digest {digest:?}"))?,
                    size: size.parse().with_context(|| format!("size {size:?}"))?,
                });
            }
            _ => usage(),
        }
    }
    let (Some(listen), Some(advertise), Some(ca), Some(cert), Some(key), Some(chunk_size)) =
        (listen, advertise, ca, cert, key, chunk_size)
    else {
        usage()
    };
    if trackers.is_empty() || blobs.is_empty() || chunk_size == 0 {
        usage()
    }
    Ok(Args {
        listen,
        advertise,
        trackers,
        tls: TlsFiles { ca, cert, key },
        chunk_size,
        blobs,
        peer_id,
    })
}

struct Shared {
    sizes: Vec<(Digest, u64)>,
}

/// `bytes=FIRST-LAST`, both inclusive.
fn parse_range(headers: &HeaderMap) -> Option<(u64, u64)> {
    let v = headers.get(header::RANGE)?.to_str().ok()?;
    let (first, last) = v.strip_prefix("bytes=")?.split_once('-')?;
    let (first, last) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    (first <= last).then_some((first, last))
}

async fn serve_garbage(
    State(shared): State<Arc<Shared>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(size) = shared
        .sizes
        .iter()
        .find(|(d, _)| d.to_string() == digest)
        .map(|(_, s)| *s)
    else {
        return (StatusCode::NOT_FOUND, "{\"error\":\"not held\"}").into_response();
    };
    let Some((first, last)) = parse_range(&headers) else {
        return (StatusCode::BAD_REQUEST, "{\"error\":\"one Range needed\"}").into_response();
    };
    if last >= size {
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{\"error\":\"past the end\"}",
        )
            .into_response();
    }
    let len = (last - first + 1) as usize;
    // Same length, wrong bytes: xorshift noise seeded by the offset.
    let mut state = first.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let body: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    println!("served garbage {digest} {first}-{last}");
    (
        StatusCode::PARTIAL_CONTENT,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_RANGE,
                format!("bytes {first}-{last}/{size}"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn announce_forever(args: &Args, transport: &Transport) -> Result<()> {
    let client = transport.http_client(Duration::from_secs(2), Duration::from_secs(5))?;
    let announce = Announce {
        peer_id: args.peer_id.clone(),
        addr: args.advertise,
        // Claims a fast, idle uplink, so that it looks like the best peer there is.
        upload: UploadStats {
            capacity_bytes_per_sec: 1 << 30,
            rate_bytes_per_sec: 0,
            active: 0,
            max: 64,
        },
        blobs: args
            .blobs
            .iter()
            .map(|b| {
                let chunks = b.size.div_ceil(args.chunk_size) as u32;
                BlobHave::new(b.digest.clone(), &ChunkSet::full(chunks))
            })
            .collect(),
    };
    let mut announced = false;
    loop {
        for tracker in &args.trackers {
            let url = format!("{tracker}/v1/announce");
            match client.post(&url).json(&announce).send().await {
                Ok(r) if r.status().is_success() => {
                    if !announced {
                        println!("announced to {tracker}");
                        announced = true;
                    }
                }
                Ok(r) => println!(
                    "announce to {url}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                Err(e) => println!("announce to {url}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let transport = Transport::load(Some(&args.tls), false)?;
    if !matches!(transport, Transport::Tls(_)) {
        bail!("the bad peer speaks TLS only");
    }
    let shared = Arc::new(Shared {
        sizes: args
            .blobs
            .iter()
            .map(|b| (b.digest.clone(), b.size))
            .collect(),
    });
    let router = axum::Router::new()
        .route("/v1/blobs/{digest}", axum::routing::get(serve_garbage))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("listening on {}", args.listen);
    let server = transport.serve(listener, router, std::future::pending::<()>());
    tokio::select! {
        r = server => r.context("chunk server")?,
        r = announce_forever(&args, &transport) => r?,
    }
    Ok(())
}
