//! [`ShmLink`]: one host↔guest link over the guest's ring pair.
//!
//! ## Sending
//! [`ShmLinkTx::reserve`] takes the link's single producer position (an async
//! mutex) and waits until a worst-case entry for this segment fits the ring;
//! [`ShmTxPermit::alloc`] then places the payload at its final address — in
//! the ring for inline payloads, in a pool slot, or in a mapping region — and
//! [`ShmWriteSlot::commit`] publishes the entry. Nothing is copied on send and
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

use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::async_lock::{AsyncLock, AsyncLockGuard};
use shm_primitives::bipbuf::{BipBuf, BipBufConsumer, BipBufProducer, RingError};
use shm_primitives::peer::{PeerEntry, PeerState, Side};
use shm_primitives::varslot::{AllocError, CheckedSlot, SlotError, SlotRef};
use shm_primitives::wake::{announce_waiting, should_wake, stop_waiting};
use shm_primitives::{Features, PeerId};
use shm_primitives_async::control::{MmapControlReceiver, MmapControlSender};
use shm_primitives_async::doorbell::{Doorbell, DoorbellHandle, Rings, SignalResult};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::framing::{self, Frame, FrameError, MmapRef, MMAP_REF_ENTRY_SIZE, SLOT_LEN_PREFIX, SLOT_REF_ENTRY_SIZE};
use crate::link::{Backing, Link, LinkRx, LinkTx, LinkTxPermit, SharedBacking, TransportMode, WriteSlot};
use crate::mmap_registry::{
    MmapAllocation, MmapAttachments, MmapRegistry, MmapResolveError, DEFAULT_LEGACY_MAPPING_BUDGET,
    DEFAULT_MAPPING_BUDGET, DEFAULT_REGION_SIZE,
};
use crate::segment::{sender_owner, RingClaim, RingEnd, Segment, OWNER_HOST};

/// How a waiting half spends its time before sleeping on the doorbell.
///
/// Every polling strategy is polite: after each look that finds nothing it
/// yields to the scheduler, so any other task that is ready on the same
/// runtime thread runs before the next look (an RPC framework's reader,
/// writer and dispatcher, other links, your own tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Sleep on the doorbell at once. Lowest CPU use; every wake-up is a
    /// system call on both sides.
    Park,
    /// Poll the ring for up to `budget`, then park; replies that arrive within
    /// the budget cost no system call at all. The default, and the right
    /// choice when you do not tune anything: it adapts. A half whose recent
    /// waits polled the whole budget and then waited over four budgets more
    /// (the peer was away) parks at once, probing again every 16 waits, and a
    /// process that may run on one CPU only (`taskset -c 0`, a one-CPU
    /// container) never polls, since its peer needs that CPU.
    Spin {
        /// How long to poll before parking.
        budget: Duration,
    },
    /// Never park: poll (yielding after every look). Lowest latency when host
    /// and guest have cores of their own (pinned); one busy core per waiting
    /// half, and very slow when both processes share one CPU.
    BusyPoll,
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::Spin { budget: Duration::from_micros(50) }
    }
}

/// Per-link settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkOptions {
    /// How waiting halves wait.
    pub wait: WaitStrategy,
    /// Extensions this end offers (intersected with the peer's).
    pub features: Features,
    /// Size of a new mapping region (at least one payload's worth).
    pub mmap_region_size: usize,
    /// How long a receiver waits for a mapping region's late announcement.
    pub mmap_attach_timeout: Duration,
    /// Most bytes of mapping regions the sending side keeps alive, with a
    /// receiver that reports releases (ours).
    pub mmap_budget: u64,
    /// The same bound for a receiver that cannot report releases (vox-shm
    /// 0.3.1), whose regions are never reused.
    pub mmap_budget_legacy: u64,
    /// If set, a half that sleeps longer than this prints its internal state
    /// to stderr (then keeps waiting): a tool for diagnosing hangs. Default:
    /// the `VOX_SHM_STALL_REPORT_MS` environment variable, else off.
    pub stall_report: Option<Duration>,
}

fn stall_report_from_env() -> Option<Duration> {
    std::env::var("VOX_SHM_STALL_REPORT_MS").ok()?.parse().ok().map(Duration::from_millis)
}

/// Awaits the doorbell or a wake-up from the other half (`None`); with a stall
/// report configured, prints `state()` each time the wait exceeds it.
async fn sleep_on<F, N>(
    mut bell: std::pin::Pin<&mut F>,
    mut notified: std::pin::Pin<&mut N>,
    sh: &Shared,
    state: impl Fn() -> String,
) -> Option<F::Output>
where
    F: std::future::Future,
    N: std::future::Future<Output = ()>,
{
    let Some(every) = sh.options.stall_report else { return bell_or_notify(bell, notified).await };
    loop {
        match tokio::time::timeout(every, bell_or_notify(bell.as_mut(), notified.as_mut())).await {
            Ok(v) => return v,
            Err(_) => eprintln!(
                "vox-shm: pid {} peer {} {:?} waiting for {every:?}+: {}; doorbell: {} signals sent, {} wake-ups, {:?} bytes pending; negotiated {:?}",
                std::process::id(),
                sh.peer,
                sh.side,
                state(),
                sh.counters.doorbell_signals.load(Ordering::Relaxed),
                sh.counters.doorbell_wakeups.load(Ordering::Relaxed),
                sh.doorbell.pending_bytes().ok(),
                negotiated_of_shared(sh),
            ),
        }
    }
}

