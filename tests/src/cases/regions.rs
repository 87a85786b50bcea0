//! Health gossip between regions: three nodes, one per region, on real
//! QUIC. Each node's `GET /v1/health/regions` holds every region's live
//! state; a region cut off from the others turns unhealthy in their views,
//! their DNS responders stop answering with its address, and its own
//! `/healthz/gslb` turns 503; healing brings it back everywhere.

use std::time::Duration;

use hickory_resolver::TokioResolver;
use node::config::RawConfig;
use serde_json::Value;

use super::cluster::Cluster;
use crate::dns::resolver;
use crate::{MockUpstream, TestNode, eventually, get};

/// Gossip every 100 ms, a report fresh for 500 ms, region `region-N` at
/// 192.0.2.N, and a DNS responder for `api.gw.test` over every region.
fn three_regions(raw: &mut RawConfig) {
    raw.gslb.interval = Duration::from_millis(100);
    raw.gslb.peer_timeout = Duration::from_millis(500);
    raw.gslb.critical_upstreams = vec!["*".into()];
    for id in 1..=3 {
        raw.regions.insert(
            format!("region-{id}"),
            node::regions::RawRegion {
                addresses: vec![format!("192.0.2.{id}")],
            },
        );
    }
    raw.dns.listen = "127.0.0.1:0".into();
    raw.dns.zone = Some("gw.test".into());
    raw.dns.ttl = Duration::from_secs(1);
    raw.dns.names.insert("api".into(), Vec::new());
}

async fn view(node: &TestNode) -> Value {
    let reply = get(&node.admin_url("/v1/health/regions")).await;
    assert_eq!(reply.status, 200);
    serde_json::from_slice(&reply.body).expect("a JSON view")
}

/// `(healthy, source)` of every region in `node`'s view.
async fn summary(node: &TestNode) -> Vec<(String, bool, String)> {
    let view = view(node).await;
    view["regions"]
        .as_object()
        .map(|regions| {
            regions
                .iter()
                .map(|(name, state)| {
                    (
                        name.clone(),
                        state["healthy"].as_bool().unwrap_or(false),
                        state["source"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn answers(resolver: &TokioResolver) -> Vec<String> {
    let mut ips: Vec<String> = match resolver.lookup_ip("api.gw.test.").await {
        Ok(lookup) => lookup.iter().map(|ip| ip.to_string()).collect(),
        Err(error) if error.is_no_records_found() && !error.is_nx_domain() => Vec::new(),
        Err(error) => panic!("api.gw.test: {error}"),
    };
    ips.sort();
    ips
}

/// Whether `meridian_region_healthy` for `cut`'s region reaches `value`:
/// the gauge follows the view at the next gossip tick.
async fn exported(node: &TestNode, cut: u64, value: f64) -> bool {
    let series = format!("meridian_region_healthy{{region=\"region-{cut}\"}}");
    eventually(Duration::from_secs(2), || {
        std::future::ready(node.metric(&series) == value)
    })
    .await
}

fn all_healthy(sources: [&str; 3]) -> Vec<(String, bool, String)> {
    (1..=3)
        .map(|id| (format!("region-{id}"), true, sources[id - 1].to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_holds_a_live_view_and_a_cut_region_drops_out_of_dns() {
    let upstream = MockUpstream::echo("u").await;
    let yaml = format!(
        "upstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: r, upstream: u }}\n",
        upstream.target()
    );
    let cluster = Cluster::start_with(3, &yaml, three_regions).await;
    let leader = cluster.wait_leader().await;
    let node = |id: u64| &cluster.nodes[&id];

    // Every node sees every region healthy, its own as `local`, the others
    // learned from their nodes (`peer`), not the static addresses.
    for id in 1..=3u64 {
        let mut sources = ["peer"; 3];
        sources[id as usize - 1] = "local";
        let expected = all_healthy(sources);
        let live = eventually(Duration::from_secs(10), || async {
            summary(node(id)).await == expected
        })
        .await;
        assert!(live, "node {id}: {:?}", summary(node(id)).await);
    }
    // What a node reported travels whole: readiness and its upstreams.
    let watcher = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    let cut = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader && **id != watcher)
        .unwrap();
    let seen = view(node(watcher)).await;
    let reported = &seen["regions"][format!("region-{cut}")]["nodes"][cut.to_string()];
    assert_eq!(reported["ready"], true, "{seen}");
    assert_eq!(reported["serve"], true);
    assert_eq!(reported["fresh"], true);
    assert_eq!(reported["upstreams"]["u"]["available"], 1);
    assert_eq!(reported["upstreams"]["u"]["total"], 1);
    assert_eq!(
        seen["regions"][format!("region-{cut}")]["addresses"][0],
        format!("192.0.2.{cut}")
    );
    assert!(exported(node(watcher), cut, 1.0).await);

    let dns = resolver(node(watcher).dns.expect("the responder listens"));
    let everyone = vec!["192.0.2.1", "192.0.2.2", "192.0.2.3"];
    assert_eq!(answers(&dns).await, everyone);

    // Cut one region's links: the others' views turn it unhealthy once its
    // reports go stale, and their DNS answers leave it out.
    cluster.isolate(cut);
    let cut_at = tokio::time::Instant::now();
    let gone = eventually(Duration::from_secs(5), || async {
        let state = &view(node(watcher)).await["regions"][format!("region-{cut}")];
        state["healthy"] == false && state["reason"] == "no health report for 500ms"
    })
    .await;
    assert!(gone, "{}", view(node(watcher)).await);
    let left_view = cut_at.elapsed();
    let remaining: Vec<&str> = everyone
        .iter()
        .copied()
        .filter(|ip| *ip != format!("192.0.2.{cut}"))
        .collect();
    // The responder's answers follow the view (TTL 1 s on the resolver's cache).
    let dropped = eventually(Duration::from_secs(5), || async {
        answers(&dns).await == remaining
    })
    .await;
    assert!(dropped, "{:?}", answers(&dns).await);
    let left_dns = cut_at.elapsed();
    assert!(exported(node(watcher), cut, 0.0).await);
    // The cut node itself loses the raft leader and reports 503 on
    // /healthz/gslb once `raft.leader-loss` (2 s here) has passed.
    let draining = eventually(Duration::from_secs(8), || async {
        get(&node(cut).admin_url("/healthz/gslb")).await.status == 503
    })
    .await;
    assert!(draining, "the cut-off node still says serve");
    let drained = cut_at.elapsed();
    // The majority's regions stay healthy throughout.
    assert_eq!(
        view(node(watcher)).await["regions"][format!("region-{leader}")]["healthy"],
        true
    );

    // Heal: the region returns to every view and to DNS.
    cluster.heal();
    let healed_at = tokio::time::Instant::now();
    let back = eventually(Duration::from_secs(10), || async {
        let state = &view(node(watcher)).await["regions"][format!("region-{cut}")];
        state["healthy"] == true
    })
    .await;
    assert!(back, "{}", view(node(watcher)).await);
    let returned = eventually(Duration::from_secs(5), || async {
        answers(&dns).await == everyone
    })
    .await;
    assert!(returned, "{:?}", answers(&dns).await);
    eprintln!(
        "region cut: out of the view after {left_view:?}, out of DNS after {left_dns:?}, \
         its /healthz/gslb 503 after {drained:?}; healed: back in the view and DNS after {:?}",
        healed_at.elapsed()
    );
    assert_eq!(
        get(&node(cut).admin_url("/healthz/gslb")).await.status,
        200,
        "the healed node serves again"
    );
}
