//! The BipBuffer (spec A3): a single-producer, single-consumer byte ring whose
//! grants are always contiguous.
//!
//! The producer owns `write` (and sets `watermark` when it wraps); the consumer
//! owns `read` (and clears `watermark` once it has drained the tail). Each side
//! keeps its own index in a local copy and only ever loads the other side's, so a
//! peer scribbling over *our* index in shared memory cannot confuse us. Every
//! index loaded from shared memory is checked against the capacity we were
//! built with (never the capacity stored in the ring header), and a bad value is
//! a [`RingError`], not a panic or an out-of-bounds access.
//!
//! ```
//! use shm_primitives::bipbuf::BipBuf;
//! use shm_primitives::HeapRegion;
//!
//! let heap = HeapRegion::new_zeroed(128 + 64);
//! // SAFETY: the heap region is exclusively ours and outlives the ring.
//! let ring = unsafe { BipBuf::init(heap.region(), 0, 64) }.unwrap();
//! // SAFETY: exactly one producer and one consumer exist for this ring.
//! let (mut tx, mut rx) = unsafe { (ring.producer(), ring.consumer()) };
//!
//! assert!(tx.try_grant(5).unwrap().is_some());
//! tx.granted_mut().unwrap().copy_from_slice(b"hello");
//! tx.commit(5).unwrap();
//!
//! let got = rx.try_read().unwrap().unwrap();
//! let mut buf = [0u8; 5];
//! got.copy_to(0, &mut buf).unwrap();
//! assert_eq!(&buf, b"hello");
//! rx.release(5).unwrap();
//! assert!(ring.is_empty());
//! ```

use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::region::{OutOfBounds, Region};
use crate::sync::{AtomicU32, Ordering};

/// Size of a BipBuffer header; data follows immediately.
pub const BIPBUF_HEADER_SIZE: usize = 128;

/// Byte offsets inside a BipBuffer header.
pub mod offsets {
    /// `write`, producer's next write position.
    pub const WRITE: usize = 0;
    /// `watermark`, end of valid data before a wrap (0 = no wrap).
    pub const WATERMARK: usize = 4;
    /// `capacity`, immutable.
    pub const CAPACITY: usize = 8;
    /// `producer_waiting` (extension C1), on the producer's cache line.
    pub const PRODUCER_WAITING: usize = 12;
    /// `read`, consumer's frontier.
    pub const READ: usize = 64;
    /// `consumer_waiting` (extension C1), on the consumer's cache line.
    pub const CONSUMER_WAITING: usize = 68;
}

/// A BipBuffer header in shared memory. The producer's words and the
/// consumer's words sit on separate 64-byte cache lines.
#[repr(C, align(64))]
pub struct BipBufHeader {
    write: AtomicU32,
    watermark: AtomicU32,
    capacity: AtomicU32,
    producer_waiting: AtomicU32,
    #[cfg(not(loom))]
    _pad0: [AtomicU32; 12],
    read: AtomicU32,
    consumer_waiting: AtomicU32,
    #[cfg(not(loom))]
    _pad1: [AtomicU32; 14],
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<BipBufHeader>() == BIPBUF_HEADER_SIZE);
    assert!(offset_of!(BipBufHeader, write) == offsets::WRITE);
    assert!(offset_of!(BipBufHeader, watermark) == offsets::WATERMARK);
    assert!(offset_of!(BipBufHeader, capacity) == offsets::CAPACITY);
    assert!(offset_of!(BipBufHeader, producer_waiting) == offsets::PRODUCER_WAITING);
    assert!(offset_of!(BipBufHeader, read) == offsets::READ);
    assert!(offset_of!(BipBufHeader, consumer_waiting) == offsets::CONSUMER_WAITING);
};

