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
//! The target set ([`Targets`]) is swapped as a whole when DNS discovery
//! ([`crate::dns::discovery`]) finds other addresses for a configured name;
//! a request keeps the set it loaded, and targets present before and after
//! keep their health, ejection state and connections. SRV weights are
//! honoured: round robin uses a smooth weighted sequence, least request
//! draws its two candidates from it, and the hash ring gives a target
//! points in proportion to its weight.
//!
//! [`InFlight`] counts a request to a target from its start until its
//! response body is finished; it also holds the HTTP/1.1 connection the
//! exchange used, which goes back to the target's idle stack only when
//! [`InFlight::release`] says the body ended cleanly.

use std::cell::OnceCell;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge};
use raft::model::{self, Balance, HashKey};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::client::{self, Client, Conn, Endpoint};
use crate::body::FromUpstream;
use crate::dns::discovery::{Entry, Resolved};
use crate::metrics::Metrics;

/// How an [`Pool::exchange`] failed.
pub enum Failed {
    /// The client could not send or got no answer.
    Send(client::Error),
    /// No response head within the timeout.
    Timeout,
}

/// What an exchange answered: the response, the guard that holds the
/// target's in-flight count and the connection until the body ends, and
/// the time to the response head.
pub type Exchanged = (
    Box<http::Response<FromUpstream>>,
    InFlight,
    std::time::Duration,
);

/// One backend target: one address to connect to.
pub struct Target {
    /// `ip:port` connected to (for a configured IP literal, as written).
    pub address: Arc<str>,
    /// The configured target this one comes from: `host:port` or `srv:NAME`.
    pub origin: Arc<str>,
    /// The URI authority for requests to this target (`Host`): the
    /// configured `host:port`, or an SRV record's target and port.
    pub authority: http::uri::Authority,
    /// The connections to this target.
    pub endpoint: Endpoint,
    /// The socket address connected to, formatted once (a served request's
    /// access-log `target`).
    pub peer: crate::text::Peer,
    /// The pool's client, which takes the connections back: an in-flight
    /// request holds its target alone, not the pool as well.
    client: Arc<Client>,
    /// The share of requests it gets relative to the pool's other targets
    /// (1 unless an SRV record gave a weight).
    pub weight: u32,
    in_flight: AtomicU32,
    healthy: AtomicBool,
    /// Active health check streaks: successes and failures in a row.
    pub(crate) streaks: (AtomicU32, AtomicU32),
    consecutive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    healthy_gauge: Gauge,
    ejections_total: Counter,
}

impl Target {
    /// Requests to this target in flight from this node, as the
    /// least-request balancer counts them (the others count none: a count
    /// is two atomic operations a request).
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

    fn same(&self, resolved: &Resolved) -> bool {
        self.endpoint.addr() == resolved.addr
            && self.authority == resolved.authority
            && self.weight == resolved.weight
    }
}

/// The pool's targets at one moment. Discovery replaces the whole set
/// atomically; a request uses the set it loaded from start to end, so the
/// indexes it holds stay valid.
pub struct Targets {
    list: Vec<Arc<Target>>,
    /// Round-robin sequence of indexes, each target as often as its weight.
    order: Vec<usize>,
    /// Consistent-hash ring (empty unless the balancer hashes).
    ring: Vec<(u64, usize)>,
}

impl Deref for Targets {
    type Target = [Arc<Target>];

    fn deref(&self) -> &[Arc<Target>] {
        &self.list
    }
}

/// Per-upstream series.
pub struct UpstreamMetrics {
    /// Time to response head.
    pub latency: Arc<crate::metrics::Latency>,
    /// Retries sent.
    pub retries: Counter,
    /// Retries refused by the budget.
    pub budget_exhausted: Counter,
    /// Targets in the current set.
    pub targets: Gauge,
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
    ConsistentHash { key: HashKey },
}

