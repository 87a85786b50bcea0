//! `scope: redis`: counts kept in one Redis, for exact counts across every
//! node. Each decision is one atomic Lua script (`EVALSHA`, loaded on first
//! use) on one of a few multiplexed connections, within `timeout`.
//!
//! - token bucket: GCRA on Redis's own clock (`TIME`), microseconds, one
//!   key per limit key holding the theoretical arrival time;
//! - sliding window counter: one counter per window, on Redis's clock;
//! - fixed window: one counter per calendar window; the window is located
//!   by the node's clock (so calendar months work), the counter expires
//!   after its window.
//!
//! When Redis cannot be asked (refused, timed out), the limit follows
//! `on-failure`: `open` decides with a local emergency limiter of the same
//! parameters (each node then admits up to the limit on its own), `closed`
//! answers 503. After a failure the node stops asking Redis for one second,
//! so an outage costs one timeout per second, not one per request.
//! Every fallback is counted in `meridian_ratelimit_redis_failures_total`.
//!
//! Keys are `meridian:<limit id>:<key bytes>[:<window>]`; one Redis (not a
//! Redis Cluster) holds them all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tokio::sync::OnceCell;

use super::clock::{Clock, Nanos, SECOND};
use super::{Check, Decision, Limiter, Spec};

/// `[ratelimit.redis]` in node.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `redis://host:port/db` (or `rediss://`).
    pub url: String,
    /// Multiplexed connections to keep.
    pub connections: usize,
    /// The longest one decision may wait for Redis.
    pub timeout: Duration,
    /// What a limit does when Redis cannot be asked.
    pub on_failure: OnFailure,
}

/// What a `redis` limit does when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Decide locally with the limit's parameters (per node).
    Open,
    /// Refuse with 503.
    Closed,
}

/// Connections to the Redis of `[ratelimit.redis]`.
pub struct Pool {
    client: Option<Client>,
    connections: Vec<OnceCell<ConnectionManager>>,
    next: AtomicUsize,
    timeout: Duration,
    on_failure: OnFailure,
    clock: Clock,
    /// Redis is not asked before this time (after a failure).
    down_until: AtomicU64,
}

/// Why a decision could not be made in Redis.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `[ratelimit.redis]` on this node.
    #[error("no [ratelimit.redis] is configured on this node")]
    NotConfigured,
    /// Redis failed recently; not asked again yet.
    #[error("redis failed recently")]
    Down,
    /// Redis did not answer within the timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis or the connection refused.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl Pool {
    /// A pool for `settings` (`None`: this node has no Redis; `redis`
    /// limits then always take their failure mode).
    pub fn new(settings: Option<&Settings>, clock: Clock) -> Arc<Self> {
        let client = settings.and_then(|s| match Client::open(s.url.as_str()) {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::error!(%error, "ratelimit.redis.url cannot be used");
                None
            }
        });
        let connections = settings.map_or(1, |s| s.connections.max(1));
        Arc::new(Self {
            client,
            connections: (0..connections).map(|_| OnceCell::new()).collect(),
            next: AtomicUsize::new(0),
            timeout: settings.map_or(Duration::from_millis(50), |s| s.timeout),
            on_failure: settings.map_or(OnFailure::Open, |s| s.on_failure),
            clock,
            down_until: AtomicU64::new(0),
        })
    }

    /// What limits do when Redis cannot be asked.
    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    async fn connection(&self) -> Result<ConnectionManager, Error> {
        let client = self.client.as_ref().ok_or(Error::NotConfigured)?;
        let slot =
            &self.connections[self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len()];
        let connection = slot
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_with_config(client.clone(), config).await
            })
            .await?;
        Ok(connection.clone())
    }

    /// Runs `invocation` within the timeout, noting failures.
    async fn run(&self, script: &Script, keys: &[&[u8]], args: &[i64]) -> Result<Vec<i64>, Error> {
        if self.clock.now() < self.down_until.load(Ordering::Relaxed) {
            return Err(Error::Down);
        }
        let attempt = async {
            let mut connection = self.connection().await?;
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(*key);
            }
            for arg in args {
                invocation.arg(*arg);
            }
            Ok::<_, Error>(invocation.invoke_async(&mut connection).await?)
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(self.timeout)),
        };
        if result.is_err() {
            self.down_until
                .store(self.clock.now() + SECOND, Ordering::Relaxed);
        }
        result
    }
}

const TOKEN_BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local ahead = tat + interval - now
if ahead > capacity then
  return {0, 0, ahead - capacity, tat - now}
end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.floor(ahead / 1000) + 1000)
return {1, math.floor((capacity - ahead) / interval), 0, ahead}
";

const SLIDING_COUNTER: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local index = math.floor(now / window)
local left = window - (now - index * window)
local current_key = KEYS[1] .. ':' .. index
local current = tonumber(redis.call('GET', current_key) or 0)
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. (index - 1)) or 0)
local weighted = previous * left + current * window
if weighted + window > limit * window then
  return {0, 0, left, index}
end
redis.call('INCR', current_key)
redis.call('PEXPIRE', current_key, 2 * window + 1000)
return {1, math.floor((limit * window - weighted - window) / window), left, index}
";

const FIXED_WINDOW: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return {0, 0}
end
return {1, tonumber(ARGV[1]) - n}
";

