//! Where whole blobs come from: the [`BlobSource`] seam (the registry; the cache in front of
//! it; the swarm), with a recording fake for tests.
//!
//! A fetch is made for a [`Reader`]: the node itself, or a client of shoald's registry mirror
//! (after the registry confirmed that this client may pull the blob). For a client, a source
//! that reaches the registry uses the client's own [`Credentials`] instead of the node's, and
//! a source that holds bytes (the cache, a swarm download) serves them only if it knows them
//! from the registry the client asked ([`Reader::may_use`]); otherwise the fetch fails with
//! [`Error::OtherOrigin`] and the mirror passes the request upstream. Sources that
//! neither hold bytes nor reach a registry ignore the reader.
//!
//! A range of a blob comes from wherever its source keeps the blob: the cache (verified
//! when it was committed), a swarm download (every chunk verified against the chunk
//! manifest before it is read), else the registry (HTTP Range, unverified). [`ByteRange`]
//! parses the `Range` header clients send.
//!
//! A whole blob comes unverified from [`BlobSource::fetch_as`] (whoever consumes it checks
//! the digest) or checked from [`BlobSource::fetch_verified_as`], as a [`VerifiedStream`]:
//! by default the source's stream hashed on the way; a source that checks the digest
//! anyway (the cache hashes a cached blob as it reads it, a swarm download hashes the blob
//! before committing it) hands over that check instead of a second hash.

mod range;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream;

use crate::digest::Digest;
use crate::reference::ImageReference;
use crate::registry::{verify_stream, BlobStream, OciError, RegistryClient, RegistryError};
use crate::Error;
pub use range::{BadRange, ByteRange};

/// A client's registry credentials for one fetch: the value of the `Authorization` header it
/// sent (a bearer token from the registry's token service, or Basic). Never logged.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials(String);

impl Credentials {
    /// Credentials from an `Authorization` header value (`Bearer …`, `Basic …`).
    pub fn new(authorization: impl Into<String>) -> Self {
        Self(authorization.into())
    }

    /// The `Authorization` header value.
    pub fn authorization(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// On whose behalf a blob is fetched (DESIGN "Security and bad input").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Reader {
    /// The node itself (the snapshotter, preheat): the node's configured credentials, and any
    /// bytes of the blob the node holds, whichever registry they came from (as containerd's
    /// own content store does).
    #[default]
    Node,
    /// A client of shoald's mirror that the registry let pull the blob: registry requests for
    /// it carry its own `Authorization` (`None`: it sent none, and the registry let it pull
    /// anonymously; the node's credentials for that registry are used), and only bytes known
    /// from the registry it asked are served to it.
    Client(Option<Credentials>),
}

/// The node as a reader, for [`BlobSource::fetch`] and [`BlobSource::fetch_range`].
static NODE: Reader = Reader::Node;

impl Reader {
    /// The client's own credentials (`None`: the node's).
    pub fn credentials(&self) -> Option<&Credentials> {
        match self {
            Reader::Node => None,
            Reader::Client(credentials) => credentials.as_ref(),
        }
    }

    /// Whether bytes of a blob the node knows from the registries `origins` may be served to
    /// this reader of the blob from `registry`: always to the node, to a client only when
    /// `registry` is one of them.
    pub fn may_use<'o>(&self, registry: &str, mut origins: impl Iterator<Item = &'o str>) -> bool {
        match self {
            Reader::Node => true,
            Reader::Client(_) => origins.any(|o| o == registry),
        }
    }

    /// [`Self::may_use`] as a result: [`Error::OtherOrigin`] when not.
    pub fn check_origin<'o>(
        &self,
        registry: &str,
        digest: &Digest,
        origins: impl Iterator<Item = &'o str>,
    ) -> Result<(), Error> {
        if self.may_use(registry, origins) {
            return Ok(());
        }
        Err(Error::OtherOrigin {
            registry: registry.to_owned(),
            digest: digest.clone(),
        })
    }
}

/// A whole blob's bytes as they arrive, checked against the digest they were fetched for:
/// the stream's last item is an error, instead of its end, unless all its bytes hash to that
/// digest. Only this module and the sources that check the digest themselves make one.
pub struct VerifiedStream(BlobStream);

impl VerifiedStream {
    /// `stream` (a whole blob's bytes) hashed on the way and checked against `digest` at its
    /// end ([`verify_stream`]; the error names `repository`).
    pub fn hashing(stream: BlobStream, digest: Digest, repository: String) -> Self {
        Self(verify_stream(stream, digest, repository))
    }

    /// A stream its source already checks as a [`VerifiedStream`] must be checked.
    pub(crate) fn checked(stream: BlobStream) -> Self {
        Self(stream)
    }

    /// The same stream passed through `wrap`, which must yield the stream's items unchanged
    /// and end when it ends (counting, metering).
    pub fn wrap(self, wrap: impl FnOnce(BlobStream) -> BlobStream) -> Self {
        Self(wrap(self.0))
    }

    /// The stream.
    pub fn into_stream(self) -> BlobStream {
        self.0
    }
}

impl fmt::Debug for VerifiedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerifiedStream")
    }
}

