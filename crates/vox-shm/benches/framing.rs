//! One-process micro-benchmarks of entry encoding and decoding.
//! `cargo bench -p vox-shm`.
//!
//! criterion is not built for macOS (its `alloca` dependency needs a C
//! compiler for the target, which a Linux machine checking the macOS build
//! does not have), so there this bench is an empty program.

#[cfg(not(target_os = "macos"))]
mod benches {
    use criterion::{criterion_group, Criterion, Throughput};
    use std::hint::black_box;
    use vox_shm::framing::{parse_frame, write_inline, write_mmap_ref, write_slot_ref, MmapRef};
    use vox_shm::SlotRef;

    fn framing(c: &mut Criterion) {
        let mut g = c.benchmark_group("framing");
        g.throughput(Throughput::Elements(1));
        let mut buf = vec![0u8; 512];
        let payload = [7u8; 64];
        g.bench_function("encode inline 64 B", |b| b.iter(|| write_inline(black_box(&mut buf), black_box(&payload))));
        let slot = SlotRef { class_idx: 1, extent_idx: 0, slot_idx: 42, generation: 9 };
        g.bench_function("encode slot-ref", |b| b.iter(|| write_slot_ref(black_box(&mut buf), black_box(&slot))));
        let m = MmapRef { map_id: 3, map_generation: 1, map_offset: 4096, payload_len: 1 << 20 };
        g.bench_function("encode mapping-ref", |b| b.iter(|| write_mmap_ref(black_box(&mut buf), black_box(&m))));
        let mut inline = vec![0u8; 72];
        write_inline(&mut inline, &payload);
        let inline: &[u8] = &inline;
        g.bench_function("decode inline", |b| b.iter(|| parse_frame(black_box(&inline))));
        let mut sref = vec![0u8; 20];
        write_slot_ref(&mut sref, &slot);
        let sref: &[u8] = &sref;
        g.bench_function("decode slot-ref", |b| b.iter(|| parse_frame(black_box(&sref))));
        g.finish();
    }

    criterion_group!(benches, framing);
}

#[cfg(not(target_os = "macos"))]
criterion::criterion_main!(benches::benches);

#[cfg(target_os = "macos")]
fn main() {}
