//! What a run records: the faults as they acted, every admin operation with
//! its invoke and return times, every cluster observation, the data-plane
//! load per node and second, and the probes taken after the run.
//!
//! Times are milliseconds since the run started. The [`Record`] is plain
//! data (serde both ways): the checkers in [`crate::check`] read nothing
//! else, so a fabricated record tests them, and a report's JSON can be
//! checked again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The longest a data-plane request is in flight (the load's deadline).
pub const IN_FLIGHT_MS: u64 = 2_000;

/// Everything a run recorded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The nodes of the run.
    pub nodes: Vec<NodeInfo>,
    /// How they were networked: loopback, network namespaces, or an
    /// existing deployment.
    #[serde(default)]
    pub network: String,
    /// How long faults and load ran, in ms.
    pub duration_ms: u64,
    /// The bounds, in ms.
    pub bounds: BoundsMs,
    /// The faults as they acted.
    pub faults: Vec<FaultEvent>,
    /// Admin writes: config writes and revocations.
    pub ops: Vec<Op>,
    /// `GET /v1/cluster` on every node, polled.
    pub observations: Vec<Observation>,
    /// Data-plane requests per node and second.
    pub load: Vec<Second>,
    /// Each failed data-plane request (bounded; see `errors_dropped`).
    pub errors: Vec<LoadError>,
    /// Failed requests not listed in `errors` because the list was full.
    pub errors_dropped: u64,
    /// When a node was first seen refusing a revoked key.
    pub enforcements: Vec<Enforcement>,
    /// What every node holds after the run.
    pub final_probe: FinalProbe,
    /// Unix time of the run's start, in ms (global-limit windows are
    /// calendar windows).
    #[serde(default)]
    pub origin_unix_ms: u64,
    /// The global rate limit the load met, if any.
    #[serde(default)]
    pub global_limit: Option<GlobalLimit>,
    /// Requests the global limit admitted: (time, node).
    #[serde(default)]
    pub global_admitted: Vec<(u64, u64)>,
    /// Requests with tokens of the run's JWT issuer.
    #[serde(default)]
    pub jwt: JwtRecord,
}

/// What happened to tokens of the run's JWT issuer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtRecord {
    /// Load requests that carried a valid token.
    pub sent: u64,
    /// Those answered 4xx: (time, node, status).
    pub refused: Vec<(u64, u64, u16)>,
    /// Requests with the rogue token (signed by a key never published).
    pub rogue_probes: u64,
    /// Those not refused: (time, node, status).
    pub rogue_accepted: Vec<(u64, u64, u16)>,
}

/// A global rate limit: `limit` per calendar window of `window_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalLimit {
    /// Requests per window over every node.
    pub limit: u64,
    /// The window.
    pub window_ms: u64,
}

/// One node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: u64,
    /// Region.
    pub region: String,
    /// Proxy address.
    pub proxy: String,
    /// Admin address.
    pub admin: String,
}

/// The scenario's bounds, in ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundsMs {
    /// Failover window W.
    pub failover: u64,
    /// Heal bound X.
    pub heal: u64,
    /// Election bound.
    pub election: u64,
}

/// A fault as it acted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// Index of the step in the scenario.
    pub step: usize,
    /// The fault's name (`kill`, `partition`, …).
    pub fault: String,
    /// The node it hit, once resolved.
    pub node: Option<u64>,
    /// Whether that node was the leader when the fault started.
    pub was_leader: bool,
    /// For partitions: `both`, `outbound` or `inbound`.
    pub cut: Option<String>,
    /// When it started.
    pub start_ms: u64,
    /// When it healed (`None`: it never did, e.g. the run was aborted).
    pub heal_ms: Option<u64>,
    /// Parameters and what was done, for the timeline.
    pub detail: String,
    /// For latency faults: datagram loss probability.
    #[serde(default)]
    pub loss: f64,
    /// For latency faults: the longest one-way delay (delay + jitter), ms.
    #[serde(default)]
    pub one_way_ms: u64,
}

/// What an admin write was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OpKind {
    /// `PUT /v1/config` with one marker route.
    ConfigWrite {
        /// The marker route's name.
        route: String,
    },
    /// `DELETE /v1/keys/{id}`.
    Revoke {
        /// The key id.
        key_id: String,
    },
}

/// How an admin write ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// Acknowledged: committed.
    Ok {
        /// The config version it created (config writes).
        version: Option<u64>,
        /// Its log index.
        index: Option<u64>,
    },
    /// Refused with an HTTP error: not committed by this call (a write
    /// forwarded before the refusal may still commit; treated as unknown).
    Fail {
        /// Status.
        status: u16,
        /// The API's message.
        message: String,
    },
    /// No answer: indeterminate.
    Timeout,
    /// The node could not be reached: not sent.
    Unreachable {
        /// Why.
        message: String,
    },
}

