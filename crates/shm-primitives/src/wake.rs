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
//! sleep if still idle ┘                if it was 1: claim it (CAS to 0), ring
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
///
/// A `true` answer also claims the wake-up: the flag is reset to 0, so only
/// the first publication after an announcement rings the doorbell. The
/// signal it sends stays pending until the waiter drains it, so later
/// publications need none of their own; without the claim, a producer
/// streaming while the consumer is being woken rang once per commit for the
/// whole wake-up latency (hundreds of system calls per sleep). A waiter that
/// found work on its own and sleeps again announces again, with a fresh fence.
pub fn should_wake(flag: &AtomicU32) -> bool {
    // SeqCst: pairs with the fence in `announce_waiting`.
    fence(Ordering::SeqCst);
    // The plain load keeps the common case (nobody waiting) free of a locked
    // instruction. The claim is one compare-exchange: if the waiter stored 0
    // in between (`stop_waiting`), it is awake and needs no signal. (A swap
    // would mean the same; loom 0.7 mis-orders a later load after a swap,
    // tokio-rs/loom#254, so the model could not check it.)
    let seen = flag.load(Ordering::Relaxed);
    seen != 0 && flag.compare_exchange(seen, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn one_announcement_is_claimed_by_one_publisher() {
        let flag = AtomicU32::new(0);
        assert!(!should_wake(&flag), "nobody waits");
        announce_waiting(&flag);
        assert!(should_wake(&flag), "the first publication rings");
        assert!(!should_wake(&flag), "later ones ride on the pending signal");
        announce_waiting(&flag);
        assert!(should_wake(&flag), "a new announcement is claimed again");
        announce_waiting(&flag);
        stop_waiting(&flag);
        assert!(!should_wake(&flag), "a waiter that woke by itself needs no signal");
    }
}
