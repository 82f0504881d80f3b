//! A host and real guest processes exchanging messages through a segment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use vox_shm::host::spawn_guest_with;
use vox_shm::{Link, LinkOptions, ShmLinkRxError, WriteSlot};
use vox_shm_testkit::harness::{echo_round_trip, finish, hub, mixed, recv, send, spawn, LIMIT, SMALL_POOL};
use vox_shm_testkit::{check_payload, fill_large, regions_in_default_budget};

const PEER: &str = env!("CARGO_BIN_EXE_shm-test-peer");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong_every_tier_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 64 * 1024, &SMALL_POOL, 2);
    let (link, child) = spawn(PEER, &hub, &["echo"]);
    let (tx, mut rx) = link.split();
    // Host → guest → host: inline, slot, mapping tiers.
    for (seq, len) in [5usize, 0, 256, 257, 3000, 8188, 8189, 200_000, 1 << 20].into_iter().enumerate() {
        send(&tx, seq as u64, len).await.unwrap();
        let m = recv(&mut rx).await.unwrap().unwrap();
        check_payload(seq as u64, len, m.as_bytes()).unwrap();
    }
    let stats = tx.stats();
    assert!(stats.inline_sends >= 3 && stats.slot_ref_sends >= 2 && stats.mmap_ref_sends >= 3, "{stats:?}");
    assert!(stats.inline_recvs >= 3 && stats.slot_ref_recvs >= 2 && stats.mmap_ref_recvs >= 3, "{stats:?}");
    tx.close().await.unwrap();
    assert!(recv(&mut rx).await.unwrap().is_none(), "the guest closes after our close");
    finish(child).await;

    // Guest → host, every tier, then the guest closes.
    let (link, child) = spawn(PEER, &hub, &["send", "40"]);
    let (tx, mut rx) = link.split();
    for seq in 0..40 {
        let m = recv(&mut rx).await.unwrap().expect("message");
        check_payload(seq, mixed(seq), m.as_bytes()).unwrap();
    }
    assert!(recv(&mut rx).await.unwrap().is_none(), "guest closed after 40");
    let s = rx.stats();
    assert!(s.inline_recvs > 0 && s.slot_ref_recvs > 0 && s.mmap_ref_recvs > 0, "{s:?}");
    tx.close().await.unwrap();
    finish(child).await;
}

/// Streams `n` mixed-size messages each way at once with a `duplex` guest
/// through a 4 KiB ring and a small pool, checking every message; returns the
/// host's sending statistics.
async fn full_duplex(n: u64) -> vox_shm::ShmTransportStatsSnapshot {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 1);
    let (link, child) = spawn(PEER, &hub, &["duplex", &n.to_string()]);
    let (tx, mut rx) = link.split();
    let sender = tokio::spawn(async move {
        for seq in 0..n {
            send(&tx, seq, mixed(seq)).await.unwrap();
        }
        tx
    });
    for seq in 0..n {
        let m = recv(&mut rx).await.unwrap().unwrap_or_else(|| panic!("end of stream at {seq}"));
        check_payload(seq, mixed(seq), m.as_bytes()).unwrap();
    }
    let tx = tokio::time::timeout(LIMIT, sender).await.unwrap().unwrap();
    let stats = tx.stats();
    tx.close().await.unwrap();
    assert!(recv(&mut rx).await.unwrap().is_none());
    assert!(finish(child).await.contains(&format!("received {n}")));
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_duplex_200k_mixed_messages_through_a_4k_ring() {
    let stats = full_duplex(200_000).await;
    assert!(stats.ring_exhausted > 0, "the 4 KiB ring must have filled: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_makes_the_sender_wait_and_nothing_is_lost() {
    const N: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 1);
    let (link, child) = spawn(PEER, &hub, &["sink", &N.to_string(), "300"]);
    let (tx, _rx) = link.split();
    for seq in 0..N {
        send(&tx, seq, mixed(seq)).await.unwrap();
    }
    let stats = tx.stats();
    tx.close().await.unwrap();
    assert!(finish(child).await.contains(&format!("received {N}")));
    assert!(stats.ring_exhausted > 0, "the sender must have waited for ring space: {stats:?}");
    assert!(stats.varslot_exhausted > 0, "the small pool must have run out: {stats:?}");
    assert_eq!(stats.slot_fallbacks, stats.varslot_exhausted, "exhaustion falls back, never fails");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_delivers_everything_committed_then_reports_death() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 1);
    let (link, mut child) = spawn(PEER, &hub, &["send-forever", "100"]);
    let (tx, mut rx) = link.split();
    let mut next = 0u64;
    while next < 5000 {
        let m = recv(&mut rx).await.unwrap().unwrap();
        check_payload(next, 100, m.as_bytes()).unwrap();
        next += 1;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let end = loop {
        match recv(&mut rx).await {
            Ok(Some(m)) => {
                check_payload(next, 100, m.as_bytes()).unwrap();
                next += 1;
            }
            other => break other,
        }
    };
    assert!(matches!(end, Err(ShmLinkRxError::PeerDead { peer: 1, host: false })), "got {end:?} after {next} messages");
    assert!(tx.reserve().await.is_err(), "sending to a dead peer fails");
    drop((tx, rx));
    // The host recovered the slot: the same peer id is free again, and every
    // slot the guest held is back in the pool.
    let seg = hub.segment().clone();
    for (c, class) in SMALL_POOL.iter().enumerate() {
        let u = seg.var_pool().class_usage(c).unwrap();
        assert_eq!(u.free, class.slot_count, "class {c}: {u:?}");
    }
    let again = hub.prepare_peer().unwrap();
    assert_eq!(again.peer_id().get(), 1);
}