/// A pool of targets for one upstream.
pub struct Pool {
    name: String,
    definition: model::Upstream,
    /// The configured targets, parsed.
    entries: Vec<Entry>,
    /// Per entry: the addresses a name resolved to last (last known good);
    /// `None` for IP literals and names never resolved.
    resolved: Mutex<Vec<Option<Vec<Resolved>>>>,
    targets: ArcSwap<Targets>,
    balancer: Balancer,
    next: AtomicUsize,
    epoch: Instant,
    retry_budget: RetryBudget,
    registry: Arc<Metrics>,
    /// The keep-alive client (its targets hold it too).
    pub client: Arc<Client>,
    /// The upstream's series.
    pub metrics: UpstreamMetrics,
    /// Whether its traffic went to other regions ([`super::fallback`]).
    pub away: super::fallback::Away,
}

impl Pool {
    /// Builds a pool for a validated upstream definition. Its connection
    /// tasks and its reaper (see [`client`]) go on `tasks`; the reaper
    /// closes the idle connections when `shutdown` is cancelled.
    ///
    /// Names are not resolved here (see [`crate::dns::discovery`]): a name
    /// contributes no target until its first answer, unless `previous` (the
    /// pool this one replaces) resolved the same name, whose addresses are
    /// then kept.
    pub fn new(
        name: &str,
        definition: &model::Upstream,
        metrics: &Arc<Metrics>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        previous: Option<&Pool>,
    ) -> Arc<Self> {
        let entries: Vec<Entry> = definition
            .targets
            .iter()
            .filter_map(|target| Entry::parse(target))
            .collect();
        let resolved: Vec<Option<Vec<Resolved>>> = entries
            .iter()
            .map(|entry| {
                let previous = previous?;
                let at = previous.entries.iter().position(|e| e == entry)?;
                previous.lock_resolved().get(at).cloned().flatten()
            })
            .collect();
        let balancer = match &definition.balance {
            Balance::RoundRobin => Balancer::RoundRobin,
            Balance::LeastRequest => Balancer::LeastRequest,
            Balance::ConsistentHash(key) => Balancer::ConsistentHash { key: key.clone() },
        };
        let upstream = [("upstream", name.to_owned())];
        let pool = Arc::new(Self {
            name: name.to_owned(),
            definition: definition.clone(),
            entries,
            resolved: Mutex::new(resolved),
            targets: ArcSwap::from_pointee(Targets {
                list: Vec::new(),
                order: Vec::new(),
                ring: Vec::new(),
            }),
            balancer,
            next: AtomicUsize::new(fastrand::usize(..definition.targets.len().max(1))),
            epoch: Instant::now(),
            retry_budget: RetryBudget {
                percent: u64::from(definition.retries.budget_percent),
                min_per_second: u64::from(definition.retries.min_per_second),
                second: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            },
            registry: metrics.clone(),
            away: super::fallback::Away::new(metrics.gauge("meridian_fallback_active", &upstream)),
            client: Arc::new(Client::new(definition, tasks)),
            metrics: UpstreamMetrics {
                latency: metrics.latency("meridian_upstream_request_duration_seconds", &upstream),
                retries: metrics.counter("meridian_upstream_retries_total", &upstream),
                budget_exhausted: metrics
                    .counter("meridian_upstream_retry_budget_exhausted_total", &upstream),
                targets: metrics.gauge("meridian_upstream_targets", &upstream),
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
        });
        pool.rebuild();
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

    /// The configured targets, parsed.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The current target set.
    pub fn targets(&self) -> Arc<Targets> {
        self.targets.load_full()
    }

    fn lock_resolved(&self) -> std::sync::MutexGuard<'_, Vec<Option<Vec<Resolved>>>> {
        // Plain data, valid between any two statements.
        self.resolved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records what entry `entry` (a name) resolved to and swaps in the new
    /// target set when it changed. Targets that remain keep their health,
    /// ejection state and connections.
    pub fn set_resolved(&self, entry: usize, addresses: Vec<Resolved>) {
        {
            let mut resolved = self.lock_resolved();
            let Some(slot) = resolved.get_mut(entry) else {
                return;
            };
            if slot.as_ref() == Some(&addresses) {
                return;
            }
            *slot = Some(addresses);
        }
        self.rebuild();
    }

    /// Rebuilds the target set from the entries and their resolutions.
    fn rebuild(&self) {
        let current = self.targets.load_full();
        let mut list: Vec<Arc<Target>> = Vec::new();
        let resolved = self.lock_resolved().clone();
        for (entry, resolved) in self.entries.iter().zip(resolved) {
            let addresses = match entry {
                Entry::Addr { addr, authority } => vec![Resolved {
                    addr: *addr,
                    authority: authority.clone(),
                    weight: 1,
                }],
                Entry::Name { .. } | Entry::Srv { .. } => resolved.unwrap_or_default(),
            };
            for resolved in addresses {
                let exists = |t: &Arc<Target>| t.same(&resolved);
                if list.iter().any(exists) {
                    continue;
                }
                let target = match current.list.iter().find(|t| exists(t)) {
                    Some(target) => target.clone(),
                    None => Arc::new(self.target(entry, &resolved)),
                };
                list.push(target);
            }
        }
        let weights: Vec<u32> = list.iter().map(|t| t.weight).collect();
        let ring = match self.balancer {
            Balancer::ConsistentHash { .. } => ring(&list),
            _ => Vec::new(),
        };
        let changed = list.len() != current.list.len()
            || list
                .iter()
                .zip(&current.list)
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed && !current.list.is_empty() {
            let addresses: Vec<&str> = list.iter().map(|t| &*t.address).collect();
            tracing::info!(upstream = %self.name, targets = ?addresses, "target set changed");
        }
        self.metrics.targets.set(list.len() as f64);
        self.targets.store(Arc::new(Targets {
            order: schedule(&weights),
            ring,
            list,
        }));
    }

    fn target(&self, entry: &Entry, resolved: &Resolved) -> Target {
        let address: Arc<str> = match entry {
            Entry::Addr { authority, .. } => authority.as_str().into(),
            _ => resolved.addr.to_string().into(),
        };
        let labels = [
            ("upstream", self.name.clone()),
            ("target", address.to_string()),
        ];
        let target = Target {
            origin: entry.to_string().into(),
            endpoint: Endpoint::new(&resolved.authority, resolved.addr),
            peer: crate::text::Peer::new(resolved.addr),
            client: self.client.clone(),
            authority: resolved.authority.clone(),
            address,
            weight: resolved.weight,
            in_flight: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            streaks: (AtomicU32::new(0), AtomicU32::new(0)),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            healthy_gauge: self
                .registry
                .gauge("meridian_upstream_target_healthy", &labels),
            ejections_total: self
                .registry
                .counter("meridian_upstream_ejections_total", &labels),
        };
        target.healthy_gauge.set(1.0);
        target
    }

    /// Milliseconds since the pool was built.
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The second since the pool was built that `at` falls in (the retry
    /// budget's clock).
    fn second(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_secs()
    }

    /// Whether `target` may take a request: healthy and not ejected. `now`
    /// is read from the clock only if the target was ever ejected.
    fn available(&self, target: &Target, now: &OnceCell<u64>) -> bool {
        let ejected_until = target.ejected_until_ms.load(Ordering::Relaxed);
        target.healthy()
            && (ejected_until == 0 || ejected_until <= *now.get_or_init(|| self.now_ms()))
    }

    /// How many targets of the current set may take a request now.
    pub fn available_targets(&self) -> usize {
        let now = OnceCell::new();
        self.targets()
            .iter()
            .filter(|t| self.available(t, &now))
            .count()
    }

    /// The hash key the balancer wants, if it hashes.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match &self.balancer {
            Balancer::ConsistentHash { key } => Some(key),
            _ => None,
        }
    }

    /// Picks an available target of `set`, avoiding those in `tried` while
    /// others remain. `hash` is the request's hash when the balancer hashes.
    pub fn pick(&self, set: &Targets, hash: Option<u64>, tried: &[usize]) -> Option<usize> {
        let now = OnceCell::new();
        let order = &set.order;
        let n = order.len();
        let usable = |i: usize| self.available(&set.list[i], &now) && !tried.contains(&i);
        let round_robin = || {
            // One target needs no turn taken (an atomic operation).
            let start = if n > 1 {
                self.next.fetch_add(1, Ordering::Relaxed)
            } else {
                0
            };
            (0..n).map(|k| order[(start + k) % n]).find(|&i| usable(i))
        };
        match (&self.balancer, hash) {
            (Balancer::ConsistentHash { .. }, Some(hash)) if !set.ring.is_empty() => {
                let ring = &set.ring;
                let start = ring.partition_point(|(point, _)| *point < hash);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1)
                    .find(|&i| usable(i))
            }
            (Balancer::LeastRequest, _) if set.list.len() > 1 => {
                let a = order[fastrand::usize(..n)];
                let mut b = order[fastrand::usize(..n)];
                if b == a {
                    b = (a + 1 + fastrand::usize(..set.list.len() - 1)) % set.list.len();
                }
                match (usable(a), usable(b)) {
                    (true, true) => Some(if set.list[b].in_flight() < set.list[a].in_flight() {
                        b
                    } else {
                        a
                    }),
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => round_robin(),
                }
            }
            _ if n == 0 => None,
            _ => round_robin(),
        }
    }

