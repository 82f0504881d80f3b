//! vox-shm: a shared-memory transport for processes on one machine,
//! wire-compatible with the vox SHM segment format v7.
//!
//! One *host* creates a [`Segment`]; up to 255 *guests* attach to it, each with
//! a bidirectional link made of two single-producer rings in the segment.

mod async_lock;
pub mod bootstrap;
pub use shm_primitives::framing;
pub mod host;
pub mod inspect;
mod io_error;
pub mod isolation;
pub mod link;
pub mod mmap_registry;
pub mod segment;
pub mod shm_link;
pub mod stale;

/// Slot pool types (re-exported from `shm-primitives`).
pub mod varslot {
    pub use shm_primitives::varslot::{
        AllocError, ClassOffsets, ClassUsage, FreeError, PoolLayout, SizeClassConfig, SlotError, SlotRef, VarSlotPool,
    };
}

/// Peer table types (re-exported from `shm-primitives`).
pub mod peer_table {
    pub use shm_primitives::peer::{PeerEntry, PeerId, PeerState, PeerTable, Side, PEER_ENTRY_SIZE};
}

pub use bootstrap::BootstrapError;
pub use host::{
    create_test_link_pair, create_test_link_pair_with, guest_link_from_raw, guest_link_from_ticket, spawn_guest,
    spawn_guest_async, AddPeerOptions, GuestArgError, GuestArgs, GuestSlots, GuestSpawnTicket, HostError, HostHub,
    HostPeer, MultiPeerHostDriver, PreparedPeer, ShmHost,
};
pub use link::{Backing, Link, LinkRx, LinkTx, LinkTxPermit, SharedBacking, SplitLink, TransportMode, WriteSlot};
pub use mmap_registry::{MmapAllocError, MmapResolveError};
pub use segment::{AttachError, CreateError, CreateOptions, GrowError, PeerError, Segment, SegmentConfig};
pub use shm_link::{
    BadSlotRefReason, LinkError, LinkOptions, ShmLink, ShmLinkRx, ShmLinkRxError, ShmLinkTx, ShmLinkTxError,
    ShmTransportStatsSnapshot, ShmTxPermit, ShmWriteSlot, WaitStrategy,
};
pub use shm_primitives::layout::SegmentLayout;
pub use shm_primitives::mmap::FileCleanup;
pub use shm_primitives::peer::PeerId;
pub use shm_primitives::varslot::{SizeClassConfig, SlotRef, VarSlotPool};
pub use shm_primitives::Features;

/// What most programs need, in one import: the link halves and their
/// methods, the segment, the spawning and walk-in entry points, and the
/// link traits (for code generic over transports).
///
/// ```
/// use vox_shm::prelude::*;
/// ```
pub mod prelude {
    pub use crate::host::{spawn_guest, spawn_guest_async, GuestArgs, HostHub};
    pub use crate::link::{Backing, Link, LinkRx, LinkTx, LinkTxPermit, WriteSlot};
    pub use crate::shm_link::{LinkOptions, ShmLink, ShmLinkRx, ShmLinkTx, WaitStrategy};
    pub use crate::{Features, FileCleanup, Segment, SegmentConfig};
}
