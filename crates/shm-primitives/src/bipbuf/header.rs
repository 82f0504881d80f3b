//! The ring's header in shared memory, and what a broken invariant is.

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
#[derive(Debug)]
#[repr(C, align(64))]
pub struct BipBufHeader {
    pub(super) write: AtomicU32,
    pub(super) watermark: AtomicU32,
    pub(super) capacity: AtomicU32,
    pub(super) producer_waiting: AtomicU32,
    #[cfg(not(loom))]
    pub(super) _pad0: [AtomicU32; 12],
    pub(super) read: AtomicU32,
    pub(super) consumer_waiting: AtomicU32,
    #[cfg(not(loom))]
    pub(super) _pad1: [AtomicU32; 14],
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
