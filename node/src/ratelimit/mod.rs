//! The rate-limiting engine: five algorithms behind one clock, per-key
//! state with a hard cap, and the registry that keeps counts across
//! configuration reloads.
//!
//! - [`token_bucket`]: `rate` + `burst` (GCRA, 8 bytes per key);
//! - [`sliding_log`]: exact, one timestamp per admitted request;
//! - [`sliding_counter`]: `previous × overlap + current`, 16 bytes per key;
//! - [`fixed_window`]: calendar-aligned windows (second … month), 16 bytes;
//! - [`leaky_bucket`]: a bounded queue drained at a fixed rate.
//!
//! Every algorithm is a pure function of its state and the time it is
//! given ([`clock`]); a [`Store`] holds the state per key; the [`Registry`]
//! hands each configured limit its store, keeping the same store while a
//! reload leaves the limit's identity and parameters unchanged. The
//! `limit` pipeline stage (`pipeline::limit`) builds keys from requests,
//! checks every limit that applies, and writes the headers.

pub mod clock;
pub mod fixed_window;
pub mod global;
pub mod leaky_bucket;
pub mod redis;
pub mod sliding_counter;
pub mod sliding_log;
mod store;
pub mod sync;
pub mod token_bucket;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use raft::model::NodeId;
use raft::model::limit::{self as model, Algorithm as Kind, Period, Scope};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::clock::{Clock, Nanos};
use self::fixed_window::{FixedWindow, Window};
use self::global::Global;
use self::leaky_bucket::{Admission, LeakyBucket};
use self::sliding_counter::SlidingCounter;
use self::sliding_log::SlidingLog;
pub use self::store::{SHARDS, Stats, Store};
use self::token_bucket::TokenBucket;
use crate::metrics::Metrics;

/// An algorithm's per-key state and when it can be forgotten.
pub trait Algorithm: Send + Sync + 'static {
    /// What is kept per key.
    type State: Send + 'static;
    /// The state of a key never seen.
    fn fresh(&self) -> Self::State;
    /// Whether `state` decides like a fresh one from `now` on (it can be
    /// dropped without changing any decision).
    fn is_idle(&self, state: &Self::State, now: Nanos) -> bool;
}

/// An algorithm that answers at once: the four counting ones.
pub trait Counting: Algorithm {
    /// Decides on one request at `now`, charging it when admitted.
    fn acquire(&self, state: &mut Self::State, now: Nanos) -> Decision;
    /// Takes back the charge of an admitted request (another limit refused it).
    fn refund(&self, state: &mut Self::State, charged: Nanos);
    /// What the `RateLimit-Policy` header announces.
    fn policy(&self) -> Policy;
}

/// One limit's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is admitted (and was charged).
    pub allowed: bool,
    /// Requests admitted from now on before this limit refuses.
    pub remaining: u64,
    /// Nanoseconds until the allowance is whole again (window end, bucket full).
    pub reset: Nanos,
    /// When refused: nanoseconds until a request would be admitted.
    pub retry_after: Nanos,
    /// The time the request was counted at (for a refund).
    pub charged: Nanos,
}

/// A limit's quota (`q`) over a window (`w`), as `RateLimit-Policy` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Requests.
    pub quota: u64,
    /// Nanoseconds.
    pub window: Nanos,
}

// === spec ===

/// A limit's algorithm with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// See [`token_bucket`].
    TokenBucket(TokenBucket),
    /// See [`sliding_log`].
    SlidingLog(SlidingLog),
    /// See [`sliding_counter`].
    SlidingCounter(SlidingCounter),
    /// See [`fixed_window`].
    FixedWindow(FixedWindow),
    /// See [`leaky_bucket`].
    LeakyBucket(LeakyBucket),
}

fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Spec {
    /// The parameters of a validated limit (`None` if it is not valid).
    pub fn compile(limit: &model::Limit) -> Option<Self> {
        let window = || match limit.per? {
            Period::Fixed(d) => Some(nanos(d)),
            Period::Month => None,
        };
        Some(match limit.algorithm {
            Kind::TokenBucket => {
                let rate = limit.rate?;
                Spec::TokenBucket(TokenBucket::new(
                    nanos(rate.interval()),
                    limit.burst.unwrap_or(rate.count),
                ))
            }
            Kind::SlidingWindowLog => Spec::SlidingLog(SlidingLog::new(limit.limit?, window()?)),
            Kind::SlidingWindowCounter => {
                Spec::SlidingCounter(SlidingCounter::new(limit.limit?, window()?))
            }
            Kind::FixedWindow => Spec::FixedWindow(FixedWindow::new(
                limit.limit?,
                match limit.per? {
                    Period::Fixed(d) => Window::Fixed(nanos(d)),
                    Period::Month => Window::Month,
                },
            )),
            Kind::LeakyBucket => {
                let interval = nanos(limit.rate?.interval()).max(1);
                let depth = limit.queue?;
                Spec::LeakyBucket(LeakyBucket {
                    interval,
                    depth,
                    max_wait: limit
                        .max_wait
                        .map_or(interval.saturating_mul(u64::from(depth)), nanos),
                })
            }
        })
    }
}

// === limiter ===

/// One limit's algorithm and per-key state.
pub enum Limiter {
    /// See [`token_bucket`].
    TokenBucket(Store<TokenBucket>),
    /// See [`sliding_log`].
    SlidingLog(Store<SlidingLog>),
    /// See [`sliding_counter`].
    SlidingCounter(Store<SlidingCounter>),
    /// See [`fixed_window`].
    FixedWindow(Store<FixedWindow>),
    /// See [`leaky_bucket`].
    LeakyBucket(Store<LeakyBucket>, leaky_bucket::Runtime),
    /// Counts on every node, shared over the peer plane (`scope: global`),
    /// see [`global`].
    Global(Store<Global>),
    /// Counts in Redis (`scope: redis`), see [`redis`].
    Redis(Box<redis::RedisLimit>),
}

/// What [`Limiter::check`] found.
pub enum Check {
    /// A counting algorithm decided.
    Decided(Decision),
    /// The leaky bucket admitted, queued or refused.
    Leaky(Admission),
    /// Redis could not be asked; the local emergency limiter decided.
    Fallback(Decision),
}

/// Runs `$body` with `$store` bound to the store of `$limiter`'s local
/// limiter, whatever its algorithm.
macro_rules! on_local_store {
    ($limiter:expr, $store:ident => $body:expr) => {
        match $limiter.local() {
            Limiter::TokenBucket($store) => $body,
            Limiter::SlidingLog($store) => $body,
            Limiter::SlidingCounter($store) => $body,
            Limiter::FixedWindow($store) => $body,
            Limiter::LeakyBucket($store, _) => $body,
            Limiter::Global($store) => $body,
            Limiter::Redis(_) => unreachable!("local() never returns a redis limiter"),
        }
    };
}

impl Limiter {
    /// A local limiter for `spec` with room for `max_keys` keys.
    pub fn new(spec: Spec, max_keys: usize, runtime: leaky_bucket::Runtime) -> Self {
        match spec {
            Spec::TokenBucket(a) => Limiter::TokenBucket(Store::new(a, max_keys)),
            Spec::SlidingLog(a) => Limiter::SlidingLog(Store::new(a, max_keys)),
            Spec::SlidingCounter(a) => Limiter::SlidingCounter(Store::new(a, max_keys)),
            Spec::FixedWindow(a) => Limiter::FixedWindow(Store::new(a, max_keys)),
            Spec::LeakyBucket(a) => Limiter::LeakyBucket(Store::new(a, max_keys), runtime),
        }
    }

    /// The limiter that decides on this node: itself, or for a `redis`
    /// limit its local emergency limiter.
    fn local(&self) -> &Limiter {
        match self {
            Limiter::Redis(redis) => redis.emergency().local(),
            local => local,
        }
    }

