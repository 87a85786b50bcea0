//! Per-key state of one limit, sharded, with a hard cap on the number of
//! keys.
//!
//! Keys are spread over [`SHARDS`] shards by hash, each a mutex around two
//! generations of hash tables. A key found in the old generation moves to
//! the young one; a new key goes into the young one. When the young
//! generation of a shard holds half the shard's share of the cap, the old
//! generation is dropped and the young one becomes old. So a shard never
//! holds more than its share of the cap, and what is dropped is what was
//! least recently used: keys not seen since the previous rotation.
//!
//! Dropping a key forgets its count: that key starts over with a full
//! allowance. When it happens to a key that was still counting (not idle),
//! it is a capacity eviction, counted in
//! `meridian_ratelimit_evictions_total{reason="capacity"}` and logged; it is
//! what a flood of distinct keys (random client addresses) costs, instead of
//! unbounded memory. Idle keys, whose state equals a fresh one, are removed
//! by [`Store::sweep`] and counted with `reason="idle"`; forgetting them
//! changes no decision.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::clock::Nanos;
use super::{Algorithm, Counting, Decision};

/// Shards per store: enough that two to sixteen cores rarely meet on one.
pub const SHARDS: usize = 32;

/// Counts of what a store did, for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Keys tracked now.
    pub keys: AtomicU64,
    /// Keys dropped at the cap while their state still counted.
    pub evicted_capacity: AtomicU64,
    /// Idle keys removed by a sweep.
    pub evicted_idle: AtomicU64,
    /// When capacity evictions were last logged.
    warned_at: AtomicU64,
}

/// Capacity evictions are logged at most this often.
const WARN_EVERY: Nanos = 10 * super::clock::SECOND;

/// A key: up to 16 bytes inline (an address, a short name), longer ones
/// on the heap.
type Key = smallvec::SmallVec<[u8; 16]>;

type Entry<S> = (Key, S);

struct Shard<S> {
    young: HashTable<Entry<S>>,
    old: HashTable<Entry<S>>,
}

/// Keeps a shard's lock on its own cache line.
#[repr(align(128))]
struct Padded<T>(T);

/// The per-key state of one limit.
pub struct Store<A: Algorithm> {
    algorithm: A,
    hasher: DefaultHashBuilder,
    shards: Box<[Padded<Mutex<Shard<A::State>>>]>,
    /// Young-generation size at which a shard rotates.
    rotate_at: usize,
    stats: Stats,
}

impl<A: Algorithm> Store<A> {
    /// A store for `algorithm` holding at most about `max_keys` keys.
    pub fn new(algorithm: A, max_keys: usize) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Padded(Mutex::new(Shard {
                    young: HashTable::new(),
                    old: HashTable::new(),
                }))
            })
            .collect();
        Self {
            algorithm,
            hasher: DefaultHashBuilder::default(),
            shards,
            rotate_at: (max_keys / SHARDS / 2).max(1),
            stats: Stats::default(),
        }
    }

    /// The algorithm and its parameters.
    pub fn algorithm(&self) -> &A {
        &self.algorithm
    }

    /// What the store did so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard<A::State>> {
        let index = (hash >> 58) as usize % SHARDS;
        self.shards[index]
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the state of `key`, creating it when absent.
    #[inline]
    pub fn with<R>(&self, key: &[u8], now: Nanos, f: impl FnOnce(&A, &mut A::State) -> R) -> R {
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        let shard = &mut *shard;
        let hasher = |entry: &Entry<A::State>| self.hasher.hash_one(&*entry.0);
        if let Some((_, state)) = shard.young.find_mut(hash, |e| &*e.0 == key) {
            return f(&self.algorithm, state);
        }
        let entry = match shard.old.find_entry(hash, |e| &*e.0 == key) {
            Ok(found) => found.remove().0,
            Err(_) => {
                self.stats.keys.fetch_add(1, Ordering::Relaxed);
                (Key::from_slice(key), self.algorithm.fresh())
            }
        };
        if shard.young.len() >= self.rotate_at {
            self.rotate(shard, now);
        }
        let (_, state) = shard.young.insert_unique(hash, entry, hasher).into_mut();
        f(&self.algorithm, state)
    }

    /// Runs `f` on the state of `key` if the store has it.
    pub fn with_existing<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(&A, &mut A::State) -> R,
    ) -> Option<R> {
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        let shard = &mut *shard;
        let found = match shard.young.find_mut(hash, |e| &*e.0 == key) {
            Some(entry) => Some(entry),
            None => shard.old.find_mut(hash, |e| &*e.0 == key),
        };
        found.map(|(_, state)| f(&self.algorithm, state))
    }

    /// Runs `f` on every key's state.
    pub fn scan(&self, mut f: impl FnMut(&[u8], &mut A::State)) {
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            let shard = &mut *shard;
            for (key, state) in shard.young.iter_mut().chain(shard.old.iter_mut()) {
                f(key, state);
            }
        }
    }

    /// Drops the old generation and ages the young one.
    fn rotate(&self, shard: &mut Shard<A::State>, now: Nanos) {
        let dropped = shard.old.len() as u64;
        let live = shard
            .old
            .iter()
            .filter(|(_, state)| !self.algorithm.is_idle(state, now))
            .count() as u64;
        shard.old = std::mem::replace(
            &mut shard.young,
            HashTable::with_capacity(self.rotate_at.min(1024)),
        );
        self.stats.keys.fetch_sub(dropped, Ordering::Relaxed);
        self.stats
            .evicted_idle
            .fetch_add(dropped - live, Ordering::Relaxed);
        if live > 0 {
            self.stats
                .evicted_capacity
                .fetch_add(live, Ordering::Relaxed);
            let warned = self.stats.warned_at.load(Ordering::Relaxed);
            if (warned == 0 || now.saturating_sub(warned) >= WARN_EVERY)
                && self
                    .stats
                    .warned_at
                    .compare_exchange(warned, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    evicted_total = self.stats.evicted_capacity.load(Ordering::Relaxed),
                    "rate-limit keys at capacity: the least recently used keys were forgotten and start over"
                );
            }
        }
    }

    /// Removes the keys whose state is idle at `now`; returns how many.
    pub fn sweep(&self, now: Nanos) -> u64 {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            let shard = &mut *shard;
            for table in [&mut shard.young, &mut shard.old] {
                let before = table.len();
                table.retain(|(_, state)| !self.algorithm.is_idle(state, now));
                removed += (before - table.len()) as u64;
                if table.capacity() > 64 && table.capacity() > 4 * table.len() {
                    table.shrink_to_fit(|entry| self.hasher.hash_one(&*entry.0));
                }
            }
        }
        self.stats.keys.fetch_sub(removed, Ordering::Relaxed);
        self.stats
            .evicted_idle
            .fetch_add(removed, Ordering::Relaxed);
        removed
    }
}

impl<A: Counting> Store<A> {
    /// Decides on one request under `key` at `now`, charging it when admitted.
    #[inline]
    pub fn acquire(&self, key: &[u8], now: Nanos) -> Decision {
        self.with(key, now, |a, s| a.acquire(s, now))
    }

    /// Takes back the charge made at `charged` under `key`, if the key is
    /// still tracked.
    pub fn refund(&self, key: &[u8], charged: Nanos) {
        self.with_existing(key, |a, s| a.refund(s, charged));
    }
}

#[cfg(test)]
mod size {
    #[test]
    fn a_key_is_three_words() {
        assert_eq!(std::mem::size_of::<super::Key>(), 24);
    }
}
