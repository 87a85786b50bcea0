use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

use super::*;
use crate::TypeConfig;
use crate::model::NodeId;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_db, log, machine) = open(dir.path()).expect("store opens");
        Ok((dir, log, machine))
    }
}

/// openraft's storage conformance suite on the sled store.
#[test]
fn openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(SledBuilder)
}
