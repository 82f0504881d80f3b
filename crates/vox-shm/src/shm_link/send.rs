//! The sending half: reserve, allocate in place, commit.

use super::shared::Core;
use super::stats::{bump, snapshot, ShmTransportStatsSnapshot};
use super::wait::{Coop, Half, Poller, SpinHistory};
use crate::async_lock::{AsyncLock, AsyncLockGuard};
use crate::framing::{self, MMAP_REF_ENTRY_SIZE, SLOT_LEN_PREFIX, SLOT_REF_ENTRY_SIZE};
use crate::link::{LinkTx, LinkTxPermit, WriteSlot};
use crate::mmap_registry::{MmapAllocError, MmapAllocation, MmapRegistry};
use crate::segment::RingClaim;
use shm_primitives::bipbuf::{BipBufProducer, RingError};
use shm_primitives::varslot::{AllocError, CheckedSlot};
use shm_primitives::Features;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Geometry every send decision needs, fixed at construction.
#[derive(Debug, Clone, Copy)]
pub(super) struct SendLimits {
    /// Largest inline payload (threshold, capped by what the ring can hold).
    pub(super) inline_limit: u32,
    /// Largest slot-tier payload (largest slot minus the length prefix).
    pub(super) max_var: u32,
    /// Largest payload at all.
    pub(super) max_payload: u32,
    /// Ring bytes `reserve` waits for: the largest entry this link can write.
    pub(super) worst_entry: u32,
    /// Owner value for slots we allocate.
    pub(super) owner: u32,
}

pub(super) struct TxState {
    /// Kept mapped by the claim beside it (which holds the segment).
    pub(super) producer: BipBufProducer<'static>,
    pub(super) spin: SpinHistory,
    pub(super) registry: MmapRegistry,
    pub(super) closed: bool,
    pub(super) _claim: RingClaim,
    /// Reached through the lock guard, so permits and slots need no reference
    /// count of their own (each count update is a locked instruction).
    pub(super) core: Arc<Core>,
}

impl TxState {
    /// Closes the sending direction, once: later calls do nothing.
    pub(super) fn close_once(&mut self) {
        if !self.closed {
            self.closed = true;
            self.core.publish_close();
        }
    }
}

/// The sending half.
pub struct ShmLinkTx {
    pub(super) state: Arc<AsyncLock<TxState>>,
    pub(super) limits: SendLimits,
    pub(super) core: Arc<Core>,
    pub(super) coop: Coop,
}

/// Why a send failed. Through the [`LinkTx`] traits it is an `io::Error`
/// (`BrokenPipe` for a peer that is gone or a closed half) with this as its
/// source.
#[derive(Debug, thiserror::Error)]
pub enum ShmLinkTxError {
    /// The peer died or hung up.
    #[error("peer {peer} is gone")]
    PeerGone {
        /// The peer.
        peer: u8,
    },
    /// This sending half was closed.
    #[error("the link's sending half is closed")]
    Closed,
    /// Our sending ring's shared positions are impossible (the peer wrote
    /// over them).
    #[error("corrupt ring towards peer {peer}: {error}")]
    CorruptRing {
        /// The peer.
        peer: u8,
        /// What was wrong.
        error: RingError,
    },
    /// The payload is larger than the segment allows.
    #[error("payload of {len} bytes exceeds the {max} byte maximum")]
    TooLarge {
        /// Bytes asked for.
        len: usize,
        /// The segment's maximum payload.
        max: u32,
    },
    /// Space `reserve` waited for was gone at `alloc` (only a peer writing
    /// over our ring's positions can cause it).
    #[error("ring space reserved by the permit vanished")]
    SpaceVanished,
    /// The mapping tier could not place the payload.
    #[error(transparent)]
    Mapping(#[from] MmapAllocError),
}

impl ShmLinkTxError {
    /// The `io::ErrorKind` it converts to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            ShmLinkTxError::PeerGone { .. } | ShmLinkTxError::Closed => io::ErrorKind::BrokenPipe,
            ShmLinkTxError::CorruptRing { .. } | ShmLinkTxError::SpaceVanished => io::ErrorKind::InvalidData,
            ShmLinkTxError::TooLarge { .. } => io::ErrorKind::InvalidInput,
            ShmLinkTxError::Mapping(m) => m.kind(),
        }
    }
}

crate::io_error::into_io_error!(ShmLinkTxError);

