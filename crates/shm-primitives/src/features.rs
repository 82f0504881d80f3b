//! Extension feature bits (spec Part C).
//!
//! The host advertises its bits in the segment header (offset 80), each guest in
//! its peer entry (offset 24). A feature is on for a link only when both sides
//! advertise it; a vox-shm 0.3.1 peer leaves these words zero and so gets the
//! 0.3.1 behaviour.

/// A set of extension feature bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Features(u32);

impl Features {
    /// C1: ring the doorbell only when the other side says it is waiting.
    pub const WAKE_ON_DEMAND: Features = Features(1 << 0);
    /// C2: a sender's close is published in its peer-entry flag.
    pub const INBAND_CLOSE: Features = Features(1 << 1);
    /// C3: the guest publishes its pid and heartbeats.
    pub const LIVENESS: Features = Features(1 << 2);
    /// C4: mapping regions carry a released-bytes counter so they can be reused.
    pub const MAPPING_RELEASE: Features = Features(1 << 3);

    /// No features: what a 0.3.1 peer advertises.
    pub const NONE: Features = Features(0);
    /// Everything this implementation supports.
    pub const ALL: Features = Features(0b1111);

    /// From the raw word (unknown bits are kept, so they round-trip).
    pub const fn from_bits(bits: u32) -> Self {
        Features(bits)
    }
    /// The raw word.
    pub const fn bits(self) -> u32 {
        self.0
    }
    /// True if every bit of `other` is set.
    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
    /// Bits set in both (what a link may use).
    pub const fn intersect(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }
    /// Union of both.
    pub const fn union(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }
    /// True if no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const NAMES: [(Features, &str); 4] = [
            (Features::WAKE_ON_DEMAND, "wake-on-demand"),
            (Features::INBAND_CLOSE, "inband-close"),
            (Features::LIVENESS, "liveness"),
            (Features::MAPPING_RELEASE, "mapping-release"),
        ];
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        for (bit, name) in NAMES {
            if self.contains(bit) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        let unknown = self.0 & !Features::ALL.0;
        if unknown != 0 {
            if !first {
                f.write_str(",")?;
            }
            write!(f, "unknown({unknown:#x})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_is_the_intersection() {
        let host = Features::ALL;
        let legacy = Features::NONE;
        assert!(host.intersect(legacy).is_empty());
        let guest = Features::WAKE_ON_DEMAND.union(Features::INBAND_CLOSE);
        let on = host.intersect(guest);
        assert!(on.contains(Features::WAKE_ON_DEMAND));
        assert!(!on.contains(Features::LIVENESS));
    }

    #[test]
    fn display_names_bits() {
        assert_eq!(Features::NONE.to_string(), "none");
        assert_eq!(Features::from_bits(0b101).to_string(), "wake-on-demand,liveness");
        assert_eq!(Features::from_bits(0x100).to_string(), "unknown(0x100)");
    }
}
