//! Wake on demand (spec C1): ring the doorbell only when the other side said
//! it is about to sleep.
//!
//! The pairing is the classic store-buffering pattern with SeqCst fences:
//!
//! ```text
//! waiter                               publisher
//! flag = 1            (announce)       publish (Release store of write/read)
//! fence(SeqCst)                        fence(SeqCst)
//! re-check the ring   ┐                load flag   (should_wake)
//! sleep if still idle ┘                ring the doorbell if it was 1
//! ```
//!
//! The two fences are totally ordered, so either the publisher's flag load sees
//! the waiter's `1` (and rings), or the waiter's re-check sees the publication
//! (and does not sleep). No schedule leaves the waiter asleep with work pending;
//! `tests/loom.rs` checks this with the real ring.
//!
//! The flags live in the ring header (`consumer_waiting` on the consumer's
//! cache line, `producer_waiting` on the producer's), in bytes vox-shm 0.3.1
//! never reads.

use crate::sync::{fence, AtomicU32, Ordering};

/// Waiter: announce the intention to sleep. Follow with a re-check of the
/// condition and sleep only if it still holds.
pub fn announce_waiting(flag: &AtomicU32) {
    flag.store(1, Ordering::Relaxed);
    // SeqCst: pairs with the fence in `should_wake` (see the module docs).
    fence(Ordering::SeqCst);
}

/// Waiter: woke up or found work; a publisher need not ring any more.
pub fn stop_waiting(flag: &AtomicU32) {
    flag.store(0, Ordering::Relaxed);
}

/// Publisher: after publishing (a Release store), should the other side be
/// woken?
pub fn should_wake(flag: &AtomicU32) -> bool {
    // SeqCst: pairs with the fence in `announce_waiting`.
    fence(Ordering::SeqCst);
    flag.load(Ordering::Relaxed) != 0
}
