//! Global limits' counters on the wire: every sync interval each node
//! collects the counters that changed and sends them, in one batch, to
//! every peer over the peer plane; every full-sync interval the batch
//! carries every counter that still counts, so a batch that was lost is
//! made good. Each batch doubles as a heartbeat: a peer not heard from
//! within the peer timeout is presumed partitioned away (see
//! [`super::global`]).
//!
//! The worst-case overshoot of a global limit (docs/rate-limiting.md) is
//! `Σ rₙ × D`: the admission rates of the nodes times the delay `D` after
//! which an admission is known everywhere. `D` is measured, not assumed:
//! the longest a peer went unheard during the last second (at least the
//! sync interval; lost or late batches and the start of a partition make it
//! longer, up to the peer timeout) plus half the largest RTT. The bound is
//! computed every second from the measured rates, exported as
//! `meridian_ratelimit_global_bound{limit}` and shown by
//! `meridian cluster status`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raft::model::NodeId;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::Registry;
use super::clock::{Nanos, SECOND};
use super::global::Entry;
use crate::cluster::Cluster;
use crate::peer;

/// `[ratelimit.global]` in node.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Settings {
    /// How often changed counters are sent.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// How often every live counter is sent (repairs lost batches).
    #[serde(with = "humantime_serde")]
    pub full_sync_interval: Duration,
    /// Silence after which a peer is presumed partitioned away.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sync_interval: Duration::from_millis(50),
            full_sync_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(2),
        }
    }
}

impl Settings {
    /// Checks the section, reporting each broken rule through `fail(key, value, rule)`.
    pub fn validate(&self, fail: &mut dyn FnMut(&str, &dyn std::fmt::Display, &str)) {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if !(Duration::from_millis(5)..=Duration::from_secs(10)).contains(&self.sync_interval) {
            fail(
                "ratelimit.global.sync-interval",
                &show(self.sync_interval),
                "must be between 5ms and 10s",
            );
        }
        if self.full_sync_interval < self.sync_interval {
            fail(
                "ratelimit.global.full-sync-interval",
                &show(self.full_sync_interval),
                "must be at least the sync interval",
            );
        }
        if self.peer_timeout < self.sync_interval * 4 {
            fail(
                "ratelimit.global.peer-timeout",
                &show(self.peer_timeout),
                "must be at least four sync intervals (a peer is heard from every interval)",
            );
        }
    }
}

/// One limit's counters in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitCounts {
    /// The limit's identity (`plan:gold/burst`, `route:users/0`).
    pub limit: String,
    /// Its changed keys.
    pub entries: Vec<Entry>,
}

/// What a node sends its peers every sync interval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Counters per limit.
    pub limits: Vec<LimitCounts>,
}

impl Batch {
    /// Counters carried.
    pub fn entries(&self) -> usize {
        self.limits.iter().map(|l| l.entries.len()).sum()
    }
}

/// The overshoot bound of one global limit, as last computed.
#[derive(Debug, Clone, Serialize)]
pub struct Bound {
    /// The limit.
    pub limit: String,
    /// Admissions per second over every node (`Σ rₙ`).
    pub rate: f64,
    /// Seconds until an admission is known everywhere (`D`).
    pub delay: f64,
    /// Requests a window may admit beyond the limit (`Σ rₙ × D`).
    pub bound: f64,
    /// Peers presumed partitioned away.
    pub unreachable: u32,
}

/// Test and chaos seam: drops this share of outgoing batches (per mille).
#[derive(Debug, Default)]
pub struct Loss(std::sync::atomic::AtomicU32);

impl Loss {
    /// Drops `share` (0 to 1) of the batches sent from now on.
    pub fn set(&self, share: f64) {
        self.0
            .store((share.clamp(0.0, 1.0) * 1000.0) as u32, Ordering::Relaxed);
    }

    fn drops(&self, rng: &mut fastrand::Rng) -> bool {
        let per_mille = self.0.load(Ordering::Relaxed);
        per_mille > 0 && rng.u32(0..1000) < per_mille
    }
}

/// Runs the sync loop of `registry` over `cluster`'s peer plane until
/// `shutdown`.
pub fn spawn(
    registry: Arc<Registry>,
    cluster: Arc<Cluster>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let inner = tasks.clone();
    tasks.spawn(
        run(registry, cluster, inner, shutdown).instrument(tracing::info_span!("ratelimit-sync")),
    );
}

struct PeerLink {
    id: NodeId,
    address: String,
    slot: u8,
    busy: Arc<std::sync::atomic::AtomicBool>,
}

