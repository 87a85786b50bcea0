//! Health gossip: every `gslb.interval` each node evaluates its region
//! ([`super::evaluate`]), records the result in its own view, and sends it
//! to every other member over the peer plane as a [`Report`]: whether it
//! serves and why, whether it is ready, the addresses clients reach its
//! region on, and each upstream's available and total targets (active
//! health checks and passive ejection both count). The receiver files the
//! report under the region the membership gives the sender, so a node
//! cannot speak for a region it is not in.
//!
//! A report is fresh for `gslb.peer-timeout`. A region is healthy while one
//! of its nodes has a fresh report that says it serves; when every report of
//! a region is stale (its link is cut, its nodes are gone) the region turns
//! unhealthy and the DNS responder stops handing out its addresses. Each
//! peer has at most one report in flight, so a slow or cut-off peer gets
//! the next one instead of a pile.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use raft::model::NodeId;
use serde::{Deserialize, Serialize};

use crate::Gateway;
use crate::peer;

/// What a node tells its peers about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// `/readyz` would answer 200.
    pub ready: bool,
    /// `/healthz/gslb` would answer 200: the region should get traffic
    /// from this node's point of view.
    pub serve: bool,
    /// Why (`serving`, `draining`, `not ready: …`, `upstream … has no
    /// available target`).
    pub reason: String,
    /// The addresses clients reach the node's region on (its
    /// `[regions.NAME]` entry).
    pub addresses: Vec<IpAddr>,
    /// Each upstream's targets.
    pub upstreams: BTreeMap<String, UpstreamHealth>,
}

/// An upstream's targets as one node sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamHealth {
    /// Targets neither failing their active check nor ejected.
    pub available: u32,
    /// All targets (resolved addresses, for DNS names).
    pub total: u32,
}

/// This node's report now.
pub fn report(gateway: &Gateway) -> Report {
    let verdict = super::evaluate(gateway);
    let config = &gateway.shared.config;
    let snapshot = gateway.snapshots.load();
    let upstreams = snapshot
        .pools
        .iter()
        .map(|(name, pool)| {
            let health = UpstreamHealth {
                available: pool.available_targets() as u32,
                total: pool.targets().len() as u32,
            };
            (name.clone(), health)
        })
        .collect();
    Report {
        ready: gateway.readiness().is_ok(),
        serve: verdict.serve,
        reason: verdict.reason,
        addresses: config
            .gslb
            .regions
            .get(&config.region)
            .cloned()
            .unwrap_or_default(),
        upstreams,
    }
}

/// Keeps the view current and gossips: every `gslb.interval`, at once when
/// the node starts draining, and a last `draining` report at shutdown.
pub async fn run(gateway: Arc<Gateway>) {
    let shared = gateway.shared.clone();
    let view = gateway.regions().clone();
    let cluster = gateway.cluster().clone();
    let interval = shared.config.gslb.interval;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight: BTreeMap<NodeId, Arc<AtomicBool>> = BTreeMap::new();
    loop {
        let mine = report(&gateway);
        view.set_local(mine.clone());
        let peers = cluster.peers();
        let ids: Vec<NodeId> = peers.iter().map(|(id, _)| *id).collect();
        view.refresh(&ids);
        in_flight.retain(|id, _| ids.contains(id));
        export(&gateway, &view);
        match peer::codec::encode(&peer::Request::Health(mine)) {
            Ok(frame) => {
                let frame = Arc::new(frame);
                for (id, address) in peers {
                    let busy = in_flight.entry(id).or_default().clone();
                    if busy.swap(true, Ordering::AcqRel) {
                        continue;
                    }
                    let (plane, frame) = (cluster.plane.clone(), frame.clone());
                    shared.tasks.spawn(async move {
                        if let Err(error) = plane.exchange(id, &address, &frame, interval).await {
                            tracing::debug!(peer = id, %error, "a health report was not delivered");
                        }
                        busy.store(false, Ordering::Release);
                    });
                }
            }
            Err(error) => tracing::warn!(%error, "cannot encode a health report"),
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                let mut last = report(&gateway);
                (last.serve, last.reason) = (false, "draining".into());
                view.set_local(last);
                return;
            }
            () = shared.drain.cancelled(), if !shared.drain.is_cancelled() => {}
            _ = tick.tick() => {}
        }
    }
}

/// `meridian_region_healthy{region}` and
/// `meridian_region_report_age_seconds{region}` from the view.
fn export(gateway: &Gateway, view: &super::RegionHealth) {
    let metrics = &gateway.shared.metrics;
    let now = crate::cluster::now_ms();
    for (region, state) in view.all().iter() {
        let label = [("region", region.clone())];
        metrics
            .gauge("meridian_region_healthy", &label)
            .set(if state.healthy { 1.0 } else { 0.0 });
        if state.source != super::Source::Static {
            let age = now.saturating_sub(state.updated_at_ms) as f64 / 1000.0;
            metrics
                .gauge("meridian_region_report_age_seconds", &label)
                .set(age);
        }
    }
}

#[cfg(test)]
mod tests;
