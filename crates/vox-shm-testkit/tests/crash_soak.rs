//! Crash injection: a guest streams inline, slot and mapping payloads to the
//! host while receiving the host's, and is killed with SIGKILL at a random
//! moment. After every kill the host must have every message the guest had
//! committed, intact and in order, then a death error; the pool must be whole
//! again, the peer slot reusable, and descriptors and memory flat.
//!
//! `VOX_SHM_CRASH_CYCLES` sets the number of cycles (default 100; CI's soak
//! runs 1000). A test binary of its own, so no other test's descriptors share
//! the process.

use std::time::{Duration, Instant};

use vox_shm::{Link, ShmLinkRxError};
use vox_shm_testkit::harness::{hub, mixed, recv, send, spawn, SMALL_POOL};
use vox_shm_testkit::{check_payload, fd_count, status_kb, CommitCounter};

const PEER: &str = env!("CARGO_BIN_EXE_shm-test-peer");

/// A small deterministic generator, so a failing cycle can be replayed with
/// `VOX_SHM_CRASH_SEED`.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[derive(Debug, Default)]
struct Totals {
    cycles: u64,
    delivered: u64,
    committed: u64,
    host_sent: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_leaks_nothing() {
    let cycles: u64 = std::env::var("VOX_SHM_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let mut seed: u64 = std::env::var("VOX_SHM_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }) | 1;
    eprintln!("VOX_SHM_CRASH_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 1);
    let counter_path = dir.path().join("committed");
    let mut totals = Totals::default();
    let mut baseline = None;
    let started = Instant::now();
    for cycle in 0..cycles {
        let counter = CommitCounter::create(&counter_path).unwrap();
        let (link, mut child) = spawn(PEER, &hub, &["crash-duplex", counter_path.to_str().unwrap()]);
        let (tx, mut rx) = link.split();
        // The host streams mixed tiers to the guest until the guest is gone,
        // so announcements cross in both directions when the kill lands.
        let sender = tokio::spawn(async move {
            let mut seq = 0u64;
            loop {
                if let Err(e) = send(&tx, seq, mixed(seq)).await {
                    return (seq, e);
                }
                seq += 1;
            }
        });
        // Half the kills land in the first 3 ms, while both sides are still
        // announcing their first mapping regions; the rest anywhere in 30 ms.
        let r = next(&mut seed);
        let delay = Duration::from_micros(if r % 2 == 0 { (r >> 1) % 3_000 } else { (r >> 1) % 30_000 });
        let deadline = Instant::now() + delay;
        let mut got = 0u64;
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(1), rx.recv()).await {
                Ok(Ok(Some(m))) => {
                    check_payload(got, mixed(got), m.as_bytes()).unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
                    got += 1;
                }
                Ok(other) => panic!("cycle {cycle}: guest stream ended early: {other:?}"),
                Err(_) => {}
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let committed = counter.get();
        let end = loop {
            match recv(&mut rx).await {
                Ok(Some(m)) => {
                    check_payload(got, mixed(got), m.as_bytes()).unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
                    got += 1;
                }
                other => break other,
            }
        };
        assert!(
            matches!(end, Err(ShmLinkRxError::PeerDead { peer: 1, host: false })),
            "cycle {cycle}: after {got} messages (guest committed {committed}) the stream ended with {end:?}"
        );
        assert!(got >= committed, "cycle {cycle}: guest committed {committed} messages, host got {got}");
        let (host_sent, err) = tokio::time::timeout(Duration::from_secs(10), sender).await.unwrap().unwrap();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "cycle {cycle}: sender ended with {err:?}");
        drop(rx);
        // Every pool slot is back, and the peer slot is free for the next guest.
        let seg = hub.segment();
        for (c, class) in SMALL_POOL.iter().enumerate() {
            let u = seg.var_pool().class_usage(c).unwrap();
            assert_eq!(u.free, class.slot_count, "cycle {cycle} class {c}: {u:?}");
            assert_eq!(seg.var_pool().check_free_list(c), Ok(class.slot_count), "cycle {cycle} class {c}");
        }
        for (id, e) in seg.peer_table().iter() {
            assert_eq!(e.state(), shm_primitives::PeerState::Empty, "cycle {cycle}: peer {id} not recovered");
        }
        totals.cycles += 1;
        totals.delivered += got;
        totals.committed += committed;
        totals.host_sent += host_sent;
        if cycle == 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            baseline = Some((fd_count(), status_kb("VmRSS")));
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (fds, rss) = (fd_count(), status_kb("VmRSS"));
    eprintln!(
        "crash soak: {totals:?} in {:?}; descriptors {:?} -> {fds}, RSS {:?} kB -> {rss} kB",
        started.elapsed(),
        baseline.map(|b| b.0),
        baseline.map(|b| b.1)
    );
    if let Some((fds0, rss0)) = baseline {
        assert!(fds <= fds0, "descriptors leaked: {fds0} -> {fds}");
        // Mapping regions the dead guests sent are unmapped with their links;
        // what remains is allocator noise.
        assert!(rss < rss0 + 32 * 1024, "RSS grew from {rss0} kB to {rss} kB");
    }
}
