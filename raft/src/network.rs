//! Raft RPCs over a pluggable transport.
//!
//! openraft asks a [`RaftNetworkFactory`] for a client per peer; ours,
//! [`Network`], turns each call into a [`RaftRequest`] handed to a
//! [`Transport`] — the node's QUIC peer plane in production, an in-process
//! router in tests, or either wrapped by the chaos harness to drop, delay or
//! partition. The receiving node answers with [`serve`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::model::NodeId;
use crate::typ::Raft;
use crate::{Node, TypeConfig};

/// A raft RPC on its way to a peer.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    /// Replicate entries (or heartbeat).
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Ask for a vote.
    Vote(VoteRequest<NodeId>),
}

/// A peer's answer to a [`RaftRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    /// Answer to `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to `InstallSnapshot`.
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// Answer to `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
}

/// Why a request did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The peer cannot be reached now (no route, refused, partitioned).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The exchange broke (reset, malformed frame).
    #[error("peer exchange failed: {0}")]
    Failed(String),
}

/// Carries raft RPCs to peers.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to node `target` at `node` and waits for its answer,
    /// at most `timeout`.
    fn call(
        &self,
        target: NodeId,
        node: &Node,
        request: RaftRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<RaftResponse, TransportError>> + Send;
}

/// The network factory openraft uses.
pub struct Network<T> {
    transport: Arc<T>,
}

impl<T> Network<T> {
    /// A factory sending through `transport`.
    pub fn new(transport: Arc<T>) -> Self {
        Self { transport }
    }
}

impl<T: Transport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = Peer<T>;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        Peer {
            target,
            node: node.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// A client for one peer.
pub struct Peer<T> {
    target: NodeId,
    node: Node,
    transport: Arc<T>,
}

/// The mismatch of an answer with its question, or a transport failure.
#[derive(Debug)]
struct Unexpected;

impl fmt::Display for Unexpected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the peer answered a different RPC")
    }
}

impl std::error::Error for Unexpected {}

impl<T: Transport> Peer<T> {
    async fn call<E: std::error::Error>(
        &self,
        request: RaftRequest,
        option: &RPCOption,
    ) -> Result<RaftResponse, RPCError<NodeId, Node, RaftError<NodeId, E>>> {
        self.transport
            .call(self.target, &self.node, request, option.hard_ttl())
            .await
            .map_err(|error| match error {
                TransportError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&error)),
                _ => RPCError::Network(NetworkError::new(&error)),
            })
    }

    fn remote<E: std::error::Error>(
        &self,
        error: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            error,
        ))
    }
}

impl<T: Transport> RaftNetwork<TypeConfig> for Peer<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        match self.call(RaftRequest::AppendEntries(rpc), &option).await? {
            RaftResponse::AppendEntries(answer) => answer.map_err(|e| self.remote(e)),
            _ => Err(RPCError::Network(NetworkError::new(&Unexpected))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(RaftRequest::InstallSnapshot(rpc), &option)
            .await?
        {
            RaftResponse::InstallSnapshot(answer) => answer.map_err(|e| self.remote(e)),
            _ => Err(RPCError::Network(NetworkError::new(&Unexpected))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        match self.call(RaftRequest::Vote(rpc), &option).await? {
            RaftResponse::Vote(answer) => answer.map_err(|e| self.remote(e)),
            _ => Err(RPCError::Network(NetworkError::new(&Unexpected))),
        }
    }
}

/// Answers a peer's RPC with the local raft.
pub async fn serve(raft: &Raft, request: RaftRequest) -> RaftResponse {
    match request {
        RaftRequest::AppendEntries(rpc) => {
            RaftResponse::AppendEntries(raft.append_entries(rpc).await)
        }
        RaftRequest::InstallSnapshot(rpc) => {
            RaftResponse::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
        RaftRequest::Vote(rpc) => RaftResponse::Vote(raft.vote(rpc).await),
    }
}
