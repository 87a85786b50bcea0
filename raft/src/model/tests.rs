use super::*;

/// Parses `yaml` and compares the rendered errors with `expected`
/// (empty when the document must be valid).
#[track_caller]
fn check(yaml: &str, expected: &[&str]) {
    let rendered: Vec<String> = match GatewayConfig::parse(yaml) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(rendered, expected, "for document:\n{yaml}");
}

const UPSTREAM: &str = "upstreams:\n  users: { targets: [\"127.0.0.1:9001\"] }\n";

#[test]
fn empty_document_is_valid() {
    check("", &[]);
    check("{}", &[]);
}

#[test]
fn full_example_parses() {
    let yaml = r#"
upstreams:
  users:
    targets: ["127.0.0.1:9001", "users.internal:80", "[::1]:9002"]
    protocol: h2
    balance: { consistent_hash: { header: x-user } }
    timeouts: { connect: 250ms, request: 5s, idle: 30s }
    health: { path: /health, interval: 2s, timeout: 500ms }
    retries: { attempts: 1 }
routes:
  - name: users-v2
    priority: 5
    match:
      hosts: [api.example.com, "*.example.com"]
      path_prefix: /api/v2/users/{id}
      methods: [GET, POST]
      headers: { x-tenant: acme, x-debug: { present: true }, x-id: { regex: "[0-9]+" } }
      query: { beta: { prefix: "y" } }
    api: users
    version: "2"
    rewrite: { regex: { pattern: "^/api/v2/(?P<rest>.*)$", replacement: "/${rest}" } }
    upstream: users
    max_body: 10MiB
versioning:
  users:
    match: { path_prefix: /api }
    from: [path, { header: X-API-Version }, { accept: acme }, { query: version }]
    supported: ["1", "2"]
    default: "2"
    unknown: { fallback: { version: "2", sunset: "2027-01-01T00:00:00Z" } }
    deprecated: { "1": { since: "2026-01-01T00:00:00Z", link: "https://example.com/v1" } }
"#;
    let config = GatewayConfig::parse(yaml).expect("valid");
    let route = &config.routes[0];
    assert_eq!(route.max_body, Some(ByteSize(10 << 20)));
    assert_eq!(
        config.upstreams["users"].balance,
        Balance::ConsistentHash(HashKey::Header("x-user".into()))
    );
    assert!(matches!(
        config.versioning["users"].unknown,
        UnknownVersion::Fallback(_)
    ));
}

#[test]
fn the_examples_are_valid() {
    for (name, text) in [
        (
            "deploy/gateway.yaml",
            include_str!("../../../deploy/gateway.yaml"),
        ),
        (
            "cli/src/dev/gateway.yaml",
            include_str!("../../../cli/src/dev/gateway.yaml"),
        ),
    ] {
        let text = text
            .replace("{region_targets}", "{ eu-west: [\"127.0.0.1:1\"] }")
            .replace("{regions}", "eu-west, us-east")
            .replace("{users}", "127.0.0.1:2");
        if let Err(errors) = GatewayConfig::parse(&text) {
            panic!("{name}:\n{errors}");
        }
    }
}

#[test]
fn json_is_accepted() {
    check(
        r#"{"upstreams": {"u": {"targets": ["127.0.0.1:1"]}}, "routes": [{"name": "r", "upstream": "u"}]}"#,
        &[],
    );
}

#[test]
fn syntax_errors_name_the_location() {
    let errors = GatewayConfig::parse("routes:\n  - name: r\n    upstrem: u\n").unwrap_err();
    let text = errors.to_string();
    assert!(text.contains("unknown field `upstrem`"), "{text}");
    assert!(text.contains("line 3"), "{text}");
}

#[test]
fn upstream_rules() {
    check(
        "upstreams:\n  u: { targets: [] }\n",
        &["upstreams.u.targets ([]) must list at least one target (here or under region_targets)"],
    );
    check(
        "upstreams:\n  u: { targets: [\"a:0\", \"b\", \"a:80\", \"A:80\", \"[zz]:1\"] }\n",
        &[
            "upstreams.u.targets[0] (a:0) must end with a port in 1..=65535",
            "upstreams.u.targets[1] (b) must be host:port",
            "upstreams.u.targets[3] (A:80) must not be listed twice",
            "upstreams.u.targets[4] ([zz]:1) must be [ipv6]:port with a valid IPv6 address",
        ],
    );
    check(
        "upstreams:\n  u: { targets: [\"srv:_http._tcp.users.internal\", \"srv:\", \"srv:a..b\", \"srv:a b\"] }\n",
        &[
            "upstreams.u.targets[1] (srv:) must be srv: followed by a DNS name of at most 253 characters",
            "upstreams.u.targets[2] (srv:a..b) must be srv: followed by a DNS name (labels of letters, digits, '-', '_')",
            "upstreams.u.targets[3] (srv:a b) must be srv: followed by a DNS name (labels of letters, digits, '-', '_')",
        ],
    );
    check(
        "upstreams:\n  u:\n    targets: [\"a:1\"]\n    timeouts: { connect: 0s }\n    health: { path: health, interval: 1s, timeout: 2s, healthy_threshold: 0 }\n    outlier: { max_ejection_percent: 101 }\n    retries: { attempts: 11 }\n",
        &[
            "upstreams.u.timeouts.connect (0s) must be greater than zero",
            "upstreams.u.health.path (health) must start with '/'",
            "upstreams.u.health.timeout (2s) must not exceed upstreams.u.health.interval (1s)",
            "upstreams.u.health.healthy_threshold (0) must be at least 1",
            "upstreams.u.outlier.max_ejection_percent (101) must be at most 100",
            "upstreams.u.retries.attempts (11) must be at most 10",
        ],
    );
    check(
        "upstreams:\n  \"bad name\": { targets: [\"a:1\"] }\n",
        &["upstreams.bad name (bad name) must be a name of letters, digits, '-', '_' and '.'"],
    );
}

#[test]
fn region_targets_and_fallback() {
    let yaml = "upstreams:\n  u:\n    targets: [\"a:1\"]\n    region_targets: { us-east: [\"b:2\"], ap-south: [] }\n    fallback: [us-east, eu-west]\n";
    let config = GatewayConfig::parse(yaml).unwrap();
    let u = &config.upstreams["u"];
    assert_eq!(u.targets_in("eu-west"), ["a:1"]);
    assert_eq!(u.targets_in("us-east"), ["b:2"]);
    assert!(u.targets_in("ap-south").is_empty());
    let local = u.for_region("us-east");
    assert_eq!(local.targets, ["b:2"]);
    assert!(local.region_targets.is_empty());
    let fallback = u.fallback.as_ref().unwrap();
    assert_eq!(fallback.regions, ["us-east", "eu-west"]);
    assert_eq!(fallback.return_after, RegionFallback::RETURN_AFTER);
    // The full form, and the JSON it is replicated as.
    let full = GatewayConfig::parse(
        "upstreams:\n  u: { targets: [], region_targets: { eu-west: [\"a:1\"] }, fallback: { regions: [eu-west], return_after: 2s } }\n",
    )
    .unwrap();
    assert_eq!(
        full.upstreams["u"].fallback.as_ref().unwrap().return_after,
        Duration::from_secs(2)
    );
    let again = GatewayConfig::parse(&state::config_text(&full)).unwrap();
    assert_eq!(again.upstreams["u"], full.upstreams["u"]);

    check(
        "upstreams:\n  u: { targets: [], region_targets: { \"eu west\": [\"a:0\"], x: [] }, fallback: { regions: [x, \"y z\", x], return_after: 0s } }\n",
        &[
            "upstreams.u.region_targets.eu west (eu west) must be a region name of letters, digits, '-' and '_'",
            "upstreams.u.region_targets.eu west[0] (a:0) must end with a port in 1..=65535",
            "upstreams.u.fallback.regions[1] (y z) must be a region name of letters, digits, '-' and '_'",
            "upstreams.u.fallback.regions[2] (x) must not be listed twice",
            "upstreams.u.fallback.return_after (0s) must be greater than zero",
        ],
    );
    check(
        "upstreams:\n  u: { targets: [\"a:1\"], fallback: { regions: [] } }\n",
        &["upstreams.u.fallback.regions ([]) must list at least one region"],
    );
    let errors =
        GatewayConfig::parse("upstreams:\n  u: { targets: [\"a:1\"], fallback: eu-west }\n")
            .unwrap_err()
            .to_string();
    assert!(errors.contains("fallback is a list of regions"), "{errors}");
}