    /// Checks one request under `key` at `now` on this node (a `redis`
    /// limit: with its emergency limiter).
    #[inline]
    pub fn check(&self, key: &[u8], now: Nanos) -> Check {
        match self.local() {
            Limiter::TokenBucket(store) => Check::Decided(store.acquire(key, now)),
            Limiter::SlidingLog(store) => Check::Decided(store.acquire(key, now)),
            Limiter::SlidingCounter(store) => Check::Decided(store.acquire(key, now)),
            Limiter::FixedWindow(store) => Check::Decided(store.acquire(key, now)),
            Limiter::Global(store) => Check::Decided(store.acquire(key, now)),
            Limiter::LeakyBucket(store, runtime) => {
                let queue = store.with(key, now, |_, queue| queue.clone());
                Check::Leaky(store.algorithm().admit(&queue, now, runtime))
            }
            Limiter::Redis(_) => unreachable!("local() never returns a redis limiter"),
        }
    }

    /// Decides on one request: in Redis for a `redis` limit, else as
    /// [`check`](Self::check). `Err` when Redis cannot be asked and the
    /// limit fails closed.
    pub async fn decide(&self, key: &[u8], now: Nanos) -> Result<Check, redis::Error> {
        match self {
            Limiter::Redis(redis) => redis.decide(key, now).await,
            local => Ok(local.check(key, now)),
        }
    }

    /// Takes back the charge of a request [`decide`](Self::decide) admitted
    /// (`fallback`: the emergency limiter decided).
    pub async fn refund(&self, key: &[u8], decision: &Decision, fallback: bool) {
        match self {
            Limiter::Redis(redis) if !fallback => redis.refund(key, decision).await,
            limiter => match limiter.local() {
                Limiter::TokenBucket(store) => store.refund(key, decision.charged),
                Limiter::SlidingLog(store) => store.refund(key, decision.charged),
                Limiter::SlidingCounter(store) => store.refund(key, decision.charged),
                Limiter::FixedWindow(store) => store.refund(key, decision.charged),
                Limiter::Global(store) => store.refund(key, decision.charged),
                Limiter::LeakyBucket(..) | Limiter::Redis(_) => {}
            },
        }
    }

    /// What `RateLimit-Policy` announces for this limit.
    pub fn policy(&self) -> Policy {
        on_local_store!(self, store => store.algorithm().policy())
    }

    /// Counts of what the local store did.
    pub fn stats(&self) -> &Stats {
        on_local_store!(self, store => store.stats())
    }

    /// Forgets idle keys.
    pub fn sweep(&self, now: Nanos) -> u64 {
        on_local_store!(self, store => store.sweep(now))
    }
}

// === settings ===

/// `[ratelimit]` in node.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Keys each limit tracks at most.
    pub max_keys: usize,
    /// How often idle keys are removed and the key gauges refreshed.
    pub sweep_interval: Duration,
    /// The Redis of `scope: redis` limits.
    pub redis: Option<redis::Settings>,
    /// How `scope: global` counters are shared.
    pub global: sync::Settings,
}

/// The serde shape of `[ratelimit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawSettings {
    /// `max-keys`.
    pub max_keys: usize,
    /// `sweep-interval`.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// `[ratelimit.redis]`.
    pub redis: Option<RawRedis>,
    /// `[ratelimit.global]`.
    pub global: sync::Settings,
}

impl Default for RawSettings {
    fn default() -> Self {
        Self {
            max_keys: 1_000_000,
            sweep_interval: Duration::from_secs(10),
            redis: None,
            global: sync::Settings::default(),
        }
    }
}

/// The serde shape of `[ratelimit.redis]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawRedis {
    /// `url`.
    pub url: String,
    /// `connections`.
    pub connections: usize,
    /// `timeout`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// `on-failure`: `open` or `closed`.
    pub on_failure: String,
}

impl Default for RawRedis {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            connections: 4,
            timeout: Duration::from_millis(50),
            on_failure: "open".into(),
        }
    }
}