impl ShmLinkTx {
    /// Internal state for diagnosing a stall (not a stable interface).
    #[doc(hidden)]
    pub fn debug_state(&self) -> String {
        let (w, m, r) = self.core.tx_ring.positions();
        let local = self.state.try_lock().map(|g| format!("{:?}", g.producer.debug_state()));
        format!(
            "tx: local (write, cached_read, wraps) {local:?}; shared w {w} wm {m} r {r}; producer_waiting {}",
            self.core.tx_ring.header().producer_waiting().load(Ordering::Relaxed)
        )
    }

    /// The extensions in use on this link (ours ∩ the peer's), once the peer's
    /// are known.
    pub fn negotiated_features(&self) -> Option<Features> {
        self.core.negotiated_features()
    }

    /// Counters of the link.
    pub fn stats(&self) -> ShmTransportStatsSnapshot {
        let reg = self.state.try_lock();
        snapshot(&self.core.counters, reg.as_ref().map(|g| &g.registry))
    }

    /// Sends `bytes` as one message: waits for room (backpressure), copies
    /// them once, to their final place in shared memory, and publishes them.
    /// To write a payload in place instead (no copy at all), use
    /// [`reserve`](Self::reserve), [`ShmTxPermit::alloc`] and
    /// [`ShmWriteSlot::commit`].
    ///
    /// Cancel safety: cancel-safe. Its only wait is `reserve`'s; dropping the
    /// future there sends nothing, and once it has room it finishes without
    /// waiting again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// use vox_shm::prelude::*;
    /// let segment = std::sync::Arc::new(Segment::create_anonymous(SegmentConfig::default(), Features::ALL)?);
    /// let (host, guest) = vox_shm::create_test_link_pair(segment).await?;
    /// let ((tx, _), (_, mut rx)) = (host.split(), guest.split());
    /// tx.send(b"hello").await?;
    /// assert_eq!(rx.recv().await?.unwrap().as_bytes(), b"hello");
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, bytes: &[u8]) -> Result<(), ShmLinkTxError> {
        let mut slot = self.reserve().await?.alloc(bytes.len())?;
        slot.as_mut_slice().copy_from_slice(bytes);
        slot.commit();
        Ok(())
    }

    /// Closes the sending direction: the peer receives everything sent
    /// before, then end of stream (`Ok(None)`). Dropping the half does the
    /// same. Cancel-safe: if dropped while waiting for a permit in use to be
    /// given back, the close still happens when it is.
    pub async fn close(self) -> Result<(), ShmLinkTxError> {
        self.state.clone().lock_owned().await.close_once();
        Ok(())
    }

    /// Waits for room for one message (see the module docs): the typed form
    /// of [`LinkTx::reserve`]. Cancel-safe: dropping the future before it
    /// completes takes nothing.
    pub async fn reserve(&self) -> Result<ShmTxPermit, ShmLinkTxError> {
        self.coop.tick().await;
        let mut guard = self.state.clone().lock_owned().await;
        if guard.closed {
            return Err(ShmLinkTxError::Closed);
        }
        self.wait_for_space(&mut guard).await?;
        Ok(ShmTxPermit { guard: Some(guard), limits: self.limits })
    }

    /// Waits until a worst-case entry fits the ring (see the module docs).
    pub(super) async fn wait_for_space(&self, st: &mut TxState) -> Result<(), ShmLinkTxError> {
        let need = self.limits.worst_entry;
        let sh = &self.core;
        let mut poller = Poller::new(sh.next_wait(&mut st.spin));
        let mut parked = false;
        // One attempt; a wrap it performs is a publication the consumer must
        // see even if the grant after it fails.
        let max_payload = self.limits.max_payload;
        let peer = sh.peer.get();
        // `None` when there is room, else the counter of what was full.
        let attempt = |st: &mut TxState| -> Result<Option<&AtomicU64>, ShmLinkTxError> {
            let wraps = st.producer.wraps();
            let granted =
                st.producer.try_grant(need).map_err(|error| ShmLinkTxError::CorruptRing { peer, error })?.is_some();
            if st.producer.wraps() != wraps {
                sh.wake_peer_consumer();
            }
            if granted {
                // Only the position matters: `alloc` grants the real size.
                st.producer.cancel();
            }
            // With releases reported (C4), or while the peer may yet report
            // them, the mapping tier is backpressure too: wait until the
            // largest payload could be placed within the budget.
            let mapping_ok = sh.learn_releases(&mut st.registry) == Some(false) || st.registry.can_alloc(max_payload);
            Ok(match (granted, mapping_ok) {
                (true, true) => None,
                (false, _) => Some(&sh.counters.ring_exhausted),
                (true, false) => Some(&sh.counters.mmap_budget_exhausted),
            })
        };
        loop {
            if sh.gone() {
                return Err(ShmLinkTxError::PeerGone { peer: sh.peer.get() });
            }
            match attempt(st)? {
                None => {
                    st.spin.record(poller.polled_with(), parked, poller.waited());
                    return Ok(());
                }
                Some(full) => bump(full),
            }
            if poller.keep_polling().await {
                if poller.took_a_slice() {
                    sh.check_hang_up(Half::Tx);
                }
                continue;
            }
            let notified = pin!(sh.notify(Half::Tx).notified());
            let bell = pin!(sh.doorbell.readable(sh.peer_rings()));
            let Some(park) = sh.park(Half::Tx, bell, notified).await else {
                continue; // already rung: look again
            };
            let done = sh.gone() || attempt(st)?.is_none();
            if !done {
                bump(&sh.counters.reserve_waits);
                sh.sleep(park, Half::Tx, || format!("reserve of {need} B: local {:?}", st.producer.debug_state()))
                    .await;
                parked = true;
            }
            poller = poller.again(sh.wait_strategy());
        }
    }
}

