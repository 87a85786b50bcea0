//! Bad input: every case gets a clear 4xx and reaches no upstream.

use crate::client::{raw, raw_status};
use crate::{MockUpstream, TestNode, get};

/// A node with an `admin` route that only `/admin` reaches, a public API
/// route, and hosts restricted to example.com names.
async fn node() -> (TestNode, MockUpstream, MockUpstream) {
    let public = MockUpstream::echo("public").await;
    let admin = MockUpstream::echo("admin").await;
    let yaml = format!(
        r#"
upstreams:
  public: {{ targets: ["{}"] }}
  admin: {{ targets: ["{}"] }}
routes:
  - {{ name: admin, match: {{ path_prefix: /admin, hosts: [api.example.com] }}, upstream: admin }}
  - {{ name: api, match: {{ path_prefix: /api, hosts: [api.example.com] }}, upstream: public }}
"#,
        public.target(),
        admin.target()
    );
    let node = TestNode::start_with(&yaml, |raw| {
        raw.limits.max_header_bytes = "4KiB".parse().unwrap();
        raw.limits.max_uri_bytes = "1KiB".parse().unwrap();
        raw.limits.max_headers = 20;
    })
    .await;
    (node, public, admin)
}

async fn status_of(node: &TestNode, request: &str) -> (u16, String) {
    let answer = raw(node.proxy, request.as_bytes()).await;
    (raw_status(&answer), answer)
}

#[tokio::test]
async fn malformed_framing_and_syntax_is_refused() {
    let (node, public, admin) = node().await;
    let cases = [
        (
            "GET /api HTTP/1.1 extra\r\nHost: api.example.com\r\n\r\n",
            400,
        ),
        ("GET  /api HTTP/1.1\r\nHost: api.example.com\r\n\r\n", 400),
        ("GARBAGE\r\n\r\n", 400),
        (
            "GET /api HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
        ),
        (
            "GET /api HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 5, 6\r\n\r\nhello",
            400,
        ),
        (
            "POST /api HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            400,
        ),
        (
            "GET /api HTTP/1.1\r\nHost: api.example.com\r\nX-Bad: a\x01b\r\n\r\n",
            400,
        ),
        (
            "GET /api HTTP/1.1\r\nHost: api.example.com\r\nBad Header: x\r\n\r\n",
            400,
        ),
        ("GET /api HTTP/1.1\r\n\r\n", 400),
        ("GET /api HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (
            "GET /api HTTP/1.1\r\nHost: api.example.com\r\nHost: evil.example.net\r\n\r\n",
            400,
        ),
        (
            "GET http://evil.example.net/api HTTP/1.1\r\nHost: evil.example.net\r\n\r\n",
            404,
        ),
        (
            "GET http://api.example.com/api HTTP/1.1\r\nHost: other.example.com\r\n\r\n",
            400,
        ),
        (
            "GET ftp://api.example.com/api HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            400,
        ),
        (
            "GET /api/%2e%2e/%2e%2e/etc HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            404,
        ),
        (
            "GET /api/a%2fb HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            400,
        ),
        (
            "GET /api/a%zz HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            400,
        ),
        (
            "GET /api/a\\b HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            400,
        ),
    ];
    for (request, expected) in cases {
        let (status, answer) = status_of(&node, request).await;
        assert_eq!(status, expected, "{request:?}\n{answer}");
    }
    assert_eq!(public.count() + admin.count(), 0, "nothing was forwarded");
}

#[tokio::test]
async fn errors_have_the_json_body() {
    let (node, _public, _admin) = node().await;
    let (_, answer) = status_of(
        &node,
        "GET /api HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(json["error"]["code"], "ambiguous_framing");
    assert!(
        json["error"]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/json")
    );
}

#[tokio::test]
async fn dot_segments_cannot_reach_other_routes() {
    let (node, public, admin) = node().await;
    for path in [
        "/api/../admin/secrets",
        "/api/%2e%2e/admin/secrets",
        "/api/.%2E/admin/secrets",
        "//api/./../admin/secrets",
    ] {
        let reply = crate::client::get_with(&node.url(path), &[("host", "api.example.com")]).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            reply.json()["upstream"],
            "admin",
            "{path} is /admin/secrets, exactly as if sent so"
        );
        assert_eq!(
            admin.last().uri,
            "/admin/secrets",
            "{path}: the upstream sees the normalised path"
        );
    }
    let reply = crate::client::get_with(
        &node.url("/api/v1/../../api/x"),
        &[("host", "api.example.com")],
    )
    .await;
    assert_eq!(reply.json()["upstream"], "public");
    assert_eq!(public.last().uri, "/api/x");
    // The query goes along, whether the path needed normalising or not.
    for path in ["/api/./x?q=1&r=/../", "/api/x?q=1&r=/../"] {
        let reply = crate::client::get_with(&node.url(path), &[("host", "api.example.com")]).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(public.last().uri, "/api/x?q=1&r=/../", "{path}");
    }
}

#[tokio::test]
async fn size_limits() {
    let (node, public, _admin) = node().await;
    let long_target = format!(
        "GET /api/{} HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        "a".repeat(2000)
    );
    let (status, answer) = status_of(&node, &long_target).await;
    assert_eq!(status, 414, "{answer}");
    assert!(answer.contains("uri_too_long"));

    let big_header = format!(
        "GET /api HTTP/1.1\r\nHost: api.example.com\r\nX-Big: {}\r\n\r\n",
        "b".repeat(5000)
    );
    let (status, answer) = status_of(&node, &big_header).await;
    assert_eq!(status, 431, "{answer}");
    assert!(answer.contains("headers_too_large"));

    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _) = status_of(
        &node,
        &format!("GET /api HTTP/1.1\r\nHost: api.example.com\r\n{many}\r\n"),
    )
    .await;
    assert_eq!(status, 431);

    let huge_header = format!(
        "GET /api HTTP/1.1\r\nHost: api.example.com\r\nX-Huge: {}\r\n\r\n",
        "c".repeat(200_000)
    );
    let (status, _) = status_of(&node, &huge_header).await;
    assert_eq!(status, 431, "beyond hyper's buffer too");

    let (status, answer) = status_of(
        &node,
        "POST /api HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 99999999999\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(public.count(), 0);
}

#[tokio::test]
async fn no_route_is_404_json() {
    let (node, _public, _admin) = node().await;
    let reply = get(&node.url("/nowhere")).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), "no_route");
    assert_eq!(
        reply.json()["error"]["request_id"],
        reply.header("x-request-id")
    );
}
