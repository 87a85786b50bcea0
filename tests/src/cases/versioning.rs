//! API versioning: sources, defaults, unknown versions, deprecation.

use crate::client::get_with;
use crate::{MockUpstream, TestNode};

async fn node(unknown: &str) -> (TestNode, MockUpstream, MockUpstream) {
    let v1 = MockUpstream::echo("v1").await;
    let v2 = MockUpstream::echo("v2").await;
    let yaml = format!(
        r#"
upstreams:
  v1: {{ targets: ["{}"] }}
  v2: {{ targets: ["{}"] }}
routes:
  - {{ name: users-v1, match: {{ path_prefix: /api }}, api: users, version: "1", upstream: v1,
      rewrite: {{ regex: {{ pattern: "^/api(?:/v[^/]+)?(/.*)?$", replacement: "/v1${{1}}" }} }} }}
  - {{ name: users-v2, match: {{ path_prefix: /api }}, api: users, version: "2", upstream: v2,
      rewrite: {{ regex: {{ pattern: "^/api(?:/v[^/]+)?(/.*)?$", replacement: "/v2${{1}}" }} }} }}
  - {{ name: other, match: {{ path_prefix: /other }}, upstream: v1 }}
versioning:
  users:
    match: {{ path_prefix: /api }}
    from: [path, {{ header: X-API-Version }}, {{ accept: acme }}, {{ query: version }}]
    supported: ["1", "2"]
    default: "2"
    unknown: {unknown}
    deprecated: {{ "1": {{ since: "2026-01-01T00:00:00Z", sunset: "2027-01-01T00:00:00Z", link: "https://docs.example.com/v2" }} }}
"#,
        v1.target(),
        v2.target()
    );
    (TestNode::start(&yaml).await, v1, v2)
}

#[tokio::test]
async fn every_source_selects_the_version() {
    let (node, v1, _v2) = node("reject").await;
    let cases: &[(&str, &[(&str, &str)], &str)] = &[
        ("/api/v1/users", &[], "v1"),
        ("/api/v2/users", &[], "v2"),
        ("/api/users", &[("x-api-version", "1")], "v1"),
        (
            "/api/users",
            &[("accept", "application/vnd.acme.v1+json")],
            "v1",
        ),
        (
            "/api/users",
            &[("accept", "text/html, application/vnd.acme.v1+json;q=0.9")],
            "v1",
        ),
        ("/api/users?version=1", &[], "v1"),
        ("/api/users", &[], "v2"),
        // The path comes first in `from`, so it beats the header.
        ("/api/v2/users", &[("x-api-version", "1")], "v2"),
    ];
    for (path, headers, expected) in cases {
        let reply = get_with(&node.url(path), headers).await;
        assert_eq!(reply.status, 200, "{path} {headers:?}");
        assert_eq!(reply.json()["upstream"], *expected, "{path} {headers:?}");
        assert_eq!(reply.header("x-api-version"), &expected[1..], "{path}");
    }
    assert_eq!(v1.last().uri, "/v1/users?version=1");
    assert_eq!(
        v1.last().headers["x-api-version"],
        "1",
        "the upstream learns the version"
    );
}

#[tokio::test]
async fn deprecated_versions_carry_deprecation_headers() {
    let (node, _v1, _v2) = node("reject").await;
    let reply = get_with(&node.url("/api/v1/users"), &[]).await;
    assert_eq!(reply.header("deprecation"), "@1767225600");
    assert_eq!(reply.header("sunset"), "Fri, 01 Jan 2027 00:00:00 GMT");
    assert_eq!(
        reply.header("link"),
        "<https://docs.example.com/v2>; rel=\"deprecation\""
    );
    let current = get_with(&node.url("/api/v2/users"), &[]).await;
    assert_eq!(current.header("deprecation"), "");
    let unversioned = get_with(&node.url("/other"), &[]).await;
    assert_eq!(
        unversioned.header("x-api-version"),
        "",
        "routes outside the API are untouched"
    );
}

#[tokio::test]
async fn unknown_versions_are_rejected_with_the_supported_list() {
    let (node, v1, v2) = node("reject").await;
    for (path, headers) in [
        ("/api/v9/users", &[][..]),
        ("/api/users", &[("x-api-version", "9")][..]),
        ("/api/users?version=nine", &[][..]),
        (
            "/api/users",
            &[("accept", "application/vnd.acme.v3+json")][..],
        ),
    ] {
        let reply = get_with(&node.url(path), headers).await;
        assert_eq!(reply.status, 400, "{path}");
        assert_eq!(reply.error_code(), "unsupported_api_version");
        assert_eq!(reply.header("x-api-supported-versions"), "1, 2");
    }
    assert_eq!(v1.count() + v2.count(), 0, "nothing was forwarded");
}

#[tokio::test]
async fn unknown_versions_can_fall_back() {
    let (node, _v1, v2) =
        node(r#"{ fallback: { version: "2", since: "2026-06-01T00:00:00Z", sunset: "2026-12-31T00:00:00Z" } }"#).await;
    let reply = get_with(&node.url("/api/v9/users/3?x=1"), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["upstream"], "v2");
    assert_eq!(
        v2.last().uri,
        "/v2/users/3?x=1",
        "the path version was rewritten to the served one"
    );
    assert_eq!(reply.header("x-api-version"), "2");
    assert_eq!(reply.header("deprecation"), "@1780272000");
    assert_eq!(reply.header("sunset"), "Thu, 31 Dec 2026 00:00:00 GMT");
    let by_header = get_with(&node.url("/api/users"), &[("x-api-version", "7")]).await;
    assert_eq!(by_header.json()["upstream"], "v2");
    assert_eq!(by_header.header("sunset"), "Thu, 31 Dec 2026 00:00:00 GMT");
}
