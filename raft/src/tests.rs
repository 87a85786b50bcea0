//! In-process clusters over an in-memory transport: the raft wiring
//! (storage, state machine, network adapter) end to end. The node's tests
//! repeat the important cases over real QUIC.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Node;
use crate::cluster::{self, Handle};
use crate::model::{Command, GatewayConfig, NodeId, Request, state::config_text};
use crate::network::{self, RaftRequest, RaftResponse, Transport, TransportError};
use crate::typ::Raft;

/// Routes RPCs to in-process nodes, through a bincode round trip, with
/// links that can be cut.
#[derive(Default)]
struct Router {
    nodes: Mutex<HashMap<NodeId, Raft>>,
    cut: Mutex<BTreeSet<NodeId>>,
}

impl Transport for Router {
    async fn call(
        &self,
        target: NodeId,
        _node: &Node,
        request: RaftRequest,
        _timeout: Duration,
    ) -> Result<RaftResponse, TransportError> {
        if self.cut.lock().unwrap().contains(&target) {
            return Err(TransportError::Unreachable(format!(
                "node {target} is cut off"
            )));
        }
        let raft = self.nodes.lock().unwrap().get(&target).cloned();
        let Some(raft) = raft else {
            return Err(TransportError::Unreachable(format!(
                "node {target} is down"
            )));
        };
        let bytes =
            bincode::serialize(&request).map_err(|e| TransportError::Failed(e.to_string()))?;
        let request: RaftRequest =
            bincode::deserialize(&bytes).map_err(|e| TransportError::Failed(e.to_string()))?;
        let response = network::serve(&raft, request).await;
        let bytes =
            bincode::serialize(&response).map_err(|e| TransportError::Failed(e.to_string()))?;
        bincode::deserialize(&bytes).map_err(|e| TransportError::Failed(e.to_string()))
    }
}

struct TestCluster {
    router: Arc<Router>,
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    handles: BTreeMap<NodeId, Handle>,
}

fn node(id: NodeId) -> Node {
    Node {
        peer: format!("mem:{id}"),
        region: format!("r{id}"),
    }
}

fn fast(id: NodeId, dir: &std::path::Path) -> cluster::Config {
    let mut config = cluster::Config::new(id, dir.to_owned());
    config.heartbeat = Duration::from_millis(50);
    config.election = (Duration::from_millis(300), Duration::from_millis(600));
    config.snapshot_logs = 20;
    config
}

impl TestCluster {
    async fn start(n: NodeId) -> Self {
        let mut cluster = Self {
            router: Arc::default(),
            dirs: BTreeMap::new(),
            handles: BTreeMap::new(),
        };
        for id in 1..=n {
            cluster.dirs.insert(id, tempfile::tempdir().unwrap());
            cluster.boot(id).await;
        }
        let members: BTreeMap<NodeId, Node> = (1..=n).map(|id| (id, node(id))).collect();
        cluster.handles[&1].raft.initialize(members).await.unwrap();
        cluster
    }

    async fn boot(&mut self, id: NodeId) {
        // After an in-process `kill`, tasks of the old instance that were
        // mid-RPC may hold the sled database (and its file lock) a moment
        // longer; a restarted process would not see that, so wait it out.
        let mut attempts = 0;
        let handle = loop {
            match cluster::start(&fast(id, self.dirs[&id].path()), self.router.clone()).await {
                Ok(handle) => break handle,
                Err(error) if format!("{error:?}").contains("WouldBlock") && attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("node {id} did not start: {error:?}"),
            }
        };
        self.router
            .nodes
            .lock()
            .unwrap()
            .insert(id, handle.raft.clone());
        self.handles.insert(id, handle);
    }

    async fn kill(&mut self, id: NodeId) {
        self.router.nodes.lock().unwrap().remove(&id);
        self.handles.remove(&id).unwrap().shutdown().await;
    }

