//! Edge policies end to end: IP allow/deny (IPv4, IPv6, trusted proxies),
//! the WAF, CORS and security headers, on real nodes and mock upstreams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::upstream::json;
use crate::{MockUpstream, Reply, TestNode, get, send};

async fn call(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(Full::new(body.into())).expect("valid request")).await
}

async fn get_h(url: &str, headers: &[(&str, &str)]) -> Reply {
    call(Method::GET, url, headers, Bytes::new()).await
}

async fn metrics(node: &TestNode) -> String {
    String::from_utf8_lossy(&get(&node.admin_url("/metrics")).await.body).into_owned()
}

// === IP lists ===

#[tokio::test]
async fn ip_lists_with_trusted_proxies_global_and_per_route() {
    let upstream = MockUpstream::echo("u").await;
    let yaml = format!(
        r#"
upstreams: {{ u: {{ targets: ["{}"] }} }}
policies:
  trusted_proxies: [127.0.0.0/8]
  ip: {{ deny: [198.51.100.0/24, "2001:db8:bad::/48", 192.0.2.66] }}
routes:
  - name: admin
    match: {{ path_prefix: /admin }}
    upstream: u
    policies: {{ ip: {{ allow: [192.0.2.0/24, "2001:db8::/32"] }} }}
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: u }}
"#,
        upstream.target()
    );
    let node = TestNode::start(&yaml).await;
    let xff = |value: &'static str| [("x-forwarded-for", value)];

    // The loopback peer is a trusted proxy: the client is the XFF address.
    for (path, client, status) in [
        ("/api", "203.0.113.5", 200),
        ("/api", "198.51.100.7", 403),
        ("/api", "2001:db8:bad::1", 403),
        ("/api", "2001:db8:0:1::1", 200),
        ("/admin", "192.0.2.10", 200),
        ("/admin", "2001:db8::10", 200),
        ("/admin", "203.0.113.5", 403),
        // Allowed by the route, denied globally: deny wins.
        ("/admin", "192.0.2.66", 403),
    ] {
        let reply = get_h(&node.url(path), &xff(client)).await;
        assert_eq!(reply.status, status, "{path} from {client}");
        if status == 403 {
            assert_eq!(reply.error_code(), "ip_denied");
            assert_eq!(reply.header("content-type"), "application/json");
        }
    }
    assert_eq!(
        upstream.count(),
        4,
        "denied requests never reach the upstream"
    );

    // A forged leftmost entry does not help: the rightmost untrusted hop counts.
    let forged = get_h(
        &node.url("/admin"),
        &[("x-forwarded-for", "192.0.2.10, 203.0.113.9")],
    )
    .await;
    assert_eq!(forged.status, 403);
    let hidden = get_h(
        &node.url("/api"),
        &[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 127.0.0.5")],
    )
    .await;
    assert_eq!(
        hidden.status, 200,
        "trusted hops are skipped from the right"
    );
    // No XFF: the client is the loopback peer, not on the route's allow list.
    assert_eq!(get(&node.url("/admin")).await.status, 403);

    let text = metrics(&node).await;
    assert!(
        text.contains(r#"meridian_ip_denied_total{scope="global",rule="deny"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"meridian_ip_denied_total{scope="route",rule="allow"} 3"#),
        "{text}"
    );
}

#[tokio::test]
async fn forwarded_for_is_ignored_without_trusted_proxies() {
    let upstream = MockUpstream::echo("u").await;
    let yaml = format!(
        r#"
upstreams: {{ u: {{ targets: ["{}"] }} }}
policies: {{ ip: {{ allow: [10.0.0.0/8] }} }}
routes: [ {{ name: api, upstream: u }} ]
"#,
        upstream.target()
    );
    let node = TestNode::start(&yaml).await;
    let forged = get_h(&node.url("/"), &[("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(
        forged.status, 403,
        "the socket peer (127.0.0.1) is the client"
    );
    assert_eq!(forged.error_code(), "ip_denied");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn ipv6_peers_are_matched_directly() {
    let upstream = MockUpstream::echo("u").await;
    let yaml = format!(
        r#"
upstreams: {{ u: {{ targets: ["{}"] }} }}
routes:
  - {{ name: open, match: {{ path_prefix: /open }}, upstream: u, policies: {{ ip: {{ deny: ["::1"] }} }} }}
  - {{ name: v6, match: {{ path_prefix: /v6 }}, upstream: u, policies: {{ ip: {{ allow: ["::1/128"] }} }} }}
  - {{ name: v4, match: {{ path_prefix: /v4 }}, upstream: u, policies: {{ ip: {{ allow: [127.0.0.0/8] }} }} }}
"#,
        upstream.target()
    );
    let node = TestNode::start_with(&yaml, |raw| raw.listen.proxy = "[::1]:0".into()).await;
    assert!(node.proxy.is_ipv6());
    let url = |path: &str| format!("http://{}{path}", node.proxy);
    assert_eq!(get(&url("/open")).await.status, 403);
    assert_eq!(get(&url("/v6")).await.status, 200);
    assert_eq!(get(&url("/v4")).await.status, 403);
    assert_eq!(upstream.count(), 1);
}

// === WAF ===

/// An upstream that answers with the length and FNV-1a hash of the body it got.
struct BodyEcho {
    addr: SocketAddr,
    seen: Arc<Mutex<usize>>,
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl BodyEcho {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let counter = counter.clone();
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            *counter.lock().unwrap() += 1;
                            let value = match body {
                                Ok(body) => {
                                    serde_json::json!({"len": body.len(), "hash": fnv(&body).to_string()})
                                }
                                Err(e) => serde_json::json!({"error": e.to_string()}),
                            };
                            Ok::<_, Infallible>(json(StatusCode::OK, value))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    fn count(&self) -> usize {
        *self.seen.lock().unwrap()
    }
}

async fn waf_node() -> (TestNode, MockUpstream, BodyEcho) {
    let upstream = MockUpstream::echo("u").await;
    let bodies = BodyEcho::start().await;
    let yaml = format!(
        r#"
upstreams:
  u: {{ targets: ["{}"] }}
  b: {{ targets: ["{}"] }}
policies:
  waf: {{ mode: block, headers: [X-Search] }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: u }}
  - {{ name: watch, match: {{ path_prefix: /watch }}, upstream: u, policies: {{ waf: {{ mode: detect }} }} }}
  - {{ name: raw, match: {{ path_prefix: /raw }}, upstream: u, policies: {{ waf: {{ mode: "off" }} }} }}
  - {{ name: upload, match: {{ path_prefix: /upload }}, upstream: b, max_body: 4MiB }}
"#,
        upstream.target(),
        bodies.addr
    );
    (TestNode::start(&yaml).await, upstream, bodies)
}

#[tokio::test]
async fn waf_blocks_attacks_everywhere_and_the_backend_sees_nothing() {
    let (node, upstream, _bodies) = waf_node().await;
    let json_type = [("content-type", "application/json")];
    let form_type = [("content-type", "application/x-www-form-urlencoded")];
    let cases: Vec<(Method, String, Vec<(&str, &str)>, &str, &str)> = vec![
        (
            Method::GET,
            "/api/users/1%27%20OR%20%271%27=%271".into(),
            vec![],
            "",
            "sqli-tautology",
        ),
        (
            Method::GET,
            "/api/items?id=1%20UNION%20SELECT%20password%20FROM%20users".into(),
            vec![],
            "",
            "sqli-union",
        ),
        (
            Method::GET,
            "/api/search?q=%3Cscript%3Ealert(1)%3C/script%3E".into(),
            vec![],
            "",
            "xss-script",
        ),
        (
            Method::GET,
            "/api/files?name=..%2F..%2Fetc%2Fpasswd".into(),
            vec![],
            "",
            "traversal-dotdot",
        ),
        (
            Method::GET,
            "/api/ping?host=127.0.0.1%3Bcat%20/tmp/x".into(),
            vec![],
            "",
            "cmdi-chain",
        ),
        (
            Method::GET,
            "/api/x".into(),
            vec![("user-agent", "sqlmap/1.7")],
            "",
            "scanner-agent",
        ),
        (
            Method::GET,
            "/api/x".into(),
            vec![("referer", "http://a/?q=<script>x</script>")],
            "",
            "xss-script",
        ),
        (
            Method::GET,
            "/api/x".into(),
            vec![("cookie", "id=1' or '1'='1")],
            "",
            "sqli-tautology",
        ),
        (
            Method::GET,
            "/api/x".into(),
            vec![("x-search", "<img src=x onerror=alert(1)>")],
            "",
            "xss-handler",
        ),
        (
            Method::POST,
            "/api/users".into(),
            json_type.to_vec(),
            r#"{"name":"<script>alert(1)</script>"}"#,
            "xss-script",
        ),
        (
            Method::POST,
            "/api/login".into(),
            form_type.to_vec(),
            "user=admin%27--&pass=x",
            "sqli-comment",
        ),
        (
            Method::POST,
            "/api/run".into(),
            vec![("content-type", "text/plain")],
            "x; rm -rf /",
            "cmdi-chain",
        ),
    ];
    for (method, path, headers, body, rule) in cases {
        let reply = call(method, &node.url(&path), &headers, body).await;
        assert_eq!(reply.status, 403, "{path} {headers:?} {body}");
        assert_eq!(reply.error_code(), "waf_blocked");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(rule), "{path}: {message}, wanted {rule}");
    }
    assert_eq!(upstream.count(), 0, "nothing blocked reached the backend");
    let text = metrics(&node).await;
    assert!(
        text.contains(r#"meridian_waf_matches_total{rule="xss-script",mode="block"} 3"#),
        "{text}"
    );
}

#[tokio::test]
async fn waf_detect_forwards_and_counts_off_forwards_and_ordinary_traffic_passes() {
    let (node, upstream, _bodies) = waf_node().await;
    let attack = "?q=1%27%20or%20%271%27=%271";
    let watched = get(&node.url(&format!("/watch{attack}"))).await;
    assert_eq!(watched.status, 200);
    let raw = get(&node.url(&format!("/raw{attack}"))).await;
    assert_eq!(raw.status, 200);
    assert_eq!(upstream.count(), 2);
    let text = metrics(&node).await;
    assert!(
        text.contains(r#"meridian_waf_matches_total{rule="sqli-tautology",mode="detect"} 1"#),
        "{text}"
    );
    assert!(!text.contains(r#"mode="block""#), "{text}");

    let ordinary: Vec<(Method, &str, Vec<(&str, &str)>, &str)> = vec![
        (Method::GET, "/api/search?q=O%27Brien", vec![], ""),
        (
            Method::GET,
            "/api/search?q=rock+%27n%27+roll&page=2",
            vec![],
            "",
        ),
        (
            Method::GET,
            "/api/search?q=Tom+%26+Jerry&sort=-date",
            vec![],
            "",
        ),
        (
            Method::GET,
            "/api/auth/callback?redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb%3Fa%3D1%26b%3D2&state=xyz",
            vec![],
            "",
        ),
        (
            Method::GET,
            "/api/go?next=https://example.com/a/b?c=d",
            vec![],
            "",
        ),
        (Method::GET, "/api/users/O'Brien", vec![], ""),
        (
            Method::GET,
            "/api/items?filter[price][gte]=10&fields=id,name",
            vec![],
            "",
        ),
        (
            Method::GET,
            "/api/x",
            vec![
                (
                    "user-agent",
                    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15",
                ),
                ("referer", "https://www.example.com/search?q=O%27Brien&x=1"),
                ("cookie", "session=abc.def.ghi; theme=dark"),
            ],
            "",
        ),
        (
            Method::POST,
            "/api/users",
            vec![("content-type", "application/json")],
            r#"{"name":"Miles O'Brien","email":"miles@example.com","bio":"Tom & Jerry fan; likes 1 < 2","site":"https://example.com/?a=b&c=d","tags":["x","y"]}"#,
        ),
        (
            Method::POST,
            "/api/login",
            vec![("content-type", "application/x-www-form-urlencoded")],
            "user=o%27brien&pass=p%40ss%27word&remember=on",
        ),
    ];
    for (method, path, headers, body) in ordinary {
        let reply = call(method, &node.url(path), &headers, body).await;
        assert_eq!(
            reply.status, 200,
            "{path} {headers:?} {body}: {:?}",
            reply.body
        );
    }
}

#[tokio::test]
async fn bodies_reach_the_backend_intact() {
    let (node, _upstream, bodies) = waf_node().await;
    // 1 MiB of ordinary JSON: the first 8 KiB are inspected, the rest streams.
    let mut doc = String::from("[");
    let mut i = 0;
    while doc.len() < 1 << 20 {
        doc.push_str(&format!(
            r#"{{"id":{i},"name":"item {i}","note":"O'Brien & Sons"}},"#
        ));
        i += 1;
    }
    doc.push_str("{}]");
    let body = Bytes::from(doc);
    for content_type in ["application/json", "application/octet-stream"] {
        let reply = call(
            Method::POST,
            &node.url("/upload"),
            &[("content-type", content_type)],
            body.clone(),
        )
        .await;
        assert_eq!(reply.status, 200, "{content_type}: {:?}", reply.body);
        let answer = reply.json();
        assert_eq!(answer["len"], body.len(), "{content_type}");
        assert_eq!(answer["hash"], fnv(&body).to_string(), "{content_type}");
    }
    // A body smaller than the inspected prefix is forwarded whole too.
    let small = Bytes::from_static(br#"{"a":"b"}"#);
    let reply = call(
        Method::PUT,
        &node.url("/upload"),
        &[("content-type", "application/json")],
        small.clone(),
    )
    .await;
    assert_eq!(reply.json()["hash"], fnv(&small).to_string());
    // An attack in the inspected prefix of a large body is refused.
    let mut bad = br#"{"x":"<script>"}"#.to_vec();
    bad.extend(std::iter::repeat_n(b' ', 100_000));
    let blocked = call(
        Method::POST,
        &node.url("/upload"),
        &[("content-type", "application/json")],
        bad,
    )
    .await;
    assert_eq!(blocked.status, 403);
    assert_eq!(bodies.count(), 3);
}

// === CORS ===

async fn cors_node() -> (TestNode, MockUpstream) {
    let upstream = MockUpstream::start(|_| async {
        let mut response = json(StatusCode::OK, serde_json::json!({"ok": true}));
        let headers = response.headers_mut();
        headers.insert("access-control-allow-origin", "*".parse().unwrap());
        headers.insert("server", "Apache/2.4.1 (Unix)".parse().unwrap());
        headers.insert("x-powered-by", "PHP/5.6".parse().unwrap());
        headers.insert("x-debug-token", "abc123".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        response
    })
    .await;
    let yaml = format!(
        r#"
upstreams: {{ u: {{ targets: ["{}"] }} }}
policies:
  cors:
    allow_origins: ["https://app.example.com", "https://*.example.org"]
    allow_methods: [GET, POST, DELETE]
    allow_headers: [Content-Type, Authorization]
    expose_headers: [X-Request-Id]
    allow_credentials: true
    max_age: 10m
  headers: {{ remove: [X-Debug-Token] }}
routes:
  - {{ name: api, match: {{ path_prefix: /api, methods: [GET, POST, DELETE] }}, upstream: u, auth: [api_key] }}
  - name: public
    match: {{ path_prefix: /public }}
    upstream: u
    policies:
      cors: {{ allow_origins: ["*"] }}
      headers: {{ set: {{ Content-Security-Policy: "default-src 'self'", X-Frame-Options: "" }} }}
  - {{ name: plain, match: {{ path_prefix: /plain }}, upstream: u }}
"#,
        upstream.target()
    );
    (TestNode::start(&yaml).await, upstream)
}

#[tokio::test]
async fn cors_preflights_are_answered_at_the_gateway() {
    let (node, upstream) = cors_node().await;
    let preflight =
        |path: &'static str, origin: &'static str, method: &'static str, headers: &'static str| {
            let url = node.url(path);
            async move {
                call(
                    Method::OPTIONS,
                    &url,
                    &[
                        ("origin", origin),
                        ("access-control-request-method", method),
                        ("access-control-request-headers", headers),
                    ],
                    Bytes::new(),
                )
                .await
            }
        };
    // The route needs an API key and lists no OPTIONS: the preflight is
    // still answered, without credentials, by the gateway.
    let ok = preflight(
        "/api/orders/7",
        "https://app.example.com",
        "DELETE",
        "content-type, authorization",
    )
    .await;
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    assert_eq!(ok.header("access-control-allow-credentials"), "true");
    assert_eq!(
        ok.header("access-control-allow-methods"),
        "GET, POST, DELETE"
    );
    assert_eq!(
        ok.header("access-control-allow-headers"),
        "content-type, authorization"
    );
    assert_eq!(ok.header("access-control-max-age"), "600");
    assert!(ok.header("vary").contains("Origin"));
    assert_eq!(ok.header("x-content-type-options"), "nosniff");
    let pattern = preflight("/api/orders", "https://shop.eu.example.org", "GET", "").await;
    assert_eq!(pattern.status, 204);
    assert_eq!(
        pattern.header("access-control-allow-origin"),
        "https://shop.eu.example.org"
    );
    for (path, origin, method, headers) in [
        ("/api/x", "https://evil.example.com", "GET", ""),
        ("/api/x", "https://example.org", "GET", ""),
        ("/plain/x", "https://app.example.com", "PATCH", ""),
        ("/api/x", "https://app.example.com", "GET", "x-secret"),
    ] {
        let refused = preflight(path, origin, method, headers).await;
        assert_eq!(refused.status, 403, "{origin} {method} {headers}");
        assert_eq!(refused.error_code(), "cors_refused");
        assert_eq!(refused.header("access-control-allow-origin"), "");
    }
    assert_eq!(upstream.count(), 0, "no preflight reached the backend");
    let text = metrics(&node).await;
    assert!(
        text.contains(r#"meridian_cors_requests_total{kind="preflight",result="refused"} 4"#),
        "{text}"
    );
}

#[tokio::test]
async fn cors_headers_on_actual_requests_and_security_headers() {
    let (node, upstream) = cors_node().await;
    let allowed = get_h(
        &node.url("/plain/x"),
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    assert_eq!(allowed.header("access-control-allow-credentials"), "true");
    assert_eq!(
        allowed.header("access-control-expose-headers"),
        "X-Request-Id"
    );
    assert_eq!(allowed.header("vary"), "Origin");

    let refused = get_h(&node.url("/plain/x"), &[("origin", "https://evil.com")]).await;
    assert_eq!(refused.status, 200, "CORS is enforced by the browser");
    assert_eq!(
        refused.header("access-control-allow-origin"),
        "",
        "the upstream's `*` is not passed on"
    );
    assert_eq!(refused.header("access-control-allow-credentials"), "");
    assert_eq!(refused.header("vary"), "Origin");
    let no_origin = get(&node.url("/plain/x")).await;
    assert_eq!(no_origin.header("vary"), "Origin");

    let star = get_h(&node.url("/public"), &[("origin", "https://anyone.net")]).await;
    assert_eq!(star.header("access-control-allow-origin"), "*");
    assert_eq!(star.header("access-control-allow-credentials"), "");

    // Security headers: defaults, route override, internal headers removed.
    for reply in [&allowed, &refused] {
        assert_eq!(reply.header("x-content-type-options"), "nosniff");
        assert_eq!(reply.header("x-frame-options"), "DENY");
        assert_eq!(reply.header("referrer-policy"), "no-referrer");
        assert!(
            reply
                .header("content-security-policy")
                .contains("default-src 'none'")
        );
        assert!(!reply.header("permissions-policy").is_empty());
        assert_eq!(reply.header("server"), "");
        assert_eq!(reply.header("x-powered-by"), "");
        assert_eq!(reply.header("x-debug-token"), "");
        assert_eq!(reply.header("x-kept"), "1");
    }
    assert_eq!(star.header("content-security-policy"), "default-src 'self'");
    assert_eq!(star.header("x-frame-options"), "");
    assert_eq!(star.header("x-content-type-options"), "nosniff");
    assert_eq!(star.header("server"), "");
    assert_eq!(upstream.count(), 4);

    // Gateway errors carry them too: no route (404), no credentials (401).
    for (path, status) in [("/nowhere", 404), ("/api/x", 401)] {
        let error = get(&node.url(path)).await;
        assert_eq!(error.status, status);
        assert_eq!(error.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(error.header("x-frame-options"), "DENY", "{path}");
    }
    let bad =
        crate::client::raw(node.proxy, b"GET /a/%2e%2e%2fb HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(
        bad.to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{bad}"
    );
    assert_eq!(upstream.count(), 4);
}

#[tokio::test]
async fn the_waf_reads_xml_and_multipart_bodies() {
    let upstream = MockUpstream::echo("u").await;
    let yaml = format!(
        r#"
upstreams: {{ u: {{ targets: ["{}"] }} }}
policies: {{ waf: {{ mode: block }} }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: u }}
"#,
        upstream.target()
    );
    let node = TestNode::start(&yaml).await;
    let url = node.url("/api/upload");
    let xml = [("content-type", "application/xml")];
    let attack = call(
        Method::POST,
        &url,
        &xml,
        "<a><b>&lt;script&gt;alert(1)&lt;/script&gt;</b></a>",
    )
    .await;
    assert_eq!(attack.status, 403);
    assert_eq!(attack.error_code(), "waf_blocked");
    let fine = call(
        Method::POST,
        &url,
        &xml,
        "<select><option>Tom &amp; Jerry</option></select>",
    )
    .await;
    assert_eq!(fine.status, 200);

    let multipart = [("content-type", "multipart/form-data; boundary=B")];
    let form = |content: &str| {
        format!(
            "--B\r\nContent-Disposition: form-data; name=\"comment\"\r\n\r\n{content}\r\n--B--\r\n"
        )
    };
    let attack = call(Method::POST, &url, &multipart, form("x' OR '1'='1")).await;
    assert_eq!(attack.status, 403);
    let fine = call(Method::POST, &url, &multipart, form("a kind word")).await;
    assert_eq!(fine.status, 200);
    assert_eq!(
        upstream.count(),
        2,
        "only the clean requests reached the backend"
    );
    node.stop().await;
}
