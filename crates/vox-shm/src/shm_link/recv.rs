//! The receiving half: frames out of the ring, slot and mapping payloads
//! handed over without a copy, typed errors for what a peer got wrong.

use super::shared::{Core, Shared};
use super::stats::{bump, snapshot, ShmTransportStatsSnapshot};
use super::wait::{yield_to_ready_tasks, Coop, Half, Poller, SpinHistory, POLL_SLICE};
use crate::framing::{self, Frame, FrameError, MmapRef, SLOT_LEN_PREFIX};
use crate::link::{Backing, LinkRx, SharedBacking};
use crate::mmap_registry::{MmapAttachments, MmapResolveError};
use crate::segment::{RingClaim, Segment, OWNER_HOST};
use shm_primitives::bipbuf::{BipBufConsumer, RingError};
use shm_primitives::peer::Side;
use shm_primitives::varslot::{CheckedSlot, SlotError, SlotRef};
use shm_primitives::Features;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How long a half-published wrap may last before the ring counts as corrupt
/// (an honest producer's two stores are nanoseconds apart; this allows for it
/// being preempted between them on a loaded machine).
pub(super) const WRAP_STALL_LIMIT: Duration = Duration::from_secs(1);

/// The receiving half.
pub struct ShmLinkRx {
    /// Kept mapped by the claim beside it (which holds the segment).
    pub(super) consumer: BipBufConsumer<'static>,
    pub(super) spin: SpinHistory,
    pub(super) attachments: MmapAttachments,
    pub(super) failed: Option<ShmLinkRxError>,
    pub(super) _claim: RingClaim,
    pub(super) core: Arc<Core>,
    pub(super) coop: Coop,
}

/// Why a receive failed. After any error the receiving half stays failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShmLinkRxError {
    /// The entry at the head of the ring is malformed.
    #[error("corrupt ring entry from peer {peer}: {error}")]
    CorruptFrame {
        /// The peer.
        peer: u8,
        /// What was wrong.
        error: FrameError,
    },
    /// A ring index in shared memory is impossible.
    #[error("corrupt ring from peer {peer}: {error}")]
    CorruptRing {
        /// The peer.
        peer: u8,
        /// What was wrong.
        error: RingError,
    },
    /// A slot reference names no slot, or one the sender does not hold.
    #[error("bogus slot reference {slot:?} from peer {peer}: {reason}")]
    BadSlotRef {
        /// The peer.
        peer: u8,
        /// The reference.
        slot: SlotRef,
        /// What was wrong.
        reason: BadSlotRefReason,
    },
    /// A slot's length prefix is larger than the slot.
    #[error("slot payload length {payload_len} exceeds the {slot_bytes}-byte slot")]
    MalformedSlotRefLength {
        /// Bytes in the slot.
        slot_bytes: u32,
        /// Length claimed.
        payload_len: u32,
    },
    /// A mapping reference could not be resolved.
    #[error("mapping reference from peer {peer}: {error}")]
    MmapResolve {
        /// The peer.
        peer: u8,
        /// What went wrong.
        error: MmapResolveError,
    },
    /// The peer vanished without closing (a crash).
    #[error("{}", if *host { format!("the host died (this guest was peer {peer})") } else { format!("guest {peer} died") })]
    PeerDead {
        /// The link's peer id (the guest's).
        peer: u8,
        /// The one that died was the host (we are its guest).
        host: bool,
    },
    /// This half failed earlier, for this reason.
    #[error("link failed earlier: {0}")]
    Failed(Box<ShmLinkRxError>),
}

/// Why a slot reference from the peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSlotRefReason {
    /// It names no slot of this pool.
    #[error(transparent)]
    Invalid(#[from] SlotError),
    /// The slot exists but is not one the peer allocated and still holds.
    #[error("slot is generation {generation}, state {state}, owner {owner}: not allocated by the peer")]
    NotHeldByPeer {
        /// Generation in the slot's metadata.
        generation: u32,
        /// State word (1 = allocated).
        state: u32,
        /// Owner word.
        owner: u32,
    },
}

