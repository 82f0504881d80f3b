//! Looking at a live segment without disturbing it.
//!
//! [`SegmentView::open`] maps the file read-only (so nothing here can write to
//! it, by construction), validates it like an attach does, and
//! [`SegmentView::snapshot`] copies out everything worth showing: the header,
//! each peer's state and extension words, each ring's fill level, each slot
//! class's use per owner.

use std::path::Path;

use shm_primitives::bipbuf::BipBuf;
use shm_primitives::header::HeaderFields;
use shm_primitives::mmap::{Mapping, MmapRegion};
use shm_primitives::peer::PeerState;
use shm_primitives::{Features, PeerId, SegmentLayout};

use crate::segment::AttachError;
use shm_primitives::validate::{validate, Validated};

/// A read-only, validated mapping of a segment file.
#[derive(Debug)]
pub struct SegmentView {
    map: Mapping,
    /// The validated geometry and views of `map`, which this struct keeps
    /// mapped (hence `'static`; they are only used through `&self`).
    valid: Validated<'static>,
}

/// Fill state of one ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSnapshot {
    /// Data bytes.
    pub capacity: u32,
    /// Producer position.
    pub write: u32,
    /// End of data before a wrap (0 = none).
    pub watermark: u32,
    /// Consumer position.
    pub read: u32,
    /// Bytes committed and not yet released.
    pub used: u32,
    /// The producer has wrapped and the consumer has not followed yet.
    pub wrapped: bool,
    /// Producer waits for space (extension C1).
    pub producer_waiting: bool,
    /// Consumer waits for data (extension C1).
    pub consumer_waiting: bool,
}

/// One guest slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// Peer id.
    pub id: PeerId,
    /// Lifecycle state.
    pub state: PeerState,
    /// Raw state word (unknown values read as Empty).
    pub raw_state: u32,
    /// Reservations / walk-in attaches so far.
    pub epoch: u32,
    /// Last heartbeat (monotonic ns, 0 = never).
    pub last_heartbeat: u64,
    /// Now minus the last heartbeat, if there was one.
    pub heartbeat_age_ns: Option<u64>,
    /// Features the guest advertised.
    pub guest_features: Features,
    /// Guest process id (0 = not published).
    pub guest_pid: u32,
    /// Host closed its sending half.
    pub host_tx_closed: bool,
    /// Guest closed its sending half.
    pub guest_tx_closed: bool,
    /// Guest-to-host ring.
    pub g2h: RingSnapshot,
    /// Host-to-guest ring.
    pub h2g: RingSnapshot,
}

/// One slot size class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassSnapshot {
    /// Bytes per slot.
    pub slot_size: u32,
    /// Slots.
    pub slot_count: u32,
    /// Free slots.
    pub free: u32,
    /// Allocated slots per owner value (0 host, 1..255 guests, 256+p host→guest p).
    pub allocated_by_owner: Vec<(u32, u32)>,
    /// Slots with an impossible state value.
    pub invalid_state: u32,
}

/// Everything [`SegmentView::snapshot`] copies out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSnapshot {
    /// Header fields.
    pub header: HeaderFields,
    /// Geometry.
    pub layout: SegmentLayout,
    /// Bytes mapped (the file length).
    pub file_len: u64,
    /// Every guest slot.
    pub peers: Vec<PeerSnapshot>,
    /// Every slot class.
    pub classes: Vec<ClassSnapshot>,
}

fn ring_snapshot(ring: BipBuf) -> RingSnapshot {
    let (write, watermark, read) = ring.positions();
    let cap = ring.capacity();
    let (w, m, r) = (write.min(cap), watermark.min(cap), read.min(cap));
    let used = if m != 0 { m.saturating_sub(r) + w } else { w.saturating_sub(r) };
    let h = ring.header();
    RingSnapshot {
        capacity: cap,
        write,
        watermark,
        read,
        used: used.min(cap),
        wrapped: watermark != 0,
        producer_waiting: h.producer_waiting().load(std::sync::atomic::Ordering::Relaxed) != 0,
        consumer_waiting: h.consumer_waiting().load(std::sync::atomic::Ordering::Relaxed) != 0,
    }
}

