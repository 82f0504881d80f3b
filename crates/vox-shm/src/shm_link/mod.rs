//! [`ShmLink`]: one host↔guest link over the guest's ring pair.
//!
//! ## Sending
//! [`ShmLinkTx::reserve`](crate::link::LinkTx::reserve) takes the link's single producer position (an async
//! mutex) and waits until a worst-case entry for this segment fits the ring;
//! [`ShmTxPermit::alloc`](crate::link::LinkTxPermit::alloc) then places the payload at its final address — in
//! the ring for inline payloads, in a pool slot, or in a mapping region — and
//! [`ShmWriteSlot::commit`](crate::link::WriteSlot::commit) publishes the entry. Nothing is copied on send and
//! nothing after `reserve` can block or fail for lack of space: a full pool
//! falls back to the mapping tier.
//!
//! ## Waking
//! One doorbell per link serves both directions, and both halves may wait on
//! it at once. Each event on the socket wakes every registered waiter (tokio's
//! readiness wakes all of them); whoever runs first drains the bytes, and each
//! re-checks its own ring. A half registers its interest *before* its last
//! check of the ring (B6), so a signal sent after that check always wakes it
//! and a byte drained by the other half cannot leave it asleep. With
//! wake-on-demand (C1) negotiated, a publisher rings only if the other side set
//! its `*_waiting` flag (see `shm_primitives::wake`), so an awake peer costs no
//! system call per message.
//!
//! ## Failure
//! A corrupt entry, a bogus slot reference or a bad mapping reference fails
//! this link's receiving half with a typed [`ShmLinkRxError`]; nothing panics
//! and no other link is affected. A dead peer wakes every waiter at once.

mod liveness;
mod options;
mod recv;
mod send;
mod shared;
mod stats;
mod wait;

use crate::async_lock::AsyncLock;
use crate::framing::{self, MMAP_REF_ENTRY_SIZE, SLOT_LEN_PREFIX};
use crate::link::{Link, TransportMode};
use crate::mmap_registry::{MmapAttachments, MmapRegistry};
use crate::segment::{sender_owner, PeerError, RingEnd, Segment};
use liveness::{heartbeat, heartbeat_watch};
pub use options::{LinkOptions, WaitStrategy};

pub use recv::{BadSlotRefReason, ShmLinkRx, ShmLinkRxError};
use send::{SendLimits, TxState};
pub use send::{ShmLinkTx, ShmLinkTxError, ShmTxPermit, ShmWriteSlot};
use shared::{Core, Shared, FEATURES_KNOWN};
use shm_primitives::peer::{PeerEntry, Side};
use shm_primitives::{Features, PeerId};
use shm_primitives_async::control::{MmapControlReceiver, MmapControlSender};
use shm_primitives_async::doorbell::{Doorbell, DoorbellHandle};
use stats::Counters;
pub use stats::ShmTransportStatsSnapshot;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use wait::{Coop, SpinHistory};
/// A host↔guest link; split it into [`ShmLinkTx`] and [`ShmLinkRx`].
pub struct ShmLink {
    tx: ShmLinkTx,
    rx: ShmLinkRx,
}

// Field order matters below: the ring claims (inside `state`, `_claim`,
// `guard`) are dropped before the `Arc<Core>` whose drop may recover the peer.

impl std::fmt::Debug for ShmLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmLink").field("peer", &self.tx.core.peer).field("side", &self.tx.core.side).finish()
    }
}

/// Why a link could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Links register their descriptors with the tokio runtime they are
    /// built in.
    #[error("an ShmLink must be built inside a tokio runtime")]
    NoRuntime,
    /// The peer does not exist, or a link of this process already uses its
    /// rings.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The segment's rings cannot hold a reference entry.
    #[error("ring capacity {capacity} cannot hold a 32-byte reference entry")]
    RingTooSmall {
        /// The segment's ring capacity.
        capacity: u32,
    },
    /// The doorbell or a control descriptor could not be registered with
    /// the runtime (not a socket, say).
    #[error("cannot register the link's descriptors: {0}")]
    Register(#[source] io::Error),
}

