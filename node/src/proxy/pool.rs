//! An upstream pool: its targets, their health, how one is picked, and the
//! keep-alive client ([`super::client`]) that carries requests to them.
//!
//! A target is available when its active health check (if any) reports it
//! healthy and passive outlier ejection has not taken it out. Balancers:
//! - round robin: each available target in turn;
//! - least request: the less loaded of two random available targets
//!   (power of two choices), by requests in flight from this node;
//! - consistent hash: a ring of 160 points per target keyed by a header,
//!   cookie or the client IP; an unavailable target passes its keys to the
//!   next point on the ring, and requests without the key fall back to
//!   round robin.
//!
//! Pools survive configuration reloads when their definition is unchanged,
//! so health state, connections and counters carry over.
//!
//! [`InFlight`] counts a request to a target from its start until its
//! response body is finished; it also holds the HTTP/1.1 connection the
//! exchange used, which goes back to the target's idle stack only when
//! [`InFlight::release`] says the body ended cleanly.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use metrics::{Counter, Gauge, Histogram};
use raft::model::{self, Balance, HashKey};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::client::{self, Client, Conn, Endpoint};
use crate::metrics::Metrics;

/// One backend target.
pub struct Target {
    /// `host:port` as configured.
    pub address: Arc<str>,
    /// The URI authority for requests to this target.
    pub authority: http::uri::Authority,
    /// The connections to this target.
    pub endpoint: Endpoint,
    in_flight: AtomicU32,
    healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    healthy_gauge: Gauge,
    ejections_total: Counter,
}

impl Target {
    /// Requests to this target in flight from this node.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the active health check reports the target healthy.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            tracing::info!(target = %self.address, healthy, "health check state changed");
        }
        self.healthy_gauge.set(if healthy { 1.0 } else { 0.0 });
    }
}

