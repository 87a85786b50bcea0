//! Cluster benchmarks, printed as Markdown (not timed tests):
//!
//! 1. revocation propagation in a 3-node cluster over real QUIC: the time
//!    from `DELETE /v1/keys/{id}` returning (no `wait`) to the last node
//!    having applied it, p50/p99 over 200 revocations, beside the measured
//!    peer RTT;
//! 2. commit throughput with 1, 64 and 256 concurrent writers on the leader;
//! 3. disk and memory after 100,000 revocations applied and purged.
//!
//! Run: `cargo bench -p tests --bench cluster` (set `REVOCATIONS`,
//! `DISK_COMMANDS` to change the counts).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use raft::model::{Command, Revocation};
use tests::{MockUpstream, TestNode};
use tokio::time::Instant;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            total += if meta.is_dir() {
                dir_bytes(&entry.path())
            } else {
                meta.len()
            };
        }
    }
    total
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn yaml(upstream: &MockUpstream) -> String {
    format!(
        "upstreams:\n  u: {{ targets: [\"{}\"] }}\nconsumers:\n  - {{ name: acme }}\nroutes:\n  - {{ name: r, upstream: u, auth: [api_key] }}\n",
        upstream.target()
    )
}

async fn three_nodes(yaml: &str) -> Vec<TestNode> {
    let mut nodes = vec![TestNode::start(yaml).await];
    for id in 2..=3 {
        let token = nodes[0]
            .gateway
            .cluster()
            .token(Duration::from_secs(600))
            .unwrap()
            .encode();
        nodes.push(TestNode::join(id, &format!("region-{id}"), &token, |_| {}).await);
    }
    // Wait until all three vote.
    for _ in 0..200 {
        let voters = nodes[0]
            .gateway
            .cluster()
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        if voters == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes
}

async fn http(method: http::Method, url: &str) -> serde_json::Value {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Default::default())
        .unwrap();
    tests::send(request).await.json()
}

async fn propagation(nodes: &[TestNode], rounds: usize) {
    // Peer RTT over QUIC: a request/answer on an established connection.
    let first = nodes[0].gateway.cluster();
    let target = nodes[1].gateway.cluster();
    let address = target.plane.local_addr().to_string();
    let mut rtts = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        first
            .plane
            .request(
                target.id,
                &address,
                &node::peer::Request::Applied,
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        rtts.push(started.elapsed());
    }
    rtts.sort();

    let mut delays = Vec::new();
    for round in 0..rounds {
        let created = http(
            http::Method::POST,
            &nodes[0].admin_url("/v1/consumers/acme/keys?wait=all"),
        )
        .await;
        let id = created["id"].as_str().unwrap().to_owned();
        // Watch every node's applied state from before the revocation.
        let mut watchers = Vec::new();
        for node in nodes {
            let mut applied = node.gateway.cluster().subscribe();
            let id = id.clone();
            watchers.push(tokio::spawn(async move {
                let _ = applied.wait_for(|a| !a.state.keys.contains_key(&id)).await;
                Instant::now()
            }));
        }
        // Revoke through a rotating node, without waiting for the others.
        let via = &nodes[round % nodes.len()];
        let revoked = http(
            http::Method::DELETE,
            &via.admin_url(&format!("/v1/keys/{id}")),
        )
        .await;
        assert!(revoked["index"].is_u64(), "{revoked}");
        let returned = Instant::now();
        let mut last = returned;
        for watcher in watchers {
            last = last.max(watcher.await.unwrap());
        }
        delays.push(last - returned);
    }
    delays.sort();
    println!("### Revocation propagation (3 nodes, QUIC on loopback)\n");
    println!("| measure | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| peer RTT (QUIC request/answer) | {} | {} | {} |",
        ms(percentile(&rtts, 0.5)),
        ms(percentile(&rtts, 0.99)),
        ms(*rtts.last().unwrap())
    );
    println!(
        "| revoke returned → last node applied ({rounds} revocations) | {} | {} | {} |",
        ms(percentile(&delays, 0.5)),
        ms(percentile(&delays, 0.99)),
        ms(*delays.last().unwrap())
    );
    let target = 2.0 * percentile(&rtts, 0.99).as_secs_f64() * 1000.0 + 20.0;
    println!("\ntarget: p99 ≤ 2 × RTT + 20 ms = {target:.2} ms\n");
}

