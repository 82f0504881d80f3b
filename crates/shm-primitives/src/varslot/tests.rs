use super::*;
use crate::region::HeapRegion;

fn sc(slot_size: u32, slot_count: u32) -> SizeClassConfig {
    SizeClassConfig { slot_size, slot_count }
}

/// A pool in heap memory that lives for the rest of the test process
/// (leaked: a view borrows its memory, and the tests keep both).
fn pool(configs: &[SizeClassConfig]) -> (&'static HeapRegion, VarSlotPool<'static>) {
    let layout = PoolLayout::compute(configs).unwrap();
    let heap: &'static HeapRegion = Box::leak(Box::new(HeapRegion::new_zeroed(layout.size as usize)));
    // SAFETY: fresh, exclusive heap memory that is never freed.
    let p = unsafe { VarSlotPool::init(heap.region(), 0, &layout) }.unwrap();
    (heap, p)
}

fn meta_word<'p>(p: &'p VarSlotPool<'_>, class: usize, idx: u32) -> &'p VarSlotMeta {
    p.meta(class, idx)
}

#[test]
fn layout_bytes_match_the_worked_example() {
    let (heap, _) = pool(&[sc(1024, 4), sc(16384, 2)]);
    let r = heap.region();
    let read_u32 = |off: u64| {
        let p = r.range(off, 4).unwrap();
        // SAFETY: 4 bytes in bounds of the live heap.
        u32::from_le_bytes(unsafe { *(p.as_ptr() as *const [u8; 4]) })
    };
    assert_eq!((read_u32(0), read_u32(4)), (1024, 4));
    assert_eq!((read_u32(64), read_u32(68)), (16384, 2));
    // class 0 slot 0 meta at 128: gen 0, state 0, owner 0, next 1
    assert_eq!([read_u32(128), read_u32(132), read_u32(136), read_u32(140)], [0, 0, 0, 1]);
    // last slot of class 0 ends the list
    assert_eq!(read_u32(128 + 3 * 16 + 12), EMPTY);
}

#[test]
fn allocation_order_generations_and_lifo_reuse() {
    let (_h, p) = pool(&[sc(64, 2), sc(256, 1)]);
    let a = p.allocate(10, 0).unwrap();
    assert_eq!(a, SlotRef { class_idx: 0, extent_idx: 0, slot_idx: 0, generation: 1 });
    let b = p.allocate(64, 3).unwrap();
    assert_eq!((b.class_idx, b.slot_idx), (0, 1));
    let c = p.allocate(1, 3).unwrap();
    assert_eq!((c.class_idx, c.slot_idx), (1, 0), "falls through to a larger class");
    assert_eq!(p.allocate(1, 0), Err(AllocError::Exhausted { size: 1 }));
    assert_eq!(p.allocate(257, 0), Err(AllocError::TooLarge { size: 257, max_slot_size: 256 }));
    p.free(a).unwrap();
    let a2 = p.allocate(5, 0).unwrap();
    assert_eq!((a2.slot_idx, a2.generation), (0, 2), "LIFO reuse with generation + 1");
    assert_eq!(p.slot_meta(0, 1), Some((1, 1, 3)));
}

#[test]
fn free_refuses_double_stale_and_bogus_refs() {
    let (_h, p) = pool(&[sc(64, 2)]);
    let a = p.allocate(1, 0).unwrap();
    p.free(a).unwrap();
    assert!(matches!(p.free(a), Err(FreeError::DoubleFree { current: 1, state: 0, .. })));
    let a2 = p.allocate(1, 0).unwrap();
    assert!(matches!(p.free(a), Err(FreeError::DoubleFree { current: 2, state: 1, .. })), "stale generation");
    assert_eq!(
        p.free(SlotRef { class_idx: 5, ..a2 }),
        Err(FreeError::Invalid(SlotError::BadClass { class_idx: 5, classes: 1 }))
    );
    assert_eq!(
        p.free(SlotRef { slot_idx: 2, ..a2 }),
        Err(FreeError::Invalid(SlotError::BadSlot { class_idx: 0, slot_idx: 2, slot_count: 2 }))
    );
    assert_eq!(
        p.free(SlotRef { extent_idx: 1, ..a2 }),
        Err(FreeError::Invalid(SlotError::BadExtent { extent_idx: 1 }))
    );
    p.free(a2).unwrap();
    assert_eq!(p.check_free_list(0), Ok(2));
}

#[test]
fn check_gives_in_bounds_data() {
    let (heap, p) = pool(&[sc(100, 3)]);
    let s = p.allocate(100, 0).unwrap();
    let s2 = p.allocate(100, 0).unwrap();
    let c1 = p.check(s).unwrap();
    let c2 = p.check(s2).unwrap();
    assert_eq!(c1.size(), 100);
    assert_eq!(c2.data().as_ptr() as usize - c1.data().as_ptr() as usize, 100);
    let end = heap.region().base().as_ptr() as usize + heap.region().len();
    assert!(c2.data().as_ptr() as usize + 100 <= end);
}

#[test]
fn reclaim_frees_only_that_owners_allocated_slots() {
    let (_h, p) = pool(&[sc(64, 4)]);
    let mine: Vec<_> = (0..2).map(|_| p.allocate(1, 7).unwrap()).collect();
    let theirs = p.allocate(1, 8).unwrap();
    assert_eq!(p.class_usage(0).unwrap().allocated_by_owner, vec![(7, 2), (8, 1)]);
    assert_eq!(p.reclaim_peer_slots(7), 2);
    assert_eq!(p.reclaim_peer_slots(7), 0);
    for s in mine {
        assert!(p.free(s).is_err(), "reclaimed slots are already free");
    }
    p.free(theirs).unwrap();
    assert_eq!(p.class_usage(0).unwrap().free, 4);
    assert_eq!(p.check_free_list(0), Ok(4));
}

