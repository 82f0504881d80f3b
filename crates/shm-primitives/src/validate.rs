//! Attach-time validation (spec B8): whether a mapped file is a vox segment
//! at all, and whether every offset, size and class entry it declares agrees
//! with the layout its own fields imply and fits the file. Nothing here
//! writes to the segment, and every view it returns lies inside the region.

use crate::bipbuf::BipBuf;
use crate::header::{HeaderFields, SegmentHeader, MAGIC, SEGMENT_HEADER_SIZE, SEGMENT_VERSION};
use crate::layout::{LayoutError, SegmentLayout, SizeClassConfig};
use crate::peer::PeerTable;
use crate::region::{OutOfBounds, Region};
use crate::varslot::{SizeClassHeader, VarSlotPool, CLASS_HEADER_SIZE};

/// Why a header was refused, checked in this order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The file is shorter than a header.
    #[error("file is {file_len} bytes, shorter than the 128-byte segment header")]
    TooShort {
        /// Length of the file.
        file_len: u64,
    },
    /// Not a vox segment (or not yet published by its host).
    #[error("bad magic {found:02x?}: not a vox segment v7, or its host has not finished creating it")]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// A different format version.
    #[error("segment version {found} is not supported (expected 7)")]
    UnsupportedVersion {
        /// Version found.
        found: u32,
    },
    /// Header size field is not 128.
    #[error("header_size is {found}, expected 128")]
    BadHeaderSize {
        /// Value found.
        found: u32,
    },
    /// `num_var_slot_classes` is zero.
    #[error("segment declares no slot size classes")]
    NoSizeClasses,
    /// `max_guests` does not fit the 255 possible peer ids.
    #[error("max_guests is {found}, more than 255")]
    TooManyGuests {
        /// Value found.
        found: u32,
    },
    /// A stored offset or size disagrees with the layout its own fields imply.
    #[error("{field} is {found}, but the layout requires {expected}")]
    LayoutMismatch {
        /// Name of the field.
        field: &'static str,
        /// What the layout formula gives.
        expected: u64,
        /// What the segment says.
        found: u64,
    },
    /// The segment claims more bytes than the file has.
    #[error("segment needs {needed} bytes but the file has {file_len}")]
    FileTooSmall {
        /// Bytes the layout needs.
        needed: u64,
        /// Bytes in the file.
        file_len: u64,
    },
    /// The geometry itself is invalid (bad classes, zero capacity, overflow).
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A structure the header points to (class table, peer table, rings,
    /// pool) does not fit the file.
    #[error("segment structure lies outside the file: {0}")]
    OutOfBounds(#[from] OutOfBounds),
}

impl HeaderFields {
    /// The identity checks of a guest attach, in vox-shm 0.3.1's order: magic,
    /// version, header size, at least one size class. Then our own: max_guests
    /// fits in a peer id.
    pub fn check_identity(&self) -> Result<(), HeaderError> {
        if self.magic != MAGIC {
            return Err(HeaderError::BadMagic { found: self.magic });
        }
        if self.version != SEGMENT_VERSION {
            return Err(HeaderError::UnsupportedVersion { found: self.version });
        }
        if self.header_size != SEGMENT_HEADER_SIZE as u32 {
            return Err(HeaderError::BadHeaderSize { found: self.header_size });
        }
        if self.num_var_slot_classes == 0 {
            return Err(HeaderError::NoSizeClasses);
        }
        if self.max_guests > 255 {
            return Err(HeaderError::TooManyGuests { found: self.max_guests });
        }
        Ok(())
    }
}

/// A snapshot of the header at the start of `r`.
fn read_header(r: Region<'_>) -> Result<HeaderFields, HeaderError> {
    let p = r.typed::<SegmentHeader>(0)?;
    // SAFETY: in bounds and aligned; all-atomic struct (any bits valid); the
    // reference does not outlive this call, during which `r` is mapped (the
    // `Region` contract).
    Ok(unsafe { p.as_ref() }.read())
}

/// Whether the mapped file is a vox segment at all: long enough for a header,
/// whose identity (magic, version, header size) checks out. Nothing past the
/// header is looked at, so no scribble over a guest's rings, entries or the
/// pool can change the answer (stale-file cleaning relies on that).
pub fn identify(r: Region<'_>) -> Result<HeaderFields, HeaderError> {
    let file_len = r.len() as u64;
    if file_len < SEGMENT_HEADER_SIZE as u64 {
        return Err(HeaderError::TooShort { file_len });
    }
    let fields = read_header(r)?;
    fields.check_identity()?;
    Ok(fields)
}

/// Reads the class table of an existing pool and validates it: the table
/// and every class's arrays must lie inside the region, and the classes must
/// pass [`crate::layout::PoolLayout::compute`].
pub fn discover_classes(region: Region<'_>, base: u64, num_classes: u32) -> Result<Vec<SizeClassConfig>, HeaderError> {
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
            // SAFETY: in bounds and aligned; all-atomic struct, any bits valid;
            // the reference does not outlive this call.
            let h = unsafe { p.as_ref() };
            Ok(SizeClassConfig { slot_size: h.slot_size(), slot_count: h.slot_count() })
        })
        .collect()
}