#[test]
fn route_rules() {
    let doc = |route: &str| format!("{UPSTREAM}routes:\n  - {route}\n");
    check(
        &doc("{ name: r, upstream: nope }"),
        &["routes[0].upstream (nope) must name a declared upstream"],
    );
    check(
        &doc("{ name: r, upstream: users, match: { path: /a, path_prefix: /b } }"),
        &["routes[0].match.path_prefix (/b) cannot be combined with match.path"],
    );
    check(
        &doc("{ name: r, upstream: users, match: { path: a/b } }"),
        &["routes[0].match.path (a/b) must start with '/'"],
    );
    check(
        &doc("{ name: r, upstream: users, match: { path_prefix: \"/u/{id\" } }"),
        &["routes[0].match.path_prefix (/u/{id) segment \"{id\" opens '{' without closing it"],
    );
    check(
        &doc("{ name: r, upstream: users, match: { path: \"/u/{id}/{id}\" } }"),
        &["routes[0].match.path (/u/{id}/{id}) parameter {id} appears twice"],
    );
    check(
        &doc("{ name: r, upstream: users, match: { path: \"/u/x{id}\" } }"),
        &[
            "routes[0].match.path (/u/x{id}) segment \"x{id}\": a parameter must be a whole segment, like {id}",
        ],
    );
    check(
        &doc("{ name: r, upstream: users, match: { path: /a/../b } }"),
        &["routes[0].match.path (/a/../b) must not contain '.' or '..' segments"],
    );
    check(
        &doc(
            "{ name: r, upstream: users, match: { hosts: [\"*.\", \"a:80\", \"x*.com\"], methods: [get] } }",
        ),
        &[
            "routes[0].match.hosts[0] (*.) must name a host",
            "routes[0].match.hosts[1] (a:80) must not carry a port (hosts match without the port)",
            "routes[0].match.hosts[2] (x*.com) must be a DNS name (or '*.' followed by one)",
            "routes[0].match.methods[0] (get) must be an uppercase HTTP method",
        ],
    );
    check(
        &doc(
            "{ name: r, upstream: users, match: { headers: { \"bad header\": x, y: { regex: \"(\" } } } }",
        ),
        &[
            "routes[0].match.headers (bad header) must be a valid header name",
            "routes[0].match.headers.y.regex (() must be a valid regular expression: regex parse error:\n    (\n    ^\nerror: unclosed group",
        ],
    );
    check(
        &format!(
            "{UPSTREAM}routes:\n  - {{ name: r, upstream: users }}\n  - {{ name: r, upstream: users }}\n"
        ),
        &["routes[1].name (r) must be unique among routes"],
    );
    check(
        &doc("{ name: r, upstream: users, max_body: 0 }"),
        &["routes[0].max_body (0) must be greater than zero"],
    );
}

#[test]
fn bad_byte_size_is_a_syntax_error() {
    let errors = GatewayConfig::parse(&format!(
        "{UPSTREAM}routes:\n  - {{ name: r, upstream: users, max_body: 10XB }}\n"
    ))
    .unwrap_err();
    assert!(
        errors.to_string().contains("unknown size unit \"XB\""),
        "{errors}"
    );
}

#[test]
fn rewrite_rules() {
    let doc = |rewrite: &str| {
        format!("{UPSTREAM}routes:\n  - {{ name: r, upstream: users, rewrite: {rewrite} }}\n")
    };
    check(
        &doc("{ strip_prefix: api }"),
        &["routes[0].rewrite.strip_prefix (api) must start with '/'"],
    );
    check(
        &doc("{ replace_prefix: { from: /a, to: b } }"),
        &["routes[0].rewrite.replace_prefix.to (b) must start with '/'"],
    );
    check(
        &doc("{ regex: { pattern: \"^/u/(\\\\d+)$\", replacement: \"/users/$2/${name}\" } }"),
        &[
            "routes[0].rewrite.regex.replacement (/users/$2/${name}) refers to $2, a group the pattern does not have",
            "routes[0].rewrite.regex.replacement (/users/$2/${name}) refers to $name, a group the pattern does not have",
        ],
    );
    check(
        &doc("{ regex: { pattern: \"^/u/(\\\\d+)$\", replacement: \"/users/$1\" } }"),
        &[],
    );
}

#[test]
fn versioning_rules() {
    let doc = |versioning: &str, route: &str| {
        format!("{UPSTREAM}routes:\n  - {route}\nversioning:\n  users: {versioning}\n")
    };
    let good = "{ from: [path], supported: [\"1\", \"2\"], default: \"2\" }";
    check(
        &doc(
            good,
            "{ name: r, upstream: users, api: users, version: \"1\" }",
        ),
        &[],
    );
    check(
        &doc(good, "{ name: r, upstream: users, version: \"1\" }"),
        &["routes[0].version (1) requires `api` naming a versioned API"],
    );
    check(
        &doc(good, "{ name: r, upstream: users, api: orders }"),
        &["routes[0].api (orders) must name an API declared under `versioning`"],
    );
    check(
        &doc(
            good,
            "{ name: r, upstream: users, api: users, version: \"3\" }",
        ),
        &["routes[0].version (3) must be one of versioning.users.supported"],
    );
    check(
        &doc(
            "{ from: [], supported: [\"1\", \"a b\"], default: \"3\", unknown: { fallback: { version: \"4\", sunset: tomorrow } }, deprecated: { \"5\": {} } }",
            "{ name: r, upstream: users }",
        ),
        &[
            "versioning.users.from ([]) must list at least one version source",
            "versioning.users.supported[1] (a b) must be a version of letters, digits, '.', '_' and '-'",
            "versioning.users.default (3) must be one of versioning.users.supported",
            "versioning.users.unknown.fallback.version (4) must be one of versioning.users.supported",
            "versioning.users.unknown.fallback.sunset (tomorrow) must be an RFC 3339 date such as 2027-01-31T00:00:00Z",
            "versioning.users.deprecated (5) must be one of versioning.users.supported",
        ],
    );
}

