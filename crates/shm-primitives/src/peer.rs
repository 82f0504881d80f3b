//! The peer table (spec A2): one 64-byte entry per guest slot.
//!
//! State machine (all CAS are AcqRel on success, Acquire on failure):
//!
//! ```text
//!            reserve (host)           claim (spawned guest)
//!   Empty ───────────────▶ Reserved ──────────────────────▶ Attached
//!     │ ▲   release_reserved   │                                │
//!     │ └──────────────────────┘                                │ detach
//!     │            walk-in attach (guest)                       ▼
//!     └─────────────────────────────────────────▶ Attached    Goodbye
//!                                                               │
//!   Empty ◀──────────────── reset (host crash recovery) ────────┘
//! ```
//!
//! Every transition into `Empty` and every successful reserve or walk-in attach
//! zeroes the extension words (features, close flags, pid), so a new guest never
//! inherits its predecessor's state.

use std::mem::{offset_of, size_of};
use std::num::NonZeroU8;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::features::Features;
use crate::region::{OutOfBounds, Region};

/// Size of one peer-table entry.
pub const PEER_ENTRY_SIZE: usize = 64;

/// Byte offsets inside a peer entry.
pub mod offsets {
    /// `state`, atomic u32.
    pub const STATE: usize = 0;
    /// `epoch`, atomic u32.
    pub const EPOCH: usize = 4;
    /// `last_heartbeat`, atomic u64 (monotonic ns).
    pub const LAST_HEARTBEAT: usize = 8;
    /// `ring_offset`, u64.
    pub const RING_OFFSET: usize = 16;
    /// `guest_features` (extension C0).
    pub const GUEST_FEATURES: usize = 24;
    /// `host_tx_closed` (extension C2).
    pub const HOST_TX_CLOSED: usize = 28;
    /// `guest_tx_closed` (extension C2).
    pub const GUEST_TX_CLOSED: usize = 32;
    /// `guest_pid` (extension C3).
    pub const GUEST_PID: usize = 36;
    /// `pool_ops`: the guest's slot-pool operations in flight (our extension,
    /// read by the host's crash recovery; see `varslot`).
    pub const POOL_OPS: usize = 40;
}

/// A guest's peer id, 1..=255. Its table index is `id - 1`; the host is not a
/// `PeerId` (it appears as owner 0 in the slot pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(NonZeroU8);

impl PeerId {
    /// `Some` for 1..=255.
    pub const fn new(id: u8) -> Option<PeerId> {
        match NonZeroU8::new(id) {
            Some(n) => Some(PeerId(n)),
            None => None,
        }
    }

    /// The peer at table index `index` (0..=254).
    pub fn from_index(index: usize) -> Option<PeerId> {
        u8::try_from(index + 1).ok().and_then(PeerId::new)
    }

    /// The id, 1..=255.
    pub const fn get(self) -> u8 {
        self.0.get()
    }

    /// Index into the peer table and the ring array.
    pub const fn index(self) -> usize {
        self.0.get() as usize - 1
    }
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Lifecycle state of a peer-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PeerState {
    /// Free for a new guest.
    Empty = 0,
    /// A guest is using it.
    Attached = 1,
    /// The guest left (or died and recovery is under way).
    Goodbye = 2,
    /// The host reserved it for a guest it is about to spawn.
    Reserved = 3,
}

impl PeerState {
    /// Decodes a raw state; unknown values read as `Empty` (as in 0.3.1).
    pub fn from_u32(v: u32) -> PeerState {
        match v {
            1 => PeerState::Attached,
            2 => PeerState::Goodbye,
            3 => PeerState::Reserved,
            _ => PeerState::Empty,
        }
    }
}

/// Which side of a link a per-direction flag belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The host end.
    Host,
    /// The guest end.
    Guest,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Host => Side::Guest,
            Side::Guest => Side::Host,
        }
    }
}

/// One peer-table entry in shared memory.
#[derive(Debug)]
#[repr(C)]
pub struct PeerEntry {
    state: AtomicU32,
    epoch: AtomicU32,
    last_heartbeat: AtomicU64,
    ring_offset: AtomicU64,
    guest_features: AtomicU32,
    host_tx_closed: AtomicU32,
    guest_tx_closed: AtomicU32,
    guest_pid: AtomicU32,
    pool_ops: AtomicU32,
    _reserved: [AtomicU32; 5],
}

