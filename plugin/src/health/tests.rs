use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use shoal_p2p::metrics::{render, Registry};
use shoal_p2p::source::{BlobSource, RecordingSource};
use shoal_p2p::tls::Transport;
use shoal_p2p::tracker::{Announce, HttpTrackers, Tracker, UploadStats};

use super::report::{render as render_text, StatusReport};
use super::watch::{LiveSource, SourceSlot, WatchedTrackers};
use super::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn a_change_of_state_moves_since_and_a_new_reason_does_not() {
    let t0 = Instant::now();
    let off = Record::off(t0);
    let (degraded, change) = transition(&off, State::Degraded, Some("bad CA".into()), t0 + secs(1));
    assert_eq!(
        change,
        Change::State {
            from: State::Off,
            held: secs(1)
        }
    );
    assert_eq!(degraded.since, t0 + secs(1));
    assert_eq!(degraded.reason.as_deref(), Some("bad CA"));

    let (same, change) = transition(
        &degraded,
        State::Degraded,
        Some("bad CA".into()),
        t0 + secs(5),
    );
    assert_eq!(change, Change::None);
    assert_eq!(same.since, t0 + secs(1));

    let (other, change) = transition(
        &degraded,
        State::Degraded,
        Some("port taken".into()),
        t0 + secs(6),
    );
    assert_eq!(change, Change::Reason);
    assert_eq!(
        other.since,
        t0 + secs(1),
        "still degraded since the first report"
    );

    let (up, change) = transition(&other, State::Up, Some("ignored".into()), t0 + secs(10));
    assert_eq!(
        change,
        Change::State {
            from: State::Degraded,
            held: secs(9)
        }
    );
    assert_eq!(up.reason, None, "an up component has no reason");
    assert!(State::Up.is_ok() && State::Off.is_ok());
    assert!(!State::Degraded.is_ok() && !State::Down.is_ok());
}

#[test]
fn an_outage_counts_from_its_first_failure_and_ends_with_a_success() {
    let t0 = Instant::now();
    let mut o = Outage::default();
    assert_eq!(o.out_for(t0), None);
    o.failed("refused".into(), t0);
    o.failed("timed out".into(), t0 + secs(4));
    assert_eq!(o.out_for(t0 + secs(6)), Some(secs(6)));
    assert!(!o.is_out(t0 + secs(9), GRACE));
    assert!(o.is_out(t0 + secs(10), GRACE));
    assert_eq!(o.last_error.as_deref(), Some("timed out"));
    o.ok(t0 + secs(11));
    assert!(!o.is_out(t0 + secs(30), GRACE));
    assert_eq!(o.last_error, None);
}

#[test]
fn the_swarm_is_degraded_only_by_a_tracker_out_for_the_grace() {
    let t0 = Instant::now();
    let mut trackers = BTreeMap::new();
    let mut a = Outage::default();
    a.ok(t0);
    let mut b = Outage::default();
    b.failed("connection refused".into(), t0);
    trackers.insert("https://a:7080".to_string(), a);
    trackers.insert("https://b:7080".to_string(), b);
    assert_eq!(
        swarm_state(&trackers, t0 + secs(9), GRACE),
        (State::Up, None)
    );
    let (state, reason) = swarm_state(&trackers, t0 + secs(10), GRACE);
    assert_eq!(state, State::Degraded);
    assert_eq!(
        reason.as_deref(),
        Some("tracker https://b:7080 unreachable: connection refused")
    );
    assert_eq!(swarm_state(&BTreeMap::new(), t0, GRACE), (State::Up, None));
}

#[test]
fn backoff_doubles_up_to_its_bound() {
    let mut b = Backoff::new(secs(2), secs(10));
    let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
    assert_eq!(delays, [2, 4, 8, 10, 10]);
    let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
    assert_eq!(
        zero.next_delay(),
        Duration::from_millis(1),
        "never a busy loop"
    );
    assert_eq!(Backoff::default().next_delay(), secs(2));
}

#[test]
fn in_flight_counts_until_the_guard_is_dropped() {
    let n = InFlight::default();
    let a = n.enter();
    let b = n.enter();
    assert_eq!(n.get(), 2);
    drop(a);
    drop(b);
    assert_eq!(n.get(), 0);
}

/// `/metrics` as shoald renders it, after `health` reported.
fn metrics_text(health: &Health) -> String {
    let mut registry = Registry::default();
    health.metrics().register(&mut registry);
    health.metrics().update(&health.report_at(Instant::now()));
    render(&registry)
}

