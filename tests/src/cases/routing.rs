//! Routing on host, method, path, headers and query; priority; rewrites.

use crate::client::get_with;
use crate::{MockUpstream, TestNode, get};

/// Three upstreams named a, b, c; `routes` refer to them.
async fn node(routes: &str) -> (TestNode, [MockUpstream; 3]) {
    let upstreams = [
        MockUpstream::echo("a").await,
        MockUpstream::echo("b").await,
        MockUpstream::echo("c").await,
    ];
    let yaml = format!(
        "upstreams:\n  a: {{ targets: [\"{}\"] }}\n  b: {{ targets: [\"{}\"] }}\n  c: {{ targets: [\"{}\"] }}\nroutes:\n{routes}",
        upstreams[0].target(),
        upstreams[1].target(),
        upstreams[2].target()
    );
    (TestNode::start(&yaml).await, upstreams)
}

/// Which upstream answered, or the error code.
async fn served(node: &TestNode, path: &str, headers: &[(&str, &str)]) -> String {
    let reply = get_with(&node.url(path), headers).await;
    if reply.status.is_success() {
        reply.json()["upstream"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    } else {
        format!("{} {}", reply.status.as_u16(), reply.error_code())
    }
}

#[tokio::test]
async fn hosts_exact_and_wildcard() {
    let (node, _u) = node(
        r#"
  - { name: exact, match: { hosts: [api.example.com] }, upstream: a }
  - { name: wild, match: { hosts: ["*.example.com"] }, upstream: b }
  - { name: deep, match: { hosts: ["*.eu.example.com"] }, upstream: c }
"#,
    )
    .await;
    assert_eq!(
        served(&node, "/", &[("host", "api.example.com")]).await,
        "a"
    );
    assert_eq!(
        served(&node, "/", &[("host", "API.Example.com:8080")]).await,
        "a",
        "case and port ignored"
    );
    assert_eq!(
        served(&node, "/", &[("host", "www.example.com")]).await,
        "b"
    );
    assert_eq!(
        served(&node, "/", &[("host", "x.eu.example.com")]).await,
        "c",
        "the longer wildcard wins"
    );
    assert_eq!(
        served(&node, "/", &[("host", "example.com")]).await,
        "404 no_route",
        "a wildcard needs a label"
    );
    assert_eq!(
        served(&node, "/", &[("host", "example.org")]).await,
        "404 no_route"
    );
}

#[tokio::test]
async fn methods_paths_params_headers_query() {
    let (node, _u) = node(
        r#"
  - { name: exact, match: { path: /users/me }, upstream: a }
  - { name: param, match: { path: "/users/{id}", methods: [GET] }, upstream: b }
  - { name: prefix, match: { path_prefix: /users }, upstream: c }
  - { name: header, match: { path_prefix: /h, headers: { x-tenant: acme, x-beta: { present: true } } }, upstream: a }
  - { name: header-regex, match: { path_prefix: /h, headers: { x-id: { regex: "[0-9]+" } } }, upstream: b }
  - { name: query, match: { path_prefix: /q, query: { debug: "1" } }, upstream: a }
  - { name: query-prefix, match: { path_prefix: /q, query: { lang: { prefix: en } } }, upstream: b }
"#,
    )
    .await;
    assert_eq!(served(&node, "/users/me", &[]).await, "a");
    assert_eq!(served(&node, "/users/42", &[]).await, "b");
    assert_eq!(
        served(&node, "/users/42/orders", &[]).await,
        "c",
        "exact param routes do not match deeper paths"
    );
    assert_eq!(served(&node, "/users", &[]).await, "c");
    assert_eq!(
        served(&node, "/usersx", &[]).await,
        "404 no_route",
        "prefixes end on segment boundaries"
    );
    let post = crate::send(
        http::Request::post(node.url("/users/42"))
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        post.json()["upstream"],
        "c",
        "POST skips the GET-only route"
    );
    assert_eq!(
        served(&node, "/h", &[("x-tenant", "acme"), ("x-beta", "1")]).await,
        "a"
    );
    assert_eq!(
        served(&node, "/h", &[("x-tenant", "acme")]).await,
        "404 no_route"
    );
    assert_eq!(served(&node, "/h", &[("x-id", "123")]).await, "b");
    assert_eq!(
        served(&node, "/h", &[("x-id", "123x")]).await,
        "404 no_route",
        "regex is anchored"
    );
    assert_eq!(served(&node, "/q?debug=1", &[]).await, "a");
    assert_eq!(served(&node, "/q?lang=en-GB&x=y", &[]).await, "b");
    assert_eq!(served(&node, "/q?debug=2", &[]).await, "404 no_route");
}

#[tokio::test]
async fn priority_rules_are_deterministic() {
    // Declared least specific first, so declaration order alone would be wrong.
    let (node, _u) = node(
        r#"
  - { name: any-prefix, match: { path_prefix: / }, upstream: a }
  - { name: api-prefix, match: { path_prefix: /api }, upstream: b }
  - { name: api-exact, match: { path: /api/status }, upstream: c }
  - { name: param, match: { path_prefix: "/api/{x}/items" }, upstream: a }
  - { name: literal, match: { path_prefix: /api/v1/items }, upstream: b }
  - { name: host-any, match: { path_prefix: /site }, upstream: a }
  - { name: host-wild, match: { path_prefix: /site, hosts: ["*.example.com"] }, upstream: b }
  - { name: host-exact, match: { path_prefix: /site, hosts: [www.example.com] }, upstream: c }
  - { name: plain, match: { path_prefix: /cond }, upstream: a }
  - { name: with-method, match: { path_prefix: /cond, methods: [GET] }, upstream: b }
  - { name: first, match: { path_prefix: /tie }, upstream: a }
  - { name: second, match: { path_prefix: /tie }, upstream: b }
"#,
    )
    .await;
    assert_eq!(
        served(&node, "/api/status", &[]).await,
        "c",
        "exact before prefix"
    );
    assert_eq!(
        served(&node, "/api/other", &[]).await,
        "b",
        "longer prefix first"
    );
    assert_eq!(served(&node, "/elsewhere", &[]).await, "a");
    assert_eq!(
        served(&node, "/api/v1/items/3", &[]).await,
        "b",
        "literal segments beat parameters"
    );
    assert_eq!(served(&node, "/api/v2/items/3", &[]).await, "a");
    assert_eq!(
        served(&node, "/site", &[("host", "www.example.com")]).await,
        "c",
        "exact host first"
    );
    assert_eq!(
        served(&node, "/site", &[("host", "shop.example.com")]).await,
        "b",
        "then wildcard"
    );
    assert_eq!(
        served(&node, "/site", &[("host", "other.org")]).await,
        "a",
        "then any host"
    );
    assert_eq!(
        served(&node, "/cond", &[]).await,
        "b",
        "more conditions first"
    );
    assert_eq!(
        served(&node, "/tie", &[]).await,
        "a",
        "then declaration order"
    );
}

#[tokio::test]
async fn explicit_priority_wins() {
    let (node, _u) = node(
        r#"
  - { name: exact, match: { path: /x }, upstream: a }
  - { name: boosted, priority: 5, match: { path_prefix: / }, upstream: b }
"#,
    )
    .await;
    assert_eq!(served(&node, "/x", &[]).await, "b");
}

#[tokio::test]
async fn rewrites_keep_the_query_string() {
    let (node, u) = node(
        r#"
  - { name: strip, match: { path_prefix: /api/v2 }, rewrite: { strip_prefix: /api/v2 }, upstream: a }
  - { name: replace, match: { path_prefix: /old }, rewrite: { replace_prefix: { from: /old, to: /new/base } }, upstream: b }
  - { name: regex, match: { path_prefix: /u }, rewrite: { regex: { pattern: "^/u/(\\d+)/(?P<rest>.*)$", replacement: "/users/$1/${rest}" } }, upstream: c }
"#,
    )
    .await;
    let uri = |reply: crate::Reply| reply.json()["uri"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        uri(get(&node.url("/api/v2/users/7?expand=orders&x=%20y")).await),
        "/users/7?expand=orders&x=%20y"
    );
    assert_eq!(uri(get(&node.url("/api/v2")).await), "/");
    assert_eq!(
        uri(get(&node.url("/old/a/b?q=1")).await),
        "/new/base/a/b?q=1"
    );
    assert_eq!(
        uri(get(&node.url("/u/42/orders/9?page=2")).await),
        "/users/42/orders/9?page=2"
    );
    assert_eq!(u[0].last().uri, "/");
}
