//! DNS: upstream discovery (A/AAAA and SRV against a test DNS server whose
//! answers change), the authoritative responder (asked with a real
//! resolver), `/healthz/gslb`, the anycast hooks, and drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use node::config::RawConfig;

use crate::dns::{TestDns, resolver};
use crate::upstream::{echo_json, json};
use crate::{MockUpstream, TestNode, eventually, get, send};

/// The sum of every series of metric `name`.
fn metric_sum(node: &TestNode, name: &str) -> f64 {
    node.gateway
        .metrics()
        .render()
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn use_dns(raw: &mut RawConfig, dns: &TestDns) {
    raw.resolver.servers = vec![dns.addr.to_string()];
    raw.resolver.min_refresh = Duration::from_millis(100);
    raw.resolver.max_refresh = Duration::from_secs(2);
    raw.resolver.timeout = Some(Duration::from_millis(500));
    raw.resolver.attempts = Some(1);
}

async fn served_by(node: &TestNode) -> Option<String> {
    let reply = get(&node.url("/")).await;
    (reply.status == StatusCode::OK)
        .then(|| reply.json()["upstream"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn srv_discovery_follows_changing_answers_and_keeps_the_last_known_good() {
    let one = MockUpstream::echo("one").await;
    let two = MockUpstream::echo("two").await;
    let mut dns = TestDns::start().await;
    dns.set_ips("a.svc.test", &["127.0.0.1"], 1);
    let port = |m: &MockUpstream| {
        m.target()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap()
    };
    dns.set_srv(
        "_http._tcp.svc.test",
        &[(10, 5, port(&one), "a.svc.test")],
        1,
    );
    let yaml = "upstreams:\n  u: { targets: [\"srv:_http._tcp.svc.test\"] }\nroutes:\n  - { name: r, upstream: u }\n";
    let node = TestNode::start_with(yaml, |raw| use_dns(raw, &dns)).await;

    assert!(
        eventually(Duration::from_secs(5), || async {
            served_by(&node).await.as_deref() == Some("one")
        })
        .await,
        "the SRV record's target serves"
    );
    assert_eq!(
        one.last().headers["host"],
        format!("a.svc.test:{}", port(&one)),
        "Host is the SRV target and port"
    );

    // The answer changes: the pool follows within the TTL (1 s), and a
    // lower-priority record is not used while the best one resolves.
    dns.set_srv(
        "_http._tcp.svc.test",
        &[
            (10, 5, port(&two), "a.svc.test"),
            (20, 5, port(&one), "a.svc.test"),
        ],
        1,
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            served_by(&node).await.as_deref() == Some("two")
        })
        .await,
        "the pool follows the new answer"
    );
    for _ in 0..10 {
        assert_eq!(served_by(&node).await.as_deref(), Some("two"));
    }
    assert_eq!(
        node.metric("meridian_upstream_targets{upstream=\"u\"}"),
        1.0
    );

    // DNS goes away: the last known good addresses keep serving, and the
    // failures are counted.
    let asked = dns.queries("_http._tcp.svc.test", hickory_proto::rr::RecordType::SRV);
    assert!(asked >= 2, "asked again after the TTL ({asked})");
    dns.stop().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric_sum(&node, "meridian_dns_resolve_errors_total") >= 2.0
        })
        .await,
        "failed lookups are counted"
    );
    for _ in 0..10 {
        assert_eq!(served_by(&node).await.as_deref(), Some("two"));
    }
    node.stop().await;
}

#[tokio::test]
async fn a_records_resolve_in_the_background_and_keep_the_host() {
    let upstream = MockUpstream::echo("named").await;
    let port = upstream.target().rsplit(':').next().unwrap().to_owned();
    let dns = TestDns::start().await;
    dns.set_ips("users.svc.test", &["127.0.0.1"], 1);
    let yaml = format!(
        "upstreams:\n  u: {{ targets: [\"users.svc.test:{port}\"] }}\nroutes:\n  - {{ name: r, upstream: u }}\n"
    );
    let node = TestNode::start_with(&yaml, |raw| use_dns(raw, &dns)).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            served_by(&node).await.is_some()
        })
        .await
    );
    assert_eq!(
        upstream.last().headers["host"],
        format!("users.svc.test:{port}")
    );
    // A name that never resolved gives no target: a fast 503, not a wait.
    dns.set_ips("users.svc.test", &[], 1);
    let yaml = format!(
        "upstreams:\n  u: {{ targets: [\"users.svc.test:{port}\"] }}\n  v: {{ targets: [\"nowhere.svc.test:80\"] }}\nroutes:\n  - {{ name: r, upstream: u }}\n  - {{ name: v, upstream: v, match: {{ path_prefix: /v }} }}\n"
    );
    assert_eq!(node.apply(&yaml).await.status, 200);
    let reply = get(&node.url("/v")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    // The unchanged upstream kept its pool and its last known address.
    assert!(served_by(&node).await.is_some());
    node.stop().await;
}

