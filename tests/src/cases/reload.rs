//! Configuration swaps through the admin API: validation, atomicity, and
//! no lost request or connection under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::Full;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{http1, send_with};
use crate::{MockUpstream, TestNode, get};

fn config(a: &MockUpstream, b: &MockUpstream, target: &str, marker: &str) -> String {
    format!(
        r#"
upstreams:
  a: {{ targets: ["{}"] }}
  b: {{ targets: ["{}"] }}
routes:
  - {{ name: load-{marker}, match: {{ path_prefix: /load }}, upstream: {target} }}
  - {{ name: ws, match: {{ path: /ws }}, upstream: a }}
"#,
        a.target(),
        b.target()
    )
}

#[tokio::test]
async fn invalid_configs_are_refused_with_every_error() {
    let a = MockUpstream::echo("a").await;
    let b = MockUpstream::echo("b").await;
    let node = TestNode::start(&config(&a, &b, "a", "1")).await;
    let reply = node
        .apply("routes:\n  - { name: x, upstream: nope, match: { path: relative } }\n")
        .await;
    assert_eq!(reply.status, 400);
    let details = reply.json()["error"]["details"].as_array().unwrap().clone();
    assert_eq!(details.len(), 2, "{details:?}");
    assert_eq!(details[0]["key"], "routes[0].upstream");
    assert_eq!(details[0]["value"], "nope");
    assert_eq!(details[1]["key"], "routes[0].match.path");
    let reply = node.apply("routes: [ {").await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        get(&node.url("/load")).await.json()["upstream"],
        "a",
        "the old configuration stays"
    );
    let current = get(&node.admin_url("/v1/config")).await.json();
    assert_eq!(current["version"], 1);
}

#[tokio::test]
async fn a_swap_takes_effect_and_bumps_the_version() {
    let a = MockUpstream::echo("a").await;
    let b = MockUpstream::echo("b").await;
    let node = TestNode::start(&config(&a, &b, "a", "1")).await;
    let reply = node.apply(&config(&a, &b, "b", "2")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["version"], 2);
    assert_eq!(get(&node.url("/load")).await.json()["upstream"], "b");
    let current = get(&node.admin_url("/v1/config")).await.json();
    assert_eq!(current["config"]["routes"][0]["name"], "load-2");
}

/// Nodes in one process whose requests run on one thread (this test's
/// runtime): each serves its own configuration, and a swap on one is in
/// force for its next request, whatever the thread loaded before.
#[tokio::test]
async fn nodes_on_one_thread_each_serve_their_own_configuration() {
    let a = MockUpstream::echo("a").await;
    let b = MockUpstream::echo("b").await;
    let first = TestNode::start(&config(&a, &b, "a", "1")).await;
    let second = TestNode::start(&config(&a, &b, "b", "1")).await;
    let upstream = |node: &TestNode| {
        let url = node.url("/load");
        async move { get(&url).await.json()["upstream"].clone() }
    };
    for _ in 0..3 {
        assert_eq!(upstream(&first).await, "a");
        assert_eq!(upstream(&second).await, "b");
    }
    // As a request in flight would, this keeps the replaced snapshot alive.
    let in_flight = first.gateway.snapshots().load();
    assert_eq!(first.apply(&config(&a, &b, "b", "2")).await.status, 200);
    assert_eq!(upstream(&first).await, "b", "the swap is in force at once");
    assert_eq!(upstream(&second).await, "b");
    assert_eq!(in_flight.version, 1);
    drop(in_flight);
    assert_eq!(second.apply(&config(&a, &b, "a", "2")).await.status, 200);
    assert_eq!(upstream(&second).await, "a");
    assert_eq!(upstream(&first).await, "b");
}

