//! `vox-shm bench`: every workload over vox-shm (for each wait strategy) and
//! over a tokio `UnixStream`, each case in fresh host and guest processes,
//! with the ratio between them; beside the 64 B round trips, the machine's
//! floors for one: spinning (see [`cache_line`]) and asleep (see `futex`).

mod cache_line;
mod endpoint;
#[cfg(target_os = "linux")]
mod futex;
#[cfg(not(target_os = "linux"))]
#[path = "no_futex.rs"]
mod futex;
#[cfg(feature = "iceoryx2")]
mod iceoryx;
#[cfg(not(feature = "iceoryx2"))]
#[path = "no_iceoryx.rs"]
mod iceoryx;
mod model;
mod modes;
mod svg;
mod table;
#[cfg(feature = "vox")]
mod vox_rpc;
#[cfg(not(feature = "vox"))]
#[path = "no_vox.rs"]
mod vox_rpc;
mod wire;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vox_shm::host::{spawn_guest_with, GuestArgs, HostHub};
use vox_shm::{Features, Link, LinkOptions, Segment, SegmentConfig, SizeClassConfig};

use crate::{runtime, Res};
use endpoint::{Rx, Tx};
use model::{kernel, warmup_count};
pub use model::{Case, CaseResult, Kind, Measured, Pool, Transport};
use table::render_table;

/// Options of `vox-shm bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Fewer iterations (a few seconds instead of about fifteen on two cores).
    #[arg(long)]
    pub quick: bool,
    /// Run every case this many times (interleaved: each round runs every
    /// case once); the table and chart show the median and the spread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,
    /// Write machine-readable results here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Write a chart of the speed-ups here.
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
    /// Run the vox RPC cases instead: vox 0.8 calls over vox-shm, over vox's
    /// own Unix socket and over TCP loopback.
    #[arg(long)]
    pub rpc: bool,
    /// Only run cases whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Seconds after which a case is killed and reported as failed.
    #[arg(long, default_value_t = 120)]
    pub case_timeout: u64,
}

/// The segment every shared-memory case runs in: one guest, 256 KiB
/// rings, payloads up to 4 MiB, and the size classes of `pool`.
fn bench_segment(pool: Pool) -> Res<Arc<Segment>> {
    let cfg = SegmentConfig {
        max_guests: 1,
        bipbuf_capacity: 256 * 1024,
        max_payload_size: 4 << 20,
        size_classes: classes(pool),
        ..SegmentConfig::default()
    };
    Ok(Arc::new(Segment::create_anonymous(cfg, Features::ALL)?))
}

/// The guest end of a shared-memory case, from what `spawn_guest` passed
/// it (`rest`: its arguments), with the case's wait strategy.
fn shm_guest_link(case: &Case, rest: Vec<String>) -> Res<(Arc<Segment>, vox_shm::ShmLink)> {
    let (args, _) = GuestArgs::parse(rest, std::env::var(vox_shm::host::MMAP_TX_FD_ENV).ok())?;
    let opts = LinkOptions { wait: case.transport.wait(), ..LinkOptions::default() };
    // SAFETY: inherited for us by spawn_guest and adopted once, here.
    Ok(unsafe { args.connect(opts) }?)
}

fn classes(pool: Pool) -> &'static [SizeClassConfig] {
    const SLOTS: [SizeClassConfig; 3] = [
        SizeClassConfig { slot_size: 8 * 1024, slot_count: 256 },
        SizeClassConfig { slot_size: 128 * 1024, slot_count: 64 },
        SizeClassConfig { slot_size: 2 << 20, slot_count: 16 },
    ];
    match pool {
        Pool::Slots => &SLOTS,
        Pool::MappingTier => &SLOTS[..2],
    }
}

