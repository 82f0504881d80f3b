//! Cancel safety of the link's async methods, as documented: a `recv` or a
//! `send` dropped before it completes loses no message and sends nothing.
//! Thousands of cancellations at random moments, in every tier.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vox_shm::{create_test_link_pair, Features, Link, Segment, SegmentConfig, SizeClassConfig};

fn payload(seq: u32) -> Vec<u8> {
    // Inline, slot and mapping sizes in turn.
    let len = [24usize, 3000, 70_000][seq as usize % 3];
    let mut v = vec![(seq % 251) as u8; len];
    v[..4].copy_from_slice(&seq.to_le_bytes());
    v
}

/// Ready on its second poll: a select with it cancels the other branch
/// after that branch was polled, and found nothing, at least once.
async fn soon() {
    tokio::task::yield_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_sends_and_receives_lose_nothing() {
    const N: u32 = 3000;
    let classes = [SizeClassConfig { slot_size: 4096, slot_count: 8 }];
    let config = SegmentConfig { bipbuf_capacity: 2048, size_classes: &classes, ..SegmentConfig::default() };
    let segment = Arc::new(Segment::create_anonymous(config, Features::ALL).unwrap());
    let (host, guest) = create_test_link_pair(segment).await.unwrap();
    let (tx, _host_rx) = host.split();
    let (_guest_tx, mut rx) = guest.split();
    let received = Arc::new(AtomicU32::new(0));
    let seen = received.clone();
    let sender = tokio::spawn(async move {
        let mut cancelled = 0u32;
        for seq in 0..N {
            let p = payload(seq);
            // Cancel the send whenever it has to wait (the small ring fills
            // up at once), then send it again.
            loop {
                tokio::select! {
                    biased;
                    r = tx.send(&p) => break r.unwrap(),
                    _ = soon() => cancelled += 1,
                }
            }
            // Now and then let the receiver catch up, then pause, so it waits
            // with nothing to read (however slow it is: under emulation it
            // is the slower side, and would otherwise never wait).
            if seq % 97 == 0 {
                while seen.load(Ordering::Relaxed) <= seq {
                    tokio::time::sleep(Duration::from_micros(50)).await;
                }
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        }
        tx.close().await.unwrap();
        cancelled
    });
    // Bounded: a receiver that stopped making progress would otherwise hang
    // the sender's catch-up loop and this one until CI's own timeout.
    let run = async {
        let mut next = 0u32;
        let mut cancelled = 0u32;
        loop {
            let got = tokio::select! {
                biased;
                r = rx.recv() => Some(r),
                _ = soon() => None,
            };
            match got {
                None => cancelled += 1,
                Some(Ok(Some(m))) => {
                    assert_eq!(m.as_bytes(), &payload(next)[..], "message {next}: every one, once, in order, intact");
                    next += 1;
                    received.store(next, Ordering::Relaxed);
                    // Hold some payloads a little, so senders wait for slots and mapping space.
                    if next % 11 == 0 {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
                Some(Ok(None)) => break,
                Some(Err(e)) => panic!("after {next}: {e}"),
            }
        }
        (next, cancelled, sender.await.unwrap())
    };
    let (next, cancelled, send_cancels) =
        tokio::time::timeout(Duration::from_secs(300), run).await.expect("the run finishes within 300 s");
    assert_eq!(next, N);
    eprintln!("{cancelled} receives and {send_cancels} sends cancelled");
    assert!(cancelled > 100 && send_cancels > 100, "the test cancelled often: {cancelled} / {send_cancels}");
}