#[test]
fn byte_sizes() {
    for (text, bytes) in [
        ("512", 512),
        ("64KiB", 64 << 10),
        ("10MiB", 10 << 20),
        ("1GB", 1_000_000_000),
        ("2 GiB", 2 << 30),
    ] {
        assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
    }
    assert!("".parse::<ByteSize>().is_err());
    assert!("99999999999999999999GiB".parse::<ByteSize>().is_err());
    assert_eq!(ByteSize(10 << 20).to_string(), "10MiB");
    assert_eq!(ByteSize(1000).to_string(), "1000");
}

#[test]
fn host_patterns() {
    use pattern::HostPattern;
    let wildcard = HostPattern::parse("*.Example.com").unwrap();
    assert!(wildcard.matches("api.example.com"));
    assert!(wildcard.matches("a.b.example.com"));
    assert!(!wildcard.matches("example.com"));
    assert!(!wildcard.matches("badexample.com"));
    let exact = HostPattern::parse("API.example.com").unwrap();
    assert!(exact.matches("api.example.com"));
    assert!(exact.specificity() > wildcard.specificity());
}

#[test]
fn path_patterns() {
    use pattern::{PathPattern, Segment};
    assert_eq!(PathPattern::parse("/").unwrap().segments, vec![]);
    assert_eq!(
        PathPattern::parse("/users/{id}/").unwrap().segments,
        vec![
            Segment::Literal("users".into()),
            Segment::Param("id".into()),
            Segment::Literal(String::new())
        ]
    );
    assert!(PathPattern::parse("/a//b").is_err());
    assert!(PathPattern::parse("/a b").is_err());
}

#[test]
fn route_tls_options() {
    let doc = |route: &str| format!("{UPSTREAM}routes:\n  - {route}\n");
    let config = GatewayConfig::parse(&doc(
        "{ name: r, upstream: users, auth: [mtls], tls: { redirect_https: true, client_cert: required } }",
    ))
    .unwrap();
    let route = &config.routes[0];
    assert_eq!(route.auth, vec![AuthMethod::Mtls]);
    assert!(route.tls.redirect_https);
    assert_eq!(route.tls.client_cert, ClientCert::Required);
    let plain = GatewayConfig::parse(&doc("{ name: r, upstream: users }")).unwrap();
    assert!(plain.routes[0].tls.is_default());
    for bad in [
        "{ name: r, upstream: users, tls: { client_cert: always } }",
        "{ name: r, upstream: users, tls: { redirect: true } }",
    ] {
        let errors = GatewayConfig::parse(&doc(bad)).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{bad}");
        assert!(errors.0[0].key.is_empty(), "a syntax error: {errors}");
    }
}

// === auth, consumers and plans ===

/// A valid document with one issuer and one introspection endpoint, with
/// `extra` spliced into the issuer (`{jwt}`) or endpoint (`{intro}`).
fn auth_doc(jwt: &str, intro: &str, route: &str) -> String {
    format!(
        r#"{UPSTREAM}plans:
  gold: {{ description: "the gold tier" }}
consumers:
  - {{ name: acme, plan: gold }}
auth:
  api_key: {{ header: X-Key, query: key }}
  jwt:
    - {{ name: idp, issuer: "https://idp.example.com/", jwks_uri: "https://idp.example.com/jwks", audiences: [api]{jwt} }}
  introspection:
    - {{ name: opaque, endpoint: "https://idp.example.com/introspect", client_id: gw, client_secret: s{intro} }}
routes:
  - {{ name: r, upstream: users, auth: [api_key, jwt, introspection]{route} }}
"#
    )
}

#[test]
fn auth_example_parses_with_defaults() {
    let config = GatewayConfig::parse(&auth_doc("", "", ", scopes: [read]")).expect("valid");
    let jwt = &config.auth.jwt[0];
    assert_eq!(jwt.leeway, Duration::from_secs(30));
    assert_eq!(jwt.algorithms, ["RS256", "ES256", "EdDSA"]);
    assert_eq!(jwt.claims.subject, "sub");
    assert_eq!(jwt.jwks.max_refresh, Duration::from_secs(3600));
    assert_eq!(config.auth.api_key.query.as_deref(), Some("key"));
    assert_eq!(config.consumers[0].plan.as_deref(), Some("gold"));
    assert_eq!(config.routes[0].scopes, ["read"]);
    let defaults = GatewayConfig::parse("").unwrap();
    assert_eq!(defaults.auth.api_key.header, "X-API-Key");
    assert_eq!(defaults.auth.api_key.query, None);
}

#[test]
fn consumer_plan_must_be_declared() {
    check(
        &format!("{UPSTREAM}consumers:\n  - {{ name: acme, plan: platinum }}\n"),
        &["consumers[0].plan (platinum) must name a plan declared under `plans`"],
    );
}

#[test]
fn plan_names_are_identifiers() {
    check(
        &format!("{UPSTREAM}plans:\n  \"gold tier\": {{}}\n"),
        &["plans.gold tier (gold tier) must be a name of letters, digits, '-', '_' and '.'"],
    );
}

#[test]
fn api_key_header_must_be_a_header_name() {
    check(
        &format!("{UPSTREAM}auth: {{ api_key: {{ header: \"X Key\" }} }}\n"),
        &["auth.api_key.header (X Key) must be a valid header name"],
    );
}

#[test]
fn api_key_query_must_be_a_parameter_name() {
    check(
        &format!("{UPSTREAM}auth: {{ api_key: {{ query: \"a=b\" }} }}\n"),
        &["auth.api_key.query (a=b) must be a parameter name without '&', '=' or '#'"],
    );
}

#[test]
fn jwt_algorithm_none_is_refused() {
    check(
        &auth_doc(", algorithms: [none]", "", ""),
        &["auth.jwt[0].algorithms[0] (none) must never be none (unsigned tokens)"],
    );
}

#[test]
fn jwt_hmac_algorithms_are_refused_with_jwks() {
    check(
        &auth_doc(", algorithms: [RS256, HS256]", "", ""),
        &[
            "auth.jwt[0].algorithms[1] (HS256) is not allowed with a JWKS issuer (HS* would verify with a shared secret, or with the public key)",
        ],
    );
}

#[test]
fn jwt_algorithms_must_be_known_and_listed() {
    check(
        &auth_doc(", algorithms: [RS1]", "", ""),
        &[
            "auth.jwt[0].algorithms[0] (RS1) must be one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
        ],
    );
    check(
        &auth_doc(", algorithms: []", "", ""),
        &["auth.jwt[0].algorithms ([]) must list at least one algorithm"],
    );
}

#[test]
fn jwt_needs_an_audience() {
    check(
        &auth_doc("", "", "").replace("audiences: [api]", "audiences: []"),
        &[
            "auth.jwt[0].audiences ([]) must list at least one audience (tokens minted for other services must not pass)",
        ],
    );
}

#[test]
fn jwks_uri_must_be_http() {
    check(
        &auth_doc("", "", "").replace("https://idp.example.com/jwks", "file:///etc/passwd"),
        &["auth.jwt[0].jwks_uri (file:///etc/passwd) must be an http:// or https:// URL"],
    );
}

#[test]
fn issuer_names_and_issuers_are_unique() {
    let doc = auth_doc("", "", "").replace(
        "  introspection:",
        "    - { name: idp, issuer: \"https://idp.example.com/\", jwks_uri: \"http://127.0.0.1:1/\", audiences: [api] }\n  introspection:",
    );
    check(
        &doc,
        &[
            "auth.jwt[1].name (idp) must be unique among auth.jwt and auth.introspection",
            "auth.jwt[1].issuer (https://idp.example.com/) must be unique among auth.jwt",
        ],
    );
}

