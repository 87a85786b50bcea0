//! `scope: global`: a limit counted on every node, decided locally.
//!
//! Each node keeps, per key and window, its own admitted count: a
//! grow-only counter that only this node writes. It sends the counters
//! that changed to every peer every sync interval ([`super::sync`]); a
//! peer keeps the highest count it has seen from each node per key and
//! window, so lost, repeated and reordered batches change nothing once a
//! later batch arrives. A decision adds the node's own count to the latest
//! counts known from the others and asks the limit's algorithm as if one
//! node had seen everything:
//!
//! - fixed window: `own + Σ remote` in the current window;
//! - sliding window counter: the same totals for the previous and the
//!   current window, weighted as usual;
//! - token bucket: the bucket is kept locally (GCRA); the admissions peers
//!   report are taken out of it when they arrive.
//!
//! Peers that have not been heard from within the peer timeout are
//! presumed to be serving clients on the other side of a partition: each
//! is charged at least its equal share of the limit (`⌈limit / nodes⌉`), a
//! token bucket runs at the reachable nodes' share of its rate. So every
//! side of a partition keeps to its own share and the sum stays within the
//! limit (docs/rate-limiting.md has the bound).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use raft::model::NodeId;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::clock::{Nanos, SECOND};
use super::fixed_window::{self, FixedWindow};
use super::sliding_counter::{self, SlidingCounter};
use super::token_bucket::TokenBucket;
use super::{Algorithm, Counting, Decision, Policy, Spec};

/// Peers a node tracks (slots of the unreachable mask).
pub const MAX_PEERS: usize = 64;

// === peers ===

/// The other nodes as the global limits see them: a slot per peer, when
/// each was last heard from, and which are presumed partitioned away.
pub struct Peers {
    slots: Mutex<HashMap<NodeId, u8>>,
    /// Per slot: when a batch from the peer last arrived (clock nanos).
    heard: Box<[AtomicU64]>,
    /// Bit `s`: the peer in slot `s` is unreachable.
    unreachable: AtomicU64,
    /// Nodes enforcing global limits, this one included.
    nodes: AtomicU64,
}

impl Default for Peers {
    fn default() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            heard: (0..MAX_PEERS).map(|_| AtomicU64::new(0)).collect(),
            unreachable: AtomicU64::new(0),
            nodes: AtomicU64::new(1),
        }
    }
}

impl Peers {
    /// The slot of `peer`, assigning one (heard from "now", so a new peer
    /// gets a full timeout before it is presumed away). `None` when every
    /// slot is taken.
    pub fn slot(&self, peer: NodeId, now: Nanos) -> Option<u8> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(&peer) {
            return Some(*slot);
        }
        let taken: u64 = slots.values().fold(0, |mask, s| mask | 1 << s);
        let free = (!taken).trailing_zeros() as usize;
        if free >= MAX_PEERS {
            return None;
        }
        self.heard[free].store(now, Ordering::Relaxed);
        slots.insert(peer, free as u8);
        Some(free as u8)
    }

    /// Notes that a batch from `slot` arrived at `now`.
    pub fn heard(&self, slot: u8, now: Nanos) {
        self.heard[usize::from(slot)].fetch_max(now, Ordering::Relaxed);
    }

    /// Nanoseconds since `slot` was last heard from.
    pub fn silence(&self, slot: u8, now: Nanos) -> Nanos {
        now.saturating_sub(self.heard[usize::from(slot)].load(Ordering::Relaxed))
    }

    /// Sets the membership: `members` are the peers (not this node); the
    /// slots of former members are freed. Returns each member's slot.
    pub fn set_members(&self, members: &[NodeId], now: Nanos) -> Vec<(NodeId, u8)> {
        {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.retain(|id, _| members.contains(id));
        }
        let assigned: Vec<(NodeId, u8)> = members
            .iter()
            .filter_map(|id| Some((*id, self.slot(*id, now)?)))
            .collect();
        self.nodes
            .store(assigned.len() as u64 + 1, Ordering::Relaxed);
        assigned
    }

    /// Marks as unreachable the members in `slots` not heard from within
    /// `timeout`; returns the mask.
    pub fn refresh(&self, slots: &[(NodeId, u8)], now: Nanos, timeout: Nanos) -> u64 {
        let mask = slots
            .iter()
            .filter(|(_, slot)| self.silence(*slot, now) > timeout)
            .fold(0u64, |mask, (_, slot)| mask | 1 << slot);
        self.unreachable.store(mask, Ordering::Relaxed);
        mask
    }

    /// Sets the node count and the unreachable mask directly (tests).
    #[cfg(test)]
    pub fn set_view(&self, nodes: u64, unreachable: u64) {
        self.nodes.store(nodes, Ordering::Relaxed);
        self.unreachable.store(unreachable, Ordering::Relaxed);
    }

    #[inline]
    fn view(&self) -> View {
        View {
            nodes: self.nodes.load(Ordering::Relaxed).max(1),
            unreachable: self.unreachable.load(Ordering::Relaxed),
        }
    }
}

