//! What a benchmark case is, what it measured, and how it compares with the
//! UnixStream baseline: the types the runner, the table and the chart share.

use serde::{Deserialize, Serialize};
use vox_shm::WaitStrategy;

use super::modes::{modes, Mode};
use super::percentile;
use crate::demo::human_size;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Ping-pong: latency percentiles.
    RoundTrip,
    /// One way, host to guest: throughput.
    Stream,
    /// Both ways at once: throughput (messages in both directions).
    Duplex,
    /// Request/response shaped like an RPC framework: `callers` concurrent
    /// callers, a writer task, a reader task that dispatches the responses,
    /// and an unrelated busy task, all on one `current_thread` runtime;
    /// calls per second and per-call latency.
    Rpc,
    /// vox 0.8 calls (`bench --rpc`): `callers` concurrent callers of a
    /// vox service in the other process, `size` 8 for an `echo(u64)`, else
    /// a blob of that size echoed back; calls per second and per-call
    /// latency.
    Vox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// tokio UnixStream, 4-byte length prefix.
    #[serde(rename = "unix-stream")]
    Uds,
    /// vox-shm, sleeping on the doorbell at once.
    ShmPark,
    /// vox-shm, polling up to 50 µs before sleeping (the default).
    ShmSpin,
    /// vox-shm, never sleeping.
    ShmBusyPoll,
    /// TCP over loopback, `TCP_NODELAY` (`bench --rpc` only).
    Tcp,
    /// No transport: vox's in-process memory link between two threads of
    /// one process (`bench --rpc` only): what vox costs with no transport.
    Memory,
    /// No transport either: a counter passed between the two processes
    /// through one cache line each way, spinning (the 64 B round trip only):
    /// the machine's floor in that run.
    CacheLine,
    /// iceoryx2 0.10 publish-subscribe, one service each way, polling
    /// without sleeping (the 64 B round trip only; feature `iceoryx2`).
    Iceoryx2,
    /// The same services, each side asleep on an iceoryx2 event service
    /// until the sender's notifier wakes it (its way to sleep, beside
    /// vox-shm's park; the 64 B round trip only; feature `iceoryx2`).
    Iceoryx2Sleep,
    /// No transport either: a counter passed through one word each way,
    /// each side asleep in `FUTEX_WAIT` until woken (the 64 B round trip
    /// only, Linux): the floor for any transport that sleeps, in that run.
    Futex,
}

impl Transport {
    /// One of vox-shm's own links.
    pub fn is_shm(self) -> bool {
        matches!(self, Transport::ShmPark | Transport::ShmSpin | Transport::ShmBusyPoll)
    }
    pub fn wait(self) -> WaitStrategy {
        match self {
            Transport::ShmPark => WaitStrategy::Park,
            Transport::ShmBusyPoll => WaitStrategy::BusyPoll,
            _ => WaitStrategy::default(),
        }
    }
    /// For iceoryx2's rows: whether its sides sleep (else they poll).
    pub fn iceoryx2_sleeps(self) -> Option<bool> {
        match self {
            Transport::Iceoryx2 => Some(false),
            Transport::Iceoryx2Sleep => Some(true),
            _ => None,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Transport::Uds => "unix-stream",
            Transport::ShmPark => "shm park",
            Transport::ShmSpin => "shm spin",
            Transport::ShmBusyPoll => "shm busy-poll",
            Transport::Tcp => "tcp",
            Transport::Memory => "in-process",
            Transport::CacheLine => "cache line",
            Transport::Iceoryx2 => "iceoryx2 poll",
            Transport::Iceoryx2Sleep => "iceoryx2 sleep",
            Transport::Futex => "futex sleep",
        }
    }
}

/// Which slot classes the segment has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// Slots up to 2 MiB: 1 MiB payloads use the slot tier.
    Slots,
    /// Slots up to 128 KiB: 1 MiB payloads use the mapping tier.
    MappingTier,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    pub kind: Kind,
    pub size: usize,
    pub count: u64,
    pub transport: Transport,
    pub pool: Pool,
    /// Concurrent callers (`Rpc` only).
    #[serde(default)]
    pub callers: u32,
    /// Host and guest both pinned to one CPU (as `taskset -c 0` would).
    #[serde(default)]
    pub one_cpu: bool,
    /// Each process drives the workload from the runtime's `block_on`
    /// future itself (as a `#[tokio::main]` loop does), not from a spawned
    /// task (as a server's connection handler does, and every other case).
    #[serde(default)]
    pub in_block_on: bool,
}