/// A source of whole blobs. The stream of [`Self::fetch_as`] is unverified: whoever consumes
/// it checks the digest, and a source that keeps bytes ([`crate::cache::CachingSource`])
/// checks it before keeping them; [`Self::fetch_verified_as`] checks it.
pub trait BlobSource: Send + Sync {
    /// The bytes of blob `digest` of `image`'s repository, as they arrive, fetched for
    /// `reader`: a client's registry requests carry its own credentials, and it gets only
    /// bytes known from `image`'s registry ([`Error::OtherOrigin`] otherwise; see the
    /// module documentation).
    fn fetch_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>>;

    /// The bytes `range` of blob `digest`, as they arrive, for `reader` (see
    /// [`Self::fetch_as`]): from the cache or a swarm download when the source has them
    /// (verified, see the module documentation), else from the registry (HTTP Range). A
    /// range past the blob's end is an error; a stream that ends short of the range ends
    /// with an error.
    fn fetch_range_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        range: Range<u64>,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>>;

    /// [`Self::fetch_as`], checked against `digest` ([`VerifiedStream`]). By default the
    /// stream is hashed on the way; a source that checks the digest anyway overrides this to
    /// hand over its own check, and a wrapper forwards it.
    fn fetch_verified_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<VerifiedStream, Error>> {
        Box::pin(async move {
            let stream = self.fetch_as(image, digest, reader).await?;
            Ok(VerifiedStream::hashing(
                stream,
                digest.clone(),
                image.repository.clone(),
            ))
        })
    }

    /// [`Self::fetch_verified_as`] for the node itself.
    fn fetch_verified<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<VerifiedStream, Error>> {
        self.fetch_verified_as(image, digest, &NODE)
    }

    /// [`Self::fetch_as`] for the node itself.
    fn fetch<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        self.fetch_as(image, digest, &NODE)
    }

    /// [`Self::fetch_range_as`] for the node itself.
    fn fetch_range<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        self.fetch_range_as(image, digest, range, &NODE)
    }
}

impl BlobSource for RegistryClient {
    fn fetch_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        Box::pin(self.blob_as(image, digest, None, reader.credentials()))
    }

    fn fetch_range_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        range: Range<u64>,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        Box::pin(self.blob_as(image, digest, Some(range), reader.credentials()))
    }
}

impl<T: BlobSource + ?Sized> BlobSource for std::sync::Arc<T> {
    fn fetch_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        (**self).fetch_as(image, digest, reader)
    }

    fn fetch_verified_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<VerifiedStream, Error>> {
        (**self).fetch_verified_as(image, digest, reader)
    }

    fn fetch_range_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        range: Range<u64>,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        (**self).fetch_range_as(image, digest, range, reader)
    }
}

/// What [`RecordingSource`] serves for one digest.
#[derive(Clone)]
enum Served {
    /// These bytes, in a few chunks.
    Bytes(Vec<u8>),
    /// These bytes, then a transport-like error (a connection cut mid-body); a range
    /// gets the part of them it covers, then the error.
    CutAfter(Vec<u8>),
}

/// A [`BlobSource`] fake: serves blobs from memory (in several chunks) and records every
/// fetch. Unknown digests answer like a registry's 404 `BLOB_UNKNOWN`.
#[derive(Default)]
pub struct RecordingSource {
    blobs: Mutex<HashMap<Digest, Served>>,
    calls: Mutex<Vec<(ImageReference, Digest)>>,
    ranges: Mutex<Vec<(Digest, Range<u64>)>>,
    /// The credentials of every fetch, in order (`None`: the node's own).
    credentials: Mutex<Vec<Option<Credentials>>>,
}

impl RecordingSource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `data` under its own digest, which is returned.
    pub fn add(&self, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        self.add_as(digest.clone(), data);
        digest
    }

    /// Serve `data` under `digest`, whatever `data` hashes to (a corrupt source).
    pub fn add_as(&self, digest: Digest, data: &[u8]) {
        let mut blobs = self.blobs.lock().expect("lock");
        blobs.insert(digest, Served::Bytes(data.to_vec()));
    }

    /// Serve `prefix` under `digest`, then end the stream with an error.
    pub fn add_cut(&self, digest: Digest, prefix: &[u8]) {
        let mut blobs = self.blobs.lock().expect("lock");
        blobs.insert(digest, Served::CutAfter(prefix.to_vec()));
    }

    /// Every fetch so far, in order.
    pub fn calls(&self) -> Vec<(ImageReference, Digest)> {
        self.calls.lock().expect("lock").clone()
    }

    /// Every range fetch so far, in order.
    pub fn range_calls(&self) -> Vec<(Digest, Range<u64>)> {
        self.ranges.lock().expect("lock").clone()
    }

    /// The credentials of every fetch and range fetch so far, in order (`None`: the node's
    /// own).
    pub fn credentials_seen(&self) -> Vec<Option<Credentials>> {
        self.credentials.lock().expect("lock").clone()
    }

    /// Bytes served by range fetches of `digest`.
    pub fn range_bytes_of(&self, digest: &Digest) -> u64 {
        let ranges = self.ranges.lock().expect("lock");
        ranges
            .iter()
            .filter(|(d, _)| d == digest)
            .map(|(_, r)| r.end - r.start)
            .sum()
    }

    /// How many fetches asked for `digest`.
    pub fn fetches_of(&self, digest: &Digest) -> usize {
        let calls = self.calls.lock().expect("lock");
        calls.iter().filter(|(_, d)| d == digest).count()
    }
}

