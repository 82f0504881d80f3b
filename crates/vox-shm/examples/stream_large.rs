//! Streaming large payloads from a host to a spawned guest: 1 MiB messages
//! written in place (no copy on either side), with backpressure, through the
//! slot pool when a slot is large enough and through mapped memory files
//! otherwise. Run it with `cargo run --release -p vox-shm --example
//! stream_large`.
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use vox_shm::prelude::*;
use vox_shm::SizeClassConfig;

// Fewer in a debug build, where checking every byte is slow.
const MESSAGES: u64 = if cfg!(debug_assertions) { 200 } else { 2_000 };
const SIZE: usize = 1 << 20;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    if std::env::args().any(|a| a == "--guest") {
        return guest().await;
    }
    // Slots up to 256 KiB: 1 MiB payloads take the mapping tier, 100 KiB
    // ones the slot pool.
    let classes =
        [SizeClassConfig { slot_size: 4096, slot_count: 64 }, SizeClassConfig { slot_size: 256 << 10, slot_count: 16 }];
    let config = SegmentConfig { max_payload_size: 4 << 20, size_classes: &classes, ..SegmentConfig::default() };
    let hub = HostHub::new(Arc::new(Segment::create_anonymous(config, Features::ALL)?));
    let mut guest = Command::new(std::env::current_exe()?);
    guest.arg("--guest");
    let (link, mut child) = vox_shm::spawn_guest_async(&hub, guest, LinkOptions::default())?;
    let (tx, mut rx) = link.split();
    let started = Instant::now();
    for seq in 0..MESSAGES {
        let size = if seq % 2 == 0 { SIZE } else { 100 << 10 };
        let mut slot = tx.reserve().await?.alloc(size)?; // waits while the guest is behind
        let bytes = slot.as_mut_slice(); // the payload's final place in shared memory
        bytes.fill(seq as u8);
        bytes[..8].copy_from_slice(&seq.to_le_bytes());
        slot.commit();
    }
    let stats = tx.stats();
    tx.close().await?;
    let summary = rx.recv().await?.expect("the guest reports");
    let secs = started.elapsed().as_secs_f64();
    let total: u64 = (0..MESSAGES).map(|s| if s % 2 == 0 { SIZE as u64 } else { 100 << 10 }).sum();
    println!(
        "host: {} in {secs:.3} s ({:.1} GiB/s)",
        String::from_utf8_lossy(summary.as_bytes()),
        total as f64 / secs / (1u64 << 30) as f64
    );
    // A 100 KiB message takes the mapping tier too when every slot is still
    // held by a message the guest has not finished with.
    println!(
        "host: {} slot-tier and {} mapping-tier messages ({} slot-sized ones found the pool busy)",
        stats.slot_ref_sends, stats.mmap_ref_sends, stats.slot_fallbacks
    );
    assert!(child.wait().await?.success());
    Ok(())
}

/// Guest: check every byte of every message, then report.
async fn guest() -> std::io::Result<()> {
    let (_segment, link) = GuestArgs::connect_from_env(LinkOptions::default())?;
    let (tx, mut rx) = link.split();
    let (mut count, mut bytes) = (0u64, 0u64);
    while let Some(m) = rx.recv().await? {
        let b = m.as_bytes();
        let seq = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        assert_eq!(seq, count, "in order");
        assert!(b[8..].iter().all(|&x| x == seq as u8), "intact");
        count += 1;
        bytes += b.len() as u64;
    }
    tx.send(format!("guest received {count} messages, {} MiB", bytes >> 20).as_bytes()).await?;
    tx.close().await?;
    Ok(())
}
