//! A bounded map of verified credentials, keyed by the SHA-256 of the
//! token (the token itself is never kept), with an expiry per entry.
//!
//! Sixteen shards, each behind its own short mutex section. A shard that is
//! full first drops its expired entries, then an arbitrary live one; every
//! hit, miss and eviction is counted.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use metrics::{Counter, Gauge};

use crate::metrics::Metrics;

/// SHA-256 of a token.
pub type Digest = [u8; 32];

/// The digest of `token`.
pub fn digest(token: &str) -> Digest {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.as_ref());
    out
}

/// Digests are uniformly random: their first eight bytes are the hash.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        if bytes.len() >= 8 {
            let mut first = [0u8; 8];
            first.copy_from_slice(&bytes[..8]);
            self.0 ^= u64::from_le_bytes(first);
        }
    }

    fn write_usize(&mut self, _: usize) {}
}

type Shard<V> = HashMap<Digest, (V, u64), BuildHasherDefault<DigestHasher>>;

const SHARDS: usize = 16;

/// The cache.
pub struct TtlCache<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    per_shard: usize,
    hits: Counter,
    misses: Counter,
    evictions: Counter,
    entries: Gauge,
}

impl<V: Clone> TtlCache<V> {
    /// A cache of at most about `capacity` entries, counted as `cache`.
    pub fn new(capacity: usize, cache: String, metrics: &Metrics) -> Self {
        let label = |result: &str| {
            metrics.counter(
                "meridian_auth_cache_total",
                &[("cache", cache.clone()), ("result", result.to_owned())],
            )
        };
        let cache = Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hits: label("hit"),
            misses: label("miss"),
            evictions: label("eviction"),
            entries: metrics.gauge("meridian_auth_cache_entries", &[("cache", cache)]),
        };
        cache.hits.increment(0);
        cache.misses.increment(0);
        cache.evictions.increment(0);
        cache
    }

    fn shard(&self, key: &Digest) -> std::sync::MutexGuard<'_, Shard<V>> {
        self.shards[usize::from(key[31]) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The live entry for `key` at `now` (Unix ms).
    pub fn get(&self, key: &Digest, now: u64) -> Option<V> {
        let found = {
            let mut shard = self.shard(key);
            match shard.get(key) {
                Some((value, expires)) if *expires > now => Some(value.clone()),
                Some(_) => {
                    shard.remove(key);
                    self.entries.decrement(1.0);
                    None
                }
                None => None,
            }
        };
        match found {
            Some(_) => self.hits.increment(1),
            None => self.misses.increment(1),
        }
        found
    }

    /// Remembers `value` until `expires` (Unix ms).
    pub fn insert(&self, key: Digest, value: V, expires: u64, now: u64) {
        if expires <= now {
            return;
        }
        let mut shard = self.shard(&key);
        if !shard.contains_key(&key) && shard.len() >= self.per_shard {
            let before = shard.len();
            shard.retain(|_, (_, at)| *at > now);
            let mut evicted = before - shard.len();
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().copied()
            {
                shard.remove(&victim);
                evicted += 1;
            }
            self.evictions.increment(evicted as u64);
            self.entries.decrement(evicted as f64);
        }
        if shard.insert(key, (value, expires)).is_none() {
            self.entries.increment(1.0);
        }
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &Digest) {
        if self.shard(key).remove(key).is_some() {
            self.entries.decrement(1.0);
        }
    }

    /// Number of entries (expired ones included until met).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_size_is_bounded() {
        let metrics = Metrics::new();
        let cache = TtlCache::new(32, "test".into(), &metrics);
        cache.insert(digest("a"), 1, 100, 0);
        assert_eq!(cache.get(&digest("a"), 99), Some(1));
        assert_eq!(cache.get(&digest("a"), 100), None, "never past expiry");
        for i in 0..1000 {
            cache.insert(digest(&i.to_string()), i, 1000, 0);
        }
        assert!(cache.len() <= 32, "{}", cache.len());
        cache.insert(digest("past"), 1, 5, 10);
        assert_eq!(cache.get(&digest("past"), 10), None);
        let text = metrics.render();
        assert!(
            text.contains(r#"meridian_auth_cache_total{cache="test",result="eviction"} 968"#),
            "{text}"
        );
        assert!(text.contains(r#"meridian_auth_cache_total{cache="test",result="hit"} 1"#));
    }
}