/// What a decision needs to know of the peers.
#[derive(Debug, Clone, Copy)]
struct View {
    nodes: u64,
    unreachable: u64,
}

impl View {
    fn is_unreachable(self, slot: u8) -> bool {
        self.unreachable & (1 << slot) != 0
    }

    /// The charge at least presumed for an unreachable peer.
    fn share(self, limit: u64) -> u64 {
        limit.div_ceil(self.nodes)
    }
}

// === per-key state ===

/// What one peer reported for a key: its counts in its latest window and
/// the one before.
#[derive(Debug, Clone, Copy, Default)]
struct Remote {
    slot: u8,
    window: u64,
    /// `[previous, current]`.
    counts: [u32; 2],
}

/// How much counts kept for windows `[w - 1, w]` grew from `before` to
/// `after`, each a `(w, [previous, current])`: a count that rolled from
/// current to previous grows by its difference; a window that fell out of
/// the pair is not a decrease.
fn growth(before: (u64, [u32; 2]), after: (u64, [u32; 2])) -> u64 {
    let (w0, [_, current0]) = before;
    let (w1, [previous1, current1]) = after;
    let (previous1, current1) = (u64::from(previous1), u64::from(current1));
    if w1 == w0 {
        let [previous0, current0] = before.1.map(u64::from);
        previous1.saturating_sub(previous0) + current1.saturating_sub(current0)
    } else if w0.checked_add(1) == Some(w1) {
        previous1.saturating_sub(u64::from(current0)) + current1
    } else {
        previous1 + current1
    }
}

impl Remote {
    /// The peer's count in window `w`.
    fn count_at(&self, w: u64) -> u64 {
        if self.window == w {
            u64::from(self.counts[1])
        } else if self.window == w.wrapping_add(1) {
            u64::from(self.counts[0])
        } else {
            0
        }
    }

    /// Merges a report of `counts` for windows `w - 1` and `w`: the highest
    /// count per window wins. Returns how much the counts grew.
    fn merge(&mut self, w: u64, counts: [u32; 2]) -> u64 {
        let before = (self.window, self.counts);
        if w > self.window {
            let previous = if w == self.window + 1 {
                self.counts[1].max(counts[0])
            } else {
                counts[0]
            };
            self.counts = [previous, counts[1]];
            self.window = w;
        } else if w == self.window {
            self.counts = [self.counts[0].max(counts[0]), self.counts[1].max(counts[1])];
        } else if w.checked_add(1) == Some(self.window) {
            self.counts[0] = self.counts[0].max(counts[1]);
        }
        growth(before, (self.window, self.counts))
    }
}
/// A key's state under a global limit.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// This node's current window.
    window: u64,
    /// This node's admissions in `[window - 1, window]`.
    own: [u32; 2],
    /// `(window, own)` as last handed to the sync task.
    collected: (u64, [u32; 2]),
    /// Token bucket only: the theoretical arrival time.
    tat: Nanos,
    remote: SmallVec<[Remote; 2]>,
}

impl Counts {
    /// Moves the own counts to window `w` (never back).
    fn roll(&mut self, w: u64) {
        if w > self.window {
            self.own = if w == self.window + 1 {
                [self.own[1], 0]
            } else {
                [0, 0]
            };
            self.window = w;
        }
    }

