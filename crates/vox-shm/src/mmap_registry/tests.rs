//! The sending side's region accounting, on real memfds and a real control
//! socket pair.

use super::*;
use shm_primitives_async::control::create_pair;

const PAYLOAD: u32 = 4000;
const REGION: u64 = 4096;

/// A registry with reuse on and room for four one-page regions, and the
/// receiving end of its control socket (kept open so announcements succeed).
fn registry() -> (MmapRegistry, OwnedFd) {
    let (tx, rx) = create_pair().unwrap();
    let mut r =
        MmapRegistry::new(MmapControlSender::new(tx).unwrap(), REGION as usize, 4 * REGION, 4 * REGION, PAYLOAD);
    r.set_peer_reports_releases(true);
    (r, rx)
}

fn send(r: &mut MmapRegistry, len: u32) -> MmapRef {
    let a = r.alloc(len).unwrap();
    let m = a.mmap_ref;
    r.commit(a);
    m
}

/// What the receiver does when it drops the payloads of region `i`.
fn release_all(r: &MmapRegistry, i: usize) {
    let region = &r.regions[i];
    released_counter(&region.mmap).store(region.handed_out, Ordering::Release);
}

#[tokio::test]
async fn a_full_budget_waits_until_a_region_drains_then_reuses_it_in_place() {
    let (mut r, _rx) = registry();
    let ids: Vec<u32> = (0..4).map(|_| send(&mut r, PAYLOAD).map_id).collect();
    assert_eq!(ids, [0, 1, 2, 3]);
    assert!(!r.can_alloc(PAYLOAD));
    assert!(matches!(r.alloc(PAYLOAD), Err(MmapAllocError::BudgetSpent { peer_reports_releases: true, .. })));
    release_all(&r, 2);
    assert!(r.can_alloc(PAYLOAD));
    let m = send(&mut r, PAYLOAD);
    assert_eq!((m.map_id, m.map_generation, m.map_offset), (2, 0, REGION_HEADER_SIZE));
    let s = r.stats();
    assert_eq!((s.regions_created, s.regions_reused, s.regions_retired), (4, 1, 0));
}

/// `alloc` looks for a drained region before it decides to add one; a region
/// the receiver drains between those two looks must still be rewound, not
/// given a new file (which made a 10,000-message run create more regions than
/// its budget holds).
#[tokio::test]
async fn a_region_drained_after_the_first_look_is_reused_not_replaced() {
    let (mut r, _rx) = registry();
    for _ in 0..4 {
        send(&mut r, PAYLOAD);
    }
    assert_eq!(r.find_room(u64::from(PAYLOAD)), None);
    release_all(&r, 1);
    assert_eq!(r.add_region(u64::from(PAYLOAD)).unwrap(), 1);
    let s = r.stats();
    assert_eq!((s.regions_created, s.regions_reused, s.regions_retired), (4, 1, 0));
    assert_eq!(s.bytes_mapped, 4 * REGION);
}

#[tokio::test]
async fn a_drained_region_too_small_for_the_payload_gets_a_new_file_under_its_id() {
    let (mut r, _rx) = registry();
    for _ in 0..4 {
        send(&mut r, PAYLOAD);
    }
    release_all(&r, 3);
    let m = send(&mut r, 2 * PAYLOAD);
    assert_eq!((m.map_id, m.map_generation), (3, 1));
    let s = r.stats();
    assert_eq!((s.regions_created, s.regions_reused, s.regions_retired), (5, 0, 1));
}

/// Until the receiver's features are known (a guest that has not attached
/// yet) the registry keeps to the smaller budget and reuses nothing; once the
/// receiver is known not to report releases, the legacy budget applies.
#[tokio::test]
async fn until_the_receiver_is_known_the_smaller_budget_holds() {
    let (tx, _rx) = create_pair().unwrap();
    let control = MmapControlSender::new(tx).unwrap();
    let mut r = MmapRegistry::new(control, REGION as usize, 4 * REGION, 6 * REGION, PAYLOAD);
    for _ in 0..4 {
        send(&mut r, PAYLOAD);
    }
    assert!(!r.can_alloc(PAYLOAD));
    release_all(&r, 0); // not trusted: this receiver may not count releases
    assert!(!r.can_alloc(PAYLOAD));
    r.set_peer_reports_releases(false);
    assert!(r.can_alloc(PAYLOAD));
    assert_eq!([send(&mut r, PAYLOAD).map_id, send(&mut r, PAYLOAD).map_id], [4, 5]);
    assert!(matches!(r.alloc(PAYLOAD), Err(MmapAllocError::BudgetSpent { peer_reports_releases: false, .. })));
    assert_eq!(r.stats().regions_reused, 0);
}
