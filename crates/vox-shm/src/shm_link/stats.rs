//! The link's event counters and their public snapshot.

use crate::mmap_registry::MmapRegistry;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(super) struct Counters { $(pub(super) $name: AtomicU64,)* }

        /// Counters of one link (both halves), all since it was built.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct ShmTransportStatsSnapshot { $($(#[$doc])* pub $name: u64,)* }

        impl Counters {
            pub(super) fn snapshot(&self) -> ShmTransportStatsSnapshot {
                ShmTransportStatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Inline entries committed.
    inline_sends,
    /// Slot-ref entries committed.
    slot_ref_sends,
    /// Mapping-ref entries committed.
    mmap_ref_sends,
    /// Inline entries received.
    inline_recvs,
    /// Slot-ref entries received.
    slot_ref_recvs,
    /// Mapping-ref entries received.
    mmap_ref_recvs,
    /// Allocations that found the slot pool exhausted.
    varslot_exhausted,
    /// Slot-sized payloads sent through the mapping tier instead.
    slot_fallbacks,
    /// Reserve attempts that found the ring full.
    ring_exhausted,
    /// Reserve attempts that found the ring free but the mapping budget
    /// spent: the receiver still holds that many bytes of large payloads.
    mmap_budget_exhausted,
    /// Times a sender slept on the doorbell waiting for space.
    reserve_waits,
    /// Times a receiver slept on the doorbell waiting for data.
    recv_waits,
    /// Times a waiter told the peer it was about to sleep (wake-on-demand).
    /// Each announcement lets the peer ring at most once, so the peer's
    /// `doorbell_signals` stay at most these plus one per close.
    wait_announcements,
    /// Doorbell signals written.
    doorbell_signals,
    /// Doorbell wake-ups read by the pump.
    doorbell_wakeups,
    /// Signals that found the peer dead.
    doorbell_peer_dead,
    /// Mapping regions created.
    mmap_regions_created,
    /// Mapping regions reused after their payloads were released.
    mmap_regions_reused,
    /// Mapping regions replaced by a bigger file under the same id (a payload
    /// larger than any drained region, with the budget spent).
    mmap_regions_retired,
}

/// Counts an event on a counter that only one half writes (each half owns its
/// own counters): a plain load and store, because a locked add is a full
/// memory barrier on x86 and this runs once per message.
pub(super) fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// Counts an event on a counter both halves (and backings) write.
pub(super) fn bump_shared(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn snapshot(counters: &Counters, registry: Option<&MmapRegistry>) -> ShmTransportStatsSnapshot {
    let mut s = counters.snapshot();
    if let Some(r) = registry {
        s.mmap_regions_created = r.stats().regions_created;
        s.mmap_regions_reused = r.stats().regions_reused;
        s.mmap_regions_retired = r.stats().regions_retired;
    }
    s
}
