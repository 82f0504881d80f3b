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

use std::mem::size_of;
use std::ptr::NonNull;

use crate::header::HeaderError;
use crate::layout::LayoutError;
use crate::region::{align64, OutOfBounds, Region};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Free-list terminator / "no slot".
pub const EMPTY: u32 = u32::MAX;
/// Upper bound on consecutive failed CAS attempts in one operation. Real
/// contention between 256 processes never comes close; only a peer rewriting
/// the head on purpose can reach it.
pub const MAX_CAS_RETRIES: u32 = 100_000;

/// Size of one class header in memory (64 in the wire format).
pub const CLASS_HEADER_SIZE: u64 = size_of::<SizeClassHeader>() as u64;
/// Size of one slot's metadata in memory (16 in the wire format).
pub const SLOT_META_SIZE: u64 = size_of::<VarSlotMeta>() as u64;

/// Byte offsets inside a class header and a slot's metadata.
pub mod offsets {
    /// Class header: `slot_size`, u32.
    pub const CLASS_SLOT_SIZE: usize = 0;
    /// Class header: `slot_count`, u32.
    pub const CLASS_SLOT_COUNT: usize = 4;
    /// Class header: `free_head`, atomic u64 `(aba << 32) | index`.
    pub const CLASS_FREE_HEAD: usize = 8;
    /// Slot metadata: `generation`.
    pub const META_GENERATION: usize = 0;
    /// Slot metadata: `state` (0 Free, 1 Allocated).
    pub const META_STATE: usize = 4;
    /// Slot metadata: `owner_peer` (0 host, 1..255 guests).
    pub const META_OWNER: usize = 8;
    /// Slot metadata: `next_free`.
    pub const META_NEXT_FREE: usize = 12;
}

/// One size class: slot size, count and free-list head.
#[repr(C, align(64))]
pub struct SizeClassHeader {
    slot_size: AtomicU32,
    slot_count: AtomicU32,
    free_head: AtomicU64,
    #[cfg(not(loom))]
    _reserved: [AtomicU32; 12],
}

/// Per-slot metadata.
#[repr(C)]
pub struct VarSlotMeta {
    generation: AtomicU32,
    state: AtomicU32,
    owner_peer: AtomicU32,
    next_free: AtomicU32,
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::offset_of;
    assert!(CLASS_HEADER_SIZE == 64);
    assert!(SLOT_META_SIZE == 16);
    assert!(offset_of!(SizeClassHeader, slot_size) == offsets::CLASS_SLOT_SIZE);
    assert!(offset_of!(SizeClassHeader, slot_count) == offsets::CLASS_SLOT_COUNT);
    assert!(offset_of!(SizeClassHeader, free_head) == offsets::CLASS_FREE_HEAD);
    assert!(offset_of!(VarSlotMeta, generation) == offsets::META_GENERATION);
    assert!(offset_of!(VarSlotMeta, state) == offsets::META_STATE);
    assert!(offset_of!(VarSlotMeta, owner_peer) == offsets::META_OWNER);
    assert!(offset_of!(VarSlotMeta, next_free) == offsets::META_NEXT_FREE);
};

/// Slot state values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SlotState {
    /// On a free list.
    Free = 0,
    /// Handed out.
    Allocated = 1,
}

/// A size class as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SizeClassConfig {
    /// Bytes per slot.
    pub slot_size: u32,
    /// Number of slots.
    pub slot_count: u32,
}

/// Where one class's metadata and data lie, relative to the pool base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassOffsets {
    /// Bytes per slot.
    pub slot_size: u32,
    /// Number of slots.
    pub slot_count: u32,
    /// Offset of the metadata array.
    pub meta_off: u64,
    /// Offset of the data array.
    pub data_off: u64,
}

/// Geometry of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolLayout {
    /// Per-class offsets, in table order.
    pub classes: Vec<ClassOffsets>,
    /// Total pool size in bytes.
    pub size: u64,
}