/// The guest announces mapping regions and dies before the host reads them;
/// the host then announces a region of its own to the dead guest. On a
/// datagram control pair that send purged the guest's announcements and its
/// mapping-tier messages could not be resolved (defect: lost after kill -9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_announcing_to_a_dead_guest_still_delivers_the_guests_mapping_messages() {
    const N: u64 = 40; // four 20 kB mapping-tier messages among them
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 1 << 16, &SMALL_POOL, 1);
    let (link, child) = spawn(PEER, &hub, &["send-then-die", &N.to_string()]);
    let (tx, mut rx) = link.split();
    let permit = tx.reserve().await.unwrap(); // taken while the guest lives
    let out = tokio::task::spawn_blocking(move || vox_shm_testkit::wait_bounded(child, LIMIT)).await.unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "the guest killed itself: {out:?}");
    // A new mapping region: announced on the control channel to a dead peer.
    let Err(err) = permit.alloc(100_000) else { panic!("alloc to a dead peer succeeded") };
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err:?}");
    for seq in 0..N {
        let m = recv(&mut rx).await.unwrap_or_else(|e| panic!("message {seq}: {e}"));
        check_payload(seq, mixed(seq), m.expect("message").as_bytes()).unwrap();
    }
    assert!(matches!(recv(&mut rx).await, Err(ShmLinkRxError::PeerDead { peer: 1, host: false })));
}

/// A host that sends large messages before its guest has attached (so
/// whether the guest reports releases is not known yet) keeps to the mapping
/// budget: it waits for the guest instead of pinning a new region per message
/// under the 0.3.1 budget, which a slow-starting guest then never got back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_sending_before_its_guest_attaches_keeps_to_the_mapping_budget() {
    const N: u64 = 200;
    const SIZE: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 1 << 16, &SMALL_POOL, 1);
    let mut cmd = Command::new(PEER);
    cmd.args(["sink-large", &N.to_string(), &SIZE.to_string()]).env("SHM_TEST_ATTACH_DELAY_MS", "500");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let (link, child) = spawn_guest_with(&hub, cmd, LinkOptions::default()).unwrap();
    let (tx, _rx) = link.split();
    for seq in 0..N {
        let p = tx.reserve().await.unwrap();
        let mut s = p.alloc(SIZE).unwrap();
        fill_large(seq, s.as_mut_slice());
        s.commit();
    }
    let stats = tx.stats();
    tx.close().await.unwrap();
    assert!(finish(child).await.contains(&format!("received {N}")));
    let most = regions_in_default_budget(SIZE);
    assert!(stats.mmap_regions_created <= most, "at most {most} regions: {stats:?}");
    assert!(stats.mmap_budget_exhausted > 0, "the sender waited for the guest: {stats:?}");
}

