//! Sliding window counter: `previous × overlap + current`. Each key keeps
//! two counts, the previous fixed window's and the current one's; the
//! previous window is assumed to have been uniform, so it is weighted by
//! the share of it that still lies within the sliding window. Constant
//! memory per key; no 2× burst at a window boundary, since right after
//! the boundary the previous window still weighs almost fully.
//!
//! Over any interval of length `d <= window` it admits at most
//! `limit + limit × d / window` (the previous window's requests could all
//! have come at its very end); a fixed window admits up to `2 × limit`
//! over an interval as short as you like.

use super::clock::Nanos;
use super::{Algorithm, Counting, Decision, Policy};

/// A sliding window counter's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingCounter {
    pub(super) limit: u64,
    pub(super) window: Nanos,
}

/// The counts of one key: 16 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Index of the current window (`now / window`).
    window: u64,
    previous: u32,
    current: u32,
}

impl Counts {
    /// The counts `previous` and `current` with the current window `window`
    /// (a global limit's totals over every node).
    pub(super) fn totals(window: u64, previous: u32, current: u32) -> Self {
        Self {
            window,
            previous,
            current,
        }
    }
}

impl SlidingCounter {
    /// About `limit` requests in any `window` (`limit` fits in `u32`).
    pub fn new(limit: u64, window: Nanos) -> Self {
        Self {
            limit: limit.clamp(1, u64::from(u32::MAX)),
            window: window.max(1),
        }
    }

    /// Moves `counts` to the window holding `now`; returns the time elapsed
    /// in it.
    fn roll(&self, counts: &mut Counts, now: Nanos) -> Nanos {
        let index = now / self.window;
        if index != counts.window {
            counts.previous = if index == counts.window + 1 {
                counts.current
            } else {
                0
            };
            counts.current = 0;
            counts.window = index;
        }
        now - index * self.window
    }
}

impl Algorithm for SlidingCounter {
    type State = Counts;

    fn fresh(&self) -> Counts {
        Counts::default()
    }

    fn is_idle(&self, counts: &Counts, now: Nanos) -> bool {
        now / self.window > counts.window + 1 || (counts.previous == 0 && counts.current == 0)
    }
}

impl Counting for SlidingCounter {
    #[inline]
    fn acquire(&self, counts: &mut Counts, now: Nanos) -> Decision {
        let elapsed = self.roll(counts, now);
        let w = u128::from(self.window);
        let left = w - u128::from(elapsed);
        let previous = u128::from(counts.previous);
        let current = u128::from(counts.current);
        let limit = u128::from(self.limit);
        // estimate = previous × left / w + current, in units of 1/w.
        let weighted = previous * left + current * w;
        let to_window_end = self.window - elapsed;
        if weighted + w > limit * w {
            return Decision {
                allowed: false,
                remaining: 0,
                reset: to_window_end,
                retry_after: self.retry_after(counts, elapsed),
                charged: now,
            };
        }
        counts.current += 1;
        let used = weighted + w;
        Decision {
            allowed: true,
            remaining: u64::try_from((limit * w - used) / w).unwrap_or(0),
            reset: to_window_end,
            retry_after: 0,
            charged: now,
        }
    }

    fn refund(&self, counts: &mut Counts, charged: Nanos) {
        let index = charged / self.window;
        if index == counts.window {
            counts.current = counts.current.saturating_sub(1);
        } else if index + 1 == counts.window {
            counts.previous = counts.previous.saturating_sub(1);
        }
    }

    fn policy(&self) -> Policy {
        Policy {
            quota: self.limit,
            window: self.window,
        }
    }
}

impl SlidingCounter {
    /// How long until one more request fits, `elapsed` into the window.
    fn retry_after(&self, counts: &Counts, elapsed: Nanos) -> Nanos {
        let w = u128::from(self.window);
        let e = u128::from(elapsed);
        let room = u128::from(self.limit) - 1;
        let previous = u128::from(counts.previous);
        let current = u128::from(counts.current);
        let wait = if current <= room && previous > 0 {
            // previous × (w - e - t) <= (room - current) × w
            let free_at = w - (room - current) * w / previous;
            free_at.saturating_sub(e) + 1
        } else {
            // Only in the next window, where `current` becomes `previous`:
            // current × (w - e') <= room × w.
            let free_at = (room * w)
                .checked_div(current)
                .map_or(0, |share| w.saturating_sub(share));
            (w - e) + free_at + 1
        };
        u64::try_from(wait).unwrap_or(u64::MAX)
    }
}
