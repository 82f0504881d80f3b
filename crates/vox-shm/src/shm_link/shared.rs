//! What both halves of a link share: the segment, the doorbell, the
//! negotiated features, the wake-up rules (B6, C1) and the end-of-link actions.

use super::options::{LinkOptions, WaitStrategy};
use super::stats::{bump_shared, Counters};
use super::wait::{Announce, Half, Park, SpinHistory};
use crate::mmap_registry::MmapRegistry;
use crate::segment::Segment;
use shm_primitives::bipbuf::BipBuf;
use shm_primitives::peer::{PeerEntry, PeerState, Side};
use shm_primitives::wake::should_wake;
use shm_primitives::{Features, PeerId};
use shm_primitives_async::doorbell::{Doorbell, Drained, Rings, SignalResult};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

pub(super) const FEATURES_KNOWN: u32 = 1 << 31;

/// State shared by both halves, the pump task and (weakly) the backings.
pub(super) struct Shared {
    pub(super) segment: Arc<Segment>,
    pub(super) peer: PeerId,
    pub(super) side: Side,
    pub(super) doorbell: Doorbell,
    /// Wakes the receiving half when the sending half drained the doorbell
    /// (and the other way round): a drained byte may have been meant for the
    /// other half, and waking it must not depend on how the reactor wakes
    /// several waiters of one descriptor (B6).
    pub(super) rx_notify: Notify,
    pub(super) tx_notify: Notify,
    pub(super) peer_gone: AtomicBool,
    /// Set when the sending half is dropped while a permit is outstanding; the
    /// permit finishes the close.
    pub(super) close_pending: AtomicBool,
    pub(super) ours: Features,
    /// Peer's features with `FEATURES_KNOWN` once read.
    pub(super) peer_features: AtomicU32,
    pub(super) counters: Counters,
    pub(super) options: LinkOptions,
    /// Views of the segment this struct's `segment` keeps mapped (hence
    /// `'static`; they never leave the link).
    pub(super) tx_ring: BipBuf<'static>,
    pub(super) rx_ring: BipBuf<'static>,
    /// This process may run on a single CPU only (see `wait_strategy`).
    pub(super) one_cpu: bool,
}

impl Shared {
    pub(super) fn entry(&self) -> &PeerEntry {
        self.segment.peer_entry(self.peer).expect("link peers exist in the segment")
    }

    /// The peer's features, once known. A guest learns the host's from the
    /// header; the host reads the guest's word lazily, because it builds its
    /// link before the guest has claimed its slot (spec C0).
    pub(super) fn peer_features(&self) -> Option<Features> {
        let v = self.peer_features.load(Ordering::Acquire);
        if v & FEATURES_KNOWN != 0 {
            return Some(Features::from_bits(v & !FEATURES_KNOWN));
        }
        let e = self.entry();
        if !matches!(e.state(), PeerState::Attached | PeerState::Goodbye) {
            return None;
        }
        let f = e.guest_features().bits() & !FEATURES_KNOWN;
        self.peer_features.store(f | FEATURES_KNOWN, Ordering::Release);
        Some(Features::from_bits(f))
    }

    /// How the peer rings our doorbell: only to claim an announced sleep once
    /// wake on demand is agreed, so most wake-ups need not read the bytes.
    pub(super) fn peer_rings(&self) -> Rings {
        if self.negotiated(Features::WAKE_ON_DEMAND) {
            Rings::OnDemand
        } else {
            Rings::Always
        }
    }

    /// A feature is on when we offer it and the peer is known to offer it.
    pub(super) fn negotiated(&self, f: Features) -> bool {
        self.ours.contains(f) && self.peer_features().is_some_and(|p| p.contains(f))
    }

    pub(super) fn ring(&self) {
        bump_shared(&self.counters.doorbell_signals);
        if self.doorbell.signal() == SignalResult::PeerDead {
            bump_shared(&self.counters.doorbell_peer_dead);
            self.mark_gone();
        }
    }

    pub(super) fn mark_gone(&self) {
        self.peer_gone.store(true, Ordering::Release);
        self.rx_notify.notify_waiters();
        self.tx_notify.notify_waiters();
    }

    /// The features both sides use, once the peer's are known.
    pub(super) fn negotiated_features(&self) -> Option<Features> {
        self.peer_features().map(|p| p.intersect(self.ours))
    }

