//! vox calls across real processes over shared memory: two spawned guests
//! called concurrently with small and large arguments (inline, slot and
//! mapping tiers), one guest killed with calls pending (they fail, the
//! other guest keeps serving), and a graceful end.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vox_shm::{spawn_guest_async, Features, HostHub, LinkOptions, Segment, SegmentConfig, SizeClassConfig};
use vox_shm_vox::service::EchoClient;
use vox_shm_vox::VoxLink;

const GUEST: &str = env!("CARGO_BIN_EXE_vox-shm-vox-echo");

async fn connect(hub: &HostHub) -> (EchoClient, tokio::process::Child) {
    let (link, child) = spawn_guest_async(hub, Command::new(GUEST), LinkOptions::default()).unwrap();
    let client =
        vox::initiator_on(VoxLink::from(link), vox::TransportMode::Bare).establish::<EchoClient>().await.unwrap();
    (client, child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guests_many_calls_large_arguments_and_one_killed() {
    let classes =
        [SizeClassConfig { slot_size: 4096, slot_count: 64 }, SizeClassConfig { slot_size: 128 << 10, slot_count: 16 }];
    let config =
        SegmentConfig { max_guests: 2, max_payload_size: 4 << 20, size_classes: &classes, ..SegmentConfig::default() };
    let hub = HostHub::new(Arc::new(Segment::create_anonymous(config, Features::ALL).unwrap()));
    let (a, mut a_child) = connect(&hub).await;
    let (b, mut b_child) = connect(&hub).await;
    tokio::time::timeout(Duration::from_secs(60), async {
        // Many concurrent calls on both guests.
        let mut calls = Vec::new();
        for i in 0..200u64 {
            let (a, b) = (a.clone(), b.clone());
            calls.push(tokio::spawn(async move {
                assert_eq!(a.echo(i).await.unwrap(), i);
                assert_eq!(b.echo(i + 1000).await.unwrap(), i + 1000);
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
        // Large arguments and results: slot tier (64 KiB) and mapping tier (1 MiB).
        for len in [100usize, 64 << 10, 1 << 20] {
            let blob: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut want = blob.clone();
            want.reverse();
            assert_eq!(a.reverse(blob.clone()).await.unwrap(), want, "{len} B through guest a");
            assert_eq!(b.reverse(blob).await.unwrap(), want, "{len} B through guest b");
        }
        // Guest a dies with calls pending: they fail; b keeps serving.
        let pending: Vec<_> = (0..8)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move { a.slow(10_000).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        a_child.start_kill().unwrap();
        a_child.wait().await.unwrap();
        for p in pending {
            assert!(p.await.unwrap().is_err(), "a call pending on a killed guest fails");
        }
        assert_eq!(b.echo(7).await.unwrap(), 7, "the other guest is unaffected");
        assert_eq!(b.slow(1).await.unwrap(), 1);
        // Its slot is recovered once the session over it is gone: a new
        // guest can take it.
        drop(a);
        let (c, mut c_child) = loop {
            match spawn_guest_async(&hub, Command::new(GUEST), LinkOptions::default()) {
                Ok((link, child)) => {
                    let c = vox::initiator_on(VoxLink::from(link), vox::TransportMode::Bare)
                        .establish::<EchoClient>()
                        .await
                        .unwrap();
                    break (c, child);
                }
                Err(vox_shm::HostError::NoFreePeerSlots { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(c.echo(9).await.unwrap(), 9);
        // Graceful end: dropping the clients closes the links; the guests exit.
        drop((b, c));
        assert!(b_child.wait().await.unwrap().success());
        assert!(c_child.wait().await.unwrap().success());
    })
    .await
    .expect("within a minute");
}
