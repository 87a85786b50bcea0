//! Raft storage on sled, in `<data-dir>/raft`.
//!
//! - [`log::LogStore`]: the log, the vote and the committed pointer;
//! - [`state_machine::StateMachine`]: the applied state and its snapshots.
//!
//! Only this module touches sled.

pub mod log;
pub mod state_machine;

use std::path::Path;

pub use self::log::LogStore;
pub use self::state_machine::{Applied, StateMachine};

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// sled refused the directory (corrupt, locked by another process, …).
    #[error("cannot open the raft store in {path}: {source}")]
    Sled {
        /// The directory.
        path: String,
        /// sled's error.
        source: sled::Error,
    },
    /// The stored snapshot cannot be read.
    #[error("cannot read the raft snapshot: {0}")]
    Snapshot(Box<crate::typ::StorageError>),
}

/// Opens (or creates) the store in `dir`.
pub fn open(dir: &Path) -> Result<(sled::Db, LogStore, StateMachine), OpenError> {
    let sled_err = |source| OpenError::Sled {
        path: dir.display().to_string(),
        source,
    };
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(16 << 20)
        .mode(sled::Mode::LowSpace)
        .open()
        .map_err(sled_err)?;
    let log = LogStore::open(&db).map_err(sled_err)?;
    let machine = StateMachine::open(&db).map_err(|e| OpenError::Snapshot(Box::new(e)))?;
    Ok((db, log, machine))
}

#[cfg(test)]
mod tests;