#[test]
fn jwt_leeway_is_bounded() {
    check(
        &auth_doc(", leeway: 10m", "", ""),
        &["auth.jwt[0].leeway (10m) must be at most 5m"],
    );
}

#[test]
fn jwks_refresh_bounds_are_ordered() {
    check(
        &auth_doc(", jwks: { min_refresh: 2h, max_refresh: 1h }", "", ""),
        &["auth.jwt[0].jwks.min_refresh (2h) must not exceed auth.jwt[0].jwks.max_refresh (1h)"],
    );
    check(
        &auth_doc(", jwks: { max_refresh: 1h, max_stale: 10m }", "", ""),
        &["auth.jwt[0].jwks.max_stale (10m) must be at least auth.jwt[0].jwks.max_refresh (1h)"],
    );
    check(
        &auth_doc(", jwks: { min_refresh: 0s }", "", ""),
        &["auth.jwt[0].jwks.min_refresh (0s) must be greater than zero"],
    );
}

#[test]
fn token_and_cache_sizes_are_bounded() {
    check(
        &auth_doc(", max_token_bytes: 10", ", cache_entries: 0", ""),
        &[
            "auth.jwt[0].max_token_bytes (10) must be in 256..=65536",
            "auth.introspection[0].cache_entries (0) must be in 1..=1000000",
        ],
    );
}

#[test]
fn claim_names_are_not_empty() {
    check(
        &auth_doc(", claims: { subject: \"\" }", "", ""),
        &["auth.jwt[0].claims.subject (\"\") must name a claim"],
    );
}

#[test]
fn introspection_negative_ttl_does_not_exceed_ttl() {
    check(
        &auth_doc("", ", ttl: 10s, negative_ttl: 1m", ""),
        &[
            "auth.introspection[0].negative_ttl (1m) must not exceed auth.introspection[0].ttl (10s)",
        ],
    );
}

#[test]
fn introspection_needs_a_client_and_positive_times() {
    check(
        &auth_doc("", ", timeout: 0s", "").replace("client_id: gw", "client_id: \"\""),
        &[
            "auth.introspection[0].client_id () must be a non-empty client id without ':'",
            "auth.introspection[0].timeout (0s) must be greater than zero",
        ],
    );
}

#[test]
fn introspection_endpoint_must_be_http() {
    check(
        &auth_doc("", "", "").replace("https://idp.example.com/introspect", "idp/introspect"),
        &["auth.introspection[0].endpoint (idp/introspect) must be an http:// or https:// URL"],
    );
}

#[test]
fn route_token_methods_need_configuration() {
    check(
        &format!(
            "{UPSTREAM}routes:\n  - {{ name: r, upstream: users, auth: [jwt, introspection] }}\n"
        ),
        &[
            "routes[0].auth[0] (jwt) needs at least one issuer under auth.jwt",
            "routes[0].auth[1] (introspection) needs at least one endpoint under auth.introspection",
        ],
    );
}

#[test]
fn route_scopes_are_tokens_and_need_a_token_method() {
    check(
        &auth_doc("", "", ", scopes: [\"read write\"]"),
        &[
            "routes[0].scopes[0] (read write) must be a scope token (printable ASCII, no spaces, quotes or backslashes)",
        ],
    );
    check(
        &format!(
            "{UPSTREAM}routes:\n  - {{ name: r, upstream: users, auth: [api_key], scopes: [read] }}\n"
        ),
        &[
            "routes[0].scopes (read) needs `auth` to list jwt or introspection (only tokens carry scopes)",
        ],
    );
}

#[test]
fn unknown_auth_method_is_a_syntax_error() {
    let error = GatewayConfig::parse(&format!(
        "{UPSTREAM}routes:\n  - {{ name: r, upstream: users, auth: [basic] }}\n"
    ))
    .unwrap_err();
    assert!(error.to_string().contains("basic"), "{error}");
}

// === transform ===

fn transform_doc(block: &str) -> String {
    format!("{UPSTREAM}routes:\n  - name: r\n    upstream: users\n    transform: {block}\n")
}

#[test]
fn transform_example_parses_and_round_trips() {
    let yaml = transform_doc(
        r#"
      request:
        headers:
          set: { X-Tenant: "{jwt.claims.tenant}", X-Who: "{consumer.id}/{{literal}}" }
          add: { X-Via: "meridian {route.name}" }
          remove: [X-Debug]
          rename: { X-Old: X-New }
        body: { convert: json_to_xml, xml_root: order }
      response:
        headers: { set: { X-Request: "{request.id}" } }
        body:
          convert: xml_to_json
          filter: { allow: ["/a", "/b/*/c"], deny: ["/a/secret"] }
          move: [ { from: /a/name, to: /name } ]
          max_depth: 32
        max_body: 2MiB"#,
    );
    let config = GatewayConfig::parse(&yaml).expect("valid");
    let t = &config.routes[0].transform;
    assert_eq!(t.response.max_body_bytes(), 2 << 20);
    assert_eq!(
        t.request.body.as_ref().unwrap().convert,
        Some(transform::Convert::JsonToXml)
    );
    let json = serde_json::to_string(&config).unwrap();
    let back: GatewayConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
    // An empty block is not written out.
    let plain = GatewayConfig::parse(&format!(
        "{UPSTREAM}routes:\n  - {{ name: r, upstream: users }}\n"
    ))
    .unwrap();
    assert!(!serde_json::to_string(&plain).unwrap().contains("transform"));
}

#[test]
fn templates_parse_into_pieces() {
    use transform::{Piece, Template, TemplateError, Variable};
    assert_eq!(
        Template::parse("t-{jwt.claims.https://x.io/tenant}-{{x}}").unwrap(),
        Template(vec![
            Piece::Literal("t-".into()),
            Piece::Var(Variable::Claim("https://x.io/tenant".into())),
            Piece::Literal("-{x}".into()),
        ])
    );
    assert_eq!(
        Template::parse("{client.ip}").unwrap().0,
        vec![Piece::Var(Variable::ClientIp)]
    );
    assert_eq!(Template::parse("a{b"), Err(TemplateError::Unbalanced));
    assert_eq!(Template::parse("a}b"), Err(TemplateError::Unbalanced));
    assert_eq!(
        Template::parse("{jwt.claims.}"),
        Err(TemplateError::UnknownVariable("jwt.claims.".into()))
    );
}

#[test]
fn transform_header_names_must_be_valid() {
    check(
        &transform_doc("{ request: { headers: { remove: [\"bad name\"] } } }"),
        &["routes[0].transform.request.headers.remove[0] (bad name) must be a valid header name"],
    );
}

#[test]
fn transform_managed_headers_are_refused() {
    check(
        &transform_doc("{ response: { headers: { set: { Content-Length: \"1\" } } } }"),
        &[
            "routes[0].transform.response.headers.set.Content-Length (Content-Length) is managed by the gateway and cannot be transformed",
        ],
    );
    check(
        &transform_doc("{ request: { headers: { remove: [X-Request-Id] } } }"),
        &[
            "routes[0].transform.request.headers.remove[0] (X-Request-Id) is managed by the gateway and cannot be transformed",
        ],
    );
}