#[tokio::test]
async fn hot_reload_under_load_loses_no_request() {
    let a = MockUpstream::echo("a").await;
    let b = MockUpstream::echo("b").await;
    let node = Arc::new(TestNode::start(&config(&a, &b, "a", "0")).await);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (node, stop, served) = (node.clone(), stop.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let client = http1();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let request = Request::get(node.url("/load"))
                    .body(Full::default())
                    .unwrap();
                let reply = send_with(&client, request).await;
                if reply.status != 200 {
                    failures.push(reply.status);
                }
                served.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    for round in 1..=40 {
        let target = if round % 2 == 0 { "a" } else { "b" };
        let reply = node
            .apply(&config(&a, &b, target, &round.to_string()))
            .await;
        assert_eq!(reply.status, 200);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        assert_eq!(
            client.await.unwrap(),
            Vec::<http::StatusCode>::new(),
            "every request during the swaps succeeded"
        );
    }
    assert!(served.load(Ordering::Relaxed) > 100, "load ran");
    assert!(a.count() > 0 && b.count() > 0, "both configurations served");
}

#[tokio::test]
async fn websockets_survive_reloads() {
    let a = MockUpstream::echo("a").await;
    let b = MockUpstream::echo("b").await;
    let node = TestNode::start(&config(&a, &b, "a", "1")).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", node.proxy))
        .await
        .unwrap();
    socket.send(Message::text("before")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("before")
    );
    for round in 2..5 {
        assert_eq!(
            node.apply(&config(&a, &b, "b", &round.to_string()))
                .await
                .status,
            200
        );
    }
    socket.send(Message::text("after")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("after")
    );
}

#[tokio::test]
async fn the_admin_token_guards_v1() {
    let a = MockUpstream::echo("a").await;
    let b = MockUpstream::echo("b").await;
    let node = TestNode::start_with(&config(&a, &b, "a", "1"), |raw| {
        raw.admin.token = Some("s3cret".into())
    })
    .await;
    let reply = node.apply(&config(&a, &b, "b", "2")).await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        "Bearer realm=\"meridian-admin\""
    );
    let request = Request::put(node.admin_url("/v1/config"))
        .header("authorization", "Bearer s3cret")
        .body(Full::new(bytes::Bytes::from(config(&a, &b, "b", "2"))))
        .unwrap();
    assert_eq!(crate::send(request).await.status, 200);
    assert_eq!(
        get(&node.admin_url("/healthz")).await.status,
        200,
        "probes need no token"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let slow = MockUpstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        crate::upstream::json(
            http::StatusCode::OK,
            serde_json::json!({"upstream": "slow"}),
        )
    })
    .await;
    let yaml = format!(
        "upstreams:\n  s: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: r, upstream: s }}\n",
        slow.target()
    );
    let node = TestNode::start(&yaml).await;
    let url = node.url("/");
    let in_flight = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let admin = node.admin_url("/readyz");
    node.begin_stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = tokio::net::TcpStream::connect(node.proxy).await;
    assert!(refused.is_err(), "the listener is closed");
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "the in-flight request completed");
    drop(admin);
    node.stop().await;
}

/// At shutdown a kept-alive connection waiting for its next request is
/// closed at once, on the fast path and on hyper's; one whose request is
/// still with the upstream is kept for the grace period, then closed.
#[tokio::test]
async fn shutdown_closes_idle_connections_at_once_and_stuck_ones_after_the_grace_period() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = MockUpstream::start(|seen| async move {
        if seen.uri == "/stuck" {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        crate::upstream::json(http::StatusCode::OK, serde_json::json!({}))
    })
    .await;
    let yaml = format!(
        "upstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: r, upstream: u }}\n",
        upstream.target()
    );
    let node = TestNode::start_with(&yaml, |raw| {
        raw.shutdown.grace_period = Duration::from_secs(2);
    })
    .await;
    let connect = || tokio::net::TcpStream::connect(node.proxy);
    // Served on the fast path, then idle there.
    let mut fast = connect().await.unwrap();
    fast.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // A chunked body moves the connection to hyper, where it then idles.
    let mut hyper = connect().await.unwrap();
    hyper
        .write_all(
            b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    for stream in [&mut fast, &mut hyper] {
        let answers = super::proxy::responses(stream, 1).await;
        assert_eq!(answers.first().map(|(status, _)| *status), Some(200));
    }
    let mut stuck = connect().await.unwrap();
    stuck
        .write_all(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    node.begin_stop();
    for (name, stream) in [("fast path", &mut fast), ("hyper", &mut hyper)] {
        assert!(
            matches!(closed(stream).await, Ok(0) | Err(_)),
            "the idle {name} connection is closed"
        );
    }
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stuck.read(&mut byte))
            .await
            .is_err(),
        "a connection with a request in flight is kept while the others close"
    );
    assert!(
        matches!(closed(&mut stuck).await, Ok(0) | Err(_)),
        "after the grace period the stuck connection is closed, unanswered"
    );
    node.stop().await;
}

/// Reads from `stream` until it ends or fails (or the test's patience runs
/// out: that panics).
async fn closed(stream: &mut tokio::net::TcpStream) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
        .await
        .expect("the connection is closed within 10 s")
}
