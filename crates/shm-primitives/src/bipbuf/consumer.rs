//! The consuming end: reads and releases (spec A3.4–A3.5).

use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::sync::Ordering;

use super::header::RingError;
use super::ring::BipBuf;

impl<'a> BipBuf<'a> {
    /// The consumer handle.
    ///
    /// # Safety
    /// At most one consumer handle may exist for a ring at any time.
    pub unsafe fn consumer(&self) -> BipBufConsumer<'a> {
        let read = self.header().read.load(Ordering::Relaxed).min(self.capacity);
        BipBufConsumer { buf: *self, read, known_end: read, unpublished: 0, last_seen: (0, 0) }
    }
}

/// Readable bytes at the head of the ring, valid until the next `release`.
///
/// The bytes live in shared memory that a misbehaving producer could still
/// write, so this type offers copies (taken with single reads) rather than a
/// slice: callers validate what they copied, never re-read it.
#[derive(Debug, Clone, Copy)]
pub struct ReadRegion<'a> {
    pub(super) offset: u32,
    pub(super) ptr: NonNull<u8>,
    pub(super) len: u32,
    pub(super) _ring: PhantomData<&'a ()>,
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
    pub(super) buf: BipBuf<'a>,
    /// Our `read`; only we store it (the producer only loads it).
    pub(super) read: u32,
    /// End of the bytes we already know are published (from an earlier
    /// Acquire load of `write` or `watermark`). While `read` is below it we
    /// hand out `[read, known_end)` without touching the producer's cache line.
    pub(super) known_end: u32,
    /// Bytes released locally but not yet published to the producer (see
    /// [`BipBufConsumer::release_deferred`]).
    pub(super) unpublished: u32,
    /// `(write, watermark)` as last loaded, for diagnostics.
    pub(super) last_seen: (u32, u32),
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

    pub(super) fn region(&mut self, start: u32, end: u32) -> ReadRegion<'_> {
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
