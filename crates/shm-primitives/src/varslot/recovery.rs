//! Recovery and inspection: returning slots that a process killed mid-operation
//! left on no list, reclaiming a dead peer's slots, and reading the pool's
//! state for tests and `inspect`.

use super::*;

impl<'a> VarSlotPool<'a> {
    /// Pushes back every orphan (a slot that is Free but on no list: its
    /// process died between the two ends of an allocate or a free), if the
    /// pool is quiet: no operation in flight in this process, none in any live
    /// peer (`others_busy` says whether some live peer has one, or cannot
    /// tell, like a vox-shm 0.3.1 peer), and no free-list head moved while it
    /// looked. Otherwise it changes nothing and answers
    /// [`OrphanAudit::Busy`]. Bounded: one walk of each list, one scan of each
    /// class.
    ///
    /// Why a quiet snapshot is enough (the order: heads, counters, walk and
    /// states, counters, heads). An operation's first step comes after its
    /// counter's increment and its last before the decrement. A live process
    /// that popped a slot before our first head read is seen by the first look
    /// at the counters (the head read synchronises with its pop), or, if it has
    /// finished since, its slot is seen Allocated. A slot a live process marked
    /// Free is seen with that process's counter up in the second look, or, if
    /// it has finished since, its push moved a head. Pops and pushes between
    /// the two head reads fail the comparison; after it they only touch slots
    /// the walk saw on a list, and an orphan is on none.
    pub fn return_orphans(&self, others_busy: impl Fn() -> bool) -> Result<OrphanAudit, AllocError> {
        let busy = || self.ops_in_flight() != 0 || others_busy();
        // Read-modify-writes, not loads: each reads the latest head in its
        // modification order (a plain load may return an older one), so equal
        // heads before and after (tags included) mean no pop or push of that
        // class came in between. AcqRel: the first synchronises with every
        // push and pop before it (so their counters and links are visible to
        // the loads that follow).
        let heads: Vec<u64> =
            (0..self.layout.classes.len()).map(|c| self.header(c).free_head.fetch_add(0, Ordering::AcqRel)).collect();
        if busy() {
            return Ok(OrphanAudit::Busy);
        }
        let moved = || {
            heads.iter().enumerate().any(|(c, h)| {
                self.header(c).free_head.compare_exchange(*h, *h, Ordering::AcqRel, Ordering::Acquire).is_err()
            })
        };
        let mut orphans = Vec::new();
        for (class, head) in heads.iter().enumerate() {
            let reachable = match self.walk(class, unpack(*head).1, false) {
                Ok(r) => r,
                // A list that changes under the walk can look broken.
                Err(_) if moved() => return Ok(OrphanAudit::Busy),
                Err(e) => return Err(e),
            };
            for idx in 0..self.layout.classes[class].slot_count {
                let m = self.meta(class, idx);
                if !reachable[idx as usize] && m.state.load(Ordering::SeqCst) == SlotState::Free as u32 {
                    orphans.push((class, idx));
                }
            }
        }
        if busy() || moved() {
            return Ok(OrphanAudit::Busy);
        }
        for &(class, idx) in &orphans {
            self.meta(class, idx).owner_peer.store(0, Ordering::Release);
            self.push(class, idx, u32::MAX).map_err(|_| AllocError::Corrupt {
                class_idx: class as u8,
                what: "free list kept moving while returning orphan",
                value: idx,
            })?;
        }
        Ok(OrphanAudit::Done { returned: orphans.len() })
    }

