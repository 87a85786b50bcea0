//! `scope: global` over three real nodes on real QUIC: the overshoot
//! measured against the documented bound `Σ rₙ × (T + RTT/2)`, a node
//! partitioned away mid-window, 30% of counter batches dropped, and a
//! month's quota spent in two regions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use node::config::RawConfig;

use super::cluster::Cluster;
use crate::client::{HttpClient, http1, send_with};
use crate::{MockUpstream, TestNode, eventually};

/// The sync interval the nodes run with (the default is 50 ms).
const SYNC: Duration = Duration::from_millis(25);

fn tweak(raw: &mut RawConfig) {
    raw.ratelimit.global.sync_interval = SYNC;
    raw.ratelimit.global.full_sync_interval = Duration::from_millis(250);
    raw.ratelimit.global.peer_timeout = Duration::from_millis(500);
}

/// A route with one global limit named `quota` on header `X-Tenant`.
fn config(upstream: &MockUpstream, limit: &str) -> String {
    format!(
        "upstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - name: g\n    upstream: u\n    limits:\n      - {{ name: quota, key: {{ header: X-Tenant }}, {limit}, scope: global }}\n",
        upstream.target()
    )
}

const LIMIT: &str = "route:g/quota";

async fn cluster(limit: &str) -> (Cluster, MockUpstream) {
    let upstream = MockUpstream::echo("u").await;
    let cluster = Cluster::start_with(3, &config(&upstream, limit), tweak).await;
    cluster.serves_everywhere("g").await;
    (cluster, upstream)
}

/// Waits, if needed, so that a fixed window of `window` seconds does not
/// end within the next `margin` seconds (the test's traffic stays in one
/// window).
async fn clear_of_window_end(window: u64, margin: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch");
    let left = window - now.as_secs() % window;
    if left <= margin {
        tokio::time::sleep(Duration::from_secs(left) + Duration::from_millis(200)).await;
    }
}

/// What a burst of traffic did.
#[derive(Debug, Default)]
struct Load {
    admitted: u64,
    refused: u64,
    /// Answers other than 200 and 429 (there should be none).
    other: u64,
    /// Requests sent per node.
    sent: Vec<u64>,
    seconds: f64,
}

impl Load {
    /// `Σ rₙ`: requests per second offered over every node. An admission
    /// rate can be no higher, so the bound computed from it holds a
    /// fortiori.
    fn rate(&self) -> f64 {
        self.sent.iter().sum::<u64>() as f64 / self.seconds
    }
}

