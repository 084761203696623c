//! The containerd proxy snapshotter: overlayfs semantics exactly like containerd's built-in
//! `overlayfs` snapshotter, served over containerd's snapshots gRPC API on a unix socket.
//!
//! - [`meta`]: snapshot metadata and its rules (parents, kinds, labels), over the
//!   [`MetaStore`] trait boundary.
//! - [`store`]: the stores: [`RedbStore`] (embedded, transactional, on disk) and
//!   [`MemStore`] (in memory, the fake for tests).
//! - [`filter`]: containerd's filter expressions (`List`/`Walk` filters).
//! - [`overlay`]: the snapshotter itself ([`OverlaySnapshotter`]): directories, mounts,
//!   usage, cleanup, the gRPC trait, and the seam for remote (streamed) layers.
//! - [`server`]: serving it on a unix socket until a shutdown future completes.
//!
//! Layout on disk, like containerd's: `ROOT/metadata.redb`, `ROOT/snapshots/ID/{fs,work}`.
//! Snapshot names are containerd's keys exactly as given (containerd's metadata layer
//! already namespaces them, e.g. `default/4/sha256:...`).
//!
//! Crash safety: a snapshot's directory is created (under a temporary name, then renamed
//! to its ID and the parent directory synced) *before* the metadata transaction that
//! records it commits, and removed only *after* the transaction that forgets it commits.
//! A crash therefore leaves at most orphan directories, which `Cleanup` removes; metadata
//! never points at a missing directory. Commit and Update touch metadata only, in one
//! transaction each.

pub mod filter;
pub mod meta;
pub mod overlay;
pub mod server;
pub mod store;

pub use meta::{Info, Kind, MetaStore, Usage};
pub use overlay::{OverlaySnapshotter, PrepareInterceptor, TARGET_REF_LABEL};
pub use server::{bind_socket, run, serve};
pub use store::{MemStore, RedbStore};

use std::path::PathBuf;

use containerd_snapshots::tonic::Status;

/// Everything that can go wrong in the snapshotter. Each variant maps to exactly one gRPC
/// code, in [`From<SnapshotError> for Status`](#impl-From<SnapshotError>-for-Status), the
/// only place where that mapping is made.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot (or a parent it names) does not exist.
    #[error("snapshot {key:?}: not found")]
    NotFound { key: String },
    /// A snapshot with this name or key already exists.
    #[error("snapshot {key:?}: already exists")]
    AlreadyExists { key: String },
    /// The snapshot exists but is in the wrong state for the operation (removing a parent,
    /// committing a view, mounting a committed snapshot).
    #[error("snapshot {key:?}: {reason}")]
    FailedPrecondition { key: String, reason: String },
    /// The request itself is malformed (immutable field, parent not committed).
    #[error("{0}")]
    InvalidArgument(String),
    /// A `List` filter does not parse.
    #[error("filter {filter:?}: {source}")]
    Filter {
        filter: String,
        #[source]
        source: filter::FilterError,
    },
    /// The metadata store failed.
    #[error("metadata store {path:?}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored record could not be decoded.
    #[error("metadata record of snapshot {key:?} is corrupt: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A file system operation on the snapshotter's directories failed.
    #[error("{path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// A metadata transaction's closure was not called exactly once (`what` says how).
    #[error("internal task failed: {what}")]
    Transaction { what: &'static str },
    /// Commit of `key`: its usage kept changing while it was measured.
    #[error("commit of {key:?}: the snapshot kept changing while it was measured")]
    Unsettled { key: String },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[source] containerd_snapshots::tonic::transport::Error),
}

impl SnapshotError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| SnapshotError::Io { path, source }
    }

    /// The gRPC code containerd expects for this error.
    pub fn code(&self) -> containerd_snapshots::tonic::Code {
        use containerd_snapshots::tonic::Code;
        match self {
            SnapshotError::NotFound { .. } => Code::NotFound,
            SnapshotError::AlreadyExists { .. } => Code::AlreadyExists,
            SnapshotError::FailedPrecondition { .. } => Code::FailedPrecondition,
            SnapshotError::InvalidArgument(_) | SnapshotError::Filter { .. } => {
                Code::InvalidArgument
            }
            SnapshotError::Store { .. }
            | SnapshotError::Corrupt { .. }
            | SnapshotError::Io { .. }
            | SnapshotError::Task(_)
            | SnapshotError::Transaction { .. }
            | SnapshotError::Unsettled { .. }
            | SnapshotError::Grpc(_) => Code::Internal,
        }
    }
}

/// The one place where snapshotter errors become gRPC statuses.
impl From<SnapshotError> for Status {
    fn from(err: SnapshotError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}
