//! Leaky bucket: requests wait in a bounded queue per key and leave it one
//! every `interval`, so the backend sees a smooth stream.
//!
//! A request that finds the key idle goes at once. Otherwise it joins the
//! queue when there is room and its wait (at most the queue ahead of it
//! times the interval) is within `max_wait`; else it is refused at once,
//! with the time until the queue has room. While a key has waiters, one
//! releaser task wakes every interval and hands the slot to the first
//! waiter whose client is still there: a waiter whose client went away has
//! dropped its receiver and is skipped without using the slot, and a full
//! queue is purged of such waiters before it refuses anyone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::clock::{Clock, Nanos};
use super::{Algorithm, Policy};

/// A leaky bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakyBucket {
    /// Nanoseconds between two releases.
    pub interval: Nanos,
    /// Waiters a key may have.
    pub depth: u32,
    /// The longest a request may be made to wait.
    pub max_wait: Nanos,
}

/// The queue of one key.
#[derive(Default)]
pub struct Queue(Mutex<Waiting>);

#[derive(Default)]
struct Waiting {
    /// The earliest time the next request may leave.
    next: Nanos,
    waiters: VecDeque<oneshot::Sender<()>>,
    /// Whether a releaser task serves this queue.
    releasing: bool,
}

/// What a request got from the bucket.
pub enum Admission {
    /// Go now.
    Now,
    /// Wait for the signal; an error means the node is shutting down.
    Wait {
        /// Fires when the request's turn comes.
        turn: oneshot::Receiver<()>,
        /// The longest the wait can be.
        at_most: Nanos,
    },
    /// No room: refused, with the time until there could be.
    Full {
        /// Nanoseconds until a request could be queued.
        retry_after: Nanos,
        /// Waiters ahead.
        waiting: u32,
    },
}

impl Algorithm for LeakyBucket {
    type State = Arc<Queue>;

    fn fresh(&self) -> Arc<Queue> {
        Arc::default()
    }

    fn is_idle(&self, queue: &Arc<Queue>, now: Nanos) -> bool {
        let waiting = queue.lock();
        waiting.waiters.is_empty() && !waiting.releasing && waiting.next <= now
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a bucket's releasers run.
#[derive(Clone)]
pub struct Runtime {
    /// The clock the bucket reads.
    pub clock: Clock,
    /// Tracks releaser tasks.
    pub tasks: TaskTracker,
    /// Stops releasers (waiters then get an error).
    pub shutdown: CancellationToken,
}

impl LeakyBucket {
    /// The bucket's `RateLimit-Policy`: `depth` requests waiting, drained in
    /// `depth × interval`.
    pub fn policy(&self) -> Policy {
        Policy {
            quota: u64::from(self.depth),
            window: self.interval.saturating_mul(u64::from(self.depth)),
        }
    }

    /// Admits a request on `queue` at `now`.
    pub fn admit(&self, queue: &Arc<Queue>, now: Nanos, runtime: &Runtime) -> Admission {
        let mut waiting = queue.lock();
        if waiting.waiters.is_empty() && !waiting.releasing && waiting.next <= now {
            waiting.next = now.saturating_add(self.interval);
            return Admission::Now;
        }
        let wait_for = |waiting: &Waiting| {
            waiting
                .next
                .saturating_sub(now)
                .saturating_add(self.interval.saturating_mul(waiting.waiters.len() as u64))
        };
        let mut wait = wait_for(&waiting);
        if waiting.waiters.len() >= self.depth as usize || wait > self.max_wait {
            waiting.waiters.retain(|waiter| !waiter.is_closed());
            wait = wait_for(&waiting);
        }
        if waiting.waiters.len() >= self.depth as usize || wait > self.max_wait {
            let over = wait.saturating_sub(self.max_wait);
            let full = (waiting.waiters.len() + 1).saturating_sub(self.depth as usize) as u64;
            return Admission::Full {
                retry_after: over
                    .max(self.interval.saturating_mul(full))
                    .max(self.interval),
                waiting: waiting.waiters.len() as u32,
            };
        }
        let (tx, rx) = oneshot::channel();
        waiting.waiters.push_back(tx);
        if !waiting.releasing {
            waiting.releasing = true;
            let releaser = release(self.interval, queue.clone(), runtime.clone());
            runtime
                .tasks
                .spawn(releaser.instrument(tracing::debug_span!("leaky_bucket_releaser")));
        }
        Admission::Wait {
            turn: rx,
            at_most: wait,
        }
    }
}

/// Hands out one slot per `interval` while `queue` has waiters.
async fn release(interval: Nanos, queue: Arc<Queue>, runtime: Runtime) {
    loop {
        let at = {
            let mut waiting = queue.lock();
            if waiting.waiters.is_empty() {
                waiting.releasing = false;
                return;
            }
            waiting.next.max(runtime.clock.now())
        };
        tokio::select! {
            () = tokio::time::sleep_until(runtime.clock.instant(at)) => {}
            () = runtime.shutdown.cancelled() => {
                let mut waiting = queue.lock();
                waiting.waiters.clear();
                waiting.releasing = false;
                return;
            }
        }
        let mut waiting = queue.lock();
        while let Some(waiter) = waiting.waiters.pop_front() {
            if waiter.send(()).is_ok() {
                waiting.next = at.saturating_add(interval);
                break;
            }
        }
    }
}
