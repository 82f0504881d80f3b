//! Views of raw memory that the segment structures live in.
//!
//! [`Region`] is a copyable pointer + length that *borrows* the memory's owner
//! (an [`MmapRegion`](crate::MmapRegion), a [`Mapping`](crate::Mapping), a
//! [`HeapRegion`]): its lifetime `'a` is the owner's borrow, and every view
//! built from it (`BipBuf<'a>`, `VarSlotPool<'a>`, `PeerTable<'a>`) carries the
//! same lifetime, so safe code cannot keep a view after the mapping is gone
//! (memmap2's rule). The `vox-shm` crate stores views next to the mapping they
//! borrow (inside one `Arc`) by way of the `unsafe` [`Region::from_raw`], and
//! hands them out only reborrowed at its own lifetime. Every offset taken into
//! a region goes through [`Region::range`], which refuses anything that does
//! not fit, so an untrusted offset can never produce a pointer outside the
//! mapping.
//!
//! A view cannot outlive its mapping:
//! ```compile_fail,E0597
//! use shm_primitives::{bipbuf::BipBuf, MmapRegion};
//! let region = {
//!     let m = MmapRegion::create_anonymous("demo", 4096).unwrap();
//!     m.region()
//! };
//! let ring = BipBuf::attach(region, 0, 64).unwrap();
//! println!("{}", ring.header().stored_capacity());
//! ```
//! nor a pool view its heap memory:
//! ```compile_fail,E0505
//! use shm_primitives::varslot::{PoolLayout, SizeClassConfig, VarSlotPool};
//! use shm_primitives::HeapRegion;
//! let layout = PoolLayout::compute(&[SizeClassConfig { slot_size: 64, slot_count: 2 }]).unwrap();
//! let heap = HeapRegion::new_zeroed(layout.size as usize);
//! let pool = VarSlotPool::attach(heap.region(), 0, &layout).unwrap();
//! drop(heap);
//! pool.allocate(1, 0).unwrap();
//! ```

use std::alloc::{self, Layout};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// An offset/size pair that does not fit inside a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("range {offset}+{size} is outside the {region_len}-byte region")]
pub struct OutOfBounds {
    /// Start of the rejected range.
    pub offset: u64,
    /// Length of the rejected range.
    pub size: u64,
    /// Length of the region it was checked against.
    pub region_len: u64,
}

/// A contiguous, mapped byte range, borrowed from its owner for `'a`.
/// Copyable; does not own the memory.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a> {
    base: NonNull<u8>,
    len: usize,
    _owner: PhantomData<&'a [u8]>,
}

// SAFETY: a `Region` is only a pointer and a length. All access to the memory
// behind it goes through atomics or through types whose own `unsafe` contracts
// say who may touch which bytes; the pointer itself may move between threads.
unsafe impl Send for Region<'_> {}
// SAFETY: see the `Send` impl; sharing the pointer value is harmless.
unsafe impl Sync for Region<'_> {}

impl<'a> Region<'a> {
    /// Builds a view over `len` bytes at `base`, for a lifetime the caller
    /// chooses.
    ///
    /// # Safety
    /// `base..base+len` must stay mapped, readable and writable for all of `'a`
    /// (so for as long as the region or anything built from it is used), and
    /// `base` must be 64-byte aligned (the segment format aligns every
    /// structure to 64 from its base).
    pub unsafe fn from_raw(base: NonNull<u8>, len: usize) -> Self {
        debug_assert_eq!(base.as_ptr() as usize % 64, 0, "region base must be 64-aligned");
        Self { base, len, _owner: PhantomData }
    }

    /// First byte of the region.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks that `offset..offset+size` lies inside the region and returns a
    /// pointer to its first byte.
    pub fn range(&self, offset: u64, size: u64) -> Result<NonNull<u8>, OutOfBounds> {
        let err = OutOfBounds { offset, size, region_len: self.len as u64 };
        let end = offset.checked_add(size).ok_or(err)?;
        if end > self.len as u64 {
            return Err(err);
        }
        // SAFETY: offset + size <= len, so the offset stays inside (or one past)
        // the mapped allocation that `from_raw`'s contract guarantees.
        Ok(unsafe { self.base.add(offset as usize) })
    }

    /// Like [`Region::range`] for a `T` at `offset`, also checking alignment.
    pub fn typed<T>(&self, offset: u64) -> Result<NonNull<T>, OutOfBounds> {
        let size = std::mem::size_of::<T>() as u64;
        let p = self.range(offset, size)?;
        if (p.as_ptr() as usize) % std::mem::align_of::<T>() != 0 {
            return Err(OutOfBounds { offset, size, region_len: self.len as u64 });
        }
        Ok(p.cast())
    }
}

/// A zeroed, 64-byte-aligned heap allocation, for tests, benchmarks and loom
/// models that need segment structures without a file.
#[derive(Debug)]
pub struct HeapRegion {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the allocation is owned exclusively by this value; see `Region`.
unsafe impl Send for HeapRegion {}
// SAFETY: shared access only hands out `Region` views, see `Region`.
unsafe impl Sync for HeapRegion {}

impl HeapRegion {
    /// Allocates `len` zeroed bytes (at least 64).
    pub fn new_zeroed(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(64), 64).expect("heap region size overflows");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Self { ptr, layout }
    }

    /// A view of the whole allocation, borrowing it.
    pub fn region(&self) -> Region<'_> {
        // SAFETY: the allocation is 64-aligned and lives as long as `self`,
        // which the returned lifetime borrows.
        unsafe { Region::from_raw(self.ptr, self.layout.size()) }
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Rounds `x` up to a multiple of 64, or `None` on overflow.
pub const fn align64(x: u64) -> Option<u64> {
    match x.checked_add(63) {
        Some(v) => Some(v & !63),
        None => None,
    }
}

/// Rounds `x` up to a multiple of 4 (saturating at the largest multiple of 4).
pub const fn align4(x: u32) -> u32 {
    match x.checked_add(3) {
        Some(v) => v & !3,
        None => !3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_rejects_everything_outside() {
        let heap = HeapRegion::new_zeroed(256);
        let r = heap.region();
        assert!(r.range(0, 256).is_ok());
        assert!(r.range(255, 1).is_ok());
        assert!(r.range(256, 0).is_ok());
        assert_eq!(r.range(200, 57), Err(OutOfBounds { offset: 200, size: 57, region_len: 256 }));
        assert!(r.range(u64::MAX, 2).is_err(), "overflowing end must be refused");
        assert!(r.typed::<u32>(2).is_err(), "misaligned typed access must be refused");
        assert!(r.typed::<u64>(248).is_ok());
        assert!(r.typed::<u64>(252).is_err());
    }

    #[test]
    fn alignment_helpers() {
        assert_eq!(align64(0), Some(0));
        assert_eq!(align64(1), Some(64));
        assert_eq!(align64(128 + 128), Some(256));
        assert_eq!(align64(u64::MAX), None);
        assert_eq!(align4(5), 8);
        assert_eq!(align4(8), 8);
        assert_eq!(align4(u32::MAX), 0xFFFF_FFFC);
    }

    #[test]
    fn heap_region_is_zeroed_and_aligned() {
        let heap = HeapRegion::new_zeroed(1000);
        let r = heap.region();
        assert_eq!(r.base().as_ptr() as usize % 64, 0);
        let p = r.range(0, 1000).unwrap();
        // SAFETY: 1000 bytes were just checked to be inside the live allocation.
        let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), 1000) };
        assert!(bytes.iter().all(|&b| b == 0));
    }
}
