//! Clusters of real nodes over real QUIC: bootstrap, join, replication of
//! the configuration to every data plane, leader loss, restarts, partitions,
//! snapshot install, membership changes and foreign certificates.

use std::collections::BTreeMap;
use std::time::Duration;

use node::config::RawConfig;

use crate::{MockUpstream, TestNode, eventually, get};

/// A gateway configuration routing everything to `upstream`, tagged `tag`.
fn config(upstream: &MockUpstream, tag: &str) -> String {
    format!(
        "upstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: {tag}, upstream: u }}\n",
        upstream.target()
    )
}

pub(crate) struct Cluster {
    pub(crate) nodes: BTreeMap<u64, TestNode>,
}

impl Cluster {
    pub(crate) async fn start(n: u64, yaml: &str) -> Self {
        Self::start_with(n, yaml, |_| {}).await
    }

    pub(crate) async fn start_with(n: u64, yaml: &str, tweak: fn(&mut RawConfig)) -> Self {
        let first = TestNode::start_with(yaml, |raw| {
            raw.region = "region-1".into();
            tweak(raw);
        })
        .await;
        let mut cluster = Self {
            nodes: BTreeMap::from([(1, first)]),
        };
        for id in 2..=n {
            cluster.add(id, tweak).await;
        }
        cluster.wait_voters(n as usize).await;
        cluster
    }

    pub(crate) async fn add(&mut self, id: u64, tweak: fn(&mut RawConfig)) {
        let token = self
            .any()
            .gateway
            .cluster()
            .token(Duration::from_secs(600))
            .expect("members can issue tokens");
        let node = TestNode::join(id, &format!("region-{id}"), &token.encode(), tweak).await;
        self.nodes.insert(id, node);
    }

    /// A second peer endpoint holding a member's own certificate: a
    /// verified peer that sends what no node would. With the member's id
    /// and peer address.
    pub(crate) fn twin(&self) -> (std::sync::Arc<node::peer::PeerPlane>, u64, String) {
        let member = self.any();
        let identity = node::pki::Identity::load(member.data.path()).unwrap();
        let socket = node::peer::PeerPlane::socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let peer = node::peer::PeerPlane::bind(socket, &identity).unwrap();
        let plane = &member.gateway.cluster().plane;
        (peer, plane.id(), plane.local_addr().to_string())
    }

    pub(crate) fn any(&self) -> &TestNode {
        self.nodes.values().next().expect("a node")
    }

