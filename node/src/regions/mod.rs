//! Which regions are fit to serve, and telling DNS GSLB and anycast.
//!
//! - [`RegionHealth`] is the node's view of every region: healthy or not,
//!   why, the addresses clients reach it on, what each of its nodes last
//!   reported, and when. This node's own region is re-evaluated every
//!   `gslb.interval`; every other node's report arrives by health gossip
//!   over the peer plane ([`gossip`]) and is fresh for `gslb.peer-timeout`.
//!   Regions listed under `[regions.NAME]` that no node has reported from
//!   yet are taken as healthy with their static addresses.
//! - [`evaluate`] decides whether this region should receive traffic
//!   ("serve") or not ("drain"); `/healthz/gslb` answers it (200 / 503 with
//!   the reason), the DNS responder ([`crate::dns::responder`]) answers with
//!   the addresses of healthy regions only, and [`anycast`] runs the
//!   announce / withdraw commands.
//!
//! The region drains when, in this order:
//! 1. the node is draining (`meridian node drain`, SIGTERM, shutdown);
//! 2. the node is not ready (`/readyz` 503: no gateway configuration yet,
//!    or no raft leader for `raft.leader-loss` with `on-leader-loss =
//!    "not-ready"`);
//! 3. an upstream listed in `gslb.critical-upstreams` (`"*"`: every
//!    upstream) has no available target: all of them unhealthy by the
//!    active check or ejected, or a name that never resolved. Names listed
//!    there that the gateway configuration does not declare are ignored.
//!
//! Otherwise it serves.

pub mod anycast;
pub mod gossip;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use raft::model::NodeId;
use serde::{Deserialize, Serialize};

use crate::Gateway;

/// `[gslb]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawGslb {
    /// `critical-upstreams`: upstreams without which the region drains;
    /// `"*"` means all.
    pub critical_upstreams: Vec<String>,
    /// `interval`: how often the local region's state is re-evaluated for
    /// the view (and so for the DNS responder).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// `peer-timeout`: how long another node's health report stays fresh.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
}

impl Default for RawGslb {
    fn default() -> Self {
        Self {
            critical_upstreams: Vec::new(),
            interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(3),
        }
    }
}

/// `[regions.NAME]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawRegion {
    /// `addresses`: the public IPs clients reach the region on.
    pub addresses: Vec<String>,
}

/// Validated `[gslb]` and `[regions]`.
#[derive(Debug, Clone)]
pub struct GslbSettings {
    /// Upstreams without which the region drains.
    pub critical: Critical,
    /// Re-evaluation and gossip period.
    pub interval: Duration,
    /// How long a peer's report stays fresh.
    pub peer_timeout: Duration,
    /// Addresses of each region, this one included.
    pub regions: BTreeMap<String, Vec<IpAddr>>,
}

impl Default for GslbSettings {
    fn default() -> Self {
        Self {
            critical: Critical::Listed(Vec::new()),
            interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(3),
            regions: BTreeMap::new(),
        }
    }
}

/// Which upstreams are critical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Critical {
    /// Every upstream.
    All,
    /// These.
    Listed(Vec<String>),
}

impl RawGslb {
    /// Checks `[gslb]` and `[regions]`, reporting broken rules through `fail`.
    pub fn validate(
        self,
        regions: BTreeMap<String, RawRegion>,
        fail: &mut dyn FnMut(&str, &dyn std::fmt::Display, &str),
    ) -> GslbSettings {
        if self.interval.is_zero() {
            fail("gslb.interval", &"0s", "must be greater than zero");
        }
        if self.peer_timeout < self.interval * 2 {
            fail(
                "gslb.peer-timeout",
                &humantime::format_duration(self.peer_timeout),
                "must be at least two gslb intervals (a report is sent every interval)",
            );
        }
        let critical = if self.critical_upstreams.iter().any(|u| u == "*") {
            Critical::All
        } else {
            Critical::Listed(self.critical_upstreams)
        };
        let mut addresses = BTreeMap::new();
        for (region, raw) in regions {
            if !is_region_name(&region) {
                fail(
                    &format!("regions.{region}"),
                    &region,
                    "must be a region name of letters, digits, '-' and '_'",
                );
            }
            let mut ips = Vec::new();
            for (i, address) in raw.addresses.iter().enumerate() {
                match address.parse::<IpAddr>() {
                    Ok(ip) => ips.push(ip),
                    Err(_) => fail(
                        &format!("regions.{region}.addresses[{i}]"),
                        address,
                        "must be an IP address",
                    ),
                }
            }
            addresses.insert(region, ips);
        }
        GslbSettings {
            critical,
            interval: self.interval,
            peer_timeout: self.peer_timeout,
            regions: addresses,
        }
    }
}

pub use raft::model::validate::is_region_name;

/// Where a region's state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// This node's own region (its own evaluation, with its region peers'
    /// reports).
    Local,
    /// Configured addresses, no health information: taken as healthy.
    Static,
    /// Learned from the region's nodes by health gossip.
    Peer,
}

