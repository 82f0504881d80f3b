//! The VarSlotPool (spec A5): fixed-size slots in size classes, shared by the
//! host and every guest, each class a lock-free Treiber stack of free slots.
//!
//! The free-list head packs `(aba_tag << 32) | slot_idx`, so a slot that is
//! popped and pushed back between another thread's load and CAS changes the tag
//! and makes that CAS fail. Every slot carries a generation, bumped on each
//! allocation; a free must name the current generation, so a stale or repeated
//! free is refused instead of corrupting the list.
//!
//! A process can die (`kill -9`) between any two steps of an allocation or a
//! free. Every intermediate state is recoverable:
//! * allocate is *pop* (head CAS) → `owner_peer := owner` → generation bump →
//!   `state := Allocated`; free is `state := Free` → `owner_peer := 0` → push.
//!   So an Allocated slot always names its real owner (the owner is stored
//!   before the state), and crash recovery reclaims it by owner;
//! * a slot that died between the two ends of an operation is Free but on no
//!   list (an *orphan*). Each process counts its operations in flight (a guest
//!   in its peer entry, [`VarSlotPool::track_ops_in`]; the host in process
//!   memory), and [`VarSlotPool::return_orphans`] pushes orphans back only
//!   from a snapshot in which no live process had an operation in flight and
//!   no free-list head moved, so it can never push a slot somebody still holds.
//!
//! Every guest maps the pool read-write and could scribble over it. So every
//! index read from shared memory is checked against the class geometry this
//! process validated (never re-read from the pool), every retry loop is bounded,
//! and a broken free list is reported as [`AllocError::Corrupt`] instead of being
//! followed.
//!
//! ```
//! use shm_primitives::varslot::{PoolLayout, SizeClassConfig, VarSlotPool};
//! use shm_primitives::HeapRegion;
//!
//! let layout = PoolLayout::compute(&[SizeClassConfig { slot_size: 64, slot_count: 2 }]).unwrap();
//! let heap = HeapRegion::new_zeroed(layout.size as usize);
//! // SAFETY: the heap region is exclusively ours during init and outlives the pool.
//! let pool = unsafe { VarSlotPool::init(heap.region(), 0, &layout) }.unwrap();
//! let a = pool.allocate(10, 0).unwrap();
//! assert_eq!((a.slot_idx, a.generation), (0, 1));
//! pool.free(a).unwrap();
//! assert!(pool.free(a).is_err(), "double free is refused");
//! ```

use std::ptr::NonNull;

use crate::region::{OutOfBounds, Region};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

pub(crate) mod raw;
mod recovery;
#[cfg(all(test, not(loom)))]
mod tests;

pub use crate::layout::{ClassOffsets, PoolLayout, SizeClassConfig};
pub use raw::{
    offsets, SizeClassHeader, SlotState, VarSlotMeta, CLASS_HEADER_SIZE, EMPTY, MAX_CAS_RETRIES, SLOT_META_SIZE,
};

/// A reference to one allocated slot, as carried in a slot-ref frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotRef {
    /// Size class index.
    pub class_idx: u8,
    /// Extent index (always 0: extents are not used by format v7 peers).
    pub extent_idx: u8,
    /// Slot index within the class.
    pub slot_idx: u32,
    /// Generation at allocation.
    pub generation: u32,
}

/// A slot reference checked against the pool geometry: in bounds, with its
/// data range known. Only this type gives access to slot bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedSlot {
    slot: SlotRef,
    data: NonNull<u8>,
    size: u32,
}

// SAFETY: a checked slot is an address and a size inside a mapping kept alive by
// whoever holds the pool; the bytes are shared memory accessed by raw copies.
unsafe impl Send for CheckedSlot {}
// SAFETY: see `Send`.
unsafe impl Sync for CheckedSlot {}

impl CheckedSlot {
    /// The reference it was built from.
    pub fn slot_ref(&self) -> SlotRef {
        self.slot
    }
    /// First byte of the slot's data.
    pub fn data(&self) -> NonNull<u8> {
        self.data
    }
    /// Bytes in the slot.
    pub fn size(&self) -> u32 {
        self.size
    }
}