impl LinkError {
    /// The `io::ErrorKind` it converts to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            LinkError::NoRuntime => io::ErrorKind::Other,
            LinkError::Peer(p) => p.kind(),
            LinkError::RingTooSmall { .. } => io::ErrorKind::Unsupported,
            LinkError::Register(io) => io.kind(),
        }
    }
}

crate::io_error::into_io_error!(LinkError);

impl ShmLink {
    /// The host's end of the link to guest `peer` (default options).
    ///
    /// `mmap_tx` and `mmap_rx` are the host's control-channel descriptor and a
    /// duplicate of it (the channel is bidirectional). Must be called inside a
    /// tokio runtime with time enabled.
    pub fn for_host(
        segment: Arc<Segment>,
        peer: PeerId,
        doorbell: DoorbellHandle,
        mmap_tx: std::os::fd::OwnedFd,
        mmap_rx: std::os::fd::OwnedFd,
    ) -> Result<ShmLink, LinkError> {
        Self::new(Side::Host, segment, peer, doorbell, mmap_tx, mmap_rx, LinkOptions::default())
    }

    /// The guest's end of its link to the host (default options).
    pub fn for_guest(
        segment: Arc<Segment>,
        peer: PeerId,
        doorbell: DoorbellHandle,
        mmap_tx: std::os::fd::OwnedFd,
        mmap_rx: std::os::fd::OwnedFd,
    ) -> Result<ShmLink, LinkError> {
        Self::new(Side::Guest, segment, peer, doorbell, mmap_tx, mmap_rx, LinkOptions::default())
    }

