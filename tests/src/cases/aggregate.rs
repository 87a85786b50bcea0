//! Response aggregation end to end (issue 8, point 3): one route answered
//! from two real backends, path parameters substituted into the parts'
//! paths, the proxy's headers on every part, and the failure policies
//! (`fail`, `omit`, `marker`) for a slow part, a failing part and a part
//! that does not answer JSON.

use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, header};
use serde_json::json;
use tokio::time::Instant;

use crate::client::get_with;
use crate::upstream::{MockResponse, full};
use crate::{MockUpstream, Reply, TestNode, get};

fn text(body: &'static str) -> MockResponse {
    let mut response = http::Response::new(full(Bytes::from_static(body.as_bytes())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

/// `GET /v1/users/{id}`: the user; `text` answers plain text, `slow`
/// answers after 2 s.
async fn users() -> MockUpstream {
    MockUpstream::start(|seen| async move {
        let id = seen.uri.rsplit('/').next().unwrap_or_default().to_owned();
        match id.as_str() {
            "text" => text("hello, not json"),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                crate::upstream::json(StatusCode::OK, json!({ "id": "slow" }))
            }
            _ => crate::upstream::json(StatusCode::OK, json!({ "id": id, "name": "Ann" })),
        }
    })
    .await
}

/// `GET /v1/orders?user={id}`: the user's orders; `e500` fails, `slow`
/// answers after 2 s.
async fn orders() -> MockUpstream {
    MockUpstream::start(|seen| async move {
        let user = seen
            .uri
            .split_once("user=")
            .map(|(_, user)| user.to_owned())
            .unwrap_or_default();
        match user.as_str() {
            "e500" => {
                crate::upstream::json(StatusCode::INTERNAL_SERVER_ERROR, json!({ "oops": true }))
            }
            "slow" => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                crate::upstream::json(StatusCode::OK, json!([]))
            }
            _ => crate::upstream::json(
                StatusCode::OK,
                json!([{ "order": 1, "user": user }, { "order": 2, "user": user }]),
            ),
        }
    })
    .await
}

fn yaml(users: &MockUpstream, orders: &MockUpstream) -> String {
    format!(
        r#"
upstreams:
  users: {{ targets: ["{}"] }}
  orders: {{ targets: ["{}"] }}
routes:
  - name: dashboard
    match: {{ path: "/dashboard/{{id}}" }}
    upstream: users
    aggregate:
      parts:
        user:   {{ upstream: users,  path: "/v1/users/{{id}}", timeout: 1s }}
        orders: {{ upstream: orders, path: "/v1/orders?user={{id}}", timeout: 300ms, on_error: omit }}
  - name: strict
    match: {{ path: "/strict/{{id}}" }}
    upstream: users
    aggregate:
      parts:
        user:   {{ upstream: users,  path: "/v1/users/{{id}}", timeout: 1s }}
        orders: {{ upstream: orders, path: "/v1/orders?user={{id}}", timeout: 300ms }}
  - name: marked
    match: {{ path: "/marked/{{id}}" }}
    upstream: users
    aggregate:
      parts:
        user:   {{ upstream: users,  path: "/v1/users/{{id}}", timeout: 300ms, on_error: marker }}
        orders: {{ upstream: orders, path: "/v1/orders?user={{id}}", timeout: 300ms, on_error: marker }}
  - name: tiny
    match: {{ path: "/tiny/{{id}}" }}
    upstream: users
    aggregate:
      max_body: 16B
      parts:
        user: {{ upstream: users, path: "/v1/users/{{id}}", on_error: marker }}
"#,
        users.target(),
        orders.target(),
    )
}

fn message(reply: &Reply) -> String {
    reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn setup() -> (MockUpstream, MockUpstream, TestNode) {
    let users = users().await;
    let orders = orders().await;
    let node = TestNode::start(&yaml(&users, &orders)).await;
    (users, orders, node)
}

#[tokio::test]
async fn parts_are_merged_into_one_object() {
    let (users, orders, node) = setup().await;
    let reply = get_with(
        &node.url("/dashboard/42?ignored=1"),
        &[("x-request-id", "rid-aggregate-1"), ("accept", "text/html")],
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("x-aggregate-partial"), "");
    assert_eq!(
        reply.json(),
        json!({
            "orders": [{ "order": 1, "user": "42" }, { "order": 2, "user": "42" }],
            "user": { "id": "42", "name": "Ann" },
        })
    );
    // Each backend saw one GET with the route's parameter in its path, the
    // request id and trace context, and the forwarding headers.
    for (backend, uri) in [(&users, "/v1/users/42"), (&orders, "/v1/orders?user=42")] {
        assert_eq!(backend.count(), 1);
        let seen = backend.last();
        assert_eq!(seen.method, http::Method::GET);
        assert_eq!(seen.uri, uri);
        assert_eq!(seen.headers["x-request-id"], "rid-aggregate-1");
        assert!(seen.headers.contains_key("traceparent"));
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen.headers["accept"], "application/json");
    }
}

#[tokio::test]
async fn parameters_are_escaped_into_the_parts_paths() {
    let (users, orders, node) = setup().await;
    let reply = get(&node.url("/dashboard/a&b=c")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(users.last().uri, "/v1/users/a%26b%3Dc");
    assert_eq!(orders.last().uri, "/v1/orders?user=a%26b%3Dc");
}

#[tokio::test]
async fn a_failing_part_is_omitted_or_fails_the_answer() {
    let (_users, _orders, node) = setup().await;
    let omitted = get(&node.url("/dashboard/e500")).await;
    assert_eq!(omitted.status, 200, "{:?}", omitted.body);
    assert_eq!(omitted.header("x-aggregate-partial"), "orders");
    assert_eq!(
        omitted.json(),
        json!({ "user": { "id": "e500", "name": "Ann" } })
    );

    let failed = get(&node.url("/strict/e500")).await;
    assert_eq!(failed.status, 502, "{:?}", failed.body);
    assert_eq!(failed.header("content-type"), "application/json");
    assert_eq!(failed.error_code(), "aggregate_part_failed");
    let message = message(&failed);
    assert!(message.contains("orders"), "{message}");
    assert!(message.contains("500"), "{message}");

    let marked = get(&node.url("/marked/e500")).await;
    assert_eq!(marked.status, 200, "{:?}", marked.body);
    assert_eq!(marked.header("x-aggregate-partial"), "orders");
    assert_eq!(
        marked.json()["orders"],
        json!({ "error": { "code": "upstream_status", "status": 500 } })
    );
}

#[tokio::test]
async fn a_slow_part_times_out_alone() {
    let (_users, _orders, node) = setup().await;
    let started = Instant::now();
    let omitted = get(&node.url("/dashboard/slow")).await;
    // The users backend answers `slow` late too: the user part (1s) fails
    // the answer, after its own timeout and not the backend's 2 s.
    assert_eq!(omitted.status, 502, "{:?}", omitted.body);
    assert!(started.elapsed() < Duration::from_millis(1800));
    let message = message(&omitted);
    assert!(message.contains("part \"user\""), "{message}");
    assert!(message.contains("upstream_timeout"), "{message}");

    let started = Instant::now();
    let marked = get(&node.url("/marked/slow")).await;
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(marked.status, 200, "{:?}", marked.body);
    assert_eq!(marked.header("x-aggregate-partial"), "orders, user");
    let timeout = json!({ "error": { "code": "upstream_timeout", "status": 504 } });
    assert_eq!(marked.json(), json!({ "user": timeout, "orders": timeout }));

    let failed = get(&node.url("/strict/slow")).await;
    assert_eq!(failed.status, 502);
    assert_eq!(failed.error_code(), "aggregate_part_failed");
}

#[tokio::test]
async fn a_slow_omitted_part_does_not_delay_the_others() {
    let users = users().await;
    let orders = orders().await;
    // Only the orders part is slow: the user part asks for a fixed user.
    let yaml = format!(
        r#"
upstreams:
  users: {{ targets: ["{}"] }}
  orders: {{ targets: ["{}"] }}
routes:
  - name: dashboard
    match: {{ path: "/dashboard/{{id}}" }}
    upstream: users
    aggregate:
      parts:
        user:   {{ upstream: users,  path: "/v1/users/7", timeout: 1s }}
        orders: {{ upstream: orders, path: "/v1/orders?user={{id}}", timeout: 300ms, on_error: omit }}
"#,
        users.target(),
        orders.target(),
    );
    let node = TestNode::start(&yaml).await;
    let started = Instant::now();
    let reply = get(&node.url("/dashboard/slow")).await;
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("x-aggregate-partial"), "orders");
    assert_eq!(
        reply.json(),
        json!({ "user": { "id": "7", "name": "Ann" } })
    );
}

#[tokio::test]
async fn non_json_and_oversized_parts_are_failed_parts() {
    let (_users, _orders, node) = setup().await;
    let failed = get(&node.url("/dashboard/text")).await;
    assert_eq!(failed.status, 502, "{:?}", failed.body);
    assert_eq!(failed.error_code(), "aggregate_part_failed");
    let message = message(&failed);
    assert!(message.contains("upstream_invalid_json"), "{message}");

    let marked = get(&node.url("/marked/text")).await;
    assert_eq!(marked.status, 200, "{:?}", marked.body);
    assert_eq!(marked.header("x-aggregate-partial"), "user");
    assert_eq!(
        marked.json()["user"],
        json!({ "error": { "code": "upstream_invalid_json", "status": 502 } })
    );
    assert_eq!(marked.json()["orders"][0]["user"], "text");

    let tiny = get(&node.url("/tiny/42")).await;
    assert_eq!(tiny.status, 200, "{:?}", tiny.body);
    assert_eq!(
        tiny.json()["user"],
        json!({ "error": { "code": "upstream_body_too_large", "status": 502 } })
    );
}
