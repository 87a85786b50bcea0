//! Upstream pools: balancing, health checks, ejection and retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::client::{get_with, send};
use crate::upstream::json;
use crate::{MockUpstream, TestNode, eventually, get};

async fn echoes(n: usize) -> Vec<MockUpstream> {
    let mut upstreams = Vec::new();
    for i in 0..n {
        upstreams.push(MockUpstream::echo(&format!("t{i}")).await);
    }
    upstreams
}

fn pool_yaml(targets: &[String], extra: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "upstreams:\n  u: {{ targets: [{}]{extra} }}\nroutes:\n  - {{ name: r, upstream: u }}\n",
        targets.join(", ")
    )
}

fn targets(upstreams: &[MockUpstream]) -> Vec<String> {
    upstreams.iter().map(MockUpstream::target).collect()
}

async fn tally(node: &TestNode, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let reply = get_with(&node.url("/"), headers).await;
        assert_eq!(reply.status, 200);
        *counts
            .entry(reply.json()["upstream"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let upstreams = echoes(3).await;
    let node = TestNode::start(&pool_yaml(&targets(&upstreams), "")).await;
    let counts = tally(&node, 30, &[]).await;
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{counts:?}"
    );
}

#[tokio::test]
async fn least_request_avoids_the_busy_target() {
    let slow = MockUpstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        json(StatusCode::OK, serde_json::json!({"upstream": "slow"}))
    })
    .await;
    let fast = MockUpstream::echo("fast").await;
    let node = TestNode::start(&pool_yaml(
        &[slow.target(), fast.target()],
        ", balance: least_request",
    ))
    .await;
    // Keep the slow target busy, then see where new requests go.
    let url = node.url("/");
    let background: Vec<_> = (0..4)
        .map(|_| tokio::spawn(get_with_owned(url.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counts = tally(&node, 20, &[]).await;
    assert_eq!(counts.get("fast"), Some(&20), "{counts:?}");
    for task in background {
        task.await.unwrap();
    }
}

async fn get_with_owned(url: String) {
    let _ = get(&url).await;
}

#[tokio::test]
async fn consistent_hash_by_header_cookie_and_ip() {
    let upstreams = echoes(4).await;
    for key in ["{ header: x-user }", "{ cookie: session }", "client_ip"] {
        let node = TestNode::start(&pool_yaml(
            &targets(&upstreams),
            &format!(", balance: {{ consistent_hash: {key} }}"),
        ))
        .await;
        let mut owners = HashMap::new();
        for user in 0..40 {
            let header = format!("user-{user}");
            let cookie = format!("theme=dark; session=s{user}");
            let headers: Vec<(&str, &str)> = match key {
                "{ header: x-user }" => vec![("x-user", header.as_str())],
                "{ cookie: session }" => vec![("cookie", cookie.as_str())],
                _ => vec![],
            };
            let counts = tally(&node, 3, &headers).await;
            assert_eq!(counts.len(), 1, "{key}: one key, one target: {counts:?}");
            owners.insert(user, counts.into_keys().next().unwrap());
        }
        let distinct: std::collections::HashSet<_> = owners.values().collect();
        if key == "client_ip" {
            assert_eq!(distinct.len(), 1, "one client IP, one target");
        } else {
            assert!(
                distinct.len() >= 3,
                "{key}: keys spread over the targets: {owners:?}"
            );
        }
        node.stop().await;
    }
}

#[tokio::test]
async fn active_health_checks_remove_and_restore_targets() {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let flaky = MockUpstream::start(move |seen| {
        let flag = flag.clone();
        async move {
            let ok = flag.load(Ordering::SeqCst);
            if seen.uri == "/health" && !ok {
                return json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({}));
            }
            json(StatusCode::OK, serde_json::json!({"upstream": "flaky"}))
        }
    })
    .await;
    let steady = MockUpstream::echo("steady").await;
    let node = TestNode::start(&pool_yaml(
        &[flaky.target(), steady.target()],
        ", health: { path: /health, interval: 100ms, timeout: 100ms, healthy_threshold: 2, unhealthy_threshold: 2 }",
    ))
    .await;
    assert_eq!(tally(&node, 10, &[]).await.len(), 2);
    healthy.store(false, Ordering::SeqCst);
    let metrics = node.admin_url("/metrics");
    assert!(
        eventually(Duration::from_secs(5), || async {
            let text = String::from_utf8_lossy(&get(&metrics).await.body).into_owned();
            text.contains(&format!(
                "meridian_upstream_target_healthy{{upstream=\"u\",target=\"{}\"}} 0",
                flaky.target()
            ))
        })
        .await
    );
    assert_eq!(tally(&node, 10, &[]).await.get("steady"), Some(&10));
    healthy.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            tally(&node, 4, &[]).await.contains_key("flaky")
        })
        .await
    );
}

