//! Rate limits end to end: plans with a burst and a daily quota, the
//! headers, the leaky bucket's smooth output measured at the backend, a
//! full queue, a client leaving the queue, and the key cap under a flood.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::client::get_with;
use crate::upstream::json;
use crate::{MockUpstream, Reply, TestNode, eventually, send};

async fn create_key(node: &TestNode, consumer: &str) -> String {
    let created = send(
        http::Request::post(node.admin_url(&format!("/v1/consumers/{consumer}/keys")))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        created.status,
        200,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    created.json()["key"].as_str().expect("key").to_owned()
}

fn message(reply: &Reply) -> String {
    reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Seconds from now to the next 00:00 UTC.
fn seconds_to_midnight() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    86_400 - now % 86_400
}

#[tokio::test]
async fn a_plan_with_a_burst_and_a_daily_quota() {
    let upstream = MockUpstream::echo("u").await;
    // The quota is checked first, so a request the burst refuses after it
    // shows that the quota took its charge back.
    let yaml = format!(
        r#"
upstreams: {{ u: {{ targets: ["{}"] }} }}
plans:
  gold:
    limits:
      - {{ name: daily, algorithm: fixed_window, limit: 5, per: 1d }}
      - {{ name: burst, algorithm: token_bucket, rate: 1/s, burst: 3 }}
consumers:
  - {{ name: acme, plan: gold }}
  - {{ name: globex, plan: gold }}
rate_limit: {{ legacy_headers: true }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, auth: [api_key], upstream: u }}
"#,
        upstream.target()
    );
    let node = TestNode::start(&yaml).await;
    let acme = create_key(&node, "acme").await;
    let globex = create_key(&node, "globex").await;
    let call = |key: &str| {
        let url = node.url("/api/orders");
        let key = key.to_owned();
        async move { get_with(&url, &[("x-api-key", &key)]).await }
    };

    // The burst: three at once, the fourth refused by `burst`.
    for remaining in [4, 3, 2] {
        let reply = call(&acme).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("ratelimit-policy"),
            "\"daily\";q=5;w=86400, \"burst\";q=3;w=3"
        );
        assert!(
            reply
                .header("ratelimit")
                .starts_with(&format!("\"daily\";r={remaining};t=")),
            "{}",
            reply.header("ratelimit")
        );
    }
    let refused = call(&acme).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_code(), "rate_limited");
    assert_eq!(refused.header("content-type"), "application/json");
    assert_eq!(refused.header("retry-after"), "1");
    // The refused request was not charged to the daily quota: still 2 left.
    assert!(
        refused.header("ratelimit").starts_with("\"daily\";r=2;"),
        "{}",
        refused.header("ratelimit")
    );
    assert_eq!(refused.header("x-ratelimit-remaining"), "0");
    assert_eq!(refused.header("x-ratelimit-limit"), "3");

    // Another consumer on the same plan has its own counts.
    assert_eq!(call(&globex).await.status, 200);

    // The sustained rate: one more a second, until the quota is spent.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(call(&acme).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let spent = call(&acme).await;
    assert_eq!(spent.status, 429);
    let retry_after: u64 = spent.header("retry-after").parse().expect("seconds");
    let midnight = seconds_to_midnight();
    assert!(
        retry_after.abs_diff(midnight) <= 2,
        "the daily quota resets at 00:00 UTC: Retry-After {retry_after}, expected about {midnight}"
    );
    assert!(spent.header("ratelimit").starts_with("\"daily\";r=0;"));
    assert_eq!(spent.header("x-ratelimit-limit"), "5");
    assert_eq!(upstream.count(), 6, "five for acme, one for globex");

    let series = |outcome: &str| {
        node.metric(&format!(
            "meridian_ratelimit_decisions_total{{route=\"api\",limit=\"plan:gold/daily\",outcome=\"{outcome}\"}}"
        ))
    };
    // daily: 5 + 1 + 1 (refunded) allowed for acme and globex, 1 rejected.
    assert_eq!(series("allowed"), 7.0);
    assert_eq!(series("rejected"), 1.0);
    node.stop().await;
}

