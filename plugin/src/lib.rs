//! shoald, the shoal node daemon, as a library.
//!
//! - [`unpack`]: the streaming layer unpacker (decompress + untar into overlayfs format while
//!   the blob arrives, digests verified, hostile entries refused).
//! - [`image`]: a whole image from its registry through the unpacker, layers in parallel.
//! - [`config`]: shoald's TOML configuration.
//! - [`containerd`]: what differs between containerd versions (schema, CRI pull path).
//! - [`remote`]: the CRI remote path: layers streamed from the registry into committed
//!   snapshots on Prepare, all layers of an image at once.
//! - [`node`]: this node's swarm peer (chunk server, announcer), the blob source layers come
//!   through, and the metrics and status endpoint.
//! - [`health`]: each component's state (up, degraded, down, off) and why, for `shoald
//!   status`, `/metrics` and the log.
//! - [`mirror`]: the registry mirror for containerd's hosts.toml (blobs through the swarm,
//!   after an access check with the registry; everything else passed through).
//! - [`pulls`]: what the node pulled, for Prometheus (fetches by path and result, bytes,
//!   durations, fallbacks to containerd, bytes read from registries).
//! - [`preheat`]: the preheat worker (registers with shoal-registry-ext, pulls jobs' images
//!   through CRI) and the `shoald preheat` / `shoald nodes` commands.
//! - [`snapshot`]: the containerd proxy snapshotter (overlayfs semantics, redb metadata, gRPC).
//! - [`cri`]: `shoald pull` through CRI; [`sd_notify`]: readiness for systemd; [`report`]:
//!   figures for the command line.

pub mod config;
pub mod containerd;
pub mod cri;
pub mod error;
pub mod health;
pub mod image;
pub mod mirror;
pub mod node;
pub mod preheat;
pub mod pulls;
pub mod remote;
pub mod report;
pub mod sd_notify;
pub mod snapshot;
pub mod unpack;

pub use error::Error;