/// A node in region `local` whose upstream `u` has a health check the test
/// switches, with `[regions]` addresses and the DNS responder.
async fn gslb_node(
    healthy: Arc<AtomicBool>,
    tweak: impl FnOnce(&mut RawConfig),
) -> (TestNode, MockUpstream) {
    let upstream = MockUpstream::start(move |seen| {
        let ok = healthy.load(Ordering::SeqCst);
        async move {
            if seen.uri == "/health" && !ok {
                json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({}))
            } else {
                json(StatusCode::OK, echo_json("u", &seen))
            }
        }
    })
    .await;
    let yaml = format!(
        "upstreams:\n  u: {{ targets: [\"{}\"], health: {{ path: /health, interval: 50ms, timeout: 50ms, healthy_threshold: 1, unhealthy_threshold: 1 }} }}\nroutes:\n  - {{ name: r, upstream: u }}\n",
        upstream.target()
    );
    let node = TestNode::start_with(&yaml, |raw| {
        raw.gslb.critical_upstreams = vec!["u".into()];
        raw.gslb.interval = Duration::from_millis(50);
        raw.regions.insert(
            "local".into(),
            node::regions::RawRegion {
                addresses: vec!["192.0.2.1".into(), "2001:db8::1".into()],
            },
        );
        raw.regions.insert(
            "us-east".into(),
            node::regions::RawRegion {
                addresses: vec!["192.0.2.2".into()],
            },
        );
        raw.dns.listen = "127.0.0.1:0".into();
        raw.dns.zone = Some("gw.test".into());
        raw.dns.ttl = Duration::from_secs(2);
        raw.dns.names.insert("api".into(), Vec::new());
        raw.dns
            .names
            .insert("local.api".into(), vec!["local".into()]);
        raw.dns.region_preference = vec!["local".into(), "us-east".into()];
        tweak(raw);
    })
    .await;
    (node, upstream)
}

async fn a_records(resolver: &hickory_resolver::TokioResolver, name: &str) -> Vec<String> {
    match resolver.lookup_ip(name).await {
        Ok(lookup) => lookup
            .iter()
            .filter(|ip| ip.is_ipv4())
            .map(|ip| ip.to_string())
            .collect(),
        Err(error) if error.is_no_records_found() && !error.is_nx_domain() => Vec::new(),
        Err(error) => panic!("{name}: {error}"),
    }
}

#[tokio::test]
async fn the_dns_responder_answers_with_healthy_regions_only() {
    let healthy = Arc::new(AtomicBool::new(true));
    let (node, _upstream) = gslb_node(healthy.clone(), |_| {}).await;
    let resolver = resolver(node.dns.expect("the responder listens"));

    assert!(
        eventually(Duration::from_secs(5), || async {
            a_records(&resolver, "api.gw.test.").await == ["192.0.2.1", "192.0.2.2"]
        })
        .await,
        "both regions, the preferred first"
    );
    let lookup = resolver.ipv4_lookup("api.gw.test.").await.unwrap();
    assert!(
        lookup.answers().iter().all(|r| r.ttl == 2),
        "the configured TTL"
    );
    let v6 = resolver.ipv6_lookup("api.gw.test.").await.unwrap();
    assert_eq!(v6.answers().len(), 1);
    let gslb = get(&node.admin_url("/healthz/gslb")).await;
    assert_eq!(gslb.status, StatusCode::OK);
    assert_eq!(gslb.json()["status"], "serve");

    // The critical upstream fails its health check: this region drains.
    healthy.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            a_records(&resolver, "api.gw.test.").await == ["192.0.2.2"]
        })
        .await,
        "only the healthy region is answered"
    );
    assert_eq!(
        a_records(&resolver, "local.api.gw.test.").await,
        Vec::<String>::new()
    );
    let gslb = get(&node.admin_url("/healthz/gslb")).await;
    assert_eq!(gslb.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(gslb.json()["status"], "drain");
    assert_eq!(gslb.json()["reason"], "upstream u has no available target");
    let regions = get(&node.admin_url("/v1/health/regions")).await.json();
    assert_eq!(regions["regions"]["local"]["healthy"], false);
    assert_eq!(regions["regions"]["us-east"]["healthy"], true);
    assert_eq!(regions["regions"]["us-east"]["source"], "static");

    // Recovery.
    healthy.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            a_records(&resolver, "local.api.gw.test.").await == ["192.0.2.1"]
        })
        .await
    );

    // Unknown names in the zone: NXDOMAIN; outside it: refused.
    let error = resolver.lookup_ip("www.gw.test.").await.unwrap_err();
    assert!(error.is_nx_domain(), "{error}");
    let error = resolver.lookup_ip("example.org.").await.unwrap_err();
    assert!(!error.is_no_records_found(), "{error}");
    assert!(format!("{error:?}").contains("Refused"), "{error:?}");
    let soa = resolver.soa_lookup("gw.test.").await.unwrap();
    assert_eq!(soa.answers().len(), 1);
    assert!(metric_sum(&node, "meridian_dns_queries_total") >= 5.0);
    node.stop().await;
}

fn hook_script(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let log = dir.join("calls.log");
    let script = dir.join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$MERIDIAN_ANYCAST_ACTION $(date +%s%N) $MERIDIAN_REGION $MERIDIAN_REASON\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script.display().to_string(), log)
}

