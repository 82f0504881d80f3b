//! The segment: one shared file holding the header, the peer table, a ring pair
//! per guest and the shared slot pool (spec A1).
//!
//! The host creates it with [`Segment::create`]; guests map it with
//! [`Segment::attach`] (by path) or [`Segment::attach_fd`] (by a descriptor
//! received from the host). Attaching validates everything against the file
//! before any of it is used: a truncated, foreign or corrupted file gets an
//! [`AttachError`], never a panic or an out-of-bounds access.
//!
//! ```
//! use vox_shm::segment::{Segment, SegmentConfig};
//! use vox_shm::varslot::SizeClassConfig;
//! use vox_shm::FileCleanup;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("hub.shm");
//! let classes = [SizeClassConfig { slot_size: 4096, slot_count: 16 }];
//! let config = SegmentConfig { size_classes: &classes, ..SegmentConfig::default() };
//! let host = Segment::create(&path, config, FileCleanup::UnlinkOnDrop).unwrap();
//! let guest = Segment::attach(&path).unwrap();
//! assert_eq!(guest.layout(), host.layout());
//! let id = host.reserve_peer().unwrap();
//! guest.claim_peer(id).unwrap();
//! ```

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use shm_primitives::bipbuf::{BipBuf, BipBufConsumer, BipBufProducer};
use shm_primitives::header::{HeaderFields, SegmentHeader, SegmentHeaderInit, MAX_INLINE_THRESHOLD};
use shm_primitives::layout::{check_inline_threshold, LayoutError, SegmentLayout};
use shm_primitives::mmap::{FileCleanup, MmapRegion, DEFAULT_FILE_MODE};
use shm_primitives::peer::Side;
use shm_primitives::peer::{PeerEntry, PeerId, PeerState, PeerTable};
use shm_primitives::region::Region;
use shm_primitives::validate::{validate, Validated};
use shm_primitives::varslot::{SizeClassConfig, VarSlotPool};
use shm_primitives::{Features, OutOfBounds};

mod errors;
pub use errors::{AttachError, CreateError, GrowError, PeerError};

/// What a host chooses when it creates a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentConfig<'a> {
    /// Number of guest slots (each gets a ring pair).
    pub max_guests: u8,
    /// Data bytes per ring, per direction, per guest.
    pub bipbuf_capacity: u32,
    /// Largest payload a sender may allocate.
    pub max_payload_size: u32,
    /// Payloads up to this many bytes travel inline in the ring (0 = 256).
    pub inline_threshold: u32,
    /// Heartbeat interval in ns; 0 disables heartbeats.
    pub heartbeat_interval: u64,
    /// Slot pool size classes, sorted by slot size.
    pub size_classes: &'a [SizeClassConfig],
}

/// Default size classes: 1 KiB × 256, 16 KiB × 64, 256 KiB × 16 (about 6 MiB).
pub const DEFAULT_SIZE_CLASSES: &[SizeClassConfig] = &[
    SizeClassConfig { slot_size: 1024, slot_count: 256 },
    SizeClassConfig { slot_size: 16 * 1024, slot_count: 64 },
    SizeClassConfig { slot_size: 256 * 1024, slot_count: 16 },
];

impl Default for SegmentConfig<'static> {
    /// 8 guests, 64 KiB rings, 16 MiB payloads, inline up to 256 bytes, no
    /// heartbeat, [`DEFAULT_SIZE_CLASSES`].
    fn default() -> Self {
        SegmentConfig {
            max_guests: 8,
            bipbuf_capacity: 64 * 1024,
            max_payload_size: 16 * 1024 * 1024,
            inline_threshold: 256,
            heartbeat_interval: 0,
            size_classes: DEFAULT_SIZE_CLASSES,
        }
    }
}

/// File-level choices for [`Segment::create_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateOptions {
    /// What happens to the file's name (see [`FileCleanup`]).
    pub cleanup: FileCleanup,
    /// Permission bits, applied regardless of the umask. Default 0600.
    pub mode: u32,
    /// Extension features the host advertises (spec C0). Default: all we
    /// implement; [`Features::NONE`] makes a segment byte-identical to 0.3.1's.
    pub host_features: Features,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions { cleanup: FileCleanup::UnlinkOnDrop, mode: DEFAULT_FILE_MODE, host_features: Features::ALL }
    }
}