impl BipBufHeader {
    /// A fresh header: everything zero but the capacity.
    pub fn new(capacity: u32) -> Self {
        Self {
            write: AtomicU32::new(0),
            watermark: AtomicU32::new(0),
            capacity: AtomicU32::new(capacity),
            producer_waiting: AtomicU32::new(0),
            #[cfg(not(loom))]
            _pad0: crate::sync::zeroed_u32s(),
            read: AtomicU32::new(0),
            consumer_waiting: AtomicU32::new(0),
            #[cfg(not(loom))]
            _pad1: crate::sync::zeroed_u32s(),
        }
    }

    /// Capacity as stored in shared memory (untrusted; for validation only).
    pub fn stored_capacity(&self) -> u32 {
        self.capacity.load(Ordering::Relaxed)
    }

    /// The consumer's wait flag (extension C1).
    pub fn consumer_waiting(&self) -> &AtomicU32 {
        &self.consumer_waiting
    }

    /// The producer's wait flag (extension C1).
    pub fn producer_waiting(&self) -> &AtomicU32 {
        &self.producer_waiting
    }
}

/// A shared-memory value broke the ring's invariants (a corrupt or hostile peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// An index loaded from shared memory is beyond the capacity.
    #[error("ring {field} is {value}, beyond the capacity {capacity}")]
    Corrupt {
        /// `read`, `write` or `watermark`.
        field: &'static str,
        /// Value found.
        value: u32,
        /// Capacity of the ring.
        capacity: u32,
    },
    /// The producer's watermark is below our read position: the wrap would
    /// go back over bytes we consumed. An honest producer sets the watermark to
    /// its write position, which is never behind what we have read.
    #[error("ring watermark {watermark} is behind the read position {read}")]
    WatermarkBehindRead {
        /// Watermark found.
        watermark: u32,
        /// Our read position.
        read: u32,
    },
    /// A wrap stayed half-published (`write == watermark`) far longer than an
    /// honest producer takes between its two stores.
    #[error("ring wrap at watermark {watermark} never completed")]
    WrapNeverCompleted {
        /// Watermark found.
        watermark: u32,
    },
    /// `commit` without a pending grant.
    #[error("commit without a grant")]
    NoGrant,
    /// `commit` of more bytes than were granted.
    #[error("commit of {n} bytes exceeds the {granted}-byte grant")]
    CommitTooLarge {
        /// Bytes to commit.
        n: u32,
        /// Bytes granted.
        granted: u32,
    },
    /// `release` of more bytes than the consumer holds.
    #[error("release of {n} bytes from {read} passes the capacity {capacity}")]
    ReleaseTooLarge {
        /// Bytes to release.
        n: u32,
        /// Current read position.
        read: u32,
        /// Capacity of the ring.
        capacity: u32,
    },
}

/// A view of one BipBuffer: header plus data, borrowing the memory it lives
/// in for `'a`. Copyable, does not own memory.
#[derive(Debug, Clone, Copy)]
pub struct BipBuf<'a> {
    header: NonNull<BipBufHeader>,
    data: NonNull<u8>,
    capacity: u32,
    _mem: PhantomData<&'a [u8]>,
}

// SAFETY: the view only holds pointers; all shared state is accessed through
// atomics, and the data bytes through the single producer/consumer handles.
unsafe impl Send for BipBuf<'_> {}
// SAFETY: see `Send`.
unsafe impl Sync for BipBuf<'_> {}

impl<'a> BipBuf<'a> {
    fn locate(
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

    /// The producer handle.
    ///
    /// # Safety
    /// At most one producer handle may exist for a ring at any time, in any
    /// process; the segment layer enforces this per process.
    pub unsafe fn producer(&self) -> BipBufProducer<'a> {
        let write = self.header().write.load(Ordering::Relaxed).min(self.capacity);
        BipBufProducer { buf: *self, write, cached_read: 0, pending: None, wraps: 0 }
    }

    /// The consumer handle.
    ///
    /// # Safety
    /// At most one consumer handle may exist for a ring at any time.
    pub unsafe fn consumer(&self) -> BipBufConsumer<'a> {
        let read = self.header().read.load(Ordering::Relaxed).min(self.capacity);
        BipBufConsumer { buf: *self, read, known_end: read, unpublished: 0, last_seen: (0, 0) }
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