    /// Whether the peer reports mapping releases (C4), told to `registry`
    /// once known: `None` while the peer's features are not known yet.
    pub(super) fn learn_releases(&self, registry: &mut MmapRegistry) -> Option<bool> {
        // Without our offer the feature is off whatever the peer says.
        let reports = if self.ours.contains(Features::MAPPING_RELEASE) {
            self.peer_features().map(|p| p.contains(Features::MAPPING_RELEASE))
        } else {
            Some(false)
        };
        if let Some(r) = reports {
            registry.set_peer_reports_releases(r);
        }
        reports
    }

    /// Starts parking `half` (see [`Park`]); `None` if the doorbell had
    /// already rung (the drain is noted): look again instead.
    pub(super) async fn park<'a, 'p, B>(
        &'a self,
        half: Half,
        bell: Pin<&'p mut B>,
        notified: Pin<&'p mut Notified<'a>>,
    ) -> Option<Park<'a, 'p, B>>
    where
        B: Future<Output = io::Result<Drained>>,
    {
        let announce = self.ours.contains(Features::WAKE_ON_DEMAND).then(|| Announce {
            flag: self.waiting_flag(half),
            doorbell: &self.doorbell,
            count: &self.counters.wait_announcements,
        });
        match Park::begin(bell, notified, announce).await {
            Ok(park) => Some(park),
            Err(d) => {
                self.note_drain(d, half);
                None
            }
        }
    }

    /// Sleeps in `park` until woken. `local` describes what `half` waits for
    /// in stall reports; the ring's shared positions, its wait flags and the
    /// doorbell's counts are added here.
    pub(super) async fn sleep<B>(&self, park: Park<'_, '_, B>, half: Half, local: impl Fn() -> String)
    where
        B: Future<Output = io::Result<Drained>>,
    {
        let ring = self.ring_of(half);
        let state = || {
            let (w, m, r) = ring.positions();
            let flag = |f: &AtomicU32| f.load(Ordering::Relaxed);
            format!(
                "peer {} {:?}: {}, shared w {w} wm {m} r {r}, producer_waiting {}, consumer_waiting {}; doorbell: {} signals sent, {} wake-ups, {:?} bytes pending; negotiated {:?}",
                self.peer,
                self.side,
                local(),
                flag(ring.header().producer_waiting()),
                flag(ring.header().consumer_waiting()),
                self.counters.doorbell_signals.load(Ordering::Relaxed),
                self.counters.doorbell_wakeups.load(Ordering::Relaxed),
                self.doorbell.pending_bytes().ok(),
                self.negotiated_features(),
            )
        };
        if let Some(d) = park.sleep(self.options.stall_report, state).await {
            self.note_drain(d, half);
        }
    }

    /// Records what a drain of the doorbell by half `by` found. The signal may
    /// have been meant for the other half, so that one is woken (B6). The
    /// draining half is awake already; waking it too would make its task
    /// poll twice and its runtime take an extra trip through the reactor.
    pub(super) fn note_drain(&self, d: io::Result<Drained>, by: Half) {
        match d {
            Ok(d) if !d.peer_gone => {
                if d.bytes > 0 {
                    bump_shared(&self.counters.doorbell_wakeups);
                    self.notify(by.other()).notify_waiters();
                }
            }
            _ => self.mark_gone(),
        }
    }

    pub(super) fn gone(&self) -> bool {
        self.peer_gone.load(Ordering::Acquire)
    }

    /// The configured strategy, except that polling is pointless when this
    /// process may run on one CPU only (`taskset -c 0`, a one-CPU container):
    /// the peer needs that CPU to produce what we would poll for, so `Spin`
    /// parks at once there.
    pub(super) fn wait_strategy(&self) -> WaitStrategy {
        match self.options.wait {
            WaitStrategy::Spin { .. } if self.one_cpu => WaitStrategy::Park,
            w => w,
        }
    }

    /// The strategy for a half's next wait, from its history: what it has
    /// learned, and whether this link rang the peer since its last wait.
    pub(super) fn next_wait(&self, history: &mut SpinHistory) -> WaitStrategy {
        history.strategy(self.wait_strategy(), self.counters.doorbell_signals.load(Ordering::Relaxed))
    }

