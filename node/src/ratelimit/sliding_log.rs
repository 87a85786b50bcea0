//! Sliding window log: the exact count. Each key keeps the time of every
//! request it admitted in the last window (at most `limit` of them), so a
//! request is admitted when fewer than `limit` fall in `(now - window, now]`.

use std::collections::VecDeque;

use super::clock::Nanos;
use super::{Algorithm, Counting, Decision, Policy};

/// A sliding window log's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingLog {
    limit: u64,
    window: Nanos,
}

impl SlidingLog {
    /// `limit` requests in any `window`.
    pub fn new(limit: u64, window: Nanos) -> Self {
        Self {
            limit: limit.max(1),
            window: window.max(1),
        }
    }
}

impl Algorithm for SlidingLog {
    /// Admission times, oldest first.
    type State = VecDeque<Nanos>;

    fn fresh(&self) -> VecDeque<Nanos> {
        VecDeque::new()
    }

    fn is_idle(&self, log: &VecDeque<Nanos>, now: Nanos) -> bool {
        log.back()
            .is_none_or(|&last| last.saturating_add(self.window) <= now)
    }
}

impl Counting for SlidingLog {
    fn acquire(&self, log: &mut VecDeque<Nanos>, now: Nanos) -> Decision {
        // Times are kept in order even if two threads read the clock in one
        // order and take the lock in the other.
        let now = log.back().map_or(now, |&last| now.max(last));
        while log
            .front()
            .is_some_and(|&first| first.saturating_add(self.window) <= now)
        {
            log.pop_front();
        }
        let expires = |at: Nanos| at.saturating_add(self.window) - now;
        if log.len() as u64 >= self.limit {
            return Decision {
                allowed: false,
                remaining: 0,
                reset: log.back().map_or(0, |&t| expires(t)),
                retry_after: log.front().map_or(0, |&t| expires(t)),
                charged: now,
            };
        }
        log.push_back(now);
        if log.capacity() > 2 * log.len() + 8 {
            log.shrink_to(log.len() + 4);
        }
        Decision {
            allowed: true,
            remaining: self.limit - log.len() as u64,
            reset: self.window,
            retry_after: 0,
            charged: now,
        }
    }

    fn refund(&self, log: &mut VecDeque<Nanos>, charged: Nanos) {
        if let Some(i) = log.iter().rposition(|&t| t == charged) {
            log.remove(i);
        }
    }

    fn policy(&self) -> Policy {
        Policy {
            quota: self.limit,
            window: self.window,
        }
    }
}