/// `data` cut into (at most) three chunks.
fn chunked(data: &[u8]) -> Vec<Result<Bytes, Error>> {
    let step = data.len().div_ceil(3).max(1);
    data.chunks(step)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect()
}

impl BlobSource for RecordingSource {
    fn fetch_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        let seen = &self.credentials;
        seen.lock()
            .expect("lock")
            .push(reader.credentials().cloned());
        let calls = &self.calls;
        calls
            .lock()
            .expect("lock")
            .push((image.clone(), digest.clone()));
        let served = self.blobs.lock().expect("lock").get(digest).cloned();
        let url = format!("fake://{}/blobs/{digest}", image.repository);
        Box::pin(async move {
            let items = match served {
                None => {
                    return Err(RegistryError::Http {
                        method: "GET".into(),
                        url,
                        repository: image.repository.clone(),
                        status: 404,
                        errors: vec![OciError {
                            code: "BLOB_UNKNOWN".into(),
                            message: "blob unknown to registry".into(),
                            detail: None,
                        }],
                    }
                    .into());
                }
                Some(Served::Bytes(data)) => chunked(&data),
                Some(Served::CutAfter(prefix)) => {
                    let mut items = chunked(&prefix);
                    items.push(Err(RegistryError::BadResponse {
                        url,
                        reason: "connection cut (fake)".into(),
                    }
                    .into()));
                    items
                }
            };
            Ok(Box::pin(stream::iter(items)) as BlobStream)
        })
    }

    fn fetch_range_as<'a>(
        &'a self,
        image: &'a ImageReference,
        digest: &'a Digest,
        range: Range<u64>,
        reader: &'a Reader,
    ) -> BoxFuture<'a, Result<BlobStream, Error>> {
        let seen = &self.credentials;
        seen.lock()
            .expect("lock")
            .push(reader.credentials().cloned());
        self.ranges
            .lock()
            .expect("lock")
            .push((digest.clone(), range.clone()));
        let served = self.blobs.lock().expect("lock").get(digest).cloned();
        Box::pin(async move {
            let range_err = |reason: &str| {
                Error::from(RegistryError::Range {
                    repository: image.repository.clone(),
                    digest: digest.clone(),
                    start: range.start,
                    end: range.end,
                    reason: reason.into(),
                })
            };
            let (data, cut) = match served {
                Some(Served::Bytes(data)) => (data, false),
                Some(Served::CutAfter(prefix)) => (prefix, true),
                None => return Err(range_err("blob unknown (fake)")),
            };
            let (start, end) = (range.start as usize, range.end as usize);
            if start > end || (!cut && end > data.len()) {
                return Err(range_err("past the end (fake)"));
            }
            let part = data.get(start..end.min(data.len())).unwrap_or_default();
            let mut items = chunked(part);
            if cut {
                items.push(Err(range_err("connection cut (fake)")));
            }
            Ok(Box::pin(stream::iter(items)) as BlobStream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[test]
    fn the_node_uses_any_held_bytes_a_client_only_those_from_its_registry() {
        let d = Digest::of(b"x");
        let client = Reader::Client(Some(Credentials::new("Bearer t")));
        let anonymous = Reader::Client(None);
        let origins = ["a.example", "b.example:5000"];
        for reader in [&client, &anonymous] {
            assert!(reader.may_use("a.example", origins.iter().copied()));
            assert!(reader.may_use("b.example:5000", origins.iter().copied()));
            assert!(!reader.may_use("b.example", origins.iter().copied()));
            assert!(!reader.may_use("a.example", std::iter::empty()));
            let e = reader.check_origin("c.example", &d, origins.iter().copied());
            assert!(matches!(e, Err(Error::OtherOrigin { .. })), "{e:?}");
        }
        assert!(Reader::Node.may_use("c.example", std::iter::empty()));
        assert_eq!(client.credentials(), Some(&Credentials::new("Bearer t")));
        assert_eq!(anonymous.credentials(), None);
        assert_eq!(Reader::Node.credentials(), None);
    }

    #[tokio::test]
    async fn recording_source_serves_records_and_404s() {
        let src = RecordingSource::new();
        let image: ImageReference = "127.0.0.1:5000/a/b:v1".parse().unwrap();
        let d = src.add(b"hello world");
        let got: Vec<Bytes> = src
            .fetch(&image, &d)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(got.len() > 1);
        assert_eq!(got.concat(), b"hello world");
        let missing = Digest::of(b"nope");
        let e = src.fetch(&image, &missing).await.err().unwrap();
        assert!(e.is_not_found(), "{e}");
        assert_eq!(src.fetches_of(&d), 1);
        assert_eq!(src.calls().len(), 2);
        assert_eq!(src.calls()[1].1, missing);
    }
}