/// Takes back one charge: `DECRBY` if the key still exists.
const REFUND: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECRBY', KEYS[1], ARGV[1]) end
return {1}
";

/// A limit whose counts live in Redis.
pub struct RedisLimit {
    pool: Arc<Pool>,
    spec: Spec,
    prefix: Vec<u8>,
    script: Script,
    refund: Script,
    /// Decides while Redis cannot be asked (`on-failure = open`).
    emergency: Limiter,
    failures: metrics::Counter,
}

/// The Redis key of `base`'s counter in window `window`.
fn window_key(base: &[u8], window: u64) -> Vec<u8> {
    let mut key = base.to_vec();
    key.push(b':');
    key.extend_from_slice(window.to_string().as_bytes());
    key
}

impl RedisLimit {
    /// A `redis` limit `id` with `spec` (a token bucket, sliding window
    /// counter or fixed window).
    pub fn new(
        id: &str,
        spec: Spec,
        pool: Arc<Pool>,
        emergency: Limiter,
        failures: metrics::Counter,
    ) -> Self {
        let source = match spec {
            Spec::TokenBucket(_) => TOKEN_BUCKET,
            Spec::SlidingCounter(_) => SLIDING_COUNTER,
            _ => FIXED_WINDOW,
        };
        Self {
            pool,
            spec,
            prefix: format!("meridian:{id}:").into_bytes(),
            script: Script::new(source),
            refund: Script::new(REFUND),
            emergency,
            failures,
        }
    }

    /// The local limiter used while Redis cannot be asked.
    pub fn emergency(&self) -> &Limiter {
        &self.emergency
    }

    fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = self.prefix.clone();
        full.extend_from_slice(key);
        full
    }

    /// Decides on one request under `key`; `Err` when Redis cannot be asked
    /// and the limit fails closed.
    pub async fn decide(&self, key: &[u8], now: Nanos) -> Result<Check, Error> {
        match self.ask(key, now).await {
            Ok(decision) => Ok(Check::Decided(decision)),
            Err(error) => {
                self.failures.increment(1);
                tracing::debug!(%error, "rate-limit decision without redis");
                match (self.pool.on_failure, self.emergency.check(key, now)) {
                    (OnFailure::Open, Check::Decided(decision)) => Ok(Check::Fallback(decision)),
                    (OnFailure::Open, other) => Ok(other),
                    (OnFailure::Closed, _) => Err(error),
                }
            }
        }
    }

    async fn ask(&self, key: &[u8], now: Nanos) -> Result<Decision, Error> {
        let base = self.redis_key(key);
        let decision = |allowed: i64, remaining: i64, reset: Nanos, charged: u64| Decision {
            allowed: allowed == 1,
            remaining: remaining.max(0) as u64,
            reset,
            retry_after: if allowed == 1 { 0 } else { reset },
            charged,
        };
        let number = |reply: &[i64], i: usize| reply.get(i).copied().unwrap_or(0);
        match self.spec {
            Spec::TokenBucket(bucket) => {
                let interval = (bucket.interval / 1_000).max(1) as i64;
                let capacity = interval * bucket.burst as i64;
                let reply = self
                    .pool
                    .run(&self.script, &[&base], &[interval, capacity])
                    .await?;
                let allowed = number(&reply, 0);
                let (wait, ahead) = (number(&reply, 2), number(&reply, 3));
                let mut d = decision(allowed, number(&reply, 1), ahead.max(0) as u64 * 1_000, 0);
                if allowed != 1 {
                    d.retry_after = wait.max(0) as u64 * 1_000;
                }
                Ok(d)
            }
            Spec::SlidingCounter(counter) => {
                let window = (counter.window / 1_000_000).max(1) as i64;
                let reply = self
                    .pool
                    .run(&self.script, &[&base], &[counter.limit as i64, window])
                    .await?;
                let left = number(&reply, 2).max(0) as u64 * 1_000_000;
                Ok(decision(
                    number(&reply, 0),
                    number(&reply, 1),
                    left,
                    number(&reply, 3) as u64,
                ))
            }
            Spec::FixedWindow(fixed) => {
                let (index, end) = fixed.window.locate(now);
                let ttl = ((end - now) / 1_000_000 + 1_000) as i64;
                let key = window_key(&base, index);
                let reply = self
                    .pool
                    .run(&self.script, &[&key], &[fixed.limit as i64, ttl])
                    .await?;
                Ok(decision(
                    number(&reply, 0),
                    number(&reply, 1),
                    end - now,
                    index,
                ))
            }
            _ => Err(Error::NotConfigured),
        }
    }

    /// Takes back an admitted request's charge.
    pub async fn refund(&self, key: &[u8], decision: &Decision) {
        let base = self.redis_key(key);
        let (target, amount) = match self.spec {
            Spec::TokenBucket(bucket) => (base, (bucket.interval / 1_000).max(1) as i64),
            Spec::SlidingCounter(_) | Spec::FixedWindow(_) => {
                (window_key(&base, decision.charged), 1)
            }
            _ => return,
        };
        if let Err(error) = self.pool.run(&self.refund, &[&target], &[amount]).await {
            self.failures.increment(1);
            tracing::debug!(%error, "rate-limit refund not written to redis");
        }
    }
}
