//! A host link and a guest link in one process, over real descriptors.

use std::sync::Arc;
use std::time::Duration;

use vox_shm::host::create_test_link_pair;
use vox_shm::{FileCleanup, Link, LinkTx, LinkTxPermit, Segment, SegmentConfig, SizeClassConfig, WriteSlot};

/// A segment file in `dir` with `guests` guest slots, rings of `ring` bytes
/// and `slots` slots of 4 KiB.
fn small_segment(dir: &std::path::Path, guests: u8, ring: u32, slots: u32) -> Arc<Segment> {
    let classes = [SizeClassConfig { slot_size: 4096, slot_count: slots }];
    let cfg =
        SegmentConfig { max_guests: guests, bipbuf_capacity: ring, size_classes: &classes, ..SegmentConfig::default() };
    Arc::new(Segment::create(&dir.join("s"), cfg, FileCleanup::UnlinkOnDrop).unwrap())
}

async fn send(tx: &impl LinkTx, bytes: &[u8]) {
    let p = tx.reserve().await.unwrap();
    let mut s = p.alloc(bytes.len()).unwrap();
    s.as_mut_slice().copy_from_slice(bytes);
    s.commit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_both_ways_then_close() {
    let dir = tempfile::tempdir().unwrap();
    let seg = small_segment(dir.path(), 2, 4096, 8);
    let (host, guest) = create_test_link_pair(seg.clone()).await.unwrap();
    let (htx, mut hrx) = host.split();
    let (gtx, mut grx) = guest.split();
    for size in [0usize, 5, 256, 257, 4092, 4093, 100_000] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        send(&htx, &data).await;
        let got = tokio::time::timeout(Duration::from_secs(5), grx.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(got.as_bytes(), &data[..], "size {size}");
        send(&gtx, &data).await;
        let got = tokio::time::timeout(Duration::from_secs(5), hrx.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(got.as_bytes(), &data[..], "size {size} back");
    }
    htx.close().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), grx.recv()).await.unwrap().unwrap().is_none());
}

mod negotiation {
    use std::os::fd::AsFd;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use shm_primitives_async::control::{MmapAttachMessage, MmapControlSender};
    use shm_primitives_async::doorbell::Doorbell;
    use vox_shm::framing::{write_mmap_ref, MmapRef};
    use vox_shm::host::{create_test_link_pair_with, HostHub};
    use vox_shm::segment::RingEnd;
    use vox_shm::{
        Features, FileCleanup, Link, LinkOptions, Segment, SegmentConfig, ShmLinkRxError, SizeClassConfig,
        WaitStrategy, WriteSlot,
    };

    fn segment(dir: &std::path::Path) -> Arc<Segment> {
        super::small_segment(dir, 2, 8192, 16)
    }