#[test]
fn transform_identity_headers_are_refused_on_requests() {
    check(
        &transform_doc("{ request: { headers: { rename: { X-User: X-Auth-Sub } } } }"),
        &[
            "routes[0].transform.request.headers.rename.X-User (X-Auth-Sub) carries verified identity and is written only by the auth stage",
        ],
    );
    check(
        &transform_doc("{ response: { headers: { set: { X-Consumer-Id: \"{consumer.id}\" } } } }"),
        &[],
    );
}

#[test]
fn transform_rename_must_change_the_name() {
    check(
        &transform_doc("{ response: { headers: { rename: { X-A: x-a } } } }"),
        &[
            "routes[0].transform.response.headers.rename.X-A (x-a) must differ from the name it renames",
        ],
    );
}

#[test]
fn transform_templates_must_parse() {
    check(
        &transform_doc("{ request: { headers: { set: { X-T: \"{tenant}\" } } } }"),
        &[&format!(
            "routes[0].transform.request.headers.set.X-T ({{tenant}}) uses unknown variable {{tenant}} (known: {})",
            transform::VARIABLES
        )],
    );
    check(
        &transform_doc("{ request: { headers: { add: { X-T: \"a{b\" } } } }"),
        &[
            "routes[0].transform.request.headers.add.X-T (a{b) has an unbalanced brace (write {{ or }} for a literal one)",
        ],
    );
    check(
        &transform_doc("{ request: { headers: { add: { X-T: \"a\\nb\" } } } }"),
        &[
            "routes[0].transform.request.headers.add.X-T (a\nb) must be a valid header value (no control characters)",
        ],
    );
}

#[test]
fn transform_body_must_do_something() {
    check(
        &transform_doc("{ response: { body: { max_depth: 10 } } }"),
        &[
            "routes[0].transform.response.body ({}) must convert, filter or move something (convert, filter or move)",
        ],
    );
}

#[test]
fn transform_pointers_must_parse() {
    check(
        &transform_doc("{ response: { body: { filter: { deny: [id, \"\", \"/a~2\"] } } } }"),
        &[
            "routes[0].transform.response.body.filter.deny[0] (id) must be a JSON pointer starting with '/' (RFC 6901)",
            "routes[0].transform.response.body.filter.deny[1] () must be a JSON pointer starting with '/' (RFC 6901)",
            "routes[0].transform.response.body.filter.deny[2] (/a~2) must escape '~' as ~0 and '/' as ~1 (RFC 6901)",
        ],
    );
}

#[test]
fn transform_moves_name_one_member_outside_the_source() {
    check(
        &transform_doc(
            "{ response: { body: { move: [ { from: \"/a/*\", to: /b }, { from: /a, to: /a/b } ] } } }",
        ),
        &[
            "routes[0].transform.response.body.move[0].from (/a/*) must not use '*' (a move names one member)",
            "routes[0].transform.response.body.move[1].to (/a/b) must not lie inside routes[0].transform.response.body.move[1].from (/a)",
        ],
    );
}

#[test]
fn transform_xml_root_needs_json_to_xml_and_a_name() {
    check(
        &transform_doc("{ response: { body: { convert: xml_to_json, xml_root: doc } } }"),
        &[
            "routes[0].transform.response.body.xml_root (doc) only applies with convert: json_to_xml",
        ],
    );
    check(
        &transform_doc("{ request: { body: { convert: json_to_xml, xml_root: \"1doc\" } } }"),
        &["routes[0].transform.request.body.xml_root (1doc) must be an XML element name"],
    );
}

#[test]
fn transform_limits_are_bounded() {
    check(
        &transform_doc(
            "{ response: { body: { convert: xml_to_json, max_depth: 500 }, max_body: 1GiB } }",
        ),
        &[
            "routes[0].transform.response.body.max_depth (500) must be in 1..=128",
            "routes[0].transform.response.max_body (1GiB) must be in 1..=64MiB",
        ],
    );
}

// === rate limits ===

const LIMIT_ROUTE: &str =
    "routes:\n  - { name: r, upstream: users, match: { path_prefix: / }, limits: LIMITS }\n";

#[track_caller]
fn check_route_limits(limits: &str, expected: &[&str]) {
    check(
        &format!("{UPSTREAM}{}", LIMIT_ROUTE.replace("LIMITS", limits)),
        expected,
    );
}

#[test]
fn limits_parse_on_plans_and_routes() {
    let yaml = format!(
        "{UPSTREAM}{}plans:\n  gold:\n    limits:\n      - {{ name: burst, algorithm: token_bucket, rate: 100/s, burst: 200 }}\n      - {{ name: daily, algorithm: fixed_window, limit: 100000, per: 1d }}\n      - {{ algorithm: fixed_window, limit: 2000000, per: month }}\n",
        LIMIT_ROUTE.replace(
            "LIMITS",
            "[{ key: [consumer, { header: X-Tenant }], algorithm: sliding_window_counter, limit: 60, per: 1m }, { key: route, algorithm: leaky_bucket, rate: 20/s, queue: 50, max_wait: 2s }, { key: ip, algorithm: sliding_window_log, limit: 10, per: 10s }]"
        )
    );
    let config = GatewayConfig::parse(&yaml).expect("valid");
    let gold = &config.plans["gold"].limits;
    assert_eq!(gold.len(), 3);
    assert_eq!(
        gold[0].rate,
        Some(limit::Rate {
            count: 100,
            per: Duration::from_secs(1)
        })
    );
    assert_eq!(gold[2].per, Some(limit::Period::Month));
    let route = &config.routes[0].limits;
    assert_eq!(
        route[0].key.0,
        vec![
            limit::KeyPart::Consumer,
            limit::KeyPart::Header("X-Tenant".into())
        ]
    );
    assert_eq!(route[1].max_wait, Some(Duration::from_secs(2)));
    // What is written out parses back to the same document.
    let json = serde_json::to_string(&config).expect("serialises");
    assert_eq!(GatewayConfig::parse(&json).expect("round trip"), config);
}

#[test]
fn limit_parameters_must_fit_the_algorithm() {
    check_route_limits(
        "[{ algorithm: token_bucket, limit: 5, per: 1s }]",
        &[
            "routes[0].limits[0].rate ((missing)) is required by token_bucket",
            "routes[0].limits[0].limit (5) does not apply to token_bucket",
            "routes[0].limits[0].per (1s) does not apply to token_bucket",
        ],
    );
    check_route_limits(
        "[{ algorithm: fixed_window, rate: 5/s, burst: 3, queue: 4 }]",
        &[
            "routes[0].limits[0].limit ((missing)) is required by fixed_window",
            "routes[0].limits[0].per ((missing)) is required by fixed_window",
            "routes[0].limits[0].rate (5/s) does not apply to fixed_window",
            "routes[0].limits[0].burst (3) does not apply to fixed_window",
            "routes[0].limits[0].queue (4) does not apply to fixed_window",
        ],
    );
    check_route_limits(
        "[{ key: route, algorithm: leaky_bucket, rate: 5/s }]",
        &["routes[0].limits[0].queue ((missing)) is required by leaky_bucket"],
    );
    check_route_limits(
        "[{ algorithm: sliding_window_counter, limit: 5, per: 1s, max_wait: 1s }]",
        &["routes[0].limits[0].max_wait (1s) does not apply to sliding_window_counter"],
    );
}

