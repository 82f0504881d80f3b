//! Segment validation on arbitrary bytes: `validate` refuses them or yields
//! views on which every operation stays in bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shm_primitives::validate::validate;
use shm_primitives::HeapRegion;

fuzz_target!(|data: &[u8]| {
    let heap = HeapRegion::new_zeroed(data.len());
    let p = heap.region().range(0, data.len() as u64).unwrap();
    // SAFETY: in-bounds writes to our own heap memory before any view exists.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr(), data.len()) };
    let Ok(v) = validate(heap.region()) else { return };
    let _ = v.peers.reserve();
    let _ = v.peers.attach_walk_in();
    for (id, e) in v.peers.iter() {
        let _ = (e.state(), e.guest_features(), e.epoch(), e.pool_ops_in_flight(), v.layout.g2h_offset(id));
        e.reset_with_ring_offset(v.layout.g2h_offset(id));
        let _ = v.pool.reclaim_peer_slots(u32::from(id.get()));
    }
    for size in [1, 100, 5000, 70000] {
        if let Ok(s) = v.pool.allocate(size, 1) {
            let _ = v.pool.free(s);
        }
    }
    let _ = v.pool.return_orphans(|| false);
    for c in 0..v.pool.class_count() {
        let _ = v.pool.class_usage(c);
        let _ = v.pool.check_free_list(c);
    }
});
