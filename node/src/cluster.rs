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
    handle: tokio::sync::Mutex<Option<raft::cluster::Handle>>,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    /// Loads (or, on a fresh data directory, creates) the node's identity,
    /// binds the peer plane and starts raft; a founding node initialises a
    /// one-node cluster.
    pub async fn start(config: &Config) -> Result<Arc<Self>, StartError> {
        let founding = !Identity::exists(&config.data_dir);
        if founding {
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
        let plane = PeerPlane::bind(config.listen.peer, &identity)?;
        let mut raft_config = raft::cluster::Config::new(config.id, config.data_dir.join("raft"));
        raft_config.heartbeat = config.raft.heartbeat;
        raft_config.election = config.raft.election_timeout;
        raft_config.snapshot_logs = config.raft.snapshot_logs;
        let handle = raft::cluster::start(&raft_config, plane.clone()).await?;
        plane.set_raft(handle.raft.clone());
        let raft = handle.raft.clone();
        if founding {
            let node = raft::Node {
                peer: config.listen.advertised(plane.local_addr()),
                region: config.region.clone(),
            };
            raft.initialize(BTreeMap::from([(config.id, node)]))
                .await
                .map_err(|e| StartError::Initialize(e.to_string()))?;
        }
        let applied = handle.applied.clone();
        let view = ArcSwap::new(applied.borrow().clone());
        let cluster = Arc::new(Self {
            id: config.id,
            raft,
            plane,
            identity,
            applied,
            view,
            last_apply: AtomicU64::new(0),
            handle: tokio::sync::Mutex::new(Some(handle)),
        });
        let admission = Arc::downgrade(&cluster);
        cluster.plane.set_admission(Arc::new(move |peer| {
            admission.upgrade().is_none_or(|cluster| {
                !cluster.applied().state.is_revoked(
                    &raft::model::Revocation::CertificateSerial(peer.serial.clone()),
                    now_ms(),
                )
            })
        }));
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

    /// Proposes `command`, on the leader wherever it is, and waits until
    /// this node has applied it.
    pub async fn write(&self, command: Command) -> Result<Written, WriteError> {
        let request = Request {
            at: now_ms(),
            command,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
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

    /// Stops raft and flushes its store.
    pub async fn shutdown(&self) {
        if let Some(handle) = self.handle.lock().await.take() {
            handle.shutdown().await;
        }
    }
}
