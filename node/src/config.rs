//! `node.toml`: one node's own settings.
//!
//! [`RawConfig`] is the serde shape (kebab-case keys, unknown keys refused,
//! every field defaulted); [`RawConfig::validate`] turns it into a
//! [`Config`], so an unchecked configuration cannot reach the node. Every
//! error names the key, the value and the rule. Command-line overrides are
//! applied to the raw form, before validation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raft::model::{ByteSize, ConfigError, ConfigErrors};
use serde::Deserialize;

/// The longest `timeouts.*` value accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node id, unique in the cluster.
    pub id: u64,
    /// The region this node serves.
    pub region: String,
    /// Where the node keeps its state.
    pub data_dir: PathBuf,
    /// A gateway configuration file loaded at start and on SIGHUP.
    pub gateway: Option<PathBuf>,
    /// Listener addresses.
    pub listen: Listen,
    /// Tokio runtime settings.
    pub runtime: Runtime,
    /// Client-facing size and connection limits.
    pub limits: Limits,
    /// Client-facing timeouts.
    pub timeouts: ClientTimeouts,
    /// Admin API settings.
    pub admin: Admin,
    /// Logging.
    pub log: Log,
    /// Graceful shutdown.
    pub shutdown: Shutdown,
    /// Raft timings and policies.
    pub raft: Raft,
    /// TLS for the HTTPS listener; `None` when `[tls]` has no certificate.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Rate-limit state bounds.
    pub ratelimit: crate::ratelimit::Settings,
    /// The DNS resolver for upstream discovery (`[resolver]`).
    pub resolver: crate::dns::resolver::ResolverSettings,
    /// When this region serves, and the regions' addresses (`[gslb]`, `[regions]`).
    pub gslb: crate::regions::GslbSettings,
    /// Anycast announce / withdraw commands, when configured (`[anycast]`).
    pub anycast: Option<crate::regions::anycast::AnycastSettings>,
    /// The authoritative DNS responder, when `dns.zone` is set (`[dns]`).
    pub dns: Option<crate::dns::responder::DnsSettings>,
    /// `[peers]`: the address to dial for a node id instead of the peer
    /// address it advertises (NAT, a proxy, or the chaos harness's relay).
    pub peers: std::collections::BTreeMap<u64, String>,
}

/// Raft settings.
#[derive(Debug, Clone)]
pub struct Raft {
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Election timeout range.
    pub election_timeout: (Duration, Duration),
    /// Entries between snapshots (the log is purged up to each snapshot).
    pub snapshot_logs: u64,
    /// A node that has not heard from a leader for this long is stale.
    pub leader_loss: Duration,
    /// What a stale node does.
    pub on_leader_loss: LeaderLoss,
}

/// What a node does when it has lost contact with the leader for longer
/// than `raft.leader-loss`: its revocations may be stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderLoss {
    /// `/readyz` answers 503, so load balancers move traffic away (fail closed).
    NotReady,
    /// Keep serving with the last applied state (fail open), and say so in metrics.
    Serve,
}

/// Listener addresses.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Plain-HTTP proxy listener (HTTP/1.1 and h2c).
    pub proxy: SocketAddr,
    /// HTTPS proxy listener (bound only when `[tls]` has certificates).
    pub proxy_tls: SocketAddr,
    /// Admin API listener.
    pub admin: SocketAddr,
    /// Peer-plane (QUIC) listener.
    pub peer: SocketAddr,
    /// Host or IP other nodes and clients use to reach this node.
    pub advertise: String,
}

impl Listen {
    /// `advertise:port` for a listener bound to `address`.
    pub fn advertised(&self, address: SocketAddr) -> String {
        format!("{}:{}", self.advertise, address.port())
    }
}

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Worker threads; 0 means one per core.
    pub worker_threads: usize,
}

