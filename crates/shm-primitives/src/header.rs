//! The 128-byte segment header (spec A1.1).
//!
//! Every field is an atomic in shared memory. The host writes all of them, then
//! publishes [`MAGIC`] last with a Release store; a guest loads the magic with
//! Acquire before anything else, so it never sees a half-written segment.
//! Readers take one [`HeaderFields`] snapshot and validate that copy, so a peer
//! rewriting the header concurrently cannot change a value between its check
//! and its use.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use crate::features::Features;

/// `TELXHUB` followed by the format byte 0x07.
pub const MAGIC: [u8; 8] = *b"TELXHUB\x07";
/// Segment format version.
pub const SEGMENT_VERSION: u32 = 7;
/// Size of the segment header in bytes.
pub const SEGMENT_HEADER_SIZE: usize = 128;
/// Inline threshold used when the header says 0.
pub const DEFAULT_INLINE_THRESHOLD: u32 = 256;
/// Largest inline threshold we create: the inline length field is a u16.
pub const MAX_INLINE_THRESHOLD: u32 = 65535;

/// Byte offsets of the header fields (the wire format).
pub mod offsets {
    /// `magic`, 8 bytes.
    pub const MAGIC: usize = 0;
    /// `version`, u32.
    pub const VERSION: usize = 8;
    /// `header_size`, u32.
    pub const HEADER_SIZE: usize = 12;
    /// `total_size`, u64.
    pub const TOTAL_SIZE: usize = 16;
    /// `max_payload_size`, u32.
    pub const MAX_PAYLOAD_SIZE: usize = 24;
    /// `inline_threshold`, u32.
    pub const INLINE_THRESHOLD: usize = 28;
    /// `max_guests`, u32.
    pub const MAX_GUESTS: usize = 32;
    /// `bipbuf_capacity`, u32.
    pub const BIPBUF_CAPACITY: usize = 36;
    /// `peer_table_offset`, u64.
    pub const PEER_TABLE_OFFSET: usize = 40;
    /// `var_pool_offset`, u64.
    pub const VAR_POOL_OFFSET: usize = 48;
    /// `heartbeat_interval`, u64 nanoseconds.
    pub const HEARTBEAT_INTERVAL: usize = 56;
    /// `host_goodbye`, atomic u32.
    pub const HOST_GOODBYE: usize = 64;
    /// `num_var_slot_classes`, u32.
    pub const NUM_VAR_SLOT_CLASSES: usize = 68;
    /// `current_size`, atomic u64.
    pub const CURRENT_SIZE: usize = 72;
    /// `host_features`, u32 (extension C0; zero in 0.3.1 segments).
    pub const HOST_FEATURES: usize = 80;
}

/// The segment header as it lies in shared memory.
#[derive(Debug)]
#[repr(C)]
pub struct SegmentHeader {
    magic: AtomicU64,
    version: AtomicU32,
    header_size: AtomicU32,
    total_size: AtomicU64,
    max_payload_size: AtomicU32,
    inline_threshold: AtomicU32,
    max_guests: AtomicU32,
    bipbuf_capacity: AtomicU32,
    peer_table_offset: AtomicU64,
    var_pool_offset: AtomicU64,
    heartbeat_interval: AtomicU64,
    host_goodbye: AtomicU32,
    num_var_slot_classes: AtomicU32,
    current_size: AtomicU64,
    host_features: AtomicU32,
    _reserved: [AtomicU32; 11],
}

const _: () = {
    assert!(size_of::<SegmentHeader>() == SEGMENT_HEADER_SIZE);
    assert!(offset_of!(SegmentHeader, magic) == offsets::MAGIC);
    assert!(offset_of!(SegmentHeader, version) == offsets::VERSION);
    assert!(offset_of!(SegmentHeader, header_size) == offsets::HEADER_SIZE);
    assert!(offset_of!(SegmentHeader, total_size) == offsets::TOTAL_SIZE);
    assert!(offset_of!(SegmentHeader, max_payload_size) == offsets::MAX_PAYLOAD_SIZE);
    assert!(offset_of!(SegmentHeader, inline_threshold) == offsets::INLINE_THRESHOLD);
    assert!(offset_of!(SegmentHeader, max_guests) == offsets::MAX_GUESTS);
    assert!(offset_of!(SegmentHeader, bipbuf_capacity) == offsets::BIPBUF_CAPACITY);
    assert!(offset_of!(SegmentHeader, peer_table_offset) == offsets::PEER_TABLE_OFFSET);
    assert!(offset_of!(SegmentHeader, var_pool_offset) == offsets::VAR_POOL_OFFSET);
    assert!(offset_of!(SegmentHeader, heartbeat_interval) == offsets::HEARTBEAT_INTERVAL);
    assert!(offset_of!(SegmentHeader, host_goodbye) == offsets::HOST_GOODBYE);
    assert!(offset_of!(SegmentHeader, num_var_slot_classes) == offsets::NUM_VAR_SLOT_CLASSES);
    assert!(offset_of!(SegmentHeader, current_size) == offsets::CURRENT_SIZE);
    assert!(offset_of!(SegmentHeader, host_features) == offsets::HOST_FEATURES);
};

