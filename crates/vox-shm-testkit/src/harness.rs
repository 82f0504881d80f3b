//! Host-side helpers for the cross-process link tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use vox_shm::host::{spawn_guest_with, HostHub};
use vox_shm::{
    Backing, FileCleanup, GuestSlots, Link, LinkOptions, LinkTx, LinkTxPermit, Segment, SegmentConfig, ShmLink,
    ShmLinkRx, ShmLinkRxError, SizeClassConfig, WriteSlot,
};

use crate::{fill_payload, MIXED_SIZES};

/// Upper bound on any single wait in a test.
pub const LIMIT: Duration = Duration::from_secs(120);

/// A small pool: 1 KiB and 8 KiB slots, a few of each.
pub const SMALL_POOL: [SizeClassConfig; 2] =
    [SizeClassConfig { slot_size: 1024, slot_count: 8 }, SizeClassConfig { slot_size: 8192, slot_count: 4 }];

/// A hub on a fresh segment in `dir`.
pub fn hub(dir: &Path, cap: u32, classes: &'static [SizeClassConfig], guests: u8) -> HostHub {
    let cfg = SegmentConfig {
        max_guests: guests,
        bipbuf_capacity: cap,
        max_payload_size: 4 << 20,
        size_classes: classes,
        ..SegmentConfig::default()
    };
    HostHub::new(Arc::new(Segment::create(&dir.join("seg.shm"), cfg, FileCleanup::UnlinkOnDrop).unwrap()))
}

/// Spawns the peer binary `peer` with `args` as a guest of `hub`.
pub fn spawn(peer: &str, hub: &impl GuestSlots, args: &[&str]) -> (ShmLink, Child) {
    spawn_opts(peer, hub, args, LinkOptions::default())
}

/// [`spawn`] with host link options.
pub fn spawn_opts(peer: &str, hub: &impl GuestSlots, args: &[&str], opts: LinkOptions) -> (ShmLink, Child) {
    let mut cmd = Command::new(peer);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    spawn_guest_with(hub, cmd, opts).unwrap()
}

/// Waits for the child (bounded), checks it exited 0, returns its stdout.
pub async fn finish(child: Child) -> String {
    let out = tokio::task::spawn_blocking(move || crate::wait_bounded(child, LIMIT)).await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "guest failed ({}): {stdout} {stderr}", out.status);
    stdout.into_owned()
}

/// Sends message `seq` of `len` bytes.
pub async fn send(tx: &impl LinkTx, seq: u64, len: usize) -> std::io::Result<()> {
    let p = tx.reserve().await?;
    let mut s = p.alloc(len)?;
    fill_payload(seq, s.as_mut_slice());
    s.commit();
    Ok(())
}

/// Receives with the test time bound.
pub async fn recv(rx: &mut ShmLinkRx) -> Result<Option<Backing>, ShmLinkRxError> {
    tokio::time::timeout(LIMIT, rx.recv()).await.expect("receive timed out")
}

/// Length of message `seq` in the mixed-size streams.
pub fn mixed(seq: u64) -> usize {
    MIXED_SIZES[(seq % MIXED_SIZES.len() as u64) as usize]
}

/// Spawns an `echo` guest of `hub`, checks one slot-tier round trip, closes,
/// and waits for the guest to exit cleanly: proof that the host still serves
/// new guests.
pub async fn echo_round_trip(peer: &str, hub: &impl GuestSlots) {
    let (link, child) = spawn(peer, hub, &["echo"]);
    let (tx, mut rx) = link.split();
    send(&tx, 1, 3000).await.unwrap();
    crate::check_payload(1, 3000, recv(&mut rx).await.unwrap().unwrap().as_bytes()).unwrap();
    tx.close().await.unwrap();
    assert!(recv(&mut rx).await.unwrap().is_none());
    finish(child).await;
}
