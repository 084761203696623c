//! shoald, the shoal node daemon, as a library.
//!
//! - [`unpack`]: the streaming layer unpacker (decompress + untar into overlayfs format while
//!   the blob arrives, digests verified, hostile entries refused).
//! - [`image`]: a whole image from its registry through the unpacker, layers in parallel.
//! - [`config`]: shoald's TOML configuration.
//! - [`snapshot`]: the containerd proxy snapshotter (overlayfs semantics, redb metadata, gRPC).

pub mod config;
pub mod cri;
pub mod error;
pub mod image;
pub mod sd_notify;
pub mod snapshot;
pub mod unpack;

pub use error::Error;
