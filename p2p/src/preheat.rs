//! Preheat (DESIGN "Where the ideas come from", Hound): warm images onto node groups before a
//! rollout. The coordinator is shoal-registry-ext, the workers are the nodes' shoalds; both
//! speak [`proto`] (JSON over HTTP), and [`PreheatClient`] is the client the worker and the
//! `shoald preheat` command line use.
//!
//! The model: a worker registers ([`proto::NodeInfo`]) and then heartbeats every ~1 s
//! ([`proto::Heartbeat`], carrying the progress of its pull tasks); the reply
//! ([`proto::HeartbeatReply`]) lists the tasks the node must be running. A task a node runs
//! that is no longer listed is cancelled (or was recorded as finished). Nodes need no
//! listener of their own.

mod client;
pub mod proto;

pub use client::{ClientAuth, PreheatClient, PreheatClientError};