/// `(action, unix ns, reason)` per recorded call.
fn calls(log: &std::path::Path) -> Vec<(String, u128, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let action = parts.next().unwrap_or("").to_owned();
            let at = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
            let _region = parts.next();
            (action, at, parts.next().unwrap_or("").to_owned())
        })
        .collect()
}

fn actions(log: &std::path::Path) -> Vec<String> {
    calls(log).into_iter().map(|(a, _, _)| a).collect()
}

#[tokio::test]
async fn anycast_hooks_follow_health_with_hysteresis_and_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (script, log) = hook_script(dir.path());
    let healthy = Arc::new(AtomicBool::new(true));
    let hold = Duration::from_millis(1500);
    let (node, _upstream) = gslb_node(healthy.clone(), |raw| {
        raw.anycast.announce = vec![script.clone()];
        raw.anycast.withdraw = vec![script.clone()];
        raw.anycast.rise = 3;
        raw.anycast.fall = 2;
        raw.anycast.hold = hold;
        raw.anycast.check_interval = Duration::from_millis(50);
    })
    .await;

    assert!(
        eventually(Duration::from_secs(5), || async {
            actions(&log) == ["announce"]
        })
        .await,
        "{:?}",
        calls(&log)
    );
    // The gauge moves once the hook has exited, just after it logged.
    assert!(
        eventually(Duration::from_secs(5), || async {
            node.metric("meridian_anycast_announced") == 1.0
        })
        .await
    );
    // Unhealthy right away: the withdraw waits for the hold time.
    healthy.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(6), || async {
            actions(&log) == ["announce", "withdraw"]
        })
        .await,
        "{:?}",
        calls(&log)
    );
    let recorded = calls(&log);
    let held = Duration::from_nanos((recorded[1].1 - recorded[0].1) as u64);
    assert!(
        held >= hold,
        "withdrew after {held:?}, before the hold time"
    );
    assert_eq!(recorded[1].2, "upstream u has no available target");
    // Healthy again: announced again, once, after the hold time.
    healthy.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(6), || async {
            actions(&log) == ["announce", "withdraw", "announce"]
        })
        .await,
        "{:?}",
        calls(&log)
    );
    let recorded = calls(&log);
    assert!(Duration::from_nanos((recorded[2].1 - recorded[1].1) as u64) >= hold);
    // Counted once the hook has exited, just after it logged.
    assert!(
        eventually(Duration::from_secs(5), || async {
            node.metric("meridian_anycast_commands_total{action=\"announce\",result=\"ok\"}") >= 2.0
        })
        .await
    );

    // Shutdown withdraws at once, whatever the hold time.
    node.stop().await;
    let recorded = calls(&log);
    assert_eq!(
        recorded.last().map(|c| c.0.as_str()),
        Some("withdraw"),
        "{recorded:?}"
    );
    assert_eq!(recorded.last().map(|c| c.2.as_str()), Some("draining"));
}

#[tokio::test]
async fn drain_reports_unhealthy_first_finishes_in_flight_requests_then_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (script, log) = hook_script(dir.path());
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let upstream = MockUpstream::start(move |seen| {
        let gate = gate.clone();
        async move {
            if seen.uri == "/slow" {
                gate.notified().await;
            }
            json(StatusCode::OK, echo_json("u", &seen))
        }
    })
    .await;
    let yaml = format!(
        "upstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: r, upstream: u }}\n",
        upstream.target()
    );
    let node = TestNode::start_with(&yaml, |raw| {
        raw.anycast.announce = vec![script.clone()];
        raw.anycast.withdraw = vec![script.clone()];
        raw.anycast.rise = 1;
        raw.anycast.hold = Duration::from_secs(60);
        raw.anycast.check_interval = Duration::from_millis(50);
        raw.shutdown.drain_delay = Duration::from_millis(500);
    })
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            actions(&log) == ["announce"]
        })
        .await
    );
    assert_eq!(
        get(&node.admin_url("/healthz/gslb")).await.status,
        StatusCode::OK
    );

    let slow = tokio::spawn(get_owned(node.url("/slow")));
    assert!(eventually(Duration::from_secs(5), || async { upstream.count() >= 1 }).await);

    let drain = send(
        Request::post(node.admin_url("/v1/node/drain"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(drain.status, StatusCode::ACCEPTED);
    // At once: GSLB and readiness report it, and anycast withdraws despite
    // the 60 s hold time.
    let gslb = get(&node.admin_url("/healthz/gslb")).await;
    assert_eq!(gslb.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(gslb.json()["reason"], "draining");
    assert_eq!(
        get(&node.admin_url("/readyz")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            actions(&log) == ["announce", "withdraw"]
        })
        .await,
        "{:?}",
        calls(&log)
    );
    // The in-flight request finishes, then the node leaves by itself.
    assert!(!node.is_stopped());
    release.notify_one();
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(10), || async { node.is_stopped() }).await,
        "the node stops after the drain"
    );
    assert_eq!(actions(&log), ["announce", "withdraw"], "withdrawn once");
    node.stop().await;
}

async fn get_owned(url: String) -> crate::Reply {
    get(&url).await
}