    /// Sends `n` messages host→guest while the guest receives; returns the
    /// host's and the guest's doorbell signal counts.
    async fn stream(host: LinkOptions, guest: LinkOptions, n: u64) -> (u64, u64, Option<Features>) {
        let dir = tempfile::tempdir().unwrap();
        let (h, g) = create_test_link_pair_with(segment(dir.path()), host, guest).await.unwrap();
        let negotiated = h.negotiated_features();
        let (htx, _hrx) = h.split();
        let (gtx, mut grx) = g.split();
        let receiver = tokio::spawn(async move {
            for i in 0..n {
                let m = grx.recv().await.unwrap().unwrap();
                assert_eq!(m.as_bytes(), &i.to_le_bytes());
            }
            grx
        });
        for i in 0..n {
            let p = htx.reserve().await.unwrap();
            let mut s = p.alloc(8).unwrap();
            s.as_mut_slice().copy_from_slice(&i.to_le_bytes());
            s.commit();
        }
        let grx = tokio::time::timeout(Duration::from_secs(60), receiver).await.unwrap().unwrap();
        let (hs, gs) = (htx.stats(), grx.stats());
        drop(gtx);
        (hs.doorbell_signals, gs.doorbell_signals, negotiated)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wake_on_demand_between_our_peers_makes_no_call_per_message() {
        let busy = LinkOptions { wait: WaitStrategy::BusyPoll, ..LinkOptions::default() };
        let (host_signals, guest_signals, negotiated) = stream(busy, busy, 20_000).await;
        assert_eq!(negotiated, Some(Features::ALL));
        // Neither side ever sleeps, so neither announces it is waiting.
        assert!(host_signals < 20, "host rang {host_signals} times for 20000 messages");
        assert!(guest_signals < 20, "guest rang {guest_signals} times");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_legacy_peer_is_rung_on_every_commit_and_release() {
        let ours = LinkOptions::default();
        let legacy = LinkOptions { features: Features::NONE, ..LinkOptions::default() };
        let (host_signals, guest_signals, negotiated) = stream(ours, legacy, 5_000).await;
        assert_eq!(negotiated, Some(Features::NONE));
        assert!(host_signals >= 5_000, "one signal per commit expected, got {host_signals}");
        assert!(guest_signals >= 5_000, "one signal per release expected, got {guest_signals}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_sender_ends_the_peers_stream() {
        let dir = tempfile::tempdir().unwrap();
        let (h, g) = create_test_link_pair_with(segment(dir.path()), LinkOptions::default(), LinkOptions::default())
            .await
            .unwrap();
        let (htx, _hrx) = h.split();
        let (_gtx, mut grx) = g.split();
        let p = htx.reserve().await.unwrap();
        let mut s = p.alloc(3).unwrap();
        s.as_mut_slice().copy_from_slice(b"end");
        s.commit();
        drop(htx);
        assert_eq!(grx.recv().await.unwrap().unwrap().as_bytes(), b"end");
        assert!(grx.recv().await.unwrap().is_none());
    }

    /// B2: a mapping reference whose announcement comes late is waited for
    /// (asynchronously, bounded); one that never comes is a typed error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn late_mapping_announcements_are_awaited_then_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path());
        let (host, ticket) = HostHub::new(seg.clone()).prepare_peer().unwrap().into_parts();
        // The bound is far above the 150 ms delay so a loaded machine cannot
        // turn "late" into "never".
        let opts = LinkOptions { mmap_attach_timeout: Duration::from_secs(2), ..LinkOptions::default() };
        let (_htx, mut hrx) = host.into_link_with(opts).unwrap().split();
        // Play a guest by hand: claim the slot, write mapping refs directly.
        let id = ticket.peer_id;
        seg.peer_entry(id).unwrap().set_guest_features(Features::ALL);
        seg.claim_peer(id).unwrap();
        let claim = seg.claim_ring(id, RingEnd::GuestTx).unwrap();
        let mut tx = claim.producer().unwrap();
        let bell = Doorbell::new(ticket.doorbell).unwrap();
        let control = MmapControlSender::new(ticket.mmap_tx_fd).unwrap();
        let region = shm_primitives::MmapRegion::create_anonymous("late", 4096).unwrap();
        let p = region.region().range(100, 5).unwrap();
        // SAFETY: 5 bytes inside our own fresh mapping.
        unsafe { std::ptr::copy_nonoverlapping(b"late!".as_ptr(), p.as_ptr(), 5) };
        for (id, off) in [(3u32, 100u64), (4, 0)] {
            tx.try_grant(32).unwrap().unwrap();
            let m = MmapRef { map_id: id, map_generation: 0, map_offset: off, payload_len: 5 };
            write_mmap_ref(tx.granted_mut().unwrap(), &m);
            tx.commit(32).unwrap();
        }
        bell.signal();
        let announce = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let msg = MmapAttachMessage { map_id: 3, map_generation: 0, mapping_length: 4096 };
            control.send(region.as_fd(), &msg).await.unwrap();
            region
        });
        let started = Instant::now();
        let m = hrx.recv().await.unwrap().unwrap();
        assert_eq!(m.as_bytes(), b"late!");
        assert!(started.elapsed() >= Duration::from_millis(100), "it did wait for the announcement");
        let _region = announce.await.unwrap();
        let err = hrx.recv().await.unwrap_err();
        assert!(matches!(err, ShmLinkRxError::MmapResolve { .. }), "{err:?}");
    }

