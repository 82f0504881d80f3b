//! The mapping tier's errors: placing a payload (sender) and resolving a
//! reference (receiver).

use std::io;
use std::time::Duration;

/// Why the mapping tier could not place a payload.
#[derive(Debug, thiserror::Error)]
pub enum MmapAllocError {
    /// Every region is still held by payloads the receiver has not released.
    #[error(
        "mapping budget of {budget} bytes is used up by payloads the receiver has not released{}",
        if *peer_reports_releases { "" } else { " (it cannot report releases: vox-shm 0.3.1)" }
    )]
    BudgetSpent {
        /// The budget in bytes.
        budget: u64,
        /// Whether the receiver reports releases (ours does, 0.3.1 does not).
        peer_reports_releases: bool,
    },
    /// The payload does not fit in this process's address space.
    #[error("payload of {len} bytes is too large for a mapping region")]
    TooLarge {
        /// Bytes asked for.
        len: u64,
    },
    /// Region ids ran out.
    #[error("too many mapping regions")]
    TooManyRegions,
    /// The region's memfd could not be created or mapped.
    #[error("cannot create a mapping region: {0}")]
    Create(#[source] io::Error),
    /// The region could not be announced on the control channel (a dead
    /// peer is `BrokenPipe`).
    #[error("cannot announce a mapping region: {0}")]
    Announce(#[source] io::Error),
}

impl MmapAllocError {
    /// The `io::ErrorKind` it converts to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            MmapAllocError::BudgetSpent { .. } | MmapAllocError::TooManyRegions => io::ErrorKind::OutOfMemory,
            MmapAllocError::TooLarge { .. } => io::ErrorKind::InvalidInput,
            MmapAllocError::Create(e) | MmapAllocError::Announce(e) => e.kind(),
        }
    }
}

crate::io_error::into_io_error!(MmapAllocError);

/// An I/O failure kept as a plain value (its kind and OS error number), so
/// the errors that carry it can be cloned and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoFailure {
    /// The error's kind.
    pub kind: io::ErrorKind,
    /// The OS error number, if it came from a system call.
    pub os_code: Option<i32>,
}

impl From<&io::Error> for IoFailure {
    fn from(e: &io::Error) -> Self {
        IoFailure { kind: e.kind(), os_code: e.raw_os_error() }
    }
}

impl std::fmt::Display for IoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.os_code {
            Some(code) => write!(f, "{}", io::Error::from_raw_os_error(code)),
            None => write!(f, "{}", io::Error::from(self.kind)),
        }
    }
}

/// Why an announced region was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionRefusal {
    /// Our own peers send sealed memfds; this one could not be sealed.
    #[error("not sealed against shrinking")]
    NotSealed,
    /// The announced length does not fit in this address space.
    #[error("length {len} does not fit in memory")]
    TooLong {
        /// The announced length.
        len: u64,
    },
    /// The peer announced more regions than we keep.
    #[error("more than {max} regions")]
    TooManyRegions {
        /// The limit.
        max: usize,
    },
    /// The peer's regions would exceed what we map for it.
    #[error("more than {max} bytes of regions")]
    TooManyBytes {
        /// The limit.
        max: u64,
    },
    /// The descriptor could not be mapped or examined.
    #[error("{0}")]
    Io(IoFailure),
    /// An unsealed file is smaller than announced (or not a file).
    #[error("file holds {file_len} bytes, {announced} were announced")]
    WrongSize {
        /// Bytes in the file.
        file_len: u64,
        /// Bytes announced.
        announced: u64,
    },
}

/// Why a mapping reference could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmapResolveError {
    /// The control channel failed; no mapping can be resolved any more.
    #[error("mapping control channel failed: {message}")]
    ControlChannelFailure {
        /// What went wrong.
        message: String,
    },
    /// No region with this id and generation was announced in time.
    #[error("mapping {map_id} generation {map_generation} was not announced within {waited:?}")]
    UnknownMapping {
        /// Region id.
        map_id: u32,
        /// Region generation.
        map_generation: u32,
        /// How long we waited for the announcement.
        waited: Duration,
    },
    /// The control channel reached end of stream (the peer closed it or died)
    /// before this region was announced: it never will be.
    #[error("mapping {map_id} generation {map_generation} was never announced (the control channel closed)")]
    NeverAnnounced {
        /// Region id.
        map_id: u32,
        /// Region generation.
        map_generation: u32,
    },
    /// An unsealed region could not be read (the peer truncated it).
    #[error("payload of region {map_id} could not be read: {reason}")]
    Unreadable {
        /// Region id.
        map_id: u32,
        /// The read error.
        reason: IoFailure,
    },
    /// The payload lies outside the region.
    #[error("payload {map_offset}+{payload_len} is outside mapping {map_id} of {mapping_length} bytes")]
    OutOfBounds {
        /// Region id.
        map_id: u32,
        /// Payload offset.
        map_offset: u64,
        /// Payload length.
        payload_len: u32,
        /// Region length.
        mapping_length: u64,
    },
    /// An announced region was refused.
    #[error("announced region {map_id} refused: {reason}")]
    BadRegion {
        /// Region id.
        map_id: u32,
        /// Why.
        reason: RegionRefusal,
    },
}
