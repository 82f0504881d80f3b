//! Data structures of the vox shared-memory segment format v7.
//!
//! This crate is the bottom layer of vox-shm: plain structures over raw shared
//! memory, no I/O beyond mapping a file, no async. Each concept of the format
//! has its module:
//!
//! | module | format concept | spec |
//! |---|---|---|
//! | [`header`] | 128-byte segment header | A1.1 |
//! | [`layout`] | offsets of everything | A1.2 |
//! | [`peer`] | peer table and its state machine | A2 |
//! | [`bipbuf`] | single-producer byte rings | A3 |
//! | [`varslot`] | the shared slot pool | A5 |
//! | [`mmap`] | file-backed mappings | A1.3, A6 |
//! | [`features`] | extension feature bits | C0 |
//!
//! Everything read from shared memory is treated as untrusted: offsets and
//! indices are checked against geometry this process validated once, and a bad
//! value becomes a typed error.

pub mod bipbuf;
pub mod features;
pub mod framing;
pub mod header;
pub mod layout;
pub mod mmap;
pub mod peer;
pub mod region;
mod sync;
pub mod validate;
pub mod varslot;
pub mod wake;

pub use bipbuf::{BipBuf, BipBufConsumer, BipBufHeader, BipBufProducer, RingError, BIPBUF_HEADER_SIZE};
pub use features::Features;
pub use header::{HeaderFields, SegmentHeader, SegmentHeaderInit, MAGIC, SEGMENT_HEADER_SIZE, SEGMENT_VERSION};
pub use layout::{LayoutError, PoolLayout, SegmentLayout, SizeClassConfig};
pub use mmap::{FileCleanup, Mapping, MmapRegion, DEFAULT_FILE_MODE};
pub use peer::{PeerEntry, PeerId, PeerState, PeerTable, Side, PEER_ENTRY_SIZE};
pub use region::{HeapRegion, OutOfBounds, Region};
pub use validate::HeaderError;
pub use varslot::{AllocError, CheckedSlot, FreeError, SlotError, SlotRef, VarSlotPool};