    /// With a receiver that reports releases, mapping regions are reused and
    /// far more than the budget flows through; with one that cannot (0.3.1),
    /// the sender stops at the legacy bound with a typed error instead of
    /// growing without limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mapping_budgets_bound_what_a_receiver_can_pin() {
        let big = 1 << 20;
        for (guest_features, expect_limit) in [(Features::ALL, false), (Features::NONE, true)] {
            let dir = tempfile::tempdir().unwrap();
            let host = LinkOptions { mmap_budget: 4 << 20, mmap_budget_legacy: 8 << 20, ..LinkOptions::default() };
            let guest = LinkOptions { features: guest_features, ..LinkOptions::default() };
            // Largest payload 2 MiB, so the budgets are not raised past what is
            // configured (they never go below two of the largest regions).
            let classes = [SizeClassConfig { slot_size: 4096, slot_count: 16 }];
            let cfg = SegmentConfig { max_payload_size: 2 << 20, size_classes: &classes, ..SegmentConfig::default() };
            let seg = Arc::new(Segment::create(&dir.path().join("s"), cfg, FileCleanup::UnlinkOnDrop).unwrap());
            let (h, g) = create_test_link_pair_with(seg, host, guest).await.unwrap();
            let (htx, _hrx) = h.split();
            let (_gtx, mut grx) = g.split();
            let receiver = tokio::spawn(async move {
                let mut n = 0u32;
                while let Ok(Some(m)) = grx.recv().await {
                    assert_eq!(m.as_bytes().len(), big);
                    n += 1;
                }
                n
            });
            let mut sent = 0u32;
            let mut limit = None;
            for _ in 0..40 {
                let p = htx.reserve().await.unwrap();
                match p.alloc(big) {
                    Ok(mut s) => {
                        s.as_mut_slice()[0] = 1;
                        s.commit();
                        sent += 1;
                    }
                    Err(e) => {
                        limit = Some(e.kind());
                        break;
                    }
                }
            }
            if expect_limit {
                assert_eq!(limit, Some(std::io::ErrorKind::OutOfMemory), "legacy bound reached");
                assert!((6..=8).contains(&sent), "about 8 MiB of 1 MiB regions: {sent}");
            } else {
                assert_eq!((limit, sent), (None, 40), "40 MiB through a 4 MiB budget by reuse");
                assert!(htx.stats().mmap_regions_reused > 0);
            }
            drop(htx);
            assert_eq!(tokio::time::timeout(Duration::from_secs(30), receiver).await.unwrap().unwrap(), sent);
        }
    }
    /// A spent mapping budget is backpressure, not an error: `reserve` waits
    /// (and the stats say the budget, not the ring, is why) until the
    /// receiver drops a large message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spent_mapping_budget_makes_reserve_wait() {
        let big = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let host = LinkOptions { mmap_budget: 4 << 20, ..LinkOptions::default() };
        let classes = [SizeClassConfig { slot_size: 4096, slot_count: 16 }];
        let cfg = SegmentConfig { max_payload_size: 2 << 20, size_classes: &classes, ..SegmentConfig::default() };
        let seg = Arc::new(Segment::create(&dir.path().join("s"), cfg, FileCleanup::UnlinkOnDrop).unwrap());
        let (h, g) = create_test_link_pair_with(seg, host, LinkOptions::default()).await.unwrap();
        let (htx, _hrx) = h.split();
        let (_gtx, mut grx) = g.split();
        // Nobody receives yet, so every region stays pinned.
        let mut sent = 0;
        let blocked = loop {
            match tokio::time::timeout(Duration::from_millis(200), htx.reserve()).await {
                Ok(p) => {
                    let mut s = p.unwrap().alloc(big).unwrap();
                    s.as_mut_slice()[0] = 1;
                    s.commit();
                    sent += 1;
                    assert!(sent <= 4, "a 4 MiB budget holds at most four 1 MiB regions");
                }
                Err(_) => break htx.stats(),
            }
        };
        assert!(sent >= 1, "the budget admits at least one message");
        assert!(blocked.mmap_budget_exhausted > 0, "{blocked:?}");
        assert_eq!(blocked.ring_exhausted, 0, "the ring had room: {blocked:?}");
        // Receiving and dropping one message frees its region; reserve goes on.
        drop(grx.recv().await.unwrap().unwrap());
        let p = tokio::time::timeout(Duration::from_secs(10), htx.reserve()).await;
        assert!(p.expect("a released region must wake the sender").unwrap().alloc(big).is_ok());
    }
}

/// Releases are published in batches between our peers; a receiver that runs
/// out of messages must publish everything before it sleeps, or a sender can
/// wait forever for space that is already free (a stall found by stress).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_receiver_has_published_every_release() {
    let dir = tempfile::tempdir().unwrap();
    let seg = small_segment(dir.path(), 1, 4096, 8);
    let (host, guest) = create_test_link_pair(seg.clone()).await.unwrap();
    let (htx, _hrx) = host.split();
    let (_gtx, mut grx) = guest.split();
    for n in [1usize, 3, 7] {
        for _ in 0..n {
            let mut s = htx.reserve().await.unwrap().alloc(40).unwrap();
            s.as_mut_slice().fill(1);
            s.commit();
        }
        for _ in 0..n {
            grx.recv().await.unwrap().unwrap();
        }
        // Nothing left: this receive parks (and times out).
        assert!(tokio::time::timeout(Duration::from_millis(100), grx.recv()).await.is_err());
        let (w, _, r) = seg.h2g_bipbuf(vox_shm::PeerId::new(1).unwrap()).unwrap().positions();
        assert_eq!(r, w, "after {n} messages the receiver slept with unpublished releases");
    }
}

