//! Fixed window: `limit` per calendar-aligned window, for quotas. Windows
//! of a fixed length start at multiples of it since the Unix epoch (so
//! `1m`, `1h` and `1d` windows start on the minute, the hour and at 00:00
//! UTC); windows a whole number of weeks long start on a Monday; `month`
//! windows are calendar months in UTC. Each key keeps its window's index
//! and count: 16 bytes.
//!
//! A client can spend one window's `limit` just before a boundary and the
//! next window's just after it: `2 × limit` in a moment. That is the
//! algorithm's known price for exact, calendar-shaped quotas; the sliding
//! window counter avoids it.

use super::clock::{Nanos, SECOND};
use super::{Algorithm, Counting, Decision, Policy};
use crate::calendar::{civil_from_days, days_from_civil};

const DAY: Nanos = 86_400 * SECOND;
const WEEK: Nanos = 7 * DAY;
/// 1970-01-05, the first Monday after the epoch.
const FIRST_MONDAY: Nanos = 4 * DAY;

/// A window's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// A fixed length in nanoseconds.
    Fixed(Nanos),
    /// A calendar month in UTC.
    Month,
}

impl Window {
    /// The index of the window holding `now`, and when that window ends.
    pub fn locate(self, now: Nanos) -> (u64, Nanos) {
        match self {
            Window::Fixed(length) => {
                let offset = if length % WEEK == 0 { FIRST_MONDAY } else { 0 };
                let index = now.saturating_sub(offset) / length;
                (index, offset + (index + 1) * length)
            }
            Window::Month => {
                let (year, month, _) = civil_from_days((now / DAY) as i64);
                let index = (year * 12 + i64::from(month) - 1) as u64;
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                let end = days_from_civil(next_year, next_month, 1) as u64 * DAY;
                (index, end)
            }
        }
    }

    /// The window's length for the `RateLimit-Policy` header (a month
    /// counts as 30 days there).
    pub fn nominal(self) -> Nanos {
        match self {
            Window::Fixed(length) => length,
            Window::Month => 30 * DAY,
        }
    }
}

/// A fixed window's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedWindow {
    pub(super) limit: u64,
    pub(super) window: Window,
}

/// The count of one key in its window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    window: u64,
    count: u64,
}

impl Count {
    /// `count` requests in window `window` (a global limit's total over
    /// every node).
    pub(super) fn total(window: u64, count: u64) -> Self {
        Self { window, count }
    }
}

impl FixedWindow {
    /// `limit` requests per `window`.
    pub fn new(limit: u64, window: Window) -> Self {
        let window = match window {
            Window::Fixed(length) => Window::Fixed(length.max(1)),
            month => month,
        };
        Self {
            limit: limit.max(1),
            window,
        }
    }
}

impl Algorithm for FixedWindow {
    type State = Count;

    fn fresh(&self) -> Count {
        Count::default()
    }

    fn is_idle(&self, count: &Count, now: Nanos) -> bool {
        count.count == 0 || self.window.locate(now).0 != count.window
    }
}

impl Counting for FixedWindow {
    #[inline]
    fn acquire(&self, count: &mut Count, now: Nanos) -> Decision {
        let (index, end) = self.window.locate(now);
        if index != count.window {
            *count = Count {
                window: index,
                count: 0,
            };
        }
        let reset = end - now;
        if count.count >= self.limit {
            return Decision {
                allowed: false,
                remaining: 0,
                reset,
                retry_after: reset,
                charged: now,
            };
        }
        count.count += 1;
        Decision {
            allowed: true,
            remaining: self.limit - count.count,
            reset,
            retry_after: 0,
            charged: now,
        }
    }

    fn refund(&self, count: &mut Count, charged: Nanos) {
        if self.window.locate(charged).0 == count.window {
            count.count = count.count.saturating_sub(1);
        }
    }

    fn policy(&self) -> Policy {
        Policy {
            quota: self.limit,
            window: self.window.nominal(),
        }
    }
}

#[cfg(test)]
pub(super) fn date_nanos(year: i64, month: u32, day: u32) -> Nanos {
    days_from_civil(year, month, day) as u64 * DAY
}
