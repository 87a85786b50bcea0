//! Starting and stopping the raft side of a node.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::SnapshotPolicy;
use tokio::sync::watch;

use crate::model::NodeId;
use crate::network::{Network, Transport};
use crate::store::{self, Applied};
use crate::typ::Raft;

/// Raft settings of a node (validated by the node's configuration).
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// Where the store lives (`<data-dir>/raft`).
    pub dir: PathBuf,
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Election timeout range.
    pub election: (Duration, Duration),
    /// A snapshot is built after this many applied entries, and the log up
    /// to it purged.
    pub snapshot_logs: u64,
}

impl Config {
    /// Defaults suited to regions tens of milliseconds apart.
    pub fn new(id: NodeId, dir: PathBuf) -> Self {
        Self {
            id,
            dir,
            heartbeat: Duration::from_millis(250),
            election: (Duration::from_millis(1000), Duration::from_millis(2000)),
            snapshot_logs: 1000,
        }
    }
}

/// Why raft could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::OpenError),
    /// openraft refused the configuration.
    #[error("invalid raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    /// openraft failed to start.
    #[error("raft failed to start: {0}")]
    Fatal(String),
}

/// A running raft member.
pub struct Handle {
    /// The openraft handle: writes, membership, metrics.
    pub raft: Raft,
    /// The applied state, published after every applied batch.
    pub applied: watch::Receiver<Arc<Applied>>,
    db: sled::Db,
    log: store::LogStore,
}

/// Opens the store in `config.dir` and starts raft over `transport`.
pub async fn start<T: Transport>(config: &Config, transport: Arc<T>) -> Result<Handle, StartError> {
    let (db, log, machine) = store::open(&config.dir)?;
    let applied = machine.subscribe();
    let raft_config = openraft::Config {
        cluster_name: "meridian".into(),
        heartbeat_interval: config.heartbeat.as_millis() as u64,
        election_timeout_min: config.election.0.as_millis() as u64,
        election_timeout_max: config.election.1.as_millis() as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
        max_in_snapshot_log_to_keep: 0,
        install_snapshot_timeout: 2_000,
        ..Default::default()
    }
    .validate()?;
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        Network::new(transport),
        log.clone(),
        machine,
    )
    .await
    .map_err(|e| StartError::Fatal(e.to_string()))?;
    Ok(Handle {
        raft,
        applied,
        db,
        log,
    })
}

impl Handle {
    /// Entries currently in the log (bounded by snapshots and purging).
    pub fn log_entries(&self) -> usize {
        self.log.entries()
    }

    /// Bytes the store uses on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Stops raft and flushes the store.
    pub async fn shutdown(self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        if let Err(error) = self.db.flush_async().await {
            tracing::warn!(%error, "flushing the raft store");
        }
    }
}
