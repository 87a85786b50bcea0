//! The raft log and vote on sled.
//!
//! Tree `log`: big-endian index → bincode entry, so sled's key order is the
//! log order. Tree `meta`: `vote`, `committed`, `last_purged`.
//!
//! **Invariant:** the vote and appended entries are flushed to disk
//! (`flush_async`) before the storage call returns, and before the append
//! callback reports them persisted.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TypeConfig;
use crate::typ::{Entry, LogId, StorageError, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// The log store (and, cloned, its reader).
#[derive(Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AnyError> {
    bincode::serialize(value).map_err(|e| AnyError::new(&e))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AnyError> {
    bincode::deserialize(bytes).map_err(|e| AnyError::new(&e))
}

fn io_err(error: sled::Error) -> io::Error {
    io::Error::other(error)
}

impl LogStore {
    /// Opens the log trees of `db`.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            log: db.open_tree("log")?,
            meta: db.open_tree("meta")?,
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, AnyError> {
        match self.meta.get(key).map_err(|e| AnyError::new(&e))? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), AnyError> {
        self.meta
            .insert(key, encode(value)?)
            .map_err(|e| AnyError::new(&e))?;
        self.meta
            .flush_async()
            .await
            .map_err(|e| AnyError::new(&e))?;
        Ok(())
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.get_meta(LAST_PURGED)
            .map_err(|e| StorageIOError::read_logs(e).into())
    }

    /// Removes the entries in `range` (keys are big-endian indexes) and
    /// flushes.
    async fn remove(&self, range: impl RangeBounds<[u8; 8]>) -> Result<(), StorageError> {
        let write = |e: sled::Error| StorageIOError::write_logs(AnyError::new(&e));
        let mut batch = sled::Batch::default();
        for key in self.log.range(range).keys() {
            batch.remove(key.map_err(write)?);
        }
        self.log.apply_batch(batch).map_err(write)?;
        self.log.flush_async().await.map_err(write)?;
        Ok(())
    }

    /// Number of log entries currently stored (for metrics and tests).
    pub fn entries(&self) -> usize {
        self.log.len()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for item in self.log.range((Bound::Included(start.to_be_bytes()), end)) {
            let (_, bytes) = item.map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
            entries.push(decode(&bytes).map_err(StorageIOError::read_logs)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_log_id = match self
            .log
            .last()
            .map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?
        {
            Some((_, bytes)) => Some(
                decode::<Entry>(&bytes)
                    .map_err(StorageIOError::read_logs)?
                    .log_id,
            ),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE)
            .map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(COMMITTED, &committed)
            .await
            .map_err(|e| StorageIOError::write(e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> =
            self.get_meta(COMMITTED).map_err(StorageIOError::read)?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes =
                encode(&entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, e))?;
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        let flushed = self.log.flush_async().await.map(|_| ()).map_err(io_err);
        let failed = flushed.as_ref().err().map(AnyError::new);
        callback.log_io_completed(flushed);
        match failed {
            Some(error) => Err(StorageIOError::write_logs(error).into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove(log_id.index.to_be_bytes()..).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves entries
        // that are merely ignored, never a hole.
        self.put_meta(LAST_PURGED, &log_id)
            .await
            .map_err(StorageIOError::write_logs)?;
        self.remove(..=log_id.index.to_be_bytes()).await
    }
}
