//! A listener's shutdown as its connections see it.
//!
//! A kept-alive connection waits for its next request once per request, and
//! each wait has to end when the listener drains. A `CancellationToken`
//! wait would take a place in a `Notify`'s list (a lock, a link and an
//! unlink) per request, and its every poll takes the lock again. Here a
//! connection's first wait puts the task's waker in a slot of the
//! listener's list ([`Stopping::watch`] itself allocates nothing and takes
//! no lock: a connection that closes before it waits costs nothing). A
//! later wait with another waker replaces it, under the lock, and reads the
//! phase. [`Stopping::drain`] and [`Stopping::force`] set the phase and
//! wake every slot.
//!
//! A connection's task polls its watch each time it runs (two or three
//! times a request), always with the same waker. While the listener serves,
//! a poll that finds the phase unchanged and the waker it stored last time
//! stores nothing: one plain load instead of the lock.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use slab::Slab;

const SERVING: u8 = 0;
const DRAINING: u8 = 1;
const FORCED: u8 = 2;

/// A [`Watch`]'s key before its first wait.
const NO_SLOT: usize = usize::MAX;

/// The shutdown phase of one listener and the wakers of its connections.
#[derive(Default)]
pub(super) struct Stopping {
    phase: AtomicU8,
    slots: Mutex<Slab<Waker>>,
}

impl Stopping {
    /// A connection's view; its first wait takes a slot, which it keeps
    /// until it is dropped.
    pub(super) fn watch(self: &Arc<Self>) -> Watch {
        Watch {
            stopping: self.clone(),
            key: AtomicUsize::new(NO_SLOT),
            stored: Stored::default(),
        }
    }

    /// Asks every connection to finish what it has in flight and close.
    pub(super) fn drain(&self) {
        self.enter(DRAINING);
    }

    /// Closes every connection at once.
    pub(super) fn force(&self) {
        self.enter(FORCED);
    }

