use std::sync::Arc;

use futures::TryStreamExt;
use shoal_p2p::metrics::{render, Registry};
use shoal_p2p::reference::ImageReference;
use shoal_p2p::source::{BlobSource, Credentials, Reader, RecordingSource};
use shoal_p2p::Digest;

use super::*;

fn image() -> ImageReference {
    "registry.test/app:v1".parse().expect("reference")
}

fn count(m: &PullMetrics, path: &'static str, result: &'static str) -> u64 {
    m.blobs.get_or_create(&PullLabels { path, result }).get()
}

fn rendered(m: &PullMetrics) -> String {
    let mut registry = Registry::default();
    m.register(&mut registry);
    render(&registry)
}

#[test]
fn every_label_is_there_at_zero_from_the_start() {
    let text = rendered(&PullMetrics::default());
    for path in PATHS {
        for result in RESULTS {
            let line = format!("shoal_pull_blobs_total{{path=\"{path}\",result=\"{result}\"}} 0");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        for name in ["shoal_pull_blob_bytes_total", "shoal_pull_fallbacks_total"] {
            let line = format!("{name}{{path=\"{path}\"}} 0");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        let line = format!("shoal_pull_seconds_count{{path=\"{path}\"}} 0");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    assert!(
        text.contains("shoal_registry_received_bytes_total 0"),
        "{text}"
    );
}

#[tokio::test]
async fn fetches_are_counted_by_how_they_end() {
    let fake = Arc::new(RecordingSource::new());
    let whole = fake.add(&[7u8; 3000]);
    let cut = Digest::of(b"the whole blob");
    fake.add_cut(cut.clone(), b"the wh");
    let m = PullMetrics::default();
    let source = MeteredSource::new(fake.clone(), m.clone(), "snapshotter");
    let image = image();

    // Read to the end: ok, its bytes, one duration.
    let data: Vec<_> = source
        .fetch(&image, &whole)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(data.iter().map(|b| b.len()).sum::<usize>(), 3000);
    assert_eq!(count(&m, "snapshotter", "ok"), 1);
    let path = PathLabel {
        path: "snapshotter",
    };
    assert_eq!(m.bytes.get_or_create(&path).get(), 3000);
    assert!(rendered(&m).contains("shoal_pull_seconds_count{path=\"snapshotter\"} 1"));

    // A stream that fails mid-blob: an error (its bytes so far delivered).
    let r: Result<Vec<_>, _> = source
        .fetch(&image, &cut)
        .await
        .unwrap()
        .try_collect()
        .await;
    assert!(r.is_err());
    assert_eq!(count(&m, "snapshotter", "error"), 1);
    assert_eq!(m.bytes.get_or_create(&path).get(), 3006);

    // A fetch that fails at once (unknown blob): an error too.
    assert!(source.fetch(&image, &Digest::of(b"nowhere")).await.is_err());
    assert_eq!(count(&m, "snapshotter", "error"), 2);

    // A reader that stops early: dropped, no duration.
    let mut stream = source.fetch(&image, &whole).await.unwrap();
    let _first = futures::StreamExt::next(&mut stream).await;
    drop(stream);
    assert_eq!(count(&m, "snapshotter", "dropped"), 1);
    assert_eq!(count(&m, "snapshotter", "ok"), 1);

    // A range read to its end is ok as well.
    let part: Vec<_> = source
        .fetch_range(&image, &whole, 10..20)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(part.iter().map(|b| b.len()).sum::<usize>(), 10);
    assert_eq!(count(&m, "snapshotter", "ok"), 2);
    // The remote path's fallbacks are counted where a layer gives up, not here.
    assert_eq!(m.fallbacks.get_or_create(&path).get(), 0);
    assert_eq!(count(&m, "mirror", "ok"), 0);
}

#[tokio::test]
async fn a_failed_mirror_fetch_is_a_fallback_and_another_origin_is_not_a_pull() {
    /// Refuses every fetch as a blob known only from another registry.
    struct OtherOrigin;
    impl BlobSource for OtherOrigin {
        fn fetch_as<'a>(
            &'a self,
            image: &'a ImageReference,
            digest: &'a Digest,
            _: &'a Reader,
        ) -> BoxFuture<'a, Result<BlobStream, Error>> {
            Box::pin(async move {
                Err(Error::OtherOrigin {
                    registry: image.registry.clone(),
                    digest: digest.clone(),
                })
            })
        }
        fn fetch_range_as<'a>(
            &'a self,
            image: &'a ImageReference,
            digest: &'a Digest,
            _: Range<u64>,
            reader: &'a Reader,
        ) -> BoxFuture<'a, Result<BlobStream, Error>> {
            self.fetch_as(image, digest, reader)
        }
    }
    let m = PullMetrics::default();
    let image = image();
    let client = Reader::Client(Some(Credentials::new("Bearer t")));
    let other = MeteredSource::new(Arc::new(OtherOrigin), m.clone(), "mirror");
    assert!(other
        .fetch_as(&image, &Digest::of(b"x"), &client)
        .await
        .is_err());
    for result in RESULTS {
        assert_eq!(count(&m, "mirror", result), 0, "{result}");
    }

    let fake = Arc::new(RecordingSource::new());
    let mirror = MeteredSource::new(fake, m.clone(), "mirror");
    assert!(mirror
        .fetch_as(&image, &Digest::of(b"y"), &client)
        .await
        .is_err());
    assert_eq!(count(&m, "mirror", "error"), 1);
    let path = PathLabel { path: "mirror" };
    assert_eq!(m.fallbacks.get_or_create(&path).get(), 1);
}

#[tokio::test]
async fn registry_bytes_are_counted_whole_and_ranges() {
    let fake = Arc::new(RecordingSource::new());
    let digest = fake.add(&[1u8; 1000]);
    let m = PullMetrics::default();
    let registry = RegistryMeter::new(fake, &m);
    let image = image();
    let _: Vec<_> = registry
        .fetch(&image, &digest)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let _: Vec<_> = registry
        .fetch_range(&image, &digest, 0..100)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(m.registry_bytes.get(), 1100);
    assert!(rendered(&m).contains("shoal_registry_received_bytes_total 1100"));
}