impl RawSettings {
    /// Checks the section, reporting each broken rule through `fail(key, value, rule)`.
    pub fn validate(self, fail: &mut dyn FnMut(&str, &dyn std::fmt::Display, &str)) -> Settings {
        if !(SHARDS * 2..=100_000_000).contains(&self.max_keys) {
            fail(
                "ratelimit.max-keys",
                &self.max_keys,
                &format!("must be between {} and 100000000", SHARDS * 2),
            );
        }
        if self.sweep_interval < Duration::from_millis(10) {
            fail(
                "ratelimit.sweep-interval",
                &humantime::format_duration(self.sweep_interval),
                "must be at least 10ms",
            );
        }
        self.global.validate(fail);
        let redis = self.redis.map(|r| {
            if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://"))
                || ::redis::Client::open(r.url.as_str()).is_err()
            {
                fail(
                    "ratelimit.redis.url",
                    &r.url,
                    "must be a redis:// or rediss:// URL",
                );
            }
            if !(1..=64).contains(&r.connections) {
                fail(
                    "ratelimit.redis.connections",
                    &r.connections,
                    "must be between 1 and 64",
                );
            }
            if r.timeout.is_zero() || r.timeout > Duration::from_secs(5) {
                fail(
                    "ratelimit.redis.timeout",
                    &humantime::format_duration(r.timeout),
                    "must be greater than zero and at most 5s",
                );
            }
            let on_failure = match r.on_failure.as_str() {
                "open" => redis::OnFailure::Open,
                "closed" => redis::OnFailure::Closed,
                other => {
                    fail(
                        "ratelimit.redis.on-failure",
                        &other,
                        "must be open (decide locally) or closed (503)",
                    );
                    redis::OnFailure::Open
                }
            };
            redis::Settings {
                url: r.url,
                connections: r.connections,
                timeout: r.timeout,
                on_failure,
            }
        });
        Settings {
            max_keys: self.max_keys,
            sweep_interval: self.sweep_interval,
            redis,
            global: self.global,
        }
    }
}

// === registry ===

struct Registered {
    spec: Spec,
    scope: Scope,
    limiter: Weak<Limiter>,
    keys: metrics::Gauge,
    evicted_capacity: metrics::Counter,
    evicted_idle: metrics::Counter,
}

/// The limiters of the node, by limit identity; kept across reloads.
pub struct Registry {
    settings: Settings,
    runtime: leaky_bucket::Runtime,
    redis: Arc<redis::Pool>,
    metrics: Arc<Metrics>,
    limiters: Mutex<HashMap<String, Registered>>,
    /// The peers of `scope: global` limits.
    peers: Arc<global::Peers>,
    /// Test and chaos seam: share of counter batches not sent.
    loss: sync::Loss,
    /// The global limits' overshoot bounds, as last computed.
    bounds: Mutex<Vec<sync::Bound>>,
}

impl Registry {
    /// An empty registry.
    pub fn new(
        settings: &Settings,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let clock = Clock::system();
        Arc::new(Self {
            settings: settings.clone(),
            redis: redis::Pool::new(settings.redis.as_ref(), clock),
            runtime: leaky_bucket::Runtime {
                clock,
                tasks,
                shutdown,
            },
            metrics,
            limiters: Mutex::new(HashMap::new()),
            peers: Arc::default(),
            loss: sync::Loss::default(),
            bounds: Mutex::new(Vec::new()),
        })
    }

    /// The clock every limit reads.
    pub fn clock(&self) -> &Clock {
        &self.runtime.clock
    }