fn negotiated_of_shared(sh: &Shared) -> Option<Features> {
    sh.peer_features().map(|p| p.intersect(sh.ours))
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            wait: WaitStrategy::default(),
            features: Features::ALL,
            mmap_region_size: DEFAULT_REGION_SIZE,
            mmap_attach_timeout: Duration::from_secs(2),
            mmap_budget: DEFAULT_MAPPING_BUDGET,
            mmap_budget_legacy: DEFAULT_LEGACY_MAPPING_BUDGET,
            stall_report: stall_report_from_env(),
        }
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        struct Counters { $($name: AtomicU64,)* }

        /// Counters of one link (both halves), all since it was built.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct ShmTransportStatsSnapshot { $($(#[$doc])* pub $name: u64,)* }

        impl Counters {
            fn snapshot(&self) -> ShmTransportStatsSnapshot {
                ShmTransportStatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Inline entries committed.
    inline_sends,
    /// Slot-ref entries committed.
    slot_ref_sends,
    /// Mapping-ref entries committed.
    mmap_ref_sends,
    /// Inline entries received.
    inline_recvs,
    /// Slot-ref entries received.
    slot_ref_recvs,
    /// Mapping-ref entries received.
    mmap_ref_recvs,
    /// Allocations that found the slot pool exhausted.
    varslot_exhausted,
    /// Slot-sized payloads sent through the mapping tier instead.
    slot_fallbacks,
    /// Reserve attempts that found the ring full.
    ring_exhausted,
    /// Reserve attempts that found the ring free but the mapping budget
    /// spent: the receiver still holds that many bytes of large payloads.
    mmap_budget_exhausted,
    /// Times a sender slept on the doorbell waiting for space.
    reserve_waits,
    /// Times a receiver slept on the doorbell waiting for data.
    recv_waits,
    /// Times a waiter told the peer it was about to sleep (wake-on-demand).
    /// Each announcement lets the peer ring at most once, so the peer's
    /// `doorbell_signals` stay at most these plus one per close.
    wait_announcements,
    /// Doorbell signals written.
    doorbell_signals,
    /// Doorbell wake-ups read by the pump.
    doorbell_wakeups,
    /// Signals that found the peer dead.
    doorbell_peer_dead,
    /// Mapping regions created.
    mmap_regions_created,
    /// Mapping regions reused after their payloads were released.
    mmap_regions_reused,
}

/// Counts an event on a counter that only one half writes (each half owns its
/// own counters): a plain load and store, because a locked add is a full
/// memory barrier on x86 and this runs once per message.
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// Counts an event on a counter both halves (and backings) write.
fn bump_shared(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

const FEATURES_KNOWN: u32 = 1 << 31;

/// State shared by both halves, the pump task and (weakly) the backings.
struct Shared {
    segment: Arc<Segment>,
    peer: PeerId,
    side: Side,
    doorbell: Doorbell,
    /// Wakes the receiving half when the sending half drained the doorbell
    /// (and the other way round): a drained byte may have been meant for the
    /// other half, and waking it must not depend on how the reactor wakes
    /// several waiters of one descriptor (B6).
    rx_notify: Notify,
    tx_notify: Notify,
    peer_gone: AtomicBool,
    /// Set when the sending half is dropped while a permit is outstanding; the
    /// permit finishes the close.
    close_pending: AtomicBool,
    ours: Features,
    /// Peer's features with `FEATURES_KNOWN` once read.
    peer_features: AtomicU32,
    counters: Counters,
    options: LinkOptions,
    /// Views of the segment this struct's `segment` keeps mapped (hence
    /// `'static`; they never leave the link).
    tx_ring: BipBuf<'static>,
    rx_ring: BipBuf<'static>,
    /// This process may run on a single CPU only (see `wait_strategy`).
    one_cpu: bool,
}

impl Shared {
    fn entry(&self) -> &PeerEntry {
        self.segment.peer_entry(self.peer).expect("link peers exist in the segment")
    }

    /// The peer's features, once known. A guest learns the host's from the
    /// header; the host reads the guest's word lazily, because it builds its
    /// link before the guest has claimed its slot (spec C0).
    fn peer_features(&self) -> Option<Features> {
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
    fn peer_rings(&self) -> Rings {
        if self.negotiated(Features::WAKE_ON_DEMAND) {
            Rings::OnDemand
        } else {
            Rings::Always
        }
    }

    /// A feature is on when we offer it and the peer is known to offer it.
    fn negotiated(&self, f: Features) -> bool {
        self.ours.contains(f) && self.peer_features().is_some_and(|p| p.contains(f))
    }

    fn ring(&self) {
        bump_shared(&self.counters.doorbell_signals);
        if self.doorbell.signal() == SignalResult::PeerDead {
            bump_shared(&self.counters.doorbell_peer_dead);
            self.mark_gone();
        }
    }

    fn mark_gone(&self) {
        self.peer_gone.store(true, Ordering::Release);
        self.rx_notify.notify_waiters();
        self.tx_notify.notify_waiters();
    }

    /// Records what a drain of the doorbell by half `by` found. The signal may
    /// have been meant for the other half, so that one is woken (B6). The
    /// draining half is awake already; waking it too would make its task
    /// poll twice and its runtime take an extra trip through the reactor.
    fn note_drain(&self, d: io::Result<shm_primitives_async::doorbell::Drained>, by: Half) {
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

    fn gone(&self) -> bool {
        self.peer_gone.load(Ordering::Acquire)
    }

    /// The configured strategy, except that polling is pointless when this
    /// process may run on one CPU only (`taskset -c 0`, a one-CPU container):
    /// the peer needs that CPU to produce what we would poll for, so `Spin`
    /// parks at once there.
    fn wait_strategy(&self) -> WaitStrategy {
        match self.options.wait {
            WaitStrategy::Spin { .. } if self.one_cpu => WaitStrategy::Park,
            w => w,
        }
    }

    /// A half that polls instead of parking never reads the doorbell, so it
    /// would not see the peer hang up: drain it (non-blocking) once per
    /// polling slice. A peek is not enough: signals still queued in front of
    /// the end of stream hide it, and a busy-polling guest whose host was
    /// killed polled for ever. Whatever the drain finds wakes the other half,
    /// as every drain does (B6).
    fn check_hang_up(&self, by: Half) {
        if !self.gone() {
            self.note_drain(Ok(self.doorbell.drain()), by);
        }
    }

    /// The wake-up a half waits on besides the doorbell.
    fn notify(&self, half: Half) -> &Notify {
        match half {
            Half::Tx => &self.tx_notify,
            Half::Rx => &self.rx_notify,
        }
    }

    /// The ring a half works on: we produce into `tx_ring`, consume `rx_ring`.
    fn ring_of(&self, half: Half) -> &BipBuf<'static> {
        match half {
            Half::Tx => &self.tx_ring,
            Half::Rx => &self.rx_ring,
        }
    }

    /// The C1 flag a half announces in: a sender waits for space in its
    /// sending ring, a receiver for data in its receiving ring.
    fn waiting_flag(&self, half: Half) -> &AtomicU32 {
        let h = self.ring_of(half).header();
        match half {
            Half::Tx => h.producer_waiting(),
            Half::Rx => h.consumer_waiting(),
        }
    }

    /// After publishing in our sending ring (a commit or a wrap).
    fn wake_peer_consumer(&self) {
        if self.negotiated(Features::WAKE_ON_DEMAND) && !should_wake(self.tx_ring.header().consumer_waiting()) {
            return;
        }
        self.ring();
    }

    /// After freeing space in our receiving ring.
    fn wake_peer_producer(&self) {
        if self.negotiated(Features::WAKE_ON_DEMAND) && !should_wake(self.rx_ring.header().producer_waiting()) {
            return;
        }
        self.ring();
    }

    fn peer_closed(&self) -> bool {
        self.entry().tx_closed(self.side.other())
    }

    fn publish_close(&self) {
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
struct Core {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where the link was built: its doorbell is registered with this
    /// runtime's reactor, so a task that waits on it after the link is gone
    /// runs here.
    runtime: tokio::runtime::Handle,
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

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is valid for writing a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Guest: stamps `last_heartbeat` every interval (extension C3).
async fn heartbeat(shared: Weak<Shared>, interval: Duration) {
    loop {
        match shared.upgrade() {
            Some(s) => s.entry().update_heartbeat(monotonic_ns()),
            None => return,
        }
        tokio::time::sleep(interval).await;
    }
}

/// Host: declares the guest dead after two missed heartbeats (extension C3).
async fn heartbeat_watch(shared: Weak<Shared>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(s) = shared.upgrade() else { return };
        if s.gone() {
            return;
        }
        let interval_ns = interval.as_nanos().min(u128::from(u64::MAX)) as u64;
        if s.negotiated(Features::LIVENESS)
            && s.entry().last_heartbeat() != 0
            && s.entry().is_heartbeat_stale(monotonic_ns(), interval_ns)
        {
            s.mark_gone();
            // Wakes our own waiters (they read end-of-file) and tells the peer.
            s.doorbell.shutdown();
            return;
        }
    }
}

/// The doorbell drain, or a wake-up from the other half: whichever comes first.
async fn bell_or_notify<B, N>(mut bell: std::pin::Pin<&mut B>, mut notified: std::pin::Pin<&mut N>) -> Option<B::Output>
where
    B: std::future::Future,
    N: std::future::Future<Output = ()>,
{
    std::future::poll_fn(|cx| {
        if let Poll::Ready(d) = bell.as_mut().poll(cx) {
            return Poll::Ready(Some(d));
        }
        if notified.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Polls a future once with the current task's context (registering its waker)
/// and reports whether it completed.
async fn poll_once<F: std::future::Future + ?Sized>(mut f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
}

/// The two halves of a link, which share one doorbell.
#[derive(Debug, Clone, Copy)]
enum Half {
    Tx,
    Rx,
}

impl Half {
    fn other(self) -> Half {
        match self {
            Half::Tx => Half::Rx,
            Half::Rx => Half::Tx,
        }
    }
}

/// One half of a link on its way to sleep (B6, C1), the only place either
/// half parks. [`Park::begin`] registers for both wake-ups (the doorbell, and
/// the other half having drained it) and then announces; the caller re-checks
/// its condition and either [`sleep`](Park::sleep)s or drops the guard.
/// Dropping it withdraws the announcement.
struct Park<'a, 'p, B> {
    sh: &'a Shared,
    half: Half,
    bell: Pin<&'p mut B>,
    notified: Pin<&'p mut Notified<'a>>,
    announced: bool,
}

impl<'a, 'p, B> Park<'a, 'p, B>
where
    B: std::future::Future<Output = io::Result<shm_primitives_async::doorbell::Drained>>,
{
    /// `bell` is `sh.doorbell.readable(sh.peer_rings())` and `notified` is
    /// `sh.notify(half).notified()`, pinned by the caller. `None` if the
    /// doorbell had already rung: look again instead of sleeping.
    async fn begin(
        sh: &'a Shared,
        half: Half,
        mut bell: Pin<&'p mut B>,
        mut notified: Pin<&'p mut Notified<'a>>,
    ) -> Option<Park<'a, 'p, B>> {
        notified.as_mut().enable();
        if let Poll::Ready(d) = poll_once(bell.as_mut()).await {
            sh.note_drain(d, half);
            return None;
        }
        let announced = sh.ours.contains(Features::WAKE_ON_DEMAND);
        if announced {
            bump_shared(&sh.counters.wait_announcements);
            sh.doorbell.note_announced();
            announce_waiting(sh.waiting_flag(half));
        }
        Some(Park { sh, half, bell, notified, announced })
    }

    /// Sleeps until the doorbell rings or the other half wakes us. `local`
    /// describes what we wait for in stall reports; the ring's shared
    /// positions and wait flags are added here.
    async fn sleep(mut self, local: impl Fn() -> String) {
        let (sh, half) = (self.sh, self.half);
        let ring = sh.ring_of(half);
        let state = || {
            let (w, m, r) = ring.positions();
            let flag = |f: &AtomicU32| f.load(Ordering::Relaxed);
            format!(
                "{}, shared w {w} wm {m} r {r}, producer_waiting {}, consumer_waiting {}",
                local(),
                flag(ring.header().producer_waiting()),
                flag(ring.header().consumer_waiting())
            )
        };
        if let Some(d) = sleep_on(self.bell.as_mut(), self.notified.as_mut(), sh, state).await {
            sh.note_drain(d, half);
        }
    }
}

impl<B> Drop for Park<'_, '_, B> {
    fn drop(&mut self) {
        if self.announced {
            stop_waiting(self.sh.waiting_flag(self.half));
        }
    }
}

/// Polling phase of a wait: `true` while the strategy says keep polling.
///
/// Polite: after every look that found nothing it yields to the scheduler,
/// so every other task that is ready on this runtime thread (an RPC
/// framework's reader, writer and dispatcher, another guest's link) runs
/// before the next look. Holding the thread between looks made each hand-off
/// between such tasks wait for a whole polling slice: under an RPC framework
/// the link was slower than a Unix socket. Once per [`POLL_SLICE`] it also
/// asks for a hang-up check (a polling half never reads the doorbell).
struct Poller {
    strategy: WaitStrategy,
    started: Option<Instant>,
    /// When the whole wait began (carried over from an earlier poller of the
    /// same wait).
    began: Option<Instant>,
    checked: Option<Instant>,
    /// It polled at least once (so the wait's outcome says whether that paid).
    polled: bool,
    /// Set when a slice ended; read by `took_a_slice`.
    sliced: bool,
}

/// How often a polling half checks for a hang-up.
const POLL_SLICE: Duration = Duration::from_micros(20);

impl Poller {
    fn new(strategy: WaitStrategy) -> Self {
        Poller { strategy, started: None, began: None, checked: None, polled: false, sliced: false }
    }

    /// A poller for the same wait after a park: a fresh budget, the history kept.
    fn again(&self, strategy: WaitStrategy) -> Self {
        Poller { began: self.began, polled: self.polled, ..Poller::new(strategy) }
    }

    /// The budget, if this wait polled.
    fn polled_with(&self) -> Option<Duration> {
        match (self.polled, self.strategy) {
            (true, WaitStrategy::Spin { budget }) => Some(budget),
            _ => None,
        }
    }

    /// How long the wait has lasted.
    fn waited(&self) -> Duration {
        self.began.map_or(Duration::ZERO, |b| b.elapsed())
    }

    async fn keep_polling(&mut self) -> bool {
        let budget = match self.strategy {
            WaitStrategy::Park => return false,
            WaitStrategy::Spin { budget } => Some(budget),
            WaitStrategy::BusyPoll => None,
        };
        let now = Instant::now();
        self.began.get_or_insert(now);
        let started = *self.started.get_or_insert(now);
        if budget.is_some_and(|b| now.duration_since(started) >= b) {
            return false;
        }
        self.polled = true;
        let checked = *self.checked.get_or_insert(now);
        if now.duration_since(checked) >= POLL_SLICE {
            self.checked = Some(now);
            self.sliced = true;
        }
        tokio::task::yield_now().await;
        true
    }

    /// True once after each slice of polling.
    fn took_a_slice(&mut self) -> bool {
        std::mem::take(&mut self.sliced)
    }
}

/// Whether polling before parking has been paying off for one half: a wait
/// that polled and then found its data scores; one that polled the whole
/// budget, parked, and then waited far longer still (over
/// [`SPIN_LOSS_FACTOR`] budgets: the peer was descheduled or idle, so the
/// polling only burnt a core) loses. A wait that ended soon after the budget
/// counts for neither: parking at once would have added a wake-up to it.
/// With no credit left the half parks at once, and probes by polling again
/// every [`SPIN_PROBE_EVERY`] waits, so it notices when spinning pays again.
#[derive(Debug, Clone, Copy)]
struct SpinHistory {
    credit: u8,
    skipped: u8,
}

const SPIN_CREDIT_MAX: u8 = 8;
const SPIN_PROBE_EVERY: u8 = 16;
const SPIN_LOSS_FACTOR: u32 = 4;

impl Default for SpinHistory {
    fn default() -> Self {
        SpinHistory { credit: SPIN_CREDIT_MAX / 2, skipped: 0 }
    }
}

impl SpinHistory {
    /// The strategy for the next wait.
    fn strategy(&mut self, configured: WaitStrategy) -> WaitStrategy {
        if !matches!(configured, WaitStrategy::Spin { .. }) || self.credit > 0 {
            return configured;
        }
        self.skipped += 1;
        if self.skipped >= SPIN_PROBE_EVERY {
            self.skipped = 0;
            return configured;
        }
        WaitStrategy::Park
    }

    /// A wait ended after `waited`: it polled (with `budget`, if it did), and
    /// found its work without (`parked == false`) or only after parking.
    fn record(&mut self, polled: Option<Duration>, parked: bool, waited: Duration) {
        match (polled, parked) {
            (Some(_), false) => self.credit = (self.credit + 1).min(SPIN_CREDIT_MAX),
            (Some(budget), true) if waited > budget * SPIN_LOSS_FACTOR => self.credit = self.credit.saturating_sub(2),
            _ => {}
        }
    }
}

/// How long a half-published wrap may last before the ring counts as corrupt
/// (an honest producer's two stores are nanoseconds apart; this allows for it
/// being preempted between them on a loaded machine).
const WRAP_STALL_LIMIT: Duration = Duration::from_secs(1);

/// Messages per unit of tokio's cooperative budget.
const COOP_EVERY: u32 = 8;

/// A link half's share in tokio's cooperative scheduling.
///
/// A sender that never has to wait, or a receiver that always finds a
/// message, would otherwise never give its thread back, and every other task
/// on it (another guest's link, say) would stall behind one busy peer. Like
/// tokio's own sockets and channels, each half spends the task's budget, so it
/// yields once the budget is used up; it spends one unit per [`COOP_EVERY`]
/// messages, because a unit per message cost 7% of 64-byte streaming here, and
/// a task still yields about every thousand messages (roughly 100 µs).
#[derive(Debug, Default)]
struct Coop(AtomicU32);

impl Coop {
    async fn tick(&self) {
        // Only this half's callers count, and a lost count between two
        // concurrent `reserve` calls does not matter: a plain load and store.
        let n = self.0.load(Ordering::Relaxed).wrapping_add(1);
        self.0.store(n, Ordering::Relaxed);
        if n % COOP_EVERY == 0 {
            tokio::task::coop::consume_budget().await;
        }
    }
}

/// Geometry every send decision needs, fixed at construction.
#[derive(Debug, Clone, Copy)]
struct SendLimits {
    /// Largest inline payload (threshold, capped by what the ring can hold).
    inline_limit: u32,
    /// Largest slot-tier payload (largest slot minus the length prefix).
    max_var: u32,
    /// Largest payload at all.
    max_payload: u32,
    /// Ring bytes `reserve` waits for: the largest entry this link can write.
    worst_entry: u32,
    /// Owner value for slots we allocate.
    owner: u32,
}

struct TxState {
    /// Kept mapped by the claim beside it (which holds the segment).
    producer: BipBufProducer<'static>,
    spin: SpinHistory,
    registry: MmapRegistry,
    closed: bool,
    _claim: RingClaim,
    /// Reached through the lock guard, so permits and slots need no reference
    /// count of their own (each count update is a locked instruction).
    core: Arc<Core>,
}

/// A host↔guest link; split it into [`ShmLinkTx`] and [`ShmLinkRx`].
pub struct ShmLink {
    tx: ShmLinkTx,
    rx: ShmLinkRx,
}

// Field order matters below: the ring claims (inside `state`, `_claim`,
// `guard`) are dropped before the `Arc<Core>` whose drop may recover the peer.

/// The sending half.
pub struct ShmLinkTx {
    state: Arc<AsyncLock<TxState>>,
    limits: SendLimits,
    core: Arc<Core>,
    coop: Coop,
}

/// The receiving half.
pub struct ShmLinkRx {
    /// Kept mapped by the claim beside it (which holds the segment).
    consumer: BipBufConsumer<'static>,
    spin: SpinHistory,
    attachments: MmapAttachments,
    failed: Option<String>,
    _claim: RingClaim,
    core: Arc<Core>,
    coop: Coop,
}

impl std::fmt::Debug for ShmLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmLink").field("peer", &self.tx.core.peer).field("side", &self.tx.core.side).finish()
    }
}

fn ring_err(e: RingError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("ring corrupt: {e}"))
}

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
    ) -> io::Result<ShmLink> {
        Self::new(Side::Host, segment, peer, doorbell, mmap_tx, mmap_rx, LinkOptions::default())
    }

    /// The guest's end of its link to the host (default options).
    pub fn for_guest(
        segment: Arc<Segment>,
        peer: PeerId,
        doorbell: DoorbellHandle,
        mmap_tx: std::os::fd::OwnedFd,
        mmap_rx: std::os::fd::OwnedFd,
    ) -> io::Result<ShmLink> {
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
    ) -> io::Result<ShmLink> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("an ShmLink must be built inside a tokio runtime"))?;
        let entry = segment
            .peer_entry(peer)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("peer {peer} does not exist")))?;
        let cap = segment.bipbuf_capacity();
        if cap < MMAP_REF_ENTRY_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("ring capacity {cap} cannot hold a 32-byte reference entry"),
            ));
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
                entry.set_guest_features(ours);
                if ours.contains(Features::LIVENESS) {
                    entry.set_guest_pid(std::process::id());
                }
                segment.track_pool_ops_as(peer);
                segment.host_features().bits() & !FEATURES_KNOWN | FEATURES_KNOWN
            }
            Side::Host => 0,
        };
        // Largest inline payload whose entry fits the ring (B1).
        let inline_limit =
            segment.inline_threshold().min((cap & !3) - framing::FRAME_HEADER_SIZE).min(segment.max_payload_size());
        let max_var = segment.var_pool().max_slot_size().saturating_sub(SLOT_LEN_PREFIX);
        let limits = SendLimits {
            inline_limit,
            max_var,
            max_payload: segment.max_payload_size(),
            worst_entry: framing::inline_entry_len(inline_limit).max(MMAP_REF_ENTRY_SIZE).min(cap),
            owner: sender_owner(side, peer),
        };
        let doorbell = Doorbell::new(doorbell)?;
        let control_tx = MmapControlSender::new(mmap_tx)?;
        let control_rx = MmapControlReceiver::new(mmap_rx)?;
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

