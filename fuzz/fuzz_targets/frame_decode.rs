//! The ring entry decoder on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shm_primitives::framing::parse_frame;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, consumed)) = parse_frame(&data) {
        assert!(consumed >= 8 && consumed % 4 == 0 && consumed as usize <= data.len());
    }
});
