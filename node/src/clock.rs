//! The time, read once per poll of a connection's task.
//!
//! A proxied request wants the time at about eight places: its start, the
//! pool's checkout and in-flight bookkeeping, the upstream's latency, the
//! connection's return to the pool, its duration, the `Date` field, the
//! access log's timestamp and the start of the wait for the next head. Each
//! read is a `clock_gettime`, about 60 ns on this project's VMs, which
//! made the reads a sizeable part of the gateway's user time per request
//! (docs/benchmarks.md). Most of those places run in one poll of the
//! connection's task, microseconds apart.
//!
//! So, as nginx reads the time once per turn of its event loop, a
//! connection's task is polled through [`Polled`], and within that poll
//! [`now`] and [`wall`] read the clock the first time they are called and
//! give the same time after that. Outside such a poll (other tasks, other
//! threads) they read the clock every time: a time kept from an earlier
//! poll could be arbitrarily old. [`read`] always reads, for the start of
//! an interval that should not include the CPU time spent earlier in the
//! poll (an upstream's latency); later calls in the poll get its time.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::time::Instant;

thread_local! {
    static CACHE: Cache = const {
        Cache {
            polling: Cell::new(false),
            now: Cell::new(None),
            wall: Cell::new(None),
        }
    };
}

/// The times read in the current [`Polled`] poll on this thread.
struct Cache {
    /// A [`Polled`] future is being polled on this thread.
    polling: Cell<bool>,
    now: Cell<Option<Instant>>,
    wall: Cell<Option<SystemTime>>,
}

/// The monotonic time: read once per [`Polled`] poll.
pub(crate) fn now() -> Instant {
    cached(|cache| &cache.now, Instant::now)
}

/// The monotonic time, read now; the rest of a [`Polled`] poll gets it.
pub(crate) fn read() -> Instant {
    let now = Instant::now();
    CACHE.with(|cache| {
        if cache.polling.get() {
            cache.now.set(Some(now));
        }
    });
    now
}

/// The wall-clock time: read once per [`Polled`] poll.
pub(crate) fn wall() -> SystemTime {
    cached(|cache| &cache.wall, SystemTime::now)
}

/// The time in `slot` if this poll has read it, else `read()` (kept for
/// the rest of the poll when there is one).
fn cached<T: Copy>(slot: impl Fn(&Cache) -> &Cell<Option<T>>, read: fn() -> T) -> T {
    CACHE.with(|cache| match slot(cache).get() {
        Some(time) => time,
        None => {
            let time = read();
            if cache.polling.get() {
                slot(cache).set(Some(time));
            }
            time
        }
    })
}

pin_project_lite::pin_project! {
    /// A future whose every poll shares one reading of each clock.
    pub(crate) struct Polled<F> {
        #[pin]
        future: F,
    }
}

impl<F> Polled<F> {
    pub(crate) fn new(future: F) -> Self {
        Self { future }
    }
}

impl<F: Future> Future for Polled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _scope = Scope::enter();
        self.project().future.poll(cx)
    }
}

/// One poll's cache; leaving it (returning or unwinding) forgets the times.
struct Scope {
    /// A poll this one is nested in (a `Polled` inside a `Polled`).
    outer: bool,
}

impl Scope {
    fn enter() -> Self {
        CACHE.with(|cache| Self {
            outer: cache.polling.replace(true),
        })
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        CACHE.with(|cache| {
            cache.polling.set(self.outer);
            if !self.outer {
                cache.now.set(None);
                cache.wall.set(None);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pause() {
        std::thread::sleep(Duration::from_millis(2));
    }

    #[test]
    fn outside_a_poll_every_call_reads_the_clock() {
        let (now, wall) = (now(), wall());
        pause();
        assert!(super::now() > now);
        assert!(super::wall() > wall);
    }

    #[tokio::test]
    async fn a_poll_reads_each_clock_once() {
        let times = Polled::new(async {
            let (first, wall) = (now(), wall());
            pause();
            let (again, wall_again) = (now(), super::wall());
            let read = read();
            pause();
            (first, again, wall, wall_again, read, now())
        })
        .await;
        let (first, again, wall, wall_again, read, after_read) = times;
        assert_eq!(first, again, "one reading per poll");
        assert_eq!(wall, wall_again);
        assert!(read > first, "`read` reads the clock");
        assert_eq!(after_read, read, "and the rest of the poll gets its time");
    }

    #[tokio::test]
    async fn each_poll_reads_anew() {
        let (before, after) = Polled::new(async {
            let before = now();
            // Pending once: the next poll is a new one.
            tokio::task::yield_now().await;
            (before, now())
        })
        .await;
        assert!(after > before);
        // Back outside: not the poll's time either.
        pause();
        assert!(now() > after);
    }

    #[test]
    fn a_panicking_poll_leaves_no_time_behind() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut polled = std::pin::pin!(Polled::new(async {
                now();
                panic!("in the poll");
            }));
            let _ = polled.as_mut().poll(&mut cx);
        }));
        assert!(caught.is_err());
        let stale = now();
        pause();
        assert!(now() > stale, "the cache is gone with the poll");
    }

    #[test]
    fn a_nested_poll_keeps_the_outer_reading() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut outer = std::pin::pin!(Polled::new(async {
            let first = now();
            pause();
            let inner = Polled::new(async { now() }).await;
            pause();
            (first, inner, now())
        }));
        let Poll::Ready((first, inner, last)) = outer.as_mut().poll(&mut cx) else {
            panic!("nothing in it waits");
        };
        assert_eq!(first, inner);
        assert_eq!(first, last, "the inner poll's end keeps the outer's time");
    }
}