    /// All nodes' counts in window `w`, charging each unreachable peer at
    /// least `share`.
    fn total(&self, w: u64, view: View, share: u64) -> u64 {
        let own = if w == self.window {
            u64::from(self.own[1])
        } else if w + 1 == self.window {
            u64::from(self.own[0])
        } else {
            0
        };
        let mut total = own;
        let mut absent = view.unreachable;
        for remote in &self.remote {
            let count = remote.count_at(w);
            if view.is_unreachable(remote.slot) {
                absent &= !(1 << remote.slot);
                total += count.max(share);
            } else {
                total += count;
            }
        }
        total + u64::from(absent.count_ones()) * share
    }

    fn charge(&mut self) {
        self.own[1] = self.own[1].saturating_add(1);
    }

    fn uncharge(&mut self, w: u64) {
        if w == self.window {
            self.own[1] = self.own[1].saturating_sub(1);
        } else if w + 1 == self.window {
            self.own[0] = self.own[0].saturating_sub(1);
        }
    }
}

/// One key's counters as a batch carries them: the sender's counts in
/// windows `window - 1` and `window`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key.
    pub key: Vec<u8>,
    /// The sender's current window for the key.
    pub window: u64,
    /// `[previous, current]` admitted by the sender.
    pub counts: [u32; 2],
}

// === the algorithm ===

/// The local algorithm a global limit runs on the totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Token(TokenBucket),
    Sliding(SlidingCounter),
    Fixed(FixedWindow),
}

/// A global limit: the algorithm, the peers, and counts of what the node
/// admitted and learned (for the overshoot bound and metrics).
pub struct Global {
    kind: Kind,
    /// The windows counts are kept in (token bucket: an epoch that only
    /// bounds the counters).
    epoch: Nanos,
    peers: std::sync::Arc<Peers>,
    /// Requests this node admitted, as counted when collected (so the
    /// request path does not touch a shared counter).
    pub(super) admitted: AtomicU64,
    /// Admissions peers reported (growth of their counters).
    pub(super) learned: AtomicU64,
    /// Decisions made while some peer was presumed partitioned away.
    pub(super) partitioned: AtomicU64,
}

impl Global {
    /// A global version of `spec`; `None` for the algorithms that stay
    /// local (sliding window log, leaky bucket).
    pub fn new(spec: Spec, peers: std::sync::Arc<Peers>) -> Option<Self> {
        let (kind, epoch) = match spec {
            Spec::TokenBucket(bucket) => (Kind::Token(bucket), bucket.capacity.max(SECOND)),
            Spec::SlidingCounter(counter) => (Kind::Sliding(counter), counter.window),
            Spec::FixedWindow(fixed) => (Kind::Fixed(fixed), 0),
            Spec::SlidingLog(_) | Spec::LeakyBucket(_) => return None,
        };
        Some(Self {
            kind,
            epoch,
            peers,
            admitted: AtomicU64::new(0),
            learned: AtomicU64::new(0),
            partitioned: AtomicU64::new(0),
        })
    }

    /// The index of the window holding `now`.
    #[inline]
    fn index(&self, now: Nanos) -> u64 {
        match self.kind {
            Kind::Fixed(fixed) => fixed.window.locate(now).0,
            _ => now / self.epoch,
        }
    }

    /// The limit's quota (what an unreachable peer's share is cut from).
    fn quota(&self) -> u64 {
        match self.kind {
            Kind::Token(bucket) => bucket.burst,
            Kind::Sliding(counter) => counter.limit,
            Kind::Fixed(fixed) => fixed.limit,
        }
    }

    /// Every node's count known here in the window holding `now` (for a
    /// token bucket, in its counting epoch).
    pub fn count(&self, counts: &Counts, now: Nanos) -> u64 {
        let all = View {
            nodes: 1,
            unreachable: 0,
        };
        counts.total(self.index(now), all, 0)
    }