fn cases(quick: bool) -> Vec<Case> {
    let q = |full: u64| if quick { (full / 10).max(200) } else { full };
    let shm = [Transport::ShmPark, Transport::ShmSpin, Transport::ShmBusyPoll];
    let mut out = Vec::new();
    let mut add_with = |kind, size, count, pool, callers, one_cpu| {
        for transport in std::iter::once(Transport::Uds).chain(shm) {
            if pool == Pool::MappingTier && transport == Transport::Uds {
                continue; // the same workload as the slot-tier one
            }
            if one_cpu && transport == Transport::ShmBusyPoll {
                continue; // never sleeps: each hop waits for a whole time slice
            }
            out.push(Case { kind, size, count, transport, pool, callers, one_cpu, in_block_on: false });
        }
    };
    for callers in [1, 8, 64] {
        // More calls with more callers, so no run lasts only milliseconds.
        add_with(Kind::Rpc, 64, q(20_000 * (1 + u64::from(callers) / 8)), Pool::Slots, callers, false);
    }
    add_with(Kind::RoundTrip, 64, q(20_000), Pool::Slots, 0, true);
    let mut add = |kind, size, count, pool| add_with(kind, size, count, pool, 0, false);
    add(Kind::RoundTrip, 64, q(20_000), Pool::Slots);
    add(Kind::RoundTrip, 4096, q(20_000), Pool::Slots);
    add(Kind::RoundTrip, 64 * 1024, q(5_000), Pool::Slots);
    // The two tiers' 1 MiB round trips side by side (and run twin by twin:
    // see `run_order`).
    add(Kind::RoundTrip, 1 << 20, q(2_000), Pool::Slots);
    add(Kind::RoundTrip, 1 << 20, q(2_000), Pool::MappingTier);
    add(Kind::Stream, 64, q(2_000_000), Pool::Slots);
    add(Kind::Stream, 64 * 1024, q(40_000), Pool::Slots);
    add(Kind::Stream, 1 << 20, q(3_000), Pool::Slots);
    add(Kind::Stream, 1 << 20, q(3_000), Pool::MappingTier);
    add(Kind::Duplex, 64, q(1_000_000), Pool::Slots);
    // The machine's floors, right after the 64 B round trips they bound (and
    // iceoryx2's, in a build with it); then what waiting in `block_on`'s
    // future costs (see `in_block_on`).
    let rt64 = |c: &Case| c.kind == Kind::RoundTrip && c.size == 64 && !c.one_cpu;
    let at = out.iter().rposition(rt64).expect("the 64 B round trips are there");
    let beside = |transport| Case { transport, ..out[at].clone() };
    let iceoryx2 = [Transport::Iceoryx2, Transport::Iceoryx2Sleep].map(beside);
    let mut more: Vec<Case> = iceoryx::BUILT.then_some(iceoryx2).into_iter().flatten().collect();
    more.push(beside(Transport::CacheLine));
    more.extend(futex::BUILT.then(|| beside(Transport::Futex)));
    more.extend([Transport::Uds, Transport::ShmSpin].map(|transport| Case { in_block_on: true, ..beside(transport) }));
    out.splice(at + 1..at + 1, more);
    out
}

