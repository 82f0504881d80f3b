//! Loom models of the lock-free structures.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" cargo test -p shm-primitives --test loom --profile loom`
//!
//! The data bytes of a ring or slot are modelled by `loom::cell::UnsafeCell`s
//! that shadow the real memory at the offsets the structure hands out: loom then
//! reports any read of a byte that is not ordered after its write (a missing
//! Release/Acquire pair) and any two parties touching the same byte at once (a
//! region or slot handed out twice).
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use shm_primitives::bipbuf::{BipBuf, BipBufHeader};
use shm_primitives::varslot::{PoolLayout, SizeClassConfig, VarSlotPool};
use shm_primitives::HeapRegion;
use std::ptr::NonNull;

struct Ring {
    header: Box<BipBufHeader>,
    data: Box<[u8]>,
    shadow: Vec<UnsafeCell<u8>>,
}

impl Ring {
    fn new(cap: u32) -> Arc<Ring> {
        Arc::new(Ring {
            header: Box::new(BipBufHeader::new(cap)),
            data: vec![0u8; cap as usize].into_boxed_slice(),
            shadow: (0..cap).map(|_| UnsafeCell::new(0)).collect(),
        })
    }
    fn buf(&self) -> BipBuf<'_> {
        // SAFETY: header and data live as long as the `Arc<Ring>` every thread holds.
        unsafe {
            BipBuf::from_parts(
                NonNull::from(&*self.header),
                NonNull::new(self.data.as_ptr() as *mut u8).unwrap(),
                self.data.len() as u32,
            )
        }
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// Producer sends frames whose sizes force wrap-arounds (including the failed
/// wrap that keeps its state); the consumer must get every frame intact, in
/// order, and each byte it reads must be ordered after its write.
fn ring_transfers_frames(cap: u32, sizes: &'static [u32]) {
    model(move || {
        let ring = Ring::new(cap);
        let r2 = ring.clone();
        let producer = thread::spawn(move || {
            // SAFETY: the only producer of this ring.
            let mut tx = unsafe { r2.buf().producer() };
            for (i, &n) in sizes.iter().enumerate() {
                let off = loop {
                    match tx.try_grant(n).unwrap() {
                        Some(off) => break off,
                        None => thread::yield_now(),
                    }
                };
                for b in off..off + n {
                    // SAFETY: loom checks that no other access to this cell is
                    // concurrent; that check is the point of the model.
                    r2.shadow[b as usize].with_mut(|p| unsafe { *p = i as u8 + 1 });
                }
                tx.commit(n).unwrap();
            }
        });
        // SAFETY: the only consumer of this ring.
        let mut rx = unsafe { ring.buf().consumer() };
        for (i, &n) in sizes.iter().enumerate() {
            let off = loop {
                match rx.try_read().unwrap() {
                    Some(r) if r.len() >= n => break r.offset(),
                    Some(r) => panic!("frame {i} of {n} bytes split: only {} readable at {}", r.len(), r.offset()),
                    None => thread::yield_now(),
                }
            };
            for b in off..off + n {
                // SAFETY: loom reports a write to this cell that is not ordered
                // before this read; that check is the point of the model.
                let v = ring.shadow[b as usize].with(|p| unsafe { *p });
                assert_eq!(v, i as u8 + 1, "frame {i} byte {b}");
            }
            rx.release(n).unwrap();
        }
        producer.join().unwrap();
        assert!(ring.buf().is_empty());
    });
}

#[test]
fn ring_wraps_and_delivers_in_order() {
    ring_transfers_frames(8, &[3, 4, 3, 2]);
}

#[test]
fn ring_failed_wrap_then_front_grant() {
    ring_transfers_frames(8, &[5, 2, 4]);
}

#[test]
fn ring_full_buffer_round_trip() {
    ring_transfers_frames(4, &[4, 4, 2]);
}

/// Threads allocate, stamp, and free slots of a two-slot class: a slot handed
/// out twice would make two threads write its shadow cell concurrently, and an
/// allocator must see the previous holder's writes (Release on free → Acquire
/// on allocate).
#[test]
fn pool_never_hands_out_a_slot_twice() {
    model(|| {
        let layout = PoolLayout::compute(&[SizeClassConfig { slot_size: 8, slot_count: 2 }]).unwrap();
        // Leaked: the threads' views borrow it for `'static` (a few bytes per run).
        let heap: &'static HeapRegion = Box::leak(Box::new(HeapRegion::new_zeroed(layout.size as usize)));
        // SAFETY: exclusive during init; `heap` is never freed.
        let pool = Arc::new(unsafe { VarSlotPool::init(heap.region(), 0, &layout) }.unwrap());
        let shadow: Arc<Vec<UnsafeCell<u32>>> = Arc::new((0..2).map(|_| UnsafeCell::new(0)).collect());
        let handles: Vec<_> = (1..=3u32)
            .map(|t| {
                let (pool, shadow) = (pool.clone(), shadow.clone());
                thread::spawn(move || {
                    let Ok(slot) = pool.allocate(8, t) else { return };
                    let cell = &shadow[slot.slot_idx as usize];
                    // SAFETY: loom flags any concurrent access to the cell, which
                    // is what a slot handed out twice would cause.
                    cell.with_mut(|p| unsafe { *p = t });
                    // SAFETY: as above.
                    assert_eq!(cell.with(|p| unsafe { *p }), t);
                    pool.free(slot).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(pool.check_free_list(0), Ok(2));
    });
}

/// Two threads race to free the same slot: exactly one wins.
#[test]
fn pool_racing_double_free_has_one_winner() {
    model(|| {
        let layout = PoolLayout::compute(&[SizeClassConfig { slot_size: 8, slot_count: 2 }]).unwrap();
        // Leaked: the threads' views borrow it for `'static` (a few bytes per run).
        let heap: &'static HeapRegion = Box::leak(Box::new(HeapRegion::new_zeroed(layout.size as usize)));
        // SAFETY: exclusive during init; `heap` is never freed.
        let pool = Arc::new(unsafe { VarSlotPool::init(heap.region(), 0, &layout) }.unwrap());
        let slot = pool.allocate(8, 1).unwrap();
        let p2 = pool.clone();
        let t = thread::spawn(move || p2.free(slot).is_ok());
        let mine = pool.free(slot).is_ok();
        let theirs = t.join().unwrap();
        assert!(mine ^ theirs, "exactly one free must succeed");
        assert_eq!(pool.check_free_list(0), Ok(2));
    });
}

/// A process stops for good after any step of an allocate or a free (as
/// `kill -9` would leave it), while a live process allocates and frees, and
/// recovery (reclaim by owner, then the orphan audit) runs concurrently with
/// the live one. No slot is ever held twice (the shadow cells), the audit
/// never pushes a slot someone holds, and once the live process is done a
/// second audit returns every slot.
fn pool_recovers_after_a_stop(free: bool, steps: u32) {
    use shm_primitives::varslot::OrphanAudit;
    model(move || {
        let layout = PoolLayout::compute(&[SizeClassConfig { slot_size: 8, slot_count: 2 }]).unwrap();
        // Leaked: the threads' views borrow it for `'static` (a few bytes per run).
        let heap: &'static HeapRegion = Box::leak(Box::new(HeapRegion::new_zeroed(layout.size as usize)));
        // SAFETY: exclusive during init; `heap` is never freed.
        let host = unsafe { VarSlotPool::init(heap.region(), 0, &layout) }.unwrap();
        // Each process has its own view, and so its own operation counter.
        let dead = VarSlotPool::attach(heap.region(), 0, &layout).unwrap();
        let live = Arc::new(VarSlotPool::attach(heap.region(), 0, &layout).unwrap());
        let shadow: Arc<Vec<UnsafeCell<u32>>> = Arc::new((0..2).map(|_| UnsafeCell::new(0)).collect());
        let dying = thread::spawn(move || {
            if free {
                let s = dead.allocate(8, 1).unwrap();
                let _ = dead.free_stopping_after(s, steps);
            } else {
                let _ = dead.allocate_stopping_after(8, 1, steps);
            }
        });
        let (l2, sh2) = (live.clone(), shadow.clone());
        let living = thread::spawn(move || {
            if let Ok(slot) = l2.allocate(8, 2) {
                let cell = &sh2[slot.slot_idx as usize];
                // SAFETY: loom flags any concurrent access to the cell, which is
                // what a slot held twice would cause.
                cell.with_mut(|p| unsafe { *p = 2 });
                l2.free(slot).unwrap();
            }
        });
        dying.join().unwrap();
        host.reclaim_peer_slots(1);
        let _ = host.return_orphans(|| live.ops_in_flight() != 0).unwrap();
        // What the audit left on the lists must not be held by anyone: take
        // every free slot once and stamp it.
        living.join().unwrap();
        assert!(matches!(host.return_orphans(|| false), Ok(OrphanAudit::Done { .. })));
        assert_eq!(host.check_free_list(0), Ok(2), "free={free} steps={steps}");
        let a = host.allocate(8, 0).unwrap();
        let b = host.allocate(8, 0).unwrap();
        assert_ne!(a.slot_idx, b.slot_idx);
    });
}

#[test]
fn pool_recovers_from_an_allocate_stopped_after_any_step() {
    for steps in 0..=shm_primitives::varslot::STEPS_ALLOCATE {
        pool_recovers_after_a_stop(false, steps);
    }
}

#[test]
fn pool_recovers_from_a_free_stopped_after_any_step() {
    for steps in 0..=shm_primitives::varslot::STEPS_FREE {
        pool_recovers_after_a_stop(true, steps);
    }
}

/// The doorbell, modelled: a counter of pending signals; `wait` blocks until
/// there is one and consumes all (signals coalesce, as on the real socket).
struct Bell {
    pending: loom::sync::Mutex<u32>,
    cv: loom::sync::Condvar,
}

impl Bell {
    fn new() -> Self {
        Bell { pending: loom::sync::Mutex::new(0), cv: loom::sync::Condvar::new() }
    }
    fn ring(&self) {
        *self.pending.lock().unwrap() += 1;
        self.cv.notify_all();
    }
    fn wait(&self) {
        let mut p = self.pending.lock().unwrap();
        while *p == 0 {
            p = self.cv.wait(p).unwrap();
        }
        *p = 0;
    }
}

/// C1 wake on demand, both directions at once: the consumer sleeps when the
/// ring is empty, the producer sleeps when it is full, and each side rings
/// only if the other announced it is waiting. A lost wake-up leaves a thread
/// blocked forever, which loom reports as a deadlock.
#[test]
fn wake_on_demand_never_leaves_a_side_asleep() {
    use shm_primitives::wake::{announce_waiting, should_wake, stop_waiting};
    model(|| {
        let ring = Ring::new(8);
        let to_consumer = Arc::new(Bell::new());
        let to_producer = Arc::new(Bell::new());
        const SIZES: [u32; 3] = [5, 4, 6];
        let (r2, tc, tp) = (ring.clone(), to_consumer.clone(), to_producer.clone());
        let producer = thread::spawn(move || {
            let buf = r2.buf();
            let h = buf.header();
            // SAFETY: the only producer of this ring.
            let mut tx = unsafe { buf.producer() };
            for n in SIZES {
                // Grant `n`, sleeping while the ring is full. The re-check after
                // announcing must be a real `try_grant`: a ring that is empty
                // but needs a wrap only makes progress once the producer wraps
                // (and the consumer then hands the tail back).
                let mut announced = false;
                loop {
                    let wraps = tx.wraps();
                    let granted = tx.try_grant(n).unwrap().is_some();
                    // A wrap is a publication the consumer must see.
                    if tx.wraps() != wraps && should_wake(h.consumer_waiting()) {
                        tc.ring();
                    }
                    if granted {
                        break;
                    }
                    if !announced {
                        announce_waiting(h.producer_waiting());
                        announced = true;
                        continue;
                    }
                    tp.wait();
                    stop_waiting(h.producer_waiting());
                    announced = false;
                }
                if announced {
                    stop_waiting(h.producer_waiting());
                }
                tx.commit(n).unwrap();
                if should_wake(h.consumer_waiting()) {
                    tc.ring();
                }
            }
        });
        let buf = ring.buf();
        let h = buf.header();
        // SAFETY: the only consumer of this ring.
        let mut rx = unsafe { buf.consumer() };
        let mut got = 0;
        // Whenever our read position moves (a release, or a drained tail handed
        // back inside `try_read`), a producer waiting for space must hear of it.
        let wake_producer = |moved: bool| {
            if moved && should_wake(h.producer_waiting()) {
                to_producer.ring();
            }
        };
        while got < SIZES.len() {
            let n = SIZES[got];
            let before = rx.position();
            let found = rx.try_read().unwrap().map(|r| r.len());
            wake_producer(rx.position() != before);
            if let Some(len) = found {
                assert!(len >= n);
                // Deferred release, as the link does between our own peers:
                // publish (and check for a waiting producer) per batch only.
                let published = rx.release_deferred(n, 8).unwrap();
                got += 1;
                wake_producer(published);
                continue;
            }
            // Before sleeping, publish everything released.
            wake_producer(rx.flush());
            announce_waiting(h.consumer_waiting());
            let before = rx.position();
            let found = rx.try_read().unwrap().is_some();
            wake_producer(rx.position() != before);
            if found || rx.wrap_pending() {
                stop_waiting(h.consumer_waiting());
                thread::yield_now();
                continue;
            }
            to_consumer.wait();
            stop_waiting(h.consumer_waiting());
        }
        producer.join().unwrap();
    });
}

/// One doorbell serving both halves of a link (spec B6), with the worst
/// case a reactor may give: a signal wakes just one waiting half. The half
/// that drains the socket must wake the other (`notify` below), or a signal
/// meant for the other half can leave it asleep with work pending. Both halves
/// register for both wake-ups before their last check, as the link does.
#[test]
fn a_drained_signal_never_strands_the_other_half() {
    use loom::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
    use loom::sync::{Condvar, Mutex};
    use shm_primitives::wake::{announce_waiting, should_wake, stop_waiting};

    /// The socket (bytes pending) plus per-half wake-up epochs, under one lock.
    struct Bell {
        state: Mutex<(u32, [u32; 2])>,
        cv: Condvar,
    }

    model(|| {
        let bell = Arc::new(Bell { state: Mutex::new((0, [0, 0])), cv: Condvar::new() });
        let work = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let waiting = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);

        let halves: Vec<_> = (0..2usize)
            .map(|me| {
                let (bell, work, waiting) = (bell.clone(), work.clone(), waiting.clone());
                thread::spawn(move || {
                    let other = 1 - me;
                    loop {
                        if work[me].load(Relaxed) {
                            return;
                        }
                        // Register: remember our epoch (the Notify) ...
                        let mut st = bell.state.lock().unwrap();
                        let epoch = st.1[me];
                        // ... and the socket's readiness: bytes already there?
                        if st.0 > 0 {
                            st.0 = 0;
                            st.1[other] += 1; // wake the other half
                            bell.cv.notify_all();
                            continue;
                        }
                        drop(st);
                        // Announce, then re-check (the C1 pairing).
                        announce_waiting(&waiting[me]);
                        if work[me].load(Relaxed) {
                            stop_waiting(&waiting[me]);
                            return;
                        }
                        let mut st = bell.state.lock().unwrap();
                        // Sleep until bytes arrive or the other half wakes us.
                        while st.0 == 0 && st.1[me] == epoch {
                            st = bell.cv.wait(st).unwrap();
                        }
                        if st.0 > 0 {
                            st.0 = 0;
                            st.1[other] += 1; // the bytes may have been for it
                        }
                        bell.cv.notify_all();
                        drop(st);
                        stop_waiting(&waiting[me]);
                    }
                })
            })
            .collect();

        // The peer publishes work for each half and rings if it waits
        // (claiming that half's announcement, as the link's publishers do).
        for who in 0..2 {
            work[who].store(true, Relaxed);
            if should_wake(&waiting[who]) {
                let mut st = bell.state.lock().unwrap();
                st.0 += 1;
                drop(st);
                // The reactor wakes all sleepers here, but only one of them
                // will find the byte; the other relies on the epoch.
                bell.cv.notify_all();
            }
        }
        for h in halves {
            h.join().unwrap();
        }
    });
}
