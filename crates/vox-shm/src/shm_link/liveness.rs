//! Heartbeats (extension C3): the guest stamps, the host watches.

use super::shared::Shared;
use shm_primitives::Features;
use std::sync::Weak;
use std::time::Duration;

pub(super) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is valid for writing a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Guest: stamps `last_heartbeat` every interval (extension C3).
pub(super) async fn heartbeat(shared: Weak<Shared>, interval: Duration) {
    loop {
        match shared.upgrade() {
            Some(s) => s.entry().update_heartbeat(monotonic_ns()),
            None => return,
        }
        tokio::time::sleep(interval).await;
    }
}

/// Host: declares the guest dead after two missed heartbeats (extension C3).
pub(super) async fn heartbeat_watch(shared: Weak<Shared>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(s) = shared.upgrade() else { return };
        if s.gone() {
            return;
        }
        let interval_ns = interval.as_nanos().min(u128::from(u64::MAX)) as u64;
        if s.negotiated(Features::LIVENESS)
            && s.entry().last_heartbeat() != 0
            && s.entry().is_heartbeat_stale(monotonic_ns(), interval_ns)
        {
            s.mark_gone();
            // Wakes our own waiters (they read end-of-file) and tells the peer.
            s.doorbell.shutdown();
            return;
        }
    }
}
