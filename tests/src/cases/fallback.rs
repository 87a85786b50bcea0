//! Cross-region fallback: three nodes, one per region, each region with its
//! own backend of the `users` upstream (`region_targets`). When region 1's
//! backend dies, its node serves the upstream's requests through region 2's
//! gateway over the peer plane, then region 3's when region 2's dies too,
//! and comes home (after `return_after`) when its own backend is back.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use node::config::RawConfig;
use tokio::time::Instant;

use super::cluster::Cluster;
use crate::client::get_with;
use crate::{MockUpstream, TestNode, eventually, get, send};

/// Gossip every 100 ms, reports fresh for 500 ms.
fn tweak(raw: &mut RawConfig) {
    raw.gslb.interval = Duration::from_millis(100);
    raw.gslb.peer_timeout = Duration::from_millis(500);
}

const RETURN_AFTER: Duration = Duration::from_secs(1);

/// `users` with one backend per region, checked every 100 ms and falling
/// back to region 2, then 3; a route that needs an API key and allows a
/// consumer 100 requests per node.
fn config(backends: &[&MockUpstream; 3]) -> String {
    format!(
        r#"
upstreams:
  users:
    targets: []
    region_targets: {{ region-1: ["{}"], region-2: ["{}"], region-3: ["{}"] }}
    health: {{ path: /health, interval: 100ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
    fallback: {{ regions: [region-2, region-3], return_after: 1s }}
consumers:
  - {{ name: acme, id: c-123 }}
routes:
  - name: users
    match: {{ path_prefix: /users }}
    auth: [api_key]
    upstream: users
    limits: [ {{ key: consumer, algorithm: token_bucket, rate: 100/h, burst: 100 }} ]
"#,
        backends[0].target(),
        backends[1].target(),
        backends[2].target()
    )
}

/// `(status, serving region, backend)` of one GET through `node`.
async fn call(node: &TestNode, key: &str) -> (u16, String, String) {
    let reply = get_with(&node.url("/users/42"), &[("x-api-key", key)]).await;
    let backend = if reply.status == 200 {
        reply.json()["upstream"].as_str().unwrap_or("").to_owned()
    } else {
        String::new()
    };
    (
        reply.status.as_u16(),
        reply.header("x-meridian-region").to_owned(),
        backend,
    )
}

/// Requests `backend` got from clients (health checks aside).
fn served(backend: &MockUpstream) -> usize {
    let seen = backend.seen.lock().expect("not poisoned");
    seen.iter().filter(|s| s.uri.starts_with("/users")).count()
}

/// Whether `watcher`'s view has node `id` reporting `users` available.
async fn reports_users(watcher: &TestNode, id: u64, available: u64) -> bool {
    let reply = get(&watcher.admin_url("/v1/health/regions")).await;
    let view: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    let node = &view["regions"][format!("region-{id}")]["nodes"][id.to_string()];
    node["fresh"] == true && node["upstreams"]["users"]["available"] == available
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_without_backends_is_served_by_the_next_and_traffic_comes_back() {
    let b1 = MockUpstream::echo("b1").await;
    let b2 = MockUpstream::echo("b2").await;
    let b3 = MockUpstream::echo("b3").await;
    let cluster = Cluster::start_with(3, &config(&[&b1, &b2, &b3]), tweak).await;
    cluster.wait_leader().await;
    let node = |id: u64| &cluster.nodes[&id];
    let created = send(
        Request::post(node(1).admin_url("/v1/consumers/acme/keys"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let key = created.json()["key"].as_str().unwrap().to_owned();
    for id in 1..=3 {
        let ready = eventually(Duration::from_secs(10), || async {
            call(node(id), &key).await.0 == 200
        })
        .await;
        assert!(ready, "node {id} serves the key");
        for other in (1..=3).filter(|o| *o != id) {
            let seen = eventually(Duration::from_secs(10), || {
                reports_users(node(id), other, 1)
            })
            .await;
            assert!(seen, "node {id} sees region-{other}'s users");
        }
    }
    // Each region serves from its own backend, and says so.
    for id in 1..=3 {
        let (status, region, backend) = call(node(id), &key).await;
        assert_eq!(
            (status, region.as_str(), backend),
            (200, format!("region-{id}").as_str(), format!("b{id}"))
        );
    }
    let used_on_1 = 1 + 1; // The readiness probe and the call above.

    // Region 1's backend dies: its requests go to region 2 at once (the
    // refused connection falls back within the request), with no error.
    let b1_addr = b1.addr;
    b1.shutdown();
    drop(b1);
    let died = Instant::now();
    let before = served(&b2);
    let mut first_served = None;
    for _ in 0..10 {
        let (status, region, backend) = call(node(1), &key).await;
        assert_eq!(status, 200, "no 5xx while falling back");
        assert_eq!((region.as_str(), backend.as_str()), ("region-2", "b2"));
        first_served.get_or_insert_with(|| died.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_served = first_served.expect("served");
    assert_eq!(served(&b2) - before, 10);
    // What region 2's backend got: the caller's identity and the origin's
    // forwarding headers, none of the gateways' own.
    let seen = b2
        .seen
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|s| s.uri.starts_with("/users"))
        .cloned()
        .unwrap();
    assert_eq!(seen.headers["x-consumer-id"], "c-123");
    assert_eq!(seen.headers["x-consumer-name"], "acme");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(seen.headers.contains_key("x-request-id"));
    assert!(!seen.headers.contains_key("x-api-key"));
    assert!(
        seen.headers
            .keys()
            .all(|name| !name.as_str().starts_with("x-meridian-forward")),
        "{:?}",
        seen.headers
    );
    // A body streams through the other region whole.
    let upload = vec![b'x'; 1 << 20];
    let reply = send(
        Request::post(node(1).url("/users/upload"))
            .header("x-api-key", &key)
            .body(Full::new(Bytes::from(upload)))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-meridian-region"), "region-2");
    assert_eq!(reply.json()["body_len"], 1 << 20);
    let used_on_1 = used_on_1 + 10 + 1;
    assert_eq!(
        node(1).metric(
            "meridian_fallback_requests_total{upstream=\"users\",region=\"region-2\",outcome=\"served\"}"
        ),
        11.0
    );
    assert_eq!(
        node(2).metric("meridian_fallback_served_total{upstream=\"users\",from=\"region-1\"}"),
        11.0
    );
    assert_eq!(
        node(1).metric("meridian_fallback_active{upstream=\"users\"}"),
        1.0
    );

    // Region 2 counted none of the 11 against the consumer's limit: the 98
    // it has not used itself (readiness probe, one call) are left for its
    // own clients (the limit was applied once, by region 1).
    for i in 0..98 {
        assert_eq!(call(node(2), &key).await.0, 200, "request {i} on node 2");
    }
    assert_eq!(call(node(2), &key).await.0, 429);

    // Region 2's backend dies too: region 1's requests go to region 3. A
    // forwarded request that region 2 cannot serve is answered so, and
    // region 1 tries the next region; region 2 never forwards it again.
    b2.shutdown();
    for _ in 0..10 {
        let (status, region, backend) = call(node(1), &key).await;
        assert_eq!(status, 200, "no 5xx while falling back further");
        assert_eq!((region.as_str(), backend.as_str()), ("region-3", "b3"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let used_on_1 = used_on_1 + 10;
    for region in ["region-1", "region-3"] {
        assert_eq!(
            node(2).metric(&format!(
                "meridian_fallback_requests_total{{upstream=\"users\",region=\"{region}\",outcome=\"served\"}}"
            )),
            0.0,
            "region 2 forwarded nothing on"
        );
    }

    // Region 1's backend comes back: traffic returns once it has been
    // healthy for `return_after`, not before.
    let b1 = MockUpstream::echo_at("b1", b1_addr).await;
    let back = Instant::now();
    let mut returned = None;
    let mut calls = 0;
    while back.elapsed() < Duration::from_secs(8) && used_on_1 + calls < 100 {
        let (status, region, backend) = call(node(1), &key).await;
        calls += 1;
        assert_eq!(status, 200);
        if region == "region-1" {
            assert_eq!(backend, "b1");
            returned = Some(back.elapsed());
            break;
        }
        assert_eq!(region, "region-3");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let returned = returned.expect("traffic came back to region 1");
    assert!(returned >= RETURN_AFTER, "returned after {returned:?}");
    assert!(served(&b1) >= 1);
    assert_eq!(
        node(1).metric("meridian_fallback_active{upstream=\"users\"}"),
        0.0
    );
    eprintln!(
        "fallback: first request after region-1's backend died served by region-2 {} ms later, \
         no errors; back to region-1 {} ms after its backend returned (return_after {} ms)",
        first_served.as_millis(),
        returned.as_millis(),
        RETURN_AFTER.as_millis()
    );
}

/// One forwarded `GET path` for `upstream`, sent by `peer` to node `id`.
async fn forwarded_get(
    peer: &node::peer::PeerPlane,
    id: u64,
    target: &str,
    upstream: &str,
    path: &str,
) -> http::Response<hyper::body::Incoming> {
    let stream = peer.open_forward(id, target).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", upstream)
        .header("x-meridian-forward-upstream", upstream)
        .header("x-request-id", "req-1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    sender.send_request(request).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_exchange_is_checked_like_any_peer_input() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let b1 = MockUpstream::echo("b1").await;
    let b2 = MockUpstream::echo("b2").await;
    let b3 = MockUpstream::echo("b3").await;
    let cluster = Cluster::start(1, &config(&[&b1, &b2, &b3])).await;
    // A verified peer that sends what no node would.
    let (peer, id, target) = cluster.twin();

    // Not HTTP: the exchange ends with a 400, nothing reaches a backend.
    let mut stream = peer.open_forward(id, &target).await.unwrap();
    stream
        .write_all(b"\x00\x01 not http\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // An upstream the configuration does not have: a JSON 503 marked as
    // the serving side's failure, so the origin would try elsewhere.
    let response = forwarded_get(&peer, id, &target, "nope", "/users/1").await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["x-meridian-forward-failed"],
        "no_healthy_upstream"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "no_healthy_upstream", "{body}");
    assert_eq!(served(&b1), 0);

    // A well-formed one is proxied to the local target.
    let response = forwarded_get(&peer, id, &target, "users", "/users/2").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-meridian-region"], "region-1");
    assert_eq!(served(&b1), 1);
}