/// A slot reference that does not name a slot of this pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// `class_idx` is beyond the class table.
    #[error("slot class {class_idx} does not exist ({classes} classes)")]
    BadClass {
        /// Class named.
        class_idx: u8,
        /// Classes in the pool.
        classes: usize,
    },
    /// `slot_idx` is beyond the class.
    #[error("slot {slot_idx} does not exist in class {class_idx} ({slot_count} slots)")]
    BadSlot {
        /// Class named.
        class_idx: u8,
        /// Slot named.
        slot_idx: u32,
        /// Slots in that class.
        slot_count: u32,
    },
    /// `extent_idx` is not 0.
    #[error("slot extent {extent_idx} does not exist (only extent 0)")]
    BadExtent {
        /// Extent named.
        extent_idx: u8,
    },
}

/// Why a free was refused. Nothing changed in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FreeError {
    /// The reference does not name a slot.
    #[error(transparent)]
    Invalid(#[from] SlotError),
    /// The slot is not allocated under this generation (double or stale free).
    #[error("slot {class_idx}/{slot_idx} generation {generation} is not allocated (now generation {current}, state {state})", class_idx = slot.class_idx, slot_idx = slot.slot_idx, generation = slot.generation)]
    DoubleFree {
        /// The reference freed.
        slot: SlotRef,
        /// Generation the slot has now.
        current: u32,
        /// State the slot is in now.
        state: u32,
    },
    /// The free list head kept changing under us; the slot is marked free but
    /// could not be linked in (only a peer rewriting the pool causes this).
    #[error("free list of class {class_idx} is being rewritten concurrently")]
    Contended {
        /// Class affected.
        class_idx: u8,
    },
}

/// Why an allocation found no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No class has slots that large.
    #[error("no size class holds {size} bytes (largest slot is {max_slot_size})")]
    TooLarge {
        /// Bytes requested.
        size: u32,
        /// Largest slot size.
        max_slot_size: u32,
    },
    /// Every suitable class is empty right now.
    #[error("slot pool exhausted for {size} bytes")]
    Exhausted {
        /// Bytes requested.
        size: u32,
    },
    /// A free list holds an impossible value (a peer scribbled on the pool).
    #[error("free list of class {class_idx} is corrupt: {what} {value}")]
    Corrupt {
        /// Class affected.
        class_idx: u8,
        /// Which value was bad.
        what: &'static str,
        /// The value.
        value: u32,
    },
}

/// Per-class counts, from scanning slot metadata (for inspection tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassUsage {
    /// Slots in state Free.
    pub free: u32,
    /// Allocated slots per owner (index 0 = host, i = guest i).
    pub allocated_by_owner: Vec<(u32, u32)>,
    /// Slots with a state value that is neither Free nor Allocated.
    pub invalid_state: u32,
}

/// Where this process counts the pool operations it has in flight.
#[derive(Debug, Default)]
struct OpsInFlight {
    /// Offset in the region of a shared u32 counter (a guest's peer-entry
    /// word), or 0: count in `local`.
    shared: std::sync::atomic::AtomicU64,
    local: AtomicU32,
}

/// Counts one pool operation in flight for as long as it lives.
struct OpGuard<'a>(&'a AtomicU32);

impl<'a> OpGuard<'a> {
    fn new(c: &'a AtomicU32) -> Self {
        // SeqCst, before the operation's first step: an auditor that sees any
        // effect of the operation (a moved head, a changed state) through its
        // Acquire loads then sees this increment too (see `return_orphans`).
        c.fetch_add(1, Ordering::SeqCst);
        OpGuard(c)
    }
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        // SeqCst, after the operation's last step: an auditor that reads the
        // decrement also sees every step before it.
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Outcome of [`VarSlotPool::return_orphans`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanAudit {
    /// The pool was quiet; this many orphaned slots went back on their lists.
    Done {
        /// Slots pushed back.
        returned: usize,
    },
    /// Some process had an operation in flight, or a list moved: try later.
    Busy,
}

/// How far a crash-injection hook lets an operation run before it "dies"
/// (for tests and loom models of recovery).
#[doc(hidden)]
pub const STEPS_ALLOCATE: u32 = 5;
/// See [`STEPS_ALLOCATE`].
#[doc(hidden)]
pub const STEPS_FREE: u32 = 5;

/// What one class's `pop` found.
enum Popped {
    Slot(SlotRef),
    Empty,
    /// Crash injection: stopped part-way.
    Stopped,
}

/// A view of the slot pool, borrowing the memory it lives in for `'a`.
#[derive(Debug, Clone)]
pub struct VarSlotPool<'a> {
    region: Region<'a>,
    base: u64,
    layout: PoolLayout,
    ops: std::sync::Arc<OpsInFlight>,
}

fn pack(aba: u32, idx: u32) -> u64 {
    (u64::from(aba) << 32) | u64::from(idx)
}
fn unpack(head: u64) -> (u32, u32) {
    ((head >> 32) as u32, head as u32)
}

impl<'a> VarSlotPool<'a> {
    fn check_bounds(region: Region<'_>, base: u64, layout: &PoolLayout) -> Result<(), OutOfBounds> {
        region.range(base, layout.size)?;
        if base % 64 != 0 || (region.base().as_ptr() as usize) % 64 != 0 {
            return Err(OutOfBounds { offset: base, size: layout.size, region_len: region.len() as u64 });
        }
        Ok(())
    }

