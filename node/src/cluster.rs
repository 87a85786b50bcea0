//! The node's membership in the cluster: raft on the peer plane, writes
//! forwarded to the leader, the applied state fed to the data plane.
//!
//! - **Bootstrap.** A node whose data directory holds no identity founds a
//!   one-node cluster: it creates the cluster CA, issues its own
//!   certificate and initialises raft with itself as the only voter. So a
//!   single node started with `--gateway FILE` is a cluster of one, and the
//!   file reaches the data plane through the log like every other change.
//! - **Writes.** [`Cluster::write`] proposes on the leader: locally when this
//!   node leads, otherwise over the peer plane; it returns the commit index
//!   once this node has applied it.
//! - **Applied state.** Every applied batch is published; a task compiles a
//!   new data-plane snapshot when the configuration version changes, and the
//!   latest [`Applied`] is kept in an `ArcSwap` for the request path (API
//!   keys, revocations) — which never awaits raft.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use raft::model::{Command, NodeId, Outcome, Request};
use raft::openraft::error::{ClientWriteError, RaftError};
use raft::openraft::raft::AppendEntriesResponse;
use raft::store::Applied;
use raft::typ::Raft;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::peer::{self, PeerPlane};
use crate::pki::{self, Identity};

/// Why the cluster side of a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// PKI files are missing or invalid.
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// The peer endpoint could not start.
    #[error(transparent)]
    Peer(#[from] peer::Error),
    /// Raft could not start.
    #[error(transparent)]
    Raft(#[from] raft::cluster::StartError),
    /// The node id in node.toml differs from the one in the certificate.
    #[error(
        "node.toml says id {config} but the certificate in {dir} belongs to node {certificate}"
    )]
    IdMismatch {
        /// From node.toml.
        config: NodeId,
        /// From the certificate.
        certificate: NodeId,
        /// The PKI directory.
        dir: String,
    },
    /// Raft refused to initialise.
    #[error("cannot initialise the cluster: {0}")]
    Initialize(String),
}

/// Why a write was not committed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No leader is known (election in progress, or this node is cut off).
    #[error("no raft leader is reachable")]
    NoLeader,
    /// The leader could not be reached or failed.
    #[error("the write failed: {0}")]
    Failed(String),
}

/// A committed write.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// The raft log index of the write.
    pub index: u64,
    /// What applying it produced.
    pub outcome: Outcome,
}

/// The cluster side of a node.
pub struct Cluster {
    /// This node's id.
    pub id: NodeId,
    /// Whether this start founded the cluster.
    pub founded: bool,
    /// The raft handle.
    pub raft: Raft,
    /// The peer plane.
    pub plane: Arc<PeerPlane>,
    /// The node's identity (certificates, cluster key).
    pub identity: Identity,
    applied: watch::Receiver<Arc<Applied>>,
    view: ArcSwap<Applied>,
    /// Unix ms of the last entry applied here (0 before any).
    last_apply: AtomicU64,
    /// Unix ms this node last heard from a leader (appended entries or
    /// heartbeats; for the leader itself, a quorum acknowledgement).
    leader_contact: AtomicU64,
    handle: tokio::sync::Mutex<Option<raft::cluster::Handle>>,
    /// Where peers' global rate-limit counters go.
    counters: std::sync::OnceLock<Arc<crate::ratelimit::Registry>>,
    /// Where peers' health reports go.
    regions: std::sync::OnceLock<Arc<crate::regions::RegionHealth>>,
}

/// Answers the peer plane on behalf of a cluster (weakly, so the plane
/// does not keep the cluster alive).
struct ServiceRef(std::sync::Weak<Cluster>);

#[async_trait::async_trait]
impl peer::Service for ServiceRef {
    fn admit(&self, peer: &pki::PeerIdentity) -> bool {
        self.0.upgrade().is_none_or(|cluster| {
            !cluster
                .applied()
                .state
                .is_certificate_revoked(&peer.serial, now_ms())
        })
    }

