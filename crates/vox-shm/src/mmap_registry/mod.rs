//! The mapping tier (spec A6, B2, B9, C4): payloads too large for a slot live
//! in separately mapped regions whose descriptors travel over the control
//! channel.
//!
//! Sender side, [`MmapRegistry`]: regions are anonymous memory files (sealed
//! `memfd`s on Linux). Each reserves its first 64 bytes for a header whose
//! first word counts payload bytes the receiver has released (extension C4);
//! payloads start at offset 64, 64-byte aligned. When the peer supports C4 a
//! region whose every payload was released is reused from the start, so a
//! steady stream of large messages cycles through a few regions whose pages
//! stay mapped. A region id that is given a new file bumps its generation.
//!
//! Receiver side, [`MmapAttachments`]: every announced region is checked (a
//! regular file, at least as long as announced) and the number and size of
//! live regions are bounded. Only a region sealed against shrinking is mapped
//! (we add the seal ourselves where the file allows it): a peer that could
//! truncate a file we have mapped would turn our next read of it into
//! `SIGBUS`. A region that cannot be sealed (vox-shm 0.3.1 sends plain
//! temporary files) is read with `pread` into a private copy per payload
//! instead; a truncated file then gives a short read, a typed error. Our own
//! peers must send sealed regions.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shm_primitives::mmap::{try_seal_against_shrinking, Mapping, MmapRegion};
use shm_primitives_async::control::{ControlError, MmapAttachMessage, MmapControlReceiver, MmapControlSender};

use crate::framing::MmapRef;

mod errors;
pub use errors::{IoFailure, MmapAllocError, MmapResolveError, RegionRefusal};

/// Bytes at the start of every region we create (the C4 header).
pub const REGION_HEADER_SIZE: u64 = 64;
/// Default region size.
pub const DEFAULT_REGION_SIZE: usize = 1 << 20;
/// Default bound on the bytes of regions one sending side keeps, when the
/// receiver reports releases (C4) so regions are reused.
pub const DEFAULT_MAPPING_BUDGET: u64 = 64 << 20;
/// Default bound when the receiver cannot report releases (vox-shm 0.3.1):
/// regions are then never reused, so this is how much a sender lets such a
/// receiver pin before `alloc` fails with `OutOfMemory` (0.3.1 itself grows
/// without bound).
pub const DEFAULT_LEGACY_MAPPING_BUDGET: u64 = 1 << 30;
/// Most mappings a receiver keeps for one link.
pub const MAX_ATTACHED_MAPPINGS: usize = 4096;
/// Most bytes of mappings a receiver keeps for one link.
pub const MAX_ATTACHED_BYTES: u64 = 64 << 30;

fn released_counter(region: &Mapping) -> &AtomicU64 {
    let p = region.region().typed::<AtomicU64>(0).expect("regions are at least 64 bytes");
    // SAFETY: offset 0 of a live, page-aligned mapping of at least 64 bytes;
    // any bit pattern is a valid AtomicU64; the borrow is tied to `region`.
    unsafe { p.as_ref() }
}

struct Region {
    map_id: u32,
    generation: u32,
    /// Shared with every outstanding allocation, so an allocation's bytes stay
    /// mapped even if the registry goes first.
    mmap: Arc<Mapping>,
    cursor: u64,
    handed_out: u64,
    in_flight: u32,
}

impl Region {
    fn size(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// Every payload committed from this region has been released.
    fn drained(&self) -> bool {
        // Acquire: pairs with the receiver's Release add in `MmapBacking::drop`,
        // so its reads of the payloads are done before we overwrite them.
        self.in_flight == 0 && released_counter(&self.mmap).load(Ordering::Acquire) >= self.handed_out
    }
}

/// Space for one payload in a mapping region.
#[derive(Debug)]
pub struct MmapAllocation {
    index: usize,
    /// The reference to put in the frame.
    pub mmap_ref: MmapRef,
    ptr: NonNull<u8>,
    /// Keeps the region mapped for as long as the allocation lives.
    _mapping: Arc<Mapping>,
}

// SAFETY: the allocation is an address range inside a mapping it keeps alive;
// only its owner writes the range (see `bytes_mut`).
unsafe impl Send for MmapAllocation {}

impl MmapAllocation {
    /// The payload bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr..ptr+len` lies inside the mapping `_mapping` keeps alive;
        // the registry handed this range to this allocation alone (its cursor
        // moved past it, and the region is reused only once every payload from
        // it was released), and the receiver only reads it after the commit.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.mmap_ref.payload_len as usize) }
    }
}