const _: () = {
    assert!(size_of::<PeerEntry>() == PEER_ENTRY_SIZE);
    assert!(offset_of!(PeerEntry, state) == offsets::STATE);
    assert!(offset_of!(PeerEntry, epoch) == offsets::EPOCH);
    assert!(offset_of!(PeerEntry, last_heartbeat) == offsets::LAST_HEARTBEAT);
    assert!(offset_of!(PeerEntry, ring_offset) == offsets::RING_OFFSET);
    assert!(offset_of!(PeerEntry, guest_features) == offsets::GUEST_FEATURES);
    assert!(offset_of!(PeerEntry, host_tx_closed) == offsets::HOST_TX_CLOSED);
    assert!(offset_of!(PeerEntry, guest_tx_closed) == offsets::GUEST_TX_CLOSED);
    assert!(offset_of!(PeerEntry, guest_pid) == offsets::GUEST_PID);
    assert!(offset_of!(PeerEntry, pool_ops) == offsets::POOL_OPS);
};

const AR: Ordering = Ordering::AcqRel;
const ACQ: Ordering = Ordering::Acquire;
const REL: Ordering = Ordering::Release;

impl PeerEntry {
    fn init(&self, ring_offset: u64) {
        self.state.store(PeerState::Empty as u32, Ordering::Relaxed);
        self.epoch.store(0, Ordering::Relaxed);
        self.last_heartbeat.store(0, Ordering::Relaxed);
        self.ring_offset.store(ring_offset, Ordering::Relaxed);
        self.clear_extensions();
    }

    /// Current state (Acquire: pairs with the Release/AcqRel transitions).
    pub fn state(&self) -> PeerState {
        PeerState::from_u32(self.state.load(ACQ))
    }

    /// Raw state word (for inspection tools).
    pub fn raw_state(&self) -> u32 {
        self.state.load(ACQ)
    }

    /// Epoch: counts reservations and walk-in attaches, never reset.
    pub fn epoch(&self) -> u32 {
        self.epoch.load(ACQ)
    }

    /// Absolute offset of this guest's G→H ring header, as stored.
    pub fn ring_offset(&self) -> u64 {
        self.ring_offset.load(Ordering::Relaxed)
    }

    /// Zeroes the extension words (features, close flags, pid). Relaxed: the
    /// state transition that follows (or preceded, under exclusive ownership)
    /// publishes them.
    pub fn clear_extensions(&self) {
        self.guest_features.store(0, Ordering::Relaxed);
        self.host_tx_closed.store(0, Ordering::Relaxed);
        self.guest_tx_closed.store(0, Ordering::Relaxed);
        self.guest_pid.store(0, Ordering::Relaxed);
        self.pool_ops.store(0, Ordering::Relaxed);
    }

    /// Host: CAS Empty→Reserved; on success bumps the epoch and clears the
    /// extension words before the guest can see the entry.
    pub fn try_reserve(&self) -> bool {
        if self.state.compare_exchange(PeerState::Empty as u32, PeerState::Reserved as u32, AR, ACQ).is_err() {
            return false;
        }
        self.epoch.fetch_add(1, AR);
        self.clear_extensions();
        true
    }

    /// Host: Reserved→Empty (spawn failed). Returns whether it happened.
    ///
    /// The CAS comes first, to Goodbye (a state no guest moves out of): if the
    /// guest claimed the entry meanwhile the CAS fails and its words are left
    /// alone; if it succeeds, no guest can claim or attach to the entry while
    /// its words are cleared, and Empty is published after them (Release).
    pub fn release_reserved(&self) -> bool {
        if self.state.compare_exchange(PeerState::Reserved as u32, PeerState::Goodbye as u32, AR, ACQ).is_err() {
            return false;
        }
        self.reset();
        true
    }

    /// Spawned guest: CAS Reserved→Attached. The epoch is not bumped. On failure
    /// returns the state found.
    pub fn try_claim_reserved(&self) -> Result<(), PeerState> {
        self.state
            .compare_exchange(PeerState::Reserved as u32, PeerState::Attached as u32, AR, ACQ)
            .map(|_| ())
            .map_err(PeerState::from_u32)
    }