    fn check(&self, field: &'static str, value: u32) -> Result<u32, RingError> {
        if value > self.capacity {
            Err(RingError::Corrupt { field, value, capacity: self.capacity })
        } else {
            Ok(value)
        }
    }
}

/// The producing end of a ring.
#[derive(Debug)]
pub struct BipBufProducer<'a> {
    buf: BipBuf<'a>,
    /// Our `write`; only we store it, so the shared copy is never loaded back.
    write: u32,
    /// Last `read` we loaded. It can only be stale in the safe direction (the
    /// consumer frees space, never takes it back), so a grant that fits against
    /// it also fits against the real value.
    cached_read: u32,
    /// `(start, len)` of the outstanding grant.
    pending: Option<(u32, u32)>,
    /// Number of wraps so far (a wrap must be made visible to a sleeping
    /// consumer even when the grant after it fails).
    wraps: u64,
}

impl<'a> BipBufProducer<'a> {
    /// The same handle with a lifetime the caller vouches for (see
    /// [`BipBuf::assume_lives`]).
    ///
    /// # Safety
    /// The ring's memory must stay mapped for all of `'b`.
    pub unsafe fn assume_lives<'b>(self) -> BipBufProducer<'b> {
        BipBufProducer {
            // SAFETY: forwarded to the caller's contract.
            buf: unsafe { self.buf.assume_lives() },
            write: self.write,
            cached_read: self.cached_read,
            pending: self.pending,
            wraps: self.wraps,
        }
    }

