//! [`HttpTrackers`] against small tracker servers on 127.0.0.1.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::proto::{AnnounceReply, ErrorBody};
use super::*;
use crate::chunk::{ChunkManifestBuilder, ChunkManifestError};
use crate::swarm::planner::refresh::SHORT_LIST_NODES;
use crate::tls::Transport;

mod failures;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A running test server; stops when dropped.
struct Running {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(router: Router) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = Transport::Plaintext
            .serve(listener, router, async {
                let _ = stopped.await;
            })
            .await;
    });
    Running { url, _stop: stop }
}

/// A URL where nothing listens.
fn nowhere() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn trackers(urls: Vec<String>) -> HttpTrackers {
    HttpTrackers::new(urls, &Transport::Plaintext, TIMEOUT, TIMEOUT).unwrap()
}

type Seen<T> = Arc<Mutex<Vec<T>>>;

/// A tracker that accepts announces (recording them) and answers every peer list with
/// `peers` (recording the query).
async fn tracker(
    peers: Vec<PeerEntry>,
) -> (Running, Seen<Announce>, Seen<HashMap<String, String>>) {
    let announces: Seen<Announce> = Arc::default();
    let queries: Seen<HashMap<String, String>> = Arc::default();
    let (a, q) = (announces.clone(), queries.clone());
    let router =
        Router::new()
            .route(
                "/v1/announce",
                post(move |Json(body): Json<Announce>| async move {
                    a.lock().unwrap().push(body);
                    Json(AnnounceReply { interval_ms: 1000 })
                }),
            )
            .route(
                "/v1/peers/{digest}",
                get(
                    move |Path(digest): Path<Digest>,
                          Query(query): Query<HashMap<String, String>>| async move {
                        q.lock().unwrap().push(query);
                        Json(PeerList {
                            digest,
                            peers: peers.clone(),
                        })
                    },
                ),
            );
    (serve(router).await, announces, queries)
}

/// A tracker answering every request with `status` and an error body.
async fn failing(status: StatusCode) -> Running {
    serve(Router::new().fallback(move || async move {
        (
            status,
            Json(ErrorBody {
                error: "tracker broken".into(),
            }),
        )
    }))
    .await
}

fn announce() -> Announce {
    Announce {
        peer_id: "me".into(),
        addr: "127.0.0.1:7070".parse().unwrap(),
        upload: UploadStats::default(),
        blobs: vec![BlobHave::new(Digest::of(b"blob"), &ChunkSet::full(3))],
    }
}

fn entry(id: &str, chunks: u32, held: &[u32]) -> PeerEntry {
    let mut set = ChunkSet::empty(chunks);
    for &i in held {
        set.insert(i);
    }
    PeerEntry {
        peer_id: id.into(),
        addr: "127.0.0.1:1".parse().unwrap(),
        chunks,
        have: set.encode(),
        upload: UploadStats::default(),
        fetching: None,
    }
}

#[tokio::test]
async fn announce_succeeds_when_one_tracker_answers() {
    let (up, seen, _) = tracker(vec![]).await;
    // Trailing slash tolerated.
    let t = trackers(vec![nowhere(), format!("{}/", up.url)]);
    assert_eq!(t.urls()[1], up.url);
    t.announce(&announce()).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![announce()]);
}

