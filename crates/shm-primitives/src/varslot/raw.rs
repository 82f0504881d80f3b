//! The pool's memory format (spec A5.1): class headers and slot metadata, as
//! they lie in the segment.

use std::mem::size_of;

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
#[derive(Debug)]
#[repr(C, align(64))]
pub struct SizeClassHeader {
    pub(super) slot_size: AtomicU32,
    pub(super) slot_count: AtomicU32,
    pub(super) free_head: AtomicU64,
    #[cfg(not(loom))]
    pub(super) _reserved: [AtomicU32; 12],
}

impl SizeClassHeader {
    /// Bytes per slot, as stored (a peer may have written anything).
    pub fn slot_size(&self) -> u32 {
        self.slot_size.load(Ordering::Relaxed)
    }

    /// Number of slots, as stored.
    pub fn slot_count(&self) -> u32 {
        self.slot_count.load(Ordering::Relaxed)
    }
}

/// Per-slot metadata.
#[derive(Debug)]
#[repr(C)]
pub struct VarSlotMeta {
    pub(super) generation: AtomicU32,
    pub(super) state: AtomicU32,
    pub(super) owner_peer: AtomicU32,
    pub(super) next_free: AtomicU32,
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
