//! Opaque tokens checked with an RFC 7662 introspection server started by
//! the test: active, inactive, endpoint errors, cache hits and one shared
//! call for concurrent requests.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::cases::jwt::{counter, metrics};
use crate::client::get_with;
use crate::idp::{Introspector, now};
use crate::{MockUpstream, Reply, TestNode};

fn yaml(upstream: &MockUpstream, endpoint: &Introspector) -> String {
    format!(
        r#"
upstreams:
  u: {{ targets: ["{}"] }}
auth:
  introspection:
    - {{ name: opaque, endpoint: "{}", client_id: gateway, client_secret: "s3cr3t&=", ttl: 30s, negative_ttl: 5s, timeout: 1s }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, auth: [introspection], upstream: u }}
  - {{ name: write, match: {{ path_prefix: /write }}, auth: [introspection], scopes: [write], upstream: u }}
"#,
        upstream.target(),
        endpoint.uri()
    )
}

/// Active for `good-*` tokens (with `exp` in an hour), `short` expires in
/// 2 s, `boom` makes the server fail, anything else is inactive.
fn answers() -> crate::idp::Answer {
    let short_exp = now() + 2;
    Arc::new(move |token: &str| {
        let now = now();
        match token {
            "boom" => None,
            "short" => Some(json!({"active": true, "sub": "s", "exp": short_exp, "scope": "read"})),
            t if t.starts_with("good") => Some(json!({
                "active": true, "sub": "svc-1", "client_id": "billing", "scope": "read",
                "exp": now + 3600, "iss": "https://idp.test/", "tenant": "t9",
            })),
            _ => Some(json!({"active": false})),
        }
    })
}

