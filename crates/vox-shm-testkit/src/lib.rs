//! Helpers shared by the cross-process tests: running the peer binary with a
//! time bound.

pub mod harness;

use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A `Command` for the helper peer binary at `bin` (integration tests pass
/// `env!("CARGO_BIN_EXE_shm-test-peer")`), with stdout and stderr captured.
pub fn peer_command(bin: &str) -> Command {
    let mut c = Command::new(bin);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Waits for `child` at most `limit`; kills it and panics if it overruns.
pub fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return child.wait_with_output().expect("collect output"),
            None if start.elapsed() > limit => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "peer process overran {limit:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// True if the process ended by panicking (Rust's exit code 101).
pub fn panicked(status: &ExitStatus) -> bool {
    status.code() == Some(101)
}

/// Sizes cycled through by the mixed-size streams: empty, inline, around the
/// inline threshold, slot tier, and mapping tier for small pools.
pub const MIXED_SIZES: [usize; 10] = [0, 8, 61, 256, 257, 700, 1500, 4000, 9000, 20_000];

/// Fills `buf` as message number `seq`: the sequence number (when it fits)
/// followed by a pattern derived from it, so any lost, repeated, reordered or
/// corrupted message is detected by [`check_payload`].
pub fn fill_payload(seq: u64, buf: &mut [u8]) {
    let head = seq.to_le_bytes();
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&head[..n]);
    let k = (seq as u8).wrapping_mul(31) | 1;
    for (i, b) in buf.iter_mut().enumerate().skip(8) {
        *b = k.wrapping_mul(i as u8).wrapping_add(seq as u8);
    }
}

/// A message as [`fill_payload`] writes it.
pub fn make_payload(seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_payload(seq, &mut v);
    v
}

/// Checks that `got` is message `seq` of length `len`.
pub fn check_payload(seq: u64, len: usize, got: &[u8]) -> Result<(), String> {
    if got.len() != len {
        return Err(format!("message {seq}: {} bytes, expected {len}", got.len()));
    }
    let want = make_payload(seq, len);
    match got.iter().zip(&want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!("message {seq} ({len} bytes) differs at byte {i}: {} != {}", got[i], want[i])),
    }
}

/// The sequence number carried by a message of at least 8 bytes.
pub fn payload_seq(got: &[u8]) -> Option<u64> {
    got.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// Open descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Lines of `/proc/self/maps` that contain `needle`.
pub fn mappings_matching(needle: &str) -> usize {
    std::fs::read_to_string("/proc/self/maps").map(|m| m.lines().filter(|l| l.contains(needle)).count()).unwrap_or(0)
}

/// A field of `/proc/self/status` in kB (e.g. `VmRSS`).
pub fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// How many regions the default mapping budget holds for messages of
/// `payload` bytes, each too big to share a region with another: one payload
/// per region plus its header, rounded up to a page. Worked out here, not
/// asked of the registry, so the tests check the registry against it.
pub fn regions_in_default_budget(payload: usize) -> u64 {
    let region = (payload as u64 + vox_shm::mmap_registry::REGION_HEADER_SIZE).next_multiple_of(4096);
    vox_shm::mmap_registry::DEFAULT_MAPPING_BUDGET / region
}

/// Fills a large message cheaply: its sequence number at both ends and one
/// byte value derived from it in between (memset speed).
pub fn fill_large(seq: u64, buf: &mut [u8]) {
    buf.fill((seq as u8) ^ 0x5A);
    let head = seq.to_le_bytes();
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&head[..n]);
    let len = buf.len();
    if len >= 16 {
        buf[len - 8..].copy_from_slice(&head);
    }
}

/// Checks a message written by [`fill_large`], every byte.
pub fn check_large(seq: u64, len: usize, got: &[u8]) -> Result<(), String> {
    if got.len() != len {
        return Err(format!("message {seq}: {} bytes, expected {len}", got.len()));
    }
    let mut want_ends = [0u8; 16];
    fill_large(seq, &mut want_ends);
    let v = (seq as u8) ^ 0x5A;
    let ok_head = got[..len.min(8)] == want_ends[..len.min(8)];
    let ok_tail = len < 16 || got[len - 8..] == seq.to_le_bytes();
    let ok_body = got.get(8..len.saturating_sub(8)).is_none_or(|b| b.iter().all(|&x| x == v));
    if ok_head && ok_tail && ok_body {
        Ok(())
    } else {
        Err(format!("large message {seq} ({len} bytes) is corrupt"))
    }
}

/// A count one process publishes for another in the first 8 bytes of a
/// shared file: the crash tests' guest stores how many messages it has
/// committed, and the host reads it after killing the guest (a dead process's
/// stores to a shared mapping stay visible).
#[derive(Debug)]
pub struct CommitCounter {
    map: shm_primitives::mmap::MmapRegion,
}

impl CommitCounter {
    /// Creates `path` (8 zero bytes) and maps it.
    pub fn create(path: &std::path::Path) -> std::io::Result<Self> {
        std::fs::write(path, [0u8; 8])?;
        Self::open(path)
    }

    /// Maps an existing counter file.
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(CommitCounter { map: shm_primitives::mmap::MmapRegion::attach(path)? })
    }

    fn word(&self) -> &std::sync::atomic::AtomicU64 {
        let p = self.map.region().typed::<std::sync::atomic::AtomicU64>(0).expect("8-byte file");
        // SAFETY: offset 0 of a live, page-aligned mapping of at least 8 bytes;
        // any bits are a valid AtomicU64; the borrow is tied to `self`.
        unsafe { p.as_ref() }
    }

    /// Stores `n` (Release: after the commits it counts).
    pub fn set(&self, n: u64) {
        self.word().store(n, std::sync::atomic::Ordering::Release);
    }

    /// Loads the count.
    pub fn get(&self) -> u64 {
        self.word().load(std::sync::atomic::Ordering::Acquire)
    }
}