#[test]
fn limit_values_are_bounded() {
    check_route_limits(
        "[{ algorithm: token_bucket, rate: 0/s, burst: 0 }]",
        &[
            "routes[0].limits[0].rate (0/s) must admit at least one request per period",
            "routes[0].limits[0].burst (0) must be between 1 and 1000000000",
        ],
    );
    check_route_limits(
        "[{ algorithm: token_bucket, rate: 2000/1ms }]",
        &["routes[0].limits[0].rate (2000/1ms) must not exceed 1000000 requests per second"],
    );
    check_route_limits(
        "[{ algorithm: sliding_window_log, limit: 10001, per: 1m }]",
        &["routes[0].limits[0].limit (10001) must be between 1 and 10000"],
    );
    check_route_limits(
        "[{ algorithm: sliding_window_counter, limit: 5, per: month }]",
        &[
            "routes[0].limits[0].per (month) `month` is a calendar window: only fixed_window has one",
        ],
    );
    check_route_limits(
        "[{ algorithm: fixed_window, limit: 5, per: 1500us }]",
        &[
            "routes[0].limits[0].per (1ms 500us) must be a whole number of milliseconds, at least 1ms",
        ],
    );
    check_route_limits(
        "[{ key: route, algorithm: leaky_bucket, rate: 5/s, queue: 0, max_wait: 0s }]",
        &[
            "routes[0].limits[0].queue (0) must be between 1 and 100000",
            "routes[0].limits[0].max_wait (0s) must be greater than zero",
        ],
    );
}

#[test]
fn limit_names_and_keys() {
    check_route_limits(
        "[{ name: a, algorithm: token_bucket, rate: 1/s }, { name: a, key: [ip, ip], algorithm: token_bucket, rate: 1/s }, { name: 'b c', key: { header: 'bad header' }, algorithm: token_bucket, rate: 1/s }, { key: [], algorithm: token_bucket, rate: 1/s }]",
        &[
            "routes[0].limits[1].name (a) must be unique among the limits of its plan or route",
            "routes[0].limits[1].key (ip, ip) must not repeat a part",
            "routes[0].limits[2].name (b c) must be a name of letters, digits, '-', '_' and '.'",
            "routes[0].limits[2].key.header (bad header) must be a header name",
            "routes[0].limits[3].key ([]) must name at least one part",
        ],
    );
    let errors = GatewayConfig::parse(&format!(
        "{UPSTREAM}{}",
        LIMIT_ROUTE.replace(
            "LIMITS",
            "[{ key: user, algorithm: token_bucket, rate: 1/s }]"
        )
    ))
    .expect_err("unknown key part");
    assert!(
        errors
            .to_string()
            .contains("a limit key is one of consumer"),
        "{errors}"
    );
}

#[test]
fn leaky_buckets_belong_to_routes_once() {
    check(
        "plans:\n  p: { limits: [{ key: route, algorithm: leaky_bucket, rate: 1/s, queue: 5 }] }\n",
        &[
            "plans.p.limits[0].algorithm (leaky_bucket) belongs on a route (it smooths what one backend receives), not on a plan",
        ],
    );
    check_route_limits(
        "[{ key: route, algorithm: leaky_bucket, rate: 1/s, queue: 5 }, { key: ip, algorithm: leaky_bucket, rate: 1/s, queue: 5 }]",
        &[
            "routes[0].limits[1].algorithm (leaky_bucket) may appear once per route (a request waits in one queue)",
        ],
    );
}

#[test]
fn shared_scopes_are_for_counting_algorithms() {
    check_route_limits(
        "[{ algorithm: fixed_window, limit: 5, per: 1m, scope: redis }, { algorithm: sliding_window_log, limit: 5, per: 1m, scope: redis }]",
        &[
            "routes[0].limits[1].scope (redis) is for token_bucket, sliding_window_counter and fixed_window; sliding_window_log stays local",
        ],
    );
    check_route_limits(
        "[{ algorithm: token_bucket, rate: 5/s, scope: global }, { algorithm: sliding_window_counter, limit: 5, per: 1m, scope: global }, { name: quota, algorithm: fixed_window, limit: 5, per: month, scope: global }, { name: smooth, algorithm: leaky_bucket, rate: 5/s, queue: 5, scope: global }]",
        &[
            "routes[0].limits[3].scope (global) is for token_bucket, sliding_window_counter and fixed_window; leaky_bucket stays local",
        ],
    );
}

#[test]
fn introspection_audiences_are_not_empty() {
    check(
        "auth:\n  introspection:\n    - { name: o, endpoint: \"https://idp/introspect\", client_id: gw, client_secret: s, audiences: [api, \"\"] }\n",
        &["auth.introspection[0].audiences[1] () must not be empty"],
    );
}

// === aggregate ===

const TWO_UPSTREAMS: &str = "upstreams:\n  users: { targets: [\"127.0.0.1:9001\"] }\n  orders: { targets: [\"127.0.0.1:9002\"] }\n";

fn aggregate_doc(path: &str, block: &str) -> String {
    format!(
        "{TWO_UPSTREAMS}routes:\n  - name: dashboard\n    match: {{ path: \"{path}\" }}\n    upstream: users\n    aggregate: {block}\n"
    )
}

#[test]
fn aggregate_example_parses_and_round_trips() {
    let yaml = aggregate_doc(
        "/dashboard/{id}",
        r#"
      parts:
        user:   { upstream: users,  path: "/v1/users/{id}", timeout: 1s }
        orders: { upstream: orders, path: "/v1/orders?user={id}&x={{y}}", timeout: 500ms, on_error: omit, max_body: 64KiB }
        extra:  { upstream: orders, path: /v1/extra, on_error: marker }
      max_body: 2MiB"#,
    );
    let config = GatewayConfig::parse(&yaml).expect("valid");
    let a = config.routes[0].aggregate.as_ref().unwrap();
    assert_eq!(a.parts.len(), 3);
    let orders = &a.parts["orders"];
    assert_eq!(orders.on_error, aggregate::OnError::Omit);
    assert_eq!(orders.timeout, Some(std::time::Duration::from_millis(500)));
    assert_eq!(a.max_body_bytes(orders), 64 << 10);
    assert_eq!(a.max_body_bytes(&a.parts["user"]), 2 << 20);
    assert_eq!(a.parts["user"].on_error, aggregate::OnError::Fail);
    use aggregate::{PathPiece, PathTemplate};
    assert_eq!(
        PathTemplate::parse(&orders.path).unwrap(),
        PathTemplate(vec![
            PathPiece::Literal("/v1/orders?user=".into()),
            PathPiece::Param("id".into()),
            PathPiece::Literal("&x={y}".into()),
        ])
    );
    let json = serde_json::to_string(&config).unwrap();
    let back: GatewayConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
    let plain = GatewayConfig::parse(&format!(
        "{UPSTREAM}routes:\n  - {{ name: r, upstream: users }}\n"
    ))
    .unwrap();
    assert!(!serde_json::to_string(&plain).unwrap().contains("aggregate"));
}

#[test]
fn aggregate_needs_parts() {
    check(
        &aggregate_doc("/d", "{ parts: {} }"),
        &["routes[0].aggregate.parts (0) must hold 1..=16 parts"],
    );
}

