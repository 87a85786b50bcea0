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
//!
//! Polling the sleep registers the task's waker with it anew, each time:
//! four atomic operations (a lock taken and released, the new waker
//! cloned, the old one dropped), about 20 ns, for a waker that is usually
//! the one already there. A [`Deadline`] remembers which waker its armed
//! sleep holds, by identity, and a poll with the same waker only checks
//! that the sleep has not fired. The identity cannot be taken over by
//! another task: the sleep holds that waker, and so keeps its task alive,
//! until it fires, and a fired sleep is polled again.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

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
        // The waker the armed sleep holds, if it was polled since it was
        // last armed.
        holds: Option<WakerId>,
    }
}

/// A waker's identity, as [`Waker::will_wake`] compares it, without a
/// reference (which would be an atomic count to keep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WakerId {
    data: usize,
    vtable: usize,
}

impl WakerId {
    fn of(waker: &Waker) -> Self {
        Self {
            data: waker.data() as usize,
            vtable: std::ptr::from_ref(waker.vtable()) as usize,
        }
    }
}

impl Deadline {
    /// A deadline at `due`.
    pub(crate) fn new(due: Instant) -> Self {
        Self {
            sleep: tokio::time::sleep_until(due),
            due,
            holds: None,
        }
    }

    /// Moves the deadline to `due`.
    pub(crate) fn set(self: Pin<&mut Self>, due: Instant) {
        let this = self.project();
        if due < this.sleep.deadline() {
            this.sleep.reset(due);
            *this.holds = None;
        }
        *this.due = due;
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let waker = WakerId::of(cx.waker());
        if *this.holds == Some(waker) && !this.sleep.is_elapsed() {
            return Poll::Pending;
        }
        while this.sleep.as_mut().poll(cx).is_ready() {
            if this.sleep.deadline() >= *this.due {
                *this.holds = None;
                return Poll::Ready(());
            }
            this.sleep.as_mut().reset(*this.due);
        }
        *this.holds = Some(waker);
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    use super::*;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A counting waker and its count.
    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        (count.clone(), Waker::from(count))
    }

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

    #[tokio::test(start_paused = true)]
    async fn a_deadline_polled_again_by_the_same_waker_still_wakes_it() {
        let start = Instant::now();
        let deadline = Deadline::new(start + ms(100));
        tokio::pin!(deadline);
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert!(deadline.as_mut().poll(&mut cx).is_pending());
        // The sleep holds this waker: these polls only look.
        assert!(deadline.as_mut().poll(&mut cx).is_pending());
        deadline.as_mut().set(start + ms(150));
        assert!(deadline.as_mut().poll(&mut cx).is_pending());
        // The sleep fires at its first arming and wakes the task, which
        // finds the deadline moved and arms the sleep again.
        tokio::time::advance(ms(100)).await;
        assert_eq!(count.get(), 1);
        assert!(deadline.as_mut().poll(&mut cx).is_pending());
        assert!(deadline.as_mut().poll(&mut cx).is_pending());
        tokio::time::advance(ms(50)).await;
        assert_eq!(count.get(), 2);
        assert!(deadline.as_mut().poll(&mut cx).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_polled_by_another_waker_wakes_that_one() {
        let start = Instant::now();
        let deadline = Deadline::new(start + ms(100));
        tokio::pin!(deadline);
        let (first, first_waker) = counting();
        let (second, second_waker) = counting();
        assert!(
            deadline
                .as_mut()
                .poll(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        // The connection went to another task (a pooled upstream
        // connection does): the sleep must hold the new waker.
        assert!(
            deadline
                .as_mut()
                .poll(&mut Context::from_waker(&second_waker))
                .is_pending()
        );
        tokio::time::advance(ms(100)).await;
        assert_eq!((first.get(), second.get()), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_earlier_after_a_poll_wakes_at_the_earlier_time() {
        let start = Instant::now();
        let deadline = Deadline::new(start + ms(500));
        tokio::pin!(deadline);
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert!(deadline.as_mut().poll(&mut cx).is_pending());
        deadline.as_mut().set(start + ms(20));
        assert!(deadline.as_mut().poll(&mut cx).is_pending());
        tokio::time::advance(ms(20)).await;
        assert_eq!(count.get(), 1);
        assert!(deadline.as_mut().poll(&mut cx).is_ready());
    }
}
