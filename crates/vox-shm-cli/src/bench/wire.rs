//! Benchmark payloads: cheap to stamp, read in full, and checked.
//!
//! The sender writes the message's sequence number at the start, at every
//! 4 KiB boundary and at the end. The receiver reads every byte (folding them,
//! so no byte can be skipped) and checks every stamp: a lost, repeated,
//! reordered, truncated or stale message fails the run.

/// Writes `seq` into `buf` at offset 0, every 4096 bytes, and at the end.
pub fn stamp(seq: u64, buf: &mut [u8]) {
    let s = seq.to_le_bytes();
    let len = buf.len();
    let mut off = 0;
    while off + 8 <= len {
        buf[off..off + 8].copy_from_slice(&s);
        off += 4096;
    }
    if len >= 8 {
        buf[len - 8..].copy_from_slice(&s);
    }
}

/// Reads every byte of `buf` and returns the sequence number it carries, or an
/// error if any stamp disagrees.
pub fn consume(buf: &[u8]) -> Result<u64, String> {
    if buf.len() < 8 {
        return Err(format!("message of {} bytes has no sequence number", buf.len()));
    }
    let seq = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    // Fold every byte so the whole payload is read from memory.
    let mut acc = 0u64;
    let chunks = buf.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        acc = acc.wrapping_add(u64::from_ne_bytes(c.try_into().expect("8 bytes")));
    }
    for &b in tail {
        acc = acc.wrapping_add(u64::from(b));
    }
    std::hint::black_box(acc);
    let len = buf.len();
    let at = |off: usize| u64::from_le_bytes(buf[off..off + 8].try_into().expect("8 bytes"));
    let mut off = 4096;
    while off + 8 <= len {
        if at(off) != seq {
            return Err(format!("message {seq}: stamp at {off} says {}", at(off)));
        }
        off += 4096;
    }
    if at(len - 8) != seq {
        return Err(format!("message {seq}: trailer says {}", at(len - 8)));
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_catch_damage() {
        for len in [8usize, 64, 4095, 4096, 4104, 1 << 20] {
            let mut b = vec![0u8; len];
            stamp(77, &mut b);
            assert_eq!(consume(&b), Ok(77));
            if len > 4104 {
                b[4096] ^= 1;
                assert!(consume(&b).is_err(), "a stale page is caught");
            }
        }
        assert!(consume(&[1, 2, 3]).is_err());
        let mut b = vec![0u8; 100];
        stamp(5, &mut b);
        b[99] = 9;
        assert!(consume(&b).is_err(), "a damaged trailer is caught");
    }
}
