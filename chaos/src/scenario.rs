//! Scenario files: the load to run, the faults to inject and when, and the
//! bounds the invariants are checked against.
//!
//! A scenario is TOML. [`RawScenario`] is its serde shape (kebab-case keys,
//! unknown keys refused); [`RawScenario::validate`] turns it into a
//! [`Scenario`] and names the key, the value and the rule of every mistake.
//! Command-line overrides (`--seed`, `--duration`) are applied to the raw
//! form, before validation.
//!
//! ```toml
//! name = "leader-loss"
//! seed = 7
//! duration = "20s"
//! [load]
//! rate = 40                    # requests per second, to every node
//! routes = ["/echo/chaos"]
//! [writes]
//! every = "1s"                 # a config write or a key revocation, alternating
//! [bounds]
//! failover = "3s"              # 5xx allowed this long after a fault starts or heals
//! heal = "5s"                  # convergence and revocation bound after a heal
//! election = "5s"              # a new leader within this after the leader dies
//! [[step]]
//! at = "5s"
//! fault = "kill"               # kill -9
//! node = "leader"              # leader | follower | 1 | 2 | 3
//! heal-at = "9s"               # restart on the same data dir
//! ```
//!
//! Faults: `kill`, `partition` (`cut`), `latency` (`delay`, `jitter`,
//! `loss`), `backend-down`, `backend-slow` (`delay`), `clock` (`offset`),
//! `disk-full`, `jwks-down`.
//!
//! The built-in scenarios live in `chaos/scenarios/*.toml` and are embedded
//! in the binary ([`builtin`], [`BUILTIN`]).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The scenarios shipped with the harness, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("leader-loss", include_str!("../scenarios/leader-loss.toml")),
    (
        "follower-restart",
        include_str!("../scenarios/follower-restart.toml"),
    ),
    (
        "region-partition",
        include_str!("../scenarios/region-partition.toml"),
    ),
    (
        "leader-isolation",
        include_str!("../scenarios/leader-isolation.toml"),
    ),
    (
        "asymmetric-partition",
        include_str!("../scenarios/asymmetric-partition.toml"),
    ),
    (
        "peer-latency-loss",
        include_str!("../scenarios/peer-latency-loss.toml"),
    ),
    (
        "backend-down",
        include_str!("../scenarios/backend-down.toml"),
    ),
    (
        "backend-slow",
        include_str!("../scenarios/backend-slow.toml"),
    ),
    ("clock-skew", include_str!("../scenarios/clock-skew.toml")),
    ("disk-full", include_str!("../scenarios/disk-full.toml")),
    ("jwks-down", include_str!("../scenarios/jwks-down.toml")),
];

/// The text of the built-in scenario `name`.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Longest run a scenario may ask for.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Most nodes a loopback run starts.
pub const MAX_NODES: u64 = 5;

/// A validated scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scenario {
    /// Its name, for the report.
    pub name: String,
    /// What it shows, in a sentence.
    pub description: String,
    /// Seeds every decision the harness makes (which follower, which node a
    /// write goes to, relay loss and jitter).
    pub seed: u64,
    /// How long faults and load run; the final checks come after.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Nodes (one per region) in a loopback run.
    pub nodes: u64,
    /// The data-plane load.
    pub load: Load,
    /// The admin writes made during the run.
    pub writes: Writes,
    /// The bounds of the invariants.
    pub bounds: Bounds,
    /// The faults, in start order.
    pub steps: Vec<Step>,
}

/// Data-plane load, sent to every node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Load {
    /// Requests per second to each node.
    pub rate: u32,
    /// Paths requested in turn.
    pub routes: Vec<String>,
}

/// Admin writes during the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Writes {
    /// A config write or a key revocation (alternating) this often, to a
    /// node chosen from the seed; `None`: no writes.
    #[serde(with = "humantime_serde")]
    pub every: Option<Duration>,
}

/// The bounds the invariants are checked against.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bounds {
    /// Failover window W: client-visible errors are allowed this long after a
    /// fault starts or heals.
    #[serde(with = "humantime_serde")]
    pub failover: Duration,
    /// Heal bound X: after a heal, the cluster converges and every
    /// acknowledged revocation is enforced everywhere within it.
    #[serde(with = "humantime_serde")]
    pub heal: Duration,
    /// A new leader is seen within this after the leader is killed or cut off.
    #[serde(with = "humantime_serde")]
    pub election: Duration,
}

/// One fault: when it starts, when it heals, what it is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    /// Start, from the beginning of the run.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// Heal (restart, reconnect, restore), from the beginning of the run;
    /// `None`: the fault lasts until the end of the run, then heals.
    #[serde(with = "humantime_serde")]
    pub heal_at: Option<Duration>,
    /// The fault.
    pub fault: Fault,
}