#[tokio::test]
async fn announce_fails_when_no_tracker_accepts() {
    let down = nowhere();
    let broken = failing(StatusCode::INTERNAL_SERVER_ERROR).await;
    let t = trackers(vec![down.clone(), broken.url.clone()]);
    match t.announce(&announce()).await {
        Err(TrackerError::Unavailable { failures }) => {
            assert_eq!(failures.len(), 2, "{failures:?}");
            assert!(
                matches!(&failures[0], TrackerError::Request { url, failure: Failure::Transport(_), .. } if *url == down),
                "{failures:?}"
            );
            assert!(
                matches!(&failures[1], TrackerError::Request { url, failure: Failure::Status { message, .. }, .. } if *url == broken.url && message == "tracker broken"),
                "{failures:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        trackers(vec![]).announce(&announce()).await,
        Err(TrackerError::NoTracker)
    ));
}

#[tokio::test]
async fn peer_lists_are_merged() {
    let d = Digest::of(b"blob");
    let mut malformed = entry("bad", 4, &[]);
    malformed.have = "!!".into();
    let (one, _, q1) = tracker(vec![
        entry("a", 4, &[0]),
        entry("me", 4, &[1]),
        malformed,
        entry("b", 4, &[2]),
        entry("c", 4, &[0]),
    ])
    .await;
    let (two, _, _) = tracker(vec![
        entry("b", 4, &[3]),
        entry("a", 4, &[1]),
        // A different chunk count: not merged, the first kept.
        entry("c", 5, &[4]),
    ])
    .await;
    let t = trackers(vec![one.url.clone(), two.url.clone(), nowhere()]);
    let peers = t.peers(&d, "me").await.unwrap();
    let ids: Vec<&str> = peers.iter().map(|p| p.peer_id.as_str()).collect();
    // Best positions: a 0, b 0 (second list), c 2 (second list); ties in the order seen.
    assert_eq!(ids, ["a", "b", "c"]);
    let held = |i: usize| peers[i].set().unwrap().iter().collect::<Vec<_>>();
    assert_eq!(held(0), [0, 1]);
    assert_eq!(held(1), [2, 3]);
    assert_eq!(held(2), [0]);
    assert_eq!(peers[2].chunks, 4);
    assert_eq!(
        q1.lock().unwrap()[0].get("peer").map(String::as_str),
        Some("me")
    );

    match trackers(vec![nowhere()]).peers(&d, "me").await {
        Err(TrackerError::Unavailable { failures }) => assert_eq!(failures.len(), 1),
        other => panic!("{other:?}"),
    }
}

fn manifest(data: &[u8]) -> ChunkManifest {
    let mut b = ChunkManifestBuilder::new(64 << 10).unwrap();
    b.update(data);
    b.finish(&Digest::of(data)).unwrap()
}

/// A manifest service answering `status` and `body`, recording the queries.
async fn manifests(status: StatusCode, body: Vec<u8>) -> (Running, Seen<HashMap<String, String>>) {
    let queries: Seen<HashMap<String, String>> = Arc::default();
    let q = queries.clone();
    let router = Router::new()
        .route(
            "/v1/chunk-manifests/{digest}",
            get(
                |State((status, body)): State<(StatusCode, Vec<u8>)>,
                 Query(query): Query<HashMap<String, String>>| async move {
                    q.lock().unwrap().push(query);
                    (status, body)
                },
            ),
        )
        .with_state((status, body));
    (serve(router).await, queries)
}

#[tokio::test]
async fn a_wrong_manifest_is_skipped_for_the_next_tracker() {
    let right = manifest(&[1u8; 200_000]);
    let wrong = manifest(&[2u8; 200_000]);
    let (bad, _) = manifests(StatusCode::OK, wrong.to_json()).await;
    let (good, queries) = manifests(StatusCode::OK, right.to_json()).await;
    let t = trackers(vec![bad.url.clone(), good.url.clone()]);
    // Whichever tracker is tried first, the right manifest wins.
    for _ in 0..4 {
        let m = t
            .chunk_manifest("reg.example:5000", "library/a b&c", &right.digest)
            .await
            .unwrap();
        assert_eq!(m, right);
    }
    let q = queries.lock().unwrap()[0].clone();
    assert_eq!(q["registry"], "reg.example:5000");
    assert_eq!(q["repository"], "library/a b&c");

    // Only the wrong one: a bad response naming the tracker.
    match trackers(vec![bad.url.clone()])
        .chunk_manifest("r", "repo", &right.digest)
        .await
    {
        Err(TrackerError::Request {
            url,
            request: Request::ChunkManifest { digest, .. },
            failure: Failure::OtherBlob { got },
        }) => {
            assert_eq!(url, bad.url);
            assert_eq!((digest, got), (right.digest.clone(), wrong.digest.clone()));
        }
        other => panic!("{other:?}"),
    }
    // Garbage is a bad response too.
    let (garbage, _) = manifests(StatusCode::OK, b"{\"digest\":".to_vec()).await;
    assert!(matches!(
        trackers(vec![garbage.url.clone()])
            .chunk_manifest("r", "repo", &right.digest)
            .await,
        Err(TrackerError::Request {
            failure: Failure::Manifest(ChunkManifestError::Json(_)),
            ..
        })
    ));
}

#[tokio::test]
async fn manifest_not_found_everywhere_or_unreachable() {
    let d = Digest::of(b"blob");
    let not_found = || failing(StatusCode::NOT_FOUND);
    let (a, b) = (not_found().await, not_found().await);
    match trackers(vec![a.url.clone(), b.url.clone()])
        .chunk_manifest("r", "repo", &d)
        .await
    {
        Err(e @ TrackerError::NoManifest { .. }) => {
            let text = e.to_string();
            let TrackerError::NoManifest { digest, answers } = e else {
                unreachable!()
            };
            assert_eq!(digest, d);
            assert_eq!(answers.len(), 2);
            for answer in &answers {
                assert!(
                    matches!(answer.failure(), Some(Failure::Status { status, message }) if *status == StatusCode::NOT_FOUND && message == "tracker broken"),
                    "{answer:?}"
                );
            }
            assert!(
                text.starts_with(&format!("chunk manifest of {d} not available: tracker ")),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    let broken = failing(StatusCode::BAD_GATEWAY).await;
    match trackers(vec![nowhere(), broken.url.clone()])
        .chunk_manifest("r", "repo", &d)
        .await
    {
        Err(TrackerError::Unavailable { failures }) => {
            assert_eq!(failures.len(), 2, "{failures:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        trackers(vec![]).chunk_manifest("r", "repo", &d).await,
        Err(TrackerError::NoTracker)
    ));
}

/// What a delta tracker does with the next delta that has a base.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Next {
    Take,
    /// As a restarted tracker: ask for the whole state.
    Lost,
    /// Answer 500.
    Fail,
}

/// A tracker with the delta route, recording every delta; the older route is not served.
async fn delta_tracker() -> (Running, Seen<DeltaAnnounce>, Arc<Mutex<Next>>) {
    paced_tracker(0, 0, vec![]).await.0
}

type PacedTracker = (
    (Running, Seen<DeltaAnnounce>, Arc<Mutex<Next>>),
    Seen<HashMap<String, String>>,
);

/// [`delta_tracker`], pacing its nodes with `min_interval_ms` and `peer_list_interval_ms`,
/// and answering every peer list with `peers`.
async fn paced_tracker(
    min_interval_ms: u64,
    peer_list_interval_ms: u64,
    peers: Vec<PeerEntry>,
) -> PacedTracker {
    let queries: Seen<HashMap<String, String>> = Arc::default();
    let q = queries.clone();
    let seen: Seen<DeltaAnnounce> = Arc::default();
    let next = Arc::new(Mutex::new(Next::Take));
    let (s, n) = (seen.clone(), next.clone());
    let router =
        Router::new()
            .route(
                "/v1/announce/delta",
                post(move |Json(body): Json<DeltaAnnounce>| async move {
                    let has_base = body.base.is_some();
                    s.lock().unwrap().push(body);
                    let mut next = n.lock().unwrap();
                    let what = if has_base { *next } else { Next::Take };
                    *next = Next::Take;
                    match what {
                        Next::Fail => Err(StatusCode::INTERNAL_SERVER_ERROR),
                        _ => Ok(Json(DeltaReply {
                            interval_ms: 1000,
                            full_state_needed: what == Next::Lost,
                            min_interval_ms,
                            peer_list_interval_ms,
                        })),
                    }
                }),
            )
            .route(
                "/v1/peers/{digest}",
                get(
                    move |Path(digest): Path<Digest>,
                          Query(query): Query<HashMap<String, String>>| async move {
                        q.lock().unwrap().push(query);
                        Json(PeerList {
                            digest,
                            peers: peers.clone(),
                        })
                    },
                ),
            );
    ((serve(router).await, seen, next), queries)
}

#[tokio::test]
async fn announces_are_deltas_after_the_first_and_whole_when_the_tracker_lost_track() {
    let (up, seen, next) = delta_tracker().await;
    let t = trackers(vec![up.url.clone()]);
    let mut state = announce();
    t.announce(&state).await.unwrap();
    let other = Digest::of(b"other");
    state
        .blobs
        .push(BlobHave::new(other.clone(), &ChunkSet::full(1)));
    t.announce(&state).await.unwrap();
    t.announce(&state).await.unwrap();
    let take = |seen: &Seen<DeltaAnnounce>| std::mem::take(&mut *seen.lock().unwrap());
    let sent = take(&seen);
    assert_eq!(sent.len(), 3);
    assert_eq!((sent[0].seq, sent[0].base), (1, None));
    assert_eq!(sent[0].blobs, announce().blobs);
    assert_eq!((sent[1].seq, sent[1].base), (2, Some(1)));
    assert_eq!(
        sent[1].blobs,
        vec![state.blobs[1].clone()],
        "only the new blob"
    );
    assert_eq!((sent[2].seq, sent[2].base), (3, Some(2)));
    assert!(sent[2].blobs.is_empty() && sent[2].removed.is_empty());

    // The tracker restarted: it asks, and gets the whole state in the same round.
    *next.lock().unwrap() = Next::Lost;
    t.announce(&state).await.unwrap();
    let sent = take(&seen);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].base, Some(3));
    assert_eq!((sent[1].seq, sent[1].base), (5, None));
    assert_eq!(sent[1].blobs, state.blobs);

    // A failed round: the next one sends the whole state.
    state.blobs.remove(0);
    *next.lock().unwrap() = Next::Fail;
    assert!(t.announce(&state).await.is_err());
    t.announce(&state).await.unwrap();
    t.announce(&announce()).await.unwrap();
    let sent = take(&seen);
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0].base, Some(5));
    assert_eq!((sent[1].seq, sent[1].base), (7, None));
    assert_eq!(sent[1].blobs, state.blobs);
    assert_eq!((sent[2].seq, sent[2].base), (8, Some(7)));
    assert_eq!(sent[2].blobs, announce().blobs);
    assert_eq!(sent[2].removed, vec![other]);
}