/// A guest that cannot be trusted with a mapping: a file nobody can seal is
/// read by copy (so truncating it later is a typed error, not SIGBUS in the
/// host), and a peer that claims our features must send sealed regions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_truncating_its_mapping_region_cannot_fault_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 2);
    let (bad, mut child) = spawn(PEER, &hub, &["hostile", "truncate-mmap"]);
    let (_tx, mut rx) = bad.split();
    let first = recv(&mut rx).await.unwrap().expect("first payload");
    assert_eq!(first.as_bytes(), &[7u8; 100][..], "an unsealed region is read, by copy");
    let err = recv(&mut rx).await.expect_err("the truncated region");
    assert!(
        matches!(
            err,
            ShmLinkRxError::MmapResolve { error: vox_shm::mmap_registry::MmapResolveError::Unreadable { .. }, .. }
        ),
        "{err:?}"
    );
    drop(first); // still readable after the truncation: it is our copy
    child.kill().unwrap();
    child.wait().unwrap();
    let (bad, mut child) = spawn(PEER, &hub, &["hostile", "unsealed-mmap"]);
    let (_tx, mut rx) = bad.split();
    let err = recv(&mut rx).await.expect_err("an unsealed region from a peer with our features");
    assert!(
        matches!(
            err,
            ShmLinkRxError::MmapResolve { error: vox_shm::mmap_registry::MmapResolveError::BadRegion { .. }, .. }
        ),
        "{err:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A guest that rewrites its ring into a state no honest producer makes gets
/// a typed CorruptRing on its own link, instead of a receiver spinning for
/// ever; the host still serves another guest, and a new one attaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scribbled_ring_is_a_typed_error_not_a_livelock() {
    use shm_primitives::bipbuf::RingError;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 2);
    for (kind, want_stall) in [("watermark-behind", false), ("wrap-stall", true)] {
        let (bad, mut child) = spawn(PEER, &hub, &["hostile", kind]);
        let (_tx, mut rx) = bad.split();
        for _ in 0..3 {
            assert_eq!(recv(&mut rx).await.unwrap().unwrap().as_bytes().len(), 100, "{kind}");
        }
        let started = Instant::now();
        let err = recv(&mut rx).await.expect_err("a scribbled ring");
        let ShmLinkRxError::CorruptRing { peer: _, error } = &err else { panic!("{kind}: {err:?}") };
        match (want_stall, error) {
            (false, RingError::WatermarkBehindRead { watermark: 8, read: 324 }) => {}
            (true, RingError::WrapNeverCompleted { watermark: 324 }) => {
                assert!(started.elapsed() < Duration::from_secs(5), "bounded: {:?}", started.elapsed())
            }
            _ => panic!("{kind}: {err:?}"),
        }
        child.kill().unwrap();
        child.wait().unwrap();
        drop((_tx, rx));
        // Recovered: an honest guest attaches and echoes.
        echo_round_trip(PEER, &hub).await;
    }
}

/// A guest killed (`kill -9`) while its ring holds a half-published wrap is
/// reported dead as soon as its doorbell shows the hang-up, not as a corrupt
/// ring once the wrap has stalled for `WRAP_STALL_LIMIT` (1 s): the receiver
/// looking at the unfinished wrap still drains the doorbell, once per polling
/// slice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_killed_with_a_half_published_wrap_is_dead_not_corrupt() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 1);
    let (bad, mut child) = spawn(PEER, &hub, &["hostile", "wrap-stall"]);
    let (_tx, mut rx) = bad.split();
    for _ in 0..3 {
        assert_eq!(recv(&mut rx).await.unwrap().unwrap().as_bytes().len(), 100);
    }
    // The guest says when the wrap is half-published.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let scribbled = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        while out.read_line(&mut line).unwrap() > 0 && !line.contains("scribbled") {
            line.clear();
        }
        line
    });
    let line = tokio::time::timeout(LIMIT, scribbled).await.expect("guest scribbles in time").unwrap();
    assert!(line.contains("scribbled wrap-stall"), "{line:?}");
    let receiving = tokio::spawn(async move { (rx.recv().await.map(|m| m.is_some()), rx) });
    tokio::time::sleep(Duration::from_millis(50)).await; // the receiver is at the wrap
    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    let (got, _rx) = tokio::time::timeout(LIMIT, receiving).await.expect("receive ends").unwrap();
    let err = got.expect_err("the guest died");
    assert!(matches!(err, ShmLinkRxError::PeerDead { host: false, .. }), "{err:?} after {:?}", killed.elapsed());
}