/// Slot owner value for slots the host holds (0.3.1 uses it for everything
/// the host allocates).
pub const OWNER_HOST: u32 = 0;

/// Slot owner value for a slot the host allocated and sent to guest `peer`.
/// vox-shm 0.3.1 never reads owners except to reclaim a dead guest's slots, so
/// this tag only lets *our* host also reclaim what it had in flight to a guest
/// that died (0.3.1 leaks those).
pub fn owner_host_to(peer: PeerId) -> u32 {
    0x100 | u32::from(peer.get())
}

/// The slot owner value of what `side` allocates on the link of `peer`.
pub fn sender_owner(side: Side, peer: PeerId) -> u32 {
    match side {
        Side::Host => owner_host_to(peer),
        Side::Guest => u32::from(peer.get()),
    }
}

/// One end of one of a guest's two rings, as used by a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingEnd {
    /// Producer of the host-to-guest ring (host link's sending half).
    HostTx,
    /// Consumer of the guest-to-host ring (host link's receiving half).
    HostRx,
    /// Producer of the guest-to-host ring (guest link's sending half).
    GuestTx,
    /// Consumer of the host-to-guest ring (guest link's receiving half).
    GuestRx,
}

impl RingEnd {
    fn bit(self) -> u8 {
        match self {
            RingEnd::HostTx => 1,
            RingEnd::HostRx => 2,
            RingEnd::GuestTx => 4,
            RingEnd::GuestRx => 8,
        }
    }

    /// The sending end of `side`.
    pub fn tx(side: Side) -> RingEnd {
        match side {
            Side::Host => RingEnd::HostTx,
            Side::Guest => RingEnd::GuestTx,
        }
    }

    /// The receiving end of `side`.
    pub fn rx(side: Side) -> RingEnd {
        match side {
            Side::Host => RingEnd::HostRx,
            Side::Guest => RingEnd::GuestRx,
        }
    }
}

/// Exclusive use of one ring end inside this process; released on drop. This
/// is what makes "single producer, single consumer" a matter of ownership.
#[derive(Debug)]
pub struct RingClaim {
    segment: Arc<Segment>,
    peer: PeerId,
    end: RingEnd,
}

impl RingClaim {
    /// The ring this end belongs to.
    pub fn ring(&self) -> BipBuf<'_> {
        let r = match self.end {
            RingEnd::HostTx | RingEnd::GuestRx => self.segment.h2g_bipbuf(self.peer),
            RingEnd::HostRx | RingEnd::GuestTx => self.segment.g2h_bipbuf(self.peer),
        };
        r.expect("claims exist only for peers of the segment")
    }

    /// The producer handle (for `HostTx` / `GuestTx` claims), for as long as
    /// the claim lives.
    pub fn producer(&self) -> Option<BipBufProducer<'_>> {
        // SAFETY: this claim is the only one for its end in this process, and the
        // claim outlives the handle (the caller keeps both together).
        matches!(self.end, RingEnd::HostTx | RingEnd::GuestTx).then(|| unsafe { self.ring().producer() })
    }

    /// The consumer handle (for `HostRx` / `GuestRx` claims).
    pub fn consumer(&self) -> Option<BipBufConsumer<'_>> {
        // SAFETY: as for `producer`.
        matches!(self.end, RingEnd::HostRx | RingEnd::GuestRx).then(|| unsafe { self.ring().consumer() })
    }

    /// The segment.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }
}

impl Drop for RingClaim {
    fn drop(&mut self) {
        self.segment.ring_ends[self.peer.index()].fetch_and(!self.end.bit(), Ordering::AcqRel);
    }
}

/// What crash recovery reclaimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// Slot references freed while draining the host-to-guest ring.
    pub drained_slots: usize,
    /// Slots reclaimed by owner (the guest's own and the host's in flight to it).
    pub reclaimed_slots: usize,
    /// Slots a guest left on no list by dying inside an allocate or a free.
    pub orphans_returned: usize,
}

