//! The unpacker fed a blob its source checks ([`unpack_verified`], a [`VerifiedStream`]): it
//! does not hash the blob again, but reads the stream to its end, so the source's mismatch
//! (its last item, after every byte) still fails the unpack and leaves nothing; the diff ID
//! is checked as always. Needs root (file owners).

use std::fs;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use shoal_p2p::registry::BlobStream;
use shoal_p2p::source::VerifiedStream;
use shoal_p2p::Digest;
use shoal_plugin::unpack::{unpack_verified, LayerSpec, UnpackError, UnpackOptions};

#[path = "../../testing/skip.rs"]
mod skip;

/// Root is here; else the test skips, saying so (or fails under CI).
fn is_root() -> bool {
    !skip::skip_unless(&[], true)
}

fn sample_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..20 {
        let data = vec![i as u8; i * 3000];
        let mut h = tar::Header::new_gnu();
        h.set_path(format!("d{}/f{i}", i % 3)).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn pieces(blob: &[u8]) -> BlobStream {
    let items: Vec<Result<Bytes, shoal_p2p::Error>> = blob
        .chunks(5000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(items))
}

/// `blob` checked against `digest` by its source.
fn checked(blob: &[u8], digest: &Digest) -> VerifiedStream {
    VerifiedStream::hashing(pieces(blob), digest.clone(), "app/web".into())
}

fn layer(digest: Digest, diff_id: Option<Digest>) -> LayerSpec {
    LayerSpec {
        digest,
        diff_id,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
    }
}

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checked_blob_is_unpacked_and_its_mismatch_at_the_very_end_leaves_nothing() {
    if !is_root() {
        return;
    }
    let tarball = sample_tar();
    let blob = gzip(&tarball);
    let digest = Digest::of(&blob);
    let tmp = tempfile::tempdir().unwrap();
    let opts = UnpackOptions::default();

    let target = tmp.path().join("ok");
    let spec = layer(digest.clone(), Some(Digest::of(&tarball)));
    let stats = unpack_verified(checked(&blob, &digest), &spec, &target, &opts)
        .await
        .unwrap();
    assert_eq!(stats.compressed_bytes, blob.len() as u64);
    assert_eq!(stats.diff_id, Digest::of(&tarball));
    assert_eq!(fs::read(target.join("d1/f4")).unwrap(), vec![4u8; 12_000]);

    // Padding after the gzip member changes no file: the source finds the blob does not
    // match only after its last byte and says so as the stream's last item; the unpack
    // fails and leaves nothing.
    let mut padded = blob.clone();
    padded.extend_from_slice(&[0u8; 1024]);
    let target = tmp.path().join("bad");
    let e = unpack_verified(checked(&padded, &digest), &spec, &target, &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, UnpackError::Read { .. }), "{e}");
    assert!(e.to_string().contains("sha256"), "{e}");
    assert_eq!(entries(tmp.path()), ["ok"]);

    // A flipped byte inside the blob: refused as well.
    let mut flipped = blob.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 1;
    let e = unpack_verified(checked(&flipped, &digest), &spec, &target, &opts)
        .await
        .unwrap_err();
    println!("{e}");
    assert_eq!(entries(tmp.path()), ["ok"]);

    // The diff ID is still the unpacker's own check.
    let wrong = layer(digest.clone(), Some(Digest::of(b"another tar")));
    let e = unpack_verified(checked(&blob, &digest), &wrong, &target, &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, UnpackError::DiffIdMismatch { .. }), "{e}");
    assert_eq!(entries(tmp.path()), ["ok"]);
}