/// Which node a fault hits; resolved when the step starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The node most nodes name as leader.
    Leader,
    /// A node that is not the leader, chosen from the seed.
    Follower,
    /// This node id.
    Node(u64),
}

/// Which of a node's peer traffic a partition drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cut {
    /// Everything to and from the node.
    Both,
    /// What the node sends; it still hears the others.
    Outbound,
    /// What the others send it; its own packets still arrive.
    Inbound,
}

/// A fault.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// `kill -9` the node's process; heal restarts it on its data dir.
    Kill {
        /// The node.
        node: Target,
    },
    /// Cut the node's peer links; heal reconnects them.
    Partition {
        /// The node cut off from the others.
        node: Target,
        /// Which direction.
        cut: Cut,
    },
    /// Delay and loss on every peer link; heal removes them.
    Latency {
        /// Base one-way delay.
        #[serde(with = "humantime_serde")]
        delay: Duration,
        /// Uniform spread around `delay`.
        #[serde(with = "humantime_serde")]
        jitter: Duration,
        /// Datagram loss probability.
        loss: f64,
    },
    /// The node's region's demo backend refuses connections; heal restarts it.
    BackendDown {
        /// The node whose region's backend goes down.
        node: Target,
    },
    /// The node's wall clock jumps by `offset` seconds (libfaketime; the
    /// monotonic clock is left alone); heal sets it back.
    Clock {
        /// The node.
        node: Target,
        /// Seconds added to its wall clock (negative: back in time).
        offset: i64,
    },
    /// The node's data dir (a small tmpfs, in a mount namespace of its own)
    /// fills up; heal frees it, and restarts the node if its raft stopped.
    DiskFull {
        /// The node.
        node: Target,
    },
    /// The JWT issuer's JWKS endpoint refuses connections; heal restarts it.
    JwksDown,
    /// The node's region's demo backend answers after `delay`.
    BackendSlow {
        /// The node whose region's backend slows down.
        node: Target,
        /// Added before every answer.
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
}

/// The serde shape of a scenario file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawScenario {
    /// `name`.
    pub name: String,
    /// `description`.
    #[serde(default)]
    pub description: String,
    /// `seed`.
    #[serde(default)]
    pub seed: Option<u64>,
    /// `duration`.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// `nodes` (default 3).
    #[serde(default)]
    pub nodes: Option<u64>,
    /// `[load]`.
    #[serde(default)]
    pub load: RawLoad,
    /// `[writes]`.
    #[serde(default)]
    pub writes: RawWrites,
    /// `[bounds]`.
    #[serde(default)]
    pub bounds: RawBounds,
    /// `[[step]]`.
    #[serde(default, rename = "step")]
    pub steps: Vec<RawStep>,
}

/// `[load]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawLoad {
    /// `rate`.
    pub rate: u32,
    /// `routes`.
    pub routes: Vec<String>,
}

/// `[writes]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawWrites {
    /// `every`.
    #[serde(with = "humantime_serde")]
    pub every: Option<Duration>,
}

/// `[bounds]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawBounds {
    /// `failover`.
    #[serde(with = "humantime_serde")]
    pub failover: Duration,
    /// `heal`.
    #[serde(with = "humantime_serde")]
    pub heal: Duration,
    /// `election`.
    #[serde(with = "humantime_serde")]
    pub election: Duration,
}

/// `[[step]]`: every parameter of every fault, checked against the fault
/// kind by [`RawScenario::validate`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawStep {
    /// `at`.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// `heal-at`.
    #[serde(default, with = "humantime_serde")]
    pub heal_at: Option<Duration>,
    /// `fault`.
    pub fault: String,
    /// `node`: `leader`, `follower` or a node id.
    #[serde(default)]
    pub node: Option<toml::Value>,
    /// `cut` (partition): `both`, `outbound`, `inbound`.
    #[serde(default)]
    pub cut: Option<String>,
    /// `delay` (latency, backend-slow).
    #[serde(default, with = "humantime_serde")]
    pub delay: Option<Duration>,
    /// `jitter` (latency).
    #[serde(default, with = "humantime_serde")]
    pub jitter: Option<Duration>,
    /// `loss` (latency).
    #[serde(default)]
    pub loss: Option<f64>,
    /// `offset` (clock): `+5m`, `-1h`, `+90s`.
    #[serde(default)]
    pub offset: Option<String>,
}

/// One broken rule: the key, the value and the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// Dotted key, e.g. `step[1].loss`.
    pub key: String,
    /// The value as written.
    pub value: String,
    /// The rule it breaks.
    pub rule: String,
}

/// Every broken rule of a scenario.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Errors(pub Vec<Error>);

// === impl Error ===

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}) {}", self.key, self.value, self.rule)
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

// === impl defaults ===

