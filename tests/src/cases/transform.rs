//! Transformations end to end (issue 8): header operations with templates
//! seen by the backend and the client, XML ⇄ JSON, JSON filtering and
//! reshaping, hostile bodies (malformed, billion laughs, deep nesting,
//! oversized) answered with JSON errors, and WebSockets through a
//! header-transform route across reloads.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, header};
use http_body_util::Full;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::client::get_with;
use crate::idp::{JwksServer, SigningKey, claims};
use crate::upstream::{MockResponse, echo_json, full};
use crate::{MockUpstream, Reply, TestNode, get, send};

const ISSUER: &str = "https://idp.test/";

const BILLION_LAUGHS: &str = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>"#;

const ORDER_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<order id="42">
  <customer>Ann &amp; Bob</customer>
  <item sku="p1">Pen</item>
  <item sku="p2">Ink</item>
  <note/>
</order>"#;

fn typed(content_type: &'static str, body: impl Into<Bytes>) -> MockResponse {
    let mut response = http::Response::new(full(body.into()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// A backend answering by the last path segment; anything else is echoed.
async fn backend() -> MockUpstream {
    MockUpstream::start(|seen| async move {
        let last = seen.uri.rsplit('/').next().unwrap_or_default().to_owned();
        match last.as_str() {
            "xml" => typed("application/xml", ORDER_XML),
            "bad-xml" => typed("text/xml", "<order><item></order>"),
            "laughs" => typed("application/xml", BILLION_LAUGHS),
            "deep" => typed("application/json", "[".repeat(100_000)),
            "text" => typed("text/plain", "<not>json</not>"),
            "big" => typed(
                "application/json",
                json!({ "data": "x".repeat(4096) }).to_string(),
            ),
            "pii" => {
                let mut response = typed(
                    "application/json",
                    json!({
                        "id": 7,
                        "internal_id": "db-9912",
                        "users": [
                            { "name": "ann", "ssn": "111-22-3333", "email": "ann@x" },
                            { "name": "bob", "ssn": "444-55-6666", "email": "bob@x" },
                        ],
                        "meta": { "page": 1, "debug": { "sql": "select *" } },
                    })
                    .to_string(),
                );
                response
                    .headers_mut()
                    .insert(header::ETAG, header::HeaderValue::from_static("\"v1\""));
                response
            }
            _ => {
                let mut response = crate::upstream::json(
                    StatusCode::OK,
                    json!({
                        "echo": echo_json("u", &seen),
                        "body": String::from_utf8_lossy(&seen.body),
                    }),
                );
                let headers = response.headers_mut();
                headers.insert("x-internal", header::HeaderValue::from_static("secret"));
                headers.insert("x-upstream-version", header::HeaderValue::from_static("3"));
                response
            }
        }
    })
    .await
}

fn yaml(upstream: &MockUpstream, jwks: &JwksServer) -> String {
    format!(
        r#"
upstreams:
  u: {{ targets: ["{}"] }}
  dead: {{ targets: ["127.0.0.1:1"], retries: {{ attempts: 0 }} }}
consumers:
  - {{ name: acme, id: c-1 }}
auth:
  jwt:
    - name: idp
      issuer: "{ISSUER}"
      jwks_uri: "{}"
      audiences: [api]
      claims: {{ consumer: org }}
routes:
  - name: headers
    match: {{ path_prefix: /h }}
    auth: [jwt]
    upstream: u
    transform:
      request:
        headers:
          remove: [X-Debug]
          rename: {{ X-Old: X-New }}
          set:
            X-Tenant: "{{jwt.claims.tenant}}"
            X-Caller: "{{consumer.id}}:{{consumer.name}}"
            X-Client: "{{client.ip}}"
            X-Route: "{{route.name}}"
            X-Rid: "{{request.id}}"
            X-Region-Claim: "{{jwt.claims.region}}"
            X-Note: "{{jwt.claims.note}}"
          add: {{ X-Via: "meridian/{{route.name}}" }}
      response:
        headers:
          remove: [X-Internal]
          rename: {{ X-Upstream-Version: X-Version }}
          set: {{ X-Served-For: "{{jwt.claims.sub}}@{{jwt.claims.tenant}}" }}
  - name: x2j
    match: {{ path_prefix: /x2j }}
    upstream: u
    transform:
      request: {{ body: {{ convert: xml_to_json }} }}
      response: {{ body: {{ convert: xml_to_json }} }}
  - name: j2x
    match: {{ path_prefix: /j2x }}
    upstream: u
    transform:
      request: {{ body: {{ convert: json_to_xml, xml_root: order }} }}
  - name: deny
    match: {{ path_prefix: /deny }}
    upstream: u
    transform:
      response: {{ body: {{ filter: {{ deny: [/internal_id, "/users/*/ssn", /meta/debug] }} }} }}
  - name: allow
    match: {{ path_prefix: /allow }}
    upstream: u
    transform:
      response: {{ body: {{ filter: {{ allow: [/id, "/users/*/name"] }} }} }}
  - name: reshape
    match: {{ path_prefix: /reshape }}
    upstream: u
    transform:
      response:
        body:
          move:
            - {{ from: /internal_id, to: /ref }}
            - {{ from: /meta/page, to: /paging/current }}
  - name: limits
    match: {{ path_prefix: /limits }}
    max_body: 1KiB
    upstream: u
    transform:
      request: {{ body: {{ filter: {{ deny: [/x] }} }} }}
      response:
        body: {{ filter: {{ deny: [/x] }} }}
        max_body: 1KiB
  - name: dead
    match: {{ path_prefix: /dead }}
    upstream: dead
    transform:
      response:
        headers: {{ set: {{ X-Served-By: "{{route.name}}" }} }}
        body: {{ convert: xml_to_json }}
  - name: ws
    match: {{ path_prefix: /ws }}
    upstream: u
    transform:
      request: {{ headers: {{ set: {{ X-Route: "{{route.name}}" }} }} }}
      response: {{ headers: {{ set: {{ X-Served-By: "{{route.name}}" }} }} }}
"#,
        upstream.target(),
        jwks.uri(),
    )
}

async fn setup() -> (MockUpstream, JwksServer, SigningKey, TestNode) {
    let key = SigningKey::rsa("r1");
    let jwks = JwksServer::start(&[&key], 300).await;
    let upstream = backend().await;
    let node = TestNode::start(&yaml(&upstream, &jwks)).await;
    (upstream, jwks, key, node)
}

async fn post(url: &str, content_type: &str, body: impl Into<Bytes>) -> Reply {
    send(
        Request::post(url)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(body.into()))
            .unwrap(),
    )
    .await
}

#[track_caller]
fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{code}: {:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.error_code(), code, "{:?}", reply.body);
}

#[tokio::test]
async fn header_transforms_reach_the_backend_and_the_client() {
    let (upstream, _jwks, key, node) = setup().await;
    let mut token_claims = claims(ISSUER, "alice");
    token_claims["org"] = json!("acme");
    token_claims["note"] = json!("line\nbreak");
    let token = key.sign(&token_claims);
    let reply = get_with(
        &node.url("/h/1"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-debug", "1"),
            ("x-old", "moved"),
            ("x-tenant", "forged"),
            ("x-via", "client-proxy"),
            ("x-request-id", "rid-transform-1"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let seen = upstream.last();
    let h = &seen.headers;
    assert!(!h.contains_key("x-debug"));
    assert!(!h.contains_key("x-old"));
    assert_eq!(h["x-new"], "moved");
    assert_eq!(h["x-tenant"], "t1", "the claim replaces the client's value");
    assert_eq!(h["x-caller"], "c-1:acme");
    assert_eq!(h["x-client"], "127.0.0.1");
    assert_eq!(h["x-route"], "headers");
    assert_eq!(h["x-rid"], "rid-transform-1");
    assert!(
        !h.contains_key("x-region-claim"),
        "a template without its value skips the header"
    );
    assert!(
        !h.contains_key("x-note"),
        "a rendered value that is not a header value is dropped"
    );
    let dropped = node
        .gateway
        .metrics()
        .render()
        .lines()
        .find(|line| {
            line.starts_with("meridian_transform_headers_dropped_total{")
                && line.contains("route=\"headers\"")
                && line.contains("direction=\"request\"")
        })
        .map(str::to_owned);
    assert!(
        dropped.as_deref().is_some_and(|line| line.ends_with(" 1")),
        "{dropped:?}"
    );
    let via: Vec<_> = h.get_all("x-via").iter().collect();
    assert_eq!(via, ["client-proxy", "meridian/headers"]);
    // The identity headers are still the gateway's own.
    assert_eq!(h["x-consumer-id"], "c-1");

    assert!(reply.headers.get("x-internal").is_none());
    assert!(reply.headers.get("x-upstream-version").is_none());
    assert_eq!(reply.header("x-version"), "3");
    assert_eq!(reply.header("x-served-for"), "alice@t1");

    // An answer of an earlier stage (auth's 401) does not pass through
    // the transform stage.
    let refused = get(&node.url("/h/1")).await;
    assert_error(&refused, 401, "missing_credentials");
    assert!(refused.headers.get("x-served-for").is_none());

    // The proxy's own errors get the response headers, never a body transform.
    let dead = get(&node.url("/dead/xml")).await;
    assert_error(&dead, 502, "upstream_connect_failed");
    assert_eq!(dead.header("x-served-by"), "dead");
}

#[tokio::test]
async fn xml_responses_become_json() {
    let (_upstream, _jwks, _key, node) = setup().await;
    let reply = get(&node.url("/x2j/xml")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(
        reply.header("content-length"),
        reply.body.len().to_string(),
        "Content-Length follows the new body"
    );
    assert_eq!(
        reply.json(),
        json!({"order": {
            "@id": "42",
            "customer": "Ann & Bob",
            "item": [ {"@sku": "p1", "#text": "Pen"}, {"@sku": "p2", "#text": "Ink"} ],
            "note": null,
        }})
    );
    // Other content types stream through untouched.
    let text = get(&node.url("/x2j/text")).await;
    assert_eq!(text.status, 200);
    assert_eq!(text.header("content-type"), "text/plain");
    assert_eq!(&text.body[..], b"<not>json</not>");
}

#[tokio::test]
async fn json_requests_become_xml_for_a_legacy_backend() {
    let (upstream, _jwks, _key, node) = setup().await;
    let reply = post(
        &node.url("/j2x/submit"),
        "application/json",
        json!({"@id": 9, "customer": "Ann & Bob", "item": [{"@sku": "p1", "#text": "Pen"}, "Ink"]})
            .to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let seen = upstream.last();
    let expected = concat!(
        r#"<?xml version="1.0" encoding="UTF-8"?>"#,
        r#"<order id="9"><customer>Ann &amp; Bob</customer>"#,
        r#"<item sku="p1">Pen</item><item>Ink</item></order>"#
    );
    assert_eq!(String::from_utf8_lossy(&seen.body), expected);
    assert_eq!(
        seen.headers["content-type"],
        "application/xml; charset=utf-8"
    );
    assert_eq!(seen.headers["content-length"], expected.len().to_string());

    // And XML requests become JSON on the x2j route.
    post(&node.url("/x2j/submit"), "text/xml", ORDER_XML).await;
    let seen = upstream.last();
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["order"]["@id"], "42");
    assert_eq!(seen.headers["content-type"], "application/json");
    // A non-JSON body on the j2x route passes untouched.
    post(&node.url("/j2x/submit"), "text/plain", "plain").await;
    assert_eq!(&upstream.last().body[..], b"plain");
}

#[tokio::test]
async fn responses_are_filtered_and_reshaped() {
    let (_upstream, _jwks, _key, node) = setup().await;
    let denied = get(&node.url("/deny/pii")).await;
    assert_eq!(denied.status, 200);
    assert_eq!(
        denied.json(),
        json!({
            "id": 7,
            "users": [ { "name": "ann", "email": "ann@x" }, { "name": "bob", "email": "bob@x" } ],
            "meta": { "page": 1 },
        })
    );
    assert!(
        denied.headers.get(header::ETAG).is_none(),
        "a stale ETag goes"
    );
    let allowed = get(&node.url("/allow/pii")).await;
    assert_eq!(
        allowed.json(),
        json!({ "id": 7, "users": [ { "name": "ann" }, { "name": "bob" } ] })
    );
    let reshaped = get(&node.url("/reshape/pii")).await;
    let body = reshaped.json();
    assert_eq!(body["ref"], "db-9912");
    assert!(body.get("internal_id").is_none());
    assert_eq!(body["paging"]["current"], 1);
    assert_eq!(body["meta"], json!({ "debug": { "sql": "select *" } }));
}

#[tokio::test]
async fn malformed_and_hostile_xml_get_json_errors() {
    let (upstream, _jwks, _key, node) = setup().await;
    assert_error(
        &get(&node.url("/x2j/bad-xml")).await,
        502,
        "upstream_invalid_xml",
    );
    let before = upstream.count();
    assert_error(
        &post(&node.url("/x2j/submit"), "application/xml", "<a><b></a>").await,
        400,
        "invalid_xml",
    );
    assert_eq!(upstream.count(), before, "a refused body is not forwarded");

    let peak = peak_rss_kib();
    let started = tokio::time::Instant::now();
    assert_error(
        &get(&node.url("/x2j/laughs")).await,
        502,
        "upstream_xml_dtd_forbidden",
    );
    assert_error(
        &post(&node.url("/x2j/submit"), "application/xml", BILLION_LAUGHS).await,
        400,
        "xml_dtd_forbidden",
    );
    // Expanded, lol9 is 10^9 "lol"s: refusing it takes neither time nor memory.
    assert!(started.elapsed() < Duration::from_secs(5));
    // Coarse (other tests share the process): expanded, the document would
    // take about 3 GB.
    if let (Some(before), Some(after)) = (peak, peak_rss_kib()) {
        let grown = after.saturating_sub(before);
        assert!(grown < 512 * 1024, "peak RSS grew {grown} KiB");
    }
}

/// The process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[tokio::test]
async fn deeply_nested_json_is_refused_not_overflowed() {
    let (upstream, _jwks, _key, node) = setup().await;
    let before = upstream.count();
    assert_error(
        &post(
            &node.url("/j2x/submit"),
            "application/json",
            "[".repeat(100_000),
        )
        .await,
        400,
        "body_too_deep",
    );
    assert_eq!(upstream.count(), before, "a refused body is not forwarded");
    // Within serde_json's limit but past the route's max_depth (64).
    assert_error(
        &post(
            &node.url("/limits/submit"),
            "application/json",
            format!("{}1{}", "[".repeat(100), "]".repeat(100)),
        )
        .await,
        400,
        "body_too_deep",
    );
    assert_error(
        &get(&node.url("/deny/deep")).await,
        502,
        "upstream_body_too_deep",
    );
    // The node is fine afterwards.
    assert_eq!(get(&node.url("/deny/pii")).await.status, 200);
}

#[tokio::test]
async fn bodies_are_buffered_only_within_limits() {
    let (upstream, _jwks, _key, node) = setup().await;
    let big = json!({ "x": "y".repeat(2000) }).to_string();
    assert_error(
        &post(&node.url("/limits/submit"), "application/json", big).await,
        413,
        "payload_too_large",
    );
    let ok = post(
        &node.url("/limits/submit"),
        "application/json",
        json!({ "x": 1, "y": 2 }).to_string(),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(&upstream.last().body[..], br#"{"y":2}"#);
    assert_error(
        &get(&node.url("/limits/big")).await,
        502,
        "upstream_body_too_large",
    );
}

#[tokio::test]
async fn websockets_cross_a_header_transform_route_and_reloads() {
    let (upstream, jwks, _key, node) = setup().await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", node.proxy))
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["x-served-by"], "ws");
    socket.send(Message::text("before")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("before")
    );
    for round in 2..4 {
        let changed = yaml(&upstream, &jwks).replace(
            "X-Served-By: \"{route.name}\"",
            &format!("X-Served-By: \"{{route.name}}-{round}\""),
        );
        assert!(changed.contains(&format!("-{round}")));
        assert_eq!(node.apply(&changed).await.status, 200);
    }
    socket.send(Message::text("after")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("after")
    );
    // A new WebSocket gets the new configuration's headers.
    let (mut second, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", node.proxy))
            .await
            .unwrap();
    assert_eq!(response.headers()["x-served-by"], "ws-3");
    second
        .send(Message::binary(vec![1u8; 10_000]))
        .await
        .unwrap();
    assert_eq!(
        second.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8; 10_000])
    );
    socket.close(None).await.unwrap();
    second.close(None).await.unwrap();
}
