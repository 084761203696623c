//! Test harness for shoal's end-to-end tests and benchmarks: real processes (containerd 1.6,
//! Debian's `docker-registry`, skopeo) started and stopped by the tests themselves, images
//! written by the tests as OCI layouts, and a comparison of unpacked layer trees.
//!
//! Every harness that needs an outside tool has an `available()` check; a test skips only when
//! the tool is truly absent and says so (CI installs them all through `scripts/install-deps.sh`).

pub mod bench;
pub mod cluster;
pub mod compare;
pub mod containerd;
pub mod cri;
pub mod docs;
pub mod image;
pub mod netns;
pub mod pki;
pub mod prometheus;
pub mod registry;
pub mod tamper;
pub mod token_server;
pub mod tools;
