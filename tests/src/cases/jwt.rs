//! JWT validation end to end against a JWKS server started by the test:
//! accepted algorithms, identity headers, every refusal (401/403 JSON with
//! `WWW-Authenticate`, nothing forwarded), revocations, a key rotation
//! under load and the JWKS endpoint going down.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::client::{get_with, http1, send_with};
use crate::idp::{JwksServer, SigningKey, claims, now, raw_token};
use crate::{MockUpstream, Reply, TestNode, get, send};

const ISSUER: &str = "https://idp.test/";

fn yaml(upstream: &MockUpstream, jwks: &JwksServer, extra: &str) -> String {
    format!(
        r#"
upstreams:
  u: {{ targets: ["{}"] }}
plans:
  gold: {{ description: gold tier }}
consumers:
  - {{ name: acme, id: c-1, plan: gold }}
auth:
  jwt:
    - name: idp
      issuer: "{ISSUER}"
      jwks_uri: "{}"
      audiences: [api]
      algorithms: [RS256, ES256, EdDSA]
      leeway: 5s
      claims: {{ consumer: org }}
      jwks: {{ min_refresh: 1s, max_refresh: 1h, unknown_kid_interval: 1s }}
{extra}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, auth: [jwt], upstream: u }}
  - {{ name: admin, match: {{ path_prefix: /admin }}, auth: [jwt], scopes: [admin], upstream: u }}
"#,
        upstream.target(),
        jwks.uri(),
    )
}