/// Looks at the pool for a quiet moment before an orphan audit is deferred.
const ORPHAN_AUDIT_TRIES: usize = 200;

/// A mapped, validated segment.
#[derive(Debug)]
pub struct Segment {
    region: MmapRegion,
    /// The validated geometry and the views of `region`'s mapping.
    /// `'static` only inside: the mapping lives as long as this `Segment` (a
    /// remap needs `&mut self` and rebuilds the views), and they are handed
    /// out reborrowed at `&self`'s lifetime.
    valid: Validated<'static>,
    created: bool,
    /// Per guest: which ring ends are in use in this process (`RingEnd` bits).
    ring_ends: Box<[AtomicU8]>,
    /// An orphan audit found no quiet moment yet.
    orphan_audit_pending: std::sync::atomic::AtomicBool,
}

impl Segment {
    /// Creates a segment file at `path` with default [`CreateOptions`] except
    /// for `cleanup`.
    pub fn create(path: &Path, config: SegmentConfig<'_>, cleanup: FileCleanup) -> Result<Segment, CreateError> {
        Self::create_with(path, config, CreateOptions { cleanup, ..CreateOptions::default() })
    }

    /// Creates a segment file at `path` (spec A1.3, with B8: everything is
    /// initialised first and the magic is published last, mode 0600 unless
    /// `options.mode` says otherwise).
    ///
    /// A file already at `path` is replaced (never truncated), unless a live
    /// process holds it ([`crate::stale`]): then this fails with
    /// [`CreateError::InUse`] rather than take the name from a running host.
    pub fn create_with(path: &Path, config: SegmentConfig<'_>, options: CreateOptions) -> Result<Segment, CreateError> {
        let layout = Self::plan(&config)?;
        // A missing file, or one whose lock cannot be judged, is replaced.
        if let Ok(None) = shm_primitives::mmap::lock_if_unheld(path) {
            return Err(CreateError::InUse(path.to_owned()));
        }
        let region = MmapRegion::create(path, layout.total_size as usize, options.cleanup, options.mode)?;
        Self::initialise(region, layout, &config, options.host_features)
    }

    /// Creates a segment with no name in the file system (a sealed `memfd` on
    /// Linux). Guests can only attach through its descriptor
    /// ([`Segment::try_clone_fd`] → fd passing → [`Segment::attach_fd`]); nothing
    /// is left behind when the last process unmaps it, even after `kill -9`.
    pub fn create_anonymous(config: SegmentConfig<'_>, host_features: Features) -> Result<Segment, CreateError> {
        let layout = Self::plan(&config)?;
        let region = MmapRegion::create_anonymous("vox-shm-segment", layout.total_size as usize)?;
        Self::initialise(region, layout, &config, host_features)
    }

    fn plan(config: &SegmentConfig<'_>) -> Result<SegmentLayout, LayoutError> {
        check_inline_threshold(config.inline_threshold)?;
        SegmentLayout::compute(config.max_guests, config.bipbuf_capacity, config.size_classes)
    }