    /// Merges a peer's report for one key at `now`.
    pub fn merge(&self, counts: &mut Counts, slot: u8, entry: &Entry, now: Nanos) {
        if entry.window > self.index(now).saturating_add(1) {
            // Further ahead than clock skew explains: never a count that
            // matters here, and it would keep the key from ever idling.
            return;
        }
        let remote = match counts.remote.iter_mut().position(|r| r.slot == slot) {
            Some(at) => &mut counts.remote[at],
            None => {
                counts.remote.push(Remote {
                    slot,
                    ..Remote::default()
                });
                counts.remote.last_mut().expect("just pushed")
            }
        };
        let grown = remote.merge(entry.window, entry.counts);
        if grown == 0 {
            return;
        }
        self.learned.fetch_add(grown, Ordering::Relaxed);
        if let Kind::Token(bucket) = self.kind {
            // The peer's admissions took tokens from the one bucket; they
            // are taken now (a token that refilled in between is lost:
            // conservative by at most the sync delay's worth of refill).
            counts.tat = counts
                .tat
                .max(now)
                .saturating_add(bucket.interval.saturating_mul(grown));
        }
    }

    /// The key's counters if they changed since last collected (or
    /// always, for a full sync, while they still count).
    pub fn collect(
        &self,
        key: &[u8],
        counts: &mut Counts,
        full: bool,
        now: Nanos,
    ) -> Option<Entry> {
        let current = (counts.window, counts.own);
        let changed = current != counts.collected;
        let counting = counts.own != [0, 0] && counts.window + 1 >= self.index(now);
        if !(changed || full && counting) {
            return None;
        }
        self.admitted
            .fetch_add(growth(counts.collected, current), Ordering::Relaxed);
        counts.collected = current;
        Some(Entry {
            key: key.to_vec(),
            window: counts.window,
            counts: counts.own,
        })
    }
}

impl Algorithm for Global {
    type State = Counts;

    fn fresh(&self) -> Counts {
        Counts::default()
    }

    fn is_idle(&self, counts: &Counts, now: Nanos) -> bool {
        let w = self.index(now);
        let stale = |window: u64| window.saturating_add(1) < w;
        counts.tat <= now
            && (counts.window, counts.own) == counts.collected
            && stale(counts.window)
            && counts.remote.iter().all(|r| stale(r.window))
    }
}

impl Counting for Global {
    #[inline]
    fn acquire(&self, counts: &mut Counts, now: Nanos) -> Decision {
        let w = self.index(now);
        counts.roll(w);
        let view = self.peers.view();
        if view.unreachable != 0 {
            self.partitioned.fetch_add(1, Ordering::Relaxed);
        }
        let share = view.share(self.quota());
        let decision = match self.kind {
            Kind::Fixed(fixed) => {
                let total = counts.total(w, view, share);
                fixed.acquire(&mut fixed_window::Count::total(w, total), now)
            }
            Kind::Sliding(counter) => {
                let saturate = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
                let previous = counts.total(w.wrapping_sub(1), view, 0);
                let current = counts.total(w, view, share);
                counter.acquire(
                    &mut sliding_counter::Counts::totals(w, saturate(previous), saturate(current)),
                    now,
                )
            }
            Kind::Token(bucket) => {
                let reachable = view.nodes - u64::from(view.unreachable.count_ones());
                let bucket = if reachable < view.nodes {
                    // Each request costs more: the bucket refills at the
                    // reachable nodes' share of the rate.
                    let interval = bucket.interval.saturating_mul(view.nodes) / reachable.max(1);
                    TokenBucket { interval, ..bucket }
                } else {
                    bucket
                };
                bucket.acquire(&mut counts.tat, now)
            }
        };
        if decision.allowed {
            counts.charge();
        }
        decision
    }

    fn refund(&self, counts: &mut Counts, charged: Nanos) {
        counts.uncharge(self.index(charged));
        if let Kind::Token(bucket) = self.kind {
            counts.tat = counts.tat.saturating_sub(bucket.interval);
        }
    }

    fn policy(&self) -> Policy {
        match self.kind {
            Kind::Token(bucket) => bucket.policy(),
            Kind::Sliding(counter) => counter.policy(),
            Kind::Fixed(fixed) => fixed.policy(),
        }
    }
}

#[cfg(test)]
mod tests;
