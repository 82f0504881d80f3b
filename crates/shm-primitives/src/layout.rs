//! Segment geometry (spec A1.2): where the peer table, the rings and the slot
//! pool lie, computed from the configuration alone.

use crate::bipbuf::BIPBUF_HEADER_SIZE;
use crate::header::{MAX_INLINE_THRESHOLD, SEGMENT_HEADER_SIZE};
use crate::peer::{PeerId, PEER_ENTRY_SIZE};
use crate::region::align64;
use crate::varslot::raw::{CLASS_HEADER_SIZE, EMPTY, SLOT_META_SIZE};

/// Offset of the peer table: right after the header.
pub const PEER_TABLE_OFFSET: u64 = SEGMENT_HEADER_SIZE as u64;

/// A configuration that cannot describe a valid segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// `bipbuf_capacity` is 0.
    #[error("ring capacity must be greater than 0")]
    ZeroRingCapacity,
    /// No slot size classes.
    #[error("at least one slot size class is required")]
    NoSizeClasses,
    /// More classes than a slot reference can name (class index is a u8).
    #[error("{count} size classes, at most 256 are addressable")]
    TooManySizeClasses {
        /// Number of classes.
        count: usize,
    },
    /// A class with slot size 0.
    #[error("size class {class} has slot size 0")]
    ZeroSlotSize {
        /// Class index.
        class: usize,
    },
    /// A class with no slots.
    #[error("size class {class} has no slots")]
    ZeroSlotCount {
        /// Class index.
        class: usize,
    },
    /// A class with more slots than a free-list index can name.
    #[error("size class {class} has {count} slots, at most {max}")]
    SlotCountTooLarge {
        /// Class index.
        class: usize,
        /// Slots requested.
        count: u32,
        /// Largest allowed count.
        max: u32,
    },
    /// Classes must be sorted by ascending slot size.
    #[error("size class {class} (slot size {slot_size}) is smaller than class {} ({previous}); classes must be sorted by slot size", class - 1)]
    ClassesUnsorted {
        /// Class index.
        class: usize,
        /// Its slot size.
        slot_size: u32,
        /// Slot size of the class before it.
        previous: u32,
    },
    /// `inline_threshold` does not fit the 16-bit inline length field.
    #[error("inline threshold {threshold} exceeds {max} (the inline length field is 16 bits)", max = MAX_INLINE_THRESHOLD)]
    InlineThresholdTooLarge {
        /// Threshold requested.
        threshold: u32,
    },
    /// The segment would not fit in 64 bits or in memory.
    #[error("segment size overflows")]
    TooLarge,
}

/// Offsets of everything in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentLayout {
    /// Number of guest slots.
    pub max_guests: u8,
    /// Data bytes per BipBuffer.
    pub bipbuf_capacity: u32,
    /// Offset of the peer table (128).
    pub peer_table_offset: u64,
    /// Offset of the first ring pair.
    pub ring_base_offset: u64,
    /// Distance from one BipBuffer header to the next: `align64(128 + capacity)`.
    pub ring_stride: u64,
    /// Offset of the slot pool.
    pub var_pool_offset: u64,
    /// Slot pool geometry.
    pub pool: PoolLayout,
    /// Size of the whole segment.
    pub total_size: u64,
}

impl SegmentLayout {
    /// Computes the layout (spec A1.2, steps 1–7).
    pub fn compute(max_guests: u8, bipbuf_capacity: u32, classes: &[SizeClassConfig]) -> Result<Self, LayoutError> {
        let (ring_stride, var_pool_offset) = Self::rings(max_guests, bipbuf_capacity)?;
        let pool = PoolLayout::compute(classes)?;
        let total_size = var_pool_offset.checked_add(pool.size).ok_or(LayoutError::TooLarge)?;
        if usize::try_from(total_size).is_err() {
            return Err(LayoutError::TooLarge);
        }
        Ok(SegmentLayout {
            max_guests,
            bipbuf_capacity,
            peer_table_offset: PEER_TABLE_OFFSET,
            ring_base_offset: Self::ring_base(max_guests),
            ring_stride,
            var_pool_offset,
            pool,
            total_size,
        })
    }

    fn ring_base(max_guests: u8) -> u64 {
        PEER_TABLE_OFFSET + u64::from(max_guests) * PEER_ENTRY_SIZE as u64
    }

    /// Ring stride and slot pool offset, which depend only on the guest count
    /// and the ring capacity (steps 1–6), so a reader can check the stored
    /// pool offset before it reads the class table there.
    pub fn rings(max_guests: u8, bipbuf_capacity: u32) -> Result<(u64, u64), LayoutError> {
        if bipbuf_capacity == 0 {
            return Err(LayoutError::ZeroRingCapacity);
        }
        let ring_stride =
            align64(BIPBUF_HEADER_SIZE as u64 + u64::from(bipbuf_capacity)).ok_or(LayoutError::TooLarge)?;
        let rings = u64::from(max_guests).checked_mul(2 * ring_stride).ok_or(LayoutError::TooLarge)?;
        let var_pool_offset =
            Self::ring_base(max_guests).checked_add(rings).and_then(align64).ok_or(LayoutError::TooLarge)?;
        Ok((ring_stride, var_pool_offset))
    }