fn snapshot(shared: &Shared, registry: Option<&MmapRegistry>) -> ShmTransportStatsSnapshot {
    let mut s = shared.counters.snapshot();
    if let Some(r) = registry {
        s.mmap_regions_created = r.stats().regions_created;
        s.mmap_regions_reused = r.stats().regions_reused;
    }
    s
}

fn negotiated_of(core: &Core) -> Option<Features> {
    core.peer_features().map(|p| p.intersect(core.ours))
}

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
        negotiated_of(&self.core)
    }

    /// Counters of the link.
    pub fn stats(&self) -> ShmTransportStatsSnapshot {
        let reg = self.state.try_lock();
        snapshot(&self.core, reg.as_ref().map(|g| &g.registry))
    }

    /// Waits until a worst-case entry fits the ring (see the module docs).
    async fn wait_for_space(&self, st: &mut TxState) -> io::Result<()> {
        let need = self.limits.worst_entry;
        let sh = &self.core;
        let mut poller = Poller::new(st.spin.strategy(sh.wait_strategy()));
        let mut parked = false;
        // One attempt; a wrap it performs is a publication the consumer must
        // see even if the grant after it fails.
        let max_payload = self.limits.max_payload;
        // `None` when there is room, else the counter of what was full.
        let attempt = |st: &mut TxState| -> io::Result<Option<&AtomicU64>> {
            let wraps = st.producer.wraps();
            let granted = st.producer.try_grant(need).map_err(ring_err)?.is_some();
            if st.producer.wraps() != wraps {
                sh.wake_peer_consumer();
            }
            if granted {
                // Only the position matters: `alloc` grants the real size.
                st.producer.cancel();
            }
            // With releases reported (C4), the mapping tier is backpressure too:
            // wait until the largest payload could be placed within the budget.
            let mapping_ok = !sh.negotiated(Features::MAPPING_RELEASE) || {
                st.registry.enable_reuse();
                st.registry.can_alloc(max_payload)
            };
            Ok(match (granted, mapping_ok) {
                (true, true) => None,
                (false, _) => Some(&sh.counters.ring_exhausted),
                (true, false) => Some(&sh.counters.mmap_budget_exhausted),
            })
        };
        loop {
            if sh.gone() {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "peer is gone"));
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
            let Some(park) = Park::begin(sh, Half::Tx, bell, notified).await else {
                continue; // already rung: look again
            };
            let done = sh.gone() || attempt(st)?.is_none();
            if !done {
                bump(&sh.counters.reserve_waits);
                park.sleep(|| format!("reserve of {need} B: local {:?}", st.producer.debug_state())).await;
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
        async move {
            self.coop.tick().await;
            let mut guard = self.state.clone().lock_owned().await;
            if guard.closed {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "link's sending half is closed"));
            }
            self.wait_for_space(&mut guard).await?;
            Ok(ShmTxPermit { guard: Some(guard), limits: self.limits })
        }
    }

    #[allow(clippy::manual_async_fn)] // the trait promises a `Send` future
    fn close(self) -> impl std::future::Future<Output = io::Result<()>> + Send {
        async move {
            let mut st = self.state.clone().lock_owned().await;
            if !st.closed {
                st.closed = true;
                self.core.publish_close();
            }
            Ok(())
        }
    }
}

