//! Request ids, trace context, access log, metrics and probes.

use std::time::Duration;

use crate::client::get_with;
use crate::{MockUpstream, TestNode, eventually, get};

fn yaml(upstream: &MockUpstream) -> String {
    format!(
        "upstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: /r }}, upstream: u }}\n",
        upstream.target()
    )
}

#[tokio::test]
async fn request_ids_are_created_kept_or_replaced() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&yaml(&upstream)).await;
    let generated = get(&node.url("/r")).await;
    let id = generated.header("x-request-id").to_owned();
    assert_eq!(id.len(), 36);
    assert_eq!(upstream.last().headers["x-request-id"], id.as_str());
    let kept = get_with(&node.url("/r"), &[("x-request-id", "abc-123")]).await;
    assert_eq!(kept.header("x-request-id"), "abc-123");
    let hostile = get_with(
        &node.url("/r"),
        &[("x-request-id", "<script>alert(1)</script>")],
    )
    .await;
    assert_ne!(hostile.header("x-request-id"), "<script>alert(1)</script>");
    assert_eq!(
        upstream.last().headers["x-request-id"],
        hostile.header("x-request-id")
    );
    let traced = get(&node.url("/r")).await;
    let traceparent = traced.header("traceparent");
    assert_eq!(traceparent.len(), 55);
    assert_eq!(upstream.last().headers["traceparent"], traceparent);
}

#[tokio::test]
async fn access_log_lines_are_json() {
    let upstream = MockUpstream::echo("u").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let log = path.to_str().unwrap().to_owned();
    let node = TestNode::start_with(&yaml(&upstream), |raw| raw.log.access_log = log).await;
    let logged = get_with(&node.url("/r/x?secret=1"), &[("x-request-id", "log-me")]).await;
    let traceparent = logged.header("traceparent").to_owned();
    let missing = get(&node.url("/missing")).await;
    let generated = missing.header("x-request-id").to_owned();
    // The longest id a client's is kept at, logged whole.
    let longest = "a".repeat(128);
    get_with(&node.url("/r"), &[("x-request-id", &longest)]).await;
    node.stop().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[1]["request_id"], generated.as_str());
    assert_eq!(lines[2]["request_id"], longest.as_str());
    let first = &lines[0];
    assert_eq!(first["request_id"], "log-me");
    assert_eq!(first["route"], "r");
    assert_eq!(first["status"], 200);
    assert_eq!(first["path"], "/r/x");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["upstream"], "u");
    assert_eq!(first["target"], upstream.target());
    assert_eq!(first["complete"], true);
    assert_eq!(first["client_ip"], "127.0.0.1");
    let client: std::net::SocketAddr = first["client"].as_str().unwrap().parse().unwrap();
    assert!(client.ip().is_loopback() && client.port() > 0, "{client}");
    assert_eq!(first["trace_id"], traceparent[3..35]);
    assert_ne!(lines[1]["trace_id"], first["trace_id"]);
    assert_eq!(lines[1]["trace_id"].as_str().unwrap().len(), 32);
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(first["upstream_ms"].as_f64().unwrap() > 0.0);
    assert!(first["bytes_out"].as_u64().unwrap() > 0);
    assert!(
        !text.contains("secret=1"),
        "query strings stay out of the log"
    );
    assert_eq!(lines[1]["status"], 404);
    assert_eq!(lines[1]["error"], "no_route");
}

#[tokio::test]
async fn metrics_and_probes() {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&yaml(&upstream)).await;
    for _ in 0..3 {
        get(&node.url("/r")).await;
    }
    get(&node.url("/missing")).await;
    let metrics = node.admin_url("/metrics");
    let text = || async { String::from_utf8_lossy(&get(&metrics).await.body).into_owned() };
    assert!(
        eventually(Duration::from_secs(2), || async {
            text()
                .await
                .contains(r#"meridian_requests_total{route="r",method="GET",status="2xx"} 3"#)
        })
        .await,
        "{}",
        text().await
    );
    let text = text().await;
    for expected in [
        r#"meridian_requests_total{route="none",method="GET",status="4xx"} 1"#,
        r#"meridian_request_duration_seconds_count{route="r"} 3"#,
        r#"meridian_upstream_request_duration_seconds_count{upstream="u"} 3"#,
        r#"meridian_client_errors_total{code="no_route"} 1"#,
        "meridian_config_version 1",
        r#"meridian_config_reloads_total{result="ok"} 1"#,
        r#"meridian_open_connections{listener="proxy"}"#,
        r#"meridian_connections_total{listener="proxy"}"#,
        r#"meridian_upstream_errors_total{upstream="u",kind="upstream_connect_failed"} 0"#,
    ] {
        assert!(text.contains(expected), "missing {expected}\n{text}");
    }
    let health = get(&node.admin_url("/healthz")).await;
    assert_eq!(health.status, 200);
    let ready = get(&node.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["config_version"], 1);
}

#[tokio::test]
async fn not_ready_without_configuration() {
    let node = TestNode::start("").await;
    let ready = get(&node.admin_url("/readyz")).await;
    assert_eq!(
        ready.status, 200,
        "an empty document is still a configuration"
    );
    let data = tempfile::tempdir().unwrap();
    let bare = {
        let mut raw = node::config::RawConfig {
            data_dir: data.path().to_owned(),
            ..node::config::RawConfig::default()
        };
        raw.listen.proxy = "127.0.0.1:0".into();
        raw.listen.admin = "127.0.0.1:0".into();
        raw.listen.peer = "127.0.0.1:0".into();
        raw.log.access_log = "off".into();
        node::App::build(raw.validate().unwrap(), None)
            .await
            .unwrap()
    };
    let admin = bare.admin_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(bare.run(stop.clone().cancelled_owned()));
    let ready = get(&format!("http://{admin}/readyz")).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "no gateway configuration");
    stop.cancel();
    task.await.unwrap();
}
