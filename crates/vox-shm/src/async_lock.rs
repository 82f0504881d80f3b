//! A small async mutex for the link's producer position.
//!
//! `tokio::sync::Mutex` takes an internal lock on every release; the producer
//! is locked and unlocked once per message, so that cost shows up in
//! streaming. This is the classic three-state futex mutex (Drepper, "Futexes
//! are tricky") with a `Notify` as the futex: lock and unlock are one atomic
//! operation each when uncontended.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::pin::pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

const UNLOCKED: u8 = 0;
const LOCKED: u8 = 1;
/// Locked, and somebody may be waiting: unlock must notify.
const CONTENDED: u8 = 2;

/// An async mutex whose guard owns an `Arc` of it.
pub(crate) struct AsyncLock<T> {
    state: AtomicU8,
    waiters: Notify,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through a guard, and at most one guard
// exists at a time (the state machine below); T moves between threads with it.
unsafe impl<T: Send> Send for AsyncLock<T> {}
// SAFETY: as above: shared access never yields two guards at once.
unsafe impl<T: Send> Sync for AsyncLock<T> {}

impl<T> AsyncLock<T> {
    pub(crate) fn new(value: T) -> Self {
        AsyncLock { state: AtomicU8::new(UNLOCKED), waiters: Notify::new(), value: UnsafeCell::new(value) }
    }

    /// Waits for the lock.
    pub(crate) async fn lock_owned(self: Arc<Self>) -> AsyncLockGuard<T> {
        // Acquire on success: pairs with the Release in `unlock`, so the
        // previous holder's writes to the value are visible.
        if self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return AsyncLockGuard { lock: self };
        }
        loop {
            {
                let mut notified = pin!(self.waiters.notified());
                // Register before marking the lock contended, so an unlock after
                // our swap always finds us (or leaves a permit for us).
                notified.as_mut().enable();
                // After a wait we re-acquire as CONTENDED, never LOCKED: other
                // waiters may still be queued and the next unlock must wake one.
                if self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
                    notified.await;
                    continue;
                }
            }
            return AsyncLockGuard { lock: self };
        }
    }

    /// Takes the lock if it is free.
    pub(crate) fn try_lock(self: &Arc<Self>) -> Option<AsyncLockGuard<T>> {
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| AsyncLockGuard { lock: self.clone() })
    }

    fn unlock(&self) {
        // Release: pairs with the Acquire of the next `lock_owned`.
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            self.waiters.notify_one();
        }
    }
}

/// Exclusive access to the value; unlocks on drop.
pub(crate) struct AsyncLockGuard<T> {
    lock: Arc<AsyncLock<T>>,
}

impl<T> Deref for AsyncLockGuard<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only one (the lock's state machine), so no
        // `&mut` to the value exists elsewhere while it lives.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for AsyncLockGuard<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only borrow.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for AsyncLockGuard<T> {
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_tasks_take_turns_without_losing_a_wakeup() {
        let lock = Arc::new(AsyncLock::new(0u64));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let lock = lock.clone();
                tokio::spawn(async move {
                    for _ in 0..5_000 {
                        let mut g = lock.clone().lock_owned().await;
                        let v = *g;
                        tokio::task::yield_now().await; // hold it across a yield
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t).await.expect("no task may hang").unwrap();
        }
        assert_eq!(*lock.clone().lock_owned().await, 40_000);
        let g = lock.try_lock().unwrap();
        assert!(lock.try_lock().is_none());
        drop(g);
        assert!(lock.try_lock().is_some());
    }
}
