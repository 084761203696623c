//! Property tests of the push hook's parsers (DESIGN "Security and bad input"): the
//! registry's notification envelope and the manifests it names. Mutated ([`mutate`]) and
//! random envelopes never panic, hold memory bounded by the body ([`alloc`]), and give a job
//! only for a well-formed push event; valid events give exactly the job they describe.

use proptest::prelude::*;
use shoal_p2p::registry::media_type as mt;
use shoal_p2p::Digest;

use super::{job_of, jobs_of_manifest, Envelope, Job};

#[path = "../../testing/alloc.rs"]
mod alloc;
#[path = "../../testing/mutate.rs"]
mod mutate;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_raw)
}

/// One event as distribution sends it (`action`, `target` with the fields the hook reads,
/// and some it ignores).
#[derive(Clone, Debug)]
struct Event {
    action: &'static str,
    media_type: &'static str,
    digest: Digest,
    repository: String,
}

fn event() -> impl Strategy<Value = Event> {
    (
        prop_oneof![Just("push"), Just("pull"), Just("mount"), Just("delete")],
        prop_oneof![
            Just(mt::OCI_MANIFEST),
            Just(mt::OCI_INDEX),
            Just(mt::DOCKER_MANIFEST),
            Just("application/vnd.oci.image.layer.v1.tar+gzip"),
            Just("application/octet-stream"),
            Just("application/vnd.example.other"),
        ],
        digest(),
        "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
    )
        .prop_map(|(action, media_type, digest, repository)| Event {
            action,
            media_type,
            digest,
            repository,
        })
}

fn to_json(e: &Event) -> serde_json::Value {
    serde_json::json!({
        "id": "x",
        "timestamp": "2024-01-01T00:00:00Z",
        "action": e.action,
        "target": {
            "mediaType": e.media_type,
            "digest": e.digest.to_string(),
            "size": 123,
            "repository": e.repository,
            "url": "http://registry/v2/x",
        },
        "request": {"method": "PUT"},
    })
}

fn envelope(events: &[Event]) -> Vec<u8> {
    let events: Vec<_> = events.iter().map(to_json).collect();
    serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap()
}

/// The job a well-formed event asks for.
fn expected(e: &Event) -> Option<Job> {
    if e.action != "push" {
        return None;
    }
    let (repository, digest) = (e.repository.clone(), e.digest.clone());
    match e.media_type {
        mt::OCI_MANIFEST | mt::OCI_INDEX | mt::DOCKER_MANIFEST => {
            Some(Job::Manifest { repository, digest })
        }
        "application/vnd.oci.image.layer.v1.tar+gzip" | "application/octet-stream" => {
            Some(Job::Blob { repository, digest })
        }
        _ => None,
    }
}

/// Every job of an envelope body, as the route computes them (`None`: not an envelope).
fn jobs(body: &[u8]) -> Option<Vec<Job>> {
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    Some(
        envelope
            .events
            .iter()
            .filter_map(|e| job_of(e).1.ok())
            .collect(),
    )
}

fn manifest(index: bool, digests: &[Digest]) -> Vec<u8> {
    let list: Vec<_> = digests
        .iter()
        .map(|d| serde_json::json!({"mediaType": mt::OCI_MANIFEST, "digest": d.to_string(), "size": 1}))
        .collect();
    let doc = if index {
        serde_json::json!({"schemaVersion": 2, "mediaType": mt::OCI_INDEX, "manifests": list})
    } else {
        serde_json::json!({"schemaVersion": 2, "mediaType": mt::OCI_MANIFEST, "layers": list})
    };
    serde_json::to_vec(&doc).unwrap()
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn valid_envelopes_give_their_jobs(events in proptest::collection::vec(event(), 0..6)) {
        let want: Vec<Job> = events.iter().filter_map(expected).collect();
        prop_assert_eq!(jobs(&envelope(&events)).unwrap(), want);
    }

    #[test]
    fn hostile_envelopes(
        body in mutate::hostile(proptest::collection::vec(event(), 1..5).prop_map(|e| envelope(&e)))
    ) {
        let got = alloc::bounded("envelope", body.len(), 32, 64 << 10, || jobs(&body));
        for job in got.into_iter().flatten() {
            let (Job::Blob { repository, .. } | Job::Manifest { repository, .. }) = job;
            prop_assert!(body.len() >= repository.len());
        }
    }

    #[test]
    fn manifests_give_their_blobs(index in any::<bool>(), ds in proptest::collection::vec(digest(), 0..6)) {
        let media_type = if index { mt::OCI_INDEX } else { mt::OCI_MANIFEST };
        let got = jobs_of_manifest("r", media_type, &manifest(index, &ds)).unwrap();
        let want: Vec<Job> = ds
            .into_iter()
            .map(|digest| {
                let repository = "r".to_string();
                if index { Job::Manifest { repository, digest } } else { Job::Blob { repository, digest } }
            })
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn hostile_manifests(
        index in any::<bool>(),
        body in mutate::hostile(proptest::collection::vec(digest(), 0..6).prop_map(|d| manifest(false, &d))),
    ) {
        let media_type = if index { mt::OCI_INDEX } else { mt::OCI_MANIFEST };
        let got = alloc::bounded("manifest", body.len(), 32, 64 << 10, || {
            jobs_of_manifest("r", media_type, &body)
        });
        if let Err(e) = got {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