#[test]
fn aggregate_part_names_are_identifiers() {
    check(
        &aggregate_doc(
            "/d",
            "{ parts: { \"a b\": { upstream: users, path: /x } } }",
        ),
        &["routes[0].aggregate.parts (a b) must be a name of letters, digits, '-', '_' and '.'"],
    );
}

#[test]
fn aggregate_part_upstream_must_be_declared() {
    check(
        &aggregate_doc("/d", "{ parts: { a: { upstream: nope, path: /x } } }"),
        &["routes[0].aggregate.parts.a.upstream (nope) must name a declared upstream"],
    );
}

#[test]
fn aggregate_part_path_is_a_template() {
    check(
        &aggregate_doc(
            "/d/{id}",
            "{ parts: { a: { upstream: users, path: x }, b: { upstream: users, path: \"/x/{id\" }, c: { upstream: users, path: \"/x/}\" }, d: { upstream: users, path: \"/x y\" } } }",
        ),
        &[
            "routes[0].aggregate.parts.a.path (x) must start with '/'",
            "routes[0].aggregate.parts.b.path (/x/{id) '{' at byte 3 is not closed",
            "routes[0].aggregate.parts.c.path (/x/}) '}' at byte 3 closes nothing",
            "routes[0].aggregate.parts.d.path (/x y) character ' ' is not allowed in a URI",
        ],
    );
}

#[test]
fn aggregate_part_params_come_from_the_route_path() {
    check(
        &aggregate_doc(
            "/d/{id}",
            "{ parts: { a: { upstream: users, path: \"/u/{user}\" } } }",
        ),
        &[
            "routes[0].aggregate.parts.a.path (/u/{user}) uses {user}, which is not a parameter of the route's match.path or match.path_prefix",
        ],
    );
    // Prefix parameters count too.
    check(
        &format!(
            "{TWO_UPSTREAMS}routes:\n  - name: r\n    match: {{ path_prefix: \"/t/{{tenant}}\" }}\n    upstream: users\n    aggregate: {{ parts: {{ a: {{ upstream: users, path: \"/v1/{{tenant}}\" }} }} }}\n"
        ),
        &[],
    );
}

#[test]
fn aggregate_part_timeout_is_bounded() {
    check(
        &aggregate_doc(
            "/d",
            "{ parts: { a: { upstream: users, path: /x, timeout: 0s }, b: { upstream: users, path: /x, timeout: 2m } } }",
        ),
        &[
            "routes[0].aggregate.parts.a.timeout (0s) must be in (0, 1m]",
            "routes[0].aggregate.parts.b.timeout (2m) must be in (0, 1m]",
        ],
    );
}

#[test]
fn aggregate_max_body_is_bounded() {
    check(
        &aggregate_doc(
            "/d",
            "{ max_body: 0, parts: { a: { upstream: users, path: /x, max_body: 1GiB } } }",
        ),
        &[
            "routes[0].aggregate.max_body (0) must be in 1..=16MiB",
            "routes[0].aggregate.parts.a.max_body (1GiB) must be in 1..=16MiB",
        ],
    );
}

// === graphql ===

fn graphql_doc(block: &str) -> String {
    format!(
        "{TWO_UPSTREAMS}routes:\n  - name: graph\n    match: {{ path: /graphql }}\n    upstream: users\n    graphql:\n{block}"
    )
}

const GRAPHQL_EXAMPLE: &str = r#"      max_depth: 6
      max_complexity: 100
      max_calls: 10
      max_query: 16KiB
      max_body: 2MiB
      types:
        User:
          id: ID!
          name: { type: String, from: full_name }
          orders: { type: "[Order!]!", upstream: orders, path: "/users/{parent.id}/orders", timeout: 500ms, select: /items }
        Order: { id: ID!, total: Float, buyer: { type: User, upstream: users, path: "/users/{parent.user_id}" } }
      query:
        user: { type: User, args: { id: ID! }, upstream: users, path: "/users/{args.id}" }
        orders: { type: "[Order]", args: { status: String, limit: Int }, upstream: orders, path: "/orders?status={args.status}&limit={args.limit}" }
"#;

#[test]
fn graphql_example_parses_and_round_trips() {
    let yaml = graphql_doc(GRAPHQL_EXAMPLE);
    let config = GatewayConfig::parse(&yaml).expect("valid");
    let g = config.routes[0].graphql.as_ref().unwrap();
    assert_eq!(g.depth_limit(), 6);
    assert_eq!(g.query_limit(), 16 << 10);
    assert_eq!(g.types["User"]["id"], graphql::Field::plain("ID!"));
    let orders = &g.types["User"]["orders"];
    assert_eq!(orders.upstream.as_deref(), Some("orders"));
    assert_eq!(orders.timeout, Some(std::time::Duration::from_millis(500)));
    assert_eq!(g.types["User"]["name"].from.as_deref(), Some("full_name"));
    assert_eq!(g.query["user"].args["id"], "ID!");
    let json = serde_json::to_string(&config).unwrap();
    let back: GatewayConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
    // Defaults.
    let plain = GatewayConfig::parse(&graphql_doc(
        "      query: { u: { type: String, upstream: users, path: /u } }\n",
    ))
    .unwrap();
    let g = plain.routes[0].graphql.as_ref().unwrap();
    assert_eq!(
        (g.depth_limit(), g.complexity_limit(), g.calls_limit()),
        (8, 200, 32)
    );
    assert_eq!((g.query_limit(), g.body_limit()), (64 << 10, 1 << 20));
    assert!(!g.introspection);
}

