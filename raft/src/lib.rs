//! Meridian's replicated cluster state.
//!
//! The cluster agrees on one [`model::State`] (gateway configuration, API
//! keys, revocations, members) through Raft: openraft drives consensus, the
//! log, vote, state machine and snapshots live on sled in the node's data
//! directory, and the RPCs travel over a [`network::Transport`] that the
//! node implements on its QUIC peer plane (and tests and the chaos harness
//! can wrap).
//!
//! # Layout
//! - [`model`]: the configuration types and the replicated state with the
//!   commands that change it. Pure data: no I/O, no async.
//! - [`store`]: `RaftLogStorage` and `RaftStateMachine` on sled.
//! - [`network`]: the raft RPC messages, the transport seam and the
//!   `RaftNetworkFactory` over it.
//! - [`cluster`]: start a member on its store and a transport; stop it.
//! - [`TypeConfig`] and the `typ` aliases: how openraft is instantiated.
#![warn(missing_docs)]
// openraft's `StorageError` is large and its storage traits return it by
// value; boxing it only in our helpers would not help.
#![allow(clippy::result_large_err)]

pub mod cluster;
/// openraft, re-exported so dependants use the same version.
pub use openraft;
pub mod model;
pub mod network;
pub mod store;

#[cfg(test)]
mod tests;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A node as raft needs to know it: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Peer-plane (QUIC) address, `host:port`.
    pub peer: String,
    /// Region name, for status and placement.
    pub region: String,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.region, self.peer)
    }
}

openraft::declare_raft_types!(
    /// Meridian's openraft type configuration.
    pub TypeConfig:
        D = model::Request,
        R = model::Outcome,
        NodeId = model::NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Short names for openraft types instantiated with [`TypeConfig`].
pub mod typ {
    use super::TypeConfig;

    /// A raft handle.
    pub type Raft = openraft::Raft<TypeConfig>;
    /// A log entry.
    pub type Entry = openraft::Entry<TypeConfig>;
    /// A log id.
    pub type LogId = openraft::LogId<crate::model::NodeId>;
    /// A vote.
    pub type Vote = openraft::Vote<crate::model::NodeId>;
    /// A snapshot.
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::SnapshotMeta<crate::model::NodeId, crate::Node>;
    /// A stored membership.
    pub type StoredMembership = openraft::StoredMembership<crate::model::NodeId, crate::Node>;
    /// A storage error.
    pub type StorageError = openraft::StorageError<crate::model::NodeId>;
    /// Raft metrics.
    pub type RaftMetrics = openraft::RaftMetrics<crate::model::NodeId, crate::Node>;
}
