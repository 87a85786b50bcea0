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
/// nodes that can be cut off and one-way links that can be blocked.
#[derive(Default)]
struct Router {
    nodes: Mutex<HashMap<NodeId, Raft>>,
    cut: Mutex<BTreeSet<NodeId>>,
    blocked: Mutex<HashMap<(NodeId, NodeId), Block>>,
}

/// What a blocked link from one node to another drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// Every RPC.
    All,
    /// Appends (entries and heartbeats); votes go through.
    Appends,
}

impl Router {
    fn block(&self, from: NodeId, to: NodeId, block: Option<Block>) {
        let mut blocked = self.blocked.lock().unwrap();
        match block {
            Some(block) => blocked.insert((from, to), block),
            None => blocked.remove(&(from, to)),
        };
    }
}

/// A node's end of the [`Router`]: the RPCs it sends.
struct Link {
    from: NodeId,
    router: Arc<Router>,
}

impl Transport for Link {
    async fn call(
        &self,
        target: NodeId,
        _node: &Node,
        request: RaftRequest,
        _timeout: Duration,
    ) -> Result<RaftResponse, TransportError> {
        let block = self
            .router
            .blocked
            .lock()
            .unwrap()
            .get(&(self.from, target))
            .copied();
        let dropped = match block {
            Some(Block::All) => true,
            Some(Block::Appends) => matches!(request, RaftRequest::AppendEntries(_)),
            None => false,
        };
        if dropped || self.router.cut.lock().unwrap().contains(&target) {
            return Err(TransportError::Unreachable(format!(
                "node {target} is cut off"
            )));
        }
        let raft = self.router.nodes.lock().unwrap().get(&target).cloned();
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
            let link = Arc::new(Link {
                from: id,
                router: self.router.clone(),
            });
            match cluster::start(&fast(id, self.dirs[&id].path()), link).await {
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

/// Waits until the node of `handle` names `leader` as its leader (`None`:
/// until it knows of none).
async fn names(handle: &Handle, leader: Option<NodeId>, within: Duration) {
    let mut metrics = handle.raft.metrics();
    tokio::time::timeout(within, metrics.wait_for(|m| m.current_leader == leader))
        .await
        .unwrap_or_else(|_| {
            let m = handle.raft.metrics().borrow().clone();
            panic!(
                "node {} names {:?}, not {leader:?}, after {within:?} (term {}, {:?})",
                m.id, m.current_leader, m.current_term, m.state
            )
        })
        .unwrap();
}

/// The history of the chaos harness's `peer-latency-loss` failure (seed 6),
/// on the in-process router. Node B wins a term whose entries reach nobody;
/// node A campaigns, is refused by B with B's longer log — openraft marks A
/// as having seen a greater log — and wins with C's vote anyway. C, which
/// A's entries do not reach, campaigns in a higher term it cannot win (its
/// log is behind) and deposes A by answering A's heartbeat with that term.
/// A holds the most complete log, but openraft would make it wait an
/// election timeout plus `smaller_log_timeout` (2 × the timeout max) for the
/// stale mark; the deposed leader campaigns after an election timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_with_the_longest_log_campaigns_without_delay() {
    let cluster = TestCluster::start(3).await;
    let index = cluster.write(config("first")).await;
    cluster.applied_everywhere(index).await;
    let a = cluster.leader().await;
    let others: Vec<NodeId> = cluster
        .handles
        .keys()
        .copied()
        .filter(|id| *id != a)
        .collect();
    let (b, c) = (others[0], others[1]);
    let raft = |id: NodeId| &cluster.handles[&id].raft;
    let router = &cluster.router;
    // Elections only when the test asks for them.
    for id in [a, b, c] {
        raft(id).runtime_config().elect(false);
    }

    // B wins term 2 (A's heartbeats stop, so both leases run out), but its
    // entries reach nobody: its log ends in a term-2 entry only it holds.
    raft(a).runtime_config().heartbeat(false);
    router.block(b, a, Some(Block::Appends));
    router.block(b, c, Some(Block::Appends));
    tokio::time::sleep(Duration::from_millis(800)).await;
    raft(b).trigger().elect().await.unwrap();
    names(&cluster.handles[&b], Some(b), Duration::from_secs(2)).await;

    // A campaigns while C is out of reach: B refuses (its lease, its longer
    // log), which openraft records in A. A campaigns again with C in reach
    // (votes only: A's entries never reach C) and wins.
    router.block(a, c, Some(Block::All));
    raft(a).trigger().elect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    router.block(a, c, Some(Block::Appends));
    raft(a).trigger().elect().await.unwrap();
    names(&cluster.handles[&a], Some(a), Duration::from_secs(2)).await;
    names(&cluster.handles[&b], Some(a), Duration::from_secs(2)).await;

    // C campaigns in a higher term, refused by both (its log is behind).
    raft(c).trigger().elect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A's heartbeats reach C again; C answers with its higher term, which
    // deposes A. Only A (with C's vote) can win now; B stays out of it.
    for id in [a, c] {
        raft(id).runtime_config().elect(true);
    }
    raft(a).runtime_config().heartbeat(true);
    router.block(a, c, None);
    names(&cluster.handles[&a], None, Duration::from_secs(2)).await;
    let deposed = tokio::time::Instant::now();

    // An election timeout is 300–600 ms here; openraft alone would wait at
    // least 300 ms + 1200 ms.
    names(&cluster.handles[&a], Some(a), Duration::from_millis(1200)).await;
    eprintln!("A leads again {:?} after it was deposed", deposed.elapsed());
}

#[test]
fn a_deposed_leader_that_heard_of_no_successor_campaigns_once() {
    use openraft::Vote;

    use crate::cluster::Deposed;

    let now = tokio::time::Instant::now();
    let timeout = || Duration::from_millis(1500);
    let vote = |term, node| Vote::new(term, node);
    let at = |ms| now + Duration::from_millis(ms);

    // A follower that never led leaves elections to openraft.
    let mut deposed = Deposed::default();
    assert_eq!(deposed.observe(2, Some(1), &vote(1, 1), now, timeout), None);
    assert_eq!(deposed.observe(2, None, &vote(2, 3), now, timeout), None);

    // A leader deposed by a candidate campaigns an election timeout after
    // its vote last changed.
    let mut deposed = Deposed::default();
    assert_eq!(deposed.observe(1, Some(1), &vote(3, 1), now, timeout), None);
    assert_eq!(
        deposed.observe(1, None, &vote(4, 3), now, timeout),
        Some(at(1500))
    );
    assert_eq!(
        deposed.observe(1, None, &vote(4, 3), at(700), timeout),
        Some(at(1500)),
        "the same vote: the same deadline"
    );
    assert_eq!(
        deposed.observe(1, None, &vote(5, 2), at(900), timeout),
        Some(at(2400)),
        "a new vote (granted to another candidate): a new timeout"
    );
    // Once it has campaigned, openraft's timers decide.
    deposed.stand_down();
    assert_eq!(
        deposed.observe(1, None, &vote(6, 1), at(2400), timeout),
        None
    );
    assert_eq!(
        deposed.observe(1, None, &vote(7, 3), at(3000), timeout),
        None
    );

    // The same when openraft's own timer made it campaign first.
    let mut deposed = Deposed::default();
    assert_eq!(deposed.observe(1, Some(1), &vote(3, 1), now, timeout), None);
    assert!(
        deposed
            .observe(1, None, &vote(4, 3), now, timeout)
            .is_some()
    );
    assert_eq!(
        deposed.observe(1, None, &vote(5, 1), at(1200), timeout),
        None
    );
    assert_eq!(
        deposed.observe(1, None, &vote(6, 3), at(1300), timeout),
        None
    );

    // Hearing of another leader makes it a follower like the others.
    let mut deposed = Deposed::default();
    assert_eq!(deposed.observe(1, Some(1), &vote(3, 1), now, timeout), None);
    assert_eq!(
        deposed.observe(1, Some(2), &vote(4, 2), at(100), timeout),
        None
    );
    assert_eq!(
        deposed.observe(1, None, &vote(5, 3), at(200), timeout),
        None
    );
}
