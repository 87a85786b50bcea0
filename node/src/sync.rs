//! A mutex's guard, whether or not a holder panicked.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking it over from a holder that panicked: the node's
/// mutexes guard state that is valid between any two statements, so a
/// panic while one was held cannot have broken it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
