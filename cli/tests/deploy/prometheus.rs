//! A real Prometheus (the Debian package) scrapes a `meridian dev` cluster:
//! every node's `/metrics` passes `promtool check metrics`, the alert rules
//! of `deploy/prometheus` load and evaluate without error, and every query
//! of the Grafana dashboard returns data.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{BIN, Running, deploy, get, read, tool};
use crate::common::{dev_nodes, free_tcp};

/// Dashboard queries on series of features that are not merged yet; each
/// entry is a metric name and the feature that will export it. A query that
/// mentions one of them may return nothing; once it returns data, the test
/// fails and asks for the entry to be removed, so the list only shrinks.
const NOT_YET_EXPORTED: &[(&str, &str)] = &[];

/// The dashboard's variables as a query sees them with every region chosen.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "15s")
        .replace("${region}", ".*")
        .replace("$region", ".*")
}

/// Every `expr` of every panel (and nested panel) of a Grafana dashboard.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                found.push((title.clone(), expr.to_owned()));
            }
        }
        found.extend(panel_queries(panel));
    }
    found
}

/// `meridian dev` on free loopback ports; (proxy, admin, region) per node.
fn dev() -> (Running, Vec<(SocketAddr, SocketAddr, String)>) {
    let mut child = Command::new(BIN)
        .args(["dev", "--proxy", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--access-log", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meridian starts");
    let stderr = child.stderr.take().unwrap();
    let running = Running(child);
    let (tx, rx) = mpsc::channel();
    // Reads stderr to its end, so the node never writes into a closed pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut banner = String::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Ctrl-C drains and stops.") {
            break;
        }
    }
    let nodes = dev_nodes(&banner);
    assert_eq!(nodes.len(), 3, "{banner}");
    (running, nodes)
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus's answer to an instant query: the result vector.
fn query(prometheus: SocketAddr, expr: &str) -> Vec<Value> {
    let (status, body) = get(
        prometheus,
        &format!("/api/v1/query?query={}", url_encode(expr)),
    );
    assert_eq!(status, 200, "{expr}: {body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], "success", "{expr}: {body}");
    match &answer["data"]["result"] {
        Value::Array(result) => result.clone(),
        // A scalar answer is one value.
        other => vec![serde_json::json!({ "value": other })],
    }
}

/// Whether a result vector has at least one finite sample.
fn has_data(result: &[Value]) -> bool {
    result.iter().any(|series| {
        series["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

/// The requests the dashboard needs to see: successes on two upstreams, a
/// 404, a 401 (auth failure), 429s (rate limit) and a 400 refused before
/// routing.
fn traffic(proxies: &[SocketAddr]) {
    for proxy in proxies {
        for target in [
            "/echo/hello",
            "/api/v2/users/1",
            "/nowhere",
            "/private/x",
            "/limited/x",
            "/echo/a%2Fb",
        ] {
            get(*proxy, target);
        }
    }
}

#[test]
fn prometheus_scrapes_dev_and_every_dashboard_query_has_data() {
    let (Some(prometheus_bin), Some(promtool)) = (tool("prometheus"), tool("promtool")) else {
        return;
    };
    let started = Instant::now();
    let (_dev, nodes) = dev();
    let proxies: Vec<SocketAddr> = nodes.iter().map(|n| n.0).collect();

    // The statuses the dashboard's series come from, once, checked.
    let proxy = proxies[0];
    assert_eq!(get(proxy, "/echo/hello").0, 200);
    assert_eq!(get(proxy, "/nowhere").0, 404);
    assert_eq!(get(proxy, "/private/x").0, 401);
    assert_eq!(get(proxy, "/echo/a%2Fb").0, 400);
    let limited: Vec<u16> = (0..6).map(|_| get(proxy, "/limited/x").0).collect();
    assert_eq!(limited.last(), Some(&429), "{limited:?}");

    traffic(&proxies);

    // promtool check metrics: format and naming lint of each node's output.
    for (_, admin, region) in &nodes {
        let (status, text) = get(*admin, "/metrics");
        assert_eq!(status, 200);
        assert!(text.contains("meridian_requests_total"), "{region}: {text}");
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = check.wait_with_output().unwrap();
        assert!(
            output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
            "promtool check metrics on {region}: {output:?}\n{text}"
        );
    }

    // Prometheus with the shipped alert rules, scraping every second.
    let dir = tempfile::tempdir().unwrap();
    let rules = deploy()
        .join("prometheus/meridian.rules.yml")
        .canonicalize()
        .unwrap();
    let mut config = format!(
        "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
         rule_files: [\"{}\"]\n\
         scrape_configs:\n  - job_name: meridian\n    honor_labels: true\n    static_configs:\n",
        rules.display()
    );
    for (_, admin, region) in &nodes {
        config.push_str(&format!(
            "      - {{ targets: [\"{admin}\"], labels: {{ region: {region} }} }}\n"
        ));
    }
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, &config).unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
    let _prometheus = Running(
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );

    // Traffic goes on while Prometheus scrapes, so rates are not zero.
    let stop = Arc::new(AtomicBool::new(false));
    let generator = {
        let stop = stop.clone();
        let proxies = proxies.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                traffic(&proxies);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let dashboard: Value =
        serde_json::from_str(&read(&deploy().join("grafana/meridian.json"))).unwrap();
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let exempt = |expr: &str| {
        NOT_YET_EXPORTED
            .iter()
            .find(|(metric, _)| expr.contains(metric))
    };

    // Until every query has data, or 40 seconds.
    let deadline = Instant::now() + Duration::from_secs(40);
    let missing = loop {
        let missing: Vec<&(String, String)> = queries
            .iter()
            .filter(|(_, expr)| exempt(expr).is_none())
            .filter(|(_, expr)| {
                get(web, "/-/ready").0 != 200 || !has_data(&query(web, &substitute(expr)))
            })
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    stop.store(true, Ordering::Relaxed);
    generator.join().unwrap();
    assert!(
        missing.is_empty(),
        "dashboard panels without data after {:?}: {missing:#?}",
        started.elapsed()
    );

    // The region variable offers the three regions.
    let (_, body) = get(
        web,
        "/api/v1/label/region/values?match[]=meridian_raft_term",
    );
    let regions: Value = serde_json::from_str(&body).unwrap();
    for (_, _, region) in &nodes {
        assert!(
            regions["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == region.as_str()),
            "{body}"
        );
    }

    // Exempted queries: still without data, else the entry must go.
    for (title, expr) in &queries {
        if let Some((metric, feature)) = exempt(expr) {
            assert!(
                query(web, &substitute(expr)).is_empty(),
                "panel {title:?} has data now that {feature} exports {metric}: \
                 remove it from NOT_YET_EXPORTED"
            );
        }
    }

    // Every alert rule loaded and evaluated on live data without error.
    let (_, body) = get(web, "/api/v1/rules");
    let rules: Value = serde_json::from_str(&body).unwrap();
    let evaluated: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(evaluated.len() >= 10, "{body}");
    for rule in &evaluated {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    // Followers hear the leader's heartbeats (every 100 ms in dev).
    let silence = query(web, "max(meridian_raft_leader_silence_seconds)");
    let silence: f64 = silence[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(silence < 2.0, "a node heard no leader for {silence} s");
}
