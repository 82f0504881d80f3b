//! Resource accounting across many links; a test binary of its own, so no
//! other test's descriptors or mappings share the process.

use std::time::Duration;

use vox_shm::Link;
use vox_shm_testkit::harness::{finish, hub, recv, send, spawn, SMALL_POOL};
use vox_shm_testkit::{check_payload, fd_count, mappings_matching};

const PEER: &str = env!("CARGO_BIN_EXE_shm-test-peer");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_spawn_cycles_leak_no_descriptor_or_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4096, &SMALL_POOL, 4);
    let cycle = |i: u64| {
        let hub = hub.clone();
        async move {
            let (link, child) = spawn(PEER, &hub, &["echo"]);
            let (tx, mut rx) = link.split();
            for (k, len) in [100usize, 3000, 100_000].into_iter().enumerate() {
                let seq = i * 3 + k as u64;
                send(&tx, seq, len).await.unwrap();
                check_payload(seq, len, recv(&mut rx).await.unwrap().unwrap().as_bytes()).unwrap();
            }
            tx.close().await.unwrap();
            assert!(recv(&mut rx).await.unwrap().is_none());
            drop(rx);
            finish(child).await;
        }
    };
    cycle(0).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (fds, maps) = (fd_count(), mappings_matching("vox-shm-payload"));
    for i in 1..=200 {
        cycle(i).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    if fd_count() != fds {
        for e in std::fs::read_dir("/proc/self/fd").unwrap().take(40) {
            let p = e.unwrap().path();
            eprintln!("{:?} -> {:?}", p, std::fs::read_link(&p));
        }
    }
    assert_eq!(fd_count(), fds, "descriptors leaked over 200 cycles");
    assert_eq!(mappings_matching("vox-shm-payload"), maps, "payload regions leaked");
    for (_, e) in hub.segment().peer_table().iter() {
        assert_ne!(e.state(), shm_primitives::PeerState::Attached, "a slot is still held");
    }
}