/// The host drops a failed link while its guest still lives; the guest dies
/// later. Recovery must not depend on that order: the slot comes back either
/// way, round after round, in a hub with room for one guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_link_dropped_before_its_guest_dies_is_still_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 1);
    let seg = hub.segment().clone();
    for round in 0..6 {
        let (bad, mut child) = spawn(PEER, &hub, &["hostile", "garbage"]);
        let id = bad.peer_id();
        let (tx, mut rx) = bad.split();
        assert!(recv(&mut rx).await.is_err(), "round {round}: the garbage entry fails the link");
        drop((tx, rx)); // the guest still lives
        assert_eq!(seg.peer_entry(id).unwrap().state(), shm_primitives::PeerState::Attached);
        child.kill().unwrap();
        child.wait().unwrap();
        let t = Instant::now();
        while seg.peer_entry(id).unwrap().state() != shm_primitives::PeerState::Empty {
            assert!(t.elapsed() < Duration::from_secs(5), "round {round}: the slot was never recovered");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    echo_round_trip(PEER, &hub).await;
    for (c, class) in SMALL_POOL.iter().enumerate() {
        assert_eq!(seg.var_pool().class_usage(c).unwrap().free, class.slot_count, "class {c}");
    }
}

/// A guest that rewrites its rings' stored capacity and its entry's ring
/// offset does not lock later guests out (they attach while it lives), and
/// recovery restores every host-owned word from the host's own layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_scribbling_host_owned_words_locks_nobody_out() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 2);
    let (bad, mut bad_child) = spawn(PEER, &hub, &["hostile", "scribble-header"]);
    let seg = hub.segment().clone();
    let id = bad.peer_id();
    let scribbled = Instant::now();
    while seg.peer_entry(id).unwrap().ring_offset() != 12345 {
        assert!(scribbled.elapsed() < LIMIT, "the guest never scribbled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    echo_round_trip(PEER, &hub).await; // attaches while the scribbler lives
    bad_child.kill().unwrap();
    bad_child.wait().unwrap();
    drop(bad); // recovery
    let e = seg.peer_entry(id).unwrap();
    assert_eq!(e.state(), shm_primitives::PeerState::Empty);
    assert_eq!(e.ring_offset(), seg.layout().ring_offset(id), "ring offset restored");
    for ring in [seg.g2h_bipbuf(id).unwrap(), seg.h2g_bipbuf(id).unwrap()] {
        assert_eq!(ring.header().stored_capacity(), seg.bipbuf_capacity(), "capacity restored");
    }
    echo_round_trip(PEER, &hub).await;
    echo_round_trip(PEER, &hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_blocked_in_reserve_wakes_within_100ms_of_the_kill() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 1);
    let (link, mut child) = spawn(PEER, &hub, &["idle"]);
    let (tx, _rx) = link.split();
    let sent = Arc::new(AtomicU64::new(0));
    let sent2 = sent.clone();
    let sender = tokio::spawn(async move {
        let mut seq = 0;
        loop {
            if let Err(e) = send(&tx, seq, 64).await {
                return (e, tx.stats());
            }
            seq += 1;
            sent2.store(seq, Ordering::Relaxed);
        }
    });
    // Wait until the ring is full and the sender has been stuck for a while.
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    assert!(!sender.is_finished());
    let killed = Instant::now();
    child.kill().unwrap();
    let (err, stats) = tokio::time::timeout(Duration::from_secs(10), sender).await.unwrap().unwrap();
    let woke_after = killed.elapsed();
    child.wait().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    assert!(stats.reserve_waits > 0, "the sender was parked in reserve: {stats:?}");
    eprintln!("blocked sender woke {woke_after:?} after SIGKILL");
    assert!(woke_after < Duration::from_millis(100), "woke after {woke_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_close_in_either_direction_ends_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 2);
    // Host closes: the guest gets 50 messages, then end of stream (it checks).
    let (link, child) = spawn(PEER, &hub, &["sink", "50", "0"]);
    let (tx, mut rx) = link.split();
    for seq in 0..50 {
        send(&tx, seq, mixed(seq)).await.unwrap();
    }
    tx.close().await.unwrap();
    assert!(finish(child).await.contains("received 50"));
    assert!(recv(&mut rx).await.unwrap().is_none(), "guest's exit closed its side");
    // Guest closes: we get 50 messages, then end of stream.
    let (link, child) = spawn(PEER, &hub, &["send", "50"]);
    let (tx, mut rx) = link.split();
    for seq in 0..50 {
        check_payload(seq, mixed(seq), recv(&mut rx).await.unwrap().unwrap().as_bytes()).unwrap();
    }
    assert!(recv(&mut rx).await.unwrap().is_none());
    assert!(recv(&mut rx).await.unwrap().is_none(), "end of stream is sticky");
    tx.close().await.unwrap();
    finish(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_walks_in_over_bootstrap_with_nothing_inherited() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 2);
    let sock = dir.path().join("control.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    // A plain spawn: no descriptor and no environment variable is passed.
    let child = std::process::Command::new(PEER)
        .args(["bootstrap", sock.to_str().unwrap(), "sid-42"])
        .env_remove("SHM_MMAP_TX_FD")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let link = tokio::time::timeout(
        LIMIT,
        vox_shm::bootstrap::serve_one(&listener, &hub, |sid| sid == b"sid-42", vox_shm::LinkOptions::default()),
    )
    .await
    .unwrap()
    .unwrap();
    let (tx, mut rx) = link.split();
    for (seq, len) in [7usize, 3000, 9000, 200_000].into_iter().enumerate() {
        send(&tx, seq as u64, len).await.unwrap();
        check_payload(seq as u64, len, recv(&mut rx).await.unwrap().unwrap().as_bytes()).unwrap();
    }
    tx.close().await.unwrap();
    assert!(recv(&mut rx).await.unwrap().is_none());
    let out = finish(child).await;
    let inherited = out.lines().find(|l| l.starts_with("inherited:")).expect("the peer lists its descriptors");
    for ours in ["socket:", "seg.shm", "memfd:"] {
        assert!(!inherited.contains(ours), "the guest inherited one of our descriptors: {inherited}");
    }
}

/// B7: host-side descriptors are close-on-exec and the guest's ends are
/// closed in the host right after the spawn, so an unrelated child started
/// later holds none of them and cannot keep a dead guest looking alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_child_inherits_nothing_and_cannot_mask_a_death() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 2);
    let (link, mut guest) = spawn(PEER, &hub, &["idle"]);
    let (_tx, mut rx) = link.split();
    let mut bystander = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    // Look once it runs `sleep`: under emulation (qemu-user turns the vfork
    // of posix_spawn into a fork) spawn can return before the exec.
    let started = std::time::Instant::now();
    while std::fs::read_link(format!("/proc/{}/exe", bystander.id())).map_or(true, |e| !e.ends_with("sleep")) {
        assert!(started.elapsed() < Duration::from_secs(10), "the bystander never ran sleep");
        std::thread::sleep(Duration::from_millis(5));
    }
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", bystander.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    for f in &fds {
        assert!(
            !f.starts_with("socket:") && !f.contains("memfd:") && !f.contains("seg.shm"),
            "a later child inherited {f} (all: {fds:?})"
        );
    }
    guest.kill().unwrap();
    guest.wait().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), vox_shm::LinkRx::recv(&mut rx))
        .await
        .expect("death seen while the bystander lives");
    assert!(matches!(end, Err(ShmLinkRxError::PeerDead { .. })), "{end:?}");
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

/// A guest killed before it ever attached never announced a close: the host
/// reports a death, not a clean end of stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_killed_before_attaching_is_a_death_not_an_end() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 1);
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "kill -9 $$"]);
    let (link, mut guest) = vox_shm::host::spawn_guest_with(&hub, cmd, LinkOptions::default()).unwrap();
    let (_tx, mut rx) = link.split();
    guest.wait().unwrap();
    let end = recv(&mut rx).await;
    assert!(matches!(end, Err(ShmLinkRxError::PeerDead { .. })), "{end:?}");
}

/// Two host/guest pairs streaming full duplex at once on two cores: the
/// contention that exposed two lost-wake-up bugs (a receiver sleeping on
/// unpublished releases; a signal drained by the other half of a link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_duplex_pairs_under_contention_never_stall() {
    let (a, b) = tokio::join!(tokio::spawn(full_duplex(60_000)), tokio::spawn(full_duplex(60_000)));
    a.unwrap();
    b.unwrap();
}
