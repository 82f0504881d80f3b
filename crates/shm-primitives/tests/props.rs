//! Property tests: random operation sequences against simple models.
#![cfg(not(loom))]

use std::collections::{HashSet, VecDeque};

use proptest::prelude::*;
use shm_primitives::bipbuf::BipBuf;
use shm_primitives::varslot::{PoolLayout, SizeClassConfig, SlotRef, VarSlotPool};
use shm_primitives::HeapRegion;

#[derive(Debug, Clone)]
enum RingOp {
    /// Grant `len` bytes and commit `commit_pct`% of them (at least 1 byte).
    Send { len: u32, commit_pct: u8 },
    /// Read and release one frame.
    Recv,
    /// Grant and cancel.
    Abandon { len: u32 },
}

fn ring_op(cap: u32) -> impl Strategy<Value = RingOp> {
    prop_oneof![
        4 => (1..=cap + 2, 1u8..=100).prop_map(|(len, commit_pct)| RingOp::Send { len, commit_pct }),
        4 => Just(RingOp::Recv),
        1 => (1..=cap).prop_map(|len| RingOp::Abandon { len }),
    ]
}

fn ring_case() -> impl Strategy<Value = (u32, Vec<RingOp>)> {
    (4u32..=64).prop_flat_map(|cap| (Just(cap), prop::collection::vec(ring_op(cap), 1..300)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Frames are `[len, seq, seq, ...]`: the consumer must see exactly the
    /// committed frames, in order, with their bytes intact.
    #[test]
    fn ring_never_loses_duplicates_or_reorders((cap, ops) in ring_case()) {
        let heap = HeapRegion::new_zeroed(128 + cap as usize);
        // SAFETY: exclusive heap memory that outlives the ring.
        let ring = unsafe { BipBuf::init(heap.region(), 0, cap) }.unwrap();
        // SAFETY: one producer and one consumer.
        let (mut tx, mut rx) = unsafe { (ring.producer(), ring.consumer()) };
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        let mut seq = 0u8;
        for op in ops {
            match op {
                RingOp::Send { len, commit_pct } => {
                    if tx.try_grant(len).unwrap().is_some() {
                        let n = ((len as u64 * commit_pct as u64) / 100).clamp(1, len as u64) as u32;
                        let n = n.min(255);
                        seq = seq.wrapping_add(1);
                        let frame: Vec<u8> = std::iter::once(n as u8).chain(std::iter::repeat_n(seq, n as usize - 1)).collect();
                        tx.granted_mut().unwrap()[..n as usize].copy_from_slice(&frame);
                        tx.commit(n).unwrap();
                        model.push_back(frame);
                    }
                }
                RingOp::Abandon { len } => {
                    if tx.try_grant(len).unwrap().is_some() {
                        tx.granted_mut().unwrap().fill(0xEE);
                        tx.cancel();
                    }
                }
                RingOp::Recv => {
                    match rx.try_read().unwrap() {
                        None => prop_assert!(model.is_empty(), "data committed but not readable"),
                        Some(r) => {
                            let expect = model.pop_front().expect("readable bytes but nothing committed");
                            let n = r.read_array::<1>(0).unwrap()[0] as u32;
                            prop_assert_eq!(n as usize, expect.len());
                            let mut got = vec![0; n as usize];
                            r.copy_to(0, &mut got).unwrap();
                            prop_assert_eq!(&got, &expect);
                            rx.release(n).unwrap();
                        }
                    }
                }
            }
        }
        // Drain: everything committed is still there, in order.
        while let Some(expect) = model.pop_front() {
            let r = rx.try_read().unwrap().expect("committed frame missing at drain");
            let mut got = vec![0; expect.len()];
            r.copy_to(0, &mut got).unwrap();
            prop_assert_eq!(&got, &expect);
            rx.release(expect.len() as u32).unwrap();
        }
        prop_assert!(rx.try_read().unwrap().is_none());
        // Liveness: an empty ring grants any size up to the capacity after at
        // most one consumer pass (which hands back a drained tail).
        for n in [1, cap / 2, cap - 1, cap] {
            let n = n.max(1);
            if tx.try_grant(n).unwrap().is_none() {
                prop_assert!(rx.try_read().unwrap().is_none());
                prop_assert!(tx.try_grant(n).unwrap().is_some(), "empty ring refused {} of {}", n, cap);
            }
            tx.cancel();
        }
    }
}

#[derive(Debug, Clone)]
enum PoolOp {
    Alloc { size: u32, owner: u32 },
    Free { pick: usize },
    FreeStale { pick: usize },
    Reclaim { owner: u32 },
}

fn pool_op() -> impl Strategy<Value = PoolOp> {
    prop_oneof![
        5 => (1u32..=300, 0u32..4).prop_map(|(size, owner)| PoolOp::Alloc { size, owner }),
        4 => any::<usize>().prop_map(|pick| PoolOp::Free { pick }),
        1 => any::<usize>().prop_map(|pick| PoolOp::FreeStale { pick }),
        1 => (0u32..4).prop_map(|owner| PoolOp::Reclaim { owner }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn pool_stays_consistent(ops in prop::collection::vec(pool_op(), 1..400)) {
        let classes = [
            SizeClassConfig { slot_size: 32, slot_count: 3 },
            SizeClassConfig { slot_size: 64, slot_count: 2 },
            SizeClassConfig { slot_size: 256, slot_count: 2 },
        ];
        let layout = PoolLayout::compute(&classes).unwrap();
        let heap = HeapRegion::new_zeroed(layout.size as usize);
        // SAFETY: exclusive heap memory that outlives the pool.
        let pool = unsafe { VarSlotPool::init(heap.region(), 0, &layout) }.unwrap();
        let mut held: Vec<(SlotRef, u32)> = Vec::new();
        let mut freed: Vec<SlotRef> = Vec::new();
        for op in ops {
            match op {
                PoolOp::Alloc { size, owner } => match pool.allocate(size, owner) {
                    Ok(s) => {
                        let slot_size = classes[s.class_idx as usize].slot_size;
                        prop_assert!(slot_size >= size);
                        prop_assert!(!held.iter().any(|(h, _)| (h.class_idx, h.slot_idx) == (s.class_idx, s.slot_idx)), "slot handed out twice");
                        held.push((s, owner));
                    }
                    Err(_) => {
                        // Exhausted only if every class that fits is fully held.
                        for (c, cfg) in classes.iter().enumerate() {
                            if cfg.slot_size >= size {
                                let n = held.iter().filter(|(h, _)| h.class_idx as usize == c).count();
                                prop_assert_eq!(n as u32, cfg.slot_count, "class {} had room", c);
                            }
                        }
                    }
                },
                PoolOp::Free { pick } if !held.is_empty() => {
                    let (s, _) = held.swap_remove(pick % held.len());
                    prop_assert!(pool.free(s).is_ok());
                    freed.push(s);
                }
                PoolOp::FreeStale { pick } if !freed.is_empty() => {
                    let s = freed[pick % freed.len()];
                    prop_assert!(pool.free(s).is_err(), "stale free accepted");
                }
                PoolOp::Reclaim { owner } => {
                    let mine = held.iter().filter(|(_, o)| *o == owner).count();
                    prop_assert_eq!(pool.reclaim_peer_slots(owner), mine);
                    held.retain(|(s, o)| if *o == owner { freed.push(*s); false } else { true });
                }
                _ => {}
            }
            for (c, cfg) in classes.iter().enumerate() {
                let in_use = held.iter().filter(|(h, _)| h.class_idx as usize == c).count() as u32;
                prop_assert_eq!(pool.check_free_list(c), Ok(cfg.slot_count - in_use));
                let usage = pool.class_usage(c).unwrap();
                prop_assert_eq!(usage.free, cfg.slot_count - in_use);
            }
        }
        let distinct: HashSet<_> = held.iter().map(|(s, _)| (s.class_idx, s.slot_idx)).collect();
        prop_assert_eq!(distinct.len(), held.len());
    }
}