impl Case {
    pub fn workload(&self) -> String {
        let kind = match self.kind {
            Kind::RoundTrip => "round trip",
            Kind::Stream => "stream",
            Kind::Duplex => "full duplex",
            Kind::Rpc => return format!("rpc {} x{} callers +busy", human_size(self.size), self.callers),
            Kind::Vox => {
                let what = if self.size == 8 { "u64".to_string() } else { human_size(self.size) };
                return format!("vox echo {what} x{} callers", self.callers);
            }
        };
        let tier = if self.pool == Pool::MappingTier { " (mapping tier)" } else { "" };
        let cpu = if self.one_cpu { " (one CPU)" } else { "" };
        let main = if self.in_block_on { " (in block_on)" } else { "" };
        format!("{kind} {}{tier}{cpu}{main}", human_size(self.size))
    }
    pub fn name(&self) -> String {
        format!("{} / {}", self.workload(), self.transport.label())
    }
}

/// What the host process of a case reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Measured {
    /// Round-trip percentiles (ns).
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    /// Messages per second (both directions for duplex).
    pub msgs_per_s: f64,
    /// Payload bytes per second (one-way and duplex streams only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_s: Option<f64>,
    /// Doorbell signals the host wrote (vox-shm only).
    pub host_signals: u64,
    pub messages: u64,
    pub elapsed_s: f64,
    /// Round-trip deciles p10..p90 (ns), to see the shape of the distribution.
    #[serde(default)]
    pub deciles_ns: Vec<u64>,
    /// The two modes of the latencies, where they have two (see
    /// [`modes`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modes: Vec<Mode>,
}

impl Measured {
    /// The figures of calls or round trips whose latencies (ns, sorted)
    /// are `sorted` and which took `secs` in all.
    pub fn from_sorted_latencies(sorted: &[u64], secs: f64) -> Self {
        Measured {
            p50_ns: percentile(sorted, 0.5),
            p99_ns: percentile(sorted, 0.99),
            p999_ns: percentile(sorted, 0.999),
            deciles_ns: (1..10).map(|d| percentile(sorted, d as f64 / 10.0)).collect(),
            modes: modes(sorted),
            messages: sorted.len() as u64,
            msgs_per_s: sorted.len() as f64 / secs,
            elapsed_s: secs,
            ..Measured::default()
        }
    }

    /// The figures of timed round trips (ns, in any order) that ran for
    /// `elapsed_s` including the warm-up: the rate is of the timed ones alone.
    pub fn from_round_trips(mut rtts: Vec<u64>, elapsed_s: f64) -> Self {
        rtts.sort_unstable();
        let mut m = Measured::from_sorted_latencies(&rtts, rtts.iter().sum::<u64>() as f64 / 1e9);
        m.elapsed_s = elapsed_s;
        m
    }
}

/// The round trips or calls a latency case (round trip, rpc, vox) makes
/// before its clock starts: a tenth of `count`, at least 10, so the guest
/// process is running and its pages touched.
pub fn warmup_count(count: u64) -> u64 {
    (count / 10).max(10)
}