/// Counters of the sending side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Regions created (each announced once on the control channel).
    pub regions_created: u64,
    /// Times a drained region was reused from the start.
    pub regions_reused: u64,
    /// Regions whose id was given a new file (generation bumped).
    pub regions_retired: u64,
    /// Bytes of regions alive now.
    pub bytes_mapped: u64,
}

/// The sending side's regions for one link direction.
pub struct MmapRegistry {
    regions: Vec<Region>,
    control: MmapControlSender,
    region_size: usize,
    budget: u64,
    legacy_budget: u64,
    /// Whether the receiver reports releases (C4); `None` until its
    /// features are known.
    releases: Option<bool>,
    stats: RegistryStats,
}

impl std::fmt::Debug for MmapRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmapRegistry").field("regions", &self.regions.len()).field("stats", &self.stats).finish()
    }
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

impl MmapRegistry {
    /// A registry announcing regions on `control`. `budget` applies while
    /// the receiver reports releases (C4) or may turn out to (its features
    /// are not known yet), `legacy_budget` once it is known not to.
    /// Both are raised to at least two regions of `max_payload`, so the largest
    /// payload always fits.
    pub fn new(
        control: MmapControlSender,
        region_size: usize,
        budget: u64,
        legacy_budget: u64,
        max_payload: u32,
    ) -> Self {
        control.set_send_buffer(1 << 20);
        let region_size = region_size.max(4096);
        let largest = round_up(REGION_HEADER_SIZE + u64::from(max_payload), 4096).max(region_size as u64);
        MmapRegistry {
            regions: Vec::new(),
            control,
            region_size,
            budget: budget.max(2 * largest),
            legacy_budget: legacy_budget.max(2 * largest),
            releases: None,
            stats: RegistryStats::default(),
        }
    }

    fn budget(&self) -> u64 {
        match self.releases {
            Some(false) => self.legacy_budget,
            None | Some(true) => self.budget,
        }
    }

    fn region_size_for(&self, need: u64) -> u64 {
        round_up(REGION_HEADER_SIZE + need, 4096).max(self.region_size as u64)
    }

    /// Whether `alloc(len)` would succeed now without exceeding the budget.
    /// `reserve` waits on this when the peer reports releases (C4).
    pub fn can_alloc(&self, len: u32) -> bool {
        let need = u64::from(len);
        self.stats.bytes_mapped + self.region_size_for(need) <= self.budget()
            || self.regions.iter().any(|r| r.cursor + need <= r.size() || self.reusable(r))
    }

    /// Records whether the receiver reports releases (extension C4), once
    /// its features are known. With releases, drained regions are reused;
    /// without, none is and the legacy budget applies. Until this is called
    /// the registry keeps to `budget` without reusing, so a sender that runs
    /// ahead of a peer that has not attached yet cannot pin more than a
    /// receiver that reports releases would let it.
    pub fn set_peer_reports_releases(&mut self, reports: bool) {
        self.releases = Some(reports);
    }

    /// Counters.
    pub fn stats(&self) -> RegistryStats {
        self.stats
    }

    /// Allocates `len` bytes. A new region is announced on the control channel
    /// before this returns, so the datagram precedes the frame.
    pub fn alloc(&mut self, len: u32) -> Result<MmapAllocation, MmapAllocError> {
        let need = u64::from(len);
        let index = match self.find_room(need) {
            Some(i) => i,
            None => self.add_region(need)?,
        };
        let r = &mut self.regions[index];
        let offset = r.cursor;
        r.cursor = round_up(offset + need, 64);
        r.in_flight += 1;
        let ptr = r.mmap.region().range(offset, need).expect("room was checked");
        Ok(MmapAllocation {
            index,
            mmap_ref: MmapRef { map_id: r.map_id, map_generation: r.generation, map_offset: offset, payload_len: len },
            ptr,
            _mapping: r.mmap.clone(),
        })
    }

    /// A region with room for `need` bytes: one whose cursor has room, or a
    /// drained one that fits, rewound to the start.
    fn find_room(&mut self, need: u64) -> Option<usize> {
        if let Some(i) = self.regions.iter().position(|r| r.cursor + need <= r.size()) {
            return Some(i);
        }
        self.rewind_drained(need)
    }

    fn reusable(&self, r: &Region) -> bool {
        self.releases == Some(true) && r.drained()
    }

