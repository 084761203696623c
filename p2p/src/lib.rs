//! shoal's data plane library.
//!
//! - [`cache`]: the bounded on-disk cache of compressed blobs, and the [`source::BlobSource`]
//!   that serves from it.
//! - [`chunk`]: chunk manifests (the sha256 of each fixed-size chunk of a blob).
//! - [`config_file`]: reading and parsing a daemon's TOML configuration file, and its error.
//! - [`Error`]: the one error type of the crate's API (variants by category: registry,
//!   swarm, cache, tracker, peer, TLS, configuration, ...).
//! - [`digest`]: validated sha256 digests and an incremental hasher.
//! - [`reference`]: image references (`registry/name:tag`, `name@digest`).
//! - [`registry`]: the OCI distribution client (resolve, auth, blob streams); the registry is
//!   one more chunk source for the swarm.
//! - [`source`]: the [`source::BlobSource`] seam (where whole blobs come from) and its fake.
//! - [`metrics`]: Prometheus metrics of the swarm (download and upload sides).
//! - [`peer`]: the peer protocol: the chunk server every node (and the registry extension's
//!   seeder) runs, and the client that fetches chunks from it.
//! - [`preheat`]: the preheat protocol (coordinator <-> worker, CLI) and its HTTP client.
//! - [`single_flight`]: the one helper for work concurrent callers share (keyed in-flight
//!   map, single flight).
//! - [`swarm`]: the node's swarm download: chunk store, scheduler, and the
//!   [`source::BlobSource`] that feeds the unpacker in order while chunks arrive.
//! - [`tls`]: mutual TLS against the cluster CA (or explicit plaintext for tests).
//! - [`tracker`]: the tracker protocol and the node's tracker client.

pub mod cache;
pub mod chunk;
pub mod config_file;
pub mod digest;
mod error;
pub mod metrics;
pub mod peer;
pub mod preheat;
#[cfg(test)]
mod props;
pub mod reference;
pub mod registry;
pub mod single_flight;
pub mod source;
pub mod swarm;
mod sys;
pub mod tls;
pub mod tracker;

pub use digest::{Digest, Hasher};
pub use error::Error;