/// A link half that never has to wait still gives its thread back (tokio's
/// cooperative budget): on a single-threaded runtime, another task runs while
/// thousands of messages are sent, and again while they are received.
#[tokio::test(flavor = "current_thread")]
async fn a_busy_link_does_not_starve_other_tasks_on_its_thread() {
    const N: u64 = 4000;
    let dir = tempfile::tempdir().unwrap();
    // 4000 entries of 16 bytes fit the ring, so neither loop ever waits.
    let seg = small_segment(dir.path(), 1, 256 * 1024, 8);
    let (host, guest) = create_test_link_pair(seg).await.unwrap();
    let (htx, _hrx) = host.split();
    let (_gtx, mut grx) = guest.split();
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let ticks_now = || ticks.load(std::sync::atomic::Ordering::Relaxed);
    let before = ticks_now();
    for i in 0..N {
        send(&htx, &i.to_le_bytes()).await;
    }
    let after_send = ticks_now();
    assert!(after_send > before, "the sending loop never let the other task run");
    for i in 0..N {
        let m = tokio::time::timeout(Duration::from_secs(5), grx.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(m.as_bytes(), &i.to_le_bytes());
    }
    assert!(ticks_now() > after_send, "the receiving loop never let the other task run");
    ticker.abort();
}

/// A link pair whose guest polls for 3 s before it sleeps (the directory
/// holds the segment file).
async fn pair_with_a_spinning_guest() -> (tempfile::TempDir, vox_shm::ShmLink, vox_shm::ShmLink) {
    use vox_shm::{LinkOptions, WaitStrategy};
    let dir = tempfile::tempdir().unwrap();
    let seg = small_segment(dir.path(), 1, 4096, 8);
    let spin = LinkOptions { wait: WaitStrategy::Spin { budget: Duration::from_secs(3) }, ..LinkOptions::default() };
    let (host, guest) = vox_shm::host::create_test_link_pair_with(seg, LinkOptions::default(), spin).await.unwrap();
    (dir, host, guest)
}

/// A receiver spinning on an empty ring (`Spin` with a long budget) keeps
/// giving its thread to other tasks while it waits.
#[tokio::test(flavor = "current_thread")]
async fn a_spinning_receiver_lets_other_tasks_run() {
    let (_dir, host, guest) = pair_with_a_spinning_guest().await;
    let (htx, _hrx) = host.split();
    let (_gtx, mut grx) = guest.split();
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            // Sends once it has run a few times: only a receiver that yields
            // while spinning lets this happen.
            for _ in 0..10 {
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            send(&htx, b"after ten ticks").await;
            htx
        })
    };
    // A receiver that never yielded would spin its whole 3 s budget, then
    // sleep on the doorbell, and only then let the sender run.
    let m = tokio::time::timeout(Duration::from_secs(30), grx.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(m.as_bytes(), b"after ten ticks");
    assert_eq!(ticks.load(std::sync::atomic::Ordering::Relaxed), 10);
    assert_eq!(grx.stats().recv_waits, 0, "the receiver had to sleep before the sender could run");
    drop(ticker.await.unwrap());
}

/// A spinning receiver in a spawned task leaves the runtime's driver running:
/// a timer fires and a socket's data arrives while it polls, and the task
/// they wake sends what it waits for.
#[tokio::test(flavor = "current_thread")]
async fn a_spinning_receiver_lets_timers_and_sockets_make_progress() {
    use tokio::io::AsyncReadExt;
    let (_dir, host, guest) = pair_with_a_spinning_guest().await;
    let (htx, _hrx) = host.split();
    let (_gtx, mut grx) = guest.split();
    let receiver = tokio::spawn(async move {
        let m = grx.recv().await.unwrap().unwrap().as_bytes().to_vec();
        (m, grx.stats().recv_waits)
    });
    tokio::task::yield_now().await; // the receiver starts polling
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        std::io::Write::write_all(&mut &theirs, b"go").unwrap();
    });
    ours.set_nonblocking(true).unwrap();
    let mut ours = tokio::net::UnixStream::from_std(ours).unwrap();
    let mut go = [0u8; 2];
    ours.read_exact(&mut go).await.unwrap();
    writer.join().unwrap();
    // A receiver that starved the driver would have polled its whole 3 s
    // budget before the timer or the socket could wake us.
    assert!(started.elapsed() < Duration::from_secs(2), "the timer and the socket waited {:?}", started.elapsed());
    send(&htx, &go).await;
    let (m, waits) = tokio::time::timeout(Duration::from_secs(30), receiver).await.unwrap().unwrap();
    assert_eq!(m, b"go");
    assert_eq!(waits, 0, "the receiver slept");
}
