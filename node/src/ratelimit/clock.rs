//! The one clock every algorithm reads.
//!
//! Time is nanoseconds since the Unix epoch ([`Nanos`]): calendar windows
//! (a day from 00:00 UTC, a month) need wall time, and the global scope
//! compares windows across nodes. The clock reads the wall once, at start,
//! and advances it with `tokio::time::Instant`, so it never goes backwards
//! when the system clock is stepped, and tests that pause tokio's time get
//! virtual time everywhere. Skew between nodes is the skew of their wall
//! clocks at start.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Nanoseconds since 1970-01-01T00:00:00Z.
pub type Nanos = u64;

/// Nanoseconds per second.
pub const SECOND: Nanos = 1_000_000_000;

/// Wall time, advanced by the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: Nanos,
    start: Instant,
}

impl Clock {
    /// The system's wall time, from now on advanced monotonically.
    pub fn system() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self::starting_at(wall)
    }

    /// A clock that reads `wall` now (tests pick a calendar moment).
    pub fn starting_at(wall: Nanos) -> Self {
        Self {
            wall,
            start: Instant::now(),
        }
    }

    /// The current time.
    #[inline]
    pub fn now(&self) -> Nanos {
        let elapsed = self.start.elapsed().as_nanos();
        self.wall
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    /// The monotonic instant at which this clock reads `at`.
    pub fn instant(&self, at: Nanos) -> Instant {
        self.start + Duration::from_nanos(at.saturating_sub(self.wall))
    }
}

/// Whole seconds, rounded up: what `Retry-After` and `RateLimit` carry.
pub fn ceil_seconds(nanos: Nanos) -> u64 {
    nanos.div_ceil(SECOND)
}
