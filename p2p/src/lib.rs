//! shoal's data plane library.
//!
//! - [`cache`]: the bounded on-disk cache of compressed blobs, and the [`source::BlobSource`]
//!   that serves from it.
//! - [`chunk`]: chunk manifests (the sha256 of each fixed-size chunk of a blob).
//! - [`digest`]: validated sha256 digests and an incremental hasher.
//! - [`reference`]: image references (`registry/name:tag`, `name@digest`).
//! - [`registry`]: the OCI distribution client (resolve, auth, blob streams); the registry is
//!   one more chunk source for the swarm.
//! - [`source`]: the [`source::BlobSource`] seam (where whole blobs come from) and its fake.

pub mod cache;
pub mod chunk;
pub mod digest;
pub mod reference;
pub mod registry;
pub mod source;

pub use digest::{Digest, Hasher};