    /// The ring this handle writes.
    pub fn ring(&self) -> &BipBuf<'a> {
        &self.buf
    }

    fn load_read(&mut self) -> Result<u32, RingError> {
        // Acquire: pairs with the consumer's Release store of `read`, so the
        // consumer is done with the bytes it released before we reuse them.
        let read = self.buf.check("read", self.buf.header().read.load(Ordering::Acquire))?;
        self.cached_read = read;
        Ok(read)
    }

    /// Grants that need no state change, against a given `read`.
    fn fits_in_place(&self, read: u32, n: u32) -> bool {
        let (write, cap) = (self.write, self.buf.capacity);
        if write >= read {
            cap - write >= n
        } else {
            // Strict: write must never catch up with read from behind, or a full
            // ring would look empty.
            write.checked_add(n).is_some_and(|end| end < read)
        }
    }

    /// Reserves `n` contiguous bytes. `Ok(None)` means "full for now".
    ///
    /// Exactly spec A3.2, including its quirk: when the tail is too short and
    /// `read != 0` the producer wraps (watermark = write, write = 0) even if the
    /// grant then fails; undoing the wrap would race with the consumer.
    pub fn try_grant(&mut self, n: u32) -> Result<Option<u32>, RingError> {
        self.pending = None;
        if n == 0 {
            self.pending = Some((self.write, 0));
            return Ok(Some(self.write));
        }
        if !self.fits_in_place(self.cached_read, n) {
            let read = self.load_read()?;
            if !self.fits_in_place(read, n) {
                if self.write < read || read == 0 {
                    return Ok(None);
                }
                self.wrap();
                return Ok(if n < read { self.grant(0, n) } else { None });
            }
        }
        Ok(self.grant(self.write, n))
    }

    fn grant(&mut self, start: u32, n: u32) -> Option<u32> {
        self.pending = Some((start, n));
        Some(start)
    }

    fn wrap(&mut self) {
        let h = self.buf.header();
        // `write = 0` is stored *before* the watermark (the spec, and 0.3.1,
        // store them the other way round; the bytes are the same). A consumer
        // loads `write` before the watermark, so with this order one that sees
        // the new watermark also sees `write = 0` and can never mistake the
        // pre-wrap `write` for new data (the race `try_read` guards against
        // for producers that store the old way). In the short window where it
        // sees `write = 0` but not yet the watermark, the ring looks empty to
        // it, which is harmless: `write < read` with no watermark is read as
        // "nothing yet", and a wrap is always followed by a wake-up.
        // Release (both): the frames below the old write are complete and
        // visible to a consumer that Acquires either value.
        h.write.store(0, Ordering::Release);
        h.watermark.store(self.write, Ordering::Release);
        self.write = 0;
        self.wraps += 1;
    }

    /// `(write, cached_read, wraps)`, for diagnostics.
    #[doc(hidden)]
    pub fn debug_state(&self) -> (u32, u32, u64) {
        (self.write, self.cached_read, self.wraps)
    }

    /// How many times this producer wrapped to the front.
    pub fn wraps(&self) -> u64 {
        self.wraps
    }

    /// Our write position (local copy).
    pub fn position(&self) -> u32 {
        self.write
    }

    /// Whether `try_grant(n)` would succeed now, without changing anything.
    pub fn can_grant(&mut self, n: u32) -> Result<bool, RingError> {
        if n == 0 {
            return Ok(true);
        }
        if n > self.buf.capacity {
            return Ok(false);
        }
        if self.fits_in_place(self.cached_read, n) {
            return Ok(true);
        }
        let read = self.load_read()?;
        Ok(self.fits_in_place(read, n) || (self.write >= read && read != 0 && n < read))
    }

    /// The bytes of the outstanding grant.
    pub fn granted_mut(&mut self) -> Option<&mut [u8]> {
        let (start, len) = self.pending?;
        // SAFETY: start + len <= capacity (checked in `try_grant`), the data
        // pointer covers `capacity` bytes, and the protocol keeps the consumer
        // out of [start, start+len) until we publish it in `commit`.
        Some(unsafe { std::slice::from_raw_parts_mut(self.buf.data.as_ptr().add(start as usize), len as usize) })
    }

    /// Offset of the outstanding grant inside the data area.
    pub fn granted_offset(&self) -> Option<u32> {
        self.pending.map(|(s, _)| s)
    }

    /// Publishes the first `n` bytes of the outstanding grant.
    pub fn commit(&mut self, n: u32) -> Result<(), RingError> {
        let (start, granted) = self.pending.ok_or(RingError::NoGrant)?;
        if n > granted {
            return Err(RingError::CommitTooLarge { n, granted });
        }
        self.pending = None;
        self.write = start + n;
        // Release: publishes the frame bytes written into the grant to the
        // consumer's Acquire load of `write` in `try_read`.
        self.buf.header().write.store(self.write, Ordering::Release);
        Ok(())
    }

    /// Drops the outstanding grant without publishing anything.
    pub fn cancel(&mut self) {
        self.pending = None;
    }
}

/// Readable bytes at the head of the ring, valid until the next `release`.
///
/// The bytes live in shared memory that a misbehaving producer could still
/// write, so this type offers copies (taken with single reads) rather than a
/// slice: callers validate what they copied, never re-read it.
#[derive(Debug, Clone, Copy)]
pub struct ReadRegion<'a> {
    offset: u32,
    ptr: NonNull<u8>,
    len: u32,
    _ring: PhantomData<&'a ()>,
}

impl ReadRegion<'_> {
    /// Offset of the first readable byte in the data area.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// Number of readable bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Always false: an empty ring yields no region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address of the first readable byte (for alignment checks).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Copies `dst.len()` bytes from `at`; `None` if that passes the end.
    pub fn copy_to(&self, at: u32, dst: &mut [u8]) -> Option<()> {
        let end = (at as usize).checked_add(dst.len())?;
        if end > self.len as usize {
            return None;
        }
        // SAFETY: [at, end) is inside the readable region, which lies inside the
        // ring's data area; `dst` is a distinct Rust buffer, so no overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(at as usize), dst.as_mut_ptr(), dst.len()) };
        Some(())
    }

    /// Copies `len` bytes from `at` into a new vector (no zero-filling first);
    /// `None` if that passes the end.
    pub fn to_vec(&self, at: u32, len: u32) -> Option<Vec<u8>> {
        let end = at.checked_add(len)?;
        if end > self.len {
            return None;
        }
        let mut v = Vec::with_capacity(len as usize);
        // SAFETY: [at, end) is inside the readable region; `v` has capacity for
        // `len` bytes, all of which are initialised by the copy before `set_len`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(at as usize), v.as_mut_ptr(), len as usize);
            v.set_len(len as usize);
        }
        Some(v)
    }

    /// Reads `N` bytes at `at` with one volatile read each, so a value that is
    /// validated afterwards cannot change between the check and its use.
    pub fn read_array<const N: usize>(&self, at: u32) -> Option<[u8; N]> {
        let end = (at as usize).checked_add(N)?;
        if end > self.len as usize {
            return None;
        }
        let mut out = [0u8; N];
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: at + i < end <= len, inside the readable region.
            *b = unsafe { self.ptr.as_ptr().add(at as usize + i).read_volatile() };
        }
        Some(out)
    }
}