impl From<ShmLinkRxError> for std::io::Error {
    /// For `?` in functions returning `io::Result`: a dead peer is
    /// `ConnectionReset`, everything else `InvalidData`; the typed error is
    /// kept as the source.
    fn from(e: ShmLinkRxError) -> Self {
        let kind = match e.root() {
            ShmLinkRxError::PeerDead { .. } => std::io::ErrorKind::ConnectionReset,
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}

impl ShmLinkRxError {
    /// The first error, through any number of [`ShmLinkRxError::Failed`].
    pub fn root(&self) -> &ShmLinkRxError {
        match self {
            ShmLinkRxError::Failed(e) => e.root(),
            e => e,
        }
    }
}

impl std::fmt::Debug for ShmLinkRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmLinkRx")
            .field("peer", &self.core.peer)
            .field("side", &self.core.side)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

pub(super) enum Step {
    Message(Backing),
    NeedMapping(MmapRef),
    Empty,
}

/// A slot-tier payload: zero-copy; the slot is freed when this is dropped.
pub(super) struct SlotBacking {
    pub(super) segment: Arc<Segment>,
    pub(super) slot: CheckedSlot,
    pub(super) len: u32,
    /// To nudge a legacy peer after the free (0.3.1 does), without keeping the
    /// link (and its doorbell) alive.
    pub(super) link: Weak<Shared>,
}

impl SharedBacking for SlotBacking {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: the slot lies inside the mapping `self.segment` keeps alive and
        // holds at least 4 + len bytes (checked at receive); the sender does not
        // write it after publishing, and it is not freed before we drop.
        unsafe {
            std::slice::from_raw_parts(self.slot.data().as_ptr().add(SLOT_LEN_PREFIX as usize), self.len as usize)
        }
    }
}

impl Drop for SlotBacking {
    fn drop(&mut self) {
        let _ = self.segment.var_pool().free(self.slot.slot_ref());
        if let Some(link) = self.link.upgrade() {
            if !link.negotiated(Features::WAKE_ON_DEMAND) {
                link.ring();
            }
        }
    }
}

impl ShmLinkRx {
    /// Internal state for diagnosing a stall (not a stable interface).
    #[doc(hidden)]
    pub fn debug_state(&self) -> String {
        let (read, known_end, unpublished, _) = self.consumer.debug_state();
        let (w, m, r) = self.core.rx_ring.positions();
        format!(
            "rx: local read {read} known_end {known_end} unpublished {unpublished}; shared w {w} wm {m} r {r}; consumer_waiting {} gone {} negotiated {:?}",
            self.core.rx_ring.header().consumer_waiting().load(Ordering::Relaxed),
            self.core.gone(),
            self.core.negotiated_features()
        )
    }

    /// Counters of the link.
    pub fn stats(&self) -> ShmTransportStatsSnapshot {
        snapshot(&self.core.counters, None)
    }

    pub(super) fn fail(&mut self, e: ShmLinkRxError) -> ShmLinkRxError {
        self.failed = Some(e.clone());
        e
    }

    /// Expected owner values of a slot the peer sent us.
    pub(super) fn peer_owner_ok(&self, owner: u32) -> bool {
        match self.core.side {
            Side::Host => owner == u32::from(self.core.peer.get()),
            Side::Guest => owner == OWNER_HOST || owner == crate::segment::owner_host_to(self.core.peer),
        }
    }

    /// Takes one entry off the ring, if there is one.
    pub(super) fn step(&mut self) -> Result<Step, ShmLinkRxError> {
        let peer = self.core.peer.get();
        let before = self.consumer.position();
        let read = self.consumer.try_read();
        let region = match read {
            Ok(Some(r)) => r,
            Ok(None) => {
                // The ring looks empty. If the producer waits for space, publish
                // the deferred releases now (it may be waiting for exactly
                // that). Its flag shares the cache line of `write`, which we
                // just loaded, so looking is nearly free; before we sleep we
                // publish regardless (see `recv`). A drained tail handed
                // back counts as freed space too.
                let producer_waits = self.core.rx_ring.header().producer_waiting().load(Ordering::Relaxed) != 0;
                let flushed = self.consumer.has_unpublished() && producer_waits && self.consumer.flush();
                if flushed || self.consumer.position() != before {
                    self.core.wake_peer_producer();
                }
                return Ok(Step::Empty);
            }
            Err(error) => return Err(self.fail(ShmLinkRxError::CorruptRing { peer, error })),
        };
        let parsed = framing::parse_frame(&region);
        let (frame, consumed, inline) = match parsed {
            Ok((Frame::Inline { len }, consumed)) => {
                let v = region.to_vec(framing::FRAME_HEADER_SIZE, len).expect("parse checked the bounds");
                (Frame::Inline { len }, consumed, Some(v))
            }
            Ok((f, consumed)) => (f, consumed, None),
            Err(error) => return Err(self.fail(ShmLinkRxError::CorruptFrame { peer, error })),
        };
        let c = &self.core.counters;
        let backing = match frame {
            Frame::Inline { .. } => {
                bump(&c.inline_recvs);
                Backing::Boxed(inline.expect("copied above").into_boxed_slice())
            }
            Frame::SlotRef(s) => {
                bump(&c.slot_ref_recvs);
                self.take_slot(s)?
            }
            Frame::MmapRef(m) => {
                let count_release = self.core.negotiated(Features::MAPPING_RELEASE);
                if let Some(f) = self.core.peer_features() {
                    // Our own peers always send sealed memfds; insist on it.
                    self.attachments.set_require_sealed(cfg!(target_os = "linux") && !f.is_empty());
                }
                match self.attachments.resolve(&m, count_release) {
                    Ok(Some(b)) => {
                        bump(&c.mmap_ref_recvs);
                        // A sender waiting for mapping space (C4) hears of the release.
                        let link = Arc::downgrade(&self.core.shared);
                        let b = b.on_release(move || {
                            if let Some(l) = link.upgrade() {
                                l.wake_peer_producer();
                            }
                        });
                        Backing::Shared(Arc::new(b))
                    }
                    // Not announced yet: leave the entry in the ring and wait.
                    Ok(None) => return Ok(Step::NeedMapping(m)),
                    Err(error) => return Err(self.fail(ShmLinkRxError::MmapResolve { peer, error })),
                }
            }
        };
        // Between our own peers (C1), publish the read position in batches of
        // an eighth of the ring: streaming then touches the producer's cache
        // line once per batch, not per message. A legacy peer gets every
        // release at once, with its "ack" signal.
        let batch = if self.core.negotiated(Features::WAKE_ON_DEMAND) { self.core.rx_ring.capacity() / 8 } else { 0 };
        match self.consumer.release_deferred(consumed, batch) {
            Ok(true) => self.core.wake_peer_producer(),
            Ok(false) => {}
            Err(error) => return Err(self.fail(ShmLinkRxError::CorruptRing { peer, error })),
        }
        Ok(Step::Message(backing))
    }