    /// Either end, with options.
    pub fn new(
        side: Side,
        segment: Arc<Segment>,
        peer: PeerId,
        doorbell: DoorbellHandle,
        mmap_tx: std::os::fd::OwnedFd,
        mmap_rx: std::os::fd::OwnedFd,
        options: LinkOptions,
    ) -> Result<ShmLink, LinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| LinkError::NoRuntime)?;
        let entry = segment
            .peer_entry(peer)
            .ok_or(PeerError::NoSuchPeer { peer: peer.get(), max_guests: segment.max_guests() })?;
        let capacity = segment.bipbuf_capacity();
        if capacity < MMAP_REF_ENTRY_SIZE {
            return Err(LinkError::RingTooSmall { capacity });
        }
        let tx_claim = segment.claim_ring(peer, RingEnd::tx(side))?;
        let rx_claim = segment.claim_ring(peer, RingEnd::rx(side))?;
        // SAFETY: each claim holds the `Arc<Segment>` that keeps the rings
        // mapped, and is stored beside its handle for the handle's whole life.
        let producer = unsafe { tx_claim.producer().expect("tx claim").assume_lives() };
        // SAFETY: as above.
        let consumer = unsafe { rx_claim.consumer().expect("rx claim").assume_lives() };
        let ours = options.features;
        let peer_features = match side {
            Side::Guest => {
                // Publish ours before first use (spec C0; claim_peer may already
                // have done so before its CAS).
                publish_guest_words(entry, ours);
                segment.track_pool_ops_as(peer);
                segment.host_features().bits() & !FEATURES_KNOWN | FEATURES_KNOWN
            }
            Side::Host => 0,
        };
        // Largest inline payload whose entry fits the ring (B1).
        let inline_limit = segment
            .inline_threshold()
            .min((capacity & !3) - framing::FRAME_HEADER_SIZE)
            .min(segment.max_payload_size());
        let max_var = segment.var_pool().max_slot_size().saturating_sub(SLOT_LEN_PREFIX);
        let limits = SendLimits {
            inline_limit,
            max_var,
            max_payload: segment.max_payload_size(),
            worst_entry: framing::inline_entry_len(inline_limit).max(MMAP_REF_ENTRY_SIZE).min(capacity),
            owner: sender_owner(side, peer),
        };
        let doorbell = Doorbell::new(doorbell).map_err(LinkError::Register)?;
        let control_tx = MmapControlSender::new(mmap_tx).map_err(LinkError::Register)?;
        let control_rx = MmapControlReceiver::new(mmap_rx).map_err(LinkError::Register)?;
        let shared = Arc::new(Shared {
            // SAFETY: `Shared` holds the `Arc<Segment>` that keeps these rings
            // mapped for as long as it lives.
            tx_ring: unsafe { tx_claim.ring().assume_lives() },
            // SAFETY: as above.
            rx_ring: unsafe { rx_claim.ring().assume_lives() },
            one_cpu: std::thread::available_parallelism().is_ok_and(|n| n.get() == 1),
            segment: segment.clone(),
            peer,
            side,
            doorbell,
            rx_notify: Notify::new(),
            tx_notify: Notify::new(),
            peer_gone: AtomicBool::new(false),
            close_pending: AtomicBool::new(false),
            ours,
            peer_features: AtomicU32::new(peer_features),
            counters: Counters::default(),
            options,
        });
        let mut tasks = Vec::new();
        let interval = Duration::from_nanos(segment.heartbeat_interval());
        if !interval.is_zero() && ours.contains(Features::LIVENESS) {
            let weak = Arc::downgrade(&shared);
            tasks.push(match side {
                Side::Guest => runtime.spawn(heartbeat(weak, interval)),
                Side::Host => runtime.spawn(heartbeat_watch(weak, interval)),
            });
        }
        let core = Arc::new(Core { shared, tasks, runtime });
        // Only memfds sealed against shrinking are safe to map from a peer that
        // could truncate them; our own peers (any feature bit) always seal.
        let require_sealed = cfg!(target_os = "linux")
            && match side {
                Side::Guest => !segment.host_features().is_empty(),
                Side::Host => false, // decided per region below once known
            };
        let registry = MmapRegistry::new(
            control_tx,
            options.mmap_region_size,
            options.mmap_budget,
            options.mmap_budget_legacy,
            segment.max_payload_size(),
        );
        let tx = ShmLinkTx {
            state: Arc::new(AsyncLock::new(TxState {
                producer,
                spin: SpinHistory::default(),
                registry,
                closed: false,
                _claim: tx_claim,
                core: core.clone(),
            })),
            limits,
            core: core.clone(),
            coop: Coop::default(),
        };
        let rx = ShmLinkRx {
            consumer,
            spin: SpinHistory::default(),
            attachments: MmapAttachments::new(control_rx, require_sealed),
            failed: None,
            _claim: rx_claim,
            core,
            coop: Coop::default(),
        };
        Ok(ShmLink { tx, rx })
    }

    /// The guest this link serves.
    pub fn peer_id(&self) -> PeerId {
        self.tx.core.peer
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.tx.core.side
    }

    /// Counters of the link.
    pub fn stats(&self) -> ShmTransportStatsSnapshot {
        self.tx.stats()
    }

    /// The features in use on this link (ours ∩ the peer's, once known).
    pub fn negotiated_features(&self) -> Option<Features> {
        self.tx.negotiated_features()
    }
}

impl Link for ShmLink {
    type Tx = ShmLinkTx;
    type Rx = ShmLinkRx;

    fn split(self) -> (ShmLinkTx, ShmLinkRx) {
        (self.tx, self.rx)
    }

    fn supports_transport_mode(mode: TransportMode) -> bool {
        mode == TransportMode::Bare
    }
}

/// A guest's words in its peer entry (spec C0): its features, and its pid
/// when it offers liveness. Published before the claim when the guest claims
/// a reserved slot, and again when its link is built.
pub(crate) fn publish_guest_words(entry: &PeerEntry, features: Features) {
    entry.set_guest_features(features);
    if features.contains(Features::LIVENESS) {
        entry.set_guest_pid(std::process::id());
    }
}