impl Default for RawLoad {
    fn default() -> Self {
        Self {
            rate: 20,
            routes: vec!["/echo/chaos".into()],
        }
    }
}

impl Default for RawBounds {
    fn default() -> Self {
        Self {
            failover: Duration::from_secs(3),
            heal: Duration::from_secs(5),
            election: Duration::from_secs(5),
        }
    }
}

// === impl RawScenario ===

impl RawScenario {
    /// Parses TOML text (not yet validated).
    pub fn parse(text: &str) -> Result<Self, Errors> {
        toml::from_str(text).map_err(|e| {
            Errors(vec![Error {
                key: "scenario".into(),
                value: e.message().to_owned(),
                rule: match e.span() {
                    Some(span) => format!("must be a valid scenario (at byte {})", span.start),
                    None => "must be a valid scenario".into(),
                },
            }])
        })
    }

    /// Checks every rule and produces the [`Scenario`].
    pub fn validate(self) -> Result<Scenario, Errors> {
        let mut errors = Vec::new();
        let mut fail = |key: &str, value: &dyn fmt::Display, rule: &str| {
            errors.push(Error {
                key: key.into(),
                value: value.to_string(),
                rule: rule.into(),
            });
        };
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            fail("name", &self.name, "must be letters, digits, '-' and '_'");
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            fail(
                "duration",
                &show(self.duration),
                "must be above 0 and at most 1h",
            );
        }
        let nodes = self.nodes.unwrap_or(3);
        if !(3..=MAX_NODES).contains(&nodes) {
            fail("nodes", &nodes, "must be 3 to 5 (one node per region)");
        }
        if self.load.rate > 1000 {
            fail(
                "load.rate",
                &self.load.rate,
                "must be at most 1000 per node",
            );
        }
        for (i, route) in self.load.routes.iter().enumerate() {
            if !route.starts_with('/') || route.contains([' ', '\r', '\n']) {
                fail(
                    &format!("load.routes[{i}]"),
                    route,
                    "must be a path starting with '/' without spaces",
                );
            }
        }
        if self.load.rate > 0 && self.load.routes.is_empty() {
            fail(
                "load.routes",
                &"[]",
                "must list a path when load.rate is above 0",
            );
        }
        if let Some(every) = self.writes.every
            && every < Duration::from_millis(100)
        {
            fail("writes.every", &show(every), "must be at least 100ms");
        }
        for (key, value) in [
            ("bounds.failover", self.bounds.failover),
            ("bounds.heal", self.bounds.heal),
            ("bounds.election", self.bounds.election),
        ] {
            if value.is_zero() || value > Duration::from_secs(600) {
                fail(key, &show(value), "must be above 0 and at most 10m");
            }
        }
        let mut steps = Vec::new();
        for (i, raw) in self.steps.iter().enumerate() {
            let key = |field: &str| format!("step[{i}].{field}");
            if raw.at >= self.duration {
                fail(&key("at"), &show(raw.at), "must be before duration");
            }
            if let Some(heal) = raw.heal_at
                && (heal <= raw.at || heal > self.duration)
            {
                fail(
                    &key("heal-at"),
                    &show(heal),
                    "must be after at and at most duration",
                );
            }
            let node = match &raw.node {
                None => None,
                Some(toml::Value::String(s)) if s == "leader" => Some(Target::Leader),
                Some(toml::Value::String(s)) if s == "follower" => Some(Target::Follower),
                Some(toml::Value::Integer(n)) if (1..=nodes as i64).contains(n) => {
                    Some(Target::Node(*n as u64))
                }
                Some(other) => {
                    fail(
                        &key("node"),
                        other,
                        &format!("must be \"leader\", \"follower\" or a node id from 1 to {nodes}"),
                    );
                    None
                }
            };
            let allowed: &[&str] = match raw.fault.as_str() {
                "kill" | "backend-down" => &["node"],
                "partition" => &["node", "cut"],
                "latency" => &["delay", "jitter", "loss"],
                "backend-slow" => &["node", "delay"],
                "clock" => &["node", "offset"],
                "disk-full" => &["node"],
                "jwks-down" => &[],
                other => {
                    fail(
                        &key("fault"),
                        &other,
                        "must be kill, partition, latency, backend-down, backend-slow, clock, disk-full or jwks-down",
                    );
                    continue;
                }
            };
            let given = [
                ("node", raw.node.is_some()),
                ("cut", raw.cut.is_some()),
                ("delay", raw.delay.is_some()),
                ("jitter", raw.jitter.is_some()),
                ("loss", raw.loss.is_some()),
                ("offset", raw.offset.is_some()),
            ];
            for (field, present) in given {
                if present && !allowed.contains(&field) {
                    fail(
                        &key(field),
                        &"(set)",
                        &format!("is not a parameter of fault {}", raw.fault),
                    );
                }
            }
            let needs_node = allowed.contains(&"node");
            if needs_node && raw.node.is_none() {
                fail(
                    &key("node"),
                    &"(missing)",
                    &format!("is required by fault {}", raw.fault),
                );
            }
            let delay = raw.delay.unwrap_or_default();
            if delay > Duration::from_secs(30) {
                fail(&key("delay"), &show(delay), "must be at most 30s");
            }
            let jitter = raw.jitter.unwrap_or_default();
            if jitter > delay {
                fail(&key("jitter"), &show(jitter), "must be at most delay");
            }
            let loss = raw.loss.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&loss) {
                fail(&key("loss"), &loss, "must be between 0 and 1");
            }
            let offset = match raw.offset.as_deref() {
                None if raw.fault == "clock" => {
                    fail(&key("offset"), &"(missing)", "is required by fault clock");
                    0
                }
                None => 0,
                Some(text) => match parse_offset(text) {
                    Some(seconds) => seconds,
                    None => {
                        fail(
                            &key("offset"),
                            &text,
                            "must be a signed duration of at most 30 days, e.g. +5m or -1h",
                        );
                        0
                    }
                },
            };
            let cut = match raw.cut.as_deref() {
                None | Some("both") => Cut::Both,
                Some("outbound") => Cut::Outbound,
                Some("inbound") => Cut::Inbound,
                Some(other) => {
                    fail(&key("cut"), &other, "must be both, outbound or inbound");
                    Cut::Both
                }
            };
            let Some(node) = node.or((!needs_node).then_some(Target::Leader)) else {
                continue;
            };
            let fault = match raw.fault.as_str() {
                "kill" => Fault::Kill { node },
                "partition" => Fault::Partition { node, cut },
                "latency" => Fault::Latency {
                    delay,
                    jitter,
                    loss,
                },
                "backend-down" => Fault::BackendDown { node },
                "clock" => Fault::Clock { node, offset },
                "disk-full" => Fault::DiskFull { node },
                "jwks-down" => Fault::JwksDown,
                _ => Fault::BackendSlow { node, delay },
            };
            steps.push(Step {
                at: raw.at,
                heal_at: raw.heal_at,
                fault,
            });
        }
        if !errors.is_empty() {
            return Err(Errors(errors));
        }
        steps.sort_by_key(|s| s.at);
        Ok(Scenario {
            name: self.name,
            description: self.description,
            seed: self.seed.unwrap_or(1),
            duration: self.duration,
            nodes,
            load: Load {
                rate: self.load.rate,
                routes: self.load.routes,
            },
            writes: Writes {
                every: self.writes.every,
            },
            bounds: Bounds {
                failover: self.bounds.failover,
                heal: self.bounds.heal,
                election: self.bounds.election,
            },
            steps,
        })
    }
}