    fn initialise(
        region: MmapRegion,
        layout: SegmentLayout,
        config: &SegmentConfig<'_>,
        host_features: Features,
    ) -> Result<Segment, CreateError> {
        // SAFETY: the views built from `r` are stored in the `Segment` beside
        // `region`, which keeps the mapping alive (moving it does not move
        // the mapping), and they are handed out only reborrowed at `&self`.
        let r = unsafe { unbounded(region.region()) };
        let peers = PeerTable::attach(r, layout.peer_table_offset, layout.max_guests)?;
        peers.init(|id| layout.ring_offset(id));
        for (id, _) in peers.iter() {
            for off in [layout.g2h_offset(id), layout.h2g_offset(id)] {
                // SAFETY: the file was just created and is not yet published (no
                // magic), so nobody else touches it; `region` outlives the views.
                unsafe { BipBuf::init(r, off, layout.bipbuf_capacity) }?;
            }
        }
        // SAFETY: as above: exclusive access before the magic is published.
        let pool = unsafe { VarSlotPool::init(r, layout.var_pool_offset, &layout.pool) }?;
        let header = Self::header_at(&region);
        header.init(&SegmentHeaderInit {
            total_size: layout.total_size,
            max_payload_size: config.max_payload_size,
            inline_threshold: config.inline_threshold,
            max_guests: layout.max_guests,
            bipbuf_capacity: layout.bipbuf_capacity,
            peer_table_offset: layout.peer_table_offset,
            var_pool_offset: layout.var_pool_offset,
            heartbeat_interval: config.heartbeat_interval,
            num_var_slot_classes: layout.pool.classes.len() as u32,
            host_features,
        });
        let fields = header.read();
        let ring_ends = Self::ring_end_table(layout.max_guests);
        Ok(Segment {
            region,
            valid: Validated { layout, fields, peers, pool },
            created: true,
            ring_ends,
            orphan_audit_pending: Default::default(),
        })
    }

    /// Maps the segment file at `path` and validates it.
    pub fn attach(path: &Path) -> Result<Segment, AttachError> {
        Self::validate(MmapRegion::attach(path)?)
    }

    /// Maps a segment from a descriptor (e.g. received over a Unix socket) and
    /// validates it. The size comes from `fstat`, not from the header.
    pub fn attach_fd(fd: OwnedFd) -> Result<Segment, AttachError> {
        Self::validate(MmapRegion::attach_fd(fd)?)
    }

    fn ring_end_table(max_guests: u8) -> Box<[AtomicU8]> {
        (0..max_guests).map(|_| AtomicU8::new(0)).collect()
    }

    fn header_at(region: &MmapRegion) -> &SegmentHeader {
        let p = region.region().typed::<SegmentHeader>(0).expect("mapping holds a header (checked by callers)");
        // SAFETY: in bounds and aligned; all-atomic struct (any bits valid); the
        // mapping lives as long as the borrow of `region`.
        unsafe { p.as_ref() }
    }

    /// B8: check the header, then every offset and class entry against the file.
    fn validate(region: MmapRegion) -> Result<Segment, AttachError> {
        // SAFETY: as in `initialise`: the views live in the `Segment` beside
        // the mapping they borrow.
        let v = validate(unsafe { unbounded(region.region()) })?;
        let ring_ends = Self::ring_end_table(v.layout.max_guests);
        Ok(Segment { region, valid: v, created: false, ring_ends, orphan_audit_pending: Default::default() })
    }

    /// The header in shared memory (live values: goodbye flag, current size).
    pub fn header(&self) -> &SegmentHeader {
        Self::header_at(&self.region)
    }

    /// The header values validated at create/attach time.
    pub fn fields(&self) -> &HeaderFields {
        &self.valid.fields
    }

    /// The validated geometry.
    pub fn layout(&self) -> &SegmentLayout {
        &self.valid.layout
    }

    /// Number of guest slots.
    pub fn max_guests(&self) -> u8 {
        self.valid.layout.max_guests
    }

    /// Data bytes per ring.
    pub fn bipbuf_capacity(&self) -> u32 {
        self.valid.layout.bipbuf_capacity
    }

    /// Largest payload a sender may allocate.
    pub fn max_payload_size(&self) -> u32 {
        self.valid.fields.max_payload_size
    }

    /// Inline threshold with 0 read as 256, capped at 65535 (the inline length
    /// field is 16 bits; a 0.3.1 host may have stored more).
    pub fn inline_threshold(&self) -> u32 {
        self.valid.fields.effective_inline_threshold().min(MAX_INLINE_THRESHOLD)
    }

    /// Heartbeat interval in ns (0 = off).
    pub fn heartbeat_interval(&self) -> u64 {
        self.valid.fields.heartbeat_interval
    }

    /// Extension features the host advertises.
    pub fn host_features(&self) -> Features {
        self.valid.fields.host_features
    }

    /// The slot size classes.
    pub fn size_classes(&self) -> Vec<SizeClassConfig> {
        self.valid.layout.pool.configs()
    }