async fn bearer(node: &TestNode, path: &str, token: &str) -> Reply {
    get_with(
        &node.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

#[tokio::test]
async fn active_inactive_and_failing_answers() {
    let endpoint = Introspector::start(("gateway", "s3cr3t&="), Duration::ZERO, answers()).await;
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&yaml(&upstream, &endpoint)).await;

    let reply = bearer(&node, "/api/a", "good-1").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-auth-sub"], "svc-1");
    assert_eq!(seen.headers["x-auth-client-id"], "billing");
    assert_eq!(seen.headers["x-auth-scopes"], "read");
    assert_eq!(seen.headers["x-auth-tenant"], "t9");
    assert_eq!(seen.headers["x-auth-method"], "introspection");
    assert_eq!(
        endpoint
            .unauthorised
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "Basic client authentication"
    );
    // Cached: no second call.
    for _ in 0..3 {
        assert_eq!(bearer(&node, "/api/a", "good-1").await.status, 200);
    }
    assert_eq!(endpoint.calls(), 1);

    let forwarded = upstream.count();
    let inactive = bearer(&node, "/api/a", "revoked-token").await;
    assert_eq!(inactive.status, 401);
    assert_eq!(inactive.error_code(), "inactive_token");
    assert!(
        inactive
            .header("www-authenticate")
            .starts_with("Bearer realm=\"meridian\", error=\"invalid_token\"")
    );
    assert_eq!(bearer(&node, "/api/a", "revoked-token").await.status, 401);
    assert_eq!(endpoint.calls(), 2, "the inactive answer is cached too");

    let failing = bearer(&node, "/api/a", "boom").await;
    assert_eq!(failing.status, 503, "{:?}", failing.body);
    assert_eq!(failing.error_code(), "auth_unavailable");
    assert_eq!(failing.header("retry-after"), "5");
    let _ = bearer(&node, "/api/a", "boom").await;
    assert_eq!(endpoint.calls(), 4, "errors are not cached");

    let scoped = bearer(&node, "/write", "good-1").await;
    assert_eq!(scoped.status, 403);
    assert_eq!(scoped.error_code(), "insufficient_scope");
    assert_eq!(
        upstream.count(),
        forwarded,
        "refused requests never reach the backend"
    );

    let text = metrics(&node).await;
    assert_eq!(
        counter(
            &text,
            r#"meridian_auth_cache_total{cache="introspection:opaque",result="hit"}"#
        ),
        5
    );
    assert_eq!(
        counter(
            &text,
            r#"meridian_introspection_calls_total{endpoint="opaque",result="active"}"#
        ),
        1
    );
    assert_eq!(
        counter(
            &text,
            r#"meridian_introspection_calls_total{endpoint="opaque",result="inactive"}"#
        ),
        1
    );
    assert_eq!(
        counter(
            &text,
            r#"meridian_introspection_calls_total{endpoint="opaque",result="error"}"#
        ),
        2
    );
    assert_eq!(
        counter(
            &text,
            r#"meridian_auth_failures_total{reason="auth_unavailable"}"#
        ),
        2
    );
}

#[tokio::test]
async fn answers_are_never_used_past_the_token_exp() {
    let endpoint = Introspector::start(("gateway", "s3cr3t&="), Duration::ZERO, answers()).await;
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&yaml(&upstream, &endpoint)).await;
    assert_eq!(bearer(&node, "/api", "short").await.status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = bearer(&node, "/api", "short").await;
    assert_eq!(late.status, 401, "{:?}", late.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_token_share_one_call() {
    let endpoint = Introspector::start(
        ("gateway", "s3cr3t&="),
        Duration::from_millis(300),
        answers(),
    )
    .await;
    let upstream = MockUpstream::echo("u").await;
    let node = Arc::new(TestNode::start(&yaml(&upstream, &endpoint)).await);
    let mut requests = Vec::new();
    for _ in 0..20 {
        let node = node.clone();
        requests.push(tokio::spawn(async move {
            bearer(&node, "/api", "good-shared").await.status
        }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(
        endpoint.calls(),
        1,
        "20 concurrent requests, one introspection call"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_503_not_a_500() {
    let endpoint =
        Introspector::start(("gateway", "s3cr3t&="), Duration::from_secs(3), answers()).await;
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&yaml(&upstream, &endpoint)).await;
    // The endpoint answers after 3 s; the timeout is 1 s.
    let slow = bearer(&node, "/api", "good-slow").await;
    assert_eq!(slow.status, 503, "{:?}", slow.body);
    assert_eq!(slow.error_code(), "auth_unavailable");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn the_client_secret_is_never_read_back_and_survives_a_round_trip() {
    let endpoint = Introspector::start(("gateway", "s3cr3t&="), Duration::ZERO, answers()).await;
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&yaml(&upstream, &endpoint)).await;

    let read = crate::get(&node.admin_url("/v1/config")).await;
    assert_eq!(read.status, 200);
    let text = String::from_utf8_lossy(&read.body).into_owned();
    assert!(!text.contains("s3cr3t"), "{text}");
    let config = read.json()["config"].clone();
    assert_eq!(
        config["auth"]["introspection"][0]["client_secret"],
        "<redacted>"
    );
    let history = crate::get(&node.admin_url("/v1/config/versions/1")).await;
    assert!(!String::from_utf8_lossy(&history.body).contains("s3cr3t"));

    // Written back as read (with a new route), the secret stays in force.
    let mut edited = config;
    edited["routes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "more", "match": {"path_prefix": "/more"}, "upstream": "u"}));
    let applied = node.apply(&edited.to_string()).await;
    assert_eq!(applied.status, 200, "{:?}", applied.body);
    let reply = bearer(&node, "/api/b", "good-2").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        endpoint
            .unauthorised
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the gateway still authenticates with the real secret"
    );
    node.stop().await;
}

#[tokio::test]
async fn an_active_token_for_another_audience_is_refused() {
    let answers: crate::idp::Answer = Arc::new(move |token: &str| {
        let aud = match token {
            "ours" => json!("gateway-api"),
            "listed" => json!(["billing", "gateway-api"]),
            "none" => serde_json::Value::Null,
            _ => json!("billing"),
        };
        Some(json!({"active": true, "sub": "s", "exp": now() + 3600, "aud": aud}))
    });
    let endpoint = Introspector::start(("gateway", "s3cr3t&="), Duration::ZERO, answers).await;
    let upstream = MockUpstream::echo("u").await;
    let yaml = yaml(&upstream, &endpoint)
        .replace("timeout: 1s }", "timeout: 1s, audiences: [gateway-api] }");
    let node = TestNode::start(&yaml).await;
    for (token, status) in [
        ("ours", 200),
        ("listed", 200),
        ("theirs", 401),
        ("none", 401),
    ] {
        let reply = bearer(&node, "/api/x", token).await;
        assert_eq!(reply.status, status, "token {token}: {:?}", reply.body);
    }
    node.stop().await;
}
