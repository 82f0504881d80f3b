//! The hostile-guest program: guests that break the protocol on purpose, each
//! next to an honest guest of the same host. For every kind: no panic, no
//! hang (every wait here is bounded), a typed error on the hostile link only,
//! the honest link intact throughout, and a new guest can attach afterwards.
//! More hostile cases with their own set-up live beside the link tests
//! (`link_processes.rs`: scribbled rings and host-owned words, a truncated
//! mapping region, a failed link dropped first) and in `isolation.rs`.

use std::time::{Duration, Instant};

use vox_shm::varslot::SlotError;
use vox_shm::{BadSlotRefReason, Link, LinkOptions, ShmLinkRx, ShmLinkRxError, ShmLinkTx};
use vox_shm_testkit::check_payload;
use vox_shm_testkit::harness::{echo_round_trip, finish, hub, mixed, recv, send, spawn, spawn_opts, SMALL_POOL};

const PEER: &str = env!("CARGO_BIN_EXE_shm-test-peer");

struct Honest {
    tx: ShmLinkTx,
    rx: ShmLinkRx,
    seq: u64,
}

impl Honest {
    /// `n` mixed-tier round trips through the echo guest, every byte checked.
    async fn exchange(&mut self, n: u64) {
        for _ in 0..n {
            send(&self.tx, self.seq, mixed(self.seq)).await.unwrap();
            let m = recv(&mut self.rx).await.unwrap().expect("echo");
            check_payload(self.seq, mixed(self.seq), m.as_bytes()).unwrap();
            self.seq += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_guest_fails_only_its_own_link() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 3);
    let (good, good_child) = spawn(PEER, &hub, &["echo"]);
    let (tx, rx) = good.split();
    let mut honest = Honest { tx, rx, seq: 0 };
    honest.exchange(50).await;
    let opts = LinkOptions { mmap_attach_timeout: Duration::from_millis(300), ..LinkOptions::default() };
    // (kind, honest messages it sends first, the error its link must end with)
    let cases: &[(&str, usize, &str)] = &[
        ("garbage", 0, "CorruptFrame"),
        ("huge-len", 0, "CorruptFrame"),
        ("bad-slot", 0, "BadSlotRef"),
        ("unheld-slot", 0, "BadSlotRef"),
        ("bad-mmap", 0, "MmapResolve"),
        ("bad-control", 0, "MmapResolve"),
        ("unsealed-mmap", 0, "MmapResolve"),
        ("truncate-mmap", 1, "MmapResolve"),
        ("watermark-behind", 3, "CorruptRing"),
        ("wrap-stall", 3, "CorruptRing"),
    ];
    for &(kind, before, want) in cases {
        let started = Instant::now();
        let (bad, mut bad_child) = spawn_opts(PEER, &hub, &["hostile", kind], opts);
        let (_bad_tx, mut bad_rx) = bad.split();
        for _ in 0..before {
            recv(&mut bad_rx).await.unwrap_or_else(|e| panic!("{kind}: {e}")).expect("a message");
        }
        let err = recv(&mut bad_rx).await.expect_err("a hostile entry must be an error");
        assert!(format!("{err:?}").starts_with(want), "{kind}: got {err:?}");
        let again = recv(&mut bad_rx).await.expect_err("the failed link stays failed");
        assert!(matches!(again, ShmLinkRxError::Failed(_)), "{kind}: {again:?}");
        assert_eq!(again.root(), &err, "{kind}: the failed link keeps the typed cause");
        if let ShmLinkRxError::BadSlotRef { reason, .. } = &err {
            let typed = match kind {
                "bad-slot" => matches!(reason, BadSlotRefReason::Invalid(SlotError::BadClass { class_idx: 200, .. })),
                _ => matches!(reason, BadSlotRefReason::NotHeldByPeer { state: 0, .. }),
            };
            assert!(typed, "{kind}: {reason:?}");
        }
        // `?` into io::Error keeps the typed error as the source.
        let io: std::io::Error = err.clone().into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidData, "{kind}");
        assert_eq!(io.get_ref().and_then(|e| e.downcast_ref::<ShmLinkRxError>()), Some(&err), "{kind}");
        // The honest guest is unaffected.
        honest.exchange(50).await;
        bad_child.kill().unwrap();
        bad_child.wait().unwrap();
        eprintln!("{kind}: {want} after {:?}", started.elapsed());
    }
    honest.tx.close().await.unwrap();
    assert!(recv(&mut honest.rx).await.unwrap().is_none());
    finish(good_child).await;
    // Every hostile slot was recovered: new guests attach and are served.
    for _ in 0..3 {
        echo_round_trip(PEER, &hub).await;
    }
    for (c, class) in SMALL_POOL.iter().enumerate() {
        assert_eq!(hub.segment().var_pool().class_usage(c).unwrap().free, class.slot_count, "class {c}");
    }
}

