//! shoald, the shoal node daemon, as a library.
//!
//! - [`unpack`]: the streaming layer unpacker (decompress + untar into overlayfs format while
//!   the blob arrives, digests verified, hostile entries refused).
//! - [`image`]: a whole image from its registry through the unpacker, layers in parallel.
//! - [`config`]: shoald's TOML configuration.

pub mod config;
pub mod error;
pub mod image;
pub mod unpack;

pub use error::Error;