    /// Rewinds the first drained region big enough for `need` bytes.
    fn rewind_drained(&mut self, need: u64) -> Option<usize> {
        let i = self.regions.iter().position(|r| REGION_HEADER_SIZE + need <= r.size() && self.reusable(r))?;
        self.regions[i].cursor = REGION_HEADER_SIZE;
        self.stats.regions_reused += 1;
        Some(i)
    }

    fn add_region(&mut self, need: u64) -> Result<usize, MmapAllocError> {
        let size = self.region_size_for(need);
        let size_usize = usize::try_from(size).map_err(|_| MmapAllocError::TooLarge { len: need })?;
        let mut slot = None;
        if self.stats.bytes_mapped + size > self.budget() {
            // The receiver releases while we look, so a region `find_room`
            // saw in use may have drained since: rewind it rather than spend
            // a new file (and a control datagram) on its id.
            if let Some(i) = self.rewind_drained(need) {
                return Ok(i);
            }
            // Otherwise a drained region too small for `need` gets a new,
            // fitting file under its id.
            let Some(i) = self.regions.iter().position(|r| self.reusable(r)) else {
                return Err(MmapAllocError::BudgetSpent {
                    budget: self.budget(),
                    peer_reports_releases: self.releases != Some(false),
                });
            };
            slot = Some(i);
        }
        let mmap = MmapRegion::create_anonymous("vox-shm-payload", size_usize).map_err(MmapAllocError::Create)?;
        let (map_id, generation) = match slot {
            Some(i) => (self.regions[i].map_id, self.regions[i].generation.wrapping_add(1)),
            None => (u32::try_from(self.regions.len()).map_err(|_| MmapAllocError::TooManyRegions)?, 0),
        };
        let msg = MmapAttachMessage { map_id, map_generation: generation, mapping_length: size };
        self.control.try_send(mmap.as_fd(), &msg).map_err(MmapAllocError::Announce)?;
        // The receiver has its own descriptor now; ours is not needed to keep
        // the mapping, so a registry holds no descriptor per region.
        let mmap = Arc::new(mmap.into_mapping());
        let region = Region { map_id, generation, mmap, cursor: REGION_HEADER_SIZE, handed_out: 0, in_flight: 0 };
        self.stats.regions_created += 1;
        self.stats.bytes_mapped += size;
        Ok(match slot {
            Some(i) => {
                self.stats.regions_retired += 1;
                self.stats.bytes_mapped -= self.regions[i].size();
                self.regions[i] = region;
                i
            }
            None => {
                self.regions.push(region);
                self.regions.len() - 1
            }
        })
    }

    /// The frame for `a` is about to be committed.
    pub fn commit(&mut self, a: MmapAllocation) {
        let r = &mut self.regions[a.index];
        r.in_flight -= 1;
        r.handed_out += u64::from(a.mmap_ref.payload_len);
    }

    /// The allocation will not be sent.
    pub fn cancel(&mut self, a: MmapAllocation) {
        self.regions[a.index].in_flight -= 1;
    }
}

/// How the receiving side holds a region.
#[derive(Debug)]
enum Held {
    /// Sealed against shrinking: mapped, payloads are zero-copy.
    Mapped(Mapping),
    /// Could not be sealed: kept open and read with `pread`.
    Copied { file: std::fs::File, len: u64 },
}

/// A region on the receiving side.
#[derive(Debug)]
pub struct AttachedMapping {
    held: Held,
    /// Region id.
    pub map_id: u32,
    /// Region generation.
    pub map_generation: u32,
}

impl AttachedMapping {
    /// Bytes in the region, as announced.
    pub fn mapping_length(&self) -> u64 {
        match &self.held {
            Held::Mapped(m) => m.len() as u64,
            Held::Copied { len, .. } => *len,
        }
    }

    /// True if payloads from this region are zero-copy (it is sealed and mapped).
    pub fn is_mapped(&self) -> bool {
        matches!(self.held, Held::Mapped(_))
    }

    /// The payload bytes at `[offset, offset + len)` of a mapped region
    /// (bounds checked by `resolve`).
    fn bytes(&self, offset: u64, len: u32) -> &[u8] {
        let Held::Mapped(m) = &self.held else { return &[] };
        let p = m.region().range(offset, u64::from(len)).expect("bounds checked in resolve");
        // SAFETY: in bounds of a mapping that lives as long as `self`, of a file
        // sealed against shrinking (so no access can fault). The sender does
        // not write a payload after committing it (a hostile sender could,
        // changing the bytes we read, but not their location or size).
        unsafe { std::slice::from_raw_parts(p.as_ptr(), len as usize) }
    }

