//! A listener's shutdown as its connections see it.
//!
//! A kept-alive connection waits for its next request once per request, and
//! each wait has to end when the listener drains. A `CancellationToken`
//! wait would take a place in a `Notify`'s list (a lock, a link and an
//! unlink) per request, and its every poll takes the lock again. Here a
//! connection registers one waker slot when it opens ([`Stopping::watch`]);
//! a wait then stores the task's waker in that slot (no allocation, no
//! lock) and reads the phase. [`Stopping::drain`] and [`Stopping::force`]
//! set the phase and wake every slot.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use slab::Slab;

// The phase starts at 0, serving.
const DRAINING: u8 = 1;
const FORCED: u8 = 2;

/// The shutdown phase of one listener and the wakers of its connections.
#[derive(Default)]
pub(super) struct Stopping {
    phase: AtomicU8,
    slots: Mutex<Slab<Arc<AtomicWaker>>>,
}

impl Stopping {
    /// A connection's view, registered until it is dropped.
    pub(super) fn watch(self: &Arc<Self>) -> Watch {
        let slot = Arc::new(AtomicWaker::new());
        let key = self.lock().insert(slot.clone());
        Watch {
            stopping: self.clone(),
            key,
            slot,
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
        for (_, slot) in self.lock().iter() {
            slot.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Arc<AtomicWaker>>> {
        // The slab stays consistent even if a holder panicked.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One connection's registration with its listener's [`Stopping`].
pub(super) struct Watch {
    stopping: Arc<Stopping>,
    key: usize,
    slot: Arc<AtomicWaker>,
}

impl Watch {
    /// Whether the listener is draining (or past it).
    pub(super) fn is_draining(&self) -> bool {
        self.stopping.phase.load(Ordering::Acquire) >= DRAINING
    }

    /// Completes once the listener drains (or is forced).
    pub(super) async fn draining(&self) {
        poll_fn(|cx| self.poll_phase(cx, DRAINING)).await;
    }

    /// Completes once the grace period is over.
    pub(super) async fn forced(&self) {
        poll_fn(|cx| self.poll_phase(cx, FORCED)).await;
    }

    fn poll_phase(&self, cx: &mut Context<'_>, phase: u8) -> Poll<()> {
        // The same task registers the same waker on every poll: after the
        // first, this is a compare and two atomic stores.
        self.slot.register(cx.waker());
        if self.stopping.phase.load(Ordering::SeqCst) >= phase {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stopping.lock().remove(self.key);
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

    #[test]
    fn a_closed_connection_leaves_no_slot() {
        let stopping = Arc::new(Stopping::default());
        let watches: Vec<_> = (0..3).map(|_| stopping.watch()).collect();
        assert_eq!(stopping.lock().len(), 3);
        drop(watches);
        assert!(stopping.lock().is_empty());
    }
}