impl Drop for ShmLinkTx {
    fn drop(&mut self) {
        // A dropped sender closes like `close()`, so the peer's receiver sees
        // end-of-stream instead of waiting for our process to exit.
        match self.state.try_lock() {
            Some(mut st) => {
                if !st.closed {
                    st.closed = true;
                    self.core.publish_close();
                }
            }
            None => self.core.close_pending.store(true, Ordering::Release),
        }
    }
}

fn finish_pending_close(st: &mut TxState) {
    let pending = &st.core.close_pending;
    // A plain load first: the swap is a full barrier, too dear per message.
    if pending.load(Ordering::Relaxed) && pending.swap(false, Ordering::AcqRel) && !st.closed {
        st.closed = true;
        st.core.publish_close();
    }
}

/// Room for one message; see [`LinkTxPermit`].
pub struct ShmTxPermit {
    guard: Option<AsyncLockGuard<TxState>>,
    limits: SendLimits,
}

enum Payload {
    Inline { len: u32 },
    Slot { slot: CheckedSlot, len: u32 },
    Mmap(MmapAllocation),
    Done,
}

/// A message being written; see [`WriteSlot`].
pub struct ShmWriteSlot {
    guard: Option<AsyncLockGuard<TxState>>,
    payload: Payload,
}

impl ShmTxPermit {
    fn grant(producer: &mut BipBufProducer<'_>, n: u32) -> io::Result<()> {
        // `reserve` waited until a worst-case entry fits, and only the consumer
        // (who frees space) ran since, so this cannot fail.
        match producer.try_grant(n).map_err(ring_err)? {
            Some(_) => Ok(()),
            None => Err(io::Error::other("ring space reserved by the permit vanished")),
        }
    }
}