#[tokio::test]
async fn a_tracker_without_deltas_gets_whole_states_on_the_older_route() {
    let (old, old_seen, _) = tracker(vec![]).await;
    let (new, new_seen, _) = delta_tracker().await;
    let t = trackers(vec![old.url.clone(), new.url.clone()]);
    for _ in 0..3 {
        t.announce(&announce()).await.unwrap();
    }
    assert_eq!(*old_seen.lock().unwrap(), vec![announce(); 3]);
    let deltas = new_seen.lock().unwrap().clone();
    assert_eq!(deltas.len(), 3);
    assert!(deltas[1].blobs.is_empty() && deltas[2].base == Some(2));
}

/// A peer list naming `nodes` other nodes, the seeder and the asking node ("me", which the
/// trackers' client leaves out of what it returns).
fn list_naming(nodes: usize) -> Vec<PeerEntry> {
    let mut list: Vec<PeerEntry> = (0..nodes)
        .map(|k| entry(&format!("other-{k}"), 4, &[1]))
        .collect();
    list.push(entry(
        &format!("{SEEDER_ID_PREFIX}10.0.0.1:7080"),
        4,
        &[0, 1, 2, 3],
    ));
    list.push(entry("me", 4, &[2]));
    list
}

#[test]
fn a_list_is_reusable_when_it_names_enough_nodes_besides_seeders_and_the_asker() {
    use super::proto::{reusable_list, reusable_list_of};
    for (nodes, reusable) in [(SHORT_LIST_NODES, true), (SHORT_LIST_NODES - 1, false)] {
        // Each list also names the seeder and the asker ("me"): neither counts.
        let list = list_naming(nodes);
        assert_eq!(list.len(), nodes + 2);
        assert_eq!(reusable_list(&list, "me"), reusable, "{nodes} nodes");
        let ids = list.iter().map(|e| e.peer_id.as_str());
        assert_eq!(reusable_list_of(ids, "me"), reusable, "{nodes} nodes, ids");
    }
    // Another asker counts "me" as a node.
    assert!(reusable_list(&list_naming(SHORT_LIST_NODES - 1), "other"));
}