    /// A half that polls instead of parking never reads the doorbell, so it
    /// would not see the peer hang up: drain it (non-blocking) once per
    /// polling slice. A peek is not enough: signals still queued in front of
    /// the end of stream hide it, and a busy-polling guest whose host was
    /// killed polled for ever. Whatever the drain finds wakes the other half,
    /// as every drain does (B6).
    pub(super) fn check_hang_up(&self, by: Half) {
        if !self.gone() {
            self.note_drain(Ok(self.doorbell.drain()), by);
        }
    }

    /// The wake-up a half waits on besides the doorbell.
    pub(super) fn notify(&self, half: Half) -> &Notify {
        match half {
            Half::Tx => &self.tx_notify,
            Half::Rx => &self.rx_notify,
        }
    }

    /// The ring a half works on: we produce into `tx_ring`, consume `rx_ring`.
    pub(super) fn ring_of(&self, half: Half) -> &BipBuf<'static> {
        match half {
            Half::Tx => &self.tx_ring,
            Half::Rx => &self.rx_ring,
        }
    }

    /// The C1 flag a half announces in: a sender waits for space in its
    /// sending ring, a receiver for data in its receiving ring.
    pub(super) fn waiting_flag(&self, half: Half) -> &AtomicU32 {
        let h = self.ring_of(half).header();
        match half {
            Half::Tx => h.producer_waiting(),
            Half::Rx => h.consumer_waiting(),
        }
    }

    /// After publishing in our sending ring (a commit or a wrap).
    pub(super) fn wake_peer_consumer(&self) {
        if self.negotiated(Features::WAKE_ON_DEMAND) && !should_wake(self.tx_ring.header().consumer_waiting()) {
            return;
        }
        self.ring();
    }

    /// After freeing space in our receiving ring.
    pub(super) fn wake_peer_producer(&self) {
        if self.negotiated(Features::WAKE_ON_DEMAND) && !should_wake(self.rx_ring.header().producer_waiting()) {
            return;
        }
        self.ring();
    }

    pub(super) fn peer_closed(&self) -> bool {
        self.entry().tx_closed(self.side.other())
    }

    pub(super) fn publish_close(&self) {
        if self.ours.contains(Features::INBAND_CLOSE) {
            // Release (inside `set_tx_closed`): after our last commit.
            self.entry().set_tx_closed(self.side);
        }
        self.ring();
    }
}

/// What both halves (and every outstanding permit) hold. When the last of them
/// is gone the link is over: the background tasks stop, and the end-of-link
/// actions run right away, not whenever the runtime gets to the aborted tasks.
pub(super) struct Core {
    pub(super) shared: Arc<Shared>,
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where the link was built: its doorbell is registered with this
    /// runtime's reactor, so a task that waits on it after the link is gone
    /// runs here.
    pub(super) runtime: tokio::runtime::Handle,
}

impl std::ops::Deref for Core {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let s = &self.shared;
        match s.side {
            // The guest is done with its slot.
            Side::Guest => s.entry().set_goodbye(),
            // The guest's end is closed (it died, or dropped its link and said
            // goodbye): free what it left behind. Our ring claims were released
            // before this runs (they are dropped before the `Arc<Core>` in each
            // half), so recovery is allowed.
            Side::Host => {
                // A drain, not a peek: signals still queued in front of the
                // hang-up would hide it (the link is over, so they are spent).
                if s.gone() || s.doorbell.drain().peer_gone || s.entry().state() == PeerState::Goodbye {
                    let _ = s.segment.recover_crashed_peer(s.peer);
                } else {
                    // Dropped while the guest lives (a failed link, say): tell
                    // it we are gone, and recover its slot once it has gone too,
                    // whichever order the two happen in. A 0.3.1 guest reads a
                    // hang-up as an error even with messages still in its ring,
                    // so it is not told; it hangs up itself when it is done.
                    if s.negotiated(Features::INBAND_CLOSE) {
                        s.doorbell.shutdown_write();
                    }
                    let shared = self.shared.clone();
                    self.runtime.spawn(async move {
                        shared.doorbell.wait_for_hang_up().await;
                        let _ = shared.segment.recover_crashed_peer(shared.peer);
                    });
                }
            }
        }
    }
}