#[test]
fn metrics_show_each_enabled_component_and_count_its_outages() {
    let h = Health::new();
    h.up(Component::Snapshotter);
    h.set(Component::Swarm, State::Degraded, Some("bad CA".into()));
    h.up(Component::Swarm);
    h.set(
        Component::Swarm,
        State::Down,
        Some("chunk server stopped".into()),
    );
    let text = metrics_text(&h);
    assert!(
        text.contains("shoal_component_up{component=\"snapshotter\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("shoal_component_up{component=\"swarm\"} 0"),
        "{text}"
    );
    assert!(
        !text.contains("shoal_component_up{component=\"mirror\"}"),
        "an off component has no up gauge: {text}"
    );
    assert!(text.contains("shoal_component_state{component=\"mirror\",state=\"off\"} 1"));
    assert!(text.contains("shoal_component_state{component=\"swarm\",state=\"down\"} 1"));
    assert!(text.contains("shoal_component_state{component=\"swarm\",state=\"up\"} 0"));
    assert!(text.contains("shoal_component_degraded_total{component=\"swarm\"} 2"));
    assert!(text.contains("shoal_component_degraded_total{component=\"snapshotter\"} 0"));
    assert!(text.contains("shoal_pulls_active{path=\"snapshotter\"} 0"));
    assert!(!text.contains("bad CA"), "reasons are not labels");
}

#[test]
fn a_running_swarm_follows_its_trackers() {
    let h = Health::new();
    h.swarm_running(
        "node-1",
        &["https://t1:7080".into(), "https://t2:7080".into()],
    );
    assert_eq!(h.get(Component::Swarm).state, State::Up);
    let t0 = Instant::now();
    h.tracker_result("https://t1:7080", Ok(()), t0);
    h.tracker_result("https://t2:7080", Err("connection refused".into()), t0);
    h.refresh_at(t0 + secs(5));
    assert_eq!(
        h.get(Component::Swarm).state,
        State::Up,
        "not yet for a while"
    );
    h.refresh_at(t0 + GRACE);
    let swarm = h.get(Component::Swarm);
    assert_eq!(swarm.state, State::Degraded);
    assert!(swarm
        .reason
        .unwrap()
        .contains("https://t2:7080 unreachable: connection refused"));
    let report = h.report_at(t0 + GRACE);
    assert_eq!(report.exit_code(), 1);
    let trackers = &report.swarm.as_ref().unwrap().trackers;
    assert_eq!(trackers[0].reachable, Some(true));
    assert_eq!(trackers[1].reachable, Some(false));
    h.tracker_result("https://t2:7080", Ok(()), t0 + GRACE + secs(1));
    assert_eq!(
        h.get(Component::Swarm).state,
        State::Up,
        "back when it answers"
    );

    h.swarm_stopped("chunk server stopped".into());
    h.refresh_at(t0 + GRACE + secs(2));
    assert_eq!(
        h.get(Component::Swarm).state,
        State::Down,
        "trackers do not revive it"
    );
}

#[test]
fn peers_listed_are_kept_for_a_minute() {
    let h = Health::new();
    h.swarm_running("node-1", &[]);
    let t0 = Instant::now();
    h.peers_listed([("node-2", "10.0.0.2:7070".parse().unwrap())], t0);
    h.peers_listed(
        [("node-3", "10.0.0.3:7070".parse().unwrap())],
        t0 + secs(30),
    );
    let report = h.report_at(t0 + secs(31));
    let peers = &report.swarm.as_ref().unwrap().peers;
    assert_eq!(peers.len(), 2);
    assert_eq!((peers[0].id.as_str(), peers[0].seen_secs), ("node-2", 31));
    h.peers_listed(std::iter::empty(), t0 + PEER_TTL + secs(1));
    let report = h.report_at(t0 + PEER_TTL + secs(1));
    let peers = &report.swarm.as_ref().unwrap().peers;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].id, "node-3");
}