impl PoolLayout {
    /// Computes the layout of spec A5.1 and validates the classes: at least one,
    /// at most 256, non-zero sizes and counts, sorted by slot size.
    pub fn compute(configs: &[SizeClassConfig]) -> Result<PoolLayout, LayoutError> {
        if configs.is_empty() {
            return Err(LayoutError::NoSizeClasses);
        }
        if configs.len() > 256 {
            return Err(LayoutError::TooManySizeClasses { count: configs.len() });
        }
        let mut off = align64(configs.len() as u64 * CLASS_HEADER_SIZE).ok_or(LayoutError::TooLarge)?;
        let mut classes = Vec::with_capacity(configs.len());
        let mut previous = 0;
        for (class, c) in configs.iter().enumerate() {
            if c.slot_size == 0 {
                return Err(LayoutError::ZeroSlotSize { class });
            }
            if c.slot_count == 0 {
                return Err(LayoutError::ZeroSlotCount { class });
            }
            if c.slot_count == EMPTY {
                return Err(LayoutError::SlotCountTooLarge { class, count: c.slot_count, max: EMPTY - 1 });
            }
            if c.slot_size < previous {
                return Err(LayoutError::ClassesUnsorted { class, slot_size: c.slot_size, previous });
            }
            previous = c.slot_size;
            let meta_off = off;
            let meta_len = align64(SLOT_META_SIZE * u64::from(c.slot_count)).ok_or(LayoutError::TooLarge)?;
            let data_off = meta_off.checked_add(meta_len).ok_or(LayoutError::TooLarge)?;
            let data_len = u64::from(c.slot_size)
                .checked_mul(u64::from(c.slot_count))
                .and_then(align64)
                .ok_or(LayoutError::TooLarge)?;
            off = data_off.checked_add(data_len).ok_or(LayoutError::TooLarge)?;
            classes.push(ClassOffsets { slot_size: c.slot_size, slot_count: c.slot_count, meta_off, data_off });
        }
        Ok(PoolLayout { classes, size: off })
    }

    /// The class configurations this layout was computed from.
    pub fn configs(&self) -> Vec<SizeClassConfig> {
        self.classes.iter().map(|c| SizeClassConfig { slot_size: c.slot_size, slot_count: c.slot_count }).collect()
    }

