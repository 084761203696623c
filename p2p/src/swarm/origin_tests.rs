//! Downloads and readers of different registries and repositories (DESIGN "Security and bad
//! input"): a client gets only bytes known from the registry it asked, and each registry
//! range carries the newest reader's credentials for its own repository.

use bytes::Bytes;
use futures::TryStreamExt;

use super::tests::{blob, committed, manifest_of, rig, CHUNK};
use super::*;
use crate::source::Credentials;

fn client(token: &str) -> Reader {
    Reader::Client(Some(Credentials::new(format!("Bearer {token}"))))
}

fn other_origin<T>(r: Result<T, crate::Error>) -> bool {
    matches!(r, Err(crate::Error::OtherOrigin { .. }))
}

#[tokio::test]
async fn a_client_of_another_registry_gets_nothing_the_node_holds_from_one() {
    let rig = rig();
    let data = blob(6 * CHUNK as usize, 21);
    let digest = rig.registry.add(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    let elsewhere: ImageReference = "evil.example/app/web:v1".parse().unwrap();
    let (alice, mallory) = (client("alice"), client("mallory"));

    // A download in progress: clients of its registry join it, others are turned away.
    let started = rig.swarm.download(&rig.image, &digest, &Reader::Node).await;
    let started = started.unwrap().expect("a download");
    assert!(other_origin(
        rig.swarm.download(&elsewhere, &digest, &mallory).await
    ));
    let joined = rig.swarm.download(&rig.image, &digest, &alice).await;
    assert!(Arc::ptr_eq(&joined.unwrap().unwrap(), &started));
    // The node itself reads whatever it holds (as containerd's content store would).
    let node = rig.swarm.download(&elsewhere, &digest, &Reader::Node).await;
    assert!(Arc::ptr_eq(&node.unwrap().unwrap(), &started));
    drop(started);

    // Committed: known from its registry only.
    committed(&rig, &digest).await;
    assert_eq!(
        rig.swarm.cache().origins(&digest),
        [rig.image.registry.as_str()]
    );
    assert!(other_origin(
        rig.swarm.fetch_as(&elsewhere, &digest, &mallory).await
    ));
    assert!(other_origin(
        rig.swarm
            .fetch_range_as(&elsewhere, &digest, 0..10, &mallory)
            .await
    ));
    let anonymous = Reader::Client(None);
    assert!(other_origin(
        rig.swarm.fetch_as(&elsewhere, &digest, &anonymous).await
    ));
    for (image, reader) in [(&rig.image, &alice), (&elsewhere, &Reader::Node)] {
        let stream = rig.swarm.fetch_as(image, &digest, reader).await.unwrap();
        let parts: Vec<Bytes> = stream.try_collect().await.unwrap();
        assert_eq!(parts.concat(), data);
    }
    // Nothing of it was fetched for the other registry.
    assert!(rig
        .registry
        .calls()
        .iter()
        .all(|(image, _)| image.registry == rig.image.registry));
}

#[tokio::test]
async fn registry_ranges_use_the_newest_readers_own_repository_and_credentials() {
    let rig = rig();
    let data = blob(3 * CHUNK as usize, 22);
    let digest = Digest::of(&data);
    rig.tracker.add_manifest(manifest_of(&data));
    let repo = |name: &str| -> ImageReference {
        format!("{}/{name}:v1", rig.image.registry).parse().unwrap()
    };
    let (one, two) = (client("one"), client("two"));
    // Nobody serves the blob: the download stays in progress while readers come and go.
    let download = rig.swarm.download(&repo("team/one"), &digest, &one).await;
    let download = download.unwrap().expect("a download");
    let grant = |download: &Download| download.grant().map(|g| (g.repository, g.reader));
    assert_eq!(grant(&download), Some(("team/one".into(), one.clone())));
    download.attach(&repo("team/two"), &two).unwrap();
    assert_eq!(grant(&download), Some(("team/two".into(), two.clone())));
    // The same reader again moves its grant last, without a copy.
    download.attach(&repo("team/one"), &one).unwrap();
    assert_eq!(grant(&download), Some(("team/one".into(), one.clone())));
    download.revoke(&download.grant().unwrap());
    assert_eq!(grant(&download), Some(("team/two".into(), two.clone())));
    // The node reading another registry's image lends its own credentials for the
    // download's first repository; a client of another registry adds nothing.
    let elsewhere: ImageReference = "evil.example/team/two:v1".parse().unwrap();
    assert!(other_origin(download.attach(&elsewhere, &client("evil"))));
    assert_eq!(grant(&download), Some(("team/two".into(), two.clone())));
    download.attach(&elsewhere, &Reader::Node).unwrap();
    assert_eq!(grant(&download), Some(("team/one".into(), Reader::Node)));
    download.revoke(&download.grant().unwrap());
    assert_eq!(grant(&download), Some(("team/two".into(), two)));
    download.revoke(&download.grant().unwrap());
    assert_eq!(grant(&download), None, "every grant refused");
}