    pub(crate) fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .find(|n| n.gateway.cluster().is_leader())
            .map(TestNode::id)
    }

    pub(crate) async fn wait_leader(&self) -> u64 {
        let mut found = None;
        assert!(
            eventually(Duration::from_secs(15), || {
                found = self.leader();
                std::future::ready(found.is_some())
            })
            .await,
            "no leader"
        );
        found.unwrap()
    }

    pub(crate) async fn wait_voters(&self, n: usize) {
        let done = eventually(Duration::from_secs(20), || {
            let voters = self.nodes.values().all(|node| {
                let metrics = node.gateway.cluster().raft.metrics().borrow().clone();
                metrics.membership_config.membership().voter_ids().count() == n
            });
            std::future::ready(voters)
        })
        .await;
        assert!(done, "the cluster did not reach {n} voters");
    }

    /// Cuts node `isolated` off from every other node, both ways.
    pub(crate) fn isolate(&self, isolated: u64) {
        for (id, node) in &self.nodes {
            if *id == isolated {
                for other in self.nodes.keys().filter(|o| **o != isolated) {
                    node.gateway.cluster().plane.block(*other);
                }
            } else {
                node.gateway.cluster().plane.block(isolated);
            }
        }
    }

    /// Undoes every cut.
    pub(crate) fn heal(&self) {
        for (id, node) in &self.nodes {
            for other in self.nodes.keys().filter(|o| *o != id) {
                node.gateway.cluster().plane.unblock(*other);
            }
        }
    }

    /// Waits until every node serves route `tag` on its own data plane.
    pub(crate) async fn serves_everywhere(&self, tag: &str) {
        for node in self.nodes.values() {
            let url = node.url("/x");
            let served = eventually(Duration::from_secs(15), || async {
                let reply = get(&url).await;
                reply.status == 200 && serves(node, tag)
            })
            .await;
            assert!(served, "node {} does not serve {tag}", node.id());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_a_config_to_every_data_plane() {
    let upstream = MockUpstream::echo("u").await;
    let cluster = Cluster::start(3, &config(&upstream, "first")).await;
    cluster.serves_everywhere("first").await;

    // A follower accepts the write and forwards it to the leader.
    let leader = cluster.wait_leader().await;
    let follower = cluster.nodes.values().find(|n| n.id() != leader).unwrap();
    let reply = send_config(
        &follower.admin_url("/v1/config?wait=all"),
        &config(&upstream, "second"),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let answer = reply.json();
    assert_eq!(answer["version"], 2);
    let index = answer["index"].as_u64().unwrap();
    for id in 1..=3u64 {
        assert!(
            answer["applied"][id.to_string()].as_u64().unwrap() >= index,
            "wait=all returned before node {id} applied: {answer}"
        );
    }
    cluster.serves_everywhere("second").await;

    let status = get(&follower.admin_url("/v1/cluster")).await.json();
    assert_eq!(status["leader"], leader);
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    assert!(
        status["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["role"] == "voter")
    );
    assert!(
        status["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["reachable"] == true)
    );
}

/// Whether `node`'s data plane has route `tag`.
fn serves(node: &TestNode, tag: &str) -> bool {
    node.gateway
        .snapshots()
        .load()
        .config
        .routes
        .iter()
        .any(|r| r.name == tag)
}

async fn send_config(url: &str, yaml: &str) -> crate::Reply {
    let request = http::Request::put(url)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            yaml.to_owned(),
        )))
        .unwrap();
    crate::send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_loses_no_committed_config() {
    let upstream = MockUpstream::echo("u").await;
    let mut cluster = Cluster::start(3, &config(&upstream, "v1")).await;
    let leader = cluster.wait_leader().await;
    let reply = send_config(
        &cluster.nodes[&leader].admin_url("/v1/config?wait=all"),
        &config(&upstream, "v2"),
    )
    .await;
    assert_eq!(reply.status, 200);
    cluster.nodes.remove(&leader).unwrap().stop().await;

    let new_leader = cluster.wait_leader().await;
    assert_ne!(new_leader, leader);
    for node in cluster.nodes.values() {
        let applied = node.gateway.cluster().applied();
        assert_eq!(
            applied.state.config_version(),
            2,
            "node {} lost the acknowledged write",
            node.id()
        );
    }
    let reply = send_config(
        &cluster.nodes[&new_leader].admin_url("/v1/config"),
        &config(&upstream, "v3"),
    )
    .await;
    assert_eq!(reply.status, 200, "two of three still commit");
    cluster.serves_everywhere("v3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_from_its_data_dir() {
    let upstream = MockUpstream::echo("u").await;
    let mut cluster = Cluster::start(3, &config(&upstream, "v1")).await;
    let leader = cluster.wait_leader().await;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    let stopped = cluster.nodes.remove(&follower).unwrap().halt().await;
    for version in 2..=4 {
        let reply = send_config(
            &cluster.nodes[&leader].admin_url("/v1/config"),
            &config(&upstream, &format!("v{version}")),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let restarted = stopped.start().await;
    cluster.nodes.insert(follower, restarted);
    cluster.serves_everywhere("v4").await;
    assert_eq!(
        cluster.nodes[&follower]
            .gateway
            .cluster()
            .applied()
            .state
            .config_version(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit_and_the_majority_can() {
    let upstream = MockUpstream::echo("u").await;
    let cluster = Cluster::start(3, &config(&upstream, "v1")).await;
    let leader = cluster.wait_leader().await;
    // Cut a follower off from both others, in both directions.
    let isolated = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.isolate(isolated);
    let minority = send_config(
        &cluster.nodes[&isolated].admin_url("/v1/config"),
        &config(&upstream, "minority"),
    )
    .await;
    assert_eq!(
        minority.status, 503,
        "the isolated node cannot commit: {:?}",
        minority.body
    );
    assert_eq!(minority.error_code(), "no_leader");
    let majority = send_config(
        &cluster.nodes[&leader].admin_url("/v1/config"),
        &config(&upstream, "majority"),
    )
    .await;
    assert_eq!(majority.status, 200);
    // The isolated node keeps serving its last configuration.
    assert_eq!(get(&cluster.nodes[&isolated].url("/x")).await.status, 200);
    assert!(serves(&cluster.nodes[&isolated], "v1"));

    cluster.heal();
    cluster.serves_everywhere("majority").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_learner_gets_a_snapshot_after_the_log_was_purged() {
    let upstream = MockUpstream::echo("u").await;
    let tweak: fn(&mut RawConfig) = |raw| raw.raft.snapshot_logs = 10;
    let mut cluster = Cluster::start_with(3, &config(&upstream, "v1"), tweak).await;
    let leader = cluster.wait_leader().await;
    for version in 2..=40 {
        let reply = send_config(
            &cluster.nodes[&leader].admin_url("/v1/config"),
            &config(&upstream, &format!("v{version}")),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let purged = eventually(Duration::from_secs(10), || {
        let metrics = cluster.nodes[&leader]
            .gateway
            .cluster()
            .raft
            .metrics()
            .borrow()
            .clone();
        std::future::ready(metrics.purged.is_some_and(|p| p.index > 30))
    })
    .await;
    assert!(purged, "the leader purged its log");
    cluster.add(4, tweak).await;
    cluster.wait_voters(4).await;
    cluster.serves_everywhere("v40").await;
    let metrics = cluster.nodes[&4]
        .gateway
        .cluster()
        .raft
        .metrics()
        .borrow()
        .clone();
    assert!(
        metrics.snapshot.is_some_and(|s| s.index > 30),
        "node 4 was brought up by a snapshot: {metrics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_elect_and_survive_two_failures() {
    let upstream = MockUpstream::echo("u").await;
    let mut cluster = Cluster::start(5, &config(&upstream, "v1")).await;
    cluster.serves_everywhere("v1").await;
    let leader = cluster.wait_leader().await;
    cluster.nodes.remove(&leader).unwrap().stop().await;
    let other = *cluster.nodes.keys().next().unwrap();
    cluster.nodes.remove(&other).unwrap().stop().await;
    let leader = cluster.wait_leader().await;
    let reply = send_config(
        &cluster.nodes[&leader].admin_url("/v1/config"),
        &config(&upstream, "v2"),
    )
    .await;
    assert_eq!(reply.status, 200, "three of five commit");
    cluster.serves_everywhere("v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_work_once() {
    let upstream = MockUpstream::echo("u").await;
    let cluster = Cluster::start(1, &config(&upstream, "v1")).await;
    let token = cluster
        .any()
        .gateway
        .cluster()
        .token(Duration::from_secs(600))
        .unwrap()
        .encode();
    let second = TestNode::join(2, "region-2", &token, |_| {}).await;
    assert_eq!(second.id(), 2);
    let data = tempfile::tempdir().unwrap();
    let mut raw = crate::test_config(data.path());
    raw.id = 3;
    let reused = node::App::join(raw.validate().unwrap(), &token).await;
    let error = reused.err().expect("a spent token is refused").to_string();
    assert!(error.contains("already used"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_by_its_former_peers() {
    let upstream = MockUpstream::echo("u").await;
    let mut cluster = Cluster::start(3, &config(&upstream, "v1")).await;
    let leader = cluster.wait_leader().await;
    let victim = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    let reply = crate::send(
        http::Request::delete(
            cluster.nodes[&leader].admin_url(&format!("/v1/cluster/members/{victim}")),
        )
        .body(Default::default())
        .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let removed = cluster.nodes.remove(&victim).unwrap();
    // The removed node's certificate is revoked: its calls are refused.
    let plane = removed.gateway.cluster().plane.clone();
    let target = cluster.nodes[&leader]
        .gateway
        .cluster()
        .plane
        .local_addr()
        .to_string();
    let refused = eventually(Duration::from_secs(5), || async {
        plane.block(leader);
        plane.unblock(leader);
        plane
            .request(
                leader,
                &target,
                &node::peer::Request::Applied,
                Duration::from_secs(1),
            )
            .await
            .is_err()
    })
    .await;
    assert!(refused, "a revoked node can still talk to the cluster");
    let status = get(&cluster.nodes[&leader].admin_url("/v1/cluster"))
        .await
        .json();
    assert_eq!(status["members"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_foreign_certificate_is_refused() {
    let upstream = MockUpstream::echo("u").await;
    let cluster = Cluster::start(1, &config(&upstream, "v1")).await;
    let member = cluster.any();
    // An impostor that trusts the cluster CA but holds a certificate from
    // its own CA, for the same node id.
    let dir = tempfile::tempdir().unwrap();
    let foreign = node::pki::Ca::generate("impostor").unwrap();
    let cert = foreign.issue(1, "region-1").unwrap();
    node::pki::Identity::save(dir.path(), &foreign, false, &cert, &node::pki::secret()).unwrap();
    std::fs::copy(
        member.data.path().join("pki/ca.pem"),
        dir.path().join("pki/ca.pem"),
    )
    .unwrap();
    let identity = node::pki::Identity::load(dir.path()).unwrap();
    let socket = node::peer::PeerPlane::socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let impostor = node::peer::PeerPlane::bind(socket, &identity).unwrap();
    let target = member.gateway.cluster().plane.local_addr().to_string();
    let answer = impostor
        .request(
            1,
            &target,
            &node::peer::Request::Applied,
            Duration::from_secs(3),
        )
        .await;
    assert!(answer.is_err(), "the impostor got an answer: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_peer_frame_closes_only_its_stream() {
    use node::peer::{Request, Response, codec};
    let upstream = MockUpstream::echo("u").await;
    let cluster = Cluster::start(1, &config(&upstream, "v1")).await;
    let (peer, id, target) = cluster.twin();
    let timeout = Duration::from_secs(5);
    let hostile: [&[u8]; 5] = [
        b"",
        // The first bytes of the forwarding marker, cut short.
        b"\xffFW",
        b"\xff\xff\xff\xff garbage",
        // A variant index far past the enum, then a length prefix of 2^60.
        &[7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
        &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    ];
    for frame in hostile {
        let answer = peer.exchange(id, &target, frame, timeout).await.unwrap();
        match codec::decode::<Response>(&answer).unwrap() {
            Response::Refused(reason) => assert!(
                reason.starts_with("malformed request"),
                "unexpected refusal: {reason}"
            ),
            other => panic!("a malformed frame was answered with {other:?}"),
        }
    }
    // The same connection still serves well-formed requests.
    let answer = peer
        .request(id, &target, &Request::Applied, timeout)
        .await
        .unwrap();
    assert!(
        matches!(answer, Response::Applied(index) if index > 0),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_leader_reports_not_ready() {
    let upstream = MockUpstream::echo("u").await;
    let cluster = Cluster::start(3, &config(&upstream, "v1")).await;
    let leader = cluster.wait_leader().await;
    let isolated = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    let readyz = cluster.nodes[&isolated].admin_url("/readyz");
    assert_eq!(get(&readyz).await.status, 200);
    cluster.isolate(isolated);
    // raft.leader-loss is 2s in tests.
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&readyz).await.status == 503
        })
        .await,
        "the isolated node still reports ready"
    );
    let answer = get(&readyz).await.json();
    assert!(
        answer["status"]
            .as_str()
            .unwrap()
            .contains("no contact with a raft leader"),
        "{answer}"
    );
    // Its data plane keeps serving the last configuration meanwhile.
    assert_eq!(get(&cluster.nodes[&isolated].url("/x")).await.status, 200);
    let metrics = String::from_utf8_lossy(
        &get(&cluster.nodes[&isolated].admin_url("/metrics"))
            .await
            .body,
    )
    .into_owned();
    assert!(
        metrics.contains("meridian_raft_leader_silence_seconds"),
        "{metrics}"
    );
    assert!(metrics.contains("meridian_raft_applied_index"), "{metrics}");
    cluster.heal();
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&readyz).await.status == 200
        })
        .await,
        "the healed node is not ready again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_healthy_cluster_stay_ready_past_the_leader_loss_timeout() {
    let upstream = MockUpstream::echo("u").await;
    let cluster = Cluster::start(3, &config(&upstream, "v1")).await;
    let leader = cluster.wait_leader().await;
    // raft.leader-loss is 2s in tests: heartbeats must keep the followers'
    // contact with the leader fresh well beyond it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (id, node) in &cluster.nodes {
        let answer = get(&node.admin_url("/readyz")).await;
        assert_eq!(
            answer.status,
            200,
            "node {id} (leader {leader}): {}",
            answer.json()
        );
        let silence = answer.json()["leader_silence_ms"].as_u64().unwrap();
        assert!(silence < 2000, "node {id}: {silence} ms without a leader");
    }
}