/// The consuming end of a ring.
#[derive(Debug)]
pub struct BipBufConsumer<'a> {
    buf: BipBuf<'a>,
    /// Our `read`; only we store it (the producer only loads it).
    read: u32,
    /// End of the bytes we already know are published (from an earlier
    /// Acquire load of `write` or `watermark`). While `read` is below it we
    /// hand out `[read, known_end)` without touching the producer's cache line.
    known_end: u32,
    /// Bytes released locally but not yet published to the producer (see
    /// [`BipBufConsumer::release_deferred`]).
    unpublished: u32,
    /// `(write, watermark)` as last loaded, for diagnostics.
    last_seen: (u32, u32),
}

impl<'a> BipBufConsumer<'a> {
    /// The same handle with a lifetime the caller vouches for (see
    /// [`BipBuf::assume_lives`]).
    ///
    /// # Safety
    /// The ring's memory must stay mapped for all of `'b`.
    pub unsafe fn assume_lives<'b>(self) -> BipBufConsumer<'b> {
        BipBufConsumer {
            // SAFETY: forwarded to the caller's contract.
            buf: unsafe { self.buf.assume_lives() },
            read: self.read,
            known_end: self.known_end,
            unpublished: self.unpublished,
            last_seen: self.last_seen,
        }
    }