    /// The limiter of the limit named `id` (`plan:gold/burst`,
    /// `route:users/0`): the existing one while its parameters are
    /// unchanged, else a new one.
    pub fn limiter(&self, id: &str, spec: Spec, scope: Scope) -> Arc<Limiter> {
        let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(registered) = limiters.get(id)
            && registered.spec == spec
            && registered.scope == scope
            && let Some(limiter) = registered.limiter.upgrade()
        {
            return limiter;
        }
        let local = Limiter::new(spec, self.settings.max_keys, self.runtime.clone());
        let limiter = Arc::new(match scope {
            Scope::Local => local,
            Scope::Global => match Global::new(spec, self.peers.clone()) {
                Some(global) => Limiter::Global(Store::new(global, self.settings.max_keys)),
                None => local,
            },
            Scope::Redis => {
                if self.settings.redis.is_none() {
                    tracing::warn!(
                        limit = id,
                        "scope: redis, but this node has no [ratelimit.redis]: the limit decides locally"
                    );
                }
                Limiter::Redis(Box::new(redis::RedisLimit::new(
                    id,
                    spec,
                    self.redis.clone(),
                    local,
                    self.metrics.counter(
                        "meridian_ratelimit_redis_failures_total",
                        &[("limit", id.to_owned())],
                    ),
                )))
            }
        });
        let limit = || ("limit", id.to_owned());
        let evictions = |reason: &str| {
            self.metrics.counter(
                "meridian_ratelimit_evictions_total",
                &[limit(), ("reason", reason.to_owned())],
            )
        };
        limiters.insert(
            id.to_owned(),
            Registered {
                spec,
                scope,
                limiter: Arc::downgrade(&limiter),
                keys: self.metrics.gauge("meridian_ratelimit_keys", &[limit()]),
                evicted_capacity: evictions("capacity"),
                evicted_idle: evictions("idle"),
            },
        );
        limiter
    }

    /// Removes idle keys of every live limiter, forgets dropped limiters and
    /// refreshes the key and eviction series.
    pub fn sweep(&self) {
        let now = self.runtime.clock.now();
        let live: Vec<(
            Arc<Limiter>,
            metrics::Gauge,
            metrics::Counter,
            metrics::Counter,
        )> = {
            let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
            limiters.retain(|_, r| r.limiter.strong_count() > 0);
            limiters
                .values()
                .filter_map(|r| {
                    Some((
                        r.limiter.upgrade()?,
                        r.keys.clone(),
                        r.evicted_capacity.clone(),
                        r.evicted_idle.clone(),
                    ))
                })
                .collect()
        };
        for (limiter, keys, capacity, idle) in live {
            limiter.sweep(now);
            let stats = limiter.stats();
            keys.set(stats.keys.load(Ordering::Relaxed) as f64);
            capacity.absolute(stats.evicted_capacity.load(Ordering::Relaxed));
            idle.absolute(stats.evicted_idle.load(Ordering::Relaxed));
        }
    }

