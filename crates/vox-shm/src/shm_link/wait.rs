//! Waiting: polling politely ([`Poller`]), learning whether polling pays
//! ([`SpinHistory`]), parking on the doorbell ([`Park`]) and sharing tokio's
//! cooperative budget ([`Coop`]). It sees only a doorbell, a notification and
//! a flag, never the link's shared state.

use super::options::WaitStrategy;
use shm_primitives::wake::{announce_waiting, stop_waiting};
use shm_primitives_async::doorbell::Doorbell;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::futures::Notified;

/// Awaits the doorbell or a wake-up from the other half (`None`); with a stall
/// report configured, prints `state()` each time the wait exceeds it.
async fn sleep_on<F, N>(
    mut bell: Pin<&mut F>,
    mut notified: Pin<&mut N>,
    stall_report: Option<Duration>,
    state: impl Fn() -> String,
) -> Option<F::Output>
where
    F: std::future::Future,
    N: std::future::Future<Output = ()>,
{
    let Some(every) = stall_report else { return bell_or_notify(bell, notified).await };
    loop {
        match tokio::time::timeout(every, bell_or_notify(bell.as_mut(), notified.as_mut())).await {
            Ok(v) => return v,
            Err(_) => eprintln!("vox-shm: pid {} waiting for {every:?}+: {}", std::process::id(), state()),
        }
    }
}

/// The doorbell drain, or a wake-up from the other half: whichever comes first.
pub(super) async fn bell_or_notify<B, N>(
    mut bell: std::pin::Pin<&mut B>,
    mut notified: std::pin::Pin<&mut N>,
) -> Option<B::Output>
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
pub(super) async fn poll_once<F: std::future::Future + ?Sized>(mut f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
}

/// The two halves of a link, which share one doorbell.
#[derive(Debug, Clone, Copy)]
pub(super) enum Half {
    Tx,
    Rx,
}

impl Half {
    pub(super) fn other(self) -> Half {
        match self {
            Half::Tx => Half::Rx,
            Half::Rx => Half::Tx,
        }
    }
}

/// Where a half announces that it is about to sleep (C1): the flag the peer
/// checks after publishing, the doorbell (which counts announcements, see
/// `Doorbell::note_announced`) and the statistics counter.
pub(super) struct Announce<'a> {
    pub(super) flag: &'a AtomicU32,
    pub(super) doorbell: &'a Doorbell,
    pub(super) count: &'a AtomicU64,
}

/// One half of a link on its way to sleep (B6, C1), the only place either
/// half parks. [`Park::begin`] registers for both wake-ups (the doorbell, and
/// the other half having drained it) and then announces; the caller re-checks
/// its condition and either [`sleep`](Park::sleep)s or drops the guard.
/// Dropping it withdraws the announcement.
pub(super) struct Park<'a, 'p, B> {
    bell: Pin<&'p mut B>,
    notified: Pin<&'p mut Notified<'a>>,
    announced: Option<&'a AtomicU32>,
}

impl<'a, 'p, B: std::future::Future> Park<'a, 'p, B> {
    /// `bell` is the doorbell's readiness and `notified` the other half's
    /// wake-up, pinned by the caller; `announce` is where to announce, if the
    /// link announces at all. `Err` with the doorbell's output if it had
    /// already rung: look again instead of sleeping.
    pub(super) async fn begin(
        mut bell: Pin<&'p mut B>,
        mut notified: Pin<&'p mut Notified<'a>>,
        announce: Option<Announce<'a>>,
    ) -> Result<Park<'a, 'p, B>, B::Output> {
        notified.as_mut().enable();
        if let Poll::Ready(d) = poll_once(bell.as_mut()).await {
            return Err(d);
        }
        let announced = announce.map(|a| {
            a.count.fetch_add(1, Ordering::Relaxed);
            a.doorbell.note_announced();
            announce_waiting(a.flag);
            a.flag
        });
        Ok(Park { bell, notified, announced })
    }

