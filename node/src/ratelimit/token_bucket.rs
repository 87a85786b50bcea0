//! Token bucket: `rate` + `burst`. Kept as GCRA (the "virtual scheduling"
//! form of the same algorithm): one timestamp per key, the theoretical
//! arrival time of the next request, instead of a token count and a refill
//! time. A full bucket is a TAT at or before now; each request pushes the
//! TAT one interval later; a request is refused when that would put the TAT
//! more than `burst` intervals ahead of now.

use super::clock::Nanos;
use super::{Algorithm, Counting, Decision, Policy};

/// A token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Nanoseconds per token.
    pub(super) interval: Nanos,
    /// `burst × interval`: how far ahead of now the TAT may run.
    pub(super) capacity: Nanos,
    pub(super) burst: u64,
}

impl TokenBucket {
    /// `burst` tokens, one more every `interval`.
    pub fn new(interval: Nanos, burst: u64) -> Self {
        let interval = interval.max(1);
        let burst = burst.max(1);
        Self {
            interval,
            capacity: interval.saturating_mul(burst),
            burst,
        }
    }
}

impl Algorithm for TokenBucket {
    /// The theoretical arrival time (0: never used, a full bucket).
    type State = Nanos;

    fn fresh(&self) -> Nanos {
        0
    }

    fn is_idle(&self, tat: &Nanos, now: Nanos) -> bool {
        *tat <= now
    }
}

impl Counting for TokenBucket {
    #[inline]
    fn acquire(&self, tat: &mut Nanos, now: Nanos) -> Decision {
        let next = (*tat).max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead > self.capacity {
            return Decision {
                allowed: false,
                remaining: 0,
                reset: (*tat).saturating_sub(now),
                retry_after: ahead - self.capacity,
                charged: now,
            };
        }
        *tat = next;
        Decision {
            allowed: true,
            remaining: (self.capacity - ahead) / self.interval,
            reset: ahead,
            retry_after: 0,
            charged: now,
        }
    }

    fn refund(&self, tat: &mut Nanos, _charged: Nanos) {
        *tat = tat.saturating_sub(self.interval);
    }

    fn policy(&self) -> Policy {
        Policy {
            quota: self.burst,
            window: self.capacity,
        }
    }
}