    async fn leader(&self) -> NodeId {
        for _ in 0..500 {
            for handle in self.handles.values() {
                if let Some(leader) = handle.raft.metrics().borrow().current_leader
                    && self.handles.contains_key(&leader)
                    && !self.router.cut.lock().unwrap().contains(&leader)
                {
                    return leader;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no leader elected");
    }

    async fn write(&self, command: Command) -> u64 {
        let leader = self.leader().await;
        let response = self.handles[&leader]
            .raft
            .client_write(Request { at: 1, command })
            .await
            .unwrap();
        response.log_id.index
    }

    /// Waits until every running node has applied `index`.
    async fn applied_everywhere(&self, index: u64) {
        for (id, handle) in &self.handles {
            let mut applied = handle.applied.clone();
            tokio::time::timeout(
                Duration::from_secs(10),
                applied.wait_for(|a| a.index() >= index),
            )
            .await
            .unwrap_or_else(|_| panic!("node {id} did not apply {index}"))
            .unwrap();
        }
    }
}

fn config(route: &str) -> Command {
    let yaml = format!(
        "upstreams:\n  u: {{ targets: [\"127.0.0.1:1\"] }}\nroutes:\n  - {{ name: {route}, upstream: u }}\n"
    );
    Command::ApplyConfig {
        config: config_text(&GatewayConfig::parse(&yaml).unwrap()),
        author: "test".into(),
    }
}

fn route_on(handle: &Handle) -> Option<String> {
    handle
        .applied
        .borrow()
        .state
        .gateway()
        .map(|g| g.routes[0].name.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reaches_every_node_and_survives_the_leader() {
    let mut cluster = TestCluster::start(3).await;
    let index = cluster.write(config("first")).await;
    cluster.applied_everywhere(index).await;
    for handle in cluster.handles.values() {
        assert_eq!(route_on(handle).as_deref(), Some("first"));
    }

    let old = cluster.leader().await;
    cluster.kill(old).await;
    let new = cluster.leader().await;
    assert_ne!(new, old);
    let index = cluster.write(config("second")).await;
    cluster.applied_everywhere(index).await;

    // The old leader restarts on its data dir and catches up.
    cluster.boot(old).await;
    cluster.applied_everywhere(index).await;
    for handle in cluster.handles.values() {
        assert_eq!(route_on(handle).as_deref(), Some("second"));
        assert_eq!(
            handle.applied.borrow().state.config_version(),
            2,
            "no committed config lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let others: Vec<NodeId> = cluster
        .handles
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    cluster
        .router
        .cut
        .lock()
        .unwrap()
        .extend(others.iter().copied());
    let write = cluster.handles[&leader].raft.client_write(Request {
        at: 1,
        command: config("lonely"),
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), write)
            .await
            .is_err(),
        "a leader cut off from both followers commits nothing"
    );
    cluster.router.cut.lock().unwrap().clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_purge_the_log_and_restore_on_restart() {
    let mut cluster = TestCluster::start(3).await;
    let mut index = 0;
    for i in 0..120 {
        index = cluster.write(config(&format!("r{i}"))).await;
    }
    cluster.applied_everywhere(index).await;
    // Snapshots every 20 entries keep the log short on every node.
    for (id, handle) in &cluster.handles {
        let mut metrics = handle.raft.metrics();
        tokio::time::timeout(
            Duration::from_secs(10),
            metrics.wait_for(|m| m.purged.is_some_and(|p| p.index >= 100)),
        )
        .await
        .unwrap_or_else(|_| panic!("node {id} did not purge"))
        .unwrap();
        assert!(
            handle.log_entries() < 40,
            "node {id} holds {} entries",
            handle.log_entries()
        );
    }
    let follower = *cluster.handles.keys().find(|id| **id != 1).unwrap();
    cluster.kill(follower).await;
    cluster.boot(follower).await;
    cluster.applied_everywhere(index).await;
    assert_eq!(
        route_on(&cluster.handles[&follower]).as_deref(),
        Some("r119")
    );
}