    /// True for the process that created the segment.
    pub fn is_creator(&self) -> bool {
        self.created
    }

    /// The file's path, if it has one.
    pub fn path(&self) -> Option<&Path> {
        self.region.path()
    }

    /// Mapped length.
    pub fn mapped_len(&self) -> usize {
        self.region.len()
    }

    /// A close-on-exec duplicate of the segment's descriptor, to pass to a guest.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.region.try_clone_fd()
    }

    /// The peer table (borrowed: it cannot outlive the segment's mapping).
    pub fn peer_table(&self) -> &PeerTable<'_> {
        &self.valid.peers
    }

    /// The shared slot pool (borrowed: it cannot outlive the segment's mapping).
    pub fn var_pool(&self) -> &VarSlotPool<'_> {
        &self.valid.pool
    }

    fn entry(&self, id: PeerId) -> Result<&PeerEntry, PeerError> {
        self.valid
            .peers
            .entry(id)
            .ok_or(PeerError::NoSuchPeer { peer: id.get(), max_guests: self.valid.layout.max_guests })
    }

    /// The entry of a guest, if the id exists in this segment.
    pub fn peer_entry(&self, id: PeerId) -> Option<&PeerEntry> {
        self.valid.peers.entry(id)
    }

    /// Host: reserves the first free guest slot before spawning a guest
    /// (first retrying a deferred orphan audit).
    pub fn reserve_peer(&self) -> Option<PeerId> {
        if self.orphan_audit_pending() {
            self.return_orphaned_slots(None);
        }
        self.valid.peers.reserve()
    }

    /// Host: gives back a reservation (the spawn failed).
    pub fn release_reserved_peer(&self, id: PeerId) -> Result<(), PeerError> {
        let e = self.entry(id)?;
        if e.release_reserved() {
            Ok(())
        } else {
            Err(PeerError::WrongState { peer: id.get(), expected: PeerState::Reserved, actual: e.state() })
        }
    }

    /// Spawned guest: claims the slot the host reserved for it.
    pub fn claim_peer(&self, id: PeerId) -> Result<(), PeerError> {
        self.entry(id)?.try_claim_reserved().map_err(|actual| PeerError::WrongState {
            peer: id.get(),
            expected: PeerState::Reserved,
            actual,
        })
    }

    /// Walk-in guest: attaches to the first free slot.
    pub fn attach_peer(&self) -> Option<PeerId> {
        self.valid.peers.attach_walk_in()
    }

    /// Guest: leaves gracefully (state Goodbye).
    pub fn detach_peer(&self, id: PeerId) -> Result<(), PeerError> {
        self.entry(id)?.set_goodbye();
        Ok(())
    }

    /// Host: announces shutdown to every guest.
    pub fn set_host_goodbye(&self) {
        self.header().set_host_goodbye();
    }

    /// Whether `id`'s heartbeat is older than two intervals at `now_ns`.
    pub fn is_peer_heartbeat_stale(&self, id: PeerId, now_ns: u64) -> bool {
        self.valid.peers.entry(id).is_some_and(|e| e.is_heartbeat_stale(now_ns, self.valid.fields.heartbeat_interval))
    }

    /// The guest-to-host ring of `id`.
    pub fn g2h_bipbuf(&self, id: PeerId) -> Option<BipBuf<'_>> {
        self.ring_at(id, self.valid.layout.g2h_offset(id))
    }

    /// The host-to-guest ring of `id`.
    pub fn h2g_bipbuf(&self, id: PeerId) -> Option<BipBuf<'_>> {
        self.ring_at(id, self.valid.layout.h2g_offset(id))
    }

    fn ring_at(&self, id: PeerId, off: u64) -> Option<BipBuf<'_>> {
        self.valid.peers.entry(id)?;
        BipBuf::attach(self.region.region(), off, self.valid.layout.bipbuf_capacity).ok()
    }

    /// Claims one ring end for exclusive use in this process.
    pub fn claim_ring(self: &Arc<Self>, peer: PeerId, end: RingEnd) -> Result<RingClaim, PeerError> {
        let cell = self
            .ring_ends
            .get(peer.index())
            .ok_or(PeerError::NoSuchPeer { peer: peer.get(), max_guests: self.valid.layout.max_guests })?;
        // AcqRel: pairs with the release in `RingClaim::drop`.
        if cell.fetch_or(end.bit(), Ordering::AcqRel) & end.bit() != 0 {
            return Err(PeerError::InUse { peer: peer.get() });
        }
        Ok(RingClaim { segment: self.clone(), peer, end })
    }

    /// True if any ring end of `peer` is in use in this process.
    pub fn has_ring_claims(&self, peer: PeerId) -> bool {
        self.ring_ends.get(peer.index()).is_some_and(|c| c.load(Ordering::Acquire) != 0)
    }

    /// Host: frees everything a departed guest left behind and makes its slot
    /// reusable (spec A2.3, plus the host's own slots in flight to that guest).
    ///
    /// Refused while any ring end of `peer` is in use in this process: a host
    /// link drains the guest's last messages first and calls this when dropped.
    pub fn recover_crashed_peer(&self, peer: PeerId) -> Result<RecoveryReport, PeerError> {
        let e = self.entry(peer)?;
        if self.has_ring_claims(peer) {
            return Err(PeerError::InUse { peer: peer.get() });
        }
        e.set_goodbye();
        let mut report = RecoveryReport::default();
        let h2g = self.h2g_bipbuf(peer).expect("peer exists");
        let g2h = self.g2h_bipbuf(peer).expect("peer exists");
        // SAFETY: the guest is gone and no ring end of this peer is claimed in
        // this process, so this temporary consumer is the ring's only user.
        let mut rx = unsafe { h2g.consumer() };
        // Each entry is at least 8 bytes; the bound stops a looping hostile ring.
        for _ in 0..=self.valid.layout.bipbuf_capacity / 8 {
            let Ok(Some(r)) = rx.try_read() else { break };
            let Ok((frame, consumed)) = crate::framing::parse_frame(&r) else { break };
            if let crate::framing::Frame::SlotRef(s) = frame {
                if self.valid.pool.free(s).is_ok() {
                    report.drained_slots += 1;
                }
            }
            if rx.release(consumed).is_err() {
                break;
            }
        }
        h2g.reset();
        g2h.reset();
        report.reclaimed_slots = self.valid.pool.reclaim_peer_slots(u32::from(peer.get()))
            + self.valid.pool.reclaim_peer_slots(owner_host_to(peer));
        // The guest may have died inside an allocate or a free: return the
        // slot it was moving, once the pool is quiet.
        report.orphans_returned = self.return_orphaned_slots(Some(peer));
        e.reset_with_ring_offset(self.valid.layout.ring_offset(peer));
        Ok(report)
    }

    /// Guest: counts this process's slot-pool operations in flight in its peer
    /// entry, where the host's crash recovery looks for them (see
    /// [`VarSlotPool::return_orphans`]). The segment's creator counts its own
    /// in process memory (an in-process guest shares the creator's pool).
    pub fn track_pool_ops_as(&self, peer: PeerId) {
        if self.created || self.valid.peers.entry(peer).is_none() {
            return;
        }
        let word = self.valid.layout.peer_table_offset
            + (peer.index() * shm_primitives::peer::PEER_ENTRY_SIZE + shm_primitives::peer::offsets::POOL_OPS) as u64;
        let _ = self.valid.pool.track_ops_in(word);
    }

    /// Host: pushes back slots orphaned by guests that died inside an allocate
    /// or a free, if the pool is quiet; otherwise remembers to try again on
    /// the next recovery or reservation. `dying` is a guest being recovered now
    /// (its entry's counter is stale). Returns how many slots came back.
    pub fn return_orphaned_slots(&self, dying: Option<PeerId>) -> usize {
        use shm_primitives::varslot::OrphanAudit;
        let others_busy = || {
            self.valid.peers.iter().any(|(id, e)| {
                Some(id) != dying
                    && match e.state() {
                        PeerState::Empty => false,
                        // A vox-shm 0.3.1 guest does not count its operations:
                        // while one is attached, no snapshot is known quiet.
                        PeerState::Attached if e.guest_features().is_empty() => true,
                        _ => e.pool_ops_in_flight() != 0,
                    }
            })
        };
        // Operations last nanoseconds; a few looks find a quiet moment unless
        // traffic never stops, and then a later call does.
        for _ in 0..ORPHAN_AUDIT_TRIES {
            match self.valid.pool.return_orphans(others_busy) {
                Ok(OrphanAudit::Done { returned }) => {
                    self.orphan_audit_pending.store(false, Ordering::Release);
                    return returned;
                }
                Ok(OrphanAudit::Busy) => std::thread::yield_now(),
                // A scribbled free list: the orphans stay lost, the pool serves on.
                Err(_) => return 0,
            }
        }
        self.orphan_audit_pending.store(true, Ordering::Release);
        0
    }

    /// True if an orphan audit could not find a quiet moment yet.
    pub fn orphan_audit_pending(&self) -> bool {
        self.orphan_audit_pending.load(Ordering::Acquire)
    }

    /// Host: recovers every guest that said goodbye and that no link of this
    /// process is serving. Returns how many peer slots were freed.
    pub fn reclaim_departed_peers(&self) -> usize {
        let departed: Vec<PeerId> = self
            .valid
            .peers
            .iter()
            .filter(|(id, e)| e.state() == PeerState::Goodbye && !self.has_ring_claims(*id))
            .map(|(id, _)| id)
            .collect();
        departed.into_iter().filter(|id| self.recover_crashed_peer(*id).is_ok()).count()
    }

    /// Host: grows the file and remaps it (spec A1.4). The extra space is not
    /// used by format v7 peers; this exists for completeness. Needs `&mut`
    /// (so an `Arc<Segment>` shared with links cannot be grown), and no view
    /// into the old mapping survives.
    pub fn grow_segment(&mut self, new_size: u64) -> Result<(), GrowError> {
        let new_size = usize::try_from(new_size).map_err(|_| GrowError::TooLarge { size: new_size })?;
        self.region.resize(new_size)?;
        self.rebuild_views()?;
        self.header().set_current_size(new_size as u64);
        Ok(())
    }

    /// Guest: remaps if the host grew the segment. Returns whether it did.
    pub fn check_and_remap(&mut self) -> Result<bool, GrowError> {
        let size = self.header().current_size();
        let wanted = usize::try_from(size).map_err(|_| GrowError::TooLarge { size })?;
        if !self.region.check_and_remap(wanted)? {
            return Ok(false);
        }
        self.rebuild_views()?;
        Ok(true)
    }

    fn rebuild_views(&mut self) -> Result<(), OutOfBounds> {
        // SAFETY: as in `initialise`; the old views (of the old mapping) are
        // replaced here, and `&mut self` means none is borrowed meanwhile.
        let r = unsafe { unbounded(self.region.region()) };
        self.valid.peers = PeerTable::attach(r, self.valid.layout.peer_table_offset, self.valid.layout.max_guests)?;
        self.valid.pool = VarSlotPool::attach(r, self.valid.layout.var_pool_offset, &self.valid.layout.pool)?;
        Ok(())
    }
}

impl AsFd for Segment {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.region.as_fd()
    }
}

impl AsRawFd for Segment {
    fn as_raw_fd(&self) -> RawFd {
        self.region.as_raw_fd()
    }
}

/// The same region with an unbounded lifetime, for views stored next to the
/// mapping they borrow (a `Segment`, a `SegmentView`).
///
/// # Safety
/// The memory must stay mapped for as long as anything built from the result
/// is used; the caller keeps the owner alive beside those views and hands them
/// out only reborrowed at the owner's lifetime.
pub(crate) unsafe fn unbounded(r: Region<'_>) -> Region<'static> {
    // SAFETY: forwarded to the caller's contract; base and length are a live
    // region's, so alignment and bounds hold.
    unsafe { Region::from_raw(r.base(), r.len()) }
}
