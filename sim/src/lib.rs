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

pub mod adapter;
pub mod calibrate;
pub mod engine;
pub mod net;
pub mod plot;
pub mod report;
pub mod scenario;

pub use engine::{percentile, run, Outcome};
pub use scenario::{NodeSettings, NodeSpec, RegistrySide, Scenario};

/// What goes wrong in the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario cannot be simulated.
    #[error("scenario: {0}")]
    Scenario(String),
    /// The tracker refused what the simulator announced (a bug in the adapter).
    #[error("tracker refused an announce: {0}")]
    Tracker(String),
    /// The planner named a peer the simulator does not know.
    #[error("the planner asked for unknown peer {0:?}")]
    UnknownPeer(String),
    /// The benchmark's JSON could not be read.
    #[error("benchmark results {path}: {reason}")]
    Bench { path: String, reason: String },
    /// The plot could not be drawn or written.
    #[error("plot {path}: {reason}")]
    Plot { path: String, reason: String },
}