/// Values the host writes into a fresh header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeaderInit {
    /// Segment size at creation.
    pub total_size: u64,
    /// Largest payload a sender may allocate.
    pub max_payload_size: u32,
    /// Inline threshold as configured (0 = default 256).
    pub inline_threshold: u32,
    /// Number of guest slots.
    pub max_guests: u8,
    /// Data bytes per BipBuffer.
    pub bipbuf_capacity: u32,
    /// Offset of the peer table (always 128).
    pub peer_table_offset: u64,
    /// Offset of the slot pool.
    pub var_pool_offset: u64,
    /// Heartbeat interval in ns (0 = off).
    pub heartbeat_interval: u64,
    /// Number of slot size classes.
    pub num_var_slot_classes: u32,
    /// Extension features the host offers.
    pub host_features: Features,
}

/// A copy of every header field, taken once and then validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFields {
    /// Raw magic bytes.
    pub magic: [u8; 8],
    /// Format version.
    pub version: u32,
    /// Header size.
    pub header_size: u32,
    /// Size at creation.
    pub total_size: u64,
    /// Largest payload a sender may allocate.
    pub max_payload_size: u32,
    /// Inline threshold as stored (0 = default).
    pub inline_threshold: u32,
    /// Number of guest slots (stored as u32).
    pub max_guests: u32,
    /// Data bytes per BipBuffer.
    pub bipbuf_capacity: u32,
    /// Offset of the peer table.
    pub peer_table_offset: u64,
    /// Offset of the slot pool.
    pub var_pool_offset: u64,
    /// Heartbeat interval in ns.
    pub heartbeat_interval: u64,
    /// Host shutdown flag.
    pub host_goodbye: u32,
    /// Number of slot size classes.
    pub num_var_slot_classes: u32,
    /// Current size (grows with `grow_segment`).
    pub current_size: u64,
    /// Host extension features.
    pub host_features: Features,
}

impl SegmentHeader {
    /// Writes every field and then publishes the magic.
    ///
    /// Call this only after everything else in the segment (peer table, rings,
    /// pool) is initialised: the Release store of the magic is what makes all of
    /// it visible to a guest's Acquire load of the magic.
    pub fn init(&self, v: &SegmentHeaderInit) {
        let r = Ordering::Relaxed;
        self.version.store(SEGMENT_VERSION, r);
        self.header_size.store(SEGMENT_HEADER_SIZE as u32, r);
        self.total_size.store(v.total_size, r);
        self.max_payload_size.store(v.max_payload_size, r);
        self.inline_threshold.store(v.inline_threshold, r);
        self.max_guests.store(u32::from(v.max_guests), r);
        self.bipbuf_capacity.store(v.bipbuf_capacity, r);
        self.peer_table_offset.store(v.peer_table_offset, r);
        self.var_pool_offset.store(v.var_pool_offset, r);
        self.heartbeat_interval.store(v.heartbeat_interval, r);
        self.host_goodbye.store(0, r);
        self.num_var_slot_classes.store(v.num_var_slot_classes, r);
        self.current_size.store(v.total_size, r);
        self.host_features.store(v.host_features.bits(), r);
        // Release fence + Release store: everything written to the segment before
        // this point happens-before any load that reads the magic with Acquire
        // (`HeaderFields` via `SegmentHeader::read`).
        fence(Ordering::Release);
        self.magic.store(u64::from_le_bytes(MAGIC), Ordering::Release);
    }

    /// Takes a snapshot of every field. The magic is loaded first with Acquire,
    /// pairing with the Release store in [`SegmentHeader::init`].
    pub fn read(&self) -> HeaderFields {
        let magic = self.magic.load(Ordering::Acquire).to_le_bytes();
        let r = Ordering::Relaxed;
        HeaderFields {
            magic,
            version: self.version.load(r),
            header_size: self.header_size.load(r),
            total_size: self.total_size.load(r),
            max_payload_size: self.max_payload_size.load(r),
            inline_threshold: self.inline_threshold.load(r),
            max_guests: self.max_guests.load(r),
            bipbuf_capacity: self.bipbuf_capacity.load(r),
            peer_table_offset: self.peer_table_offset.load(r),
            var_pool_offset: self.var_pool_offset.load(r),
            heartbeat_interval: self.heartbeat_interval.load(r),
            host_goodbye: self.host_goodbye.load(Ordering::Acquire),
            num_var_slot_classes: self.num_var_slot_classes.load(r),
            current_size: self.current_size.load(Ordering::Acquire),
            host_features: Features::from_bits(self.host_features.load(Ordering::Acquire)),
        }
    }