pub fn run(args: BenchArgs) -> Res {
    #[cfg(not(feature = "vox"))]
    if args.rpc {
        return Err(vox_rpc::MISSING.into());
    }
    let all = if args.rpc { vox_rpc::cases(args.quick) } else { cases(args.quick) };
    let selected: Vec<Case> =
        all.into_iter().filter(|c| args.filter.as_ref().is_none_or(|f| c.name().contains(f.as_str()))).collect();
    if selected.is_empty() {
        return Err("no benchmark case matches the filter".into());
    }
    // Check the outputs before a run of minutes, not after it.
    for p in [&args.json, &args.svg].into_iter().flatten() {
        writable(p)?;
    }
    let exe = std::env::current_exe()?;
    let bar = indicatif::ProgressBar::new(selected.len() as u64 * u64::from(args.runs));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed} {msg}").map_err(|e| e.to_string())?,
    );
    let mut runs: Vec<(Vec<Measured>, Option<String>)> = vec![(Vec::new(), None); selected.len()];
    let order = run_order(&selected);
    for round in 0..args.runs {
        for &i in &order {
            let (case, (ok, err)) = (&selected[i], &mut runs[i]);
            bar.set_message(format!("{} (run {})", case.name(), round + 1));
            match run_case(&exe, case, Duration::from_secs(args.case_timeout)) {
                Ok(m) => ok.push(m),
                Err(e) => *err = Some(e.to_string()),
            }
            bar.inc(1);
        }
    }
    let results: Vec<CaseResult> =
        selected.into_iter().zip(runs).map(|(case, (ok, err))| CaseResult::from_runs(case, ok, err)).collect();
    bar.finish_and_clear();
    let table = render_table(&results);
    println!("{table}");
    let meta = svg::Meta::now();
    if let Some(p) = &args.json {
        let doc = serde_json::json!({
            "date": meta.date,
            "commit": meta.commit,
            "machine": { "description": meta.machine, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "kernel": kernel() },
            "quick": args.quick,
            "runs": args.runs,
            "results": results,
        });
        std::fs::write(p, serde_json::to_string_pretty(&doc)?).map_err(|e| format!("{}: {e}", p.display()))?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &args.svg {
        std::fs::write(p, svg::chart(&results, &meta)).map_err(|e| format!("{}: {e}", p.display()))?;
        println!("wrote {}", p.display());
    }
    let failed: Vec<_> = results.iter().filter(|r| r.error.is_some()).map(|r| r.case.name()).collect();
    if !failed.is_empty() {
        return Err(format!("{} case(s) failed: {}", failed.len(), failed.join(", ")).into());
    }
    Ok(())
}

/// The order to run `cases` in: as listed, except that a mapping-tier case
/// runs right after its slot-tier twin (same workload and transport), so the
/// two tiers are compared in one state of the machine. (This VM has a fast
/// and a slow state and can change between them within a run: with the twins
/// four cases apart, the slot tier's spin round trip once measured 39 us in
/// the fast state and the mapping tier's 92 us in the slow one.)
fn run_order(cases: &[Case]) -> Vec<usize> {
    let twin = |c: &Case| cases.iter().position(|s| is_slot_twin(s, c));
    let mut order: Vec<(usize, usize)> = (0..cases.len())
        .map(|i| match cases[i].pool {
            Pool::MappingTier => (twin(&cases[i]).unwrap_or(i), i),
            Pool::Slots => (i, i),
        })
        .collect();
    order.sort_unstable();
    order.into_iter().map(|(_, i)| i).collect()
}

/// `s` is the slot-tier case of `c`'s workload and transport.
fn is_slot_twin(s: &Case, c: &Case) -> bool {
    s.pool == Pool::Slots && s.kind == c.kind && s.size == c.size && s.transport == c.transport
}

/// Runs one case in a fresh host process (which spawns its guest).
fn run_case(exe: &std::path::Path, case: &Case, limit: Duration) -> Res<Measured> {
    let mut child = Command::new(exe)
        .arg("bench-host")
        .arg(serde_json::to_string(case)?)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !status.success() {
        return Err(format!("host failed ({status}): {}", String::from_utf8_lossy(&out.stderr).trim()).into());
    }
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).ok_or("host printed no result")?;
    Ok(serde_json::from_str(line)?)
}

/// Fails, naming `path`, unless a file can be written there: its directory
/// exists and takes new files (a file already there is left as it is).
fn writable(path: &std::path::Path) -> Res {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    tempfile::NamedTempFile::new_in(dir).map(drop).map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}

#[cfg(not(target_os = "linux"))]
fn pin_to_first_cpu() -> Res {
    Err("the one-CPU cases pin with sched_setaffinity, which only Linux has".into())
}

