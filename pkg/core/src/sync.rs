//! Locks that outlive a panic. What rustlayer's locks guard stays consistent when a
//! holder panics (a metadata transaction rolls back on drop; sets, queues and flags
//! change in one step), so a poisoned lock is used as it is instead of failing every
//! later request.

use std::sync::{Condvar, Mutex, MutexGuard};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`Condvar::wait`], keeping the guard of a poisoned lock.
pub fn wait<'a, T>(cond: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cond.wait(guard)
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
