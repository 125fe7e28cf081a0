//! Small helpers around `std::sync`.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning: every critical section in this crate
/// leaves its data consistent before it can panic (none calls out to user
/// code except the progress gate, whose data is a plain flag).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
