//! The producing end: grants, commits and wraps (spec A3.2–A3.3).

use crate::sync::Ordering;

use super::header::RingError;
use super::ring::BipBuf;

impl<'a> BipBuf<'a> {
    /// The producer handle.
    ///
    /// # Safety
    /// At most one producer handle may exist for a ring at any time, in any
    /// process; the segment layer enforces this per process.
    pub unsafe fn producer(&self) -> BipBufProducer<'a> {
        let write = self.header().write.load(Ordering::Relaxed).min(self.capacity);
        BipBufProducer { buf: *self, write, cached_read: 0, pending: None, wraps: 0 }
    }
}

/// The producing end of a ring.
#[derive(Debug)]
pub struct BipBufProducer<'a> {
    pub(super) buf: BipBuf<'a>,
    /// Our `write`; only we store it, so the shared copy is never loaded back.
    pub(super) write: u32,
    /// Last `read` we loaded. It can only be stale in the safe direction (the
    /// consumer frees space, never takes it back), so a grant that fits against
    /// it also fits against the real value.
    pub(super) cached_read: u32,
    /// `(start, len)` of the outstanding grant.
    pub(super) pending: Option<(u32, u32)>,
    /// Number of wraps so far (a wrap must be made visible to a sleeping
    /// consumer even when the grant after it fails).
    pub(super) wraps: u64,
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

    pub(super) fn load_read(&mut self) -> Result<u32, RingError> {
        // Acquire: pairs with the consumer's Release store of `read`, so the
        // consumer is done with the bytes it released before we reuse them.
        let read = self.buf.check("read", self.buf.header().read.load(Ordering::Acquire))?;
        self.cached_read = read;
        Ok(read)
    }

    /// Grants that need no state change, against a given `read`.
    pub(super) fn fits_in_place(&self, read: u32, n: u32) -> bool {
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

    pub(super) fn grant(&mut self, start: u32, n: u32) -> Option<u32> {
        self.pending = Some((start, n));
        Some(start)
    }

    pub(super) fn wrap(&mut self) {
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
