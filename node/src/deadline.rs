//! A timer for a deadline that moves later at nearly every use and almost
//! never passes: a connection's wait for its next request head, an
//! upstream exchange's timeout.
//!
//! Moving tokio's [`Sleep`] costs a conversion of the instant to the timer
//! wheel's ticks and an atomic update, about 130 instructions, and a
//! proxied request moved two of them (docs/benchmarks.md). As nginx does
//! with its timers (`NGX_TIMER_LAZY_DELAY`), a [`Deadline`] moved later
//! leaves its sleep armed for the earlier time and only remembers the new
//! one: when the sleep fires, it finds the deadline moved on and arms
//! itself for it. The sleep is thus moved about once per timeout rather
//! than once per request. A deadline moved earlier moves the sleep at once,
//! so a deadline never passes unnoticed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

pin_project! {
    /// Completes when the instant last given to [`Deadline::set`] has
    /// passed; it may wake its task earlier, once per move, and then waits on.
    #[derive(Debug)]
    pub(crate) struct Deadline {
        #[pin]
        sleep: Sleep,
        // The deadline; the sleep is armed for it or for an earlier time.
        due: Instant,
    }
}

impl Deadline {
    /// A deadline at `due`.
    pub(crate) fn new(due: Instant) -> Self {
        Self {
            sleep: tokio::time::sleep_until(due),
            due,
        }
    }

    /// Moves the deadline to `due`.
    pub(crate) fn set(self: Pin<&mut Self>, due: Instant) {
        let this = self.project();
        if due < this.sleep.deadline() {
            this.sleep.reset(due);
        }
        *this.due = due;
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        while this.sleep.as_mut().poll(cx).is_ready() {
            if this.sleep.deadline() >= *this.due {
                return Poll::Ready(());
            }
            this.sleep.as_mut().reset(*this.due);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Polls `deadline` once.
    fn passed(deadline: Pin<&mut Deadline>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        deadline.poll(&mut cx).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_passes_at_its_time() {
        let start = Instant::now();
        let deadline = Deadline::new(start + ms(100));
        tokio::pin!(deadline);
        deadline.as_mut().await;
        assert_eq!(Instant::now() - start, ms(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_later_passes_at_the_later_time_only() {
        let start = Instant::now();
        let deadline = Deadline::new(start + ms(100));
        tokio::pin!(deadline);
        deadline.as_mut().set(start + ms(250));
        assert!(!passed(deadline.as_mut()));
        // The sleep stays armed for the first time.
        assert_eq!(deadline.sleep.deadline(), start + ms(100));
        deadline.as_mut().await;
        assert_eq!(Instant::now() - start, ms(250));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_later_many_times_keeps_its_first_arming() {
        let start = Instant::now();
        let deadline = Deadline::new(start + ms(100));
        tokio::pin!(deadline);
        for step in 1..=50 {
            tokio::time::advance(ms(1)).await;
            deadline.as_mut().set(start + ms(100 + step));
            assert!(!passed(deadline.as_mut()));
        }
        assert_eq!(deadline.sleep.deadline(), start + ms(100));
        deadline.as_mut().await;
        assert_eq!(Instant::now() - start, ms(150));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_earlier_passes_at_the_earlier_time() {
        let start = Instant::now();
        let deadline = Deadline::new(start + ms(500));
        tokio::pin!(deadline);
        assert!(!passed(deadline.as_mut()));
        deadline.as_mut().set(start + ms(20));
        deadline.as_mut().await;
        assert_eq!(Instant::now() - start, ms(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_set_after_it_passed_waits_again() {
        let start = Instant::now();
        let deadline = Deadline::new(start + ms(10));
        tokio::pin!(deadline);
        deadline.as_mut().await;
        deadline.as_mut().set(start + ms(40));
        assert!(!passed(deadline.as_mut()));
        deadline.as_mut().await;
        assert_eq!(Instant::now() - start, ms(40));
        // A deadline already past completes at once.
        deadline.as_mut().set(start + ms(30));
        assert!(passed(deadline.as_mut()));
    }
}