#[test]
fn corrupt_free_lists_are_errors_not_panics() {
    let (_h, p) = pool(&[sc(64, 2), sc(128, 2)]);
    // Head pointing past the class.
    p.header(0).free_head.store(pack(0, 99), Ordering::Relaxed);
    assert_eq!(
        p.allocate(1, 0).map(|s| s.class_idx),
        Ok(1),
        "a corrupt class is skipped; the larger class still serves"
    );
    p.header(1).free_head.store(pack(0, 0), Ordering::Relaxed);
    meta_word(&p, 1, 0).next_free.store(1234, Ordering::Relaxed);
    assert_eq!(p.allocate(1, 0), Err(AllocError::Corrupt { class_idx: 0, what: "head index", value: 99 }));
    assert!(matches!(p.check_free_list(1), Err(AllocError::Corrupt { .. })));
    // A cycle is found by the bounded walk.
    let (_h2, q) = pool(&[sc(64, 2)]);
    meta_word(&q, 0, 1).next_free.store(0, Ordering::Relaxed);
    assert_eq!(q.check_free_list(0), Err(AllocError::Corrupt { class_idx: 0, what: "cycle at", value: 0 }));
    // An allocated slot on the list is not handed out twice.
    let (_h3, r) = pool(&[sc(64, 2)]);
    let s = r.allocate(1, 0).unwrap();
    r.header(0).free_head.store(pack(5, s.slot_idx), Ordering::Relaxed);
    assert!(matches!(r.allocate(1, 0), Err(AllocError::Corrupt { what: "allocated slot on free list", .. })));
    r.free(s).unwrap();
}

/// Another process's view of the same pool (its own operation counter).
fn other_view<'a>(p: &VarSlotPool<'a>) -> VarSlotPool<'a> {
    VarSlotPool::attach(p.region, p.base, &PoolLayout::compute(&p.layout_configs()).unwrap()).unwrap()
}

impl VarSlotPool<'_> {
    fn layout_configs(&self) -> Vec<SizeClassConfig> {
        self.layout.classes.iter().map(|c| sc(c.slot_size, c.slot_count)).collect()
    }
}

fn recover(host: &VarSlotPool<'_>, dead_owner: u32) {
    host.reclaim_peer_slots(dead_owner);
    assert!(matches!(host.return_orphans(|| false), Ok(OrphanAudit::Done { .. })));
}

#[test]
fn a_process_dying_at_any_step_of_allocate_or_free_leaks_nothing() {
    for steps in 0..=STEPS_ALLOCATE {
        let (_h, host) = pool(&[sc(64, 4)]);
        let held = host.allocate(1, 0).unwrap(); // the host's own, untouched
        let guest = other_view(&host);
        let _ = guest.allocate_stopping_after(1, 3, steps).unwrap();
        recover(&host, 3);
        assert_eq!(host.class_usage(0).unwrap().free, 3, "allocate stopped after {steps} steps");
        assert_eq!(host.check_free_list(0), Ok(3), "allocate stopped after {steps} steps");
        host.free(held).unwrap();
    }
    for steps in 0..=STEPS_FREE {
        let (_h, host) = pool(&[sc(64, 4)]);
        let guest = other_view(&host);
        let slot = guest.allocate(1, 3).unwrap();
        guest.free_stopping_after(slot, steps).unwrap();
        recover(&host, 3);
        assert_eq!(host.check_free_list(0), Ok(4), "free stopped after {steps} steps");
    }
}

#[test]
fn the_orphan_audit_waits_for_a_quiet_pool() {
    let (_h, host) = pool(&[sc(64, 2)]);
    let guest = other_view(&host);
    let _ = guest.allocate_stopping_after(1, 3, 1).unwrap(); // popped, then died
                                                             // A live peer with an operation in flight: nothing is touched.
    assert_eq!(host.return_orphans(|| true), Ok(OrphanAudit::Busy));
    assert_eq!(host.check_free_list(0), Ok(1));
    assert_eq!(host.return_orphans(|| false), Ok(OrphanAudit::Done { returned: 1 }));
    assert_eq!(host.return_orphans(|| false), Ok(OrphanAudit::Done { returned: 0 }));
    assert_eq!(host.check_free_list(0), Ok(2));
}

#[test]
fn concurrent_allocate_free_never_hands_a_slot_out_twice() {
    let (_h, p) = pool(&[sc(8, 16)]);
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let p = &p;
            s.spawn(move || {
                for _ in 0..2000 {
                    if let Ok(slot) = p.allocate(8, t) {
                        let d = p.check(slot).unwrap().data();
                        // Stamp the slot; a slot handed out twice would show
                        // another thread's stamp before we free it.
                        // SAFETY: the slot is exclusively ours until freed.
                        unsafe { d.as_ptr().cast::<u32>().write_volatile(t) };
                        std::hint::spin_loop();
                        // SAFETY: as above.
                        assert_eq!(unsafe { d.as_ptr().cast::<u32>().read_volatile() }, t);
                        p.free(slot).unwrap();
                    }
                }
            });
        }
    });
    assert_eq!(p.check_free_list(0), Ok(16));
}
