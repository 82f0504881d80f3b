//! The segment's errors, each with the `io::ErrorKind` it converts to.

use std::io;

use shm_primitives::layout::LayoutError;
use shm_primitives::peer::PeerState;
use shm_primitives::validate::HeaderError;
use shm_primitives::OutOfBounds;

/// Why a segment could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The configuration cannot describe a valid segment.
    #[error("invalid segment configuration: {0}")]
    Config(#[from] LayoutError),
    /// The file could not be created or mapped.
    #[error("cannot create segment file: {0}")]
    Io(#[from] io::Error),
    /// A file at the path is held by a live process (another host, or a guest
    /// of one), so it is not replaced.
    #[error("{0} is in use by a live host or guest; not replacing it")]
    InUse(std::path::PathBuf),
    /// The layout does not fit the memory mapped for it (a bug: the file is
    /// sized from the layout).
    #[error("segment layout out of bounds: {0}")]
    OutOfBounds(#[from] OutOfBounds),
}

/// Why a segment could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The file could not be opened or mapped.
    #[error("cannot open segment: {0}")]
    Io(#[from] io::Error),
    /// The file is not a valid segment.
    #[error("invalid segment: {0}")]
    BadHeader(#[from] HeaderError),
}

impl CreateError {
    /// The `io::ErrorKind` it converts to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            CreateError::Config(_) => io::ErrorKind::InvalidInput,
            CreateError::Io(io) => io.kind(),
            CreateError::InUse(_) => io::ErrorKind::AddrInUse,
            CreateError::OutOfBounds(_) => io::ErrorKind::Other,
        }
    }
}

impl AttachError {
    /// The `io::ErrorKind` it converts to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            AttachError::Io(io) => io.kind(),
            AttachError::BadHeader(_) => io::ErrorKind::InvalidData,
        }
    }
}

impl PeerError {
    /// The `io::ErrorKind` it converts to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            PeerError::InUse { .. } => io::ErrorKind::AddrInUse,
            PeerError::NoSuchPeer { .. } | PeerError::WrongState { .. } => io::ErrorKind::InvalidInput,
        }
    }
}

crate::io_error::into_io_error!(CreateError, AttachError, PeerError, GrowError);

/// Why a segment could not be grown or remapped.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    /// The size does not fit in this address space.
    #[error("segment size {size} does not fit in memory")]
    TooLarge {
        /// The size asked for (or announced by the host).
        size: u64,
    },
    /// Resizing or remapping the file failed.
    #[error("cannot resize the segment: {0}")]
    Io(#[from] io::Error),
    /// The new mapping does not hold the layout.
    #[error("segment layout out of bounds after resizing: {0}")]
    OutOfBounds(#[from] OutOfBounds),
}

impl GrowError {
    /// The `io::ErrorKind` it converts to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            GrowError::TooLarge { .. } => io::ErrorKind::InvalidInput,
            GrowError::Io(e) => e.kind(),
            GrowError::OutOfBounds(_) => io::ErrorKind::InvalidData,
        }
    }
}

/// Why a peer-table operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The id is beyond this segment's `max_guests`.
    #[error("peer {peer} does not exist (segment has {max_guests} guest slots)")]
    NoSuchPeer {
        /// Peer asked for.
        peer: u8,
        /// Guest slots in the segment.
        max_guests: u8,
    },
    /// A link of this process still uses the peer's rings.
    #[error("peer {peer} still has a link in this process")]
    InUse {
        /// Peer asked for.
        peer: u8,
    },
    /// The entry is not in the state the operation needs.
    #[error("peer {peer} is {actual:?}, expected {expected:?}")]
    WrongState {
        /// Peer asked for.
        peer: u8,
        /// State needed.
        expected: PeerState,
        /// State found.
        actual: PeerState,
    },
}