#[cfg(target_os = "linux")]
/// Restricts this process (and the children it spawns) to the first CPU it
/// may run on.
fn pin_to_first_cpu() -> Res {
    // SAFETY: `set` is a plain bit set the libc calls only read and write.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let first = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set)).ok_or("no CPU")?;
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(first, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The host process of one case.
pub fn host(case_json: &str) -> Res {
    let case: Case = serde_json::from_str(case_json)?;
    if case.one_cpu {
        pin_to_first_cpu()?; // the guest inherits the mask
    }
    let rt = runtime()?;
    let measured = rt.block_on(async {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(&exe);
        cmd.arg("bench-guest").arg(case_json).stdout(Stdio::null()).stderr(Stdio::inherit());
        if case.kind == Kind::Vox {
            return vox_rpc::host(&case, cmd).await;
        }
        if case.transport == Transport::CacheLine {
            return cache_line::host(&case, cmd);
        }
        if case.transport == Transport::Futex {
            return futex::host(&case, cmd);
        }
        if let Some(sleeps) = case.transport.iceoryx2_sleeps() {
            return iceoryx::host(&case, cmd, sleeps);
        }
        let (tx, rx, mut child) = match case.transport {
            Transport::Uds => {
                let (mine, theirs) = std::os::unix::net::UnixStream::pair()?;
                let theirs = OwnedFd::from(theirs);
                pass_fd(&mut cmd, "uds-fd", &theirs);
                let child = cmd.spawn()?;
                drop(theirs);
                mine.set_nonblocking(true)?;
                let (r, w) = tokio::net::UnixStream::from_std(mine)?.into_split();
                let tx = Tx::Uds { sock: w, buf: Vec::new() };
                let rx = Rx::Uds { sock: tokio::io::BufReader::with_capacity(256 * 1024, r), buf: Vec::new() };
                (tx, rx, child)
            }
            t => {
                let opts = LinkOptions { wait: t.wait(), ..LinkOptions::default() };
                let (link, child) = spawn_guest_with(&HostHub::new(bench_segment(case.pool)?), cmd, opts)?;
                let (tx, rx) = link.split();
                (Tx::Shm(tx), Rx::Shm(rx), child)
            }
        };
        // The RPC workload spawns its own tasks (`rpc_calls`).
        let spawn = !case.in_block_on && case.kind != Kind::Rpc;
        let m = in_task(&case, spawn, move |c| async move { drive_host(&c, tx, rx).await }).await;
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        let m = m?;
        if !status.success() {
            return Err(format!("guest failed: {status}").into());
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(m)
    })?;
    println!("RESULT {}", serde_json::to_string(&measured)?);
    Ok(())
}

async fn drive_host(case: &Case, mut tx: Tx, mut rx: Rx) -> Res<Measured> {
    let mut m = Measured::default();
    let signals = |tx: &Tx| match tx {
        Tx::Shm(t) => t.stats().doorbell_signals,
        Tx::Uds { .. } => 0,
    };
    match case.kind {
        Kind::RoundTrip => {
            let warmup = warmup_count(case.count);
            let mut rtts = Vec::with_capacity(case.count as usize);
            let started = Instant::now();
            for seq in 0..warmup + case.count {
                let t = Instant::now();
                tx.send(seq, case.size).await?;
                rx.expect(seq).await?;
                if seq >= warmup {
                    rtts.push(t.elapsed().as_nanos() as u64);
                }
            }
            m = Measured::from_round_trips(rtts, started.elapsed().as_secs_f64());
        }
        Kind::Stream => {
            ready(&mut tx, &mut rx).await?;
            let started = Instant::now();
            for seq in 0..case.count {
                tx.send(seq, case.size).await?;
            }
            rx.expect(case.count).await?; // the guest's acknowledgement
            let secs = started.elapsed().as_secs_f64();
            m.elapsed_s = secs;
            m.messages = case.count;
            m.msgs_per_s = case.count as f64 / secs;
            m.bytes_per_s = Some((case.count * case.size as u64) as f64 / secs);
        }
        Kind::Duplex => {
            ready(&mut tx, &mut rx).await?;
            let started = Instant::now();
            let (n, size) = (case.count, case.size);
            // n messages each way, then the guest's acknowledgement.
            both_ways(&mut tx, &mut rx, n, size, n + 1).await?;
            let secs = started.elapsed().as_secs_f64();
            m.elapsed_s = secs;
            m.messages = 2 * n;
            m.msgs_per_s = (2 * n) as f64 / secs;
            m.bytes_per_s = Some((2 * n * size as u64) as f64 / secs);
        }
        Kind::Vox => return Err("vox cases are driven by bench::vox_rpc".into()),
        Kind::Rpc => {
            // Warm up as the round trips do, so the clock starts with the
            // guest process running and its pages touched: a run of 20,000
            // calls at 2 M calls/s lasts 10 ms, and the guest's start-up
            // alone had cost up to 5 ms of it (p99.9 of 4-5 ms).
            for k in 0..warmup_count(case.count) {
                let seq = u64::MAX - k;
                tx.send(seq, case.size).await?;
                rx.expect(seq).await?;
            }
            let (t, r, lat, secs) = rpc_calls(tx, rx, case).await?;
            (tx, rx) = (t, r);
            m = Measured::from_sorted_latencies(&lat, secs);
        }
    }
    m.host_signals = signals(&tx);
    tx.close().await?;
    if rx.recv().await?.is_some() {
        return Err("unexpected message after the run".into());
    }
    Ok(m)
}

/// The RPC-shaped workload (see [`Kind::Rpc`]): returns the link halves, the
/// sorted per-call latencies (ns) and the seconds all calls took.
async fn rpc_calls(tx: Tx, mut rx: Rx, case: &Case) -> Res<(Tx, Rx, Vec<u64>, f64)> {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::rc::Rc;
    use tokio::sync::{mpsc, oneshot};
    let callers = u64::from(case.callers.max(1));
    let per_caller = (case.count / callers).max(1);
    let total = per_caller * callers;
    let size = case.size;
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let pending: Rc<RefCell<HashMap<u64, oneshot::Sender<()>>>> = Rc::default();
            let done = Rc::new(Cell::new(false));
            let (req_tx, mut req_rx) = mpsc::channel::<u64>(callers as usize);
            let writer = tokio::task::spawn_local(async move {
                let mut tx = tx;
                while let Some(seq) = req_rx.recv().await {
                    tx.send(seq, size).await?;
                }
                Ok::<_, std::io::Error>(tx)
            });
            let p = pending.clone();
            let reader = tokio::task::spawn_local(async move {
                for _ in 0..total {
                    let seq = rx.recv().await?.ok_or_else(|| std::io::Error::other("end of stream mid-run"))?;
                    let waiter = p.borrow_mut().remove(&seq);
                    waiter
                        .ok_or_else(|| std::io::Error::other(format!("response {seq} nobody waits for")))?
                        .send(())
                        .ok();
                }
                Ok::<_, std::io::Error>(rx)
            });
            // Unrelated work on the same thread: a task that is always ready.
            let d = done.clone();
            let busy = tokio::task::spawn_local(async move {
                let mut x = 0u64;
                while !d.get() {
                    for i in 0..200u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                    tokio::task::yield_now().await;
                }
                x
            });
            let started = Instant::now();
            let mut calls = Vec::new();
            for c in 0..callers {
                let (pending, req_tx) = (pending.clone(), req_tx.clone());
                calls.push(tokio::task::spawn_local(async move {
                    let mut lat = Vec::with_capacity(per_caller as usize);
                    for i in 0..per_caller {
                        let seq = c * per_caller + i;
                        let (otx, orx) = oneshot::channel();
                        pending.borrow_mut().insert(seq, otx);
                        let t = Instant::now();
                        req_tx.send(seq).await.map_err(|_| std::io::Error::other("writer gone"))?;
                        orx.await.map_err(|_| std::io::Error::other("reader gone"))?;
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    Ok::<_, std::io::Error>(lat)
                }));
            }
            drop(req_tx);
            let mut lat = Vec::with_capacity(total as usize);
            for c in calls {
                lat.extend(c.await??);
            }
            let secs = started.elapsed().as_secs_f64();
            done.set(true);
            busy.await?;
            let tx = writer.await??;
            let rx = reader.await??;
            lat.sort_unstable();
            Ok((tx, rx, lat, secs))
        })
        .await
}

/// The guest process of one case.
pub fn guest(case_json: &str, rest: Vec<String>) -> Res {
    let case: Case = serde_json::from_str(case_json)?;
    if case.kind == Kind::Vox {
        return runtime()?.block_on(vox_rpc::guest(&case, rest));
    }
    if case.transport == Transport::CacheLine {
        return cache_line::guest(&rest);
    }
    if case.transport == Transport::Futex {
        return futex::guest(&rest);
    }
    if let Some(sleeps) = case.transport.iceoryx2_sleeps() {
        return iceoryx::guest(&rest, sleeps);
    }
    runtime()?.block_on(async {
        let (tx, rx) = if let Some(fd) = take_fd(&rest, "uds-fd")? {
            let sock = std::os::unix::net::UnixStream::from(fd);
            sock.set_nonblocking(true)?;
            let (r, w) = tokio::net::UnixStream::from_std(sock)?.into_split();
            (
                Tx::Uds { sock: w, buf: Vec::new() },
                Rx::Uds { sock: tokio::io::BufReader::with_capacity(256 * 1024, r), buf: Vec::new() },
            )
        } else {
            let (_seg, link) = shm_guest_link(&case, rest)?;
            let (tx, rx) = link.split();
            (Tx::Shm(tx), Rx::Shm(rx))
        };
        in_task(&case, !case.in_block_on, move |c| async move { drive_guest(&c, tx, rx).await }).await
    })
}

/// Runs `drive` in a task spawned on this thread if `spawn`, as a server runs
/// a connection's handler, or else in the `block_on` future itself. The
/// difference is tokio's: a waiter that looks and yields in the `block_on`
/// future, with no other task ready, makes the runtime poll its driver (an
/// `epoll_wait` and the timer wheel) at every look, where in a task it is
/// only requeued.
async fn in_task<T, F, Fut>(case: &Case, spawn: bool, drive: F) -> Res<T>
where
    T: 'static,
    F: FnOnce(Case) -> Fut,
    Fut: std::future::Future<Output = Res<T>> + 'static,
{
    let fut = drive(case.clone());
    if !spawn {
        return fut.await;
    }
    let local = tokio::task::LocalSet::new();
    local.run_until(async { tokio::task::spawn_local(fut).await? }).await
}

async fn drive_guest(case: &Case, mut tx: Tx, mut rx: Rx) -> Res {
    match case.kind {
        Kind::RoundTrip | Kind::Rpc | Kind::Vox => {
            while let Some(seq) = rx.recv().await? {
                tx.send(seq, case.size).await?;
            }
        }
        Kind::Stream => {
            ready_echo(&mut tx, &mut rx).await?;
            for seq in 0..case.count {
                rx.expect(seq).await?;
            }
            tx.send(case.count, 8).await?;
            if rx.recv().await?.is_some() {
                return Err("unexpected message after the stream".into());
            }
        }
        Kind::Duplex => {
            ready_echo(&mut tx, &mut rx).await?;
            let n = case.count;
            both_ways(&mut tx, &mut rx, n, case.size, n).await?;
            tx.send(n, 8).await?;
            if rx.recv().await?.is_some() {
                return Err("unexpected message after the stream".into());
            }
        }
    }
    tx.close().await?;
    Ok(())
}

/// The message number of the streams' start signal.
const READY: u64 = u64::MAX;

/// Host, before a stream's clock starts: one round trip, so the guest
/// process is running and attached. Without it the guest's start-up (a few
/// milliseconds) counted as streaming time, and until the host learns the
/// guest's features (when it attaches) every commit rings the doorbell: a
/// full ring's worth of system calls, 2,000-3,900 of them per 64 B run.
async fn ready(tx: &mut Tx, rx: &mut Rx) -> std::io::Result<()> {
    tx.send(READY, 8).await?;
    rx.expect(READY).await
}

/// Guest: the other half of [`ready`].
async fn ready_echo(tx: &mut Tx, rx: &mut Rx) -> std::io::Result<()> {
    rx.expect(READY).await?;
    tx.send(READY, 8).await
}

/// Sends messages `0..sends` of `size` bytes while receiving and checking
/// messages `0..receives`, both at once (the full-duplex workload).
async fn both_ways(tx: &mut Tx, rx: &mut Rx, sends: u64, size: usize, receives: u64) -> std::io::Result<()> {
    let sender = async {
        for seq in 0..sends {
            tx.send(seq, size).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let receiver = async {
        for seq in 0..receives {
            rx.expect(seq).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::try_join!(sender, receiver).map(|_| ())
}

/// Passes `fd` to the guest `cmd` will start, as `--{flag}=N`: it survives
/// the `exec` (cleared close-on-exec in the forked child only) and must stay
/// open until `spawn`. The socket baseline and the cache-line floor pass
/// theirs this way; vox-shm's own descriptors travel with `spawn_guest`.
fn pass_fd(cmd: &mut Command, flag: &str, fd: &OwnedFd) {
    let raw = fd.as_raw_fd();
    cmd.arg(format!("--{flag}={raw}"));
    let keep = move || {
        // SAFETY: `fcntl` on a descriptor number; no memory is passed.
        if unsafe { libc::fcntl(raw, libc::F_SETFD, 0) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: runs in the forked child before exec and only calls `fcntl`,
    // which is async-signal-safe, on a descriptor open in the parent until
    // after `spawn`.
    unsafe { std::os::unix::process::CommandExt::pre_exec(cmd, keep) };
}

/// Guest: the descriptor the bench host passed as `--{flag}=N` with
/// [`pass_fd`], if it passed one, checked to be open. Call it once per flag:
/// it takes ownership of the descriptor.
fn take_fd(rest: &[String], flag: &str) -> Res<Option<OwnedFd>> {
    let prefix = format!("--{flag}=");
    let Some(arg) = rest.iter().find_map(|a| a.strip_prefix(prefix.as_str())) else { return Ok(None) };
    let fd: std::os::fd::RawFd = arg.parse().map_err(|_| format!("--{flag}={arg} is not a descriptor number"))?;
    // SAFETY: `fcntl(F_GETFD)` only reads the descriptor's flags.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(format!("--{flag}={arg}: no such open descriptor").into());
    }
    // SAFETY: open (checked above), inherited for this process by the bench
    // host, and adopted once: nothing else in this process owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mapping_tier_case_runs_right_after_its_slot_tier_twin() {
        let all = cases(false);
        let order = run_order(&all);
        let mut seen = order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..all.len()).collect::<Vec<_>>(), "every case runs once");
        let mapping: Vec<usize> = (0..all.len()).filter(|&i| all[i].pool == Pool::MappingTier).collect();
        assert!(mapping.len() >= 6, "round trip and stream, three strategies each");
        for m in mapping {
            let at = order.iter().position(|&i| i == m).unwrap();
            let (before, c) = (&all[order[at - 1]], &all[m]);
            assert!(is_slot_twin(before, c), "{} runs after {}", c.name(), before.name());
        }
    }
}
