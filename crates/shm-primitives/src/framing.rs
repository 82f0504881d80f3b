//! Ring entries (spec A4): an 8-byte header, then an inline payload, a
//! slot reference or a mapping reference.
//!
//! ```text
//! 0       4      5        6                  8
//! +-------+------+--------+------------------+----------------------
//! | total | flags| 0      | inline_payload_len| body (payload / ref)
//! +-------+------+--------+------------------+----------------------
//! ```
//!
//! Decoding is strict: every rule of A4.3 that 0.3.1 answers with "no frame"
//! (after which its receiver stalls forever) is a typed [`FrameError`] here.
//! Header and body are copied out of shared memory once, with single reads, and
//! only the copies are validated and used.

use crate::bipbuf::ReadRegion;
use crate::region::align4;
use crate::varslot::SlotRef;

/// Flag bit 0: the body is a slot reference.
pub const FLAG_SLOT_REF: u8 = 0x01;
/// Flag bit 1: the body is a mapping reference.
pub const FLAG_MMAP_REF: u8 = 0x02;
/// Size of the frame header.
pub const FRAME_HEADER_SIZE: u32 = 8;
/// Size of a slot-ref body.
pub const SLOT_REF_BODY_SIZE: u32 = 12;
/// Size of a whole slot-ref entry.
pub const SLOT_REF_ENTRY_SIZE: u32 = FRAME_HEADER_SIZE + SLOT_REF_BODY_SIZE;
/// Size of a mapping-ref body.
pub const MMAP_REF_BODY_SIZE: u32 = 24;
/// Size of a whole mapping-ref entry.
pub const MMAP_REF_ENTRY_SIZE: u32 = FRAME_HEADER_SIZE + MMAP_REF_BODY_SIZE;
/// Bytes at the start of a slot holding the payload length (u32 LE).
pub const SLOT_LEN_PREFIX: u32 = 4;
/// Largest inline payload the 16-bit length field can describe.
pub const MAX_INLINE_PAYLOAD: u32 = u16::MAX as u32;

/// The frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Whole entry including the header; a multiple of 4, at least 8.
    pub total_len: u32,
    /// Kind bits (bit 0 slot-ref, bit 1 mapping-ref).
    pub flags: u8,
    /// Exact inline payload length (0 = unknown, legacy writer).
    pub inline_payload_len: u16,
}

impl FrameHeader {
    /// Wire form.
    pub fn to_bytes(&self) -> [u8; 8] {
        let t = self.total_len.to_le_bytes();
        let l = self.inline_payload_len.to_le_bytes();
        [t[0], t[1], t[2], t[3], self.flags, 0, l[0], l[1]]
    }

    /// Parses the wire form (no validation).
    pub fn from_bytes(b: [u8; 8]) -> Self {
        FrameHeader {
            total_len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            flags: b[4],
            inline_payload_len: u16::from_le_bytes([b[6], b[7]]),
        }
    }
}

/// A mapping reference: a payload inside a region announced on the control
/// channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MmapRef {
    /// Region id.
    pub map_id: u32,
    /// Region generation.
    pub map_generation: u32,
    /// Payload offset inside the region.
    pub map_offset: u64,
    /// Payload length.
    pub payload_len: u32,
}

/// Encodes a slot-ref body (12 bytes).
pub fn encode_slot_ref(s: &SlotRef) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = s.class_idx;
    b[1] = s.extent_idx;
    b[4..8].copy_from_slice(&s.slot_idx.to_le_bytes());
    b[8..12].copy_from_slice(&s.generation.to_le_bytes());
    b
}

/// Decodes a slot-ref body.
pub fn decode_slot_ref(b: [u8; 12]) -> SlotRef {
    SlotRef {
        class_idx: b[0],
        extent_idx: b[1],
        slot_idx: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        generation: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
    }
}

/// Encodes a mapping-ref body (24 bytes).
pub fn encode_mmap_ref(m: &MmapRef) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0..4].copy_from_slice(&m.map_id.to_le_bytes());
    b[4..8].copy_from_slice(&m.map_generation.to_le_bytes());
    b[8..16].copy_from_slice(&m.map_offset.to_le_bytes());
    b[16..20].copy_from_slice(&m.payload_len.to_le_bytes());
    b
}

/// Decodes a mapping-ref body.
pub fn decode_mmap_ref(b: [u8; 24]) -> MmapRef {
    let mut off = [0u8; 8];
    off.copy_from_slice(&b[8..16]);
    MmapRef {
        map_id: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        map_generation: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        map_offset: u64::from_le_bytes(off),
        payload_len: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
    }
}