#[test]
fn graphql_type_refs_parse() {
    use graphql::TypeRef;
    let named = |name: &str, required| TypeRef::Named {
        name: name.into(),
        required,
    };
    assert_eq!(TypeRef::parse("ID!"), Ok(named("ID", true)));
    assert_eq!(
        TypeRef::parse("[Order!]!"),
        Ok(TypeRef::List {
            of: Box::new(named("Order", true)),
            required: true
        })
    );
    assert_eq!(TypeRef::parse("[[Int]]").unwrap().base(), "Int");
    for bad in ["", "[Int", "Int!!", "1x", "Us-er", "[[[[[[Int]]]]]]"] {
        assert!(TypeRef::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn graphql_type_references_must_exist() {
    check(
        &graphql_doc(
            "      types: { User: { id: ID!, best: Friend, tags: \"[Tag]\", bad: \"[Int\" } }\n      query: { u: { type: User, upstream: users, path: /u } }\n",
        ),
        &[
            "routes[0].graphql.types.User.bad.type ([Int) must close its list with ']'",
            "routes[0].graphql.types.User.best.type (Friend) names Friend, which is neither a built-in scalar (String, Int, Float, Boolean, ID) nor a type declared under graphql.types",
            "routes[0].graphql.types.User.tags.type ([Tag]) names Tag, which is neither a built-in scalar (String, Int, Float, Boolean, ID) nor a type declared under graphql.types",
        ],
    );
}

#[test]
fn graphql_cycles_between_types_are_fine() {
    check(
        &graphql_doc(
            "      types:\n        A: { b: { type: B, upstream: users, path: \"/b/{parent.id}\" } }\n        B: { a: { type: A, upstream: users, path: \"/a/{parent.id}\" } }\n      query: { a: { type: A, upstream: users, path: /a } }\n",
        ),
        &[],
    );
}

#[test]
fn graphql_names_follow_the_graphql_grammar() {
    check(
        &graphql_doc(
            "      types: { Query: { x: Int }, String: { x: Int }, \"__T\": { x: Int }, \"B-c\": { \"a-b\": Int } }\n      query: { u: { type: Int, upstream: users, path: /u, args: { \"__x\": Int } } }\n",
        ),
        &[
            "routes[0].graphql.types (B-c) must be a GraphQL name (letters, digits, '_'), not a built-in scalar, `Query`, nor starting with '__'",
            "routes[0].graphql.types.B-c (a-b) must be a GraphQL field name (letters, digits, '_'), not starting with '__'",
            "routes[0].graphql.types (Query) must be a GraphQL name (letters, digits, '_'), not a built-in scalar, `Query`, nor starting with '__'",
            "routes[0].graphql.types (String) must be a GraphQL name (letters, digits, '_'), not a built-in scalar, `Query`, nor starting with '__'",
            "routes[0].graphql.types (__T) must be a GraphQL name (letters, digits, '_'), not a built-in scalar, `Query`, nor starting with '__'",
            "routes[0].graphql.query.u.args (__x) must be a GraphQL argument name (letters, digits, '_'), not starting with '__'",
        ],
    );
}

#[test]
fn graphql_upstreams_and_paths_are_checked() {
    check(
        &graphql_doc(
            "      types: { U: { a: { type: Int, upstream: users }, b: { type: Int, path: /b }, c: { type: Int, upstream: users, path: \"/c/{args.x}\" }, d: { type: Int, args: { x: Int } } } }\n      query:\n        u: { type: U, upstream: nope, path: \"/u/{args.id}/{parent.id}/{id}\", args: { id: \"[ID]\" } }\n        v: { type: U }\n",
        ),
        &[
            "routes[0].graphql.types.U.a.upstream (users) needs `path`, the path and query of the GET sent",
            "routes[0].graphql.types.U.b.path (/b) needs `upstream`, the upstream called",
            "routes[0].graphql.types.U.c.path (/c/{args.x}) uses {args.x}, but the field declares no argument \"x\" under `args`",
            "routes[0].graphql.types.U.d.args (args) only applies to a field that calls an upstream (`upstream` and `path`)",
            "routes[0].graphql.query.u.args.id ([ID]) must be a built-in scalar type (String, Int, Float, Boolean, ID), optionally with '!'",
            "routes[0].graphql.query.u.upstream (nope) must name a declared upstream",
            "routes[0].graphql.query.u.path (/u/{args.id}/{parent.id}/{id}) parameter {id} must be a scoped name such as {args.id} or {parent.id}",
            "routes[0].graphql.query.v (U) a query field must call an upstream: set `upstream` and `path`",
        ],
    );
    check(
        &graphql_doc(
            "      query: { u: { type: Int, upstream: users, path: \"/u/{parent.id}/{route.x}\" } }\n",
        ),
        &[
            "routes[0].graphql.query.u.path (/u/{parent.id}/{route.x}) uses {parent.id}, but a query field has no parent object; use {args.NAME}",
            "routes[0].graphql.query.u.path (/u/{parent.id}/{route.x}) uses {route.x}: placeholders are {args.NAME} (a declared argument) or {parent.KEY} (a member of the parent object)",
        ],
    );
}

#[test]
fn graphql_limits_are_bounded() {
    check(
        &graphql_doc(
            "      max_depth: 0\n      max_complexity: 20000\n      max_calls: 257\n      max_query: 2MiB\n      max_body: 0\n      query: { u: { type: Int, upstream: users, path: /u, timeout: 2m, select: items } }\n",
        ),
        &[
            "routes[0].graphql.max_depth (0) must be in 1..=64",
            "routes[0].graphql.max_complexity (20000) must be in 1..=10000",
            "routes[0].graphql.max_calls (257) must be in 1..=256",
            "routes[0].graphql.max_query (2MiB) must be in 1..=1MiB",
            "routes[0].graphql.max_body (0) must be in 1..=16MiB",
            "routes[0].graphql.query.u.select (items) must be a JSON pointer: empty or starting with '/'",
            "routes[0].graphql.query.u.timeout (2m) must be in (0, 1m]",
        ],
    );
}

#[test]
fn graphql_needs_query_fields_and_excludes_aggregate() {
    check(
        &graphql_doc("      query: {}\n"),
        &["routes[0].graphql.query (0) must hold 1..=64 fields"],
    );
    let yaml = format!(
        "{TWO_UPSTREAMS}routes:\n  - name: r\n    match: {{ path: /g }}\n    upstream: users\n    aggregate: {{ parts: {{ a: {{ upstream: users, path: /a }} }} }}\n    graphql: {{ query: {{ u: {{ type: Int, upstream: users, path: /u }} }} }}\n"
    );
    check(
        &yaml,
        &["routes[0].graphql (graphql) cannot be combined with `aggregate` on one route"],
    );
}

// === grpc ===

/// The test library's descriptor set, base64, compiled from tests/proto.
fn library_set() -> String {
    use base64::Engine as _;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/proto");
    let mut compiler = protox::Compiler::new([dir]).unwrap();
    compiler.include_imports(true);
    compiler
        .open_file("meridian/test/v1/library.proto")
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(compiler.encode_file_descriptor_set())
}

fn grpc_doc(protocol: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  lib: {{ targets: [\"127.0.0.1:9001\"]{protocol} }}\nroutes:\n  - name: rest\n    match: {{ path_prefix: /v1 }}\n    upstream: lib\n{extra}    grpc: {{ descriptor_set: \"{}\", service: meridian.test.v1.Library, streaming: array }}\n",
        library_set()
    )
}

#[test]
fn grpc_block_parses_and_round_trips() {
    let config = GatewayConfig::parse(&grpc_doc(", protocol: h2", "")).expect("valid");
    let grpc = config.routes[0].grpc.as_ref().unwrap();
    assert_eq!(grpc.service, "meridian.test.v1.Library");
    assert_eq!(grpc.streaming, grpc::Streaming::Array);
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(GatewayConfig::parse(&json).unwrap(), config);
}

#[test]
fn grpc_rules() {
    check(
        &grpc_doc("", ""),
        &[
            "routes[0].upstream (lib) must name an upstream with `protocol: h2` on a route with `grpc`",
        ],
    );
    check(
        &grpc_doc(
            ", protocol: h2",
            "    aggregate: { parts: { a: { upstream: lib, path: /a } } }\n",
        ),
        &[
            "routes[0].grpc (meridian.test.v1.Library) cannot be combined with `aggregate` or `graphql` on one route",
        ],
    );
    check(
        &grpc_doc(", protocol: h2", "")
            .replace("service: meridian.test.v1.Library", "service: x.Y"),
        &["routes[0].grpc.service (x.Y) must name a service of the descriptor set"],
    );
    let yaml = grpc_doc(", protocol: h2", "");
    let set = library_set();
    let rendered = match GatewayConfig::parse(&yaml.replace(&set, "AAAA")) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(rendered.len(), 1);
    assert!(
        rendered[0].starts_with(
            "routes[0].grpc.descriptor_set (AAAA) must be a serialized FileDescriptorSet"
        ),
        "{rendered:?}"
    );
}