    /// Marks the slots reachable from `idx` on `class`'s list (at most
    /// `slot_count` steps; a cycle or an index out of range is corruption).
    /// With `require_free`, a slot on the list that is not Free is corruption
    /// too (a quiescent check; an audit of a live pool cannot insist on it).
    fn walk(&self, class: usize, mut idx: u32, require_free: bool) -> Result<Vec<bool>, AllocError> {
        let c = self.layout.classes[class];
        let corrupt = |what, value| AllocError::Corrupt { class_idx: class as u8, what, value };
        let mut seen = vec![false; c.slot_count as usize];
        while idx != EMPTY {
            if idx >= c.slot_count {
                return Err(corrupt("index", idx));
            }
            if std::mem::replace(&mut seen[idx as usize], true) {
                return Err(corrupt("cycle at", idx));
            }
            let m = self.meta(class, idx);
            if require_free && m.state.load(Ordering::SeqCst) != SlotState::Free as u32 {
                return Err(corrupt("allocated slot on free list", idx));
            }
            idx = m.next_free.load(Ordering::SeqCst);
        }
        Ok(seen)
    }

    /// Frees every Allocated slot owned by `owner` (crash recovery). Returns how
    /// many were reclaimed. Visits each slot once.
    pub fn reclaim_peer_slots(&self, owner: u32) -> usize {
        let mut n = 0;
        for class in 0..self.layout.classes.len() {
            for idx in 0..self.layout.classes[class].slot_count {
                let m = self.meta(class, idx);
                if m.owner_peer.load(Ordering::Acquire) == owner
                    && m.state.load(Ordering::Acquire) == SlotState::Allocated as u32
                {
                    let slot = SlotRef {
                        class_idx: class as u8,
                        extent_idx: 0,
                        slot_idx: idx,
                        generation: m.generation.load(Ordering::Acquire),
                    };
                    if self.free(slot).is_ok() {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Changes a slot's owner from `from` to `to` if it is Allocated under
    /// `slot.generation` and owned by `from` (a receiver taking over a slot it
    /// holds, so crash recovery of the sender leaves it alone). Returns whether
    /// it did.
    pub fn retag_owner(&self, slot: SlotRef, from: u32, to: u32) -> bool {
        if self.check(slot).is_err() {
            return false;
        }
        let m = self.meta(slot.class_idx as usize, slot.slot_idx);
        m.generation.load(Ordering::Acquire) == slot.generation
            && m.state.load(Ordering::Acquire) == SlotState::Allocated as u32
            // AcqRel: ordered with the allocator's Release store of the owner.
            && m.owner_peer.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// `(generation, state, owner)` of a slot, for inspection.
    pub fn slot_meta(&self, class: usize, idx: u32) -> Option<(u32, u32, u32)> {
        let c = self.layout.classes.get(class)?;
        if idx >= c.slot_count {
            return None;
        }
        let m = self.meta(class, idx);
        Some((
            m.generation.load(Ordering::Acquire),
            m.state.load(Ordering::Acquire),
            m.owner_peer.load(Ordering::Acquire),
        ))
    }

    /// Counts free and allocated slots of a class by scanning its metadata.
    pub fn class_usage(&self, class: usize) -> Option<ClassUsage> {
        let c = self.layout.classes.get(class)?;
        let mut usage = ClassUsage { free: 0, allocated_by_owner: Vec::new(), invalid_state: 0 };
        for idx in 0..c.slot_count {
            let (_, state, owner) = self.slot_meta(class, idx)?;
            match state {
                s if s == SlotState::Free as u32 => usage.free += 1,
                s if s == SlotState::Allocated as u32 => {
                    match usage.allocated_by_owner.iter_mut().find(|(o, _)| *o == owner) {
                        Some((_, n)) => *n += 1,
                        None => usage.allocated_by_owner.push((owner, 1)),
                    }
                }
                _ => usage.invalid_state += 1,
            }
        }
        usage.allocated_by_owner.sort_unstable();
        Some(usage)
    }

    /// Walks a class's free list (at most `slot_count` steps) and checks it:
    /// every entry in range, Free, and listed once. Returns the list length.
    /// For tests and inspection while the pool is quiescent.
    pub fn check_free_list(&self, class: usize) -> Result<u32, AllocError> {
        self.layout.classes.get(class).ok_or(AllocError::Exhausted { size: 0 })?;
        let (_, head) = unpack(self.header(class).free_head.load(Ordering::Acquire));
        let listed = self.walk(class, head, true)?;
        Ok(listed.iter().filter(|&&on| on).count() as u32)
    }
}