    /// Walk-in guest: CAS Empty→Attached; bumps the epoch and clears the
    /// extension words on success.
    pub fn try_attach(&self) -> bool {
        if self.state.compare_exchange(PeerState::Empty as u32, PeerState::Attached as u32, AR, ACQ).is_err() {
            return false;
        }
        self.epoch.fetch_add(1, AR);
        self.clear_extensions();
        true
    }

    /// Guest leaves gracefully: store Goodbye (Release).
    pub fn set_goodbye(&self) {
        self.state.store(PeerState::Goodbye as u32, REL);
    }

    /// Crash recovery's last step, with the ring offset rewritten from the
    /// host's own layout (a guest may have scribbled over it, and a 0.3.1
    /// guest reads it from here): see [`PeerEntry::reset`].
    pub fn reset_with_ring_offset(&self, ring_offset: u64) {
        self.ring_offset.store(ring_offset, Ordering::Relaxed);
        for w in &self._reserved {
            w.store(0, Ordering::Relaxed);
        }
        self.reset();
    }

    /// Crash recovery's last step: heartbeat 0, extensions cleared, then Empty
    /// (Release, so a new guest that CASes the entry sees the cleared words).
    pub fn reset(&self) {
        self.last_heartbeat.store(0, Ordering::Relaxed);
        self.clear_extensions();
        self.state.store(PeerState::Empty as u32, REL);
    }

    /// Stores a heartbeat timestamp (monotonic ns).
    pub fn update_heartbeat(&self, now_ns: u64) {
        self.last_heartbeat.store(now_ns, REL);
    }

    /// Last heartbeat timestamp (0 = never).
    pub fn last_heartbeat(&self) -> u64 {
        self.last_heartbeat.load(ACQ)
    }

    /// Stale ⇔ `interval != 0` and `now − last > 2 × interval` (saturating).
    pub fn is_heartbeat_stale(&self, now_ns: u64, interval_ns: u64) -> bool {
        interval_ns != 0 && now_ns.saturating_sub(self.last_heartbeat()) > interval_ns.saturating_mul(2)
    }

    /// Features the guest advertised (Acquire: pairs with `set_guest_features`).
    pub fn guest_features(&self) -> Features {
        Features::from_bits(self.guest_features.load(ACQ))
    }

    /// Guest: advertise features. Release, so that anything the guest set up
    /// before is visible to a host that reads the bits.
    pub fn set_guest_features(&self, f: Features) {
        self.guest_features.store(f.bits(), REL);
    }

    fn closed_flag(&self, side: Side) -> &AtomicU32 {
        match side {
            Side::Host => &self.host_tx_closed,
            Side::Guest => &self.guest_tx_closed,
        }
    }

    /// True if `side` closed its sending half. Acquire: pairs with the Release
    /// in [`PeerEntry::set_tx_closed`], so the sender's last commit is visible.
    pub fn tx_closed(&self, side: Side) -> bool {
        self.closed_flag(side).load(ACQ) != 0
    }

    /// `side` closes its sending half, after its last commit (Release).
    pub fn set_tx_closed(&self, side: Side) {
        self.closed_flag(side).store(1, REL);
    }

    /// The guest's slot-pool operations in flight (Acquire: pairs with the
    /// guest's counter updates; see `VarSlotPool::return_orphans`).
    pub fn pool_ops_in_flight(&self) -> u32 {
        self.pool_ops.load(ACQ)
    }

    /// Guest process id (0 = not published).
    pub fn guest_pid(&self) -> u32 {
        self.guest_pid.load(ACQ)
    }

    /// Guest publishes its process id.
    pub fn set_guest_pid(&self, pid: u32) {
        self.guest_pid.store(pid, REL);
    }
}

/// A view of the peer table, borrowing the memory it lives in for `'a`.
#[derive(Debug, Clone, Copy)]
pub struct PeerTable<'a> {
    region: Region<'a>,
    offset: u64,
    max_guests: u8,
}

