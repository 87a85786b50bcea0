//! The timer heap that holds datagrams until their release instant.
//!
//! A min-heap keyed by `(release instant, arrival number)`: datagrams with the
//! same release instant leave in arrival order, and a datagram that drew less
//! jitter overtakes one that drew more. Items leave whole.
//!
//! The heap is bounded in bytes, and every item costs at least [`OVERHEAD`]
//! bytes so that a flood of empty datagrams is bounded too. A push over the
//! bound hands the item back for the caller to count as dropped.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use tokio::time::Instant;

/// The accounting cost of an item on top of its payload.
pub(crate) const OVERHEAD: usize = 64;

/// A byte-bounded delay queue.
#[derive(Debug)]
pub(crate) struct DelayQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    bytes: usize,
    limit: usize,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry<T> {
    at: Instant,
    seq: u64,
    cost: usize,
    item: T,
}

// === impl DelayQueue ===

impl<T> DelayQueue<T> {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            bytes: 0,
            limit,
            next_seq: 0,
        }
    }

    /// Queues `item` of `len` payload bytes until `at`, or hands it back if it
    /// does not fit.
    pub(crate) fn push(&mut self, at: Instant, len: usize, item: T) -> Result<(), T> {
        let cost = len.saturating_add(OVERHEAD);
        if self.bytes.saturating_add(cost) > self.limit {
            return Err(item);
        }
        self.bytes += cost;
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.heap.push(Entry {
            at,
            seq,
            cost,
            item,
        });
        Ok(())
    }

    /// The earliest item whose release instant is not after `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.heap.peek()?.at > now {
            return None;
        }
        let entry = self.heap.pop()?;
        self.bytes -= entry.cost;
        Some(entry.item)
    }

    /// The release instant of the earliest item.
    pub(crate) fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

// === impl Entry ===

impl<T> Entry<T> {
    fn key(&self) -> (Instant, u64) {
        (self.at, self.seq)
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed, so that `BinaryHeap`'s maximum is the earliest entry.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
    }
}

#[cfg(test)]
mod tests;
