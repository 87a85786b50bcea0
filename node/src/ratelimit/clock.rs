//! The one clock every algorithm reads.
//!
//! Time is nanoseconds since the Unix epoch ([`Nanos`]): calendar windows
//! (a day from 00:00 UTC, a month) need wall time, and the global scope
//! compares windows across nodes. The clock reads the wall once, at start,
//! and advances it with a monotonic clock, so it never goes backwards when
//! the system clock is stepped. Skew between nodes is the skew of their
//! wall clocks at start.
//!
//! A node's clock ([`Clock::system`]) advances with the CPU's invariant
//! time-stamp counter through `quanta` (a few nanoseconds per read, where
//! `clock_gettime` costs several times that; quanta falls back to the OS
//! clock when the counter is not usable). A test's clock
//! ([`Clock::starting_at`]) advances with `tokio::time`, so tests that
//! pause tokio's time get virtual time everywhere.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Nanoseconds since 1970-01-01T00:00:00Z.
pub type Nanos = u64;

/// Nanoseconds per second.
pub const SECOND: Nanos = 1_000_000_000;

/// Wall time, advanced by a monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: Nanos,
    source: Source,
}

#[derive(Debug, Clone, Copy)]
enum Source {
    /// The time-stamp counter, for nodes.
    Counter(quanta::Instant),
    /// tokio's clock, which tests can pause and advance.
    Tokio(Instant),
}

impl Clock {
    /// The system's wall time, from now on advanced monotonically.
    pub fn system() -> Self {
        let start = quanta::Instant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            wall,
            source: Source::Counter(start),
        }
    }

    /// A clock that reads `wall` now and follows tokio's (pausable) time.
    pub fn starting_at(wall: Nanos) -> Self {
        Self {
            wall,
            source: Source::Tokio(Instant::now()),
        }
    }

    /// The current time.
    #[inline]
    pub fn now(&self) -> Nanos {
        let elapsed = match self.source {
            Source::Counter(start) => quanta::Instant::now().duration_since(start),
            Source::Tokio(start) => start.elapsed(),
        };
        self.wall
            .saturating_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The tokio instant at which this clock reads `at` (for sleeping).
    pub fn instant(&self, at: Nanos) -> Instant {
        match self.source {
            Source::Counter(_) => {
                Instant::now() + Duration::from_nanos(at.saturating_sub(self.now()))
            }
            Source::Tokio(start) => start + Duration::from_nanos(at.saturating_sub(self.wall)),
        }
    }
}

/// Whole seconds, rounded up: what `Retry-After` and `RateLimit` carry.
pub fn ceil_seconds(nanos: Nanos) -> u64 {
    nanos.div_ceil(SECOND)
}