/// Client-facing limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open client connections; accepting pauses at the cap.
    pub max_connections: usize,
    /// Total size of the request's header fields (431 above).
    pub max_header_bytes: usize,
    /// Number of request header fields.
    pub max_headers: usize,
    /// Length of the request target (414 above).
    pub max_uri_bytes: usize,
    /// Request body size unless a route sets its own (413 above).
    pub max_body_bytes: u64,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Requests in flight on the proxy listener (all connections together);
    /// above it new requests are shed with 503 + `Retry-After`.
    pub max_in_flight: usize,
    /// Slowest accepted request-body rate in bytes per second, once
    /// `timeouts.body-rate-grace` of waiting on the client has passed (408
    /// below); `None` when off.
    pub min_body_rate: Option<u64>,
    /// Requests one connection may cancel (HTTP/2 `RST_STREAM`) within
    /// 10 s before it is closed (rapid-reset defence).
    pub max_reset_streams: u32,
}

/// Client-facing timeouts.
#[derive(Debug, Clone)]
pub struct ClientTimeouts {
    /// Receiving a request head; for HTTP/1.1 the period also starts when a
    /// kept-alive connection waits for its next request.
    pub header_read: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle: Duration,
    /// A connection whose pending write makes no progress for this long
    /// (the client stopped reading) is closed.
    pub write_idle: Duration,
    /// Waiting time on a request body allowed before `limits.min-body-rate`
    /// applies.
    pub body_rate_grace: Duration,
    /// How long the kernel holds a new connection that has sent nothing yet
    /// before handing it to the listener (`TCP_DEFER_ACCEPT`, whole
    /// seconds); zero accepts at once.
    pub defer_accept: Duration,
}

/// Admin API settings.
#[derive(Debug, Clone, Default)]
pub struct Admin {
    /// Bearer token required on `/v1/*` when set.
    pub token: Option<String>,
    /// Whether the admin listener speaks TLS, and asks for client certificates.
    pub tls: AdminTls,
}

/// `admin.tls`: the admin listener's transport security. Both TLS modes use
/// the node's certificate from the cluster CA (`<data-dir>/pki`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AdminTls {
    /// Plain HTTP (keep the listener on loopback).
    #[default]
    Off,
    /// HTTPS; clients verify the node against the cluster CA.
    On,
    /// HTTPS, and every client presents a certificate from the cluster CA
    /// (`meridian cluster cert` issues one) whose serial is not revoked.
    Mutual,
}

/// Where logs go.
#[derive(Debug, Clone)]
pub struct Log {
    /// Filter for the diagnostic log, e.g. `info` or `node=debug`.
    pub level: String,
    /// The JSON access log.
    pub access_log: AccessLogTarget,
}

/// Destination of the JSON access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// No access log.
    Off,
    /// Standard output.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
}

/// Graceful shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// In-flight requests get this long to finish before connections are closed.
    pub grace_period: Duration,
    /// After `meridian node drain`, the node keeps serving this long while
    /// it reports unhealthy (GSLB, anycast, `/readyz`), so traffic moves
    /// away before the listeners close.
    pub drain_delay: Duration,
}

/// The serde shape of `node.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawConfig {
    /// Node id (> 0).
    pub id: u64,
    /// Region name.
    pub region: String,
    /// State directory.
    pub data_dir: PathBuf,
    /// Gateway configuration file.
    pub gateway: Option<PathBuf>,
    /// `[listen]`.
    pub listen: RawListen,
    /// `[runtime]`.
    pub runtime: RawRuntime,
    /// `[limits]`.
    pub limits: RawLimits,
    /// `[timeouts]`.
    pub timeouts: RawTimeouts,
    /// `[admin]`.
    pub admin: RawAdmin,
    /// `[log]`.
    pub log: RawLog,
    /// `[shutdown]`.
    pub shutdown: RawShutdown,
    /// `[raft]`.
    pub raft: RawRaft,
    /// `[tls]`.
    pub tls: crate::tls::RawTls,
    /// `[ratelimit]`.
    pub ratelimit: crate::ratelimit::RawSettings,
    /// `[resolver]`.
    pub resolver: crate::dns::resolver::RawResolver,
    /// `[gslb]`.
    pub gslb: crate::regions::RawGslb,
    /// `[regions.NAME]`.
    pub regions: std::collections::BTreeMap<String, crate::regions::RawRegion>,
    /// `[anycast]`.
    pub anycast: crate::regions::anycast::RawAnycast,
    /// `[dns]`.
    pub dns: crate::dns::responder::RawDns,
    /// `[peers]`: node id = "host:port" to dial instead of what it advertises.
    pub peers: std::collections::BTreeMap<String, String>,
}

