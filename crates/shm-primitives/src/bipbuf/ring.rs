//! A view of one ring: where its header and data lie.

use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::region::{OutOfBounds, Region};
use crate::sync::Ordering;

use super::header::{BipBufHeader, RingError, BIPBUF_HEADER_SIZE};

/// A view of one BipBuffer: header plus data, borrowing the memory it lives
/// in for `'a`. Copyable, does not own memory.
#[derive(Debug, Clone, Copy)]
pub struct BipBuf<'a> {
    pub(super) header: NonNull<BipBufHeader>,
    pub(super) data: NonNull<u8>,
    pub(super) capacity: u32,
    pub(super) _mem: PhantomData<&'a [u8]>,
}

// SAFETY: the view only holds pointers; all shared state is accessed through
// atomics, and the data bytes through the single producer/consumer handles.
unsafe impl Send for BipBuf<'_> {}
// SAFETY: see `Send`.
unsafe impl Sync for BipBuf<'_> {}

impl<'a> BipBuf<'a> {
    pub(super) fn locate(
        region: Region<'a>,
        header_offset: u64,
        capacity: u32,
    ) -> Result<(NonNull<BipBufHeader>, NonNull<u8>), OutOfBounds> {
        let header = region.typed::<BipBufHeader>(header_offset)?;
        let data = region.range(header_offset + BIPBUF_HEADER_SIZE as u64, capacity as u64)?;
        Ok((header, data))
    }

    /// Writes a fresh header at `header_offset` and returns the view.
    ///
    /// # Safety
    /// Nobody else may access the ring while it is initialised, and the region's
    /// memory must outlive the view and every handle made from it.
    pub unsafe fn init(region: Region<'a>, header_offset: u64, capacity: u32) -> Result<BipBuf<'a>, OutOfBounds> {
        let (header, data) = Self::locate(region, header_offset, capacity)?;
        // SAFETY: in bounds and aligned (checked by `locate`); exclusive access
        // during initialisation is the caller's contract.
        unsafe { header.as_ptr().write(BipBufHeader::new(capacity)) };
        Ok(BipBuf { header, data, capacity, _mem: PhantomData })
    }

    /// A view of an existing ring with a *trusted* capacity (from our own
    /// configuration or a validated segment header), bounds-checked.
    pub fn attach(region: Region<'a>, header_offset: u64, capacity: u32) -> Result<BipBuf<'a>, OutOfBounds> {
        let (header, data) = Self::locate(region, header_offset, capacity)?;
        Ok(BipBuf { header, data, capacity, _mem: PhantomData })
    }

    /// A view over separately allocated parts (loom models, tests), for a
    /// lifetime the caller chooses.
    ///
    /// # Safety
    /// `header` must point to a live `BipBufHeader` and `data` to `capacity`
    /// writable bytes, both live for all of `'a`.
    pub unsafe fn from_parts(header: NonNull<BipBufHeader>, data: NonNull<u8>, capacity: u32) -> BipBuf<'a> {
        BipBuf { header, data, capacity, _mem: PhantomData }
    }

    /// The same view with a lifetime the caller vouches for: for a structure
    /// that keeps the mapping alive next to the view (as a link keeps its
    /// `Arc<Segment>`), where the borrow checker cannot see it.
    ///
    /// # Safety
    /// The memory must stay mapped for all of `'b`.
    pub unsafe fn assume_lives<'b>(self) -> BipBuf<'b> {
        BipBuf { header: self.header, data: self.data, capacity: self.capacity, _mem: PhantomData }
    }

    /// The header in shared memory.
    pub fn header(&self) -> &BipBufHeader {
        // SAFETY: constructors guarantee a live, aligned header; all-atomic
        // fields make every bit pattern valid.
        unsafe { self.header.as_ref() }
    }

    /// Data bytes in the ring.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// `read == write` and no wrap pending. A snapshot; either side may move.
    pub fn is_empty(&self) -> bool {
        let h = self.header();
        // Acquire on all three: pairs with the Release stores of both sides.
        let read = h.read.load(Ordering::Acquire);
        let write = h.write.load(Ordering::Acquire);
        let watermark = h.watermark.load(Ordering::Acquire);
        read == write && watermark == 0
    }

    /// Raw `(write, watermark, read)` snapshot, for inspection tools.
    pub fn positions(&self) -> (u32, u32, u32) {
        let h = self.header();
        (h.write.load(Ordering::Acquire), h.watermark.load(Ordering::Acquire), h.read.load(Ordering::Acquire))
    }

    /// Resets all positions to 0 (crash recovery only, when neither side uses
    /// the ring). Release, so a later attacher sees the reset.
    ///
    /// Every host-owned word is rewritten from this process's validated
    /// geometry, the stored capacity and the padding included: a guest that
    /// scribbled over its ring's header leaves nothing behind for the next one.
    pub fn reset(&self) {
        let h = self.header();
        h.capacity.store(self.capacity, Ordering::Release);
        #[cfg(not(loom))]
        for w in h._pad0.iter().chain(h._pad1.iter()) {
            w.store(0, Ordering::Relaxed);
        }
        h.write.store(0, Ordering::Release);
        h.watermark.store(0, Ordering::Release);
        h.read.store(0, Ordering::Release);
        h.producer_waiting.store(0, Ordering::Release);
        h.consumer_waiting.store(0, Ordering::Release);
    }

    pub(super) fn check(&self, field: &'static str, value: u32) -> Result<u32, RingError> {
        if value > self.capacity {
            Err(RingError::Corrupt { field, value, capacity: self.capacity })
        } else {
            Ok(value)
        }
    }
}