    /// Sleeps until the doorbell rings (its output) or the other half wakes
    /// us (`None`). With `stall_report` set, prints `state()` whenever the
    /// sleep lasts longer.
    pub(super) async fn sleep(
        mut self,
        stall_report: Option<Duration>,
        state: impl Fn() -> String,
    ) -> Option<B::Output> {
        sleep_on(self.bell.as_mut(), self.notified.as_mut(), stall_report, state).await
    }
}

impl<B> Drop for Park<'_, '_, B> {
    fn drop(&mut self) {
        if let Some(flag) = self.announced {
            stop_waiting(flag);
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
pub(super) struct Poller {
    pub(super) strategy: WaitStrategy,
    pub(super) started: Option<Instant>,
    /// When the whole wait began (carried over from an earlier poller of the
    /// same wait).
    pub(super) began: Option<Instant>,
    pub(super) checked: Option<Instant>,
    /// It polled at least once (so the wait's outcome says whether that paid).
    pub(super) polled: bool,
    /// Set when a slice ended; read by `took_a_slice`.
    pub(super) sliced: bool,
    /// Looks so far (the clock is read every [`LOOKS_PER_CLOCK`]).
    pub(super) looks: u32,
}

/// Returns `Pending` once, having woken its own task: the task goes to the
/// back of the run queue, so every other ready task runs before the next
/// look, and the scheduler polls its I/O and timer driver at its usual
/// interval (tokio: every 61 tasks, or when nothing else is ready).
///
/// Not `tokio::task::yield_now`: that defers the wake-up until the driver has
/// been polled, which made every look of a spawned waiter an `epoll_wait`
/// system call plus tokio's timer and child-process bookkeeping (about 15% of
/// the profile of the `rpc` bench). Against it, old and new binaries back to
/// back (`vox-shm bench --runs 3` each, a 2-core Xeon VM) gave 312.6 k ->
/// 411.4 k calls/s with 1 caller and 1.27 M -> 1.68 M with 64; 8 callers
/// moved within the noise (1.10 M -> 1.01 M).
pub(super) async fn yield_to_ready_tasks() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// How often a polling half checks for a hang-up.
pub(super) const POLL_SLICE: Duration = Duration::from_micros(20);

/// Looks per reading of the clock while polling. Reading it at every look was
/// about a sixth of a look's cost: with one other task on the thread, a
/// waiter's look plus that task's turn took 175-187 ns, and 149-160 ns with
/// this (a KVM guest, three paired runs). The budget and the slice run over
/// by at most seven looks: about a microsecond of the waiter's own work, plus
/// the turns the other ready tasks take in between (which polling never
/// delays, as it yields at every look).
pub(super) const LOOKS_PER_CLOCK: u32 = 8;

impl Poller {
    pub(super) fn new(strategy: WaitStrategy) -> Self {
        Poller { strategy, started: None, began: None, checked: None, polled: false, sliced: false, looks: 0 }
    }

    /// A poller for the same wait after a park: a fresh budget, the history kept.
    pub(super) fn again(&self, strategy: WaitStrategy) -> Self {
        Poller { began: self.began, polled: self.polled, ..Poller::new(strategy) }
    }

    /// The budget, if this wait polled.
    pub(super) fn polled_with(&self) -> Option<Duration> {
        match (self.polled, self.strategy) {
            (true, WaitStrategy::Spin { budget }) => Some(budget),
            _ => None,
        }
    }

    /// How long the wait has lasted.
    pub(super) fn waited(&self) -> Duration {
        self.began.map_or(Duration::ZERO, |b| b.elapsed())
    }

    pub(super) async fn keep_polling(&mut self) -> bool {
        let budget = match self.strategy {
            WaitStrategy::Park => return false,
            WaitStrategy::Spin { budget } => Some(budget),
            WaitStrategy::BusyPoll => None,
        };
        let look = self.looks;
        self.looks = look.wrapping_add(1);
        if look % LOOKS_PER_CLOCK == 0 {
            let now = Instant::now();
            self.began.get_or_insert(now);
            let started = *self.started.get_or_insert(now);
            if budget.is_some_and(|b| now.duration_since(started) >= b) {
                return false;
            }
            let checked = *self.checked.get_or_insert(now);
            if now.duration_since(checked) >= POLL_SLICE {
                self.checked = Some(now);
                self.sliced = true;
            }
        }
        self.polled = true;
        yield_to_ready_tasks().await;
        true
    }

    /// True once after each slice of polling.
    pub(super) fn took_a_slice(&mut self) -> bool {
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
///
/// The budget also grows to catch near misses: a wait that polled its whole
/// budget, parked, and then found its data within [`SPIN_BUDGET_MAX`] sets
/// the next budget a quarter beyond that wait; a wait the budget would not
/// have caught anyway (a loss, as above) returns it to the configured one.
///
/// A wait that began after this link rang the peer (the doorbell's signal
/// count moved since the last wait) is not held against polling: the peer
/// was asleep, so the wait includes its wake-up, which can cost a VM a
/// hundred microseconds or more. Such a wait polls even with no credit left
/// and a loss costs it no credit. Without this, two halves that both ended
/// up parking stayed there: each hop waited for the other's wake-up, every
/// probe lost, and a vox 64 KiB echo ran at the speed of `Park` (2.6 k
/// against 13 k calls/s) in one run out of three. What the exception costs
/// at most is one budget of polling (up to [`SPIN_BUDGET_MAX`] once learned)
/// per signal sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct SpinHistory {
    pub(super) credit: u8,
    pub(super) skipped: u8,
    /// The learned budget (zero: the configured one).
    pub(super) budget: Duration,
    /// The link's doorbell signal count when the current wait began.
    pub(super) signals: u64,
    /// The current wait began after a signal to the peer.
    pub(super) woke_peer: bool,
}

/// The most a learned budget grows to.
pub(super) const SPIN_BUDGET_MAX: Duration = Duration::from_micros(250);

pub(super) const SPIN_CREDIT_MAX: u8 = 8;
pub(super) const SPIN_PROBE_EVERY: u8 = 16;
pub(super) const SPIN_LOSS_FACTOR: u32 = 4;

impl Default for SpinHistory {
    fn default() -> Self {
        SpinHistory { credit: SPIN_CREDIT_MAX / 2, skipped: 0, budget: Duration::ZERO, signals: 0, woke_peer: false }
    }
}

impl SpinHistory {
    /// The strategy for the next wait; `signals` is the link's doorbell
    /// signal count now.
    pub(super) fn strategy(&mut self, configured: WaitStrategy, signals: u64) -> WaitStrategy {
        self.woke_peer = std::mem::replace(&mut self.signals, signals) != signals;
        let WaitStrategy::Spin { budget } = configured else { return configured };
        if self.credit == 0 && !self.woke_peer {
            self.skipped += 1;
            if self.skipped < SPIN_PROBE_EVERY {
                return WaitStrategy::Park;
            }
            self.skipped = 0;
        }
        WaitStrategy::Spin { budget: budget.max(self.budget) }
    }

    /// A wait ended after `waited`: it polled (with `budget`, if it did), and
    /// found its work without (`parked == false`) or only after parking.
    pub(super) fn record(&mut self, polled: Option<Duration>, parked: bool, waited: Duration) {
        match (polled, parked) {
            (Some(_), false) => self.credit = (self.credit + 1).min(SPIN_CREDIT_MAX),
            (Some(budget), true) if waited > budget * SPIN_LOSS_FACTOR => {
                if !self.woke_peer {
                    self.credit = self.credit.saturating_sub(2);
                }
                self.budget = Duration::ZERO;
            }
            (Some(_), true) if waited <= SPIN_BUDGET_MAX => self.budget = (waited + waited / 4).min(SPIN_BUDGET_MAX),
            _ => {}
        }
    }
}

/// Messages per unit of tokio's cooperative budget.
pub(super) const COOP_EVERY: u32 = 8;

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
pub(super) struct Coop(AtomicU32);

impl Coop {
    pub(super) async fn tick(&self) {
        // Only this half's callers count, and a lost count between two
        // concurrent `reserve` calls does not matter: a plain load and store.
        let n = self.0.load(Ordering::Relaxed).wrapping_add(1);
        self.0.store(n, Ordering::Relaxed);
        if n % COOP_EVERY == 0 {
            tokio::task::coop::consume_budget().await;
        }
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
        assert_eq!(h.strategy(SPIN, 0), SPIN, "starts by polling");
        // Parked, but the data came soon after the budget: no verdict on
        // polling (the budget grows to catch such waits; see below).
        for _ in 0..10 {
            h.record(Some(budget), true, budget * 2);
        }
        assert!(matches!(h.strategy(SPIN, 0), WaitStrategy::Spin { .. }));
        for _ in 0..4 {
            h.record(Some(budget), true, long); // polled in vain, the peer was away
        }
        let choices: Vec<_> = (0..32).map(|_| h.strategy(SPIN, 0)).collect();
        assert_eq!(choices.iter().filter(|&&s| s == SPIN).count(), 2, "probes every 16 waits: {choices:?}");
        assert!(choices[..15].iter().all(|&s| s == WaitStrategy::Park));
        // A probe that pays brings polling back.
        h.record(Some(budget), false, budget / 2);
        assert_eq!(h.strategy(SPIN, 0), SPIN);
        // Waits that did not poll change nothing; other strategies are left alone.
        h.record(None, true, long);
        assert_eq!(h.strategy(WaitStrategy::BusyPoll, 0), WaitStrategy::BusyPoll);
        assert_eq!(h.strategy(WaitStrategy::Park, 0), WaitStrategy::Park);
    }

    #[test]
    fn the_budget_grows_to_catch_near_misses_and_resets_on_a_loss() {
        let us = Duration::from_micros;
        let mut h = SpinHistory::default();
        // Polled 50 µs, parked, data at 120 µs: the next budget catches it.
        h.record(Some(us(50)), true, us(120));
        assert_eq!(h.strategy(SPIN, 0), WaitStrategy::Spin { budget: us(150) });
        // Found while polling: the learned budget stays.
        h.record(Some(us(150)), false, us(100));
        assert_eq!(h.strategy(SPIN, 0), WaitStrategy::Spin { budget: us(150) });
        // A near miss beyond the cap grows it to the cap only.
        h.record(Some(us(150)), true, us(240));
        assert_eq!(h.strategy(SPIN, 0), WaitStrategy::Spin { budget: SPIN_BUDGET_MAX });
        // A wait no budget would have caught: back to the configured one.
        h.record(Some(SPIN_BUDGET_MAX), true, SPIN_BUDGET_MAX * (SPIN_LOSS_FACTOR + 1));
        assert_eq!(h.strategy(SPIN, 0), SPIN);
        // A configured budget above the cap is never cut.
        let big = WaitStrategy::Spin { budget: us(900) };
        h.record(Some(us(900)), true, us(200));
        assert_eq!(h.strategy(big, 0), big);
    }

    #[test]
    fn waits_that_follow_a_signal_to_the_peer_are_not_held_against_polling() {
        let budget = Duration::from_micros(50);
        let long = budget * (SPIN_LOSS_FACTOR + 1);
        let mut h = SpinHistory::default();
        // Losses while the peer was awake use the credit up: parking at once.
        for _ in 0..2 {
            assert_eq!(h.strategy(SPIN, 0), SPIN);
            h.record(Some(budget), true, long);
        }
        assert_eq!(h.strategy(SPIN, 0), WaitStrategy::Park);
        // We rang the peer (it slept): this wait polls, though no credit is
        // left, and losing it costs nothing.
        assert_eq!(h.strategy(SPIN, 1), SPIN);
        h.record(Some(budget), true, long);
        assert_eq!(h.strategy(SPIN, 2), SPIN);
        // The near miss of such a wait still teaches the budget, and once
        // polling catches the data the credit comes back.
        let learned = Duration::from_micros(190) * 5 / 4;
        h.record(Some(budget), true, Duration::from_micros(190));
        assert_eq!(h.strategy(SPIN, 3), WaitStrategy::Spin { budget: learned });
        h.record(Some(learned), false, Duration::from_micros(150));
        assert_eq!(h.strategy(SPIN, 3), WaitStrategy::Spin { budget: learned });
    }
}