    /// Marks the start, `now`, of a request to target `index` of `set`;
    /// the guard ends it. (The caller's clock reading: it times the
    /// request from the same instant.)
    pub fn begin(&self, set: &Targets, index: usize, now: Instant) -> InFlight {
        let target = set.list[index].clone();
        let counted = matches!(self.balancer, Balancer::LeastRequest);
        if counted {
            target.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        self.retry_budget.request(self.second(now));
        InFlight {
            target,
            counted,
            conn: None,
        }
    }

    /// Sends `request` to target `index` of `set` and waits up to
    /// `timeout` for the response head. An answer comes with the guard that
    /// holds the target's in-flight count and the connection (reused once
    /// the body ends cleanly) and the latency, already recorded in the
    /// upstream's histogram. A failure is the caller's to count and record,
    /// since what it means (a client fault, an upstream fault) depends on
    /// the caller.
    pub async fn exchange(
        &self,
        set: &Targets,
        index: usize,
        request: http::Request<crate::body::UpstreamBody>,
        common: Option<&super::UpstreamFields>,
        timeout: std::time::Duration,
    ) -> Result<Exchanged, Failed> {
        let send = self.client.send(&set[index].endpoint, request, common);
        self.timed(set, index, timeout, |deadline| async move {
            tokio::time::timeout_at(deadline, send)
                .await
                .unwrap_or(Err(client::Error::Timeout))
        })
        .await
    }

    /// As [`Pool::exchange`], for a request with a complete (or no) body
    /// that the fast path sends from its borrowed `head`
    /// ([`Client::send_whole`]).
    pub async fn exchange_whole(
        &self,
        set: &Targets,
        index: usize,
        head: &super::h1::RequestHead<'_>,
        body: Option<&bytes::Bytes>,
        timeout: std::time::Duration,
    ) -> Result<Exchanged, Failed> {
        // The fast path keeps its timer in the connection.
        let endpoint = &set[index].endpoint;
        self.timed(set, index, timeout, |deadline| {
            self.client.send_whole(endpoint, head, body, Some(deadline))
        })
        .await
    }

    /// Runs `send` against target `index` of `set`, which is to answer by
    /// the deadline it is given (`timeout` from now): the target's
    /// in-flight count and the upstream's latency around it.
    async fn timed<F>(
        &self,
        set: &Targets,
        index: usize,
        timeout: std::time::Duration,
        send: impl FnOnce(Instant) -> F,
    ) -> Result<Exchanged, Failed>
    where
        F: Future<Output = Result<client::Answer, client::Error>>,
    {
        // Read afresh (not the poll's time): the latency leaves out the
        // stages' work before the send.
        let started = crate::clock::read();
        let mut in_flight = self.begin(set, index, started);
        match send(started + timeout).await {
            Ok((response, conn)) => {
                in_flight.keep(conn);
                let latency = crate::clock::read().saturating_duration_since(started);
                self.metrics.latency.record(latency);
                Ok((response, in_flight, latency))
            }
            Err(client::Error::Timeout) => Err(Failed::Timeout),
            Err(error) => Err(Failed::Send(error)),
        }
    }

    /// Whether the retry budget allows one more retry now.
    pub fn try_retry(&self) -> bool {
        let allowed = self
            .retry_budget
            .try_retry(self.second(crate::clock::now()));
        if allowed {
            self.metrics.retries.increment(1);
        } else {
            self.metrics.budget_exhausted.increment(1);
        }
        allowed
    }

    /// Records the outcome of an attempt on target `index` of `set` for
    /// passive outlier ejection.
    pub fn record(&self, set: &Targets, index: usize, success: bool) {
        let target = &set.list[index];
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
        let ejected = set
            .list
            .iter()
            .filter(|t| t.ejected_until_ms.load(Ordering::Relaxed) > now)
            .count();
        let max = set.list.len() * usize::from(outlier.max_ejection_percent) / 100;
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

    /// Whether `target` is ejected right now.
    pub fn ejected(&self, target: &Target) -> bool {
        target.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }
}

/// The socket addresses of a target set, in order.
pub fn addresses(set: &Targets) -> Vec<SocketAddr> {
    set.iter().map(|t| t.endpoint.addr()).collect()
}

/// Most slots a weighted round-robin sequence has.
const MAX_SLOTS: u64 = 1024;

/// The round-robin sequence for `weights`: each index as often as its
/// weight (reduced by their common divisor, scaled down to at most
/// [`MAX_SLOTS`]), interleaved smoothly (nginx's smooth weighted round
/// robin), so that 3:1 gives `0 0 1 0`, not `0 0 0 1`.
fn schedule(weights: &[u32]) -> Vec<usize> {
    if weights.windows(2).all(|w| w[0] == w[1]) {
        return (0..weights.len()).collect();
    }
    let divisor = weights
        .iter()
        .fold(0u64, |g, &w| gcd(g, u64::from(w.max(1))));
    let mut weights: Vec<u64> = weights
        .iter()
        .map(|&w| u64::from(w.max(1)) / divisor.max(1))
        .collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_SLOTS {
        for w in &mut weights {
            *w = (*w * MAX_SLOTS / total).max(1);
        }
    }
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += *w as i64;
        }
        let best = (0..current.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        current[best] -= total;
        order.push(best);
    }
    order
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Ends an in-flight request when dropped, closing the connection it
/// holds unless [`InFlight::release`] gave it back first.
pub struct InFlight {
    target: Arc<Target>,
    /// Counted in the target's `in_flight` (least request).
    counted: bool,
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
            self.target.client.release(&self.target.endpoint, conn);
        }
    }

