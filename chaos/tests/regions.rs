//! Regions in network namespaces (root only): three `meridian` nodes, one
//! per region, each in a namespace of its own with its own address
//! (10.77.0.N), joined at a hub bridge ([`chaos::netns`]). Cutting a
//! region's link at the hub (`ip link set down`) takes its address out of
//! the other regions' DNS answers and turns its own `/healthz/gslb` 503,
//! while the others keep serving; healing brings it back everywhere.
//!
//! Every probe is made from inside the namespace of the node it asks, the
//! way a client in that region would. Not root, or no `ip` (iproute2): the
//! test prints `skipped: <reason>` and passes. The timings it prints are
//! the ones docs/regions.md records
//! (`cargo test -p chaos --test regions -- --nocapture`). The `meridian`
//! binary is found as in `scenarios.rs`.

mod common;

use std::net::{IpAddr, SocketAddr};

use std::time::Duration;

use chaos::backend;
use chaos::cluster::{self, Cluster, Network, REGIONS, Wrap};
use chaos::dns::{self, Provider};
use chaos::netns::{self, Net};
use chaos::scenario::Cut;
use common::meridian;
use hickory_resolver::Resolver;
use http::Method;
use serde_json::Value;
use tokio::time::Instant;

/// The name every region serves.
const NAME: &str = "api.gw.test.";

/// The responder's port on each node's address.
const DNS_PORT: u16 = 5353;

/// Regions in the test.
const NODES: u64 = 3;

/// The region that is cut off.
const CUT: u64 = 3;

/// Bound on each wait.
const WAIT: Duration = Duration::from_secs(10);

/// Between two probes.
const POLL: Duration = Duration::from_millis(50);

/// A probe's deadline.
const CALL: Duration = Duration::from_secs(2);

/// Node `id`'s additions to node.toml, as in tests/src/cases/regions.rs:
/// gossip every 100 ms, a report fresh for 500 ms, every upstream
/// critical, region N at 10.77.0.N, and a DNS responder on the node's
/// address for `api.gw.test` over every region. `raft.leader-loss` must
/// exceed the harness's 2 s election timeout.
fn node_toml(id: u64) -> toml::Table {
    let mut text = format!(
        "[raft]\nleader-loss = \"3s\"\n\n\
         [gslb]\ninterval = \"100ms\"\npeer-timeout = \"500ms\"\ncritical-upstreams = [\"*\"]\n\n\
         [dns]\nlisten = \"{}:{DNS_PORT}\"\nzone = \"gw.test\"\nttl = \"1s\"\n\n\
         [dns.names]\napi = []\n",
        netns::address(id)
    );
    for region in 1..=NODES {
        text.push_str(&format!(
            "\n[regions.{}]\naddresses = [\"{}\"]\n",
            REGIONS[(region - 1) as usize],
            netns::address(region)
        ));
    }
    text.parse().expect("valid TOML")
}

/// Asks every node's responder and admin API from inside its namespace.
struct Probes<'a> {
    cluster: &'a Cluster,
    resolvers: Vec<Resolver<Provider>>,
}

impl<'a> Probes<'a> {
    fn new(cluster: &'a Cluster) -> Self {
        let resolvers = cluster
            .nodes()
            .iter()
            .map(|node| {
                let server = SocketAddr::new(node.admin.ip(), DNS_PORT);
                dns::resolver(&node.dialer, server).expect("a resolver")
            })
            .collect();
        Self { cluster, resolvers }
    }

    /// The addresses node `id`'s responder gives for [`NAME`].
    async fn answers(&self, id: u64) -> Vec<IpAddr> {
        dns::lookup(&self.resolvers[(id - 1) as usize], NAME)
            .await
            .unwrap_or_else(|e| panic!("node {id}'s responder: {e:#}"))
    }

    /// Node `id`'s `/healthz/gslb`: status and body.
    async fn gslb(&self, id: u64) -> (u16, Value) {
        let answer = self
            .cluster
            .client()
            .call(
                Method::GET,
                self.cluster.node(id).admin,
                "/healthz/gslb",
                &[],
                None,
                CALL,
            )
            .await
            .unwrap_or_else(|e| panic!("node {id}'s /healthz/gslb: {e}"));
        (answer.status, answer.json())
    }