impl LinkTxPermit for ShmTxPermit {
    type Slot = ShmWriteSlot;

    fn alloc(mut self, len: usize) -> io::Result<ShmWriteSlot> {
        let mut guard = self.guard.take().expect("permit holds the producer");
        let lim = self.limits;
        let len = u32::try_from(len).ok().filter(|&l| l <= lim.max_payload).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("payload of {len} bytes exceeds the {} byte maximum", lim.max_payload),
            )
        })?;
        let TxState { producer, registry, core, .. } = &mut *guard;
        let payload = if len <= lim.inline_limit {
            Self::grant(producer, framing::inline_entry_len(len))?;
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
                    if let Err(e) = Self::grant(producer, SLOT_REF_ENTRY_SIZE) {
                        let _ = pool.free(s);
                        return Err(e);
                    }
                    Payload::Slot { slot, len }
                }
                None => {
                    if core.negotiated(Features::MAPPING_RELEASE) {
                        registry.enable_reuse();
                    }
                    let a = registry.alloc(len)?;
                    if let Err(e) = Self::grant(producer, MMAP_REF_ENTRY_SIZE) {
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
        reason: String,
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
    #[error("peer {peer} died")]
    PeerDead {
        /// The peer.
        peer: u8,
    },
    /// This half failed earlier.
    #[error("link failed earlier: {0}")]
    Failed(String),
}

enum Step {
    Message(Backing),
    NeedMapping(MmapRef),
    Empty,
}

/// A slot-tier payload: zero-copy; the slot is freed when this is dropped.
struct SlotBacking {
    segment: Arc<Segment>,
    slot: CheckedSlot,
    len: u32,
    /// To nudge a legacy peer after the free (0.3.1 does), without keeping the
    /// link (and its doorbell) alive.
    link: Weak<Shared>,
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
            negotiated_of(&self.core)
        )
    }

    /// Counters of the link.
    pub fn stats(&self) -> ShmTransportStatsSnapshot {
        snapshot(&self.core, None)
    }

    fn fail(&mut self, e: ShmLinkRxError) -> ShmLinkRxError {
        self.failed = Some(e.to_string());
        e
    }

    /// Expected owner values of a slot the peer sent us.
    fn peer_owner_ok(&self, owner: u32) -> bool {
        match self.core.side {
            Side::Host => owner == u32::from(self.core.peer.get()),
            Side::Guest => owner == OWNER_HOST || owner == crate::segment::owner_host_to(self.core.peer),
        }
    }

    /// Takes one entry off the ring, if there is one.
    fn step(&mut self) -> Result<Step, ShmLinkRxError> {
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
                // publish regardless (see `recv_inner`). A drained tail handed
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
    fn take_slot(&mut self, s: SlotRef) -> Result<Backing, ShmLinkRxError> {
        let peer = self.core.peer.get();
        let pool = self.core.segment.var_pool();
        let bad = |reason: String| ShmLinkRxError::BadSlotRef { peer, slot: s, reason };
        let slot = match pool.check(s) {
            Ok(c) => c,
            Err(e @ (SlotError::BadClass { .. } | SlotError::BadSlot { .. } | SlotError::BadExtent { .. })) => {
                return Err(self.fail(bad(e.to_string())))
            }
        };
        let (generation, state, owner) = pool.slot_meta(s.class_idx as usize, s.slot_idx).expect("checked");
        if generation != s.generation || state != 1 || !self.peer_owner_ok(owner) {
            return Err(self.fail(bad(format!(
                "slot is generation {generation}, state {state}, owner {owner}: not allocated by the peer"
            ))));
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

    async fn recv_inner(&mut self) -> Result<Option<Backing>, ShmLinkRxError> {
        if let Some(msg) = &self.failed {
            return Err(ShmLinkRxError::Failed(msg.clone()));
        }
        self.coop.tick().await;
        let mut poller = Poller::new(self.spin.strategy(self.core.wait_strategy()));
        let mut parked = false;
        let mut wrap_since = None;
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
                // The producer's `write = 0` is about to land: look again. An
                // honest producer makes its two stores back to back; a wrap
                // that stays half-done is a hostile ring, and a peer that hung
                // up meanwhile must still be noticed.
                let since = *wrap_since.get_or_insert_with(Instant::now);
                if since.elapsed() > WRAP_STALL_LIMIT {
                    let peer = self.core.peer.get();
                    let (_, watermark, _) = self.core.rx_ring.positions();
                    let error = RingError::WrapNeverCompleted { watermark };
                    return Err(self.fail(ShmLinkRxError::CorruptRing { peer, error }));
                }
                self.core.check_hang_up(Half::Rx);
                tokio::task::yield_now().await;
                continue;
            }
            wrap_since = None;
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
            let Some(park) = Park::begin(&sh, Half::Rx, bell, notified).await else {
                continue; // already rung: look again
            };
            let step = self.step();
            let idle =
                matches!(step, Ok(Step::Empty)) && !self.consumer.wrap_pending() && !sh.gone() && !sh.peer_closed();
            if idle {
                bump(&sh.counters.recv_waits);
                let consumer = &self.consumer;
                park.sleep(|| {
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
    fn end_of_stream(&mut self) -> Result<Option<Result<Option<Backing>, ShmLinkRxError>>, ShmLinkRxError> {
        let sh = self.core.shared.clone();
        let closed = sh.peer_closed();
        let gone = sh.gone();
        if !closed && !gone {
            return Ok(None);
        }
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
        let peer = sh.peer.get();
        Ok(Some(Err(self.fail(ShmLinkRxError::PeerDead { peer }))))
    }
}

impl LinkRx for ShmLinkRx {
    type Error = ShmLinkRxError;

    fn recv(&mut self) -> impl std::future::Future<Output = Result<Option<Backing>, ShmLinkRxError>> + Send + '_ {
        self.recv_inner()
    }
}

#[cfg(test)]
mod spin_history_tests {
    use super::*;

    const SPIN: WaitStrategy = WaitStrategy::Spin { budget: Duration::from_micros(50) };

    #[test]
    fn polling_that_never_pays_turns_into_parking_with_probes() {
        let budget = Duration::from_micros(50);
        let long = budget * (SPIN_LOSS_FACTOR + 1);
        let mut h = SpinHistory::default();
        assert_eq!(h.strategy(SPIN), SPIN, "starts by polling");
        // Parked, but the data came soon after the budget: no verdict.
        for _ in 0..10 {
            h.record(Some(budget), true, budget * 2);
        }
        assert_eq!(h.strategy(SPIN), SPIN);
        for _ in 0..4 {
            h.record(Some(budget), true, long); // polled in vain, the peer was away
        }
        let choices: Vec<_> = (0..32).map(|_| h.strategy(SPIN)).collect();
        assert_eq!(choices.iter().filter(|&&s| s == SPIN).count(), 2, "probes every 16 waits: {choices:?}");
        assert!(choices[..15].iter().all(|&s| s == WaitStrategy::Park));
        // A probe that pays brings polling back.
        h.record(Some(budget), false, budget / 2);
        assert_eq!(h.strategy(SPIN), SPIN);
        // Waits that did not poll change nothing; other strategies are left alone.
        h.record(None, true, long);
        assert_eq!(h.strategy(WaitStrategy::BusyPoll), WaitStrategy::BusyPoll);
        assert_eq!(h.strategy(WaitStrategy::Park), WaitStrategy::Park);
    }
}
