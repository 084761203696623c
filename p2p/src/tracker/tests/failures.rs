//! Each way a tracker request fails: its [`TrackerError`] variant, a message naming the
//! tracker and the request, and the typed cause behind `source()`.

use std::error::Error as _;

use super::*;
use crate::tracker::http::MAX_BODY;

/// The one failure of a round against a single tracker.
fn only_failure(e: TrackerError) -> TrackerError {
    match e {
        TrackerError::Unavailable { mut failures } if failures.len() == 1 => failures.remove(0),
        other => panic!("{other:?}"),
    }
}

/// Checks that `e` is tracker `url` failing `request`, that its message says so, and
/// returns the typed cause as `source()` gives it.
fn cause<'e>(e: &'e TrackerError, url: &str, request: &Request) -> &'e Failure {
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("tracker {url}: {request}: ")),
        "{text}"
    );
    match e {
        TrackerError::Request {
            url: u, request: r, ..
        } => assert_eq!((u.as_str(), r), (url, request)),
        other => panic!("{other:?}"),
    }
    let source = e.source().expect("a typed cause");
    source.downcast_ref::<Failure>().expect("a Failure")
}

fn whole(seq: u64) -> Request {
    Request::DeltaAnnounce { seq, whole: true }
}

#[tokio::test]
async fn a_tracker_answering_500_is_a_status_with_its_message() {
    let broken = failing(StatusCode::INTERNAL_SERVER_ERROR).await;
    let t = trackers(vec![broken.url.clone()]);
    let e = only_failure(t.announce(&announce()).await.unwrap_err());
    match cause(&e, &broken.url, &whole(1)) {
        Failure::Status { status, message } => {
            assert_eq!(*status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(message, "tracker broken");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string()
            .ends_with("status 500 Internal Server Error: tracker broken"),
        "{e}"
    );

    let d = Digest::of(b"blob");
    let e = only_failure(t.peers(&d, "me").await.unwrap_err());
    let peers = Request::Peers { digest: d.clone() };
    assert!(matches!(
        cause(&e, &broken.url, &peers),
        Failure::Status { message, .. } if message == "tracker broken"
    ));

    let e = only_failure(t.chunk_manifest("reg:5000", "a/b", &d).await.unwrap_err());
    let manifest = Request::ChunkManifest { digest: d.clone() };
    assert!(matches!(
        cause(&e, &broken.url, &manifest),
        Failure::Status { status, .. } if *status == StatusCode::INTERNAL_SERVER_ERROR
    ));
    assert!(
        e.to_string()
            .contains(&format!("chunk manifest of {d}: status 500")),
        "{e}"
    );
}

#[tokio::test]
async fn a_long_error_body_is_cut() {
    let text = "é".repeat(MAX_MESSAGE);
    let long = serve(Router::new().fallback(move || {
        let text = text.clone();
        async move { (StatusCode::SERVICE_UNAVAILABLE, text) }
    }))
    .await;
    let e = only_failure(
        trackers(vec![long.url.clone()])
            .announce(&announce())
            .await
            .unwrap_err(),
    );
    match cause(&e, &long.url, &whole(1)) {
        Failure::Status { status, message } => {
            assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(message.len() <= MAX_MESSAGE + 3, "{}", message.len());
            assert!(
                message.starts_with("éé") && message.ends_with("é..."),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_tracker_not_listening_is_a_transport_failure() {
    let down = nowhere();
    let t = trackers(vec![down.clone()]);
    let e = only_failure(t.announce(&announce()).await.unwrap_err());
    let Failure::Transport(reqwest) = cause(&e, &down, &whole(1)) else {
        panic!("{e:?}");
    };
    assert!(reqwest.is_connect(), "{reqwest:?}");
    // The transport's own causes are in the message (reqwest's says little alone).
    let text = e.to_string();
    assert!(text.contains("Connection refused"), "{text}");
    // And reachable as sources below the failure.
    let below = e
        .source()
        .and_then(|f| f.source())
        .expect("reqwest's error");
    assert!(below.downcast_ref::<reqwest::Error>().is_some());

    // The next round sends the whole state again, numbered on.
    let e = only_failure(t.announce(&announce()).await.unwrap_err());
    assert!(matches!(cause(&e, &down, &whole(2)), Failure::Transport(_)));

    let d = Digest::of(b"blob");
    let e = only_failure(t.peers(&d, "me").await.unwrap_err());
    assert!(matches!(
        cause(&e, &down, &Request::Peers { digest: d }),
        Failure::Transport(_)
    ));
}

#[tokio::test]
async fn a_tracker_answering_garbage_is_a_decode_failure() {
    let garbage = serve(Router::new().fallback(|| async { "<html>hello</html>" })).await;
    let t = trackers(vec![garbage.url.clone()]);
    let e = only_failure(t.announce(&announce()).await.unwrap_err());
    let Failure::Decode(json) = cause(&e, &garbage.url, &whole(1)) else {
        panic!("{e:?}");
    };
    assert!(json.is_syntax(), "{json:?}");
    assert!(e.to_string().contains(": malformed answer: "), "{e}");

    let d = Digest::of(b"blob");
    let e = only_failure(t.peers(&d, "me").await.unwrap_err());
    assert!(matches!(
        cause(&e, &garbage.url, &Request::Peers { digest: d.clone() }),
        Failure::Decode(_)
    ));

    // A chunk manifest that does not parse: the manifest's own error.
    let e = t.chunk_manifest("r", "a", &d).await.unwrap_err();
    let manifest = Request::ChunkManifest { digest: d.clone() };
    assert!(matches!(
        cause(&e, &garbage.url, &manifest),
        Failure::Manifest(ChunkManifestError::Json(_))
    ));

    // A peer list of another blob.
    let other = Digest::of(b"other");
    let wrong = serve(Router::new().route(
        "/v1/peers/{digest}",
        get(move || {
            let other = other.clone();
            async move {
                Json(PeerList {
                    digest: other,
                    peers: vec![],
                })
            }
        }),
    ))
    .await;
    let e = only_failure(
        trackers(vec![wrong.url.clone()])
            .peers(&d, "me")
            .await
            .unwrap_err(),
    );
    assert!(matches!(
        cause(&e, &wrong.url, &Request::Peers { digest: d }),
        Failure::OtherBlob { got } if *got == Digest::of(b"other")
    ));
}

/// A delta tracker that takes whole states and answers every delta with a base `refusal`.
async fn refusing(refusal: StatusCode) -> (Running, Seen<DeltaAnnounce>) {
    let seen: Seen<DeltaAnnounce> = Arc::default();
    let s = seen.clone();
    let router = Router::new().route(
        "/v1/announce/delta",
        post(move |Json(body): Json<DeltaAnnounce>| async move {
            let has_base = body.base.is_some();
            s.lock().unwrap().push(body);
            if has_base {
                return Err((
                    refusal,
                    Json(ErrorBody {
                        error: "base unknown".into(),
                    }),
                ));
            }
            Ok(Json(DeltaReply {
                interval_ms: 1000,
                full_state_needed: false,
                min_interval_ms: 0,
                peer_list_interval_ms: 0,
            }))
        }),
    );
    (serve(router).await, seen)
}

#[tokio::test]
async fn a_refused_delta_names_its_sequence_number() {
    let (up, seen) = refusing(StatusCode::CONFLICT).await;
    let t = trackers(vec![up.url.clone()]);
    t.announce(&announce()).await.unwrap();
    let e = only_failure(t.announce(&announce()).await.unwrap_err());
    let delta = Request::DeltaAnnounce {
        seq: 2,
        whole: false,
    };
    assert!(matches!(
        cause(&e, &up.url, &delta),
        Failure::Status { status, message } if *status == StatusCode::CONFLICT && message == "base unknown"
    ));
    assert!(
        e.to_string().contains("delta announce (seq 2): status 409"),
        "{e}"
    );
    // After a refusal the whole state goes again, and is taken.
    t.announce(&announce()).await.unwrap();
    let bases: Vec<_> = seen.lock().unwrap().iter().map(|d| d.base).collect();
    assert_eq!(bases, [None, Some(1), None]);
}

#[tokio::test]
async fn a_tracker_asking_for_the_whole_state_after_taking_it_fails_the_round() {
    let forgetful = serve(Router::new().route(
        "/v1/announce/delta",
        post(|| async {
            Json(DeltaReply {
                interval_ms: 1000,
                full_state_needed: true,
                min_interval_ms: 0,
                peer_list_interval_ms: 0,
            })
        }),
    ))
    .await;
    let t = trackers(vec![forgetful.url.clone()]);
    // The first delta (1) holds the whole state; asked for it, the node sends it again (2),
    // and the tracker asks again.
    let e = only_failure(t.announce(&announce()).await.unwrap_err());
    assert!(matches!(
        cause(&e, &forgetful.url, &whole(2)),
        Failure::WholeStateRefused
    ));
}

#[tokio::test]
async fn a_tracker_without_deltas_refusing_the_whole_state_names_the_older_route() {
    let old = serve(Router::new().route(
        "/v1/announce",
        post(|| async {
            (
                StatusCode::BAD_REQUEST,
                Json(ErrorBody {
                    error: "addr 127.0.0.1:7070 not allowed".into(),
                }),
            )
        }),
    ))
    .await;
    let e = only_failure(
        trackers(vec![old.url.clone()])
            .announce(&announce())
            .await
            .unwrap_err(),
    );
    assert!(matches!(
        cause(&e, &old.url, &Request::Announce),
        Failure::Status { status, .. } if *status == StatusCode::BAD_REQUEST
    ));
    assert!(
        e.to_string()
            .ends_with(": announce: status 400 Bad Request: addr 127.0.0.1:7070 not allowed"),
        "{e}"
    );
}

#[tokio::test]
async fn an_answer_past_the_limit_is_too_long() {
    let huge = serve(Router::new().fallback(|| async { vec![b' '; MAX_BODY + 1] })).await;
    let d = Digest::of(b"blob");
    let e = only_failure(
        trackers(vec![huge.url.clone()])
            .peers(&d, "me")
            .await
            .unwrap_err(),
    );
    assert!(matches!(
        cause(&e, &huge.url, &Request::Peers { digest: d }),
        Failure::TooLong { status, limit: MAX_BODY } if *status == StatusCode::OK
    ));
}

#[tokio::test]
async fn all_trackers_down_lists_each_one_and_converts_to_the_crate_error() {
    let down = nowhere();
    let broken = failing(StatusCode::BAD_GATEWAY).await;
    let d = Digest::of(b"blob");
    let e = trackers(vec![down.clone(), broken.url.clone()])
        .peers(&d, "me")
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "no tracker answered: tracker {down}: peers of {d}: "
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "; tracker {}: peers of {d}: status 502 Bad Gateway: tracker broken",
            broken.url
        )),
        "{text}"
    );
    // No one cause: each failure carries its own.
    assert!(e.source().is_none());
    let TrackerError::Unavailable { failures } = &e else {
        panic!("{e:?}");
    };
    assert!(matches!(failures[0].failure(), Some(Failure::Transport(_))));
    assert!(failures[1].source().is_some());

    // The crate's error shows it as it is.
    let crate_error = crate::Error::from(e);
    assert_eq!(crate_error.to_string(), text);
    assert!(matches!(
        crate_error,
        crate::Error::Tracker(TrackerError::Unavailable { .. })
    ));
}
