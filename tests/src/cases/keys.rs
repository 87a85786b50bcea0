//! API keys end to end: creation through the log, the `api_key` auth step,
//! identity headers, and revocation enforced on every node.

use std::time::Duration;

use http::Request;
use http_body_util::Full;

use crate::client::get_with;
use crate::{MockUpstream, TestNode, eventually, get, send};

fn yaml(upstream: &MockUpstream) -> String {
    format!(
        r#"
upstreams:
  u: {{ targets: ["{}"] }}
consumers:
  - {{ name: acme, id: c-123 }}
  - {{ name: globex }}
routes:
  - {{ name: private, match: {{ path_prefix: /private }}, auth: [api_key], upstream: u }}
  - {{ name: public, match: {{ path_prefix: /public }}, upstream: u }}
"#,
        upstream.target()
    )
}

async fn post(url: &str, body: &str) -> crate::Reply {
    send(
        Request::post(url)
            .body(Full::new(bytes::Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

async fn delete(url: &str) -> crate::Reply {
    send(Request::delete(url).body(Full::default()).unwrap()).await
}

#[tokio::test]
async fn api_keys_admit_identify_and_are_not_forwarded() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&yaml(&upstream)).await;

    let missing = get(&node.url("/private")).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.error_code(), "missing_credentials");
    assert_eq!(
        missing.header("www-authenticate"),
        "ApiKey header=\"X-API-Key\""
    );
    let wrong = get_with(
        &node.url("/private"),
        &[(
            "x-api-key",
            "mk_000000000000_00000000000000000000000000000000",
        )],
    )
    .await;
    assert_eq!(wrong.error_code(), "invalid_credentials");
    let garbage = get_with(&node.url("/private"), &[("x-api-key", "hello")]).await;
    assert_eq!(garbage.status, 401);
    assert_eq!(upstream.count(), 0, "nothing unauthenticated was forwarded");

    let created = post(&node.admin_url("/v1/consumers/acme/keys"), "").await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let key = created.json()["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("mk_"));
    let state = node.gateway.cluster().applied();
    let record = state.state.keys.values().next().unwrap();
    assert!(
        !record.hash.contains(&key[16..]),
        "only a hash is replicated"
    );

    let reply = get_with(
        &node.url("/private/data"),
        &[
            ("x-api-key", &key),
            ("x-consumer-id", "admin"),
            ("x-auth-sub", "root"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-consumer-id"], "c-123");
    assert_eq!(seen.headers["x-consumer-name"], "acme");
    assert!(
        !seen.headers.contains_key("x-api-key"),
        "the key is not forwarded"
    );
    assert!(
        !seen.headers.contains_key("x-auth-sub"),
        "forged identity is removed"
    );

    let public = get_with(&node.url("/public"), &[("x-consumer-id", "admin")]).await;
    assert_eq!(public.status, 200);
    assert!(
        !upstream.last().headers.contains_key("x-consumer-id"),
        "forged identity is removed on public routes too"
    );

    let unknown = post(&node.admin_url("/v1/consumers/nobody/keys"), "").await;
    assert_eq!(unknown.status, 404);

    let metrics =
        String::from_utf8_lossy(&get(&node.admin_url("/metrics")).await.body).into_owned();
    assert!(
        metrics.contains(r#"meridian_auth_failures_total{reason="missing_credentials"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn keys_expire() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&yaml(&upstream)).await;
    let created = post(
        &node.admin_url("/v1/consumers/globex/keys"),
        r#"{"ttl": "300ms"}"#,
    )
    .await;
    let key = created.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(
        get_with(&node.url("/private"), &[("x-api-key", &key)])
            .await
            .status,
        200
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            get_with(&node.url("/private"), &[("x-api-key", &key)])
                .await
                .status
                == 401
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_every_node_once_revoke_returns() {
    let upstream = MockUpstream::echo("u").await;
    let first = TestNode::start(&yaml(&upstream)).await;
    let mut nodes = vec![first];
    for id in 2..=3 {
        let token = nodes[0]
            .gateway
            .cluster()
            .token(Duration::from_secs(60))
            .unwrap()
            .encode();
        nodes.push(TestNode::join(id, &format!("region-{id}"), &token, |_| {}).await);
    }
    let created = post(&nodes[0].admin_url("/v1/consumers/acme/keys?wait=all"), "").await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let answer = created.json();
    let key = answer["key"].as_str().unwrap().to_owned();
    let id = answer["id"].as_str().unwrap().to_owned();
    for node in &nodes {
        let ok = eventually(Duration::from_secs(10), || async {
            get_with(&node.url("/private"), &[("x-api-key", &key)])
                .await
                .status
                == 200
        })
        .await;
        assert!(ok, "node {} admits the new key", node.id());
    }
    // Revoke through another node, waiting for every node.
    let revoked = delete(&nodes[1].admin_url(&format!("/v1/keys/{id}?wait=all"))).await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    for node in &nodes {
        let reply = get_with(&node.url("/private"), &[("x-api-key", &key)]).await;
        assert_eq!(
            reply.status,
            401,
            "node {} still admits a revoked key",
            node.id()
        );
    }
    let again = delete(&nodes[2].admin_url(&format!("/v1/keys/{id}"))).await;
    assert_eq!(again.status, 404);
}

#[tokio::test]
async fn keys_from_a_custom_header_or_the_opt_in_query_carry_the_plan() {
    let upstream = MockUpstream::echo("u").await;
    let yaml = format!(
        r#"
upstreams:
  u: {{ targets: ["{}"] }}
plans:
  gold: {{ description: "gold tier" }}
consumers:
  - {{ name: acme, plan: gold }}
  - {{ name: globex }}
auth:
  api_key: {{ header: X-Gateway-Key, query: api_key }}
routes:
  - {{ name: private, match: {{ path_prefix: /private }}, auth: [api_key], upstream: u }}
"#,
        upstream.target()
    );
    let node = TestNode::start(&yaml).await;
    let key = post(&node.admin_url("/v1/consumers/acme/keys"), "")
        .await
        .json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = post(&node.admin_url("/v1/consumers/globex/keys"), "")
        .await
        .json()["key"]
        .as_str()
        .unwrap()
        .to_owned();

    let missing = get_with(&node.url("/private"), &[("x-api-key", &key)]).await;
    assert_eq!(
        missing.status, 401,
        "the default header is not read any more"
    );
    assert_eq!(
        missing.header("www-authenticate"),
        "ApiKey header=\"X-Gateway-Key\""
    );

    let by_header = get_with(&node.url("/private/a"), &[("x-gateway-key", &key)]).await;
    assert_eq!(by_header.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-consumer-plan"], "gold");
    assert_eq!(seen.headers["x-consumer-name"], "acme");
    assert_eq!(seen.headers["x-auth-method"], "api_key");
    assert!(!seen.headers.contains_key("x-gateway-key"));

    let by_query = get(&node.url(&format!("/private/b?x=1&api_key={other}&y=2"))).await;
    assert_eq!(by_query.status, 200, "{:?}", by_query.body);
    let seen = upstream.last();
    assert_eq!(
        seen.uri, "/private/b?x=1&y=2",
        "the key is stripped from the URL"
    );
    assert_eq!(seen.headers["x-consumer-name"], "globex");
    assert!(
        !seen.headers.contains_key("x-consumer-plan"),
        "a consumer without a plan sends none"
    );

    let forged = get_with(
        &node.url("/private/c"),
        &[("x-gateway-key", &other), ("x-consumer-plan", "platinum")],
    )
    .await;
    assert_eq!(forged.status, 200);
    assert!(!upstream.last().headers.contains_key("x-consumer-plan"));

    let before = upstream.count();
    let bad_query = get(&node.url("/private?api_key=mk_00_00")).await;
    assert_eq!(bad_query.status, 401);
    assert_eq!(bad_query.error_code(), "invalid_credentials");
    assert_eq!(upstream.count(), before);
}

#[tokio::test]
async fn the_query_parameter_is_ignored_unless_configured() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&yaml(&upstream)).await;
    let key = post(&node.admin_url("/v1/consumers/acme/keys"), "")
        .await
        .json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = get(&node.url(&format!("/private?api_key={key}"))).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.error_code(), "missing_credentials");
    assert_eq!(upstream.count(), 0);
}