/// One admin write: (invoke time, outcome, return time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Sequence number.
    pub id: u64,
    /// What it was.
    #[serde(flatten)]
    pub kind: OpKind,
    /// The node it was sent to.
    pub node: u64,
    /// Invoked at.
    pub invoke_ms: u64,
    /// Returned at.
    pub return_ms: u64,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// One `GET /v1/cluster` on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// When the answer came.
    pub t_ms: u64,
    /// The node asked.
    pub node: u64,
    /// Its view, or `None` when it did not answer.
    pub view: Option<View>,
}

/// A node's view of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// Raft term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Its raft state (`Leader`, `Follower`, `Candidate`, …).
    pub state: String,
    /// The config version it applied.
    pub config_version: u64,
    /// Its applied log index.
    pub applied: u64,
    /// The largest overshoot bound (requests) it reports for a global
    /// rate limit (`global_limits[].bound` in `/v1/cluster`).
    #[serde(default)]
    pub global_bound: Option<f64>,
}

/// Data-plane requests to one node in one second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Second {
    /// The node.
    pub node: u64,
    /// Second since start.
    pub second: u64,
    /// Requests sent.
    pub sent: u64,
    /// 2xx and 3xx answers.
    pub ok: u64,
    /// 4xx answers.
    pub client_errors: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// No answer (refused, reset, timeout).
    pub failed: u64,
}

/// What went wrong with one data-plane request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadError {
    /// When it was sent.
    pub t_ms: u64,
    /// The node.
    pub node: u64,
    /// `5xx` status, or `failed: …`.
    pub what: String,
}

/// The first time `node` refused revoked key `key_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforcement {
    /// Key id.
    pub key_id: String,
    /// Node.
    pub node: u64,
    /// When the 401 came.
    pub t_ms: u64,
}

/// What every node holds after the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalProbe {
    /// When the probe started (after every fault healed and the run ended).
    pub start_ms: u64,
    /// Per node, per acknowledged config version: the marker routes that
    /// version holds (`None`: the node does not have the version).
    pub versions: BTreeMap<u64, BTreeMap<u64, Option<Vec<String>>>>,
    /// Per node: the status a never-revoked key gets on its proxy.
    pub control_key: BTreeMap<u64, u16>,
}

// === impl Record ===

impl Record {
    /// The intervals `[start, heal)` during which `node` was killed.
    pub fn down(&self, node: u64) -> Vec<(u64, u64)> {
        self.intervals(node, |f| f.fault == "kill")
    }

    /// The intervals during which a request sent to `node` may fail because
    /// the node was killed: from [`IN_FLIGHT_MS`] before the kill (requests
    /// in flight are reset) until its restart.
    pub fn killed_under(&self, node: u64) -> Vec<(u64, u64)> {
        self.down(node)
            .into_iter()
            .map(|(a, b)| (a.saturating_sub(IN_FLIGHT_MS), b))
            .collect()
    }

    /// The intervals during which `node`'s peer links were cut (any way).
    pub fn cut(&self, node: u64) -> Vec<(u64, u64)> {
        self.intervals(node, |f| f.fault == "partition")
    }

    /// The intervals during which `node` could not take in new raft
    /// entries: killed, cut off, or its data dir full (nothing can be
    /// appended to its log until space is freed).
    pub fn impaired(&self, node: u64) -> Vec<(u64, u64)> {
        self.intervals(node, |f| {
            matches!(f.fault.as_str(), "kill" | "partition" | "disk-full")
        })
    }

    fn intervals(&self, node: u64, which: impl Fn(&FaultEvent) -> bool) -> Vec<(u64, u64)> {
        let end = self.final_probe.start_ms.max(self.duration_ms);
        self.faults
            .iter()
            .filter(|f| f.node == Some(node) && which(f))
            .map(|f| (f.start_ms, f.heal_ms.unwrap_or(end)))
            .collect()
    }

    /// Whether `t` falls in one of `intervals`.
    pub fn within(intervals: &[(u64, u64)], t: u64) -> bool {
        intervals.iter().any(|&(a, b)| a <= t && t < b)
    }

    /// The failover windows: `[t, t + W)` after every fault start and heal.
    pub fn windows(&self) -> Vec<(u64, u64)> {
        let w = self.bounds.failover;
        self.faults
            .iter()
            .flat_map(|f| {
                std::iter::once(f.start_ms)
                    .chain(f.heal_ms)
                    .map(move |t| (t, t + w))
            })
            .collect()
    }

    /// The node ids.
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }
}