    /// Reads `[offset, offset + len)` of an unsealed region into a private
    /// copy; `None` for a mapped region (its payloads are zero-copy).
    fn read_copy(&self, offset: u64, len: u32) -> Option<io::Result<Box<[u8]>>> {
        use std::os::unix::fs::FileExt;
        let Held::Copied { file, .. } = &self.held else { return None };
        // A file on a FUSE mount could block this read; a peer's file is a
        // memfd or a temporary file in practice, where reads never block.
        let mut buf = vec![0u8; len as usize].into_boxed_slice();
        Some(file.read_exact_at(&mut buf, offset).map(|()| buf))
    }

    /// Counts `len` released bytes in the region header (extension C4).
    fn release(&self, len: u32) {
        if let Held::Mapped(m) = &self.held {
            if m.len() as u64 >= REGION_HEADER_SIZE {
                // Release: our reads of the payload happen-before the sender's
                // Acquire load that lets it overwrite the bytes.
                released_counter(m).fetch_add(u64::from(len), Ordering::Release);
            }
        }
    }
}

/// A received mapping-tier payload: zero-copy, keeps its region mapped (or,
/// from a region that could not be sealed, a private copy).
pub struct MmapBacking {
    mapping: Arc<AttachedMapping>,
    copy: Option<Box<[u8]>>,
    offset: u64,
    len: u32,
    count_release: bool,
    on_release: Option<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for MmapBacking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmapBacking")
            .field("map_id", &self.mapping.map_id)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("copied", &self.copy.is_some())
            .finish_non_exhaustive()
    }
}

impl MmapBacking {
    /// Runs `f` after each release is counted (to wake a sender waiting for
    /// mapping space).
    pub fn on_release(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_release = Some(Box::new(f));
        self
    }
}

impl crate::link::SharedBacking for MmapBacking {
    fn as_bytes(&self) -> &[u8] {
        match &self.copy {
            Some(c) => c,
            None => self.mapping.bytes(self.offset, self.len),
        }
    }
}

impl Drop for MmapBacking {
    fn drop(&mut self) {
        if self.count_release {
            self.mapping.release(self.len);
            if let Some(f) = &self.on_release {
                f();
            }
        }
    }
}

/// The receiving side's mapped regions for one link direction.
#[derive(Debug)]
pub struct MmapAttachments {
    control: MmapControlReceiver,
    maps: HashMap<u32, Arc<AttachedMapping>>,
    bytes: u64,
    failed: Option<String>,
    /// The channel reached end of stream: every announcement is in `maps`.
    closed: bool,
    require_sealed: bool,
}

impl MmapAttachments {
    /// Receives announcements on `control`. With `require_sealed`, regions
    /// must be memfds sealed against shrinking (our own peers always send
    /// those; a file that can be truncated under our mapping would turn our
    /// next read into `SIGBUS`).
    pub fn new(control: MmapControlReceiver, require_sealed: bool) -> Self {
        MmapAttachments { control, maps: HashMap::new(), bytes: 0, failed: None, closed: false, require_sealed }
    }

    /// Sets whether announced regions must be sealed against shrinking.
    pub fn set_require_sealed(&mut self, on: bool) {
        self.require_sealed = on;
    }