/// Size of an inline entry carrying `payload_len` bytes.
pub fn inline_entry_len(payload_len: u32) -> u32 {
    align4(FRAME_HEADER_SIZE.saturating_add(payload_len))
}

/// Writes an inline entry's header and zero padding around a payload that is
/// already in place at `entry[8..8+payload_len]`. Returns the entry length.
///
/// `entry` must be at least `inline_entry_len(payload_len)` bytes and
/// `payload_len <= 65535`.
pub fn finish_inline(entry: &mut [u8], payload_len: u32) -> u32 {
    let total = inline_entry_len(payload_len);
    debug_assert!(payload_len <= MAX_INLINE_PAYLOAD && entry.len() >= total as usize);
    let header = FrameHeader { total_len: total, flags: 0, inline_payload_len: payload_len as u16 };
    entry[..8].copy_from_slice(&header.to_bytes());
    entry[(8 + payload_len) as usize..total as usize].fill(0);
    total
}

/// Writes a whole inline entry (header, payload, padding). Returns its length.
pub fn write_inline(entry: &mut [u8], payload: &[u8]) -> u32 {
    entry[8..8 + payload.len()].copy_from_slice(payload);
    finish_inline(entry, payload.len() as u32)
}

/// Writes a 20-byte slot-ref entry.
pub fn write_slot_ref(entry: &mut [u8], s: &SlotRef) -> u32 {
    let h = FrameHeader { total_len: SLOT_REF_ENTRY_SIZE, flags: FLAG_SLOT_REF, inline_payload_len: 0 };
    entry[..8].copy_from_slice(&h.to_bytes());
    entry[8..20].copy_from_slice(&encode_slot_ref(s));
    SLOT_REF_ENTRY_SIZE
}

/// Writes a 32-byte mapping-ref entry.
pub fn write_mmap_ref(entry: &mut [u8], m: &MmapRef) -> u32 {
    let h = FrameHeader { total_len: MMAP_REF_ENTRY_SIZE, flags: FLAG_MMAP_REF, inline_payload_len: 0 };
    entry[..8].copy_from_slice(&h.to_bytes());
    entry[8..32].copy_from_slice(&encode_mmap_ref(m));
    MMAP_REF_ENTRY_SIZE
}

/// A decoded entry. Inline payloads are described by position so the caller
/// copies them out of the ring exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Payload at `[8, 8 + len)` of the entry.
    Inline {
        /// Payload length.
        len: u32,
    },
    /// A slot reference (not yet checked against the pool).
    SlotRef(SlotRef),
    /// A mapping reference (not yet resolved).
    MmapRef(MmapRef),
}

/// Why the head of a ring is not a valid entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than 8 readable bytes (producers commit whole entries).
    #[error("only {readable} readable bytes, a frame header needs 8")]
    Truncated {
        /// Readable bytes.
        readable: u32,
    },
    /// The readable bytes do not start at a 4-byte boundary.
    #[error("frame is not 4-byte aligned")]
    Misaligned,
    /// `total_len` below 8 or not a multiple of 4.
    #[error("frame total_len {total_len} is invalid (must be a multiple of 4, at least 8)")]
    BadLength {
        /// Value found.
        total_len: u32,
    },
    /// `total_len` runs past the readable bytes.
    #[error("frame total_len {total_len} exceeds the {readable} readable bytes")]
    PastEnd {
        /// Value found.
        total_len: u32,
        /// Readable bytes.
        readable: u32,
    },
    /// Both kind bits set.
    #[error("frame flags {flags:#04x} set both slot and mapping bits")]
    BadFlags {
        /// Flags found.
        flags: u8,
    },
    /// A reference entry shorter than its body.
    #[error("{kind} entry of {total_len} bytes is shorter than {needed}")]
    ShortReference {
        /// "slot-ref" or "mapping-ref".
        kind: &'static str,
        /// Value found.
        total_len: u32,
        /// Minimum size.
        needed: u32,
    },
    /// `inline_payload_len` does not fit in the entry.
    #[error("inline length {inline_len} does not fit a {total_len}-byte entry")]
    InlineLength {
        /// Value found.
        inline_len: u16,
        /// Entry size.
        total_len: u32,
    },
}

/// Where frame bytes are read from: a ring's readable region or a plain slice.
pub trait FrameBytes {
    /// Readable bytes.
    fn len(&self) -> u32;
    /// True if nothing is readable.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy of `N` bytes at `at`, if in range.
    fn array<const N: usize>(&self, at: u32) -> Option<[u8; N]>;
    /// Whether the first byte is 4-byte aligned in memory.
    fn aligned(&self) -> bool;
}

