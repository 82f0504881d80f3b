use super::*;
use crate::region::HeapRegion;
use crate::sync::Ordering;

/// A ring in heap memory that lives for the rest of the test process
/// (leaked: a view borrows its memory, and the tests keep both).
fn ring(cap: u32) -> (&'static HeapRegion, BipBuf<'static>) {
    let heap: &'static HeapRegion = Box::leak(Box::new(HeapRegion::new_zeroed(128 + cap as usize)));
    // SAFETY: fresh, exclusive heap memory that is never freed.
    let buf = unsafe { BipBuf::init(heap.region(), 0, cap) }.unwrap();
    (heap, buf)
}

fn positions(b: &BipBuf<'_>) -> (u32, u32, u32) {
    b.positions()
}

fn push(tx: &mut BipBufProducer, bytes: &[u8]) -> bool {
    match tx.try_grant(bytes.len() as u32).unwrap() {
        Some(_) => {
            tx.granted_mut().unwrap().copy_from_slice(bytes);
            tx.commit(bytes.len() as u32).unwrap();
            true
        }
        None => false,
    }
}

fn pop(rx: &mut BipBufConsumer, n: u32) -> Vec<u8> {
    let r = rx.try_read().unwrap().unwrap();
    let mut v = vec![0; n as usize];
    r.copy_to(0, &mut v).unwrap();
    rx.release(n).unwrap();
    v
}

#[test]
fn header_layout_matches_the_wire() {
    let (heap, b) = ring(100);
    let p = heap.region().range(0, 128).unwrap();
    // SAFETY: 128 bytes in bounds of the live heap.
    let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), 128) };
    assert_eq!(&bytes[8..12], &100u32.to_le_bytes());
    assert!(bytes.iter().enumerate().all(|(i, &v)| (8..12).contains(&i) || v == 0));
    assert_eq!(b.header().stored_capacity(), 100);
}

#[test]
fn grant_commit_read_release_in_order() {
    let (_h, b) = ring(64);
    // SAFETY: one producer and one consumer in this test.
    let (mut tx, mut rx) = unsafe { (b.producer(), b.consumer()) };
    assert!(rx.try_read().unwrap().is_none());
    assert!(push(&mut tx, b"abcd"));
    assert!(push(&mut tx, b"efgh"));
    let r = rx.try_read().unwrap().unwrap();
    assert_eq!((r.offset(), r.len()), (0, 8));
    assert_eq!(pop(&mut rx, 4), b"abcd");
    assert_eq!(pop(&mut rx, 4), b"efgh");
    assert!(rx.try_read().unwrap().is_none());
    assert!(b.is_empty());
}

#[test]
fn zero_length_grant_changes_nothing() {
    let (_h, b) = ring(16);
    // SAFETY: single producer.
    let mut tx = unsafe { b.producer() };
    assert_eq!(tx.try_grant(0).unwrap(), Some(0));
    assert!(tx.can_grant(0).unwrap());
    tx.commit(0).unwrap();
    assert_eq!(positions(&b), (0, 0, 0));
}

#[test]
fn full_unwrapped_ring_is_write_cap_read_zero() {
    let (_h, b) = ring(16);
    // SAFETY: one producer and one consumer in this test.
    let (mut tx, mut rx) = unsafe { (b.producer(), b.consumer()) };
    assert!(push(&mut tx, &[1; 16]));
    assert_eq!(positions(&b), (16, 0, 0));
    assert!(!tx.can_grant(1).unwrap());
    assert_eq!(tx.try_grant(1).unwrap(), None, "read == 0 means full, no wrap");
    assert_eq!(positions(&b), (16, 0, 0));
    assert_eq!(pop(&mut rx, 16), vec![1; 16]);
    assert_eq!(positions(&b), (16, 0, 16));
    assert!(b.is_empty());
}

#[test]
fn wrap_grants_from_the_front_and_consumer_follows() {
    let (_h, b) = ring(16);
    // SAFETY: one producer and one consumer in this test.
    let (mut tx, mut rx) = unsafe { (b.producer(), b.consumer()) };
    assert!(push(&mut tx, &[1; 12]));
    assert_eq!(pop(&mut rx, 8), vec![1; 8]); // read = 8, 4 left unread
    assert!(tx.can_grant(6).unwrap(), "wrap possible: 6 < read");
    assert!(push(&mut tx, &[2; 6])); // tail too short (4) → wrap, grant [0,6)
    assert_eq!(positions(&b), (6, 12, 8));
    assert!(!tx.can_grant(2).unwrap(), "write + 2 == read is refused (strict)");
    assert!(tx.can_grant(1).unwrap());
    // Consumer reads the tail first, then the front.
    let r = rx.try_read().unwrap().unwrap();
    assert_eq!((r.offset(), r.len()), (8, 4));
    assert_eq!(pop(&mut rx, 4), vec![1; 4]);
    assert_eq!(positions(&b), (6, 12, 12), "release keeps the wrap for try_read to clear");
    let r = rx.try_read().unwrap().unwrap();
    assert_eq!(positions(&b), (6, 0, 0), "try_read cleared the wrap");
    assert_eq!((r.offset(), r.len()), (0, 6));
    assert_eq!(pop(&mut rx, 6), vec![2; 6]);
    assert!(b.is_empty());
}