// === impl Scenario ===

impl Scenario {
    /// Parses and validates a scenario, with optional overrides of its seed
    /// and duration.
    pub fn load(text: &str, seed: Option<u64>, duration: Option<Duration>) -> Result<Self, Errors> {
        let mut raw = RawScenario::parse(text)?;
        if seed.is_some() {
            raw.seed = seed;
        }
        if let Some(duration) = duration {
            raw.duration = duration;
        }
        raw.validate()
    }

    /// When the step heals: its `heal-at`, or the end of the run.
    pub fn heal_of(&self, step: &Step) -> Duration {
        step.heal_at.unwrap_or(self.duration)
    }
}

/// `+5m`, `-1h`, `90s` as signed seconds, at most 30 days either way.
fn parse_offset(text: &str) -> Option<i64> {
    let (sign, rest) = match text.trim().strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.trim().trim_start_matches('+')),
    };
    let seconds = humantime::parse_duration(rest).ok()?.as_secs();
    (seconds <= 30 * 86_400).then(|| sign * seconds as i64)
}

// === impl Fault ===

impl Fault {
    /// The fault's name in scenario files.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Kill { .. } => "kill",
            Self::Partition { .. } => "partition",
            Self::Latency { .. } => "latency",
            Self::BackendDown { .. } => "backend-down",
            Self::BackendSlow { .. } => "backend-slow",
            Self::Clock { .. } => "clock",
            Self::DiskFull { .. } => "disk-full",
            Self::JwksDown => "jwks-down",
        }
    }

    /// The node it targets, if any.
    pub fn target(&self) -> Option<Target> {
        match self {
            Self::Kill { node }
            | Self::Partition { node, .. }
            | Self::BackendDown { node }
            | Self::BackendSlow { node, .. }
            | Self::Clock { node, .. }
            | Self::DiskFull { node } => Some(*node),
            Self::Latency { .. } | Self::JwksDown => None,
        }
    }
}

#[cfg(test)]
mod tests;
