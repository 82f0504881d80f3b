//! Crash injection into the shared slot pool: a guest allocating and freeing
//! slots in a tight loop is killed with SIGKILL at random moments, most of
//! them inside an allocate or a free. After each kill the host's recovery must
//! return every slot: none left Allocated under a dead or wrong owner, none
//! Free but on no list.
//!
//! `VOX_SHM_POOL_CRASH_CYCLES` sets the number of kills (default 100).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vox_shm::{FileCleanup, Segment, SegmentConfig};
use vox_shm_testkit::harness::SMALL_POOL;

const PEER: &str = env!("CARGO_BIN_EXE_shm-test-peer");

#[test]
fn a_guest_killed_inside_allocate_or_free_leaks_no_slot() {
    let cycles: u64 = std::env::var("VOX_SHM_POOL_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg.shm");
    let cfg =
        SegmentConfig { max_guests: 1, bipbuf_capacity: 4096, size_classes: &SMALL_POOL, ..SegmentConfig::default() };
    let seg = Arc::new(Segment::create(&path, cfg, FileCleanup::UnlinkOnDrop).unwrap());
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let (mut reclaimed, mut orphans) = (0, 0);
    let started = Instant::now();
    for cycle in 0..cycles {
        let id = seg.reserve_peer().expect("the peer slot was recovered");
        let mut child = Command::new(PEER)
            .args(["pool-churn", path.to_str().unwrap(), &id.get().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "cycle {cycle}");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 2000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let report = seg.recover_crashed_peer(id).unwrap();
        reclaimed += report.reclaimed_slots;
        orphans += report.orphans_returned;
        for (c, class) in SMALL_POOL.iter().enumerate() {
            let u = seg.var_pool().class_usage(c).unwrap();
            assert_eq!(u.free, class.slot_count, "cycle {cycle} class {c}: {u:?} ({report:?})");
            assert_eq!(seg.var_pool().check_free_list(c), Ok(class.slot_count), "cycle {cycle} class {c}");
        }
        assert!(!seg.orphan_audit_pending());
    }
    eprintln!(
        "pool crash injection: {cycles} kills in {:?}; slots reclaimed by owner {reclaimed}, orphans returned {orphans}, leaked 0",
        started.elapsed()
    );
}