/// Times `count` round trips after [`warmup_count`] more, as every
/// round-trip case does: `one(seq)` makes round trip `seq`, numbered from 1.
/// For the cases without a runtime (the floor, iceoryx2); vox-shm's and the
/// socket's are `async`.
pub fn time_round_trips(count: u64, mut one: impl FnMut(u64) -> crate::Res) -> crate::Res<Measured> {
    let warmup = warmup_count(count);
    let mut rtts = Vec::with_capacity(count as usize);
    let started = std::time::Instant::now();
    for seq in 1..=warmup + count {
        let t = std::time::Instant::now();
        one(seq)?;
        if seq > warmup {
            rtts.push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(Measured::from_round_trips(rtts, started.elapsed().as_secs_f64()))
}

/// Waits for the guest of a round trip without a runtime (which has been
/// told to stop) and turns a failed exit into an error.
pub fn reap_guest(mut child: std::process::Child) -> crate::Res {
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("guest failed: {status}").into());
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    pub case: Case,
    pub workload: String,
    pub transport: String,
    /// The median run (by the figure the ratio compares).
    pub measured: Option<Measured>,
    /// Every successful run, in the order they ran (with `--runs N`).
    #[serde(default)]
    pub runs: Vec<Measured>,
    pub error: Option<String>,
}

impl CaseResult {
    /// A result from its runs: the median one is `measured`.
    pub fn from_runs(case: Case, runs: Vec<Measured>, error: Option<String>) -> CaseResult {
        let mut sorted = runs.clone();
        sorted.sort_by(|a, b| key(case.kind, a).total_cmp(&key(case.kind, b)));
        CaseResult {
            workload: case.workload(),
            transport: case.transport.label().to_string(),
            measured: sorted.get(sorted.len() / 2).cloned(),
            runs,
            error,
            case,
        }
    }
}

/// The figure a ratio compares: p50 latency for round trips (lower is
/// better, so negated), messages or calls per second otherwise.
fn key(kind: Kind, m: &Measured) -> f64 {
    match kind {
        Kind::RoundTrip => -(m.p50_ns as f64),
        _ => m.msgs_per_s,
    }
}

/// The UnixStream result of the same workload.
fn baseline<'a>(r: &CaseResult, all: &'a [CaseResult]) -> Option<&'a CaseResult> {
    all.iter().find(|b| {
        b.case.transport == Transport::Uds
            && b.case.kind == r.case.kind
            && b.case.size == r.case.size
            && b.case.callers == r.case.callers
            && b.case.one_cpu == r.case.one_cpu
            && b.case.in_block_on == r.case.in_block_on
    })
}

fn ratio_of(kind: Kind, m: &Measured, base: &Measured) -> f64 {
    match kind {
        Kind::RoundTrip => base.p50_ns as f64 / m.p50_ns.max(1) as f64,
        _ => m.msgs_per_s / base.msgs_per_s.max(1e-9),
    }
}

/// Run i of `r` against run i of its baseline, which ran right before it.
fn per_run_ratios(r: &CaseResult, base: &CaseResult) -> Vec<f64> {
    r.runs.iter().zip(&base.runs).map(|(m, b)| ratio_of(r.case.kind, m, b)).collect()
}

/// The speed-up of a vox-shm result over the UnixStream result of the same
/// workload (latency: uds/shm at p50; throughput: shm/uds), medians.
/// With repeated runs it is the median of the per-run ratios (see
/// [`ratio_range`]), so it always lies inside their spread.
pub fn ratio(r: &CaseResult, all: &[CaseResult]) -> Option<f64> {
    let base = baseline(r, all)?;
    let mut per_run = per_run_ratios(r, base);
    if per_run.len() >= 2 {
        per_run.sort_by(f64::total_cmp);
        return Some(per_run[per_run.len() / 2]);
    }
    Some(ratio_of(r.case.kind, r.measured.as_ref()?, base.measured.as_ref()?))
}

/// The lowest and highest ratio over repeated runs (run i against the
/// baseline's run i, which ran right before it), if there were several.
pub fn ratio_range(r: &CaseResult, all: &[CaseResult]) -> Option<(f64, f64)> {
    let ratios = per_run_ratios(r, baseline(r, all)?);
    if ratios.len() < 2 {
        return None;
    }
    Some((ratios.iter().copied().fold(f64::MAX, f64::min), ratios.iter().copied().fold(0.0, f64::max)))
}

/// The speed-up the project aims for in this workload (README "Measured"
/// and the issues' targets), where there is one.
pub fn target(case: &Case) -> Option<f64> {
    use Transport::*;
    Some(match (case.kind, case.transport, case.size, case.one_cpu) {
        (Kind::Rpc, ShmSpin, _, _) => 5.0,
        (Kind::Vox, ShmSpin, _, _) => 3.0,
        (Kind::RoundTrip, ShmSpin, 64, false) => 20.0,
        (Kind::RoundTrip, ShmBusyPoll, 64, false) => 30.0,
        (Kind::RoundTrip, ShmPark, 64, _) | (Kind::RoundTrip, ShmSpin, 64, true) => 1.0,
        (Kind::Stream, ShmSpin, 64, _) => 10.0,
        (Kind::Stream, ShmSpin, s, _) if s >= 1 << 20 => 6.0,
        (Kind::Duplex, ShmSpin | ShmPark, _, _) => 5.0,
        _ => return None,
    })
}

pub fn fmt_ns(ns: u64) -> String {
    match ns {
        n if n >= 1_000_000 => format!("{:.2} ms", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.2} µs", n as f64 / 1e3),
        n => format!("{n} ns"),
    }
}

/// The running kernel's release.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
