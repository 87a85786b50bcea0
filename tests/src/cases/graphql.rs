//! GraphQL to REST end to end (issue 8, point 5): queries resolved by real
//! recording backends, arguments and parent members mapped into paths,
//! the caller's identity forwarded, independent fields run concurrently,
//! failing fields reported the GraphQL way, and malformed or oversized
//! queries refused with the gateway's JSON error.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::get_with;
use crate::upstream::json as answer;
use crate::{MockUpstream, Reply, TestNode, get, send};

/// `GET /users/{id}`: the user (`e500` fails, `slow-*` answers after
/// 300 ms, `bad` answers a name that is not a String).
async fn users() -> MockUpstream {
    MockUpstream::start(|seen| async move {
        let id = seen.uri.rsplit('/').next().unwrap_or_default().to_owned();
        if id.starts_with("slow") {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        match id.as_str() {
            "e500" => answer(StatusCode::INTERNAL_SERVER_ERROR, json!({ "oops": true })),
            "bad" => answer(StatusCode::OK, json!({ "id": "bad", "full_name": [1] })),
            _ => answer(
                StatusCode::OK,
                json!({ "id": id, "full_name": "Ann", "age": 41 }),
            ),
        }
    })
    .await
}

/// `GET /users/{id}/orders`: a user's orders; `GET /orders/{id}`: one order
/// (`slow-*` answers after 300 ms).
async fn orders() -> MockUpstream {
    MockUpstream::start(|seen| async move {
        let parts: Vec<String> = seen.uri.split('/').map(str::to_owned).collect();
        match parts.as_slice() {
            [_, users, user, orders] if users == "users" && orders == "orders" => answer(
                StatusCode::OK,
                json!({ "items": [
                    { "id": "o1", "total": 9.5, "user_id": user },
                    { "id": 2, "total": 20, "user_id": user },
                ] }),
            ),
            [_, orders, id] if orders == "orders" => {
                if id.starts_with("slow") {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                answer(
                    StatusCode::OK,
                    json!({ "items": [{ "id": id, "total": 1.25, "user_id": "7" }] }),
                )
            }
            _ => answer(StatusCode::NOT_FOUND, json!({})),
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
consumers:
  - {{ name: acme, id: c-123 }}
routes:
  - name: graph
    match: {{ path: /graphql }}
    upstream: users
    auth: [api_key]
    graphql:
      max_depth: 5
      max_complexity: 12
      max_query: 2KiB
      types:
        User:
          id: ID!
          name: {{ type: String, from: full_name }}
          age: Int
          orders: {{ type: "[Order!]", upstream: orders, path: "/users/{{parent.id}}/orders", select: /items }}
        Order:
          id: ID!
          total: Float
          buyer: {{ type: User, upstream: users, path: "/users/{{parent.user_id}}" }}
      query:
        user: {{ type: User, args: {{ id: ID! }}, upstream: users, path: "/users/{{args.id}}", timeout: 1s }}
        order: {{ type: Order, args: {{ id: ID! }}, upstream: orders, path: "/orders/{{args.id}}", select: /items/0 }}
"#,
        users.target(),
        orders.target(),
    )
}

struct Setup {
    users: MockUpstream,
    orders: MockUpstream,
    node: TestNode,
    key: String,
}

async fn setup() -> Setup {
    let users = users().await;
    let orders = orders().await;
    let node = TestNode::start(&yaml(&users, &orders)).await;
    let created = send(
        Request::post(node.admin_url("/v1/consumers/acme/keys"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let key = created.json()["key"].as_str().unwrap().to_owned();
    Setup {
        users,
        orders,
        node,
        key,
    }
}

impl Setup {
    async fn post_raw(&self, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::post(self.node.url("/graphql"))
            .header("content-type", "application/json")
            .header("x-api-key", &self.key);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        send(request.body(Full::new(body.into())).unwrap()).await
    }

    async fn post(&self, body: Value) -> Reply {
        self.post_raw(body.to_string(), &[]).await
    }

    async fn query(&self, query: &str) -> Reply {
        self.post(json!({ "query": query })).await
    }
}

/// The reply is the gateway's JSON error with `status` and `code`.
fn assert_refused(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    let error = &reply.json()["error"];
    assert_eq!(error["code"], code, "{:?}", reply.body);
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{error}"
    );
    assert_eq!(
        error["request_id"].as_str().unwrap_or_default(),
        reply.header("x-request-id")
    );
    assert!(!reply.header("x-request-id").is_empty());
}

#[tokio::test]
async fn a_user_and_their_orders_are_two_rest_calls() {
    let s = setup().await;
    let reply = s
        .post_raw(
            json!({ "query": "{ user(id: \"42\") { id name age orders { id total } } }" })
                .to_string(),
            &[
                ("x-request-id", "rid-graphql-1"),
                ("x-consumer-id", "forged"),
                ("accept", "text/html"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(
        reply.json(),
        json!({ "data": { "user": {
            "id": "42", "name": "Ann", "age": 41,
            "orders": [{ "id": "o1", "total": 9.5 }, { "id": "2", "total": 20.0 }],
        } } })
    );
    // One call each: the argument in the user's path, the parent's id in
    // the orders' path; the identity of the API key, not the forged one.
    for (backend, uri) in [(&s.users, "/users/42"), (&s.orders, "/users/42/orders")] {
        assert_eq!(backend.count(), 1, "{uri}");
        let seen = backend.last();
        assert_eq!(seen.method, http::Method::GET);
        assert_eq!(seen.uri, uri);
        assert_eq!(seen.headers["x-consumer-id"], "c-123");
        assert_eq!(seen.headers["x-consumer-name"], "acme");
        assert_eq!(seen.headers["x-request-id"], "rid-graphql-1");
        assert!(seen.headers.contains_key("traceparent"));
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen.headers["accept"], "application/json");
        assert!(!seen.headers.contains_key("x-api-key"));
        assert!(!seen.headers.contains_key("content-type"));
    }
    // The nested call waited for its parent.
    assert!(s.orders.last().received >= s.users.last().received);
}

#[tokio::test]
async fn independent_fields_run_concurrently() {
    let s = setup().await;
    let started = Instant::now();
    let reply = s
        .query(r#"{ user(id: "slow-1") { id } order(id: "slow-2") { id total } }"#)
        .await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        reply.json()["data"],
        json!({ "user": { "id": "slow-1" }, "order": { "id": "slow-2", "total": 1.25 } })
    );
    // Each backend holds its request 300 ms: the second started before the
    // first could have answered, and the whole took about one delay.
    let (a, b) = (s.users.last().received, s.orders.last().received);
    let gap = if a > b { a - b } else { b - a };
    assert!(gap < Duration::from_millis(200), "starts {gap:?} apart");
    assert!(elapsed < Duration::from_millis(580), "took {elapsed:?}");
}

#[tokio::test]
async fn get_and_post_with_variables_and_operation_names() {
    let s = setup().await;
    let query = "query A($id: ID!) { user(id: $id) { name } } query B($id: ID!) { order(id: $id) { id buyer { id name } } }";
    let reply = s
        .post(json!({ "query": query, "variables": { "id": "7" }, "operationName": "B" }))
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        reply.json(),
        json!({ "data": { "order": { "id": "7", "buyer": { "id": "7", "name": "Ann" } } } })
    );
    assert_eq!(s.orders.last().uri, "/orders/7");
    assert_eq!(s.users.last().uri, "/users/7");

    let url = format!(
        "/graphql?query={}&variables={}&operationName=A",
        encode(query),
        encode(r#"{"id":"a b/c?d"}"#)
    );
    let reply = get_with(&s.node.url(&url), &[("x-api-key", &s.key)]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        reply.json(),
        json!({ "data": { "user": { "name": "Ann" } } })
    );
    // An argument cannot add path segments or query parameters.
    assert_eq!(s.users.last().uri, "/users/a%20b%2Fc%3Fd");
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn a_failing_backend_field_is_a_graphql_error() {
    let s = setup().await;
    let reply = s
        .query(r#"{ user(id: "e500") { name } order(id: "1") { id } }"#)
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let body = reply.json();
    assert_eq!(
        body["data"],
        json!({ "user": null, "order": { "id": "1" } })
    );
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["path"], json!(["user"]));
    assert_eq!(errors[0]["extensions"]["code"], "upstream_status");
    assert_eq!(errors[0]["extensions"]["status"], 500);
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains("\"users\""), "{message}");

    // A value of the wrong type nulls the field, with the reason.
    let reply = s.query(r#"{ user(id: "bad") { id name } }"#).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let body = reply.json();
    assert_eq!(
        body["data"],
        json!({ "user": { "id": "bad", "name": null } })
    );
    assert_eq!(body["errors"][0]["path"], json!(["user", "name"]));
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "graphql_invalid_value"
    );
}

#[tokio::test]
async fn malformed_and_oversized_queries_are_refused() {
    let s = setup().await;
    assert_refused(
        &s.query("{ user(id: \"1\") { id ").await,
        400,
        "graphql_syntax_error",
    );
    assert_refused(
        &s.query("{ user(id: \"1\") { id email } }").await,
        400,
        "graphql_validation_failed",
    );
    // Depth 6 > 5.
    assert_refused(
        &s.query("{ user(id: \"1\") { orders { buyer { orders { buyer { id } } } } } }")
            .await,
        400,
        "graphql_depth_limit",
    );
    // Fourteen fields > 12.
    assert_refused(
        &s.query(
            "{ a: user(id: \"1\") { id name age } b: user(id: \"2\") { id name age } c: user(id: \"3\") { id name age orders { id } } }",
        )
        .await,
        400,
        "graphql_complexity_limit",
    );
    // Nested brackets far past the limit, within the size limit.
    let deep = format!("{}{}", "{a".repeat(600), "}".repeat(600));
    assert_refused(&s.query(&deep).await, 400, "graphql_depth_limit");
    assert_refused(
        &s.post_raw("{\"query\": 1}", &[]).await,
        400,
        "graphql_invalid_request",
    );
    assert_refused(
        &s.post_raw("not json", &[]).await,
        400,
        "graphql_invalid_request",
    );
    // Over max_query (2 KiB): the body and the query string.
    let big = format!("{{ user(id: \"{}\") {{ id }} }}", "x".repeat(4096));
    assert_refused(&s.query(&big).await, 413, "payload_too_large");
    let url = format!("/graphql?query={}", encode(&big));
    let reply = get_with(&s.node.url(&url), &[("x-api-key", &s.key)]).await;
    assert_eq!(reply.status, 414, "{:?}", reply.body);
    assert_eq!(s.users.count() + s.orders.count(), 0, "nothing was called");
    // Authentication still comes first.
    let anonymous = get(&s.node.url("/graphql?query=%7Buser(id%3A1)%7Bid%7D%7D")).await;
    assert_eq!(anonymous.status, 401);
}