    /// The response failed: the connection is closed, never reused.
    pub fn discard(&mut self) {
        self.conn = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.counted {
            self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
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

const POINTS_PER_TARGET: u64 = 160;

/// The hash ring: 160 points per target of the highest weight, fewer (at
/// least one) in proportion for lighter ones.
fn ring(targets: &[Arc<Target>]) -> Vec<(u64, usize)> {
    let heaviest = u64::from(targets.iter().map(|t| t.weight.max(1)).max().unwrap_or(1));
    let mut ring = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        let points = (POINTS_PER_TARGET * u64::from(target.weight.max(1)) / heaviest).max(1);
        for point in 0..points {
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
            None,
        )
    }

    #[tokio::test]
    async fn round_robin_cycles_and_skips_unavailable_targets() {
        let pool = pool("{ targets: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"] }");
        let picks: Vec<usize> = (0..6)
            .map(|_| pool.pick(&pool.targets(), None, &[]).unwrap())
            .collect();
        for i in 0..3 {
            assert_eq!(picks.iter().filter(|&&p| p == i).count(), 2, "{picks:?}");
        }
        pool.targets()[1].set_healthy(false);
        assert!((0..10).all(|_| pool.pick(&pool.targets(), None, &[]) != Some(1)));
        assert_eq!(
            pool.pick(&pool.targets(), None, &[0, 2]),
            None,
            "every healthy target was tried"
        );
        pool.targets()[0].set_healthy(false);
        pool.targets()[2].set_healthy(false);
        assert_eq!(pool.pick(&pool.targets(), None, &[]), None);
        let _in_flight = pool.begin(&pool.targets(), 0, Instant::now());
        assert_eq!(
            pool.targets()[0].in_flight(),
            0,
            "only least request counts"
        );
    }

    #[tokio::test]
    async fn one_target_is_picked_while_it_is_available() {
        let pool = pool("{ targets: [\"127.0.0.1:1\"] }");
        assert!((0..3).all(|_| pool.pick(&pool.targets(), None, &[]) == Some(0)));
        assert_eq!(pool.pick(&pool.targets(), None, &[0]), None, "tried");
        pool.targets()[0].set_healthy(false);
        assert_eq!(pool.pick(&pool.targets(), None, &[]), None);
    }

    #[tokio::test]
    async fn least_request_prefers_the_idle_target() {
        let pool = pool("{ targets: [\"127.0.0.1:1\", \"127.0.0.1:2\"], balance: least_request }");
        let _busy: Vec<InFlight> = (0..5)
            .map(|_| pool.begin(&pool.targets(), 0, Instant::now()))
            .collect();
        assert!((0..50).all(|_| pool.pick(&pool.targets(), None, &[]) == Some(1)));
    }

    #[tokio::test]
    async fn consistent_hash_is_stable_and_spreads() {
        let pool = pool(
            "{ targets: [\"10.0.0.1:80\", \"10.0.0.2:80\", \"10.0.0.3:80\"], balance: { consistent_hash: client_ip } }",
        );
        let mut counts = [0usize; 3];
        for user in 0..3000u32 {
            let key = hash(format!("user-{user}").as_bytes());
            let first = pool.pick(&pool.targets(), Some(key), &[]).unwrap();
            assert_eq!(pool.pick(&pool.targets(), Some(key), &[]), Some(first));
            counts[first] += 1;
        }
        for count in counts {
            assert!((600..1400).contains(&count), "{counts:?}");
        }
        // Taking a target out moves only its keys.
        let before: Vec<usize> = (0..300u32)
            .map(|u| {
                pool.pick(&pool.targets(), Some(hash(&u.to_be_bytes())), &[])
                    .unwrap()
            })
            .collect();
        pool.targets()[0].set_healthy(false);
        for (u, old) in (0..300u32).zip(before) {
            let new = pool
                .pick(&pool.targets(), Some(hash(&u.to_be_bytes())), &[])
                .unwrap();
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
        pool.record(&pool.targets(), 0, false);
        pool.record(&pool.targets(), 0, false);
        pool.record(&pool.targets(), 0, true);
        pool.record(&pool.targets(), 0, false);
        pool.record(&pool.targets(), 0, false);
        assert!(
            !pool.ejected(&pool.targets()[0]),
            "a success resets the count"
        );
        pool.record(&pool.targets(), 0, false);
        assert!(pool.ejected(&pool.targets()[0]));
        for _ in 0..3 {
            pool.record(&pool.targets(), 1, false);
        }
        assert!(
            !pool.ejected(&pool.targets()[1]),
            "at most 50% of the targets are ejected"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!pool.ejected(&pool.targets()[0]), "ejection ends");
        for _ in 0..3 {
            pool.record(&pool.targets(), 0, false);
        }
        assert!(pool.ejected(&pool.targets()[0]));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(
            pool.ejected(&pool.targets()[0]),
            "a second ejection lasts twice as long"
        );
    }

    #[test]
    fn weighted_schedule_interleaves_in_proportion() {
        assert_eq!(schedule(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(schedule(&[]), Vec::<usize>::new());
        let order = schedule(&[30, 10]);
        assert_eq!(
            order,
            vec![0, 0, 1, 0],
            "reduced by the common divisor, interleaved"
        );
        let order = schedule(&[5000, 1]);
        assert!(order.len() <= MAX_SLOTS as usize + 1, "{}", order.len());
        assert_eq!(order.iter().filter(|&&i| i == 1).count(), 1);
    }

    fn resolved(addr: &str, weight: u32) -> Resolved {
        Resolved {
            addr: addr.parse().unwrap(),
            authority: "svc.test:80".parse().unwrap(),
            weight,
        }
    }

    #[tokio::test]
    async fn a_new_target_set_keeps_the_state_of_targets_that_remain() {
        let pool = pool("{ targets: [\"127.0.0.1:1\", \"svc.test:80\"], balance: least_request }");
        assert_eq!(
            addresses(&pool.targets()),
            vec!["127.0.0.1:1".parse().unwrap()]
        );
        pool.set_resolved(
            1,
            vec![resolved("10.0.0.1:80", 1), resolved("10.0.0.2:80", 1)],
        );
        let before = pool.targets();
        assert_eq!(before.len(), 3);
        assert_eq!(&*before[1].address, "10.0.0.1:80");
        assert_eq!(
            before[1].authority.as_str(),
            "svc.test:80",
            "Host stays the name"
        );
        before[2].set_healthy(false);
        pool.set_resolved(
            1,
            vec![resolved("10.0.0.2:80", 1), resolved("10.0.0.3:80", 1)],
        );
        let after = pool.targets();
        assert_eq!(
            addresses(&after),
            ["127.0.0.1:1", "10.0.0.2:80", "10.0.0.3:80"].map(|a| a.parse().unwrap())
        );
        assert!(Arc::ptr_eq(&before[0], &after[0]));
        assert!(Arc::ptr_eq(&before[2], &after[1]), "10.0.0.2 carried over");
        assert!(!after[1].healthy(), "with its health");
        assert!(after[2].healthy(), "a new target starts healthy");
        // A request that loaded the old set still uses it consistently.
        let guard = pool.begin(&before, 1, Instant::now());
        assert_eq!(before[1].in_flight(), 1);
        drop(guard);
        assert_eq!(before[1].in_flight(), 0);
    }

    #[tokio::test]
    async fn a_replacement_pool_keeps_the_previous_resolution() {
        let old = pool("{ targets: [\"svc.test:80\"] }");
        assert!(
            old.targets().is_empty(),
            "a name has no target before it resolves"
        );
        assert_eq!(old.pick(&old.targets(), None, &[]), None);
        old.set_resolved(0, vec![resolved("10.0.0.1:80", 1)]);
        let doc = "upstreams:\n  u: { targets: [\"svc.test:80\", \"127.0.0.1:2\"] }\n";
        let upstream = model::GatewayConfig::parse(doc).expect("valid").upstreams["u"].clone();
        let new = Pool::new(
            "u",
            &upstream,
            &Metrics::new(),
            &TaskTracker::new(),
            &CancellationToken::new(),
            Some(&old),
        );
        assert_eq!(
            addresses(&new.targets()),
            ["10.0.0.1:80", "127.0.0.1:2"].map(|a| a.parse().unwrap())
        );
    }

    #[tokio::test]
    async fn srv_weights_shape_round_robin() {
        let pool = pool("{ targets: [\"srv:_http._tcp.svc.test\"] }");
        pool.set_resolved(
            0,
            vec![resolved("10.0.0.1:80", 3), resolved("10.0.0.2:80", 1)],
        );
        let set = pool.targets();
        let picks: Vec<usize> = (0..400)
            .map(|_| pool.pick(&set, None, &[]).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 300);
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
        let _guards: Vec<InFlight> = (0..50)
            .map(|_| pool.begin(&pool.targets(), 0, Instant::now()))
            .collect();
        let allowed = (0..10).filter(|_| pool.try_retry()).count();
        assert_eq!(allowed, 5, "10% of 50 requests");
    }
}
