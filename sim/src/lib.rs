//! shoal-sim: shoal's swarm at scales one machine cannot emulate. The real planner
//! ([`shoal_p2p::swarm::planner::Planner`]), the real tracker
//! ([`shoal_registry_ext::tracker::Tracker`]) and the seeder's real super-seeding rule run
//! against a simulated network and clock (docs/simulator.md).
//!
//! - [`scenario`]: what is simulated (nodes, caps, image, registry side, shoal's settings)
//!   and the bounds a pull is measured against.
//! - [`net`]: the network model (fluid flows sharing each link equally).
//! - [`adapter`]: the one place that calls the tracker, planner and seeder APIs.
//! - [`engine`]: the discrete-event loop (shoald's executor and announcer, the registry side).
//! - [`report`]: tables of runs against the bounds; [`calibrate`]: the comparison with the
//!   emulated cluster's benchmark; [`plot`]: the pull-time CDFs as PNG.

use std::path::PathBuf;

pub mod adapter;
pub mod calibrate;
pub mod engine;
pub mod net;
pub mod plot;
pub mod report;
pub mod scenario;

pub use engine::{percentile, run, Outcome, Sample};
pub use scenario::{NodeSettings, NodeSpec, RegistrySide, Scenario};

/// What goes wrong in the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario cannot be simulated.
    #[error("scenario: {0}")]
    Scenario(String),
    /// The tracker refused what the simulator announced (a bug in the adapter).
    #[error("the tracker refused an announce of node {node}: {source}")]
    Tracker {
        node: usize,
        source: Box<shoal_registry_ext::Error>,
    },
    /// The planner named a peer the simulator does not know.
    #[error("the planner asked for unknown peer {0:?}")]
    UnknownPeer(String),
    /// The benchmark's JSON could not be read.
    #[error("benchmark results {path}: {source}")]
    BenchRead {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The benchmark's JSON is not what `integration/benches/swarm.rs` writes.
    #[error("benchmark results {path}: {source}")]
    BenchParse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The benchmark's JSON has no `swarm` or `hetero` run (with nodes).
    #[error(
        "benchmark results {path}: no swarm or hetero run with nodes (SHOAL_BENCH_MODES must include swarm or hetero)"
    )]
    BenchNoSwarm { path: PathBuf },
    /// No font for the plot's text.
    #[error("no font at {tried:?}: install fonts-dejavu-core (scripts/install-deps.sh)")]
    NoFont { tried: Vec<&'static str> },
    /// The font could not be read or used.
    #[error("font {path}: {reason}")]
    Font { path: PathBuf, reason: String },
    /// plotters could not draw the plot (its error types are generic over the backend, so
    /// their message is kept).
    #[error("drawing {path}: {reason}")]
    Draw { path: PathBuf, reason: String },
    /// The PNG could not be written.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The PNG could not be encoded.
    #[error("encoding {path}: {source}")]
    Encode {
        path: PathBuf,
        source: png::EncodingError,
    },
}