async fn run(
    registry: Arc<Registry>,
    cluster: Arc<Cluster>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let settings = registry.settings.global;
    let clock = *registry.clock();
    let full_every = (settings.full_sync_interval.as_nanos()
        / settings.sync_interval.as_nanos().max(1))
    .max(1) as u64;
    let timeout = super::nanos(settings.peer_timeout);
    let mut links: Vec<PeerLink> = Vec::new();
    let mut rng = fastrand::Rng::new();
    let mut tick = tokio::time::interval(settings.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_bounds = (clock.now(), registry.totals());
    // The longest silence of a peer since the bound was last computed.
    let mut longest_silence: Nanos = 0;
    for round in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let now = clock.now();
        let members = cluster.peers();
        let ids: Vec<NodeId> = members.iter().map(|(id, _)| *id).collect();
        let slots = registry.peers.set_members(&ids, now);
        // A link per member with a slot, keeping each one's in-flight flag.
        links = members
            .into_iter()
            .filter_map(|(id, address)| {
                let slot = slots.iter().find(|(s, _)| *s == id)?.1;
                let busy = links
                    .iter()
                    .find(|l| l.id == id)
                    .map_or_else(Arc::default, |l| l.busy.clone());
                Some(PeerLink {
                    id,
                    address,
                    slot,
                    busy,
                })
            })
            .collect();
        let unreachable = registry.peers.refresh(&slots, now, timeout);
        for link in &links {
            let silence = registry.peers.silence(link.slot, now);
            // Past the peer timeout the peer is presumed away and charged
            // its share: its silence no longer delays what this node knows.
            longest_silence = longest_silence.max(silence.min(timeout));
            registry
                .metrics
                .gauge(
                    "meridian_ratelimit_sync_lag_seconds",
                    &[("peer", link.id.to_string())],
                )
                .set(seconds(silence));
        }
        let batch = registry.collect(round % full_every == 0, now);
        let count = batch.entries() as u64;
        let frame = match peer::codec::encode(&peer::Request::Counters(batch)) {
            Ok(frame) => Arc::new(frame),
            Err(error) => {
                tracing::warn!(%error, "cannot encode a counter batch");
                continue;
            }
        };
        for link in &links {
            if registry.loss.drops(&mut rng) {
                registry
                    .metrics
                    .counter("meridian_ratelimit_sync_batches_dropped_total", &[])
                    .increment(1);
                continue;
            }
            // One batch in flight per peer: a slow or cut-off peer gets the
            // next one (or the next full sync) instead of a pile.
            if link.busy.swap(true, Ordering::AcqRel) {
                continue;
            }
            let (plane, frame, busy) = (cluster.plane.clone(), frame.clone(), link.busy.clone());
            let (id, address) = (link.id, link.address.clone());
            let registry = registry.clone();
            tasks.spawn(async move {
                let sent = plane
                    .exchange(id, &address, &frame, settings.peer_timeout)
                    .await;
                busy.store(false, Ordering::Release);
                let peer = [("peer", id.to_string())];
                match sent {
                    Ok(_) => {
                        registry
                            .metrics
                            .counter("meridian_ratelimit_counters_sent_total", &peer)
                            .increment(count);
                        registry
                            .metrics
                            .counter(
                                "meridian_ratelimit_sync_bytes_total",
                                &[("direction", "sent".to_owned())],
                            )
                            .increment(frame.len() as u64);
                    }
                    Err(error) => {
                        tracing::debug!(peer = id, %error, "a counter batch was not delivered");
                        registry
                            .metrics
                            .counter("meridian_ratelimit_sync_failures_total", &peer)
                            .increment(1);
                    }
                }
            });
        }
        if now.saturating_sub(last_bounds.0) >= SECOND {
            let totals = registry.totals();
            let rtt = links
                .iter()
                .filter_map(|l| cluster.plane.rtt(l.id))
                .max()
                .unwrap_or_default();
            let unheard = seconds(longest_silence).max(settings.sync_interval.as_secs_f64());
            let delay = unheard + rtt.as_secs_f64() / 2.0;
            longest_silence = 0;
            registry.update_bounds(
                &last_bounds.1,
                &totals,
                seconds(now - last_bounds.0),
                delay,
                unreachable.count_ones(),
            );
            last_bounds = (now, totals);
        }
    }
}

/// Nanoseconds as seconds.
fn seconds(nanos: Nanos) -> f64 {
    nanos as f64 / SECOND as f64
}