async fn throughput(nodes: &[TestNode]) {
    println!(
        "### Commit throughput (3 nodes, leader-local writes, sled with fsync per append batch)\n"
    );
    println!("| writers | commits/s | mean latency (ms) |");
    println!("|---:|---:|---:|");
    let leader = nodes
        .iter()
        .find(|n| n.gateway.cluster().is_leader())
        .unwrap()
        .gateway
        .cluster()
        .clone();
    for writers in [1usize, 64, 256] {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (raft, done) = (leader.raft.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let request = raft::model::Request {
                        at: node::cluster::now_ms(),
                        command: Command::Revoke {
                            target: Revocation::JwtId(format!("bench-{w}-{i}")),
                            expires_at: node::cluster::now_ms() + 1000,
                        },
                    };
                    raft.client_write(request).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            }));
        }
        let started = Instant::now();
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let commits = done.load(Ordering::Relaxed) as f64;
        println!(
            "| {writers} | {:.0} | {:.2} |",
            commits / elapsed,
            elapsed * 1000.0 * writers as f64 / commits
        );
    }
    println!(
        "\nopenraft 0.9's published figures (README, in-memory store and network, no fsync): 70,000 put/s with 1 client, 730,000 with 64, 1,014,000 with 256.\n"
    );
}

async fn disk(commands: usize) {
    let upstream = MockUpstream::echo("u").await;
    let node = TestNode::start(&yaml(&upstream)).await;
    let cluster = node.gateway.cluster().clone();
    let rss_before = rss_kib();
    let start_bytes = dir_bytes(node.data.path());
    let next = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..128 {
        let (raft, next, total) = (cluster.raft.clone(), next.clone(), commands as u64);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                // Each revocation expires two seconds after it is made.
                let now = node::cluster::now_ms();
                let request = raft::model::Request {
                    at: now,
                    command: Command::Revoke {
                        target: Revocation::JwtId(format!("token-{i:08}")),
                        expires_at: now + 2000,
                    },
                };
                raft.client_write(request).await.unwrap();
            }
        }));
    }
    let data = node.data.path().to_owned();
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(dir_bytes(&data), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let started = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let live = cluster.applied().state.revocations.len();
    // Let them expire, then apply a little more so the purge runs and a
    // snapshot replaces the log.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 0..1100 {
        let now = node::cluster::now_ms();
        let request = raft::model::Request {
            at: now,
            command: Command::Revoke {
                target: Revocation::JwtId(format!("late-{i}")),
                expires_at: now + 1,
            },
        };
        cluster.raft.client_write(request).await.unwrap();
    }
    cluster.raft.trigger().snapshot().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampler.abort();
    let after = cluster.applied();
    let metrics = cluster.raft.metrics().borrow().clone();
    println!(
        "### Disk and memory after {commands} revocations applied and purged (one node, sled)\n"
    );
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| apply rate (128 writers) | {:.0} commits/s |",
        commands as f64 / elapsed.as_secs_f64()
    );
    println!("| revocations live at the end of the burst | {live} |");
    println!(
        "| revocations live after expiry + purge | {} |",
        after.state.revocations.len()
    );
    println!(
        "| data dir at start | {:.1} MiB |",
        start_bytes as f64 / 1048576.0
    );
    println!(
        "| data dir peak during the burst | {:.1} MiB |",
        peak.load(Ordering::Relaxed) as f64 / 1048576.0
    );
    println!(
        "| data dir after purge and snapshot | {:.1} MiB |",
        dir_bytes(node.data.path()) as f64 / 1048576.0
    );
    println!(
        "| log entries kept | {} |",
        metrics.last_log_index.unwrap_or(0) - metrics.purged.map_or(0, |p| p.index)
    );
    println!(
        "| process RSS growth | {:.1} MiB |",
        (rss_kib().saturating_sub(rss_before)) as f64 / 1024.0
    );
    node.stop().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = MockUpstream::echo("u").await;
        let nodes = three_nodes(&yaml(&upstream)).await;
        propagation(&nodes, env("REVOCATIONS", 200)).await;
        throughput(&nodes).await;
        for node in nodes {
            node.stop().await;
        }
        disk(env("DISK_COMMANDS", 100_000)).await;
    });
}