#[test]
fn the_report_reads_for_a_person_and_round_trips_as_json() {
    let h = Health::new();
    h.up(Component::Snapshotter);
    h.up(Component::Remote);
    h.set_detail(
        Component::Remote,
        "layers from the registry through the blob cache",
    );
    h.retrying(
        Component::Swarm,
        "not started: cluster CA certificate \"/etc/shoal/ca.pem\": no CERTIFICATE".into(),
        Instant::now() + secs(30),
    );
    let report = h.report_at(Instant::now());
    assert_eq!(report.state, State::Degraded);
    assert_eq!(report.exit_code(), 1);
    let text = render_text(&report, "127.0.0.1:9464");
    assert!(text.starts_with("shoald "), "{text}");
    assert!(text.contains("127.0.0.1:9464: DEGRADED"), "{text}");
    assert!(text.contains("swarm        degraded"), "{text}");
    assert!(
        text.contains("why: not started: cluster CA certificate"),
        "{text}"
    );
    assert!(text.contains("next attempt in 2"), "{text}");
    assert!(text.contains("mirror       off"), "{text}");
    assert!(text.contains("pulls in flight: 0 layers"), "{text}");
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("\"state\":\"degraded\""), "{json}");
    let back: StatusReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);

    let healthy = Health::new();
    healthy.up(Component::Snapshotter);
    let report = healthy.report_at(Instant::now());
    assert_eq!((report.state, report.exit_code()), (State::Up, 0));
    assert!(render_text(&report, "x").contains("all components up"));
}

#[tokio::test]
async fn a_live_source_counts_fetches_and_switches_sources() {
    let first = Arc::new(RecordingSource::new());
    let digest = first.add(b"layer bytes");
    let slot: SourceSlot = Arc::new(RwLock::new(first.clone() as Arc<dyn BlobSource>));
    let in_flight = InFlight::default();
    let live = LiveSource::new(slot.clone(), in_flight.clone());
    let image = "registry.test/app:v1".parse().unwrap();
    let stream = live.fetch(&image, &digest).await.unwrap();
    assert_eq!(in_flight.get(), 1, "counted while the stream is read");
    let bytes: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(bytes.concat(), b"layer bytes");
    assert_eq!(in_flight.get(), 0, "not after it is dropped");
    assert_eq!(first.calls().len(), 1);

    let second = Arc::new(RecordingSource::new());
    second.add(b"layer bytes");
    *slot.write().unwrap() = second.clone();
    let range = live.fetch_range(&image, &digest, 0..5).await.unwrap();
    let bytes: Vec<bytes::Bytes> = range.try_collect().await.unwrap();
    assert_eq!(bytes.concat(), b"layer");
    assert_eq!(first.calls().len(), 1, "the new source serves from now on");
    assert_eq!(second.range_calls().len(), 1);
    assert!(live.fetch(&image, &digest).await.is_ok());
    assert_eq!(second.calls().len(), 1);
}

#[tokio::test]
async fn watched_trackers_report_each_tracker() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/announce",
        axum::routing::post(|| async { axum::Json(serde_json::json!({"interval_ms": 1000})) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    // Nothing listens on port 1.
    let bad = "http://127.0.0.1:1".to_string();
    let t = Transport::Plaintext;
    let client = |urls: Vec<String>| {
        HttpTrackers::new(urls, &t, Duration::from_secs(2), Duration::from_secs(5)).unwrap()
    };
    let h = Health::new();
    h.swarm_running("node-1", &[good.clone(), bad.clone()]);
    let watched = WatchedTrackers::new(client(vec![good.clone(), bad.clone()]), h.clone());
    let announce = Announce {
        peer_id: "node-1".into(),
        addr: "127.0.0.1:7070".parse().unwrap(),
        upload: UploadStats::default(),
        blobs: vec![],
    };
    watched
        .announce(&announce)
        .await
        .expect("one tracker took it");
    let report = h.report_at(Instant::now());
    let trackers = &report.swarm.as_ref().unwrap().trackers;
    let by_url = |u: &str| trackers.iter().find(|x| x.url == u).unwrap().clone();
    assert_eq!(by_url(&good).reachable, Some(true));
    let b = by_url(&bad);
    assert_eq!(b.reachable, Some(false));
    let error = b.error.unwrap();
    // The request and its cause, as docs/status.md shows them; the URL is not repeated
    // before it.
    assert_eq!(
        error,
        format!("delta announce (seq 1, whole state): error sending request for url ({bad}/v1/announce/delta): client error (Connect): tcp connect error: Connection refused (os error 111)")
    );

    let only_bad = WatchedTrackers::new(client(vec![bad]), h);
    assert!(only_bad.announce(&announce).await.is_err());
}