    fn enter(&self, phase: u8) {
        // SeqCst pairs with `Watch::poll_phase`: a connection either reads
        // the new phase or registered its waker before the wake-up below.
        self.phase.fetch_max(phase, Ordering::SeqCst);
        for (_, waker) in self.lock().iter() {
            waker.wake_by_ref();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Waker>> {
        crate::sync::lock(&self.slots)
    }
}

/// One connection's registration with its listener's [`Stopping`].
pub(super) struct Watch {
    stopping: Arc<Stopping>,
    /// The slot in `stopping`'s list, [`NO_SLOT`] before the first wait.
    /// Atomic only to make the watch shareable between the connection's
    /// futures: only its own task reads and writes it.
    key: AtomicUsize,
    /// Which waker the slot was last given.
    stored: Stored,
}

impl Watch {
    /// Whether the listener is draining (or past it).
    pub(super) fn is_draining(&self) -> bool {
        self.stopping.phase.load(Ordering::Acquire) >= DRAINING
    }

    /// Completes once the listener drains (or is forced).
    pub(super) async fn draining(&self) {
        poll_fn(|cx| self.poll_draining(cx)).await;
    }

    /// [`Self::draining`] as a poll.
    pub(super) fn poll_draining(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_phase(cx, DRAINING)
    }

    /// Completes once the grace period is over.
    pub(super) async fn forced(&self) {
        poll_fn(|cx| self.poll_phase(cx, FORCED)).await;
    }

    fn poll_phase(&self, cx: &mut Context<'_>, phase: u8) -> Poll<()> {
        let now = self.stopping.phase.load(Ordering::SeqCst);
        if now >= phase {
            return Poll::Ready(());
        }
        // Still serving, so no wake-up has been spent yet: the slot holds
        // this waker, and `enter` will find it there.
        if now == SERVING && self.stored.is(cx.waker()) {
            return Poll::Pending;
        }
        {
            let mut slots = self.stopping.lock();
            match self.key.load(Ordering::Relaxed) {
                NO_SLOT => {
                    let key = slots.insert(cx.waker().clone());
                    self.key.store(key, Ordering::Relaxed);
                }
                key => slots[key].clone_from(cx.waker()),
            }
        }
        self.stored.set(cx.waker());
        if self.stopping.phase.load(Ordering::SeqCst) >= phase {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A waker's identity (what `Waker::will_wake` compares), kept to tell
/// whether a poll's waker is the one already in the slot. Only the
/// connection's own task reads and writes it; the atomics are there to make
/// [`Watch`] shareable between that task's futures, not for ordering.
#[derive(Default)]
struct Stored {
    data: AtomicUsize,
    vtable: AtomicUsize,
}

impl Stored {
    fn is(&self, waker: &Waker) -> bool {
        let (data, vtable) = identity(waker);
        self.data.load(Ordering::Relaxed) == data && self.vtable.load(Ordering::Relaxed) == vtable
    }

    fn set(&self, waker: &Waker) {
        let (data, vtable) = identity(waker);
        self.data.store(data, Ordering::Relaxed);
        self.vtable.store(vtable, Ordering::Relaxed);
    }
}

fn identity(waker: &Waker) -> (usize, usize) {
    (
        waker.data().addr(),
        std::ptr::from_ref(waker.vtable()).addr(),
    )
}

impl Drop for Watch {
    fn drop(&mut self) {
        let key = *self.key.get_mut();
        if key != NO_SLOT {
            self.stopping.lock().remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waits_end_in_their_phase() {
        let stopping = Arc::new(Stopping::default());
        let watch = stopping.watch();
        let draining = tokio::spawn({
            let watch = stopping.watch();
            async move { watch.draining().await }
        });
        let forced = tokio::spawn({
            let watch = stopping.watch();
            async move { watch.forced().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!draining.is_finished() && !forced.is_finished());
        assert!(!watch.is_draining());

        stopping.drain();
        tokio::time::timeout(Duration::from_secs(5), draining)
            .await
            .expect("a drain ends a draining wait")
            .unwrap();
        assert!(watch.is_draining());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!forced.is_finished(), "a drain does not force");

        stopping.force();
        tokio::time::timeout(Duration::from_secs(5), forced)
            .await
            .expect("forcing ends a forced wait")
            .unwrap();
        // Once forced, every wait ends at once, a draining one too.
        tokio::time::timeout(Duration::from_secs(5), watch.draining())
            .await
            .unwrap();
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waker_stored_once_is_woken_at_each_phase() {
        let stopping = Arc::new(Stopping::default());
        let watch = stopping.watch();
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let woken = || count.0.load(Ordering::SeqCst);

        // Polled again and again with the same waker, as a connection's
        // task polls it: the first poll stores it, the others find it.
        for _ in 0..3 {
            assert!(watch.poll_phase(&mut cx, DRAINING).is_pending());
            assert!(watch.poll_phase(&mut cx, FORCED).is_pending());
        }
        assert_eq!(woken(), 0);
        stopping.drain();
        assert_eq!(woken(), 1, "the stored waker is woken by the drain");
        assert!(watch.poll_phase(&mut cx, DRAINING).is_ready());

        // Past serving, a wait stores its waker again rather than trust
        // the last one: the wait for the end of the grace period is still
        // woken.
        assert!(watch.poll_phase(&mut cx, FORCED).is_pending());
        assert!(watch.poll_phase(&mut cx, FORCED).is_pending());
        stopping.force();
        assert_eq!(woken(), 2, "the waker is woken by force");
        assert!(watch.poll_phase(&mut cx, FORCED).is_ready());
    }

    #[test]
    fn another_waker_replaces_the_stored_one() {
        let stopping = Arc::new(Stopping::default());
        let watch = stopping.watch();
        let (first, second) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let first_waker = Waker::from(first.clone());
        let second_waker = Waker::from(second.clone());
        assert!(
            watch
                .poll_phase(&mut Context::from_waker(&first_waker), DRAINING)
                .is_pending()
        );
        assert!(
            watch
                .poll_phase(&mut Context::from_waker(&second_waker), DRAINING)
                .is_pending()
        );
        stopping.drain();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(
            second.0.load(Ordering::SeqCst),
            1,
            "the last poll's waker is woken"
        );
    }

    #[test]
    fn a_slot_is_taken_at_the_first_wait_and_left_at_the_close() {
        let stopping = Arc::new(Stopping::default());
        let watches: Vec<_> = (0..3).map(|_| stopping.watch()).collect();
        assert!(stopping.lock().is_empty(), "no wait yet, no slot");
        let waker = Waker::from(Arc::new(Count::default()));
        let mut cx = Context::from_waker(&waker);
        for watch in &watches {
            assert!(watch.poll_phase(&mut cx, DRAINING).is_pending());
            assert!(watch.poll_phase(&mut cx, FORCED).is_pending());
        }
        assert_eq!(stopping.lock().len(), 3, "one slot per connection");
        drop(watches);
        assert!(stopping.lock().is_empty());
    }
}