    /// Offset of a guest's G→H ring header (stored as its `ring_offset`).
    pub fn ring_offset(&self, id: PeerId) -> u64 {
        self.ring_base_offset + id.index() as u64 * 2 * self.ring_stride
    }

    /// Offset of a guest's guest-to-host ring header.
    pub fn g2h_offset(&self, id: PeerId) -> u64 {
        self.ring_offset(id)
    }

    /// Offset of a guest's host-to-guest ring header.
    pub fn h2g_offset(&self, id: PeerId) -> u64 {
        self.ring_offset(id) + self.ring_stride
    }
}

/// Checks the inline threshold rule of spec B1 for a segment we create.
pub fn check_inline_threshold(threshold: u32) -> Result<(), LayoutError> {
    if threshold > MAX_INLINE_THRESHOLD {
        return Err(LayoutError::InlineThresholdTooLarge { threshold });
    }
    Ok(())
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn sc(slot_size: u32, slot_count: u32) -> SizeClassConfig {
        SizeClassConfig { slot_size, slot_count }
    }

    #[test]
    fn first_worked_example() {
        let l = SegmentLayout::compute(2, 128, &[sc(1024, 4), sc(16384, 2)]).unwrap();
        assert_eq!(l.peer_table_offset, 128);
        assert_eq!(l.ring_base_offset, 256);
        assert_eq!(l.ring_stride, 256);
        let g1 = PeerId::new(1).unwrap();
        let g2 = PeerId::new(2).unwrap();
        assert_eq!((l.g2h_offset(g1), l.h2g_offset(g1)), (256, 512));
        assert_eq!(l.ring_offset(g2), 768);
        assert_eq!(l.var_pool_offset, 1280);
        assert_eq!(l.pool.size, 37120);
        assert_eq!(l.total_size, 38400);
        let c = &l.pool.classes;
        assert_eq!((c[0].meta_off, c[0].data_off), (128, 192));
        assert_eq!((c[1].meta_off, c[1].data_off), (4288, 4352));
    }

    #[test]
    fn second_worked_example() {
        let l = SegmentLayout::compute(1, 4096, &[sc(64, 2)]).unwrap();
        assert_eq!(l.ring_base_offset, 192);
        assert_eq!(l.ring_stride, 4224);
        assert_eq!(l.var_pool_offset, 8640);
        assert_eq!(l.pool.size, 256);
        assert_eq!((l.pool.classes[0].meta_off, l.pool.classes[0].data_off), (64, 128));
        assert_eq!(l.total_size, 8896);
    }

    #[test]
    fn every_config_error() {
        assert_eq!(SegmentLayout::compute(1, 0, &[sc(64, 1)]), Err(LayoutError::ZeroRingCapacity));
        assert_eq!(SegmentLayout::compute(1, 64, &[]), Err(LayoutError::NoSizeClasses));
        assert_eq!(SegmentLayout::compute(1, 64, &[sc(0, 1)]), Err(LayoutError::ZeroSlotSize { class: 0 }));
        assert_eq!(
            SegmentLayout::compute(1, 64, &[sc(64, 1), sc(64, 0)]),
            Err(LayoutError::ZeroSlotCount { class: 1 })
        );
        assert_eq!(
            SegmentLayout::compute(1, 64, &[sc(128, 1), sc(64, 1)]),
            Err(LayoutError::ClassesUnsorted { class: 1, slot_size: 64, previous: 128 })
        );
        assert!(matches!(
            SegmentLayout::compute(1, 64, &[sc(64, u32::MAX)]),
            Err(LayoutError::SlotCountTooLarge { .. })
        ));
        assert_eq!(
            SegmentLayout::compute(1, 64, &vec![sc(64, 1); 257]),
            Err(LayoutError::TooManySizeClasses { count: 257 })
        );
        assert_eq!(
            SegmentLayout::compute(255, u32::MAX, &[sc(u32::MAX, u32::MAX - 1), sc(u32::MAX, u32::MAX - 1)]),
            Err(LayoutError::TooLarge)
        );
        assert_eq!(check_inline_threshold(65535), Ok(()));
        assert_eq!(check_inline_threshold(65536), Err(LayoutError::InlineThresholdTooLarge { threshold: 65536 }));
    }

    #[test]
    fn equal_slot_sizes_are_sorted() {
        assert!(SegmentLayout::compute(1, 64, &[sc(64, 1), sc(64, 2)]).is_ok());
    }

    #[test]
    fn stride_pads_odd_capacities() {
        let l = SegmentLayout::compute(3, 100, &[sc(8, 1)]).unwrap();
        assert_eq!(l.ring_stride, 256);
        assert_eq!(l.var_pool_offset % 64, 0);
    }
}