#[tokio::test]
async fn a_paced_node_skips_rounds_and_reuses_peer_lists_until_the_tracker_says() {
    let full = list_naming(SHORT_LIST_NODES);
    let ((up, seen, _), queries) = paced_tracker(300, 300, full.clone()).await;
    let t = trackers(vec![up.url.clone()]);
    let d = Digest::of(b"blob");
    let mut state = announce();
    t.announce(&state).await.unwrap();
    // Sooner than 300 ms: skipped, nothing sent; the change goes with the next delta.
    state.blobs[0] = BlobHave::new(d.clone(), &ChunkSet::empty(3));
    t.announce(&state).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
    for _ in 0..3 {
        assert_eq!(t.peers(&d, "me").await.unwrap().len(), full.len() - 1);
    }
    assert_eq!(
        queries.lock().unwrap().len(),
        1,
        "one list asked, then reused"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    t.announce(&state).await.unwrap();
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert_eq!((sent[1].seq, sent[1].base), (2, Some(1)));
    assert_eq!(sent[1].blobs, state.blobs);
    assert_eq!(t.peers(&d, "me").await.unwrap().len(), full.len() - 1);
    assert_eq!(
        queries.lock().unwrap().len(),
        2,
        "asked again past the pacing"
    );
}

#[tokio::test]
async fn a_blob_the_tracker_was_not_told_of_is_announced_within_the_pacing() {
    let ((up, seen, _), _) = paced_tracker(300, 300, vec![]).await;
    let t = trackers(vec![up.url.clone()]);
    let mut state = announce();
    t.announce(&state).await.unwrap();
    // A download starts within the pacing: its blob goes at once.
    let new = Digest::of(b"new");
    state
        .blobs
        .push(BlobHave::new(new.clone(), &ChunkSet::empty(2)));
    t.announce(&state).await.unwrap();
    // Its first chunk, still within the pacing: held back for the next delta.
    let mut one = ChunkSet::empty(2);
    one.insert(0);
    state.blobs[1] = BlobHave::new(new.clone(), &one);
    t.announce(&state).await.unwrap();
    let sent = seen.lock().unwrap().clone();
    assert_eq!(
        sent.len(),
        2,
        "the new blob sent at once, the change to it paced"
    );
    assert_eq!(sent[1].blobs, vec![BlobHave::new(new, &ChunkSet::empty(2))]);
}

#[tokio::test]
async fn a_short_peer_list_is_not_reused_under_the_pacing() {
    // One node fewer than a full list; the seeder and the node itself are not counted.
    let short = list_naming(SHORT_LIST_NODES - 1);
    let ((up, _, _), queries) = paced_tracker(300, 300, short.clone()).await;
    let t = trackers(vec![up.url.clone()]);
    t.announce(&announce()).await.unwrap();
    let d = Digest::of(b"blob");
    for _ in 0..3 {
        assert_eq!(t.peers(&d, "me").await.unwrap().len(), short.len() - 1);
    }
    assert_eq!(
        queries.lock().unwrap().len(),
        3,
        "a short list is asked for again each time"
    );
}

#[tokio::test]
async fn a_starved_download_asks_for_a_fresh_list_once_the_kept_one_is_half_the_pacing_old() {
    let full = list_naming(SHORT_LIST_NODES);
    // A peer-list pacing of 2 s: a starved download's ask reuses the kept list for 1 s.
    let ((up, _, _), queries) = paced_tracker(60_000, 2_000, full.clone()).await;
    let t = trackers(vec![up.url.clone()]);
    t.announce(&announce()).await.unwrap();
    let d = Digest::of(b"blob");
    let asked = || queries.lock().unwrap().len();
    assert_eq!(t.peers(&d, "me").await.unwrap().len(), full.len() - 1);
    assert_eq!(t.peers(&d, "me").await.unwrap().len(), full.len() - 1);
    assert_eq!(t.fresh_peers(&d, "me").await.unwrap().len(), full.len() - 1);
    assert_eq!(
        asked(),
        1,
        "reused within the pacing, and half of it for a fresh ask"
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(t.fresh_peers(&d, "me").await.unwrap().len(), full.len() - 1);
    assert_eq!(
        asked(),
        2,
        "a starved download's list is asked anew past half the pacing"
    );
    // The fresh list is the one kept: a later ask, fresh or not, reuses it.
    assert_eq!(t.peers(&d, "me").await.unwrap().len(), full.len() - 1);
    assert_eq!(t.fresh_peers(&d, "me").await.unwrap().len(), full.len() - 1);
    assert_eq!(asked(), 2);
}