    /// A proxied GET through node `id`, from inside its namespace.
    async fn proxied(&self, id: u64, path: &str) -> u16 {
        self.cluster
            .client()
            .call(
                Method::GET,
                self.cluster.node(id).proxy,
                path,
                &[],
                None,
                Duration::from_secs(12),
            )
            .await
            .unwrap_or_else(|e| panic!("GET {path} through node {id}: {e}"))
            .status
    }

    /// `GET /v1/health/regions` on node `id`.
    async fn view(&self, id: u64) -> Value {
        let (_, view) = self
            .cluster
            .client()
            .get_json(self.cluster.node(id).admin, "/v1/health/regions", CALL)
            .await
            .unwrap_or_else(|e| panic!("node {id}'s region view: {e}"));
        view
    }

    /// Whether node `id` has heard every other region from its nodes.
    async fn hears_everyone(&self, id: u64) -> bool {
        let view = self.view(id).await;
        (1..=NODES).all(|region| {
            let state = &view["regions"][REGIONS[(region - 1) as usize]];
            let source = if region == id { "local" } else { "peer" };
            state["healthy"] == true && state["source"] == source
        })
    }
}

/// The three-region cluster of these tests, one namespace per region, with
/// state and logs in a fresh temporary directory (dropped after the
/// cluster); the nodes' logs are shown if it fails. `None`, with the reason
/// printed, where namespaces cannot be made (not root, no iproute2).
async fn in_namespaces() -> Option<(tempfile::TempDir, Cluster)> {
    if let Some(reason) = Net::unavailable() {
        eprintln!("skipped: {reason}");
        return None;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cluster = start(dir.path()).await;
    Some((dir, cluster))
}

async fn start(dir: &std::path::Path) -> Cluster {
    let wrap = Wrap {
        network: Network::Namespaces,
        node_toml: (1..=NODES).map(|id| (id, node_toml(id))).collect(),
        ..Wrap::default()
    };
    match Cluster::start(&meridian(), dir, NODES, 1, &wrap).await {
        Ok(cluster) => cluster,
        Err(error) => {
            let logs: String = (1..=NODES)
                .map(|n| {
                    let log = dir.join(format!("node{n}.log"));
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    format!("--- node {n}\n{text}")
                })
                .collect();
            panic!("the cluster did not start: {error:#}\n{logs}");
        }
    }
}

fn everyone() -> Vec<IpAddr> {
    (1..=NODES)
        .map(|id| IpAddr::V4(netns::address(id)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_at_the_hub_leaves_dns_and_drains_then_returns() {
    let Some((_dir, mut cluster)) = in_namespaces().await else {
        return;
    };
    assert!(cluster.net().is_some(), "namespaces");
    let probes = Probes::new(&cluster);

    // Before: every node has heard every region from its node (not only
    // the static addresses), answers with all three, and serves.
    for id in 1..=NODES {
        let heard = eventually(|| probes.hears_everyone(id)).await;
        assert!(heard, "node {id}: {}", probes.view(id).await);
        assert_eq!(probes.answers(id).await, everyone(), "node {id}");
        assert_eq!(probes.gslb(id).await.0, 200, "node {id}");
    }
    assert_eq!(probes.proxied(1, "/echo/before").await, 200);
    // A gateway configuration of the test's own reaches every region.
    drop(probes);
    let config = cluster::gateway(
        &cluster.backend_addrs(),
        Some(cluster.jwks().addr()),
        Some("regions"),
    );
    cluster
        .commit_gateway(&config)
        .await
        .expect("the gateway configuration is committed");
    let probes = Probes::new(&cluster);
    for id in 1..=NODES {
        assert_eq!(probes.proxied(id, "/chaos/regions").await, 200, "node {id}");
    }

    // Cut region 3 at the hub. Poll the others' responders and every
    // node's /healthz/gslb until region 3 is out of both answers and
    // node 3 drains.
    let cut_ip = IpAddr::V4(netns::address(CUT));
    let remaining: Vec<IpAddr> = everyone().into_iter().filter(|ip| *ip != cut_ip).collect();
    cluster.partition(CUT, Cut::Both).expect("the cut");
    let cut_at = Instant::now();
    let mut left_dns: [Option<Duration>; 2] = [None, None];
    let mut drained: Option<(Duration, Value)> = None;
    while (left_dns.iter().any(Option::is_none) || drained.is_none()) && cut_at.elapsed() < WAIT {
        for (slot, id) in left_dns.iter_mut().zip([1, 2]) {
            if slot.is_none() && probes.answers(id).await == remaining {
                *slot = Some(cut_at.elapsed());
            }
        }
        if drained.is_none() {
            let (status, body) = probes.gslb(CUT).await;
            if status == 503 {
                drained = Some((cut_at.elapsed(), body));
            }
        }
        for id in [1, 2] {
            let (status, body) = probes.gslb(id).await;
            assert_eq!(
                status, 200,
                "node {id} stays in service during the cut: {body}"
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let [Some(left_1), Some(left_2)] = left_dns else {
        panic!(
            "10.77.0.{CUT} still in the answers {WAIT:?} after the cut: node 1 {:?}, node 2 {:?}",
            probes.answers(1).await,
            probes.answers(2).await
        );
    };
    let Some((drained_after, reason)) = drained else {
        panic!(
            "node {CUT}'s /healthz/gslb still {:?} {WAIT:?} after the cut",
            probes.gslb(CUT).await
        );
    };
    assert_eq!(reason["status"], "drain", "{reason}");
    assert!(
        reason["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "503 with a reason: {reason}"
    );
    // The majority's data plane serves, and so does the cut-off region's
    // (its own backend is in reach), each asked from inside its region.
    for attempt in 0..3 {
        let path = format!("/echo/during-cut-{attempt}");
        assert_eq!(probes.proxied(1, &path).await, 200, "{path} through node 1");
    }
    assert_eq!(probes.proxied(CUT, "/echo/inside-the-cut").await, 200);

    // Heal: region 3's address returns to every answer and node 3 serves.
    cluster.heal(CUT).expect("the heal");
    let healed_at = Instant::now();
    let mut back_dns: [Option<Duration>; 2] = [None, None];
    let mut serving: Option<Duration> = None;
    while (back_dns.iter().any(Option::is_none) || serving.is_none()) && healed_at.elapsed() < WAIT
    {
        for (slot, id) in back_dns.iter_mut().zip([1, 2]) {
            if slot.is_none() && probes.answers(id).await == everyone() {
                *slot = Some(healed_at.elapsed());
            }
        }
        if serving.is_none() && probes.gslb(CUT).await.0 == 200 {
            serving = Some(healed_at.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
    let [Some(back_1), Some(back_2)] = back_dns else {
        panic!(
            "10.77.0.{CUT} not back in the answers {WAIT:?} after the heal: node 1 {:?}, node 2 {:?}",
            probes.answers(1).await,
            probes.answers(2).await
        );
    };
    let Some(serving) = serving else {
        panic!(
            "node {CUT}'s /healthz/gslb still {:?} {WAIT:?} after the heal",
            probes.gslb(CUT).await
        );
    };
    let back_everywhere = eventually(|| async {
        let mut all = true;
        for id in 1..=NODES {
            all &= probes.answers(id).await == everyone();
        }
        all
    })
    .await;
    assert!(
        back_everywhere,
        "every responder answers with every region again"
    );
    assert_eq!(probes.proxied(CUT, "/echo/after").await, 200);

    eprintln!(
        "region cut across namespaces (link down at the hub): out of node 1's DNS after {left_1:?}, \
         node 2's after {left_2:?}; node {CUT}'s /healthz/gslb 503 after {drained_after:?} ({}); \
         healed: back in node 1's DNS after {back_1:?}, node 2's after {back_2:?}, \
         node {CUT}'s /healthz/gslb 200 after {serving:?}",
        reason["reason"].as_str().unwrap_or_default()
    );
    drop(probes);
    cluster.shutdown().await;
}

/// The run's gateway configuration (whose `echo` upstream is region-local
/// with fallback over the regions in order) with the regions' backends
/// checked every 200 ms and traffic back after `return_after`.
fn fallback_gateway(cluster: &Cluster, return_after: Duration) -> Value {
    let mut config = cluster::gateway(
        &cluster.backend_addrs(),
        Some(cluster.jwks().addr()),
        Some("fallback"),
    );
    let echo = &mut config["upstreams"]["echo"];
    echo["health"] = serde_json::json!({
        "path": "/health", "interval": "200ms", "timeout": "100ms",
        "healthy_threshold": 1, "unhealthy_threshold": 1,
    });
    echo["fallback"]["return_after"] = format!("{}ms", return_after.as_millis()).into();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_whose_backends_die_is_served_by_the_next_region() {
    let Some((_dir, mut cluster)) = in_namespaces().await else {
        return;
    };
    let return_after = Duration::from_secs(1);
    cluster
        .commit_gateway(&fallback_gateway(&cluster, return_after))
        .await
        .expect("the gateway configuration is committed");
    let client = cluster.client();
    let proxy = cluster.node(1).proxy;
    // `(status, serving region)` of one GET through node 1, asked from
    // inside region 1.
    let call = |path: String| {
        let client = client.clone();
        async move {
            let answer = client
                .call(Method::GET, proxy, &path, &[], None, CALL)
                .await
                .unwrap_or_else(|e| panic!("GET {path} through node 1: {e}"));
            let region = answer
                .headers
                .get("x-meridian-region")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (answer.status, region)
        }
    };
    let probes = Probes::new(&cluster);
    // Every node hears every region, with the echo upstream available.
    for id in 1..=NODES {
        let heard = eventually(|| async {
            let view = probes.view(id).await;
            probes.hears_everyone(id).await
                && (1..=NODES).all(|other| {
                    let region = &view["regions"][REGIONS[(other - 1) as usize]];
                    region["nodes"][other.to_string()]["upstreams"]["echo"]["available"] == 1
                })
        })
        .await;
        assert!(heard, "node {id}: {}", probes.view(id).await);
    }
    assert_eq!(
        call("/echo/before".into()).await,
        (200, REGIONS[0].to_owned())
    );

    // Region 1's backend dies: requests through node 1 go to region 2 at
    // once (the refused connection falls back within the request), and
    // region 1 leaves DNS/GSLB once its check fails.
    cluster.backend(1).set(backend::Mode::Down);
    let died = Instant::now();
    let mut first_away = None;
    let mut errors = 0;
    let mut drained = None;
    let mut n = 0;
    while died.elapsed() < Duration::from_secs(3) {
        let (status, region) = call(format!("/echo/away-{n}")).await;
        n += 1;
        if status != 200 {
            errors += 1;
        } else if region == REGIONS[1] {
            first_away.get_or_insert_with(|| died.elapsed());
        } else {
            panic!("served by {region:?} after region 1's backend died");
        }
        if drained.is_none() && probes.gslb(1).await.0 == 503 {
            drained = Some(died.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
    let first_away = first_away.expect("served by region 2");
    let drained = drained.expect("region 1's /healthz/gslb turned 503");
    assert_eq!(
        errors, 0,
        "no request failed while region 1 fell back ({n} sent)"
    );

    // The backend returns: traffic comes home once it has been healthy
    // for `return_after`, not before.
    cluster.backend(1).set(backend::Mode::Up);
    let back = Instant::now();
    let mut home = None;
    while back.elapsed() < WAIT {
        let (status, region) = call(format!("/echo/back-{n}")).await;
        n += 1;
        assert_eq!(status, 200);
        if region == REGIONS[0] {
            home = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let home = home.expect("traffic came back to region 1");
    assert!(home >= return_after, "back after {home:?}");
    eprintln!(
        "fallback across namespaces: region 1's backend down -> first request through node 1 \
         served by region 2 after {first_away:?}, {errors} errors in {n} requests, node 1's \
         /healthz/gslb 503 after {drained:?}; backend back -> served by region 1 again after \
         {home:?} (return_after {return_after:?})"
    );
    drop(probes);
    cluster.shutdown().await;
}

/// Polls `check` every [`POLL`] until it holds, for at most [`WAIT`].
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