#[test]
fn failed_wrap_keeps_the_wrapped_state() {
    let (_h, b) = ring(16);
    // SAFETY: one producer and one consumer in this test.
    let (mut tx, mut rx) = unsafe { (b.producer(), b.consumer()) };
    assert!(push(&mut tx, &[1; 12]));
    pop(&mut rx, 4); // read = 4
    assert!(!tx.can_grant(8).unwrap());
    assert_eq!(tx.try_grant(8).unwrap(), None, "8 >= read: no room at the front");
    assert_eq!(positions(&b), (0, 12, 4), "the wrap is kept (spec A3.2 quirk)");
    // The consumer still drains the tail, then the producer can use the front.
    assert_eq!(pop(&mut rx, 8), vec![1; 8]);
    assert_eq!(positions(&b), (0, 12, 12));
    assert!(rx.try_read().unwrap().is_none(), "nothing at the front yet");
    assert_eq!(positions(&b), (0, 0, 0), "but the drained tail was handed back");
    assert!(push(&mut tx, &[3; 15]));
    assert_eq!(pop(&mut rx, 15), vec![3; 15]);
}

#[test]
fn tail_exhausted_read_moves_to_front() {
    // Consumer finds watermark set with read == watermark (it released
    // exactly to the old write before the producer wrapped).
    let (_h, b) = ring(16);
    // SAFETY: one producer and one consumer in this test.
    let (mut tx, mut rx) = unsafe { (b.producer(), b.consumer()) };
    assert!(push(&mut tx, &[1; 12]));
    pop(&mut rx, 12); // read = 12 = write
    assert!(push(&mut tx, &[2; 8])); // 4 left in tail: wrap, grant [0,8)
    assert_eq!(positions(&b), (8, 12, 12));
    let r = rx.try_read().unwrap().unwrap();
    assert_eq!((r.offset(), r.len()), (0, 8));
    assert_eq!(positions(&b), (8, 0, 0));
    assert_eq!(pop(&mut rx, 8), vec![2; 8]);
}

#[test]
fn stale_write_after_a_wrap_is_not_read_as_data() {
    // The state a consumer can observe when the producer's `watermark = 12`
    // is visible but its `write = 0` is not yet: write == watermark == read.
    let (_h, b) = ring(16);
    // SAFETY: one producer and one consumer in this test.
    let (mut tx, mut rx) = unsafe { (b.producer(), b.consumer()) };
    assert!(push(&mut tx, &[1; 12]));
    pop(&mut rx, 12);
    b.header().watermark.store(12, Ordering::Release);
    assert!(rx.try_read().unwrap().is_none(), "must not re-deliver [0, 12)");
    assert!(rx.wrap_pending());
    assert_eq!(positions(&b), (12, 12, 12), "the wrap is left for later");
    b.header().write.store(0, Ordering::Release);
    assert!(rx.try_read().unwrap().is_none());
    assert!(!rx.wrap_pending());
    assert_eq!(positions(&b), (0, 0, 0));
}

#[test]
fn deferred_releases_publish_in_batches_and_on_flush() {
    let (_h, b) = ring(64);
    // SAFETY: one producer and one consumer in this test.
    let (mut tx, mut rx) = unsafe { (b.producer(), b.consumer()) };
    for _ in 0..6 {
        assert!(push(&mut tx, &[1; 8]));
    }
    rx.try_read().unwrap().unwrap();
    assert!(!rx.release_deferred(8, 20).unwrap());
    assert!(!rx.release_deferred(8, 20).unwrap());
    assert_eq!(positions(&b).2, 0, "not yet published");
    assert!(rx.try_read().unwrap().is_some(), "locally the bytes are consumed");
    assert!(rx.release_deferred(8, 20).unwrap(), "24 >= 20 publishes");
    assert_eq!(positions(&b).2, 24);
    assert!(!rx.release_deferred(8, 20).unwrap());
    assert!(rx.flush());
    assert!(!rx.flush(), "nothing pending");
    assert_eq!(positions(&b).2, 32);
}