/// `[raft]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawRaft {
    /// `heartbeat`.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// `election-timeout-min`.
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    /// `election-timeout-max`.
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// `snapshot-logs`.
    pub snapshot_logs: u64,
    /// `leader-loss`.
    #[serde(with = "humantime_serde")]
    pub leader_loss: Duration,
    /// `on-leader-loss`: `not-ready` or `serve`.
    pub on_leader_loss: String,
}

impl Default for RawRaft {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            snapshot_logs: 1000,
            leader_loss: Duration::from_secs(10),
            on_leader_loss: "not-ready".into(),
        }
    }
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawListen {
    /// `proxy`.
    pub proxy: String,
    /// `proxy-tls`: the HTTPS proxy listener (used when `[tls]` has certificates).
    pub proxy_tls: String,
    /// `admin`.
    pub admin: String,
    /// `peer`.
    pub peer: String,
    /// `advertise`: host or IP to announce (defaults to the listen IP, or
    /// 127.0.0.1 when listening on all addresses).
    pub advertise: Option<String>,
}

/// `[runtime]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawRuntime {
    /// `worker-threads`.
    pub worker_threads: usize,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawLimits {
    /// `max-connections`.
    pub max_connections: usize,
    /// `max-header-bytes`.
    pub max_header_bytes: ByteSize,
    /// `max-headers`.
    pub max_headers: usize,
    /// `max-uri-bytes`.
    pub max_uri_bytes: ByteSize,
    /// `max-body-bytes`.
    pub max_body_bytes: ByteSize,
    /// `max-concurrent-streams`.
    pub max_concurrent_streams: u32,
    /// `max-in-flight`.
    pub max_in_flight: usize,
    /// `min-body-rate`: e.g. `"1KiB/s"`, or `"off"`.
    pub min_body_rate: String,
    /// `max-reset-streams`.
    pub max_reset_streams: u32,
}

/// `[timeouts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawTimeouts {
    /// `header-read`.
    #[serde(with = "humantime_serde")]
    pub header_read: Duration,
    /// `idle`.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// `write-idle`.
    #[serde(with = "humantime_serde")]
    pub write_idle: Duration,
    /// `body-rate-grace`.
    #[serde(with = "humantime_serde")]
    pub body_rate_grace: Duration,
    /// `defer-accept`.
    #[serde(with = "humantime_serde")]
    pub defer_accept: Duration,
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawAdmin {
    /// `token`.
    pub token: Option<String>,
    /// `tls`: `off`, `on` or `mutual`.
    pub tls: Option<String>,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawLog {
    /// `level`.
    pub level: String,
    /// `access-log`: `off`, `stdout` or a file path.
    pub access_log: String,
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawShutdown {
    /// `grace-period`.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// `drain-delay`.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            id: 1,
            region: "local".into(),
            data_dir: PathBuf::from("./data"),
            gateway: None,
            listen: RawListen::default(),
            runtime: RawRuntime::default(),
            limits: RawLimits::default(),
            timeouts: RawTimeouts::default(),
            admin: RawAdmin::default(),
            log: RawLog::default(),
            shutdown: RawShutdown::default(),
            raft: RawRaft::default(),
            tls: crate::tls::RawTls::default(),
            ratelimit: crate::ratelimit::RawSettings::default(),
            resolver: Default::default(),
            gslb: Default::default(),
            regions: Default::default(),
            anycast: Default::default(),
            dns: Default::default(),
            peers: Default::default(),
        }
    }
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            proxy: "0.0.0.0:8080".into(),
            proxy_tls: "0.0.0.0:8443".into(),
            admin: "127.0.0.1:9080".into(),
            peer: "0.0.0.0:9443".into(),
            advertise: None,
        }
    }
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_connections: 8192,
            max_header_bytes: ByteSize(32 << 10),
            max_headers: 100,
            max_uri_bytes: ByteSize(8 << 10),
            max_body_bytes: ByteSize(10 << 20),
            max_concurrent_streams: 256,
            max_in_flight: 10_000,
            min_body_rate: "1KiB/s".into(),
            max_reset_streams: 200,
        }
    }
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(30),
            idle: Duration::from_secs(300),
            write_idle: Duration::from_secs(60),
            body_rate_grace: Duration::from_secs(10),
            // nginx's `deferred` uses one second too.
            defer_accept: Duration::from_secs(1),
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".into(),
            access_log: "stdout".into(),
        }
    }
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(30),
            drain_delay: Duration::from_secs(10),
        }
    }
}