/// A guest ringing the doorbell as fast as it can costs the host wake-ups,
/// not correctness or progress: the honest link keeps its pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doorbell_flood_stalls_no_other_link() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 2);
    let (good, good_child) = spawn(PEER, &hub, &["echo"]);
    let (tx, rx) = good.split();
    let mut honest = Honest { tx, rx, seq: 0 };
    let t = Instant::now();
    honest.exchange(2000).await;
    let quiet = t.elapsed();
    let (flood, mut flood_child) = spawn(PEER, &hub, &["hostile", "doorbell-flood"]);
    let (_ftx, mut frx) = flood.split();
    // The flooding link's receiver waits for data that never comes.
    let flood_rx =
        tokio::spawn(async move { tokio::time::timeout(Duration::from_millis(500), frx.recv()).await.is_err() });
    let t = Instant::now();
    honest.exchange(2000).await;
    eprintln!("2000 mixed round trips: {quiet:?} alone, {:?} next to a doorbell flood", t.elapsed());
    assert!(flood_rx.await.unwrap(), "the flood delivered nothing and raised nothing");
    honest.tx.close().await.unwrap();
    assert!(recv(&mut honest.rx).await.unwrap().is_none());
    finish(good_child).await;
    flood_child.kill().unwrap();
    flood_child.wait().unwrap();
}

/// A guest that is stopped (SIGSTOP) holds only its own link: the host's
/// sender to it waits (backpressure, no error), another guest is served, and
/// once continued the stopped guest receives everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_guest_holds_up_only_its_own_link() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 2);
    let (slow, slow_child) = spawn(PEER, &hub, &["sink", "3000", "0"]);
    let pid = slow_child.id() as libc::pid_t;
    // SAFETY: kill has no memory-safety preconditions; `pid` is our child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let (stx, _srx) = slow.split();
    let sender = tokio::spawn(async move {
        for seq in 0..3000u64 {
            send(&stx, seq, mixed(seq)).await.unwrap();
        }
        stx
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!sender.is_finished(), "the ring to a stopped guest fills and the sender waits");
    let (good, good_child) = spawn(PEER, &hub, &["echo"]);
    let (tx, rx) = good.split();
    let mut honest = Honest { tx, rx, seq: 0 };
    honest.exchange(500).await;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let stx = tokio::time::timeout(Duration::from_secs(60), sender).await.expect("resumes").unwrap();
    stx.close().await.unwrap();
    assert!(finish(slow_child).await.contains("received 3000"));
    honest.tx.close().await.unwrap();
    assert!(recv(&mut honest.rx).await.unwrap().is_none());
    finish(good_child).await;
}

/// A busy-polling half never sleeps on the doorbell; it must still see its
/// peer die, even with signals queued in front of the hang-up (a flooding
/// guest killed mid-flood). It used to peek, see the queued signals, and
/// poll for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_polling_half_sees_a_death_behind_queued_signals() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 1);
    let opts = LinkOptions { wait: vox_shm::WaitStrategy::BusyPoll, ..LinkOptions::default() };
    let (flood, mut child) = spawn_opts(PEER, &hub, &["hostile", "doorbell-flood"], opts);
    let (_tx, mut rx) = flood.split();
    tokio::time::sleep(Duration::from_millis(100)).await; // signals pile up
    child.kill().unwrap();
    child.wait().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(matches!(end, Ok(Err(ShmLinkRxError::PeerDead { .. }))), "{end:?}");
}