async fn bearer(node: &TestNode, path: &str, token: &str) -> Reply {
    get_with(
        &node.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

fn assert_refused(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{code}: {:?}", reply.body);
    assert_eq!(reply.error_code(), code, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
}

/// The value of the series `name{labels}` in a Prometheus text.
pub(crate) fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

pub(crate) async fn metrics(node: &TestNode) -> String {
    String::from_utf8_lossy(&get(&node.admin_url("/metrics")).await.body).into_owned()
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_are_accepted_with_identity_headers() {
    let (rsa, ec, ed) = (
        SigningKey::rsa("r1"),
        SigningKey::ec("e1"),
        SigningKey::ed("d1"),
    );
    let jwks = JwksServer::start(&[&rsa, &ec, &ed], 300).await;
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&yaml(&upstream, &jwks, "")).await;

    for key in [&rsa, &ec, &ed] {
        let mut claims = claims(ISSUER, "alice");
        claims["org"] = json!("acme");
        let token = key.sign(&claims);
        let reply = get_with(
            &node.url("/api/x"),
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-auth-sub", "root"),
                ("x-consumer-plan", "platinum"),
            ],
        )
        .await;
        assert_eq!(reply.status, 200, "{:?}: {:?}", key.alg, reply.body);
        let seen = upstream.last();
        assert_eq!(seen.headers["x-auth-sub"], "alice", "client copy replaced");
        assert_eq!(seen.headers["x-auth-scopes"], "read write");
        assert_eq!(seen.headers["x-auth-roles"], "reader");
        assert_eq!(seen.headers["x-auth-tenant"], "t1");
        assert_eq!(seen.headers["x-auth-issuer"], ISSUER);
        assert_eq!(seen.headers["x-auth-method"], "jwt");
        assert_eq!(seen.headers["x-consumer-name"], "acme");
        assert_eq!(seen.headers["x-consumer-id"], "c-1");
        assert_eq!(seen.headers["x-consumer-plan"], "gold");
        assert_eq!(seen.headers.get_all("x-auth-sub").iter().count(), 1);
    }
    // The same token again is a cache hit.
    let token = rsa.sign(&claims(ISSUER, "bob"));
    assert_eq!(bearer(&node, "/api/1", &token).await.status, 200);
    assert_eq!(bearer(&node, "/api/2", &token).await.status, 200);
    let text = metrics(&node).await;
    assert!(
        text.contains(r#"meridian_auth_cache_total{cache="jwt:idp",result="hit"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"meridian_jwks_keys{issuer="idp"} 3"#),
        "{text}"
    );
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_bearer_challenge_and_never_reach_the_backend() {
    let rsa = SigningKey::rsa("r1");
    let jwks = JwksServer::start(&[&rsa], 300).await;
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start_with(&yaml(&upstream, &jwks, ""), |raw| {
        // Let a 100 KB token reach the auth stage.
        raw.limits.max_header_bytes = raft::model::ByteSize(512 << 10);
    })
    .await;
    // Warm the keys.
    assert_eq!(
        bearer(&node, "/api", &rsa.sign(&claims(ISSUER, "a")))
            .await
            .status,
        200
    );
    let before = upstream.count();
    let fetches_before = jwks.fetches();

    let now = now();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims(ISSUER, "mallory");
        edit(&mut c);
        c
    };
    let kid_header = |kid: &str| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        header
    };
    let hs256 = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("r1".into());
        jsonwebtoken::encode(
            &header,
            &claims(ISSUER, "mallory"),
            &EncodingKey::from_secret(&rsa.public_der).unwrap(),
        )
        .unwrap()
    };
    let huge = {
        let mut c = claims(ISSUER, "mallory");
        c["padding"] = json!("x".repeat(100 * 1024));
        rsa.sign(&c)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            raw_token(
                &json!({"alg": "none", "kid": "r1"}),
                &claims(ISSUER, "m"),
                b"",
            ),
            "malformed_token",
        ),
        (
            "HS256 with the RSA public key",
            hs256,
            "algorithm_not_allowed",
        ),
        (
            "wrong iss",
            rsa.sign(&with(&|c| c["iss"] = json!("https://evil.test/"))),
            "invalid_issuer",
        ),
        (
            "wrong aud",
            rsa.sign(&with(&|c| c["aud"] = json!("other"))),
            "invalid_audience",
        ),
        (
            "expired",
            rsa.sign(&with(&|c| {
                c["exp"] = json!(now - 600);
                c["iat"] = json!(now - 1200);
            })),
            "token_expired",
        ),
        (
            "not yet valid",
            rsa.sign(&with(&|c| c["nbf"] = json!(now + 600))),
            "token_not_yet_valid",
        ),
        (
            "no exp",
            rsa.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            "invalid_claims",
        ),
        (
            "unknown kid",
            rsa.sign_with(&kid_header("nope"), &claims(ISSUER, "m")),
            "unknown_key",
        ),
        (
            "path kid",
            rsa.sign_with(&kid_header("../../etc/passwd"), &claims(ISSUER, "m")),
            "unknown_key",
        ),
        (
            "SQL kid",
            rsa.sign_with(&kid_header("' OR 1=1 --"), &claims(ISSUER, "m")),
            "unknown_key",
        ),
        (
            "bad signature",
            {
                let token = rsa.sign(&claims(ISSUER, "m"));
                let other = SigningKey::rsa("r1").sign(&claims(ISSUER, "m"));
                let (head, _) = token.rsplit_once('.').unwrap();
                let (_, sig) = other.rsplit_once('.').unwrap();
                format!("{head}.{sig}")
            },
            "invalid_signature",
        ),
        (
            "jku pointing elsewhere",
            {
                let mut header = kid_header("evil");
                header.jku = Some("http://127.0.0.1:1/jwks".into());
                SigningKey::rsa("evil").sign_with(&header, &claims(ISSUER, "m"))
            },
            "unknown_key",
        ),
        ("garbage", "not-a-token".into(), "malformed_token"),
        ("garbage with dots", "a.b.c".into(), "malformed_token"),
        ("100 KB token", huge, "token_too_large"),
    ];
    for (name, token, code) in cases {
        let reply = bearer(&node, "/api/x", &token).await;
        assert_refused(&reply, 401, code);
        let challenge = reply.header("www-authenticate");
        assert!(
            challenge.starts_with("Bearer realm=\"meridian\", error=\"invalid_token\""),
            "{name}: {challenge}"
        );
    }
    let missing = get(&node.url("/api/x")).await;
    assert_refused(&missing, 401, "missing_credentials");
    assert_eq!(
        missing.header("www-authenticate"),
        "Bearer realm=\"meridian\""
    );

    let weak = bearer(&node, "/admin", &rsa.sign(&claims(ISSUER, "a"))).await;
    assert_refused(&weak, 403, "insufficient_scope");
    assert_eq!(
        weak.header("www-authenticate"),
        "Bearer realm=\"meridian\", error=\"insufficient_scope\", scope=\"admin\""
    );
    let mut admin = claims(ISSUER, "a");
    admin["scope"] = json!("read admin");
    assert_eq!(bearer(&node, "/admin", &rsa.sign(&admin)).await.status, 200);

    assert_eq!(
        upstream.count(),
        before + 1,
        "only the admin token was forwarded"
    );
    // Unknown kids cause at most one fetch per unknown_kid_interval (1s):
    // the four above ran within a few of them.
    assert!(
        jwks.fetches() - fetches_before <= 4,
        "{} JWKS fetches for unknown kids",
        jwks.fetches() - fetches_before
    );
    let text = metrics(&node).await;
    for reason in [
        "token_expired",
        "invalid_audience",
        "unknown_key",
        "token_too_large",
    ] {
        assert!(
            text.contains(&format!(
                "meridian_auth_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {text}"
        );
    }
}

async fn revoke(node: &TestNode, body: serde_json::Value) {
    let reply = send(
        Request::post(node.admin_url("/v1/revocations"))
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

#[tokio::test]
async fn revoked_jti_and_subject_are_refused_even_when_cached() {
    let ec = SigningKey::ec("e1");
    let jwks = JwksServer::start(&[&ec], 300).await;
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&yaml(&upstream, &jwks, "")).await;

    let mut by_jti = claims(ISSUER, "carol");
    by_jti["jti"] = json!("token-1");
    let token = ec.sign(&by_jti);
    assert_eq!(
        bearer(&node, "/api", &token).await.status,
        200,
        "cached now"
    );
    revoke(&node, json!({"jti": "token-1"})).await;
    assert_refused(&bearer(&node, "/api", &token).await, 401, "token_revoked");

    let mut old = claims(ISSUER, "dave");
    old["iat"] = json!(now() - 60);
    let old = ec.sign(&old);
    assert_eq!(bearer(&node, "/api", &old).await.status, 200);
    revoke(&node, json!({"sub": "dave"})).await;
    assert_refused(&bearer(&node, "/api", &old).await, 401, "token_revoked");
    // Tokens issued after the revocation are fine.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut fresh = claims(ISSUER, "dave");
    fresh["iat"] = json!(now() + 1);
    assert_eq!(bearer(&node, "/api", &ec.sign(&fresh)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_during_load_fails_no_request() {
    let old = SigningKey::rsa("2026-old");
    let new = SigningKey::ec("2026-new");
    let jwks = JwksServer::start(&[&old], 3600).await;
    let upstream = MockUpstream::echo("u").await;
    let node = Arc::new(TestNode::start(&yaml(&upstream, &jwks, "")).await);

    let rotated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut workers = Vec::new();
    for w in 0..4 {
        let (node, rotated, ok, failed) =
            (node.clone(), rotated.clone(), ok.clone(), failed.clone());
        let tokens = (
            old.sign(&claims(ISSUER, &format!("w{w}"))),
            new.sign(&claims(ISSUER, &format!("w{w}"))),
        );
        workers.push(tokio::spawn(async move {
            let client = http1();
            let mut i = 0u32;
            while tokio::time::Instant::now() < deadline && i < 5_000 {
                i += 1;
                let token = if rotated.load(Ordering::SeqCst) {
                    &tokens.1
                } else {
                    &tokens.0
                };
                let request = Request::get(node.url("/api/load"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::default())
                    .unwrap();
                let reply = send_with(&client, request).await;
                if reply.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed during rotation: {} {:?}", reply.status, reply.body);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The IdP publishes the new key next to the old one, then signs with it.
    jwks.publish(&[&old, &new]);
    rotated.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "{} requests",
        ok.load(Ordering::Relaxed)
    );
    assert!(
        jwks.fetches() <= 3,
        "the new kid caused one shared fetch, not one per request ({})",
        jwks.fetches()
    );
}

#[tokio::test]
async fn cached_keys_keep_working_when_the_jwks_server_is_down() {
    let ed = SigningKey::ed("d1");
    let jwks = JwksServer::start(&[&ed], 1).await;
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&yaml(&upstream, &jwks, "")).await;
    assert_eq!(
        bearer(&node, "/api", &ed.sign(&claims(ISSUER, "a")))
            .await
            .status,
        200
    );

    jwks.kill();
    // max-age=1 and min_refresh=1s: several refreshes fail meanwhile.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 0..5 {
        let token = ed.sign(&claims(ISSUER, &format!("fresh-{i}")));
        assert_eq!(
            bearer(&node, "/api", &token).await.status,
            200,
            "cached keys still verify"
        );
    }
    let unknown = SigningKey::ed("d2").sign(&claims(ISSUER, "x"));
    assert_refused(&bearer(&node, "/api", &unknown).await, 401, "unknown_key");
    let text = metrics(&node).await;
    assert!(
        counter(
            &text,
            r#"meridian_jwks_fetches_total{issuer="idp",result="error"}"#
        ) >= 1,
        "failed fetches are counted: {text}"
    );
    assert!(
        text.contains(r#"meridian_jwks_keys{issuer="idp"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_route_taking_keys_or_tokens_challenges_for_both() {
    let ec = SigningKey::ec("e1");
    let jwks = JwksServer::start(&[&ec], 300).await;
    let upstream = MockUpstream::echo("u").await;
    let extra = "routes:\n  - { name: mixed, match: { path_prefix: /mixed }, auth: [api_key, jwt], upstream: u }\n";
    let yaml = yaml(&upstream, &jwks, "").replace("routes:\n", extra);
    let node = TestNode::start(&yaml).await;
    let missing = get(&node.url("/mixed")).await;
    assert_refused(&missing, 401, "missing_credentials");
    let challenges: Vec<&str> = missing
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        challenges,
        ["ApiKey header=\"X-API-Key\"", "Bearer realm=\"meridian\""]
    );
    let expired = {
        let mut c = claims(ISSUER, "x");
        c["exp"] = json!(now() - 100);
        ec.sign(&c)
    };
    let refused = bearer(&node, "/mixed", &expired).await;
    assert_refused(&refused, 401, "token_expired");
    assert_eq!(
        refused.headers.get_all("www-authenticate").iter().count(),
        2
    );
    assert_eq!(
        bearer(&node, "/mixed", &ec.sign(&claims(ISSUER, "y")))
            .await
            .status,
        200
    );
    assert_eq!(upstream.count(), 1);
}