#[tokio::test]
async fn route_limits_key_by_header_and_ip_and_are_public_without_a_plan() {
    let upstream = MockUpstream::echo("u").await;
    let yaml = format!(
        r#"
upstreams: {{ u: {{ targets: ["{}"] }} }}
policies: {{ trusted_proxies: [127.0.0.0/8] }}
routes:
  - name: search
    match: {{ path_prefix: /search }}
    upstream: u
    limits:
      - {{ name: tenant, key: [{{ header: X-Tenant }}, ip], algorithm: sliding_window_counter, limit: 2, per: 1h }}
      - {{ name: exact, key: ip, algorithm: sliding_window_log, limit: 3, per: 1h }}
"#,
        upstream.target()
    );
    let node = TestNode::start(&yaml).await;
    let call = |tenant: &'static str, ip: &'static str| {
        let url = node.url("/search");
        async move { get_with(&url, &[("x-tenant", tenant), ("x-forwarded-for", ip)]).await }
    };
    assert_eq!(call("a", "203.0.113.1").await.status, 200);
    assert_eq!(call("a", "203.0.113.1").await.status, 200);
    let refused = call("a", "203.0.113.1").await;
    assert_eq!(refused.status, 429);
    assert!(message(&refused).contains("\"tenant\""));
    // Another tenant from the same address has its own `tenant` count, and
    // `exact` (by IP) has one request left: the refused one was not counted.
    assert_eq!(call("b", "203.0.113.1").await.status, 200);
    let exact = call("c", "203.0.113.1").await;
    assert_eq!(exact.status, 429);
    assert!(message(&exact).contains("\"exact\""));
    // IPv6 clients count by their /64.
    assert_eq!(call("a", "2001:db8:1:2::1").await.status, 200);
    assert_eq!(call("a", "2001:db8:1:2::99").await.status, 200);
    assert_eq!(call("a", "2001:db8:1:2::1234").await.status, 429);
    assert_eq!(call("a", "2001:db8:1:3::1").await.status, 200);
    node.stop().await;
}

fn leaky_yaml(upstream: &MockUpstream, rate: &str, queue: u32) -> String {
    format!(
        r#"
upstreams: {{ u: {{ targets: ["{}"], timeouts: {{ request: 30s }} }} }}
routes:
  - name: smooth
    match: {{ path_prefix: /smooth }}
    upstream: u
    limits: [ {{ name: smooth, key: route, algorithm: leaky_bucket, rate: {rate}, queue: {queue} }} ]
"#,
        upstream.target()
    )
}

/// A backend recording when each request arrived.
async fn timed_upstream() -> (MockUpstream, Arc<Mutex<Vec<Instant>>>) {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let recorded = arrivals.clone();
    let upstream = MockUpstream::start(move |_| {
        recorded.lock().unwrap().push(Instant::now());
        async { json(StatusCode::OK, serde_json::json!({})) }
    })
    .await;
    (upstream, arrivals)
}

