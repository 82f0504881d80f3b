//! How a link waits and how much mapping memory it may use ([`LinkOptions`]).

use crate::mmap_registry::{DEFAULT_LEGACY_MAPPING_BUDGET, DEFAULT_MAPPING_BUDGET, DEFAULT_REGION_SIZE};
use shm_primitives::Features;
use std::time::Duration;

/// How a waiting half spends its time before sleeping on the doorbell.
///
/// Every polling strategy is polite: after each look that finds nothing it
/// yields to the scheduler, so any other task that is ready on the same
/// runtime thread runs before the next look (an RPC framework's reader,
/// writer and dispatcher, other links, your own tasks).
///
/// Poll from a spawned task (`tokio::spawn`, `spawn_local`), not from the
/// runtime's `block_on` future itself (the body of `#[tokio::main]`): when
/// that future wakes itself and no task is ready, tokio polls its I/O and
/// timer driver before polling it again, so every look becomes an
/// `epoll_wait`. On a 2-core KVM guest that made the 64 B round trip
/// 0.93-1.07 µs instead of 0.65-0.75 µs in three runs (`vox-shm bench
/// --filter "round trip 64 B"`, rows with and without "in block_on").
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
    /// container) never polls, since its peer needs that CPU. A half whose
    /// wait parked and then ended soon after (within 250 µs) polls a quarter
    /// longer than that wait the next time, up to 250 µs, until a wait shows
    /// the peer was away: under an RPC framework with many callers the
    /// processes take turns in batches, and the fixed budget polled in vain
    /// and then paid for a wake-up too. A wait that begins after this link
    /// woke the peer (it rang the doorbell since its last wait) always polls
    /// and never counts as the peer being away, since it includes the peer's
    /// wake-up: otherwise two halves that had both taken to parking kept
    /// each other there. That costs at most one budget of polling (up to 250 µs
    /// once learned) per signal sent.
    Spin {
        /// How long to poll before parking (at least; see above).
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
    /// receiver that reports releases (ours), and also while the receiver's
    /// features are not known yet (a guest that has not attached): a sender
    /// that runs ahead of its guest waits at this bound.
    pub mmap_budget: u64,
    /// The same bound for a receiver that cannot report releases (vox-shm
    /// 0.3.1), whose regions are never reused.
    pub mmap_budget_legacy: u64,
    /// If set, a half that sleeps longer than this prints its internal state
    /// to stderr (then keeps waiting): a tool for diagnosing hangs. Default:
    /// the `VOX_SHM_STALL_REPORT_MS` environment variable, else off.
    pub stall_report: Option<Duration>,
}

pub(super) fn stall_report_from_env() -> Option<Duration> {
    std::env::var("VOX_SHM_STALL_REPORT_MS").ok()?.parse().ok().map(Duration::from_millis)
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