    /// Number of regions mapped now.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// True if nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    fn fail(&mut self, e: &ControlError) -> MmapResolveError {
        let message = e.to_string();
        self.failed = Some(message.clone());
        MmapResolveError::ControlChannelFailure { message }
    }

    fn insert(&mut self, msg: MmapAttachMessage, fd: OwnedFd) -> Result<(), MmapResolveError> {
        let bad = |reason: RegionRefusal| MmapResolveError::BadRegion { map_id: msg.map_id, reason };
        let io = |e: io::Error| bad(RegionRefusal::Io(IoFailure::from(&e)));
        if let Some(old) = self.maps.get(&msg.map_id) {
            if old.map_generation == msg.map_generation {
                return Ok(()); // announced twice: keep the first, close this fd
            }
        }
        // Seal before the length check, so the file cannot shrink after it.
        let sealed = try_seal_against_shrinking(fd.as_fd());
        if self.require_sealed && !sealed {
            return Err(bad(RegionRefusal::NotSealed));
        }
        let len =
            usize::try_from(msg.mapping_length).map_err(|_| bad(RegionRefusal::TooLong { len: msg.mapping_length }))?;
        let replaced = self.maps.get(&msg.map_id).map_or(0, |m| m.mapping_length());
        if self.maps.len() >= MAX_ATTACHED_MAPPINGS && replaced == 0 {
            return Err(bad(RegionRefusal::TooManyRegions { max: MAX_ATTACHED_MAPPINGS }));
        }
        // Checked: `mapping_length` is the peer's value.
        let bytes = self.bytes.saturating_sub(replaced).checked_add(msg.mapping_length);
        let Some(bytes) = bytes.filter(|b| *b <= MAX_ATTACHED_BYTES) else {
            return Err(bad(RegionRefusal::TooManyBytes { max: MAX_ATTACHED_BYTES }));
        };
        let held = if sealed {
            Held::Mapped(MmapRegion::attach_fd_with_len(fd, len).map_err(io)?.into_mapping())
        } else {
            let file = std::fs::File::from(fd);
            let meta = file.metadata().map_err(io)?;
            if !meta.is_file() || meta.len() < msg.mapping_length || len == 0 {
                return Err(bad(RegionRefusal::WrongSize { file_len: meta.len(), announced: msg.mapping_length }));
            }
            Held::Copied { file, len: msg.mapping_length }
        };
        self.bytes = bytes;
        // A new generation replaces the old region here; payloads already
        // delivered from it keep it alive through their own `Arc`.
        self.maps.insert(
            msg.map_id,
            Arc::new(AttachedMapping { held, map_id: msg.map_id, map_generation: msg.map_generation }),
        );
        Ok(())
    }

    /// Maps every announcement waiting on the channel. End of stream is not
    /// an error: the regions announced before it stay resolvable.
    pub fn drain_control(&mut self) -> Result<(), MmapResolveError> {
        if let Some(message) = &self.failed {
            return Err(MmapResolveError::ControlChannelFailure { message: message.clone() });
        }
        while !self.closed {
            match self.control.try_recv() {
                Ok(Some((msg, fd))) => self.insert(msg, fd)?,
                Ok(None) => return Ok(()),
                Err(ControlError::Closed) => self.closed = true,
                Err(e) => return Err(self.fail(&e)),
            }
        }
        Ok(())
    }

    fn is_announced(&self, m: &MmapRef) -> bool {
        self.maps.get(&m.map_id).is_some_and(|x| x.map_generation == m.map_generation)
    }

    /// Resolves a reference against what is mapped: `Ok(None)` if its region
    /// has not been announced (yet).
    pub fn resolve(&mut self, m: &MmapRef, count_release: bool) -> Result<Option<MmapBacking>, MmapResolveError> {
        self.drain_control()?;
        let Some(mapping) = self.maps.get(&m.map_id) else { return Ok(None) };
        if mapping.map_generation != m.map_generation {
            return Ok(None);
        }
        let mapping_length = mapping.mapping_length();
        let in_bounds = m.map_offset.checked_add(u64::from(m.payload_len)).is_some_and(|end| end <= mapping_length);
        if !in_bounds {
            return Err(MmapResolveError::OutOfBounds {
                map_id: m.map_id,
                map_offset: m.map_offset,
                payload_len: m.payload_len,
                mapping_length,
            });
        }
        let copy = mapping
            .read_copy(m.map_offset, m.payload_len)
            .transpose()
            .map_err(|e| MmapResolveError::Unreadable { map_id: m.map_id, reason: IoFailure::from(&e) })?;
        Ok(Some(MmapBacking {
            mapping: mapping.clone(),
            copy,
            offset: m.map_offset,
            len: m.payload_len,
            count_release,
            on_release: None,
        }))
    }

    /// Waits (asynchronously, at most `limit`) for the region of `m` to be
    /// announced. The frame stays in the ring meanwhile, so a cancelled wait
    /// loses nothing.
    pub async fn wait_for(&mut self, m: &MmapRef, limit: Duration) -> Result<(), MmapResolveError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.drain_control()?;
            if self.is_announced(m) {
                return Ok(());
            }
            if self.closed {
                return Err(MmapResolveError::NeverAnnounced { map_id: m.map_id, map_generation: m.map_generation });
            }
            match tokio::time::timeout_at(deadline, self.control.recv()).await {
                Ok(Ok((msg, fd))) => self.insert(msg, fd)?,
                Ok(Err(ControlError::Closed)) => self.closed = true,
                Ok(Err(e)) => return Err(self.fail(&e)),
                Err(_) => {
                    return Err(MmapResolveError::UnknownMapping {
                        map_id: m.map_id,
                        map_generation: m.map_generation,
                        waited: limit,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
