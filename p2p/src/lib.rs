//! shoal's data plane library.
//!
//! - [`digest`]: validated sha256 digests and an incremental hasher.
//! - [`reference`]: image references (`registry/name:tag`, `name@digest`).
//! - [`registry`]: the OCI distribution client (resolve, auth, blob streams); the registry is
//!   one more chunk source for the swarm.

pub mod digest;
pub mod reference;
pub mod registry;

pub use digest::{Digest, Hasher};