    async fn handle(
        &self,
        peer: Option<&pki::PeerIdentity>,
        request: peer::Request,
    ) -> peer::Response {
        use peer::{Request, Response};
        let Some(cluster) = self.0.upgrade() else {
            return Response::Refused("this node is stopping".into());
        };
        match (peer, request) {
            (_, Request::Join(request)) => cluster.handle_join(request).await,
            (None, _) => Response::Refused("a member certificate is required".into()),
            (Some(_), Request::Raft(rpc)) => {
                let append = matches!(rpc, raft::network::RaftRequest::AppendEntries(_));
                let response = raft::network::serve(&cluster.raft, rpc).await;
                // Entries or a heartbeat that this node accepted as coming
                // from the leader of its term: contact with a leader.
                if append
                    && matches!(
                        &response,
                        raft::network::RaftResponse::AppendEntries(Ok(answer))
                            if !matches!(answer, AppendEntriesResponse::HigherVote(_))
                    )
                {
                    cluster.leader_contact.store(now_ms(), Ordering::Relaxed);
                }
                Response::Raft(response)
            }
            (Some(_), Request::Write(request)) => match cluster.raft.client_write(request).await {
                Ok(response) => Response::Written {
                    index: response.log_id.index,
                    outcome: response.data,
                },
                Err(error) => Response::Refused(error.to_string()),
            },
            (Some(_), Request::Applied) => Response::Applied(cluster.applied().index()),
            (Some(_), Request::Promote(id)) => cluster.handle_promote(id).await,
            (Some(_), Request::Remove(id)) => match cluster.remove(id).await {
                Ok(()) => Response::Done,
                Err(error) => Response::Refused(error.to_string()),
            },
            (Some(peer), Request::Counters(batch)) => {
                if let Some(registry) = cluster.counters.get() {
                    registry.merge(peer.id, &batch);
                }
                Response::Done
            }
            (Some(peer), Request::Health(report)) => {
                // Filed under the region the membership gives the sender.
                let Some(node) = cluster.membership().get_node(&peer.id).cloned() else {
                    return Response::Refused(format!("node {} is not a member", peer.id));
                };
                if let Some(view) = cluster.regions.get() {
                    view.heard_from(peer.id, &node.region, report);
                }
                Response::Done
            }
        }
    }
}