#[tokio::test]
async fn passive_ejection_after_consecutive_failures() {
    let failing = MockUpstream::start(|_| async {
        json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"upstream": "failing"}),
        )
    })
    .await;
    let good = MockUpstream::echo("good").await;
    let node = TestNode::start(&pool_yaml(
        &[failing.target(), good.target()],
        ", outlier: { consecutive_failures: 3, base_ejection: 30s }",
    ))
    .await;
    let mut failures = 0;
    for _ in 0..20 {
        if get(&node.url("/")).await.status == 500 {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 3,
        "the target is ejected after three 5xx in a row"
    );
    assert_eq!(failing.count(), 3);
    let text = String::from_utf8_lossy(&get(&node.admin_url("/metrics")).await.body).into_owned();
    assert!(
        text.contains(&format!(
            "meridian_upstream_ejections_total{{upstream=\"u\",target=\"{}\"}} 1",
            failing.target()
        )),
        "{text}"
    );
}

/// An address nothing listens on.
fn dead_target() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    address.to_string()
}

#[tokio::test]
async fn idempotent_requests_are_retried_on_another_target() {
    let good = MockUpstream::echo("good").await;
    let node = TestNode::start(&pool_yaml(
        &[dead_target(), good.target()],
        ", outlier: { consecutive_failures: 0 }, retries: { attempts: 1, min_per_second: 100 }",
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(get(&node.url("/")).await.status, 200, "GET is retried");
    }
    let mut posts = HashMap::new();
    for _ in 0..10 {
        let reply = send(
            Request::post(node.url("/"))
                .body(Full::new(Bytes::from_static(b"x")))
                .unwrap(),
        )
        .await;
        *posts.entry(reply.status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(
        posts,
        HashMap::from([(200, 5), (502, 5)]),
        "POST is never retried"
    );
    let put_body = send(
        Request::put(node.url("/"))
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap(),
    )
    .await;
    assert_eq!(
        put_body.status, 200,
        "a body that was not streamed yet can be resent"
    );
    let text = String::from_utf8_lossy(&get(&node.admin_url("/metrics")).await.body).into_owned();
    assert!(
        text.contains("meridian_upstream_retries_total{upstream=\"u\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn the_retry_budget_caps_retries() {
    let node = TestNode::start(&pool_yaml(
        &[dead_target(), dead_target()],
        ", outlier: { consecutive_failures: 0 }, retries: { attempts: 3, budget_percent: 0, min_per_second: 2 }",
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(get(&node.url("/")).await.status, 502);
    }
    let text = String::from_utf8_lossy(&get(&node.admin_url("/metrics")).await.body).into_owned();
    let value = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        value("meridian_upstream_retries_total{upstream=\"u\"}") <= 4,
        "{text}"
    );
    assert!(
        value("meridian_upstream_retry_budget_exhausted_total{upstream=\"u\"}") >= 1,
        "{text}"
    );
}

#[tokio::test]
async fn no_healthy_target_is_a_fast_503() {
    let down = MockUpstream::start(|seen| async move {
        if seen.uri == "/health" {
            json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({}))
        } else {
            json(StatusCode::OK, serde_json::json!({}))
        }
    })
    .await;
    let node = TestNode::start(&pool_yaml(
        &[down.target()],
        ", health: { path: /health, interval: 50ms, timeout: 50ms, unhealthy_threshold: 1 }",
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&node.url("/")).await.status == 503
        })
        .await
    );
    let reply = get(&node.url("/")).await;
    assert_eq!(reply.error_code(), "no_healthy_upstream");
    assert_eq!(reply.header("retry-after"), "1");
}