/// Per-upstream series.
pub struct UpstreamMetrics {
    /// Time to response head.
    pub latency: Histogram,
    /// Retries sent.
    pub retries: Counter,
    /// Retries refused by the budget.
    pub budget_exhausted: Counter,
    errors: Vec<(&'static str, Counter)>,
}

impl UpstreamMetrics {
    /// Counts a failed attempt of `kind` (an error code).
    pub fn error(&self, kind: &'static str) {
        if let Some((_, counter)) = self.errors.iter().find(|(k, _)| *k == kind) {
            counter.increment(1);
        }
    }
}

const ERROR_KINDS: [&str; 6] = [
    "upstream_connect_failed",
    "upstream_connect_timeout",
    "upstream_timeout",
    "upstream_protocol_error",
    "status_5xx",
    "no_healthy_upstream",
];

/// A retry budget: retries may add `percent` % to the request rate of the
/// current second, with at least `min_per_second` always allowed.
struct RetryBudget {
    percent: u64,
    min_per_second: u64,
    /// Second (since the pool's epoch) the counters belong to.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    fn roll(&self, now: u64) {
        let current = self.second.load(Ordering::Relaxed);
        if current != now
            && self
                .second
                .compare_exchange(current, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    fn request(&self, now: u64) {
        self.roll(now);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn try_retry(&self, now: u64) -> bool {
        self.roll(now);
        let allowed =
            (self.requests.load(Ordering::Relaxed) * self.percent / 100).max(self.min_per_second);
        if self.retries.load(Ordering::Relaxed) >= allowed {
            return false;
        }
        self.retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

enum Balancer {
    RoundRobin,
    LeastRequest,
    ConsistentHash {
        key: HashKey,
        ring: Vec<(u64, usize)>,
    },
}

/// A pool of targets for one upstream.
pub struct Pool {
    name: String,
    definition: model::Upstream,
    /// The targets, in configured order.
    pub targets: Vec<Target>,
    balancer: Balancer,
    next: AtomicUsize,
    epoch: Instant,
    retry_budget: RetryBudget,
    /// The keep-alive client.
    pub client: Client,
    /// The upstream's series.
    pub metrics: UpstreamMetrics,
}

impl Pool {
    /// Builds a pool for a validated upstream definition. Its connection
    /// tasks and its reaper (see [`client`]) go on `tasks`; the reaper
    /// closes the idle connections when `shutdown` is cancelled.
    pub fn new(
        name: &str,
        definition: &model::Upstream,
        metrics: &Metrics,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Arc<Self> {
        let targets: Vec<Target> = definition
            .targets
            .iter()
            .filter_map(|address| {
                let labels = [("upstream", name.to_owned()), ("target", address.clone())];
                let authority: http::uri::Authority = address.parse().ok()?;
                let target = Target {
                    address: address.as_str().into(),
                    endpoint: Endpoint::new(&authority),
                    authority,
                    in_flight: AtomicU32::new(0),
                    healthy: AtomicBool::new(true),
                    consecutive_failures: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                    ejections: AtomicU32::new(0),
                    healthy_gauge: metrics.gauge("meridian_upstream_target_healthy", &labels),
                    ejections_total: metrics.counter("meridian_upstream_ejections_total", &labels),
                };
                target.healthy_gauge.set(1.0);
                Some(target)
            })
            .collect();
        let balancer = match &definition.balance {
            Balance::RoundRobin => Balancer::RoundRobin,
            Balance::LeastRequest => Balancer::LeastRequest,
            Balance::ConsistentHash(key) => Balancer::ConsistentHash {
                key: key.clone(),
                ring: ring(&targets),
            },
        };
        let upstream = [("upstream", name.to_owned())];
        let pool = Arc::new(Self {
            name: name.to_owned(),
            definition: definition.clone(),
            balancer,
            next: AtomicUsize::new(fastrand::usize(..targets.len().max(1))),
            epoch: Instant::now(),
            retry_budget: RetryBudget {
                percent: u64::from(definition.retries.budget_percent),
                min_per_second: u64::from(definition.retries.min_per_second),
                second: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            },
            client: Client::new(definition, tasks),
            metrics: UpstreamMetrics {
                latency: metrics.histogram("meridian_upstream_request_duration_seconds", &upstream),
                retries: metrics.counter("meridian_upstream_retries_total", &upstream),
                budget_exhausted: metrics
                    .counter("meridian_upstream_retry_budget_exhausted_total", &upstream),
                errors: ERROR_KINDS
                    .iter()
                    .map(|kind| {
                        let labels = [("upstream", name.to_owned()), ("kind", (*kind).to_owned())];
                        (
                            *kind,
                            metrics.counter("meridian_upstream_errors_total", &labels),
                        )
                    })
                    .collect(),
            },
            targets,
        });
        let span = tracing::info_span!("pool", upstream = %name);
        tasks.spawn(
            client::reap(
                Arc::downgrade(&pool),
                definition.pool.idle_timeout,
                shutdown.clone(),
            )
            .instrument(span),
        );
        pool
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition the pool was built from.
    pub fn definition(&self) -> &model::Upstream {
        &self.definition
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn available(&self, index: usize, now_ms: u64) -> bool {
        let target = &self.targets[index];
        target.healthy() && target.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// The hash key the balancer wants, if it hashes.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match &self.balancer {
            Balancer::ConsistentHash { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Picks an available target, avoiding those in `tried` while others
    /// remain. `hash` is the request's hash when the balancer hashes.
    pub fn pick(&self, hash: Option<u64>, tried: &[usize]) -> Option<usize> {
        let now = self.now_ms();
        let n = self.targets.len();
        let usable = |i: usize| self.available(i, now) && !tried.contains(&i);
        let round_robin = || {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
        };
        match (&self.balancer, hash) {
            (Balancer::ConsistentHash { ring, .. }, Some(hash)) if !ring.is_empty() => {
                let start = ring.partition_point(|(point, _)| *point < hash);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1)
                    .find(|&i| usable(i))
            }
            (Balancer::LeastRequest, _) if n > 1 => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                match (usable(a), usable(b)) {
                    (true, true) => Some(
                        if self.targets[b].in_flight() < self.targets[a].in_flight() {
                            b
                        } else {
                            a
                        },
                    ),
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => round_robin(),
                }
            }
            _ => round_robin(),
        }
    }

    /// Marks the start of a request to `index`; the guard ends it.
    pub fn begin(self: &Arc<Self>, index: usize) -> InFlight {
        self.targets[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        self.retry_budget.request(self.now_ms() / 1000);
        InFlight {
            pool: self.clone(),
            index,
            conn: None,
        }
    }

    /// Whether the retry budget allows one more retry now.
    pub fn try_retry(&self) -> bool {
        let allowed = self.retry_budget.try_retry(self.now_ms() / 1000);
        if allowed {
            self.metrics.retries.increment(1);
        } else {
            self.metrics.budget_exhausted.increment(1);
        }
        allowed
    }

    /// Records the outcome of an attempt for passive outlier ejection.
    pub fn record(&self, index: usize, success: bool) {
        let target = &self.targets[index];
        if success {
            target.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let outlier = &self.definition.outlier;
        if outlier.consecutive_failures == 0 {
            return;
        }
        let failures = target.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < outlier.consecutive_failures {
            return;
        }
        let now = self.now_ms();
        let ejected = (0..self.targets.len())
            .filter(|&i| self.targets[i].ejected_until_ms.load(Ordering::Relaxed) > now)
            .count();
        let max = self.targets.len() * usize::from(outlier.max_ejection_percent) / 100;
        if ejected >= max {
            return;
        }
        target.consecutive_failures.store(0, Ordering::Relaxed);
        let times = target.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = outlier.base_ejection * times.min(10);
        target
            .ejected_until_ms
            .store(now + duration.as_millis() as u64, Ordering::Relaxed);
        target.ejections_total.increment(1);
        tracing::warn!(upstream = %self.name, target = %target.address, ?duration, "target ejected");
    }

    /// Whether `index` is ejected right now.
    pub fn ejected(&self, index: usize) -> bool {
        self.targets[index].ejected_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }
}

/// Ends an in-flight request when dropped, closing the connection it
/// holds unless [`InFlight::release`] gave it back first.
pub struct InFlight {
    pool: Arc<Pool>,
    index: usize,
    conn: Option<Conn>,
}

impl InFlight {
    /// Holds the connection that carries the exchange until the response
    /// body is finished.
    pub fn keep(&mut self, conn: Option<Conn>) {
        self.conn = conn;
    }

    /// The response body ended cleanly: the connection goes back to the
    /// target's idle stack.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            let pool = &self.pool;
            pool.client
                .release(&pool.targets[self.index].endpoint, conn);
        }
    }

    /// The response failed: the connection is closed, never reused.
    pub fn discard(&mut self) {
        self.conn = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.targets[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// 64-bit hash used for consistent hashing (FNV-1a with a final mix), stable
/// across nodes and releases so that every node maps a key alike.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finaliser
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Hash of a client IP (the whole address).
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash(&v4.octets()),
        IpAddr::V6(v6) => hash(&v6.octets()),
    }
}

const POINTS_PER_TARGET: usize = 160;

fn ring(targets: &[Target]) -> Vec<(u64, usize)> {
    let mut ring = Vec::with_capacity(targets.len() * POINTS_PER_TARGET);
    for (index, target) in targets.iter().enumerate() {
        for point in 0..POINTS_PER_TARGET {
            ring.push((
                hash(format!("{}#{point}", target.address).as_bytes()),
                index,
            ));
        }
    }
    ring.sort_unstable();
    ring
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pool(yaml: &str) -> Arc<Pool> {
        let doc = format!("upstreams:\n  u: {yaml}\n");
        let upstream = model::GatewayConfig::parse(&doc).expect("valid").upstreams["u"].clone();
        Pool::new(
            "u",
            &upstream,
            &Metrics::new(),
            &TaskTracker::new(),
            &CancellationToken::new(),
        )
    }

    #[tokio::test]
    async fn round_robin_cycles_and_skips_unavailable_targets() {
        let pool = pool("{ targets: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"] }");
        let picks: Vec<usize> = (0..6).map(|_| pool.pick(None, &[]).unwrap()).collect();
        for i in 0..3 {
            assert_eq!(picks.iter().filter(|&&p| p == i).count(), 2, "{picks:?}");
        }
        pool.targets[1].set_healthy(false);
        assert!((0..10).all(|_| pool.pick(None, &[]) != Some(1)));
        assert_eq!(
            pool.pick(None, &[0, 2]),
            None,
            "every healthy target was tried"
        );
        pool.targets[0].set_healthy(false);
        pool.targets[2].set_healthy(false);
        assert_eq!(pool.pick(None, &[]), None);
    }

    #[tokio::test]
    async fn least_request_prefers_the_idle_target() {
        let pool = pool("{ targets: [\"127.0.0.1:1\", \"127.0.0.1:2\"], balance: least_request }");
        let _busy: Vec<InFlight> = (0..5).map(|_| pool.begin(0)).collect();
        assert!((0..50).all(|_| pool.pick(None, &[]) == Some(1)));
    }

    #[tokio::test]
    async fn consistent_hash_is_stable_and_spreads() {
        let pool = pool(
            "{ targets: [\"10.0.0.1:80\", \"10.0.0.2:80\", \"10.0.0.3:80\"], balance: { consistent_hash: client_ip } }",
        );
        let mut counts = [0usize; 3];
        for user in 0..3000u32 {
            let key = hash(format!("user-{user}").as_bytes());
            let first = pool.pick(Some(key), &[]).unwrap();
            assert_eq!(pool.pick(Some(key), &[]), Some(first));
            counts[first] += 1;
        }
        for count in counts {
            assert!((600..1400).contains(&count), "{counts:?}");
        }
        // Taking a target out moves only its keys.
        let before: Vec<usize> = (0..300u32)
            .map(|u| pool.pick(Some(hash(&u.to_be_bytes())), &[]).unwrap())
            .collect();
        pool.targets[0].set_healthy(false);
        for (u, old) in (0..300u32).zip(before) {
            let new = pool.pick(Some(hash(&u.to_be_bytes())), &[]).unwrap();
            if old != 0 {
                assert_eq!(new, old);
            } else {
                assert_ne!(new, 0);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_within_the_percentage() {
        let pool = pool(
            "{ targets: [\"127.0.0.1:1\", \"127.0.0.1:2\"], outlier: { consecutive_failures: 3, base_ejection: 10s, max_ejection_percent: 50 } }",
        );
        pool.record(0, false);
        pool.record(0, false);
        pool.record(0, true);
        pool.record(0, false);
        pool.record(0, false);
        assert!(!pool.ejected(0), "a success resets the count");
        pool.record(0, false);
        assert!(pool.ejected(0));
        for _ in 0..3 {
            pool.record(1, false);
        }
        assert!(!pool.ejected(1), "at most 50% of the targets are ejected");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!pool.ejected(0), "ejection ends");
        for _ in 0..3 {
            pool.record(0, false);
        }
        assert!(pool.ejected(0));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(pool.ejected(0), "a second ejection lasts twice as long");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_budget_allows_the_minimum_then_the_percentage() {
        let pool = pool(
            "{ targets: [\"127.0.0.1:1\"], retries: { attempts: 2, budget_percent: 10, min_per_second: 2 } }",
        );
        assert!(pool.try_retry());
        assert!(pool.try_retry());
        assert!(!pool.try_retry());
        tokio::time::advance(Duration::from_secs(1)).await;
        let _guards: Vec<InFlight> = (0..50).map(|_| pool.begin(0)).collect();
        let allowed = (0..10).filter(|_| pool.try_retry()).count();
        assert_eq!(allowed, 5, "10% of 50 requests");
    }
}