/// How long a write waits for a leader before giving up (an isolated node
/// answers 503 rather than hang).
const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// How long a membership change waits for the one before it to commit.
const MEMBERSHIP_SETTLE: Duration = Duration::from_secs(10);

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    /// Loads (or, on a fresh data directory, creates) the node's identity,
    /// starts the peer plane on `socket` and raft; a founding node (fresh,
    /// or prepared by `cluster init`) initialises a one-node cluster.
    pub async fn start(
        config: &Config,
        socket: std::net::UdpSocket,
    ) -> Result<Arc<Self>, StartError> {
        let marker = pki::dir(&config.data_dir).join("founding");
        let founding = !Identity::exists(&config.data_dir) || marker.exists();
        if !Identity::exists(&config.data_dir) {
            std::fs::create_dir_all(&config.data_dir).map_err(|source| pki::Error::File {
                path: config.data_dir.clone(),
                source,
            })?;
            let ca = pki::Ca::generate(&config.region)?;
            let cert = ca.issue(config.id, &config.region)?;
            Identity::save(&config.data_dir, &ca, true, &cert, &pki::secret())?;
            tracing::info!(id = config.id, region = %config.region, "founded a new cluster");
        }
        let identity = Identity::load(&config.data_dir)?;
        let own = identity.own().map_or(0, |own| own.id);
        if own != config.id {
            return Err(StartError::IdMismatch {
                config: config.id,
                certificate: own,
                dir: pki::dir(&config.data_dir).display().to_string(),
            });
        }
        let plane = PeerPlane::bind(socket, &identity)?;
        plane.set_dial_addresses(config.peers.clone());
        let mut raft_config = raft::cluster::Config::new(config.id, config.data_dir.join("raft"));
        raft_config.heartbeat = config.raft.heartbeat;
        raft_config.election = config.raft.election_timeout;
        raft_config.snapshot_logs = config.raft.snapshot_logs;
        let handle = raft::cluster::start(&raft_config, plane.clone()).await?;
        let raft = handle.raft.clone();
        if founding {
            let node = raft::Node {
                peer: config.listen.advertised(plane.local_addr()),
                region: config.region.clone(),
            };
            let initialized = raft
                .is_initialized()
                .await
                .map_err(|e| StartError::Initialize(e.to_string()))?;
            if !initialized {
                raft.initialize(BTreeMap::from([(config.id, node)]))
                    .await
                    .map_err(|e| StartError::Initialize(e.to_string()))?;
            }
            let _ = std::fs::remove_file(&marker);
        }
        let applied = handle.applied.clone();
        let view = ArcSwap::new(applied.borrow().clone());
        let cluster = Arc::new(Self {
            id: config.id,
            founded: founding,
            raft,
            plane,
            identity,
            applied,
            view,
            last_apply: AtomicU64::new(0),
            leader_contact: AtomicU64::new(now_ms()),
            handle: tokio::sync::Mutex::new(Some(handle)),
            counters: std::sync::OnceLock::new(),
            regions: std::sync::OnceLock::new(),
        });
        cluster
            .plane
            .set_service(Arc::new(ServiceRef(Arc::downgrade(&cluster))));
        Ok(cluster)
    }

    /// The latest applied state (for the request path: no await).
    pub fn applied(&self) -> Arc<Applied> {
        self.view.load_full()
    }

    /// A receiver of applied states.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Applied>> {
        self.applied.clone()
    }

    /// Records a newly applied state (called by the node's apply loop).
    pub fn observe(&self, applied: Arc<Applied>) {
        self.last_apply.store(now_ms(), Ordering::Relaxed);
        self.view.store(applied);
    }

    /// Unix ms of the last apply on this node.
    pub fn last_apply_ms(&self) -> u64 {
        self.last_apply.load(Ordering::Relaxed)
    }

    /// Milliseconds since this node last heard from a leader.
    pub fn leader_silence_ms(&self) -> u64 {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader == Some(self.id) {
            if let Some(ack) = metrics.millis_since_quorum_ack {
                return ack;
            }
            // A one-node cluster needs no acknowledgement.
            if metrics.membership_config.membership().voter_ids().count() == 1 {
                return 0;
            }
        }
        now_ms().saturating_sub(self.leader_contact.load(Ordering::Relaxed))
    }

    /// Proposes `command`, on the leader wherever it is, and waits until
    /// this node has applied it.
    pub async fn write(&self, command: Command) -> Result<Written, WriteError> {
        let request = Request {
            at: now_ms(),
            command,
        };
        let deadline = tokio::time::Instant::now() + WRITE_DEADLINE;
        let written = loop {
            match self.raft.client_write(request.clone()).await {
                Ok(response) => {
                    break Written {
                        index: response.log_id.index,
                        outcome: response.data,
                    };
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    if let (Some(leader), Some(node)) = (forward.leader_id, forward.leader_node) {
                        match self
                            .plane
                            .request(
                                leader,
                                &node.peer,
                                &peer::Request::Write(request.clone()),
                                Duration::from_secs(10),
                            )
                            .await
                        {
                            Ok(peer::Response::Written { index, outcome }) => {
                                break Written { index, outcome };
                            }
                            Ok(peer::Response::Refused(reason)) => {
                                tracing::debug!(%reason, "leader refused a forwarded write")
                            }
                            Ok(_) => {
                                return Err(WriteError::Failed(
                                    "unexpected answer from the leader".into(),
                                ));
                            }
                            Err(error) => {
                                tracing::debug!(%error, "forwarding a write to the leader")
                            }
                        }
                    }
                }
                Err(error) => return Err(WriteError::Failed(error.to_string())),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WriteError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.wait_applied(written.index, Duration::from_secs(10))
            .await;
        Ok(written)
    }

    /// Waits until this node has applied `index` (or `timeout` passes).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut applied = self.applied.clone();
        tokio::time::timeout(timeout, applied.wait_for(|a| a.index() >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The leader's id and peer address, if one is known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let node = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .clone();
        Some((leader, node.peer))
    }

    /// The membership raft currently knows.
    fn membership(&self) -> raft::openraft::Membership<NodeId, raft::Node> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }

    /// The other members: id and peer address.
    pub fn peers(&self) -> Vec<(NodeId, String)> {
        self.membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, node)| (*id, node.peer.clone()))
            .collect()
    }

    /// Sends peers' global rate-limit counters to `registry`.
    pub fn set_counters(&self, registry: Arc<crate::ratelimit::Registry>) {
        let _ = self.counters.set(registry);
    }

    /// Sends peers' health reports to `view`.
    pub fn set_regions(&self, view: Arc<crate::regions::RegionHealth>) {
        let _ = self.regions.set(view);
    }

    /// The view of every region's health, once the node has one.
    pub fn regions(&self) -> Option<&Arc<crate::regions::RegionHealth>> {
        self.regions.get()
    }

    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Issues a join token naming every current member (or this node).
    pub fn token(&self, ttl: Duration) -> Option<crate::join::Token> {
        let authority = self.identity.authority.as_ref()?;
        let metrics = self.raft.metrics().borrow().clone();
        let mut peers: Vec<(NodeId, String)> = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.peer.clone()))
            .collect();
        if peers.is_empty() {
            peers.push((self.id, self.plane.local_addr().to_string()));
        }
        Some(crate::join::Token::issue(
            &self.identity,
            &authority.cert_pem,
            peers,
            ttl,
            now_ms(),
        ))
    }

    /// When this node does not lead: where to go instead.
    fn redirect(&self) -> Option<peer::Response> {
        if self.is_leader() {
            return None;
        }
        Some(match self.leader() {
            Some((leader, peer)) => peer::Response::Redirect { leader, peer },
            None => peer::Response::Refused("no leader is known; retry".into()),
        })
    }

    async fn handle_join(&self, request: crate::join::JoinRequest) -> peer::Response {
        use peer::Response;
        if !request.token.verify(&self.identity.cluster_key) {
            return Response::Refused("the token was not issued by this cluster".into());
        }
        if request.token.expires_at <= now_ms() {
            return Response::Refused("the token has expired".into());
        }
        if let Some(redirect) = self.redirect() {
            return redirect;
        }
        let Some(authority) = &self.identity.authority else {
            return Response::Refused("this member cannot issue certificates".into());
        };
        let spend = Command::UseJoinToken {
            nonce: request.token.nonce.clone(),
            expires_at: request.token.expires_at,
            node: request.id,
        };
        match self.write(spend).await {
            Ok(Written {
                outcome: Outcome::Done,
                ..
            }) => {}
            Ok(Written { outcome, .. }) => return Response::Refused(format!("{outcome:?}")),
            Err(error) => return Response::Refused(error.to_string()),
        }
        let (grant, serial) = match crate::join::grant(
            authority,
            &self.identity.cluster_key,
            request.id,
            &request.region,
        ) {
            Ok(granted) => granted,
            Err(error) => return Response::Refused(error.to_string()),
        };
        let member = raft::model::Member {
            id: request.id,
            region: request.region.clone(),
            peer: request.peer.clone(),
            admin: request.admin,
            proxy: request.proxy,
            serial,
        };
        if let Err(error) = self.write(Command::SetMember(member)).await {
            return Response::Refused(error.to_string());
        }
        let node = raft::Node {
            peer: request.peer,
            region: request.region,
        };
        let id = request.id;
        let added = one_change_at_a_time(|| self.raft.add_learner(id, node.clone(), false)).await;
        if let Err(error) = added {
            return Response::Refused(error);
        }
        tracing::info!(node = request.id, "admitted a new node as learner");
        Response::Joined(grant)
    }

    async fn handle_promote(&self, id: NodeId) -> peer::Response {
        use peer::Response;
        if let Some(redirect) = self.redirect() {
            return redirect;
        }
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        if membership.voter_ids().any(|voter| voter == id) {
            return Response::Done;
        }
        if membership.get_node(&id).is_none() {
            return Response::Refused(format!("node {id} is not a member"));
        }
        let last = metrics.last_log_index.unwrap_or(0);
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map_or(0, |log_id| log_id.index);
        if last.saturating_sub(matched) > 100 {
            return Response::Refused(format!("node {id} is still catching up ({matched}/{last})"));
        }
        let change =
            raft::openraft::ChangeMembers::AddVoterIds(std::collections::BTreeSet::from([id]));
        match self.change_membership(change).await {
            Ok(()) => {
                tracing::info!(node = id, "promoted to voter");
                Response::Done
            }
            Err(error) => Response::Refused(error.to_string()),
        }
    }

    /// Until this node is a voter, asks the leader to promote it (when the
    /// node is configured as a voter). Ends at shutdown.
    pub async fn seek_promotion(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
            let metrics = self.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership().clone();
            if membership.voter_ids().any(|voter| voter == self.id) {
                return;
            }
            if membership.get_node(&self.id).is_none() {
                continue;
            }
            if let Some((leader, peer)) = self.leader() {
                let request = peer::Request::Promote(self.id);
                if let Ok(peer::Response::Done) = self
                    .plane
                    .request(leader, &peer, &request, Duration::from_secs(5))
                    .await
                {
                    tracing::info!("promoted to voter");
                }
            }
        }
    }

    /// Applies a membership change, waiting out one already in flight
    /// (see [`one_change_at_a_time`]).
    async fn change_membership(
        &self,
        change: raft::openraft::ChangeMembers<NodeId, raft::Node>,
    ) -> Result<(), String> {
        one_change_at_a_time(|| self.raft.change_membership(change.clone(), false)).await
    }

    /// Removes node `id` from the cluster: out of the raft membership, out
    /// of the member list, and its certificate revoked. Runs on the leader
    /// (forwarded when this node does not lead).
    pub async fn remove(&self, id: NodeId) -> Result<(), WriteError> {
        if !self.is_leader() {
            let (leader, peer) = self.leader().ok_or(WriteError::NoLeader)?;
            return match self
                .plane
                .request(
                    leader,
                    &peer,
                    &peer::Request::Remove(id),
                    Duration::from_secs(15),
                )
                .await
            {
                Ok(peer::Response::Done) => Ok(()),
                Ok(peer::Response::Refused(reason)) => Err(WriteError::Failed(reason)),
                Ok(_) => Err(WriteError::Failed(
                    "unexpected answer from the leader".into(),
                )),
                Err(error) => Err(WriteError::Failed(error.to_string())),
            };
        }
        use raft::openraft::ChangeMembers;
        let membership = self.membership();
        let ids = std::collections::BTreeSet::from([id]);
        let change = if membership.voter_ids().any(|voter| voter == id) {
            Some(ChangeMembers::RemoveVoters(ids))
        } else if membership.get_node(&id).is_some() {
            Some(ChangeMembers::RemoveNodes(ids))
        } else {
            None
        };
        if let Some(change) = change {
            self.change_membership(change)
                .await
                .map_err(WriteError::Failed)?;
        }
        let serial = self
            .applied()
            .state
            .members
            .get(&id)
            .map(|m| m.serial.clone());
        self.write(Command::RemoveMember { id }).await?;
        if let Some(serial) = serial.filter(|s| !s.is_empty()) {
            // Node certificates are valid for years: keep the revocation
            // for ten, well past any certificate issued today.
            let expires_at = now_ms() + 10 * 365 * 24 * 3600 * 1000;
            self.write(Command::Revoke {
                target: raft::model::Revocation::CertificateSerial(serial),
                expires_at,
            })
            .await?;
        }
        tracing::info!(node = id, "removed from the cluster");
        Ok(())
    }

    /// Asks every member for its applied index, at most `timeout` each.
    pub async fn applied_by_member(&self, timeout: Duration) -> BTreeMap<NodeId, Option<u64>> {
        let membership = self.membership();
        let nodes: Vec<(NodeId, String)> = membership
            .nodes()
            .map(|(id, n)| (*id, n.peer.clone()))
            .collect();
        let asks = nodes.into_iter().map(|(id, address)| async move {
            if id == self.id {
                return (id, Some(self.applied().index()));
            }
            match self
                .plane
                .request(id, &address, &peer::Request::Applied, timeout)
                .await
            {
                Ok(peer::Response::Applied(index)) => (id, Some(index)),
                _ => (id, None),
            }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .collect()
    }

    /// Waits until every reachable member has applied `index`, or `timeout`
    /// passes; returns each member's last known applied index.
    pub async fn wait_everywhere(
        &self,
        index: u64,
        timeout: Duration,
    ) -> BTreeMap<NodeId, Option<u64>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let applied = self.applied_by_member(Duration::from_millis(500)).await;
            let done = applied.values().all(|a| a.is_none_or(|a| a >= index));
            if done || tokio::time::Instant::now() >= deadline {
                return applied;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops raft and flushes its store.
    pub async fn shutdown(&self) {
        if let Some(handle) = self.handle.lock().await.take() {
            handle.shutdown().await;
        }
    }
}

/// Runs a membership change (adding a learner, promoting, removing). Raft
/// takes one change at a time, so a change asked for while the previous one
/// (a join, a promotion, a removal) is still being committed waits for it,
/// up to [`MEMBERSHIP_SETTLE`], instead of failing the caller.
async fn one_change_at_a_time<F, Fut, T>(mut change: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
            Output = Result<T, RaftError<NodeId, ClientWriteError<NodeId, raft::Node>>>,
        >,
{
    use raft::openraft::error::ChangeMembershipError;
    let deadline = tokio::time::Instant::now() + MEMBERSHIP_SETTLE;
    loop {
        match change().await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}
