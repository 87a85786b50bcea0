//! The state machine and its snapshots on sled.
//!
//! The [`State`] lives in memory. What is durable is the latest snapshot
//! (tree `snapshot`, key `current`) plus the log: at start the state is the
//! snapshot's, and openraft re-applies the committed entries after it (the
//! log store records `committed`). So `apply` never writes to disk, and a
//! snapshot every `snapshot-logs` entries lets the log be purged.
//!
//! Every applied batch is published on a `watch` channel as an [`Applied`]
//! view; cloning the state for it is cheap because its large maps are
//! persistent (`imbl`). The node compiles its data-plane snapshot from it:
//! the request path never awaits the state machine.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::TypeConfig;
use crate::model::{Outcome, State};
use crate::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};

const CURRENT: &[u8] = b"current";

/// The state as of an applied log index, as published to the node.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The replicated state.
    pub state: State,
    /// The last applied log id.
    pub last_applied: Option<LogId>,
}

impl Applied {
    /// Index of the last applied entry (0 before any).
    pub fn index(&self) -> u64 {
        self.last_applied.map_or(0, |id| id.index)
    }
}

/// A snapshot as stored on disk.
#[derive(Serialize, Deserialize)]
struct Stored {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// What a snapshot's data holds.
#[derive(Serialize, Deserialize)]
struct Image {
    state: State,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// The state machine.
pub struct StateMachine {
    state: State,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    snapshots: sled::Tree,
    published: watch::Sender<Arc<Applied>>,
}

fn read_err(error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(&error)).into()
}

fn snapshot_err(error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::new(&error)).into()
}

impl StateMachine {
    /// Opens the state machine of `db`, restoring the latest snapshot.
    pub fn open(db: &sled::Db) -> Result<Self, StorageError> {
        let snapshots = db.open_tree("snapshot").map_err(read_err)?;
        let mut machine = Self {
            state: State::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshots,
            published: watch::channel(Arc::new(Applied::default())).0,
        };
        if let Some(bytes) = machine.snapshots.get(CURRENT).map_err(read_err)? {
            let stored: Stored = bincode::deserialize(&bytes).map_err(read_err)?;
            let image: Image = bincode::deserialize(&stored.data).map_err(read_err)?;
            machine.restore(image);
        }
        Ok(machine)
    }

    /// A receiver of every applied state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Applied>> {
        self.published.subscribe()
    }

    fn restore(&mut self, image: Image) {
        self.state = image.state.restore();
        self.last_applied = image.last_applied;
        self.membership = image.membership;
        self.publish();
    }

    fn publish(&self) {
        self.published.send_replace(Arc::new(Applied {
            state: self.state.clone(),
            last_applied: self.last_applied,
        }));
    }

    async fn store(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let stored = Stored {
            meta: meta.clone(),
            data: data.to_vec(),
        };
        let bytes = bincode::serialize(&stored).map_err(snapshot_err)?;
        self.snapshots
            .insert(CURRENT, bytes)
            .map_err(snapshot_err)?;
        self.snapshots.flush_async().await.map_err(snapshot_err)?;
        Ok(())
    }
}

/// Builds a snapshot from a copy of the state taken when it was requested.
pub struct SnapshotBuilder {
    image: Image,
    snapshots: sled::Tree,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let data = bincode::serialize(&self.image).map_err(snapshot_err)?;
        let last = self.image.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.image.membership.clone(),
            snapshot_id: match last {
                Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, fastid()),
                None => format!("0-0-{}", fastid()),
            },
        };
        let stored = Stored {
            meta: meta.clone(),
            data: data.clone(),
        };
        let bytes = bincode::serialize(&stored).map_err(snapshot_err)?;
        self.snapshots
            .insert(CURRENT, bytes)
            .map_err(snapshot_err)?;
        self.snapshots.flush_async().await.map_err(snapshot_err)?;
        tracing::info!(
            index = last.map_or(0, |l| l.index),
            bytes = data.len(),
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// A short unique suffix for snapshot ids.
fn fastid() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Outcome::Done,
                EntryPayload::Normal(request) => self.state.apply(&request, entry.log_id.index),
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Outcome::Done
                }
            };
            outcomes.push(outcome);
        }
        self.publish();
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            image: Image {
                state: self.state.clone(),
                last_applied: self.last_applied,
                membership: self.membership.clone(),
            },
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let image: Image = bincode::deserialize(&data).map_err(read_err)?;
        self.store(meta, &data).await?;
        self.restore(image);
        tracing::info!(
            index = meta.last_log_id.map_or(0, |l| l.index),
            "snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(bytes) = self.snapshots.get(CURRENT).map_err(read_err)? else {
            return Ok(None);
        };
        let stored: Stored = bincode::deserialize(&bytes).map_err(read_err)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