impl FrameBytes for ReadRegion<'_> {
    fn len(&self) -> u32 {
        ReadRegion::len(self)
    }
    fn array<const N: usize>(&self, at: u32) -> Option<[u8; N]> {
        self.read_array(at)
    }
    fn aligned(&self) -> bool {
        self.as_ptr() as usize % 4 == 0
    }
}

impl FrameBytes for &[u8] {
    fn len(&self) -> u32 {
        <[u8]>::len(self).min(u32::MAX as usize) as u32
    }
    fn array<const N: usize>(&self, at: u32) -> Option<[u8; N]> {
        let s = self.get(at as usize..(at as usize).checked_add(N)?)?;
        s.try_into().ok()
    }
    fn aligned(&self) -> bool {
        // Plain buffers (tests, fuzzing) are not required to be aligned.
        true
    }
}

/// Decodes the entry at the head of `bytes` (spec A4.3, strictly). Returns
/// the frame and the number of bytes to release (`total_len`).
pub fn parse_frame(bytes: &impl FrameBytes) -> Result<(Frame, u32), FrameError> {
    let readable = bytes.len();
    let head = bytes.array::<8>(0).ok_or(FrameError::Truncated { readable })?;
    if !bytes.aligned() {
        return Err(FrameError::Misaligned);
    }
    let h = FrameHeader::from_bytes(head);
    let total_len = h.total_len;
    if total_len < FRAME_HEADER_SIZE || total_len % 4 != 0 {
        return Err(FrameError::BadLength { total_len });
    }
    if total_len > readable {
        return Err(FrameError::PastEnd { total_len, readable });
    }
    let frame = match h.flags & (FLAG_SLOT_REF | FLAG_MMAP_REF) {
        0 => {
            let len = if h.inline_payload_len == 0 {
                total_len - FRAME_HEADER_SIZE
            } else {
                let len = u32::from(h.inline_payload_len);
                if FRAME_HEADER_SIZE + len > total_len {
                    return Err(FrameError::InlineLength { inline_len: h.inline_payload_len, total_len });
                }
                len
            };
            Frame::Inline { len }
        }
        FLAG_SLOT_REF => {
            if total_len < SLOT_REF_ENTRY_SIZE {
                return Err(FrameError::ShortReference { kind: "slot-ref", total_len, needed: SLOT_REF_ENTRY_SIZE });
            }
            Frame::SlotRef(decode_slot_ref(bytes.array::<12>(8).expect("checked: total_len <= readable")))
        }
        FLAG_MMAP_REF => {
            if total_len < MMAP_REF_ENTRY_SIZE {
                return Err(FrameError::ShortReference { kind: "mapping-ref", total_len, needed: MMAP_REF_ENTRY_SIZE });
            }
            Frame::MmapRef(decode_mmap_ref(bytes.array::<24>(8).expect("checked: total_len <= readable")))
        }
        flags => return Err(FrameError::BadFlags { flags }),
    };
    Ok((frame, total_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! golden {
        ($name:literal) => {
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/golden/shm/", $name))
        };
    }

    #[test]
    fn golden_frame_header() {
        let h = FrameHeader { total_len: 20, flags: FLAG_SLOT_REF, inline_payload_len: 0 };
        assert_eq!(&h.to_bytes(), golden!("frame_header.bin"));
        assert_eq!(FrameHeader::from_bytes(*golden!("frame_header.bin")), h);
    }

    #[test]
    fn golden_slot_ref() {
        let s = SlotRef { class_idx: 2, extent_idx: 1, slot_idx: 42, generation: 7 };
        assert_eq!(&encode_slot_ref(&s), golden!("slot_ref.bin"));
        let mut entry = [0u8; 20];
        assert_eq!(write_slot_ref(&mut entry, &s), 20);
        assert_eq!(&entry, golden!("frame_slot_ref.bin"));
        let bytes: &[u8] = golden!("frame_slot_ref.bin");
        assert_eq!(parse_frame(&bytes), Ok((Frame::SlotRef(s), 20)));
    }

    #[test]
    fn golden_inline_with_legacy_zero_length() {
        let bytes: &[u8] = golden!("frame_inline.bin");
        // The golden entry carries inline length 0: a reader delivers the
        // padding too (12 bytes), exactly as 0.3.1 does.
        assert_eq!(parse_frame(&bytes), Ok((Frame::Inline { len: 12 }, 20)));
        assert_eq!(&bytes[8..17], b"swift-shm");
        // Our writer always fills the length in; only bytes 6..8 differ.
        let mut entry = [0xAAu8; 20];
        assert_eq!(write_inline(&mut entry, b"swift-shm"), 20);
        assert_eq!(&entry[..6], &bytes[..6]);
        assert_eq!(&entry[6..8], &[9, 0]);
        assert_eq!(&entry[8..], &bytes[8..]);
        let ours: &[u8] = &entry;
        assert_eq!(parse_frame(&ours), Ok((Frame::Inline { len: 9 }, 20)));
    }

    #[test]
    fn golden_mmap_ref() {
        let m = MmapRef { map_id: 9, map_generation: 3, map_offset: 4096, payload_len: 8192 };
        let mut entry = [0u8; 32];
        assert_eq!(write_mmap_ref(&mut entry, &m), 32);
        assert_eq!(&entry, golden!("frame_mmap_ref.bin"));
        let bytes: &[u8] = golden!("frame_mmap_ref.bin");
        assert_eq!(parse_frame(&bytes), Ok((Frame::MmapRef(m), 32)));
    }

    #[test]
    fn spec_byte_examples() {
        let mut e = [0u8; 16];
        write_inline(&mut e, b"hello");
        assert_eq!(e, [0x10, 0, 0, 0, 0, 0, 5, 0, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0, 0, 0]);
        let mut e = [0u8; 8];
        write_inline(&mut e, b"");
        assert_eq!(e, [8, 0, 0, 0, 0, 0, 0, 0]);
        let empty: &[u8] = &e;
        assert_eq!(parse_frame(&empty), Ok((Frame::Inline { len: 0 }, 8)));
    }

    proptest::proptest! {
        /// Any bytes at all: the decoder returns a frame within the bytes or a
        /// typed error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96)) {
            let s: &[u8] = &bytes;
            if let Ok((_, consumed)) = parse_frame(&s) {
                proptest::prop_assert!(consumed >= 8 && consumed % 4 == 0 && consumed as usize <= bytes.len());
            }
        }

        /// Every entry our writers produce decodes back to what was written.
        #[test]
        fn written_entries_round_trip(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
                                      class in 0u8..4, slot in proptest::prelude::any::<u32>(), generation in proptest::prelude::any::<u32>(),
                                      off in proptest::prelude::any::<u64>(), len in proptest::prelude::any::<u32>()) {
            let mut e = vec![0u8; 8 + 300 + 4];
            let n = write_inline(&mut e, &payload);
            let s: &[u8] = &e[..n as usize];
            proptest::prop_assert_eq!(parse_frame(&s), Ok((Frame::Inline { len: payload.len() as u32 }, n)));
            let r = SlotRef { class_idx: class, extent_idx: 0, slot_idx: slot, generation };
            let n = write_slot_ref(&mut e, &r);
            let s: &[u8] = &e[..n as usize];
            proptest::prop_assert_eq!(parse_frame(&s), Ok((Frame::SlotRef(r), 20)));
            let m = MmapRef { map_id: slot, map_generation: generation, map_offset: off, payload_len: len };
            let n = write_mmap_ref(&mut e, &m);
            let s: &[u8] = &e[..n as usize];
            proptest::prop_assert_eq!(parse_frame(&s), Ok((Frame::MmapRef(m), 32)));
        }
    }

    #[test]
    fn every_reader_rule_is_a_typed_error() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (vec![8, 0, 0, 0], FrameError::Truncated { readable: 4 }),
            (vec![4, 0, 0, 0, 0, 0, 0, 0], FrameError::BadLength { total_len: 4 }),
            (vec![10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], FrameError::BadLength { total_len: 10 }),
            (vec![16, 0, 0, 0, 0, 0, 0, 0], FrameError::PastEnd { total_len: 16, readable: 8 }),
            (vec![8, 0, 0, 0, 3, 0, 0, 0], FrameError::BadFlags { flags: 3 }),
            (
                vec![16, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                FrameError::ShortReference { kind: "slot-ref", total_len: 16, needed: 20 },
            ),
            (
                [vec![28, 0, 0, 0, 2, 0, 0, 0], vec![0; 20]].concat(),
                FrameError::ShortReference { kind: "mapping-ref", total_len: 28, needed: 32 },
            ),
            (vec![12, 0, 0, 0, 0, 0, 5, 0, 1, 2, 3, 4], FrameError::InlineLength { inline_len: 5, total_len: 12 }),
        ];
        for (bytes, want) in cases {
            let s: &[u8] = &bytes;
            assert_eq!(parse_frame(&s), Err(want), "{bytes:?}");
        }
        // Unknown flag bits are ignored; larger-than-needed entries are allowed.
        let mut e = vec![0u8; 24];
        write_slot_ref(&mut e, &SlotRef { class_idx: 0, extent_idx: 0, slot_idx: 0, generation: 1 });
        e[0] = 24;
        e[4] |= 0x80;
        let s: &[u8] = &e;
        assert!(matches!(parse_frame(&s), Ok((Frame::SlotRef(_), 24))));
    }
}