impl LinkTx for ShmLinkTx {
    type Permit = ShmTxPermit;

    #[allow(clippy::manual_async_fn)] // the trait promises a `Send` future
    fn reserve(&self) -> impl std::future::Future<Output = io::Result<ShmTxPermit>> + Send + '_ {
        async move { Ok(ShmLinkTx::reserve(self).await?) }
    }

    #[allow(clippy::manual_async_fn)] // the trait promises a `Send` future
    fn close(self) -> impl std::future::Future<Output = io::Result<()>> + Send {
        async move { Ok(ShmLinkTx::close(self).await?) }
    }
}

impl Drop for ShmLinkTx {
    fn drop(&mut self) {
        // A dropped sender closes like `close()`, so the peer's receiver sees
        // end-of-stream instead of waiting for our process to exit.
        match self.state.try_lock() {
            Some(mut st) => st.close_once(),
            None => self.core.close_pending.store(true, Ordering::Release),
        }
    }
}

pub(super) fn finish_pending_close(st: &mut TxState) {
    let pending = &st.core.close_pending;
    // A plain load first: the swap is a full barrier, too dear per message.
    if pending.load(Ordering::Relaxed) && pending.swap(false, Ordering::AcqRel) {
        st.close_once();
    }
}

/// Room for one message; see [`LinkTxPermit`].
pub struct ShmTxPermit {
    pub(super) guard: Option<AsyncLockGuard<TxState>>,
    pub(super) limits: SendLimits,
}

pub(super) enum Payload {
    Inline { len: u32 },
    Slot { slot: CheckedSlot, len: u32 },
    Mmap(MmapAllocation),
    Done,
}

/// A message being written; see [`WriteSlot`].
pub struct ShmWriteSlot {
    pub(super) guard: Option<AsyncLockGuard<TxState>>,
    pub(super) payload: Payload,
}

impl std::fmt::Debug for ShmLinkTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmLinkTx")
            .field("peer", &self.core.peer)
            .field("side", &self.core.side)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ShmTxPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmTxPermit").field("max_payload", &self.limits.max_payload).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ShmWriteSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (tier, len) = match &self.payload {
            Payload::Inline { len } => ("inline", Some(*len)),
            Payload::Slot { len, .. } => ("slot", Some(*len)),
            Payload::Mmap(a) => ("mapping", Some(a.mmap_ref.payload_len)),
            Payload::Done => ("committed", None),
        };
        f.debug_struct("ShmWriteSlot").field("tier", &tier).field("len", &len).finish()
    }
}

impl ShmTxPermit {
    pub(super) fn grant(producer: &mut BipBufProducer<'_>, n: u32, peer: u8) -> Result<(), ShmLinkTxError> {
        // `reserve` waited until a worst-case entry fits, and only the consumer
        // (who frees space) ran since, so this cannot fail.
        match producer.try_grant(n).map_err(|error| ShmLinkTxError::CorruptRing { peer, error })? {
            Some(_) => Ok(()),
            None => Err(ShmLinkTxError::SpaceVanished),
        }
    }