#[test]
fn commit_and_release_misuse_are_errors() {
    let (_h, b) = ring(16);
    // SAFETY: one producer and one consumer in this test.
    let (mut tx, mut rx) = unsafe { (b.producer(), b.consumer()) };
    assert_eq!(tx.commit(1), Err(RingError::NoGrant));
    tx.try_grant(4).unwrap().unwrap();
    assert_eq!(tx.commit(5), Err(RingError::CommitTooLarge { n: 5, granted: 4 }));
    tx.commit(2).unwrap();
    assert_eq!(positions(&b).0, 2, "a short commit publishes only what was written");
    assert!(matches!(rx.release(17), Err(RingError::ReleaseTooLarge { .. })));
    tx.try_grant(3).unwrap().unwrap();
    tx.cancel();
    assert_eq!(tx.commit(3), Err(RingError::NoGrant));
}

#[test]
fn corrupt_indices_are_errors_not_panics() {
    let (_h, b) = ring(16);
    // SAFETY: one producer and one consumer in this test.
    let (mut tx, mut rx) = unsafe { (b.producer(), b.consumer()) };
    b.header().write.store(1000, Ordering::Relaxed);
    assert_eq!(rx.try_read().unwrap_err(), RingError::Corrupt { field: "write", value: 1000, capacity: 16 });
    b.header().write.store(0, Ordering::Relaxed);
    b.header().watermark.store(17, Ordering::Relaxed);
    assert!(matches!(rx.try_read(), Err(RingError::Corrupt { field: "watermark", .. })));
    b.header().watermark.store(0, Ordering::Relaxed);
    b.header().read.store(u32::MAX, Ordering::Relaxed);
    assert!(push(&mut tx, &[0; 16]), "fits without consulting read (read cache is 0)");
    assert!(matches!(tx.try_grant(1), Err(RingError::Corrupt { field: "read", .. })));
    assert!(matches!(tx.can_grant(1), Err(RingError::Corrupt { field: "read", .. })));
}

#[test]
fn a_scribbled_write_index_does_not_move_the_producer() {
    let (_h, b) = ring(16);
    // SAFETY: one producer and one consumer in this test.
    let (mut tx, mut rx) = unsafe { (b.producer(), b.consumer()) };
    assert!(push(&mut tx, b"ab"));
    b.header().write.store(9, Ordering::Relaxed); // hostile consumer scribbles
    assert!(push(&mut tx, b"cd"));
    assert_eq!(positions(&b).0, 4, "the producer republishes its own index");
    assert_eq!(pop(&mut rx, 4), b"abcd");
}

#[test]
fn reset_clears_positions_and_flags() {
    let (_h, b) = ring(16);
    // SAFETY: single producer.
    let mut tx = unsafe { b.producer() };
    assert!(push(&mut tx, &[1; 5]));
    b.header().consumer_waiting().store(1, Ordering::Relaxed);
    b.reset();
    assert_eq!(positions(&b), (0, 0, 0));
    assert_eq!(b.header().consumer_waiting().load(Ordering::Relaxed), 0);
}

#[test]
fn attach_is_bounds_checked() {
    let heap = HeapRegion::new_zeroed(256);
    assert!(BipBuf::attach(heap.region(), 0, 128).is_ok());
    assert!(BipBuf::attach(heap.region(), 0, 129).is_err());
    assert!(BipBuf::attach(heap.region(), 32, 8).is_err(), "header must be 64-aligned");
    assert!(BipBuf::attach(heap.region(), u64::MAX - 10, 8).is_err());
}

#[test]
fn read_region_copies_are_bounds_checked() {
    let (_h, b) = ring(16);
    // SAFETY: one producer and one consumer in this test.
    let (mut tx, mut rx) = unsafe { (b.producer(), b.consumer()) };
    assert!(push(&mut tx, &[1, 2, 3, 4, 5, 6, 7, 8]));
    let r = rx.try_read().unwrap().unwrap();
    assert_eq!(r.read_array::<4>(4), Some([5, 6, 7, 8]));
    assert_eq!(r.read_array::<4>(5), None);
    assert_eq!(r.copy_to(7, &mut [0; 2]), None);
    assert_eq!(r.copy_to(u32::MAX, &mut [0; 2]), None);
    assert_eq!(r.to_vec(2, 3), Some(vec![3, 4, 5]));
    assert_eq!(r.to_vec(6, 3), None);
    assert_eq!(r.to_vec(u32::MAX, 3), None);
}