impl SegmentView {
    /// Maps `path` read-only and validates it.
    pub fn open(path: &Path) -> Result<SegmentView, AttachError> {
        let map = MmapRegion::attach_read_only(path)?;
        // SAFETY: `map` is stored beside the views and outlives them.
        let v = validate(unsafe { crate::segment::unbounded(map.region()) })?;
        Ok(SegmentView { map, valid: v })
    }

    /// Bytes mapped.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Copies out the current state (loads only). `now_ns` is the monotonic
    /// clock reading heartbeat ages are computed against.
    pub fn snapshot(&self, now_ns: u64) -> SegmentSnapshot {
        let r = self.map.region();
        let peers = self
            .valid
            .peers
            .iter()
            .map(|(id, e)| {
                let ring = |off| BipBuf::attach(r, off, self.valid.layout.bipbuf_capacity).expect("validated");
                let last = e.last_heartbeat();
                PeerSnapshot {
                    id,
                    state: e.state(),
                    raw_state: e.raw_state(),
                    epoch: e.epoch(),
                    last_heartbeat: last,
                    heartbeat_age_ns: (last != 0).then(|| now_ns.saturating_sub(last)),
                    guest_features: e.guest_features(),
                    guest_pid: e.guest_pid(),
                    host_tx_closed: e.tx_closed(shm_primitives::Side::Host),
                    guest_tx_closed: e.tx_closed(shm_primitives::Side::Guest),
                    g2h: ring_snapshot(ring(self.valid.layout.g2h_offset(id))),
                    h2g: ring_snapshot(ring(self.valid.layout.h2g_offset(id))),
                }
            })
            .collect();
        let classes = (0..self.valid.pool.class_count())
            .map(|c| {
                let cls = self.valid.pool.class(c).expect("in range");
                let u = self.valid.pool.class_usage(c).expect("in range");
                ClassSnapshot {
                    slot_size: cls.slot_size,
                    slot_count: cls.slot_count,
                    free: u.free,
                    allocated_by_owner: u.allocated_by_owner,
                    invalid_state: u.invalid_state,
                }
            })
            .collect();
        SegmentSnapshot {
            header: self.valid.fields,
            layout: self.valid.layout.clone(),
            file_len: self.file_len(),
            peers,
            classes,
        }
    }
}

/// The monotonic clock in nanoseconds (the heartbeat clock of spec C3).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is valid for writing a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{Segment, SegmentConfig};
    use shm_primitives::varslot::SizeClassConfig;
    use shm_primitives::FileCleanup;

    #[test]
    fn a_snapshot_shows_peers_rings_and_slots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let classes = [SizeClassConfig { slot_size: 64, slot_count: 4 }];
        let cfg =
            SegmentConfig { max_guests: 2, bipbuf_capacity: 256, size_classes: &classes, ..SegmentConfig::default() };
        let seg = Segment::create(&path, cfg, FileCleanup::UnlinkOnDrop).unwrap();
        let id = seg.reserve_peer().unwrap();
        let e = seg.peer_entry(id).unwrap();
        e.set_guest_features(Features::ALL);
        e.set_guest_pid(1234);
        seg.claim_peer(id).unwrap();
        e.update_heartbeat(1_000);
        let _slot = seg.var_pool().allocate(10, 1).unwrap();
        // SAFETY: this test is the only producer of the ring.
        let mut tx = unsafe { seg.h2g_bipbuf(id).unwrap().producer() };
        tx.try_grant(40).unwrap().unwrap();
        tx.commit(40).unwrap();
        let snap = SegmentView::open(&path).unwrap().snapshot(5_000);
        let p = &snap.peers[0];
        assert_eq!((p.state, p.epoch, p.guest_pid, p.guest_features), (PeerState::Attached, 1, 1234, Features::ALL));
        assert_eq!(p.heartbeat_age_ns, Some(4_000));
        assert_eq!((p.h2g.used, p.g2h.used, p.h2g.capacity), (40, 0, 256));
        assert_eq!(snap.peers[1].state, PeerState::Empty);
        assert_eq!(snap.classes[0].free, 3);
        assert_eq!(snap.classes[0].allocated_by_owner, vec![(1, 1)]);
    }

    #[test]
    fn foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        let err = SegmentView::open(&path).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }
}