    /// Places a `len`-byte payload at its final address (see the module
    /// docs): the typed form of [`LinkTxPermit::alloc`].
    pub fn alloc(mut self, len: usize) -> Result<ShmWriteSlot, ShmLinkTxError> {
        let mut guard = self.guard.take().expect("permit holds the producer");
        let lim = self.limits;
        let len = u32::try_from(len)
            .ok()
            .filter(|&l| l <= lim.max_payload)
            .ok_or(ShmLinkTxError::TooLarge { len, max: lim.max_payload })?;
        let TxState { producer, registry, core, .. } = &mut *guard;
        let peer = core.peer.get();
        let payload = if len <= lim.inline_limit {
            Self::grant(producer, framing::inline_entry_len(len), peer)?;
            Payload::Inline { len }
        } else {
            let pool = core.segment.var_pool();
            let slot = if len <= lim.max_var {
                match pool.allocate(len + SLOT_LEN_PREFIX, lim.owner) {
                    Ok(s) => Some(s),
                    Err(AllocError::Exhausted { .. } | AllocError::Corrupt { .. }) => {
                        bump(&core.counters.varslot_exhausted);
                        bump(&core.counters.slot_fallbacks);
                        None
                    }
                    Err(AllocError::TooLarge { .. }) => None,
                }
            } else {
                None
            };
            match slot {
                Some(s) => {
                    let slot = pool.check(s).expect("freshly allocated slots are valid");
                    if let Err(e) = Self::grant(producer, SLOT_REF_ENTRY_SIZE, peer) {
                        let _ = pool.free(s);
                        return Err(e);
                    }
                    Payload::Slot { slot, len }
                }
                None => {
                    core.learn_releases(registry);
                    let a = registry.alloc(len)?;
                    if let Err(e) = Self::grant(producer, MMAP_REF_ENTRY_SIZE, peer) {
                        registry.cancel(a);
                        return Err(e);
                    }
                    Payload::Mmap(a)
                }
            }
        };
        Ok(ShmWriteSlot { guard: Some(guard), payload })
    }
}

impl LinkTxPermit for ShmTxPermit {
    type Slot = ShmWriteSlot;

    fn alloc(self, len: usize) -> io::Result<ShmWriteSlot> {
        Ok(ShmTxPermit::alloc(self, len)?)
    }
}

impl Drop for ShmTxPermit {
    fn drop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            finish_pending_close(&mut g);
        }
    }
}

impl WriteSlot for ShmWriteSlot {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        let st = self.guard.as_mut().expect("slot holds the producer");
        match &mut self.payload {
            Payload::Inline { len } => {
                let g = st.producer.granted_mut().expect("inline grant");
                &mut g[framing::FRAME_HEADER_SIZE as usize..(framing::FRAME_HEADER_SIZE + *len) as usize]
            }
            Payload::Slot { slot, len } => {
                // SAFETY: the slot was allocated for us and is not published yet,
                // so nobody else uses it; it holds at least `len + 4` bytes; the
                // slice borrows `self`, which keeps the segment mapped.
                unsafe {
                    std::slice::from_raw_parts_mut(slot.data().as_ptr().add(SLOT_LEN_PREFIX as usize), *len as usize)
                }
            }
            Payload::Mmap(a) => a.bytes_mut(),
            Payload::Done => &mut [],
        }
    }

    fn commit(mut self) {
        let mut guard = self.guard.take().expect("slot holds the producer");
        let st = &mut *guard;
        let c = &st.core.counters;
        let entry_len = match std::mem::replace(&mut self.payload, Payload::Done) {
            Payload::Inline { len } => {
                bump(&c.inline_sends);
                framing::finish_inline(st.producer.granted_mut().expect("grant"), len)
            }
            Payload::Slot { slot, len } => {
                // SAFETY: our unpublished slot, at least 4 bytes (see as_mut_slice).
                unsafe { std::ptr::copy_nonoverlapping(len.to_le_bytes().as_ptr(), slot.data().as_ptr(), 4) };
                bump(&c.slot_ref_sends);
                framing::write_slot_ref(st.producer.granted_mut().expect("grant"), &slot.slot_ref())
            }
            Payload::Mmap(a) => {
                let m = a.mmap_ref;
                st.registry.commit(a);
                bump(&c.mmap_ref_sends);
                framing::write_mmap_ref(st.producer.granted_mut().expect("grant"), &m)
            }
            Payload::Done => return,
        };
        // Release store of `write` inside: publishes the entry and the payload
        // (ring, slot or region bytes) to the consumer's Acquire load.
        let committed = st.producer.commit(entry_len);
        debug_assert!(committed.is_ok(), "commit of our own grant: {committed:?}");
        st.core.wake_peer_consumer();
        finish_pending_close(st);
    }
}

impl Drop for ShmWriteSlot {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else { return };
        let st = &mut *guard;
        st.producer.cancel();
        match std::mem::replace(&mut self.payload, Payload::Done) {
            Payload::Slot { slot, .. } => {
                let _ = st.core.segment.var_pool().free(slot.slot_ref());
            }
            Payload::Mmap(a) => st.registry.cancel(a),
            Payload::Inline { .. } | Payload::Done => {}
        }
        finish_pending_close(st);
    }
}