    /// Host shutdown: Release so that everything the host did before is visible
    /// to a guest that sees the flag with [`SegmentHeader::host_goodbye`].
    pub fn set_host_goodbye(&self) {
        self.host_goodbye.store(1, Ordering::Release);
    }

    /// True once the host said goodbye (Acquire, pairs with `set_host_goodbye`).
    pub fn host_goodbye(&self) -> bool {
        self.host_goodbye.load(Ordering::Acquire) != 0
    }

    /// Current segment size (Acquire, pairs with [`SegmentHeader::set_current_size`]).
    pub fn current_size(&self) -> u64 {
        self.current_size.load(Ordering::Acquire)
    }

    /// Publishes a grown size (Release: the file was extended before this store).
    pub fn set_current_size(&self, size: u64) {
        self.current_size.store(size, Ordering::Release);
    }

    /// Host extension features (Acquire).
    pub fn host_features(&self) -> Features {
        Features::from_bits(self.host_features.load(Ordering::Acquire))
    }
}

impl HeaderFields {
    /// Inline threshold with 0 meaning the default of 256.
    pub fn effective_inline_threshold(&self) -> u32 {
        if self.inline_threshold == 0 {
            DEFAULT_INLINE_THRESHOLD
        } else {
            self.inline_threshold
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::region::HeapRegion;

    pub(crate) fn header_in(heap: &HeapRegion) -> &SegmentHeader {
        let p = heap.region().typed::<SegmentHeader>(0).unwrap();
        // SAFETY: in bounds and aligned (checked by `typed`); zeroed memory is a
        // valid value for a struct of atomics; the heap region outlives the borrow.
        unsafe { p.as_ref() }
    }

    pub(crate) fn sample() -> SegmentHeaderInit {
        SegmentHeaderInit {
            total_size: 38400,
            max_payload_size: 1024,
            inline_threshold: 256,
            max_guests: 2,
            bipbuf_capacity: 128,
            peer_table_offset: 128,
            var_pool_offset: 1280,
            heartbeat_interval: 1_000_000,
            num_var_slot_classes: 2,
            host_features: Features::NONE,
        }
    }

    #[test]
    fn init_writes_the_golden_header_bytes() {
        let heap = HeapRegion::new_zeroed(128);
        let h = header_in(&heap);
        h.init(&sample());
        let golden =
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/golden/shm/segment_header.bin"));
        let p = heap.region().range(0, 128).unwrap();
        // SAFETY: 128 bytes checked in bounds of the live heap region.
        let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), 128) };
        assert_eq!(bytes, &golden[..]);
        let f = h.read();
        assert_eq!(f.check_identity(), Ok(()));
        assert_eq!(f.current_size, 38400);
        assert_eq!(f.effective_inline_threshold(), 256);
    }

    #[test]
    fn host_features_land_at_offset_80_only() {
        let heap = HeapRegion::new_zeroed(128);
        let h = header_in(&heap);
        h.init(&SegmentHeaderInit { host_features: Features::from_bits(0x0000_000f), ..sample() });
        let golden =
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/golden/shm/segment_header.bin"));
        let p = heap.region().range(0, 128).unwrap();
        // SAFETY: 128 bytes checked in bounds of the live heap region.
        let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), 128) };
        for (i, (a, b)) in bytes.iter().zip(golden.iter()).enumerate() {
            if (80..84).contains(&i) {
                continue;
            }
            assert_eq!(a, b, "byte {i} differs");
        }
        assert_eq!(&bytes[80..84], &[0x0f, 0, 0, 0]);
        assert_eq!(h.host_features(), Features::ALL);
    }

    #[test]
    fn goodbye_and_current_size() {
        let heap = HeapRegion::new_zeroed(128);
        let h = header_in(&heap);
        h.init(&sample());
        assert!(!h.host_goodbye());
        h.set_host_goodbye();
        assert!(h.host_goodbye());
        assert_eq!(h.current_size(), 38400);
        h.set_current_size(40000);
        assert_eq!(h.read().current_size, 40000);
    }
}
