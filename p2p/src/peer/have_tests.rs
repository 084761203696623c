//! Have streams end to end: the chunk server's `GET /v1/blobs/<digest>/have` and
//! [`PeerClient::have_stream`], over real mutual TLS on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use super::have::{HaveFeed, HaveLine, HaveState};
use super::test_pki::TestCa;
use super::tests::{liar, serve, Answer, OPEN, TIMEOUT};
use super::*;
use crate::tls::Transport;
use crate::tracker::ChunkSet;

const CHUNKS: u32 = 12;

/// A provider downloading one blob of [`CHUNKS`] chunks, its state set by the test.
struct Live {
    digest: Digest,
    state: Arc<Mutex<HaveState>>,
    changes: watch::Sender<u64>,
}

impl Live {
    fn new(digest: Digest) -> Arc<Self> {
        Arc::new(Self {
            digest,
            state: Arc::new(Mutex::new(HaveState::Progress {
                have: ChunkSet::empty(CHUNKS),
                fetching: ChunkSet::empty(CHUNKS),
            })),
            changes: watch::Sender::new(0),
        })
    }

    fn set(&self, state: HaveState) {
        *self.state.lock().unwrap() = state;
        self.changes.send_modify(|v| *v += 1);
    }
}

impl ChunkProvider for Live {
    fn open(&self, _: &Digest, _: std::ops::Range<u64>) -> Option<Held> {
        None
    }

    fn have(&self, digest: &Digest) -> Option<HaveFeed> {
        if *digest != self.digest {
            return None;
        }
        let state = self.state.clone();
        Some(HaveFeed::live(
            CHUNKS,
            self.changes.subscribe(),
            Box::new(move || state.lock().unwrap().clone()),
        ))
    }
}

fn set(held: &[u32]) -> ChunkSet {
    let mut s = ChunkSet::empty(CHUNKS);
    for &i in held {
        s.insert(i);
    }
    s
}

struct Rig {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    ca: TestCa,
    live: Arc<Live>,
    server: super::tests::Running,
    client: PeerClient,
    digest: Digest,
}

async fn rig(limits: UploadLimits) -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = TestCa::new("cluster");
    let digest = Digest::of(b"a blob being downloaded");
    let live = Live::new(digest.clone());
    let server = serve(&ca.transport(&dir, "holder"), live.clone(), limits).await;
    let client = PeerClient::new(&ca.transport(&dir, "subscriber"), TIMEOUT, TIMEOUT).unwrap();
    Rig {
        _tmp: tmp,
        dir,
        ca,
        live,
        server,
        client,
        digest,
    }
}

async fn next(lines: &mut HaveLines) -> have::HaveUpdate {
    tokio::time::timeout(TIMEOUT, lines.next())
        .await
        .expect("a line in time")
        .expect("a line")
        .expect("a good line")
}

#[tokio::test]
async fn the_state_at_once_then_each_change_then_done_and_the_end() {
    let r = rig(OPEN).await;
    r.live.set(HaveState::Progress {
        have: set(&[0]),
        fetching: set(&[1, 2]),
    });
    let started = Instant::now();
    let mut lines = r
        .client
        .have_stream(r.server.addr, &r.digest, CHUNKS)
        .await
        .unwrap();
    let first = next(&mut lines).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        (first.have, first.fetching, first.done),
        (set(&[0]), set(&[1, 2]), false)
    );
    assert_eq!(r.server.metrics.have_streams.get(), 1);
    // A chunk arrives: a line says so, within milliseconds.
    let changed = Instant::now();
    r.live.set(HaveState::Progress {
        have: set(&[0, 1]),
        fetching: set(&[2]),
    });
    let second = next(&mut lines).await;
    assert!(
        changed.elapsed() < Duration::from_secs(1),
        "{:?}",
        changed.elapsed()
    );
    assert_eq!((second.have, second.fetching), (set(&[0, 1]), set(&[2])));
    // Committed: a done line, then the body ends.
    r.live.set(HaveState::Done);
    let last = next(&mut lines).await;
    assert!(last.done);
    assert!(last.have.is_full());
    assert!(tokio::time::timeout(TIMEOUT, lines.next())
        .await
        .unwrap()
        .is_none());
    // The stream's slot is given back.
    let deadline = Instant::now() + TIMEOUT;
    while r.server.metrics.have_streams.get() != 0 {
        assert!(Instant::now() < deadline, "the stream's slot was kept");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Not counted as chunk requests.
    assert_eq!(r.server.metrics.bytes.get(), 0);
}