/// One region's state in the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionState {
    /// Whether the region should receive traffic: one of its nodes with a
    /// fresh report serves.
    pub healthy: bool,
    /// Why (`serving`, `draining`, `upstream users has no available target`,
    /// `no health report for 3s`, …).
    pub reason: String,
    /// The addresses clients reach the region on.
    pub addresses: Vec<IpAddr>,
    /// When this was learned, in ms since the Unix epoch.
    pub updated_at_ms: u64,
    /// Where it came from.
    pub source: Source,
    /// What each node of the region last reported.
    pub nodes: BTreeMap<NodeId, NodeState>,
}

/// One node's last report, as the view holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeState {
    /// What it said.
    #[serde(flatten)]
    pub report: gossip::Report,
    /// When it was heard (this node's clock), in ms since the Unix epoch.
    pub heard_at_ms: u64,
    /// Whether it was heard within `gslb.peer-timeout`; a stale report
    /// counts for nothing.
    pub fresh: bool,
}

/// A report and when it arrived.
struct Heard {
    region: String,
    report: gossip::Report,
    at: tokio::time::Instant,
    at_ms: u64,
}

/// The node's view of every region's health: its own evaluation, the
/// reports of every other node (health gossip, [`gossip`]), and the
/// configured addresses of regions no node has reported from.
pub struct RegionHealth {
    local: String,
    node: NodeId,
    statics: BTreeMap<String, Vec<IpAddr>>,
    timeout: Duration,
    heard: std::sync::Mutex<BTreeMap<NodeId, Heard>>,
    states: ArcSwap<BTreeMap<String, RegionState>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl RegionHealth {
    /// The view at start: this region not evaluated yet (unhealthy, `starting`),
    /// the other configured regions healthy with their static addresses.
    pub fn new(local: &str, node: NodeId, settings: &GslbSettings) -> Self {
        let view = Self {
            local: local.to_owned(),
            node,
            statics: settings.regions.clone(),
            timeout: settings.peer_timeout,
            heard: std::sync::Mutex::default(),
            states: ArcSwap::from_pointee(BTreeMap::new()),
            changed: tokio::sync::watch::Sender::new(0),
        };
        view.recompute(&BTreeMap::new());
        view
    }

    /// This node's region.
    pub fn local_region(&self) -> &str {
        &self.local
    }

    /// Every region's state.
    pub fn all(&self) -> Arc<BTreeMap<String, RegionState>> {
        self.states.load_full()
    }

    /// One region's state.
    pub fn get(&self, region: &str) -> Option<RegionState> {
        self.states.load().get(region).cloned()
    }

    /// Records this node's own report.
    pub fn set_local(&self, report: gossip::Report) {
        self.heard_from(self.node, &self.local, report);
    }

    /// Records node `node`'s report; `region` is the node's region as the
    /// membership knows it (not as the report claims).
    pub fn heard_from(&self, node: NodeId, region: &str, report: gossip::Report) {
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard.insert(
            node,
            Heard {
                region: region.to_owned(),
                report,
                at: tokio::time::Instant::now(),
                at_ms: crate::cluster::now_ms(),
            },
        );
        self.recompute(&heard);
    }

    /// Forgets nodes that left the cluster, and lets reports age: a region
    /// whose reports all went stale turns unhealthy.
    pub fn refresh(&self, members: &[NodeId]) {
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard.retain(|id, _| *id == self.node || members.contains(id));
        self.recompute(&heard);
    }

    /// Rebuilds the states from the reports and the configured regions,
    /// and notifies watchers when a region's health, reason or addresses
    /// changed.
    fn recompute(&self, heard: &BTreeMap<NodeId, Heard>) {
        let now = tokio::time::Instant::now();
        let now_ms = crate::cluster::now_ms();
        let mut regions: std::collections::BTreeSet<&str> =
            self.statics.keys().map(String::as_str).collect();
        regions.insert(&self.local);
        regions.extend(heard.values().map(|h| h.region.as_str()));
        let mut states = BTreeMap::new();
        for region in regions {
            let nodes: BTreeMap<NodeId, NodeState> = heard
                .iter()
                .filter(|(_, h)| h.region == region)
                .map(|(id, h)| {
                    let state = NodeState {
                        report: h.report.clone(),
                        heard_at_ms: h.at_ms,
                        fresh: *id == self.node
                            || now.saturating_duration_since(h.at) <= self.timeout,
                    };
                    (*id, state)
                })
                .collect();
            let state = self.region_state(region, nodes, now_ms);
            states.insert(region.to_owned(), state);
        }
        let old = self.states.swap(Arc::new(states));
        let new = self.states.load();
        let same = |a: &RegionState, b: &RegionState| {
            (a.healthy, &a.reason, &a.addresses) == (b.healthy, &b.reason, &b.addresses)
        };
        let changed = old.len() != new.len()
            || old
                .iter()
                .zip(new.iter())
                .any(|((ra, a), (rb, b))| ra != rb || !same(a, b));
        if changed {
            self.changed.send_modify(|version| *version += 1);
        }
    }

    fn region_state(
        &self,
        region: &str,
        nodes: BTreeMap<NodeId, NodeState>,
        now_ms: u64,
    ) -> RegionState {
        let local = region == self.local;
        let statics = self.statics.get(region).cloned().unwrap_or_default();
        let source = if local { Source::Local } else { Source::Peer };
        if nodes.is_empty() {
            return RegionState {
                healthy: !local,
                reason: if local {
                    "starting".into()
                } else {
                    "static: configured addresses, no health information".into()
                },
                addresses: statics,
                updated_at_ms: now_ms,
                source: if local { Source::Local } else { Source::Static },
                nodes,
            };
        }
        let updated_at_ms = nodes
            .values()
            .map(|n| n.heard_at_ms)
            .max()
            .unwrap_or(now_ms);
        let fresh: Vec<(&NodeId, &NodeState)> = nodes.iter().filter(|(_, n)| n.fresh).collect();
        let mut addresses: Vec<IpAddr> = fresh
            .iter()
            .flat_map(|(_, n)| n.report.addresses.iter().copied())
            .collect();
        addresses.sort();
        addresses.dedup();
        if addresses.is_empty() {
            addresses = statics;
        }
        let (healthy, reason) = if fresh.iter().any(|(_, n)| n.report.serve) {
            (true, "serving".to_owned())
        } else if let Some((id, node)) = fresh.first() {
            let reason = if nodes.len() == 1 {
                node.report.reason.clone()
            } else {
                format!("node {id}: {}", node.report.reason)
            };
            (false, reason)
        } else {
            let timeout = humantime::format_duration(self.timeout);
            (false, format!("no health report for {timeout}"))
        };
        RegionState {
            healthy,
            reason,
            addresses,
            updated_at_ms,
            source,
            nodes,
        }
    }

    /// Grows by one with every change (the DNS responder's SOA serial).
    pub fn version(&self) -> u64 {
        *self.changed.borrow()
    }

    /// A receiver that sees a new value whenever a region's health changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Whether this region should receive traffic, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `true`: serve; `false`: drain.
    pub serve: bool,
    /// The reason, for people and health checkers.
    pub reason: String,
}

impl Verdict {
    fn drain(reason: impl Into<String>) -> Self {
        Self {
            serve: false,
            reason: reason.into(),
        }
    }
}

/// Decides whether this region serves now (the rules are in the module
/// documentation). Reads only in-memory state: cheap enough for every
/// health check.
pub fn evaluate(gateway: &Gateway) -> Verdict {
    if gateway.draining() {
        return Verdict::drain("draining");
    }
    if let Err(reason) = gateway.readiness() {
        return Verdict::drain(format!("not ready: {reason}"));
    }
    let settings = &gateway.shared.config.gslb;
    let snapshot = gateway.snapshots.load();
    let critical: Vec<&String> = match &settings.critical {
        Critical::All => snapshot.pools.keys().collect(),
        Critical::Listed(names) => names.iter().collect(),
    };
    for name in critical {
        if let Some(pool) = snapshot.pools.get(name)
            && pool.available_targets() == 0
        {
            return Verdict::drain(format!("upstream {name} has no available target"));
        }
    }
    Verdict {
        serve: true,
        reason: "serving".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GslbSettings {
        let mut regions = BTreeMap::new();
        regions.insert(
            "eu-west".to_owned(),
            RawRegion {
                addresses: vec!["192.0.2.1".into()],
            },
        );
        regions.insert(
            "us-east".to_owned(),
            RawRegion {
                addresses: vec!["198.51.100.1".into(), "2001:db8::1".into()],
            },
        );
        RawGslb::default().validate(regions, &mut |key, _, rule| panic!("{key}: {rule}"))
    }

    #[test]
    fn the_view_starts_with_static_regions_healthy_and_this_one_not_yet() {
        let view = RegionHealth::new("eu-west", 1, &settings());
        let local = view.get("eu-west").unwrap();
        assert!(!local.healthy);
        assert_eq!(local.source, Source::Local);
        let other = view.get("us-east").unwrap();
        assert!(other.healthy);
        assert_eq!(other.source, Source::Static);
        assert_eq!(other.addresses.len(), 2);
    }

    #[test]
    fn bad_addresses_and_names_name_their_key() {
        let mut regions = BTreeMap::new();
        regions.insert(
            "eu west".to_owned(),
            RawRegion {
                addresses: vec!["nope".into()],
            },
        );
        let mut errors = Vec::new();
        let raw = RawGslb {
            critical_upstreams: vec!["*".into()],
            interval: Duration::ZERO,
            peer_timeout: Duration::from_secs(3),
        };
        let settings = raw.validate(regions, &mut |key, _, _| errors.push(key.to_owned()));
        assert_eq!(
            errors,
            [
                "gslb.interval",
                "regions.eu west",
                "regions.eu west.addresses[0]"
            ]
        );
        assert_eq!(settings.critical, Critical::All);
    }
}