impl<'a> PeerTable<'a> {
    /// A view of `max_guests` entries at `offset`, bounds-checked.
    pub fn attach(region: Region<'a>, offset: u64, max_guests: u8) -> Result<PeerTable<'a>, OutOfBounds> {
        region.range(offset, max_guests as u64 * PEER_ENTRY_SIZE as u64)?;
        if offset % 64 != 0 {
            return Err(OutOfBounds { offset, size: PEER_ENTRY_SIZE as u64, region_len: region.len() as u64 });
        }
        Ok(PeerTable { region, offset, max_guests })
    }

    /// Writes fresh entries (state Empty, epoch 0, ring offsets from `ring_offset_of`).
    pub fn init(&self, ring_offset_of: impl Fn(PeerId) -> u64) {
        for (id, e) in self.iter() {
            e.init(ring_offset_of(id));
        }
    }

    /// Number of entries.
    pub fn max_guests(&self) -> u8 {
        self.max_guests
    }

    /// The entry of `id`, or `None` if the table has fewer entries.
    pub fn entry(&self, id: PeerId) -> Option<&PeerEntry> {
        if id.index() >= self.max_guests as usize {
            return None;
        }
        let p = self.region.typed::<PeerEntry>(self.offset + (id.index() * PEER_ENTRY_SIZE) as u64).ok()?;
        // SAFETY: in bounds and aligned (checked by `typed`), every bit pattern is
        // a valid `PeerEntry` (all atomics), and the mapping outlives `self` by the
        // `Region` contract.
        Some(unsafe { p.as_ref() })
    }

    /// All entries with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (PeerId, &PeerEntry)> + '_ {
        (0..self.max_guests as usize).filter_map(move |i| {
            let id = PeerId::from_index(i)?;
            Some((id, self.entry(id)?))
        })
    }

    /// First Empty entry, or `None`.
    pub fn find_empty(&self) -> Option<PeerId> {
        self.iter().find(|(_, e)| e.state() == PeerState::Empty).map(|(id, _)| id)
    }

    /// Host: reserve the first Empty entry. Unlike 0.3.1 a lost race moves on to
    /// the next entry instead of giving up.
    pub fn reserve(&self) -> Option<PeerId> {
        self.iter().find(|(_, e)| e.try_reserve()).map(|(id, _)| id)
    }