#[tokio::test]
async fn a_failed_download_ends_the_stream_without_done() {
    let r = rig(OPEN).await;
    let mut lines = r
        .client
        .have_stream(r.server.addr, &r.digest, CHUNKS)
        .await
        .unwrap();
    assert!(!next(&mut lines).await.done);
    r.live.set(HaveState::Ended);
    assert!(tokio::time::timeout(TIMEOUT, lines.next())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn blobs_not_held_are_not_found_and_bad_digests_refused() {
    let r = rig(OPEN).await;
    let other = Digest::of(b"not here");
    match r.client.have_stream(r.server.addr, &other, CHUNKS).await {
        Err(PeerError::NoHave { peer, digest }) => {
            assert_eq!((peer, digest), (r.server.addr, other))
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a stream of a blob not held"),
    }
    let http =
        r.ca.transport(&r.dir, "raw")
            .http_client(TIMEOUT, TIMEOUT)
            .unwrap();
    let resp = http
        .get(format!(
            "https://{}/v1/blobs/sha256:1234/have",
            r.server.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // A plain cache holds whole blobs but not their chunk counts: no stream either.
    let tmp = tempfile::tempdir().unwrap();
    let cache = crate::cache::BlobCache::open(tmp.path(), 1 << 20).unwrap();
    let mut w = cache.writer().unwrap();
    w.write(b"cached").unwrap();
    w.finish(&Digest::of(b"cached")).unwrap();
    let plain = serve(&Transport::Plaintext, Arc::new(cache), OPEN).await;
    let client = PeerClient::new(&Transport::Plaintext, TIMEOUT, TIMEOUT).unwrap();
    assert!(matches!(
        client
            .have_stream(plain.addr, &Digest::of(b"cached"), 1)
            .await,
        Err(PeerError::NoHave { .. })
    ));
    assert_eq!(r.server.metrics.have_streams.get(), 0);
}

#[tokio::test]
async fn a_registry_side_certificate_is_forbidden() {
    let r = rig(OPEN).await;
    let http =
        r.ca.registry_side_transport(&r.dir, "registry-ext")
            .http_client(TIMEOUT, TIMEOUT)
            .unwrap();
    let resp = http
        .get(format!(
            "https://{}/v1/blobs/{}/have",
            r.server.addr, r.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(r.server.metrics.have_streams.get(), 0);
}

#[tokio::test]
async fn streams_past_the_limit_are_busy() {
    let r = rig(UploadLimits {
        max_have_streams: 1,
        ..OPEN
    })
    .await;
    let mut first = r
        .client
        .have_stream(r.server.addr, &r.digest, CHUNKS)
        .await
        .unwrap();
    next(&mut first).await;
    let http =
        r.ca.transport(&r.dir, "raw")
            .http_client(TIMEOUT, TIMEOUT)
            .unwrap();
    let resp = http
        .get(format!(
            "https://{}/v1/blobs/{}/have",
            r.server.addr, r.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(matches!(
        r.client.have_stream(r.server.addr, &r.digest, CHUNKS).await,
        Err(PeerError::Busy { .. })
    ));
    // The first subscriber goes away: its slot comes back.
    drop(first);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match r.client.have_stream(r.server.addr, &r.digest, CHUNKS).await {
            Ok(mut lines) => {
                next(&mut lines).await;
                break;
            }
            Err(PeerError::Busy { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// A `200` have stream with `body`.
fn ndjson(body: &'static [u8]) -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from(body));
    response.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static(have::HAVE_CONTENT_TYPE),
    );
    response
}

#[tokio::test]
async fn bad_streams_end_with_an_error_after_their_good_lines() {
    use axum::response::IntoResponse;
    let good = b"{\"chunks\":4,\"have\":\"AQ\",\"fetching\":null,\"done\":false}\n";
    assert_eq!(
        HaveLine::progress(
            &{
                let mut s = ChunkSet::empty(4);
                s.insert(0);
                s
            },
            &ChunkSet::empty(4)
        )
        .encode(),
        Bytes::from_static(good)
    );
    let answers: [(Answer, usize, &str); 5] = [
        (
            || ndjson(b"{\"chunks\":4,\"have\":\"AQ\",\"fetching\":null,\"done\":false}\n{nope}\n"),
            1,
            "malformed",
        ),
        (
            || ndjson(b"{\"chunks\":5,\"have\":\"AQ\",\"fetching\":null,\"done\":false}\n"),
            0,
            "5 chunks",
        ),
        (|| ndjson(&[b' '; 8192]), 0, "longer than"),
        (
            || {
                ndjson(
                    b"{\"chunks\":4,\"have\":\"AQ\",\"fetching\":null,\"done\":false}\n{\"chunks\"",
                )
            },
            1,
            "inside a line",
        ),
        (
            || (axum::http::StatusCode::OK, "text").into_response(),
            0,
            "content type",
        ),
    ];
    let client = PeerClient::new(&Transport::Plaintext, TIMEOUT, TIMEOUT).unwrap();
    let digest = Digest::of(b"x");
    for (answer, good_lines, why) in answers {
        let peer = liar(answer).await;
        let lines = match client.have_stream(peer.addr, &digest, 4).await {
            Ok(lines) => lines.collect::<Vec<_>>().await,
            Err(e) => vec![Err(e)],
        };
        assert_eq!(lines.len(), good_lines + 1, "{why}");
        assert!(lines[..good_lines].iter().all(|l| l.is_ok()), "{why}");
        match lines.last().unwrap() {
            Err(PeerError::BadResponse { peer: p, reason }) => {
                assert_eq!(*p, peer.addr);
                assert!(reason.contains(why), "{why}: {reason}");
            }
            other => panic!("{why}: {other:?}"),
        }
    }
}
