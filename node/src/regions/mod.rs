//! Which regions are fit to serve, and telling DNS GSLB and anycast.
//!
//! - [`RegionHealth`] is the node's view of every region: healthy or not,
//!   why, the addresses clients reach it on, and when that was last
//!   learned. Today it holds this node's own region, re-evaluated every
//!   `gslb.interval`, and the other regions listed under `[regions.NAME]`
//!   with their static addresses, taken as healthy; health gossip between
//!   nodes will fill in the others through [`RegionHealth::update`].
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

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
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
}

impl Default for RawGslb {
    fn default() -> Self {
        Self {
            critical_upstreams: Vec::new(),
            interval: Duration::from_secs(1),
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
    /// Re-evaluation period of the local state.
    pub interval: Duration,
    /// Addresses of each region, this one included.
    pub regions: BTreeMap<String, Vec<IpAddr>>,
}

impl Default for GslbSettings {
    fn default() -> Self {
        Self {
            critical: Critical::Listed(Vec::new()),
            interval: Duration::from_secs(1),
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
            regions: addresses,
        }
    }
}

/// Region names follow `region` in node.toml.
pub fn is_region_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Where a region's state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// This node evaluated its own region.
    Local,
    /// Configured addresses, no health information: taken as healthy.
    Static,
    /// Learned from another node.
    Peer,
}

/// One region's state in the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionState {
    /// Whether the region should receive traffic.
    pub healthy: bool,
    /// Why (`serving`, `draining`, `upstream users has no available target`, …).
    pub reason: String,
    /// The addresses clients reach the region on.
    pub addresses: Vec<IpAddr>,
    /// When this was learned, in ms since the Unix epoch.
    pub updated_at_ms: u64,
    /// Where it came from.
    pub source: Source,
}

/// The node's view of every region's health.
pub struct RegionHealth {
    local: String,
    states: ArcSwap<BTreeMap<String, RegionState>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl RegionHealth {
    /// The view at start: this region not evaluated yet (unhealthy, `starting`),
    /// the other configured regions healthy with their static addresses.
    pub fn new(local: &str, settings: &GslbSettings) -> Self {
        let now = crate::cluster::now_ms();
        let mut states = BTreeMap::new();
        for (region, addresses) in &settings.regions {
            states.insert(
                region.clone(),
                RegionState {
                    healthy: region != local,
                    reason: if region == local {
                        "starting".into()
                    } else {
                        "static: configured addresses, no health information".into()
                    },
                    addresses: addresses.clone(),
                    updated_at_ms: now,
                    source: if region == local {
                        Source::Local
                    } else {
                        Source::Static
                    },
                },
            );
        }
        states
            .entry(local.to_owned())
            .or_insert_with(|| RegionState {
                healthy: false,
                reason: "starting".into(),
                addresses: Vec::new(),
                updated_at_ms: now,
                source: Source::Local,
            });
        Self {
            local: local.to_owned(),
            states: ArcSwap::from_pointee(states),
            changed: tokio::sync::watch::Sender::new(0),
        }
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

    /// Sets one region's health and reason (keeping its addresses unless
    /// `addresses` is given). Notifies watchers when something other than
    /// the time changed.
    pub fn update(
        &self,
        region: &str,
        healthy: bool,
        reason: &str,
        addresses: Option<Vec<IpAddr>>,
        source: Source,
    ) {
        let mut changed = false;
        self.states.rcu(|states| {
            let mut states = BTreeMap::clone(states);
            let entry = states
                .entry(region.to_owned())
                .or_insert_with(|| RegionState {
                    healthy: !healthy,
                    reason: String::new(),
                    addresses: Vec::new(),
                    updated_at_ms: 0,
                    source,
                });
            changed = entry.healthy != healthy
                || entry.reason != reason
                || addresses.as_ref().is_some_and(|a| *a != entry.addresses);
            entry.healthy = healthy;
            entry.reason = reason.to_owned();
            if let Some(addresses) = &addresses {
                entry.addresses = addresses.clone();
            }
            entry.updated_at_ms = crate::cluster::now_ms();
            entry.source = source;
            states
        });
        if changed {
            self.changed.send_modify(|version| *version += 1);
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

/// Keeps the local region's entry of the view current: every
/// `gslb.interval`, and at once when the node starts draining.
pub async fn run(gateway: Arc<Gateway>) {
    let shared = gateway.shared.clone();
    let view = gateway.regions().clone();
    let addresses = shared
        .config
        .gslb
        .regions
        .get(&shared.config.region)
        .cloned();
    let mut interval = tokio::time::interval(shared.config.gslb.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let verdict = evaluate(&gateway);
        view.update(
            &shared.config.region,
            verdict.serve,
            &verdict.reason,
            addresses.clone(),
            Source::Local,
        );
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                view.update(&shared.config.region, false, "draining", None, Source::Local);
                return;
            }
            () = shared.drain.cancelled(), if !shared.drain.is_cancelled() => {}
            _ = interval.tick() => {}
        }
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
        let view = RegionHealth::new("eu-west", &settings());
        let local = view.get("eu-west").unwrap();
        assert!(!local.healthy);
        assert_eq!(local.source, Source::Local);
        let other = view.get("us-east").unwrap();
        assert!(other.healthy);
        assert_eq!(other.source, Source::Static);
        assert_eq!(other.addresses.len(), 2);
    }

    #[test]
    fn updates_notify_only_on_change() {
        let view = RegionHealth::new("eu-west", &settings());
        let mut changes = view.subscribe();
        view.update("eu-west", true, "serving", None, Source::Local);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        view.update("eu-west", true, "serving", None, Source::Local);
        assert!(!changes.has_changed().unwrap(), "same state, no news");
        view.update("us-east", false, "gossip says so", None, Source::Peer);
        assert!(changes.has_changed().unwrap());
        let us = view.get("us-east").unwrap();
        assert_eq!((us.healthy, us.source), (false, Source::Peer));
        assert_eq!(us.addresses.len(), 2, "addresses kept");
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
