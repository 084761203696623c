//! What the planner ([`super::Planner`]) takes and returns: its settings, the peers' state,
//! the actions it asks the executor for, the results fed back, and why a download fails.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use crate::tracker::ChunkSet;

/// A request's id, unique within one planner.
pub type ReqId = u64;

/// How long a busy node is left alone. One of its upload slots frees within about a chunk
/// time divided by its slots (4 MiB at 1 Gbit/s: 34 ms each at 8 uploads); 500 ms, the value
/// until 6 December, left the few early holders of a chunk idle between their answers
/// (docs/simulator.md "The busy back-off").
pub const BUSY_BACKOFF: Duration = Duration::from_millis(100);
/// How long a busy registry-side seeder is left alone. Longer than for nodes: the whole
/// swarm's busy answers land on it, and in the simulator 100 ms for it too gained 2% at 50
/// nodes and under 1% at 100 or 1,000, for 3.5-4 times its busy answers (docs/simulator.md
/// "The busy back-off").
pub const SEEDER_BUSY_BACKOFF: Duration = Duration::from_millis(500);
/// A download that receives nothing for this long fails.
pub const STALL_LIMIT: Duration = Duration::from_secs(120);
/// Transport failures in a row (no verified chunk from the peer between them) after which a
/// peer is dropped for the blob.
pub const MAX_PEER_FAILURES: u32 = 3;
/// Consecutive registry failures after which chunks no peer holds are given up.
pub const MAX_REGISTRY_FAILURES: u32 = 6;
/// Registry chunks failing their hash after which the manifest is taken to be wrong.
pub const MAX_REGISTRY_HASH_FAILURES: u32 = 2;
/// A chunk a seeder refused ("not held": it just sent it to another node) is not asked of
/// anyone for this long, unless a node is known to hold it; by then that node's announce
/// says it fetches or holds it.
pub const SEEDER_REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// The planner's limits (from [`super::SwarmConfig`]).
#[derive(Clone, Debug)]
pub struct PlannerConfig {
    /// Requests in flight for the blob, peers and registry together.
    pub in_flight: usize,
    /// Requests in flight to one peer for the blob.
    pub per_peer_in_flight: usize,
    /// Registry range requests in flight for the blob.
    pub registry_in_flight: usize,
    /// Most chunks merged into one registry range.
    pub max_registry_chunks: u32,
    /// Chunks just past the reader fetched in order.
    pub near_window: u32,
}

/// What the trackers say about one peer of the blob.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Its peer id.
    pub id: String,
    /// Its chunk server.
    pub addr: SocketAddr,
    /// A registry-side seeder (asked only for chunks no node holds or fetches).
    pub seeder: bool,
    /// Chunks it holds (as many as the manifest's).
    pub have: ChunkSet,
    /// Chunks it is fetching.
    pub fetching: ChunkSet,
    /// Its throughput measured by this node on other blobs (bytes/s), if any.
    pub speed: Option<f64>,
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A peer, by id.
    Peer(String),
    /// The registry (HTTP Range).
    Registry,
}

/// Why a request ended without its chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The peer had no free upload slot.
    Busy,
    /// The peer does not hold (or would not send) the chunk.
    NotHeld,
    /// Connection, TLS, HTTP or stream error.
    Transport,
}

/// Why a peer was dropped for the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// It sent a chunk failing its hash.
    Corrupt,
    /// Its requests kept failing.
    Failing,
}

/// What the executor is to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Fetch chunk `chunk` from peer `peer` at `addr`.
    Peer {
        req: ReqId,
        peer: String,
        addr: SocketAddr,
        seeder: bool,
        chunk: u32,
        /// A re-request of an overdue chunk.
        overdue: bool,
    },
    /// Fetch `chunks` (consecutive) as one range from the registry.
    Registry {
        req: ReqId,
        chunks: Range<u32>,
        overdue: bool,
    },
    /// Abort request `req` (its chunk arrived from elsewhere, or its peer was dropped).
    Cancel { req: ReqId },
    /// Peer `peer` is dropped for this blob.
    Drop {
        peer: String,
        addr: SocketAddr,
        reason: DropReason,
    },
}

/// Why the download cannot go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Nothing arrived for [`STALL_LIMIT`].
    #[error("no chunk arrived for {secs}s ({held} of {total} held)")]
    Stalled { secs: u64, held: u32, total: u32 },
    /// The registry's bytes for a chunk do not match the chunk manifest.
    #[error("the registry's chunk {index} does not match the chunk manifest")]
    RegistryMismatch { index: u32 },
    /// The registry keeps failing and no peer holds the missing chunks.
    #[error("registry failing ({failures} times in a row) and no peer holds the rest")]
    RegistryFailing { failures: u32 },
}

/// The node-wide allowances a download's requests draw on, across the node's blobs: requests
/// to registry-side seeders, and chunk requests to peers in flight. The executor gives back
/// what a request took when it ends.
pub trait NodeBudget {
    /// Takes a slot for one request to the seeder at `addr`, if one is free.
    fn take_seeder(&mut self, addr: SocketAddr) -> bool;
    /// Whether this download, with `own` peer requests in flight, may ask a peer for one more
    /// chunk (the node's limit on chunk requests is shared by its blobs; a second copy of an
    /// overdue chunk does not ask).
    fn request_room(&self, own: usize) -> bool;
    /// Counts a peer request started (a second copy of an overdue chunk too).
    fn count_request(&mut self);
}