    /// Walk-in guest: attach to the first Empty entry.
    pub fn attach_walk_in(&self) -> Option<PeerId> {
        self.iter().find(|(_, e)| e.try_attach()).map(|(id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::HeapRegion;

    fn table(heap: &HeapRegion, n: u8) -> PeerTable<'_> {
        let t = PeerTable::attach(heap.region(), 128, n).unwrap();
        t.init(|id| 1000 + id.index() as u64 * 512);
        t
    }

    #[test]
    fn peer_ids() {
        assert!(PeerId::new(0).is_none());
        assert_eq!(PeerId::new(1).unwrap().index(), 0);
        assert_eq!(PeerId::new(255).unwrap().index(), 254);
        assert_eq!(PeerId::from_index(254).unwrap().get(), 255);
        assert!(PeerId::from_index(255).is_none());
        assert_eq!(PeerState::from_u32(77), PeerState::Empty);
    }

    #[test]
    fn attach_is_bounds_checked() {
        let heap = HeapRegion::new_zeroed(128 + 64 * 4);
        assert!(PeerTable::attach(heap.region(), 128, 4).is_ok());
        assert!(PeerTable::attach(heap.region(), 128, 5).is_err());
        assert!(PeerTable::attach(heap.region(), 96, 1).is_err(), "misaligned table");
        let t = PeerTable::attach(heap.region(), 128, 4).unwrap();
        assert!(t.entry(PeerId::new(5).unwrap()).is_none());
    }

    #[test]
    fn reserve_claim_detach_reset_cycle() {
        let heap = HeapRegion::new_zeroed(4096);
        let t = table(&heap, 2);
        let id = t.reserve().unwrap();
        assert_eq!(id.get(), 1);
        let e = t.entry(id).unwrap();
        assert_eq!(e.state(), PeerState::Reserved);
        assert_eq!(e.epoch(), 1);
        assert_eq!(e.ring_offset(), 1000);
        e.set_guest_features(Features::ALL);
        e.try_claim_reserved().unwrap();
        assert_eq!(e.state(), PeerState::Attached);
        assert_eq!(e.epoch(), 1, "claim does not bump the epoch");
        assert_eq!(e.try_claim_reserved(), Err(PeerState::Attached));
        e.set_guest_pid(4242);
        e.set_tx_closed(Side::Guest);
        assert!(e.tx_closed(Side::Guest) && !e.tx_closed(Side::Host));
        e.set_goodbye();
        assert_eq!(e.state(), PeerState::Goodbye);
        assert!(!e.try_attach(), "Goodbye is not Empty");
        e.reset();
        assert_eq!(e.state(), PeerState::Empty);
        assert_eq!(e.guest_features(), Features::NONE);
        assert_eq!(e.guest_pid(), 0);
        assert!(!e.tx_closed(Side::Guest));
        assert_eq!(e.epoch(), 1, "reset keeps the epoch");
        // Walk-in attach takes the first empty entry and bumps the epoch.
        assert_eq!(t.attach_walk_in().unwrap().get(), 1);
        assert_eq!(e.epoch(), 2);
    }

    #[test]
    fn reserve_skips_taken_entries_and_runs_out() {
        let heap = HeapRegion::new_zeroed(4096);
        let t = table(&heap, 3);
        assert_eq!(t.attach_walk_in().unwrap().get(), 1);
        assert_eq!(t.reserve().unwrap().get(), 2);
        let third = t.reserve().unwrap();
        assert_eq!(third.get(), 3);
        assert!(t.reserve().is_none());
        assert!(t.attach_walk_in().is_none());
        let e = t.entry(third).unwrap();
        e.set_guest_pid(9);
        assert!(e.release_reserved());
        assert_eq!(e.guest_pid(), 0);
        assert!(!e.release_reserved(), "already Empty");
        assert_eq!(t.find_empty(), Some(third));
    }

    /// Issue: `release_reserved` used to clear the words before its CAS, so a
    /// release that lost to the guest's claim wiped the attached guest's
    /// features and pid.
    #[test]
    fn a_release_that_loses_to_the_claim_leaves_the_guests_words() {
        let heap = HeapRegion::new_zeroed(4096);
        let t = table(&heap, 1);
        let id = t.reserve().unwrap();
        let e = t.entry(id).unwrap();
        e.set_guest_features(Features::ALL);
        e.set_guest_pid(4242);
        e.try_claim_reserved().unwrap();
        assert!(!e.release_reserved(), "the guest attached first");
        assert_eq!((e.state(), e.guest_features(), e.guest_pid()), (PeerState::Attached, Features::ALL, 4242));
    }

    #[test]
    fn reserve_clears_a_predecessors_extension_words() {
        let heap = HeapRegion::new_zeroed(4096);
        let t = table(&heap, 1);
        let e = t.entry(PeerId::new(1).unwrap()).unwrap();
        // Simulate a scribbling predecessor that left words behind in an Empty entry.
        e.set_guest_features(Features::ALL);
        e.set_tx_closed(Side::Host);
        e.set_guest_pid(7);
        assert!(e.try_reserve());
        assert_eq!(e.guest_features(), Features::NONE);
        assert!(!e.tx_closed(Side::Host));
        assert_eq!(e.guest_pid(), 0);
    }

    #[test]
    fn heartbeat_staleness() {
        let heap = HeapRegion::new_zeroed(4096);
        let t = table(&heap, 1);
        let e = t.entry(PeerId::new(1).unwrap()).unwrap();
        e.update_heartbeat(1_000);
        assert!(!e.is_heartbeat_stale(5_000, 0), "interval 0 disables staleness");
        assert!(!e.is_heartbeat_stale(3_000, 1_000));
        assert!(e.is_heartbeat_stale(3_001, 1_000));
        assert!(!e.is_heartbeat_stale(10, 1_000), "clock behind the stamp saturates");
    }

    #[test]
    fn concurrent_reservations_hand_out_each_entry_once() {
        let heap = HeapRegion::new_zeroed(128 + 64 * 255);
        let t = table(&heap, 255);
        let got: Vec<Vec<u8>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(move || {
                        let mut mine = vec![];
                        while let Some(id) = t.reserve() {
                            mine.push(id.get());
                        }
                        mine
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<u8> = got.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all, (1..=255).collect::<Vec<u8>>());
    }
}