#[tokio::test]
async fn the_leaky_bucket_smooths_a_burst_and_refuses_a_full_queue() {
    let (upstream, arrivals) = timed_upstream().await;
    // 20/s: one every 50ms; a queue of 8 behind the one that goes at once.
    let node = TestNode::start(&leaky_yaml(&upstream, "20/s", 8)).await;
    let start = Instant::now();
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let url = node.url("/smooth");
            tokio::spawn(async move { crate::get(&url).await })
        })
        .collect();
    let mut replies: Vec<Reply> = Vec::new();
    for call in calls {
        replies.push(call.await.expect("call"));
    }
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        (ok, refused.len()),
        (9, 3),
        "one at once, eight queued, three refused"
    );
    for reply in refused {
        assert_eq!(reply.error_code(), "rate_limited");
        assert!(reply.header("retry-after").parse::<u64>().unwrap() >= 1);
    }
    // The backend saw them at the rate: the k-th no earlier than k intervals
    // after the burst began (a late release only delays later ones).
    let mut times = arrivals.lock().unwrap().clone();
    times.sort();
    assert_eq!(times.len(), 9);
    for (k, at) in times.iter().enumerate() {
        let earliest = Duration::from_millis(50) * k as u32;
        assert!(
            at.duration_since(start) + Duration::from_millis(2) >= earliest,
            "request {k} reached the backend after {:?}, before {earliest:?}",
            at.duration_since(start)
        );
    }
    let gaps: Vec<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    println!("inter-arrival times at the backend (ms): {gaps:?}");
    let mean = gaps.iter().sum::<u128>() as f64 / gaps.len() as f64;
    assert!(mean >= 45.0, "mean gap {mean} ms for a 50 ms interval");
    node.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_frees_its_place() {
    let (upstream, arrivals) = timed_upstream().await;
    // One a second, two may wait.
    let node = TestNode::start(&leaky_yaml(&upstream, "1/s", 2)).await;
    assert_eq!(crate::get(&node.url("/smooth")).await.status, 200);

    // Two clients queue on raw connections; one of them hangs up.
    let request = b"GET /smooth HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut leaving = tokio::net::TcpStream::connect(node.proxy).await.unwrap();
    leaving.write_all(request).await.unwrap();
    let mut staying = tokio::net::TcpStream::connect(node.proxy).await.unwrap();
    staying.write_all(request).await.unwrap();
    let queued = |n: f64| {
        let node = &node;
        move || async move {
            node.metric(
                "meridian_ratelimit_decisions_total{route=\"smooth\",limit=\"route:smooth/smooth\",outcome=\"queued\"}",
            ) >= n
        }
    };
    assert!(eventually(Duration::from_secs(5), queued(2.0)).await);
    // The queue is full now.
    assert_eq!(crate::get(&node.url("/smooth")).await.status, 429);
    drop(leaving);
    // Once the gateway sees the hang-up there is room again.
    let url = node.url("/smooth");
    let deadline = Instant::now() + Duration::from_secs(5);
    let admitted = loop {
        let url = url.clone();
        let call = tokio::spawn(async move { crate::get(&url).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !call.is_finished() {
            break call;
        }
        assert_eq!(call.await.unwrap().status, 429, "only queued requests wait");
        assert!(Instant::now() < deadline, "no place in the queue was freed");
    };
    let mut answer = vec![0; 1024];
    let n = staying.read(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(admitted.await.unwrap().status, 200);
    // The backend saw three requests, never the one that left.
    assert_eq!(arrivals.lock().unwrap().len(), 3);
    node.stop().await;
}

#[tokio::test]
async fn a_flood_of_client_addresses_stays_under_the_key_cap() {
    let upstream = MockUpstream::echo("u").await;
    let yaml = format!(
        r#"
upstreams: {{ u: {{ targets: ["{}"] }} }}
policies: {{ trusted_proxies: [127.0.0.0/8] }}
routes:
  - name: open
    match: {{ path_prefix: / }}
    upstream: u
    limits: [ {{ name: per-ip, key: ip, algorithm: token_bucket, rate: 1/m, burst: 5 }} ]
"#,
        upstream.target()
    );
    let node = TestNode::start_with(&yaml, |raw| {
        raw.ratelimit.max_keys = 256;
        raw.ratelimit.sweep_interval = Duration::from_millis(50);
    })
    .await;
    let url = node.url("/");
    let clients = 2_000;
    for i in 0..clients {
        let ip = format!("10.{}.{}.1", i / 256, i % 256);
        let reply = get_with(&url, &[("x-forwarded-for", &ip)]).await;
        assert_eq!(reply.status, 200);
    }
    let keys = "meridian_ratelimit_keys{limit=\"route:open/per-ip\"}";
    let evicted =
        "meridian_ratelimit_evictions_total{limit=\"route:open/per-ip\",reason=\"capacity\"}";
    // Every key is either tracked or counted as evicted (once a sweep has
    // refreshed the series).
    let settled = eventually(Duration::from_secs(5), || async {
        node.metric(evicted) > 0.0 && node.metric(keys) + node.metric(evicted) == clients as f64
    })
    .await;
    assert!(
        settled,
        "keys {} evicted {}",
        node.metric(keys),
        node.metric(evicted)
    );
    assert!(node.metric(keys) <= 256.0, "keys {}", node.metric(keys));
    node.stop().await;
}

#[tokio::test]
async fn counts_survive_a_reload_that_keeps_the_limit() {
    let upstream = MockUpstream::echo("u").await;
    let yaml = |extra: &str, burst: u32| {
        format!(
            r#"
upstreams: {{ u: {{ targets: ["{}"] }} }}
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: u
    limits: [ {{ name: b, key: route, algorithm: token_bucket, rate: 1/m, burst: {burst} }} ]
{extra}"#,
            upstream.target()
        )
    };
    let node = TestNode::start(&yaml("", 2)).await;
    let url = node.url("/api");
    assert_eq!(crate::get(&url).await.status, 200);
    assert_eq!(crate::get(&url).await.status, 200);
    assert_eq!(crate::get(&url).await.status, 429);
    let other = "  - { name: other, match: { path_prefix: /other }, upstream: u }\n";
    assert_eq!(node.apply(&yaml(other, 2)).await.status, 200);
    assert_eq!(
        crate::get(&url).await.status,
        429,
        "an unchanged limit keeps its counts across a reload"
    );
    assert_eq!(node.apply(&yaml(other, 3)).await.status, 200);
    assert_eq!(
        crate::get(&url).await.status,
        200,
        "a changed limit starts over"
    );
    node.stop().await;
}

// === scope: redis ===

fn redis_yaml(upstream: &MockUpstream, algorithm: &str) -> String {
    format!(
        r#"
upstreams: {{ u: {{ targets: ["{}"] }} }}
routes:
  - name: shared
    match: {{ path_prefix: /shared }}
    upstream: u
    limits: [ {{ name: shared, key: route, scope: redis, {algorithm} }} ]
"#,
        upstream.target()
    )
}

async fn redis_node(yaml: &str, redis: &crate::redis::RedisServer, on_failure: &str) -> TestNode {
    let url = redis.url();
    let on_failure = on_failure.to_owned();
    TestNode::start_with(yaml, move |raw| {
        raw.ratelimit.redis = Some(node::ratelimit::RawRedis {
            url,
            on_failure,
            timeout: Duration::from_millis(200),
            ..Default::default()
        });
    })
    .await
}

#[tokio::test]
async fn a_redis_limit_is_one_exact_count_across_nodes() {
    let redis = crate::redis::RedisServer::start().await;
    let upstream = MockUpstream::echo("u").await;
    for algorithm in [
        "algorithm: fixed_window, limit: 10, per: 1h",
        "algorithm: sliding_window_counter, limit: 10, per: 1h",
        "algorithm: token_bucket, rate: 1/h, burst: 10",
    ] {
        let yaml = redis_yaml(&upstream, algorithm);
        // Two gateways that share nothing but the Redis.
        let a = redis_node(&yaml, &redis, "closed").await;
        let b = redis_node(&yaml, &redis, "closed").await;
        let mut admitted = 0;
        for i in 0..16 {
            let node = if i % 2 == 0 { &a } else { &b };
            let reply = crate::get(&node.url("/shared")).await;
            match reply.status.as_u16() {
                200 => admitted += 1,
                429 => assert_eq!(reply.error_code(), "rate_limited"),
                other => panic!("{algorithm}: status {other}"),
            }
        }
        assert_eq!(admitted, 10, "{algorithm}: one count across both nodes");
        a.stop().await;
        b.stop().await;
        // The next algorithm starts from a clean Redis.
        let flush = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut flush.clone())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn when_redis_is_down_a_limit_fails_open_locally_or_closed() {
    let mut redis = crate::redis::RedisServer::start().await;
    let upstream = MockUpstream::echo("u").await;
    let yaml = redis_yaml(&upstream, "algorithm: fixed_window, limit: 3, per: 1h");
    let open = redis_node(&yaml, &redis, "open").await;
    let closed = redis_node(&yaml, &redis, "closed").await;
    assert_eq!(crate::get(&open.url("/shared")).await.status, 200);
    redis.kill();

    // Fail open: the node's emergency limiter (3 per hour on this node).
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(crate::get(&open.url("/shared")).await.status.as_u16());
        }
        statuses
    };
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert!(
        open.metric("meridian_ratelimit_redis_failures_total{limit=\"route:shared/shared\"}")
            >= 5.0
    );

    // Fail closed: 503 with the JSON error.
    let reply = crate::get(&closed.url("/shared")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error_code(), "rate_limit_unavailable");
    assert_eq!(reply.header("retry-after"), "1");
    open.stop().await;
    closed.stop().await;
}
