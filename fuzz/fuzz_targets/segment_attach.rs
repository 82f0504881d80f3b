//! Segment validation on arbitrary file contents: attach refuses or yields a
//! segment on which every operation stays in bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vox_shm::Segment;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg");
    std::fs::write(&path, data).unwrap();
    if let Ok(seg) = Segment::attach(&path) {
        let _ = seg.reserve_peer();
        let _ = seg.attach_peer();
        for (id, e) in seg.peer_table().iter() {
            let _ = (e.state(), e.guest_features(), seg.g2h_bipbuf(id), seg.h2g_bipbuf(id));
            let _ = seg.recover_crashed_peer(id);
        }
        for size in [1, 100, 5000, 70000] {
            if let Ok(s) = seg.var_pool().allocate(size, 1) {
                let _ = seg.var_pool().free(s);
            }
        }
        for c in 0..seg.var_pool().class_count() {
            let _ = seg.var_pool().class_usage(c);
            let _ = seg.var_pool().check_free_list(c);
        }
    }
});