/// Sends requests for `tenant` to every node in `nodes`, `workers` at a
/// time per node, for `duration`.
async fn blast(nodes: &[&TestNode], tenant: &str, workers: usize, duration: Duration) -> Load {
    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let started = tokio::time::Instant::now();
    let mut per_node = Vec::new();
    for node in nodes {
        let sent = Arc::new(AtomicU64::new(0));
        per_node.push(sent.clone());
        for _ in 0..workers {
            let (url, tenant) = (node.url("/x"), tenant.to_owned());
            let (admitted, refused, other, sent) = (
                admitted.clone(),
                refused.clone(),
                other.clone(),
                sent.clone(),
            );
            let client: HttpClient = http1();
            tokio::spawn(async move {
                while started.elapsed() < duration {
                    let request = http::Request::get(&url)
                        .header("x-tenant", &tenant)
                        .body(Default::default())
                        .expect("a valid request");
                    let reply = send_with(&client, request).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    match reply.status.as_u16() {
                        200 => admitted.fetch_add(1, Ordering::Relaxed),
                        429 => refused.fetch_add(1, Ordering::Relaxed),
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
    }
    tokio::time::sleep(duration + Duration::from_millis(300)).await;
    Load {
        admitted: admitted.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        other: other.load(Ordering::Relaxed),
        sent: per_node.iter().map(|s| s.load(Ordering::Relaxed)).collect(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The documented bound for `load` with delay `delay`: `Σ rₙ × D`, where
/// `D` is the sync interval plus half the RTT (loopback: well under a
/// millisecond) plus one more interval of slack for the receiver's tick.
fn bound(load: &Load, delay: Duration) -> f64 {
    load.rate() * delay.as_secs_f64()
}

/// What `node` knows of `tenant`'s count over every node (the key ends
/// with the header's value).
fn count(node: &TestNode, tenant: &str) -> u64 {
    node.gateway
        .ratelimit()
        .global_counts(LIMIT)
        .unwrap_or_default()
        .iter()
        .filter(|(key, _)| key.ends_with(tenant.as_bytes()))
        .map(|(_, n)| n)
        .sum()
}

/// Waits until every node counts `truth` for `tenant`; the views when
/// they did not. (Waiting for the views merely to agree is not enough: two
/// partial views can add up to the same number for a moment.)
async fn converged(
    cluster: &Cluster,
    tenant: &str,
    truth: u64,
    within: Duration,
) -> Result<(), Vec<u64>> {
    let views = || -> Vec<u64> { cluster.nodes.values().map(|n| count(n, tenant)).collect() };
    let reached = eventually(within, || {
        std::future::ready(views().iter().all(|&v| v == truth))
    })
    .await;
    if reached { Ok(()) } else { Err(views()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_over_three_nodes_admits_the_limit_plus_at_most_the_bound() {
    clear_of_window_end(3600, 30).await;
    let (cluster, _upstream) = cluster("algorithm: fixed_window, limit: 300, per: 1h").await;
    let nodes: Vec<&TestNode> = cluster.nodes.values().collect();
    let load = blast(&nodes, "spread", 4, Duration::from_secs(2)).await;
    let bound = bound(&load, 2 * SYNC);
    eprintln!(
        "admitted {} of limit 300 (refused {}), offered {:.0} req/s, bound {bound:.1}",
        load.admitted,
        load.refused,
        load.rate()
    );
    assert_eq!(load.other, 0);
    assert!(load.refused > 0, "the load never reached the limit");
    assert!(load.admitted >= 300, "under-admitted: {}", load.admitted);
    assert!(
        load.admitted as f64 <= 300.0 + bound,
        "admitted {} > limit 300 + bound {bound:.1}",
        load.admitted
    );
    // Every node converges on the true count.
    let views = converged(&cluster, "spread", load.admitted, Duration::from_secs(3)).await;
    assert_eq!(
        views,
        Ok(()),
        "every node counts the {} admitted",
        load.admitted
    );
    // The bound is computed and exposed per limit.
    let bounds = cluster.any().gateway.ratelimit().bounds();
    assert!(bounds.iter().any(|b| b.limit == LIMIT), "{bounds:?}");
    // …and in `GET /v1/cluster`, which `meridian cluster status` prints.
    let status = crate::get(&cluster.any().admin_url("/v1/cluster"))
        .await
        .json();
    let listed = status["global_limits"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        listed
            .iter()
            .any(|b| b["limit"] == LIMIT && b["delay"].as_f64() > Some(0.0)),
        "{status}"
    );
    for (id, node) in &cluster.nodes {
        let from = if *id == 1 { 2 } else { 1 };
        let received = format!("meridian_ratelimit_counters_received_total{{peer=\"{from}\"}}");
        assert!(node.metric(&received) > 0.0, "node {id}: {received}");
        assert!(node.metric("meridian_ratelimit_sync_bytes_total{direction=\"sent\"}") > 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_keeps_to_its_share_and_counts_converge_after_healing() {
    clear_of_window_end(3600, 40).await;
    let (cluster, _upstream) = cluster("algorithm: fixed_window, limit: 300, per: 1h").await;
    let nodes: Vec<&TestNode> = cluster.nodes.values().collect();
    // Some traffic everywhere (20 requests per node), then node 3 is cut
    // off mid-window.
    let client = http1();
    for node in &nodes {
        for _ in 0..20 {
            let request = http::Request::get(node.url("/x"))
                .header("x-tenant", "cut")
                .body(Default::default())
                .expect("a valid request");
            assert_eq!(send_with(&client, request).await.status, 200);
        }
    }
    let before = 60;
    // Every node knows of the 60 before the cut.
    for node in &nodes {
        let known = eventually(Duration::from_secs(2), || {
            std::future::ready(count(node, "cut") == before)
        })
        .await;
        assert!(known, "node {} did not learn the count", node.id());
    }
    cluster.isolate(3);
    // Past the peer timeout: each side presumes the other serving.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (majority, isolated) = ([nodes[0], nodes[1]], [nodes[2]]);
    let (a, b) = tokio::join!(
        blast(&majority, "cut", 3, Duration::from_secs(2)),
        blast(&isolated, "cut", 3, Duration::from_secs(2)),
    );
    let admitted = before + a.admitted + b.admitted;
    let bound = (a.rate() + b.rate()) * (2 * SYNC).as_secs_f64();
    eprintln!(
        "before {before}, majority {}, isolated {}: {admitted} of 300 (bound {bound:.1})",
        a.admitted, b.admitted
    );
    assert!(a.refused > 0 && b.refused > 0);
    // The isolated node kept to its share: 300 − 2 × ⌈300 / 3⌉ = 100 in
    // all, of which it had used 20 before the cut.
    assert!(b.admitted <= 80, "isolated side admitted {}", b.admitted);
    assert!(admitted as f64 <= 300.0 + bound, "admitted {admitted}");
    assert!(admitted >= 300 - 5, "under-admitted: {admitted}");
    let partitioned = format!("meridian_ratelimit_partition_decisions_total{{limit=\"{LIMIT}\"}}");
    assert!(
        eventually(Duration::from_secs(2), || std::future::ready(
            nodes[2].metric(&partitioned) > 0.0
        ))
        .await
    );
    cluster.heal();
    let views = converged(&cluster, "cut", admitted, Duration::from_secs(5)).await;
    assert_eq!(views, Ok(()), "every node counts the {admitted} admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_converge_when_30_percent_of_batches_are_lost() {
    clear_of_window_end(3600, 30).await;
    let (cluster, _upstream) = cluster("algorithm: fixed_window, limit: 300, per: 1h").await;
    for node in cluster.nodes.values() {
        node.gateway.ratelimit().set_counter_loss(0.3);
    }
    let nodes: Vec<&TestNode> = cluster.nodes.values().collect();
    let load = blast(&nodes, "lossy", 3, Duration::from_secs(2)).await;
    // Under loss D reaches up to the full-sync interval (250 ms).
    let bound = load.rate() * 0.275;
    eprintln!("lossy: admitted {} (bound {bound:.1})", load.admitted);
    assert!(load.refused > 0);
    assert!(load.admitted >= 300);
    assert!(load.admitted as f64 <= 300.0 + bound);
    let views = converged(&cluster, "lossy", load.admitted, Duration::from_secs(3)).await;
    assert_eq!(
        views,
        Ok(()),
        "every node counts the {} admitted",
        load.admitted
    );
    assert!(
        nodes[0].metric("meridian_ratelimit_sync_batches_dropped_total") > 0.0,
        "no batch was dropped"
    );
    // The reported bound saw the loss: its D is the longest silence of a
    // peer, longer than the sync interval when batches go missing.
    let delays: Vec<f64> = nodes
        .iter()
        .flat_map(|node| node.gateway.ratelimit().bounds())
        .map(|bound| bound.delay)
        .collect();
    assert!(
        delays.iter().any(|d| *d > 1.5 * SYNC.as_secs_f64()),
        "delays {delays:?} ignore the loss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_quota_spent_in_one_region_is_spent_in_all() {
    let (cluster, _upstream) = cluster("algorithm: fixed_window, limit: 20, per: month").await;
    let nodes: Vec<&TestNode> = cluster.nodes.values().collect();
    let client = http1();
    let get = |node: &TestNode, tenant: &str| {
        let request = http::Request::get(node.url("/x"))
            .header("x-tenant", tenant)
            .body(Default::default())
            .expect("a valid request");
        send_with(&client, request)
    };
    for _ in 0..20 {
        assert_eq!(get(nodes[0], "acme").await.status, 200);
    }
    assert_eq!(get(nodes[0], "acme").await.status, 429);
    // Within the sync delay the other regions know.
    for node in &nodes[1..] {
        let refused = eventually(Duration::from_secs(2), || {
            std::future::ready(count(node, "acme") >= 20)
        })
        .await;
        assert!(refused, "node {} did not learn the quota", node.id());
        let reply = get(node, "acme").await;
        assert_eq!(reply.status, 429);
        assert_eq!(reply.error_code(), "rate_limited");
    }
    // Another tenant is untouched.
    assert_eq!(get(nodes[2], "other").await.status, 200);
}