    /// The ring this handle reads.
    pub fn ring(&self) -> &BipBuf<'a> {
        &self.buf
    }

    /// `(read, known_end, unpublished, last loaded (write, watermark))`, for
    /// diagnostics.
    #[doc(hidden)]
    pub fn debug_state(&self) -> (u32, u32, u32, (u32, u32)) {
        (self.read, self.known_end, self.unpublished, self.last_seen)
    }

    /// Our read position (local copy). It changes on `release` and when
    /// `try_read` hands a drained tail back to the producer; both free space a
    /// waiting producer may need to hear about.
    pub fn position(&self) -> u32 {
        self.read
    }

    /// The readable bytes at the head, if any (spec A3.4, with one fix).
    ///
    /// The fix: once the tail is drained (`read >= watermark`), the algorithm
    /// of the spec clears the wrap and trusts whatever `write` it loads next.
    /// But the producer stores `watermark` *before* `write = 0`, so a consumer
    /// can see the new watermark and still the old `write` — which equals the
    /// watermark exactly — and would hand out the already consumed bytes
    /// `[0, old write)` again (found by the loom model). Every value the
    /// producer writes after its wrap is below the watermark until we clear it,
    /// so `write == watermark` can only mean "the wrap is not visible yet": we
    /// then report nothing and leave the wrap for the next call.
    pub fn try_read(&mut self) -> Result<Option<ReadRegion<'_>>, RingError> {
        if self.read < self.known_end {
            // Published and not yet consumed: no need to look at the producer.
            return Ok(Some(self.region(self.read, self.known_end)));
        }
        let h = self.buf.header();
        // Acquire on `write` pairs with the producer's Release in `commit`/`wrap`;
        // loading it *before* the watermark guarantees that if we see a value
        // stored after a wrap we also see the watermark stored just before it.
        let write = self.buf.check("write", h.write.load(Ordering::Acquire))?;
        let watermark = self.buf.check("watermark", h.watermark.load(Ordering::Acquire))?;
        self.last_seen = (write, watermark);
        if watermark == 0 {
            return Ok((self.read < write).then(|| self.region(self.read, write)));
        }
        if self.read < watermark {
            return Ok(Some(self.region(self.read, watermark)));
        }
        if self.read > watermark {
            return Err(RingError::WatermarkBehindRead { watermark, read: self.read });
        }
        // Tail drained. Reload `write` after the watermark: the Acquire load of
        // the watermark made the producer's pre-wrap `write == watermark`
        // visible, so this load returns that value or a post-wrap one.
        let write = self.buf.check("write", h.write.load(Ordering::Acquire))?;
        if write == watermark {
            return Ok(None);
        }
        // Follow the producer to the front. Release on both stores: pairs with
        // the producer's Acquire load of `read`, so it reuses the tail only
        // after we are done with it. `read` first, as in 0.3.1.
        h.read.store(0, Ordering::Release);
        h.watermark.store(0, Ordering::Release);
        self.read = 0;
        self.known_end = 0;
        self.unpublished = 0;
        Ok((write > 0).then(|| self.region(0, write)))
    }

    /// True if the last [`try_read`](Self::try_read) left a drained tail whose
    /// wrap is not yet visible (it resolves as soon as the producer's next store
    /// lands). Wake-up logic treats this like data: check again, do not sleep.
    pub fn wrap_pending(&self) -> bool {
        let h = self.buf.header();
        let watermark = h.watermark.load(Ordering::Acquire);
        watermark != 0 && self.read >= watermark
    }

    fn region(&mut self, start: u32, end: u32) -> ReadRegion<'_> {
        self.known_end = end;
        ReadRegion {
            offset: start,
            // SAFETY: start <= end <= capacity (indices were checked), inside data.
            ptr: unsafe { self.buf.data.add(start as usize) },
            len: end - start,
            _ring: PhantomData,
        }
    }

    /// Frees `n` bytes at the head (spec A3.5, with one change).
    ///
    /// Reaching the watermark does not clear the wrap here (0.3.1 does): doing
    /// so would let the next `try_read` trust a `write` that may still be the
    /// pre-wrap value (see [`try_read`](Self::try_read)). The next `try_read`
    /// clears it after checking. The bytes in shared memory are the same.
    pub fn release(&mut self, n: u32) -> Result<(), RingError> {
        self.release_deferred(n, 0).map(|_| ())
    }

    /// Frees `n` bytes locally and publishes our position only once at least
    /// `batch` bytes are pending. Returns whether it published (a producer
    /// waiting for space must then be checked for, spec C1).
    ///
    /// Publishing every release makes both sides touch the other's cache line
    /// on every message; batching keeps streaming traffic to one exchange per
    /// batch. A caller that defers must [`flush`](Self::flush) before it sleeps
    /// or when the ring looks empty, so a producer never waits for space that
    /// is already free.
    pub fn release_deferred(&mut self, n: u32, batch: u32) -> Result<bool, RingError> {
        let cap = self.buf.capacity;
        let new_read = self.read.checked_add(n).filter(|&r| r <= cap).ok_or(RingError::ReleaseTooLarge {
            n,
            read: self.read,
            capacity: cap,
        })?;
        self.read = new_read;
        self.unpublished = self.unpublished.saturating_add(n);
        if self.unpublished < batch.max(1) {
            return Ok(false);
        }
        Ok(self.flush())
    }

    /// True if some release is not yet published.
    pub fn has_unpublished(&self) -> bool {
        self.unpublished != 0
    }

    /// Publishes our position if any release is pending. Returns whether it did.
    pub fn flush(&mut self) -> bool {
        if self.unpublished == 0 {
            return false;
        }
        self.unpublished = 0;
        // Release: the producer may reuse the bytes only after we are done;
        // pairs with its Acquire load of `read`.
        self.buf.header().read.store(self.read, Ordering::Release);
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