    /// Validates a received slot reference and takes the slot over.
    pub(super) fn take_slot(&mut self, s: SlotRef) -> Result<Backing, ShmLinkRxError> {
        let peer = self.core.peer.get();
        let pool = self.core.segment.var_pool();
        let bad = |reason: BadSlotRefReason| ShmLinkRxError::BadSlotRef { peer, slot: s, reason };
        let slot = match pool.check(s) {
            Ok(c) => c,
            Err(e) => return Err(self.fail(bad(e.into()))),
        };
        let (generation, state, owner) = pool.slot_meta(s.class_idx as usize, s.slot_idx).expect("checked");
        if generation != s.generation || state != 1 || !self.peer_owner_ok(owner) {
            return Err(self.fail(bad(BadSlotRefReason::NotHeldByPeer { generation, state, owner })));
        }
        let mut prefix = [0u8; 4];
        if slot.size() >= SLOT_LEN_PREFIX {
            // SAFETY: the checked slot lies in the mapping and has at least 4 bytes.
            unsafe { std::ptr::copy_nonoverlapping(slot.data().as_ptr(), prefix.as_mut_ptr(), 4) };
        }
        let len = u32::from_le_bytes(prefix);
        if slot.size() < SLOT_LEN_PREFIX || len > slot.size() - SLOT_LEN_PREFIX {
            let _ = pool.free(s);
            return Err(self.fail(ShmLinkRxError::MalformedSlotRefLength { slot_bytes: slot.size(), payload_len: len }));
        }
        if self.core.side == Side::Host {
            // The slot is ours now: a crash recovery of this guest must not
            // reclaim it while we still read it.
            pool.retag_owner(s, owner, OWNER_HOST);
        }
        Ok(Backing::Shared(Arc::new(SlotBacking {
            segment: self.core.segment.clone(),
            slot,
            len,
            link: Arc::downgrade(&self.core.shared),
        })))
    }

