//! Integration tests: real nodes in-process on port 0, real mock upstreams,
//! real sockets. The support code lives here; the cases, one file per area,
//! are in `cases/` and compile into one test binary.
//!
//! # Layout
//! - [`TestNode`]: a node started from YAML, stopped at the end of a test.
//! - [`MockUpstream`]: an HTTP/1.1 + h2c server that records what it received.
//! - [`client`]: small HTTP helpers, including raw TCP for malformed input.
//! - [`dns`]: a DNS server whose records the test changes, and a resolver
//!   pointed at any server.
//! - [`idp`]: a test identity provider: signing keys, a JWKS server, an
//!   RFC 7662 introspection server.
//! - [`grpc`]: a tonic gRPC server (the library service) for the
//!   transcoding and passthrough cases.

pub mod client;
pub mod dns;
pub mod grpc;
pub mod idp;
pub mod redis;
pub mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use node::config::RawConfig;
use node::{App, Gateway};
use raft::model::GatewayConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use client::{Reply, get, send};
pub use upstream::MockUpstream;

/// A node running in this process.
pub struct TestNode {
    /// Proxy listener.
    pub proxy: SocketAddr,
    /// HTTPS proxy listener, when `[tls]` is configured.
    pub proxy_tls: Option<SocketAddr>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// The DNS responder (UDP and TCP), when `[dns]` has a zone.
    pub dns: Option<SocketAddr>,
    /// The node's request handlers (snapshots, metrics).
    pub gateway: std::sync::Arc<Gateway>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// The node's data directory (removed when the node is dropped).
    pub data: tempfile::TempDir,
    raw: RawConfig,
}

/// A stopped node whose data directory is kept.
pub struct Stopped {
    data: tempfile::TempDir,
    raw: RawConfig,
    /// Holds the node's peer port while it is down: the other nodes know it
    /// by that address, and a port-0 bind elsewhere in the test process
    /// could otherwise take it.
    reserved: Option<std::net::UdpSocket>,
}

impl Stopped {
    /// Starts the node again on its data directory and peer address.
    pub async fn start(self) -> TestNode {
        drop(self.reserved);
        TestNode::launch(self.raw, self.data, Launch::Restart).await
    }
}

/// How a test node comes up.
enum Launch {
    /// Found a one-node cluster with this configuration.
    Found(Box<GatewayConfig>),
    /// Join with a token.
    Join(String),
    /// Start again on an existing data directory.
    Restart,
}

/// The node configuration tests start from: loopback, port 0, fast raft.
pub fn test_config(data: &std::path::Path) -> RawConfig {
    let mut raw = RawConfig {
        data_dir: data.to_owned(),
        ..RawConfig::default()
    };
    raw.listen.proxy = "127.0.0.1:0".into();
    raw.listen.proxy_tls = "127.0.0.1:0".into();
    raw.listen.admin = "127.0.0.1:0".into();
    raw.listen.peer = "127.0.0.1:0".into();
    raw.raft.heartbeat = Duration::from_millis(50);
    raw.raft.election_timeout_min = Duration::from_millis(300);
    raw.raft.election_timeout_max = Duration::from_millis(600);
    raw.raft.leader_loss = Duration::from_secs(2);
    raw.log.access_log = "off".into();
    raw.shutdown.grace_period = Duration::from_secs(5);
    raw
}

impl TestNode {
    /// Starts a node serving `yaml` with test defaults.
    pub async fn start(yaml: &str) -> Self {
        Self::start_with(yaml, |_| {}).await
    }

    /// Starts a node serving `yaml`, after `tweak` adjusted the node config.
    pub async fn start_with(yaml: &str, tweak: impl FnOnce(&mut RawConfig)) -> Self {
        let gateway = GatewayConfig::parse(yaml)
            .unwrap_or_else(|e| panic!("invalid test gateway config:\n{e}\n{yaml}"));
        let data = tempfile::tempdir().expect("temp dir");
        let mut raw = test_config(data.path());
        tweak(&mut raw);
        Self::launch(raw, data, Launch::Found(Box::new(gateway))).await
    }

    /// Starts node `id` in `region` and joins it to a cluster with `token`.
    pub async fn join(
        id: u64,
        region: &str,
        token: &str,
        tweak: impl FnOnce(&mut RawConfig),
    ) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut raw = test_config(data.path());
        raw.id = id;
        raw.region = region.into();
        tweak(&mut raw);
        Self::launch(raw, data, Launch::Join(token.to_owned())).await
    }

    async fn launch(raw: RawConfig, data: tempfile::TempDir, how: Launch) -> Self {
        let config = raw.clone().validate().expect("valid test node config");
        let app = match how {
            Launch::Found(gateway) => App::build(config, Some(*gateway)).await,
            Launch::Join(token) => App::join(config, &token).await,
            Launch::Restart => App::build(config, None).await,
        }
        .expect("node starts");
        let stop = CancellationToken::new();
        let mut raw = raw;
        // A restart must come back on the same peer address: the others
        // know the node by it.
        raw.listen.peer = app.gateway().cluster().plane.local_addr().to_string();
        Self {
            proxy: app.proxy_addr(),
            proxy_tls: app.proxy_tls_addr(),
            admin: app.admin_addr(),
            dns: app.dns_addr(),
            gateway: app.gateway(),
            stop: stop.clone(),
            task: tokio::spawn(app.run(stop.cancelled_owned())),
            data,
            raw,
        }
    }

    /// Stops the node, keeping its data directory for a restart.
    pub async fn halt(self) -> Stopped {
        let Self {
            stop,
            task,
            data,
            raw,
            ..
        } = self;
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        // Hold the peer port until the restart. The stopped endpoint may
        // take a moment to release it (its last connections close), so
        // wait for it rather than let another socket take the port.
        let mut reserved = None;
        for _ in 0..100 {
            reserved = std::net::UdpSocket::bind(&raw.listen.peer).ok();
            if reserved.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Stopped {
            data,
            raw,
            reserved,
        }
    }

    /// Stops the node and starts it again on the same data directory.
    pub async fn restart(self) -> Self {
        self.halt().await.start().await
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.gateway.cluster().id
    }

    /// `http://<proxy><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// The value of `series` (name and labels as rendered) in the node's
    /// metrics, 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.gateway
            .metrics()
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// `http://<admin><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Replaces the gateway configuration through `PUT /v1/config`.
    pub async fn apply(&self, yaml: &str) -> Reply {
        let request = http::Request::put(self.admin_url("/v1/config"))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                yaml.to_owned(),
            )))
            .expect("valid request");
        send(request).await
    }

    /// Triggers shutdown and waits for the node to stop.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }

    /// Whether the node has stopped by itself (after a drain).
    pub fn is_stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// Cancels the node's shutdown token without waiting.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod cases;