    /// Sweeps every `sweep-interval` until shutdown.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let registry = self.clone();
        let every = self.settings.sweep_interval;
        let shutdown = self.runtime.shutdown.clone();
        self.runtime.tasks.spawn(
            async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => registry.sweep(),
                        () = shutdown.cancelled() => return,
                    }
                }
            }
            .instrument(tracing::info_span!("ratelimit-sweeper")),
        );
    }

    /// Where leaky-bucket releasers run.
    pub fn runtime(&self) -> &leaky_bucket::Runtime {
        &self.runtime
    }

    // --- scope: global ---

    /// The live global limits, by identity.
    fn globals(&self) -> Vec<(String, Arc<Limiter>)> {
        let limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        let mut globals: Vec<(String, Arc<Limiter>)> = limiters
            .iter()
            .filter(|(_, r)| r.scope == Scope::Global)
            .filter_map(|(id, r)| Some((id.clone(), r.limiter.upgrade()?)))
            .filter(|(_, l)| matches!(**l, Limiter::Global(_)))
            .collect();
        globals.sort_by(|a, b| a.0.cmp(&b.0));
        globals
    }

    /// The global limits' counters that changed since the last call (all
    /// that still count, when `full`).
    pub fn collect(&self, full: bool, now: Nanos) -> sync::Batch {
        let mut batch = sync::Batch::default();
        for (id, limiter) in self.globals() {
            let Limiter::Global(store) = &*limiter else {
                continue;
            };
            let mut entries = Vec::new();
            store.scan(|key, counts| {
                if let Some(entry) = store.algorithm().collect(key, counts, full, now) {
                    entries.push(entry);
                }
            });
            if !entries.is_empty() {
                batch.limits.push(sync::LimitCounts { limit: id, entries });
            }
        }
        batch
    }

    /// Merges the counters `peer` sent. Counters of limits this node does
    /// not have (a configuration still being applied) are skipped.
    pub fn merge(&self, peer: NodeId, batch: &sync::Batch) {
        let now = self.runtime.clock.now();
        let Some(slot) = self.peers.slot(peer, now) else {
            tracing::warn!(
                peer,
                "more peers than global limits track: counters ignored"
            );
            return;
        };
        self.peers.heard(slot, now);
        let peer_label = [("peer", peer.to_string())];
        self.metrics
            .counter("meridian_ratelimit_counters_received_total", &peer_label)
            .increment(batch.entries() as u64);
        let limiters: HashMap<String, Arc<Limiter>> = self.globals().into_iter().collect();
        for counts in &batch.limits {
            let Some(limiter) = limiters.get(&counts.limit) else {
                continue;
            };
            let Limiter::Global(store) = &**limiter else {
                continue;
            };
            for entry in &counts.entries {
                store.with(&entry.key, now, |global, state| {
                    global.merge(state, slot, entry, now)
                });
            }
        }
    }

    /// Requests admitted by every node so far, per global limit (for the
    /// rates behind the bound).
    fn totals(&self) -> HashMap<String, u64> {
        self.globals()
            .into_iter()
            .filter_map(|(id, limiter)| match &*limiter {
                Limiter::Global(store) => {
                    let global = store.algorithm();
                    Some((
                        id,
                        global.admitted.load(Ordering::Relaxed)
                            + global.learned.load(Ordering::Relaxed),
                    ))
                }
                _ => None,
            })
            .collect()
    }

    /// Recomputes each global limit's overshoot bound from the admissions
    /// between `before` and `after` (`seconds` apart) and the delay.
    fn update_bounds(
        &self,
        before: &HashMap<String, u64>,
        after: &HashMap<String, u64>,
        seconds: f64,
        delay: f64,
        unreachable: u32,
    ) {
        let mut bounds: Vec<sync::Bound> = after
            .iter()
            .map(|(limit, total)| {
                let rate = total.saturating_sub(before.get(limit).copied().unwrap_or(*total))
                    as f64
                    / seconds.max(1e-3);
                sync::Bound {
                    limit: limit.clone(),
                    rate,
                    delay,
                    bound: rate * delay,
                    unreachable,
                }
            })
            .collect();
        bounds.sort_by(|a, b| a.limit.cmp(&b.limit));
        for (id, limiter) in self.globals() {
            if let Limiter::Global(store) = &*limiter {
                self.metrics
                    .counter(
                        "meridian_ratelimit_partition_decisions_total",
                        &[("limit", id.clone())],
                    )
                    .absolute(store.algorithm().partitioned.load(Ordering::Relaxed));
            }
        }
        for bound in &bounds {
            self.metrics
                .gauge(
                    "meridian_ratelimit_global_bound",
                    &[("limit", bound.limit.clone())],
                )
                .set(bound.bound);
        }
        *self.bounds.lock().unwrap_or_else(|p| p.into_inner()) = bounds;
    }

    /// What this node knows of a global limit's counts in the current
    /// window, over every node, per key (`None`: no such global limit).
    pub fn global_counts(&self, limit: &str) -> Option<Vec<(Vec<u8>, u64)>> {
        let limiter = self.globals().into_iter().find(|(id, _)| id == limit)?.1;
        let Limiter::Global(store) = &*limiter else {
            return None;
        };
        let now = self.runtime.clock.now();
        let mut counts = Vec::new();
        store.scan(|key, state| counts.push((key.to_vec(), store.algorithm().count(state, now))));
        counts.sort();
        Some(counts)
    }

    /// The global limits' overshoot bounds, as last computed.
    pub fn bounds(&self) -> Vec<sync::Bound> {
        self.bounds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Test and chaos seam: drops `share` (0 to 1) of the counter batches
    /// this node sends.
    pub fn set_counter_loss(&self, share: f64) {
        self.loss.set(share);
    }
}