    /// The next message, or `Ok(None)` once the peer closed its sending half
    /// (after everything it sent before). Slot and mapping payloads are the
    /// sender's bytes in shared memory, not copies; they go back to the
    /// sender when the [`Backing`] drops. After an error this half stays
    /// failed and returns [`ShmLinkRxError::Failed`] with the first error.
    ///
    /// Cancel safety: cancel-safe. A message is taken from the ring only in
    /// the poll that returns it, so dropping the future loses nothing. That
    /// also makes it a `Stream` in one line where one is wanted, for example
    /// `futures::stream::unfold(rx, |mut rx| async { rx.recv().await.transpose().map(|m| (m, rx)) })`
    /// (this crate does not depend on `futures` for it).
    pub async fn recv(&mut self) -> Result<Option<Backing>, ShmLinkRxError> {
        if let Some(e) = &self.failed {
            return Err(ShmLinkRxError::Failed(Box::new(e.clone())));
        }
        self.coop.tick().await;
        let mut poller = Poller::new(self.core.next_wait(&mut self.spin));
        let mut parked = false;
        let mut wrap_stall = None;
        loop {
            match self.step()? {
                Step::Message(b) => {
                    self.spin.record(poller.polled_with(), parked, poller.waited());
                    return Ok(Some(b));
                }
                Step::NeedMapping(m) => {
                    let limit = self.core.options.mmap_attach_timeout;
                    if let Err(error) = self.attachments.wait_for(&m, limit).await {
                        let peer = self.core.peer.get();
                        return Err(self.fail(ShmLinkRxError::MmapResolve { peer, error }));
                    }
                    continue;
                }
                Step::Empty => {}
            }
            if let Some(end) = self.end_of_stream()? {
                return end;
            }
            if self.consumer.wrap_pending() {
                // The producer's `write = 0` is about to land: look again,
                // after every other ready task (as polling does, without a
                // driver poll per look). An honest producer makes its two
                // stores back to back; a wrap that stays half-done is a
                // hostile ring, and a peer that hung up meanwhile must still
                // be noticed: the doorbell is drained at the first look and
                // once per polling slice after it (a system call each).
                let now = Instant::now();
                let (since, checked) = wrap_stall.get_or_insert((now, None));
                if now.duration_since(*since) > WRAP_STALL_LIMIT {
                    let peer = self.core.peer.get();
                    let (_, watermark, _) = self.core.rx_ring.positions();
                    let error = RingError::WrapNeverCompleted { watermark };
                    return Err(self.fail(ShmLinkRxError::CorruptRing { peer, error }));
                }
                if checked.is_none_or(|c| now.duration_since(c) >= POLL_SLICE) {
                    *checked = Some(now);
                    self.core.check_hang_up(Half::Rx);
                }
                yield_to_ready_tasks().await;
                continue;
            }
            wrap_stall = None;
            if poller.keep_polling().await {
                if poller.took_a_slice() {
                    self.core.check_hang_up(Half::Rx);
                }
                continue;
            }
            // About to sleep: publish every deferred release first, so a
            // producer never waits for space we hold.
            if self.consumer.flush() {
                self.core.wake_peer_producer();
            }
            let sh = self.core.shared.clone();
            let notified = pin!(sh.notify(Half::Rx).notified());
            let bell = pin!(sh.doorbell.readable(sh.peer_rings()));
            let Some(park) = sh.park(Half::Rx, bell, notified).await else {
                continue; // already rung: look again
            };
            let step = self.step();
            let idle =
                matches!(step, Ok(Step::Empty)) && !self.consumer.wrap_pending() && !sh.gone() && !sh.peer_closed();
            if idle {
                bump(&sh.counters.recv_waits);
                let consumer = &self.consumer;
                sh.sleep(park, Half::Rx, || {
                    format!(
                        "recv: local (read, known_end, unpublished, last seen (write, wm)) {:?}",
                        consumer.debug_state()
                    )
                })
                .await;
                parked = true;
            } else {
                drop(park); // withdraw the announcement
            }
            match step? {
                Step::Message(b) => {
                    self.spin.record(poller.polled_with(), parked, poller.waited());
                    return Ok(Some(b));
                }
                Step::NeedMapping(_) | Step::Empty => {}
            }
            poller = poller.again(sh.wait_strategy());
        }
    }

    /// With the ring found empty: has the peer closed (then `Ok(None)`) or
    /// died (then an error, unless it cannot announce a close)?
    pub(super) fn end_of_stream(&mut self) -> Result<Option<Result<Option<Backing>, ShmLinkRxError>>, ShmLinkRxError> {
        // Borrowed, not cloned, on this path: it runs at every empty look,
        // and an `Arc` clone is two locked instructions.
        let (closed, gone) = (self.core.shared.peer_closed(), self.core.shared.gone());
        if !closed && !gone {
            return Ok(None);
        }
        let sh = self.core.shared.clone();
        // The flag (Acquire) or the death came after the peer's last commit:
        // look once more before ending (spec C2).
        match self.step()? {
            Step::Message(b) => return Ok(Some(Ok(Some(b)))),
            Step::NeedMapping(_) => return Ok(None),
            Step::Empty => {}
        }
        if closed {
            return Ok(Some(Ok(None)));
        }
        // Died without closing. A peer known to be unable to announce a close
        // (0.3.1) ends every stream this way, so for it death is the end of
        // stream. A peer that died before it even attached (features still
        // unknown) never closed anything: that is a death.
        if sh.peer_features().is_some_and(|f| !f.contains(Features::INBAND_CLOSE)) {
            return Ok(Some(Ok(None)));
        }
        let (peer, host) = (sh.peer.get(), sh.side == Side::Guest);
        Ok(Some(Err(self.fail(ShmLinkRxError::PeerDead { peer, host }))))
    }
}

impl LinkRx for ShmLinkRx {
    type Error = ShmLinkRxError;

    fn recv(&mut self) -> impl std::future::Future<Output = Result<Option<Backing>, ShmLinkRxError>> + Send + '_ {
        ShmLinkRx::recv(self)
    }
}