/// A segment's geometry, checked against the memory it is mapped in, with
/// views of its peer table and pool.
#[derive(Debug)]
pub struct Validated<'a> {
    /// The layout the header's fields imply, which the file agrees with.
    pub layout: SegmentLayout,
    /// The header as read.
    pub fields: HeaderFields,
    /// The peer table.
    pub peers: PeerTable<'a>,
    /// The slot pool.
    pub pool: VarSlotPool<'a>,
}

/// Validates a mapped segment without writing to it (spec B8).
pub fn validate(r: Region<'_>) -> Result<Validated<'_>, HeaderError> {
    let file_len = r.len() as u64;
    let fields = identify(r)?;
    let mismatch = |field, expected: u64, found: u64| HeaderError::LayoutMismatch { field, expected, found };
    if fields.peer_table_offset != SEGMENT_HEADER_SIZE as u64 {
        return Err(mismatch("peer_table_offset", 128, fields.peer_table_offset));
    }
    let max_guests = fields.max_guests as u8; // <= 255 by check_identity
    let (_, pool_offset) = SegmentLayout::rings(max_guests, fields.bipbuf_capacity)?;
    if fields.var_pool_offset != pool_offset {
        return Err(mismatch("var_pool_offset", pool_offset, fields.var_pool_offset));
    }
    let classes = discover_classes(r, fields.var_pool_offset, fields.num_var_slot_classes)?;
    let layout = SegmentLayout::compute(max_guests, fields.bipbuf_capacity, &classes)?;
    if fields.total_size != layout.total_size {
        return Err(mismatch("total_size", layout.total_size, fields.total_size));
    }
    if layout.total_size > file_len {
        return Err(HeaderError::FileTooSmall { needed: layout.total_size, file_len });
    }
    let peers = PeerTable::attach(r, layout.peer_table_offset, layout.max_guests)?;
    // Every ring lies inside the file. Their stored capacities and the peer
    // entries' ring offsets are not checked: any guest can scribble over its
    // own, and one guest must not lock every later one out. Nothing reads
    // them (positions, capacities and offsets come from the layout validated
    // here), and the host rewrites them from its layout when it recovers a
    // guest, for 0.3.1 peers that do read them.
    for (id, _) in peers.iter() {
        for off in [layout.g2h_offset(id), layout.h2g_offset(id)] {
            BipBuf::attach(r, off, layout.bipbuf_capacity)?;
        }
    }
    let pool = VarSlotPool::attach(r, layout.var_pool_offset, &layout.pool)?;
    Ok(Validated { layout, fields, peers, pool })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::header::tests::{header_in, sample};
    use crate::header::DEFAULT_INLINE_THRESHOLD;
    use crate::layout::PoolLayout;
    use crate::region::HeapRegion;

    #[test]
    fn unpublished_header_has_bad_magic() {
        let heap = HeapRegion::new_zeroed(128);
        let f = header_in(&heap).read();
        assert_eq!(f.check_identity(), Err(HeaderError::BadMagic { found: [0; 8] }));
    }

    #[test]
    fn each_identity_error_is_reported() {
        let heap = HeapRegion::new_zeroed(128);
        let h = header_in(&heap);
        h.init(&sample());
        let good = h.read();
        let mut f = good;
        f.magic[7] = 6;
        assert!(matches!(f.check_identity(), Err(HeaderError::BadMagic { .. })));
        let mut f = good;
        f.version = 6;
        assert_eq!(f.check_identity(), Err(HeaderError::UnsupportedVersion { found: 6 }));
        let mut f = good;
        f.header_size = 64;
        assert_eq!(f.check_identity(), Err(HeaderError::BadHeaderSize { found: 64 }));
        let mut f = good;
        f.num_var_slot_classes = 0;
        assert_eq!(f.check_identity(), Err(HeaderError::NoSizeClasses));
        let mut f = good;
        f.max_guests = 256;
        assert_eq!(f.check_identity(), Err(HeaderError::TooManyGuests { found: 256 }));
        let mut f = good;
        f.inline_threshold = 0;
        assert_eq!(f.effective_inline_threshold(), DEFAULT_INLINE_THRESHOLD);
    }

    fn sc(slot_size: u32, slot_count: u32) -> SizeClassConfig {
        SizeClassConfig { slot_size, slot_count }
    }

    #[test]
    fn discover_validates_the_class_table() {
        let layout = PoolLayout::compute(&[sc(64, 2), sc(128, 1)]).unwrap();
        let heap = HeapRegion::new_zeroed(layout.size as usize);
        // SAFETY: exclusive heap memory.
        let _p = unsafe { VarSlotPool::init(heap.region(), 0, &layout) }.unwrap();
        assert_eq!(discover_classes(heap.region(), 0, 2).unwrap(), vec![sc(64, 2), sc(128, 1)]);
        assert!(matches!(
            discover_classes(heap.region(), heap.region().len() as u64 - 64, 2),
            Err(HeaderError::OutOfBounds(_))
        ));
        assert_eq!(discover_classes(heap.region(), 0, 0), Err(HeaderError::NoSizeClasses));
        // Claiming 3 classes reads a zero header as the third.
        let bad = discover_classes(heap.region(), 0, 3).unwrap();
        assert_eq!(PoolLayout::compute(&bad), Err(LayoutError::ZeroSlotSize { class: 2 }));
        assert!(VarSlotPool::attach(heap.region(), 64, &layout).is_err(), "pool past the end");
    }
}