    /// Largest slot size.
    pub fn max_slot_size(&self) -> u32 {
        self.classes.iter().map(|c| c.slot_size).max().unwrap_or(0)
    }
}

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

    /// Reads the class table of an existing pool and validates it: the table
    /// and every class's arrays must lie inside the region, and the classes must
    /// pass [`PoolLayout::compute`].
    pub fn discover_configs(
        region: Region<'_>,
        base: u64,
        num_classes: u32,
    ) -> Result<Vec<SizeClassConfig>, HeaderError> {
        if num_classes == 0 {
            return Err(HeaderError::NoSizeClasses);
        }
        if num_classes > 256 {
            return Err(LayoutError::TooManySizeClasses { count: num_classes as usize }.into());
        }
        region.range(base, u64::from(num_classes) * CLASS_HEADER_SIZE)?;
        (0..u64::from(num_classes))
            .map(|i| {
                let p = region.typed::<SizeClassHeader>(base + i * CLASS_HEADER_SIZE)?;
                // SAFETY: in bounds and aligned; all-atomic struct, any bits valid.
                let h = unsafe { p.as_ref() };
                Ok(SizeClassConfig {
                    slot_size: h.slot_size.load(Ordering::Relaxed),
                    slot_count: h.slot_count.load(Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// A view of an existing pool whose geometry was validated by the caller
    /// (normally from [`VarSlotPool::discover_configs`] and a layout check).
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

    /// Pushes back every orphan (a slot that is Free but on no list: its
    /// process died between the two ends of an allocate or a free), if the
    /// pool is quiet: no operation in flight in this process, none in any live
    /// peer (`others_busy` says whether some live peer has one, or cannot
    /// tell, like a vox-shm 0.3.1 peer), and no free-list head moved while it
    /// looked. Otherwise it changes nothing and answers
    /// [`OrphanAudit::Busy`]. Bounded: one walk of each list, one scan of each
    /// class.
    ///
    /// Why a quiet snapshot is enough (the order: heads, counters, walk and
    /// states, counters, heads). An operation's first step comes after its
    /// counter's increment and its last before the decrement. A live process
    /// that popped a slot before our first head read is seen by the first look
    /// at the counters (the head read synchronises with its pop), or, if it has
    /// finished since, its slot is seen Allocated. A slot a live process marked
    /// Free is seen with that process's counter up in the second look, or, if
    /// it has finished since, its push moved a head. Pops and pushes between
    /// the two head reads fail the comparison; after it they only touch slots
    /// the walk saw on a list, and an orphan is on none.
    pub fn return_orphans(&self, others_busy: impl Fn() -> bool) -> Result<OrphanAudit, AllocError> {
        let busy = || self.ops_in_flight() != 0 || others_busy();
        // Read-modify-writes, not loads: each reads the latest head in its
        // modification order (a plain load may return an older one), so equal
        // heads before and after (tags included) mean no pop or push of that
        // class came in between. AcqRel: the first synchronises with every
        // push and pop before it (so their counters and links are visible to
        // the loads that follow).
        let heads: Vec<u64> =
            (0..self.layout.classes.len()).map(|c| self.header(c).free_head.fetch_add(0, Ordering::AcqRel)).collect();
        if busy() {
            return Ok(OrphanAudit::Busy);
        }
        let moved = || {
            heads.iter().enumerate().any(|(c, h)| {
                self.header(c).free_head.compare_exchange(*h, *h, Ordering::AcqRel, Ordering::Acquire).is_err()
            })
        };
        let mut orphans = Vec::new();
        for (class, head) in heads.iter().enumerate() {
            let reachable = match self.walk(class, unpack(*head).1, false) {
                Ok(r) => r,
                // A list that changes under the walk can look broken.
                Err(_) if moved() => return Ok(OrphanAudit::Busy),
                Err(e) => return Err(e),
            };
            for idx in 0..self.layout.classes[class].slot_count {
                let m = self.meta(class, idx);
                if !reachable[idx as usize] && m.state.load(Ordering::SeqCst) == SlotState::Free as u32 {
                    orphans.push((class, idx));
                }
            }
        }
        if busy() || moved() {
            return Ok(OrphanAudit::Busy);
        }
        for &(class, idx) in &orphans {
            self.meta(class, idx).owner_peer.store(0, Ordering::Release);
            self.push(class, idx, u32::MAX).map_err(|_| AllocError::Corrupt {
                class_idx: class as u8,
                what: "free list kept moving while returning orphan",
                value: idx,
            })?;
        }
        Ok(OrphanAudit::Done { returned: orphans.len() })
    }

    /// Marks the slots reachable from `idx` on `class`'s list (at most
    /// `slot_count` steps; a cycle or an index out of range is corruption).
    /// With `require_free`, a slot on the list that is not Free is corruption
    /// too (a quiescent check; an audit of a live pool cannot insist on it).
    fn walk(&self, class: usize, mut idx: u32, require_free: bool) -> Result<Vec<bool>, AllocError> {
        let c = self.layout.classes[class];
        let corrupt = |what, value| AllocError::Corrupt { class_idx: class as u8, what, value };
        let mut seen = vec![false; c.slot_count as usize];
        while idx != EMPTY {
            if idx >= c.slot_count {
                return Err(corrupt("index", idx));
            }
            if std::mem::replace(&mut seen[idx as usize], true) {
                return Err(corrupt("cycle at", idx));
            }
            let m = self.meta(class, idx);
            if require_free && m.state.load(Ordering::SeqCst) != SlotState::Free as u32 {
                return Err(corrupt("allocated slot on free list", idx));
            }
            idx = m.next_free.load(Ordering::SeqCst);
        }
        Ok(seen)
    }

    /// Frees every Allocated slot owned by `owner` (crash recovery). Returns how
    /// many were reclaimed. Visits each slot once.
    pub fn reclaim_peer_slots(&self, owner: u32) -> usize {
        let mut n = 0;
        for class in 0..self.layout.classes.len() {
            for idx in 0..self.layout.classes[class].slot_count {
                let m = self.meta(class, idx);
                if m.owner_peer.load(Ordering::Acquire) == owner
                    && m.state.load(Ordering::Acquire) == SlotState::Allocated as u32
                {
                    let slot = SlotRef {
                        class_idx: class as u8,
                        extent_idx: 0,
                        slot_idx: idx,
                        generation: m.generation.load(Ordering::Acquire),
                    };
                    if self.free(slot).is_ok() {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Changes a slot's owner from `from` to `to` if it is Allocated under
    /// `slot.generation` and owned by `from` (a receiver taking over a slot it
    /// holds, so crash recovery of the sender leaves it alone). Returns whether
    /// it did.
    pub fn retag_owner(&self, slot: SlotRef, from: u32, to: u32) -> bool {
        if self.check(slot).is_err() {
            return false;
        }
        let m = self.meta(slot.class_idx as usize, slot.slot_idx);
        m.generation.load(Ordering::Acquire) == slot.generation
            && m.state.load(Ordering::Acquire) == SlotState::Allocated as u32
            // AcqRel: ordered with the allocator's Release store of the owner.
            && m.owner_peer.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// `(generation, state, owner)` of a slot, for inspection.
    pub fn slot_meta(&self, class: usize, idx: u32) -> Option<(u32, u32, u32)> {
        let c = self.layout.classes.get(class)?;
        if idx >= c.slot_count {
            return None;
        }
        let m = self.meta(class, idx);
        Some((
            m.generation.load(Ordering::Acquire),
            m.state.load(Ordering::Acquire),
            m.owner_peer.load(Ordering::Acquire),
        ))
    }

    /// Counts free and allocated slots of a class by scanning its metadata.
    pub fn class_usage(&self, class: usize) -> Option<ClassUsage> {
        let c = self.layout.classes.get(class)?;
        let mut usage = ClassUsage { free: 0, allocated_by_owner: Vec::new(), invalid_state: 0 };
        for idx in 0..c.slot_count {
            let (_, state, owner) = self.slot_meta(class, idx)?;
            match state {
                s if s == SlotState::Free as u32 => usage.free += 1,
                s if s == SlotState::Allocated as u32 => {
                    match usage.allocated_by_owner.iter_mut().find(|(o, _)| *o == owner) {
                        Some((_, n)) => *n += 1,
                        None => usage.allocated_by_owner.push((owner, 1)),
                    }
                }
                _ => usage.invalid_state += 1,
            }
        }
        usage.allocated_by_owner.sort_unstable();
        Some(usage)
    }

    /// Walks a class's free list (at most `slot_count` steps) and checks it:
    /// every entry in range, Free, and listed once. Returns the list length.
    /// For tests and inspection while the pool is quiescent.
    pub fn check_free_list(&self, class: usize) -> Result<u32, AllocError> {
        self.layout.classes.get(class).ok_or(AllocError::Exhausted { size: 0 })?;
        let (_, head) = unpack(self.header(class).free_head.load(Ordering::Acquire));
        let listed = self.walk(class, head, true)?;
        Ok(listed.iter().filter(|&&on| on).count() as u32)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::region::HeapRegion;

    fn sc(slot_size: u32, slot_count: u32) -> SizeClassConfig {
        SizeClassConfig { slot_size, slot_count }
    }

    /// A pool in heap memory that lives for the rest of the test process
    /// (leaked: a view borrows its memory, and the tests keep both).
    fn pool(configs: &[SizeClassConfig]) -> (&'static HeapRegion, VarSlotPool<'static>) {
        let layout = PoolLayout::compute(configs).unwrap();
        let heap: &'static HeapRegion = Box::leak(Box::new(HeapRegion::new_zeroed(layout.size as usize)));
        // SAFETY: fresh, exclusive heap memory that is never freed.
        let p = unsafe { VarSlotPool::init(heap.region(), 0, &layout) }.unwrap();
        (heap, p)
    }

    fn meta_word<'p>(p: &'p VarSlotPool<'_>, class: usize, idx: u32) -> &'p VarSlotMeta {
        p.meta(class, idx)
    }

    #[test]
    fn layout_bytes_match_the_worked_example() {
        let (heap, _) = pool(&[sc(1024, 4), sc(16384, 2)]);
        let r = heap.region();
        let read_u32 = |off: u64| {
            let p = r.range(off, 4).unwrap();
            // SAFETY: 4 bytes in bounds of the live heap.
            u32::from_le_bytes(unsafe { *(p.as_ptr() as *const [u8; 4]) })
        };
        assert_eq!((read_u32(0), read_u32(4)), (1024, 4));
        assert_eq!((read_u32(64), read_u32(68)), (16384, 2));
        // class 0 slot 0 meta at 128: gen 0, state 0, owner 0, next 1
        assert_eq!([read_u32(128), read_u32(132), read_u32(136), read_u32(140)], [0, 0, 0, 1]);
        // last slot of class 0 ends the list
        assert_eq!(read_u32(128 + 3 * 16 + 12), EMPTY);
    }

    #[test]
    fn allocation_order_generations_and_lifo_reuse() {
        let (_h, p) = pool(&[sc(64, 2), sc(256, 1)]);
        let a = p.allocate(10, 0).unwrap();
        assert_eq!(a, SlotRef { class_idx: 0, extent_idx: 0, slot_idx: 0, generation: 1 });
        let b = p.allocate(64, 3).unwrap();
        assert_eq!((b.class_idx, b.slot_idx), (0, 1));
        let c = p.allocate(1, 3).unwrap();
        assert_eq!((c.class_idx, c.slot_idx), (1, 0), "falls through to a larger class");
        assert_eq!(p.allocate(1, 0), Err(AllocError::Exhausted { size: 1 }));
        assert_eq!(p.allocate(257, 0), Err(AllocError::TooLarge { size: 257, max_slot_size: 256 }));
        p.free(a).unwrap();
        let a2 = p.allocate(5, 0).unwrap();
        assert_eq!((a2.slot_idx, a2.generation), (0, 2), "LIFO reuse with generation + 1");
        assert_eq!(p.slot_meta(0, 1), Some((1, 1, 3)));
    }

    #[test]
    fn free_refuses_double_stale_and_bogus_refs() {
        let (_h, p) = pool(&[sc(64, 2)]);
        let a = p.allocate(1, 0).unwrap();
        p.free(a).unwrap();
        assert!(matches!(p.free(a), Err(FreeError::DoubleFree { current: 1, state: 0, .. })));
        let a2 = p.allocate(1, 0).unwrap();
        assert!(matches!(p.free(a), Err(FreeError::DoubleFree { current: 2, state: 1, .. })), "stale generation");
        assert_eq!(
            p.free(SlotRef { class_idx: 5, ..a2 }),
            Err(FreeError::Invalid(SlotError::BadClass { class_idx: 5, classes: 1 }))
        );
        assert_eq!(
            p.free(SlotRef { slot_idx: 2, ..a2 }),
            Err(FreeError::Invalid(SlotError::BadSlot { class_idx: 0, slot_idx: 2, slot_count: 2 }))
        );
        assert_eq!(
            p.free(SlotRef { extent_idx: 1, ..a2 }),
            Err(FreeError::Invalid(SlotError::BadExtent { extent_idx: 1 }))
        );
        p.free(a2).unwrap();
        assert_eq!(p.check_free_list(0), Ok(2));
    }

    #[test]
    fn check_gives_in_bounds_data() {
        let (heap, p) = pool(&[sc(100, 3)]);
        let s = p.allocate(100, 0).unwrap();
        let s2 = p.allocate(100, 0).unwrap();
        let c1 = p.check(s).unwrap();
        let c2 = p.check(s2).unwrap();
        assert_eq!(c1.size(), 100);
        assert_eq!(c2.data().as_ptr() as usize - c1.data().as_ptr() as usize, 100);
        let end = heap.region().base().as_ptr() as usize + heap.region().len();
        assert!(c2.data().as_ptr() as usize + 100 <= end);
    }

    #[test]
    fn reclaim_frees_only_that_owners_allocated_slots() {
        let (_h, p) = pool(&[sc(64, 4)]);
        let mine: Vec<_> = (0..2).map(|_| p.allocate(1, 7).unwrap()).collect();
        let theirs = p.allocate(1, 8).unwrap();
        assert_eq!(p.class_usage(0).unwrap().allocated_by_owner, vec![(7, 2), (8, 1)]);
        assert_eq!(p.reclaim_peer_slots(7), 2);
        assert_eq!(p.reclaim_peer_slots(7), 0);
        for s in mine {
            assert!(p.free(s).is_err(), "reclaimed slots are already free");
        }
        p.free(theirs).unwrap();
        assert_eq!(p.class_usage(0).unwrap().free, 4);
        assert_eq!(p.check_free_list(0), Ok(4));
    }

    #[test]
    fn corrupt_free_lists_are_errors_not_panics() {
        let (_h, p) = pool(&[sc(64, 2), sc(128, 2)]);
        // Head pointing past the class.
        p.header(0).free_head.store(pack(0, 99), Ordering::Relaxed);
        assert_eq!(
            p.allocate(1, 0).map(|s| s.class_idx),
            Ok(1),
            "a corrupt class is skipped; the larger class still serves"
        );
        p.header(1).free_head.store(pack(0, 0), Ordering::Relaxed);
        meta_word(&p, 1, 0).next_free.store(1234, Ordering::Relaxed);
        assert_eq!(p.allocate(1, 0), Err(AllocError::Corrupt { class_idx: 0, what: "head index", value: 99 }));
        assert!(matches!(p.check_free_list(1), Err(AllocError::Corrupt { .. })));
        // A cycle is found by the bounded walk.
        let (_h2, q) = pool(&[sc(64, 2)]);
        meta_word(&q, 0, 1).next_free.store(0, Ordering::Relaxed);
        assert_eq!(q.check_free_list(0), Err(AllocError::Corrupt { class_idx: 0, what: "cycle at", value: 0 }));
        // An allocated slot on the list is not handed out twice.
        let (_h3, r) = pool(&[sc(64, 2)]);
        let s = r.allocate(1, 0).unwrap();
        r.header(0).free_head.store(pack(5, s.slot_idx), Ordering::Relaxed);
        assert!(matches!(r.allocate(1, 0), Err(AllocError::Corrupt { what: "allocated slot on free list", .. })));
        r.free(s).unwrap();
    }

    /// Another process's view of the same pool (its own operation counter).
    fn other_view<'a>(p: &VarSlotPool<'a>) -> VarSlotPool<'a> {
        VarSlotPool::attach(p.region, p.base, &PoolLayout::compute(&p.layout_configs()).unwrap()).unwrap()
    }

    impl VarSlotPool<'_> {
        fn layout_configs(&self) -> Vec<SizeClassConfig> {
            self.layout.classes.iter().map(|c| sc(c.slot_size, c.slot_count)).collect()
        }
    }

    fn recover(host: &VarSlotPool<'_>, dead_owner: u32) {
        host.reclaim_peer_slots(dead_owner);
        assert!(matches!(host.return_orphans(|| false), Ok(OrphanAudit::Done { .. })));
    }

    #[test]
    fn a_process_dying_at_any_step_of_allocate_or_free_leaks_nothing() {
        for steps in 0..=STEPS_ALLOCATE {
            let (_h, host) = pool(&[sc(64, 4)]);
            let held = host.allocate(1, 0).unwrap(); // the host's own, untouched
            let guest = other_view(&host);
            let _ = guest.allocate_stopping_after(1, 3, steps).unwrap();
            recover(&host, 3);
            assert_eq!(host.class_usage(0).unwrap().free, 3, "allocate stopped after {steps} steps");
            assert_eq!(host.check_free_list(0), Ok(3), "allocate stopped after {steps} steps");
            host.free(held).unwrap();
        }
        for steps in 0..=STEPS_FREE {
            let (_h, host) = pool(&[sc(64, 4)]);
            let guest = other_view(&host);
            let slot = guest.allocate(1, 3).unwrap();
            guest.free_stopping_after(slot, steps).unwrap();
            recover(&host, 3);
            assert_eq!(host.check_free_list(0), Ok(4), "free stopped after {steps} steps");
        }
    }

    #[test]
    fn the_orphan_audit_waits_for_a_quiet_pool() {
        let (_h, host) = pool(&[sc(64, 2)]);
        let guest = other_view(&host);
        let _ = guest.allocate_stopping_after(1, 3, 1).unwrap(); // popped, then died
                                                                 // A live peer with an operation in flight: nothing is touched.
        assert_eq!(host.return_orphans(|| true), Ok(OrphanAudit::Busy));
        assert_eq!(host.check_free_list(0), Ok(1));
        assert_eq!(host.return_orphans(|| false), Ok(OrphanAudit::Done { returned: 1 }));
        assert_eq!(host.return_orphans(|| false), Ok(OrphanAudit::Done { returned: 0 }));
        assert_eq!(host.check_free_list(0), Ok(2));
    }

    #[test]
    fn discover_validates_the_class_table() {
        let layout = PoolLayout::compute(&[sc(64, 2), sc(128, 1)]).unwrap();
        let heap = HeapRegion::new_zeroed(layout.size as usize);
        // SAFETY: exclusive heap memory.
        let _p = unsafe { VarSlotPool::init(heap.region(), 0, &layout) }.unwrap();
        assert_eq!(VarSlotPool::discover_configs(heap.region(), 0, 2).unwrap(), vec![sc(64, 2), sc(128, 1)]);
        assert!(matches!(
            VarSlotPool::discover_configs(heap.region(), heap.region().len() as u64 - 64, 2),
            Err(HeaderError::OutOfBounds(_))
        ));
        assert_eq!(VarSlotPool::discover_configs(heap.region(), 0, 0), Err(HeaderError::NoSizeClasses));
        // Claiming 3 classes reads a zero header as the third.
        let bad = VarSlotPool::discover_configs(heap.region(), 0, 3).unwrap();
        assert_eq!(PoolLayout::compute(&bad), Err(LayoutError::ZeroSlotSize { class: 2 }));
        assert!(VarSlotPool::attach(heap.region(), 64, &layout).is_err(), "pool past the end");
    }

    #[test]
    fn concurrent_allocate_free_never_hands_a_slot_out_twice() {
        let (_h, p) = pool(&[sc(8, 16)]);
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..2000 {
                        if let Ok(slot) = p.allocate(8, t) {
                            let d = p.check(slot).unwrap().data();
                            // Stamp the slot; a slot handed out twice would show
                            // another thread's stamp before we free it.
                            // SAFETY: the slot is exclusively ours until freed.
                            unsafe { d.as_ptr().cast::<u32>().write_volatile(t) };
                            std::hint::spin_loop();
                            // SAFETY: as above.
                            assert_eq!(unsafe { d.as_ptr().cast::<u32>().read_volatile() }, t);
                            p.free(slot).unwrap();
                        }
                    }
                });
            }
        });
        assert_eq!(p.check_free_list(0), Ok(16));
    }
}
