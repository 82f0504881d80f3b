//! A consumer facing a hostile producer: arbitrary ring positions and bytes,
//! read and decoded until the ring is empty or an error is reported.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shm_primitives::bipbuf::BipBuf;
use shm_primitives::HeapRegion;
use shm_primitives::framing::parse_frame;

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let cap = 256u32;
    let heap = HeapRegion::new_zeroed(128 + cap as usize);
    // SAFETY: exclusive heap memory that outlives the ring.
    let ring = unsafe { BipBuf::init(heap.region(), 0, cap) }.unwrap();
    let p = heap.region().range(0, 128 + cap as u64).unwrap();
    let word = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    // SAFETY: in-bounds writes to our own heap memory before any handle exists.
    unsafe {
        p.as_ptr().cast::<u32>().write(word(0) % (2 * cap)); // write
        p.as_ptr().add(4).cast::<u32>().write(word(4) % (2 * cap)); // watermark
        p.as_ptr().add(64).cast::<u32>().write(word(8) % (2 * cap)); // read
        let body = &data[12..];
        std::ptr::copy_nonoverlapping(body.as_ptr(), p.as_ptr().add(128), body.len().min(cap as usize));
    }
    // SAFETY: the only consumer of this ring.
    let mut rx = unsafe { ring.consumer() };
    for _ in 0..64 {
        let region = match rx.try_read() {
            Ok(Some(r)) => r,
            _ => return,
        };
        let consumed = match parse_frame(&region) {
            Ok((_, n)) => n,
            Err(_) => return,
        };
        if rx.release(consumed).is_err() {
            return;
        }
    }
});
