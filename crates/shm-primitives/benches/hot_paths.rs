//! One-process micro-benchmarks of the hot paths: ring grant/commit/read/
//! release and pool allocate/free. `cargo bench -p shm-primitives`.
//!
//! criterion is not built for macOS (its `alloca` dependency needs a C
//! compiler for the target, which a Linux machine checking the macOS build
//! does not have), so there this bench is an empty program.

#[cfg(not(target_os = "macos"))]
mod benches {
    use criterion::{criterion_group, BatchSize, Criterion, Throughput};
    use shm_primitives::bipbuf::BipBuf;
    use shm_primitives::varslot::{PoolLayout, SizeClassConfig, VarSlotPool};
    use shm_primitives::HeapRegion;
    use std::hint::black_box;

    fn ring(c: &mut Criterion) {
        let mut g = c.benchmark_group("bipbuf");
        for size in [8u32, 72, 1024] {
            let heap = HeapRegion::new_zeroed(128 + 64 * 1024);
            // SAFETY: exclusive heap memory that outlives the ring and its handles.
            let buf = unsafe { BipBuf::init(heap.region(), 0, 64 * 1024) }.unwrap();
            // SAFETY: one producer and one consumer, used only in this benchmark.
            let (mut tx, mut rx) = unsafe { (buf.producer(), buf.consumer()) };
            g.throughput(Throughput::Elements(1));
            g.bench_function(format!("grant+commit+read+release {size} B"), |b| {
                b.iter(|| {
                    tx.try_grant(size).unwrap().unwrap();
                    tx.granted_mut().unwrap()[0] = 1;
                    tx.commit(size).unwrap();
                    let r = rx.try_read().unwrap().unwrap();
                    black_box(r.read_array::<4>(0));
                    rx.release(size).unwrap();
                })
            });
        }
        g.finish();
    }

    fn pool(c: &mut Criterion) {
        let layout = PoolLayout::compute(&[
            SizeClassConfig { slot_size: 1024, slot_count: 256 },
            SizeClassConfig { slot_size: 16384, slot_count: 64 },
        ])
        .unwrap();
        let heap = HeapRegion::new_zeroed(layout.size as usize);
        // SAFETY: exclusive heap memory that outlives the pool.
        let pool = unsafe { VarSlotPool::init(heap.region(), 0, &layout) }.unwrap();
        let mut g = c.benchmark_group("varslot");
        g.throughput(Throughput::Elements(1));
        g.bench_function("allocate+free", |b| {
            b.iter(|| {
                let s = pool.allocate(black_box(900), 1).unwrap();
                pool.free(s).unwrap();
            })
        });
        g.bench_function("allocate+free, 64 held", |b| {
            b.iter_batched(
                || (0..64).map(|_| pool.allocate(900, 1).unwrap()).collect::<Vec<_>>(),
                |held| {
                    let s = pool.allocate(900, 1).unwrap();
                    pool.free(s).unwrap();
                    for h in held {
                        pool.free(h).unwrap();
                    }
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }

    criterion_group!(benches, ring, pool);
}

#[cfg(not(target_os = "macos"))]
criterion::criterion_main!(benches::benches);

#[cfg(target_os = "macos")]
fn main() {}
