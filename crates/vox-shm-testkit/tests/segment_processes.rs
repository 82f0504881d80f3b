//! Two real processes map one segment and see each other's writes; a corrupt
//! file is refused in a fresh process without a panic.

use std::time::Duration;

use shm_primitives::peer::PeerState;
use vox_shm::varslot::SlotRef;
use vox_shm::{FileCleanup, Segment, SegmentConfig, SizeClassConfig};
use vox_shm_testkit::{panicked, peer_command, wait_bounded};

const PEER: &str = env!("CARGO_BIN_EXE_shm-test-peer");
const CLASSES: [SizeClassConfig; 1] = [SizeClassConfig { slot_size: 256, slot_count: 8 }];

#[test]
fn two_processes_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg.shm");
    let config =
        SegmentConfig { max_guests: 2, bipbuf_capacity: 256, size_classes: &CLASSES, ..SegmentConfig::default() };
    let seg = Segment::create(&path, config, FileCleanup::UnlinkOnDrop).unwrap();
    let id = seg.reserve_peer().unwrap();
    // SAFETY: this process is the host: the only producer of H→G and the only
    // consumer of G→H for this peer.
    let (mut tx, mut rx) = unsafe { (seg.h2g_bipbuf(id).unwrap().producer(), seg.g2h_bipbuf(id).unwrap().consumer()) };
    tx.try_grant(10).unwrap().unwrap();
    tx.granted_mut().unwrap().copy_from_slice(b"hello peer");
    tx.commit(10).unwrap();

    let child =
        peer_command(PEER).args(["segment-peer", path.to_str().unwrap(), &id.get().to_string()]).spawn().unwrap();
    let out = wait_bounded(child, Duration::from_secs(20));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "peer failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));

    assert_eq!(seg.peer_entry(id).unwrap().state(), PeerState::Attached, "the child's claim is visible");
    assert!(seg.h2g_bipbuf(id).unwrap().is_empty(), "the child consumed our message");
    let r = rx.try_read().unwrap().expect("the child's reply is in the G→H ring");
    let mut reply = vec![0; r.len() as usize];
    r.copy_to(0, &mut reply).unwrap();
    assert_eq!(reply, b"guest got: hello peer");

    let nums: Vec<u32> = stdout.trim().strip_prefix("SLOT ").unwrap().split(' ').map(|n| n.parse().unwrap()).collect();
    let slot = SlotRef { class_idx: nums[0] as u8, extent_idx: 0, slot_idx: nums[1], generation: nums[2] };
    let (generation, state, owner) = seg.var_pool().slot_meta(slot.class_idx as usize, slot.slot_idx).unwrap();
    assert_eq!((generation, state, owner), (slot.generation, 1, u32::from(id.get())));
    let data = seg.var_pool().check(slot).unwrap().data();
    let pattern = b"written by the guest process";
    // SAFETY: in-bounds slot of our live mapping; the writer has exited.
    let got = unsafe { std::slice::from_raw_parts(data.as_ptr(), pattern.len()) };
    assert_eq!(got, pattern);
    seg.var_pool().free(slot).unwrap();
}

#[test]
fn corrupt_files_are_refused_in_another_process_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg.shm");
    let config =
        SegmentConfig { max_guests: 1, bipbuf_capacity: 256, size_classes: &CLASSES, ..SegmentConfig::default() };
    let seg = Segment::create(&path, config, FileCleanup::Manual).unwrap();
    let good = std::fs::read(&path).unwrap();
    drop(seg);
    let run = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        let child = peer_command(PEER).args(["attach-check", path.to_str().unwrap()]).spawn().unwrap();
        wait_bounded(child, Duration::from_secs(20))
    };
    let out = run(&good);
    assert!(out.status.success(), "the intact file attaches");
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 1);
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    let mut bad_classes = good.clone();
    bad_classes[68] = 200; // num_var_slot_classes
    for (name, bytes, expect) in [
        ("truncated", truncated, "needs"),
        ("magic", bad_magic, "bad magic"),
        ("classes", bad_classes, "outside the file"),
    ] {
        let out = run(&bytes);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!panicked(&out.status), "{name}: the peer panicked");
        assert_eq!(out.status.code(), Some(3), "{name}: {stdout}");
        assert!(stdout.contains(expect), "{name}: unexpected message {stdout}");
    }
}
