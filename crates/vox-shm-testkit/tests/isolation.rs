//! Isolation mode: a guest that scribbles over its whole slot pool and its
//! rings, over and over, damages only its own link; an honest guest of the
//! same host streams every tier intact meanwhile, and new guests attach.

use std::sync::Arc;
use std::time::Duration;

use vox_shm::isolation::{IsolatedConfig, IsolatedHub};
use vox_shm::{GuestSlots, Link};
use vox_shm_testkit::check_payload;
use vox_shm_testkit::harness::{echo_round_trip, finish, mixed, recv, send, spawn, SMALL_POOL};

const PEER: &str = env!("CARGO_BIN_EXE_shm-test-peer");

fn hub() -> IsolatedHub {
    IsolatedHub::new(IsolatedConfig {
        bipbuf_capacity: 4096,
        max_payload_size: 4 << 20,
        size_classes: SMALL_POOL.to_vec(),
        ..IsolatedConfig::default()
    })
}

#[test]
fn every_guest_gets_a_segment_of_its_own() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _g = rt.enter();
    let hub = hub();
    let (a, b) = (hub.prepare_peer().unwrap(), hub.prepare_peer().unwrap());
    assert!(!Arc::ptr_eq(a.segment(), b.segment()));
    assert_eq!((a.segment().max_guests(), a.peer_id().get()), (1, 1));
    assert!(a.segment().path().is_none(), "an anonymous, sealed segment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_scribbling_its_pool_damages_only_its_own_link() {
    let hub = hub();
    let (bad, mut bad_child) = spawn(PEER, &hub, &["hostile", "pool-scribble"]);
    let (_bad_tx, mut bad_rx) = bad.split();
    let (good, good_child) = spawn(PEER, &hub, &["echo"]);
    let (tx, mut rx) = good.split();
    // Let the scribbler get going, then stream every tier through the honest guest.
    tokio::time::sleep(Duration::from_millis(20)).await;
    for seq in 0..3000u64 {
        send(&tx, seq, mixed(seq)).await.unwrap();
        let m = recv(&mut rx).await.unwrap().expect("echo");
        check_payload(seq, mixed(seq), m.as_bytes()).unwrap_or_else(|e| panic!("honest guest's message damaged: {e}"));
    }
    tx.close().await.unwrap();
    assert!(recv(&mut rx).await.unwrap().is_none());
    finish(good_child).await;
    // The scribbler's own link: whatever it reads is its own problem, and it
    // ends (with an error or at its death) instead of hanging.
    bad_child.kill().unwrap();
    bad_child.wait().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if !matches!(recv(&mut bad_rx).await, Ok(Some(_))) {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the hostile link must end");
    drop((_bad_tx, bad_rx));
    echo_round_trip(PEER, &hub).await;
}