    /// Writes class headers and slot metadata with full free lists.
    ///
    /// # Safety
    /// Nobody else may access the pool's bytes during initialisation, and the
    /// region must outlive the returned view.
    pub unsafe fn init(region: Region<'a>, base: u64, layout: &PoolLayout) -> Result<VarSlotPool<'a>, OutOfBounds> {
        Self::check_bounds(region, base, layout)?;
        for (i, c) in layout.classes.iter().enumerate() {
            let hp = region.typed::<SizeClassHeader>(base + i as u64 * CLASS_HEADER_SIZE)?;
            let header = SizeClassHeader {
                slot_size: AtomicU32::new(c.slot_size),
                slot_count: AtomicU32::new(c.slot_count),
                free_head: AtomicU64::new(pack(0, 0)),
                #[cfg(not(loom))]
                _reserved: crate::sync::zeroed_u32s(),
            };
            // SAFETY: in bounds and aligned (`typed`), exclusive during init.
            unsafe { hp.as_ptr().write(header) };
            for j in 0..c.slot_count {
                let mp = region.typed::<VarSlotMeta>(base + c.meta_off + u64::from(j) * SLOT_META_SIZE)?;
                let next = if j + 1 < c.slot_count { j + 1 } else { EMPTY };
                let meta = VarSlotMeta {
                    generation: AtomicU32::new(0),
                    state: AtomicU32::new(SlotState::Free as u32),
                    owner_peer: AtomicU32::new(0),
                    next_free: AtomicU32::new(next),
                };
                // SAFETY: in bounds and aligned (`typed`), exclusive during init.
                unsafe { mp.as_ptr().write(meta) };
            }
        }
        Ok(VarSlotPool { region, base, layout: layout.clone(), ops: Default::default() })
    }

    /// A view of an existing pool whose geometry was validated by the caller
    /// (normally [`crate::validate::validate`]).
    pub fn attach(region: Region<'a>, base: u64, layout: &PoolLayout) -> Result<VarSlotPool<'a>, OutOfBounds> {
        Self::check_bounds(region, base, layout)?;
        Ok(VarSlotPool { region, base, layout: layout.clone(), ops: Default::default() })
    }

    /// Counts this process's operations in flight in the u32 at `offset` of the
    /// region (a guest's peer-entry word), where the host's recovery can see
    /// them. Without it they are counted in process memory (the host's own).
    pub fn track_ops_in(&self, offset: u64) -> Result<(), OutOfBounds> {
        self.region.typed::<AtomicU32>(offset)?;
        self.ops.shared.store(offset, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn ops_counter(&self) -> &AtomicU32 {
        let off = self.ops.shared.load(std::sync::atomic::Ordering::Acquire);
        if off != 0 {
            if let Ok(p) = self.region.typed::<AtomicU32>(off) {
                // SAFETY: in bounds and aligned (checked by `typed`, and in
                // `track_ops_in`); any bits are a valid atomic; the region
                // outlives `self`.
                return unsafe { p.as_ref() };
            }
        }
        &self.ops.local
    }

    /// Operations this view has in flight now (its process's, if it counts
    /// locally).
    pub fn ops_in_flight(&self) -> u32 {
        self.ops_counter().load(Ordering::SeqCst)
    }

    /// Number of size classes.
    pub fn class_count(&self) -> usize {
        self.layout.classes.len()
    }

    /// Geometry of class `i`.
    pub fn class(&self, i: usize) -> Option<ClassOffsets> {
        self.layout.classes.get(i).copied()
    }

    /// Slot size of class `i`.
    pub fn slot_size(&self, i: usize) -> Option<u32> {
        self.layout.classes.get(i).map(|c| c.slot_size)
    }

    /// Largest slot size over all classes.
    pub fn max_slot_size(&self) -> u32 {
        self.layout.max_slot_size()
    }

    fn header(&self, class: usize) -> &SizeClassHeader {
        let p = self
            .region
            .typed::<SizeClassHeader>(self.base + class as u64 * CLASS_HEADER_SIZE)
            .expect("class header bounds were checked at construction");
        // SAFETY: in bounds and aligned (checked at construction and again by
        // `typed`); all-atomic struct; the region outlives `self`.
        unsafe { p.as_ref() }
    }

    fn meta(&self, class: usize, idx: u32) -> &VarSlotMeta {
        let c = &self.layout.classes[class];
        debug_assert!(idx < c.slot_count);
        let p = self
            .region
            .typed::<VarSlotMeta>(self.base + c.meta_off + u64::from(idx) * SLOT_META_SIZE)
            .expect("metadata bounds were checked at construction");
        // SAFETY: as in `header`.
        unsafe { p.as_ref() }
    }

    /// Checks a slot reference against the geometry.
    pub fn check(&self, slot: SlotRef) -> Result<CheckedSlot, SlotError> {
        let c = self
            .layout
            .classes
            .get(slot.class_idx as usize)
            .ok_or(SlotError::BadClass { class_idx: slot.class_idx, classes: self.layout.classes.len() })?;
        if slot.slot_idx >= c.slot_count {
            return Err(SlotError::BadSlot {
                class_idx: slot.class_idx,
                slot_idx: slot.slot_idx,
                slot_count: c.slot_count,
            });
        }
        if slot.extent_idx != 0 {
            return Err(SlotError::BadExtent { extent_idx: slot.extent_idx });
        }
        let off = self.base + c.data_off + u64::from(slot.slot_idx) * u64::from(c.slot_size);
        let data =
            self.region.range(off, u64::from(c.slot_size)).expect("slot data bounds were checked at construction");
        Ok(CheckedSlot { slot, data, size: c.slot_size })
    }

    /// Allocates a slot of at least `size` bytes for `owner` (0 = host), trying
    /// the smallest fitting class first and then every larger one (spec A5.3).
    pub fn allocate(&self, size: u32, owner: u32) -> Result<SlotRef, AllocError> {
        let _op = OpGuard::new(self.ops_counter());
        self.allocate_steps(size, owner, u32::MAX).map(|s| s.expect("not stopped"))
    }

    /// Crash injection: allocates like [`VarSlotPool::allocate`] but stops for
    /// good after `steps` of its [`STEPS_ALLOCATE`] steps (pop, owner,
    /// generation, state), as a process killed there would, leaving its
    /// operation counted in flight. `Ok(None)` if it stopped.
    #[doc(hidden)]
    pub fn allocate_stopping_after(&self, size: u32, owner: u32, steps: u32) -> Result<Option<SlotRef>, AllocError> {
        let op = OpGuard::new(self.ops_counter());
        let r = self.allocate_steps(size, owner, steps);
        if !matches!(r, Ok(Some(_))) || steps < STEPS_ALLOCATE {
            std::mem::forget(op); // a dead process never finishes its operation
        }
        r
    }

    fn allocate_steps(&self, size: u32, owner: u32, steps: u32) -> Result<Option<SlotRef>, AllocError> {
        let first = self
            .layout
            .classes
            .iter()
            .position(|c| c.slot_size >= size)
            .ok_or(AllocError::TooLarge { size, max_slot_size: self.max_slot_size() })?;
        let mut corrupt = None;
        for class in first..self.layout.classes.len() {
            match self.pop(class, owner, steps) {
                Ok(Popped::Slot(slot)) => return Ok(Some(slot)),
                Ok(Popped::Stopped) => return Ok(None),
                Ok(Popped::Empty) => {}
                Err(e) => corrupt = corrupt.or(Some(e)),
            }
        }
        Err(corrupt.unwrap_or(AllocError::Exhausted { size }))
    }

    fn pop(&self, class: usize, owner: u32, steps: u32) -> Result<Popped, AllocError> {
        let c = self.layout.classes[class];
        let class_idx = class as u8;
        let h = self.header(class);
        let corrupt = |what, value| AllocError::Corrupt { class_idx, what, value };
        for _ in 0..MAX_CAS_RETRIES {
            if steps == 0 {
                return Ok(Popped::Stopped);
            }
            // Acquire: pairs with the AcqRel CAS in `push`, making the pushed
            // slot's `next_free` (stored before that CAS) visible here.
            let head = h.free_head.load(Ordering::Acquire);
            let (aba, idx) = unpack(head);
            if idx == EMPTY {
                return Ok(Popped::Empty);
            }
            if idx >= c.slot_count {
                return Err(corrupt("head index", idx));
            }
            let m = self.meta(class, idx);
            // Acquire: pairs with the Release store of `next_free` in `push`.
            let next = m.next_free.load(Ordering::Acquire);
            if next != EMPTY && next >= c.slot_count {
                return Err(corrupt("next_free", next));
            }
            // AcqRel: success takes exclusive ownership of `idx` (Acquire side
            // sees the freeing thread's writes); the new tag defeats ABA.
            if h.free_head
                .compare_exchange(head, pack(aba.wrapping_add(1), next), Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            // A slot on the free list is always Free; anything else means the
            // list was rewritten. Leave that slot alone (whoever holds it keeps
            // it) before touching any of its words.
            if m.state.load(Ordering::Acquire) != SlotState::Free as u32 {
                return Err(corrupt("allocated slot on free list", idx));
            }
            if steps < 2 {
                return Ok(Popped::Stopped);
            }
            // The owner first, then the state: an Allocated slot always names
            // its real owner, so recovery after a crash at any step finds it
            // by owner (Allocated) or as an orphan (Free, on no list).
            // Release: ordered before the state CAS below.
            m.owner_peer.store(owner, Ordering::Release);
            if steps < 3 {
                return Ok(Popped::Stopped);
            }
            let generation = m.generation.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
            if steps < 4 {
                return Ok(Popped::Stopped);
            }
            // AcqRel: publishes the owner and generation to a receiver's
            // Acquire load of the state. Only a peer rewriting the pool can
            // make it fail after the check above.
            if m.state
                .compare_exchange(
                    SlotState::Free as u32,
                    SlotState::Allocated as u32,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                return Err(corrupt("allocated slot on free list", idx));
            }
            if steps < 5 {
                return Ok(Popped::Stopped);
            }
            return Ok(Popped::Slot(SlotRef { class_idx, extent_idx: 0, slot_idx: idx, generation }));
        }
        Ok(Popped::Empty)
    }

    /// Frees a slot (spec A5.4): refused unless it is Allocated under exactly
    /// this generation. Clears the owner and pushes it on its free list (LIFO).
    pub fn free(&self, slot: SlotRef) -> Result<(), FreeError> {
        let _op = OpGuard::new(self.ops_counter());
        self.free_steps(slot, u32::MAX)
    }

    /// Crash injection: frees like [`VarSlotPool::free`] but stops for good
    /// after `steps` of its [`STEPS_FREE`] steps (state, owner, link, push),
    /// leaving its operation counted in flight.
    #[doc(hidden)]
    pub fn free_stopping_after(&self, slot: SlotRef, steps: u32) -> Result<(), FreeError> {
        let op = OpGuard::new(self.ops_counter());
        let r = self.free_steps(slot, steps);
        if steps < STEPS_FREE {
            std::mem::forget(op);
        }
        r
    }

    fn free_steps(&self, slot: SlotRef, steps: u32) -> Result<(), FreeError> {
        if steps == 0 {
            return Ok(());
        }
        self.check(slot)?;
        let class = slot.class_idx as usize;
        let m = self.meta(class, slot.slot_idx);
        // Acquire: pairs with the generation bump in `pop`.
        let current = m.generation.load(Ordering::Acquire);
        let double_free = |state| FreeError::DoubleFree { slot, current, state };
        if current != slot.generation {
            return Err(double_free(m.state.load(Ordering::Acquire)));
        }
        // AcqRel CAS: exactly one of two racing frees wins.
        m.state
            .compare_exchange(SlotState::Allocated as u32, SlotState::Free as u32, Ordering::AcqRel, Ordering::Acquire)
            .map_err(double_free)?;
        if steps < 2 {
            return Ok(());
        }
        m.owner_peer.store(0, Ordering::Release);
        if steps < 3 {
            return Ok(());
        }
        self.push(class, slot.slot_idx, steps)
    }

    fn push(&self, class: usize, idx: u32, steps: u32) -> Result<(), FreeError> {
        let h = self.header(class);
        let m = self.meta(class, idx);
        for _ in 0..MAX_CAS_RETRIES {
            let head = h.free_head.load(Ordering::Acquire);
            let (aba, head_idx) = unpack(head);
            // Release: the link is visible to a `pop` that Acquires this slot.
            m.next_free.store(head_idx, Ordering::Release);
            if steps < 4 {
                return Ok(());
            }
            // AcqRel: publishes the slot (and all our writes to its data) to the
            // next allocator's Acquire load of the head.
            if h.free_head
                .compare_exchange(head, pack(aba.wrapping_add(1), idx), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(FreeError::Contended { class_idx: class as u8 })
    }
}