/// Why a `node.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the location.
        message: String,
    },
    /// A rule is broken.
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
}

impl RawConfig {
    /// Reads and parses `path` (not yet validated).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| LoadError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text (not yet validated).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|error| error.to_string().trim_end().to_owned())
    }

    /// Checks every rule and produces the usable [`Config`].
    pub fn validate(self) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut fail = |key: &str, value: &dyn std::fmt::Display, rule: &str| {
            errors.push(ConfigError {
                key: key.to_owned(),
                value: value.to_string(),
                rule: rule.to_owned(),
            })
        };
        if self.id == 0 {
            fail("id", &self.id, "must be greater than zero");
        }
        if self.region.is_empty()
            || !self
                .region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            fail(
                "region",
                &self.region,
                "must be a name of letters, digits, '-' and '_'",
            );
        }
        let mut peers = std::collections::BTreeMap::new();
        for (id, dial) in &self.peers {
            let key = format!("peers.{id}");
            match id.parse::<u64>() {
                Ok(0) | Err(_) => fail(&key, dial, "must be keyed by a node id greater than zero"),
                Ok(n) if n == self.id => fail(&key, dial, "must not name this node's own id"),
                Ok(n) => match dial.rsplit_once(':') {
                    Some((host, port))
                        if !host.is_empty()
                            && !host.contains(['/', ' '])
                            && port.parse::<u16>().is_ok_and(|p| p > 0) =>
                    {
                        peers.insert(n, dial.clone());
                    }
                    _ => fail(
                        &key,
                        dial,
                        "must be host:port with a port above 0, e.g. 10.0.0.2:9443",
                    ),
                },
            }
        }
        let mut address = |key: &str, value: &str| match value.parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                fail(
                    key,
                    &value,
                    "must be an IP address and port, e.g. 0.0.0.0:8080",
                );
                None
            }
        };
        let proxy = address("listen.proxy", &self.listen.proxy);
        let proxy_tls = address("listen.proxy-tls", &self.listen.proxy_tls);
        let admin = address("listen.admin", &self.listen.admin);
        let peer = address("listen.peer", &self.listen.peer);
        let r = &self.raft;
        if r.heartbeat.is_zero() {
            fail("raft.heartbeat", &"0s", "must be greater than zero");
        }
        if r.election_timeout_min <= r.heartbeat * 2 {
            fail(
                "raft.election-timeout-min",
                &humantime::format_duration(r.election_timeout_min),
                &format!(
                    "must exceed twice raft.heartbeat ({})",
                    humantime::format_duration(r.heartbeat)
                ),
            );
        }
        if r.election_timeout_max <= r.election_timeout_min {
            fail(
                "raft.election-timeout-max",
                &humantime::format_duration(r.election_timeout_max),
                &format!(
                    "must exceed raft.election-timeout-min ({})",
                    humantime::format_duration(r.election_timeout_min)
                ),
            );
        }
        if r.snapshot_logs == 0 {
            fail("raft.snapshot-logs", &0, "must be greater than zero");
        }
        if r.leader_loss <= r.election_timeout_max {
            fail(
                "raft.leader-loss",
                &humantime::format_duration(r.leader_loss),
                &format!(
                    "must exceed raft.election-timeout-max ({})",
                    humantime::format_duration(r.election_timeout_max)
                ),
            );
        }
        let on_leader_loss = match r.on_leader_loss.as_str() {
            "not-ready" => LeaderLoss::NotReady,
            "serve" => LeaderLoss::Serve,
            other => {
                fail("raft.on-leader-loss", &other, "must be not-ready or serve");
                LeaderLoss::NotReady
            }
        };
        if let Some(advertise) = &self.listen.advertise
            && (advertise.is_empty()
                || advertise.contains(['/', ' ', ':'])
                    && advertise.parse::<std::net::Ipv6Addr>().is_err())
        {
            fail(
                "listen.advertise",
                advertise,
                "must be a host name or IP address without port",
            );
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            fail("limits.max-connections", &0, "must be greater than zero");
        }
        if l.max_header_bytes.bytes() < 1024 || l.max_header_bytes.bytes() > 1 << 20 {
            fail(
                "limits.max-header-bytes",
                &l.max_header_bytes,
                "must be between 1KiB and 1MiB",
            );
        }
        if l.max_headers == 0 || l.max_headers > 1000 {
            fail(
                "limits.max-headers",
                &l.max_headers,
                "must be between 1 and 1000",
            );
        }
        if l.max_uri_bytes.bytes() < 256 || l.max_uri_bytes.bytes() > 1 << 20 {
            fail(
                "limits.max-uri-bytes",
                &l.max_uri_bytes,
                "must be between 256 and 1MiB",
            );
        }
        if l.max_body_bytes.bytes() == 0 {
            fail("limits.max-body-bytes", &0, "must be greater than zero");
        }
        if l.max_concurrent_streams == 0 {
            fail(
                "limits.max-concurrent-streams",
                &0,
                "must be greater than zero",
            );
        }
        if l.max_in_flight == 0 {
            fail("limits.max-in-flight", &0, "must be greater than zero");
        }
        if l.max_reset_streams == 0 {
            fail("limits.max-reset-streams", &0, "must be greater than zero");
        }
        let min_body_rate = match parse_rate(&l.min_body_rate) {
            Ok(rate) => rate,
            Err(rule) => {
                fail("limits.min-body-rate", &l.min_body_rate, rule);
                None
            }
        };
        for (key, value) in [
            ("timeouts.header-read", self.timeouts.header_read),
            ("timeouts.idle", self.timeouts.idle),
            ("timeouts.write-idle", self.timeouts.write_idle),
        ] {
            if value.is_zero() {
                fail(
                    key,
                    &humantime::format_duration(value),
                    "must be greater than zero",
                );
            } else if value > MAX_TIMEOUT {
                // Deadlines are instants: a timeout of centuries would
                // overflow one.
                fail(
                    key,
                    &humantime::format_duration(value),
                    "must be at most 1day",
                );
            }
        }
        let defer = self.timeouts.defer_accept;
        if defer.subsec_nanos() != 0 {
            fail(
                "timeouts.defer-accept",
                &humantime::format_duration(defer),
                "must be whole seconds (the kernel counts TCP_DEFER_ACCEPT in seconds); 0s turns it off",
            );
        } else if defer > self.timeouts.header_read {
            fail(
                "timeouts.defer-accept",
                &humantime::format_duration(defer),
                "must be at most timeouts.header-read",
            );
        }
        if self.admin.token.as_deref() == Some("") {
            fail(
                "admin.token",
                &"",
                "must not be empty (omit it to disable admin auth)",
            );
        }
        let admin_tls = match self.admin.tls.as_deref() {
            None | Some("off") => AdminTls::Off,
            Some("on") => AdminTls::On,
            Some("mutual") => AdminTls::Mutual,
            Some(other) => {
                fail("admin.tls", &other, "must be one of off, on, mutual");
                AdminTls::Off
            }
        };
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            fail(
                "log.level",
                &self.log.level,
                &format!("must be a log filter: {error}"),
            );
        }
        let access_log = match self.log.access_log.as_str() {
            "off" => AccessLogTarget::Off,
            "stdout" | "-" => AccessLogTarget::Stdout,
            "" => {
                fail("log.access-log", &"", "must be off, stdout or a file path");
                AccessLogTarget::Off
            }
            path => AccessLogTarget::File(PathBuf::from(path)),
        };
        let tls = self.tls.validate(&mut |key, value, rule| {
            errors.push(ConfigError {
                key: key.to_owned(),
                value: value.to_string(),
                rule: rule.to_owned(),
            })
        });
        let ratelimit = self.ratelimit.validate(&mut |key, value, rule| {
            errors.push(ConfigError {
                key: key.to_owned(),
                value: value.to_string(),
                rule: rule.to_owned(),
            })
        });
        let mut report = |key: &str, value: &dyn std::fmt::Display, rule: &str| {
            errors.push(ConfigError {
                key: key.to_owned(),
                value: value.to_string(),
                rule: rule.to_owned(),
            })
        };
        let resolver = self.resolver.validate(&mut report);
        let gslb = self.gslb.validate(self.regions, &mut report);
        let anycast = self.anycast.validate(&mut report);
        let dns = self.dns.validate(&mut report);
        if let (Some(_), Some(plain), Some(secure)) = (&tls, proxy, proxy_tls)
            && plain == secure
            && secure.port() != 0
        {
            errors.push(ConfigError {
                key: "listen.proxy-tls".into(),
                value: secure.to_string(),
                rule: "must differ from listen.proxy".into(),
            });
        }
        match (proxy, admin, peer) {
            (Some(proxy), Some(admin), Some(peer)) if errors.is_empty() => Ok(Config {
                id: self.id,
                region: self.region,
                data_dir: self.data_dir,
                gateway: self.gateway,
                listen: Listen {
                    proxy,
                    // Parsed whenever there is no error.
                    proxy_tls: proxy_tls.unwrap_or(proxy),
                    admin,
                    peer,
                    advertise: self.listen.advertise.unwrap_or_else(|| {
                        if peer.ip().is_unspecified() {
                            "127.0.0.1".into()
                        } else {
                            peer.ip().to_string()
                        }
                    }),
                },
                runtime: Runtime {
                    worker_threads: self.runtime.worker_threads,
                },
                limits: Limits {
                    max_connections: l.max_connections,
                    max_header_bytes: l.max_header_bytes.bytes() as usize,
                    max_headers: l.max_headers,
                    max_uri_bytes: l.max_uri_bytes.bytes() as usize,
                    max_body_bytes: l.max_body_bytes.bytes(),
                    max_concurrent_streams: l.max_concurrent_streams,
                    max_in_flight: l.max_in_flight,
                    min_body_rate,
                    max_reset_streams: l.max_reset_streams,
                },
                timeouts: ClientTimeouts {
                    header_read: self.timeouts.header_read,
                    idle: self.timeouts.idle,
                    write_idle: self.timeouts.write_idle,
                    body_rate_grace: self.timeouts.body_rate_grace,
                    defer_accept: self.timeouts.defer_accept,
                },
                admin: Admin {
                    token: self.admin.token,
                    tls: admin_tls,
                },
                log: Log {
                    level: self.log.level,
                    access_log,
                },
                shutdown: Shutdown {
                    grace_period: self.shutdown.grace_period,
                    drain_delay: self.shutdown.drain_delay,
                },
                raft: Raft {
                    heartbeat: r.heartbeat,
                    election_timeout: (r.election_timeout_min, r.election_timeout_max),
                    snapshot_logs: r.snapshot_logs,
                    leader_loss: r.leader_loss,
                    on_leader_loss,
                },
                tls,
                ratelimit,
                resolver,
                gslb,
                anycast,
                dns,
                peers,
            }),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

/// Parses a rate such as `"1KiB/s"`; `"off"` (or a zero rate) is `None`.
fn parse_rate(text: &str) -> Result<Option<u64>, &'static str> {
    const RULE: &str = "must be a size per second such as 1KiB/s, or off";
    if text.trim() == "off" {
        return Ok(None);
    }
    let size = text.trim().strip_suffix("/s").ok_or(RULE)?;
    let bytes = size.parse::<ByteSize>().map_err(|_| RULE)?.bytes();
    Ok((bytes > 0).then_some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(toml: &str, expected: &[&str]) {
        let rendered: Vec<String> = match RawConfig::parse(toml).expect("parses").validate() {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(rendered, expected);
    }

    #[test]
    fn defaults_are_valid() {
        let config = RawConfig::default().validate().unwrap();
        assert_eq!(config.listen.proxy.port(), 8080);
        assert_eq!(config.listen.admin.to_string(), "127.0.0.1:9080");
        assert_eq!(config.log.access_log, AccessLogTarget::Stdout);
    }

    #[test]
    fn the_deploy_example_is_valid() {
        let raw = RawConfig::parse(include_str!("../../deploy/node.toml")).expect("parses");
        let config = raw.validate().expect("valid");
        assert_eq!(config.region, "eu-west");
    }

    #[test]
    fn peer_addresses_override_what_peers_advertise() {
        let raw = RawConfig::parse(
            "id = 1\n[peers]\n2 = \"127.0.0.1:4000\"\n3 = \"node-3.internal:9443\"\n",
        )
        .expect("parses");
        let config = raw.validate().expect("valid");
        assert_eq!(
            config.peers.get(&2).map(String::as_str),
            Some("127.0.0.1:4000")
        );
        assert_eq!(
            config.peers.get(&3).map(String::as_str),
            Some("node-3.internal:9443")
        );
        check(
            "id = 1\n[peers]\n1 = \"127.0.0.1:4000\"\nx = \"127.0.0.1:4000\"\n2 = \"127.0.0.1\"\n3 = \"127.0.0.1:0\"\n",
            &[
                "peers.1 (127.0.0.1:4000) must not name this node's own id",
                "peers.2 (127.0.0.1) must be host:port with a port above 0, e.g. 10.0.0.2:9443",
                "peers.3 (127.0.0.1:0) must be host:port with a port above 0, e.g. 10.0.0.2:9443",
                "peers.x (127.0.0.1:4000) must be keyed by a node id greater than zero",
            ],
        );
    }

    #[test]
    fn the_design_sketch_parses() {
        check(
            "id = 1\nregion = \"eu-west\"\ndata-dir = \"/var/lib/meridian\"\n[listen]\nproxy = \"0.0.0.0:8080\"\nadmin = \"127.0.0.1:9080\"\n",
            &[],
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_location() {
        let error = RawConfig::parse("[listen]\nproxi = \"1\"\n").unwrap_err();
        assert!(error.contains("unknown field `proxi`"), "{error}");
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn ratelimit_rules() {
        check(
            "[ratelimit]\nmax-keys = 10",
            &["ratelimit.max-keys (10) must be between 64 and 100000000"],
        );
        check(
            "[ratelimit]\nsweep-interval = \"1ms\"",
            &["ratelimit.sweep-interval (1ms) must be at least 10ms"],
        );
        check("[ratelimit]\nmax-keys = 5000\nsweep-interval = \"1s\"", &[]);
    }

    #[test]
    fn each_rule() {
        check("id = 0", &["id (0) must be greater than zero"]);
        check(
            "region = \"eu west\"",
            &["region (eu west) must be a name of letters, digits, '-' and '_'"],
        );
        check(
            "[listen]\nproxy = \"8080\"",
            &["listen.proxy (8080) must be an IP address and port, e.g. 0.0.0.0:8080"],
        );
        check(
            "[limits]\nmax-connections = 0",
            &["limits.max-connections (0) must be greater than zero"],
        );
        check(
            "[limits]\nmax-header-bytes = \"100\"",
            &["limits.max-header-bytes (100) must be between 1KiB and 1MiB"],
        );
        check(
            "[limits]\nmax-headers = 0",
            &["limits.max-headers (0) must be between 1 and 1000"],
        );
        check(
            "[limits]\nmax-uri-bytes = 10",
            &["limits.max-uri-bytes (10) must be between 256 and 1MiB"],
        );
        check(
            "[limits]\nmax-body-bytes = 0",
            &["limits.max-body-bytes (0) must be greater than zero"],
        );
        check(
            "[limits]\nmax-concurrent-streams = 0",
            &["limits.max-concurrent-streams (0) must be greater than zero"],
        );
        check(
            "[timeouts]\ndefer-accept = \"1500ms\"",
            &[
                "timeouts.defer-accept (1s 500ms) must be whole seconds (the kernel counts TCP_DEFER_ACCEPT in seconds); 0s turns it off",
            ],
        );
        check(
            "[timeouts]\nheader-read = \"5s\"\ndefer-accept = \"10s\"",
            &["timeouts.defer-accept (10s) must be at most timeouts.header-read"],
        );
        check(
            "[timeouts]\nidle = \"0s\"",
            &["timeouts.idle (0s) must be greater than zero"],
        );
        check(
            "[timeouts]\nwrite-idle = \"0s\"",
            &["timeouts.write-idle (0s) must be greater than zero"],
        );
        check(
            "[timeouts]\nheader-read = \"1000000years\"",
            &["timeouts.header-read (1000000years) must be at most 1day"],
        );
        check(
            "[limits]\nmax-in-flight = 0",
            &["limits.max-in-flight (0) must be greater than zero"],
        );
        check(
            "[limits]\nmax-reset-streams = 0",
            &["limits.max-reset-streams (0) must be greater than zero"],
        );
        check(
            "[limits]\nmin-body-rate = \"fast\"",
            &["limits.min-body-rate (fast) must be a size per second such as 1KiB/s, or off"],
        );
        check(
            "[limits]\nmin-body-rate = \"1KiB\"",
            &["limits.min-body-rate (1KiB) must be a size per second such as 1KiB/s, or off"],
        );
        check(
            "[admin]\ntoken = \"\"",
            &["admin.token () must not be empty (omit it to disable admin auth)"],
        );
        check(
            "[log]\naccess-log = \"\"",
            &["log.access-log () must be off, stdout or a file path"],
        );
    }

    #[test]
    fn body_rates() {
        assert_eq!(parse_rate("1KiB/s"), Ok(Some(1024)));
        assert_eq!(parse_rate("500/s"), Ok(Some(500)));
        assert_eq!(parse_rate("off"), Ok(None));
        assert_eq!(parse_rate("0/s"), Ok(None));
        assert!(parse_rate("1KiB").is_err());
        let config = RawConfig::default().validate().unwrap();
        assert_eq!(config.limits.min_body_rate, Some(1024));
        assert_eq!(config.timeouts.write_idle, Duration::from_secs(60));
    }

    #[test]
    fn bad_duration_names_the_key() {
        let error = RawConfig::parse("[timeouts]\nidle = \"soon\"").unwrap_err();
        assert!(error.contains("idle"), "{error}");
    }
}
